"""python -m tritongpt.profiles.torch_profile: the torch.profiler capture, for where nsys is not installed.

Same steps as profiles.capture (warm-up first, so compilation and autotuning stay out), recorded
with torch.profiler. Writes into --out:

    trace.json     Chrome trace (open in chrome://tracing or https://ui.perfetto.dev)
    top_ops.md     the top kernels by GPU time (on a CPU: the top ops by CPU time), as a table
    summary.json   the same rows with the run's device, versions, commit, time and settings

    python -m tritongpt.profiles.torch_profile --out prof --backend triton --batch 8
"""

import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from tritongpt.bench import common, step
from tritongpt.instrument import nvtx
from tritongpt.profiles import capture


def _options(p):
    p.add_argument("--out", required=True, help="folder for trace.json, top_ops.md, summary.json")
    p.add_argument("--top", type=int, default=25, help="rows in the table (default 25)")


def top_rows(prof, on_gpu, top):
    """The top events by self time on the device that ran the step: kernels by GPU time on a GPU,
    ops by CPU time on a CPU. Each row: name, calls, total ms, share of the step's total, avg us."""
    events = prof.key_averages()
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    rows = [e for e in events if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in rows)  # microseconds
    rows.sort(key=lambda e: getattr(e, attr), reverse=True)
    out = []
    for e in rows[:top]:
        t = getattr(e, attr)
        out.append({
            "name": e.key,
            "calls": e.count,
            "total_ms": t / 1e3,
            "percent": 100.0 * t / total if total else 0.0,
            "avg_us": t / e.count if e.count else 0.0,
        })
    return out, total / 1e3


def markdown(rows, clock, steps, total_ms):
    lines = [
        f"Top {len(rows)} by self {clock} time over {steps} step(s) "
        f"(all events together: {total_ms:.3f} ms, {total_ms / steps:.3f} ms per step).",
        "",
        f"| {'kernel' if clock == 'GPU' else 'op'} | calls | total ms | % | avg us |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["name"].replace("|", "\\|")
        if len(name) > 90:
            name = name[:87] + "..."
        lines.append(f"| `{name}` | {r['calls']} | {r['total_ms']:.3f} | {r['percent']:.1f} | {r['avg_us']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, settings, config = capture.parse_args(
        sys.argv[1:] if argv is None else argv, "python -m tritongpt.profiles.torch_profile",
        __doc__.splitlines()[0], add_options=_options,
    )
    if args.top < 1:
        print("error: --top must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, train_step, batches = capture.prepare(settings, config, not args.no_nvtx)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        with nvtx.range("captured_steps"):
            step.run_steps(train_step, batches, settings.steps, device)
    prof.export_chrome_trace(str(out / "trace.json"))
    clock = "GPU" if on_gpu else "CPU"
    rows, total_ms = top_rows(prof, on_gpu, args.top)
    table = markdown(rows, clock, settings.steps, total_ms)
    if not on_gpu:
        table += "\n" + common.CPU_NOTE + "\n"
    (out / "top_ops.md").write_text(table)
    common.write_json(
        {
            "kind": "torch_profile",
            **common.result_header(device),
            "settings": {
                "path": settings.paths[0], "model": settings.model, "config": config.to_dict(),
                "batch": settings.batch, "seq_len": settings.seq_len or config.block_size,
                "dtype": settings.dtype, "compile_backend": settings.compile_backend,
                "warmup": settings.warmup, "steps": settings.steps,
            },
            "clock": clock,
            "total_ms": total_ms,
            "ms_per_step": total_ms / settings.steps,
            "rows": rows,
        },
        out / "summary.json",
    )
    print(table, end="")
    print(f"written: {out / 'trace.json'}, {out / 'top_ops.md'}, {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
