"""python -m tritongpt.bench.plot RESULT.json [-o OUT.png]: a picture of a benchmark result.

A training-step result (python -m tritongpt.bench): tokens/sec and MFU per path, side by side; a path that
was skipped or failed is marked as such in its place.
A kernel result (pytest bench/): per op, each provider's rate as a percentage of the roofline
measured in that run (forward + backward; --mode picks another), at GPT-2 124M's sizes (--size).

matplotlib is optional: pip install -e ".[plot]".
"""

import argparse
import json
import sys
from pathlib import Path


def _title(result):
    where = result["device_name"] + ("" if result["gpu_figures"] else " - CPU figures, not GPU figures")
    return f"{where}\ntorch {result['torch']}, triton {result['triton']}, {(result['git_commit'] or '?')[:8]}, {result['created_utc']}"


def plot_step(result, plt):
    """Tokens/sec and MFU per path; a path that was skipped or failed keeps its place on the axis,
    marked with its status instead of a bar."""
    paths = result["paths"]
    ok = [r for r in paths if r["status"] == "ok"]
    if not ok:
        raise ValueError("no path of this result ran (every one was skipped or failed)")
    names = [r["path"] for r in paths]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.bar(names, [r["tokens_per_sec"] or 0 for r in paths], color="tab:blue")
    ax1.set_ylabel("tokens / sec")
    ax1.set_title(f"{result['settings']['model']}, T={result['settings']['seq_len']}: training step")
    for x, r in enumerate(paths):
        if r["status"] == "ok":
            ax1.annotate(f"B={r['batch']}", (x, r["tokens_per_sec"]), ha="center", va="bottom", fontsize=8)
    mfu = [r["mfu"] for r in ok]
    if all(m is None for m in mfu):
        ax2.text(0.5, 0.5, "MFU unknown:\n" + (result["flops"]["peak_note"] or "no peak"), ha="center",
                 va="center", wrap=True, transform=ax2.transAxes)
        ax2.set_axis_off()
        axes = (ax1,)
    else:
        ax2.bar(names, [100 * (r["mfu"] or 0) for r in paths], color="tab:orange")
        ax2.set_ylabel("MFU (% of dense bf16 peak)")
        ax2.set_title("model FLOPs utilisation")
        axes = (ax1, ax2)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
        for x, r in enumerate(paths):
            if r["status"] != "ok":  # no bar: say why there is none
                ax.text(x, 0, r["status"], ha="center", va="bottom", rotation=90, fontsize=9, color="tab:red")
    fig.suptitle(_title(result), fontsize=9)
    return fig


def plot_kernels(result, plt, size="gpt2", mode="fwd+bwd"):
    cases = [c for c in result["cases"] if c["mode"] == mode and c["size"] == size and c["status"] == "ok"]
    if not cases:
        sizes = sorted({c["size"] for c in result["cases"]})
        raise ValueError(f"no measured case at size {size!r}, mode {mode!r} (sizes here: {sizes})")
    ops = list(dict.fromkeys(c["op"] for c in cases))
    providers = list(dict.fromkeys(c["provider"] for c in cases))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(providers)
    for j, prov in enumerate(providers):
        xs, ys = [], []
        for i, op in enumerate(ops):
            hit = [c for c in cases if c["op"] == op and c["provider"] == prov]
            if hit and hit[0]["percent_of_roofline"] is not None:
                xs.append(i + (j - (len(providers) - 1) / 2) * width)
                ys.append(hit[0]["percent_of_roofline"])
        ax.bar(xs, ys, width, label=prov)
    roof = result["roofline"]
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(ops)))
    units = {c["op"]: c["unit"] for c in cases}
    ax.set_xticklabels([f"{op}\n({units[op]})" for op in ops], fontsize=8)
    ax.set_ylabel("% of roofline")
    ax.set_title(
        f"kernels, {mode}, size {size}: roofline = copy {roof['copy_gbps']:.3g} GB/s, "
        f"matmul {roof['matmul_tflops']:.3g} TFLOP/s (measured)", fontsize=9,
    )
    ax.legend()
    fig.suptitle(_title(result), fontsize=9)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tritongpt.bench.plot", description=__doc__.splitlines()[0])
    p.add_argument("result", help="a JSON result of python -m tritongpt.bench or pytest bench/")
    p.add_argument("-o", "--out", help="PNG path (default: the result's path with .png)")
    p.add_argument("--size", default="gpt2", help="kernel results: the size label to draw (default gpt2)")
    p.add_argument("--mode", default="fwd+bwd", choices=["fwd", "bwd", "fwd+bwd"], help="kernel results")
    args = p.parse_args(argv)
    try:
        result = json.loads(Path(args.result).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: cannot read {args.result}: {e}", file=sys.stderr)
        return 2
    kind = result.get("kind") if isinstance(result, dict) else None
    if kind not in ("train_step", "kernels"):
        print(f"error: {args.result} is not a bench result (kind {kind!r}; expected train_step or kernels)",
              file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: matplotlib is not installed; install the extra: pip install -e ".[plot]"', file=sys.stderr)
        return 2
    try:
        if kind == "train_step":
            fig = plot_step(result, plt)
        elif kind == "kernels":
            fig = plot_kernels(result, plt, args.size, args.mode)
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.result).with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
