"""python -m tritongpt.bench: tokens/sec, TFLOP/s, MFU and peak memory of a training step, per op path.

    python -m tritongpt.bench                                   # gpt2 (124M), batch 8, T=1024, bf16, all paths
    python -m tritongpt.bench --model gpt2_medium --batch auto  # the largest micro-batch that fits, per path
    python -m tritongpt.bench --n_layer=6 --paths torch+compile,triton
    python -m tritongpt.bench --smoke                           # tiny config on the CPU: every code path, seconds

The table is printed last; the JSON result goes to bench/results/ (or --out). torch.compile's
warnings (Dynamo, Inductor: several lines each) are held back and counted, --verbose shows them.
"""

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path

from tritongpt.bench import common, config, step
from tritongpt.instrument.run import utc_stamp


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m tritongpt.bench",
        description="Training-step benchmark of every op path (model config keys: --key=value).",
    )
    p.add_argument("--batch", default=None, help="micro-batch size, or 'auto' (default 8; 2 with --smoke)")
    p.add_argument("--batch-max", type=int, default=None, help="upper end of the --batch auto search (default 512; 4 with --smoke)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first: compile, autotune (default 5; 1 with --smoke)")
    p.add_argument("--steps", type=int, default=None, help="timed steps, median reported (default 20; 2 with --smoke)")
    p.add_argument("--micro-steps", type=int, default=1,
                   help="micro-batches per step, as the trainer's gradient accumulation (default 1)")
    p.add_argument("--paths", default=",".join(config.PATHS), help="comma-separated subset of: " + ", ".join(config.PATHS))
    p.add_argument("--out", default=None, help="result JSON path, or a folder (default bench/results/)")
    p.add_argument("--deterministic", action="store_true",
                   help="the trainer's deterministic=true: fixed kernel tiles, no autotuning, deterministic algorithms")
    p.add_argument("--verbose", action="store_true", help="show torch.compile's warnings as they come")
    config.add_model_args(p)
    args, rest = p.parse_known_args(argv)
    overrides = config.parse_overrides(p, rest)

    smoke = args.smoke
    args.batch = args.batch or ("2" if smoke else "8")
    args.batch_max = args.batch_max if args.batch_max is not None else (4 if smoke else 512)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 5)
    args.steps = args.steps if args.steps is not None else (2 if smoke else 20)
    if args.batch == "auto":
        batch = "auto"
    else:
        try:
            batch = int(args.batch)
        except ValueError:
            p.error(f"--batch must be a positive integer or 'auto', got {args.batch!r}")
        if batch < 1:
            p.error(f"--batch must be a positive integer or 'auto', got {args.batch!r}")
    for name in ("warmup", "steps", "batch_max", "micro_steps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}")

    try:
        device, dtype, compile_backend = config.resolve_defaults(args)
    except ValueError as e:
        p.error(str(e))
    settings = config.Settings(
        model="smoke" if smoke else args.model,
        overrides=overrides,
        seq_len=args.seq_len,
        batch=batch,
        batch_max=args.batch_max,
        warmup=args.warmup,
        steps=args.steps,
        micro_steps=args.micro_steps,
        dtype=dtype,
        compile_backend=compile_backend,
        compile_mode=args.compile_mode,
        paths=tuple(x.strip() for x in args.paths.split(",") if x.strip()),
        seed=args.seed,
        deterministic=args.deterministic,
        device=device,
        smoke=args.smoke,
    )
    return settings, args.out, args.verbose


def output_path(out, result):
    if out is not None and Path(out).suffix == ".json":
        return Path(out)
    folder = Path(out) if out is not None else common.RESULTS_DIR
    tag = "smoke" if result["settings"]["smoke"] else result["settings"]["model"]
    dev = "gpu" if result["gpu_figures"] else "cpu"
    return folder / f"step-{tag}-{dev}-{utc_stamp()}.json"


# torch.compile's parts (Dynamo, Inductor, AOTAutograd, FX): the loggers and modules whose warnings are held back
COMPILER = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx")


def _from_compiler(w):
    where = w.filename.replace("\\", "/")
    return any(f"/{name.replace('.', '/')}/" in where for name in COMPILER)


@contextlib.contextmanager
def compiler_warnings_held(held):
    """Hold back torch.compile's warnings (appending them to `held`) and lower its loggers to
    errors; every other warning is shown as usual."""
    loggers = [logging.getLogger(name) for name in COMPILER]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    for w in caught:
        if _from_compiler(w):
            held.append(w)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def main(argv=None):
    settings, out, verbose = parse_args(sys.argv[1:] if argv is None else argv)
    held = []
    try:
        with contextlib.nullcontext() if verbose else compiler_warnings_held(held):
            result = step.run(settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = common.write_json(result, output_path(out, result))
    print(f"result written to {path}")
    print(step.table(result))
    if held:
        print(f"({len(held)} warning(s) of torch.compile held back; --verbose shows them)")
    return 1 if any(r["status"] == "error" for r in result["paths"]) else 0


if __name__ == "__main__":
    sys.exit(main())
