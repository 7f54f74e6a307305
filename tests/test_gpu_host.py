"""The host side of a GPU run, on a CPU: the trainer's, the sampler's, the benchmark's and the
profile drivers' set-up and steps under strict fakes of torch.cuda (tests/cuda_fakes.py), with
"cuda" tensors placed on the CPU, so that a line that runs only where a GPU is runs here too.

What the harness reaches: device resolution (`auto`, `cuda`, `cuda:N`) and set_device; TF32 and
the deterministic switches; the GPU defaults (bfloat16 or float16, the triton backend, fused
AdamW, the GradScaler of float16); the run header and the memory plan from the device's name and
properties; pinned, non-blocking batch copies; the bad-step counter's pinned copies and events;
MFU from the device's name; peak memory from torch.cuda's statistics; the benchmark's CUDA-event
timing and its synchronize before reading them; the profiler's start and stop; NVTX ranges.

What it cannot reach, and why:
- Anything a CUDA tensor itself decides. The tensors live on the CPU, so `t.device.type == "cuda"`
  is false inside the ops: the kernels' device guard and their SM count (kernels.common), and
  compiled Triton kernels (they run under the interpreter here). A host tensor mixed with a
  device tensor is not caught either: both are CPU tensors.
- torch.compile of a GPU path: Inductor would generate CPU code for the CPU tensors, which says
  nothing of the GPU's graph, and costs tens of seconds.
- Several processes: DDP and FSDP over NCCL need the real library (gloo covers them on a CPU in
  tests/test_train.py and test_train_fsdp.py).
- Real memory figures: the statistics report what the test puts in the fake (allocations are not
  counted), and out-of-memory errors never happen.
- triton.testing.do_bench and CUDA graphs (the kernel benchmarks, compile_mode=reduce-overhead):
  they need streams and graph capture, which are not faked.
"""

import json
import math
import os
import sys

import pytest
import torch

from conftest import tiny
from cuda_fakes import fake_cuda
from tritongpt import prep
from tritongpt.bench import __main__ as bench_main
from tritongpt.gpt.flops import flops_per_token
from tritongpt.train import loop
from tritongpt.train import system
from tritongpt.train.config import ConfigError, load_config
from tritongpt.train.loop import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the fakes themselves


def test_fakes_are_as_strict_as_torch():
    """The fakes refuse what torch refuses, with torch's messages."""
    with fake_cuda(gpus=2, name="NVIDIA H200") as gpu:
        assert torch.cuda.is_available() and torch.cuda.device_count() == 2
        with pytest.raises(ValueError, match="Expected a torch.device with a specified index or an integer, but got:cuda"):
            torch.cuda.set_device("cuda")
        with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
            torch.cuda.set_device(torch.device("cuda"))
        with pytest.raises(ValueError, match="Expected a cuda device, but got: cpu"):
            torch.cuda.set_device("cpu")
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.cuda.set_device("cuda:2")
        torch.cuda.set_device("cuda:1")
        assert torch.cuda.current_device() == 1 and gpu.set_devices == [1]
        assert torch.cuda.get_device_name() == "NVIDIA H200" and torch.cuda.get_device_capability("cuda:0") == (9, 0)
        with pytest.raises(AssertionError, match="Invalid device id"):
            torch.cuda.get_device_properties(5)
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.cuda.max_memory_allocated("cuda:3")
        assert torch.cuda.max_memory_allocated("cuda") == 0 and torch.cuda.is_bf16_supported()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with pytest.raises(RuntimeError, match="must be recorded"):
            start.elapsed_time(end)
        start.record()
        end.record()
        with pytest.raises(RuntimeError, match="not ready"):
            start.elapsed_time(end)  # the end event has not completed
        torch.cuda.synchronize()
        assert start.elapsed_time(end) >= 0
        untimed = torch.cuda.Event()
        untimed.record()
        untimed.synchronize()
        with pytest.raises(RuntimeError, match="enable_timing=True"):
            untimed.elapsed_time(end)
    with fake_cuda(name="Tesla V100-SXM2-16GB"):
        assert not torch.cuda.is_bf16_supported()
    assert not torch.cuda.is_available()  # all put back


def test_cuda_tensors_live_on_the_cpu_with_checked_indices():
    with fake_cuda(remap=True) as gpu:
        x = torch.zeros(3, device="cuda")
        assert x.device.type == "cpu"
        assert torch.ones(2).to("cuda:0", non_blocking=True).device.type == "cpu"
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.zeros(1, device="cuda:1")
        pinned = torch.arange(4).pin_memory()
        assert pinned.is_pinned() and not x.is_pinned() and len(gpu.pinned) == 1
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16
    with fake_cuda(remap=True, name="Tesla V100-SXM2-16GB"), pytest.raises(RuntimeError, match="bfloat16"):
        torch.autocast("cuda", dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- the two crashes of issue 23


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_trainer_sets_an_indexed_device(device, small_ds, tmp_path):
    """device auto or cuda is the current CUDA device, cuda:N: set_device refuses one with no
    index (train/system.py called it with "cuda" before, and every single-GPU run died there)."""
    cfg = load_config(tiny(small_ds, str(tmp_path), device=device, dtype="auto", backend="auto", compile="false"))
    with fake_cuda(remap=True) as gpu:
        trainer = Trainer(cfg)
    assert cfg.device == "cuda:0" and gpu.set_devices == [0]
    assert cfg.dtype == "bfloat16" and cfg.backend == "triton" and trainer.step.fused
    assert trainer.metrics.device_name == "NVIDIA H100 80GB HBM3"


def test_bench_sets_an_indexed_device(tmp_path):
    """python -m tritongpt.bench on a GPU: its device is cuda:N before set_device (it called
    set_device(torch.device("cuda")) before, outside the per-path try: no figure at all)."""
    out = tmp_path / "r.json"
    with fake_cuda(remap=True) as gpu:
        rc = bench_main.main(["--smoke", "--paths", "torch", "--steps", "2", "--warmup", "1", "--dtype", "float32",
                              "--out", str(out)])
    assert rc == 0 and gpu.set_devices == [0]


def test_cuda_is_the_current_device_or_local_ranks(monkeypatch):
    with fake_cuda(gpus=2) as gpu:
        gpu.current = 1
        assert system.cuda_device("cuda") == "cuda:1"
        monkeypatch.setenv("LOCAL_RANK", "0")  # under torchrun: the process's own device
        assert system.cuda_device("cuda") == "cuda:0" and system.cuda_device("cuda:1") == "cuda:1"


def test_a_device_the_machine_lacks_is_one_line(small_ds, tmp_path, capsys):
    """cuda:7 on a machine with one GPU: one line naming the devices there are, for the trainer,
    the sampler and the benchmark."""
    from tritongpt.train.__main__ import main as train_main
    from tritongpt.train.cli import run_cli
    from tritongpt.train.sample import SampleConfig, sample

    with fake_cuda(remap=True):
        with pytest.raises(SystemExit) as e:
            run_cli(train_main, tiny(small_ds, str(tmp_path), device="cuda:7"), "")
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "config key 'device': cuda:7 is cuda:7, but this machine has 1 CUDA device(s)" in err
        with pytest.raises(ConfigError, match="has 1 CUDA device"):
            sample(SampleConfig(out_dir=str(tmp_path), device="cuda:7"))
        with pytest.raises(SystemExit) as e:
            bench_main.main(["--smoke", "--device", "cuda:7"])
        assert e.value.code == 2 and "--device cuda:7 is cuda:7, but this machine has 1 CUDA device(s)" in capsys.readouterr().err


def test_main_command_gets_past_device_setup(shakespeare, tmp_path, monkeypatch):
    """python -m tritongpt.train with no arguments on a one-GPU machine: the GPU config, its data
    prepared, the device set; stopped right after (its 5000 steps are no CPU test)."""
    import tritongpt.train.__main__ as cli

    class SetUp(Exception):
        pass

    def stop(trainer):
        raise SetUp(trainer.cfg.device, trainer.device_type, trainer.cfg.dtype, trainer.cfg.backend)

    monkeypatch.setattr(prep.sources, "SHAKESPEARE_URL", "http://127.0.0.1:0/input.txt")  # no download
    monkeypatch.setattr(loop.Trainer, "_setup_data", stop)
    monkeypatch.chdir(tmp_path)
    with fake_cuda(remap=True) as gpu, pytest.raises(SetUp) as e:
        cli.main([])
    assert e.value.args == ("cuda:0", "cuda", "bfloat16", "triton") and gpu.set_devices == [0]
    assert (tmp_path / "data" / "shakespeare_char" / "meta.json").is_file()


# ----------------------------------------------------------------------------- whole GPU-path runs


def _records(out):
    return [json.loads(line) for line in open(f"{out}/metrics.jsonl")]


def test_float16_triton_run_takes_the_gpu_path(small_ds, tmp_path):
    """A short run as on one GPU, in float16 on the triton backend: the GradScaler, fused AdamW,
    pinned non-blocking batches, the bad-step count read one step late through an event, NVTX
    ranges, MFU from the device's name and peak memory from torch.cuda's statistics."""
    out = str(tmp_path)
    cfg = load_config(tiny(small_ds, out, device="auto", dtype="float16", backend="auto", compile="false", max_iters=4,
                           eval_interval=4, dropout=0.0, nvtx=True))
    with fake_cuda(remap=True) as gpu:
        gpu.allocated[0] = gpu.peak[0] = 3 * 2**30
        trainer = Trainer(cfg)
        assert trainer.step.scaler.is_enabled() and trainer.step.fused and trainer.bad._late
        trainer.run()
        trainer.metrics.close()
        assert all(t.is_pinned() for t in trainer.bad._host)
    assert cfg.device == "cuda:0" and cfg.backend == "triton"
    assert torch.backends.cuda.matmul.allow_tf32 is False  # put back by the fakes
    assert {"data", "forward", "backward", "optimizer"} <= set(gpu.nvtx_seen) and gpu.nvtx == []
    steps = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["mem_gib"] == 3.0 for r in steps)
    per_token = flops_per_token(trainer.raw_model.config, cfg.block_size)
    assert all(r["mfu"] == pytest.approx(r["tok_per_s"] * per_token / 989e12) for r in steps)  # fp16: the bf16 peak
    start = _records(out)[0]
    assert start["device"] == "cuda" and start["device_name"] == "NVIDIA H100 80GB HBM3"
    assert "scaler" in torch.load(f"{out}/ckpt_00000004.pt", weights_only=True)


def test_bfloat16_run_and_sampling_on_the_gpu_path(small_ds, tmp_path):
    """bfloat16 by default where the GPU has it (autocast on "cuda", here the CPU's), then sampling
    from the checkpoint with the sampler's own device resolution."""
    from tritongpt.train.sample import SampleConfig, sample

    out = str(tmp_path)
    cfg = load_config(tiny(small_ds, out, device="cuda", dtype="auto", backend="torch", compile="false", max_iters=2,
                           eval_interval=2))
    with fake_cuda(remap=True):
        train(cfg)
        sampled = SampleConfig(out_dir=out, num_samples=1, max_new_tokens=5, start="a", dtype="auto",
                               backend="torch")  # the interpreter has no bf16 matmul
        text = sample(sampled)
    assert cfg.dtype == "bfloat16" and sampled.device == "cuda:0" and sampled.dtype == "bfloat16"
    assert text[0].startswith("a") and len(text[0]) == 6


def test_bench_times_with_events_after_a_synchronize(tmp_path):
    """The benchmark on a GPU: CUDA events around each step, read after one synchronize; MFU
    against the device's peak; peak memory from the statistics."""
    out = tmp_path / "r.json"
    with fake_cuda(remap=True) as gpu:
        gpu.allocated[0] = gpu.peak[0] = 2**30
        rc = bench_main.main(["--smoke", "--paths", "torch", "--steps", "2", "--warmup", "1", "--dtype", "float32",
                              "--out", str(out)])
    result = json.loads(out.read_text())
    r = result["paths"][0]
    assert rc == 0 and result["gpu_figures"] and result["device_name"] == "NVIDIA H100 80GB HBM3"
    assert r["status"] == "ok" and len(r["step_ms"]) == 2 and r["mfu"] is not None
    assert r["peak_memory_gib"] == 1.0
    assert gpu.synchronizes >= 2 and not gpu.pending


def test_profile_capture_starts_and_stops_the_profiler(capsys):
    from tritongpt.profiles import capture

    with fake_cuda(remap=True) as gpu:
        assert capture.main(["--smoke", "--backend", "torch", "--dtype", "float32", "--warmup", "1", "--steps", "1"]) == 0
    assert gpu.profiler == ["start", "stop"] and "captured_steps" in gpu.nvtx_seen and gpu.nvtx == []
    assert "inside cudaProfilerStart/Stop" in capsys.readouterr().out


def test_model_ranges_with_torchs_own_nvtx(monkeypatch):
    """Without the nvtx package the ranges are torch.cuda.nvtx's, whose range_push returns the
    range's depth: the model's hooks must not hand that on as a module's input or output (they
    did: every annotated forward failed on such a GPU machine)."""
    from tritongpt.gpt import GPT, GPTConfig
    from tritongpt.instrument import nvtx

    monkeypatch.setitem(sys.modules, "nvtx", None)  # import nvtx fails
    with fake_cuda(remap=True) as gpu:
        assert nvtx.enable(True)
        model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16)).to("cuda")
        nvtx.annotate_model(model)
        idx = torch.randint(0, 16, (2, 8), device="cuda")
        assert torch.isfinite(model(idx, idx))
    assert {"embedding", "block0.attn", "block0.mlp", "ln_f", "loss"} <= set(gpu.nvtx_seen) and gpu.nvtx == []


def test_deterministic_setup_on_a_gpu(small_ds, tmp_path, monkeypatch):
    """deterministic=true on a GPU: cuBLAS's fixed workspace is asked for before the device is
    set (it is read when the first cuBLAS handle is made), cuDNN and torch take their
    deterministic algorithms, the kernels' tiles are fixed."""
    from tritongpt import kernels

    seen = []
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg = load_config(tiny(small_ds, str(tmp_path), device="cuda", dtype="auto", backend="auto", compile="false",
                           deterministic="true"))
    try:
        with fake_cuda(remap=True) as gpu, pytest.MonkeyPatch.context() as mp:  # undone before the fakes are
            mp.setattr(torch.cuda, "set_device",
                       lambda d: seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG")) or gpu.set_device(d))
            Trainer(cfg)
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert torch.are_deterministic_algorithms_enabled() and kernels.tiles_fixed()
        assert seen == [":4096:8"]
    finally:
        system.deterministic(False)
    assert not kernels.tiles_fixed() and not torch.are_deterministic_algorithms_enabled()
