"""kernels.attention (kernels/flash_attention.py): flash attention forward and dQ, dK, dV against
the reference, the c_attn view, dropout (its mask, its statistics, its gradients), autocast,
errors, and the model."""

import pytest
import torch

from tritongpt import kernels
from attention_mask import dropout_mask, seed_tensor
from conftest import DEVICE, DTYPES, assert_parity
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.kernels import flash_attention as fa
from tritongpt.kernels import reference


@pytest.fixture(autouse=True)
def _one_config(monkeypatch):
    """Tests run the one small config (real configs: the GPU-size test below turns tuning on)."""
    monkeypatch.setattr(fa, "AUTOTUNE", False)


def qkv(B, H, T, D, dtype):
    """Random q, k, v (B, H, T, D) and an upstream gradient dO like them."""
    return [torch.randn(B, H, T, D, device=DEVICE).to(dtype) for _ in range(4)]


def fwd_bwd(fn, q, k, v, do):
    """[fn(q, k, v), dq, dk, dv] for the loss <fn(q, k, v), do>."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(do)
    return [out] + [t.grad for t in leaves]


def check_parity(fn, q, k, v, do, **ref_kw):
    """The parity rule on o, dq, dk, dv: fn against the reference in fp32 and in q's dtype."""
    got = fwd_bwd(fn, q, k, v, do)
    ref = fwd_bwd(lambda *a: reference.attention(*a, upcast=True, **ref_kw), q, k, v, do)
    pt = fwd_bwd(lambda *a: reference.attention(*a, upcast=False, **ref_kw), q, k, v, do)
    for name, g, r, p in zip(("o", "dq", "dk", "dv"), got, ref, pt, strict=True):
        assert g.dtype == q.dtype, f"{name}: dtype {g.dtype} != {q.dtype}"
        assert_parity(g, r, p, name)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [32, 64])
@pytest.mark.parametrize("T", [1, 17, 64, 100, 257])
def test_parity(T, D, dtype):
    check_parity(kernels.attention, *qkv(2, 2, T, D, dtype))


def test_batch_and_heads_are_grid_dimension_x(monkeypatch):
    """Every launch puts B * H in grid dimension x and the tiles in y: CUDA caps y at 65535, which
    B * H in y passed at 8192 sequences of 12 heads. Odd B, H and T (T past a tile) check the
    programs' arithmetic by parity; a grid past a limit is a ValueError naming it."""
    grids = []
    for name in ("_attn_fwd_kernel", "_attn_bwd_kernel", "_attn_bwd_delta_kernel"):
        kernel = getattr(fa, name)

        class Recorder:
            def __init__(self, kernel):
                self.kernel = kernel

            def __getitem__(self, grid):
                grids.append(grid)
                return self.kernel[grid]

        monkeypatch.setattr(fa, name, Recorder(kernel))
    check_parity(kernels.attention, *qkv(3, 5, 70, 32, torch.float32))
    assert len(grids) == 4  # forward, delta, dK/dV, dQ
    for grid in grids:
        size = grid(dict(BLOCK_M=64, BLOCK_BIG=64)) if callable(grid) else grid
        assert size[0] == 15 and size[1] == -(-70 // (64 if callable(grid) else fa.DELTA_BLOCK_M))
    assert fa._grid(1024, 64, 8192 * 12) == (8192 * 12, 16)
    monkeypatch.setattr(fa, "MAX_GRID_Y", 1)
    with pytest.raises(ValueError, match="passes CUDA's limits of 2147483647 by 1; split the batch or the sequence"):
        kernels.attention(*qkv(3, 5, 70, 32, torch.float32)[:3])


def test_fixed_tiles_run_one_config_where_autotuning_is_on(monkeypatch):
    """kernels.fix_tiles (deterministic=true) turns the autotuned launches into the one-config ones."""
    q = qkv(1, 1, 8, 64, torch.float16)[0]
    flags = fa._flags(q, True, 0.0, 0, None)
    monkeypatch.setattr(fa, "AUTOTUNE", True)
    assert fa._autotuned(q) and fa._autotuned(q, flags, backward=True)
    kernels.fix_tiles(True)
    try:
        assert not fa._autotuned(q) and not fa._autotuned(q, flags, backward=True)
    finally:
        kernels.fix_tiles(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_head_dim_128(dtype):
    check_parity(kernels.attention, *qkv(2, 2, 70, 128, dtype))


def test_non_causal():
    check_parity(lambda *a: kernels.attention(*a, causal=False), *qkv(2, 3, 100, 32, torch.float32), causal=False)


# ----------------------------------------------------------------------------- the families' options:
# any head dim, a scale, a sliding window, rotary. Under the interpreter the tiles are 64 x 32
# (forward and backward): T = 70 straddles two query tiles and three key tiles.


def tables(T, R, base=10000.0):
    """Rotary (cos, sin), each (T, R/2) fp32, as the model makes them."""
    angles = torch.arange(T, device=DEVICE).float()[:, None] * base ** (-torch.arange(0, R, 2, device=DEVICE).float() / R)
    return angles.cos(), angles.sin()


def check_options(B, H, T, D, dtype, **kw):
    """check_parity of kernels.attention with the options kw (scale, window, rotary)."""
    check_parity(lambda *a: kernels.attention(*a, **kw), *qkv(B, H, T, D, dtype), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("D", [24, 80, 96])
def test_head_dims_padded_to_a_power_of_two(D, dtype):
    """GPT-NeoX's and Pythia's head dims (80, 96) and a small model's (24): tiles of the next
    power of two, the columns past D masked."""
    check_parity(kernels.attention, *qkv(1, 2, 70, D, dtype))


@pytest.mark.parametrize("D", [8, 160, 256])
def test_head_dims_small_and_past_128(D):
    """The smallest tile width (16) and the two past 128 (GPT-J's 256)."""
    check_parity(kernels.attention, *qkv(1, 2, 20, D, torch.float32))


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_scale(scale):
    """A softmax scale of one's own (GPT-Neo's unscaled scores: 1.0)."""
    check_options(1, 2, 70, 32, torch.float32, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "T, window", [(70, 1), (70, 5), (70, 40), (130, 45), (70, 70), (70, 256)],
    ids=["1", "below-a-tile", "two-tiles", "several-tiles", "T", "past-T"],
)
def test_sliding_window(T, window, dtype):
    """Causal local attention: query i sees keys i - window + 1 .. i. The key tiles wholly
    outside the window are skipped and the ones across its start masked, in the forward and in
    both loops of the backward (a tile skipped wrongly, or not masked, breaks parity)."""
    check_options(1, 1 if T > 100 else 2, T, 32, dtype, window=window)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "interleaved"])
@pytest.mark.parametrize("D, R", [(32, 32), (80, 20), (24, 8)], ids=["full", "partial-80", "partial-24"])
def test_rotary(D, R, interleaved, dtype):
    """q and k turned inside the kernels (forward, and the backward's recomputation, dq and dk
    turned back): GPT-NeoX's halves and GPT-J's interleaved pairs, on all of D or its first R."""
    check_options(1, 2, 45, D, dtype, rotary=(*tables(45, R), interleaved))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "interleaved"])
def test_everything_at_once_with_dropout(interleaved, dtype):
    """Head dim 80, partial rotary, a window, a scale and dropout: the backward regenerates the
    forward's mask (the reference is given the mask the kernels drew)."""
    B, H, T, D, p, seed = 1, 2, 70, 80, 0.2, 777
    cos, sin = tables(T, 32)
    options = dict(scale=0.2, window=23, rotary=(cos, sin, interleaved))
    check_parity(
        lambda *a: torch.ops.tritongpt.attention(*a, True, p, seed_tensor(seed, DEVICE), 0.2, 23, cos, sin, interleaved)[0],
        *qkv(B, H, T, D, dtype), dropout_p=p, dropout_mask=dropout_mask(seed, B, H, T, p, DEVICE), **options,
    )


def test_attention_qkv_with_options_equals_attention_of_the_views():
    """attention_qkv with a window, rotary and a scale: exactly attention() of its q, k, v views."""
    B, T, H, D = 1, 40, 2, 24
    x = torch.randn(B, T, 3, H, D, device=DEVICE)
    do = torch.randn(B, T, H, D, device=DEVICE)
    options = dict(scale=0.5, window=9, rotary=(*tables(T, 16), True))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = kernels.attention_qkv(a, **options)
    y.backward(do)
    y_views = kernels.attention(*b.permute(2, 0, 3, 1, 4), **options)
    y_views.backward(do.transpose(1, 2))
    assert torch.equal(y, y_views.transpose(1, 2))
    assert torch.equal(a.grad, b.grad)


def test_autotune_lists_are_pruned_by_head_dim_and_dropout():
    """Each tile is tried only where it compiled without spilling (FWD_TILES, BWD_TILES): all of
    them at GPT-2's head dim 64 without dropout, some at every tile width (BLOCK_D, the head dim
    padded to a power of two) with or without dropout and rotary; fewer with rotary, or at 256."""
    for tuned in (fa._attn_fwd_tuned, fa._attn_bwd_tuned):
        kept = {
            (d, dropout, rotary): tuned.early_config_prune(tuned.configs, {}, BLOCK_D=d, DROPOUT=dropout, ROTARY=rotary)
            for d in (16, 32, 64, 128, 256) for dropout in (False, True) for rotary in (False, True)
        }
        assert kept[(64, False, False)] == tuned.configs
        assert all(configs for (d, _, _), configs in kept.items() if d <= 128 or tuned is fa._attn_fwd_tuned)
        assert len(kept[(128, True, False)]) < len(kept[(128, False, False)]) <= len(kept[(64, False, False)])
        assert len(kept[(128, False, True)]) < len(kept[(128, False, False)])
        assert len(kept[(256, False, False)]) < len(kept[(128, False, False)])
    # the backward at BLOCK_D 256 has no tuned tile: it runs its narrow config, untuned
    q = torch.empty(1, 1, 8, 256, dtype=torch.bfloat16)
    flags = fa._flags(q, True, 0.0, 0, None)
    assert not fa._autotuned(q, flags, backward=True)
    assert fa._one_config(q, flags, fa.SMALL_BWD, fa.FP32_BWD) == fa.NARROW_BWD[256]


@pytest.mark.gpu
@pytest.mark.parametrize("B, T", [(16, 1024), (4, 4096)])
def test_parity_bf16_gpt2_sizes(B, T, monkeypatch):
    """bf16, H=12, D=64, with the autotuned Hopper configs (B=4 at T=4096: the reference's T x T
    fp32 matrices must fit)."""
    monkeypatch.setattr(fa, "AUTOTUNE", True)
    check_parity(kernels.attention, *qkv(B, 12, T, 64, torch.bfloat16))


def test_autocast_runs_in_autocast_dtype():
    """fp32 q, k, v under autocast are cast as SDPA's would be (bf16 runs in fp32 on the interpreter)."""
    q, k, v, do = qkv(2, 2, 33, 32, torch.float32)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = kernels.attention(q, k, v)
    assert out.dtype == torch.bfloat16
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    assert_parity(out, reference.attention(*low, upcast=True), reference.attention(*low), "o")


def test_c_attn_view_equals_contiguous():
    """The (B, H, T, D) views of c_attn's (B, T, 3 * C) output, strided, give exactly the result
    (and gradients) of contiguous copies."""
    B, T, H, D = 2, 37, 3, 32
    x = torch.randn(B, T, 3 * H * D, device=DEVICE, requires_grad=True)
    q, k, v = x.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each, stride of T = 3 * C
    assert not q.is_contiguous()
    do = torch.randn(B, H, T, D, device=DEVICE)
    out = kernels.attention(q, k, v, causal=True)
    out.backward(do)
    dx = x.grad.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)

    got = fwd_bwd(kernels.attention, q.contiguous(), k.contiguous(), v.contiguous(), do)
    assert torch.equal(out, got[0])
    for name, a, b in zip(("dq", "dk", "dv"), dx, got[1:], strict=True):
        assert torch.equal(a, b), f"{name} differs between strided and contiguous inputs"


def test_attention_qkv_equals_attention_of_the_views():
    """attention_qkv of c_attn's (B, T, 3, H, D) output equals attention of its q, k, v views,
    exactly: output (as (B, T, H, D), contiguous) and the one gradient of the projection."""
    B, T, H, D = 2, 37, 3, 32
    x = torch.randn(B, T, 3, H, D, device=DEVICE)
    do = torch.randn(B, T, H, D, device=DEVICE)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = kernels.attention_qkv(a)
    assert y.shape == (B, T, H, D) and y.is_contiguous()
    y.backward(do)
    q, k, v = b.permute(2, 0, 3, 1, 4)
    y_views = kernels.attention(q, k, v)
    y_views.backward(do.transpose(1, 2))
    assert torch.equal(y, y_views.transpose(1, 2))
    assert torch.equal(a.grad, b.grad)
    assert a.grad.is_contiguous()


def test_torch_compile_sees_one_node_per_op():
    """Under torch.compile each op is one node of the graph, not traced into and no graph break
    (fullgraph), with dropout drawn inside the graph: same output and gradients as eager."""
    q, k, v, do = qkv(2, 2, 40, 32, torch.float32)
    fn = lambda *a: kernels.attention(*a, dropout_p=0.1) * 2  # noqa: E731
    assert torch._dynamo.explain(fn)(q, k, v).graph_break_count == 0
    torch.manual_seed(3)
    eager = fwd_bwd(fn, q, k, v, do)
    torch.manual_seed(3)
    compiled = fwd_bwd(torch.compile(fn, backend="aot_eager", fullgraph=True), q, k, v, do)
    for name, a, b in zip(("o", "dq", "dk", "dv"), eager, compiled, strict=True):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- dropout


def test_dropout_zero_is_exactly_no_dropout():
    """p = 0 draws no seed (torch's generator is untouched) and gives the dropout-free result."""
    q, k, v, do = qkv(2, 2, 50, 32, torch.float32)
    base = fwd_bwd(fa.attention, q, k, v, do)
    state = torch.get_rng_state()
    zero = fwd_bwd(lambda *a: fa.attention(*a, dropout_p=0.0), q, k, v, do)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(base, zero, strict=True):
        assert torch.equal(a, b)
    assert_parity(zero[0], reference.attention(q, k, v, upcast=True), reference.attention(q, k, v), "o")


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_statistics(p):
    """Kept fraction 1 - p within 5 standard deviations, heads drawing different masks, a new
    seed a new mask."""
    B, H, T = 2, 2, 100
    mask = dropout_mask(1234, B, H, T, p, DEVICE)  # (B, H, T, T) bool
    n = mask.numel()
    kept = mask.float().mean().item()
    assert abs(kept - (1 - p)) <= 5 * (p * (1 - p) / n) ** 0.5, f"kept {kept:.4f}, expected {1 - p}"
    flat = mask.view(B * H, T * T)
    for i in range(1, B * H):
        assert not torch.equal(flat[0], flat[i]), f"head {i} drew head 0's mask"
    assert not torch.equal(mask, dropout_mask(1235, B, H, T, p, DEVICE))
    assert torch.equal(mask, dropout_mask(1234, B, H, T, p, DEVICE))


def test_dropout_same_seed_same_output():
    q, k, v, _ = qkv(2, 2, 40, 32, torch.float32)
    torch.manual_seed(7)
    a = kernels.attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(7)
    b = kernels.attention(q, k, v, dropout_p=0.3)
    c = kernels.attention(q, k, v, dropout_p=0.3)  # the generator moved on: a new mask
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, kernels.attention(q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("T, D", [(17, 32), (100, 64)])
def test_dropout_matches_reference_with_kernel_mask(T, D, dtype):
    """Output and dq, dk, dv equal the reference's computed with the mask the kernel drew."""
    p, seed, (B, H) = 0.2, 4321, (2, 2)
    mask = dropout_mask(seed, B, H, T, p, DEVICE)
    check_parity(
        lambda *a: torch.ops.tritongpt.attention(*a, True, p, seed_tensor(seed, DEVICE))[0], *qkv(B, H, T, D, dtype),
        dropout_p=p, dropout_mask=mask,
    )


def test_dropout_seed_tensor_fixes_the_mask():
    """The seed is a device tensor the kernels read: the same seed tensor gives the same mask
    (and output) twice, another seed another mask; attention_qkv draws from it as attention does,
    and its gradient is the reference's with that mask."""
    B, H, T, D, p = 2, 2, 33, 32, 0.25
    seed = seed_tensor(99, DEVICE)
    assert torch.equal(dropout_mask(seed, B, H, T, p, DEVICE), dropout_mask(seed, B, H, T, p, DEVICE))
    assert not torch.equal(dropout_mask(seed, B, H, T, p, DEVICE), dropout_mask(seed + 1, B, H, T, p, DEVICE))
    x = torch.randn(B, T, 3, H, D, device=DEVICE)
    do = torch.randn(B, T, H, D, device=DEVICE)
    run = lambda s: torch.ops.tritongpt.attention_qkv(x, True, p, s)[0]  # noqa: E731
    assert torch.equal(run(seed), run(seed)) and not torch.equal(run(seed), run(seed + 1))
    mask = dropout_mask(seed, B, H, T, p, DEVICE)
    xs = x.clone().requires_grad_()
    y = torch.ops.tritongpt.attention_qkv(xs, True, p, seed)[0]
    y.backward(do)
    got = [y.transpose(1, 2)] + list(xs.grad.permute(2, 0, 3, 1, 4))
    views = [t.contiguous() for t in x.permute(2, 0, 3, 1, 4)]
    ref = fwd_bwd(lambda *a: reference.attention(*a, upcast=True, dropout_p=p, dropout_mask=mask), *views, do.transpose(1, 2))
    for name, g, r in zip(("o", "dq", "dk", "dv"), got, ref, strict=True):
        assert_parity(g, r, r, name)


def test_model_applies_attention_dropout_in_training_only():
    """The triton backend with dropout > 0 (and every other dropout off): training-mode logits
    change from draw to draw and repeat under one seed; eval-mode logits equal the torch backend's."""
    cfg = dict(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=64, dropout=0.2)
    torch.manual_seed(1)
    a = GPT(GPTConfig(**cfg, backend="torch")).to(DEVICE)
    b = GPT(GPTConfig(**cfg, backend="triton")).to(DEVICE)
    b.load_state_dict(a.state_dict())
    for m in b.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # only the attention's own dropout is left
    assert all(blk.attn.dropout == 0.2 for blk in b.transformer.h)
    idx = torch.randint(0, 97, (2, 20), device=DEVICE)
    with torch.no_grad():
        b.train()
        torch.manual_seed(5)
        first = b(idx)
        torch.manual_seed(5)
        again = b(idx)
        other = b(idx)
        b.eval()
        a.eval()
        assert torch.equal(b(idx), b(idx))
        assert_parity(b(idx), a(idx), a(idx), "eval logits")
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.allclose(first, b(idx), atol=1e-3)


# ----------------------------------------------------------------------------- errors


def _bad(**kw):
    q, k, v, _ = qkv(1, 2, 8, 32, torch.float32)
    args = dict(q=q, k=k, v=v)
    args.update(kw)
    return args


@pytest.mark.parametrize(
    "args, match",
    [
        (_bad(q=torch.randn(1, 2, 8, 264), k=torch.randn(1, 2, 8, 264), v=torch.randn(1, 2, 8, 264)), "head dim 264"),
        (_bad(k=torch.randn(1, 2, 9, 32)), "one shape"),
        (_bad(v=torch.randn(2, 8, 32)), r"v must be a \(B, H, T, D\)"),
        (_bad(k=torch.randn(1, 2, 8, 32, dtype=torch.float16)), "share one of"),
        (_bad(q=torch.ones(1, 2, 8, 32, dtype=torch.int64)), "share one of"),
        (_bad(k=torch.randn(1, 2, 8, 32, device="meta")), "one device"),
        (_bad(q=torch.randn(1, 2, 0, 32), k=torch.randn(1, 2, 0, 32), v=torch.randn(1, 2, 0, 32)), "T must be >= 1"),
    ],
)
def test_errors_name_the_problem(args, match):
    args = {n: t.to(DEVICE) if t.device.type != "meta" else t for n, t in args.items()}
    with pytest.raises(ValueError, match=match):
        kernels.attention(args["q"], args["k"], args["v"])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(window=-1), "window must be an int >= 0"),
        (dict(window=4, causal=False), "window needs causal=True"),
        (dict(rotary=(torch.ones(8, 4), torch.ones(8, 3), False)), "cos and sin must be .* of one shape"),
        (dict(rotary=(torch.ones(7, 4), torch.ones(7, 4), False)), r"must be \(T, R/2\) = \(8, 1..16\)"),
        (dict(rotary=(torch.ones(8, 17), torch.ones(8, 17), False)), r"R the rotated dims, even, at most D"),
        (dict(rotary=(torch.ones(8, 4), False)), r"rotary must be None or \(cos, sin, interleaved\)"),
    ],
    ids=["negative-window", "window-not-causal", "cos-sin-mismatch", "tables-not-T", "rotary-past-D", "rotary-not-a-triple"],
)
def test_option_errors(kw, match):
    if "rotary" in kw and len(kw["rotary"]) == 3:
        cos, sin, inter = kw["rotary"]
        kw = dict(kw, rotary=(cos.to(DEVICE), sin.to(DEVICE), inter))
    q = torch.randn(1, 2, 8, 32, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        kernels.attention(q, q, q, **kw)


@pytest.mark.parametrize("p, T, match", [(1.0, 8, r"dropout_p must be in \[0, 1\)"), (0.1, 46341, "T up to 46340")])
def test_dropout_errors(p, T, match):
    q = torch.randn(1, 1, T, 32, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        kernels.attention(q, q, q, dropout_p=p)
