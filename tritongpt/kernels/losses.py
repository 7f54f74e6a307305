"""Cross-entropy with an online softmax; its row kernel also serves the fused LM head (lm_head.py).

cross_entropy(logits (M, V), targets (M,)): mean over the rows whose target != ignore_index.
    forward   one pass over each row: running max m and sum s of exp(x - m) in fp32, so
              lse = m + log(s) and loss = lse - x[target]; lse is saved (4 bytes a row);
    backward  one more pass: dlogits = (softmax - onehot) * grad_output / kept, with softmax
              = exp(x - lse) from the saved lse and grad_output read on the device.
    Why the gradient waits for the backward here (and not, as Liger does, in the forward): the
    logits are the caller's tensor, so a forward-time gradient would need a second (M, V) buffer
    alive from forward to backward, plus one more pass to scale it by grad_output; waiting costs
    the same bytes, and an eval forward reads the logits once only.
    Bytes (s: the logits' element size):
        forward  M * V * s + 16 * M          logits in; targets in, loss and lse out
        backward 2 * M * V * s + 12 * M      logits in, dlogits out; targets and lse in
    i.e. about 3 * M * V * s for forward + backward.
    With vocab_size < V (a vocabulary padded for matmul speed, 65 -> 128), the columns from
    vocab_size on are not classes: they take no probability (the softmax stops at vocab_size,
    as if they were cut off), get a zero gradient, and a target there is out of range. It costs
    nothing: the forward reads only the first vocab_size columns, the gradient pass writes all V.
With softcap = C > 0 (Gemma 2's and nanochat's logit soft-cap) the loss is that of the capped
logits z' = C * tanh(z / C), computed as each element is loaded (nothing capped is written),
and the gradient of the raw logits is (softmax(z') - onehot) * (1 - tanh(z / C)^2); tanh comes
from two sigmoids (s+ = sigmoid(2z/C), s- = sigmoid(-2z/C): tanh = s+ - s-, 1 - tanh^2 =
4 s+ s-), no libdevice and no cancellation where tanh nears 1.
A target outside [0, vocab_size) that is not ignore_index has no loss: its row's loss and
gradient are NaN (never a finite, wrong number), and the forward records it in a small
per-device status tensor (atomics on 4 int64, only for such rows) without waiting for the
device. raise_on_bad_targets(device) reads the record, a host sync, and raises a ValueError
that names the target and the vocabulary size: the trainer calls it at its log step, where it waits for the device anyway;
the public functions call it at once on CPU tensors, where it waits for nothing.
Registered with torch.library as tritongpt::cross_entropy and tritongpt::cross_entropy_backward.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from tritongpt.kernels.common import NAMESPACE, check_device, check_float, check_tensors, device_guard

MAX_BLOCK_V = 4096  # columns of a row handled per loop step
INDEX_DTYPES = (torch.int64, torch.int32)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _capped(x, softcap):
    """(softcap * tanh(x / softcap), its derivative 1 - tanh^2) of fp32 x, from two sigmoids. 2x / C
    is clamped to +-80, where tanh is +-1 in fp32 already, so that exp cannot overflow."""
    u = tl.minimum(tl.maximum(2.0 * x / softcap, -80.0), 80.0)
    plus, minus = tl.sigmoid(u), tl.sigmoid(-u)
    return softcap * (plus - minus), 4.0 * plus * minus


@triton.jit
def _load_logits(row_ptr, cols, vocab, softcap, SOFTCAP: tl.constexpr):
    """Logits of a row at cols in fp32, -inf at and past vocab, capped under SOFTCAP; and the
    derivative of the cap (1 without SOFTCAP)."""
    x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)  # padding: p = 0
    slope = 1.0
    if SOFTCAP:
        capped, slope = _capped(x, softcap)
        x = tl.where(cols < vocab, capped, float("-inf"))
    return x, slope


@triton.jit
def _softmax_grad_row(
    src_ptr,  # (V,) one row of logits
    dst_ptr,  # (V,) its gradient, out; may be src_ptr (each element is read before it is written)
    target,  # int: the row's class id
    lse,  # fp32: the row's logsumexp (of the capped logits under SOFTCAP)
    scale,  # fp32: factor of the whole row (0 for an ignored row)
    V,  # columns of the row
    vocab,  # columns that are classes (<= V); the rest get a zero gradient
    softcap,  # fp32 C of the logit soft-cap (read only when SOFTCAP)
    BLOCK_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x, slope = _load_logits(src_ptr, cols, vocab, softcap, SOFTCAP)
        g = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
        if SOFTCAP:
            g *= slope
        tl.store(dst_ptr + cols, (g * scale).to(dst_ptr.dtype.element_ty), mask=cols < V)


@triton.jit
def _record_bad_target(
    status_ptr,  # (4,) int64: rows with a bad target, vocab, largest bad id >= vocab, smallest bad id < 0
    target,  # int64: the row's class id
    bad,  # bool: the target is neither a class id nor ignore_index
    vocab,
):
    tl.atomic_add(status_ptr, 1, mask=bad)
    tl.store(status_ptr + 1, vocab, mask=bad)  # the same from every row of a launch
    tl.atomic_max(status_ptr + 2, target, mask=bad & (target >= vocab))
    tl.atomic_min(status_ptr + 3, target, mask=bad & (target < 0))


@triton.jit
def _cross_entropy_fwd_kernel(
    logits_ptr,  # (M, V) row stride stride_l; overwritten by the gradient when WRITE_GRAD
    targets_ptr,  # (M,) int class ids, or ignore_index
    loss_ptr,  # (M,) fp32 per-row loss, 0 on ignored rows, NaN on out-of-range targets, out
    lse_ptr,  # (M,) fp32 per-row logsumexp, out
    scale_ptr,  # (1,) fp32 gradient factor (1 / kept rows), read when WRITE_GRAD
    status_ptr,  # (4,) int64 record of out-of-range targets (see _record_bad_target), updated
    stride_l,
    V,  # columns of a row
    vocab,  # columns that are classes (<= V): only these are read and take probability
    ignore_index,
    softcap,  # fp32 C: the loss of C * tanh(logits / C) (read only when SOFTCAP)
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_l  # int64 offset: M * V passes 2^31 at GPT-2 sizes
    target = tl.load(targets_ptr + row).to(tl.int64)

    # online softmax: one read of the row, running max and sum in fp32
    m = float("-inf")
    s = 0.0
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x, _ = _load_logits(row_ptr, cols, vocab, softcap, SOFTCAP)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    kept = target != ignore_index
    in_range = (target >= 0) & (target < vocab)
    x_t = tl.load(row_ptr + target, mask=kept & in_range, other=0.0).to(tl.float32)
    if SOFTCAP:
        x_t, _ = _capped(x_t, softcap)
    loss = tl.where(kept, tl.where(in_range, lse - x_t, float("nan")), 0.0)
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)
    _record_bad_target(status_ptr, target, kept & ~in_range, vocab)
    if WRITE_GRAD:
        scale = tl.where(kept, tl.where(in_range, tl.load(scale_ptr), float("nan")), 0.0)
        _softmax_grad_row(row_ptr, row_ptr, target, lse, scale, V, vocab, softcap, BLOCK_V, SOFTCAP)


@triton.jit
def _cross_entropy_bwd_kernel(
    logits_ptr,  # (M, V) row stride stride_l
    dlogits_ptr,  # (M, V) contiguous, out
    targets_ptr,  # (M,) int
    lse_ptr,  # (M,) fp32 from the forward
    scale_ptr,  # (1,) fp32: grad_output / kept rows
    stride_l,
    V,  # columns of a row
    vocab,  # columns that are classes (<= V)
    ignore_index,
    softcap,  # fp32 C of the logit soft-cap (read only when SOFTCAP)
    BLOCK_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets_ptr + row).to(tl.int64)
    in_range = (target >= 0) & (target < vocab)
    scale = tl.where(target != ignore_index, tl.where(in_range, tl.load(scale_ptr), float("nan")), 0.0)
    lse = tl.load(lse_ptr + row)
    _softmax_grad_row(
        logits_ptr + row * stride_l, dlogits_ptr + row * V, target, lse, scale, V, vocab, softcap, BLOCK_V, SOFTCAP
    )


# ----------------------------------------------------------------------------- host launchers


def _block_v(V):
    BLOCK_V = min(triton.next_power_of_2(V), MAX_BLOCK_V)
    return BLOCK_V, (8 if BLOCK_V >= 2048 else 4)


# A per-device record of out-of-range targets, written by the forward kernel and read (and
# cleared) by raise_on_bad_targets. Made once per device, before any CUDA graph capture if the
# caller calls raise_on_bad_targets first (the trainer does, at set-up).
_STATUS = {}


def _device(device):
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def target_status(device):
    """The (4,) int64 record of out-of-range targets on `device` since it was last read: rows,
    vocabulary size, largest id at or past it, smallest id < 0."""
    device = _device(device)
    if device not in _STATUS:
        _STATUS[device] = torch.zeros(4, dtype=torch.int64, device=device)
    return _STATUS[device]


def raise_on_bad_targets(device):
    """Raise a ValueError if a cross-entropy on `device` met a target outside [0, vocab_size)
    (and not ignore_index) since the last call; the record is cleared either way. Reads the
    device: call it where the host waits anyway (a log step), not in every step."""
    status = target_status(device)
    rows, V, high, low = status.tolist()
    if rows == 0:
        return
    status.zero_()
    ids = [str(i) for i, seen in ((high, high >= V), (low, low < 0)) if seen]
    such_as = f"class id{'s' * (len(ids) > 1)} {' and '.join(ids)}"
    raise ValueError(
        f"cross_entropy: {rows} target(s) outside the vocabulary of {V} classes, such as {such_as} "
        f"(valid: 0 to {V - 1}, or ignore_index to skip a position); their loss and gradients are NaN: "
        "fix the targets, or give the model a vocabulary that holds them"
    )


def raise_at_once(device):
    """Whether the public functions read the record at once: on a CPU, where the kernels have
    finished when the op returns, so reading waits for nothing; not while torch.compile traces
    (a read there would break the graph), nor on a GPU, where it would stall every step."""
    return device.type == "cpu" and not torch.compiler.is_compiling()


def check_targets(op, targets, lead_shape, what):
    """targets (...) int class ids with the given leading shape -> a flat contiguous (M,) view."""
    if targets.dtype not in INDEX_DTYPES:
        raise ValueError(f"{op}: targets must be int64 or int32 class ids, got {targets.dtype}")
    if tuple(targets.shape) != tuple(lead_shape):
        raise ValueError(f"{op}: targets shape {tuple(targets.shape)} must equal {what} {tuple(lead_shape)}")
    return targets.reshape(-1).contiguous()


def check_vocab_size(op, vocab_size, V):
    """vocab_size (None: all V) -> the number of classes, an int in [1, V]."""
    if vocab_size is None:
        return V
    if not 1 <= vocab_size <= V:
        raise ValueError(f"{op}: vocab_size must be from 1 to the {V} columns of the logits, got {vocab_size}")
    return vocab_size


def cross_entropy_rows(logits2, t, ignore_index, loss_rows, lse, scale, write_grad, vocab_size=None, softcap=0.0):
    """The forward kernel over the rows of logits2 (R, V): loss_rows and lse (R,) out; when
    write_grad, logits2 is overwritten in place by its gradient times scale (1,). Only the first
    vocab_size columns (default all) are classes; softcap > 0 caps the logits as they are read.
    Out-of-range targets go to target_status."""
    R, V = logits2.shape
    if R == 0:
        return
    BLOCK_V, num_warps = _block_v(V)
    _cross_entropy_fwd_kernel[(R,)](
        logits2, t, loss_rows, lse, scale, target_status(logits2.device), logits2.stride(0), V,
        V if vocab_size is None else vocab_size, ignore_index, float(softcap),
        WRITE_GRAD=write_grad, BLOCK_V=BLOCK_V, SOFTCAP=softcap > 0, num_warps=num_warps,
    )


def check_softcap(op, softcap):
    """The logit soft-cap: 0 (none) or a positive number."""
    if not softcap >= 0:
        raise ValueError(f"{op}: softcap must be 0 (no cap) or a positive number C (C * tanh(logits / C)), got {softcap!r}")


def _check(logits, targets, vocab_size, softcap=0.0):
    """A ValueError naming what the kernels cannot take (shapes, dtypes, devices only: the fake
    implementation runs it too) -> the flat targets (M,) and the number of classes."""
    check_tensors("cross_entropy", logits=logits, targets=targets)
    check_softcap("cross_entropy", softcap)
    check_device("cross_entropy", logits=logits, targets=targets)
    check_float("cross_entropy", logits=logits)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"cross_entropy: logits must be (..., V) with V >= 1, got shape {tuple(logits.shape)}")
    t = check_targets("cross_entropy", targets, logits.shape[:-1], "logits' leading shape")
    return t, check_vocab_size("cross_entropy", vocab_size, logits.shape[-1])


def _rows(logits):
    """logits (..., V) as (M, V) with unit column stride (a copy only when it has to be)."""
    logits2 = logits.reshape(-1, logits.shape[-1])
    return logits2 if logits2.stride(-1) == 1 else logits2.contiguous()


def cross_entropy_fwd(logits, targets, ignore_index, vocab_size=None, softcap=0.0):
    """logits (..., V), targets (...) -> loss (fp32 scalar), lse (M,) fp32 for the backward."""
    t, vocab = _check(logits, targets, vocab_size, softcap)
    logits2 = _rows(logits)
    M = logits2.shape[0]
    loss_rows = torch.empty(M, dtype=torch.float32, device=logits.device)
    lse = torch.empty(M, dtype=torch.float32, device=logits.device)
    with device_guard(logits):
        cross_entropy_rows(logits2, t, ignore_index, loss_rows, lse, lse, False, vocab, softcap)
    kept = (t != ignore_index).sum().clamp(min=1).float()  # on the device: no sync
    return loss_rows.sum() / kept, lse


def cross_entropy_bwd(grad_out, logits, targets, lse, ignore_index, vocab_size=None, softcap=0.0):
    """-> dlogits in the logits' dtype, contiguous of their shape (zero past vocab_size)."""
    logits2, t = _rows(logits), targets.reshape(-1).contiguous()
    M, V = logits2.shape
    vocab = V if vocab_size is None else vocab_size
    dlogits = torch.empty((M, V), dtype=logits2.dtype, device=logits2.device)
    kept = (t != ignore_index).sum().clamp(min=1).float()
    scale = (grad_out.float() / kept).reshape(1)
    if M > 0:
        BLOCK_V, num_warps = _block_v(V)
        with device_guard(logits):
            _cross_entropy_bwd_kernel[(M,)](
                logits2, dlogits, t, lse, scale, logits2.stride(0), V, vocab, ignore_index, float(softcap),
                BLOCK_V=BLOCK_V, SOFTCAP=softcap > 0, num_warps=num_warps,
            )
    return dlogits.view(logits.shape)


# ----------------------------------------------------------------------------- torch.library ops

Tensor = torch.Tensor


@torch.library.custom_op(f"{NAMESPACE}::cross_entropy", mutates_args=())
def _cross_entropy_op(
    logits: Tensor, targets: Tensor, ignore_index: int, vocab_size: Optional[int], softcap: float = 0.0
) -> tuple[Tensor, Tensor]:
    return cross_entropy_fwd(logits, targets, ignore_index, vocab_size, softcap)


@_cross_entropy_op.register_fake
def _(logits, targets, ignore_index, vocab_size, softcap=0.0):
    t, _ = _check(logits, targets, vocab_size, softcap)
    return logits.new_empty((), dtype=torch.float32), logits.new_empty(t.shape, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::cross_entropy_backward", mutates_args=())
def _cross_entropy_backward_op(
    grad_out: Tensor, logits: Tensor, targets: Tensor, lse: Tensor, ignore_index: int, vocab_size: Optional[int],
    softcap: float = 0.0,
) -> Tensor:
    return cross_entropy_bwd(grad_out, logits, targets, lse, ignore_index, vocab_size, softcap)


@_cross_entropy_backward_op.register_fake
def _(grad_out, logits, targets, lse, ignore_index, vocab_size, softcap=0.0):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _cross_entropy_setup(ctx, inputs, output):
    logits, targets, ignore_index, vocab_size, softcap = inputs
    _, lse = output
    ctx.save_for_backward(logits, targets, lse)
    ctx.ignore_index, ctx.vocab_size, ctx.softcap = ignore_index, vocab_size, softcap
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _cross_entropy_backward(ctx, grad_out, _dlse):
    logits, targets, lse = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None
    dlogits = torch.ops.tritongpt.cross_entropy_backward(
        grad_out, logits, targets, lse, ctx.ignore_index, ctx.vocab_size, ctx.softcap
    )
    return dlogits, None, None, None, None


_cross_entropy_op.register_autograd(_cross_entropy_backward, setup_context=_cross_entropy_setup)


# ----------------------------------------------------------------------------- public


def cross_entropy(logits, targets, ignore_index=-1, vocab_size=None, softcap=0.0):
    """Mean cross-entropy of logits (..., V) against targets (...) over the rows whose target is
    not ignore_index (0, with zero gradients, when all are). The loss is fp32.

    vocab_size (default V): the classes, when the last dim is padded past them; the columns
    from vocab_size on take no probability and get zero gradients. softcap: C > 0 takes the loss
    of C * tanh(logits / C) (the logit soft-cap), with its gradient; 0: none.
    A target outside [0, vocab_size) gives a NaN loss and NaN gradients, and a ValueError naming
    it: at once on a CPU, from raise_on_bad_targets(device) on a GPU (no host sync here)."""
    check_tensors("cross_entropy", logits=logits, targets=targets)
    vocab_size = None if vocab_size is None else int(vocab_size)
    loss = torch.ops.tritongpt.cross_entropy(logits, targets, int(ignore_index), vocab_size, float(softcap))[0]
    if raise_at_once(logits.device):
        raise_on_bad_targets(logits.device)
    return loss
