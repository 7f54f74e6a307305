"""The campaign's own measurements. bench/campaign.py runs each as a child process with a time box;
each writes its file the moment it has something to write.

    python -m tritongpt.bench.campaign_tasks env      --out DIR/env.json
    python -m tritongpt.bench.campaign_tasks ceilings --out DIR/ceilings.json [--smoke]
    python -m tritongpt.bench.campaign_tasks step     --dir DIR --path triton --batches 16,32,64 [--deadline UNIX_TIME] [--smoke]
    python -m tritongpt.bench.campaign_tasks converge --dir DIR

env        the machine: GPU name, memory, SMs, driver (nvidia-smi), CUDA, torch, triton, python,
           commit, the packages the campaign relies on and whether nvtx, datasets, nsys are there.
ceilings   the two roofline ceilings of bench/ops.py: device copy GB/s (bytes read + written) and
           a large matmul's TFLOP/s in bf16 (fp32 on a CPU).
step       one path of python -m tritongpt.bench at GPT-2 124M, T=1024, over a bounded batch search: the
           candidate micro-batches in rising order, each measured afresh (a compiled path compiles
           again for each batch, shapes static), stopping at the first that fails (out of memory),
           when a larger batch gained under MIN_GAIN, or when the next try would pass the deadline.
           Writes DIR/step-<path>.json after every try and merges every path's best try into
           DIR/step.json (python -m tritongpt.bench's format, plus each path's tries).
converge   the two convergence runs' loss curves (DIR/converge-<backend>.jsonl, the trainer's
           metrics): their relative difference at every evaluation, in DIR/converge.json, and a
           PNG of both curves, DIR/converge.png.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from tritongpt.bench import common, config, ops, step
from tritongpt.instrument.run import package_version

MIN_GAIN = 0.03  # a larger batch must raise tokens/sec by this much for the search to go on
TRY_MARGIN = 1.3  # the next try is started only if 1.3x the last one's seconds fit before the deadline
PACKAGES = ("torch", "triton", "numpy", "transformers", "tiktoken", "pytest", "pytest-benchmark", "matplotlib",
            "tqdm", "nvtx", "datasets", "pytest-xdist")


def slug(path):
    """torch+compile -> torch-compile (file names keep to letters, digits, '.', '_' and '-')."""
    return path.replace("+", "-")


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- env


def nvidia_smi():
    """What nvidia-smi says of each GPU, or why there is nothing."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi is not on PATH"}
    fields = ["name", "driver_version", "memory.total", "clocks.max.sm", "clocks.max.memory", "power.limit",
              "pstate", "temperature.gpu"]
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"nvidia-smi failed: {type(e).__name__}: {e}"}
    return {"gpus": [dict(zip(fields, (x.strip() for x in line.split(",")), strict=False)) for line in out.strip().splitlines()]}


def task_env(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {"kind": "environment", **common.result_header(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 2),
            "l2_cache_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1) or None,
        }
        smi = nvidia_smi()
        info["nvidia_smi"] = smi
        info["driver"] = (smi.get("gpus") or [{}])[0].get("driver_version")
    else:
        info["gpu"], info["driver"] = None, None
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["packages"] = {name: package_version(name) for name in PACKAGES}
    info["importable"] = {name: importlib.util.find_spec(name) is not None
                          for name in ("nvtx", "datasets", "xdist", "matplotlib", "transformers", "tiktoken")}
    info["tools"] = {name: shutil.which(name) for name in ("nsys", "ncu", "nvidia-smi", "git")}
    info["cpu_count"] = os.cpu_count()
    info["platform"] = platform.platform()
    info["commit_source"] = os.environ.get("TRITONGPT_COMMIT_SOURCE", "git")
    common.write_json(info, args.out)
    gpu = info["gpu"] or {}
    print(f"{info['device_name']} ({gpu.get('memory_gib', '-')} GiB, driver {info['driver']}), CUDA {info['cuda']}, "
          f"torch {info['torch']}, triton {info['triton']}, python {info['python']}, commit {info['git_commit']}")
    return 0


# ----------------------------------------------------------------------------- ceilings


def task_ceilings(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    roof = ops.measure_roofline(device, dtype)
    common.write_json({"kind": "ceilings", **common.result_header(device), **roof}, args.out)
    print(f"copy {roof['copy_gbps']:,.0f} GB/s ({roof['copy_how']}); matmul {roof['matmul_tflops']:,.1f} TFLOP/s "
          f"({roof['matmul_how']})")
    return 0


# ----------------------------------------------------------------------------- step


def step_settings(args, batch):
    """python -m tritongpt.bench's Settings for one try: GPT-2 124M at T=1024 in bf16 (the smoke config on a CPU)."""
    ns = types.SimpleNamespace(device=None, smoke=args.smoke, dtype=None, compile_backend=None)
    device, dtype, compile_backend = config.resolve_defaults(ns)
    return config.Settings(
        model="smoke" if args.smoke else "gpt2", batch=batch, warmup=args.warmup, steps=args.steps, dtype=dtype,
        compile_backend=compile_backend, paths=(args.path,), device=device, smoke=args.smoke,
    )


def search_batches(args):
    """Measure args.path at each candidate batch in turn (see the module docstring); write the
    tries after each one. Returns the tries."""
    out = Path(args.dir) / f"step-{slug(args.path)}.json"
    tries, stop_reason, last, record = [], "every candidate batch was measured", None, None
    for batch in args.batches:
        ok = [t for t in tries if t["status"] == "ok"]
        if len(ok) >= 2 and ok[-1]["tokens_per_sec"] < (1 + MIN_GAIN) * ok[-2]["tokens_per_sec"]:
            stop_reason = f"batch {ok[-1]['batch']} gained under {MIN_GAIN:.0%} over batch {ok[-2]['batch']}"
            break
        if tries and tries[-1]["status"] != "ok":
            stop_reason = f"batch {tries[-1]['batch']} did not run ({tries[-1]['reason']})"
            break
        if last and args.deadline and time.time() + TRY_MARGIN * last["try_seconds"] > args.deadline:
            stop_reason = f"batch {batch} would not finish before the phase's deadline"
            break
        t0 = time.time()
        result = step.run(step_settings(args, batch))
        last = result["paths"][0]
        last["try_seconds"] = round(time.time() - t0, 1)
        tries.append(last)
        print(f"{args.path} batch {batch}: {last['status']}, "
              + (f"{last['tokens_per_sec']:,.0f} tok/s, {last['ms_per_step']:.2f} ms/step" if last["status"] == "ok"
                 else last["reason"]) + f" ({last['try_seconds']} s)", flush=True)
        record = {k: v for k, v in result.items() if k != "paths"}
        record.update(path=args.path, candidates=args.batches, tries=tries, stopped=None)
        common.write_json(record, out)
        merge_step(args.dir)
    if record is not None:
        record["stopped"] = stop_reason
        common.write_json(record, out)
        merge_step(args.dir)
    print(f"{args.path}: search ended: {stop_reason}", flush=True)
    return tries


def best_try(tries):
    ok = [t for t in tries if t["status"] == "ok"]
    return max(ok, key=lambda t: t["tokens_per_sec"]) if ok else tries[-1]


def merge_step(folder):
    """DIR/step.json: python -m tritongpt.bench's result with each path at its best measured batch, its
    speedup over torch+compile's best, and every try. A path with no file has no try that finished."""
    folder = Path(folder)
    records = {p: read_json(folder / f"step-{slug(p)}.json") for p in config.PATHS}
    found = [r for r in records.values() if r and r.get("tries")]
    if not found:
        return None
    paths = []
    for name, rec in records.items():
        if rec and rec.get("tries"):
            entry = dict(best_try(rec["tries"]))
            entry["tries"] = [{k: t[k] for k in ("batch", "status", "reason", "ms_per_step", "tokens_per_sec",
                                                 "mfu", "peak_memory_gib", "try_seconds")} for t in rec["tries"]]
            entry["batch_search"] = [[t["batch"], t["status"] == "ok"] for t in rec["tries"]]
            entry["nulls"] = {k: v for k, v in entry["nulls"].items() if k != "batch_search"}
            entry["search_stopped"] = rec.get("stopped") or "the phase ended before the search did"
        else:
            entry = step.empty_path(name)
            entry.update(status="skipped", reason="no try finished: the phase was stopped or failed before one did",
                         tries=[], search_stopped=None)
        entry["speedup_vs_torch_compile"] = None
        paths.append(entry)
    base = next((r for r in paths if r["path"] == config.BASELINE and r["status"] == "ok"), None)
    for r in paths:
        r["nulls"] = {k: v for k, v in r["nulls"].items() if k != "speedup_vs_torch_compile"}
        if base is not None and r["status"] == "ok":
            r["speedup_vs_torch_compile"] = r["tokens_per_sec"] / base["tokens_per_sec"]  # batches may differ
        else:
            r["nulls"]["speedup_vs_torch_compile"] = "no measured torch+compile path, or this path has no figure"
    latest = max(found, key=lambda r: r["created_utc"])
    settings = dict(latest["settings"], batch="best of the campaign's batch search", paths=list(config.PATHS),
                    batch_candidates=latest["candidates"])
    merged = {k: v for k, v in latest.items() if k not in ("path", "candidates", "tries", "stopped")}
    merged.update(settings=settings, paths=paths)
    merged["batch_rule"] = (
        f"each path at its fastest measured micro-batch: candidates in rising order, each measured afresh, "
        f"stopping at a failure, at a gain under {MIN_GAIN:.0%}, or at the phase's deadline"
    )
    return common.write_json(merged, folder / "step.json")


def task_step(args):
    if args.path not in config.PATHS:
        print(f"error: unknown path {args.path!r}; choose from {', '.join(config.PATHS)}", file=sys.stderr)
        return 2
    tries = search_batches(args)
    merged = read_json(Path(args.dir) / "step.json")
    if merged:
        print(step.table(merged))
    if not any(t["status"] == "ok" for t in tries):
        print(f"{args.path}: no batch ran: {tries[-1]['reason'] if tries else 'no try started'}")  # the note's line
        return 1
    return 0


# ----------------------------------------------------------------------------- converge

TOLERANCE = 0.02  # the two backends' losses agree within 2% at every evaluation


def read_jsonl(path):
    rows = []
    if not Path(path).is_file():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut short by a stopped run: what came before stands
    return rows


def compare_runs(runs):
    """{backend: metrics rows} -> the comparison record: per evaluation both backends' train and val
    loss and their relative difference |triton - torch| / torch."""
    evals = {b: {r["step"]: r for r in rows if r.get("event") == "eval"} for b, rows in runs.items()}
    steps = sorted(set(evals.get("torch", {})) & set(evals.get("triton", {})))
    points = []
    for s in steps:
        a, b = evals["torch"][s], evals["triton"][s]
        diff = {k: abs(b[k] - a[k]) / abs(a[k]) for k in ("train_loss", "val_loss")}
        points.append({"step": s, "torch": {k: a[k] for k in diff}, "triton": {k: b[k] for k in diff},
                       "relative_difference": diff, "agree": max(diff.values()) <= TOLERANCE})
    starts = {b: next((r for r in rows if r.get("event") == "start"), None) for b, rows in runs.items()}
    return {
        "kind": "convergence",
        "tolerance": TOLERANCE,
        "rule": "at every evaluation both backends' train and val loss agree: |triton - torch| / torch <= tolerance",
        "evaluations": points,
        "max_relative_difference": max((max(p["relative_difference"].values()) for p in points), default=None),
        "agree": bool(points) and all(p["agree"] for p in points),
        "steps_logged": {b: sum(1 for r in rows if "loss" in r and "event" not in r) for b, rows in runs.items()},
        "runs": {b: {k: s.get(k) for k in ("device_name", "torch", "triton", "git_commit", "git_dirty", "created_utc",
                                           "config", "model", "tokens_per_step")} if s else None
                 for b, s in starts.items()},
    }


def plot_runs(runs, cmp, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colors = {"torch": "tab:blue", "triton": "tab:orange"}
    for b, rows in runs.items():
        pts = [(r["step"], r["loss"]) for r in rows if "loss" in r and "event" not in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=colors.get(b), lw=1, alpha=0.8, label=f"{b}: train loss (logged)")
        ev = [(r["step"], r["val_loss"]) for r in rows if r.get("event") == "eval"]
        if ev:
            ax.plot(*zip(*ev, strict=True), "o--", color=colors.get(b), ms=4, label=f"{b}: val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    start = next((r for r in cmp["runs"].values() if r), None) or {}
    worst = cmp["max_relative_difference"]
    ax.set_title(f"same seed, both backends on {start.get('device_name', '?')} "
                 f"(largest difference at an evaluation: {'-' if worst is None else f'{100 * worst:.2f}%'})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def task_converge(args):
    folder = Path(args.dir)
    runs = {b: read_jsonl(folder / f"converge-{b}.jsonl") for b in ("torch", "triton")}
    cmp = compare_runs(runs)
    subs = read_json(folder / "converge-substitutions.json")
    if subs:
        cmp["substitutions"] = subs
    try:
        plot_runs(runs, cmp, folder / "converge.png")
        cmp["plot"] = "converge.png"
    except ImportError:
        cmp["plot"] = None
        cmp["plot_note"] = "matplotlib is not installed: no PNG"
    common.write_json(cmp, folder / "converge.json")
    worst = cmp["max_relative_difference"]
    print(f"{len(cmp['evaluations'])} evaluations compared; largest relative difference "
          f"{'-' if worst is None else f'{100 * worst:.3f}%'}; agree within {TOLERANCE:.0%}: {cmp['agree']}")
    return 0 if cmp["evaluations"] else 1


# ----------------------------------------------------------------------------- command line


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tritongpt.bench.campaign_tasks", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="task", required=True)
    for name in ("env", "ceilings"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--smoke", action="store_true")
    s = sub.add_parser("step")
    s.add_argument("--dir", required=True)
    s.add_argument("--path", required=True)
    s.add_argument("--batches", required=True, type=lambda t: [int(x) for x in t.split(",")])
    s.add_argument("--deadline", type=float, default=None, help="Unix time by which the last try must end")
    s.add_argument("--warmup", type=int, default=None)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--smoke", action="store_true")
    s = sub.add_parser("converge")
    s.add_argument("--dir", required=True)
    args = p.parse_args(argv)
    if args.task == "step":
        args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
        args.steps = args.steps if args.steps is not None else (2 if args.smoke else 10)
    return {"env": task_env, "ceilings": task_ceilings, "step": task_step, "converge": task_converge}[args.task](args)


if __name__ == "__main__":
    sys.exit(main())
