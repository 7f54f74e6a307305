"""The Triton kernels of flash attention (FlashAttention-2): the forward, and the backward's
delta pass and its dK/dV and dQ loops. Their host launchers, the torch.library ops and the public
functions are in flash_attention.py, which says what the algorithm is; this file holds the jit
code alone, read top to bottom: the tile helpers (loads, rotary, the ranges of tiles each
program visits), the forward, then the backward.

Every kernel takes each (B, H, T, D) tensor as a pointer plus its four strides, so q, k, v may be
views of one (B, T, 3, H, D) projection and o, dq, dk, dv any layout (the ops use (B, T, H, D)).
The dropout seed is read on the device from a (1,) int64 tensor: no host value per launch, so a
step that uses dropout can be captured in a CUDA graph.

A head dim D that is not a power of two runs in tiles of BLOCK_D = the next one: the columns at
and past D load as zeros and are never stored (when D == BLOCK_D the column masks are not even
compiled). Rotary turns q and k as their tiles are loaded and turns dq, dk back by the transposed
rotation before they are stored: no rotated copy of q or k ever exists in memory. Under rotary
q and k are held as two half tiles (a, b), column j of a and of b the two dims of pair j
(_rotary_cols): a turn is then elementwise, and the scores and the dq, dk accumulators split
into the two halves. QK-norm is done the same way: each q and k tile is RMS-normalized over its
head dim as it is loaded (before the turn; a turn keeps a row's length, so the order does not
matter), and the backward takes dq, dk through the norm's backward, with the 1 / rms of the
program's own rows kept from their load, before they are turned back and stored.

Past 400 lines for a reason: the forward and both backward loops share the tile helpers above
them, and splitting the file would split them from their one reader.
"""

import triton
import triton.language as tl

from tritongpt.kernels.reference import QK_NORM_EPS

QK_EPS = tl.constexpr(QK_NORM_EPS)

# Inside the kernels three tuples travel together:
#   a matrix: one head's (T, D) slice of q, k, v, o, dO or a gradient,
#             (pointer to its row 0, stride of T, stride of D, offs_d = arange(BLOCK_D));
#   head:     what every tile of one (batch, head) shares, (T, qk_scale, seed, bh, p, 1 / (1 - p),
#             window), seed the value read from seed_ptr (0 without dropout);
#   tables:   the rotary tables, (cos_ptr, sin_ptr, R / 2), read only when ROTARY.


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
    """(BLOCK, BLOCK_D) pointers to the rows `rows` (BLOCK,) of a matrix."""
    base, stride_t, stride_d, offs_d = mat
    return base + rows[:, None] * stride_t + offs_d[None, :] * stride_d


@triton.jit
def _mask(rows, offs_d, T, HEAD_DIM: tl.constexpr):
    """(BLOCK, BLOCK_D): the rows inside T, and the columns inside the head dim when it is padded."""
    mask = rows[:, None] < T
    if HEAD_DIM != offs_d.shape[0]:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    return mask


@triton.jit
def _load(mat, rows, T, HEAD_DIM: tl.constexpr):
    """The (BLOCK, BLOCK_D) tile of a matrix at `rows`; rows past T and columns past D read as zeros."""
    return tl.load(_ptrs(mat, rows), mask=_mask(rows, mat[3], T, HEAD_DIM), other=0.0)


@triton.jit
def _load_kv(kv, rows, T, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    """The (BLOCK, BLOCK_D) tiles at `rows` of kv = (k, v matrices); rows past T read as zeros if
    MASKED, columns past D whenever D is padded."""
    k_mat, v_mat = kv
    k_ptrs, v_ptrs = _ptrs(k_mat, rows), _ptrs(v_mat, rows)
    if MASKED or HEAD_DIM != k_mat[3].shape[0]:
        k = tl.load(k_ptrs, mask=_mask(rows, k_mat[3], T, HEAD_DIM), other=0.0)
        v = tl.load(v_ptrs, mask=_mask(rows, v_mat[3], T, HEAD_DIM), other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton.jit
def _store(mat, rows, x, T, HEAD_DIM: tl.constexpr):
    """Stores the (BLOCK, BLOCK_D) tile x at `rows` of a matrix, in its dtype, inside T and D."""
    tl.store(_ptrs(mat, rows), x.to(mat[0].dtype.element_ty), mask=_mask(rows, mat[3], T, HEAD_DIM))


@triton.jit
def _rotary_cols(rot_dim, BLOCK_D: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Under rotary q and k (and dq, dk) are held as two half tiles (a, b), each (BLOCK,
    BLOCK_D / 2): column j of a and column j of b are the two dims of pair j, (2j, 2j + 1) for
    GPT-J, (j, j + R/2) for GPT-NeoX; past R / 2 pairs, the dims that are not turned, two by two.
    The scores are sums over the dims, so q k^T = q_a k_a^T + q_b k_b^T whatever the order.
    Returns the dims of a's and of b's columns, (BLOCK_D / 2,) each."""
    j = tl.arange(0, BLOCK_D // 2)
    a_cols = 2 * j
    b_cols = 2 * j + 1
    if not INTERLEAVED:
        half = rot_dim // 2
        a_cols = tl.where(j < half, j, a_cols)
        b_cols = tl.where(j < half, j + half, b_cols)
    return a_cols, b_cols


@triton.jit
def _turn(x, rows, T, tables, SIGN: tl.constexpr):
    """The pairs (a, b) = x of half tiles turned by the angle of each row's position (SIGN=1:
    a cos - b sin, b cos + a sin) or back (SIGN=-1, the transpose), in fp32, returned in their
    dtype: elementwise, no data crosses columns. cos and sin are 1 and 0 past R / 2 and T."""
    a, b = x
    cos_ptr, sin_ptr, half = tables
    pairs = tl.arange(0, a.shape[1])
    inside = (rows[:, None] < T) & (pairs[None, :] < half)
    offs = rows[:, None] * half + pairs[None, :]
    c = tl.load(cos_ptr + offs, mask=inside, other=1.0)  # (BLOCK, BLOCK_D / 2) fp32
    s = tl.load(sin_ptr + offs, mask=inside, other=0.0)
    if SIGN < 0:
        s = -s
    a32, b32 = a.to(tl.float32), b.to(tl.float32)
    return (a32 * c - b32 * s).to(a.dtype), (b32 * c + a32 * s).to(b.dtype)


@triton.jit
def _qk_matrix(ptr, strides, b, h, offs_d, rot_dim, ROTARY: tl.constexpr, INTERLEAVED: tl.constexpr):
    """q's or k's head (or dq's, dk's) as a matrix, or under rotary as the pair of matrices of
    its half tiles (_rotary_cols)."""
    if ROTARY:
        a_cols, b_cols = _rotary_cols(rot_dim, offs_d.shape[0], INTERLEAVED)
        return _matrix(ptr, strides, b, h, a_cols), _matrix(ptr, strides, b, h, b_cols)
    else:
        return _matrix(ptr, strides, b, h, offs_d)


@triton.jit
def _rms_normalized(x, HEAD_DIM: tl.constexpr, ROTARY: tl.constexpr):
    """QK-norm of a q or k tile (or of its half tiles under rotary): each row divided by its
    root mean square over the HEAD_DIM dims (the padding columns are zeros), in fp32, returned
    in the tile's dtype; and rstd (BLOCK,) fp32, 1 / rms of each row."""
    if ROTARY:
        a, b = x
        a32, b32 = a.to(tl.float32), b.to(tl.float32)
        rstd = 1.0 / tl.sqrt((tl.sum(a32 * a32, 1) + tl.sum(b32 * b32, 1)) / HEAD_DIM + QK_EPS)
        x = (a32 * rstd[:, None]).to(a.dtype), (b32 * rstd[:, None]).to(b.dtype)
    else:
        x32 = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, 1) / HEAD_DIM + QK_EPS)
        x = (x32 * rstd[:, None]).to(x.dtype)
    return x, rstd


@triton.jit
def _rms_grad(g, x, rstd, HEAD_DIM: tl.constexpr, ROTARY: tl.constexpr):
    """The gradient of the raw rows from g (fp32), the gradient of their QK-norm x (the normalized
    tile, or the pair of half tiles, turned or not alike): rstd * (g - x * mean(g * x))."""
    if ROTARY:
        a, b = x
        ga, gb = g
        a32, b32 = a.to(tl.float32), b.to(tl.float32)
        c = (tl.sum(ga * a32, 1) + tl.sum(gb * b32, 1)) / HEAD_DIM
        return (ga - a32 * c[:, None]) * rstd[:, None], (gb - b32 * c[:, None]) * rstd[:, None]
    else:
        x32 = x.to(tl.float32)
        c = tl.sum(g * x32, 1) / HEAD_DIM
        return (g - x32 * c[:, None]) * rstd[:, None]


@triton.jit
def _load_qk_rstd(mat, rows, T, tables, HEAD_DIM: tl.constexpr, ROTARY: tl.constexpr, MASKED: tl.constexpr,
                  QK_NORM: tl.constexpr):
    """The (BLOCK, BLOCK_D) tile of q or k at `rows`, or under rotary its half tiles (a, b)
    turned to their positions, RMS-normalized first under QK_NORM; and the rows' rstd from the
    norm (1.0 without QK_NORM). MASKED=False: every row is inside T (then only a padded D is
    masked)."""
    if ROTARY:  # half tiles: columns always masked (their dims run to BLOCK_D)
        a_mat, b_mat = mat
        a = tl.load(_ptrs(a_mat, rows), mask=(rows[:, None] < T) & (a_mat[3][None, :] < HEAD_DIM), other=0.0)
        b = tl.load(_ptrs(b_mat, rows), mask=(rows[:, None] < T) & (b_mat[3][None, :] < HEAD_DIM), other=0.0)
        x = (a, b)
    elif MASKED or HEAD_DIM != mat[3].shape[0]:
        x = _load(mat, rows, T, HEAD_DIM)
    else:
        x = tl.load(_ptrs(mat, rows))
    rstd = 1.0
    if QK_NORM:
        x, rstd = _rms_normalized(x, HEAD_DIM, ROTARY)
    if ROTARY:
        x = _turn(x, rows, T, tables, SIGN=1)
    return x, rstd


@triton.jit
def _load_qk(mat, rows, T, tables, HEAD_DIM: tl.constexpr, ROTARY: tl.constexpr, MASKED: tl.constexpr,
             QK_NORM: tl.constexpr):
    """_load_qk_rstd's tile alone."""
    x, _ = _load_qk_rstd(mat, rows, T, tables, HEAD_DIM, ROTARY, MASKED, QK_NORM)
    return x


@triton.jit
def _store_qk(mat, rows, x, T, HEAD_DIM: tl.constexpr, ROTARY: tl.constexpr):
    """Stores dq or dk (a tile, or under rotary its half tiles) at `rows`, inside T and D."""
    if ROTARY:
        for i in tl.static_range(2):
            m = mat[i]
            tl.store(_ptrs(m, rows), x[i].to(m[0].dtype.element_ty),
                     mask=(rows[:, None] < T) & (m[3][None, :] < HEAD_DIM))
    else:
        _store(mat, rows, x, T, HEAD_DIM)


@triton.jit
def _scores(x, y, ROTARY: tl.constexpr, DOT_PREC: tl.constexpr):
    """x y^T of two q or k tiles (or pairs of half tiles): (rows of x, rows of y) fp32."""
    if ROTARY:
        s = tl.dot(x[0], tl.trans(y[0]), input_precision=DOT_PREC)
        return tl.dot(x[1], tl.trans(y[1]), acc=s, input_precision=DOT_PREC)
    else:
        return tl.dot(x, tl.trans(y), input_precision=DOT_PREC)


@triton.jit
def _accumulate(acc, p, x, ROTARY: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc + p x for a q or k tile x (or, under rotary, each half of acc with its half of x)."""
    if ROTARY:
        return (tl.dot(p.to(x[0].dtype), x[0], acc=acc[0], input_precision=DOT_PREC),
                tl.dot(p.to(x[1].dtype), x[1], acc=acc[1], input_precision=DOT_PREC))
    else:
        return acc + tl.dot(p.to(x.dtype), x, input_precision=DOT_PREC)


@triton.jit
def _zeros_qk(BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ROTARY: tl.constexpr):
    """A zero fp32 accumulator of dq or dk: (BLOCK, BLOCK_D), or two halves under rotary."""
    if ROTARY:
        return tl.zeros([BLOCK, BLOCK_D // 2], dtype=tl.float32), tl.zeros([BLOCK, BLOCK_D // 2], dtype=tl.float32)
    else:
        return tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)


@triton.jit
def _scaled(x, factor, ROTARY: tl.constexpr):
    """x * factor for a tile, or each of its halves under rotary."""
    if ROTARY:
        return x[0] * factor, x[1] * factor
    else:
        return x * factor


@triton.jit
def _key_range(start_m, T, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               WINDOWED: tl.constexpr):
    """Key tiles of the query tile at start_m: [w_lo, w_mid) cross the window's start (masked),
    [w_mid, lo) need no mask, [lo, hi) are masked (the diagonal; the ragged tail at T). The tiles
    before w_lo (wholly outside the window) and past hi (above the diagonal) are never visited.
    Without a window w_lo = w_mid = 0."""
    if CAUSAL:
        lo = (start_m // BLOCK_N) * BLOCK_N  # tiles ending at or before the tile's first row
        hi = tl.minimum(start_m + BLOCK_M, T)  # nothing above the diagonal
    else:
        lo = (T // BLOCK_N) * BLOCK_N  # only the ragged tail is masked
        hi = T
    w_lo = 0
    w_mid = 0
    if WINDOWED:  # the first row sees keys from start_m - window + 1, the last from start_m + BLOCK_M - window
        w_lo = (tl.maximum(start_m - window + 1, 0) // BLOCK_N) * BLOCK_N
        w_mid = tl.cdiv(tl.maximum(start_m + BLOCK_M - window, 0), BLOCK_N) * BLOCK_N
        w_mid = tl.minimum(tl.maximum(w_mid, w_lo), lo)
    return w_lo, w_mid, lo, hi


@triton.jit
def _query_range(start_n, T, window, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                 WINDOWED: tl.constexpr):
    """Query tiles that see the key tile at start_n: [lo, mid) cross the diagonal (masked),
    [mid, w_mid) lie wholly below it and inside the window, [w_mid, w_hi) cross the window's end
    (masked); none past w_hi. Without a window w_mid = w_hi = T."""
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M  # the tile holding row start_n
        mid = tl.minimum(tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M, T)
    else:
        lo = 0
        mid = 0
    w_mid = T
    w_hi = T
    if WINDOWED:  # the tile's last key is seen up to query start_n + BLOCK_N - 2 + window
        w_hi = tl.minimum(start_n + BLOCK_N + window - 1, T)
        w_mid = tl.minimum(tl.maximum(((start_n + window) // BLOCK_M) * BLOCK_M, mid), w_hi)
    return lo, mid, w_mid, w_hi


@triton.jit
def _visible(offs_m, offs_n, T, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """(BLOCK_M, BLOCK_N): which keys each query attends to (inside T; at or before it if causal;
    less than `window` positions before it if WINDOWED)."""
    visible = offs_n[None, :] < T
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None])
    if WINDOWED:
        visible = visible & (offs_m[:, None] - offs_n[None, :] < window)
    return visible


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, offs_m, kv, lo, hi, head, tables,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
    WINDOWED: tl.constexpr, ROTARY: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    QK_NORM: tl.constexpr,
):
    """The online softmax of the query tile q (BLOCK_M, BLOCK_D) at rows offs_m over the key
    tiles [lo, hi) of kv = (k, v matrices): acc (BLOCK_M, BLOCK_D) += p v; l, m (BLOCK_M,) its
    sum and max."""
    T, qk_scale, seed, bh, dropout_p, _, window = head
    k_mat, v_mat = kv
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if ROTARY:
            k = _load_qk(k_mat, offs_n, T, tables, HEAD_DIM, ROTARY, MASKED, QK_NORM)  # (BLOCK_N, BLOCK_D) halves
            v = _load(v_mat, offs_n, T, HEAD_DIM)
        else:
            k, v = _load_kv(kv, offs_n, T, HEAD_DIM, MASKED=MASKED)  # (BLOCK_N, BLOCK_D) each
            if QK_NORM:
                k = _rms_normalized(k, HEAD_DIM, ROTARY)[0]  # [0], not `k, _`: `_` holds a scalar of `head`
        s = _scores(q, k, ROTARY, DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, T, window, CAUSAL, WINDOWED), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
        if MASKED and WINDOWED:  # a row may not have seen any key yet: keep its sums at 0, not NaN
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
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
    cos_ptr, sin_ptr,  # (T, rot_dim / 2) fp32 each: the rotary tables (read only when ROTARY)
    q_strides, k_strides, v_strides, o_strides,  # (stride of B, of H, of T, of D) each
    H, T, qk_scale, dropout_p, drop_scale, window, rot_dim, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    ROTARY: tl.constexpr, INTERLEAVED: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    QK_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid (batch*head, query tile): B * H in dimension x, which CUDA does not cap at 65535 as it
    # does y. The last query tiles see the most keys: started first (of every head, x runs
    # fastest), so the grid ends on light ones
    bh = tl.program_id(0).to(tl.int64)
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mat = _qk_matrix(q_ptr, q_strides, b, h, offs_d, rot_dim, ROTARY, INTERLEAVED)
    kv = (_qk_matrix(k_ptr, k_strides, b, h, offs_d, rot_dim, ROTARY, INTERLEAVED), _matrix(v_ptr, v_strides, b, h, offs_d))
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    head = (T, qk_scale, seed, bh, dropout_p, drop_scale, window)
    tables = (cos_ptr, sin_ptr, rot_dim // 2)
    q = _load_qk(q_mat, offs_m, T, tables, HEAD_DIM, ROTARY, MASKED=True, QK_NORM=QK_NORM)  # (BLOCK_M, BLOCK_D)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    w_lo, w_mid, lo, hi = _key_range(start_m, T, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOWED)
    if WINDOWED:
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, offs_m, kv, w_lo, w_mid, head, tables, MASKED=True, BLOCK_N=BLOCK_N,
            HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
            QK_NORM=QK_NORM,
        )
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, offs_m, kv, w_mid, lo, head, tables, MASKED=False, BLOCK_N=BLOCK_N,
        HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
        QK_NORM=QK_NORM,
    )
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, offs_m, kv, lo, hi, head, tables, MASKED=True, BLOCK_N=BLOCK_N,
        HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
        QK_NORM=QK_NORM,
    )

    if DROPOUT:
        acc = acc * drop_scale
    if WINDOWED:  # the rows past T may have seen no key at all
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_i[:, None]
    _store(_matrix(o_ptr, o_strides, b, h, offs_d), offs_m, o, T, HEAD_DIM)
    tl.store(lse_ptr + bh * T + offs_m, m_i + tl.log2(l_i), mask=offs_m < T)


@triton.jit
def _attn_bwd_delta_kernel(
    o_ptr, do_ptr,  # (B, H, T, D) each
    delta_ptr,  # (B * H, T) fp32 output: rowsum(dO * O)
    o_strides, do_strides,  # (stride of B, of H, of T, of D) each
    H, T, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)  # grid (batch*head, row tile), as the forward's
    b, h = bh // H, bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o_and_do = (_matrix(o_ptr, o_strides, b, h, offs_d), _matrix(do_ptr, do_strides, b, h, offs_d))
    o, do = _load_kv(o_and_do, offs_m, T, HEAD_DIM, MASKED=True)  # (BLOCK_M, BLOCK_D) each
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(delta_ptr + bh * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, offs_n, queries, lo, hi, head, tables,
    MASKED: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOWED: tl.constexpr,
    ROTARY: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr, QK_NORM: tl.constexpr,
):
    """dK, dV (BLOCK_N, BLOCK_D) of the key tile k, v at rows offs_n, summed over the query tiles
    [lo, hi) of queries = (q matrix, dO matrix, lse row, delta row); MASKED: the causal
    diagonal, or the window's end. All transposed: rows are keys, columns queries."""
    q_mat, do_mat, lse_row, delta_row = queries
    T, qk_scale, seed, bh, dropout_p, drop_scale, window = head
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < T  # the ragged tail of queries loads as zeros and adds nothing
        q = _load_qk(q_mat, offs_m, T, tables, HEAD_DIM, ROTARY, MASKED=True, QK_NORM=QK_NORM)  # (BLOCK_M, BLOCK_D)
        do = _load(do_mat, offs_m, T, HEAD_DIM)
        lse = tl.load(lse_row + offs_m, mask=rows, other=0.0)  # (BLOCK_M,)
        delta = tl.load(delta_row + offs_m, mask=rows, other=0.0)
        pT = tl.exp2(_scores(k, q, ROTARY, DOT_PREC) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:  # query row >= key column (and within the window)
            visible = offs_m[None, :] >= offs_n[:, None]
            if WINDOWED:
                visible = visible & (offs_m[None, :] - offs_n[:, None] < window)
            pT = tl.where(visible, pT, 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # dL/d(dropped P), transposed
        if DROPOUT:
            keepT = _keep(seed, bh, offs_m[None, :], offs_n[:, None], T, dropout_p)
            dv += tl.dot(tl.where(keepT, pT * drop_scale, 0.0).to(do.dtype), do, input_precision=DOT_PREC)
            dpT = tl.where(keepT, dpT * drop_scale, 0.0)  # dL/dP
        else:
            dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PREC)
        dsT = pT * (dpT - delta[None, :])  # dL/dS, S the scaled scores
        dk = _accumulate(dk, dsT, q, ROTARY, DOT_PREC)
    return dk, dv


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, offs_m, kv, lo, hi, head, tables,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
    WINDOWED: tl.constexpr, ROTARY: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    QK_NORM: tl.constexpr,
):
    """dQ (BLOCK_M, BLOCK_D) of the query tile q, do (BLOCK_M, BLOCK_D), lse, delta (BLOCK_M,) at
    rows offs_m, summed over the key tiles [lo, hi) of kv = (k, v matrices)."""
    T, qk_scale, seed, bh, dropout_p, drop_scale, window = head
    k_mat, v_mat = kv
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if ROTARY:
            k = _load_qk(k_mat, offs_n, T, tables, HEAD_DIM, ROTARY, MASKED, QK_NORM)  # (BLOCK_N, BLOCK_D) halves
            v = _load(v_mat, offs_n, T, HEAD_DIM)
        else:
            k, v = _load_kv(kv, offs_n, T, HEAD_DIM, MASKED=MASKED)  # (BLOCK_N, BLOCK_D) each
            if QK_NORM:
                k = _rms_normalized(k, HEAD_DIM, ROTARY)[0]
        p = tl.exp2(_scores(q, k, ROTARY, DOT_PREC) * qk_scale - lse[:, None])  # (BLOCK_M, BLOCK_N)
        if MASKED:
            p = tl.where(_visible(offs_m, offs_n, T, window, CAUSAL, WINDOWED), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)  # dL/d(dropped P)
        if DROPOUT:
            dp = tl.where(_keep(seed, bh, offs_m[:, None], offs_n[None, :], T, dropout_p), dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])  # dL/dS
        dq = _accumulate(dq, ds, k, ROTARY, DOT_PREC)
    return dq


@triton.jit
def _attn_bwd_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr,  # (B, H, T, D) each
    dq_ptr, dk_ptr, dv_ptr,  # (B, H, T, D) outputs, strides g_strides
    lse_ptr, delta_ptr,  # (B * H, T) fp32
    seed_ptr,  # (1,) int64: the forward's dropout seed (read only when DROPOUT)
    cos_ptr, sin_ptr,  # (T, rot_dim / 2) fp32 each: the rotary tables (read only when ROTARY)
    q_strides, k_strides, v_strides, do_strides, g_strides,  # (stride of B, of H, of T, of D) each
    H, T, qk_scale, sm_scale, dropout_p, drop_scale, window, rot_dim, T_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    ROTARY: tl.constexpr, INTERLEAVED: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    QK_NORM: tl.constexpr, DKDV: tl.constexpr, BLOCK_BIG: tl.constexpr, BLOCK_SMALL: tl.constexpr,
):
    """A program holds BLOCK_BIG rows [start, start + BLOCK_BIG) and streams BLOCK_SMALL tiles
    of the other side past them. DKDV: dK and dV of those keys, over the query tiles that see
    them. Otherwise: dQ of those queries, over the key tiles they see. (Two launches rather than
    one kernel doing both: fused, the two halves' registers add up and spill.) With rotary the
    scores are those of the turned q and k, so dq and dk come out turned: turned back at the end.
    With QK-norm they are the gradients of the normalized q and k: taken through the norm's
    backward first."""
    start = tl.program_id(1) * BLOCK_BIG  # heaviest first: the first key tiles, the last query tiles
    if not DKDV:
        start = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_BIG
    bh = tl.program_id(0).to(tl.int64)  # grid (batch*head, tile), as the forward's
    b, h = bh // H, bh % H
    offs_big = start + tl.arange(0, BLOCK_BIG)
    offs_d = tl.arange(0, BLOCK_D)
    inside = _mask(offs_big, offs_d, T, HEAD_DIM)
    q_mat = _qk_matrix(q_ptr, q_strides, b, h, offs_d, rot_dim, ROTARY, INTERLEAVED)
    k_mat = _qk_matrix(k_ptr, k_strides, b, h, offs_d, rot_dim, ROTARY, INTERLEAVED)
    v_mat, do_mat = _matrix(v_ptr, v_strides, b, h, offs_d), _matrix(do_ptr, do_strides, b, h, offs_d)
    lse_row, delta_row = lse_ptr + bh * T, delta_ptr + bh * T
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    head = (T, qk_scale, seed, bh, dropout_p, drop_scale, window)
    tables = (cos_ptr, sin_ptr, rot_dim // 2)
    stride_gb, stride_gh, stride_gt, stride_gd = g_strides  # dq, dk, dv: one layout, one offset
    g = b * stride_gb + h * stride_gh + offs_big[:, None] * stride_gt + offs_d[None, :] * stride_gd

    if DKDV:
        k, k_rstd = _load_qk_rstd(k_mat, offs_big, T, tables, HEAD_DIM, ROTARY, True, QK_NORM)  # (BLOCK_BIG, BLOCK_D)
        v = _load(v_mat, offs_big, T, HEAD_DIM)
        dk = _zeros_qk(BLOCK_BIG, BLOCK_D, ROTARY)
        dv = tl.zeros([BLOCK_BIG, BLOCK_D], dtype=tl.float32)
        queries = (q_mat, do_mat, lse_row, delta_row)
        lo, mid, w_mid, w_hi = _query_range(start, T, window, BLOCK_BIG, BLOCK_SMALL, CAUSAL, WINDOWED)
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, offs_big, queries, lo, mid, head, tables, MASKED=True, BLOCK_M=BLOCK_SMALL,
            HEAD_DIM=HEAD_DIM, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
            QK_NORM=QK_NORM,
        )
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, offs_big, queries, mid, w_mid, head, tables, MASKED=False, BLOCK_M=BLOCK_SMALL,
            HEAD_DIM=HEAD_DIM, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
            QK_NORM=QK_NORM,
        )
        if WINDOWED:
            dk, dv = _dkdv_tiles(
                dk, dv, k, v, offs_big, queries, w_mid, w_hi, head, tables, MASKED=True, BLOCK_M=BLOCK_SMALL,
                HEAD_DIM=HEAD_DIM, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
                QK_NORM=QK_NORM,
            )
        dk = _scaled(dk, sm_scale, ROTARY)
        if QK_NORM:  # the gradient of the normalized k: through the norm
            dk = _rms_grad(dk, k, k_rstd, HEAD_DIM, ROTARY)
        if ROTARY:  # the gradient of the turned k: turned back
            dk = _turn(dk, offs_big, T, tables, SIGN=-1)
            _store_qk(_qk_matrix(dk_ptr, g_strides, b, h, offs_d, rot_dim, ROTARY, INTERLEAVED), offs_big, dk, T, HEAD_DIM, ROTARY)
            _store(_matrix(dv_ptr, g_strides, b, h, offs_d), offs_big, dv, T, HEAD_DIM)
        else:
            tl.store(dk_ptr + g, dk.to(dk_ptr.dtype.element_ty), mask=inside)
            tl.store(dv_ptr + g, dv.to(dv_ptr.dtype.element_ty), mask=inside)
    else:
        q, q_rstd = _load_qk_rstd(q_mat, offs_big, T, tables, HEAD_DIM, ROTARY, True, QK_NORM)  # (BLOCK_BIG, BLOCK_D)
        do = _load(do_mat, offs_big, T, HEAD_DIM)
        lse = tl.load(lse_row + offs_big, mask=offs_big < T, other=0.0)  # (BLOCK_BIG,)
        delta = tl.load(delta_row + offs_big, mask=offs_big < T, other=0.0)
        dq = _zeros_qk(BLOCK_BIG, BLOCK_D, ROTARY)
        kv = (k_mat, v_mat)
        w_lo, w_mid, lo, hi = _key_range(start, T, window, BLOCK_BIG, BLOCK_SMALL, CAUSAL, WINDOWED)
        if WINDOWED:
            dq = _dq_tiles(
                dq, q, do, lse, delta, offs_big, kv, w_lo, w_mid, head, tables, MASKED=True, BLOCK_N=BLOCK_SMALL,
                HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
                QK_NORM=QK_NORM,
            )
        dq = _dq_tiles(
            dq, q, do, lse, delta, offs_big, kv, w_mid, lo, head, tables, MASKED=False, BLOCK_N=BLOCK_SMALL,
            HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
            QK_NORM=QK_NORM,
        )
        dq = _dq_tiles(
            dq, q, do, lse, delta, offs_big, kv, lo, hi, head, tables, MASKED=True, BLOCK_N=BLOCK_SMALL,
            HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, WINDOWED=WINDOWED, ROTARY=ROTARY, DROPOUT=DROPOUT, DOT_PREC=DOT_PREC,
            QK_NORM=QK_NORM,
        )
        dq = _scaled(dq, sm_scale, ROTARY)
        if QK_NORM:  # the gradient of the normalized q: through the norm
            dq = _rms_grad(dq, q, q_rstd, HEAD_DIM, ROTARY)
        if ROTARY:  # the gradient of the turned q: turned back
            dq = _turn(dq, offs_big, T, tables, SIGN=-1)
            _store_qk(_qk_matrix(dq_ptr, g_strides, b, h, offs_d, rot_dim, ROTARY, INTERLEAVED), offs_big, dq, T, HEAD_DIM, ROTARY)
        else:
            tl.store(dq_ptr + g, dq.to(dq_ptr.dtype.element_ty), mask=inside)
