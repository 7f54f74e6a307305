"""The Triton kernels of flash attention (FlashAttention-2): the forward, and the backward's
delta pass and its dK/dV and dQ loops. Their host launchers, the torch.library ops and the public
functions are in flash_attention.py, which says what the algorithm is; this file holds the jit
code alone, read top to bottom: the tile helpers, the forward, then the backward.

Every kernel takes each (B, H, T, D) tensor as a pointer plus its four strides, so q, k, v may be
views of one (B, T, 3, H, D) projection and o, dq, dk, dv any layout (the ops use (B, T, H, D)).
The dropout seed is read on the device from a (1,) int64 tensor: no host value per launch, so a
step that uses dropout can be captured in a CUDA graph.
"""

import triton
import triton.language as tl

# Inside the kernels two tuples travel together:
#   a matrix: one head's (T, D) slice of q, k, v, o, dO or a gradient,
#             (pointer to its row 0, stride of T, stride of D, offs_d = arange(D));
#   head:     what every tile of one (batch, head) shares, (T, qk_scale, seed, bh, p, 1 / (1 - p)),
#             seed the value read from seed_ptr (0 without dropout).


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


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr,  # (B, H, T, D) each
    o_ptr,  # (B, H, T, D) output
    lse_ptr,  # (B * H, T) fp32: log2-sum-exp2 of each row's scaled scores
    seed_ptr,  # (1,) int64: the dropout seed (read only when DROPOUT)
    q_strides, k_strides, v_strides, o_strides,  # (stride of B, of H, of T, of D) each
    H, T, qk_scale, dropout_p, drop_scale, T_BUCKET,
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
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
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


@triton.jit
def _attn_bwd_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr,  # (B, H, T, D) each
    dq_ptr, dk_ptr, dv_ptr,  # (B, H, T, D) outputs, strides g_strides
    lse_ptr, delta_ptr,  # (B * H, T) fp32
    seed_ptr,  # (1,) int64: the forward's dropout seed (read only when DROPOUT)
    q_strides, k_strides, v_strides, do_strides, g_strides,  # (stride of B, of H, of T, of D) each
    H, T, qk_scale, sm_scale, dropout_p, drop_scale, T_BUCKET,
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
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
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
