"""LayerNorm and RMSNorm over the last dim, and the residual add fused in front of them, forward
and backward.

    y = layer_norm(x, weight, bias)               # (x - mean) * rstd * weight + bias
    s, y = add_layer_norm(x, r, weight, bias)     # s = x + r (the new residual stream), y = LN(s)
    y = rms_norm(x, weight)                       # x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps)
    s, y = add_rms_norm(x, r, weight)             # s = x + r, y = RMSNorm(s)

Both norms are one pair of kernels: RMS (a constexpr) takes no mean off (mean is stored as 0)
and drops the mean term of the backward; the weight (a gain) is optional in both (HAS_WEIGHT),
as the bias is (RMSNorm has none). x (..., N) is viewed as M rows of N. Mean and rstd are
computed and saved in fp32 (8 bytes a row); the backward recomputes xhat = (x - mean) * rstd
from x (from s) rather than saving it.

add_layer_norm is the block's "x = x + branch; h = ln(x)" in one pass: x and r are read once, s
and y written once, s in the dtype x + r has (the residual stream keeps its own, fp32 under
autocast) and y in autocast's dtype when autocast is on (it feeds a matmul, which would cast it:
the cast pass is saved). Its backward folds the residual gradient in: d(x) = d(r) = ds + the
LayerNorm backward of dy, written once (twice when x and r differ in dtype, once in each, so no
cast pass follows either).

Bytes that must move (s_x: x's element size, s_r, s_s, s_y likewise; s_w: the weight's; G:
backward programs):
    layer_norm      forward   M*N*(s_x + s_y) + 8*M + 2*N*s_w
                    backward  M*N*(s_x + s_y + s_x) + 8*M + N*s_w + 2*(2*G*N*4)
    add_layer_norm  forward   M*N*(s_x + s_r + s_s + s_y) + 8*M + 2*N*s_w
                    backward  M*N*(s_s + s_y + s_s + s_x [+ s_r when its dtype differs])
                              + 8*M + N*s_w + 2*(2*G*N*4)
At GPT-2's (M, N) = (16384, 768) in bf16 layer_norm moves about 5 * M * N * 2 = 126 MB for fwd +
bwd; add_layer_norm under bf16 autocast (x, s fp32; r, y bf16) 12 + 16 = 28 bytes an element,
352 MB, against about 60 for the add, the LayerNorm, the casts and the gradient sum unfused.
The partials (G = 5 * 132 = 660 programs on an H100, see below) add about 4 MB.

Design, for a bandwidth-bound op:
- forward: a program normalizes BLOCK_M rows at once (a (BLOCK_M, BLOCK_N) tile, BLOCK_N the
  next power of two of N), so narrow widths still give each program a few KB to load;
- backward: a persistent grid of G = min(row blocks, CTAs per SM * SMs) programs, each looping
  over row blocks with a stride of G; each keeps its dweight / dbias sums in fp32 registers and
  writes one row of a (G, N) fp32 partial buffer, which torch then sums over G. No locks or
  atomics, and the partials stay small because G does not grow with M. CTAs per SM is read
  from the compiled kernel (its registers and shared memory, kernels.common.resident_ctas),
  so the grid is exactly what the GPU holds at once whatever the dtypes, flags and Triton
  version; `python tools/aot.py` records it (5 to 7 on sm_90 at GPT-2's width with Triton 3.9).
- both are registered with torch.library (tritongpt::layer_norm, tritongpt::add_layer_norm and
  their _backward ops), so torch.compile keeps each as one node and fuses what is around it.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from tritongpt.kernels.common import (
    NAMESPACE, autocast_dtype, check_device, check_float, check_tensors, device_guard, num_sms, resident_ctas,
)

MAX_WIDTH = 65536  # one row must fit in one program's tile
FWD_MAX_TILE = 4096  # elements of the forward's (BLOCK_M, BLOCK_N) tile
# Elements of the backward's (BLOCK_M, BLOCK_N) tile: 2 rows of GPT-2's 768 (padded to 1024) on
# 4 warps, 16 elements a thread, so that its registers (x, dy, xhat, dx, ds, in fp32) let several
# CTAs share an SM; 8 rows on 8 warps took 170-220 registers, one CTA per SM.
BWD_MAX_TILE = 2048


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,  # (M, N) input, row stride stride_x, unit column stride
    r_ptr,  # (M, N) residual branch added to x, row stride stride_r (ADD only)
    s_ptr,  # (M, N) out: s = x + r, contiguous (ADD only)
    y_ptr,  # (M, N) out: the LayerNorm of s (of x without ADD), contiguous
    w_ptr,  # (N,) weight; unused when HAS_WEIGHT is False
    b_ptr,  # (N,) bias; unused when HAS_BIAS is False
    mean_ptr,  # (M,) fp32, out (0 under RMS)
    rstd_ptr,  # (M,) fp32, out
    stride_x,
    stride_r,
    M,
    N,
    eps,
    ADD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    RMS: tl.constexpr,  # RMSNorm: no mean taken off
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]  # (BLOCK_M, BLOCK_N)

    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if ADD:
        r = tl.load(r_ptr + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # rounded to s's dtype before it is normalized, as torch's x + r then LayerNorm would be
        x = (x.to(tl.float32) + r.to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + rows[:, None] * N + cols[None, :], x, mask=mask)
    x = x.to(tl.float32)
    if RMS:
        mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        xc = x  # masked elements loaded as 0
    else:
        mean = tl.sum(x, axis=1) / N  # (BLOCK_M,)
        xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)  # (BLOCK_M,)

    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :]
    else:
        y = xc * rstd[:, None]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _layer_norm_bwd_kernel(
    x_ptr,  # (M, N) what the forward normalized (s with a residual add), row stride stride_x
    dy_ptr,  # (M, N) gradient of y, row stride stride_dy
    ds_ptr,  # (M, N) gradient of s, row stride stride_ds, added to dx (HAS_DS only)
    dx_ptr,  # (M, N) out: gradient of x (and of r when one dtype), contiguous
    dr_ptr,  # (M, N) out: the same gradient in r's dtype, contiguous (STORE_DR only)
    w_ptr,  # (N,) weight; unused when HAS_WEIGHT is False
    mean_ptr,  # (M,) fp32 (not read under RMS)
    rstd_ptr,  # (M,) fp32
    dw_part_ptr,  # (G, N) fp32: this program's sum of dy * xhat over its rows, out (if HAS_WEIGHT)
    db_part_ptr,  # (G, N) fp32: this program's sum of dy over its rows, out (if HAS_BIAS)
    stride_x,
    stride_dy,
    stride_ds,
    M,
    N,
    HAS_DS: tl.constexpr,
    STORE_DR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    RMS: tl.constexpr,  # RMSNorm: no mean, and no mean term in dx
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    num_progs = tl.num_programs(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if HAS_WEIGHT:
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
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        if RMS:
            xhat = x * rstd[:, None]  # (BLOCK_M, BLOCK_N); masked elements are 0
        else:
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy
        if HAS_WEIGHT:
            wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / N  # (BLOCK_M,)
        if RMS:
            dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(wdy, axis=1) / N
            dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:  # the residual's own gradient: s = x + r passes ds to both
            dx += tl.load(ds_ptr + rows[:, None] * stride_ds + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows[:, None] * N + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if STORE_DR:
            tl.store(dr_ptr + rows[:, None] * N + cols[None, :], dx.to(dr_ptr.dtype.element_ty), mask=mask)

        if HAS_WEIGHT:
            dw_acc += tl.sum(dy * xhat, axis=0)
        if HAS_BIAS:
            db_acc += tl.sum(dy, axis=0)

    if HAS_WEIGHT:
        tl.store(dw_part_ptr + pid * N + cols, dw_acc, mask=col_ok)
    if HAS_BIAS:
        tl.store(db_part_ptr + pid * N + cols, db_acc, mask=col_ok)


# ----------------------------------------------------------------------------- host launchers


def _check(op, x, weight, bias, residual=None):
    """A ValueError naming what the kernels cannot take. Needs only shapes, dtypes and devices,
    so the fake implementations run it too (torch.compile reports bad inputs while tracing)."""
    tensors = dict(x=x, y=residual, weight=weight, bias=bias)
    check_tensors(op, **tensors)
    check_device(op, **tensors)
    check_float(op, **tensors)
    N = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or N == 0:
        raise ValueError(f"{op}: x must have a non-empty last dim to normalize over, got shape {tuple(x.shape)}")
    if N > MAX_WIDTH:
        raise ValueError(f"{op}: widths up to {MAX_WIDTH} are supported, got {N}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"{op}: y must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)} (no broadcasting)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (N,):
            raise ValueError(f"{op}: {name} must have shape ({N},) to match x's last dim, got {tuple(t.shape)}")


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


def op_name(residual, rms):
    """The public op an input error is reported for."""
    return ("add_" if residual else "") + ("rms_norm" if rms else "layer_norm")


def layer_norm_fwd(x, weight, bias, eps, residual=None, out_dtype=None, rms=False):
    """x (..., N) [+ residual (..., N)], weight (N,) or None, bias (N,) or None -> s (x + residual,
    in their promoted dtype; None without a residual), y (in out_dtype, default s's / x's dtype),
    mean (M,) fp32 (zeros with rms), rstd (M,) fp32; s and y contiguous of x's shape. rms:
    RMSNorm (no mean taken off) instead of LayerNorm."""
    _check(op_name(residual is not None, rms), x, weight, bias, residual)
    N = x.shape[-1]
    x2 = _rows(x, N)
    r2 = _rows(residual, N) if residual is not None else x2
    M = x2.shape[0]
    s_dtype = torch.promote_types(x.dtype, residual.dtype) if residual is not None else x.dtype
    s = torch.empty((M, N), dtype=s_dtype, device=x.device) if residual is not None else None
    y = torch.empty((M, N), dtype=out_dtype or s_dtype, device=x.device)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M > 0:
        BLOCK_M, BLOCK_N, num_warps = _tile(N, max_tile=FWD_MAX_TILE)
        w = weight.contiguous() if weight is not None else mean  # an absent weight or bias: a pointer never read
        b = bias.contiguous() if bias is not None else w
        grid = (triton.cdiv(M, BLOCK_M),)
        with device_guard(x):
            _layer_norm_fwd_kernel[grid](
                x2, r2, s if s is not None else y, y, w, b, mean, rstd, x2.stride(0), r2.stride(0), M, N, eps,
                ADD=residual is not None, HAS_BIAS=bias is not None, HAS_WEIGHT=weight is not None, RMS=rms,
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
            )
    return (s.view(x.shape) if s is not None else None), y.view(x.shape), mean, rstd


def bwd_programs(M, BLOCK_M, ctas_per_sm, sms):
    """The backward's grid: as many programs as the GPU holds at once (CTAs per SM, read from
    the compiled kernel, times SMs), fewer when there are fewer row blocks."""
    return max(1, min(triton.cdiv(M, BLOCK_M), ctas_per_sm * sms))


def layer_norm_bwd(dy, x, weight, bias, mean, rstd, ds=None, dx_dtype=None, dr_dtype=None, rms=False):
    """dy (..., N) and the forward's x (s with a residual add), mean and rstd [and ds, the
    gradient of s, added to dx] -> dx (x's shape, in dx_dtype, default x's), dr (the same in
    dr_dtype, or None when dr_dtype is None), dweight in weight's dtype, dbias in bias's (each
    None when its parameter is None). rms: the backward of RMSNorm."""
    N = x.shape[-1]
    x2, dy2 = _rows(x, N), _rows(dy, N)
    ds2 = _rows(ds, N) if ds is not None else dy2
    M = x2.shape[0]
    dx = torch.empty((M, N), dtype=dx_dtype or x.dtype, device=x.device)
    dr = torch.empty((M, N), dtype=dr_dtype, device=x.device) if dr_dtype is not None else None
    BLOCK_M, BLOCK_N, num_warps = _tile(N, max_tile=BWD_MAX_TILE)
    meta = dict(
        HAS_DS=ds is not None, STORE_DR=dr is not None, HAS_BIAS=bias is not None, HAS_WEIGHT=weight is not None,
        RMS=rms, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
    )
    w = weight.contiguous() if weight is not None else rstd  # no weight: a pointer never read
    with device_guard(x):
        G = 1
        if M > 0:  # the partials are (G, N): G is needed first, and comes from the compiled kernel
            args = (x2, dy2, ds2, dx, dr if dr is not None else dx, w, mean, rstd, mean, mean,
                    x2.stride(0), dy2.stride(0), ds2.stride(0), M, N)
            G = bwd_programs(M, BLOCK_M, resident_ctas(_layer_norm_bwd_kernel, args, meta, x.device), num_sms(x.device))
        # every program writes its whole row of partials, so no zero-fill (M == 0: no program runs)
        alloc = torch.empty if M > 0 else torch.zeros
        dw_part = alloc((G, N), dtype=torch.float32, device=x.device) if weight is not None else None
        db_part = alloc((G, N), dtype=torch.float32, device=x.device) if bias is not None else None
        if M > 0:  # an absent partial buffer: rstd's pointer (fp32) stands in, never written
            _layer_norm_bwd_kernel[(G,)](
                x2, dy2, ds2, dx, dr if dr is not None else dx, w, mean, rstd,
                dw_part if dw_part is not None else rstd, db_part if db_part is not None else rstd,
                x2.stride(0), dy2.stride(0), ds2.stride(0), M, N, **meta,
            )
    dweight = dw_part.sum(0).to(weight.dtype) if weight is not None else None
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else None
    return dx.view(x.shape), (dr.view(x.shape) if dr is not None else None), dweight, dbias


# ----------------------------------------------------------------------------- torch.library ops
# Fake implementations give the real outputs' shapes, strides (all contiguous) and dtypes. An
# absent optional output (dbias without a bias, dr in x's dtype) is an empty (0,) tensor: an op
# returns a fixed list of tensors.

Tensor = torch.Tensor


def _empty(like, shape, dtype=None):
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


def _nothing(like):
    """The stand-in for an absent output."""
    return torch.empty(0, dtype=torch.float32, device=like.device)


def _grad_of(param, like):
    """The gradient output of an optional parameter: its shape, or the stand-in when it is absent."""
    return _empty(param, param.shape) if param is not None else _nothing(like)


def _given(grad, param):
    """An optional parameter's gradient as autograd takes it: None when the parameter is absent."""
    return grad if param is not None else None


@torch.library.custom_op(f"{NAMESPACE}::layer_norm", mutates_args=())
def _layer_norm_op(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, rms: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    _, y, mean, rstd = layer_norm_fwd(x, weight, bias, eps, rms=rms)
    return y, mean, rstd


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, rms=False):
    _check(op_name(False, rms), x, weight, bias)
    M = x.numel() // x.shape[-1]
    return _empty(x, x.shape), _empty(x, (M,), torch.float32), _empty(x, (M,), torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::layer_norm_backward", mutates_args=())
def _layer_norm_backward_op(
    dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
    rms: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    dx, _, dweight, dbias = layer_norm_bwd(dy, x, weight, bias, mean, rstd, rms=rms)
    return dx, (dweight if weight is not None else _nothing(x)), (dbias if bias is not None else _nothing(x))


@_layer_norm_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd, rms=False):
    return _empty(x, x.shape), _grad_of(weight, x), _grad_of(bias, x)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, _, rms = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.rms = rms
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for mean and rstd


def _layer_norm_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None
    dx, dweight, dbias = torch.ops.tritongpt.layer_norm_backward(dy, x, weight, bias, mean, rstd, ctx.rms)
    return dx, _given(dweight, weight), _given(dbias, bias), None, None


_layer_norm_op.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


@torch.library.custom_op(f"{NAMESPACE}::add_layer_norm", mutates_args=())
def _add_layer_norm_op(
    x: Tensor, y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, out_dtype: torch.dtype,
    rms: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return layer_norm_fwd(x, weight, bias, eps, residual=y, out_dtype=out_dtype, rms=rms)


@_add_layer_norm_op.register_fake
def _(x, y, weight, bias, eps, out_dtype, rms=False):
    _check(op_name(True, rms), x, weight, bias, y)
    M = x.numel() // x.shape[-1]
    s_dtype = torch.promote_types(x.dtype, y.dtype)
    return (_empty(x, x.shape, s_dtype), _empty(x, x.shape, out_dtype),
            _empty(x, (M,), torch.float32), _empty(x, (M,), torch.float32))


@torch.library.custom_op(f"{NAMESPACE}::add_layer_norm_backward", mutates_args=())
def _add_layer_norm_backward_op(
    dout: Tensor, ds: Optional[Tensor], s: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
    rstd: Tensor, x_dtype: torch.dtype, y_dtype: torch.dtype, rms: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dr_dtype = y_dtype if y_dtype != x_dtype else None
    dx, dr, dweight, dbias = layer_norm_bwd(dout, s, weight, bias, mean, rstd, ds, x_dtype, dr_dtype, rms=rms)
    return (dx, (dr if dr is not None else _nothing(s)), (dweight if weight is not None else _nothing(s)),
            (dbias if bias is not None else _nothing(s)))


@_add_layer_norm_backward_op.register_fake
def _(dout, ds, s, weight, bias, mean, rstd, x_dtype, y_dtype, rms=False):
    dr = _empty(s, s.shape, y_dtype) if y_dtype != x_dtype else _nothing(s)
    return _empty(s, s.shape, x_dtype), dr, _grad_of(weight, s), _grad_of(bias, s)


def _add_layer_norm_setup(ctx, inputs, output):
    x, y, weight, bias, _, _, rms = inputs
    s, _, mean, rstd = output
    ctx.save_for_backward(s, weight, bias, mean, rstd)
    ctx.dtypes = (x.dtype, y.dtype)
    ctx.rms = rms
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # an unused s (after the last block) gets no zero gradient


def _add_layer_norm_backward(ctx, ds, dout, _dmean, _drstd):
    s, weight, bias, mean, rstd = ctx.saved_tensors
    x_dtype, y_dtype = ctx.dtypes
    if dout is None:  # only s was used: the add's gradient alone
        return (None if ds is None else ds.to(x_dtype)), (None if ds is None else ds.to(y_dtype)), None, None, None, None, None
    dx, dy, dweight, dbias = torch.ops.tritongpt.add_layer_norm_backward(
        dout, ds, s, weight, bias, mean, rstd, x_dtype, y_dtype, ctx.rms
    )
    return dx, (dy if y_dtype != x_dtype else dx), _given(dweight, weight), _given(dbias, bias), None, None, None


_add_layer_norm_op.register_autograd(_add_layer_norm_backward, setup_context=_add_layer_norm_setup)


# ----------------------------------------------------------------------------- public


def layer_norm(x, weight, bias=None, eps=1e-5):
    """LayerNorm over x's last dim; weight and bias (N,), either may be None. Any float dtypes,
    mixed too (bf16 x with fp32 weight, as under autocast): computed in fp32, y in x's dtype."""
    return torch.ops.tritongpt.layer_norm(x, weight, bias, eps)[0]


def add_layer_norm(x, y, weight, bias=None, eps=1e-5):
    """(s, layer_norm(s)) with s = x + y, in one pass: the residual add and the LayerNorm that
    follows it. x and y of one shape (..., N), any float dtypes; s in their promoted dtype (x + y's),
    the normalized output in autocast's dtype when autocast is on (else s's)."""
    return _add_norm(x, y, weight, bias, eps, rms=False)


def rms_norm(x, weight=None, eps=1e-5):
    """RMSNorm over x's last dim: x / sqrt(mean(x^2) + eps) [* weight (N,), the gain]; dtypes as
    layer_norm."""
    return torch.ops.tritongpt.layer_norm(x, weight, None, eps, True)[0]


def add_rms_norm(x, y, weight=None, eps=1e-5):
    """(s, rms_norm(s)) with s = x + y, in one pass; dtypes as add_layer_norm."""
    return _add_norm(x, y, weight, None, eps, rms=True)


def _add_norm(x, y, weight, bias, eps, rms):
    check_tensors(op_name(True, rms), x=x, y=y)
    out_dtype = autocast_dtype(x) or torch.promote_types(x.dtype, y.dtype)
    s, out, _, _ = torch.ops.tritongpt.add_layer_norm(x, y, weight, bias, eps, out_dtype, rms)
    return s, out
