"""What the kernel files share: the interpreter and autotune switches, input checks, autocast,
the device guard every launch runs under, and the namespace of the ops registered with
torch.library."""

import contextlib
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Every op is registered as tritongpt::<name> (torch.ops.tritongpt.<name>): torch.compile sees
# each one as a single node of its graph, with a fake (shape-only) implementation for tracing.
NAMESPACE = "tritongpt"


def interpreted():
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# The one switch of the matmul-shaped kernels (attention, linear_gelu): autotuning over their
# curated Hopper lists, or a single config under the interpreter and with TRITONGPT_AUTOTUNE=0.
AUTOTUNE = not interpreted() and os.environ.get("TRITONGPT_AUTOTUNE", "1") != "0"


# ----------------------------------------------------------------------------- input checks
# Each takes the op's name and the tensors by argument name (None for an absent optional one)
# and raises a ValueError that names the op, the argument and what to do.


def check_tensors(op, **tensors):
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_device(op, **tensors):
    """All tensors on one device, and one a kernel can run on: CUDA, or the CPU under Triton's
    interpreter (TRITON_INTERPRET=1)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: expected all tensors on one device, got {where}; move them to one device")
    device = next(iter(devices.values()))
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        raise ValueError(
            f"{op}: tensors are on {device}, but the Triton kernel runs on CUDA tensors "
            "(or on CPU tensors with TRITON_INTERPRET=1, Triton's interpreter)"
        )


def check_float(op, **tensors):
    """Each tensor float32, float16 or bfloat16; they may differ (layer_norm's bf16 x, fp32 weight)."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_one_dtype(op, **tensors):
    """All tensors of one dtype, and that one float32, float16 or bfloat16."""
    dtypes = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(dtypes.values())) > 1 or not set(dtypes.values()) <= set(FLOAT_DTYPES):
        got = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise ValueError(
            f"{op}: {', '.join(dtypes)} must share one of float32, float16 or bfloat16, but {got}; "
            "cast them to one dtype (under torch.autocast the op casts them for you)"
        )


# ----------------------------------------------------------------------------- autocast


def autocast_inputs(*tensors):
    """The tensors cast to torch.autocast's dtype when autocast is on for the first one's device,
    else as they are (None and non-tensors pass through, for the checks to report).

    Autocast does not cast the inputs of our torch.library ops, so a public op whose torch
    counterpart autocast would cast (F.linear, SDPA) casts its inputs itself, here, before the op
    is called: fp32 master weights, bf16 compute. The casts are part of the autograd graph (and
    of a compiled graph, where they fuse with their neighbours), so gradients come back in each
    input's own dtype."""
    dtype = autocast_dtype(tensors[0])
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in tensors)


def autocast_dtype(t):
    """torch.autocast's dtype when autocast is on for t's device, else None (the dtype an op
    whose output feeds a matmul writes that output in, so no cast pass follows it)."""
    if not isinstance(t, torch.Tensor) or t.device.type not in ("cpu", "cuda"):
        return None
    if not torch.is_autocast_enabled(t.device.type):
        return None
    return torch.get_autocast_dtype(t.device.type)


# ----------------------------------------------------------------------------- launches


def device_guard(t):
    """The context every launch runs in: t's CUDA device made current, so that a kernel runs
    where its tensors are (cuda:1 included) whatever the current device is; nothing on a CPU."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def num_sms(device):
    """Multiprocessors to size persistent grids by; a small number under the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2
