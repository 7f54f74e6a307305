"""The ops of the hot path, autograd-aware, each checked against `kernels.reference`.

    kernels.layer_norm(x, weight, bias, eps=1e-5)               # bias may be None
    kernels.linear_gelu(x, weight, bias)                         # gelu_tanh(x @ weight.T + bias)
    kernels.cross_entropy(logits, targets, ignore_index=-1)      # mean over kept rows
    kernels.linear_cross_entropy(x, weight, targets, ignore_index=-1)
    kernels.attention(q, k, v, causal=True, dropout_p=0.0)       # (B, H, T, D), any strides
"""

import os

import torch

# Without a GPU, Triton kernels run under Triton's interpreter; it must be chosen before
# triton is first imported. A user who set TRITON_INTERPRET themselves keeps their choice.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import reference  # noqa: E402
from kernels.common import autocast_dtype  # noqa: E402

# The kernel modules are imported here, before the public functions below are defined: importing
# a submodule binds its name on this package, and three of them share their op's name
# (kernels/cross_entropy.py, linear_gelu.py, attention.py); the defs below take the names back.
# Tests reach a module by importlib.import_module("kernels.<name>").
from kernels import attention as _attention  # noqa: E402
from kernels import cross_entropy as _cross_entropy  # noqa: E402
from kernels import layernorm as _layernorm  # noqa: E402
from kernels import linear_gelu as _linear_gelu  # noqa: E402


def layer_norm(x, weight, bias=None, eps=1e-5):
    return _layernorm.layer_norm(x, weight, bias, eps)


def linear_gelu(x, weight, bias=None):
    return _linear_gelu.linear_gelu(x, weight, bias)


def cross_entropy(logits, targets, ignore_index=-1):
    return _cross_entropy.cross_entropy(logits, targets, ignore_index)


def linear_cross_entropy(x, weight, targets, ignore_index=-1):
    return _cross_entropy.linear_cross_entropy(x, weight, targets, ignore_index, autocast_dtype(x.device.type))


def attention(q, k, v, causal=True, dropout_p=0.0):
    return _attention.attention(q, k, v, causal=causal, dropout_p=dropout_p)


__all__ = ["layer_norm", "linear_gelu", "cross_entropy", "linear_cross_entropy", "attention", "reference"]
