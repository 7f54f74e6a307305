"""Flash attention (FlashAttention-2) in Triton: causal, forward and backward, with dropout.

    y = attention(q, k, v, causal=True, dropout_p=0.0)    # q, k, v (B, H, T, D), any strides

Forward: one program per (query tile, batch*head). It walks the key tiles with an online softmax
in fp32 (running max m and sum l, scores in log2 units so exp2 does the work, 1/sqrt(D)*log2(e)
folded into one multiply) and saves lse = m + log2(l) per row (4 bytes a row). Under the causal
mask the key tiles wholly above the diagonal are never visited and only the tiles that straddle
it (and the ragged tail at T) are masked. Nothing of size T x T is ever in memory.

Backward: the probabilities are recomputed from q, k and the saved lse, not stored. A small
pass computes delta = rowsum(dO * O); then one kernel, launched twice, computes dK, dV (a program
per key tile, looping over the query tiles that see it) and dQ (a program per query tile, looping
over the key tiles it sees). Each output tile is owned by one program: no atomics, no zero-fill.
The price: QK^T and dO V^T are computed in both launches (7 tile matmuls where accumulating dQ
with atomics inside the dK/dV loop would need 5); in exchange no fp32 dQ buffer, no atomics and
a deterministic result.

Head dims 16, 32, 64, 128 (16 for small test models); any T >= 1; fp32, fp16, bf16.

Dropout on the probabilities is drawn inside the kernels by Philox (`tl.rand`) keyed by
(seed, batch*head) with counter row * T + column, so the backward regenerates the very mask the
forward used from the seed alone. The seed comes from torch's CPU generator (no GPU sync;
`torch.manual_seed` makes runs repeatable). Kept probabilities are scaled by 1 / (1 - p).

FLOPs (the convention of the benchmarks): forward 4 * B * H * T * T * D, halved when causal
(two matmuls, QK^T and PV, of 2*T*T*D each); backward 2.5x the forward (five matmuls, one of
them the recomputed QK^T).

The file reads top to bottom: tuning lists; the kernels (tile helpers, the forward, then the
backward's delta pass, its dK/dV and dQ loops and their kernel); host launchers; autograd; the
public function. It runs past the project's ~400 lines because the forward and the two-launch
backward with dropout are one algorithm that shares its tile helpers and its dropout stream;
split, each half would need the other to be read.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.common import AUTOTUNE, autocast_inputs, check_device, check_one_dtype, check_tensors, interpreted

HEAD_DIMS = (16, 32, 64, 128)
MAX_T_DROPOUT = 46340  # row * T + col must fit the int32 Philox counter
LOG2E = 1.4426950408889634

# ----------------------------------------------------------------------------- tuning

# Candidates for Hopper (H100 / H200); each kernel is tuned once per TUNE_KEY (and the inputs'
# dtype); the first tile sets the grid. Forward: BLOCK_M queries by BLOCK_N keys. Backward: a
# program keeps BLOCK_BIG keys (then queries) in registers and streams BLOCK_SMALL-row tiles of
# the other side past them.
TUNE_KEY = ["HEAD_DIM", "T_BUCKET", "CAUSAL", "DROPOUT"]
FWD_CONFIGS = [
    triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s)
    for m, n, w, s in [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 4),
                       (64, 32, 4, 3)]
]
BWD_CONFIGS = [
    triton.Config(dict(BLOCK_BIG=big, BLOCK_SMALL=small), num_warps=w, num_stages=s)
    for big, small, w, s in [(128, 32, 8, 3), (128, 32, 8, 4), (128, 64, 8, 3), (64, 32, 4, 3), (64, 32, 8, 3),
                             (64, 64, 4, 3)]
]
# With AUTOTUNE off (kernels.common's switch; the tests turn it off too), and always for fp32
# (ieee dot products, no tensor cores: right, not fast), each kernel runs one small config, its
# two tiles unequal so the tile-skipping arithmetic is exercised as on the GPU.
SMALL_FWD = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
SMALL_BWD = dict(BLOCK_BIG=64, BLOCK_SMALL=32, num_warps=4, num_stages=2)


# ----------------------------------------------------------------------------- kernels
# Inside the kernels two tuples travel together:
#   a matrix: one head's (T, D) slice of q, k, v, o, dO or a gradient,
#             (pointer to its row 0, stride of T, stride of D, offs_d = arange(D));
#   head:     what every tile of one (batch, head) shares, (T, qk_scale, seed, bh, p, 1 / (1 - p)).


@triton.jit
def _keep(seed, bh, rows, cols, T, dropout_p):
    """Dropout decision at (rows, cols) of head bh (broadcastable int32 blocks): True = kept.
    The key (seed, bh) picks a Philox stream per head; the counter row * T + col a draw in it."""
    return tl.rand(seed + (bh << 32), rows * T + cols) >= dropout_p


@triton.jit
def _matrix(ptr, strides, b, h, offs_d):
    """Head h of batch b of a (B, H, T, D) tensor with `strides`, as a matrix (see above)."""
    stride_b, stride_h, stride_t, stride_d = strides
    return ptr + b * stride_b + h * stride_h, stride_t, stride_d, offs_d


@triton.jit
def _ptrs(mat, rows):
    """(BLOCK, D) pointers to the rows `rows` (BLOCK,) of a matrix."""
    base, stride_t, stride_d, offs_d = mat
    return base + rows[:, None] * stride_t + offs_d[None, :] * stride_d


@triton.jit
def _load(mat, rows, T):
    """The (BLOCK, D) tile of a matrix at `rows`; rows past T read as zeros."""
    return tl.load(_ptrs(mat, rows), mask=rows[:, None] < T, other=0.0)


@triton.jit
def _load_kv(kv, rows, T, MASKED: tl.constexpr):
    """The (BLOCK, D) tiles at `rows` of kv = (k, v matrices); rows past T read as zeros if MASKED."""
    k_mat, v_mat = kv
    k_ptrs, v_ptrs = _ptrs(k_mat, rows), _ptrs(v_mat, rows)
    if MASKED:
        k = tl.load(k_ptrs, mask=rows[:, None] < T, other=0.0)
        v = tl.load(v_ptrs, mask=rows[:, None] < T, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton.jit
def _key_range(start_m, T, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Key tiles of the query tile at start_m: [0, lo) need no mask, [lo, hi) are masked."""
    if CAUSAL:
        lo = (start_m // BLOCK_N) * BLOCK_N  # tiles ending at or before the tile's first row
        hi = tl.minimum(start_m + BLOCK_M, T)  # nothing above the diagonal
    else:
        lo = (T // BLOCK_N) * BLOCK_N  # only the ragged tail is masked
        hi = T
    return lo, hi


@triton.jit
def _query_range(start_n, T, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """Query tiles that see the key tile at start_n: [lo, mid) cross the diagonal (masked),
    [mid, T) lie wholly below it."""
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M  # the tile holding row start_n
        mid = tl.minimum(tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M, T)
    else:
        lo, mid = 0, 0
    return lo, mid


@triton.jit
def _visible(offs_m, offs_n, T, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N): which keys each query attends to (inside T; at or before it if causal)."""
    visible = offs_n[None, :] < T
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None])
    return visible


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, offs_m, kv, lo, hi, head,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """The online softmax of the query tile q (BLOCK_M, D) at rows offs_m over the key tiles
    [lo, hi) of kv = (k, v matrices): acc (BLOCK_M, D) += p v; l, m (BLOCK_M,) its sum and max."""
    T, qk_scale, seed, bh, dropout_p, _ = head
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(kv, offs_n, T, MASKED=MASKED)  # (BLOCK_N, D) each
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, T, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)  # the softmax's denominator counts dropped entries too
        if DROPOUT:
            p = tl.where(_keep(seed, bh, offs_m[:, None], offs_n[None, :], T, dropout_p), p, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["seed"])
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr,  # (B, H, T, D) each
    o_ptr,  # (B, H, T, D) output
    lse_ptr,  # (B * H, T) fp32: log2-sum-exp2 of each row's scaled scores
    q_strides, k_strides, v_strides, o_strides,  # (stride of B, of H, of T, of D) each
    H, T, qk_scale, seed, dropout_p, drop_scale, T_BUCKET,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # the last query tiles see the most keys: start them first, so the grid ends on light ones
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    kv = (_matrix(k_ptr, k_strides, b, h, offs_d), _matrix(v_ptr, v_strides, b, h, offs_d))
    head = (T, qk_scale, seed, bh, dropout_p, drop_scale)
    q = _load(_matrix(q_ptr, q_strides, b, h, offs_d), offs_m, T)  # (BLOCK_M, D)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    lo, hi = _key_range(start_m, T, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, offs_m, kv, 0, lo, head,
        MASKED=False, BLOCK_N=BLOCK_N, CAUSAL=CAUSAL, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
    )
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, offs_m, kv, lo, hi, head,
        MASKED=True, BLOCK_N=BLOCK_N, CAUSAL=CAUSAL, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
    )

    if DROPOUT:
        acc = acc * drop_scale
    o = acc / l_i[:, None]
    o_ptrs = _ptrs(_matrix(o_ptr, o_strides, b, h, offs_d), offs_m)
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < T)
    tl.store(lse_ptr + bh * T + offs_m, m_i + tl.log2(l_i), mask=offs_m < T)


@triton.jit
def _attn_bwd_delta_kernel(
    o_ptr, do_ptr,  # (B, H, T, D) each
    delta_ptr,  # (B * H, T) fp32 output: rowsum(dO * O)
    o_strides, do_strides,  # (stride of B, of H, of T, of D) each
    H, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o_and_do = (_matrix(o_ptr, o_strides, b, h, offs_d), _matrix(do_ptr, do_strides, b, h, offs_d))
    o, do = _load_kv(o_and_do, offs_m, T, MASKED=True)  # (BLOCK_M, D) each
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(delta_ptr + bh * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, offs_n, queries, lo, hi, head,
    MASKED: tl.constexpr, BLOCK_M: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dK, dV (BLOCK_N, D) of the key tile k, v at rows offs_n, summed over the query tiles
    [lo, hi) of queries = (q matrix, dO matrix, lse row, delta row); MASKED: the causal
    diagonal. All transposed: rows are keys, columns queries."""
    q_mat, do_mat, lse_row, delta_row = queries
    T, qk_scale, seed, bh, dropout_p, drop_scale = head
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < T  # the ragged tail of queries loads as zeros and adds nothing
        q = _load(q_mat, offs_m, T)  # (BLOCK_M, D)
        do = _load(do_mat, offs_m, T)
        lse = tl.load(lse_row + offs_m, mask=rows, other=0.0)  # (BLOCK_M,)
        delta = tl.load(delta_row + offs_m, mask=rows, other=0.0)
        pT = tl.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:  # query row >= key column
            pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # dL/d(dropped P), transposed
        if DROPOUT:
            keepT = _keep(seed, bh, offs_m[None, :], offs_n[:, None], T, dropout_p)
            dv += tl.dot(tl.where(keepT, pT * drop_scale, 0.0).to(do.dtype), do, input_precision=DOT_PREC)
            dpT = tl.where(keepT, dpT * drop_scale, 0.0)  # dL/dP
        else:
            dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PREC)
        dsT = pT * (dpT - delta[None, :])  # dL/dS, S the scaled scores
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, offs_m, kv, lo, hi, head,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dQ (BLOCK_M, D) of the query tile q, do (BLOCK_M, D), lse, delta (BLOCK_M,) at rows
    offs_m, summed over the key tiles [lo, hi) of kv = (k, v matrices)."""
    T, qk_scale, seed, bh, dropout_p, drop_scale = head
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(kv, offs_n, T, MASKED=MASKED)  # (BLOCK_N, D) each
        p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale - lse[:, None])  # (BLOCK_M, BLOCK_N)
        if MASKED:
            p = tl.where(_visible(offs_m, offs_n, T, CAUSAL), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)  # dL/d(dropped P)
        if DROPOUT:
            dp = tl.where(_keep(seed, bh, offs_m[:, None], offs_n[None, :], T, dropout_p), dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])  # dL/dS
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr,  # (B, H, T, D) each
    dq_ptr, dk_ptr, dv_ptr,  # (B, H, T, D) outputs, strides g_strides
    lse_ptr, delta_ptr,  # (B * H, T) fp32
    q_strides, k_strides, v_strides, do_strides, g_strides,  # (stride of B, of H, of T, of D) each
    H, T, qk_scale, sm_scale, seed, dropout_p, drop_scale, T_BUCKET,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    DKDV: tl.constexpr, BLOCK_BIG: tl.constexpr, BLOCK_SMALL: tl.constexpr,
):
    """A program holds BLOCK_BIG rows [start, start + BLOCK_BIG) and streams BLOCK_SMALL tiles
    of the other side past them. DKDV: dK and dV of those keys, over the query tiles that see
    them. Otherwise: dQ of those queries, over the key tiles they see. (Two launches rather than
    one kernel doing both: fused, the two halves' registers add up and spill.)"""
    start = tl.program_id(0) * BLOCK_BIG  # heaviest first: the first key tiles, the last query tiles
    if not DKDV:
        start = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_BIG
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_big = start + tl.arange(0, BLOCK_BIG)
    offs_d = tl.arange(0, HEAD_DIM)
    inside = offs_big[:, None] < T
    q_mat, k_mat = _matrix(q_ptr, q_strides, b, h, offs_d), _matrix(k_ptr, k_strides, b, h, offs_d)
    v_mat, do_mat = _matrix(v_ptr, v_strides, b, h, offs_d), _matrix(do_ptr, do_strides, b, h, offs_d)
    lse_row, delta_row = lse_ptr + bh * T, delta_ptr + bh * T
    head = (T, qk_scale, seed, bh, dropout_p, drop_scale)
    stride_gb, stride_gh, stride_gt, stride_gd = g_strides  # dq, dk, dv: one layout, one offset
    g = b * stride_gb + h * stride_gh + offs_big[:, None] * stride_gt + offs_d[None, :] * stride_gd

    if DKDV:
        k = _load(k_mat, offs_big, T)  # (BLOCK_BIG, D)
        v = _load(v_mat, offs_big, T)
        dk = tl.zeros([BLOCK_BIG, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_BIG, HEAD_DIM], dtype=tl.float32)
        queries = (q_mat, do_mat, lse_row, delta_row)
        lo, mid = _query_range(start, T, BLOCK_BIG, BLOCK_SMALL, CAUSAL)
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, offs_big, queries, lo, mid, head,
            MASKED=True, BLOCK_M=BLOCK_SMALL, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
        )
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, offs_big, queries, mid, T, head,
            MASKED=False, BLOCK_M=BLOCK_SMALL, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
        )
        tl.store(dk_ptr + g, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=inside)
        tl.store(dv_ptr + g, dv.to(dv_ptr.dtype.element_ty), mask=inside)
    else:
        q = _load(q_mat, offs_big, T)  # (BLOCK_BIG, D)
        do = _load(do_mat, offs_big, T)
        lse = tl.load(lse_row + offs_big, mask=offs_big < T, other=0.0)  # (BLOCK_BIG,)
        delta = tl.load(delta_row + offs_big, mask=offs_big < T, other=0.0)
        dq = tl.zeros([BLOCK_BIG, HEAD_DIM], dtype=tl.float32)
        kv = (k_mat, v_mat)
        lo, hi = _key_range(start, T, BLOCK_BIG, BLOCK_SMALL, CAUSAL)
        dq = _dq_tiles(
            dq, q, do, lse, delta, offs_big, kv, 0, lo, head,
            MASKED=False, BLOCK_N=BLOCK_SMALL, CAUSAL=CAUSAL, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
        )
        dq = _dq_tiles(
            dq, q, do, lse, delta, offs_big, kv, lo, hi, head,
            MASKED=True, BLOCK_N=BLOCK_SMALL, CAUSAL=CAUSAL, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
        )
        tl.store(dq_ptr + g, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=inside)


# ----------------------------------------------------------------------------- host launchers

_attn_fwd_tuned = triton.autotune(FWD_CONFIGS, key=TUNE_KEY)(_attn_fwd_kernel)
_attn_bwd_tuned = triton.autotune(BWD_CONFIGS, key=TUNE_KEY + ["DKDV"])(_attn_bwd_kernel)


def _check(q, k, v, dropout_p):
    """Shapes, dtypes, devices and options the kernels take; a ValueError naming what is wrong."""
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
    if D not in HEAD_DIMS:
        raise ValueError(f"attention: head dim {D} is not supported; use one of {HEAD_DIMS}")
    if B * H * T == 0:
        raise ValueError(f"attention: B, H and T must be >= 1, got shape {tuple(q.shape)}")
    if max(q.stride(2), k.stride(2), v.stride(2), H * D) * T >= 2**31:  # in-tile offsets are int32
        raise ValueError(f"attention: T * (stride of T) must be < 2**31 (int32 offsets in a head), got T={T}, strides {q.stride()}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p!r}")
    if dropout_p > 0.0 and T > MAX_T_DROPOUT:
        raise ValueError(f"attention: dropout supports T up to {MAX_T_DROPOUT}, got {T}")


def _empty_bhtd(B, H, T, D, like):
    """(B, H, T, D) laid out as (B, T, H, D): the model's y.transpose(1, 2).reshape is then free."""
    return torch.empty((B, T, H, D), dtype=like.dtype, device=like.device).transpose(1, 2)


def _flags(q, causal, dropout_p):
    """The kernels' specialization: tl.constexpr flags, and T's bucket for the autotune key."""
    T, D = q.shape[2], q.shape[3]
    return dict(
        HEAD_DIM=D, CAUSAL=bool(causal), DROPOUT=dropout_p > 0.0,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",  # fp16/bf16 ignore it
        T_BUCKET=min(triton.next_power_of_2(T), 8192),
    )


def _autotuned(q):
    """Autotune over the Hopper configs, or run the one small config (AUTOTUNE off, or fp32)."""
    return AUTOTUNE and q.dtype != torch.float32


def attention_fwd(q, k, v, causal=True, dropout_p=0.0, seed=None):
    """q, k, v (B, H, T, D) -> o (B, H, T, D), lse (B, H, T) fp32 (log2 units), seed (an int,
    or None without dropout). `seed` fixes the dropout mask (tests); by default it is drawn
    from torch's CPU generator."""
    _check(q, k, v, dropout_p)
    B, H, T, D = q.shape
    if dropout_p > 0.0 and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    o = _empty_bhtd(B, H, T, D, q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    sm_scale = 1.0 / math.sqrt(D)
    args = (
        q, k, v, o, lse, q.stride(), k.stride(), v.stride(), o.stride(),
        H, T, sm_scale * LOG2E, seed or 0, dropout_p, 1.0 / (1.0 - dropout_p),
    )
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
    if _autotuned(q):
        _attn_fwd_tuned[grid](*args, **_flags(q, causal, dropout_p))
    else:
        _attn_fwd_kernel[grid](*args, **_flags(q, causal, dropout_p), **SMALL_FWD)
    return o, lse, seed


def attention_bwd(do, q, k, v, o, lse, causal=True, dropout_p=0.0, seed=None):
    """The forward's inputs, o, lse and seed, and dO (B, H, T, D) -> dq, dk, dv (B, H, T, D)."""
    _check(q, k, v, dropout_p)
    if do.shape != q.shape or do.device != q.device:
        raise ValueError(f"attention: grad_output must be {tuple(q.shape)} on {q.device}, got {tuple(do.shape)} on {do.device}")
    if do.stride(2) * q.shape[2] >= 2**31:
        do = do.contiguous()
    if dropout_p > 0.0 and seed is None:
        raise ValueError("attention: the backward of dropout needs the forward's seed")
    B, H, T, D = q.shape
    do = do.to(q.dtype)
    delta = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(T, 64), B * H)
    _attn_bwd_delta_kernel[grid](o, do, delta, o.stride(), do.stride(), H, T, HEAD_DIM=D, BLOCK_M=64)
    dq, dk, dv = (_empty_bhtd(B, H, T, D, q) for _ in range(3))
    sm_scale = 1.0 / math.sqrt(D)
    args = (
        q, k, v, do, dq, dk, dv, lse, delta, q.stride(), k.stride(), v.stride(), do.stride(), dq.stride(),
        H, T, sm_scale * LOG2E, sm_scale, seed or 0, dropout_p, 1.0 / (1.0 - dropout_p),
    )
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_BIG"]), B * H)  # noqa: E731
    for dkdv in (True, False):  # dK and dV, then dQ
        if _autotuned(q):
            _attn_bwd_tuned[grid](*args, **_flags(q, causal, dropout_p), DKDV=dkdv)
        else:
            _attn_bwd_kernel[grid](*args, **_flags(q, causal, dropout_p), DKDV=dkdv, **SMALL_BWD)
    return dq, dk, dv


# ----------------------------------------------------------------------------- autograd


class FlashAttention(torch.autograd.Function):
    """Saves q, k, v, o and lse (4 bytes a row); the backward recomputes the probabilities.
    Under the interpreter, which has no bf16 arithmetic, bf16 runs in fp32 and rounds back."""

    @staticmethod
    def forward(ctx, q, k, v, causal, dropout_p, seed):
        dtype = q.dtype
        if dtype == torch.bfloat16 and interpreted():
            q, k, v = q.float(), k.float(), v.float()
        o, lse, seed = attention_fwd(q, k, v, causal, dropout_p, seed)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.dropout_p, ctx.seed, ctx.dtype = causal, dropout_p, seed, dtype
        return o.to(dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.dropout_p, ctx.seed)
        return dq.to(ctx.dtype), dk.to(ctx.dtype), dv.to(ctx.dtype), None, None, None


# ----------------------------------------------------------------------------- public


@torch.compiler.disable  # torch.compile runs it as it is (a graph break), not traced into
def attention(q, k, v, causal=True, dropout_p=0.0):
    """softmax(q k^T / sqrt(D), causal) v with dropout on the probabilities, as
    F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p).

    q, k, v: (B, H, T, D), any strides (the views out of c_attn need no copy), D in HEAD_DIMS,
    fp32 / fp16 / bf16; under torch.autocast they are cast to autocast's dtype, as SDPA would be.
    Returns (B, H, T, D) in their dtype, laid out as (B, T, H, D)."""
    q, k, v = autocast_inputs(q, k, v)
    return FlashAttention.apply(q, k, v, causal, float(dropout_p), None)
