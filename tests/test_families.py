"""The other GPT families on the same model: GPT-NeoX (Pythia), GPT-J, GPT-Neo and Cerebras-GPT.

Their reference ops, GPTConfig's options and their checks, the triton backend's refusals of what
its kernels lack yet, both backends on the options it runs, and Hugging Face in and out: small
random models that transformers builds offline, every parameter random (no zero biases), logits
within 1e-4 in fp32 both ways, and greedy decoding with the KV cache equal to transformers'.
"""

import math

import pytest
import torch

from conftest import DEVICE, assert_models_agree
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.gpt.flops import matmul_params, num_params
from tritongpt.kernels import reference

transformers = pytest.importorskip("transformers")

V = 101  # vocabulary of the small models


def tiny(**kw):
    cfg = dict(block_size=40, vocab_size=V, n_layer=2, n_head=4, n_embd=96, dropout=0.0, bias=True)
    cfg.update(kw)
    return GPTConfig(**cfg)


# Our options of each family, on small shapes (head dims 24 and 80 among them).
FAMILY_OPTIONS = {
    "neox": dict(position_embedding="rotary", rotary_fraction=0.25, parallel_residual=True, tie_embeddings=False,
                 gelu="exact"),
    "neox_sequential_hd80": dict(n_head=2, n_embd=160, position_embedding="rotary", rotary_fraction=0.5,
                                 rotary_base=500.0, tie_embeddings=False, gelu="exact"),
    "gptj": dict(position_embedding="rotary", rotary_fraction=1 / 3, rotary_style="pairs", parallel_residual=True,
                 shared_ln=True, tie_embeddings=False, lm_head_bias=True, qkv_bias=False, attn_proj_bias=False),
    "neo": dict(attention_pattern="global,local", window_size=5, scaled_attention=False, qkv_bias=False),
    "cerebras_hd80": dict(n_head=2, n_embd=160, gelu="exact", layer_norm_eps=1e-6),
}


def randomize(model, seed=0):
    """Every parameter random: LayerNorm gains around 1, everything else around 0, biases included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + 1.0 if ("ln" in name or "layernorm" in name or "layer_norm" in name) and name.endswith("weight")
                    else noise)
    return model


# ----------------------------------------------------------------------------- reference ops


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_reference_is_a_complex_rotation(interleaved):
    """Each pair (a, b) of the rotated dims, as the complex a + ib, is multiplied by e^(i angle)."""
    torch.manual_seed(0)
    T, H, D, R = 7, 3, 10, 6
    x = torch.randn(2, T, H, D, dtype=torch.float64)
    angles = torch.randn(T, R // 2, dtype=torch.float64)
    y = reference.rotary(x, angles.cos(), angles.sin(), interleaved)
    idx_a = torch.arange(0, R, 2) if interleaved else torch.arange(R // 2)
    idx_b = idx_a + 1 if interleaved else idx_a + R // 2
    z = torch.complex(x[..., idx_a], x[..., idx_b]) * torch.polar(torch.ones_like(angles), angles)[:, None, :]
    assert torch.allclose(y[..., idx_a], z.real) and torch.allclose(y[..., idx_b], z.imag)
    assert torch.equal(y[..., R:], x[..., R:])
    # norms of the rotated pairs are kept, and upcast gives the input's dtype back
    half = reference.rotary(x.half(), angles.cos().float(), angles.sin().float(), interleaved, upcast=True)
    assert half.dtype == torch.float16


def test_gelu_exact_reference():
    x = torch.randn(1000, dtype=torch.float64) * 3
    want = torch.tensor([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()], dtype=torch.float64)
    assert torch.allclose(reference.gelu(x, "none"), want)
    assert torch.equal(reference.gelu(x, "tanh"), reference.gelu_tanh(x))
    w, b = torch.randn(5, 4), torch.randn(5)
    xs = torch.randn(3, 4)
    assert torch.allclose(reference.linear_gelu(xs, w, b, approximate="none"), reference.gelu_exact(xs @ w.T + b))
    with pytest.raises(ValueError, match="approximate"):
        reference.gelu(x, "erf")


@pytest.mark.parametrize("T, S, window", [(9, 9, 0), (9, 9, 3), (1, 12, 4), (4, 12, 5)])
def test_attention_reference_window_and_scale(T, S, window):
    """Scores times `scale`, each query at position S - T + t sees the keys at positions
    (pos - window, pos], or every position up to its own without a window."""
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, T, 8), torch.randn(2, 3, S, 8), torch.randn(2, 3, S, 8)
    got = reference.attention(q, k, v, scale=0.7, window=window)
    want = torch.empty_like(got)
    for t in range(T):
        pos = S - T + t
        lo = max(0, pos - window + 1) if window else 0
        att = torch.softmax((q[:, :, t : t + 1] @ k[:, :, lo : pos + 1].transpose(-1, -2)) * 0.7, dim=-1)
        want[:, :, t] = (att @ v[:, :, lo : pos + 1])[:, :, 0]
    assert torch.allclose(got, want, atol=1e-6)


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(position_embedding="alibi"), "position_embedding"),
        (dict(position_embedding="rotary", rotary_fraction=0.0), "rotary_fraction"),
        (dict(position_embedding="rotary", rotary_fraction=0.05), "rotary_fraction"),  # round(24 * .05) = 1: odd
        (dict(rotary_base=1.0), "rotary_base"),
        (dict(rotary_style="spiral"), "rotary_style"),
        (dict(shared_ln=True), "shared_ln"),
        (dict(gelu="relu"), "gelu"),
        (dict(attention_pattern="global,sliding"), "attention_pattern"),
        (dict(attention_pattern="global,local"), "window_size"),
        (dict(window_size=4), "window_size"),
        (dict(n_embd=1024, n_head=2), "n_head"),  # head dim 512
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(tie_embeddings="no"), "tie_embeddings"),
    ],
)
def test_bad_family_options_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        tiny(**kw)


def test_gpt2_stays_the_default():
    cfg = GPTConfig()
    assert (cfg.position_embedding, cfg.gelu, cfg.tie_embeddings, cfg.parallel_residual, cfg.window_size) == (
        "learned", "tanh", True, False, 0)
    model = GPT(tiny())
    names = set(model.state_dict())
    assert "transformer.wpe.weight" in names and "lm_head.bias" not in names
    assert model.lm_head.weight is model.transformer.wte.weight


def test_parameters_of_each_family():
    neox = GPT(tiny(**FAMILY_OPTIONS["neox"]))
    names = set(neox.state_dict())
    assert "transformer.wpe.weight" not in names and "transformer.h.1.ln_2.weight" in names
    assert neox.lm_head.weight is not neox.transformer.wte.weight
    gptj = GPT(tiny(**FAMILY_OPTIONS["gptj"]))
    names = set(gptj.state_dict())
    assert "lm_head.bias" in names and "transformer.h.0.ln_2.weight" not in names
    assert "transformer.h.0.attn.c_attn.bias" not in names and "transformer.h.0.attn.c_proj.bias" not in names
    assert "transformer.h.0.mlp.c_fc.bias" in names
    neo = GPT(tiny(**FAMILY_OPTIONS["neo"]))
    assert [b.attn.window for b in neo.transformer.h] == [0, 5]
    assert "transformer.h.0.attn.c_attn.bias" not in neo.state_dict()
    assert "transformer.h.0.attn.c_proj.bias" in neo.state_dict()
    assert GPT(tiny(**FAMILY_OPTIONS["neox"])).config.rotary_dim == 6


@pytest.mark.parametrize("family", list(FAMILY_OPTIONS))
def test_param_counts(family):
    """num_params counts every parameter (an untied head beside the embedding); matmul_params the
    Linear weights, the LM head once whether it is tied or not."""
    cfg = tiny(**FAMILY_OPTIONS[family])
    model = GPT(cfg)
    assert num_params(cfg) == sum(p.numel() for p in model.parameters())
    assert matmul_params(cfg) == sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------- backends


# the options the triton backend runs, each against the torch backend: parallel residual (two
# LayerNorms or one), untied head with a bias, per-projection biases, another epsilon, the exact
# GELU; rotary (GPT-NeoX's halves, GPT-J's interleaved pairs, all of the head or part of it),
# GPT-Neo's window and unscaled scores, head dims that are not a power of two (24, 80)
TRITON_RUNS = {
    "rotary_halves_partial_hd24": dict(n_head=4, n_embd=96, position_embedding="rotary", rotary_fraction=0.25),
    "rotary_halves_full": dict(position_embedding="rotary", rotary_base=500.0),
    "rotary_interleaved_partial_hd80": dict(n_head=1, n_embd=80, position_embedding="rotary", rotary_fraction=0.25,
                                            rotary_style="pairs", parallel_residual=True, shared_ln=True),
    "window_unscaled": dict(attention_pattern="global,local", window_size=5, scaled_attention=False, qkv_bias=False),
    "window_below_a_tile_and_unscaled_hd24": dict(n_head=4, n_embd=96, attention_pattern="local", window_size=3,
                                                  scaled_attention=False),
    "parallel_untied": dict(parallel_residual=True, tie_embeddings=False, layer_norm_eps=1e-6),
    "parallel_shared_ln_head_bias": dict(parallel_residual=True, shared_ln=True, tie_embeddings=False, lm_head_bias=True,
                                         qkv_bias=False, attn_proj_bias=False),
    "no_qkv_bias": dict(qkv_bias=False),
    "exact_gelu": dict(gelu="exact", layer_norm_eps=1e-6),
}


@pytest.mark.parametrize("options", list(TRITON_RUNS))
def test_backends_agree_on_family_options(options):
    kw = {**dict(n_head=2, n_embd=32), **TRITON_RUNS[options]}
    torch.manual_seed(1)
    a = randomize(GPT(tiny(backend="torch", **kw))).to(DEVICE)
    b = GPT(tiny(backend="triton", **kw)).to(DEVICE)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, V, (2, 19), device=DEVICE)
    targets = torch.randint(0, V, (2, 19), device=DEVICE)
    targets[1, :3] = -1
    assert_models_agree(a, b, idx, targets)


@pytest.mark.parametrize("family", list(FAMILY_OPTIONS))
def test_generation_with_cache_equals_without(family):
    """Rotary positions continue after the cache; a local window sees the same keys either way."""
    model = randomize(GPT(tiny(**FAMILY_OPTIONS[family]))).eval()
    idx = torch.randint(0, V, (2, 5))
    a = model.generate(idx, 30, temperature=0.0, use_cache=True)
    b = model.generate(idx, 30, temperature=0.0, use_cache=False)
    assert torch.equal(a, b)


def test_family_model_trains():
    """A few steps of AdamW lower the loss of every family's options (gradients reach all weights)."""
    for family, options in FAMILY_OPTIONS.items():
        torch.manual_seed(0)
        model = GPT(tiny(**options, n_layer=1))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        data = torch.randint(0, V, (4, 17))
        first = None
        for _ in range(15):
            loss = model(data[:, :-1], data[:, 1:])
            opt.zero_grad()
            loss.backward()
            assert all(p.grad is not None for p in model.parameters()), family
            opt.step()
            first = first if first is not None else loss.item()
        assert loss.item() < first - 0.3, family


# ----------------------------------------------------------------------------- Hugging Face


def _hf(family, **kw):
    """A small random transformers model of `family` (config keywords in kw override)."""
    t = transformers
    builders = {
        "neox": lambda: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**{**dict(
            vocab_size=V, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384,
            max_position_embeddings=40, rotary_pct=0.25), **kw})),
        "neox_sequential_hd80": lambda: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**{**dict(
            vocab_size=V, hidden_size=160, num_hidden_layers=2, num_attention_heads=2, intermediate_size=640,
            max_position_embeddings=40, rotary_pct=0.5, rotary_emb_base=500, use_parallel_residual=False), **kw})),
        "gptj": lambda: t.GPTJForCausalLM(t.GPTJConfig(**{**dict(
            vocab_size=V, n_embd=96, n_layer=2, n_head=4, rotary_dim=8, n_positions=40), **kw})),
        "gptj_hd80": lambda: t.GPTJForCausalLM(t.GPTJConfig(**{**dict(
            vocab_size=V, n_embd=160, n_layer=2, n_head=2, rotary_dim=24, n_positions=40), **kw})),
        "neo": lambda: t.GPTNeoForCausalLM(t.GPTNeoConfig(**{**dict(
            vocab_size=V, hidden_size=96, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
            window_size=5, max_position_embeddings=40), **kw})),
        "cerebras_hd80": lambda: t.GPT2LMHeadModel(t.GPT2Config(**{**dict(
            vocab_size=V, n_embd=160, n_layer=2, n_head=2, n_positions=40, activation_function="gelu"), **kw})),
    }
    torch.manual_seed(0)
    return randomize(builders[family]()).eval()


HF_TYPES = {"neox": "GPTNeoXForCausalLM", "neox_sequential_hd80": "GPTNeoXForCausalLM", "gptj": "GPTJForCausalLM",
            "gptj_hd80": "GPTJForCausalLM", "neo": "GPTNeoForCausalLM", "cerebras_hd80": "GPT2LMHeadModel"}


def _max_diff(ours, hf, idx):
    with torch.no_grad():
        return (ours(idx) - hf(idx).logits).abs().max().item()


@pytest.mark.parametrize("family", list(HF_TYPES))
def test_hf_family_both_ways(family, tmp_path):
    """Ours from theirs within 1e-4; ours written back is the same family, loads in transformers and
    gives the same logits; greedy decoding with and without the cache equals transformers'."""
    hf = _hf(family)
    hf.save_pretrained(tmp_path / "theirs")
    ours = GPT.from_pretrained(str(tmp_path / "theirs")).eval()
    idx = torch.randint(0, V, (2, 40))
    assert _max_diff(ours, hf, idx) < 1e-4

    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == HF_TYPES[family]
    assert _max_diff(ours, back, idx) < 1e-4
    again = GPT.from_pretrained(str(tmp_path / "ours"))
    assert again.config == ours.config
    for k, v in ours.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k

    prompt = torch.randint(0, V, (1, 7))
    hf.generation_config.eos_token_id = None  # generate all 25 tokens, as ours does
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=25, do_sample=False,
                      pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 25, temperature=0.0), ref)
    assert torch.equal(ours.generate(prompt, 25, temperature=0.0, use_cache=False), ref)


@pytest.mark.parametrize("family", list(FAMILY_OPTIONS))
def test_export_from_scratch_loads_in_transformers(family, tmp_path):
    """A model built from our options (not from a Hugging Face one) exports to its family."""
    ours = randomize(GPT(tiny(**FAMILY_OPTIONS[family])), seed=3).eval()
    ours.save_pretrained(tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert _max_diff(ours, hf, torch.randint(0, V, (2, 40))) < 1e-4


def test_export_writes_zero_biases_where_the_family_has_more(tmp_path):
    """GPT-NeoX without biases, or GPT-J without its head's bias: zero biases, the same function."""
    for options in (dict(FAMILY_OPTIONS["neox"], bias=False), dict(FAMILY_OPTIONS["gptj"], lm_head_bias=False)):
        ours = randomize(GPT(tiny(**options))).eval()
        ours.save_pretrained(tmp_path / "out")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
        assert _max_diff(ours, hf, torch.randint(0, V, (2, 40))) < 1e-4


@pytest.mark.parametrize(
    "family, kw, message",
    [
        ("neox", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope type 'linear'"),
        ("neox", dict(hidden_act="relu"), "activation 'relu'"),
        ("neox", dict(rotary_pct=0.01), "rotary over 0 of the head's 24 dims"),
        ("gptj", dict(rotary_dim=7), "rotary over 7"),
        ("cerebras_hd80", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ],
)
def test_hf_unsupported_options_are_refused(family, kw, message, tmp_path):
    _hf(family, **kw).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=f"{message}.*not supported"):
        GPT.from_pretrained(str(tmp_path / "m"))


def test_hf_unsupported_model_type_and_missing_config(tmp_path):
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    llama.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="model_type 'llama' is not supported"):
        GPT.from_pretrained(str(tmp_path / "llama"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        GPT.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="neither a local directory nor a Hugging Face hub name"):
        GPT.from_pretrained("./not/a/dir")
    # a hub name where the hub cannot be reached (the tests run offline): one clear error
    with pytest.raises(ValueError, match="nor a model the Hugging Face hub gives here"):
        GPT.from_pretrained("tritongpt-tests/no-such-model")


def test_hf_family_on_the_triton_backend(tmp_path):
    """A Pythia-shaped model (partial rotary, parallel residual, exact GELU, head dim 24) loads on
    the triton backend and gives transformers' logits."""
    hf = _hf("neox")
    hf.save_pretrained(tmp_path / "m")
    ours = GPT.from_pretrained(str(tmp_path / "m"), backend="triton").eval()
    assert _max_diff(ours, hf, torch.randint(0, V, (1, 40))) < 1e-4


def test_export_refuses_what_the_family_cannot_hold(tmp_path):
    neo = GPT(tiny(**FAMILY_OPTIONS["neo"]))
    with pytest.raises(ValueError, match="gpt2 cannot hold this model: window_size=5"):
        neo.save_pretrained(tmp_path / "x", family="gpt2")
    gpt2 = GPT(tiny())
    with pytest.raises(ValueError, match="gptj cannot hold this model: position_embedding='learned'"):
        gpt2.save_pretrained(tmp_path / "x", family="gptj")
    with pytest.raises(ValueError, match="qkv_bias=True"):
        gpt2.save_pretrained(tmp_path / "x", family="gpt_neo")
    with pytest.raises(ValueError, match="family must be one of"):
        gpt2.save_pretrained(tmp_path / "x", family="llama")
    # a GPT-2 with unscaled scores and no local layers still goes out as a GPT-2 when asked
    unscaled = randomize(GPT(tiny(scaled_attention=False))).eval()
    unscaled.save_pretrained(tmp_path / "u", family="gpt2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "u").eval()
    assert _max_diff(unscaled, hf, torch.randint(0, V, (1, 40))) < 1e-4


@pytest.mark.parametrize("family", ["neox", "gptj", "neo"])
def test_family_options_compile_in_one_graph(family):
    """Rotary tables, window masks and parallel blocks trace with no graph break (fullgraph)."""
    model = randomize(GPT(tiny(**FAMILY_OPTIONS[family]))).train()
    idx = torch.randint(0, V, (2, 16))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(idx, idx), model(idx, idx), atol=1e-6)
    assert torch._dynamo.explain(model)(idx, idx).graph_break_count == 0
