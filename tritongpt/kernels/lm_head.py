"""The LM head fused with its loss: linear_cross_entropy(x, weight, targets) equals
cross_entropy(x @ weight.T, targets) without ever holding the full (rows, V) logits.

linear_cross_entropy(x (M, C), weight (V, C), targets (M,)) runs in chunks of R rows, so that
only one (R, V) logits buffer exists. Per chunk, when a gradient is wanted (the training step):
    logits = x_c @ W.T                     cuBLAS, in the input dtype, into the buffer
    the row kernel of losses.py, in place: loss rows, then logits := (softmax - onehot) * 2^14
    grad_x_c = dlogits @ W;  grad_W += dlogits.T @ x_c      products summed and kept in fp32
so the gradients are done when the forward returns (the logits chunk is gone by the backward,
and recomputing it would cost a third more matmul FLOPs); they are then scaled by 1 / (kept rows
* 2^14) in fp32, and the backward only multiplies them by grad_output and rounds them to the
inputs' dtypes, on the device. Registered with torch.library as tritongpt::linear_cross_entropy
(loss, grad_x, grad_W, both gradients fp32); the scaling is plain torch in its autograd formula.

With vocab_size < V (a vocabulary padded for matmul speed), the matmuls still run over all V
rows of W, and the row kernel masks the padding columns: they take no probability, their
gradient is zero, and so are their rows of grad_W.

With softcap = C > 0 the loss is that of C * tanh(logits / C) (the logit soft-cap): the row
kernel caps each logit as it reads the chunk and multiplies its gradient by the cap's
derivative, so the matmuls are the same and no capped copy of the logits exists.

Precision. The gradient is written into the 16-bit logits buffer before grad_output (a gradient
scaler's loss scale) is known, so it must not carry the 1 / kept-rows factor there: at 16384
rows (softmax - onehot) / rows is around 1e-6 to 1e-9, below fp16's normal range, and most of
its bits would be lost before the scale could lift them (torch's own fp16 path scales first).
So the buffer holds (softmax - onehot) * 2^14, whatever the row count: at most 2^14 (< fp16's
largest), and normal in fp16 down to 2^-28 = 4e-9 (torch's path at 16384 rows under a scale of
2^16 holds 4 * (softmax - onehot): normal down to 2^-16). grad_x and grad_W
come out of the matmuls in fp32 (`torch.mm(..., out_dtype=torch.float32)`: fp32 sums of exact
products), grad_W is summed over the chunks in fp32, 1 / (kept * 2^14) is applied in fp32 and
each gradient is rounded to 16 bits once, after grad_output has scaled it. The price: an fp32
(V, C) accumulator (155 MB at GPT-2's 50304 x 768), each later chunk's product added to it a
slice of 8192 rows at a time (an fp32 (8192, C) product in flight), and the fp32 grad_x.

R = the largest power of two with R * V * itemsize <= LOGITS_BUDGET_BYTES (256 MiB), at least 1
and at most M: 2048 rows in bf16 at V = 50304, 1024 in fp32. Peak extra memory is R * V * s for
the logits chunk plus the gradients themselves (M * C + V * C elements). The rows kept are
counted on the device: no host sync.

FLOPs: 2 * M * V * C (forward only); 6 * M * V * C with the gradients, plus about 10 * M * V for
the softmax; bytes through the logits chunks: 3 * M * V * s (written by the matmul, read twice
and rewritten by the kernel, read by two matmuls: 5 * M * V * s with the gradients).
"""

from typing import Optional

import torch

from tritongpt.kernels.common import NAMESPACE, autocast_inputs, check_device, check_one_dtype, check_tensors, device_guard
from tritongpt.kernels.losses import (
    check_softcap, check_targets, check_vocab_size, cross_entropy_rows, raise_at_once, raise_on_bad_targets,
)

LOGITS_BUDGET_BYTES = 256 * 2**20  # one chunk of logits
GRAD_SCALE = 2.0**14  # the logits buffer holds (softmax - onehot) * GRAD_SCALE (see Precision above)
ACC_SLICE_ROWS = 8192  # rows of grad_W added at a time (an fp32 (8192, C) product: 25 MB at C = 768)


# ----------------------------------------------------------------------------- host launchers


def chunk_rows(M, V, itemsize):
    """Rows of logits per chunk: the largest power of two within LOGITS_BUDGET_BYTES, in [1, M]."""
    fit = max(1, LOGITS_BUDGET_BYTES // (V * itemsize))
    return max(1, min(M, 1 << (fit.bit_length() - 1)))


def _check(x, weight, targets, vocab_size, softcap=0.0):
    """A ValueError naming what the op cannot take (shapes, dtypes, devices: the fake runs it too)
    -> the flat targets (M,) and the number of classes."""
    check_tensors("linear_cross_entropy", x=x, weight=weight, targets=targets)
    check_softcap("linear_cross_entropy", softcap)
    check_device("linear_cross_entropy", x=x, weight=weight, targets=targets)
    check_one_dtype("linear_cross_entropy", x=x, weight=weight)
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: expected x (..., C) and weight (V, C) as in nn.Linear, "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    t = check_targets("linear_cross_entropy", targets, x.shape[:-1], "x's leading shape")
    return t, check_vocab_size("linear_cross_entropy", vocab_size, weight.shape[0])


def _mm_fp32(a, b, out=None):
    """a @ b summed and returned in fp32 (16-bit inputs: exact products, never rounded to 16
    bits). cuBLAS does it on CUDA; on the CPU (the interpreter's tests) the inputs are upcast."""
    if a.dtype == torch.float32:
        return torch.mm(a, b, out=out)
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    return torch.mm(a.float(), b.float(), out=out)


def _add_mm_fp32(acc, a, b):
    """acc (fp32) += a @ b as _mm_fp32 computes it, ACC_SLICE_ROWS rows of a at a time, so the
    fp32 product in flight is (ACC_SLICE_ROWS, C), not another (V, C)."""
    for r0 in range(0, a.shape[0], ACC_SLICE_ROWS):
        acc[r0 : r0 + ACC_SLICE_ROWS].add_(_mm_fp32(a[r0 : r0 + ACC_SLICE_ROWS], b))
    return acc


def linear_cross_entropy_fwd(x, weight, targets, ignore_index, grad_x, grad_w, vocab_size=None, softcap=0.0):
    """x (..., C), weight (V, C), targets (...) -> loss (fp32 scalar), dx (x's shape) or None, dW
    (V, C) or None: the gradients of the loss itself (grad_output = 1), computed chunk by chunk,
    in fp32. Only weight's first vocab_size rows (default all) are classes; the others get zero dW.
    softcap > 0: the loss of the capped logits."""
    t, vocab = _check(x, weight, targets, vocab_size, softcap)
    V, C = weight.shape
    x2 = x.reshape(-1, C).contiguous()
    w = weight.contiguous()
    M = x2.shape[0]
    write_grad = grad_x or grad_w
    kept = (t != ignore_index).sum().clamp(min=1).float()  # on the device: no sync
    grad_scale = torch.full((1,), GRAD_SCALE, dtype=torch.float32, device=x.device)
    loss_rows = torch.empty(M, dtype=torch.float32, device=x.device)
    lse = torch.empty(M, dtype=torch.float32, device=x.device)
    dx = torch.empty((M, C), dtype=torch.float32, device=x.device) if grad_x else None
    dw = None
    R = chunk_rows(M, V, x.element_size())
    buf = torch.empty((R, V), dtype=x.dtype, device=x.device)  # the one logits chunk
    # autocast off: the op's inputs are already cast, and the fp32 products must stay fp32
    with device_guard(x), torch.autocast(x.device.type, enabled=False):
        for start in range(0, M, R):
            end = min(start + R, M)
            x_c, logits = x2[start:end], buf[: end - start]  # (r, C), (r, V)
            torch.mm(x_c, w.t(), out=logits)
            cross_entropy_rows(
                logits, t[start:end], ignore_index, loss_rows[start:end], lse[start:end], grad_scale, write_grad, vocab,
                softcap,
            )
            if grad_x:
                _mm_fp32(logits, w, out=dx[start:end])  # (r, V) @ (V, C)
            if grad_w:  # (V, r) @ (r, C), summed over the chunks in fp32
                dw = _mm_fp32(logits.t(), x_c) if dw is None else _add_mm_fp32(dw, logits.t(), x_c)
    if grad_w and dw is None:  # no rows
        dw = torch.zeros((V, C), dtype=torch.float32, device=x.device)
    unscale = 1.0 / (kept * GRAD_SCALE)
    return (
        loss_rows.sum() / kept,
        dx.mul_(unscale).view(x.shape) if grad_x else None,
        dw.mul_(unscale) if grad_w else None,
    )


# ----------------------------------------------------------------------------- torch.library op
# tritongpt::linear_cross_entropy returns (loss, dx, dW), the gradients in fp32, each an empty
# (0,) tensor when not asked for. Its backward is only a scaling by grad_output and the one
# rounding to the inputs' dtypes: plain torch in the autograd formula, which torch.compile fuses
# with the casts around it.

Tensor = torch.Tensor


@torch.library.custom_op(f"{NAMESPACE}::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(
    x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, vocab_size: Optional[int], grad_x: bool, grad_w: bool,
    softcap: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    loss, dx, dw = linear_cross_entropy_fwd(x, weight, targets, ignore_index, grad_x, grad_w, vocab_size, softcap)
    nothing = lambda: torch.empty(0, dtype=torch.float32, device=x.device)  # noqa: E731 - outputs never alias
    return loss, (dx if grad_x else nothing()), (dw if grad_w else nothing())


@_linear_cross_entropy_op.register_fake
def _(x, weight, targets, ignore_index, vocab_size, grad_x, grad_w, softcap=0.0):
    _check(x, weight, targets, vocab_size, softcap)
    return (
        x.new_empty((), dtype=torch.float32),
        torch.empty(x.shape if grad_x else (0,), dtype=torch.float32, device=x.device),
        torch.empty(weight.shape if grad_w else (0,), dtype=torch.float32, device=x.device),
    )


def _linear_cross_entropy_setup(ctx, inputs, output):
    x, weight, _, _, _, grad_x, grad_w, _ = inputs
    _, dx, dw = output
    ctx.save_for_backward(dx, dw)
    ctx.grads = (grad_x, grad_w)
    ctx.dtypes = (x.dtype, weight.dtype)
    ctx.mark_non_differentiable(dx, dw)
    ctx.set_materialize_grads(False)


def _linear_cross_entropy_backward(ctx, grad_out, _ddx, _ddw):
    dx, dw = ctx.saved_tensors
    grad_x, grad_w = ctx.grads
    x_dtype, w_dtype = ctx.dtypes
    if grad_out is None:
        return None, None, None, None, None, None, None, None
    # scaled in fp32 (grad_output: a gradient scaler's loss scale, say), then rounded once
    dx = (dx * grad_out).to(x_dtype) if grad_x else None
    dw = (dw * grad_out).to(w_dtype) if grad_w else None
    return dx, dw, None, None, None, None, None, None


_linear_cross_entropy_op.register_autograd(_linear_cross_entropy_backward, setup_context=_linear_cross_entropy_setup)


# ----------------------------------------------------------------------------- public


def linear_cross_entropy(x, weight, targets, ignore_index=-1, vocab_size=None, softcap=0.0):
    """cross_entropy(x @ weight.T, targets, vocab_size=vocab_size, softcap=softcap) without the
    (rows, V) logits: x (..., C), weight (V, C); with vocab_size < V the rows of weight from
    vocab_size on (a padded vocabulary's) take no probability and get a zero gradient; softcap
    C > 0: the loss of C * tanh(logits / C).

    Under torch.autocast x and weight are cast to the autocast dtype, as F.linear's would be, and
    their gradients come back in their own dtypes through the casts. A target outside
    [0, vocab_size) gives a NaN loss and NaN gradients, and a ValueError as in cross_entropy."""
    x, weight = autocast_inputs(x, weight)
    check_tensors("linear_cross_entropy", x=x, weight=weight, targets=targets)
    want = torch.is_grad_enabled()
    vocab_size = None if vocab_size is None else int(vocab_size)
    loss, _, _ = torch.ops.tritongpt.linear_cross_entropy(
        x, weight, targets, int(ignore_index), vocab_size, want and x.requires_grad, want and weight.requires_grad,
        float(softcap),
    )
    if raise_at_once(x.device):  # out-of-range targets: as in cross_entropy (losses.py)
        raise_on_bad_targets(x.device)
    return loss
