"""Fused Linear + bias + activation: y = act(x @ W.T + b), the first half of the MLP.

x (..., K), W (N, K) in nn.Linear layout, b (N,) or None; y (..., N) in x's dtype. K = 0 is an
empty sum, as in F.linear: y = act(b) on every row, dx and dW empty, db from dy as usual.

The activation (ACTIVATIONS below) is one of the two GELUs, "gelu_tanh" (GPT-2's, the default;
F.gelu's approximate="tanh") or "gelu_exact", the exact h * Phi(h) with Phi(h) = (1 + erf(h /
sqrt 2)) / 2 (GPT-NeoX / Pythia, Cerebras-GPT; F.gelu's approximate="none"), or "relu2",
relu(h)^2 (Primer's squared ReLU, nanochat's and the GPT-2 speedrun's), whose derivative
2 relu(h) the backward pass takes instead of gelu'(h). linear_gelu(approximate=...) names the
GELUs as F.gelu does. The choice is a constexpr of the kernels, so each activation compiles to
its own code and the tanh kernels are what they were before the others existed. The erf is our own
polynomial approximation (_erf_parts below, max abs error ~1e-7 in fp32): the interpreter has no
libdevice, and the GPU takes the same code so that both paths compute the same thing.

Forward: one tiled matmul with an fp32 accumulator; the bias and the GELU run in its
epilogue on the accumulator tile, so the pre-activation h = x @ W.T + b never makes a round trip
through memory before the GELU. Programs are ordered in groups of GROUP_M row blocks, so the
programs running at the same time share W's column tiles and x's row tiles in L2.

Backward: we SAVE h rather than recompute it. When a gradient is needed the forward kernel
stores h (in the input dtype) beside y from the same accumulator tile: one extra M*N write in
the forward and one M*N read in the backward, about 2 * M*N*2 bytes = 0.2 GB at GPT-2 124M's
MLP in bf16 (~40 us at H200 bandwidth), where recomputing h would cost another 2*M*N*K matmul
(77 GFLOP, ~110 us). The GELU derivative is then fused into the backward as one elementwise
pass that reads dy and h once and writes dh = dy * gelu'(h) plus fp32 per-program column sums
of dh (the bias gradient, so dh is not read a third time); the two gradient matmuls
dx = dh @ W and dW = dh.T @ x run on cuBLAS (torch.matmul), which is at its best on these plain
shapes. Both matmuls read dh in the input dtype, as an unfused autograd graph would.

FLOPs: forward 2*M*N*K, backward 4*M*N*K (dx and dW), with M = prod(x.shape[:-1]); the
epilogue and the elementwise pass are O(M*N). Bytes that must move at least: forward
(M*K + N*K + M*N [+ M*N for h]) * elt; backward elementwise 3*M*N*elt.

Registered with torch.library as tritongpt::linear_gelu (the forward) and
tritongpt::linear_gelu_backward (the elementwise pass); the two matmuls of the backward are plain
torch in the autograd formula, so torch.compile schedules them like any other.

Precision: products accumulate in fp32 for every input dtype. fp32 inputs on a GPU use TF32
tensor cores exactly when PyTorch's own matmuls would (torch.backends.cuda.matmul.allow_tf32,
set by torch.set_float32_matmul_precision("high")), and full fp32 ("ieee") otherwise and
always under the CPU interpreter, so the kernel agrees with F.linear under either setting.

(Near 500 lines, past our ~400: the tile configs, both GELUs with the erf the exact one needs,
the two kernels, their launchers and the op registration are one op, read top to bottom.)
"""

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tritongpt.kernels.common import (
    AUTOTUNE, NAMESPACE, autocast_inputs, check_device, check_one_dtype, check_tensors, device_guard, interpreted,
    tiles_fixed,
)

# ----------------------------------------------------------------------------- tile configs

# The one switch: autotuning is off under Triton's CPU interpreter (tests without a GPU) and
# wherever TRITONGPT_AUTOTUNE=0 (quick GPU test runs); the list then collapses to one config.
# kernels.common.fix_tiles (the trainer's deterministic=true) runs that config at run time.
INTERPRET = interpreted()


def _config(bm, bn, bk, group_m, warps, stages):
    return triton.Config(
        dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m), num_warps=warps, num_stages=stages
    )


# Curated for Hopper (H100/H200, 227 KB of shared memory per CTA) in bf16/fp16: every one uses
# wgmma and none spills registers on sm_90 (`python tools/aot.py` compiles each, and
# tests/test_aot.py holds them to it). The 128x256 tile runs on 16 warps: on 8 its 128 fp32
# accumulators a thread plus the GELU epilogue took all 255 registers and spilled (256x128 did
# too, and on 16 warps, capped at 128 registers a thread there, it still spilled with Triton
# 3.6; with Triton 3.6 the exact GELU's 128x256 tile spills 24 bytes a thread when it stores no
# pre-activation). The large tiles feed wgmma; the small ones serve few rows (generation) and
# fp32 inputs.
HOPPER_CONFIGS = [
    _config(128, 256, 64, 8, 16, 3),
    _config(128, 128, 64, 8, 8, 3),
    _config(128, 128, 64, 8, 8, 4),
    _config(128, 128, 32, 8, 8, 4),
    _config(128, 64, 64, 8, 4, 4),
    _config(64, 128, 64, 8, 4, 4),
    _config(64, 64, 32, 8, 4, 4),
]
# Without autotuning: under the interpreter a small tile that still spans several row, column
# and K blocks and several program groups at the tests' shapes; on a GPU a tile whose pipeline
# fits in shared memory for every dtype, fp32 included.
SINGLE_CONFIG = _config(32, 64, 32, 2, 4, 1) if INTERPRET else _config(128, 128, 32, 8, 8, 3)
CONFIGS = HOPPER_CONFIGS if AUTOTUNE else [SINGLE_CONFIG]
SHARED_MEMORY_BYTES = 227 * 1024  # what one CTA may use on sm_90


def pipeline_bytes(config, itemsize):
    """Shared memory of a config's operand pipeline: num_stages tiles of x and of W.T."""
    k = config.kwargs
    return config.num_stages * (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * itemsize


def configs_that_fit(configs, named_args, **kwargs):
    """The autotuner's early pruning: only the configs whose pipeline fits in shared memory for
    the inputs' element size (all of them in 16-bit; the smaller ones in fp32), so the tuner
    never compiles a config that cannot be launched."""
    itemsize = named_args["x_ptr"].dtype.itemsize
    return [c for c in configs if pipeline_bytes(c, itemsize) <= SHARED_MEMORY_BYTES]


def rows_bucket(M):
    """The autotune key's row count: M rounded up to a power of two (at most 2^16), so that new
    batch sizes and prompt lengths reuse a tuned config instead of tuning again."""
    return min(triton.next_power_of_2(max(M, 1)), 2**16)


# The elementwise backward pass: fixed tiles, memory-bound.
BWD_BLOCK_M, BWD_BLOCK_N, BWD_WARPS = 64, 128, 8

# Globals that jit code reads must be tl.constexpr (the interpreter does not check this; the compiler does).
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
GELU_CUBIC = tl.constexpr(0.044715)
APPROXIMATIONS = ("tanh", "none")  # F.gelu's names: the tanh GELU, the exact (erf) GELU
ACTIVATIONS = ("gelu_tanh", "gelu_exact", "relu2")  # the kernels' (and GPTConfig's) names

# The erf, in two pieces joined at |z| = ERF_SPLIT (coefficients fitted for this file by a
# weighted least-squares fit iterated towards minimax (Lawson's method) in float64 against
# mpmath's erf and erfc; max abs error of each piece ~3e-9 before fp32 rounding, ~1.2e-7 (2 ulp)
# against torch.erf after it):
#   |z| <  0.75: erf(z) = z * P(z^2), P of degree 5 (its leading terms are the Taylor series')
#   |z| >= 0.75: erfc(|z|) = t * Q(t) * exp(-z^2), t = 1 / (1 + |z| / 2), Q of degree 4: the form
#                of Abramowitz & Stegun, Handbook of Mathematical Functions (1964), 7.1.26, with
#                a higher degree. erfc is small there, so its relative error stays small in the
#                tails, where 1 - erf would cancel.
ERF_SPLIT = tl.constexpr(0.75)
ERF_P0, ERF_P1, ERF_P2 = tl.constexpr(1.128379158), tl.constexpr(-0.3761259153), tl.constexpr(0.1128310933)
ERF_P3, ERF_P4, ERF_P5 = tl.constexpr(-0.02682387927), tl.constexpr(0.005095397934), tl.constexpr(-0.0006627816146)
ERF_Q0, ERF_Q1, ERF_Q2 = tl.constexpr(0.274752778), tl.constexpr(0.3472813038), tl.constexpr(0.01667807376)
ERF_Q3, ERF_Q4 = tl.constexpr(0.5704571021), tl.constexpr(-0.2092588125)
RSQRT_2 = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
RSQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _gelu_sigmoid(h):
    """sigmoid(2u), u = sqrt(2/pi) * (h + 0.044715 h^3), so that gelu_tanh(h) = h * sigmoid(2u).

    (0.5 * (1 + tanh(u)) == sigmoid(2u): no libdevice tanh, which the interpreter lacks.) 2u is
    clamped to +-80, where sigmoid is already 1 or below 1e-34 in fp32, so exp(-2u) cannot overflow."""
    two_u = 2.0 * SQRT_2_OVER_PI * (h + GELU_CUBIC * h * h * h)
    return tl.sigmoid(tl.minimum(tl.maximum(two_u, -80.0), 80.0))


@triton.jit
def _erf_parts(z):
    """(erf(z) by the polynomial, valid where |z| < ERF_SPLIT; erfc(|z|) by the exponential form,
    valid where |z| >= ERF_SPLIT; exp(-z^2)). Both pieces are computed everywhere (a select, no
    branch); exp(-z^2) underflows to 0 for |z| > ~9.4, where erfc(|z|) < 1e-39 is 0 in fp32 too."""
    a = tl.abs(z)
    z2 = z * z
    e = tl.exp(-z2)
    poly = z * (ERF_P0 + z2 * (ERF_P1 + z2 * (ERF_P2 + z2 * (ERF_P3 + z2 * (ERF_P4 + z2 * ERF_P5)))))
    t = 1.0 / (1.0 + 0.5 * a)
    erfc = t * (ERF_Q0 + t * (ERF_Q1 + t * (ERF_Q2 + t * (ERF_Q3 + t * ERF_Q4)))) * e
    return poly, erfc, e


@triton.jit
def _erf(z):
    """erf(z) in fp32, max abs error ~1e-7 (the pieces of _erf_parts, joined)."""
    poly, erfc, _ = _erf_parts(z)
    return tl.where(tl.abs(z) < ERF_SPLIT, poly, tl.where(z < 0, erfc - 1.0, 1.0 - erfc))


@triton.jit
def _normal_cdf(h):
    """(Phi(h) = (1 + erf(h / sqrt 2)) / 2, exp(-h^2 / 2)), so gelu_exact(h) = h * Phi(h) and its
    derivative is Phi(h) + h * exp(-h^2 / 2) / sqrt(2 pi). Below -ERF_SPLIT * sqrt 2, Phi is
    erfc / 2 itself, accurate relative to its (small) size."""
    z = h * RSQRT_2
    poly, erfc, e = _erf_parts(z)
    return tl.where(tl.abs(z) < ERF_SPLIT, 0.5 + 0.5 * poly, tl.where(z < 0, 0.5 * erfc, 1.0 - 0.5 * erfc)), e


@triton.jit
def _act(h, ACTIVATION: tl.constexpr):
    """act(h) for one of ACTIVATIONS: the tanh GELU, the exact (erf) GELU, or relu(h)^2."""
    if ACTIVATION == "relu2":
        r = tl.maximum(h, 0.0)
        y = r * r
    elif ACTIVATION == "gelu_exact":
        cdf, _ = _normal_cdf(h)
        y = h * cdf
    else:
        y = h * _gelu_sigmoid(h)
    return y


@triton.jit
def _act_grad(h, ACTIVATION: tl.constexpr):
    """act'(h) for the activation that _act computes (2 relu(h) for relu2)."""
    if ACTIVATION == "relu2":
        grad = 2.0 * tl.maximum(h, 0.0)
    elif ACTIVATION == "gelu_exact":
        cdf, e = _normal_cdf(h)
        grad = cdf + h * e * RSQRT_2PI
    else:
        # d/dh [h * s], s = sigmoid(2u): s + h * 2 s (1 - s) * du/dh, du/dh = sqrt(2/pi) (1 + 3 * 0.044715 h^2)
        s = _gelu_sigmoid(h)
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * h * h)
        grad = s + 2.0 * h * s * (1.0 - s) * du
    return grad


@triton.autotune(
    configs=CONFIGS, key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": configs_that_fit}
)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _linear_gelu_fwd_kernel(
    x_ptr,  # (M, K) input rows, any strides
    w_ptr,  # (N, K) weight in nn.Linear layout, any strides
    b_ptr,  # (N,) bias; unused when HAS_BIAS is False
    y_ptr,  # (M, N) out: gelu(h), contiguous
    h_ptr,  # (M, N) out: pre-activation h = x @ W.T + b, contiguous; unused unless STORE_H
    M, N, K,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    M_BUCKET,  # rows_bucket(M): only the autotune key reads it
    HAS_BIAS: tl.constexpr,
    STORE_H: tl.constexpr,
    ACTIVATION: tl.constexpr,  # one of ACTIVATIONS
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
):
    # Grouped ordering: consecutive programs walk down GROUP_M row blocks before moving right
    # one column block, so a wave of programs reuses the same tiles of x and W from L2.
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(blocks_m - first_m, GROUP_M)
    pid_m = (first_m + (pid % per_group) % group_rows).to(tl.int64)
    pid_n = ((pid % per_group) // group_rows).to(tl.int64)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64
    ks = tl.arange(0, BLOCK_K)
    # Loads wrap out-of-range rows/columns back into the matrix (results discarded at the
    # store), so only K needs a mask, and none when K divides into BLOCK_K.
    x_ptrs = x_ptr + (rows % M)[:, None] * stride_xm + ks[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + (cols % N)[None, :] * stride_wn + ks[:, None] * stride_wk  # (BLOCK_K, BLOCK_N): W.T tile

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=ks[None, :] < k_left, other=0.0)
            b = tl.load(w_ptrs, mask=ks[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue on the fp32 tile: bias, activation, store y (and h for the backward).
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    # The tile's corner in int64 (a scalar), offsets within the tile in int32: BLOCK_M * N < 2^31,
    # and 32-bit offsets save registers in the epilogue, where the big tiles are tight.
    corner = pid_m * BLOCK_M * N + pid_n * BLOCK_N
    tile_rows, tile_cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N)
    offs = tile_rows[:, None] * N + tile_cols[None, :]  # (BLOCK_M, BLOCK_N) int32
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    y_ptr += corner
    h_ptr += corner
    tl.store(y_ptr + offs, _act(acc, ACTIVATION).to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_H:
        tl.store(h_ptr + offs, acc.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_gelu_bwd_kernel(
    dy_ptr,  # (M, N) gradient of y, contiguous
    h_ptr,  # (M, N) saved pre-activation, contiguous
    dh_ptr,  # (M, N) out: dh = dy * act'(h), contiguous, in h's dtype
    db_ptr,  # (cdiv(M, BLOCK_M), N) fp32 out: this program's column sums of dh; unused unless HAS_BIAS
    M, N,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # one of ACTIVATIONS
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs = rows[:, None] * N + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dh = dy * _act_grad(h, ACTIVATION)
    tl.store(dh_ptr + offs, dh.to(dh_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        # Sum what the matmuls will read (dh in the input dtype), as autograd's db would.
        part = tl.sum(dh.to(dh_ptr.dtype.element_ty).to(tl.float32), axis=0)  # (BLOCK_N,)
        tl.store(db_ptr + pid_m * N + cols, part, mask=cols < N)


# ----------------------------------------------------------------------------- host launchers


def _check(x, weight, bias):
    """A clear ValueError for inputs the kernels cannot take: shapes first (a shape error is
    reported even for tensors that could not run), then dtypes and devices."""
    check_tensors("linear_gelu", x=x, weight=weight, bias=bias)
    if x.dim() < 1 or weight.dim() != 2:
        raise ValueError(
            f"linear_gelu: expected x (..., K) and weight (N, K) as in nn.Linear, "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear_gelu: x's last dim ({x.shape[-1]}) must equal weight's second dim "
            f"(weight is (N, K) = {tuple(weight.shape)}, nn.Linear layout)"
        )
    if weight.shape[0] >= 2**31 // 256:
        raise ValueError(
            f"linear_gelu: N = {weight.shape[0]} output features is too many (tile offsets are int32); "
            "split the weight into parts of fewer than 2^23 rows"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"linear_gelu: expected bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_one_dtype("linear_gelu", x=x, weight=weight, bias=bias)
    check_device("linear_gelu", x=x, weight=weight, bias=bias)
    if INTERPRET and x.dtype == torch.bfloat16:
        # The interpreter's dot multiplies bf16 bit patterns as integers: refuse, never a wrong answer.
        raise ValueError(
            "linear_gelu: bfloat16 needs a GPU; Triton's CPU interpreter has no bf16 matmul "
            "(use float32 or float16, e.g. torch.autocast(dtype=torch.float16), on the CPU)"
        )


def _check_approximate(approximate):
    if approximate not in APPROXIMATIONS:
        raise ValueError(
            f"linear_gelu: approximate must be 'tanh' (the tanh GELU) or 'none' (the exact erf GELU), "
            f"as in F.gelu; got {approximate!r}"
        )


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear_gelu: activation must be one of {ACTIVATIONS}, got {activation!r}")


def _input_precision(dtype):
    """tl.dot's input_precision; it only changes fp32 operands (16-bit ones take tensor cores as they are)."""
    if dtype == torch.float32 and (INTERPRET or not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


def _fixed_config():
    """SINGLE_CONFIG as launch arguments: its tiles, warps and stages."""
    c = SINGLE_CONFIG
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def linear_gelu_fwd(x, weight, bias=None, save_h=False, activation="gelu_tanh"):
    """y = act(x @ weight.T + bias), act one of ACTIVATIONS: x (..., K) -> y (..., N); also h (M, N)
    when save_h."""
    _check(x, weight, bias)
    _check_activation(activation)
    K, N = x.shape[-1], weight.shape[0]
    M = math.prod(x.shape[:-1])
    x2 = x.reshape(M, K)  # (M, K); a view when it can be (M spelled out: -1 is ambiguous when K = 0)
    # The kernel takes any strides, but a unit stride along K lets its loads vectorize and
    # pipeline; the copy costs one pass over x (or W), small beside the matmul.
    x2 = x2 if x2.stride(1) == 1 else x2.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    h = torch.empty_like(y) if save_h else None
    if M > 0 and N > 0:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        # with the tiles fixed (kernels.common.fix_tiles), the kernel under the autotuner, at SINGLE_CONFIG
        kernel, fixed = (_linear_gelu_fwd_kernel.fn, _fixed_config()) if tiles_fixed() else (_linear_gelu_fwd_kernel, {})
        with device_guard(x):
            kernel[grid](
                x2, weight, bias if bias is not None else y, y, h if save_h else y,
                M, N, K,
                x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), rows_bucket(M),
                HAS_BIAS=bias is not None, STORE_H=save_h, ACTIVATION=activation,
                INPUT_PRECISION=_input_precision(x.dtype), **fixed,
            )  # fmt: skip
    return y.view(*x.shape[:-1], N), h


def linear_gelu_bwd(dy, h, has_bias=True, activation="gelu_tanh"):
    """The elementwise half of the backward: dy (..., N) and the forward's h (M, N) -> dh =
    dy * act'(h) (M, N) in h's dtype and dbias (N,) (None without a bias). The matmuls that
    turn dh into dx and dW are the autograd formula's (below)."""
    _check_activation(activation)
    M, N = h.shape
    if triton.cdiv(N, BWD_BLOCK_N) > 65535:  # CUDA's limit on grid dimension y
        raise ValueError(f"linear_gelu: {N} output features is past {65535 * BWD_BLOCK_N}, the most the backward's grid takes")
    if dy.numel() != M * N or dy.shape[-1] != N:
        raise ValueError(f"linear_gelu_bwd: expected dy (..., {N}) with {M} rows to match h {(M, N)}, got {tuple(dy.shape)}")
    dy2 = dy.reshape(M, N).to(h.dtype).contiguous()
    dh = torch.empty((M, N), device=h.device, dtype=h.dtype)
    blocks_m = triton.cdiv(M, BWD_BLOCK_M)
    db_part = torch.empty((blocks_m, N), device=h.device, dtype=torch.float32) if has_bias else dh
    if M > 0 and N > 0:
        grid = (blocks_m, triton.cdiv(N, BWD_BLOCK_N))
        with device_guard(h):
            _linear_gelu_bwd_kernel[grid](
                dy2, h.contiguous(), dh, db_part, M, N,
                HAS_BIAS=has_bias, ACTIVATION=activation,
                BLOCK_M=BWD_BLOCK_M, BLOCK_N=BWD_BLOCK_N, num_warps=BWD_WARPS,
            )  # fmt: skip
    db = None
    if has_bias:
        db = db_part.sum(0).to(h.dtype) if M > 0 else torch.zeros(N, device=h.device, dtype=h.dtype)
    return dh, db


# ----------------------------------------------------------------------------- torch.library ops
# tritongpt::linear_gelu returns (y, h), h an empty (0,) tensor when it is not saved; both ops
# take the activation by its name in ACTIVATIONS (the two GELUs or relu2: the op keeps GPT-2's name).
# tritongpt::linear_gelu_backward is the elementwise pass, (dh, db), db empty without a bias.
# The two gradient matmuls stay plain torch ops in the autograd formula, so torch.compile sees
# (and schedules) them like any other matmul.

Tensor = torch.Tensor


@torch.library.custom_op(f"{NAMESPACE}::linear_gelu", mutates_args=())
def _linear_gelu_op(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], save_h: bool, activation: str
) -> tuple[Tensor, Tensor]:
    y, h = linear_gelu_fwd(x, weight, bias, save_h=save_h, activation=activation)
    return y, (h if save_h else torch.empty(0, dtype=x.dtype, device=x.device))


@_linear_gelu_op.register_fake
def _(x, weight, bias, save_h, activation):
    _check(x, weight, bias)
    _check_activation(activation)
    N = weight.shape[0]
    M = math.prod(x.shape[:-1])
    y = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    return y, torch.empty((M, N) if save_h else (0,), dtype=x.dtype, device=x.device)


@torch.library.custom_op(f"{NAMESPACE}::linear_gelu_backward", mutates_args=())
def _linear_gelu_backward_op(dy: Tensor, h: Tensor, has_bias: bool, activation: str) -> tuple[Tensor, Tensor]:
    dh, db = linear_gelu_bwd(dy, h, has_bias, activation)
    return dh, (db if has_bias else torch.empty(0, dtype=h.dtype, device=h.device))


@_linear_gelu_backward_op.register_fake
def _(dy, h, has_bias, activation):
    _check_activation(activation)
    return torch.empty_like(h, memory_format=torch.contiguous_format), h.new_empty((h.shape[1],) if has_bias else (0,))


def _linear_gelu_setup(ctx, inputs, output):
    x, weight, bias, _, activation = inputs
    _, h = output
    ctx.save_for_backward(x, weight, h)
    ctx.has_bias = bias is not None
    ctx.activation = activation
    ctx.mark_non_differentiable(h)
    ctx.set_materialize_grads(False)  # no zero-filled (M, N) gradient for h


def _linear_gelu_backward(ctx, dy, _dh):
    """dh = dy * act'(h) and db in one Triton pass; dx = dh @ W and dW = dh^T x on cuBLAS.
    (Once differentiable: the Triton pass has no graph, so no double backward.)"""
    x, weight, h = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    if dy is None:
        return None, None, None, None, None
    dh, db = torch.ops.tritongpt.linear_gelu_backward(dy, h, ctx.has_bias and need_db, ctx.activation)
    dx = (dh @ weight).view(x.shape) if need_dx else None  # (M, N) @ (N, K)
    dw = dh.t() @ x.reshape(h.shape[0], x.shape[-1]) if need_dw else None  # (N, M) @ (M, K)
    return dx, dw, (db if ctx.has_bias and need_db else None), None, None


_linear_gelu_op.register_autograd(_linear_gelu_backward, setup_context=_linear_gelu_setup)


# ----------------------------------------------------------------------------- public functions


def linear_act(x, weight, bias=None, activation="gelu_tanh"):
    """act(x @ weight.T + bias) for x (..., K), weight (N, K), bias (N,) or None; activation one
    of ACTIVATIONS: "gelu_tanh" (GPT-2's), "gelu_exact" (the erf GELU), "relu2" (relu(h)^2).

    Under torch.autocast the inputs are cast to the autocast dtype, as F.linear would be; the
    gradients come back in each input's own dtype (the casts are part of the autograd graph)."""
    x, weight, bias = autocast_inputs(x, weight, bias)
    check_tensors("linear_gelu", x=x, weight=weight, bias=bias)
    _check_activation(activation)
    # h is saved (and written) only when a backward will need it
    save_h = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return torch.ops.tritongpt.linear_gelu(x, weight, bias, save_h, activation)[0]


def linear_gelu(x, weight, bias=None, approximate="tanh"):
    """gelu(x @ weight.T + bias), linear_act with a GELU named as F.gelu names it: approximate
    "tanh" (the tanh GELU, GPT-2's) or "none" (the exact erf GELU)."""
    _check_approximate(approximate)
    return linear_act(x, weight, bias, "gelu_tanh" if approximate == "tanh" else "gelu_exact")
