"""Hugging Face weights in and out, through transformers: GPT-2 (and Cerebras-GPT, a GPT-2 with the
exact GELU), GPT-NeoX (Pythia), GPT-J and GPT-Neo, told apart by config.json's model_type.

Each family has two config mappings, theirs -> GPTConfig on the way in and GPTConfig -> theirs on
the way out, each refusing with a ValueError what the other side cannot hold (never a silent
misload), and one weight layout: for each of our parameters, the Hugging Face parameter(s) it is
made of and how. GPT-2 stores c_attn, c_proj and c_fc as Conv1D (the transpose of nn.Linear);
GPT-J and GPT-Neo keep q, k and v as three Linears, which our c_attn holds stacked; GPT-NeoX's
query_key_value is one Linear whose rows run head by head, each head's q, k, v together, where
c_attn's rows hold all of q, then k, then v.
"""

import math
import os
import re

import torch

from tritongpt.gpt import hf_files
from tritongpt.gpt.config import GPTConfig
from tritongpt.gpt.flops import num_params

FAMILIES = ("gpt2", "gpt_neox", "gptj", "gpt_neo")
_LM_CLASS = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "gptj": "GPTJForCausalLM",
             "gpt_neo": "GPTNeoForCausalLM"}
_CONFIG_CLASS = {"gpt2": "GPT2Config", "gpt_neox": "GPTNeoXConfig", "gptj": "GPTJConfig", "gpt_neo": "GPTNeoConfig"}
_OVERRIDABLE = ("dropout", "backend")
# buffers some transformers versions keep in the state dict: masks and rotary tables, not weights
_BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq",
            ".embed_positions")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GELU_IN = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
_GELU_OUT = {"tanh": "gelu_new", "exact": "gelu"}


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise ImportError("loading or exporting Hugging Face weights needs transformers: pip install transformers") from e
    return transformers


# ----------------------------------------------------------------------------- configs, theirs -> ours


def _refuse(name, what):
    raise ValueError(f"{name}: {what} is not supported; refusing rather than loading a different model")


def _gelu_in(name, act):
    if act not in _GELU_IN:
        _refuse(name, f"activation {act!r} (supported: {', '.join(_GELU_IN)})")
    return _GELU_IN[act]


def _mlp_hidden(name, width, n_embd):
    """GPTConfig.mlp_hidden of their MLP width (None: 4 * n_embd, as 0 is ours)."""
    if width is None or width == 4 * n_embd:
        return 0
    if not isinstance(width, int) or width < 1:
        _refuse(name, f"an MLP width of {width!r}")
    return width


def _rotary_fraction(name, rotary_dim, head_dim):
    if not 2 <= rotary_dim <= head_dim or rotary_dim % 2:
        _refuse(name, f"rotary over {rotary_dim} of the head's {head_dim} dims (an even count from 2 up is)")
    return rotary_dim / head_dim  # round(head_dim * this) is rotary_dim again


def _neox_rope(c):
    """(rope_type, theta, partial_rotary_factor) of a GPTNeoXConfig of transformers 4 or 5."""
    rope = getattr(c, "rope_parameters", None)
    if rope:
        return rope.get("rope_type", "default"), rope["rope_theta"], rope.get("partial_rotary_factor", 1.0)
    scaling = getattr(c, "rope_scaling", None) or {}
    return scaling.get("rope_type", scaling.get("type", "default")), c.rotary_emb_base, c.rotary_pct


def _gpt2_in(c, name):
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        _refuse(name, "scale_attn_by_inverse_layer_idx=True")
    if getattr(c, "add_cross_attention", False):
        _refuse(name, "add_cross_attention=True")
    return dict(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                mlp_hidden=_mlp_hidden(name, c.n_inner, c.n_embd),
                gelu=_gelu_in(name, c.activation_function), scaled_attention=bool(c.scale_attn_weights),
                tie_embeddings=bool(c.tie_word_embeddings), layer_norm_eps=c.layer_norm_epsilon)


def _neox_in(c, name):
    rope_type, theta, fraction = _neox_rope(c)
    if rope_type != "default":
        _refuse(name, f"rope type {rope_type!r} (only the default rotary embedding is)")
    head_dim = c.hidden_size // c.num_attention_heads
    attention_bias = getattr(c, "attention_bias", True)
    return dict(block_size=c.max_position_embeddings, vocab_size=c.vocab_size, n_layer=c.num_hidden_layers,
                n_head=c.num_attention_heads, n_embd=c.hidden_size, mlp_hidden=_mlp_hidden(name, c.intermediate_size, c.hidden_size),
                position_embedding="rotary",
                rotary_fraction=_rotary_fraction(name, int(head_dim * fraction), head_dim), rotary_base=float(theta),
                rotary_style="halves", parallel_residual=bool(c.use_parallel_residual),
                tie_embeddings=bool(c.tie_word_embeddings), qkv_bias=attention_bias, attn_proj_bias=attention_bias,
                gelu=_gelu_in(name, c.hidden_act), layer_norm_eps=c.layer_norm_eps)


def _gptj_in(c, name):
    if c.rotary_dim is None:
        _refuse(name, "rotary_dim=None (rotary over the whole embedding width at once)")
    return dict(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                mlp_hidden=_mlp_hidden(name, c.n_inner, c.n_embd),
                position_embedding="rotary", rotary_fraction=_rotary_fraction(name, c.rotary_dim, c.n_embd // c.n_head),
                rotary_base=10000.0, rotary_style="pairs", parallel_residual=True, shared_ln=True,
                tie_embeddings=bool(c.tie_word_embeddings), lm_head_bias=True, qkv_bias=False, attn_proj_bias=False,
                gelu=_gelu_in(name, c.activation_function), layer_norm_eps=c.layer_norm_epsilon)


def _neo_in(c, name):
    layers = list(c.attention_layers)
    if any(kind not in ("global", "local") for kind in layers):
        _refuse(name, f"attention layers {sorted(set(layers))} (global and local are)")
    period = next(p for p in range(1, len(layers) + 1) if all(k == layers[i % p] for i, k in enumerate(layers)))
    return dict(block_size=c.max_position_embeddings, vocab_size=c.vocab_size, n_layer=c.num_layers, n_head=c.num_heads,
                n_embd=c.hidden_size, mlp_hidden=_mlp_hidden(name, c.intermediate_size, c.hidden_size),
                attention_pattern=",".join(layers[:period]),
                window_size=c.window_size if "local" in layers else 0, scaled_attention=False, qkv_bias=False,
                tie_embeddings=bool(c.tie_word_embeddings), gelu=_gelu_in(name, c.activation_function),
                layer_norm_eps=c.layer_norm_epsilon)


_CONFIG_IN = {"gpt2": _gpt2_in, "gpt_neox": _neox_in, "gptj": _gptj_in, "gpt_neo": _neo_in}


# ----------------------------------------------------------------------------- configs, ours -> theirs


def model_family(config):
    """The Hugging Face family a GPTConfig is written as by default."""
    if config.position_embedding == "rotary":
        return "gptj" if config.rotary_style == "pairs" else "gpt_neox"
    if config.window_size or not config.scaled_attention or (config.bias and not config.qkv_bias):
        return "gpt_neo"
    return "gpt2"


def _hf_config_out(cfg, family, transformers):
    """The transformers config of `family` for cfg, or a ValueError naming every option it cannot hold.
    Where theirs has a bias that ours lacks, a zero bias is written (the same function)."""
    problems = []

    def need(ok, field, what):
        if not ok:
            problems.append(f"{field}={getattr(cfg, field)!r} ({what})")

    rotary, learned = cfg.position_embedding == "rotary", cfg.position_embedding == "learned"
    # the speedrun's options: no family of transformers' holds them (zero_init_proj is only an init)
    need(cfg.norm == "layer", "norm", f"{family} has LayerNorms")
    need(cfg.norm_gain, "norm_gain", f"{family}'s LayerNorms have a weight")
    need(cfg.mlp_activation == "gelu", "mlp_activation", f"{family}'s MLP has a GELU")
    need(not cfg.qk_norm, "qk_norm", f"{family} does not normalize q and k")
    need(not cfg.logit_softcap, "logit_softcap", f"{family} does not cap its logits")
    if family in ("gpt2", "gpt_neo"):
        need(learned, "position_embedding", f"{family} has learned positions")
        need(not cfg.parallel_residual, "parallel_residual", f"{family} adds attention and MLP one after the other")
        need(not cfg.lm_head_bias, "lm_head_bias", f"{family}'s LM head has no bias")
    if family == "gpt2":
        need(not cfg.window_size, "window_size", "gpt2 has no local attention")
    if family == "gpt_neo":
        need(not cfg.scaled_attention, "scaled_attention", "gpt_neo's scores are unscaled")
        need(not (cfg.bias and cfg.qkv_bias), "qkv_bias", "gpt_neo's q, k, v have no bias")
    if family in ("gpt_neox", "gptj"):
        need(rotary, "position_embedding", f"{family} has rotary positions")
        need(cfg.scaled_attention, "scaled_attention", f"{family} scales the scores by 1/sqrt(head dim)")
        need(not cfg.window_size, "window_size", f"{family} has no local attention")
    if family == "gpt_neox":
        need(cfg.rotary_style == "halves", "rotary_style", "gpt_neox rotates halves")
        need(not cfg.shared_ln, "shared_ln", "gpt_neox has ln_2")
        need(not cfg.lm_head_bias, "lm_head_bias", "gpt_neox's LM head has no bias")
    if family == "gptj":
        need(cfg.rotary_style == "pairs", "rotary_style", "gptj rotates pairs")
        need(cfg.parallel_residual and cfg.shared_ln, "shared_ln", "gptj has one LayerNorm and a parallel residual")
        need(not (cfg.bias and cfg.qkv_bias), "qkv_bias", "gptj's q, k, v have no bias")
        need(not (cfg.bias and cfg.attn_proj_bias), "attn_proj_bias", "gptj's out_proj has no bias")
        need(cfg.rotary_base == 10000.0, "rotary_base", "gptj's base is 10000")
    if problems:
        raise ValueError(f"save_pretrained: a {family} cannot hold this model: {'; '.join(problems)}")

    act, drop = _GELU_OUT[cfg.gelu], cfg.dropout
    inner = cfg.mlp_hidden or None  # the MLP width, None for their default 4 * n_embd
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings)
    if family == "gpt2":
        return transformers.GPT2Config(
            n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_inner=inner, activation_function=act, resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop,
            layer_norm_epsilon=cfg.layer_norm_eps, scale_attn_weights=cfg.scaled_attention, **common)
    if family == "gpt_neo":
        kinds = [k for k in cfg.attention_kinds()]
        if cfg.n_layer % len(kinds) == 0:
            types = [[kinds, cfg.n_layer // len(kinds)]]
        else:
            types = [[[kinds[i % len(kinds)]], 1] for i in range(cfg.n_layer)]
        return transformers.GPTNeoConfig(
            max_position_embeddings=cfg.block_size, hidden_size=cfg.n_embd, num_layers=cfg.n_layer,
            num_heads=cfg.n_head, attention_types=types, window_size=cfg.window_size or 256, intermediate_size=inner,
            activation_function=act,
            resid_dropout=drop, embed_dropout=drop, attention_dropout=drop, layer_norm_epsilon=cfg.layer_norm_eps,
            **common)
    if family == "gptj":
        return transformers.GPTJConfig(
            n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            rotary_dim=cfg.rotary_dim, n_inner=inner, activation_function=act, resid_pdrop=drop, embd_pdrop=drop,
            attn_pdrop=drop,
            layer_norm_epsilon=cfg.layer_norm_eps, **common)
    # gpt_neox: a rotary share that transformers' int(head_dim * share) turns back into rotary_dim
    share = cfg.rotary_dim / cfg.head_dim
    if int(cfg.head_dim * share) != cfg.rotary_dim:
        share = (cfg.rotary_dim + 0.5) / cfg.head_dim
    hf = transformers.GPTNeoXConfig(
        max_position_embeddings=cfg.block_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.mlp_width, hidden_act=act, rotary_pct=share,
        rotary_emb_base=cfg.rotary_base, use_parallel_residual=cfg.parallel_residual, hidden_dropout=drop,
        attention_dropout=drop, layer_norm_eps=cfg.layer_norm_eps,
        attention_bias=cfg.bias and (cfg.qkv_bias or cfg.attn_proj_bias), **common)
    if _neox_rope(hf)[1:] != (cfg.rotary_base, share):  # pragma: no cover - a transformers that renamed them again
        raise ValueError("save_pretrained: this transformers' GPTNeoXConfig did not take the rotary settings")
    return hf


# ----------------------------------------------------------------------------- weights


def _under(prefix, names):
    """Their parameter name(s) under a block's prefix: a name, or a tuple of names stacked into one of ours."""
    return tuple(prefix + x for x in names) if isinstance(names, tuple) else prefix + names


def _layout(family, config, theirs):
    """[(our key, their key or (q, k, v) keys, how)] for every parameter of `family`, how being
    "same", "conv1d" (transposed), "qkv" (three stacked) or "heads" (GPT-NeoX's row order)."""
    if family == "gpt2":
        top = [("transformer.wte", "transformer.wte", "same"), ("transformer.wpe", "transformer.wpe", "same"),
               ("transformer.ln_f", "transformer.ln_f", "same")]
        per = [("ln_1", "ln_1", "same"), ("attn.c_attn", "attn.c_attn", "conv1d"), ("attn.c_proj", "attn.c_proj", "conv1d"),
               ("ln_2", "ln_2", "same"), ("mlp.c_fc", "mlp.c_fc", "conv1d"), ("mlp.c_proj", "mlp.c_proj", "conv1d")]
        block, lm_head = "transformer.h.{}.", "lm_head"
    elif family == "gpt_neox":
        top = [("transformer.wte", "gpt_neox.embed_in", "same"), ("transformer.ln_f", "gpt_neox.final_layer_norm", "same")]
        per = [("ln_1", "input_layernorm", "same"), ("attn.c_attn", "attention.query_key_value", "heads"),
               ("attn.c_proj", "attention.dense", "same"), ("ln_2", "post_attention_layernorm", "same"),
               ("mlp.c_fc", "mlp.dense_h_to_4h", "same"), ("mlp.c_proj", "mlp.dense_4h_to_h", "same")]
        block = "gpt_neox.layers.{}."
        lm_head = "embed_out" if "embed_out.weight" in theirs else "lm_head"  # the name of transformers < 5
    else:  # gptj, gpt_neo
        attn = "attn." if family == "gptj" else "attn.attention."
        top = [("transformer.wte", "transformer.wte", "same"), ("transformer.ln_f", "transformer.ln_f", "same")]
        if family == "gpt_neo":
            top.append(("transformer.wpe", "transformer.wpe", "same"))
        per = [("ln_1", "ln_1", "same"), ("attn.c_attn", tuple(attn + p for p in ("q_proj", "k_proj", "v_proj")), "qkv"),
               ("attn.c_proj", attn + "out_proj", "same")]
        if family == "gptj":
            per += [("mlp.c_fc", "mlp.fc_in", "same"), ("mlp.c_proj", "mlp.fc_out", "same")]
        else:
            per += [("ln_2", "ln_2", "same"), ("mlp.c_fc", "mlp.c_fc", "same"), ("mlp.c_proj", "mlp.c_proj", "same")]
        block, lm_head = "transformer.h.{}.", "lm_head"
    modules = top + [("lm_head", lm_head, "same")]
    for i in range(config.n_layer):
        modules += [(f"transformer.h.{i}.{ours}", _under(block.format(i), t), how) for ours, t, how in per]
    out = []
    for ours, t, how in modules:
        for p in ("weight", "bias"):
            their_keys = tuple(f"{k}.{p}" for k in t) if isinstance(t, tuple) else f"{t}.{p}"
            out.append((f"{ours}.{p}", their_keys, "same" if (how == "conv1d" and p == "bias") else how))
    return out


def _to_ours(tensors, how, n_head):
    if how == "qkv":
        return torch.cat(tensors, dim=0)  # (3C, ...) rows: q, then k, then v
    (t,) = tensors
    if how == "conv1d":
        return t.t()
    if how == "heads":  # rows (nh, 3, hs) -> (3, nh, hs)
        return t.reshape(n_head, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    return t


def _to_theirs(t, how, n_head):
    if how == "qkv":
        return t.chunk(3, dim=0)
    if how == "conv1d":
        return (t.t(),)
    if how == "heads":  # rows (3, nh, hs) -> (nh, 3, hs)
        return (t.reshape(3, n_head, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape),)
    return (t,)


def _weights(state_dict):
    return {k: v for k, v in state_dict.items() if not k.endswith(_BUFFERS)}


# ----------------------------------------------------------------------------- in and out


def _read_hf_config(name_or_dir, transformers):
    """(family, transformers config) of a local directory or a hub name; a ValueError otherwise."""
    if os.path.isdir(name_or_dir):
        model_type = hf_files.read_config_json(name_or_dir).get("model_type")
    elif _HUB_NAME.match(name_or_dir):
        try:
            model_type = transformers.AutoConfig.from_pretrained(name_or_dir).model_type
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{name_or_dir!r} is neither a local directory nor a model the Hugging Face hub "
                             f"gives here ({reason})") from None
    else:
        raise ValueError(f"{name_or_dir!r} is neither a local directory nor a Hugging Face hub name "
                         "(such as gpt2 or EleutherAI/pythia-160m)")
    if model_type not in FAMILIES:
        raise ValueError(f"{name_or_dir}: model_type {model_type!r} is not supported; from_pretrained reads "
                         f"{', '.join(FAMILIES)} (GPT-2 and Cerebras-GPT, GPT-NeoX/Pythia, GPT-J, GPT-Neo)")
    try:
        return model_type, getattr(transformers, _CONFIG_CLASS[model_type]).from_pretrained(name_or_dir)
    except Exception as e:  # noqa: BLE001 - a value of the wrong type: transformers' validators raise many kinds
        raise ValueError(f"{name_or_dir}: transformers cannot read its {hf_files.CONFIG} as a {model_type} config "
                         f"({hf_files.reason(e)})") from None


def _configs(name_or_dir, overrides):
    unknown = set(overrides) - set(_OVERRIDABLE)
    if unknown:
        raise ValueError(f"from_pretrained can only override {_OVERRIDABLE}, got {sorted(unknown)}")
    family, hf_config = _read_hf_config(name_or_dir, _transformers())
    try:
        args = _CONFIG_IN[family](hf_config, name_or_dir)  # a ValueError naming what is not supported
        config = GPTConfig(**args, dropout=overrides.get("dropout", 0.0), backend=overrides.get("backend", "torch"))
    except (TypeError, KeyError, AttributeError, ZeroDivisionError) as e:  # a value missing or of the wrong type
        raise ValueError(f"{name_or_dir}: its {hf_files.CONFIG} does not describe a {family} "
                         f"({hf_files.reason(e)})") from None
    except ValueError as e:
        if str(e).startswith(f"{name_or_dir}:"):
            raise
        raise ValueError(f"{name_or_dir}: {hf_files.CONFIG}: {e}") from None
    return family, hf_config, config


def read_config(name_or_dir, **overrides):
    """The GPTConfig of a Hugging Face model (a hub name or a local directory), without its weights."""
    return _configs(name_or_dir, overrides)[2]


def check_weights(cls, name_or_dir, family, config):
    """Refuse (ValueError) a local directory whose weight files do not hold the model that its
    config.json describes, before anything of its size is allocated: first the parameter count
    (a wrong model_type makes another family's model, often of another size), then, with `cls`
    built on the meta device (no memory), every tensor's name and shape."""
    files = hf_files.weight_files(name_or_dir)
    shapes, nbytes = hf_files.tensor_shapes(files)
    shapes = {k: v for k, v in shapes.items() if not k.endswith(_BUFFERS)}
    held, wanted = sum(math.prod(s) for s in shapes.values()), num_params(config)
    where = files[0] if len(files) == 1 else f"the {len(files)} weight files of {name_or_dir}"
    if not held:
        raise ValueError(f"{where} holds no weights; save or download the model there again")
    if not 0.5 < wanted / held < 2:  # zero biases a family has and ours lacks, and a tied head, differ a little
        raise ValueError(f"{name_or_dir}: its {hf_files.CONFIG} describes a {family} of {wanted:,} parameters but "
                         f"{where} holds {held:,}: the config does not describe these weights (is model_type "
                         f"{family!r} right?)")
    with torch.device("meta"):
        ours = cls(config).state_dict()
    expected = {}
    for our_key, their_keys, how in _layout(family, config, shapes):
        if our_key in ours:
            keys = their_keys if isinstance(their_keys, tuple) else (their_keys,)
            parts = _to_theirs(ours[our_key], how, config.n_head)
            expected.update((k, tuple(p.shape)) for k, p in zip(keys, parts, strict=True))
    if not set(expected) & set(shapes):
        raise ValueError(f"{name_or_dir}: {where} holds none of the parameters of a {family} (it has "
                         f"{sorted(shapes)[0]}, a {family} has {sorted(expected)[0]}): is model_type {family!r} right?")
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            raise ValueError(f"{name_or_dir}: its {hf_files.CONFIG} makes {key} {shape}, but {where} holds "
                             f"{shapes[key]}: the config does not describe these weights")
    tied_head = ("lm_head.weight", "embed_out.weight") if config.tie_embeddings else ()  # often not saved
    missing = sorted(k for k in expected if k not in shapes and k not in tied_head)
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"holds {extra[0]}"
        raise ValueError(f"{name_or_dir}: {where} {what}, which the {family} of its {hf_files.CONFIG} "
                         f"{'has' if missing else 'has no place for'} ({len(missing) + len(extra)} such): "
                         "the config does not describe these weights")
    return nbytes


def check_memory(name_or_dir, config, file_bytes=0):
    """Refuse (ValueError) a model whose loading cannot fit the memory this process may still take:
    two fp32 copies of every parameter (ours, and transformers' model it is read through), and
    the weight files, mapped into memory while they are read."""
    need = 8 * num_params(config) + file_bytes
    free, what = hf_files.free_memory()
    if free is not None and need > free:
        raise ValueError(f"{name_or_dir}: loading its {num_params(config) / 1e9:.2f}B-parameter {config.n_layer}-layer "
                         f"model needs about {need / 2**30:.1f} GiB, more than the {max(free, 0) / 2**30:.1f} GiB "
                         f"that {what} leaves this process; load it on a machine with more memory")


def load_hf(cls, name_or_dir, **overrides):
    """A `cls` (GPT) with the weights of a Hugging Face model of a supported family; a local
    directory's weight files are checked against its config.json, and the memory the model takes
    against what is free, before it is built."""
    family, hf_config, config = _configs(name_or_dir, overrides)
    file_bytes = check_weights(cls, name_or_dir, family, config) if os.path.isdir(name_or_dir) else 0
    check_memory(name_or_dir, config, file_bytes)
    model = cls(config)  # refuses what the backend cannot run before any weight is read
    transformers = _transformers()
    lm_class = getattr(transformers, _LM_CLASS[family])
    try:
        hf, info = lm_class.from_pretrained(name_or_dir, config=hf_config, dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - damaged or unreachable weights: transformers and safetensors raise many kinds
        raise ValueError(f"{name_or_dir}: transformers cannot read its weights ({hf_files.reason(e)})") from None
    absent = [k for k in list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
              if not str(k).endswith(_BUFFERS)]
    if absent:
        raise ValueError(f"{name_or_dir}: the checkpoint lacks or mismatches {sorted(map(str, absent))[:5]} "
                         f"of {_LM_CLASS[family]}")
    theirs = _weights(hf.state_dict())
    ours = model.state_dict()
    used = set()
    with torch.no_grad():
        for our_key, their_keys, how in _layout(family, config, theirs):
            keys = their_keys if isinstance(their_keys, tuple) else (their_keys,)
            present = [k in theirs for k in keys]
            if our_key not in ours:
                continue  # a bias ours has not: left in `theirs`, so refused below
            if not all(present):
                raise ValueError(f"{name_or_dir}: no {keys[present.index(False)]} for our {our_key}")
            value = _to_ours([theirs[k] for k in keys], how, config.n_head)
            if value.shape != ours[our_key].shape:
                raise ValueError(f"{name_or_dir}: {our_key} would get shape {tuple(value.shape)}, "
                                 f"expected {tuple(ours[our_key].shape)}")
            ours[our_key].copy_(value)
            used.update(keys)
    left = sorted(set(theirs) - used)
    if left:
        raise ValueError(f"{name_or_dir}: parameters with no place in the model: {left[:5]}")
    return model


def save_hf(model, directory, family=None):
    """Write `directory` so that transformers' AutoModelForCausalLM (and the family's own class)
    loads it. Biases the family has and the model lacks are written as zeros."""
    transformers = _transformers()
    cfg = model.config
    family = family or model_family(cfg)
    if family not in FAMILIES:
        raise ValueError(f"save_pretrained: family must be one of {FAMILIES}, got {family!r}")
    hf = getattr(transformers, _LM_CLASS[family])(_hf_config_out(cfg, family, transformers))
    theirs = _weights(hf.state_dict())
    ours = model.state_dict()
    written = set()
    with torch.no_grad():
        for our_key, their_keys, how in _layout(family, cfg, theirs):
            keys = their_keys if isinstance(their_keys, tuple) else (their_keys,)
            if not all(k in theirs for k in keys):
                if our_key in ours:
                    raise ValueError(f"save_pretrained: a {family} has no place for {our_key}")
                continue
            if our_key in ours:
                parts = _to_theirs(ours[our_key].detach().float().cpu(), how, cfg.n_head)
            elif our_key.endswith(".bias"):
                parts = [torch.zeros_like(theirs[k]) for k in keys]
            else:
                raise ValueError(f"save_pretrained: no source for {family} parameter {keys[0]}")
            for k, part in zip(keys, parts, strict=True):
                theirs[k].copy_(part)
            written.update(keys)
    unwritten = sorted(set(theirs) - written)
    if unwritten:
        raise ValueError(f"save_pretrained: no source for the {family} parameters {unwritten[:5]}")
    hf.save_pretrained(directory)
