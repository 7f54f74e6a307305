"""torch.compile and the Triton ops: every op of kernels is a torch.library custom op (namespace
tritongpt) that passes torch.library.opcheck; the triton-backend model compiles to one graph,
with no graph break, and the compiled loss, logits and every parameter gradient equal eager's.

On a CPU the ops run under Triton's interpreter inside their custom-op bodies, which torch.compile
never traces into: aot_eager checks the graph and AOTAutograd, inductor the code it generates
around the ops (a few seconds of C++ compilation, done once)."""

import pytest
import torch

from tritongpt import kernels  # noqa: F401 - registers the ops
from attention_mask import seed_tensor
from conftest import DEVICE, HAS_GPU, ROOT, assert_parity
from tritongpt.gpt import GPT, GPTConfig


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _leaf(*shape, dtype=torch.float32, grad=True):
    return torch.randn(*shape, device=DEVICE).to(dtype).requires_grad_(grad)


# ----------------------------------------------------------------------------- every op


def _cases():
    """(op name, sample args) for every op, forward ops with inputs that need gradients (so the
    autograd registration is checked), backward ops with what their forward saved."""
    ops = torch.ops.tritongpt
    x, w, b = _leaf(3, 5, 16), _leaf(16), _leaf(16)
    y16 = _leaf(3, 5, 16, dtype=torch.float16)
    cases = [("layer_norm", (x, w, b, 1e-5)), ("layer_norm", (x, w, None, 1e-5))]
    out, mean, rstd = ops.layer_norm(x, w, b, 1e-5)
    cases.append(("layer_norm_backward", (torch.randn_like(out), x.detach(), w.detach(), b.detach(), mean, rstd)))
    cases += [("add_layer_norm", (x, y16, w, b, 1e-5, torch.float16)),
              ("add_layer_norm", (x, _leaf(3, 5, 16), w, None, 1e-5, torch.float32))]
    s, out, mean, rstd = ops.add_layer_norm(x, y16, w, b, 1e-5, torch.float16)
    grads = (torch.randn_like(out), torch.randn_like(s))
    cases += [("add_layer_norm_backward", (*grads, s.detach(), w.detach(), b.detach(), mean, rstd, torch.float32, torch.float16)),
              ("add_layer_norm_backward", (grads[0], None, s.detach(), w.detach(), None, mean, rstd, torch.float32, torch.float32))]
    # RMSNorm (rms=True), with a gain and without one
    cases += [("layer_norm", (x, w, None, 1e-5, True)), ("layer_norm", (x, None, None, 1e-5, True)),
              ("add_layer_norm", (x, y16, None, None, 1e-5, torch.float16, True))]
    out, mean, rstd = ops.layer_norm(x, None, None, 1e-5, True)
    cases.append(("layer_norm_backward", (torch.randn_like(out), x.detach(), None, None, mean, rstd, True)))
    s, out, mean, rstd = ops.add_layer_norm(x, y16, w, None, 1e-5, torch.float16, True)
    cases.append(("add_layer_norm_backward",
                  (torch.randn_like(out), torch.randn_like(s), s.detach(), w.detach(), None, mean, rstd, torch.float32,
                   torch.float16, True)))

    xw, ww, bw = _leaf(2, 7, 24), _leaf(40, 24), _leaf(40)
    for act in ("gelu_tanh", "gelu_exact", "relu2"):
        cases += [("linear_gelu", (xw, ww, bw, True, act)),
                  ("linear_gelu", (xw.detach(), ww.detach(), None, False, act))]
        y, h = ops.linear_gelu(xw, ww, bw, True, act)
        cases.append(("linear_gelu_backward", (torch.randn_like(y), h.detach(), True, act)))

    logits, targets = _leaf(2, 9, 50), torch.randint(0, 45, (2, 9), device=DEVICE)  # classes: 45 or all 50
    targets[0, :3] = -1
    cases += [("cross_entropy", (logits, targets, -1, None)), ("cross_entropy", (logits, targets, -1, 45))]
    _, lse = ops.cross_entropy(logits, targets, -1, 45)
    cases.append(("cross_entropy_backward", (torch.tensor(0.5, device=DEVICE), logits.detach(), targets, lse, -1, 45)))
    cases.append(("cross_entropy", (logits, targets, -1, 45, 3.0)))  # the logit soft-cap
    _, lse = ops.cross_entropy(logits, targets, -1, None, 3.0)
    cases.append(("cross_entropy_backward", (torch.tensor(0.5, device=DEVICE), logits.detach(), targets, lse, -1, None, 3.0)))
    frozen = (_leaf(2, 9, 16, grad=False), _leaf(50, 16, grad=False))
    cases += [("linear_cross_entropy", (_leaf(2, 9, 16), _leaf(50, 16), targets, -1, None, True, True)),
              ("linear_cross_entropy", (_leaf(2, 9, 16), _leaf(64, 16), targets, -1, 50, True, True)),
              ("linear_cross_entropy", (*frozen, targets, -1, None, False, False)),
              ("linear_cross_entropy", (_leaf(2, 9, 16), _leaf(64, 16), targets, -1, 50, True, True, 3.0))]

    qkv = _leaf(1, 20, 3, 2, 16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    for p, seed in ((0.0, None), (0.2, seed_tensor(5, DEVICE))):
        cases += [("attention", (q, k, v, True, p, seed)), ("attention_qkv", (qkv, True, p, seed))]
        o, lse = ops.attention(q, k, v, True, p, seed)
        saved = (q.detach(), k.detach(), v.detach(), o.detach(), lse, True, p, seed)
        cases.append(("attention_backward", (torch.randn_like(o), *saved)))
        o, lse = ops.attention_qkv(qkv, True, p, seed)
        cases.append(("attention_qkv_backward", (torch.randn_like(o), qkv.detach(), o.detach(), lse, True, p, seed)))
    # the families' options: head dim 24 (a padded tile), a scale, a window, rotary on part of the head
    qkv = _leaf(1, 20, 3, 2, 24)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    angles = torch.arange(20, device=DEVICE).float()[:, None] * torch.rand(4, device=DEVICE)
    # and QK-norm, alone and with rotary and dropout
    for p, seed, options in ((0.0, None, (0.5, 7, angles.cos(), angles.sin(), False)),
                             (0.2, seed_tensor(5, DEVICE), (None, 0, angles.cos(), angles.sin(), True)),
                             (0.0, None, (None, 0, None, None, False, True)),
                             (0.2, seed_tensor(5, DEVICE), (None, 0, angles.cos(), angles.sin(), False, True))):
        cases += [("attention", (q, k, v, True, p, seed, *options)), ("attention_qkv", (qkv, True, p, seed, *options))]
        o, lse = ops.attention(q, k, v, True, p, seed, *options)
        saved = (q.detach(), k.detach(), v.detach(), o.detach(), lse, True, p, seed, *options)
        cases.append(("attention_backward", (torch.randn_like(o), *saved)))
        o, lse = ops.attention_qkv(qkv, True, p, seed, *options)
        cases.append(("attention_qkv_backward", (torch.randn_like(o), qkv.detach(), o.detach(), lse, True, p, seed, *options)))
    # Muon's symmetric product, with and without its addend
    cases += [("xxt", (_leaf(2, 7, 5), 1.0, None, 0.0)), ("xxt", (_leaf(7, 5), 2.0, _leaf(7, 7), -0.5))]
    return cases


def _registered():
    return {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("tritongpt::")}


def test_every_op_passes_opcheck():
    """Schema, fake implementation (shapes, strides and dtypes against the real op), autograd
    registration and AOTAutograd with dynamic shapes, for every registered op."""
    cases = _cases()
    assert {name for name, _ in cases} == _registered()
    for name, args in cases:
        result = torch.library.opcheck(getattr(torch.ops.tritongpt, name), args)
        assert set(result.values()) == {"SUCCESS"}, f"{name}: {result}"


def test_no_compiler_disable_anywhere():
    """The ops compose with torch.compile; none hides from it."""
    needle = "compiler." + "disable"
    files = [f for folder in ("tritongpt", "tests") for f in (ROOT / folder).rglob("*.py")]
    assert ROOT / "tritongpt" / "kernels" / "flash_attention.py" in files
    offenders = [str(p.relative_to(ROOT)) for p in files if needle in p.read_text()]
    assert not offenders, f"{needle} in {offenders}"


# ----------------------------------------------------------------------------- the model


def tiny(**kw):
    cfg = dict(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True, backend="triton")
    cfg.update(kw)
    torch.manual_seed(1)
    return GPT(GPTConfig(**cfg)).to(DEVICE)


def _batch():
    idx = torch.randint(0, 97, (2, 23), device=DEVICE)
    targets = torch.randint(0, 97, (2, 23), device=DEVICE)
    targets[0, :4] = -1
    return idx, targets


def _loss_and_grads(model, forward, idx, targets, autocast=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=autocast, enabled=autocast is not None):
        loss = forward(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_model_is_one_graph(dropout):
    """The training forward (targets given) and the logits, in train and eval mode: one graph,
    no graph break (with dropout, the seed is drawn inside the graph)."""
    model = tiny(dropout=dropout)
    idx, targets = _batch()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for args in ((idx, targets), (idx,)):
            explained = torch._dynamo.explain(model)(*args)
            assert explained.graph_break_count == 0, explained.break_reasons
            assert explained.graph_count == 1


@pytest.mark.parametrize("bias, autocast", [(True, None), (False, torch.float16)], ids=["fp32", "fp16-autocast"])
def test_compiled_equals_eager_aot_eager(bias, autocast):
    """fullgraph compile with aot_eager: loss, logits and every parameter gradient bit for bit
    (the ops run the same kernels; AOTAutograd runs the same aten ops around them)."""
    model = tiny(bias=bias)
    idx, targets = _batch()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss, grads = _loss_and_grads(model, model, idx, targets, autocast)
    loss_c, grads_c = _loss_and_grads(model, compiled, idx, targets, autocast)
    assert torch.equal(loss, loss_c)
    for name in grads:
        assert torch.equal(grads[name], grads_c[name]), name
    with torch.no_grad():
        assert torch.equal(model(idx), compiled(idx))


@pytest.mark.parametrize("style", ["halves", "pairs"])
def test_family_options_compile_in_one_graph(style):
    """Rotary (its tables made inside the graph), a window on alternate layers, unscaled scores,
    head dim 24: one graph with aot_eager, loss and every gradient bit for bit as eager."""
    model = tiny(n_head=4, n_embd=96, position_embedding="rotary", rotary_fraction=0.5, rotary_style=style,
                 attention_pattern="global,local", window_size=5, scaled_attention=False)
    idx, targets = _batch()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss, grads = _loss_and_grads(model, model, idx, targets)
    loss_c, grads_c = _loss_and_grads(model, compiled, idx, targets)
    assert torch.equal(loss, loss_c)
    for name in grads:
        assert torch.equal(grads[name], grads_c[name]), name


def test_speedrun_options_compile_in_one_graph():
    """nanochat's GPT (rotary, no biases, an untied head, RMSNorm without a gain, ReLU^2, QK-norm,
    the logit soft-cap, zero projections, here randomized): one graph with aot_eager, the loss,
    the logits and every gradient bit for bit as eager."""
    model = tiny(position_embedding="rotary", bias=False, tie_embeddings=False, norm="rms", norm_gain=False,
                 mlp_activation="relu2", qk_norm=True, logit_softcap=15.0, zero_init_proj=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    idx, targets = _batch()
    explained = torch._dynamo.explain(model)(idx, targets)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss, grads = _loss_and_grads(model, model, idx, targets)
    loss_c, grads_c = _loss_and_grads(model, compiled, idx, targets)
    assert torch.equal(loss, loss_c)
    for name in grads:
        assert torch.equal(grads[name], grads_c[name]), name
    with torch.no_grad():
        assert torch.equal(model(idx), compiled(idx))


def test_compiled_equals_eager_inductor():
    """fullgraph compile with inductor, which fuses the glue between the ops (and so may round in
    another order): loss, logits and every gradient by the parity rule."""
    model = tiny()
    idx, targets = _batch()
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    loss, grads = _loss_and_grads(model, model, idx, targets)
    loss_c, grads_c = _loss_and_grads(model, compiled, idx, targets)
    assert_parity(loss_c, loss, loss, "loss")
    for name in grads:
        assert_parity(grads_c[name], grads[name], grads[name], name)
    with torch.no_grad():
        assert_parity(compiled(idx), model(idx), model(idx), "logits")


@pytest.mark.skipif(not HAS_GPU or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ops_run_on_their_tensors_device():
    """Tensors on cuda:1 while cuda:0 is current: every launch runs where its tensors are."""
    model = GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=64, backend="triton")).to("cuda:1")
    idx = torch.randint(0, 97, (2, 23), device="cuda:1")
    torch.cuda.set_device(0)
    loss = model(idx, idx)
    loss.backward()
    assert loss.device == torch.device("cuda:1") and torch.isfinite(loss)
    assert all(p.grad.device == torch.device("cuda:1") for p in model.parameters())

