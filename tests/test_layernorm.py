"""kernels.layer_norm (kernels/normalization.py) against kernels.reference.layer_norm: forward,
dx, dweight, dbias."""

import pytest
import torch

from tritongpt import kernels
from conftest import DEVICE, DTYPES, HAS_GPU, assert_parity
from tritongpt.kernels import normalization, reference


def _run(fn, x, weight, bias, dy):
    """y and the gradients of (y * dy).sum() wrt x, weight, bias, from fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    y = fn(*leaves)
    y.backward(dy)
    return [y] + [t.grad if t is not None else None for t in leaves]


def check_layer_norm(x, weight, bias, names=("y", "dx", "dweight", "dbias")):
    """assert_parity on y, dx, dweight and dbias: the kernel against the reference in fp32
    (out_ref) and in the inputs' own precision (out_pt; CPU runs fp16 LayerNorm natively)."""
    dy = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    out = _run(kernels.layer_norm, x, weight, bias, dy)
    ref = _run(lambda *a: reference.layer_norm(*a, upcast=True), x, weight, bias, dy)
    pt = _run(lambda *a: reference.layer_norm(*a, upcast=False), x, weight, bias, dy)
    assert out[0].dtype == x.dtype and out[2].dtype == weight.dtype
    for name, o, r, p in zip(names, out, ref, pt, strict=True):
        if r is None:
            assert o is None, f"{name}: expected no gradient"
            continue
        assert o.dtype == r.dtype, f"{name}: dtype {o.dtype} != {r.dtype}"
        assert_parity(o, r, p, name)


def _inputs(shape, dtype, bias=True, wdtype=None):
    C = shape[-1]
    x = (torch.randn(shape, device=DEVICE) * 2 + 0.5).to(dtype)
    w = (1 + 0.5 * torch.randn(C, device=DEVICE)).to(wdtype or dtype)
    b = (0.5 * torch.randn(C, device=DEVICE)).to(wdtype or dtype) if bias else None
    return x, w, b


# rows x width: 1, 3, 127 rows; widths 127, 768, 1000 (few rows at the wide ones on the CPU);
# width 1 has an exact answer, checked by test_width_one
SHAPES = [(1, 127), (3, 127), (127, 127), (1, 768), (3, 768), (3, 1000), (127, 1000)]
if HAS_GPU:
    SHAPES += [(127, 768), (1000, 1000), (64, 8192), (37, 5000)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_parity(shape, dtype, bias):
    check_layer_norm(*_inputs(shape, dtype, bias))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 127])
def test_width_one(rows, dtype):
    """Width 1: x - mean is exactly 0, so y = bias, dx = 0, dweight = 0 and dbias = sum(dy).
    (The fp32 reference rounds x - mean to a few 1e-8, which rstd = 1/sqrt(eps) blows up to
    errors of 1e-5: the exact answer is the better judge here.)"""
    x, w, b = _inputs((rows, 1), dtype)
    dy = torch.randn(x.shape, device=DEVICE).to(dtype)
    y, dx, dw, db = _run(kernels.layer_norm, x, w, b, dy)
    assert torch.equal(y, b.expand(rows, 1)) and not dx.any() and not dw.any()
    torch.testing.assert_close(db, dy.float().sum(0).to(dtype))
    y, dx, dw, db = _run(kernels.layer_norm, x, w, None, dy)
    assert not y.any() and not dx.any() and db is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_shape_btc(dtype):
    check_layer_norm(*_inputs((2, 5, 48), dtype))


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32])
def test_mixed_dtypes_under_autocast(dtype):
    """Low-precision x with fp32 weight and bias, as the trainer's autocast gives: y and dx in x's
    dtype, dweight and dbias in fp32."""
    x, w, b = _inputs((2, 7, 96), dtype, wdtype=torch.float32)
    with torch.autocast(DEVICE, dtype=dtype):
        check_layer_norm(x, w, b)
    check_layer_norm(x, w, b)


def test_strided_and_non_contiguous_inputs():
    """A view with a row stride (no copy needed) and a transposed one (copied) give the same
    result as their contiguous copies."""
    base = torch.randn(9, 80, device=DEVICE)
    _, w, b = _inputs((9, 48), torch.float32)
    for x in (base[:, :48], torch.randn(48, 9, device=DEVICE).t()):
        assert not x.is_contiguous()
        check_layer_norm(x, w, b)
        torch.testing.assert_close(kernels.layer_norm(x, w, b), kernels.layer_norm(x.contiguous(), w, b))


def test_backward_partials_span_many_row_blocks():
    """The backward's persistent grid: more row blocks than programs, and a ragged last block."""
    x, w, b = _inputs((203, 100), torch.float32)
    BLOCK_M, _, _ = normalization._tile(100, max_tile=8192)
    G = 2 * normalization.num_sms(x.device)
    assert -(-203 // BLOCK_M) > G and 203 % BLOCK_M
    check_layer_norm(x, w, b)


def test_bad_inputs_raise_value_errors(monkeypatch):
    x, w, b = _inputs((3, 16), torch.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(16,\)"):
        kernels.layer_norm(x, w[:8], b)
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\)"):
        kernels.layer_norm(x, w, b[:8])
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        kernels.layer_norm(x.to(torch.int32), w, b)
    with pytest.raises(ValueError, match="one device"):
        kernels.layer_norm(x, w.to("meta"), b)
    with pytest.raises(ValueError, match="widths up to"):
        kernels.layer_norm(torch.randn(1, normalization.MAX_WIDTH + 1, device=DEVICE), torch.ones(normalization.MAX_WIDTH + 1, device=DEVICE))
    with pytest.raises(ValueError, match="non-empty last dim"):
        kernels.layer_norm(torch.randn(3, 0, device=DEVICE), torch.ones(0, device=DEVICE))
    # CPU tensors are only runnable under the interpreter
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        kernels.layer_norm(x.cpu(), w.cpu(), b.cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpt2_size(dtype):
    """(B*T, C) = (16384, 768), as in GPT-2 124M's ln_1 / ln_2 / ln_f, and with fp32 weights."""
    check_layer_norm(*_inputs((16, 1024, 768), dtype))
    check_layer_norm(*_inputs((16384, 768), dtype, wdtype=torch.float32))


# ----------------------------------------------------------------------------- add_layer_norm


def _run_add(fn, x, y, weight, bias, ds, dout):
    """s, out and the gradients of <s, ds> + <out, dout> wrt x, y, weight, bias (None for an
    absent bias, or when ds / dout is None: that output unused)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, y, weight, bias)]
    s, out = fn(*leaves)
    used = [(t, g) for t, g in ((s, ds), (out, dout)) if g is not None]
    torch.autograd.backward([t for t, _ in used], [g.to(t.dtype) for t, g in used])
    return [s, out] + [t.grad if t is not None else None for t in leaves]


def check_add_layer_norm(x, y, weight, bias, out_dtype=None, use_s=True, use_out=True):
    """assert_parity on s, out, dx, dy, dweight, dbias against reference.add_layer_norm in fp32
    and in the inputs' precision; out_dtype: the normalized output's dtype the op should give
    (autocast's), the reference's cast to it."""
    s_dtype = torch.promote_types(x.dtype, y.dtype)
    out_dtype = out_dtype or s_dtype
    ds = torch.randn(x.shape, device=x.device).to(s_dtype) if use_s else None
    dout = torch.randn(x.shape, device=x.device).to(out_dtype) if use_out else None

    def ref(upcast):
        def fn(*a):
            s, out = reference.add_layer_norm(*a, upcast=upcast)
            return s, out.to(out_dtype)
        return _run_add(fn, x, y, weight, bias, ds, dout)

    got = _run_add(kernels.add_layer_norm, x, y, weight, bias, ds, dout)
    ref_, pt = ref(True), ref(False)
    assert got[0].dtype == s_dtype and got[1].dtype == out_dtype
    assert torch.equal(got[0], x + y), "s must be x + y exactly, as torch adds"
    for name, o, r, p in zip(("s", "out", "dx", "dy", "dweight", "dbias"), got, ref_, pt, strict=True):
        if r is None:
            assert o is None, f"{name}: expected no gradient"
            continue
        assert o.dtype == r.dtype, f"{name}: dtype {o.dtype} != {r.dtype}"
        assert_parity(o, r, p, name)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 127), (3, 768), (127, 1000), (2, 5, 48)])
def test_add_parity(shape, dtype, bias):
    x, w, b = _inputs(shape, dtype, bias)
    check_add_layer_norm(x, torch.randn_like(x), w, b)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32])
def test_add_under_autocast_keeps_the_stream_and_writes_the_autocast_dtype(dtype):
    """The model's case: an fp32 residual stream x, a low-precision branch y, fp32 weights, under
    autocast: s fp32, the normalized output in the autocast dtype; dx fp32, dy in y's dtype."""
    x, w, b = _inputs((2, 7, 96), torch.float32)
    y = torch.randn(x.shape, device=DEVICE).to(dtype)
    with torch.autocast(DEVICE, dtype=dtype):
        check_add_layer_norm(x, y, w, b, out_dtype=dtype)
    check_add_layer_norm(x, y, w, b)  # no autocast: the output in s's dtype, fp32


@pytest.mark.parametrize("use_s, use_out", [(False, True), (True, False)])
def test_add_with_one_output_unused(use_s, use_out):
    """After the last block only the normalized output is used; the gradient is then the
    LayerNorm's alone (and the add's alone when only s is)."""
    x, w, b = _inputs((37, 100), torch.float32)
    check_add_layer_norm(x, torch.randn_like(x), w, b, use_s=use_s, use_out=use_out)


def test_add_bad_inputs_raise_value_errors():
    x, w, b = _inputs((3, 16), torch.float32)
    with pytest.raises(ValueError, match=r"y must have x's shape \(3, 16\)"):
        kernels.add_layer_norm(x, x[:1], w, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(16,\)"):
        kernels.add_layer_norm(x, x, w[:8], b)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        kernels.add_layer_norm(x, x.to(torch.int32), w, b)
    with pytest.raises(ValueError, match="y must be a torch.Tensor"):
        kernels.add_layer_norm(x, 1.0, w, b)


@pytest.mark.skipif(not HAS_GPU, reason="GPT-2 sizes need a GPU")
def test_add_gpt2_size_bf16_autocast():
    """(16384, 768): an fp32 stream plus a bf16 branch under bf16 autocast, as in GPT-2 124M."""
    x, w, b = _inputs((16, 1024, 768), torch.float32)
    y = torch.randn(x.shape, device=DEVICE).to(torch.bfloat16)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        check_add_layer_norm(x, y, w, b, out_dtype=torch.bfloat16)
