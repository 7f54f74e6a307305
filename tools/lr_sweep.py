"""A learning-rate sweep: short runs of one config over a grid of values, one seed, the final
losses of each into one JSON.

    python tools/lr_sweep.py shakespeare_char_cpu_speedrun --grid muon_lr=0.01,0.02,0.04 \
        --grid learning_rate=3e-3,1e-2 --set max_iters=500 --out tritongpt/train/results/sweep-X.json

Each run is the trainer itself (train.loop.train) in this process, one after another, into a
temporary out_dir, with lr_decay_iters = max_iters unless --set says otherwise, and one evaluation
at the end over eval_iters batches of each split. The JSON holds the grid, the fixed settings,
every run's final train and val loss and ms per step (the median of its logged steps), the run
with the lowest val loss, and every other key's value (settings: the config file's and --set's).
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from tritongpt.instrument.run import run_info
from tritongpt.train.config import ConfigError, TrainConfig, load_config, parse_value
from tritongpt.train.loop import train


def records(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def pair(text, what):
    key, eq, value = text.partition("=")
    if not eq or not value:
        raise SystemExit(f"error: {what} {text!r} must be written KEY=VALUE")
    return key, value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a named config of train/configs or a config file")
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,...: values to sweep (repeat for a grid)")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE: fixed for every run")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--out", required=True, help="the JSON to write")
    args = p.parse_args(argv)
    grid = {}
    for text in args.grid:
        key, values = pair(text, "--grid")
        grid[key] = [parse_value(TrainConfig, key, v) for v in values.split(",")]
    fixed = dict(pair(text, "--set") for text in args.set)
    if not grid:
        sys.exit("error: give at least one --grid KEY=V1,V2,...")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, values in enumerate(itertools.product(*grid.values())):
            point = dict(zip(grid, values, strict=True))
            given = {"data_dir": args.data_dir, "out_dir": os.path.join(tmp, f"run{i}"), **fixed, **point}
            given.setdefault("eval_interval", given.get("max_iters", 1_000_000_000))
            try:
                cfg = load_config([args.config] + [f"--{k}={v}" for k, v in given.items()])
            except ConfigError as e:
                sys.exit(f"error: {e}")
            if "lr_decay_iters" not in fixed:
                cfg.lr_decay_iters = cfg.max_iters
            cfg.eval_interval = cfg.max_iters  # one evaluation, at the end (and at step 0)
            start = time.perf_counter()
            train(cfg)
            seconds = time.perf_counter() - start
            rs = records(cfg.out_dir)
            last = [r for r in rs if r.get("event") == "eval"][-1]
            ms = [r["ms"] for r in rs if "ms" in r]
            runs.append({"values": point, "train_loss": last["train_loss"], "val_loss": last["val_loss"],
                         "ms_per_step": statistics.median(ms) if ms else None, "seconds": round(seconds, 1)})
            print(f"{point}: val loss {last['val_loss']:.4f} ({seconds:.0f} s)", flush=True)
    best = min(runs, key=lambda r: r["val_loss"])
    settings = {k: v for k, v in cfg.to_dict().items() if k not in grid and k not in ("out_dir", "data_dir")}
    result = {
        "what": "learning-rate sweep: final losses of short runs, one seed (tools/lr_sweep.py)",
        **run_info(torch.device("cpu")),
        "config": args.config, "fixed": fixed, "settings": settings, "grid": grid, "steps": cfg.max_iters, "eval_iters": cfg.eval_iters,
        "seed": cfg.seed, "threads": torch.get_num_threads(), "runs": runs, "best": best,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"best {best['values']}: val loss {best['val_loss']:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
