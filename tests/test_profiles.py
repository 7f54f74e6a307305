"""NVTX ranges, the capture driver, the torch.profiler fallback, nsys.sh and its tables, on a CPU."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from tritongpt.gpt import GPT, GPTConfig
from tritongpt.instrument import nvtx
from tritongpt.profiles import capture, nsys_table, torch_profile
from conftest import ROOT

CFG = dict(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=32)  # head dim 16: the kernels need >= 16


@pytest.fixture
def recorded_ranges():
    """NVTX forced on with a recording push/pop, even on a CPU; switched off afterwards."""
    log, stack = [], []

    def push(name):
        log.append(name)
        stack.append(name)

    def pop():
        assert stack, "pop without push"
        stack.pop()

    nvtx._enable_with(push, pop)
    yield log, stack
    nvtx.enable(False)


def test_ranges_are_free_when_off():
    nvtx.enable(False)
    assert nvtx.range("a") is nvtx.range("b")  # one shared null context, nothing allocated
    model = GPT(GPTConfig(**CFG))
    assert nvtx.annotate_model(model) == []
    assert not model._forward_hooks and not model.transformer.wte._forward_pre_hooks
    if not torch.cuda.is_available():
        assert nvtx.enable(True) is False  # on a CPU the switch stays off


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_annotations_leave_outputs_unchanged(backend, recorded_ranges):
    log, stack = recorded_ranges
    model = GPT(GPTConfig(**CFG, backend=backend))
    idx = torch.randint(0, CFG["vocab_size"], (2, 12))
    targets = torch.randint(0, CFG["vocab_size"], (2, 12))

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(idx)
        loss = model(idx, targets)
        loss.backward()
        return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    logits0, loss0, grads0 = run()
    assert log == []  # not annotated yet
    handles = nvtx.annotate_model(model)
    assert handles
    logits1, loss1, grads1 = run()
    assert torch.equal(logits0, logits1) and torch.equal(loss0, loss1)
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name

    # the ranges that ran, in order, and all closed
    one_pass = ["embedding", "block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "ln_f", "loss"]
    assert log == one_pass * 2 and stack == []

    # generate() runs ln_f and the LM head outside GPT.forward: no "loss", nothing left open
    log.clear()
    model.generate(idx[:, :4], max_new_tokens=2, temperature=0.0)
    assert "loss" not in log and "embedding" in log and stack == []

    for h in handles:
        h.remove()
    log.clear()
    run()
    assert log == []


def test_capture_driver_runs_the_steps(capsys, recorded_ranges):
    log, stack = recorded_ranges
    assert capture.main(["--smoke", "--backend", "torch", "--steps", "1", "--warmup", "1", "--no-nvtx"]) == 0
    out = capsys.readouterr().out
    assert "torch: 1 steps at batch 2" in out
    assert "nothing captured" in out or "inside cudaProfilerStart/Stop" in out


def test_capture_driver_rejects_bad_arguments(capsys):
    for argv, message in [
        (["--smoke", "--steps", "0"], "--steps must be >= 1"),
        (["--smoke", "--seq-len", "999"], "--seq-len must be in"),
        (["--smoke", "--n_embd=x"], "expected a value of type int"),
        (["--smoke", "--backend", "jax"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit) as e:
            capture.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_step_ranges_and_data_range(recorded_ranges):
    """The trainer's step, as the benchmark runs it, marks data, forward, backward and optimizer
    (once per micro-step, the optimizer once per step)."""
    from tritongpt.bench import step
    from tritongpt.bench.config import OPTIM
    from tritongpt.train.step import TrainStep

    log, stack = recorded_ranges
    cfg = GPTConfig(**CFG)
    model = GPT(cfg)
    opt = model.configure_optimizers(device_type="cpu", **OPTIM)
    batches = step.make_batches(cfg, 2, 8, torch.device("cpu"), 0)
    step.run_steps(TrainStep(model, opt, "cpu", "float32", micro_steps=2), batches, 1, torch.device("cpu"))
    assert log == ["data", "forward", "backward"] * 2 + ["optimizer"] and stack == []


def test_capture_times_the_trainers_step(monkeypatch, capsys):
    """The profile drivers run the trainer's own step (train.step.TrainStep), warm-up and captured."""
    from tritongpt.train.step import TrainStep

    calls = []
    real = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    assert capture.main(["--smoke", "--backend", "torch", "--warmup", "1", "--steps", "2", "--no-nvtx"]) == 0
    assert len(calls) == 3


def _strict(path):
    def bad(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=bad)


def test_torch_profile_fallback_writes_trace_and_table(tmp_path, capsys):
    out = tmp_path / "prof"
    assert torch_profile.main(["--smoke", "--backend", "torch", "--steps", "1", "--out", str(out), "--top", "5"]) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert trace["traceEvents"]
    table = (out / "top_ops.md").read_text()
    assert "| op | calls | total ms | % | avg us |" in table and "not GPU figures" in table
    assert len([line for line in table.splitlines() if line.startswith("| `")]) == 5
    summary = _strict(out / "summary.json")
    for key in ("created_utc", "device_name", "torch", "triton", "git_commit", "settings", "rows", "total_ms"):
        assert key in summary, key
    assert summary["kind"] == "torch_profile" and summary["clock"] == "CPU"
    rows = summary["rows"]
    assert len(rows) == 5 and all(set(r) == {"name", "calls", "total_ms", "percent", "avg_us"} for r in rows)
    assert [r["total_ms"] for r in rows] == sorted((r["total_ms"] for r in rows), reverse=True)
    assert sum(r["total_ms"] for r in rows) <= summary["total_ms"] + 1e-9
    assert "written:" in capsys.readouterr().out


# ----------------------------------------------------------------------------- nsys


KERNELS_CSV = """\
Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Name
25.0,2000000,4,500000.0,500000.0,490000,510000,1.0,_layer_norm_fwd_kernel
75.0,6000000,2,3000000.0,3000000.0,2900000,3100000,1.0,"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"
"""
RANGES_CSV = """\
Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Style,Range
40.0,20000000,1,20000000.0,20000000.0,20000000,20000000,0.0,PushPop,:captured_steps
20.0,8000000,2,4000000.0,4000000.0,4000000,4000000,0.0,PushPop,:forward
5.0,2000000,2,1000000.0,1000000.0,1000000,1000000,0.0,PushPop,:block0.attn
5.0,3000000,2,1500000.0,1500000.0,1500000,1500000,0.0,PushPop,:block1.attn
"""


def test_nsys_table_from_stats_csv(tmp_path, capsys):
    (tmp_path / "k.csv").write_text("Generating SQLite file report.sqlite\n" + KERNELS_CSV)
    (tmp_path / "r.csv").write_text(RANGES_CSV)
    argv = ["--steps", "2", "--kernels", str(tmp_path / "k.csv"), "--ranges", str(tmp_path / "r.csv")]
    assert nsys_table.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    gemm = next(i for i, line in enumerate(lines) if line.startswith("| `sm90_xmma_gemm"))
    assert gemm < next(i for i, line in enumerate(lines) if line.startswith("| `_layer_norm"))  # largest first
    assert "| `sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64` | 3.000 | 75.0 | 1 | 3000.0 |" in lines
    assert "| `_layer_norm_fwd_kernel` | 1.000 | 25.0 | 2 | 500.0 |" in lines
    # per-block ranges summed as block*.attn; shares of the outer captured_steps range
    assert "| `block*.attn` | 2.500 | 25.0 | 2 | 1250.0 |" in lines
    assert "| `forward` | 4.000 | 40.0 | 1 | 4000.0 |" in lines
    assert not any("block0" in line for line in lines)


def test_nsys_table_errors(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("nothing useful here\n")
    assert nsys_table.main(["--kernels", str(tmp_path / "bad.csv")]) == 2
    assert "no nsys stats header" in capsys.readouterr().err
    (tmp_path / "odd.csv").write_text("Time (%),Something\n1,2\n")
    assert nsys_table.main(["--kernels", str(tmp_path / "odd.csv")]) == 2
    assert "none of the columns" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nsys_table.main(["--kernels", str(tmp_path / "missing.csv")])


def _bash_path(tmp_path, with_fake_nsys):
    """A PATH holding python and bash's basics, and a fake nsys when asked."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "mkdir", "cat", "env", "dirname"):
        src = shutil.which(tool)
        if src:
            os.symlink(src, bindir / tool)
    (bindir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # keeps the venv
    (bindir / "python").chmod(0o755)
    if with_fake_nsys:
        fake = bindir / "nsys"
        fake.write_text(FAKE_NSYS)
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return str(bindir)


# Stands in for nsys: `profile` runs the program after its options and writes the report file;
# `stats` writes the CSVs of the reports asked for, and fails for nvtx_gpu_proj_sum as an older
# nsys does.
FAKE_NSYS = f"""#!{sys.executable}
import sys, subprocess
args = sys.argv[1:]
if args[0] == "profile":
    out = args[args.index("--output") + 1]
    cmd = args[args.index("--output") + 2:]
    assert "--capture-range=cudaProfilerApi" in args and "--trace=cuda,nvtx" in args
    rc = subprocess.call(cmd)
    open(out + ".nsys-rep", "w").write("fake")
    sys.exit(rc)
if args[0] == "stats":
    reports = args[args.index("--report") + 1].split(",")
    prefix = args[args.index("--output") + 1]
    data = {{"cuda_gpu_kern_sum": {KERNELS_CSV!r}, "nvtx_sum": {RANGES_CSV!r}}}
    for r in reports:
        if r not in data:
            sys.exit(1)
        open(prefix + "_" + r + ".csv", "w").write(data[r])
    sys.exit(0)
sys.exit(2)
"""


def _run_nsys_sh(tmp_path, path, *args):
    env = {"PATH": path, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for key in ("TRITON_INTERPRET", "TIKTOKEN_CACHE_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return subprocess.run(
        ["bash", str(ROOT / "tritongpt" / "profiles" / "nsys.sh"), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )


def test_nsys_sh_without_nsys_says_so(tmp_path):
    res = _run_nsys_sh(tmp_path, _bash_path(tmp_path, with_fake_nsys=False), str(tmp_path / "out"))
    assert res.returncode == 127
    assert "nsys) is not installed" in res.stderr and "python -m tritongpt.profiles.torch_profile" in res.stderr
    res = _run_nsys_sh(tmp_path, os.environ["PATH"])  # no OUT_DIR
    assert res.returncode == 2 and "usage: profiles/nsys.sh OUT_DIR" in res.stderr


def test_nsys_sh_end_to_end_with_a_stand_in_nsys(tmp_path):
    out = tmp_path / "out"
    res = _run_nsys_sh(tmp_path, _bash_path(tmp_path, with_fake_nsys=True), str(out),
                       "--smoke", "--backend", "torch", "--steps", "2")
    assert res.returncode == 0, res.stderr
    assert "torch: 2 steps at batch 2" in res.stdout  # the capture driver ran under "nsys profile"
    assert "no nvtx_gpu_proj_sum report" in res.stderr  # the older-nsys fallback
    summary = (out / "summary.md").read_text()
    assert "## GPU kernels (2 captured step(s)" in summary and "block*.attn" in summary


def test_nsys_table_unreadable_range_report_is_a_note(tmp_path, capsys):
    (tmp_path / "k.csv").write_text(KERNELS_CSV)
    (tmp_path / "g.csv").write_text("Time (%),Something\n1,2\n")
    assert nsys_table.main(["--kernels", str(tmp_path / "k.csv"), "--gpu-ranges", str(tmp_path / "g.csv")]) == 0
    out = capsys.readouterr().out
    assert "_layer_norm_fwd_kernel" in out and "(not summarised:" in out
