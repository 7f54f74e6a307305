"""The reference GPT-2: config checks, loss, backends' interchangeable state, generation."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, assert_models_agree, assert_parity
from tritongpt.gpt import GPT, GPTConfig, pad_vocab
from tritongpt.gpt.flops import flops_per_token, matmul_params


def tiny(**kw):
    cfg = dict(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    cfg.update(kw)
    return GPTConfig(**cfg)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(n_embd=30, n_head=4), "n_embd"),
        (dict(backend="jax"), "backend"),
        (dict(n_layer=0), "n_layer"),
        (dict(dropout=1.0), "dropout"),
        (dict(real_vocab_size=98), "real_vocab_size"),
        (dict(real_vocab_size=0), "real_vocab_size"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        tiny(**kw)


def test_pad_vocab():
    assert pad_vocab(50257) == 50304 and pad_vocab(64) == 64 and pad_vocab(65) == 128


def test_real_vocab_size_defaults_to_vocab_size():
    """A config without it (as in checkpoints written before it existed) has no padding."""
    old = {k: v for k, v in tiny().to_dict().items() if k != "real_vocab_size"}
    assert GPTConfig(**old).real_vocab_size == 97
    assert tiny(vocab_size=128, real_vocab_size=65).to_dict()["real_vocab_size"] == 65


def test_shapes_and_too_long_input():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 97, (3, 32))
    assert model(idx).shape == (3, 32, 97)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, 97, (1, 33)))


def test_gpt2_init_and_tying():
    model = GPT(tiny(n_layer=4, n_embd=64))
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 4) ** 0.5) < 0.002
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert "transformer.h.0.attn.c_attn.weight" in model.state_dict()
    nobias = GPT(tiny(bias=False))
    assert not any(n.endswith(".bias") for n, _ in nobias.named_parameters())


@pytest.mark.parametrize("ignore", [False, True])
def test_loss_is_cross_entropy_of_logits(ignore):
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    if ignore:
        targets[0, :5] = -1
        targets[1, 10:] = -1
    logits = model(idx)
    expected = F.cross_entropy(logits.view(-1, 97), targets.view(-1), ignore_index=-1)
    loss = model(idx, targets)
    assert loss.shape == () and torch.allclose(loss, expected, atol=1e-6)


def test_all_ignored_loss_is_zero_not_nan():
    model = GPT(tiny())
    idx = torch.randint(0, 97, (2, 8))
    loss = model(idx, torch.full((2, 8), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU torch's cross-entropy fails a device-side assert")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_out_of_range_target_is_an_error_naming_it(backend):
    """A target past the vocabulary: torch's IndexError on the torch backend, the kernels'
    ValueError on the triton backend (on a GPU at the trainer's next log step: test_train.py)."""
    model = GPT(tiny(backend=backend))
    idx = torch.randint(0, 97, (2, 8))
    targets = torch.randint(0, 97, (2, 8))
    targets[1, 3] = 97
    with pytest.raises(IndexError if backend == "torch" else ValueError, match="97"):
        model(idx, targets)


def test_state_dict_moves_between_backends():
    a = GPT(tiny(backend="torch")).eval()
    b = GPT(tiny(backend="triton")).eval()
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    a.load_state_dict(b.state_dict())
    idx = torch.randint(0, 97, (2, 16))
    assert torch.allclose(a(idx), b(idx), atol=1e-5)


def _backend_pair(**kw):
    torch.manual_seed(1)
    a = GPT(tiny(backend="torch", **kw)).to(DEVICE)
    b = GPT(tiny(backend="triton", **kw)).to(DEVICE)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("bias", [True, False])
def test_backends_agree_logits_loss_and_gradients(bias):
    """Same weights on both backends: logits, loss and every parameter gradient (fp32)."""
    a, b = _backend_pair(bias=bias)
    idx = torch.randint(0, 97, (2, 23), device=DEVICE)
    targets = torch.randint(0, 97, (2, 23), device=DEVICE)
    targets[0, :4] = -1
    assert_models_agree(a, b, idx, targets)


def test_backends_train_alike():
    """A short training run on both backends from the same weights: the loss curves agree."""
    a, b = _backend_pair()
    data = torch.randint(0, 97, (8, 17), device=DEVICE)
    losses = []
    for model in (a, b):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        curve = []
        for step in range(30):
            batch = data[(step % 4) * 2 : (step % 4) * 2 + 2]
            loss = model(batch[:, :-1], batch[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        losses.append(curve)
    assert losses[0][-1] < losses[0][0] - 0.5
    for la, lb in zip(*losses, strict=True):
        assert abs(la - lb) <= 1e-3 * abs(la)


# ----------------------------------------------------------------------------- a padded vocabulary
# 65 tokens padded to 128 for matmul speed (as the trainer pads a character vocabulary).


def _padded(backend, loud=False):
    """A model with 65 real tokens of 128; with loud=True the padding rows of the tied embedding /
    LM head are large, so that unmasked they would take nearly all the probability."""
    torch.manual_seed(1)
    model = GPT(tiny(vocab_size=128, real_vocab_size=65, backend=backend)).to(DEVICE)
    if loud:
        with torch.no_grad():
            model.lm_head.weight[65:] = torch.randn(63, 32, device=DEVICE)
    return model


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_loss_at_init_is_ln_of_the_real_vocabulary(backend):
    """Near-uniform logits at init: the loss starts at ln 65 = 4.17, not ln 128 = 4.85."""
    model = _padded(backend)
    idx, targets = torch.randint(0, 65, (4, 32), device=DEVICE), torch.randint(0, 65, (4, 32), device=DEVICE)
    assert abs(model(idx, targets).item() - math.log(65)) < 0.05


def test_padding_takes_no_probability_and_backends_agree():
    """Padding rows that would dominate: logits -inf there (softmax exactly 0), the loss that of the
    65 real columns alone, their LM-head rows' gradient exactly 0; both backends equal."""
    a, b = _padded("torch", loud=True), _padded("triton", loud=True)
    idx, targets = torch.randint(0, 65, (2, 23), device=DEVICE), torch.randint(0, 65, (2, 23), device=DEVICE)
    targets[0, :4] = -1
    with torch.no_grad():
        la, lb = a(idx), b(idx)
    for logits in (la, lb):
        assert logits.shape == (2, 23, 128) and torch.all(logits[..., 65:] == float("-inf"))
        assert torch.all(torch.softmax(logits, -1)[..., 65:] == 0)
    assert_parity(lb[..., :65], la[..., :65], la[..., :65], "logits")
    expected = F.cross_entropy(la[..., :65].reshape(-1, 65), targets.view(-1), ignore_index=-1)
    losses = [a(idx, targets), b(idx, targets)]
    for model, loss in zip((a, b), losses, strict=True):
        assert_parity(loss, expected, expected, "loss")
        loss.backward()
        assert not model.lm_head.weight.grad[65:].any()
    ga, gb = dict(a.named_parameters()), dict(b.named_parameters())
    for name in ga:
        assert_parity(gb[name].grad, ga[name].grad, ga[name].grad, name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_generation_never_samples_a_padded_id(backend):
    model = _padded(backend, loud=True).eval()
    idx = torch.randint(0, 65, (8, 3), device=DEVICE)
    for kw in (dict(temperature=1.0), dict(temperature=2.0, top_k=100), dict(temperature=1.0, top_p=0.99),
               dict(temperature=0.0)):
        out = model.generate(idx, 5, **kw)
        assert out.max() < 65, kw


def test_greedy_generation_with_cache_equals_without():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 97, (2, 5))
    a = model.generate(idx, 20, temperature=0.0, use_cache=True)
    b = model.generate(idx, 20, temperature=0.0, use_cache=False)
    assert a.shape == (2, 25) and torch.equal(a, b)
    # past block_size the context is cropped; cached and uncached still agree
    a = model.generate(idx, 40, temperature=0.0, use_cache=True)
    b = model.generate(idx, 40, temperature=0.0, use_cache=False)
    assert torch.equal(a, b)


def test_cached_step_costs_one_position():
    """After the prompt, each cached step runs the blocks on one position only."""
    model = GPT(tiny()).eval()
    seen = []
    model.transformer.h[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    model.generate(torch.randint(0, 97, (1, 6)), 5, temperature=0.0)
    assert seen == [6, 1, 1, 1, 1]


def test_sampling_filters():
    from tritongpt.gpt.model import sample_next

    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    assert set(sample_next(logits, 1.0, top_k=2).flatten().tolist()) <= {2, 3}
    # softmax probs ~ [.03, .09, .24, .64]: top_p=0.5 keeps only the top token
    assert set(sample_next(logits, 1.0, top_p=0.5).flatten().tolist()) == {3}
    assert set(sample_next(logits, 1.0, top_p=0.8).flatten().tolist()) <= {2, 3}
    assert sample_next(logits[:1], 0.0).item() == 3


BAD_GENERATION = [
    # (argument overrides, the argument the ValueError must name)
    (dict(top_k=0), "top_k"),
    (dict(top_k=-3), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(idx=torch.zeros(1, 0, dtype=torch.long)), "idx"),
    (dict(idx=torch.zeros(0, 3, dtype=torch.long)), "idx"),
    (dict(idx=torch.tensor([[1, 97]])), "idx"),
    (dict(idx=torch.tensor([1, 2])), "idx"),
]


@pytest.mark.parametrize("kw,name", BAD_GENERATION, ids=[f"{k}={v}" for kw, _ in BAD_GENERATION for k, v in kw.items()])
def test_bad_generation_arguments_name_the_argument(kw, name):
    model = GPT(tiny()).eval()
    args = dict(idx=torch.randint(0, 97, (1, 3)), max_new_tokens=4, temperature=1.0, top_k=None, top_p=None)
    args.update(kw)
    with pytest.raises(ValueError, match=rf"^{name} "):
        model.generate(**args)


def test_generation_at_the_edges_of_the_arguments():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 97, (2, 3))
    assert torch.equal(model.generate(idx, 0), idx)
    out = model.generate(idx, 4, temperature=0.5, top_k=1, top_p=1.0)
    assert torch.equal(out, model.generate(idx, 4, temperature=0.0))  # top_k=1 is greedy


def test_flops_formula_by_hand():
    cfg = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=8)
    # per layer: c_attn 8*24 + attn.c_proj 8*8 + c_fc 8*32 + mlp.c_proj 32*8 = 768; LM head 100*8
    assert matmul_params(cfg) == 2 * 768 + 800
    assert flops_per_token(cfg, 16) == 6 * 2336 + 12 * 2 * 8 * 16
    model = GPT(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear == matmul_params(cfg)
