"""python -m tritongpt.train.plan: a compute-optimal training run, from a model size or a compute budget.

    python -m tritongpt.train.plan --params=124M                          # how many tokens, FLOPs, hours
    python -m tritongpt.train.plan --flops=1e20 --family=pythia           # the model a FLOP budget trains best
    python -m tritongpt.train.plan --gpu_hours=1000 --gpu=H100 --gpus=8 --mfu=0.45

Chinchilla's lesson (Hoffmann et al., 2022), which Cerebras-GPT trained a whole family by: for a
given compute, train N parameters on about 20 tokens per parameter. Give one of --params,
--flops or --gpu_hours; the plan prints
    tokens   D = tokens_per_param x N (N: every parameter, as both papers count them), or with a
             budget, as many tokens as the budget pays for
    FLOPs    D x gpt/flops.py's flops_per_token: 6 x the matmul weights + attention's 12 L C T
    time     FLOPs / (the GPU's dense bf16 peak, gpt/flops.py's table, x MFU), in GPU-hours and
             in hours on --gpus of them
    shape    the known shape (GPT-2, GPT-Neo, GPT-J, Pythia, Cerebras-GPT sizes) nearest to the
             compute-optimal size, and the trainer's command line that trains it
A budget is solved for the optimum first: C = 6 N D with D = tokens_per_param x N gives
N = sqrt(C / (6 x tokens_per_param)). Bad input is one line on stderr and exit status 2.
"""

import argparse
import math
import sys

from tritongpt.gpt import GPTConfig, pad_vocab
from tritongpt.gpt.flops import PEAKS, flops_per_token, matmul_params, num_params, peak_flops
from tritongpt.train import flags
from tritongpt.train.config import TrainConfig, config_path, read_config_file
from tritongpt.train.flags import FlagError, Range

# Published shapes: (n_layer, n_head, n_embd) -> who has it.
SHAPES = [
    ((6, 8, 512), "Pythia-70M"),
    ((10, 12, 768), "Cerebras-GPT-111M"),
    ((12, 12, 768), "GPT-2 124M, GPT-Neo-125M, Pythia-160M"),
    ((14, 17, 1088), "Cerebras-GPT-256M"),
    ((24, 16, 1024), "GPT-2 350M, Pythia-410M"),
    ((18, 12, 1536), "Cerebras-GPT-590M"),
    ((36, 20, 1280), "GPT-2 774M"),
    ((16, 8, 2048), "Pythia-1B"),
    ((24, 16, 2048), "GPT-Neo-1.3B, Cerebras-GPT-1.3B, Pythia-1.4B"),
    ((48, 25, 1600), "GPT-2 1.5B"),
    ((32, 32, 2560), "Cerebras-GPT-2.7B, Pythia-2.8B"),
    ((28, 16, 4096), "GPT-J-6B"),
    ((32, 32, 4096), "Cerebras-GPT-6.7B, Pythia-6.9B"),
    ((36, 40, 5120), "Pythia-12B"),
    ((40, 40, 5120), "Cerebras-GPT-13B"),
]
# --family -> the trainer's config whose options (and tokens per step) the plan starts from
FAMILY_CONFIGS = {"gpt2": "gpt2", "pythia": "pythia_70m", "gpt_neo": "gpt_neo_125m"}
VOCAB = pad_vocab(50257)  # GPT-2's BPE, as prep writes it


# Every numeric flag's range: wide enough for any run there has been, narrow enough that every
# figure of the plan stays finite and readable.
FLAGS = {
    "params": Range(1e5, 1e13, amount=True),  # 100K to 10T parameters
    "flops": Range(1e12, 1e28, amount=True),  # a few GPU-seconds to beyond the largest runs
    "gpu_hours": Range(1e-3, 1e8),
    "gpus": Range(1, 1_000_000, integer=True),
    "mfu": Range(0.001, 1),
    "tokens_per_param": Range(0.01, 1e5),
    "block_size": Range(1, 1 << 20, integer=True),
}


class PlanError(FlagError):
    """Bad input; the message says which and why."""


def parse_amount(text, name):
    """124M, 1.3B, 7e9, 1e20 -> a float in the flag's range."""
    return flags.parse(name, text, FLAGS)


def family_config(family, block_size=None):
    """(train config name, TrainConfig values of its file) of a --family."""
    if family not in FAMILY_CONFIGS:
        raise PlanError(f"--family must be one of {', '.join(FAMILY_CONFIGS)}; got {family!r}")
    name = FAMILY_CONFIGS[family]
    values = {f: getattr(TrainConfig(), f) for f in TrainConfig.__dataclass_fields__}
    values.update(read_config_file(TrainConfig, config_path(name)))
    if block_size is not None:
        values["block_size"] = block_size
    return name, values


def model_config(values, shape):
    """The GPTConfig of `shape` with the family options of a trainer config's values."""
    n_layer, n_head, n_embd = shape
    keys = [k for k in GPTConfig.__dataclass_fields__ if k in values and k not in ("backend", "n_layer", "n_head",
                                                                                    "n_embd", "vocab_size")]
    return GPTConfig(vocab_size=VOCAB, n_layer=n_layer, n_head=n_head, n_embd=n_embd, **{k: values[k] for k in keys})


def plan(params=None, flops=None, gpu_hours=None, family="gpt2", gpu="H100", gpus=1, mfu=0.4, tokens_per_param=20.0,
         block_size=None):
    """The plan as a dict (what main prints)."""
    if sum(x is not None for x in (params, flops, gpu_hours)) != 1:
        raise PlanError("give exactly one of --params, --flops and --gpu_hours")
    peak = peak_flops(gpu)
    if peak is None:
        raise PlanError(f"--gpu {gpu!r} has no bf16 peak in gpt/flops.py; known: {', '.join(PEAKS)}")
    given = dict(params=params, flops=flops, gpu_hours=gpu_hours, gpus=gpus, mfu=mfu, tokens_per_param=tokens_per_param,
                 block_size=block_size)
    for name, value in given.items():
        if value is not None:
            flags.check(name, value, FLAGS)
    name, values = family_config(family, block_size)
    T = values["block_size"]
    budget = flops if flops is not None else (gpu_hours * 3600 * peak * mfu if gpu_hours is not None else None)
    target = params if params is not None else math.sqrt(budget / (6 * tokens_per_param))
    shapes = [(model_config(values, shape), who) for shape, who in SHAPES]
    cfg, who = min(shapes, key=lambda s: abs(math.log(num_params(s[0]) / target)))
    n = num_params(cfg)
    per_token = flops_per_token(cfg, T)
    tokens = tokens_per_param * n if budget is None else budget / per_token
    total = tokens * per_token
    hours = total / (peak * mfu) / 3600
    tokens_per_step = values["batch_size"] * T * values["gradient_accumulation_steps"]
    steps = max(1, math.ceil(tokens / tokens_per_step))
    return dict(target=target, budget=budget, ratio=tokens_per_param, family=family, config_name=name, config=cfg, who=who, params=n,
                matmul_params=matmul_params(cfg), block_size=T, tokens=tokens, tokens_per_param=tokens / n,
                flops_per_token=per_token, flops=total, gpu=gpu, peak=peak, mfu=mfu, gpu_hours=hours, gpus=gpus,
                tokens_per_step=tokens_per_step, steps=steps,
                command=(f"python -m tritongpt.train {name} --n_layer={cfg.n_layer} --n_head={cfg.n_head} --n_embd={cfg.n_embd} "
                         f"--block_size={T} --max_iters={steps} --lr_decay_iters={steps}"))


def _n(x):
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _h(hours):
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def report(p):
    c = p["config"]
    lines = []
    if p["budget"] is not None:
        lines.append(f"budget    {p['budget']:.3g} FLOPs: the optimum is N = {_n(p['target'])} parameters on "
                     f"D = {_n(p['ratio'] * p['target'])} tokens (C = 6ND, D = {p['ratio']:g} N)")
    else:
        lines.append(f"target    {_n(p['target'])} parameters")
    lines += [
        f"shape     {p['who']} ({p['family']} options, context {p['block_size']}): n_layer={c.n_layer} n_head={c.n_head} "
        f"n_embd={c.n_embd} -> {_n(p['params'])} parameters, {_n(p['matmul_params'])} of them in matmuls",
        f"tokens    {_n(p['tokens'])} ({p['tokens_per_param']:.1f} per parameter)",
        f"FLOPs     {p['flops']:.3g} = {_n(p['tokens'])} tokens x {p['flops_per_token']:.3g} per token "
        f"(6 x {_n(p['matmul_params'])} matmul weights + {p['flops_per_token'] - 6 * p['matmul_params']:.3g} attention)",
        f"time      {p['gpu']} at {p['mfu']:.0%} MFU of {p['peak'] / 1e12:.0f} TFLOP/s: {_h(p['gpu_hours'])} GPU-hours, "
        f"{_h(p['gpu_hours'] / p['gpus'])} h on {p['gpus']} GPU{'s' if p['gpus'] > 1 else ''}",
        f"start     {p['command']}    ({p['steps']} steps of {p['tokens_per_step']:,} tokens)",
    ]
    return "\n".join(lines)


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m tritongpt.train.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", help="parameter count: 124M, 1.3B, 7e9")
    parser.add_argument("--flops", help="training FLOP budget: 1e20")
    parser.add_argument("--gpu_hours", help="GPU-hours on --gpu at --mfu: 1000")
    parser.add_argument("--family", default="gpt2", help=f"the model's options: {', '.join(FAMILY_CONFIGS)} (gpt2)")
    parser.add_argument("--gpu", default="H100", help=f"{', '.join(PEAKS)} (H100: the SXM card)")
    parser.add_argument("--gpus", default="1", help="GPUs the wall time is spread over (1)")
    parser.add_argument("--mfu", default="0.4", help="model FLOPs utilization (0.4)")
    parser.add_argument("--tokens_per_param", default="20", help="tokens per parameter (20)")
    parser.add_argument("--block_size", default=None, help="context length (the family's config's)")
    parser.error = lambda message: (_ for _ in ()).throw(PlanError(message))  # one line, not usage + message
    try:
        a = parser.parse_args(argv)
        p = plan(params=None if a.params is None else parse_amount(a.params, "params"),
                 flops=None if a.flops is None else parse_amount(a.flops, "flops"),
                 gpu_hours=None if a.gpu_hours is None else parse_amount(a.gpu_hours, "gpu_hours"),
                 family=a.family, gpu=a.gpu, gpus=flags.parse("gpus", a.gpus, FLAGS), mfu=flags.parse("mfu", a.mfu, FLAGS),
                 tokens_per_param=flags.parse("tokens_per_param", a.tokens_per_param, FLAGS),
                 block_size=None if a.block_size is None else flags.parse("block_size", a.block_size, FLAGS))
    except FlagError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report(p))


if __name__ == "__main__":
    main(sys.argv[1:])
