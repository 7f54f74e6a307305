"""The symmetric products of Muon's Newton-Schulz iteration, computing half of each.

xxt(x, alpha, add, beta) = beta * add + alpha * x @ x^T for x (..., M, K), add (..., M, M) or
None; out (..., M, M) in x's dtype. The result is symmetric, and so of add only the lower
triangle is read (reference.symmetric(add) stands for it; Newton-Schulz's addend is symmetric). One quintic Newton-Schulz step (kernels.reference.newton_schulz) is

    A = X X^T                 xxt(X)
    B = b A + c A A^T         xxt(A, c, A, b): A is symmetric, so A A = A A^T
    X = a X + B X             a plain matmul (cuBLAS), torch.baddbmm

and the first two products are symmetric: out[i, j] = out[j, i]. The kernel computes only the
tiles on and below the diagonal, T (T + 1) / 2 of the T^2 tiles of BLOCK x BLOCK (T = cdiv(M,
BLOCK)), and stores each tile below the diagonal twice, as it is and transposed (tl.trans) in the
mirror position: nearly half the FLOPs and half the loads of a full matmul, and an output that is
exactly symmetric. Program p of a matrix takes lower-triangle tile (i, j) in row order, i the
largest with i (i + 1) / 2 <= p (from a square root, corrected for its rounding) and
j = p - i (i + 1) / 2; a second grid axis runs over the matrices of the batch (q, k and v's
blocks of c_attn at once). The products accumulate in fp32; the epilogue scales the tile by
alpha and adds beta * add (read at the same tile) before the store.

FLOPs: 2 * M * M * K for the whole product as a matmul computes it; the kernel does the
T (T + 1) / 2 tiles, about M * (M + BLOCK) * K. Bytes: each program reads two row panels of x
(2 * BLOCK * K elements) and writes (at most) two tiles.

Backward (a plain formula, torch matmuls): dx = alpha (dout + dout^T) x; dadd = beta (dout +
dout^T) below the diagonal, beta dout on it, zero above.
Muon needs no gradient; the op has one so that it is an ordinary differentiable op of the library.

Registered with torch.library as tritongpt::xxt. newton_schulz(g, steps) is the iteration on it,
the triton backend's counterpart of kernels.reference.newton_schulz.

Precision: products accumulate in fp32; fp32 inputs use TF32 exactly where PyTorch's own
matmuls would (as kernels/fused_mlp.py). Under the CPU interpreter: fp32 and fp16 (no bf16 dot).
"""

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tritongpt.kernels import reference
from tritongpt.kernels.common import (
    AUTOTUNE, NAMESPACE, check_device, check_one_dtype, check_tensors, device_guard, interpreted, tiles_fixed,
)

INTERPRET = interpreted()


def _config(block, bk, warps, stages):
    return triton.Config(dict(BLOCK=block, BLOCK_K=bk), num_warps=warps, num_stages=stages)


# Curated for Hopper in bf16/fp16 (tiles are square: a tile and its mirror have the same shape).
# At GPT-2's width (M = 768) the 128 tiles make 21 programs a matrix and the 64 ones 78: the small
# tiles keep more of the SMs busy on one matrix, the large ones feed wgmma better on a batch of
# them or a wider model. `python tools/aot.py` (the compile audit) holds every one to no spills on sm_90:
# a 128 tile on 4 warps spilled in the epilogue that adds the addend (1136 bytes a thread), and in
# fp32 every 128 tile spilled, so fp32 inputs keep the 64 ones (configs_that_fit).
HOPPER_CONFIGS = [
    _config(128, 64, 8, 3),
    _config(128, 64, 8, 4),
    _config(64, 64, 4, 4),
    _config(64, 32, 4, 4),
    _config(64, 32, 4, 3),
]
# Without autotuning: under the interpreter a tile small enough that the tests' shapes span
# several row blocks and K blocks; on a GPU one whose pipeline fits every dtype's shared memory.
# kernels.common.fix_tiles (the trainer's deterministic=true) runs this one at run time too.
SINGLE_CONFIG = _config(16, 16, 4, 1) if INTERPRET else _config(64, 32, 4, 3)
CONFIGS = HOPPER_CONFIGS if AUTOTUNE else [SINGLE_CONFIG]
FP32_MAX_BLOCK = 64


def configs_that_fit(configs, named_args, **kwargs):
    """The autotuner's early pruning: fp32 inputs take the tiles of at most FP32_MAX_BLOCK."""
    if named_args["x_ptr"].dtype.itemsize < 4:
        return configs
    return [c for c in configs if c.kwargs["BLOCK"] <= FP32_MAX_BLOCK] or configs


# ----------------------------------------------------------------------------- the kernel


@triton.autotune(configs=CONFIGS, key=["M", "K", "HAS_ADD"], prune_configs_by={"early_config_prune": configs_that_fit})
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _xxt_kernel(
    x_ptr,  # (B, M, K) input, any strides
    add_ptr,  # (B, M, M) the addend, any strides, its lower triangle read; unused unless HAS_ADD
    out_ptr,  # (B, M, M) out, contiguous
    M, K,
    stride_xb, stride_xm, stride_xk,
    stride_ab, stride_am, stride_an,
    alpha, beta,
    HAS_ADD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
):
    # This program's tile (i, j), j <= i, the p-th of the lower triangle in row order.
    p = tl.program_id(0)
    i = ((tl.sqrt((8 * p + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    i = tl.where(i * (i + 1) // 2 > p, i - 1, i)  # the square root rounded up past an exact square
    i = tl.where((i + 1) * (i + 2) // 2 <= p, i + 1, i)  # ... or down below one
    j = p - i * (i + 1) // 2
    batch = tl.program_id(1).to(tl.int64)
    x_ptr += batch * stride_xb
    out_ptr += batch * M * M

    rows = i.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) of out, and of x
    cols = j.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) of out: rows of x, read as x^T
    ks = tl.arange(0, BLOCK_K)
    # Rows past M wrap back into the matrix (their results are never stored), so only K needs a mask.
    a_ptrs = x_ptr + (rows % M)[:, None] * stride_xm + ks[None, :] * stride_xk  # (BLOCK, BLOCK_K)
    b_ptrs = x_ptr + (cols % M)[None, :] * stride_xm + ks[:, None] * stride_xk  # (BLOCK_K, BLOCK): x^T
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=ks[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=ks[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_xk

    acc = acc * alpha
    mask = (rows[:, None] < M) & (cols[None, :] < M)
    if HAS_ADD:  # its lower triangle: a diagonal tile reads entry (r, c) above the diagonal at (c, r)
        low, high = tl.minimum(rows[:, None], cols[None, :]), tl.maximum(rows[:, None], cols[None, :])
        add = tl.load(add_ptr + batch * stride_ab + high * stride_am + low * stride_an, mask=mask, other=0.0)
        acc += beta * add.to(tl.float32)
    out = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * M + cols[None, :], out, mask=mask)
    if i != j:  # the mirror tile (j, i), from the same registers
        mirror = (cols[:, None] < M) & (rows[None, :] < M)
        tl.store(out_ptr + cols[:, None] * M + rows[None, :], tl.trans(out), mask=mirror)


# ----------------------------------------------------------------------------- host launcher


def _check(x, add):
    """A clear ValueError for inputs the kernel cannot take: shapes, then dtypes and devices."""
    check_tensors("xxt", x=x, add=add)
    if x.dim() < 2:
        raise ValueError(f"xxt: expected x (..., M, K) with at least 2 dims, got {tuple(x.shape)}")
    M = x.shape[-2]
    if add is not None and tuple(add.shape) != (*x.shape[:-1], M):
        raise ValueError(f"xxt: expected add of shape {(*x.shape[:-1], M)} (x's (..., M, M)), got {tuple(add.shape)}")
    check_one_dtype("xxt", x=x, add=add)
    check_device("xxt", x=x, add=add)
    if INTERPRET and x.dtype == torch.bfloat16:
        raise ValueError("xxt: bfloat16 needs a GPU; Triton's CPU interpreter has no bf16 matmul (use float32 or "
                         "float16 on the CPU)")


def _input_precision(dtype):
    if dtype == torch.float32 and (INTERPRET or not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


def _fixed_config():
    """SINGLE_CONFIG as launch arguments: its tiles, warps and stages."""
    c = SINGLE_CONFIG
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def lower_tiles(M, block):
    """Programs per matrix: the tiles on and below the diagonal of a (M, M) out."""
    t = triton.cdiv(M, block)
    return t * (t + 1) // 2


def xxt_fwd(x, alpha=1.0, add=None, beta=0.0, out=None):
    """beta * add + alpha * x @ x^T: x (..., M, K), add (..., M, M) or None -> (..., M, M), written
    into `out` (contiguous (B, M, M), B the leading dims' product) where one is given."""
    _check(x, add)
    M, K = x.shape[-2], x.shape[-1]
    B = math.prod(x.shape[:-2])
    x3 = x.reshape(B, M, K)
    x3 = x3 if x3.stride(2) == 1 else x3.contiguous()  # unit stride along K: vectorized, pipelined loads
    if out is None:
        out = torch.empty((B, M, M), device=x.device, dtype=x.dtype)
    elif out.shape != (B, M, M) or not out.is_contiguous() or out.dtype != x.dtype:
        raise ValueError(f"xxt: out must be a contiguous {x.dtype} tensor of shape {(B, M, M)}")
    a3 = add.reshape(B, M, M) if add is not None else out
    if B > 0 and M > 0:
        if K == 0:  # an empty sum
            out.copy_(beta * a3 if add is not None else torch.zeros_like(out))
            return out.view(*x.shape[:-1], M)
        grid = lambda meta: (lower_tiles(M, meta["BLOCK"]), B)  # noqa: E731
        # with the tiles fixed (kernels.common.fix_tiles), the kernel under the autotuner, at SINGLE_CONFIG
        kernel, fixed = (_xxt_kernel.fn, _fixed_config()) if tiles_fixed() else (_xxt_kernel, {})
        with device_guard(x):
            kernel[grid](
                x3, a3, out, M, K,
                x3.stride(0), x3.stride(1), x3.stride(2), a3.stride(0), a3.stride(1), a3.stride(2),
                float(alpha), float(beta),
                HAS_ADD=add is not None, INPUT_PRECISION=_input_precision(x.dtype), **fixed,
            )  # fmt: skip
    return out.view(*x.shape[:-1], M)


# ----------------------------------------------------------------------------- torch.library op

Tensor = torch.Tensor


@torch.library.custom_op(f"{NAMESPACE}::xxt", mutates_args=())
def _xxt_op(x: Tensor, alpha: float, add: Optional[Tensor], beta: float) -> Tensor:
    return xxt_fwd(x, alpha, add, beta)


@_xxt_op.register_fake
def _(x, alpha, add, beta):
    _check(x, add)
    return x.new_empty((*x.shape[:-1], x.shape[-2]))


def _xxt_setup(ctx, inputs, output):
    x, alpha, add, beta = inputs
    ctx.save_for_backward(x)
    ctx.alpha, ctx.beta, ctx.has_add = alpha, beta, add is not None


def _xxt_backward(ctx, dout):
    """dx = alpha (dout + dout^T) x; dadd = beta (dout + dout^T) below the diagonal and beta dout
    on it, zero above (the addend's lower triangle stands for both halves)."""
    (x,) = ctx.saved_tensors
    need_dx, _, need_dadd, _ = ctx.needs_input_grad
    both = dout + dout.mT
    dx = ctx.alpha * (both @ x) if need_dx else None
    dadd = None
    if ctx.has_add and need_dadd:
        dadd = ctx.beta * (both.tril(-1) + torch.diag_embed(dout.diagonal(dim1=-2, dim2=-1)))
    return dx, None, dadd, None


_xxt_op.register_autograd(_xxt_backward, setup_context=_xxt_setup)


# ----------------------------------------------------------------------------- public functions


def xxt(x, alpha=1.0, add=None, beta=0.0):
    """beta * add + alpha * x @ x^T for x (..., M, K) and add (..., M, M) or None (its lower
    triangle read, as symmetric), computing only the tiles on and below the diagonal and mirroring them."""
    check_tensors("xxt", x=x, add=add)
    return torch.ops.tritongpt.xxt(x, float(alpha), add, float(beta))


def newton_schulz(g, steps=5):
    """The orthogonalized g (..., M, N) by `steps` quintic Newton-Schulz steps, in g's dtype (bf16
    on a GPU): kernels.reference.newton_schulz with its two symmetric products on xxt."""
    a, b, c = reference.NS_COEFFICIENTS
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    lead, (m, n) = x.shape[:-2], x.shape[-2:]
    x = x.reshape(-1, m, n).contiguous()  # (batch, m, n), m <= n; a copy where g was tall
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + reference.NS_EPS)
    for _ in range(steps):
        A = xxt(x)  # (batch, m, m)
        B = xxt(A, c, A, b)
        x = torch.baddbmm(x, B, x, beta=a)  # a X + B X
    x = x.view(*lead, m, n)
    return x.mT if tall else x
