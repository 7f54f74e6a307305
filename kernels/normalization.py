"""LayerNorm over the last dim: y = (x - mean) * rstd * weight + bias, forward and backward.

x (..., N) is viewed as M rows of N. Mean and rstd are computed and saved in fp32 (8 bytes a
row); the backward recomputes xhat = (x - mean) * rstd from x rather than saving it.

Bytes that must move (s_x: x's element size; s_w: the weight's; G: backward programs):
    forward   2 * M * N * s_x            read x, write y
              + 8 * M + 2 * N * s_w      mean and rstd out; weight and bias in
    backward  3 * M * N * s_x            read x and dy, write dx
              + 8 * M + N * s_w          mean, rstd and weight in
              + 2 * (2 * G * N * 4)      dweight / dbias partials: written, then summed
At GPT-2's (M, N) = (16384, 768) in bf16 that is about 5 * M * N * 2 = 126 MB for fwd+bwd; the
partials (G = 2 * SMs = 264 on an H200) add about 3 MB.

Design, for a bandwidth-bound op:
- forward: a program normalizes BLOCK_M rows at once (a (BLOCK_M, BLOCK_N) tile, BLOCK_N the
  next power of two of N), so narrow widths still give each program a few KB to load;
- backward: a persistent-ish grid of G = min(row blocks, 2 * SMs) programs, each looping over
  row blocks with a stride of G; each keeps its dweight / dbias sums in fp32 registers and
  writes one row of a (G, N) fp32 partial buffer, which torch then sums over G. No locks or
  atomics, and the partials stay small because G does not grow with M.
"""

import torch
import triton
import triton.language as tl

from kernels.common import check_device, check_float, check_tensors, num_sms

MAX_WIDTH = 65536  # one row must fit in one program's tile


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,  # (M, N) input, row stride stride_x, unit column stride
    y_ptr,  # (M, N) output, contiguous
    w_ptr,  # (N,) weight
    b_ptr,  # (N,) bias; unused when HAS_BIAS is False
    mean_ptr,  # (M,) fp32, out
    rstd_ptr,  # (M,) fp32, out
    stride_x,
    M,
    N,
    eps,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]  # (BLOCK_M, BLOCK_N)

    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N  # (BLOCK_M,)
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)  # (BLOCK_M,)

    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _layer_norm_bwd_kernel(
    x_ptr,  # (M, N) the forward's input, row stride stride_x
    dy_ptr,  # (M, N) gradient of y, row stride stride_dy
    dx_ptr,  # (M, N) gradient of x, contiguous, out
    w_ptr,  # (N,) weight
    mean_ptr,  # (M,) fp32
    rstd_ptr,  # (M,) fp32
    dw_part_ptr,  # (G, N) fp32: this program's sum of dy * xhat over its rows, out
    db_part_ptr,  # (G, N) fp32: this program's sum of dy over its rows, out (if HAS_BIAS)
    stride_x,
    stride_dy,
    M,
    N,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    num_progs = tl.num_programs(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)  # (BLOCK_N,)
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)

    # program pid takes row blocks pid, pid + G, pid + 2G, ...
    for row0 in range(pid * BLOCK_M, M, num_progs * BLOCK_M):
        rows = row0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)

        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)  # (BLOCK_M, BLOCK_N)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / N  # (BLOCK_M,)
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(dx_ptr + rows[:, None] * N + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)

        dw_acc += tl.sum(dy * xhat, axis=0)
        if HAS_BIAS:
            db_acc += tl.sum(dy, axis=0)

    tl.store(dw_part_ptr + pid * N + cols, dw_acc, mask=col_ok)
    if HAS_BIAS:
        tl.store(db_part_ptr + pid * N + cols, db_acc, mask=col_ok)


# ----------------------------------------------------------------------------- host launchers


def _rows(t, N):
    """t (..., N) as an (M, N) view with unit column stride (a copy only when it has to be)."""
    t2 = t.reshape(-1, N)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _tile(N, max_tile):
    """(BLOCK_M, BLOCK_N, num_warps) for rows of width N: whole rows, several of them per tile
    for narrow widths, warps from the tile's size."""
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_M = max(1, min(16, max_tile // BLOCK_N))
    tile = BLOCK_M * BLOCK_N
    num_warps = 2 if tile <= 512 else 4 if tile <= 2048 else 8 if tile <= 8192 else 16
    return BLOCK_M, BLOCK_N, num_warps


def layer_norm_fwd(x, weight, bias, eps):
    """x (..., N), weight (N,), bias (N,) or None -> y (like x), mean (M,) fp32, rstd (M,) fp32."""
    check_tensors("layer_norm", x=x, weight=weight, bias=bias)
    check_device("layer_norm", x=x, weight=weight, bias=bias)
    check_float("layer_norm", x=x, weight=weight, bias=bias)
    N = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or N == 0:
        raise ValueError(f"layer_norm: x must have a non-empty last dim to normalize over, got shape {tuple(x.shape)}")
    if N > MAX_WIDTH:
        raise ValueError(f"layer_norm: widths up to {MAX_WIDTH} are supported, got {N}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (N,):
            raise ValueError(f"layer_norm: {name} must have shape ({N},) to match x's last dim, got {tuple(t.shape)}")
    x2 = _rows(x, N)
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M > 0:
        BLOCK_M, BLOCK_N, num_warps = _tile(N, max_tile=4096)
        w = weight.contiguous()
        b = bias.contiguous() if bias is not None else w
        grid = (triton.cdiv(M, BLOCK_M),)
        _layer_norm_fwd_kernel[grid](
            x2, y, w, b, mean, rstd, x2.stride(0), M, N, eps,
            HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
        )
    return y.view(x.shape), x2, mean, rstd


def layer_norm_bwd(dy, x2, weight, bias, mean, rstd):
    """dy (..., N), the forward's x2 (M, N), mean and rstd -> dx (M, N) in x's dtype, dweight in
    weight's dtype, dbias in bias's dtype (None when bias is None)."""
    M, N = x2.shape
    dy2 = _rows(dy, N)
    dx = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    BLOCK_M, BLOCK_N, num_warps = _tile(N, max_tile=8192)
    G = max(1, min(triton.cdiv(M, BLOCK_M), 2 * num_sms(x2.device)))
    # every program writes its whole row of partials, so no zero-fill (M == 0: no program runs)
    alloc = torch.empty if M > 0 else torch.zeros
    dw_part = alloc((G, N), dtype=torch.float32, device=x2.device)
    db_part = alloc((G, N), dtype=torch.float32, device=x2.device) if bias is not None else dw_part
    if M > 0:
        _layer_norm_bwd_kernel[(G,)](
            x2, dy2, dx, weight.contiguous(), mean, rstd, dw_part, db_part,
            x2.stride(0), dy2.stride(0), M, N,
            HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
        )
    dweight = dw_part.sum(0).to(weight.dtype)
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- autograd


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, x2, mean, rstd = layer_norm_fwd(x, weight, bias, eps)
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = layer_norm_bwd(dy, x2, weight, bias, mean, rstd)
        return dx.view(ctx.x_shape), dweight, dbias, None


# ----------------------------------------------------------------------------- public


def layer_norm(x, weight, bias=None, eps=1e-5):
    """LayerNorm over x's last dim; weight and bias (N,), bias may be None. Any float dtypes,
    mixed too (bf16 x with fp32 weight, as under autocast): computed in fp32, y in x's dtype."""
    return LayerNormFunction.apply(x, weight, bias, eps)
