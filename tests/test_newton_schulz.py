"""kernels.xxt and kernels.newton_schulz (kernels/newton_schulz.py): the symmetric product, half of
it computed and mirrored, forward and gradients against the reference; the whole Newton-Schulz
iteration on it; the tile mapping; bad input."""

import importlib

import pytest
import torch

from tritongpt import kernels
from conftest import DEVICE, DTYPES, HAS_GPU, assert_parity
from tritongpt.kernels import reference
from tritongpt.kernels.newton_schulz import AUTOTUNE, CONFIGS, HOPPER_CONFIGS, INTERPRET, SINGLE_CONFIG, lower_tiles, xxt_fwd


def make(shape, dtype, scale=None):
    """x (..., M, K) scaled so that x x^T is O(1), its addend (..., M, M) and an output gradient."""
    *lead, M, K = shape
    x = torch.randn(shape, device=DEVICE) / max(K, 1) ** 0.5
    add = torch.randn(*lead, M, M, device=DEVICE)
    dout = torch.randn(*lead, M, M, device=DEVICE)
    return x.to(dtype), add.to(dtype), dout.to(dtype)


def run(fn, x, add, dout, alpha, beta):
    ins = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, add)]
    out = fn(ins[0], alpha, ins[1], beta)
    out.backward(dout)
    return [out] + [t.grad for t in ins if t is not None]


def check(shape, dtype, alpha=1.0, beta=0.0, with_add=False):
    x, add, dout = make(shape, dtype)
    add = add if with_add else None
    out = run(kernels.xxt, x, add, dout, alpha, beta)
    ref = run(lambda *a: reference.xxt(*a, upcast=True), x, add, dout, alpha, beta)
    pt = run(lambda *a: reference.xxt(*a, upcast=False), x, add, dout, alpha, beta)
    for name, o, r, p in zip(["out", "dx", "dadd"], out, ref, pt, strict=False):
        assert o.dtype == r.dtype, f"{name}: dtype {o.dtype} != {r.dtype}"
        assert_parity(o, r, p, name)
    assert torch.equal(out[0], out[0].mT), "the output is not exactly symmetric"


# (..., M, K): M through 1, a partial tile, several tiles; K through 1, a partial and a whole K block;
# a batch of matrices (q, k and v's blocks); a tall-ish x (M > K) as A A^T of Newton-Schulz is square.
SHAPES = [(1, 1), (1, 127), (127, 1), (33, 64), (127, 127), (3, 40, 17), (2, 2, 20, 50)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parity(shape, dtype):
    check(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_with_the_addend(dtype):
    """b A + c A A^T, the second product of a Newton-Schulz step, and other weights."""
    check((3, 45, 45), dtype, alpha=2.0315, beta=-4.7750, with_add=True)
    check((50, 20), dtype, alpha=-0.5, beta=0.25, with_add=True)


def test_strided_input():
    """x as a transposed view (a tall matrix turned wide) and a non-contiguous addend."""
    x = torch.randn(40, 24, device=DEVICE).mT  # (24, 40), stride 1 along M
    add = torch.randn(24, 24, device=DEVICE).mT
    torch.testing.assert_close(kernels.xxt(x, 1.5, add, 0.5), reference.xxt(x, 1.5, add, 0.5), rtol=1e-5, atol=1e-5)
    assert torch.equal(kernels.xxt(x, 1.5, add, 0.5), kernels.xxt(x, 1.5, add.tril(), 0.5))  # the lower triangle only


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(24, 80), (80, 24), (3, 32, 32)], ids=str)
def test_newton_schulz_parity(shape, dtype):
    """The whole iteration (five steps, wide, tall and batched) against the reference by the parity rule."""
    g = (torch.randn(shape, device=DEVICE)).to(dtype)
    out = kernels.newton_schulz(g)
    assert out.dtype == dtype and out.shape == g.shape
    assert_parity(out, reference.newton_schulz(g, upcast=True), reference.newton_schulz(g), "newton_schulz")


def test_tiles_cover_the_lower_triangle():
    """Programs p = 0 .. T(T+1)/2 - 1 map one to one onto the tiles (i, j), j <= i: every entry of
    out is written, by the tile or its mirror, for sizes around the triangle numbers."""
    block = SINGLE_CONFIG.kwargs["BLOCK"]
    for M in [1, block - 1, block, block + 1, 3 * block, 5 * block + 3, 21 * block]:
        t = -(-M // block)
        assert lower_tiles(M, block) == t * (t + 1) // 2
        x = torch.randn(1, M, 3, device=DEVICE)
        out = xxt_fwd(x, out=torch.full((1, M, M), float("nan"), device=DEVICE))
        assert torch.isfinite(out).all(), M  # every entry written
        torch.testing.assert_close(out, reference.xxt(x), rtol=1e-5, atol=1e-5)


def test_empty_sum_and_empty_batch():
    x = torch.randn(2, 5, 0, device=DEVICE)
    add = torch.randn(2, 5, 5, device=DEVICE)
    assert torch.equal(kernels.xxt(x), torch.zeros(2, 5, 5, device=DEVICE))
    torch.testing.assert_close(kernels.xxt(x, 1.0, add, 2.0), 2.0 * add)
    assert kernels.xxt(torch.randn(0, 4, 3, device=DEVICE)).shape == (0, 4, 4)


@pytest.mark.parametrize("args,message", [
    ((torch.randn(5),), r"expected x \(\.\.\., M, K\) with at least 2 dims, got \(5,\)"),
    ((torch.randn(4, 3), 1.0, torch.randn(4, 3)), r"expected add of shape \(4, 4\)"),
    ((torch.randn(4, 3), 1.0, torch.randn(4, 4).half()), "must share one of float32"),
    ((torch.randint(0, 3, (4, 3)),), "must share one of float32"),
    (("x",), "x must be a torch.Tensor"),
])
def test_bad_input_is_one_clear_error(args, message):
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(ValueError, match=message):
        kernels.xxt(*args)


@pytest.mark.skipif(HAS_GPU, reason="the interpreter's refusal")
def test_bfloat16_is_refused_under_the_interpreter():
    with pytest.raises(ValueError, match="bfloat16 needs a GPU"):
        kernels.xxt(torch.randn(4, 3).bfloat16())


def test_one_config_without_autotuning():
    assert CONFIGS == (HOPPER_CONFIGS if AUTOTUNE else [SINGLE_CONFIG])
    assert not INTERPRET or not AUTOTUNE


def test_fixed_tiles_launch_the_one_config(monkeypatch):
    """With kernels.fix_tiles (the trainer's deterministic=true) xxt launches the kernel under the
    autotuner at SINGLE_CONFIG, never the autotuner; the result is that config's."""
    newton_schulz = importlib.import_module("tritongpt.kernels.newton_schulz")  # the package's name is the function

    x, add, _ = make((2, 37, 24), torch.float32)
    tuned = kernels.xxt(x, -1.5, add, 0.5)

    class NoTuner:
        fn = newton_schulz._xxt_kernel.fn

        def __getitem__(self, grid):
            raise AssertionError("the autotuner was launched with the tiles fixed")

    monkeypatch.setattr(newton_schulz, "_xxt_kernel", NoTuner())
    kernels.fix_tiles(True)
    try:
        fixed = kernels.xxt(x, -1.5, add, 0.5)
    finally:
        kernels.fix_tiles(False)
    assert torch.equal(fixed, tuned)  # the interpreter's autotuner has SINGLE_CONFIG alone


def test_muon_on_the_triton_backend_uses_the_kernel(monkeypatch):
    """optim.build: the triton backend orthogonalizes with kernels.newton_schulz, the torch one with the reference."""
    from types import SimpleNamespace

    from tritongpt.gpt import GPT, GPTConfig
    from tritongpt.train import optim

    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16))
    cfg = SimpleNamespace(optimizer="muon", muon_lr=0.02, learning_rate=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95,
                          muon_momentum=0.95, backend="triton")
    assert optim.build(model, cfg, "cpu").orthogonalize is kernels.newton_schulz
    cfg.backend = "torch"
    assert optim.build(model, cfg, "cpu").orthogonalize is reference.newton_schulz


def test_newton_schulz_compiles_to_one_graph():
    """torch.compile of the iteration: one graph, no break (xxt is one node of it), the eager result."""
    torch._dynamo.reset()
    g = torch.randn(3, 16, 40, device=DEVICE)
    compiled = torch.compile(kernels.newton_schulz, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(g), kernels.newton_schulz(g), rtol=1e-5, atol=1e-5)
    explained = torch._dynamo.explain(kernels.newton_schulz)(g)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    torch._dynamo.reset()
