"""The machine side of a run: `auto` device, dtype, backend and compile resolved for this machine, this
process pointed at its device (and joined to torchrun's process group), and the autocast context
of the chosen dtype. Shared by the trainer and the sampler."""

import contextlib
from datetime import timedelta

import torch
import torch.distributed as dist

from train.config import ConfigError

PTDTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_system(cfg):
    """device, dtype, backend and compile with `auto` replaced by what fits the machine; impossible
    choices are a ConfigError."""
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = cfg.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {cfg.device!r} but no CUDA device is available (use --device=cpu)")
    if cfg.dtype == "auto":
        cfg.dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if on_gpu else "float32"
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


def setup_device(cfg, local_rank, ddp):
    """Point this process at its device (cuda:LOCAL_RANK under DDP), set torch's CPU threads or
    TF32 matmuls, and join the process group under DDP. Returns the device type, cuda or cpu."""
    if ddp and cfg.device.startswith("cuda"):
        cfg.device = f"cuda:{local_rank}"
    device_type = "cuda" if cfg.device.startswith("cuda") else "cpu"
    if device_type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if device_type == "cuda":
        torch.cuda.set_device(cfg.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if ddp:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(minutes=10))
    return device_type


def autocast(device, dtype):
    """torch.autocast on `device` in `dtype` (a PTDTYPE key); a null context in float32."""
    dtype = PTDTYPE[dtype]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
