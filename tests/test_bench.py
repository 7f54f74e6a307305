"""The benchmarks on a CPU: python -m tritongpt.bench --smoke, --batch auto, the kernel-benchmark machinery,
the plot, and the MFU arithmetic. CPU figures only show that the code runs."""

import json
import math
import statistics
import subprocess
import sys
import warnings

import pytest
import torch

from tritongpt.bench import __main__ as bench_main
from tritongpt.bench import common, config, ops, plot, step, tokenize_rate
from tritongpt.gpt import GPTConfig
from tritongpt.gpt import flops as gflops


def _load_strict(path):
    """JSON that must not hold NaN or infinities (json.loads would accept them)."""

    def bad(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=bad)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """python -m tritongpt.bench --smoke, as a user runs it: (completed process, result path)."""
    out = tmp_path_factory.mktemp("bench") / "step.json"
    r = subprocess.run([sys.executable, "-m", "tritongpt.bench", "--smoke", "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    return r, out


@pytest.fixture(scope="module")
def smoke(smoke_run):
    r, out = smoke_run
    return r.returncode, out, _load_strict(out)


def test_smoke_is_quiet_by_default(smoke_run):
    """No warnings of torch.compile before the table (several lines each): held back and counted."""
    r, out = smoke_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr and "torch/_dynamo" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.startswith(f"result written to {out}\n")


def test_only_compiler_warnings_are_held_back(recwarn):
    held = []
    with bench_main.compiler_warnings_held(held):
        warnings.warn_explicit("Dynamo does not know how to trace\nsecond line", UserWarning,
                               "/site-packages/torch/_dynamo/variables/functions.py", 2431)
        warnings.warn_explicit("something else", UserWarning, "/home/me/mine.py", 7)
    assert [str(w.message).splitlines()[0] for w in held] == ["Dynamo does not know how to trace"]
    assert [str(w.message) for w in recwarn] == ["something else"]


def test_smoke_writes_a_complete_result(smoke):
    rc, _, result = smoke
    assert rc == 0
    for key in ("created_utc", "device_name", "torch", "triton", "git_commit", "settings", "flops", "paths", "note"):
        assert key in result, key
    assert result["gpu_figures"] is False and "not GPU figures" in result["note"]
    assert result["settings"]["smoke"] and result["settings"]["seq_len"] == config.SMOKE["block_size"]
    assert [r["path"] for r in result["paths"]] == list(config.PATHS)
    expected = set(step.empty_path("torch"))
    for r in result["paths"]:
        assert set(r) == expected, r["path"]
        assert r["status"] in ("ok", "skipped"), (r["path"], r["reason"])
        if r["status"] == "skipped":
            assert r["reason"]
        # every null figure says why
        for k, v in r.items():
            if v is None and k != "reason":
                assert r["nulls"].get(k), (r["path"], k)
    ok = {r["path"]: r for r in result["paths"] if r["status"] == "ok"}
    assert set(ok) == set(config.PATHS), {r["path"]: r["reason"] for r in result["paths"]}
    for name in ("torch+compile", "triton+compile"):  # one graph each: the Triton ops are custom ops
        assert ok[name]["graph_breaks"] == 0, ok[name]["graph_break_reasons"]


def test_smoke_figures_follow_the_formula(smoke):
    _, _, result = smoke
    T = result["settings"]["seq_len"]
    cfg = GPTConfig(**result["settings"]["config"])
    assert result["flops"]["flops_per_token"] == gflops.flops_per_token(cfg, T)
    assert result["flops"]["peak_flops"] is None and result["flops"]["peak_note"]
    base = next(r for r in result["paths"] if r["path"] == "torch+compile")
    for r in result["paths"]:
        if r["status"] != "ok":
            continue
        assert len(r["step_ms"]) == result["settings"]["steps"]
        assert r["ms_per_step"] == pytest.approx(statistics.median(r["step_ms"]), rel=1e-3)
        assert r["tokens_per_sec"] == pytest.approx(r["batch"] * T / (r["ms_per_step"] / 1e3))
        assert r["tflops"] == pytest.approx(r["tokens_per_sec"] * gflops.flops_per_token(cfg, T) / 1e12)
        assert r["mfu"] is None and "no dense peak known" in r["nulls"]["mfu"]
        assert r["peak_memory_gib"] is None and "CPU" in r["nulls"]["peak_memory_gib"]
        assert r["speedup_vs_torch_compile"] == pytest.approx(base["ms_per_step"] / r["ms_per_step"])
        assert math.isfinite(r["final_loss"])


def test_paths_start_from_the_same_weights(smoke):
    """Same seed, same batches, same number of steps: eager and compiled torch end at the same loss."""
    _, _, result = smoke
    loss = {r["path"]: r["final_loss"] for r in result["paths"] if r["status"] == "ok"}
    assert loss["torch"] == pytest.approx(loss["torch+compile"], abs=1e-4)
    assert loss["torch"] == pytest.approx(loss["triton"], abs=1e-3)
    assert loss["triton"] == pytest.approx(loss["triton+compile"], abs=1e-4)


def test_table_is_printed_last(smoke, capsys):
    _, _, result = smoke
    text = step.table(result)
    assert "ms/step" in text and "MFU" in text and "not GPU figures" in text
    for name in config.PATHS:
        assert name in text
    rows = [line.split()[0] for line in text.splitlines()[2:2 + len(config.PATHS)]]
    assert rows[0] == config.HEADLINE == "triton+compile" and sorted(rows) == sorted(config.PATHS)
    assert "triton+compile: " in text and "x the tokens/sec of torch+compile" in text


def test_gpt2_preset_is_the_trained_model():
    """The bench's presets are the models train/configs/ trains (read from those files)."""
    from tritongpt.train.config import load_config

    for name in config.PRESETS:
        trained = load_config([name])
        bench = config.model_config(config.Settings(model=name))
        for key in ("n_layer", "n_head", "n_embd", "block_size", "bias", "dropout"):
            assert getattr(bench, key) == getattr(trained, key), (name, key)
        assert bench.vocab_size == 50304
    assert config.model_config(config.Settings(model="gpt2")).bias is False


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """--compile-mode is passed to torch.compile with inductor, and refused with another backend."""
    settings, _, _ = bench_main.parse_args(["--compile-mode", "reduce-overhead"])
    assert settings.compile_mode == "reduce-overhead" and settings.compile_backend in ("inductor", "aot_eager")
    settings.compile_backend = "inductor"
    assert step.compile_options(settings) == dict(backend="inductor", mode="reduce-overhead")
    settings.compile_mode = "default"
    assert step.compile_options(settings) == dict(backend="inductor")


def test_mfu_on_a_named_device(tmp_path, monkeypatch):
    """With a device in the peak table the result carries MFU = TFLOP/s * 1e12 / peak."""
    monkeypatch.setattr(step, "device_name", lambda device: "NVIDIA H200")
    for dtype, math_, peak in (("bfloat16", "bf16", 989e12), ("float32", "fp32", 67e12)):  # TF32 is off here
        out = tmp_path / f"{dtype}.json"
        assert bench_main.main(["--smoke", "--paths", "torch", "--steps", "1", "--dtype", dtype, "--out", str(out)]) == 0
        result = _load_strict(out)
        r = result["paths"][0]
        assert result["flops"]["peak_flops"] == peak and result["flops"]["peak_math"] == math_
        assert r["mfu"] == pytest.approx(r["tflops"] * 1e12 / peak)
        assert "mfu" not in r["nulls"]


def test_mfu_formula_by_hand():
    cfg = GPTConfig(block_size=16, vocab_size=16, n_layer=2, n_head=2, n_embd=8)
    # per layer: c_attn 8*24 + attn.c_proj 8*8 + c_fc 8*32 + mlp.c_proj 32*8 = 768; LM head 16*8
    n = 2 * 768 + 128
    per_token = 6 * n + 12 * 2 * 8 * 16
    assert gflops.flops_per_token(cfg, 16) == per_token == 13056
    tokens_per_sec = 2.5e6
    assert gflops.mfu(cfg, 16, tokens_per_sec, "NVIDIA H200") == pytest.approx(tokens_per_sec * 13056 / 989e12)
    assert gflops.mfu(cfg, 16, tokens_per_sec, "NVIDIA A100-SXM4-80GB") == pytest.approx(tokens_per_sec * 13056 / 312e12)
    assert gflops.mfu(cfg, 16, tokens_per_sec, "NVIDIA H100 PCIe") == pytest.approx(tokens_per_sec * 13056 / 756e12)
    assert gflops.mfu(cfg, 16, tokens_per_sec, "Some Future GPU") is None
    assert gflops.mfu(cfg, 16, tokens_per_sec, "CPU (x86_64)") is None


def test_the_step_timed_is_the_trainers(tmp_path, monkeypatch):
    """bench times train.step.TrainStep, the step train/loop.py calls (its clipping, scaler and
    accumulation), once per warm-up and timed step; --micro-steps accumulates as the trainer does."""
    from tritongpt.train.step import TrainStep

    calls = []
    real = TrainStep.__call__

    def call(self, batch, lr=None):
        calls.append((self.micro_steps, self.grad_clip))
        return real(self, batch, lr)

    monkeypatch.setattr(TrainStep, "__call__", call)
    out = tmp_path / "r.json"
    assert bench_main.main(["--smoke", "--paths", "torch", "--warmup", "1", "--steps", "2", "--micro-steps", "3",
                            "--out", str(out)]) == 0
    assert calls == [(3, 1.0)] * 3
    result = _load_strict(out)
    r = result["paths"][0]
    assert r["tokens_per_step"] == 3 * r["batch"] * result["settings"]["seq_len"]
    assert "TrainStep" in result["settings"]["step"] and result["settings"]["micro_steps"] == 3


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100", "H100 SXM"), ("H100", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-SXM4-40GB", "A100"),
    ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA GH200 480GB", None),
    ("NVIDIA A10", None), ("NVIDIA H800", None), ("CPU (x86_64)", None), ("", None), (None, None),
])
def test_gpu_model_from_the_device_name(name, model):
    assert gflops.gpu_model(name) == model


def test_peaks_by_model_and_dtype():
    """bf16 and fp16 against the dense tensor-core peak; fp32 against TF32's where TF32 is on (the
    trainer's setting), else the CUDA cores' fp32 peak. The NVL cards are not the SXM ones."""
    assert gflops.peak_flops("NVIDIA H100 80GB HBM3") == gflops.peak_flops("NVIDIA H200", "float16") == 989e12
    assert gflops.peak_flops("NVIDIA H100 NVL") == gflops.peak_flops("NVIDIA H200 NVL", "bfloat16") == 835e12
    assert gflops.peak_flops("NVIDIA H100 PCIe", "float16") == 756e12
    assert gflops.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494e12
    assert gflops.peak_flops("NVIDIA H100 80GB HBM3", "float32", tf32=False) == 67e12
    assert gflops.peak_flops("NVIDIA H200 NVL", "float32") == 417e12
    assert gflops.peak_flops("NVIDIA A100-SXM4-40GB", "float32", tf32=True) == 156e12
    assert gflops.peak_flops("NVIDIA A100 80GB PCIe", "float32", tf32=False) == 19.5e12
    assert gflops.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16", tf32=False) == 312e12  # TF32 is for fp32 only
    assert gflops.peak_flops("Some Future GPU", "float32") is None
    for model, peaks in gflops.PEAKS.items():  # dense tensor-core math: tf32 half of bf16, fp32 below both
        assert abs(peaks["tf32"] - peaks["bf16"] / 2) < 1e12 and peaks["fp32"] < peaks["tf32"], model
    with pytest.raises(ValueError, match="no peak for dtype 'int8'"):
        gflops.peak_flops("NVIDIA H100", "int8")
    cfg = GPTConfig(block_size=16, vocab_size=16, n_layer=2, n_head=2, n_embd=8)
    assert gflops.mfu(cfg, 16, 1e6, "NVIDIA H100 NVL", "float32", tf32=False) == pytest.approx(13056e6 / 60e12)


def test_deterministic_flag(tmp_path):
    from tritongpt import kernels
    from tritongpt.train.system import deterministic

    out = tmp_path / "r.json"
    try:
        assert bench_main.main(["--smoke", "--paths", "torch", "--steps", "1", "--warmup", "0", "--deterministic",
                                "--out", str(out)]) == 0
        assert kernels.tiles_fixed() and torch.are_deterministic_algorithms_enabled()
    finally:
        deterministic(False)
    assert _load_strict(out)["settings"]["deterministic"] is True


# ----------------------------------------------------------------------------- --batch auto


def test_find_max_batch_doubles_then_bisects():
    seen = []

    def fits(b):
        seen.append(b)
        return b <= 37

    best, tries = step.find_max_batch(fits, limit=512)
    assert best == 37
    assert seen[:7] == [1, 2, 4, 8, 16, 32, 64]  # doubling until the first failure
    assert all(32 < b < 64 for b in seen[7:])  # then bisecting between 32 and 64
    assert tries == [(b, b <= 37) for b in seen]


def test_find_max_batch_edges():
    assert step.find_max_batch(lambda b: True, limit=6)[0] == 6  # stops at the limit
    assert step.find_max_batch(lambda b: True, limit=1)[0] == 1
    assert step.find_max_batch(lambda b: False, limit=64) == (None, [(1, False)])


def test_batch_auto_stops_at_out_of_memory(tmp_path, monkeypatch):
    """A real OOM error from a step is a 'no' of the search, and the path then runs at the batch found."""
    real = step.run_steps

    def run_steps(train_step, batches, *args, **kwargs):
        if batches[0][0].shape[0] > 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate (simulated)")
        return real(train_step, batches, *args, **kwargs)

    monkeypatch.setattr(step, "run_steps", run_steps)
    out = tmp_path / "auto.json"
    rc = bench_main.main(["--smoke", "--paths", "torch", "--batch", "auto", "--batch-max", "16", "--warmup", "0", "--steps", "1", "--out", str(out)])
    assert rc == 0
    r = _load_strict(out)["paths"][0]
    assert r["status"] == "ok" and r["batch"] == 5
    assert r["batch_search"] == [[1, True], [2, True], [4, True], [8, False], [6, False], [5, True]]


def test_a_path_that_cannot_compile_is_skipped_not_fatal(tmp_path):
    out = tmp_path / "skip.json"
    rc = bench_main.main(["--smoke", "--paths", "torch,torch+compile", "--compile-backend", "no_such_backend",
                          "--steps", "1", "--out", str(out)])
    assert rc == 0
    paths = {r["path"]: r for r in _load_strict(out)["paths"]}
    assert paths["torch"]["status"] == "ok"
    skipped = paths["torch+compile"]
    assert skipped["status"] == "skipped" and "torch.compile failed" in skipped["reason"]
    assert skipped["ms_per_step"] is None and "skipped" in skipped["nulls"]["ms_per_step"]
    assert paths["torch"]["speedup_vs_torch_compile"] is None and paths["torch"]["nulls"]["speedup_vs_torch_compile"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n_layers=3"], "unknown option --n_layers"),
        (["--n_layer=three"], "--n_layer=three: expected a value of type int"),
        (["--bias=maybe"], "--bias=maybe: expected a value of type bool"),
        (["--batch", "0"], "--batch must be a positive integer"),
        (["--batch", "lots"], "--batch must be a positive integer"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--model", "gpt5"], "invalid choice"),
        (["stray"], "unrecognized argument"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_main.main(["--smoke", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend=triton"], "the backend is chosen per path"),
        (["--seq-len", "4096"], "longer than block_size"),
        (["--paths", "torch,jax"], "unknown path 'jax'"),
        (["--n_head=3"], "must be divisible by n_head"),
        (["--compile-mode", "reduce-overhead"], "--compile-mode reduce-overhead needs --compile-backend inductor"),
    ],
)
def test_bad_settings_exit_2(argv, message, capsys, tmp_path):
    assert bench_main.main(["--smoke", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match=r"result.paths\[0\].ms is nan"):
        common.write_json({"paths": [{"ms": float("nan")}]}, tmp_path / "x.json")
    assert common.finite(float("inf")) is None and common.finite(2) == 2.0


# ----------------------------------------------------------------------------- kernels


def test_kernel_work_formulas_by_hand():
    s = 2  # bf16
    assert ops.work(ops.OPS["layer_norm"], dict(N=10, C=4), "fwd", s) == 2 * 10 * 4 * 2
    assert ops.work(ops.OPS["layer_norm"], dict(N=10, C=4), "fwd+bwd", s) == 5 * 10 * 4 * 2
    assert ops.work(ops.OPS["cross_entropy"], dict(N=3, V=7), "bwd", s) == 2 * 3 * 7 * 2
    assert ops.work(ops.OPS["linear_gelu"], dict(N=2, K=3, M=5), "fwd+bwd", s) == 6 * 2 * 3 * 5
    assert ops.work(ops.OPS["linear_cross_entropy"], dict(N=2, C=3, V=5), "bwd", s) == 4 * 2 * 3 * 5
    attn = dict(B=2, H=3, T=8, D=4)
    full_square = 4 * 2 * 3 * 8 * 8 * 4
    assert ops.work(ops.OPS["attention"], attn, "fwd", s) == full_square / 2  # causal: half
    assert ops.work(ops.OPS["attention"], attn, "bwd", s) == 2.5 * full_square / 2
    assert len(ops.gpu_cases()) == sum(len(o.sizes) * 3 * len(ops.providers(o)) for o in ops.OPS.values())
    assert ops.providers(ops.OPS["linear_gelu"]) == ("kernels", "torch", "torch_compile", "matmul")
    picked = ops.gpu_cases(sizes=["gpt2"], modes=["fwd+bwd"])
    assert {(c.op, c.size, c.mode) for c in picked} == {(o, "gpt2", "fwd+bwd") for o in ops.OPS}
    assert all("gpt2" in o.sizes for o in ops.OPS.values())


@pytest.fixture(scope="module")
def kernel_smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernels") / "kernels.json"
    ops.run_smoke(torch.device("cpu"), path)
    return path, _load_strict(path)


def test_kernel_smoke_covers_every_op_mode_and_provider(kernel_smoke):
    _, result = kernel_smoke
    assert result["kind"] == "kernels" and result["gpu_figures"] is False and result["note"]
    roof = result["roofline"]
    assert roof["copy_gbps"] > 0 and roof["matmul_tflops"] > 0
    seen = {(c["op"], c["mode"], c["provider"]) for c in result["cases"]}
    assert seen == {(o.name, m, p) for o in ops.OPS.values() for m in ops.MODES for p in ops.providers(o)}
    for c in result["cases"]:
        assert c["status"] in ("ok", "skipped"), c
        if c["status"] == "skipped":
            assert c["provider"] == "torch_compile" and c["reason"]
            continue
        scale = 1e9 if c["unit"] == "GB/s" else 1e12
        assert c["rate"] == pytest.approx(c["work"] / (c["ms"] * 1e-3) / scale)
        ceiling = roof["copy_gbps"] if c["unit"] == "GB/s" else roof["matmul_tflops"]
        assert c["percent_of_roofline"] == pytest.approx(100 * c["rate"] / ceiling)
        assert c["peak_memory_mib"] is None  # measured on a GPU only
    # the kernels and eager torch always run
    assert all(c["status"] == "ok" for c in result["cases"] if c["provider"] != "torch_compile")


# ----------------------------------------------------------------------------- plot


def test_plot_draws_both_kinds(smoke, kernel_smoke, tmp_path):
    pytest.importorskip("matplotlib")
    _, step_json, _ = smoke
    assert plot.main([str(step_json), "-o", str(tmp_path / "step.png")]) == 0
    assert plot.main([str(kernel_smoke[0]), "--size", "smoke", "-o", str(tmp_path / "k.png")]) == 0
    for name in ("step.png", "k.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_marks_skipped_paths(smoke):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, result = smoke
    result = json.loads(json.dumps(result))
    for r in result["paths"][1:3]:
        r.update(status="skipped", reason="torch.compile failed", tokens_per_sec=None, mfu=None, batch=None)
    fig = plot.plot_step(result, plt)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == [r["path"] for r in result["paths"]]
    marks = [t.get_text() for t in ax.texts if not t.get_text().startswith("B=")]  # B=...: batch of a bar
    assert marks == [r["status"] for r in result["paths"] if r["status"] != "ok"]
    plt.close(fig)


def test_plot_errors(smoke, tmp_path, capsys, monkeypatch):
    _, step_json, _ = smoke
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "something"}')
    assert plot.main([str(bad)]) == 2
    assert "not a bench result" in capsys.readouterr().err
    assert plot.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert plot.main([str(step_json), "-o", str(tmp_path / "x.png")]) == 2
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- tokenizing rate


def test_tokenize_rate_writes_a_record(shared_data, tmp_path, capsys):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "rate.json"
    argv = ["--input", str(tmp_path / "in.txt"), "--procs", "1", "2", "--repeat", "1", "--out", str(out)]
    assert tokenize_rate.main(argv) == 0
    record = _load_strict(out)
    assert record["input_bytes"] == len(text.encode()) and record["tokens"] > 0
    assert "git_commit" in record and record["tiktoken"]
    assert set(record["summary"]) == {"1", "2"} and "speedup_median" in record["summary"]["2"]
    assert [r["num_proc"] for r in record["runs"]] == [1, 2]
    assert tokenize_rate.main(["--input", str(tmp_path / "missing.txt")]) == 1
    assert "not found" in capsys.readouterr().err
