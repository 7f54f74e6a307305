"""tritongpt: a GPT trainer whose hot path runs on its own Triton kernels.

    from tritongpt import GPT, GPTConfig          # the model (tritongpt.gpt)
    from tritongpt import kernels                 # the fused ops (tritongpt.kernels)

Subpackages: kernels (Triton ops and their references), gpt (the model), train (the trainer,
sampling, plan, memory, convert), prep (datasets to token files), bench (speed), profiles (nsys and
torch.profiler captures), instrument (run metadata, NVTX ranges). `import tritongpt` itself loads
none of them: GPT and GPTConfig import the model (and torch, triton) when first used.
"""

__version__ = "0.2.0"
__all__ = ["GPT", "GPTConfig"]


def __getattr__(name):
    if name in __all__:
        from tritongpt import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'tritongpt' has no attribute {name!r}")
