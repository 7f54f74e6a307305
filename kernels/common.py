"""What the kernel files share: the interpreter and autotune switches, input checks, autocast."""

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreted():
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# The one switch of the matmul-shaped kernels (attention, linear_gelu): autotuning over their
# curated Hopper lists, or a single config under the interpreter and with TRITONGPT_AUTOTUNE=0.
AUTOTUNE = not interpreted() and os.environ.get("TRITONGPT_AUTOTUNE", "1") != "0"


def autocast_dtype(device_type):
    """The dtype torch.autocast runs matmuls in on `device_type`, or None when it is off.

    Triton ops are not seen by autocast, so a public op casts its inputs itself to behave as
    torch's own op would under autocast (fp32 master weights, bf16 compute)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def check_device(**tensors):
    """All tensors on one device, and one a kernel can run on: CUDA, or the CPU under Triton's
    interpreter (TRITON_INTERPRET=1)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"expected all tensors on one device, got {where}")
    device = next(iter(devices.values()))
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        raise ValueError(
            f"expected CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got tensors on {device}"
        )


def check_float(**tensors):
    for name, t in tensors.items():
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def num_sms(device):
    """Multiprocessors to size persistent grids by; a small number under the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2
