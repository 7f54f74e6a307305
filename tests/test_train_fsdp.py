"""Beyond one device's memory: activation checkpointing."""

import pytest
import torch

from gpt import GPT, GPTConfig
from test_train import assert_same_weights


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
