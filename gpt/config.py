"""GPTConfig: the shape of a GPT-2 and the op backend it runs on."""

from dataclasses import dataclass, fields
from typing import Optional

BACKENDS = ("torch", "triton")


def pad_vocab(n, multiple=64):
    """Round a vocabulary size up to a multiple of 64 (50257 -> 50304): faster matmuls."""
    return ((n + multiple - 1) // multiple) * multiple


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64
    # The tokens that exist (None: all vocab_size). The ids from real_vocab_size up to vocab_size
    # are padding for matmul speed: their logits are -inf, so they take no probability in the
    # loss or in sampling. Checkpoints written before this field load with the default.
    real_vocab_size: Optional[int] = None
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2
    backend: str = "torch"  # "torch" or "triton"

    def __post_init__(self):
        if self.real_vocab_size is None:
            self.real_vocab_size = self.vocab_size
        for name in ("block_size", "vocab_size", "real_vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.real_vocab_size > self.vocab_size:
            raise ValueError(
                f"GPTConfig.real_vocab_size ({self.real_vocab_size}) must not exceed vocab_size ({self.vocab_size}), "
                "the padded size the embedding and LM head are built with"
            )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"GPTConfig.backend must be one of {BACKENDS}, got {self.backend!r}")

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}
