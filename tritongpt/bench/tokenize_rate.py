"""python -m tritongpt.bench.tokenize_rate: the rate of GPT-2 BPE preparation of a text file, 1 process against N.

Runs the whole `text` pipeline of prep (read, tokenize, write the bins) on the file, alternating
the process counts so that a change in the machine's load touches them alike, and writes a JSON
record to bench/results/. The load average before and after each run is kept with it: on a
machine that others are using the wall-clock figures are noisy, and the record should say so;
the CPU seconds of each run (its own and its tokenizer processes') show the work it did regardless.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

from tritongpt.instrument.run import git_commit, package_version
from tritongpt.prep.pipeline import prepare

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("TRITONGPT_DATA", os.path.join(HERE, "..", "..", "..", "shared", "data"))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def cpu_seconds():
    """CPU time of this process and its finished children (the tokenizer processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tritongpt.bench.tokenize_rate", description=__doc__.splitlines()[0])
    p.add_argument("--input", default=os.path.join(DATA, "linux_docs.txt"), help="a UTF-8 text file")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each process count (default 3)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "tokenize_linux_docs.json"))
    args = p.parse_args(argv)
    if not os.path.isfile(args.input):
        print(f"bench.tokenize_rate: error: {args.input} not found; pass --input or set TRITONGPT_DATA", file=sys.stderr)
        return 1

    size = os.path.getsize(args.input)
    runs = []
    for r in range(args.repeat):
        for n in args.procs:
            with tempfile.TemporaryDirectory() as tmp:
                load_before = os.getloadavg()[0]
                start, cpu_start = time.perf_counter(), cpu_seconds()
                path = prepare("text", out_dir=tmp, input=args.input, out_name="bench", num_proc=n, quiet=True)
                seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
                with open(os.path.join(path, "meta.json")) as f:
                    meta = json.load(f)
            tokens = meta["train_tokens"] + meta["val_tokens"]
            runs.append(dict(num_proc=n, seconds=round(seconds, 3), cpu_seconds=round(cpu, 3), load_before=load_before, load_after=os.getloadavg()[0]))
            print(f"run {r + 1}, {n} process(es): {seconds:.2f} s, {size / 1e6 / seconds:.2f} MB/s, "
                  f"{tokens / seconds / 1e6:.2f} M tokens/s (CPU {cpu:.2f} s, load {load_before:.1f})")

    summary = {}
    for n in args.procs:
        times = [run["seconds"] for run in runs if run["num_proc"] == n]
        median = statistics.median(times)
        summary[str(n)] = dict(
            median_seconds=median, best_seconds=min(times),
            median_cpu_seconds=statistics.median(run["cpu_seconds"] for run in runs if run["num_proc"] == n),
            mb_per_s=round(size / 1e6 / median, 3), tokens_per_s=round(tokens / median),
        )
    base = summary[str(args.procs[0])]
    for n in args.procs[1:]:
        s = summary[str(n)]
        s["speedup_median"] = round(base["median_seconds"] / s["median_seconds"], 3)
        s["speedup_best"] = round(base["best_seconds"] / s["best_seconds"], 3)
        print(f"{n} processes: {s['speedup_median']:.2f}x the rate of {args.procs[0]} (median), "
              f"{s['speedup_best']:.2f}x (best)")

    record = dict(
        benchmark="prep text --tokenizer gpt2 (read, tokenize, write bins)",
        input=os.path.basename(args.input), input_bytes=size, tokens=tokens,
        cpu=cpu_model(), cpu_count=os.cpu_count(), python=platform.python_version(), tiktoken=package_version("tiktoken"),
        git_commit=git_commit()[0], time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        target="2 processes >= 1.6x the rate of 1", summary=summary, runs=runs,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
