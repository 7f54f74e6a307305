"""The ops of the hot path, autograd-aware, each checked against `kernels.reference`.

    kernels.layer_norm(x, weight, bias, eps=1e-5)               # bias may be None
    kernels.add_layer_norm(x, y, weight, bias, eps=1e-5)        # (s = x + y, layer_norm(s)), one pass
    kernels.rms_norm(x, weight=None, eps=1e-5)                   # RMSNorm, with a gain or without
    kernels.add_rms_norm(x, y, weight=None, eps=1e-5)            # (s = x + y, rms_norm(s)), one pass
    kernels.linear_gelu(x, weight, bias, approximate="tanh")     # gelu(x @ weight.T + bias), "tanh" or "none" (erf)
    kernels.linear_act(x, weight, bias, activation="relu2")     # act(x @ weight.T + bias): gelu_tanh, gelu_exact, relu2
    kernels.cross_entropy(logits, targets, ignore_index=-1)      # mean over kept rows; softcap=C caps the logits
    kernels.linear_cross_entropy(x, weight, targets, ignore_index=-1)   # also softcap=C
    kernels.raise_on_bad_targets(device)                         # a ValueError if a target was out of range
    kernels.attention(q, k, v, causal=True, dropout_p=0.0)       # (B, H, T, D), any strides
    kernels.attention_qkv(qkv, causal=True, dropout_p=0.0)      # (B, T, 3, H, D) -> (B, T, H, D)
        # both also take scale=None (1/sqrt(D)), window=0 (sliding: the positions a query sees) and
        # rotary=(cos, sin, interleaved) with tables (T, R/2), R <= D, and qk_norm=False (q and k
        # RMS-normalized per head first); any head dim D up to 256
    kernels.xxt(x, alpha=1.0, add=None, beta=0.0)                # beta * add + alpha * x @ x^T, half of it computed
    kernels.newton_schulz(g, steps=5)                            # Muon's orthogonalization, on xxt

One module per op family: normalization.py (layer_norm, add_layer_norm, rms_norm, add_rms_norm),
fused_mlp.py (linear_gelu, linear_act), losses.py (cross_entropy), lm_head.py (linear_cross_entropy),
flash_attention.py (attention, attention_qkv; its jit code in flash_attention_kernels.py), newton_schulz.py
(xxt, newton_schulz: Muon's symmetric products); common.py holds what they
share, reference.py the pure-PyTorch definitions they are checked against. Every op is registered with torch.library as
tritongpt::<name> (and tritongpt::<name>_backward), so torch.compile sees each as one node.
"""

import os

import torch

# Without a GPU, Triton kernels run under Triton's interpreter; it must be chosen before
# triton is first imported. A user who set TRITON_INTERPRET themselves keeps their choice.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tritongpt.kernels import reference  # noqa: E402
from tritongpt.kernels.common import fix_interpreter, fix_tiles, tiles_fixed  # noqa: E402
from tritongpt.kernels.flash_attention import attention, attention_qkv  # noqa: E402
from tritongpt.kernels.fused_mlp import linear_act, linear_gelu  # noqa: E402
from tritongpt.kernels.lm_head import linear_cross_entropy  # noqa: E402
from tritongpt.kernels.losses import cross_entropy, raise_on_bad_targets  # noqa: E402
from tritongpt.kernels.newton_schulz import newton_schulz, xxt  # noqa: E402
from tritongpt.kernels.normalization import add_layer_norm, add_rms_norm, layer_norm, rms_norm  # noqa: E402

fix_interpreter()

__all__ = [
    "layer_norm", "add_layer_norm", "rms_norm", "add_rms_norm", "linear_gelu", "linear_act", "cross_entropy",
    "linear_cross_entropy", "attention", "attention_qkv", "raise_on_bad_targets", "reference", "fix_tiles", "tiles_fixed",
    "xxt", "newton_schulz",
]
