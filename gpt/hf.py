"""Hugging Face GPT-2 weights in and out, through transformers.

GPT-2's checkpoints store c_attn, c_proj and c_fc as Conv1D, whose weight is the transpose of
nn.Linear's; those four are transposed on the way in and out.
"""

import os

import torch

from gpt.config import GPTConfig

HF_PRESETS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_OVERRIDABLE = ("dropout", "backend")


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise ImportError("loading or exporting GPT-2 weights needs transformers: pip install transformers") from e
    return transformers


def load_hf_gpt2(cls, name_or_dir, **overrides):
    """A GPT with the weights of a Hugging Face GPT-2 (a preset name or a local directory)."""
    unknown = set(overrides) - set(_OVERRIDABLE)
    if unknown:
        raise ValueError(f"from_pretrained can only override {_OVERRIDABLE}, got {sorted(unknown)}")
    if name_or_dir not in HF_PRESETS and not os.path.isdir(name_or_dir):
        raise ValueError(f"{name_or_dir!r} is neither a GPT-2 preset {HF_PRESETS} nor a local directory")
    transformers = _transformers()
    hf = transformers.GPT2LMHeadModel.from_pretrained(name_or_dir, torch_dtype=torch.float32)
    c = hf.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{name_or_dir}: activation {c.activation_function!r} is not GPT-2's tanh GELU")
    config = GPTConfig(
        block_size=c.n_positions,
        vocab_size=c.vocab_size,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=overrides.get("dropout", 0.0),
        bias=True,
        backend=overrides.get("backend", "torch"),
    )
    model = cls(config)
    ours = model.state_dict()
    theirs = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    if set(theirs) - set(ours) or set(ours) - set(theirs):
        raise ValueError(
            f"{name_or_dir}: parameter names do not match GPT-2's: "
            f"missing {sorted(set(ours) - set(theirs))[:5]}, unexpected {sorted(set(theirs) - set(ours))[:5]}"
        )
    with torch.no_grad():
        for k, v in theirs.items():
            v = v.t() if k.endswith(_CONV1D) else v
            if v.shape != ours[k].shape:
                raise ValueError(f"{name_or_dir}: {k} has shape {tuple(v.shape)}, expected {tuple(ours[k].shape)}")
            ours[k].copy_(v)
    return model


def save_hf_gpt2(model, directory):
    """Write `directory` so that transformers.GPT2LMHeadModel.from_pretrained(directory) loads it.
    A model built with bias=False is written with zero biases, which computes the same thing."""
    transformers = _transformers()
    cfg = model.config
    hf_config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
    )
    hf = transformers.GPT2LMHeadModel(hf_config)
    theirs = hf.state_dict()
    ours = model.state_dict()
    with torch.no_grad():
        for k, dst in theirs.items():
            if k.endswith((".attn.bias", ".attn.masked_bias")):
                continue
            if k in ours:
                src = ours[k].detach().float().cpu()
                dst.copy_(src.t() if k.endswith(_CONV1D) else src)
            elif k.endswith(".bias"):
                dst.zero_()
            else:
                raise ValueError(f"save_pretrained: no source for Hugging Face parameter {k}")
    hf.save_pretrained(directory)
