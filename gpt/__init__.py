"""GPT-2 (and the options that make it a GPT-NeoX, GPT-J, GPT-Neo or Cerebras-GPT) with two
interchangeable op backends: `torch` (the reference) and `triton`."""

from gpt.config import GPTConfig, pad_vocab
from gpt.model import GPT

__all__ = ["GPT", "GPTConfig", "pad_vocab"]
