"""kernels.cross_entropy (kernels/losses.py) and kernels.linear_cross_entropy (kernels/lm_head.py)
against kernels.reference."""

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tritongpt import kernels
from conftest import DEVICE, DTYPES, HAS_GPU, assert_parity
from tritongpt.kernels import lm_head, losses, reference

VOCABS = [1000] + ([50304] if HAS_GPU else [])


def _targets(shape, V, ignored=0.25):
    t = torch.randint(0, V, shape, device=DEVICE)
    t[torch.rand(shape, device=DEVICE) < ignored] = -1
    return t


def _run(fn, tensors, targets, grad_out, **kw):
    """The loss and the gradients of grad_out * loss wrt tensors, from fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    loss = fn(*leaves, targets, **kw)
    loss.backward(grad_out)
    return [loss] + [t.grad for t in leaves]


def check(fn, ref_fn, tensors, targets, names, **kw):
    """assert_parity on the loss and every gradient: out_ref from the reference in fp32 on the same
    low-precision inputs, out_pt from the reference in their own precision (the CPU runs fp16
    linear and cross-entropy natively). grad_output is 2.5 x the rows, not 1, so its scaling is
    checked too, and the per-row gradients are O(1) against the tolerance at any row count."""
    g = torch.tensor(2.5 * targets.numel(), device=DEVICE)
    out = _run(fn, tensors, targets, g, **kw)
    ref = _run(lambda *a, **k: ref_fn(*a, upcast=True, **k), tensors, targets, g, **kw)
    pt = _run(lambda *a, **k: ref_fn(*a, upcast=False, **k), tensors, targets, g, **kw)
    assert out[0].dtype == torch.float32 and out[0].shape == ()
    for name, o, r, p, t in zip(names, out, ref, pt, [None] + list(tensors), strict=True):
        assert t is None or o.dtype == t.dtype, f"{name}: dtype {o.dtype} != the input's {t.dtype}"
        assert_parity(o, r, p, name)
    return out


# ----------------------------------------------------------------------------- cross_entropy

CE_SHAPES = [(1, 1000), (3, 1000), (127, 1000), (3, 5000)] + ([(127, 50304), (1024, 50304)] if HAS_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_cross_entropy_parity(shape, dtype):
    logits = (torch.randn(shape, device=DEVICE) * 3).to(dtype)
    check(kernels.cross_entropy, reference.cross_entropy, [logits], _targets(shape[:1], shape[1]), ["loss", "dlogits"])


def test_cross_entropy_online_softmax_across_blocks(monkeypatch):
    """Many column blocks per row, the row's max in a late block, and a ragged last block."""
    monkeypatch.setattr(losses, "MAX_BLOCK_V", 64)
    logits = torch.randn(5, 1000, device=DEVICE)
    logits[:, 900] += 30.0
    check(kernels.cross_entropy, reference.cross_entropy, [logits], _targets((5,), 1000, 0.0), ["loss", "dlogits"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_leading_shape_ignore_index_and_int32(dtype):
    logits = torch.randn(2, 7, 300, device=DEVICE).to(dtype)
    t = _targets((2, 7), 300)
    t[t == -1] = -100
    out = check(kernels.cross_entropy, reference.cross_entropy, [logits], t, ["loss", "dlogits"], ignore_index=-100)
    # int32 targets (which torch's own cross_entropy refuses) give the same result
    out32 = _run(kernels.cross_entropy, [logits], t.int(), torch.tensor(2.5 * t.numel(), device=DEVICE), ignore_index=-100)
    for a, b in zip(out, out32, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cross_entropy_strided_logits():
    """A row-strided view is read in place; a transposed one is copied: both right."""
    for logits in (torch.randn(4, 1200, device=DEVICE)[:, :1000], torch.randn(1000, 4, device=DEVICE).t()):
        assert not logits.is_contiguous()
        check(kernels.cross_entropy, reference.cross_entropy, [logits], _targets((4,), 1000), ["loss", "dlogits"])


@pytest.mark.parametrize("fused", [False, True])
def test_all_ignored_gives_zero_loss_and_zero_grads(fused):
    x = torch.randn(6, 16, device=DEVICE, requires_grad=True)
    w = torch.randn(50, 16, device=DEVICE, requires_grad=True)
    t = torch.full((6,), -1, device=DEVICE)
    if fused:
        loss = kernels.linear_cross_entropy(x, w, t)
    else:
        loss = kernels.cross_entropy(x @ w.t(), t)
    loss.backward()
    assert loss.item() == 0.0
    for g in (x.grad, w.grad):
        assert torch.isfinite(g).all() and not g.any()


# targets with ids outside V = 10 (and -1, ignored) -> the words the error must hold
BAD_TARGETS = [
    ([1, 10, 2, -1], "1 target(s) outside the vocabulary of 10 classes, such as class id 10 "),
    ([1, -3, 2, -1], "class id -3 "),
    ([12, -3, 11, -1], "3 target(s) outside the vocabulary of 10 classes, such as class ids 12 and -3 "),
]


def _bad_target_loss(fused, targets):
    """The loss of random logits (4, V = 10), or of x (4, 8) @ W.T, against targets, backward
    run; -> loss and the gradient(s)."""
    t = torch.tensor(targets, device=DEVICE)
    if fused:
        x = torch.randn(4, 8, device=DEVICE, requires_grad=True)
        w = torch.randn(10, 8, device=DEVICE, requires_grad=True)
        loss = kernels.linear_cross_entropy(x, w, t)
        leaves = [x, w]
    else:
        logits = torch.randn(4, 10, device=DEVICE, requires_grad=True)
        loss = kernels.cross_entropy(logits, t)
        leaves = [logits]
    loss.backward()
    return loss, [leaf.grad for leaf in leaves]


@pytest.mark.skipif(HAS_GPU, reason="the error at once is the CPU's; a GPU's is checked below")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("targets, words", BAD_TARGETS, ids=["high", "negative", "both"])
def test_out_of_range_target_is_an_error_at_once_on_a_cpu(targets, words, fused):
    with pytest.raises(ValueError, match=re.escape(words)):
        _bad_target_loss(fused, targets)
    _bad_target_loss(fused, [1, 9, 0, -1])  # the record was cleared: good targets pass


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("targets, words", BAD_TARGETS, ids=["high", "negative", "both"])
def test_out_of_range_target_on_a_gpu_is_recorded_then_raised(targets, words, fused, monkeypatch):
    """Where reading the record would wait for the device (a GPU; made so here on a CPU), the op
    does not read it: the loss and every gradient are NaN, never finite and wrong, and
    raise_on_bad_targets, called where the host waits anyway, names the target and V."""
    for module in (losses, lm_head):
        monkeypatch.setattr(module, "raise_at_once", lambda device: False)
    kernels.raise_on_bad_targets(DEVICE)
    loss, grads = _bad_target_loss(fused, targets)
    assert torch.isnan(loss)
    assert all(torch.isnan(g).any() for g in grads)
    if not fused:  # the bad rows' gradients NaN, the good rows' finite, the ignored row's zero
        t = torch.tensor(targets, device=DEVICE)
        bad = (t != -1) & ((t < 0) | (t >= 10))
        assert torch.isnan(grads[0][bad]).all() and torch.isfinite(grads[0][~bad]).all() and not grads[0][3].any()
    with pytest.raises(ValueError, match=re.escape(words)):
        kernels.raise_on_bad_targets(DEVICE)
    kernels.raise_on_bad_targets(DEVICE)  # cleared
    loss, grads = _bad_target_loss(fused, [1, 9, 0, -1])
    kernels.raise_on_bad_targets(DEVICE)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- a padded vocabulary


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [32, 4096], ids=["3-blocks", "1-block"])
@pytest.mark.parametrize("fused", [False, True])
def test_padding_past_vocab_size_takes_no_probability(fused, block, dtype, monkeypatch):
    """65 classes padded to 128 columns, the padding's logits the largest of each row: loss and
    gradients equal the reference's on the 65 columns alone (the padding cut off), and the
    padding's gradient is exactly zero. With 32-column blocks the classes end inside a block."""
    monkeypatch.setattr(losses, "MAX_BLOCK_V", block)
    M, C, V, vocab = 37, 16, 128, 65
    targets = _targets((M,), vocab)
    if fused:
        x = torch.randn(M, C, device=DEVICE)
        w = torch.randn(V, C, device=DEVICE) / C**0.5
        w[vocab:] = x.mean(0) * 4  # padding rows along the rows' common direction: big logits
        inputs, names = [x.to(dtype), w.to(dtype)], ["loss", "dx", "dweight"]
        fn, ref_fn = kernels.linear_cross_entropy, reference.linear_cross_entropy
        monkeypatch.setattr(lm_head, "LOGITS_BUDGET_BYTES", 16 * V * 4)  # several chunks
    else:
        logits = torch.randn(M, V, device=DEVICE)
        logits[:, vocab:] += 10.0
        inputs, names = [logits.to(dtype)], ["loss", "dlogits"]
        fn, ref_fn = kernels.cross_entropy, reference.cross_entropy
    out = check(fn, ref_fn, inputs, targets, names, vocab_size=vocab)
    # (softmax - onehot) * scale is exactly 0 only where the probability is exactly 0
    grad_padding = out[-1][vocab:] if fused else out[-1][:, vocab:]  # dW's rows, dlogits' columns
    assert grad_padding.numel() and not grad_padding.any()
    # the padding is not the vocabulary: a target there is out of range
    targets[3] = 100
    with pytest.raises(ValueError, match=r"outside the vocabulary of 65 classes, such as class id 100 "):
        fn(*inputs, targets, vocab_size=vocab)  # raises here on a CPU
        kernels.raise_on_bad_targets(DEVICE)  # where a GPU's op leaves it


@pytest.mark.parametrize("vocab_size", [0, 129])
def test_vocab_size_must_fit_the_columns(vocab_size):
    logits, t = torch.randn(4, 128, device=DEVICE), torch.randint(0, 10, (4,), device=DEVICE)
    with pytest.raises(ValueError, match=f"vocab_size must be from 1 to the 128 columns of the logits, got {vocab_size}"):
        kernels.cross_entropy(logits, t, vocab_size=vocab_size)
    with pytest.raises(ValueError, match="linear_cross_entropy: vocab_size must be from 1"):
        kernels.linear_cross_entropy(torch.randn(4, 8, device=DEVICE), torch.randn(128, 8, device=DEVICE), t,
                                     vocab_size=vocab_size)


# ----------------------------------------------------------------------------- linear_cross_entropy

LCE_SHAPES = [(1, 32, 1000), (3, 32, 1000), (127, 64, 1000)] + ([(1000, 768, 50304)] if HAS_GPU else [])


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LCE_SHAPES)
def test_linear_cross_entropy_parity(shape, dtype, chunked, monkeypatch):
    M, C, V = shape
    if chunked:  # several chunks (as many as GPT-2's 8192 rows get on the GPU), a ragged last one
        rows, itemsize = (16 if M < 1000 else 256), torch.finfo(dtype).bits // 8
        monkeypatch.setattr(lm_head, "LOGITS_BUDGET_BYTES", rows * V * itemsize)
        assert lm_head.chunk_rows(M, V, itemsize) == min(M, rows)
    x = torch.randn(M, C, device=DEVICE).to(dtype)
    w = (torch.randn(V, C, device=DEVICE) / C**0.5).to(dtype)
    check(
        kernels.linear_cross_entropy, reference.linear_cross_entropy, [x, w], _targets((M,), V), ["loss", "dx", "dweight"]
    )


def test_linear_cross_entropy_leading_shape():
    x = torch.randn(2, 9, 32, device=DEVICE)
    w = torch.randn(300, 32, device=DEVICE) / 32**0.5
    check(kernels.linear_cross_entropy, reference.linear_cross_entropy, [x, w], _targets((2, 9), 300), ["loss", "dx", "dw"])


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32])
def test_linear_cross_entropy_under_autocast(dtype):
    """fp32 x and weight under autocast: the matmuls run in the autocast dtype (as F.linear's
    would), the loss is fp32 and both gradients come back in fp32."""
    x = torch.randn(2, 9, 32, device=DEVICE)
    w = torch.randn(300, 32, device=DEVICE) / 32**0.5
    t = _targets((2, 9), 300)
    g = torch.tensor(1.5 * t.numel(), device=DEVICE)
    with torch.autocast(DEVICE, dtype=dtype):
        out = _run(kernels.linear_cross_entropy, [x, w], t, g)
        pt = _run(reference.linear_cross_entropy, [x, w], t, g)
    # out_ref: the reference in fp32 from the same low-precision (autocast) inputs
    ref = _run(reference.linear_cross_entropy, [x.to(dtype).float(), w.to(dtype).float()], t, g)
    for name, o, r, p in zip(["loss", "dx", "dweight"], out, ref, pt, strict=True):
        assert o.dtype == torch.float32, f"{name}: {o.dtype}"
        assert_parity(o, r, p, name)


class _LargestTensor(TorchDispatchMode):
    """Records the size in bytes of the largest tensor any op creates while active (in bytes, as
    Triton's interpreter looks at its arguments through byte views)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_logits_exist_one_chunk_at_a_time(monkeypatch):
    """With chunks of 8 rows, no tensor larger than 8 x V fp32 is ever created in forward +
    backward, where the unfused reference creates M x V ones."""
    M, C, V = 50, 4, 1000
    monkeypatch.setattr(lm_head, "LOGITS_BUDGET_BYTES", 8 * V * 4)
    x = torch.randn(M, C, device=DEVICE, requires_grad=True)
    w = torch.randn(V, C, device=DEVICE, requires_grad=True)
    t = _targets((M,), V)
    # The op is one node to a dispatch mode, which does not see inside it: its host function,
    # which does all the work of forward and backward but the scaling by grad_output, is run too
    # (below autograd, as the op runs it).
    def fused(*a):
        with torch.no_grad():
            lm_head.linear_cross_entropy_fwd(*a, -1, True, True)
        return kernels.linear_cross_entropy(*a)
    for fn, largest in ((reference.linear_cross_entropy, M * V * 4), (fused, 8 * V * 4)):
        with _LargestTensor() as seen:
            fn(x, w, t).backward()
        assert seen.largest == largest, f"{fn.__module__}: largest tensor {seen.largest}, expected {largest}"


def test_chunk_rows_from_the_shape():
    assert lm_head.chunk_rows(8192, 50304, 2) == 2048  # 2048 * 50304 * 2 bytes = 196 MiB <= 256 MiB
    assert lm_head.chunk_rows(8192, 50304, 4) == 1024
    assert lm_head.chunk_rows(100, 50304, 2) == 100 and lm_head.chunk_rows(5, 10**9, 4) == 1


def test_bad_inputs_raise_value_errors(monkeypatch):
    x, w = torch.randn(4, 8, device=DEVICE), torch.randn(20, 8, device=DEVICE)
    t = torch.randint(0, 20, (4,), device=DEVICE)
    with pytest.raises(ValueError, match="one dtype"):
        kernels.linear_cross_entropy(x, w.half(), t)
    with pytest.raises(ValueError, match="weight"):
        kernels.linear_cross_entropy(x, w[:, :4], t)
    with pytest.raises(ValueError, match="targets shape"):
        kernels.linear_cross_entropy(x, w, t[:3])
    with pytest.raises(ValueError, match="targets shape"):
        kernels.cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="int64 or int32"):
        kernels.cross_entropy(x, t.float())
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        kernels.cross_entropy(t.view(2, 2), t[:2])
    with pytest.raises(ValueError, match="one device"):
        kernels.cross_entropy(x, t.to("meta"))
    with pytest.raises(ValueError, match="one device"):
        kernels.linear_cross_entropy(x, w.to("meta"), t)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        kernels.cross_entropy(x.cpu(), t.cpu())


# ----------------------------------------------------------------------------- GPU sizes


@pytest.mark.gpu
def test_gpt2_size_linear_cross_entropy_bf16():
    """B*T = 8192, V = 50304, C = 768 in bf16: several chunks of 2048 rows."""
    x = torch.randn(8192, 768, device=DEVICE).to(torch.bfloat16)
    w = (torch.randn(50304, 768, device=DEVICE) * 0.02).to(torch.bfloat16)
    check(kernels.linear_cross_entropy, reference.linear_cross_entropy, [x, w], _targets((8192,), 50304, 0.05), ["loss", "dx", "dweight"])


def _peak_extra(fn, *args):
    """Peak memory allocated by fn(*args).backward() beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(*args).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@pytest.mark.gpu
def test_peak_memory_under_a_quarter_of_unfused():
    x = torch.randn(8192, 768, device=DEVICE).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(50304, 768, device=DEVICE) * 0.02).to(torch.bfloat16).requires_grad_()
    t = _targets((8192,), 50304, 0.05)
    unfused = _peak_extra(reference.linear_cross_entropy, x, w, t)
    x.grad = w.grad = None
    fused = _peak_extra(kernels.linear_cross_entropy, x, w, t)
    assert fused < unfused / 4, f"fused {fused / 2**20:.0f} MiB vs unfused {unfused / 2**20:.0f} MiB"


@pytest.mark.gpu
def test_int64_offsets_past_2_to_the_31():
    """rows * V > 2^31 logits: only the last rows are kept, so with 32-bit offsets their loss
    and gradient would be read from and written to the wrong place."""
    M, V = 2**31 // 50304 + 64, 50304
    logits = torch.randn(M, V, device=DEVICE, dtype=torch.bfloat16)
    t = torch.full((M,), -1, device=DEVICE)
    t[-4:] = torch.randint(0, V, (4,), device=DEVICE)
    leaf = logits.requires_grad_()
    loss = kernels.cross_entropy(leaf, t)
    loss.backward()
    tail = logits[-4:].detach().float().requires_grad_()
    ref = reference.cross_entropy(tail, t[-4:])
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(leaf.grad[-4:].float(), tail.grad, rtol=1e-2, atol=1e-4)
    assert not leaf.grad[:-4].any()


# ----------------------------------------------------------------------------- numerics of the fused head
# At the row counts where these hazards show, the interpreter would take minutes over the row
# kernel, so these tests run the fused head's host-side math (chunks, scales, matmuls, fp32
# sums, the backward's rounding) with the row kernel's contract done by torch instead; the row
# kernel itself is held to that contract by the parity tests above.


def _rows_in_torch(logits2, t, ignore_index, loss_rows, lse, scale, write_grad, vocab, softcap=0.0):
    """What losses.cross_entropy_rows does, in torch (fp32 math): loss_rows and lse (R,) out,
    and when write_grad logits2 (R, V) overwritten by (softmax - onehot) * scale (0 on ignored rows).
    Here every column is a class (vocab == V), and there is no soft-cap."""
    assert vocab == logits2.shape[1] and not softcap
    z = logits2.float()
    kept = t != ignore_index
    lse.copy_(torch.logsumexp(z, dim=-1))
    picked = z.gather(1, t.clamp(min=0)[:, None])[:, 0]
    loss_rows.copy_(torch.where(kept, lse - picked, 0.0))
    if write_grad:
        g = torch.softmax(z, dim=-1)
        g[kept, t[kept]] -= 1.0
        logits2.copy_(torch.where(kept[:, None], g * scale, 0.0))


def _scaled_grads(fn, x, w, t, scale):
    """Gradients of scale * loss wrt x and w (what a gradient scaler's backward produces, before
    it unscales them), from fresh leaves."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (fn(x, w, t) * scale).backward()
    return x.grad, w.grad


def _torch_fp16_head(x, w, t):
    """torch's own 16-bit path: logits in x's dtype, the loss in fp32."""
    return reference.cross_entropy(x @ w.t(), t, upcast=True)


def test_fp16_gradients_under_a_gradient_scaler_as_close_as_torchs(monkeypatch):
    """16384 rows and V = 1024 in fp16 under GradScaler's default scale 2^16: (softmax - onehot)
    / rows is about 6e-8 here, at the bottom of fp16's subnormals, so a head that rounds it to
    fp16 before the scale reaches it loses all or most of its bits. The fused head's gradients
    must be as close to the fp32 result as torch's fp16 path (logits fp16, loss fp32, scaled
    before backward) is."""
    monkeypatch.setattr(lm_head, "cross_entropy_rows", _rows_in_torch)
    M, C, V, scale = 16384, 16, 1024, 2.0**16
    x = torch.randn(M, C, device=DEVICE).half()
    w = (torch.randn(V, C, device=DEVICE) / C**0.5).half()
    t = _targets((M,), V, ignored=0.0)
    out = _scaled_grads(kernels.linear_cross_entropy, x, w, t, scale)
    pt = _scaled_grads(_torch_fp16_head, x, w, t, scale)
    ref = _scaled_grads(reference.linear_cross_entropy, x.float(), w.float(), t, scale)
    for name, o, r, p in zip(["dx", "dweight"], out, ref, pt, strict=True):
        assert o.dtype == torch.float16
        assert_parity(o, r.half(), p, name)


def _accumulation_case(dtype, M, C, V, chunk, monkeypatch):
    """dweight of the fused head with `chunk`-row chunks, of the reference in fp32 and of torch's
    one 16-bit matmul, for grad_output = M (per-row gradients O(1): only the sums round)."""
    monkeypatch.setattr(lm_head, "LOGITS_BUDGET_BYTES", chunk * V * 2)
    assert lm_head.chunk_rows(M, V, 2) == chunk
    x = torch.randn(M, C, device=DEVICE).to(dtype)
    w = (torch.randn(V, C, device=DEVICE) / C**0.5).to(dtype)
    t = _targets((M,), V, ignored=0.05)
    _, dw = _scaled_grads(kernels.linear_cross_entropy, x, w, t, float(M))
    _, dw_pt = _scaled_grads(_torch_fp16_head, x, w, t, float(M))
    _, dw_ref = _scaled_grads(reference.linear_cross_entropy, x.float(), w.float(), t, float(M))
    return dw, dw_ref.to(dtype), dw_pt


def test_weight_gradient_accumulates_in_fp32_across_chunks(monkeypatch):
    """With 256 chunks of 16 rows the weight gradient is a sum of 256 chunk products: summed in
    16 bits it would be rounded 256 times, against once by torch's one matmul. Summed in fp32 and
    rounded once, it is as close to the fp32 result as that matmul (fp16 here; bf16 below)."""
    monkeypatch.setattr(lm_head, "cross_entropy_rows", _rows_in_torch)
    monkeypatch.setattr(lm_head, "ACC_SLICE_ROWS", 24)  # each chunk's product added in 3 slices, a ragged one
    dw, dw_ref, dw_pt = _accumulation_case(torch.float16, 4096, 16, 64, 16, monkeypatch)
    assert_parity(dw, dw_ref, dw_pt, "dweight")


@pytest.mark.gpu
def test_bf16_weight_gradient_accumulates_in_fp32_across_chunks(monkeypatch):
    """The same in bf16 with the row kernel, at GPT-2's width and vocabulary: 8192 rows in 32
    chunks of 256."""
    dw, dw_ref, dw_pt = _accumulation_case(torch.bfloat16, 8192, 768, 50304, 256, monkeypatch)
    assert_parity(dw, dw_ref, dw_pt, "dweight")
