"""NVTX ranges for Nsight Systems: off by default and then free; on a CPU always no-ops.

    from profiles import nvtx
    nvtx.enable(True)                 # once, at start-up (the trainer's --nvtx flag)
    nvtx.annotate_model(model)        # embedding, each block's attention and MLP, ln_f / loss
    with nvtx.range("backward"): ...  # anything else

Ranges come from the `nvtx` package where it is installed, otherwise from torch.cuda.nvtx.
Model ranges are forward hooks added from outside, so gpt/ carries no profiling code and an
un-annotated model runs exactly as before.
"""

import contextlib

import torch

_enabled = False
_push = _pop = None


def enable(on=True):
    """Switch the ranges on (only takes effect where CUDA is available)."""
    global _enabled, _push, _pop
    _enabled = bool(on) and torch.cuda.is_available()
    if _enabled and _push is None:
        try:
            import nvtx as _nvtx

            _push, _pop = (lambda name: _nvtx.push_range(name)), _nvtx.pop_range
        except ImportError:
            _push, _pop = torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
    return _enabled


def enabled():
    return _enabled


@contextlib.contextmanager
def _range(name):
    _push(name)
    try:
        yield
    finally:
        _pop()


def range(name):  # noqa: A001 - reads as nvtx.range(...)
    """A context manager marking `name` on the timeline; a no-op when ranges are off."""
    return _range(name) if _enabled else contextlib.nullcontext()


def annotate_model(model):
    """Mark the embedding, each block's attention and MLP, and the final LayerNorm of a gpt.GPT.

    Does nothing (adds no hooks) while ranges are off. Returns the hook handles."""
    if not _enabled:
        return []
    handles = []

    def mark(module, name):
        handles.append(module.register_forward_pre_hook(lambda *_: _push(name)))
        handles.append(module.register_forward_hook(lambda *_: _pop()))

    t = model.transformer
    mark(t.wte, "embedding")
    for i, block in enumerate(t.h):
        mark(block.attn, f"block{i}.attn")
        mark(block.mlp, f"block{i}.mlp")
    mark(t.ln_f, "ln_f")
    return handles
