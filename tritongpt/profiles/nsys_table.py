"""python -m tritongpt.profiles.nsys_table: `nsys stats` CSV reports -> markdown tables.

    python -m tritongpt.profiles.nsys_table --steps 5 --kernels stats_cuda_gpu_kern_sum.csv \\
        --ranges stats_nvtx_sum.csv [--gpu-ranges stats_nvtx_gpu_proj_sum.csv]

Kernels: time per kernel over the captured steps (cuda_gpu_kern_sum). Ranges: time per NVTX
range (nvtx_sum: host-side, from push to pop; nvtx_gpu_proj_sum: the GPU time of the work each
range launched), with the per-block ranges (block0.attn, block1.attn, ...) also summed over the
blocks as block*.attn. Column names differ between nsys versions; they are found by their words.
"""

import argparse
import csv
import io
import re
import sys
from pathlib import Path


def read_csv(path):
    """The rows of an nsys stats CSV (any lines before the header are skipped)."""
    text = Path(path).read_text()
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "Time" in line and "," in line), None)
    if start is None:
        raise ValueError(f"{path}: no nsys stats header (a line naming a Time column) found")
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def _column(rows, path, *options):
    """The first header that contains all the words of one of the options (case-insensitive)."""
    header = list(rows[0].keys()) if rows else []
    for words in options:
        for h in header:
            if h and all(w.lower() in h.lower() for w in words.split()):
                return h
    raise ValueError(f"{path}: none of the columns {header} matches any of {list(options)}")


def summarize(path, name_cols, time_cols):
    """[(name, total_ns, instances)] of a report, largest first."""
    rows = read_csv(path)
    if not rows:
        return []
    name = _column(rows, path, *name_cols)
    total = _column(rows, path, *time_cols)
    count = _column(rows, path, "Instances", "Count", "Calls")
    out = []
    for r in rows:
        label = (r[name] or "").strip()
        label = label[1:] if label.startswith(":") else label  # nsys prefixes the default domain's ranges
        out.append((label, float(r[total]), int(float(r[count]))))
    out.sort(key=lambda x: -x[1])
    return out


def group_blocks(rows):
    """Sum blockN.<part> over N as block*.<part>; other names pass through."""
    sums = {}
    for name, ns, n in rows:
        key = re.sub(r"^block\d+\.", "block*.", name)
        t, c = sums.get(key, (0.0, 0))
        sums[key] = (t + ns, c + n)
    return sorted(((k, t, c) for k, (t, c) in sums.items()), key=lambda x: -x[1])


def table(rows, what, steps, top=None, base=None):
    """Markdown rows: per-step ms, the share of `base` (a row's name; default the sum of all rows,
    right for kernels, which do not nest, wrong for ranges, which do), calls, average."""
    total = sum(ns for _, ns, _ in rows)
    share = "%"
    if base is not None:
        total = next((ns for name, ns, _ in rows if name == base), total)
        share = f"% of {base}"
    lines = [
        f"| {what} | ms per step | {share} | calls per step | avg us |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ns, n in rows[:top]:
        label = name.replace("|", "\\|")
        label = label if len(label) <= 90 else label[:87] + "..."
        lines.append(
            f"| `{label}` | {ns / 1e6 / steps:.3f} | {100 * ns / total if total else 0:.1f} "
            f"| {n / steps:g} | {ns / 1e3 / n if n else 0:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tritongpt.profiles.nsys_table", description=__doc__.splitlines()[0])
    p.add_argument("--kernels", required=True, help="cuda_gpu_kern_sum CSV")
    p.add_argument("--ranges", help="nvtx_sum CSV")
    p.add_argument("--gpu-ranges", help="nvtx_gpu_proj_sum CSV (newer nsys)")
    p.add_argument("--steps", type=int, default=1, help="captured steps, to give per-step figures")
    p.add_argument("--top", type=int, default=30, help="kernel rows (default 30)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    for f in (args.kernels, args.ranges, args.gpu_ranges):
        if f and not Path(f).is_file():
            p.error(f"no such file: {f}")
    try:
        kernels = summarize(args.kernels, ["Name"], ["Total Time"])
        parts = [
            f"## GPU kernels ({args.steps} captured step(s); top {min(args.top, len(kernels))} of {len(kernels)})",
            "",
            table(kernels, "kernel", args.steps, args.top),
        ]
        for path, title in ((args.gpu_ranges, "GPU time of the work each range launched (nvtx_gpu_proj_sum)"),
                            (args.ranges, "host time from push to pop (nvtx_sum)")):
            if not path:
                continue
            parts += ["", f"## NVTX ranges: {title}", ""]
            try:  # the range reports' columns moved between nsys versions: a note, not a failure
                ranges = summarize(path, ["Range", "Name"], ["Total Proj Time", "Total Time"])
            except (ValueError, KeyError) as e:
                parts.append(f"(not summarised: {e})")
                continue
            parts.append(table(group_blocks(ranges), "range", args.steps, base="captured_steps"))
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
