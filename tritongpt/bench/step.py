"""Tokens/sec and MFU of one training step for each op path of bench/config.py (torch,
torch+compile, triton, triton+compile), all in one process on the same shapes, each model built
from the same seed.

The step timed is the trainer's own (train.step.TrainStep, the one train/loop.py calls): the
forward under autocast (bf16 on a GPU), the backward, the gradients unscaled, clipped to the
trainer's grad_clip and checked for non-finite values, the optimizer step of
GPT.configure_optimizers (fused AdamW on CUDA), the gradients zeroed; over --micro-steps
micro-batches (gradient accumulation; default 1).

FLOPs per token (fwd + bwd), gpt.flops: 6 * N + 12 * n_layer * n_embd * T, with N the parameters
in matmuls (tied embedding once, position embedding not). TFLOP/s = tokens/sec * that / 1e12;
MFU = TFLOP/s over the device's dense peak for the dtype (gpt.flops.peak_flops), null when unknown.
"""

import dataclasses
import statistics
import time

import torch

from tritongpt.bench import common
from tritongpt.bench.config import BASELINE, DTYPES, GRAD_CLIP, HEADLINE, OPTIM, PATHS, model_config, resolve_device
from tritongpt.gpt import GPT
from tritongpt.gpt import flops as gflops
from tritongpt.instrument.run import device_name
from tritongpt.train.step import TrainStep
from tritongpt.train.system import deterministic


# ----------------------------------------------------------------------------- one step


def build(config, backend, compiled, settings, device):
    """A fresh model of the path from the shared seed, and the trainer's step over it (its
    optimizer is step.optimizer)."""
    torch.manual_seed(settings.seed)
    model = GPT(dataclasses.replace(config, backend=backend)).to(device)
    optimizer = model.configure_optimizers(device_type=device.type, **OPTIM)
    forward = torch.compile(model, **compile_options(settings)) if compiled else model
    return model, TrainStep(forward, optimizer, device, settings.dtype, raw_model=model,
                            micro_steps=settings.micro_steps, grad_clip=GRAD_CLIP)


def compile_options(settings):
    """torch.compile's keyword arguments for the settings: the mode goes to inductor only."""
    mode = settings.compile_mode if settings.compile_mode != "default" else None
    return dict(backend=settings.compile_backend, **({"mode": mode} if mode else {}))


def make_batches(config, batch, seq_len, device, seed, n=2):
    """n random (idx, targets) pairs; stepping through more than one keeps nothing cached by chance."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, config.vocab_size, (batch, seq_len + 1), generator=g)
        out.append((tokens[:, :-1].to(device), tokens[:, 1:].to(device)))
    return out


def run_steps(train_step, batches, n, device, timed=False):
    """n steps of train_step (a TrainStep), its micro-batches cycling through batches; with
    timed, the milliseconds of each step (CUDA events on a GPU, so no host sync between steps;
    perf_counter on a CPU) and the last step's mean loss."""
    times, pairs, loss = [], [], None
    for i in range(n):
        first = i * train_step.micro_steps

        def batch(micro, first=first):
            return batches[(first + micro) % len(batches)]

        if timed and device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss, _ = train_step(batch)
            end.record()
            pairs.append((start, end))
        elif timed:
            t0 = time.perf_counter()
            loss, _ = train_step(batch)
            times.append((time.perf_counter() - t0) * 1e3)
        else:
            loss, _ = train_step(batch)
    common.sync(device)
    times += [s.elapsed_time(e) for s, e in pairs]
    return times, loss


# ----------------------------------------------------------------------------- --batch auto


def find_max_batch(fits, limit, start=1):
    """The largest batch b <= limit with fits(b): doubling from start until a try fails (or the
    limit is reached), then bisecting between the last fit and the first failure.

    Returns (batch or None when even `start` does not fit, [(batch, fitted), ...] in try order)."""
    tries = []

    def attempt(b):
        ok = bool(fits(b))
        tries.append((b, ok))
        return ok

    if not attempt(start):
        return None, tries
    lo, hi = start, None
    while hi is None:
        b = min(lo * 2, limit)
        if b == lo:
            return lo, tries
        if attempt(b):
            lo = b
        else:
            hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return lo, tries


def _probe(config, backend, compiled, settings, device, seq_len):
    """fits(b) for find_max_batch: two steps of one model (the second step holds the optimizer
    state too) at batch b; an out-of-memory error means no, and everything is freed before the
    next try. Other errors propagate."""
    model, train_step = build(config, backend, compiled, settings, device)

    def fits(b):
        oom = False
        try:
            batches = make_batches(config, b, seq_len, device, settings.seed)
            run_steps(train_step, batches, 2, device)
        except Exception as exc:  # noqa: BLE001 - only OOM is an answer; the rest is re-raised
            if not common.is_oom(exc):
                raise
            oom = True
        batches = None
        train_step.optimizer.zero_grad(set_to_none=True)
        common.free_memory(device)  # outside the except block: the traceback is gone by now
        return not oom

    return fits, (model, train_step)


# ----------------------------------------------------------------------------- one path


def empty_path(name):
    backend, compiled = PATHS[name]
    return {
        "path": name,
        "backend": backend,
        "compiled": compiled,
        "status": None,  # ok | skipped | error
        "reason": None,
        "batch": None,
        "batch_search": None,  # [[batch, fitted], ...] with --batch auto
        "tokens_per_step": None,
        "ms_per_step": None,  # median of the timed steps
        "step_ms": [],
        "tokens_per_sec": None,
        "tflops": None,
        "mfu": None,
        "peak_memory_gib": None,
        "speedup_vs_torch_compile": None,  # tokens/sec over torch+compile's
        "memory_vs_torch_compile": None,  # peak memory over torch+compile's, at the same batch
        "graph_breaks": None,
        "graph_break_reasons": {},
        "final_loss": None,
        "nulls": {},  # field -> why it is null
    }


def run_path(name, config, settings, device):
    """Measure one path; never raises for a path that cannot run (compile failure, OOM): the result
    says skipped and why. Any other failure of an eager path is status error."""
    backend, compiled = PATHS[name]
    T = settings.seq_len or config.block_size
    res = empty_path(name)
    common.reset_compiler()
    common.free_memory(device)
    stage = "setup"
    try:
        batch = settings.batch
        if batch == "auto":
            stage = "batch search"
            fits, held = _probe(config, backend, compiled, settings, device, T)
            batch, tries = find_max_batch(fits, settings.batch_max)
            res["batch_search"] = [list(t) for t in tries]
            del fits, held
            common.reset_compiler()  # the measurement compiles afresh for the batch it found
            common.free_memory(device)
            if batch is None:
                raise torch.OutOfMemoryError("out of memory even at batch 1")
        res["batch"] = batch
        stage = "build"
        model, train_step = build(config, backend, compiled, settings, device)
        batches = make_batches(config, batch, T, device, settings.seed)
        common.free_memory(device)  # peak memory counts from here: this path's own steps
        stage = "warm-up (compile, autotune)"
        run_steps(train_step, batches, settings.warmup, device)
        stage = "timed steps"
        times, loss = run_steps(train_step, batches, settings.steps, device, timed=True)
        final_loss = common.finite(loss.item())
    except Exception as exc:  # noqa: BLE001 - recorded in the result, see the docstring
        res["status"] = "skipped" if (compiled or common.is_oom(exc)) else "error"
        what = "torch.compile failed" if compiled and not common.is_oom(exc) else "failed"
        at = "" if res["batch"] is None else f" at batch {res['batch']}"
        res["reason"] = f"{what} during {stage}{at}: {common.first_line(exc)}"
    else:
        res["status"] = "ok"
        res["step_ms"] = [round(t, 4) for t in times]
        res["ms_per_step"] = statistics.median(times)
        res["tokens_per_step"] = batch * T * settings.micro_steps
        res["tokens_per_sec"] = res["tokens_per_step"] / (res["ms_per_step"] / 1e3)
        res["tflops"] = res["tokens_per_sec"] * gflops.flops_per_token(config, T) / 1e12
        res["mfu"] = gflops.mfu(config, T, res["tokens_per_sec"], device_name(device), settings.dtype, _tf32())
        if device.type == "cuda":
            res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        res["final_loss"] = final_loss
        if final_loss is None:
            res["status"], res["reason"] = "error", "the loss is not finite"
    if compiled:
        res["graph_breaks"], res["graph_break_reasons"] = common.graph_breaks()
    model = train_step = batches = loss = None  # noqa: F841 - frees this path's memory (some may be unset)
    common.reset_compiler()
    common.free_memory(device)
    return res


def _tf32():
    """Whether float32 matmuls run on TF32 tensor cores (then MFU is over the TF32 peak)."""
    return torch.backends.cuda.matmul.allow_tf32


def explain_nulls(res, device):
    """Fill res['nulls'] with the reason for every null figure."""
    why = {}
    if res["status"] != "ok":
        for k in ("ms_per_step", "tokens_per_sec", "tflops", "mfu", "peak_memory_gib", "final_loss"):
            if res[k] is None:
                why[k] = f"path {res['status']}: {res['reason']}"
    else:
        if res["mfu"] is None:
            why["mfu"] = f"no dense peak known for {device_name(device)!r} (gpt.flops.PEAKS)"
        if res["peak_memory_gib"] is None:
            why["peak_memory_gib"] = "n/a on a CPU (torch.cuda.max_memory_allocated needs a GPU)"
    if res["speedup_vs_torch_compile"] is None:
        why["speedup_vs_torch_compile"] = "no measured torch+compile path, or this path has no figure"
    if res["memory_vs_torch_compile"] is None:
        why["memory_vs_torch_compile"] = (
            "no peak memory on this device, no measured torch+compile path, or not the same batch"
        )
    if res["graph_breaks"] is None:
        why["graph_breaks"] = "not compiled" if not res["compiled"] else "no compile happened"
    if res["batch"] is None:
        why["batch"] = res["reason"] or "not run"
    if res["tokens_per_step"] is None:
        why["tokens_per_step"] = "path did not run"
    if res["batch_search"] is None:
        why["batch_search"] = "a fixed --batch was given"
    res["nulls"] = why
    return res


# ----------------------------------------------------------------------------- the whole run


def run(settings):
    """Every path of the settings; returns the result dict (see bench/README or the JSON itself)."""
    device = torch.device(resolve_device(settings.device))  # cpu or cuda:N
    if settings.deterministic:
        deterministic(True)  # before any cuBLAS handle is made
    if device.type == "cuda":
        torch.cuda.set_device(device)  # CUDA events and the timed stream on the device measured
    if settings.compile_mode != "default" and settings.compile_backend != "inductor":
        raise ValueError(f"--compile-mode {settings.compile_mode} needs --compile-backend inductor")
    config = model_config(settings)
    if settings.seq_len is not None and settings.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1, got {settings.seq_len}")
    T = settings.seq_len or config.block_size
    if T > config.block_size:
        raise ValueError(f"--seq-len {T} is longer than block_size {config.block_size}")
    for p in settings.paths:
        if p not in PATHS:
            raise ValueError(f"unknown path {p!r}; choose from {', '.join(PATHS)}")
    if settings.dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {settings.dtype!r}; choose from {', '.join(DTYPES)}")
    if settings.micro_steps < 1:
        raise ValueError(f"--micro-steps must be >= 1, got {settings.micro_steps}")

    results = [run_path(p, config, settings, device) for p in settings.paths]
    base = next((r for r in results if r["path"] == BASELINE and r["status"] == "ok"), None)
    for r in results:
        if base is not None and r["status"] == "ok":
            r["speedup_vs_torch_compile"] = r["tokens_per_sec"] / base["tokens_per_sec"]  # batches may differ
            if r["peak_memory_gib"] and base["peak_memory_gib"] and r["batch"] == base["batch"]:
                r["memory_vs_torch_compile"] = r["peak_memory_gib"] / base["peak_memory_gib"]
        explain_nulls(r, device)

    name = device_name(device)
    peak = gflops.peak_flops(name, settings.dtype, _tf32())
    math = gflops.peak_math(settings.dtype, _tf32())
    return {
        "kind": "train_step",
        **common.result_header(device),
        "settings": {
            **{k: v for k, v in dataclasses.asdict(settings).items() if k != "paths"},
            "paths": list(settings.paths),
            "seq_len": T,
            "config": config.to_dict(),
            "optimizer": "AdamW (GPT.configure_optimizers)" + (", fused" if device.type == "cuda" else ""),
            "step": f"the trainer's (train.step.TrainStep): grad_clip {GRAD_CLIP}, {settings.micro_steps} micro-step(s)",
        },
        "flops": {
            "formula": "flops_per_token = 6 * N + 12 * n_layer * n_embd * T (forward + backward); "
            "TFLOP/s = tokens_per_sec * flops_per_token / 1e12; MFU = TFLOP/s * 1e12 / peak",
            "N_matmul_params": gflops.matmul_params(config),
            "flops_per_token": gflops.flops_per_token(config, T),
            "peak_flops": peak,
            "peak_math": math,  # the peak MFU is over: bf16 (fp16 alike), tf32 or fp32, dense
            "peak_note": None if peak else f"no dense {math} peak known for {name!r}: MFU left out",
        },
        "paths": results,
    }


def headline(result):
    """One line: the headline path against the baseline, tokens/sec and peak memory."""
    r = next((r for r in result["paths"] if r["path"] == HEADLINE), None)
    if r is None or r["speedup_vs_torch_compile"] is None:
        return f"{HEADLINE} vs {BASELINE}: no figure (both paths must run)"
    memory = r["memory_vs_torch_compile"]
    memory = f", {memory:.2f}x its peak memory" if memory is not None else ""
    return f"{HEADLINE}: {r['speedup_vs_torch_compile']:.2f}x the tokens/sec of {BASELINE}{memory}"


def table(result):
    """The report as an aligned text table (printed last by python -m tritongpt.bench), the headline path
    (triton+compile) first, and a line that compares it with the baseline."""
    cols = ["path", "status", "batch", "ms/step", "tok/s", "TFLOP/s", "MFU", "mem GiB", f"vs {BASELINE}"]
    paths = sorted(result["paths"], key=lambda r: r["path"] != HEADLINE)  # stable: the rest in run order

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    rows = [
        [
            r["path"], r["status"], f(r["batch"], "d"), f(r["ms_per_step"], ".2f"),
            f(r["tokens_per_sec"], ",.0f"), f(r["tflops"], ".2f"),
            "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%", f(r["peak_memory_gib"], ".2f"),
            "-" if r["speedup_vs_torch_compile"] is None else f"{r['speedup_vs_torch_compile']:.2f}x",
        ]
        for r in paths
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)) for row in [cols, *rows]]
    s = result["settings"]
    cfg = s["config"]
    head = (
        f"{s['model']}: n_layer={cfg['n_layer']} n_head={cfg['n_head']} "
        f"n_embd={cfg['n_embd']} vocab={cfg['vocab_size']} T={s['seq_len']} dtype={s['dtype']} "
        f"on {result['device_name']} (torch {result['torch']}, triton {result['triton']})"
    )
    notes = [headline(result)]
    notes += [f"{r['path']}: {r['reason']}" for r in result["paths"] if r["reason"]]
    notes += [
        f"{r['path']}: {r['graph_breaks']} graph break(s)" for r in result["paths"] if r["graph_breaks"]
    ]
    tail = [result["flops"]["formula"]]
    if result["flops"]["peak_note"]:
        tail.append(result["flops"]["peak_note"])
    if result["note"]:
        tail.append(result["note"])
    return "\n".join([head, *lines, *notes, *tail])
