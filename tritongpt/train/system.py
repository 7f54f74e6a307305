"""The machine side of a run: `auto` device, dtype, backend and compile resolved for this machine, this
process pointed at its device (and joined to torchrun's process group), and the autocast context
of the chosen dtype. Shared by the trainer and the sampler.

Joining the process group. torchrun's agent keeps one key-value store (a TCPStore) for its whole
life and by default lends it to the workers (TORCHELASTIC_USE_AGENT_STORE=True), but the keys that
init_process_group("env://") writes there do not carry the restart attempt (torch 2.11 and 2.13
assume a new store per attempt). A restarted worker group then finds the previous attempt's keys
still there, among them each rank's gloo address, and a process may read a dead peer's old address
before the peer has written its new one: "Connection refused" in connectFullMesh, or a wait that
lasts until the 10-minute timeout. So the processes meet under a prefix of their own attempt
(TORCHELASTIC_RESTART_COUNT), as torch itself once did, and each first says it is there: one that
waits longer than join_timeout for the others stops with one line that names the missing ranks,
instead of hanging.
"""

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from tritongpt import kernels
from tritongpt.train.config import ConfigError

PG_TIMEOUT = timedelta(minutes=10)  # a collective that waits longer than this fails
PTDTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cuda_device(device):
    """A CUDA device as "cuda:N": with no index given, LOCAL_RANK's device under torchrun, else the
    current one (torch.cuda.set_device and its kind refuse a device with no index). ValueError
    for an index this machine does not have."""
    index = torch.device(device).index
    if index is None:
        local_rank = os.environ.get("LOCAL_RANK")
        index = int(local_rank) if local_rank is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(f"{device} is cuda:{index}, but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{index}"


def resolve_system(cfg):
    """device, dtype, backend and compile with `auto` replaced by what fits the machine, and a CUDA
    device given its index (cuda:N); impossible choices are a ConfigError."""
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = cfg.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {cfg.device!r} but no CUDA device is available (use --device=cpu)")
    if on_gpu:
        try:
            cfg.device = cuda_device(cfg.device)
        except ValueError as e:
            raise ConfigError(f"config key 'device': {e}; name one of them, or cuda for the current one") from None
    if cfg.dtype == "auto":
        cfg.dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if on_gpu else "float32"
    if getattr(cfg, "fsdp", False) and cfg.dtype == "float16":  # the trainer's key (the sampler has none)
        raise ConfigError("config key 'fsdp' is on with dtype float16, whose gradient scaler the sharded gradients "
                          "do not take; use bfloat16 or float32")
    if not on_gpu and cfg.dtype == "float16":
        raise ConfigError("config key 'dtype' is float16, which needs a GPU (its gradient scaler); use float32 or bfloat16")
    if on_gpu and cfg.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("config key 'dtype' is bfloat16 but this GPU has no bfloat16; use float16")
    if cfg.backend == "auto":
        cfg.backend = "triton" if on_gpu else "torch"
    if getattr(cfg, "compile", None) == "auto":  # the trainer's key (the sampler has none)
        cfg.compile = "true" if on_gpu else "false"  # on a CPU, compiling costs more than it saves
    if cfg.backend == "triton" and not on_gpu:
        raise ConfigError("config key 'backend' is triton, which needs a GPU (on a CPU use backend=torch)")


def deterministic(on=True):
    """Make this process's runs bitwise repeatable on one machine (on=False: back to the defaults).
    The Triton kernels run their one fixed config instead of autotuning (kernels.fix_tiles: the
    autotuner times the candidates anew in each process, and a different pick sums in a different
    order), Inductor benchmarks nothing to choose its kernels, cuBLAS gets the fixed workspace
    that deterministic algorithms need (CUBLAS_WORKSPACE_CONFIG, read when its first handle is
    made: set here, before any matmul), cuDNN and torch take their deterministic algorithms
    (torch warns about an op that has none rather than stopping the run). The Triton kernels
    themselves are deterministic for a given config: no float atomics."""
    import torch._inductor.config as inductor

    kernels.fix_tiles(on)
    inductor.deterministic = on
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


class JoinError(RuntimeError):
    """This process could not join the others of its run (under torchrun: of its restart attempt)."""


def setup_device(cfg, local_rank, ddp):
    """Point this process at its device (cuda:LOCAL_RANK under DDP), make it deterministic where
    asked, set torch's CPU threads or TF32 matmuls, and join the process group under DDP; a lone process that shards its model
    (fsdp) makes a group of its own. Returns the device type, cuda or cpu."""
    if ddp and cfg.device.startswith("cuda"):
        cfg.device = f"cuda:{local_rank}"
    device_type = "cuda" if cfg.device.startswith("cuda") else "cpu"
    if cfg.deterministic:
        deterministic(True)
    if device_type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if device_type == "cuda":
        torch.cuda.set_device(cfg.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    backend = "nccl" if device_type == "cuda" else "gloo"
    if ddp:
        join_process_group(backend, cfg.join_timeout)
    elif getattr(cfg, "fsdp", False):
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return device_type


def join_process_group(backend, join_timeout):
    """Join the default process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), in keys of this restart attempt only; JoinError when the other processes are not
    all there within join_timeout seconds or cannot be connected to."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    where = f"process {rank} of {world_size}" + (f", restart attempt {attempt}" if attempt else "")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 hosts the store
    timeout = timedelta(seconds=join_timeout)
    try:
        server = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                               is_master=rank == 0 and not agent_store, timeout=timeout, wait_for_workers=False)
    except (RuntimeError, ValueError) as e:  # DistStoreError, DistNetworkError are RuntimeErrors
        raise JoinError(f"{where}: cannot reach the store at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                        f"({_first_line(e)})") from None
    store = dist.PrefixStore(f"tritongpt/attempt_{attempt}/", server)
    store.set(f"here/{rank}", "1")
    keys = [f"here/{r}" for r in range(world_size)]
    try:
        store.wait(keys, timeout)
    except RuntimeError:
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        raise JoinError(
            f"{where}: rank(s) {', '.join(map(str, missing))} did not join within join_timeout={join_timeout:g} s; "
            "they died or hang at start-up (see their log), or belong to another attempt"
        ) from None
    try:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=PG_TIMEOUT)
    except RuntimeError as e:
        raise JoinError(f"{where}: could not connect to the other processes ({_first_line(e)})") from None


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def autocast(device, dtype):
    """torch.autocast on `device` in `dtype` (a PTDTYPE key); a null context in float32."""
    dtype = PTDTYPE[dtype]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
