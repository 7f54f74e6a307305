"""GPT-2 with two interchangeable op backends: `torch` (the reference) and `triton`."""

from gpt.model import GPT, GPTConfig, pad_vocab

__all__ = ["GPT", "GPTConfig", "pad_vocab"]
