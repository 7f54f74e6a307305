"""The speedrun's model options (nanochat's GPT), each done inside our kernels: RMSNorm with or
without a gain (and fused behind the residual add), the ReLU^2 MLP, the MLP width, QK-norm in the
attention kernels, the logit soft-cap in the losses and the logits, zero-initialized output
projections. The ops against kernels.reference by the parity rule, forward and every gradient;
GPTConfig's checks; the model on both backends; Hugging Face widths; a trainer run."""

import pytest
import torch

from tritongpt import kernels
from attention_mask import dropout_mask, seed_tensor
from conftest import DEVICE, DTYPES, assert_models_agree, assert_parity, make_char_dataset, tiny
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.gpt.flops import matmul_params, num_params
from tritongpt.kernels import flash_attention as fa
from tritongpt.kernels import reference
from tritongpt.train import checkpoint
from tritongpt.train.config import load_config
from tritongpt.train.loop import train

V = 101  # vocabulary of the small models
NANOCHAT = dict(position_embedding="rotary", bias=False, tie_embeddings=False, norm="rms", norm_gain=False,
                mlp_activation="relu2", qk_norm=True, logit_softcap=15.0, zero_init_proj=True)


def run(fn, inputs, grad_out):
    """fn(*inputs) and the gradients of <its output, grad_out> wrt each input that is a float tensor
    (None inputs pass through)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None and t.is_floating_point() else t for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    grads = grad_out if isinstance(grad_out, tuple) else (grad_out,)
    torch.autograd.backward(outs, grads)
    return list(outs) + [t.grad for t in leaves if t is not None and t.is_floating_point()]


def check(op, ref, inputs, grad_out, names):
    """The parity rule for op's outputs and gradients: against ref in fp32 and in the inputs' dtype."""
    got = run(op, inputs, grad_out)
    want = run(lambda *a: ref(*a, upcast=True), inputs, grad_out)
    low = run(lambda *a: ref(*a, upcast=False), inputs, grad_out)
    assert len(got) == len(want) == len(names)
    for name, g, r, p in zip(names, got, want, low, strict=True):
        assert g.dtype == r.dtype, f"{name}: dtype {g.dtype} != {r.dtype}"
        assert_parity(g, r, p, name)


# ----------------------------------------------------------------------------- RMSNorm


def _norm_inputs(shape, dtype, gain, wdtype=None):
    x = (torch.randn(shape, device=DEVICE) * 2 + 0.5).to(dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], device=DEVICE)).to(wdtype or dtype) if gain else None
    return x, w


@pytest.mark.parametrize("gain", [True, False], ids=["gain", "no-gain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 127), (3, 768), (127, 100), (2, 5, 48)])
def test_rms_norm_parity(shape, dtype, gain):
    x, w = _norm_inputs(shape, dtype, gain)
    dy = torch.randn(shape, device=DEVICE).to(dtype)
    names = ["y", "dx"] + (["dweight"] if gain else [])
    check(lambda x, w: kernels.rms_norm(x, w, 1e-5), lambda x, w, upcast: reference.rms_norm(x, w, 1e-5, upcast),
          (x, w), dy, names)


@pytest.mark.parametrize("gain", [True, False], ids=["gain", "no-gain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_rms_norm_parity(dtype, gain):
    """The residual add fused in front: s = x + y and rms_norm(s), and the gradients of both."""
    x, w = _norm_inputs((37, 96), dtype, gain)
    y = torch.randn(37, 96, device=DEVICE).to(dtype)
    grads = (torch.randn(37, 96, device=DEVICE).to(dtype), torch.randn(37, 96, device=DEVICE).to(dtype))
    names = ["s", "out", "dx", "dy"] + (["dweight"] if gain else [])
    check(lambda x, y, w: kernels.add_rms_norm(x, y, w), lambda x, y, w, upcast: reference.add_rms_norm(x, y, w, 1e-5, upcast),
          (x, y, w), grads, names)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=str)
def test_add_rms_norm_under_autocast(dtype):
    """As the trainer runs it: the fp32 stream plus a low-precision branch, fp32 gain; the output
    in the autocast dtype, each gradient in its input's dtype."""
    x, w = _norm_inputs((9, 64), torch.float32, True)
    y = torch.randn(9, 64, device=DEVICE).to(dtype).requires_grad_()
    x.requires_grad_()
    w.requires_grad_()
    with torch.autocast(DEVICE, dtype=dtype):
        s, out = kernels.add_rms_norm(x, y, w)
    assert (s.dtype, out.dtype) == (torch.float32, dtype)
    (out.float().sum() + s.sum()).backward()
    assert (x.grad.dtype, y.grad.dtype, w.grad.dtype) == (torch.float32, dtype, torch.float32)
    s_ref, out_ref = reference.add_rms_norm(x.detach(), y.detach().float(), w.detach())
    assert_parity(out.float(), out_ref, out_ref.to(dtype).float(), "out")


def test_rms_norm_bad_inputs_name_the_op():
    x = torch.randn(3, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"rms_norm: weight must have shape \(16,\)"):
        kernels.rms_norm(x, torch.ones(8, device=DEVICE))
    with pytest.raises(ValueError, match=r"add_rms_norm: y must have x's shape"):
        kernels.add_rms_norm(x, x[:, :8])


# ----------------------------------------------------------------------------- ReLU^2


def _mlp_inputs(M, K, N, dtype, bias=True, scale=1.0):
    x = (torch.randn(M, K, device=DEVICE) * scale).to(dtype)
    w = (torch.randn(N, K, device=DEVICE) / K**0.5).to(dtype)
    b = (torch.randn(N, device=DEVICE) * 0.5).to(dtype) if bias else None
    return x, w, b, torch.randn(M, N, device=DEVICE).to(dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (3, 1000, 127), (127, 127, 127), (67, 64, 80)])
def test_relu2_parity(M, K, N, dtype, bias):
    x, w, b, dy = _mlp_inputs(M, K, N, dtype, bias, scale=8.0 if M == 67 else 1.0)  # |h| up to ~20 at M = 67
    check(lambda *a: kernels.linear_act(*a, activation="relu2"),
          lambda *a, upcast: reference.linear_act(*a, activation="relu2", upcast=upcast),
          (x, w, b), dy, ["y", "dx", "dW"] + (["db"] if bias else []))


def test_linear_gelu_is_linear_act_of_its_gelu():
    x, w, b, _ = _mlp_inputs(20, 32, 48, torch.float32)
    assert torch.equal(kernels.linear_gelu(x, w, b), kernels.linear_act(x, w, b, "gelu_tanh"))
    assert torch.equal(kernels.linear_gelu(x, w, b, approximate="none"), kernels.linear_act(x, w, b, "gelu_exact"))
    y = kernels.linear_act(x, w, b, "relu2")
    assert torch.equal(y == 0, x @ w.t() + b <= 0)  # exactly zero where the pre-activation is not positive


# ----------------------------------------------------------------------------- the logit soft-cap


def _loss_inputs(M, V_, dtype, scale=20.0):
    logits = (torch.randn(M, V_, device=DEVICE) * scale).to(dtype)
    targets = torch.randint(0, V_ - 5, (M,), device=DEVICE)
    targets[:3] = -1
    return logits, targets


@pytest.mark.parametrize("cap", [3.0, 15.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_softcap_parity(dtype, cap):
    """Logits up to ~60 against a cap of 3 or 15 (the tanh saturates), 5 padding columns."""
    logits, targets = _loss_inputs(37, 50, dtype)
    check(lambda z: kernels.cross_entropy(z, targets, vocab_size=45, softcap=cap),
          lambda z, upcast: reference.cross_entropy(z, targets, vocab_size=45, softcap=cap, upcast=upcast),
          (logits,), torch.tensor(1.0, device=DEVICE), ["loss", "dlogits"])


@pytest.mark.parametrize("cap", [3.0, 15.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_cross_entropy_softcap_parity(dtype, cap):
    x = (torch.randn(2, 19, 32, device=DEVICE) * 3).to(dtype)
    w = torch.randn(64, 32, device=DEVICE).to(dtype)
    targets = torch.randint(0, 50, (2, 19), device=DEVICE)
    targets[0, :4] = -1
    check(lambda x, w: kernels.linear_cross_entropy(x, w, targets, vocab_size=50, softcap=cap),
          lambda x, w, upcast: reference.linear_cross_entropy(x, w, targets, vocab_size=50, softcap=cap, upcast=upcast),
          (x, w), torch.tensor(1.0, device=DEVICE), ["loss", "dx", "dW"])


def test_softcap_zero_is_no_cap_and_bad_caps_are_refused():
    logits, targets = _loss_inputs(9, 30, torch.float32)
    assert torch.equal(kernels.cross_entropy(logits, targets, softcap=0.0), kernels.cross_entropy(logits, targets))
    for fn in (lambda: kernels.cross_entropy(logits, targets, softcap=-1.0),
               lambda: kernels.linear_cross_entropy(logits, torch.randn(7, 30, device=DEVICE), targets, softcap=-1.0)):
        with pytest.raises(ValueError, match="softcap must be 0 .* or a positive number"):
            fn()


# ----------------------------------------------------------------------------- QK-norm


@pytest.fixture
def one_attention_config(monkeypatch):
    monkeypatch.setattr(fa, "AUTOTUNE", False)


def tables(T, R, base=10000.0):
    angles = torch.arange(T, device=DEVICE).float()[:, None] * base ** (-torch.arange(0, R, 2, device=DEVICE).float() / R)
    return angles.cos(), angles.sin()


def check_attention(T, D, dtype, **kw):
    """The parity rule on o, dq, dk, dv with qk_norm and the options kw; q, k at scales far from 1,
    so that the norm matters."""
    q, k, v, do = (torch.randn(2, 2, T, D, device=DEVICE) * s for s in (4.0, 0.3, 1.0, 1.0))
    q, k, v, do = (t.to(dtype) for t in (q, k, v, do))
    check(lambda *a: kernels.attention(*a, qk_norm=True, **kw),
          lambda *a, upcast: reference.attention(*a, qk_norm=True, upcast=upcast, **kw),
          (q, k, v), do, ["o", "dq", "dk", "dv"])


@pytest.mark.usefixtures("one_attention_config")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T, D", [(1, 32), (70, 32), (45, 24), (33, 64)])
def test_qk_norm_parity(T, D, dtype):
    check_attention(T, D, dtype)


@pytest.mark.usefixtures("one_attention_config")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D, R, interleaved", [(32, 32, False), (24, 8, False), (32, 16, True)])
def test_qk_norm_with_rotary(D, R, interleaved, dtype):
    """The norm before the turn (the reference's order); a turn keeps each row's length."""
    check_attention(45, D, dtype, rotary=(*tables(45, R), interleaved))


@pytest.mark.usefixtures("one_attention_config")
def test_qk_norm_with_window_scale_rotary_and_dropout():
    """Every option at once; the reference takes the kernels' own dropout mask."""
    T, D, p = 70, 24, 0.2
    seed = seed_tensor(11, DEVICE)
    mask = dropout_mask(seed, 2, 2, T, p, DEVICE)
    options = dict(scale=0.3, window=23, rotary=(*tables(T, 8), True))
    q, k, v, do = (torch.randn(2, 2, T, D, device=DEVICE) * s for s in (3.0, 0.5, 1.0, 1.0))
    got = run(lambda *a: torch.ops.tritongpt.attention(*a, True, p, seed, options["scale"], options["window"],
                                                       *options["rotary"], True)[0], (q, k, v), do)
    want = run(lambda *a: reference.attention(*a, dropout_p=p, dropout_mask=mask, upcast=True, qk_norm=True, **options),
               (q, k, v), do)
    for name, g, r in zip(["o", "dq", "dk", "dv"], got, want, strict=True):
        assert_parity(g, r, r, name)


@pytest.mark.usefixtures("one_attention_config")
def test_qk_norm_attention_qkv_equals_attention_of_the_views():
    qkv = torch.randn(2, 37, 3, 2, 24, device=DEVICE) * 2
    rotary = (*tables(37, 8), False)
    do = torch.randn(2, 37, 2, 24, device=DEVICE)
    a = run(lambda t: kernels.attention_qkv(t, rotary=rotary, qk_norm=True), (qkv,), do)
    b = run(lambda t: kernels.attention(*t.permute(2, 0, 3, 1, 4), rotary=rotary, qk_norm=True).transpose(1, 2),
            (qkv,), do)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_qk_norm_reference_is_rms_over_the_head():
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64) * 7
    y = reference.qk_rms_norm(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(2, 3, 5, dtype=torch.float64), atol=1e-6)
    cos, sin = (t.double() for t in tables(5, 16))
    assert torch.allclose(reference.rotary(reference.qk_rms_norm(x.transpose(1, 2)), cos, sin),
                          reference.qk_rms_norm(reference.rotary(x.transpose(1, 2), cos, sin)))


# ----------------------------------------------------------------------------- GPTConfig


def small(**kw):
    cfg = dict(block_size=40, vocab_size=V, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    cfg.update(kw)
    return GPTConfig(**cfg)


def test_defaults_stay_gpt2():
    cfg = GPTConfig()
    assert (cfg.norm, cfg.norm_gain, cfg.mlp_activation, cfg.mlp_hidden, cfg.qk_norm, cfg.logit_softcap,
            cfg.zero_init_proj) == ("layer", True, "gelu", 0, False, 0.0, False)
    assert cfg.mlp_width == 4 * 768 and cfg.activation == "gelu_tanh"
    assert GPTConfig(gelu="exact").activation == "gelu_exact"


@pytest.mark.parametrize("kw, field", [
    (dict(norm="batch"), "norm"), (dict(norm_gain="yes"), "norm_gain"), (dict(mlp_activation="swiglu"), "mlp_activation"),
    (dict(mlp_hidden=-1), "mlp_hidden"), (dict(mlp_hidden=2.5), "mlp_hidden"), (dict(qk_norm=1), "qk_norm"),
    (dict(logit_softcap=-15.0), "logit_softcap"), (dict(logit_softcap="15"), "logit_softcap"),
    (dict(zero_init_proj=None), "zero_init_proj"),
])
def test_bad_options_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"GPTConfig.{field}"):
        small(**kw)


def test_nanochat_combination_is_valid_and_has_its_parameters():
    model = GPT(small(**NANOCHAT))
    names = set(model.state_dict())
    assert not any(n.endswith(".bias") for n in names)  # no biases, not even in the norms
    assert not any(".ln_" in n or "ln_f" in n for n in names)  # norms without a gain hold nothing
    assert "transformer.wpe.weight" not in names and model.lm_head.weight is not model.transformer.wte.weight
    assert all(not p.any() for n, p in model.named_parameters() if n.endswith("c_proj.weight"))
    assert model.transformer.h[0].mlp.c_fc.weight.std() > 0.01  # the rest keeps GPT-2's init


@pytest.mark.parametrize("options", [dict(norm="rms"), dict(norm="rms", norm_gain=False, bias=False),
                                     dict(norm_gain=False), dict(mlp_hidden=50, mlp_activation="relu2"),
                                     dict(NANOCHAT, n_head=4, n_embd=96)])
def test_param_counts(options):
    cfg = small(**options)
    model = GPT(cfg)
    assert num_params(cfg) == sum(p.numel() for p in model.parameters())
    assert matmul_params(cfg) == sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------- the model on both backends


def randomize(model, seed=0):
    """Every parameter random (zero-initialized projections included): gains around 1, the rest around 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + 1.0 if ".ln_" in name or "ln_f" in name else noise)
    return model


BOTH_BACKENDS = {
    "rms_gain_and_bias": dict(norm="rms"),
    "rms_no_gain_untied": dict(norm="rms", norm_gain=False, tie_embeddings=False),
    "layer_norm_no_gain": dict(norm_gain=False),
    "relu2_narrow_mlp": dict(mlp_activation="relu2", mlp_hidden=50),
    "wide_mlp_exact_gelu": dict(mlp_hidden=200, gelu="exact"),
    "qk_norm_learned_positions": dict(qk_norm=True),
    "qk_norm_rotary_pairs_hd24": dict(n_head=4, n_embd=96, qk_norm=True, position_embedding="rotary",
                                      rotary_fraction=1 / 3, rotary_style="pairs"),
    "softcap": dict(logit_softcap=3.0),
    "softcap_head_bias": dict(logit_softcap=3.0, tie_embeddings=False, lm_head_bias=True),
    "nanochat": NANOCHAT,
}


@pytest.mark.parametrize("options", list(BOTH_BACKENDS))
def test_backends_agree(options):
    kw = BOTH_BACKENDS[options]
    torch.manual_seed(1)
    a = randomize(GPT(small(backend="torch", **kw))).to(DEVICE)
    b = GPT(small(backend="triton", **kw)).to(DEVICE)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, V, (2, 19), device=DEVICE)
    targets = torch.randint(0, V, (2, 19), device=DEVICE)
    targets[1, :3] = -1
    assert_models_agree(a, b, idx, targets)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_logits_are_capped_and_the_loss_is_theirs(backend):
    model = randomize(GPT(small(logit_softcap=2.0, backend=backend))).to(DEVICE)
    with torch.no_grad():
        for p in model.lm_head.parameters():
            p.mul_(50)  # raw logits far past the cap
        idx = torch.randint(0, V, (2, 11), device=DEVICE)
        logits = model(idx)
        raw = model.lm_head(model._hidden(idx))
        assert raw.abs().max() > 10 and logits.abs().max() <= 2.0
        torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
        loss = model(idx, idx)
        torch.testing.assert_close(loss, reference.cross_entropy(logits, idx))


def test_generation_with_cache_equals_without():
    """QK-norm in the cached path too: the cache holds normalized, turned keys."""
    model = randomize(GPT(small(**NANOCHAT))).eval()
    idx = torch.randint(0, V, (2, 5))
    assert torch.equal(model.generate(idx, 30, temperature=0.0), model.generate(idx, 30, temperature=0.0, use_cache=False))


def test_nanochat_model_trains_from_its_zero_init():
    """The zero projections get gradients at once, the rest from the second step: the loss falls."""
    torch.manual_seed(0)
    model = GPT(small(**NANOCHAT, n_layer=1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, V, (4, 17))
    losses = []
    for _ in range(15):
        loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    assert losses[-1] < losses[0] - 0.3


# ----------------------------------------------------------------------------- Hugging Face


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", ["neox", "gpt2", "gptj", "neo"])
def test_hf_mlp_width_other_than_4x_loads_and_exports(family, tmp_path):
    t = transformers
    torch.manual_seed(0)
    hf = {
        "neox": lambda: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                            num_attention_heads=2, intermediate_size=72,
                                                            max_position_embeddings=40, rotary_pct=0.25)),
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=40,
                                                       n_inner=100)),
        "gptj": lambda: t.GPTJForCausalLM(t.GPTJConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=2, rotary_dim=4,
                                                       n_positions=40, n_inner=56)),
        "neo": lambda: t.GPTNeoForCausalLM(t.GPTNeoConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2,
                                                          attention_types=[[["global", "local"], 1]], window_size=5,
                                                          max_position_embeddings=40, intermediate_size=48)),
    }[family]()
    randomize(hf).eval()
    hf.save_pretrained(tmp_path / "theirs")
    ours = GPT.from_pretrained(str(tmp_path / "theirs")).eval()
    width = ours.transformer.h[0].mlp.c_fc.weight.shape[0]
    assert width == ours.config.mlp_hidden and width != 4 * 32
    idx = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() < 1e-4
        ours.save_pretrained(tmp_path / "ours")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
        assert (ours(idx) - back(idx).logits).abs().max() < 1e-4
    assert GPT.from_pretrained(str(tmp_path / "ours")).config == ours.config


def test_hf_export_refuses_the_speedrun_options(tmp_path):
    model = GPT(small(**NANOCHAT))
    with pytest.raises(ValueError, match="gpt_neox cannot hold this model: norm='rms'.*norm_gain=False.*"
                                         "mlp_activation='relu2'.*qk_norm=True.*logit_softcap=15.0"):
        model.save_pretrained(tmp_path / "x")
    GPT(small(zero_init_proj=True)).save_pretrained(tmp_path / "y")  # only an init: a GPT-2 still


# ----------------------------------------------------------------------------- the trainer


def test_trainer_keys_make_and_resume_a_nanochat_model(tmp_path):
    ds = make_char_dataset(tmp_path / "data" / "fox", "the quick brown fox jumps over the lazy dog.\n" * 200)
    out = str(tmp_path / "out")
    keys = dict(NANOCHAT, mlp_hidden=48)
    args = tiny(ds, out, n_layer=1, max_iters=4, lr_decay_iters=4, eval_interval=2, dropout=0.0, **keys)
    train(load_config(args))
    state = checkpoint.read(f"{out}/ckpt_00000004.pt")
    for key, value in keys.items():
        assert state["model_args"][key] == value and state["config"][key] == value, key
    assert state["model"]["transformer.h.0.mlp.c_fc.weight"].shape == (48, 32)
    train(load_config(tiny(ds, out, n_layer=1, max_iters=6, lr_decay_iters=6, eval_interval=2, init_from="resume")))
    assert checkpoint.read(f"{out}/ckpt_00000006.pt")["model_args"] == state["model_args"]
