"""The trainer's configuration: one dataclass, a config file, and --key=value overrides.

    python -m tritongpt.train                                   # the main command (see train/__main__.py)
    python -m tritongpt.train shakespeare_char                  # a named config from train/configs/
    python -m tritongpt.train my_config.py --batch_size=32      # a config file of your own, then overrides

A config file is Python that assigns some of the keys below (`n_layer = 6`), as in nanoGPT.
Every value is checked against the type of its key; an unknown key, a value of the wrong type or
an impossible combination raises ConfigError with a one-line message naming it.
"""

import difflib
import math
import os
import re
from dataclasses import asdict, dataclass, fields

from tritongpt.gpt import GPTConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
GPT2_PRESETS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name on the Hugging Face hub
# The model's family options: GPTConfig's keys of the same names (their defaults, GPT-2's, too).
FAMILY_KEYS = ("position_embedding", "rotary_fraction", "rotary_base", "rotary_style", "parallel_residual", "shared_ln",
               "tie_embeddings", "lm_head_bias", "qkv_bias", "attn_proj_bias", "gelu", "attention_pattern", "window_size",
               "scaled_attention", "layer_norm_eps",
               # the speedrun's options (nanochat's GPT): see docs/model-options.md
               "norm", "norm_gain", "mlp_activation", "mlp_hidden", "qk_norm", "logit_softcap", "zero_init_proj")
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "bias") + FAMILY_KEYS  # recorded from the model actually trained


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # else save only when val loss improves
    init_from: str = "scratch"  # scratch | resume | gpt2* | a Hugging Face dir or hub name (GPT-2, GPT-NeoX, GPT-J, GPT-Neo)
    keep_last: int = 2  # checkpoints kept besides the best by val loss
    # logging
    wandb_log: bool = False  # wandb is imported only when this is on
    wandb_project: str = "tritongpt"
    wandb_run_name: str = "run"
    nvtx: bool = False  # NVTX ranges for Nsight Systems (data, forward, backward, optimizer)
    # data
    dataset: str = "openwebtext"  # a directory under data_dir (or a path) written by prep
    data_dir: str = "data"
    gradient_accumulation_steps: int = 40  # micro-steps per step, over all processes together
    batch_size: int = 12  # sequences per micro-step per process
    block_size: int = 1024
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    vocab_multiple: int = 64  # a new model's vocabulary is padded to a multiple of this (matmul speed on a GPU); 1: none
    bias: bool = False
    backend: str = "auto"  # auto (triton on a GPU where it runs the model, else torch) | torch | triton
    # the model's family (gpt.GPTConfig's options; the defaults make a GPT-2): see train/configs/pythia_70m.py
    position_embedding: str = "learned"  # learned | rotary
    rotary_fraction: float = 1.0  # share of each head's dims that rotary turns
    rotary_base: float = 10000.0
    rotary_style: str = "halves"  # halves (GPT-NeoX) | pairs (GPT-J)
    parallel_residual: bool = False  # attention and MLP side by side (GPT-NeoX, GPT-J)
    shared_ln: bool = False  # ... reading one LayerNorm (GPT-J)
    tie_embeddings: bool = True  # the LM head is the token embedding
    lm_head_bias: bool = False
    qkv_bias: bool = True  # where bias is on
    attn_proj_bias: bool = True  # where bias is on
    gelu: str = "tanh"  # tanh | exact
    attention_pattern: str = "global"  # per layer, repeated: global,local is GPT-Neo's
    window_size: int = 0  # positions a local layer sees
    scaled_attention: bool = True  # False: GPT-Neo's unscaled scores
    layer_norm_eps: float = 1e-5
    # the speedrun's model options (gpt.GPTConfig's; the defaults make a GPT-2): see docs/model-options.md
    norm: str = "layer"  # layer | rms
    norm_gain: bool = True  # the norms' learned gain
    mlp_activation: str = "gelu"  # gelu (the one `gelu` names) | relu2
    mlp_hidden: int = 0  # the MLP's width; 0: 4 * n_embd
    qk_norm: bool = False  # q and k RMS-normalized per head
    logit_softcap: float = 0.0  # C: logits C * tanh(logits / C); 0: none
    zero_init_proj: bool = False  # attn.c_proj and mlp.c_proj start at zero
    # the optimizer: AdamW for every parameter, or Muon for the blocks' matrices and AdamW for the rest (train/optim.py)
    optimizer: str = "adamw"  # adamw | muon
    muon_lr: float = 0.02  # Muon's peak rate (times max(1, rows / cols) ** 0.5 per matrix); it follows the schedule
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    # AdamW (with optimizer=muon: of the embeddings, the LM head and the 1-D parameters)
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    # learning rate schedule: linear warm-up, then cosine down to min_lr at lr_decay_iters
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16 on a GPU that has it, else float16; float32 on a CPU) | float32 | bfloat16 | float16
    compile: str = "auto"  # torch.compile the model: auto (on where a GPU is) | true | false
    compile_mode: str = "default"  # torch.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    cpu_threads: int = 0  # torch's threads when training on a CPU; 0 keeps torch's default
    seed: int = 1337
    deterministic: bool = False  # two runs of one config on one machine bitwise equal: fixed kernel tiles, no autotuning (slower)
    join_timeout: float = 300.0  # seconds a process waits for the others to join the process group
    # beyond one GPU's memory (see train/parallel.py and train/memory.py)
    fsdp: bool = False  # shard parameters, gradients and AdamW's states over the processes (FSDP2), not DDP's copies
    fsdp_accumulate: str = "auto"  # between micro-steps FSDP keeps: unsharded (one gather and reduce per step) | sharded (least memory) | auto (unsharded where it fits)
    activation_checkpointing: bool = False  # each block recomputes its activations in the backward instead of keeping them
    max_bad_steps: int = 5  # this many non-finite losses in a row stop the run

    def to_dict(self):
        return asdict(self)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_AUTO_BOOLS = ("compile",)  # str keys of auto | true | false, which also take a bool (compile = True)


def _type_of(cls, name):
    t = {f.name: f.type for f in fields(cls)}[name]
    return _TYPES.get(t, t) if isinstance(t, str) else t


def _unknown(cls, key, where):
    names = [f.name for f in fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}")


def check_value(cls, key, value, where=""):
    """`value` as the type of `key`, or ConfigError. Ints are accepted for float keys."""
    if key not in {f.name for f in fields(cls)}:
        raise _unknown(cls, key, where)
    want = _type_of(cls, key)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key in _AUTO_BOOLS and isinstance(value, bool):
        return "true" if value else "false"
    if type(value) is not want:
        raise ConfigError(f"config key '{key}'{where} must be {want.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_value(cls, key, text):
    """Parse the text of --key=text as the type of `key`."""
    where = f" (in --{key}={text})"
    if key not in {f.name for f in fields(cls)}:
        raise _unknown(cls, key, where)
    want = _type_of(cls, key)
    if key in _AUTO_BOOLS:
        spelled = {"auto": "auto", "true": "true", "1": "true", "yes": "true", "false": "false", "0": "false", "no": "false"}
        if text.lower() not in spelled:
            raise ConfigError(f"config key '{key}' must be auto, true or false, got {text!r}")
        return spelled[text.lower()]
    if want is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key '{key}' must be true or false, got {text!r}")
    if want is str:
        return text
    try:
        return want(text)
    except ValueError:
        raise ConfigError(f"config key '{key}' must be {want.__name__}, got {text!r}") from None


def config_path(name):
    """A named config (train/configs/NAME.py) or a path to a config file."""
    if os.path.isfile(name):
        return name
    named = os.path.join(CONFIG_DIR, name if name.endswith(".py") else name + ".py")
    if os.path.isfile(named):
        return named
    available = ", ".join(sorted(n[:-3] for n in os.listdir(CONFIG_DIR) if n.endswith(".py") and n != "__init__.py"))
    raise ConfigError(f"config '{name}' is neither a file nor one of the named configs: {available}")


def read_config_file(cls, path):
    """The key -> value assignments of a config file, each checked."""
    namespace = {}
    try:
        with open(path, encoding="utf-8") as f:
            exec(compile(f.read(), path, "exec"), namespace)  # noqa: S102 - config files are Python, as nanoGPT's
    except SyntaxError as e:
        raise ConfigError(f"config file {path} line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - any error in a config file is the file's fault
        raise ConfigError(f"config file {path}: {type(e).__name__}: {e}") from None
    where = f" (in {os.path.basename(path)})"
    values = {}
    for key, value in namespace.items():
        if key.startswith("_") or callable(value) or type(value).__name__ == "module":
            continue
        values[key] = check_value(cls, key, value, where)
    return values


def usage(cls):
    """Every key with its type and default, one per line, for --help."""
    return "\n".join(f"  --{f.name}={getattr(cls(), f.name)!r}  ({_type_of(cls, f.name).__name__})" for f in fields(cls))


def parse_args(cls, argv):
    """(config file or None, {key: value}) from [CONFIG] [--key=value ...]."""
    config_file, overrides = None, {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"argument '{arg}' must be written --{key}=VALUE")
            overrides[key] = parse_value(cls, key, text)
        elif config_file is None:
            config_file = config_path(arg)
        else:
            raise ConfigError(f"unexpected argument '{arg}': give one config, then --key=value overrides")
    return config_file, overrides


def load_config(argv, cls=TrainConfig, base=None):
    """A config from [CONFIG] [--key=value ...]: the defaults, then `base`, then the config file,
    then the overrides. cfg.given holds the keys that these set."""
    config_file, overrides = parse_args(cls, argv)
    values = dict(base or {})
    if config_file is not None:
        values.update(read_config_file(cls, config_file))
    values.update(overrides)
    cfg = cls(**values)
    cfg.given = frozenset(values)  # the keys set on purpose (not a field: never saved or listed)
    if cls is TrainConfig:
        validate(cfg)
    return cfg


def given_keys(cfg):
    """The keys of cfg set on purpose: by load_config, or else those that differ from their default."""
    given = getattr(cfg, "given", None)
    if given is None:
        given = {f.name for f in fields(cfg) if getattr(cfg, f.name) != f.default}
    return given


def check_resumed_shape(cfg, model_args):
    """A resumed run keeps the shape it was trained with (model_args, from its checkpoint): a shape
    key set on purpose to another value is an error. (A run restarted from pretrained weights
    ignores the keys, as it did when it started.)"""
    if cfg.init_from not in ("scratch", "resume"):
        return
    given = given_keys(cfg)
    saved = GPTConfig(**model_args)  # a checkpoint older than a key holds its default
    for key in MODEL_KEYS:
        if key in given and getattr(cfg, key) != getattr(saved, key):
            raise ConfigError(
                f"config key '{key}' is {getattr(cfg, key)} but the checkpoint in {cfg.out_dir} has {getattr(saved, key)}: "
                "a resumed run keeps its shape; drop the setting, or train the new shape into another out_dir"
            )


def validate(cfg, world_size=1):
    """The checks that need no device and no data: ranges and impossible combinations."""
    for f in fields(cfg):
        if _type_of(type(cfg), f.name) is float and not math.isfinite(getattr(cfg, f.name)):
            raise ConfigError(f"config key '{f.name}' must be a finite number, got {getattr(cfg, f.name)}")
    positive = ("eval_interval", "log_interval", "eval_iters", "keep_last", "gradient_accumulation_steps",
                "batch_size", "block_size", "n_layer", "n_head", "n_embd", "max_bad_steps", "vocab_multiple")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(cfg, key)}")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "cpu_threads"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must not be negative, got {getattr(cfg, key)}")
    if not cfg.join_timeout > 0:
        raise ConfigError(f"config key 'join_timeout' must be positive (seconds), got {cfg.join_timeout}")
    for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "muon_lr"):
        if not getattr(cfg, key) >= 0:
            raise ConfigError(f"config key '{key}' must not be negative, got {getattr(cfg, key)}")
    for key in ("beta1", "beta2", "muon_momentum"):
        if not 0 <= getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {getattr(cfg, key)}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"config key 'dropout' must be in [0, 1), got {cfg.dropout}")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"config key 'n_embd' ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    try:  # the model's options and their combinations, as GPTConfig checks them
        GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, bias=cfg.bias,
                  **{key: getattr(cfg, key) for key in FAMILY_KEYS})
    except ValueError as e:
        raise ConfigError(re.sub(r"^GPTConfig\.(\w+)", r"config key '\1'", str(e))) from None
    if cfg.decay_lr and cfg.lr_decay_iters < cfg.warmup_iters:
        raise ConfigError(
            f"config key 'lr_decay_iters' ({cfg.lr_decay_iters}) must not be less than warmup_iters ({cfg.warmup_iters})"
        )
    choices = {
        "backend": ("auto", "torch", "triton"),
        "dtype": ("auto", "float32", "bfloat16", "float16"),
        "compile": ("auto", "true", "false"),
        "compile_mode": COMPILE_MODES,
        "fsdp_accumulate": ("auto", "unsharded", "sharded"),
        "optimizer": ("adamw", "muon"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    if cfg.optimizer == "muon" and not cfg.learning_rate > 0:
        raise ConfigError("config key 'learning_rate' must be positive with optimizer=muon: Muon's rate follows the "
                          "schedule as a share of it (muon_lr / learning_rate)")
    if cfg.fsdp and cfg.compile_mode in ("reduce-overhead", "max-autotune"):
        raise ConfigError(f"config key 'compile_mode' is {cfg.compile_mode}, whose CUDA graphs do not take the weights "
                          "fsdp gathers anew at each block; use default or max-autotune-no-cudagraphs")
    if cfg.deterministic and cfg.compile_mode.startswith("max-autotune"):
        raise ConfigError(f"config key 'deterministic' is on with compile_mode {cfg.compile_mode}, which picks kernels by "
                          "timing them; use default or reduce-overhead")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"config key 'device' must be auto, cpu, cuda or cuda:N; got {cfg.device!r}")
    if not pretrained_source(cfg.init_from) and cfg.init_from not in ("scratch", "resume"):
        raise ConfigError(
            f"config key 'init_from' must be scratch, resume, one of {', '.join(GPT2_PRESETS)}, a Hugging Face "
            f"model directory or a hub name such as EleutherAI/pythia-70m; got {cfg.init_from!r}"
        )
    if cfg.gradient_accumulation_steps % world_size:
        raise ConfigError(
            f"config key 'gradient_accumulation_steps' ({cfg.gradient_accumulation_steps}) must be divisible by "
            f"the number of processes ({world_size}): the global batch is split evenly among them"
        )


def pretrained_source(name):
    """Whether init_from names pretrained Hugging Face weights: a GPT-2 preset, a local directory or
    an owner/name on the hub (which from_pretrained fetches where a network is)."""
    return name in GPT2_PRESETS or os.path.isdir(name) or bool(HUB_NAME.match(name))
