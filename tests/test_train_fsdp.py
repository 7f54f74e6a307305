"""Beyond one device's memory: activation checkpointing, and the memory estimate by hand."""

import pytest
import torch

from gpt import GPT, GPTConfig
from test_train import assert_same_weights
from train import memory


# ----------------------------------------------------------------------------- activation checkpointing


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_activation_checkpointing_changes_nothing_but_memory(backend):
    """With dropout on (the triton backend's in its attention kernel too): the same loss and
    gradients, bit for bit (the recompute replays the RNG), and far fewer bytes kept for the backward."""
    cfg = GPTConfig(block_size=32, vocab_size=64, n_layer=3, n_head=2, n_embd=32, dropout=0.2, backend=backend)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx, targets = torch.randint(0, 64, (4, 32)), torch.randint(0, 64, (4, 32))
    results = {}
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad(set_to_none=True)
        kept = []
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss = model(idx, targets)
        loss.backward()
        results[on] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(kept))
    (loss_a, grads_a, kept_a), (loss_b, grads_b, kept_b) = results[False], results[True]
    assert torch.equal(loss_a, loss_b)
    assert_same_weights(grads_a, grads_b)
    assert kept_b < kept_a / 2, (kept_a, kept_b)


# ----------------------------------------------------------------------------- the memory estimate


def test_memory_estimate_by_hand():
    """GPT-2 124M (bias, tied head, vocabulary 50304): N = 12 (12 C^2 + 13 C) + V C + T C + 2 C."""
    C, L, V, T = 768, 12, 50304, 1024
    N = L * (12 * C * C + 13 * C) + V * C + T * C + 2 * C
    assert N == 124_475_904
    cfg = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=12, n_embd=C, backend="triton")
    B = 8
    fp32 = memory.estimate(cfg, B, T, world_size=1, dtype="float32")
    assert (fp32["parameters"], fp32["gradients"], fp32["optimizer"]) == (4 * N, 4 * N, 8 * N)
    assert fp32["activations"] == L * B * T * 16 * C * 4  # the fused loss keeps no logits
    matmul = L * 12 * C * C + V * C
    ddp = memory.estimate(cfg, B, T, world_size=8, dtype="bfloat16")
    assert ddp["parameters"] == 4 * N + 2 * matmul and ddp["gradients"] == 8 * N  # autocast's copies; DDP's buckets
    root, block = V * C + T * C + 2 * C, 12 * C * C + 13 * C
    fsdp = memory.estimate(cfg, B, T, world_size=8, dtype="bfloat16", options=memory.Options(fsdp=True))
    assert fsdp["parameters"] == pytest.approx(4 * N / 8 + 2 * (root + 2 * block))
    assert fsdp["optimizer"] == pytest.approx(8 * N / 8)
    ac = memory.estimate(cfg, B, T, world_size=8, dtype="bfloat16", options=memory.Options(activation_checkpointing=True))
    assert ac["activations"] == B * T * L * 2 * C * 2 + B * T * 16 * C * 2
    torch_backend = memory.estimate(GPTConfig(**{**cfg.to_dict(), "backend": "torch"}), B, T, world_size=1)
    assert torch_backend["activations"] - memory.estimate(cfg, B, T, world_size=1)["activations"] == B * T * V * 8
    # GPT-NeoX 20B does not fit one 80 GB GPU, whatever the options; the trainer says what would
    name, T, options = memory.MODELS[-1]
    neox = memory.model_config(T, options)
    lines = memory.report(neox, 8, T, 8, "bfloat16", memory.Options(), 80e9, "80 GB")
    assert "does NOT fit" in lines and "--fsdp=true --activation_checkpointing=true on 16 processes would" in lines
    gptj = memory.model_config(*memory.MODELS[-2][1:])
    assert "--fsdp=true --activation_checkpointing=true would fit" in memory.report(gptj, 8, T, 8, "bfloat16",
                                                                                    memory.Options(), 80e9, "80 GB")
