"""What python -m tritongpt.bench measures, and on what: the model presets, the op paths, the Settings of a
run, and the command-line options it shares with the profile drivers (profiles/capture.py).

The paths, all measured in one process on the same shapes, each model built from the same seed:

    torch            eager PyTorch: the references of kernels.reference, SDPA attention (the floor)
    torch+compile    torch.compile of the same model (the honest baseline the speedup is over)
    triton           the Triton backend (kernels.*), eager
    triton+compile   the Triton backend under torch.compile: the headline. Each Triton op is one
                     node of the graph (a torch.library op) and the compiler fuses the glue around
                     them, as it does for torch+compile.
"""

import argparse
import dataclasses

import torch

from tritongpt.gpt import GPTConfig, pad_vocab
from tritongpt.train.config import COMPILE_MODES, TrainConfig, config_path, read_config_file
from tritongpt.train.system import cuda_device

# The presets are the models the trainer's configs train, read from those very files
# (train/configs/NAME.py over TrainConfig's defaults), so the step measured is the step trained:
# GPT-2's padded vocabulary, a 1024-token context, and no biases in the Linears and LayerNorms
# (bias=False: the from-scratch configs' choice, as nanoGPT's; a little faster and no worse. Only
# fine-tuning GPT-2's own weights needs bias=True, which --bias=true measures).
PRESET_CONFIGS = ("gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl")  # 124M, 350M, 774M, 1558M
MODEL_KEYS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
GPT2_VOCAB = 50257  # the BPE's size; pad_vocab makes it 50304, as the trainer does for its data


def train_model_config(name):
    """The GPTConfig keys (backend aside) of the model that train/configs/NAME.py trains."""
    values = {key: getattr(TrainConfig(), key) for key in MODEL_KEYS}
    values.update({k: v for k, v in read_config_file(TrainConfig, config_path(name)).items() if k in MODEL_KEYS})
    return dict(values, vocab_size=pad_vocab(GPT2_VOCAB))


PRESETS = {name: train_model_config(name) for name in PRESET_CONFIGS}
# --smoke: small enough that every path, torch.compile included, runs in seconds on a CPU.
SMOKE = dict(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=32, dropout=0.0, bias=True)

PATHS = {  # name -> (backend, compiled)
    "torch": ("torch", False),
    "torch+compile": ("torch", True),
    "triton": ("triton", False),
    "triton+compile": ("triton", True),
}
BASELINE = "torch+compile"
HEADLINE = "triton+compile"  # the row the benchmark is about: listed first, compared with BASELINE
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

# The trainer's AdamW settings and gradient clipping; their values do not change the step's cost.
OPTIM = dict(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95))
GRAD_CLIP = TrainConfig().grad_clip


@dataclasses.dataclass
class Settings:
    model: str = "gpt2"
    overrides: dict = dataclasses.field(default_factory=dict)  # GPTConfig keys
    seq_len: int = None  # T; None = the config's block_size
    batch: object = 8  # an int, or "auto"
    batch_max: int = 512  # the search of --batch auto stops here
    warmup: int = 5  # untimed steps first: compilation, autotuning, allocator warm-up
    steps: int = 20  # timed steps; the median is reported
    micro_steps: int = 1  # micro-batches per step (the trainer's gradient accumulation)
    dtype: str = "bfloat16"  # autocast dtype; float32 = autocast off
    compile_backend: str = "inductor"
    compile_mode: str = "default"  # torch.compile's mode (inductor only): see train.config.COMPILE_MODES
    paths: tuple = tuple(PATHS)
    seed: int = 1337
    deterministic: bool = False  # train.system.deterministic: fixed kernel tiles, no autotuning
    device: str = None  # None = cuda when available, else cpu
    smoke: bool = False


def model_config(settings):
    """The GPTConfig of the settings (backend left at torch: each path sets its own)."""
    if settings.smoke or settings.model == "smoke":
        base = dict(SMOKE)
    else:
        if settings.model not in PRESETS:
            raise ValueError(f"unknown model preset {settings.model!r}; choose one of {sorted(PRESETS)}")
        base = dict(PRESETS[settings.model])
    if "backend" in settings.overrides:
        raise ValueError("the backend is chosen per path: use --paths, not --backend")
    return GPTConfig(**dict(base, **settings.overrides))


def parse_override(key, text):
    """A `--key=value` for a GPTConfig field, converted to the field's type; an unknown key or a
    value of the wrong type is a ValueError naming it."""
    types = {f.name: f.type for f in dataclasses.fields(GPTConfig)}
    if key not in types:
        raise ValueError(f"unknown option --{key} (model config keys: {', '.join(sorted(types))})")
    kind = types[key]
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ValueError(f"--{key}={text}: expected a value of type {kind.__name__}") from None


def _device(text):
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def add_model_args(parser):
    """The options python -m tritongpt.bench shares with the profile drivers (model keys come as --key=value)."""
    parser.add_argument("--model", default="gpt2", choices=sorted(PRESETS))
    parser.add_argument("--seq-len", type=int, default=None, help="T (default: the config's block_size)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="autocast dtype (default bfloat16; float32 with --smoke on a CPU)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; aot_eager with --smoke on a CPU)")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile mode with inductor (default: default; reduce-overhead: CUDA graphs)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default=None, type=_device, help="cuda, cuda:N or cpu (default: cuda where there is one)")
    parser.add_argument("--smoke", action="store_true", help="tiny config, few steps: checks that everything runs")


def parse_overrides(parser, rest):
    """GPTConfig overrides from the arguments argparse did not know; anything else is an error."""
    overrides = {}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"unrecognized argument {item!r} (model config keys are given as --key=value)")
        key, value = item[2:].split("=", 1)
        try:
            overrides[key] = parse_override(key, value)
        except ValueError as e:
            parser.error(str(e))
    return overrides


def resolve_device(text):
    """cpu or cuda:N for --device (None: cuda where there is one; cuda: the current device, as the
    trainer takes it); ValueError naming a CUDA device that is not there."""
    device = text or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but no CUDA device is available")
    try:
        return cuda_device(device)
    except ValueError as e:
        raise ValueError(f"--device {e}") from None


def resolve_defaults(args):
    """(device, dtype, compile_backend): the device as resolve_device gives it, and --smoke's CPU
    defaults: float32, because the Triton interpreter cannot do bf16 arithmetic; aot_eager,
    because inductor's C++ build takes tens of seconds per path on a CPU (aot_eager still runs
    dynamo and AOTAutograd). ValueError for a CUDA device that is not there."""
    device = resolve_device(args.device)
    smoke_cpu = args.smoke and device == "cpu"
    dtype = args.dtype or ("float32" if smoke_cpu else "bfloat16")
    backend = args.compile_backend or ("aot_eager" if smoke_cpu else "inductor")
    return device, dtype, backend
