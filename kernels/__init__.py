"""The ops of the hot path, autograd-aware, each checked against `kernels.reference`.

    kernels.layer_norm(x, weight, bias, eps=1e-5)               # bias may be None
    kernels.linear_gelu(x, weight, bias)                         # gelu_tanh(x @ weight.T + bias)
    kernels.cross_entropy(logits, targets, ignore_index=-1)      # mean over kept rows
    kernels.linear_cross_entropy(x, weight, targets, ignore_index=-1)
    kernels.attention(q, k, v, causal=True, dropout_p=0.0)       # (B, H, T, D), any strides

Until an op's Triton kernel lands, its public function runs the reference.
"""

import os

import torch

# Without a GPU, Triton kernels run under Triton's interpreter; it must be chosen before
# triton is first imported. A user who set TRITON_INTERPRET themselves keeps their choice.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import reference  # noqa: E402

# Kernel modules are imported here, before the public functions below are defined: importing a
# submodule binds its name on this package, and `kernels/cross_entropy.py` would otherwise
# replace the function `kernels.cross_entropy`. Tests reach a module by
# importlib.import_module("kernels.<name>").
from kernels import cross_entropy as _cross_entropy  # noqa: E402
from kernels import layernorm as _layernorm  # noqa: E402


def autocast_dtype(device_type):
    """The dtype torch.autocast runs matmuls in on `device_type`, or None when it is off.

    Triton ops are not seen by autocast, so a public op casts its inputs itself to behave as
    torch's own op would under autocast (fp32 master weights, bf16 compute)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def layer_norm(x, weight, bias=None, eps=1e-5):
    return _layernorm.layer_norm(x, weight, bias, eps)


# The submodule shares this op's name: import it once here, and the def below takes the name back
# (a lazy import inside the function would rebind `kernels.linear_gelu` to the module).
from kernels import linear_gelu as _linear_gelu  # noqa: E402


def linear_gelu(x, weight, bias=None):
    return _linear_gelu.linear_gelu(x, weight, bias)


def cross_entropy(logits, targets, ignore_index=-1):
    return _cross_entropy.cross_entropy(logits, targets, ignore_index)


def linear_cross_entropy(x, weight, targets, ignore_index=-1):
    return _cross_entropy.linear_cross_entropy(x, weight, targets, ignore_index, autocast_dtype(x.device.type))


# Same story as linear_gelu: kernels/attention.py shares the op's name.
from kernels import attention as _attention  # noqa: E402


def attention(q, k, v, causal=True, dropout_p=0.0):
    return _attention.attention(q, k, v, causal=causal, dropout_p=dropout_p)


__all__ = ["layer_norm", "linear_gelu", "cross_entropy", "linear_cross_entropy", "attention", "reference"]
