"""python -m tritongpt.profiles.capture: a few training steps, bracketed for Nsight Systems.

Builds one path of the benchmark (bench.config and bench.step: same model, and the trainer's own
step, train.step.TrainStep),
turns the NVTX ranges on, runs the warm-up steps (torch.compile and Triton autotuning happen
here), then calls cudaProfilerStart, runs the captured steps, and cudaProfilerStop. Under
`nsys profile --capture-range=cudaProfilerApi` (profiles/nsys.sh) only those steps are recorded.

    nsys profile --trace=cuda,nvtx --capture-range=cudaProfilerApi --capture-range-end=stop \\
        python -m tritongpt.profiles.capture --backend triton --batch 8 --warmup 10 --steps 5

Without a GPU it runs the same steps with the ranges and the capture calls left out (for tests).
"""

import argparse
import statistics
import sys

import torch

from tritongpt.bench import step
from tritongpt.bench.config import PATHS, Settings, add_model_args, model_config, parse_overrides, resolve_defaults
from tritongpt.instrument import nvtx


def parse_args(argv, prog, description, add_options=None):
    """The driver's options (bench's model options, the path, the step counts) plus add_options(p)'s."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--backend", default="triton", choices=["torch", "triton"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--batch", type=int, default=None, help="micro-batch size (default 8; 2 with --smoke)")
    p.add_argument("--warmup", type=int, default=None, help="steps before the capture (default 10; 1 with --smoke)")
    p.add_argument("--steps", type=int, default=None, help="captured steps (default 5; 2 with --smoke)")
    p.add_argument("--no-nvtx", action="store_true", help="leave the NVTX ranges off")
    add_model_args(p)
    if add_options is not None:
        add_options(p)
    args, rest = p.parse_known_args(argv)
    overrides = parse_overrides(p, rest)
    args.batch = args.batch if args.batch is not None else (2 if args.smoke else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    args.steps = args.steps if args.steps is not None else (2 if args.smoke else 5)
    for name, low in (("batch", 1), ("warmup", 0), ("steps", 1)):
        if getattr(args, name) < low:
            p.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    try:
        device, dtype, compile_backend = resolve_defaults(args)  # cpu or cuda:N
    except ValueError as e:
        p.error(str(e))
    path = args.backend + ("+compile" if args.compile else "")
    settings = Settings(
        model="smoke" if args.smoke else args.model, overrides=overrides, seq_len=args.seq_len,
        batch=args.batch, warmup=args.warmup, steps=args.steps, dtype=dtype,
        compile_backend=compile_backend, compile_mode=args.compile_mode, paths=(path,), seed=args.seed, device=device,
        smoke=args.smoke,
    )
    try:
        config = model_config(settings)
    except ValueError as e:
        p.error(str(e))
    T = settings.seq_len or config.block_size
    if not 1 <= T <= config.block_size:
        p.error(f"--seq-len must be in [1, block_size={config.block_size}], got {T}")
    return args, settings, config


def prepare(settings, config, use_nvtx):
    """Build the path's model, the trainer's step over it and the batches, switch NVTX on, and run
    the warm-up steps.

    Returns (device, train_step, batches). The model's own ranges (per block) are added only to an
    eager model: hooks inside a compiled graph would break it."""
    device = torch.device(settings.device)
    backend, compiled = PATHS[settings.paths[0]]
    nvtx.enable(use_nvtx)
    model, train_step = step.build(config, backend, compiled, settings, device)
    if not compiled:
        nvtx.annotate_model(model)
    T = settings.seq_len or config.block_size
    batches = step.make_batches(config, settings.batch, T, device, settings.seed)
    with nvtx.range("warmup"):
        step.run_steps(train_step, batches, settings.warmup, device)
    return device, train_step, batches


def main(argv=None):
    args, settings, config = parse_args(
        sys.argv[1:] if argv is None else argv, "python -m tritongpt.profiles.capture", __doc__.splitlines()[0]
    )
    device, train_step, batches = prepare(settings, config, not args.no_nvtx)
    capture = device.type == "cuda"
    if capture:
        torch.cuda.cudart().cudaProfilerStart()
    with nvtx.range("captured_steps"):
        times, loss = step.run_steps(train_step, batches, settings.steps, device, timed=True)
    if capture:
        torch.cuda.cudart().cudaProfilerStop()
    where = "inside cudaProfilerStart/Stop" if capture else "no CUDA device: nothing captured, the steps only ran"
    print(
        f"{settings.paths[0]}: {settings.steps} steps at batch {settings.batch}, median "
        f"{statistics.median(times):.2f} ms/step ({where}; profiling slows steps, use python -m tritongpt.bench "
        f"for speed figures), loss {loss.item():.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
