"""GPT-2: nanoGPT's architecture and parameter names, with two interchangeable op backends,
and the options of GPTConfig that make it a GPT-NeoX (Pythia), GPT-J, GPT-Neo or Cerebras-GPT,
or nanochat's GPT (RMSNorm, ReLU^2, QK-norm, a logit soft-cap, zero-initialized projections).

backend="torch": stock PyTorch ops (the references of `kernels.reference`, attention through
F.scaled_dot_product_attention). backend="triton": the public ops of `kernels`. Both hold the
same parameters under the same names, so one state_dict moves between them. The backend is
picked once, when the modules are built: each module takes its ops from gpt.backends.OPS.
The family options are fixed when the modules are built too: a block with a parallel residual
or without ln_2 simply has a different forward, and the rotary angles of the positions run are
made once per forward and handed to every attention.
"""

import math
import numbers

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from tritongpt.gpt.backends import OPS, sdpa
from tritongpt.gpt.config import GPTConfig
from tritongpt.gpt.hf import load_hf, save_hf
from tritongpt.kernels import reference


# ----------------------------------------------------------------------------- modules


class LayerNorm(nn.Module):
    """The model's norm: LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1),
    or with config.norm="rms" RMSNorm (no bias); the gain (weight) is optional too. ln(x)
    normalizes x; ln(x, y) is the residual add in front of it too, returning (x + y, its norm): on
    the triton backend one fused op, which reads the stream once and writes both once."""

    def __init__(self, config):
        super().__init__()
        rms = config.norm == "rms"
        self.weight = nn.Parameter(torch.ones(config.n_embd)) if config.norm_gain else None
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if config.bias and not rms else None
        self.eps = config.layer_norm_eps
        self._op = OPS[config.backend]["rms_norm" if rms else "layer_norm"]
        self._add_op = OPS[config.backend]["add_rms_norm" if rms else "add_layer_norm"]

    def forward(self, x, y=None):
        if y is None:
            return self._op(x, self.weight, self.bias, self.eps)
        return self._add_op(x, y, self.weight, self.bias, self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer=0):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias and config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias and config.attn_proj_bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.scale = None if config.scaled_attention else 1.0  # None: SDPA's 1/sqrt(hs)
        self.window = config.layer_window(layer)  # 0: every earlier position
        self.interleaved = config.rotary_style == "pairs"
        self.qk_norm = config.qk_norm
        self._attention = OPS[config.backend]["attention"]

    def forward(self, x, rope=None, cache=None):
        """x (B, T, C); rope: None, or the (cos, sin) tables (T, R/2) of the positions x holds."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs), a view
        rotary = None if rope is None else (*rope, self.interleaved)
        if cache is None:
            y = self._attention(qkv, self.dropout if self.training else 0.0, self.scale, self.window, rotary, self.qk_norm)
        else:
            q, k, v = qkv.unbind(2)  # (B, T, nh, hs) each
            if self.qk_norm:  # ... and normalized
                q, k = reference.qk_rms_norm(q), reference.qk_rms_norm(k)
            if rotary is not None:  # the cache holds the keys already turned to their positions
                q, k = reference.rotary(q, *rotary), reference.rotary(k, *rotary)
            k, v = cache.append(k.transpose(1, 2), v.transpose(1, 2))  # (B, nh, T_cached + T, hs)
            # the T new queries are the last T positions: causal among themselves, all the cache before
            y = sdpa(q.transpose(1, 2), k, v, 0.0, self.scale, self.window).transpose(1, 2)  # (B, T, nh, hs)
        y = y.reshape(B, T, C)  # (B, T, C); a view where y is (B, T, nh, hs) contiguous
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = config.activation  # gelu_tanh, gelu_exact or relu2
        self._up = OPS[config.backend]["mlp_up"]

    def forward(self, x):
        return self.dropout(self.c_proj(self._up(x, self.c_fc, self.activation)))


class Block(nn.Module):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), with every LayerNorm that follows a residual
    add taking that add in: the block gets the stream x and m, what the block before it added
    (None for the first block), which its ln_1 adds in; it returns the stream after the
    attention's add and the MLP's output, which the LayerNorm after it (the next block's ln_1, or
    ln_f) adds in. A block so uses its own parameters only, so that it can be sharded, compiled
    or recomputed (activation checkpointing) as one unit.

    With parallel_residual, x = x + attn(ln_1(x)) + mlp(ln_2(x)) (GPT-NeoX), or with shared_ln
    x + attn(ln_1(x)) + mlp(ln_1(x)) and no ln_2 (GPT-J): the block returns x as it came and the
    sum of both branches, which the LayerNorm after it adds in."""

    def __init__(self, config, layer=0):
        super().__init__()
        self.parallel = config.parallel_residual
        self.shared_ln = config.shared_ln
        self.ln_1 = LayerNorm(config)
        self.attn = CausalSelfAttention(config, layer)
        if not config.shared_ln:
            self.ln_2 = LayerNorm(config)
        self.mlp = MLP(config)

    def forward(self, x, m=None, rope=None, cache=None):
        """x, m (B, T, C) -> (x, m) of the stream after this block."""
        x, h = (x, self.ln_1(x)) if m is None else self.ln_1(x, m)  # the previous block's add, and ln_1 of it
        if not self.parallel:
            x, h = self.ln_2(x, self.attn(h, rope, cache))  # x + attn(ln_1(x)), and ln_2 of it
            return x, self.mlp(h)
        h_mlp = h if self.shared_ln else self.ln_2(x)
        return x, self.attn(h, rope, cache) + self.mlp(h_mlp)


class KVCache:
    """Keys and values of one layer, preallocated to the longest sequence generation will see."""

    def __init__(self, batch, n_head, max_len, head_dim, dtype, device):
        self.k = torch.empty(batch, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.len = 0

    def append(self, k, v):
        T = k.shape[2]
        self.k[:, :, self.len : self.len + T] = k
        self.v[:, :, self.len : self.len + T] = v
        self.len += T
        return self.k[:, :, : self.len], self.v[:, :, : self.len]


def rotary_tables(positions, rotary_dim, base):
    """(cos, sin), each (T, R/2) fp32: the angle of position p at pair i is p * base^(-2i/R)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=positions.device).float() / rotary_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, R/2)
    return angles.cos(), angles.sin()


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.position_embedding == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self._lm_head_loss = OPS[config.backend]["lm_head_loss"]
        # Activation checkpointing (a training choice, not part of the model): each block keeps only
        # its inputs in the forward and runs again in the backward to remake what it needs there.
        self.activation_checkpointing = False

        # GPT-2 init: N(0, 0.02), with the residual projections scaled by 1/sqrt(2 * n_layer), or
        # zero with zero_init_proj (each block then starts as the identity)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; by default without the embeddings that are only looked up: the position
        embedding, and the token embedding where it is not tied to the LM head (tied, it is the
        head's weight and counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on the 2-D weights only (matmuls and embeddings), none on
        biases and LayerNorm gains. The fused implementation (one kernel for all the tensors) on
        GPUs and CPUs alike: on a CPU it is 5x faster than the per-tensor loop."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def _hidden(self, idx, caches=None):
        """The final hidden states (B, T, C) after ln_f."""
        B, T = idx.shape
        start = caches[0].len if caches is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {start + T} is longer than block_size={self.config.block_size}; "
                "crop the input to the last block_size tokens"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx)
        rope = None
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(pos)
        else:  # rotary: the positions turn q and k inside each attention
            rope = rotary_tables(pos, self.config.rotary_dim, self.config.rotary_base)
        x = self.transformer.drop(x)
        m = None
        recompute = self.activation_checkpointing and caches is None and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute:  # non-reentrant; the RNG state is replayed, so dropout draws the same masks again
                x, m = checkpoint(block, x, m, rope, use_reentrant=False)
            else:
                x, m = block(x, m, rope, None if caches is None else caches[i])
        x, h = self.transformer.ln_f(x, m)  # the last block's residual add and the LayerNorm after it
        return h

    def _logits(self, x):
        """lm_head(x) (..., vocab_size), soft-capped where logit_softcap is set, -inf from
        real_vocab_size on: a padded vocabulary's padding never takes probability (written in
        place: one pass over the padding only)."""
        logits = reference.logit_softcap(self.lm_head(x), self.config.logit_softcap)
        if self.config.real_vocab_size < self.config.vocab_size:
            logits[..., self.config.real_vocab_size :] = float("-inf")
        return logits

    def forward(self, idx, targets=None):
        """idx (B, T) token ids. Returns logits (B, T, vocab_size), soft-capped where
        logit_softcap is set, -inf past real_vocab_size, or with targets (B, T) the mean
        cross-entropy of those logits over the positions whose target is not -1 (the padding past
        real_vocab_size taking no probability there either)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        x = self._hidden(idx)
        if targets is None:
            return self._logits(x)
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
        return self._lm_head_loss(x, self.lm_head, targets, self.config.real_vocab_size, self.config.logit_softcap)

    # ------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T). temperature=0 is greedy.

        With use_cache, keys and values are kept per layer so that each new token costs one
        position's work. Once the sequence outgrows block_size, the context is cropped to the last
        block_size tokens and re-run (positions shift, so the cache cannot be reused)."""
        cfg = self.config
        check_generation(idx, max_new_tokens, temperature, top_k, top_p, cfg.vocab_size)
        caches = None
        for _ in range(max_new_tokens):
            if use_cache and idx.shape[1] <= cfg.block_size:
                if caches is None:  # prefill with the whole prompt
                    hs = cfg.n_embd // cfg.n_head
                    max_len = min(cfg.block_size, idx.shape[1] + max_new_tokens)
                    dtype = self.lm_head.weight.dtype
                    caches = [
                        KVCache(idx.shape[0], cfg.n_head, max_len, hs, dtype, idx.device)
                        for _ in range(cfg.n_layer)
                    ]
                    x = self._hidden(idx, caches)
                else:
                    x = self._hidden(idx[:, -1:], caches)
            else:
                x = self._hidden(idx[:, -cfg.block_size :])
            logits = self._logits(x[:, -1, :]).float()  # (B, V), -inf past real_vocab_size
            idx_next = sample_next(logits, temperature, top_k, top_p)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    # ------------------------------------------------------------------------- Hugging Face

    @classmethod
    def from_pretrained(cls, name_or_dir, **overrides):
        """A GPT with the weights of a Hugging Face GPT-2 (Cerebras-GPT too), GPT-NeoX (Pythia),
        GPT-J or GPT-Neo: a hub name or a local directory; overrides: dropout, backend."""
        return load_hf(cls, name_or_dir, **overrides)

    def save_pretrained(self, directory, family=None):
        """Write `directory` for transformers' AutoModelForCausalLM, in the model's own family
        (gpt2, gpt_neox, gptj, gpt_neo; `family` picks another that can hold it)."""
        save_hf(self, directory, family)


def check_generation(idx, max_new_tokens, temperature, top_k, top_p, vocab_size):
    """ValueError naming the first argument of generate() that cannot work."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"idx must be a (B, T) tensor of token ids, got {getattr(idx, 'shape', type(idx).__name__)}")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"idx has shape {tuple(idx.shape)}: give at least one sequence of at least one token (the prompt)")
    lo, hi = idx.min().item(), idx.max().item()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"idx holds token id {lo if lo < 0 else hi}, outside the vocabulary of {vocab_size}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be None (every token) or a whole number >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """One token id per row of logits (B, V): greedy at temperature 0, else sampled from the
    temperature-scaled distribution cut to the top_k tokens and to the smallest set whose
    probability reaches top_p (never less than the likeliest token). The scaled logits are
    computed in float64 from the logits less their row's maximum, so that every finite positive
    temperature works: a tiny one gives the likeliest token all the probability (greedy in the
    limit) instead of overflowing, a huge one makes the tokens kept equally likely."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    z = logits.double()
    z = (z - z.max(dim=-1, keepdim=True).values) / temperature  # <= 0; the likeliest token(s) 0
    if top_k is not None:
        v, _ = torch.topk(z, min(top_k, z.size(-1)))
        z = z.masked_fill(z < v[:, [-1]], float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, descending=True)
        p = torch.softmax(sorted_z, dim=-1)
        drop = p.cumsum(dim=-1) - p >= top_p  # the mass before this token is already enough
        drop[:, 0] = False
        z = torch.full_like(z, float("-inf")).scatter(-1, order, sorted_z.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(z, dim=-1), num_samples=1)
