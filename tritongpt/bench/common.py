"""What every benchmark result shares: its header, a timer, and a JSON writer that never writes NaN.

A result file always carries the device name, the torch and triton versions, the git commit and
the UTC time (instrument.run.run_info), so a figure quoted anywhere can be traced to the run
that produced it.
"""

import gc
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from tritongpt.instrument.run import run_info

RESULTS_DIR = Path(__file__).resolve().parent / "results"

CPU_NOTE = (
    "CPU figures: this run had no GPU. They only show that the benchmark runs; they are not GPU "
    "figures and say nothing about the speed of the kernels or the model on a GPU."
)


def result_header(device):
    """The header of every result file: where it ran (instrument.run.run_info) and whether its
    figures are GPU figures."""
    return {
        **run_info(device),
        "gpu_figures": device.type == "cuda",
        "note": None if device.type == "cuda" else CPU_NOTE,
    }


# ----------------------------------------------------------------------------- numbers and JSON


def finite(x):
    """x as a float when it is a finite number, else None (the caller records why)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check_finite(obj, where="result"):
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{where} is {obj}: record None with a reason instead")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def write_json(obj, path):
    """Write obj as JSON; a NaN or infinity anywhere is an error naming the field. The file is
    written under a temporary name and renamed, so a reader (or a run cut short) never sees half
    of it."""
    _check_finite(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- timing


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, grad_to_none=None, warmup=1, reps=3):
    """Median milliseconds of fn(); the .grad of each tensor in grad_to_none is cleared before
    every call, so a backward never measures gradient accumulation.

    GPU: triton.testing.do_bench (CUDA events, the L2 cache flushed before every call, so the
    inputs come from memory as they would inside a training step). CPU (smoke runs only):
    perf_counter over a few calls."""
    if device.type == "cuda":
        import triton.testing

        return float(
            triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
        )

    def call():
        for t in grad_to_none or ():
            t.grad = None
        fn()

    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def free_memory(device):
    """Drop what the last measurement left behind: compiled graphs, cached blocks, peak stats."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def reset_compiler():
    """Forget every compiled graph and graph-break count, so the next path compiles afresh."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def graph_breaks():
    """(total, {reason: count}) of the graph breaks torch.compile met since reset_compiler()."""
    import torch._dynamo

    reasons = dict(torch._dynamo.utils.counters.get("graph_break", {}))
    return sum(reasons.values()), reasons


def is_oom(exc):
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
