"""Pure-PyTorch references: the one definition of "correct" for every op in `kernels`.

Written for clarity, not speed. Each op takes `upcast`: with `upcast=True` the inputs are
promoted to fp32 before any arithmetic and the result is cast back to the input's dtype (the
"out_ref" of the parity rule); with `upcast=False` the op runs in the inputs' own precision
(the "out_pt" of the parity rule, and what the torch backend of `gpt/` runs). Losses are always
returned in fp32.
"""

import math

import torch
import torch.nn.functional as F


def _up(t, upcast):
    return t.float() if (upcast and t is not None) else t


def layer_norm(x, weight, bias=None, eps=1e-5, upcast=False):
    """LayerNorm over the last dim of x (..., C); weight and bias (C,); bias may be None."""
    y = F.layer_norm(_up(x, upcast), (x.shape[-1],), _up(weight, upcast), _up(bias, upcast), eps)
    return y.to(x.dtype) if upcast else y


def add_layer_norm(x, y, weight, bias=None, eps=1e-5, upcast=False):
    """(s, layer_norm(s)) with s = x + y: a residual add and the LayerNorm that follows it.
    s is x + y as torch computes it (in the promoted dtype); the LayerNorm as layer_norm above."""
    s = x + y
    return s, layer_norm(s, weight, bias, eps, upcast=upcast)


def rms_norm(x, weight=None, eps=1e-5, upcast=False):
    """RMSNorm over the last dim of x (..., C): x / sqrt(mean(x^2) + eps), times weight (C,)
    when there is one (a gain); no mean is taken off and there is no bias."""
    y = F.rms_norm(_up(x, upcast), (x.shape[-1],), _up(weight, upcast), eps)
    return y.to(x.dtype) if upcast else y


def add_rms_norm(x, y, weight=None, eps=1e-5, upcast=False):
    """(s, rms_norm(s)) with s = x + y, as add_layer_norm."""
    s = x + y
    return s, rms_norm(s, weight, eps, upcast=upcast)


def gelu_tanh(x):
    """GPT-2's GELU: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    return F.gelu(x, approximate="tanh")


def gelu_exact(x):
    """The exact GELU of GPT-NeoX (Pythia) and Cerebras-GPT: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return F.gelu(x)


def gelu(x, approximate="tanh"):
    """gelu_tanh (approximate="tanh") or gelu_exact (approximate="none"), as F.gelu names them."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    return gelu_tanh(x) if approximate == "tanh" else gelu_exact(x)


def relu2(x):
    """ReLU squared (Primer; nanochat's and the GPT-2 speedrun's MLP): relu(x)^2."""
    return F.relu(x).square()


# The MLP's activations, by the names the fused MLP kernel and GPTConfig use.
ACTIVATIONS = {"gelu_tanh": gelu_tanh, "gelu_exact": gelu_exact, "relu2": relu2}


def linear_gelu(x, weight, bias=None, upcast=False, approximate="tanh"):
    """gelu(x @ weight.T + bias); x (..., K), weight (N, K) as in nn.Linear, bias (N,) or None;
    the tanh GELU by default, the exact erf one with approximate="none"."""
    y = gelu(F.linear(_up(x, upcast), _up(weight, upcast), _up(bias, upcast)), approximate)
    return y.to(x.dtype) if upcast else y


def linear_act(x, weight, bias=None, activation="gelu_tanh", upcast=False):
    """act(x @ weight.T + bias) with act one of ACTIVATIONS: the MLP's first half."""
    y = ACTIVATIONS[activation](F.linear(_up(x, upcast), _up(weight, upcast), _up(bias, upcast)))
    return y.to(x.dtype) if upcast else y


def logit_softcap(logits, cap):
    """cap * tanh(logits / cap) (Gemma 2's, nanochat's logit soft-cap): the logits squashed into
    (-cap, cap); cap = 0 (or None) leaves them as they are."""
    return logits if not cap else cap * torch.tanh(logits / cap)


def cross_entropy(logits, targets, ignore_index=-1, vocab_size=None, upcast=False, softcap=0.0):
    """Mean cross-entropy over the rows whose target != ignore_index; logits (..., V), targets (...).

    A batch where every target is ignored has a defined loss of 0 (and zero gradients), not NaN.
    vocab_size (default V): the classes, when the last dim is padded past them; the padding
    columns are cut off, so they take no probability, get zero gradients, and a target there is
    out of range (an IndexError, as for any target >= V, from F.cross_entropy on a CPU).
    softcap: C > 0 takes the loss of C * tanh(logits / C) (logit_softcap above); 0: none.
    """
    logits = logit_softcap(_up(logits.reshape(-1, logits.shape[-1])[:, :vocab_size], upcast), softcap)
    targets = targets.reshape(-1)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    kept = (targets != ignore_index).sum().clamp(min=1)
    return total.float() / kept


def linear_cross_entropy(x, weight, targets, ignore_index=-1, vocab_size=None, upcast=False, softcap=0.0):
    """cross_entropy(x @ weight.T, targets): the LM head and the loss; x (..., C), weight (V, C)."""
    logits = F.linear(_up(x, upcast), _up(weight, upcast))
    return cross_entropy(logits, targets, ignore_index=ignore_index, vocab_size=vocab_size, softcap=softcap)


def attention_mask(T, S, window=0, device=None):
    """(T, S) bool, True where query t may see key s: the causal mask of T queries that are the
    last T of S positions (query t sits at position S - T + t), and with window > 0 only the last
    `window` positions up to the query's own (itself included), as GPT-Neo's local attention."""
    q_pos = torch.arange(S - T, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    keep = k_pos <= q_pos
    if window:
        keep = keep & (q_pos - k_pos < window)
    return keep


# QK-norm's epsilon: q and k are RMS-normalized per head over their D dims, with no gain.
QK_NORM_EPS = 1e-6


def qk_rms_norm(x, upcast=False):
    """QK-norm of q or k (..., D): rms_norm over each head's D dims, no gain, eps QK_NORM_EPS."""
    return rms_norm(x, None, QK_NORM_EPS, upcast=upcast)


def attention(q, k, v, causal=True, dropout_p=0.0, dropout_mask=None, upcast=False, scale=None, window=0, rotary=None,
              qk_norm=False):
    """softmax(q k^T * scale [causal]) v over q, k, v (B, H, T, D); scale defaults to 1 / sqrt(D).

    With window > 0 (causal only), each query sees only the last `window` positions, its own
    included (attention_mask above). The T queries are the last T of the S keys' positions.
    rotary: None, or (cos, sin, interleaved) of rotary() below, which turns q and k first.
    qk_norm: q and k RMS-normalized per head first (qk_rms_norm above; a rotation keeps
    each pair's length, so normalizing before or after rotary is the same).
    Dropout on the attention probabilities: either drawn here with probability `dropout_p`, or
    given as `dropout_mask` (B, H, T, S) of kept positions (the mask a kernel used, for tests);
    kept probabilities are scaled by 1 / (1 - dropout_p).
    """
    if window and not causal:
        raise ValueError("attention: a window needs causal=True")
    dtype = q.dtype
    q, k, v = _up(q, upcast), _up(k, upcast), _up(v, upcast)
    if qk_norm:
        q, k = qk_rms_norm(q), qk_rms_norm(k)
    if rotary is not None:  # rotary() takes (..., T, H, D): the heads moved behind T and back
        cos, sin, interleaved = rotary
        q, k = (rotary_bhtd(t, cos, sin, interleaved) for t in (q, k))
    T, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if causal:
        att = att.masked_fill(~attention_mask(T, S, window, q.device), float("-inf"))
    att = torch.softmax(att, dim=-1)
    if dropout_mask is not None:
        att = att * dropout_mask.to(att.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    y = att @ v  # (B, H, T, D)
    return y.to(dtype) if upcast else y


def rotary(x, cos, sin, interleaved=False, upcast=False):
    """Rotary position embedding of x (..., T, H, D): the leading R = 2 * cos.shape[-1] dims of
    each head turned, pair by pair, by the angles of its position; the other D - R pass through.

    cos, sin (T, R/2): cos and sin of position t times frequency i. A pair is dims (i, i + R/2)
    (GPT-NeoX's halves) or, with interleaved, dims (2i, 2i + 1) (GPT-J's pairs); each pair (a, b)
    becomes (a cos - b sin, b cos + a sin). Without upcast the tables are cast to x's dtype first.
    """
    dtype = x.dtype
    x = _up(x, upcast)
    R = 2 * cos.shape[-1]
    cos, sin = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]  # (T, 1, R/2)
    turned, rest = x[..., :R], x[..., R:]
    if interleaved:
        a, b = turned[..., 0::2], turned[..., 1::2]
    else:
        a, b = turned[..., : R // 2], turned[..., R // 2 :]
    a2, b2 = a * cos - b * sin, b * cos + a * sin
    turned = torch.stack((a2, b2), dim=-1).flatten(-2) if interleaved else torch.cat((a2, b2), dim=-1)
    y = torch.cat((turned, rest), dim=-1)
    return y.to(dtype) if upcast else y


def rotary_bhtd(x, cos, sin, interleaved=False, upcast=False):
    """rotary() of x (B, H, T, D), the layout attention takes."""
    return rotary(x.transpose(1, 2), cos, sin, interleaved, upcast).transpose(1, 2)


# Muon's quintic Newton-Schulz iteration (Keller Jordan's coefficients): each step maps every
# singular value s of X to a*s + b*s^3 + c*s^5, which pushes the values of (0, 1] towards 1 fast
# (those above about 0.0015 into [0.68, 1.21] after five steps, which is all Muon needs), without
# converging exactly.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7


def symmetric(a):
    """The symmetric matrix of a's lower triangle (..., M, M): what xxt reads of its addend."""
    return a.tril() + a.tril(-1).mT


def xxt(x, alpha=1.0, add=None, beta=0.0, upcast=False):
    """beta * add + alpha * (x @ x^T) for x (..., M, K) and add (..., M, M) or None: the symmetric
    products of the Newton-Schulz iteration (X X^T, and b A + c A A^T with A symmetric). Of add
    only the lower triangle is read, the result being symmetric: symmetric(add) stands for it."""
    dtype = x.dtype
    x, add = _up(x, upcast), _up(add, upcast)
    out = alpha * (x @ x.mT)
    if add is not None:
        out = out + beta * symmetric(add)
    return out.to(dtype) if upcast else out


def newton_schulz(g, steps=5, upcast=False):
    """The orthogonalized g (..., M, N): about U V^T of g's SVD U S V^T (each singular value taken
    to near 1), by `steps` quintic Newton-Schulz steps on g / ||g||_F (whose singular values are
    then at most 1). Works on the wide side (X X^T is min(M, N) square): a tall g is transposed
    first and back after. In g's own dtype (bf16 on a GPU), or fp32 with upcast."""
    dtype = g.dtype
    a, b, c = NS_COEFFICIENTS
    x = _up(g, upcast)
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
    for _ in range(steps):
        A = xxt(x)  # (..., m, m), m = min(M, N)
        B = xxt(A, c, A, b)  # b A + c A A^T = b A + c A^2: A is symmetric
        x = a * x + B @ x
    if tall:
        x = x.mT
    return x.to(dtype) if upcast else x
