"""GPTConfig: the shape of a GPT, the options of its family, and the op backend it runs on.

GPT-2 is the default. The options below `backend` turn the same model into the other open GPT
families (each option's comment names who uses it):

    family         position  rotary           residual               head    GELU   biases off
    GPT-2          learned   -                sequential             tied    tanh   -
    Cerebras-GPT   learned   -                sequential             tied    exact  -
    GPT-Neo        learned   -                sequential             tied    tanh   qkv; unscaled scores,
                                                                                      local attention on odd layers
    GPT-NeoX       rotary    halves, 1/4      parallel, ln_1 + ln_2  untied  exact  -
    GPT-J          rotary    pairs, 64 dims   parallel, ln_1 only    untied  tanh   qkv, attn_proj;
                                                                     + bias

The options after them are the recipe of nanochat and the GPT-2 speedrun (modded-nanogpt), each
done inside our kernels: RMSNorm (with or without a gain), a ReLU^2 MLP, QK-norm, a logit
soft-cap and zero-initialized output projections; with rotary, bias=False and an untied head,
nanochat's GPT is

    GPTConfig(position_embedding="rotary", bias=False, tie_embeddings=False, norm="rms",
              norm_gain=False, mlp_activation="relu2", qk_norm=True, logit_softcap=15.0,
              zero_init_proj=True)

mlp_hidden sets the MLP's width where it is not 4 * n_embd (a GPT-NeoX's intermediate_size).
"""

from dataclasses import dataclass, fields
from typing import Optional

from tritongpt.kernels.flash_attention import MAX_HEAD_DIM  # the attention kernels' limit is the model's

BACKENDS = ("torch", "triton")
POSITION_EMBEDDINGS = ("learned", "rotary")
ROTARY_STYLES = ("halves", "pairs")
GELUS = ("tanh", "exact")
NORMS = ("layer", "rms")
MLP_ACTIVATIONS = ("gelu", "relu2")
ATTENTION_KINDS = ("global", "local")


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

    # The other GPT families' options (defaults: GPT-2's).
    position_embedding: str = "learned"  # "learned": wpe (GPT-2, GPT-Neo); "rotary": rotary on q and k, no wpe (GPT-NeoX, GPT-J)
    rotary_fraction: float = 1.0  # share of each head's dims rotated, rounded to an even count (Pythia 0.25; GPT-J 64/256)
    rotary_base: float = 10000.0  # the base of the rotary frequencies (GPT-NeoX's rotary_emb_base / rope_theta)
    rotary_style: str = "halves"  # which dims rotate together: "halves" (i with i + R/2, GPT-NeoX) | "pairs" (2i with 2i+1, GPT-J)
    parallel_residual: bool = False  # x + attn(ln_1(x)) + mlp(ln_2(x)) in one add (GPT-NeoX, GPT-J), not one after the other
    shared_ln: bool = False  # with parallel_residual: attention and MLP both read ln_1(x), there is no ln_2 (GPT-J)
    tie_embeddings: bool = True  # lm_head.weight is transformer.wte.weight (GPT-2, GPT-Neo); False: its own (GPT-NeoX, GPT-J)
    lm_head_bias: bool = False  # lm_head.bias (GPT-J)
    qkv_bias: bool = True  # where `bias` is on: attn.c_attn has a bias (off in GPT-Neo and GPT-J)
    attn_proj_bias: bool = True  # where `bias` is on: attn.c_proj has a bias (off in GPT-J)
    gelu: str = "tanh"  # "tanh" approximation (GPT-2, GPT-Neo, GPT-J) | "exact" erf GELU (GPT-NeoX/Pythia, Cerebras-GPT)
    attention_pattern: str = "global"  # per layer, repeated over the layers: "global,local" is GPT-Neo's
    window_size: int = 0  # positions a local layer attends to, itself included (GPT-Neo: 256); 0 without local layers
    scaled_attention: bool = True  # scores divided by sqrt(head dim); False: unscaled (GPT-Neo)
    layer_norm_eps: float = 1e-5  # the epsilon of every norm, LayerNorm or RMSNorm

    # The speedrun's options (nanochat, modded-nanogpt; defaults: GPT-2's).
    norm: str = "layer"  # "layer": LayerNorm | "rms": RMSNorm (no mean taken off, no bias)
    norm_gain: bool = True  # the norms' weight (a learned gain); False: none (nanochat's RMSNorm)
    mlp_activation: str = "gelu"  # "gelu" (the one `gelu` names) | "relu2": relu(x)^2 (nanochat, the speedrun)
    mlp_hidden: int = 0  # the MLP's hidden width (Hugging Face's intermediate_size); 0: 4 * n_embd
    qk_norm: bool = False  # q and k RMS-normalized per head (no gain) before the scores (nanochat, the speedrun)
    logit_softcap: float = 0.0  # logits C * tanh(logits / C) in the loss, model(idx) and generate (nanochat: 15); 0: none
    zero_init_proj: bool = False  # attn.c_proj and mlp.c_proj start at zero (nanochat, the speedrun)

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
        self._check_family_options()

    def _check_family_options(self):
        def bad(name, why):
            return ValueError(f"GPTConfig.{name} {why}, got {getattr(self, name)!r}")

        for name in ("parallel_residual", "shared_ln", "tie_embeddings", "lm_head_bias", "qkv_bias", "attn_proj_bias",
                     "scaled_attention", "bias", "norm_gain", "qk_norm", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be True or False")
        for name, allowed in (("position_embedding", POSITION_EMBEDDINGS), ("rotary_style", ROTARY_STYLES),
                              ("gelu", GELUS), ("norm", NORMS), ("mlp_activation", MLP_ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {allowed}")
        if self.head_dim > MAX_HEAD_DIM:
            raise ValueError(
                f"GPTConfig.n_head: the head dim n_embd / n_head = {self.head_dim} must be at most {MAX_HEAD_DIM}"
            )
        if not isinstance(self.rotary_fraction, (int, float)) or not 0.0 < self.rotary_fraction <= 1.0:
            raise bad("rotary_fraction", "must be in (0, 1]")
        if self.position_embedding == "rotary" and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise bad("rotary_fraction", f"must rotate an even number (>= 2) of the head's {self.head_dim} dims "
                                         f"(round({self.head_dim} * fraction) = {self.rotary_dim})")
        if not isinstance(self.rotary_base, (int, float)) or not self.rotary_base > 1.0:
            raise bad("rotary_base", "must be a number above 1")
        if self.shared_ln and not self.parallel_residual:
            raise bad("shared_ln", "needs parallel_residual=True (one LayerNorm feeds attention and MLP side by side)")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise bad("layer_norm_eps", "must be positive")
        if not isinstance(self.mlp_hidden, int) or isinstance(self.mlp_hidden, bool) or self.mlp_hidden < 0:
            raise bad("mlp_hidden", "must be a positive integer, or 0 for 4 * n_embd")
        if not isinstance(self.logit_softcap, (int, float)) or isinstance(self.logit_softcap, bool) \
                or not self.logit_softcap >= 0:
            raise bad("logit_softcap", "must be 0 (no cap) or a positive number C (logits C * tanh(logits / C))")
        kinds = self.attention_kinds()
        if not kinds or any(k not in ATTENTION_KINDS for k in kinds):
            raise bad("attention_pattern", f"must be a comma-separated list of {ATTENTION_KINDS}")
        if not isinstance(self.window_size, int) or isinstance(self.window_size, bool) or self.window_size < 0:
            raise bad("window_size", "must be a non-negative integer")
        if "local" in kinds and self.window_size < 1:
            raise bad("window_size", "must be at least 1 where attention_pattern has local layers")
        if "local" not in kinds and self.window_size:
            raise bad("window_size", "has no effect: attention_pattern has no local layer (use 0)")

    # ------------------------------------------------------------------------- derived

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def mlp_width(self):
        """The MLP's hidden width: mlp_hidden, or 4 * n_embd."""
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def activation(self):
        """The MLP's activation by the name the fused MLP kernel takes: gelu_tanh, gelu_exact or relu2."""
        return "relu2" if self.mlp_activation == "relu2" else f"gelu_{self.gelu}"

    @property
    def rotary_dim(self):
        """R: the leading dims of each head that rotary rotates (0 with learned positions)."""
        if self.position_embedding != "rotary":
            return 0
        return round(self.head_dim * self.rotary_fraction)

    def attention_kinds(self):
        return [k.strip() for k in str(self.attention_pattern).split(",")]

    def layer_window(self, layer):
        """The local window of layer `layer` (0-based), or 0 where it attends to every earlier position."""
        kinds = self.attention_kinds()
        return self.window_size if kinds[layer % len(kinds)] == "local" else 0

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}
