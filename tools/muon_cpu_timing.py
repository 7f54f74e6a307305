"""What Muon's orthogonalization costs on a CPU, beside the training step it belongs to.

    python tools/muon_cpu_timing.py [--configs shakespeare_char_cpu_speedrun,linux_docs_cpu_speedrun]
        [--out tritongpt/train/results/muon-newton-schulz-cpu.json]

For each config: a trainer of it, then alternating blocks of (a) its whole training step (Muon's
included) and (b) Muon's Newton-Schulz alone on the step's matrices (5 steps each, c_attn as
three blocks), in fp32 (what the trainer runs on a CPU) and in bf16; median ms of each over the
blocks. Also the FLOPs of the orthogonalization, 5 * (4 m^2 n + 2 m^3) per m x n block (m <= n),
and the model's, 6 N + 12 L C T per token (gpt/flops.py), for the tokens of one step.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from tritongpt.gpt.flops import flops_per_token
from tritongpt.instrument.run import ROOT, run_info
from tritongpt.kernels import reference
from tritongpt.train.config import load_config
from tritongpt.train.loop import Trainer
from tritongpt.train.optim import hidden_matrices


def blocks_of(model):
    """Each matrix Muon orthogonalizes, as the (split, rows, cols) tensor it hands Newton-Schulz."""
    params = dict(model.named_parameters())
    return [torch.randn(s, params[n].shape[0] // s, params[n].shape[1]) for n, s in hidden_matrices(model).items()]


def ns_flops(blocks):
    total = 0
    for b in blocks:
        s, r, c = b.shape
        m, n = min(r, c), max(r, c)
        total += 5 * s * (4 * m * m * n + 2 * m**3)
    return total


def timed(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1e3 / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="shakespeare_char_cpu_speedrun,linux_docs_cpu_speedrun")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "tritongpt" / "train" / "results" / "muon-newton-schulz-cpu.json"))
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            cfg = load_config([name, f"--data_dir={args.data_dir}", f"--out_dir={os.path.join(tmp, name)}"])
            trainer = Trainer(cfg)
            state = {"step": 0}

            def step(trainer=trainer, state=state):
                loss, _, _ = trainer.train_step(state["step"])
                state["step"] += 1
                loss.item()

            blocks = blocks_of(trainer.raw_model)
            half = [x.bfloat16() for x in blocks]
            fns = {"train_step": step,
                   "newton_schulz_fp32": lambda b=blocks: [reference.newton_schulz(x) for x in b],
                   "newton_schulz_bf16": lambda b=half: [reference.newton_schulz(x) for x in b]}
            for fn in fns.values():
                timed(fn, 2)
            ms = {k: [] for k in fns}
            for r in range(args.rounds):
                for k in fns if r % 2 == 0 else list(fns)[::-1]:
                    ms[k].append(round(timed(fns[k], args.block), 3))
            trainer.metrics.close()
            med = {k: statistics.median(v) for k, v in ms.items()}
            tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
            model_flops = flops_per_token(trainer.raw_model.config, cfg.block_size) * tokens
            results.append({
                "config": name, "tokens_per_step": tokens, "threads": torch.get_num_threads(),
                "matrices": [list(b.shape) for b in blocks], "newton_schulz_flops": ns_flops(blocks),
                "model_flops_per_step": model_flops, "median_ms": med, "blocks_ms": ms,
                "newton_schulz_share_of_step_fp32": med["newton_schulz_fp32"] / med["train_step"],
            })
            print(f"{name}: step {med['train_step']:.1f} ms, Newton-Schulz fp32 {med['newton_schulz_fp32']:.1f} ms, "
                  f"bf16 {med['newton_schulz_bf16']:.1f} ms ({ns_flops(blocks) / 1e9:.2f} GFLOP against the model's "
                  f"{model_flops / 1e9:.2f} a step)", flush=True)
    result = {"what": "Muon's Newton-Schulz on a CPU against the whole training step (tools/muon_cpu_timing.py)",
              **run_info(torch.device("cpu")), "rounds": args.rounds, "block": args.block, "configs": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
