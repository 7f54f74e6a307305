"""GPT-2 (and the options that make it a GPT-NeoX, GPT-J, GPT-Neo or Cerebras-GPT) with two
interchangeable op backends: `torch` (the reference) and `triton`."""

from tritongpt.gpt.config import GPTConfig, pad_vocab
from tritongpt.gpt.model import GPT

__all__ = ["GPT", "GPTConfig", "pad_vocab"]
