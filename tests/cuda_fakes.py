"""Strict fakes of torch.cuda's host functions, so that the code a GPU run takes on the host runs,
and is checked, on a CPU.

    from cuda_fakes import fake_cuda
    with fake_cuda(gpus=1, name="NVIDIA H100 80GB HBM3") as gpu:
        ...   # torch.cuda says there is an H100: set_device, events, memory statistics answer as on one
    with fake_cuda(remap=True) as gpu:
        ...   # and tensors asked for on "cuda" are made on the CPU: a whole GPU-path step runs

Each fake checks its arguments the way torch does, with torch's own argument parsing where torch
has one (torch.cuda._utils._get_device_index, so that `set_device("cuda")` fails here exactly as
it fails on a GPU), and then the range of the index against the fake devices. Events must be
recorded before they are timed, and completed (synchronized, or a device synchronize after
them) before elapsed_time reads them, as CUDA wants; NVTX ranges must nest; pinned memory is
only made from CPU tensors. `gpu` (a FakeCuda) records what the code did: the devices set, the
synchronizes, the profiler calls, the seeds, and holds the memory figures the statistics report.

remap=True adds a TorchFunctionMode that places every tensor asked for on a CUDA device on the
CPU instead (factory functions' device=, Tensor.to, Tensor.cuda, pin_memory), checking the
device index as CUDA would, and makes torch.autocast("cuda", ...) autocast the CPU in the same
dtype after torch's own checks of it. Everything torch.cuda, torch.backends and NVTX state the
code changes is put back when the context ends.
"""

import contextlib
import dataclasses
import time
import weakref

import pytest
import torch
from torch.cuda._utils import _get_device_index
from torch.overrides import TorchFunctionMode

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Properties:
    """What torch.cuda.get_device_properties returns (the fields our code and Triton read)."""

    name: str
    major: int
    minor: int
    total_memory: int
    multi_processor_count: int
    L2_cache_size: int = 50 * 2**20
    warp_size: int = 32
    max_threads_per_multi_processor: int = 2048
    regs_per_multiprocessor: int = 65536
    shared_memory_per_block: int = 48 * 1024
    shared_memory_per_block_optin: int = 227 * 1024
    shared_memory_per_multiprocessor: int = 228 * 1024
    is_integrated: int = 0
    is_multi_gpu_board: int = 0
    uuid: str = "00000000-0000-0000-0000-000000000000"


# name -> (capability, memory in GiB, multiprocessors): the names torch.cuda.get_device_name gives
GPUS = {
    "NVIDIA H100 80GB HBM3": ((9, 0), 80, 132),
    "NVIDIA H100 PCIe": ((9, 0), 80, 114),
    "NVIDIA H200": ((9, 0), 141, 132),
    "NVIDIA A100-SXM4-80GB": ((8, 0), 80, 108),
    "Tesla V100-SXM2-16GB": ((7, 0), 16, 80),  # no bfloat16
}


def properties(name):
    (major, minor), gib, sms = GPUS[name]
    return Properties(name=name, major=major, minor=minor, total_memory=gib * GIB, multi_processor_count=sms)


class FakeEvent:
    """torch.cuda.Event: record, query, synchronize, wait, elapsed_time (milliseconds of host time
    between the two records), with CUDA's rules."""

    def __init__(self, gpu, enable_timing=False, blocking=False, interprocess=False, external=False):
        self.gpu, self.enable_timing = gpu, bool(enable_timing)
        self.time = None  # perf_counter at record()
        self.done = False

    def record(self, stream=None):
        self.time, self.done = time.perf_counter(), False
        self.gpu.pending.add(self)

    def query(self):
        return self.time is None or self.done

    def synchronize(self):
        self.done = self.time is not None
        self.gpu.pending.discard(self)

    def wait(self, stream=None):
        pass

    def elapsed_time(self, end_event):
        if not isinstance(end_event, FakeEvent):
            raise TypeError(f"elapsed_time(): argument 'end_event' must be torch.cuda.Event, not {type(end_event).__name__}")
        if self.time is None or end_event.time is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if not (self.done and end_event.done):
            raise RuntimeError("CUDA error: device not ready (the end event has not completed: synchronize first)")
        return (end_event.time - self.time) * 1e3


class FakeCudart:
    """torch.cuda.cudart(): the profiler's start and stop, recorded in order."""

    def __init__(self, gpu):
        self.gpu = gpu

    def cudaProfilerStart(self):  # noqa: N802 - CUDA's name
        self.gpu.profiler.append("start")
        return 0

    def cudaProfilerStop(self):  # noqa: N802
        if self.gpu.profiler[-1:] != ["start"]:
            raise RuntimeError("cudaProfilerStop without cudaProfilerStart")
        self.gpu.profiler.append("stop")
        return 0


class FakeCuda:
    """The fake GPUs' state and torch.cuda's functions over it."""

    def __init__(self, props):
        self.props = list(props)
        self.current = 0
        self.set_devices = []  # every index set_device was given
        self.synchronizes = 0
        self.pending = set()  # events recorded since the last synchronize
        self.profiler = []  # "start", "stop"
        self.seeds = []
        self.nvtx = []  # the open NVTX ranges
        self.nvtx_seen = []  # every range pushed
        self.allocated = [0] * len(self.props)  # what memory_allocated reports, per device
        self.peak = [0] * len(self.props)
        self.rng = [torch.Generator().manual_seed(0).get_state() for _ in self.props]
        self.pinned = weakref.WeakValueDictionary()  # id -> a tensor made in "pinned" memory

    # ------------------------------------------------------------------------- devices

    def index(self, device, optional=True):
        """torch's own parsing of a device argument, then the index checked against the fakes."""
        i = _get_device_index(device, optional=optional)
        if not 0 <= i < len(self.props):
            raise RuntimeError(f"CUDA error: invalid device ordinal (device {i}; this machine has {len(self.props)})")
        return i

    def is_available(self):
        return bool(self.props)

    def device_count(self):
        return len(self.props)

    def current_device(self):
        return self.current

    def set_device(self, device):
        i = _get_device_index(device)  # not optional: "cuda" with no index is refused, as torch does
        if i >= 0:
            self.current = self.index(i)
            self.set_devices.append(i)

    def get_device_properties(self, device=None):
        i = _get_device_index(device, optional=True)
        if not 0 <= i < len(self.props):
            raise AssertionError("Invalid device id")
        return self.props[i]

    def get_device_name(self, device=None):
        return self.get_device_properties(device).name

    def get_device_capability(self, device=None):
        p = self.get_device_properties(device)
        return p.major, p.minor

    def is_bf16_supported(self, including_emulation=True):
        return self.is_available() and self.get_device_properties(self.current).major >= 8

    def synchronize(self, device=None):
        self.index(device)
        self.synchronizes += 1
        for event in list(self.pending):
            event.synchronize()

    def device_class(self):
        """torch.cuda.device: the context that makes a device current (torch's own class, its
        argument parsed by torch; entering it moves the fake's current device)."""
        fake = self

        class device(torch.cuda.device):  # noqa: N801 - torch's name
            def __enter__(self):
                self.prev_idx = fake.current
                if self.idx >= 0:
                    fake.current = fake.index(self.idx)

            def __exit__(self, *exc):
                fake.current = self.prev_idx
                return False

        return device

    def is_current_stream_capturing(self):
        return False  # no CUDA graph is ever being captured here

    # ------------------------------------------------------------------------- memory

    def memory_allocated(self, device=None):
        return self.allocated[self.index(device)]

    def max_memory_allocated(self, device=None):
        return self.peak[self.index(device)]

    def memory_reserved(self, device=None):
        return self.allocated[self.index(device)]

    def max_memory_reserved(self, device=None):
        return self.peak[self.index(device)]

    def reset_peak_memory_stats(self, device=None):
        i = self.index(device)
        self.peak[i] = self.allocated[i]

    def memory_stats(self, device=None):
        i = self.index(device)
        return {"allocated_bytes.all.current": self.allocated[i], "allocated_bytes.all.peak": self.peak[i]}

    def mem_get_info(self, device=None):
        i = self.index(device)
        total = self.props[i].total_memory
        return total - self.allocated[i], total

    def empty_cache(self):
        pass

    # ------------------------------------------------------------------------- random numbers

    def manual_seed(self, seed):
        self.seeds.append(int(seed))

    def manual_seed_all(self, seed):
        self.seeds.append(int(seed))

    def get_rng_state(self, device="cuda"):
        return self.rng[self.index(device)].clone()

    def set_rng_state(self, new_state, device="cuda"):
        if not isinstance(new_state, torch.Tensor) or new_state.dtype != torch.uint8:
            raise TypeError(f"expected a torch.ByteTensor, but got {type(new_state).__name__}")
        self.rng[self.index(device)] = new_state.clone()

    # ------------------------------------------------------------------------- NVTX

    def range_push(self, msg):
        if not isinstance(msg, str):
            raise TypeError(f"range_push(): argument 'msg' must be str, not {type(msg).__name__}")
        self.nvtx.append(msg)
        self.nvtx_seen.append(msg)
        return len(self.nvtx) - 1

    def range_pop(self):
        if not self.nvtx:
            raise RuntimeError("nvtx range_pop with no range open")
        self.nvtx.pop()
        return len(self.nvtx)

    # ------------------------------------------------------------------------- the patches

    def patch(self, mp):
        """Replace torch.cuda's host functions (and torch.backends' CUDA switches, put back later)."""
        cuda = torch.cuda
        for name in ("is_available", "device_count", "current_device", "set_device", "get_device_properties",
                     "get_device_name", "get_device_capability", "is_bf16_supported", "synchronize",
                     "memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved",
                     "reset_peak_memory_stats", "memory_stats", "mem_get_info", "empty_cache", "manual_seed",
                     "manual_seed_all", "get_rng_state", "set_rng_state", "is_current_stream_capturing"):
            mp.setattr(cuda, name, getattr(self, name))
            for module in (cuda.memory, cuda.graphs, cuda.random):  # where torch's own code imports them from
                if hasattr(module, name):
                    mp.setattr(module, name, getattr(self, name))
        mp.setattr(cuda, "device", self.device_class())
        mp.setattr(cuda, "Event", lambda *args, **kwargs: FakeEvent(self, *args, **kwargs))
        mp.setattr(cuda, "cudart", lambda: FakeCudart(self))
        mp.setattr(cuda.nvtx, "range_push", self.range_push)
        mp.setattr(cuda.nvtx, "range_pop", self.range_pop)
        try:  # the nvtx package, which instrument/nvtx.py takes where it is installed
            import nvtx
        except ImportError:
            return
        mp.setattr(nvtx, "push_range", lambda message=None, **kwargs: self.range_push(message) and None)  # None, as it
        mp.setattr(nvtx, "pop_range", lambda **kwargs: self.range_pop() and None)


# ----------------------------------------------------------------------------- "cuda" tensors on the CPU


def _is_cuda(device):
    return isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda"


class CudaOnCpu(TorchFunctionMode):
    """Tensors asked for on a CUDA device are made on the CPU, the index checked as CUDA would."""

    def __init__(self, gpu):
        super().__init__()
        self.gpu = gpu

    def _place(self, device):
        if _is_cuda(device):
            d = torch.device(device)
            self.gpu.index(d.index if d.index is not None else self.gpu.current)
            return torch.device("cpu")
        if isinstance(device, int) and not isinstance(device, bool):  # .to(0): CUDA device 0
            self.gpu.index(device)
            return torch.device("cpu")
        return device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = self._place(kwargs["device"])
        pinned = kwargs.get("pin_memory") is True
        if pinned:
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to:
            args = (args[0], *(self._place(a) for a in args[1:]))
        elif func is torch.Tensor.cuda:
            device = args[1] if len(args) > 1 else kwargs.pop("device", None)
            self._place(torch.device("cuda") if device is None else torch.device("cuda", _get_device_index(device, True)))
            return args[0].to("cpu", **{k: v for k, v in kwargs.items() if k == "non_blocking"})
        elif func is torch.Tensor.pin_memory:
            if args[0].device.type != "cpu":
                raise RuntimeError(f"cannot pin '{args[0].type()}' only dense CPU tensors can be pinned")
            out = args[0].clone()
            self.gpu.pinned[id(out)] = out
            return out
        elif func is torch.Tensor.is_pinned:
            return self.gpu.pinned.get(id(args[0])) is args[0]
        out = func(*args, **kwargs)
        if pinned:
            self.gpu.pinned[id(out)] = out
        return out


class _Autocast(torch.autocast):
    """torch.autocast whose "cuda" is the CPU: torch's checks for "cuda" first (bfloat16 on a GPU
    without it is refused), then the CPU autocast in that dtype."""

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        if device_type == "cuda":
            super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)
            device_type, dtype = "cpu", self.fast_dtype
        super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


# ----------------------------------------------------------------------------- the context


@contextlib.contextmanager
def fake_cuda(gpus=1, name="NVIDIA H100 80GB HBM3", remap=False):
    """torch.cuda faked as `gpus` GPUs named `name` (a GPUS key); with remap, "cuda" tensors live on
    the CPU. Yields the FakeCuda; everything is put back on exit."""
    from tritongpt.instrument import nvtx

    gpu = FakeCuda([properties(name)] * gpus)
    switches = _switches()
    with pytest.MonkeyPatch.context() as mp:
        gpu.patch(mp)
        if remap:
            mp.setattr(torch, "autocast", _Autocast)
            mp.setattr(torch.amp, "autocast", _Autocast)
        try:
            with CudaOnCpu(gpu) if remap else contextlib.nullcontext():
                yield gpu
        finally:
            nvtx.enable(False)  # it may hold the fake range functions
            _switches(switches)


def _switches(values=None):
    """torch's global switches that a GPU run sets (TF32, cuDNN, deterministic algorithms): read,
    or set back to `values`."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if values is None:
        return (matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
                torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark, precision, on, warn_only = values
    torch.set_float32_matmul_precision(precision)
    torch.use_deterministic_algorithms(on, warn_only=warn_only)
