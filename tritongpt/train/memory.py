"""The memory a training run needs per process, from its shapes alone, and which option makes it fit.

    python -m tritongpt.train.memory                               # the README's table: which model fits how many GPUs
    python -m tritongpt.train.memory --gpu_gib=40 --batch_size=4 --gpus=1,8

The trainer prints the estimate of its own run at start-up (rank 0; every process of a run needs
about the same). Bytes per process, for N parameters (every one: gpt.flops.num_params), W
processes, L blocks of P parameters each and R in the root (the embeddings, ln_f and the LM head),
B sequences of T tokens per micro-step, C wide, a vocabulary of V, and e bytes per activation or
computing copy of a weight (2 in bfloat16 or float16, 4 in float32):

    parameters   4N (fp32); under autocast also its 16-bit copies of the matmul weights, kept
                 from the forward to the backward (2 bytes each). FSDP: 4N/W, plus the gathered
                 copies being computed with (e each): the root's and two blocks' (the one
                 running and the next, prefetched), or every one while micro-steps accumulate
                 unsharded
    gradients    4N, and as much again in DDP's buckets. FSDP: 4N/W, plus the unsharded ones
                 of the root and two blocks (e each), or all of them in fp32 (4N) while
                 micro-steps accumulate unsharded
    optimizer    AdamW's two fp32 moments: 8N; FSDP: 8N/W
    activations  what a block keeps for its backward, (8C + 2H) e per token, H the MLP's width
                 (4C unless mlp_hidden sets it: 16 C e): its two LayerNorms' inputs and outputs
                 (4C), q, k and v (3C), the attention's output (C), the MLP's hidden layer before
                 and after its activation (2H); plus 2C bytes of dropout masks with
                 dropout. With activation checkpointing a block keeps only its two inputs (2 C e),
                 and one block at a time holds all of it again in the backward. On the torch
                 backend the logits, their fp32 copy and their gradient, V (2e + 4) per token
                 (the triton backend's fused loss never holds the logits, unless the head has a bias)

A run fits where the sum is at most FIT of the device's memory (a GPU's; on a CPU, the RAM shared
by the processes of the machine), the rest left to the CUDA context, NCCL's buffers, temporaries
and the allocator's fragmentation. It is an estimate: the figures that count are the `mem` of the
log lines.
"""

import argparse
import os
import sys
from dataclasses import dataclass

import torch

from tritongpt.gpt import GPTConfig, pad_vocab
from tritongpt.gpt.flops import matmul_params, num_params
from tritongpt.train import flags
from tritongpt.train.flags import FlagError, Range

GIB = 2**30
FIT = 0.9  # the share of a device's memory a run may plan to use


@dataclass(frozen=True)
class Options:
    """How a run spreads its memory; the trainer keys of the same names."""
    fsdp: bool = False
    activation_checkpointing: bool = False
    unsharded: bool = False  # FSDP: micro-steps accumulate with everything gathered (fsdp_accumulate=unsharded)

    def label(self, world_size):
        name = ("FSDP" + (" unsharded" if self.unsharded else "")) if self.fsdp else ("DDP" if world_size > 1 else "as is")
        return name + (" + AC" if self.activation_checkpointing else "")

    def flags(self):
        out = []
        if self.fsdp:
            out.append("--fsdp=true" + (" --fsdp_accumulate=unsharded" if self.unsharded else ""))
        if self.activation_checkpointing:
            out.append("--activation_checkpointing=true")
        return " ".join(out)


# The lightest way first: what the trainer suggests, in this order, when a run does not fit.
LADDER = [Options(), Options(activation_checkpointing=True), Options(fsdp=True, unsharded=True), Options(fsdp=True),
          Options(fsdp=True, activation_checkpointing=True)]


def root_params(config):
    """R: the parameters outside the blocks: token (and untied head) embeddings, positions, ln_f, head bias."""
    C, V = config.n_embd, config.vocab_size
    ln_f = (C if config.norm_gain else 0) + (C if config.bias and config.norm == "layer" else 0)
    n = V * C * (1 if config.tie_embeddings else 2) + (V if config.lm_head_bias else 0) + ln_f
    return n + (config.block_size * C if config.position_embedding == "learned" else 0)


def estimate(config, batch_size, block_size, world_size=1, dtype="bfloat16", options=Options()):
    """{parameters, gradients, optimizer, activations, total}: bytes per process, as the docstring counts them."""
    N, L, C, V = num_params(config), config.n_layer, config.n_embd, config.vocab_size
    R = root_params(config)
    P = (N - R) / L  # one block
    W = world_size
    e = 4 if dtype == "float32" else 2
    if options.fsdp:
        gathered = N if options.unsharded else R + 2 * P
        parameters = 4 * N / W + e * gathered
        gradients = 4 * N / W + (4 * N if options.unsharded else e * gathered)
        optimizer = 8 * N / W
    else:
        parameters = 4 * N + (2 * matmul_params(config) if e == 2 else 0)
        gradients = 4 * N * (2 if W > 1 else 1)
        optimizer = 8 * N
    tokens = batch_size * block_size
    block = tokens * ((8 * C + 2 * config.mlp_width) * e + (2 * C if config.dropout > 0 else 0))  # one block's activations
    activations = tokens * L * 2 * C * e + block if options.activation_checkpointing else L * block
    if config.backend == "torch" or config.lm_head_bias:
        activations += tokens * V * (2 * e + 4)
    total = parameters + gradients + optimizer + activations
    return dict(parameters=parameters, gradients=gradients, optimizer=optimizer, activations=activations, total=total)


def capacity(device, local_processes=1):
    """(bytes a process may use, where): the GPU's memory, or this machine's RAM shared by its processes."""
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"{props.total_memory / GIB:.1f} GiB of {props.name}"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    share = f" / {local_processes} processes" if local_processes > 1 else ""
    return ram / local_processes, f"{ram / local_processes / GIB:.1f} GiB of RAM{share}"


def fits(need, available):
    return need["total"] <= FIT * available


def lightest(config, batch_size, block_size, world_size, dtype, available):
    """(options, estimate) of the first way in LADDER that fits, or (None, None)."""
    for options in LADDER:
        if options.fsdp and world_size == 1:
            continue  # one process has nothing to shard with
        need = estimate(config, batch_size, block_size, world_size, dtype, options)
        if fits(need, available):
            return options, need
    return None, None


def _g(n):
    """bytes as GiB (MiB below 0.1 GiB)."""
    if n < GIB / 10:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


def report(config, batch_size, block_size, world_size, dtype, options, available, where):
    """The lines the trainer prints at start-up: this run's estimate, the other ways, and advice."""
    need = estimate(config, batch_size, block_size, world_size, dtype, options)
    verdict = "fits" if fits(need, available) else f"does NOT fit in {FIT:.0%} of it"
    lines = [f"memory per process (estimate, {options.label(world_size)}): parameters {_g(need['parameters'])} + "
             f"gradients {_g(need['gradients'])} + AdamW {_g(need['optimizer'])} + activations {_g(need['activations'])} "
             f"({batch_size} x {block_size} tokens) = {_g(need['total'])}, of {where}: {verdict}"]
    others = [o for o in LADDER if o != options and not (o.fsdp and world_size == 1)]
    lines.append("  other ways: " + " | ".join(
        f"{o.label(world_size)} {_g(estimate(config, batch_size, block_size, world_size, dtype, o)['total'])}"
        for o in others))
    if not fits(need, available):
        better, need = lightest(config, batch_size, block_size, world_size, dtype, available)
        if better is not None:
            lines.append(f"  {better.flags() or 'the default options'} would fit ({_g(need['total'])})")
        else:
            more = next((w for w in (2**k for k in range(1, 13)) if w > world_size and fits(
                estimate(config, batch_size, block_size, w, dtype, LADDER[-1]), available)), None)
            lines.append(f"  no option fits on {world_size} process{'es' if world_size > 1 else ''} at this micro-batch: "
                         + (f"{LADDER[-1].flags()} on {more} processes would, " if more else "")
                         + "or a smaller batch_size (with more gradient_accumulation_steps)")
    return "\n".join(lines)


def plan_run(cfg, model_config, world_size):
    """(the lines the trainer prints at start-up, whether FSDP accumulates unsharded) for the run of
    TrainConfig `cfg` with device, dtype and backend resolved: fsdp_accumulate=auto is unsharded where
    that fits."""
    available, where = capacity(cfg.device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    unsharded = cfg.fsdp and cfg.fsdp_accumulate != "sharded"
    if cfg.fsdp and cfg.fsdp_accumulate == "auto":
        need = estimate(model_config, cfg.batch_size, cfg.block_size, world_size, cfg.dtype,
                        Options(True, cfg.activation_checkpointing, unsharded=True))
        unsharded = fits(need, available)
    options = Options(cfg.fsdp, cfg.activation_checkpointing, unsharded)
    return report(model_config, cfg.batch_size, cfg.block_size, world_size, cfg.dtype, options, available, where), unsharded


# ----------------------------------------------------------------------------- the README's table

# name, context, GPTConfig options (vocabularies padded to a multiple of 64, as the trainer pads them)
_NEOX = dict(position_embedding="rotary", rotary_fraction=0.25, parallel_residual=True, tie_embeddings=False,
             gelu="exact", bias=True)
MODELS = [
    ("GPT-2 124M", 1024, dict(n_layer=12, n_head=12, n_embd=768, bias=False)),
    ("GPT-2 medium 350M", 1024, dict(n_layer=24, n_head=16, n_embd=1024, bias=False)),
    ("GPT-2 large 774M", 1024, dict(n_layer=36, n_head=20, n_embd=1280, bias=False)),
    ("GPT-2 XL 1.5B", 1024, dict(n_layer=48, n_head=25, n_embd=1600, bias=False)),
    ("Pythia-1B", 2048, dict(n_layer=16, n_head=8, n_embd=2048, **_NEOX)),
    ("Pythia-2.8B", 2048, dict(n_layer=32, n_head=32, n_embd=2560, **_NEOX)),
    ("GPT-J 6B", 2048, dict(n_layer=28, n_head=16, n_embd=4096, vocab_size=pad_vocab(50400), position_embedding="rotary",
                            rotary_fraction=0.25, rotary_style="pairs", parallel_residual=True, shared_ln=True,
                            tie_embeddings=False, lm_head_bias=True, qkv_bias=False, attn_proj_bias=False, bias=True)),
    ("GPT-NeoX 20B", 2048, dict(n_layer=44, n_head=64, n_embd=6144, vocab_size=pad_vocab(50432), **_NEOX)),
]


def model_config(T, options):
    """The GPTConfig of a MODELS row on the backend a GPU runs it on (`auto`: triton)."""
    return GPTConfig(block_size=T, **{"vocab_size": pad_vocab(50257), **options}, backend="triton")


def table(gpu_gib=80, gpus=(1, 8, 16, 64), batch_size=8, dtype="bfloat16"):
    """A markdown table: per model and GPU count, the lightest way that fits and its GiB per GPU."""
    available = gpu_gib * 1e9  # a GPU sold as 80 GB
    head = [f"| model (parameters, context) | {' | '.join(f'{w} GPU' + ('s' if w > 1 else '') for w in gpus)} |",
            "|---" * (len(gpus) + 1) + "|"]
    rows = []
    for name, T, options in MODELS:
        config = model_config(T, options)
        cells = []
        for w in gpus:
            way, need = lightest(config, batch_size, T, w, dtype, available)
            cells.append(f"{way.label(w)}: {need['total'] / GIB:.0f} GiB" if way else "does not fit")
        rows.append(f"| {name} ({num_params(config) / 1e9:.2f}B, {T}) | {' | '.join(cells)} |")
    return "\n".join(head + rows)


# The numeric flags' ranges (train/flags.py checks them): a GPU of 1 GB to 10 TB, counts that exist.
FLAGS = {
    "gpu_gib": Range(1, 10_000),
    "gpus": Range(1, 1_000_000, integer=True),  # each of the comma-separated counts
    "batch_size": Range(1, 1_000_000, integer=True),
}


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m tritongpt.train.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu_gib", default="80", help="memory of one GPU in GB as sold (80)")
    parser.add_argument("--gpus", default="1,8,16,64", help="GPU counts, one column each (1,8,16,64)")
    parser.add_argument("--batch_size", default="8", help="sequences per micro-step per GPU (8)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.error = lambda message: (print(f"error: {message}", file=sys.stderr), sys.exit(2))
    a = parser.parse_args(argv)
    try:
        gpu_gib, batch_size = flags.parse("gpu_gib", a.gpu_gib, FLAGS), flags.parse("batch_size", a.batch_size, FLAGS)
        gpus = tuple(flags.parse("gpus", g, FLAGS) for g in a.gpus.split(","))
    except FlagError as e:
        parser.error(str(e))
    a.gpu_gib, a.batch_size = gpu_gib, batch_size
    print(f"Lightest way that fits, by train/memory.py's estimate: {a.batch_size} sequences per micro-step per GPU "
          f"in {a.dtype}, {a.gpu_gib:g} GB GPUs, at most {FIT:.0%} of each; as is / DDP, then + activation "
          "checkpointing (AC), FSDP with unsharded accumulation, FSDP, FSDP + AC.\n")
    print(table(a.gpu_gib, gpus, a.batch_size, a.dtype))


if __name__ == "__main__":
    main(sys.argv[1:])
