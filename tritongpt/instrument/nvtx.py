"""NVTX ranges for Nsight Systems: off by default and then free; on a CPU always no-ops.

    from tritongpt.instrument import nvtx
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
    if not _enabled:
        _push = _pop = None
    elif _push is None:
        try:
            import nvtx as _nvtx

            _push, _pop = (lambda name: _nvtx.push_range(name)), _nvtx.pop_range
        except ImportError:
            _push, _pop = torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
    return _enabled


def _enable_with(push, pop):
    """Tests only: switch the ranges on with the given push/pop, even on a CPU, so the code that
    runs when profiling (the hooks included) runs under test. enable(False) undoes it."""
    global _enabled, _push, _pop
    _enabled, _push, _pop = True, push, pop


def enabled():
    return _enabled


@contextlib.contextmanager
def _range(name):
    _push(name)
    try:
        yield
    finally:
        _pop()


_OFF = contextlib.nullcontext()  # reusable: ranges that are off allocate nothing


def range(name):  # noqa: A001 - reads as nvtx.range(...)
    """A context manager marking `name` on the timeline; a no-op when ranges are off."""
    return _range(name) if _enabled else _OFF


def annotate_model(model):
    """Mark the embedding, each block's attention and MLP, the final LayerNorm, and the LM head
    with the loss ("loss": from the end of ln_f to the end of GPT.forward) of a gpt.GPT.

    Does nothing (adds no hooks) while ranges are off. Returns the hook handles (call .remove()
    on each to take them off). Under torch.compile these hooks would be traced into the graph and
    break it: annotate eager models only; a compiled one still gets the step-level ranges."""
    if not _enabled:
        return []
    handles = []

    def mark(module, name):
        # the hooks return None: torch.cuda.nvtx.range_push returns the range's depth, and a
        # forward pre-hook's value would replace the module's input
        def push(*_):
            _push(name)

        def pop(*_):
            _pop()

        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))

    t = model.transformer
    mark(t.wte, "embedding")
    for i, block in enumerate(t.h):
        mark(block.attn, f"block{i}.attn")
        mark(block.mlp, f"block{i}.mlp")
    mark(t.ln_f, "ln_f")

    # "loss" opens after ln_f only inside GPT.forward (generate() runs ln_f and the LM head
    # without it, and must not leave a range open).
    state = {"in_forward": False, "open": False}

    def forward_pre(*_):
        state["in_forward"] = True

    def ln_f_done(*_):
        if state["in_forward"] and not state["open"]:
            _push("loss")
            state["open"] = True

    def forward_done(*_):
        if state["open"]:
            _pop()
        state["in_forward"] = state["open"] = False

    handles.append(model.register_forward_pre_hook(forward_pre))
    handles.append(t.ln_f.register_forward_hook(ln_f_done))
    handles.append(model.register_forward_hook(forward_done))
    return handles
