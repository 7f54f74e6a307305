"""Flash attention (FlashAttention-2) in Triton: causal, forward and backward, with dropout, a
softmax scale, a sliding window, rotary position embeddings and QK-norm.

    y = attention(q, k, v, causal=True, dropout_p=0.0, scale=None, window=0, rotary=None, qk_norm=False)
        # q, k, v (B, H, T, D), any strides
    y = attention_qkv(qkv, causal=True, dropout_p=0.0, scale=None, window=0, rotary=None, qk_norm=False)
        # qkv (B, T, 3, H, D) -> y (B, T, H, D)

Forward: one program per (batch*head, query tile), B * H in grid dimension x. It walks the key
tiles with an online softmax in fp32 (running max m and sum l, scores in log2 units so exp2 does
the work, 1/sqrt(D)*log2(e) folded into one multiply; the scale is 1/sqrt(D) unless given,
GPT-Neo's is 1.0) and saves lse = m + log2(l) per row (4 bytes a row). Under the causal mask the
key tiles wholly above the diagonal are never visited and only the tiles that straddle it (and
the ragged tail at T) are masked. With a window (GPT-Neo's local attention: query i sees
keys i - window + 1 .. i) the key tiles wholly before it are never visited either, and the ones
across its start are masked; the backward's loops skip the same tiles (the dK/dV program's
queries end where the window of its last key does, the dQ program's keys start where its first
query's window does). A window of T or more is no window. Nothing of size T x T is ever in memory.

Backward: the probabilities are recomputed from q, k and the saved lse, not stored. A small
pass computes delta = rowsum(dO * O); then one kernel, launched twice, computes dK, dV (a program
per key tile, looping over the query tiles that see it) and dQ (a program per query tile, looping
over the key tiles it sees). Each output tile is owned by one program: no atomics, no zero-fill.
The price: QK^T and dO V^T are computed in both launches (7 tile matmuls where accumulating dQ
with atomics inside the dK/dV loop would need 5); in exchange no fp32 dQ buffer, no atomics and
a deterministic result.

attention_qkv is the model's form: it takes c_attn's output as it is, (B, T, 3, H, D), returns y
as (B, T, H, D) contiguous, which c_proj reads as (B, T, C) without a copy, and its backward
writes dq, dk and dv straight into one (B, T, 3, H, D) gradient, which is c_attn's output
gradient: the split of the projection into q, k, v costs no copy in either direction.

Any head dim from 1 to 256 (GPT-2's 64, Pythia's 80 and GPT-NeoX-20B's 96, GPT-J's 256): the
kernels run tiles of BLOCK_D = the next power of two (at least 16) and mask the columns past D,
with no padded copy; at a power of two the masks are not compiled, so GPT-2's kernels are the
ones they were. Any T >= 1; fp32, fp16, bf16.

Rotary (cos, sin (T, R/2) fp32 tables, GPT-NeoX's halves (i, i + R/2) or GPT-J's interleaved
pairs (2i, 2i + 1), on the first R of the D dims) is applied inside the kernels: q and k tiles
are turned in registers as they are loaded (in the forward, and in the backward's recomputation
of the scores), and dq, dk are turned back by the transposed rotation before they are stored, so
the rotated q and k never exist in memory. The tiles are then two halves, column j of each
holding one dim of pair j (the scores, sums over the dims, do not mind the order), which makes a
turn elementwise: no data moves between columns.

QK-norm (qk_norm=True: q and k each divided by their root mean square over the head dim, with
no gain and eps = reference.QK_NORM_EPS, as nanochat and the GPT-2 speedrun do) is done the
same way: each q and k tile is normalized in registers as it is loaded, before rotary turns it,
and the backward, which holds 1 / rms of its own rows from their load, takes dq and dk through
the norm's backward, rstd * (g - x * mean(g * x)) with x the normalized row, before turning them
back: no normalized copy of q or k is written, and the only extra work is a row sum per tile.

Dropout on the probabilities is drawn inside the kernels by Philox (`tl.rand`) keyed by
(seed, batch*head) with counter row * T + column, so the backward regenerates the very mask the
forward used from the seed alone. The seed is a (1,) int64 tensor drawn on the inputs' device by
torch's generator of that device at each call (torch.randint), read by the kernels through a
pointer: no host sync and no host value per launch, so a step with dropout can be captured in a
CUDA graph, and `torch.manual_seed` makes runs repeatable. It is saved for the backward. Kept
probabilities are scaled by 1 / (1 - p).

FLOPs (the convention of the benchmarks): forward 4 * B * H * T * T * D, halved when causal
(two matmuls, QK^T and PV, of 2*T*T*D each); backward 2.5x the forward (five matmuls, one of
them the recomputed QK^T).

Bad input (a head dim past 256, tables not (T, R/2) with R <= D, a negative window or one without
the causal mask) is a ValueError naming it, raised before any launch.

Past 400 lines for a reason: four custom ops (attention and attention_qkv, each with its
backward) that carry the same options, with their checks and launchers, read best in one file.

The jit kernels are in flash_attention_kernels.py (read it first); this file holds the rest,
top to bottom: tuning lists, host launchers, the torch.library ops (tritongpt::attention,
attention_qkv and their _backward ops) and their autograd, the public functions.
"""

import math
from typing import Optional

import torch
import triton

from tritongpt.kernels.common import (
    AUTOTUNE, NAMESPACE, autocast_inputs, check_device, check_one_dtype, check_tensors, device_guard, interpreted,
    tiles_fixed,
)
from tritongpt.kernels.flash_attention_kernels import _attn_bwd_delta_kernel, _attn_bwd_kernel, _attn_fwd_kernel

MAX_HEAD_DIM = 256  # any head dim up to it; padded to BLOCK_D, a power of two >= 16, in the kernels
MAX_T_DROPOUT = 46340  # row * T + col must fit the int32 Philox counter
LOG2E = 1.4426950408889634

# ----------------------------------------------------------------------------- tuning

# Candidates for Hopper (H100 / H200); each kernel is tuned once per TUNE_KEY (and the inputs'
# dtype); the first tile sets the grid. Forward: BLOCK_M queries by BLOCK_N keys. Backward: a
# program keeps BLOCK_BIG keys (then queries) in registers and streams BLOCK_SMALL-row tiles of
# the other side past them. Each tile is tried only up to the tile widths (BLOCK_D, the head dim
# padded to a power of two) it was compiled clean at: (largest BLOCK_D without dropout, with
# dropout, with rotary, with rotary and dropout; 0: never) -- past them it spills registers on
# sm_90 with Triton 3.9 (dropout's in-kernel Philox draws take a tile's worth of registers of
# their own, rotary's turns about as many; with Triton 3.6 a few rotary and window variants
# within them spill 24-264 bytes a thread: tools/results/aot-triton-3.6/, to be pruned once a GPU
# can time the alternatives). `python tools/aot.py` compiles every pair,
# tests/test_aot.py holds them to it. The last tiles of each list are narrower ones for rotary
# (and, in the forward, BLOCK_D 256), where the wide ones spill. The backward at BLOCK_D 256 has
# no tile here: every tile wgmma can run (64 rows or more) spills there (dK and dV alone are
# 2 x 64 x 256 fp32), so it runs NARROW_BWD[256], 16 x 16 tiles on mma.sync, untuned. QK-norm
# (a row sum per tile, one (rows,) rstd kept by the backward) has no column of its own: every
# tile these limits allow compiled clean with it too at the audit's QK-norm entries (head dim 64
# with and without dropout, with rotary; 128 with rotary, with and without dropout; Triton 3.9),
# once the forward's 64 x 64 tile stopped short of head dim 64 with dropout.
TUNE_KEY = ["HEAD_DIM", "T_BUCKET", "CAUSAL", "WINDOWED", "ROTARY", "DROPOUT", "QK_NORM"]
FWD_TILES = {  # (BLOCK_M, BLOCK_N, warps, stages): (BLOCK_D plain, dropout, rotary, rotary + dropout)
    (128, 64, 4, 3): (64, 0, 0, 0),
    (128, 64, 8, 3): (128, 128, 64, 64),
    (128, 128, 8, 3): (128, 0, 64, 0),
    (128, 32, 4, 4): (64, 64, 64, 64),
    (64, 64, 4, 4): (128, 32, 64, 64),  # with dropout and QK-norm at 64 it spilled 8-24 bytes
    (64, 32, 4, 3): (128, 128, 128, 64),
    (64, 32, 8, 2): (256, 256, 256, 256),
}
BWD_TILES = {  # (BLOCK_BIG, BLOCK_SMALL, warps, stages): as FWD_TILES, for both launches
    (128, 32, 8, 3): (128, 64, 64, 64),
    (128, 32, 8, 4): (128, 64, 64, 64),
    (128, 64, 8, 3): (64, 0, 0, 0),
    (64, 32, 4, 3): (128, 64, 64, 64),
    (64, 32, 8, 3): (128, 128, 128, 64),
    (64, 64, 4, 3): (64, 0, 0, 0),
    (64, 16, 8, 2): (128, 128, 128, 128),
}
FWD_CONFIGS = [
    triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s) for m, n, w, s in FWD_TILES
]
BWD_CONFIGS = [
    triton.Config(dict(BLOCK_BIG=big, BLOCK_SMALL=small), num_warps=w, num_stages=s) for big, small, w, s in BWD_TILES
]


def _head_dims_of(tiles, rows, cols):
    """The autotuner's early pruning for `tiles`: the configs compiled clean at this BLOCK_D with
    or without DROPOUT and ROTARY."""

    def prune(configs, named_args, **kwargs):
        d, column = kwargs["BLOCK_D"], 2 * bool(kwargs.get("ROTARY")) + bool(kwargs["DROPOUT"])
        return [
            c for c in configs
            if d <= tiles[(c.kwargs[rows], c.kwargs[cols], c.num_warps, c.num_stages)][column]
        ]

    return prune


# With AUTOTUNE off (kernels.common's switch; the tests turn it off too) or the tiles fixed
# (kernels.common.fix_tiles: the trainer's deterministic=true) each kernel runs one
# small config, its two tiles unequal so the tile-skipping arithmetic is exercised as on the
# GPU; none spills in 16-bit on sm_90 (the backward's 8 warps: on 4 it spilled at head dim 128
# with dropout). fp32 on a GPU (ieee dot products, no tensor cores: right, not fast) runs
# smaller tiles still, the largest that spill at no head dim, with or without dropout, with
# Triton 3.9 or 3.6 (the SMALL ones spilled 0.3-9 KB a thread); under the interpreter fp32 runs
# the SMALL ones too.
SMALL_FWD = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
SMALL_BWD = dict(BLOCK_BIG=64, BLOCK_SMALL=32, num_warps=8, num_stages=3)
# ... and, where those spill (rotary; BLOCK_D 256), narrower ones that spilled at none of them
NARROW_FWD = dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)
NARROW_BWD = {128: dict(BLOCK_BIG=64, BLOCK_SMALL=16, num_warps=8, num_stages=2),
              256: dict(BLOCK_BIG=16, BLOCK_SMALL=16, num_warps=8, num_stages=2)}
FP32_FWD = dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2)
FP32_BWD = dict(BLOCK_BIG=16, BLOCK_SMALL=16, num_warps=4, num_stages=2)
FP32_NARROW_FWD = dict(BLOCK_M=16, BLOCK_N=16, num_warps=8, num_stages=2)  # rotary; BLOCK_D 256
FP32_NARROW_BWD = dict(BLOCK_BIG=16, BLOCK_SMALL=16, num_warps=8, num_stages=2)  # and a window
DELTA_BLOCK_M = 32  # rows of the backward's rowsum(dO * O) pass per program (64 spilled in fp32 with 3.6)


# ----------------------------------------------------------------------------- host launchers

_attn_fwd_tuned = triton.autotune(
    FWD_CONFIGS, key=TUNE_KEY, prune_configs_by={"early_config_prune": _head_dims_of(FWD_TILES, "BLOCK_M", "BLOCK_N")}
)(_attn_fwd_kernel)
_attn_bwd_tuned = triton.autotune(
    BWD_CONFIGS, key=TUNE_KEY + ["DKDV"],
    prune_configs_by={"early_config_prune": _head_dims_of(BWD_TILES, "BLOCK_BIG", "BLOCK_SMALL")},
)(_attn_bwd_kernel)


def _check(q, k, v, dropout_p, causal=True, window=0, cos=None, sin=None):
    """Shapes, dtypes, devices and options the kernels take; a ValueError naming what is wrong.
    Needs no data, so the fake implementations run it too."""
    check_tensors("attention", q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be a (B, H, T, D) tensor, got {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"attention: q, k, v must have one shape (B, H, T, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)} (self-attention only: no cross-attention or grouped heads)"
        )
    check_one_dtype("attention", q=q, k=k, v=v)
    check_device("attention", q=q, k=k, v=v)
    B, H, T, D = q.shape
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim {D} is not supported; the kernels take 1 to {MAX_HEAD_DIM}")
    if B * H * T == 0:
        raise ValueError(f"attention: B, H and T must be >= 1, got shape {tuple(q.shape)}")
    if max(q.stride(2), k.stride(2), v.stride(2), H * D) * T >= 2**31:  # in-tile offsets are int32
        raise ValueError(f"attention: T * (stride of T) must be < 2**31 (int32 offsets in a head), got T={T}, strides {q.stride()}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p!r}")
    if dropout_p > 0.0 and T > MAX_T_DROPOUT:
        raise ValueError(f"attention: dropout supports T up to {MAX_T_DROPOUT}, got {T}")
    if window < 0:
        raise ValueError(f"attention: window must be an int >= 0 (0: no window), got {window!r}")
    if window and not causal:
        raise ValueError("attention: a window needs causal=True (it is the causal local attention of GPT-Neo)")
    if (cos is None) != (sin is None):
        raise ValueError("attention: rotary needs both cos and sin tables (or neither)")
    if cos is not None:
        if cos.dim() != 2 or cos.shape != sin.shape:
            raise ValueError(
                f"attention: rotary cos and sin must be (T, R/2) tables of one shape, got {tuple(cos.shape)} and {tuple(sin.shape)}"
            )
        if cos.shape[0] != T or not 1 <= cos.shape[1] <= D // 2:
            raise ValueError(
                f"attention: rotary cos and sin must be (T, R/2) = ({T}, 1..{D // 2}) for T={T} and head dim {D} "
                f"(R the rotated dims, even, at most D), got {tuple(cos.shape)}"
            )
        if cos.dtype != torch.float32 or sin.dtype != torch.float32 or cos.device != q.device or sin.device != q.device:
            raise ValueError(f"attention: rotary cos and sin must be fp32 on {q.device}, got {cos.dtype}, {sin.dtype} on {cos.device}")


def _split(qkv):
    """qkv (B, T, 3, H, D) -> q, k, v (B, H, T, D) views of it, no copy."""
    check_tensors("attention_qkv", qkv=qkv)
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"attention_qkv: qkv must be (B, T, 3, H, D), c_attn's output viewed so, got {tuple(qkv.shape)}")
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _empty_bhtd(B, H, T, D, like, dtype=None):
    """(B, H, T, D) laid out as (B, T, H, D): the model's y.transpose(1, 2).reshape is then free."""
    return torch.empty((B, T, H, D), dtype=dtype or like.dtype, device=like.device).transpose(1, 2)


def block_d(D, rotary=False):
    """The tile width of head dim D: the next power of two, at least 16 (tl.dot's smallest), 32
    with rotary (whose q and k tiles are two halves)."""
    return max(32 if rotary else 16, triton.next_power_of_2(D))


def _flags(q, causal, dropout_p, window, rotary, qk_norm=False):
    """The kernels' specialization: tl.constexpr flags, and T's bucket for the autotune key."""
    T, D = q.shape[2], q.shape[3]
    return dict(
        HEAD_DIM=D, BLOCK_D=block_d(D, rotary is not None), CAUSAL=bool(causal), WINDOWED=window > 0, ROTARY=rotary is not None,
        INTERLEAVED=bool(rotary is not None and rotary[2]), DROPOUT=dropout_p > 0.0, QK_NORM=bool(qk_norm),
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",  # fp16/bf16 ignore it
        T_BUCKET=min(triton.next_power_of_2(T), 8192),
    )


def _options(q, scale, window, cos, sin, interleaved):
    """(sm_scale, window, rotary) as the launchers take them: the scale (1/sqrt(D) by default),
    the window (0 when it covers every position anyway), rotary (cos, sin, interleaved) or None."""
    T, D = q.shape[2], q.shape[3]
    sm_scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return sm_scale, (window if window < T else 0), (None if cos is None else (cos, sin, bool(interleaved)))


def _autotuned(q, flags=None, backward=False):
    """Autotune over the Hopper configs, or run one config (AUTOTUNE off, tiles fixed, or fp32; the
    backward at BLOCK_D 256, which has no tile in BWD_TILES)."""
    return AUTOTUNE and not tiles_fixed() and q.dtype != torch.float32 and not (backward and flags["BLOCK_D"] > 128)


def _one_config(q, flags, small, fp32):
    """The config of a launch that is not autotuned: fp32's own on a GPU, else the small one; the
    narrow ones instead with rotary or at BLOCK_D 256 (and the backward's in fp32 with a window:
    its dQ spilled on 4 warps). small, fp32: the forward's or the backward's."""
    forward = small is SMALL_FWD
    narrow = flags["ROTARY"] or flags["BLOCK_D"] > 128
    if q.dtype == torch.float32 and not interpreted():
        if forward:
            return FP32_NARROW_FWD if narrow else fp32
        return FP32_NARROW_BWD if narrow or flags["WINDOWED"] else fp32
    if narrow:
        return NARROW_FWD if forward else NARROW_BWD[max(128, flags["BLOCK_D"])]
    return small


MAX_GRID_X, MAX_GRID_Y = 2**31 - 1, 65535  # CUDA's limits on grid dimensions x and y


def _grid(T, rows, heads):
    """(B * H, tiles of `rows` rows): the heads in grid dimension x, where CUDA allows 2**31 - 1
    programs, the tiles in y, where it allows 65535 (B * H passed that at 8192 sequences of GPT-2's
    12 heads; T would have to pass a million rows); a ValueError names a limit passed."""
    tiles = triton.cdiv(T, rows)
    if heads > MAX_GRID_X or tiles > MAX_GRID_Y:
        raise ValueError(f"attention: a grid of B * H = {heads} by ceil(T / {rows}) = {tiles} programs passes CUDA's "
                         f"limits of {MAX_GRID_X} by {MAX_GRID_Y}; split the batch or the sequence")
    return heads, tiles


def attention_fwd(
    q, k, v, causal, dropout_p, seed, o=None, scale=None, window=0, cos=None, sin=None, interleaved=False, qk_norm=False
):
    """q, k, v (B, H, T, D) -> o (B, H, T, D), laid out (B, T, H, D) unless given, and lse (B, H,
    T) fp32 (log2 units). seed: a (1,) int64 tensor on q's device (read only with dropout).
    scale, window, cos, sin, interleaved, qk_norm: as attention() takes them."""
    _check(q, k, v, dropout_p, causal, window, cos, sin)
    B, H, T, D = q.shape
    if dropout_p > 0.0 and seed is None:
        raise ValueError("attention: dropout needs a seed tensor")
    o = _empty_bhtd(B, H, T, D, q) if o is None else o
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    sm_scale, window, rotary = _options(q, scale, window, cos, sin, interleaved)
    cos, sin = (cos, sin) if rotary is not None else (lse, lse)
    args = (
        q, k, v, o, lse, seed if seed is not None else lse, cos, sin, q.stride(), k.stride(), v.stride(), o.stride(),
        H, T, sm_scale * LOG2E, dropout_p, 1.0 / (1.0 - dropout_p), window, 2 * cos.shape[-1] if rotary else 0,
    )
    flags = _flags(q, causal, dropout_p, window, rotary, qk_norm)
    grid = lambda meta: _grid(T, meta["BLOCK_M"], B * H)  # noqa: E731
    with device_guard(q):
        if _autotuned(q):
            _attn_fwd_tuned[grid](*args, **flags)
        else:
            _attn_fwd_kernel[grid](*args, **flags, **_one_config(q, flags, SMALL_FWD, FP32_FWD))
    return o, lse


def attention_bwd(
    do, q, k, v, o, lse, causal, dropout_p, seed, grads=None, scale=None, window=0, cos=None, sin=None, interleaved=False,
    qk_norm=False,
):
    """The forward's inputs, o, lse and seed, and dO (B, H, T, D) -> dq, dk, dv (B, H, T, D), laid
    out (B, T, H, D) each unless `grads` gives them (one layout for the three)."""
    _check(q, k, v, dropout_p, causal, window, cos, sin)
    if do.shape != q.shape or do.device != q.device:
        raise ValueError(f"attention: grad_output must be {tuple(q.shape)} on {q.device}, got {tuple(do.shape)} on {do.device}")
    if do.stride(2) * q.shape[2] >= 2**31:
        do = do.contiguous()
    if dropout_p > 0.0 and seed is None:
        raise ValueError("attention: the backward of dropout needs the forward's seed")
    B, H, T, D = q.shape
    do = do.to(q.dtype)
    delta = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    dq, dk, dv = grads if grads is not None else (_empty_bhtd(B, H, T, D, q) for _ in range(3))
    assert dq.stride() == dk.stride() == dv.stride(), "dq, dk, dv share one layout"
    sm_scale, window, rotary = _options(q, scale, window, cos, sin, interleaved)
    cos, sin = (cos, sin) if rotary is not None else (lse, lse)
    args = (
        q, k, v, do, dq, dk, dv, lse, delta, seed if seed is not None else lse, cos, sin,
        q.stride(), k.stride(), v.stride(), do.stride(), dq.stride(),
        H, T, sm_scale * LOG2E, sm_scale, dropout_p, 1.0 / (1.0 - dropout_p), window, 2 * cos.shape[-1] if rotary else 0,
    )
    flags = _flags(q, causal, dropout_p, window, rotary, qk_norm)
    grid = lambda meta: _grid(T, meta["BLOCK_BIG"], B * H)  # noqa: E731
    with device_guard(q):
        _attn_bwd_delta_kernel[_grid(T, DELTA_BLOCK_M, B * H)](
            o, do, delta, o.stride(), do.stride(), H, T, HEAD_DIM=D, BLOCK_D=flags["BLOCK_D"], BLOCK_M=DELTA_BLOCK_M
        )
        for dkdv in (True, False):  # dK and dV, then dQ
            if _autotuned(q, flags, backward=True):
                _attn_bwd_tuned[grid](*args, **flags, DKDV=dkdv)
            else:
                _attn_bwd_kernel[grid](*args, **flags, DKDV=dkdv, **_one_config(q, flags, SMALL_BWD, FP32_BWD))
    return dq, dk, dv


# ----------------------------------------------------------------------------- torch.library ops
# Fake implementations give the real outputs' shapes, strides and dtypes: o and the gradients of
# attention laid out (B, T, H, D) and seen as (B, H, T, D); attention_qkv's o (B, T, H, D) and
# dqkv (B, T, 3, H, D) contiguous; lse (B, H, T) fp32.
# Triton's CPU interpreter has no bf16 arithmetic: there, bf16 runs in fp32 and rounds back.

Tensor = torch.Tensor


def _interpreter_fp32(*ts):
    """The tensors in fp32 when bf16 runs under the interpreter, else as they are."""
    if interpreted() and ts[0].dtype == torch.bfloat16:
        return tuple(t.float() for t in ts)
    return ts


@torch.library.custom_op(f"{NAMESPACE}::attention", mutates_args=())
def _attention_op(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, dropout_p: float, seed: Optional[Tensor],
    scale: Optional[float] = None, window: int = 0, cos: Optional[Tensor] = None, sin: Optional[Tensor] = None,
    interleaved: bool = False, qk_norm: bool = False,
) -> tuple[Tensor, Tensor]:
    o, lse = attention_fwd(
        *_interpreter_fp32(q, k, v), causal, dropout_p, seed, None, scale, window, cos, sin, interleaved, qk_norm
    )
    if o.dtype != q.dtype:
        o = _empty_bhtd(*q.shape, q).copy_(o)
    return o, lse


@_attention_op.register_fake
def _(q, k, v, causal, dropout_p, seed, scale=None, window=0, cos=None, sin=None, interleaved=False, qk_norm=False):
    _check(q, k, v, dropout_p, causal, window, cos, sin)
    B, H, T, D = q.shape
    return _empty_bhtd(B, H, T, D, q), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::attention_backward", mutates_args=())
def _attention_backward_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, causal: bool, dropout_p: float,
    seed: Optional[Tensor], scale: Optional[float] = None, window: int = 0, cos: Optional[Tensor] = None,
    sin: Optional[Tensor] = None, interleaved: bool = False, qk_norm: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    grads = attention_bwd(
        *_interpreter_fp32(do, q, k, v, o), lse, causal, dropout_p, seed, None, scale, window, cos, sin, interleaved,
        qk_norm,
    )
    if grads[0].dtype != q.dtype:
        grads = tuple(_empty_bhtd(*q.shape, q).copy_(g) for g in grads)
    return grads


@_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, causal, dropout_p, seed, scale=None, window=0, cos=None, sin=None, interleaved=False,
      qk_norm=False):
    return tuple(_empty_bhtd(*q.shape, q) for _ in range(3))


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, dropout_p, seed, scale, window, cos, sin, interleaved, qk_norm = inputs
    _, lse = output
    ctx.save_for_backward(q, k, v, output[0], lse, seed, cos, sin)
    ctx.options = causal, dropout_p, scale, window, interleaved, qk_norm
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _attention_backward(ctx, do, _dlse):
    q, k, v, o, lse, seed, cos, sin = ctx.saved_tensors
    if do is None:
        return (None,) * 12
    causal, dropout_p, scale, window, interleaved, qk_norm = ctx.options
    dq, dk, dv = torch.ops.tritongpt.attention_backward(
        do, q, k, v, o, lse, causal, dropout_p, seed, scale, window, cos, sin, interleaved, qk_norm
    )
    return (dq, dk, dv) + (None,) * 9


_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


@torch.library.custom_op(f"{NAMESPACE}::attention_qkv", mutates_args=())
def _attention_qkv_op(
    qkv: Tensor, causal: bool, dropout_p: float, seed: Optional[Tensor], scale: Optional[float] = None,
    window: int = 0, cos: Optional[Tensor] = None, sin: Optional[Tensor] = None, interleaved: bool = False,
    qk_norm: bool = False,
) -> tuple[Tensor, Tensor]:
    B, T, _, H, D = qkv.shape
    o = torch.empty((B, T, H, D), dtype=qkv.dtype, device=qkv.device)  # what c_proj reads as (B, T, C)
    (qkv32,) = _interpreter_fp32(qkv)
    o32 = o if qkv32 is qkv else torch.empty((B, T, H, D), dtype=torch.float32, device=qkv.device)
    _, lse = attention_fwd(
        *_split(qkv32), causal, dropout_p, seed, o32.transpose(1, 2), scale, window, cos, sin, interleaved, qk_norm
    )
    if o32 is not o:
        o.copy_(o32)
    return o, lse


@_attention_qkv_op.register_fake
def _(qkv, causal, dropout_p, seed, scale=None, window=0, cos=None, sin=None, interleaved=False, qk_norm=False):
    _check(*_split(qkv), dropout_p, causal, window, cos, sin)
    B, T, _, H, D = qkv.shape
    return qkv.new_empty((B, T, H, D)), qkv.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::attention_qkv_backward", mutates_args=())
def _attention_qkv_backward_op(
    do: Tensor, qkv: Tensor, o: Tensor, lse: Tensor, causal: bool, dropout_p: float, seed: Optional[Tensor],
    scale: Optional[float] = None, window: int = 0, cos: Optional[Tensor] = None, sin: Optional[Tensor] = None,
    interleaved: bool = False, qk_norm: bool = False,
) -> Tensor:
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)  # c_attn's output gradient
    do, qkv32, o = _interpreter_fp32(do, qkv, o)
    dqkv32 = dqkv if qkv32 is qkv else torch.empty(qkv.shape, dtype=torch.float32, device=qkv.device)
    attention_bwd(
        do.transpose(1, 2), *_split(qkv32), o.transpose(1, 2), lse, causal, dropout_p, seed, _split(dqkv32),
        scale, window, cos, sin, interleaved, qk_norm,
    )
    if dqkv32 is not dqkv:
        dqkv.copy_(dqkv32)
    return dqkv


@_attention_qkv_backward_op.register_fake
def _(do, qkv, o, lse, causal, dropout_p, seed, scale=None, window=0, cos=None, sin=None, interleaved=False,
      qk_norm=False):
    return torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)


def _attention_qkv_setup(ctx, inputs, output):
    qkv, causal, dropout_p, seed, scale, window, cos, sin, interleaved, qk_norm = inputs
    o, lse = output
    ctx.save_for_backward(qkv, o, lse, seed, cos, sin)
    ctx.options = causal, dropout_p, scale, window, interleaved, qk_norm
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _attention_qkv_backward(ctx, do, _dlse):
    qkv, o, lse, seed, cos, sin = ctx.saved_tensors
    if do is None:
        return (None,) * 10
    causal, dropout_p, scale, window, interleaved, qk_norm = ctx.options
    dqkv = torch.ops.tritongpt.attention_qkv_backward(
        do, qkv, o, lse, causal, dropout_p, seed, scale, window, cos, sin, interleaved, qk_norm
    )
    return (dqkv,) + (None,) * 9


_attention_qkv_op.register_autograd(_attention_qkv_backward, setup_context=_attention_qkv_setup)


# ----------------------------------------------------------------------------- public


def draw_seed(device):
    """A dropout seed: a (1,) int64 tensor drawn on `device` by torch's generator of that device
    (no host sync; captured with the step in a CUDA graph; repeatable under torch.manual_seed)."""
    return torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64)


def _rotary_args(rotary, device):
    """rotary (cos, sin, interleaved) or None -> (cos, sin, interleaved) as the ops take them, the
    tables fp32 and contiguous (they are small: (T, R/2))."""
    if rotary is None:
        return None, None, False
    if not (isinstance(rotary, (tuple, list)) and len(rotary) == 3):
        raise ValueError("attention: rotary must be None or (cos, sin, interleaved), cos and sin (T, R/2)")
    cos, sin, interleaved = rotary
    check_tensors("attention", cos=cos, sin=sin)
    return cos.to(device, torch.float32).contiguous(), sin.to(device, torch.float32).contiguous(), bool(interleaved)


def _scale_window(scale, window):
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"attention: window must be an int >= 0 (0: no window), got {window!r}")
    return (None if scale is None else float(scale)), window


def attention(q, k, v, causal=True, dropout_p=0.0, scale=None, window=0, rotary=None, qk_norm=False):
    """softmax(q k^T * scale, causal) v with dropout on the probabilities, as
    F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p, scale=scale).

    q, k, v: (B, H, T, D), any strides (the views out of c_attn need no copy), D from 1 to 256,
    fp32 / fp16 / bf16; under torch.autocast they are cast to autocast's dtype, as SDPA would be.
    scale: None (1 / sqrt(D)) or the softmax scale (GPT-Neo's 1.0). window: 0, or (causal only)
    the positions each query sees, itself included (GPT-Neo's local attention). rotary: None, or
    (cos, sin, interleaved) with cos, sin (T, R/2) as kernels.reference.rotary takes them: q and k
    turned inside the kernels before the scores (GPT-NeoX's halves, or GPT-J's interleaved pairs;
    the first R of the D dims). qk_norm: q and k RMS-normalized over their head dim first (no
    gain; reference.qk_rms_norm), inside the kernels. Returns (B, H, T, D) in their dtype, laid
    out as (B, T, H, D)."""
    q, k, v = autocast_inputs(q, k, v)
    check_tensors("attention", q=q, k=k, v=v)
    dropout_p = float(dropout_p)
    scale, window = _scale_window(scale, window)
    seed = draw_seed(q.device) if 0.0 < dropout_p < 1.0 else None
    rope = _rotary_args(rotary, q.device)
    return torch.ops.tritongpt.attention(q, k, v, bool(causal), dropout_p, seed, scale, window, *rope, bool(qk_norm))[0]


def attention_qkv(qkv, causal=True, dropout_p=0.0, scale=None, window=0, rotary=None, qk_norm=False):
    """attention() of the fused projection: qkv (B, T, 3, H, D), c_attn's (B, T, 3 * C) output
    viewed so, -> y (B, T, H, D) contiguous (c_proj's (B, T, C) input as a view). The backward
    writes one (B, T, 3, H, D) gradient: no copy to split q, k, v or to join their gradients.
    scale, window, rotary, qk_norm: as attention() takes them."""
    (qkv,) = autocast_inputs(qkv)
    check_tensors("attention_qkv", qkv=qkv)
    dropout_p = float(dropout_p)
    scale, window = _scale_window(scale, window)
    seed = draw_seed(qkv.device) if 0.0 < dropout_p < 1.0 else None
    rope = _rotary_args(rotary, qkv.device)
    return torch.ops.tritongpt.attention_qkv(qkv, bool(causal), dropout_p, seed, scale, window, *rope, bool(qk_norm))[0]
