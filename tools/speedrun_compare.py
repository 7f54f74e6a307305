"""The speedrun recipe against today's configs on a CPU: steps to the baseline's loss, and time per step.

    python tools/speedrun_compare.py                     # both datasets, 3 seeds: tens of minutes on 2 cores
    python tools/speedrun_compare.py --only shakespeare_char --seeds 1

For each dataset a pair of configs of the same size and tokens per step: the baseline (today's
recipe: GPT-2's model, AdamW) and the recipe (Muon, ReLU^2, RMSNorm, QK-norm, a logit soft-cap,
zero-initialized projections):
    shakespeare_char   shakespeare_char_cpu   against shakespeare_char_cpu_speedrun   (tiny Shakespeare, by character)
    linux_docs         linux_docs_cpu         against linux_docs_cpu_speedrun         (GPT-2 BPE of the Linux docs)
Each seed trains the baseline and the recipe one after the other (who goes first alternates),
each run evaluating every EVAL_INTERVAL steps over --eval_iters batches of each split; their
metrics.jsonl files are kept under --out/DATASET/. The target is the baseline's final val loss
(the mean over seeds); a recipe run reaches it at the first step where its val loss is at or
below it, interpolated linearly between that evaluation and the one before.

Time per step is measured apart, in comparable conditions: a fresh trainer of each config, then
blocks of --block steps alternating between them (who goes first alternates), --rounds blocks
each, per seed; the median ms per step of each. The wall-time ratio is the step ratio times the
ms-per-step ratio (evaluation left out).

Writes --out/DATASET/summary.json (every figure above, per seed and in all) and summary.png
(matplotlib, pip install -e ".[plot]": the val loss of every run against steps and against time).
Datasets are prepared into --data_dir when missing: tiny Shakespeare from the copy that ships with
the package, the Linux docs from --linux_docs (default: $TRITONGPT_DATA or ../shared/data).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from tritongpt import prep
from tritongpt.instrument.run import ROOT, run_info
from tritongpt.train.config import load_config
from tritongpt.train.loop import Trainer, train

PAIRS = {
    "shakespeare_char": ("shakespeare_char_cpu", "shakespeare_char_cpu_speedrun"),
    "linux_docs": ("linux_docs_cpu", "linux_docs_cpu_speedrun"),
}
# Evaluations every this many steps, each over --eval_iters (200) batches of each split, which on a
# CPU cost more than the training: often enough on the recipe's short runs to read where they cross
# the target (between evaluations 50 steps apart, linearly), rarely on the baselines' long ones,
# whose final loss is the target and whose curves are only drawn.
EVAL_INTERVAL = {"shakespeare_char_cpu": 250, "shakespeare_char_cpu_speedrun": 50, "linux_docs_cpu": 200,
                 "linux_docs_cpu_speedrun": 50}
DATA = os.environ.get("TRITONGPT_DATA", str(ROOT.parent / "shared" / "data"))


def prepare(dataset, data_dir, linux_docs):
    if os.path.isfile(os.path.join(data_dir, dataset, "meta.json")):
        return
    if dataset == "shakespeare_char":
        prep.prepare("shakespeare_char", out_dir=data_dir, quiet=True)
    else:
        if not os.path.isfile(linux_docs):
            sys.exit(f"error: --linux_docs {linux_docs!r} is not a file; give the path of linux_docs.txt")
        prep.prepare("text", out_dir=data_dir, input=linux_docs, out_name=dataset, tokenizer="gpt2", quiet=True)


def keep(src, dst):
    """A run's metrics.jsonl copied to dst, its out_dir (a temporary folder) named by its last part."""
    with open(src) as f, open(dst, "w") as out:
        for r in map(json.loads, f):
            if "out_dir" in r.get("config", {}):
                r["config"]["out_dir"] = os.path.basename(r["config"]["out_dir"])
            out.write(json.dumps(r) + "\n")


def evals(path):
    """[(step, val loss)] of a metrics.jsonl."""
    with open(path) as f:
        return [(r["step"], r["val_loss"]) for r in map(json.loads, f) if r.get("event") == "eval"]


def steps_to(curve, target):
    """The step at which the val-loss curve [(step, loss)] first reaches `target`, interpolated
    between that evaluation and the one before; None when it never does."""
    for (s0, l0), (s1, l1) in zip(curve, curve[1:], strict=False):
        if l1 <= target:
            return s1 if l0 <= target or l0 == l1 else s0 + (s1 - s0) * (l0 - target) / (l0 - l1)
    return None


def timed_block(trainer, state, n):
    t0 = time.perf_counter()
    for _ in range(n):
        loss, _, _ = trainer.train_step(state["step"])
        state["step"] += 1
    loss.item()
    return (time.perf_counter() - t0) * 1e3 / n


def time_steps(configs, common, seed, rounds, block, tmp):
    """{config: [ms per step of each block]}: fresh trainers, alternating blocks."""
    trainers = {}
    for name in configs:
        cfg = load_config([name, *common, f"--seed={seed}", f"--out_dir={os.path.join(tmp, f'time-{name}-{seed}')}"])
        trainers[name] = (Trainer(cfg), {"step": 0})
    for trainer, state in trainers.values():
        timed_block(trainer, state, block)  # warm-up
    blocks = {name: [] for name in configs}
    for r in range(rounds):
        for name in configs if r % 2 == 0 else configs[::-1]:
            blocks[name].append(round(timed_block(*trainers[name], block), 3))
    for trainer, _ in trainers.values():
        trainer.metrics.close()
    return blocks


def compare(dataset, args, tmp):
    baseline, recipe = PAIRS[dataset]
    out = os.path.join(args.out, dataset)
    os.makedirs(out, exist_ok=True)
    prepare(dataset, args.data_dir, args.linux_docs)
    common = [f"--data_dir={args.data_dir}", f"--eval_iters={args.eval_iters}", "--device=cpu", "--compile=false"]
    curves = {baseline: {}, recipe: {}}
    for i, seed in enumerate(args.seeds):
        for name in (baseline, recipe) if i % 2 == 0 else (recipe, baseline):
            run_dir = os.path.join(tmp, f"{name}-{seed}")
            cfg = load_config([name, *common, f"--seed={seed}", f"--out_dir={run_dir}",
                               f"--eval_interval={EVAL_INTERVAL[name]}"])
            print(f"{dataset}: {name}, seed {seed}, {cfg.max_iters} steps", flush=True)
            train(cfg)
            kept = os.path.join(out, f"{name}-seed{seed}.jsonl")
            keep(os.path.join(run_dir, "metrics.jsonl"), kept)
            curves[name][seed] = evals(kept)
    finals = [curves[baseline][s][-1][1] for s in args.seeds]
    target = statistics.mean(finals)
    baseline_steps = curves[baseline][args.seeds[0]][-1][0]
    reached = {s: steps_to(curves[recipe][s], target) for s in args.seeds}
    ms = {baseline: [], recipe: []}
    for seed in args.seeds:
        blocks = time_steps([baseline, recipe], common, seed, args.rounds, args.block, tmp)
        for name in ms:
            ms[name] += blocks[name]
        print(f"{dataset}: seed {seed} ms/step " + ", ".join(f"{n} {statistics.median(b):.1f}" for n, b in blocks.items()),
              flush=True)
    med = {name: statistics.median(b) for name, b in ms.items()}
    steps = [r for r in reached.values() if r is not None]
    step_ratio = statistics.mean(steps) / baseline_steps if len(steps) == len(reached) else None
    ms_ratio = med[recipe] / med[baseline]
    summary = {
        "what": "steps and wall time per step of the speedrun recipe against the baseline config (tools/speedrun_compare.py)",
        **run_info(torch.device("cpu")),
        "dataset": dataset, "baseline": baseline, "recipe": recipe, "seeds": args.seeds, "eval_iters": args.eval_iters,
        "eval_interval": {n: EVAL_INTERVAL[n] for n in (baseline, recipe)}, "threads": torch.get_num_threads(),
        "baseline_steps": baseline_steps, "recipe_steps": curves[recipe][args.seeds[0]][-1][0],
        "baseline_final_val_loss": {str(s): f for s, f in zip(args.seeds, finals, strict=True)},
        "target_val_loss": target,
        "recipe_final_val_loss": {str(s): curves[recipe][s][-1][1] for s in args.seeds},
        "recipe_steps_to_target": {str(s): r for s, r in reached.items()},
        "recipe_steps_to_target_mean": statistics.mean(steps) if steps else None,
        "step_ratio": step_ratio,
        "ms_per_step": med, "ms_per_step_blocks": ms, "ms_ratio": ms_ratio,
        "wall_ratio": step_ratio * ms_ratio if step_ratio is not None else None,
        "curves": {name: {str(s): c for s, c in cs.items()} for name, cs in curves.items()},
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(summary, os.path.join(out, "summary.png"))
    return summary


def plot(summary, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {summary["baseline"]: "tab:blue", summary["recipe"]: "tab:red"}
    for name, curves in summary["curves"].items():
        for i, curve in enumerate(curves.values()):
            steps, loss = zip(*curve[1:], strict=True)  # from the first evaluation after step 0
            label = name if i == 0 else None
            axes[0].plot(steps, loss, color=colors[name], alpha=0.8, label=label, lw=1)
            seconds = [s * summary["ms_per_step"][name] / 1e3 for s in steps]
            axes[1].plot(seconds, loss, color=colors[name], alpha=0.8, label=label, lw=1)
    for ax, xlabel in zip(axes, ("step", "training time (s, at the measured median ms/step)"), strict=True):
        ax.axhline(summary["target_val_loss"], color="gray", ls="--", lw=0.8, label="baseline's final val loss")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"val loss ({summary['eval_iters']} batches)")
        ax.legend(fontsize=8)
    ratio = summary["step_ratio"]
    axes[0].set_title(f"{summary['dataset']}: recipe reaches it in "
                      + (f"{ratio:.2f}x the steps" if ratio is not None else "(not reached)"), fontsize=10)
    axes[1].set_title(f"ms/step ratio {summary['ms_ratio']:.2f}; wall ratio "
                      + (f"{summary['wall_ratio']:.2f}" if ratio is not None else "n/a"), fontsize=10)
    fig.suptitle(f"{summary['device_name']}, {len(summary['seeds'])} seeds, torch {summary['torch']}, "
                 f"{(summary['git_commit'] or '?')[:8]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(PAIRS), action="append", help="one dataset (default: both)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    p.add_argument("--eval_iters", type=int, default=200, help="batches of each split per evaluation")
    p.add_argument("--rounds", type=int, default=6, help="timing blocks per config and seed")
    p.add_argument("--block", type=int, default=20, help="steps per timing block")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--linux_docs", default=os.path.join(DATA, "linux_docs.txt"))
    p.add_argument("--out", default=str(ROOT / "tritongpt" / "train" / "results" / "speedrun"))
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.only or sorted(PAIRS, reverse=True):
            s = compare(dataset, args, tmp)
            print(f"{dataset}: target {s['target_val_loss']:.4f}; recipe steps to it {s['recipe_steps_to_target']} "
                  f"of the baseline's {s['baseline_steps']} (ratio {s['step_ratio']}); ms/step {s['ms_per_step']} "
                  f"(ratio {s['ms_ratio']:.3f}); wall ratio {s['wall_ratio']}", flush=True)


if __name__ == "__main__":
    main()
