"""python -m tritongpt.bench.campaign on a CPU: the smoke campaign end to end (both parts, every phase, every
file, the archives, --collect), a phase stopped by its time box while the rest runs, and the goal
verdicts of SUMMARY.md on GPU-like result files written here by hand."""

import json
import os
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET

import pytest

from tritongpt.bench import campaign, campaign_files, campaign_goals, campaign_tasks, ops
from conftest import ROOT

PART1 = ["env", "ceilings", "tests", "kernels", "step-torch-compile", "step-triton", "step-triton-compile", "step-torch"]
PART2 = ["env", "profile", "data", "converge-torch", "converge-triton", "converge-compare"]


def _campaign(args, shared_data, timeout=400):
    env = dict(os.environ, TRITONGPT_DATA=str(shared_data),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-m", "tritongpt.bench.campaign", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _json(path):
    def bad(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=bad)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_data):
    """Both parts of the smoke campaign into one folder, each packing its archive as on a GPU machine."""
    root = tmp_path_factory.mktemp("campaign")
    out, back = root / "c", root / "out"
    t0 = time.time()
    runs = [_campaign(["--part", str(p), "--smoke", "--out", str(out), "--archive", str(back / f"part{p}.tar.gz")],
                      shared_data) for p in (1, 2)]
    return out, back, runs, time.time() - t0


def test_every_phase_runs_and_is_recorded(smoke):
    out, _, runs, seconds = smoke
    for part, names, run in ((1, PART1, runs[0]), (2, PART2, runs[1])):
        assert "Campaign summary" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        m = _json(out / f"manifest-part{part}.json")
        assert m["kind"] == "campaign" and m["part"] == part and m["smoke"] and m["ended_utc"]
        assert [p["name"] for p in m["phases"]] == names
        for p in m["phases"]:
            assert (out / p["log"]).is_file(), p
            assert p["seconds"] <= p["box_s"] + 2, p
            assert p["status"] == "ok", (p, (out / p["log"]).read_text()[-3000:])
    assert seconds < 240, f"the smoke campaign took {seconds:.0f} s"


def test_the_children_run_without_nvtx_and_datasets(smoke):
    out = smoke[0]
    env = _json(out / "env-part1.json")
    assert env["importable"] == {**env["importable"], "nvtx": False, "datasets": False}
    assert env["device_name"] and env["torch"] and env["triton"] and env["python"] and env["git_commit"]


def test_part1_files(smoke):
    out = smoke[0]
    ceil = _json(out / "ceilings.json")
    assert ceil["kind"] == "ceilings" and ceil["copy_gbps"] > 0 and ceil["matmul_tflops"] > 0
    junit = ET.parse(out / "tests-gpu.xml").getroot()
    assert sum(int(s.get("tests")) for s in junit.iter("testsuite")) > 0  # the GPU tests, skipped here
    kern = _json(out / "kernels.json")
    seen = {(c["op"], c["mode"], c["provider"]) for c in kern["cases"]}
    assert seen == {(o.name, m, p) for o in ops.OPS.values() for m in ("fwd", "fwd+bwd") for p in ops.providers(o)}
    step = _json(out / "step.json")
    assert step["kind"] == "train_step" and step["gpu_figures"] == (_json(out / "env-part1.json")["device"] == "cuda")
    paths = {p["path"]: p for p in step["paths"]}
    assert list(paths) == ["torch", "torch+compile", "triton", "triton+compile"]
    for name in ("torch", "torch+compile", "triton", "triton+compile"):
        p = paths[name]
        assert p["status"] == "ok" and p["tries"] and p["batch"] in (1, 2), p
        assert p["tokens_per_sec"] == max(t["tokens_per_sec"] for t in p["tries"] if t["status"] == "ok")
        assert (out / f"step-{campaign_tasks.slug(name)}.json").is_file()
    assert paths["torch+compile"]["speedup_vs_torch_compile"] == pytest.approx(1.0)


def test_part2_files(smoke):
    out = smoke[0]
    choice = _json(out / "profile-choice.json")
    step = _json(out / "step.json")
    fastest = max((p for p in step["paths"] if p["status"] == "ok"), key=lambda p: p["tokens_per_sec"])
    assert (choice["path"], choice["batch"]) == (fastest["path"], fastest["batch"])
    prof = _json(out / "profile" / "summary.json")
    assert prof["kind"] == "torch_profile" and len(prof["rows"]) == 10
    assert (out / "profile" / "top_ops.md").is_file() and (out / "profile" / "trace.json").stat().st_size > 0
    for backend in ("torch", "triton"):
        rows = [json.loads(x) for x in (out / f"converge-{backend}.jsonl").read_text().splitlines()]
        assert rows[0]["event"] == "start" and rows[0]["config"]["seed"] == 1337
        assert [r["step"] for r in rows if r.get("event") == "eval"] == [0, 10, 20]
    conv = _json(out / "converge.json")
    assert len(conv["evaluations"]) == 3
    on_gpu = _json(out / "env-part2.json")["device"] == "cuda"
    assert bool(conv.get("substitutions")) != on_gpu  # the trainer runs the triton backend on a GPU only
    if not on_gpu:
        assert conv["agree"] and conv["max_relative_difference"] == 0  # torch twice, same seed
    assert (out / "converge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_has_every_goal_and_judges_none_on_a_cpu(smoke):
    out = smoke[0]
    text = (out / "SUMMARY.md").read_text()
    assert "could not be computed" not in text and "CPU / smoke run" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and ("not measured" in line or "met" in line)]
    goals = ["training step tokens/sec", "MFU", "speedup over torch+compile", "peak memory vs torch+compile",
             "attention fwd (", "attention fwd+bwd (", "layer_norm fwd+bwd at (16384, 768)", "cross_entropy fwd+bwd",
             "linear_cross_entropy fwd+bwd vs compiled", "linear_cross_entropy peak memory", "linear_gelu fwd vs matmul",
             "linear_gelu fwd vs cuBLAS", "loss curves"]
    for goal in goals:
        assert any(goal in r for r in rows), goal
    assert "0 met, 0 not met" in text
    assert "| met |" not in text and "| not met |" not in text
    for part, names in ((1, PART1), (2, PART2)):
        for name in names:
            assert f"| part {part} | {name} |" in text


def test_archives_hold_the_folder_and_collect_names_by_device(smoke, tmp_path):
    out, back, _, _ = smoke
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    with tarfile.open(back / "part2.tar.gz") as tar:
        names = sorted(n.split("/", 1)[1] for n in tar.getnames() if tar.getmember(n).isfile())
    assert names == files and (back / "part2.tar.gz").stat().st_size < campaign_files.ARCHIVE_LIMIT
    assert sorted(p.name for p in back.iterdir()) == ["part1.tar.gz", "part2.tar.gz"]  # two files come back

    assert campaign.main(["--collect", str(back / "part1.tar.gz"), str(back / "part2.tar.gz"), "--dest", str(tmp_path)]) == 0
    stamp = _json(out / "manifest-part1.json")["stamp"]
    dev = campaign_files.device_slug(_json(out / "env-part1.json")["device_name"])
    tag = f"{dev}-{stamp}"
    for rel in (f"tritongpt/bench/results/step-smoke-{tag}.json", f"tritongpt/bench/results/kernels-{tag}.json",
                f"tritongpt/bench/results/campaign-{tag}/SUMMARY.md", f"tritongpt/bench/results/campaign-{tag}/tests-gpu.xml",
                f"tritongpt/profiles/campaign-{tag}/top_ops.md", f"tritongpt/train/results/converge-{tag}-torch.jsonl",
                f"tritongpt/train/results/converge-{tag}-triton.jsonl", f"tritongpt/train/results/converge-{tag}.png"):
        assert (tmp_path / rel).is_file(), rel
    summary = (tmp_path / f"tritongpt/bench/results/campaign-{tag}/SUMMARY.md").read_text()
    assert f"tritongpt/bench/results/step-smoke-{tag}.json" in summary and f"tritongpt/train/results/converge-{tag}.json" in summary
    if dev != "cpu":
        return
    # CPU results stay out of the repository
    probe = [f"tritongpt/bench/results/step-smoke-{tag}.json", f"tritongpt/bench/results/kernels-{tag}.json",
             f"tritongpt/bench/results/campaign-{tag}/SUMMARY.md", f"tritongpt/profiles/campaign-{tag}/summary.json",
             f"tritongpt/train/results/converge-{tag}.json"]
    try:
        ignored = subprocess.run(["git", "check-ignore", "--no-index", *probe], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        pytest.skip("git is not installed")
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert sorted(ignored.stdout.split()) == sorted(probe)


def test_a_phase_that_outlives_its_box_is_stopped_and_the_rest_runs(tmp_path, shared_data):
    out = tmp_path / "c"
    run = _campaign(["--part", "1", "--smoke", "--out", str(out), "--only", "kernels,step-torch", "--box", "kernels=4"],
                    shared_data, timeout=120)
    assert run.returncode == 1  # a phase was not ok
    phases = {p["name"]: p for p in _json(out / "manifest-part1.json")["phases"]}
    assert phases["kernels"]["status"] == "stopped" and "outlived its box of 4 s" in phases["kernels"]["note"]
    assert phases["kernels"]["seconds"] < 8
    assert "outlived its box" in (out / phases["kernels"]["log"]).read_text()
    assert phases["step-torch"]["status"] == "ok" and (out / "step.json").is_file()
    others = [n for n in PART1 if n not in ("kernels", "step-torch")]
    assert all(phases[n]["status"] == "skipped" and phases[n]["note"] == "not among --only" for n in others)
    text = (out / "SUMMARY.md").read_text()
    assert "| part 1 | kernels | stopped |" in text and "| part 1 | step-torch | ok |" in text
    assert "No environment file" in text


def test_a_terminated_campaign_stops_its_phase_and_still_writes_the_summary(tmp_path, shared_data):
    """As when the call that runs it reaches its limit: SIGTERM to the campaign."""
    out = tmp_path / "c"
    env = dict(os.environ, TRITONGPT_DATA=str(shared_data),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen([sys.executable, "-m", "tritongpt.bench.campaign", "--part", "1", "--smoke", "--out", str(out),
                             "--only", "kernels"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    log = out / "logs" / "part1-kernels.log"
    for _ in range(300):  # until the kernel phase is under way
        if log.is_file() and "kernels" in log.read_text():
            break
        time.sleep(0.1)
    time.sleep(1)
    proc.terminate()
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stdout
    phases = {p["name"]: p for p in _json(out / "manifest-part1.json")["phases"]}
    assert phases["kernels"]["status"] == "stopped" and "interrupted" in phases["kernels"]["note"]
    assert "step-torch" not in phases  # the phases after it do not run
    assert "| part 1 | kernels | stopped |" in (out / "SUMMARY.md").read_text()
    assert "the campaign was interrupted" in log.read_text()


def test_run_boxed_kills_a_child_that_ignores_sigint(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    t0 = time.time()
    status, rc = campaign.run_boxed([sys.executable, "-c", code], tmp_path / "log", box=2, grace=1, env=dict(os.environ))
    assert status == "stopped" and rc == -9 and time.time() - t0 < 10
    log = (tmp_path / "log").read_text()
    assert "up" in log and "outlived its box of 2 s" in log
    assert campaign.run_boxed([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log2", 10, 1, dict(os.environ)) \
        == ("failed", 3)


@pytest.mark.parametrize("argv, message", [
    (["--part", "1", "--out", "x", "--box", "nope=3"], "part 1 has the phases env, ceilings"),
    (["--part", "2", "--out", "x", "--box", "profile=soon"], "give PHASE=SECONDS"),
    (["--part", "2", "--out", "x", "--only", "kernels"], "part 2 has no phase kernels"),
    (["--out", "x"], "give --part 1 or 2"),
    (["--part", "1", "--out", "x", "--step-batches", "32,16"], "give rising positive integers"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        campaign.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_env_reads_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB, 1980 MHz, 2619 MHz, 700.00 W, P0, 31'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpu = campaign_tasks.nvidia_smi()["gpus"][0]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["driver_version"] == "580.159.04"
    assert gpu["memory.total"] == "81559 MiB" and gpu["temperature.gpu"] == "31"
    assert campaign_files.device_slug(gpu["name"]) == "h100-80gb-hbm3"
    assert campaign_files.device_slug("CPU (x86_64)") == "cpu"


# ----------------------------------------------------------------------------- the verdicts, by hand


def _path(name, tps, ms, batch, mem, tries):
    return {"path": name, "status": "ok", "batch": batch, "tokens_per_sec": tps, "ms_per_step": ms, "mfu": tps * 854e6 / 989e12,
            "peak_memory_gib": mem, "speedup_vs_torch_compile": None, "reason": None,
            "tries": [{"batch": b, "status": "ok", "peak_memory_gib": m} for b, m in tries]}


def _gpu_folder(folder, fused_ln_fast=True):
    """A campaign folder as a GPU run might leave it: triton+compile 650k tok/s against torch+compile's 500k."""
    head = {"gpu_figures": True, "device_name": "NVIDIA H100 80GB HBM3", "created_utc": "2026-01-01T00:00:00+00:00"}
    step = {"kind": "train_step", **head, "flops": {"peak_note": None}, "paths": [
        _path("torch+compile", 500_000, 65.5, 16, 20.0, [(16, 20.0), (32, 38.0)]),
        _path("triton", 550_000, 59.6, 32, 9.0, [(16, 5.0), (32, 9.0)]),
        _path("triton+compile", 650_000, 50.4, 32, 11.0, [(16, 6.0), (32, 11.0)]),
    ]}
    cases = []

    def case(op, mode, prov, ms, shape, size="gpt2", rate=None, pct=None, mem=None, unit="TFLOP/s"):
        cases.append({"op": op, "mode": mode, "provider": prov, "ms": ms, "shape": shape, "size": size, "rate": rate,
                      "percent_of_roofline": pct, "status": "ok", "unit": unit, "peak_memory_mib": mem})

    attn = dict(B=16, H=12, T=1024, D=64)
    case("attention", "fwd", "kernels", 0.5, attn, "B16-H12", rate=400)
    case("attention", "fwd", "torch", 0.6, attn, "B16-H12")
    case("attention", "fwd+bwd", "kernels", 2.0, attn, "B16-H12", rate=240)  # under 250: not met
    case("attention", "fwd+bwd", "torch", 1.9, attn, "B16-H12")  # and slower than SDPA
    ln = dict(N=16384, C=768)
    for op, ms in (("layer_norm", 0.030), ("add_layer_norm", 0.030 if fused_ln_fast else 0.06)):
        case(op, "fwd+bwd", "kernels", ms, ln, "N16k-C768", rate=2700, pct=90, unit="GB/s")
        case(op, "fwd+bwd", "torch", 0.05, ln, "N16k-C768")
        case(op, "fwd+bwd", "torch_compile", 0.04, ln, "N16k-C768")
    case("cross_entropy", "fwd+bwd", "kernels", 1.0, dict(N=8192, V=50304), rate=2000, pct=70, unit="GB/s")
    lce = dict(N=8192, C=768, V=50304)
    case("linear_cross_entropy", "fwd+bwd", "kernels", 3.0, lce, mem=300)
    case("linear_cross_entropy", "fwd+bwd", "torch_compile", 3.1, lce, mem=1600)
    lg = dict(N=8192, K=768, M=3072)
    case("linear_gelu", "fwd", "kernels", 0.10, lg)
    case("linear_gelu", "fwd", "torch", 0.12, lg)  # 1.2x: met
    case("linear_gelu", "fwd", "matmul", 0.08, lg)  # 1.25x its time: not met
    kern = {"kind": "kernels", **head, "roofline": {"copy_gbps": 3000, "matmul_tflops": 790}, "cases": cases}
    evals = [{"step": s, "torch": {"train_loss": 5.0, "val_loss": 5.1}, "triton": {"train_loss": 5.05, "val_loss": 5.12},
              "relative_difference": {"train_loss": 0.01, "val_loss": 0.004}, "agree": True} for s in (0, 50)]
    conv = {"kind": "convergence", "tolerance": 0.02, "evaluations": evals, "max_relative_difference": 0.01,
            "agree": True, "runs": {"torch": {"device_name": head["device_name"]}, "triton": {"device_name": head["device_name"]}}}
    for name, obj in (("step.json", step), ("kernels.json", kern), ("converge.json", conv)):
        (folder / name).write_text(json.dumps(obj))


def _verdicts(text):
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[3] in ("met", "not met") or cells[3:4] and cells[3].startswith("not measured"):
            out[cells[0]] = (cells[2], cells[3])
    return out


def test_goal_verdicts_on_gpu_figures(tmp_path):
    _gpu_folder(tmp_path, fused_ln_fast=False)
    v = _verdicts(campaign_goals.summarize(tmp_path))
    assert v["training step tokens/sec, fastest triton path at its best batch"] == ("650,000 (triton+compile, batch 32)", "met")
    assert v["MFU of that step (6N + 12 L C T FLOPs per token over the dense bf16 peak)"][1] == "met"
    assert v["speedup over torch+compile, each at its best batch"][1] == "met"  # 1.30x
    # at batch 32, which both measured: 11 vs 38 GiB
    assert v["peak memory vs torch+compile at the same micro-batch"] == ("0.29x (11.00 vs 38.00 GiB at batch 32)", "met")
    assert v["attention fwd (causal, D=64, T=1024, B*H=192)"] == ("400 TFLOP/s", "met")
    assert v["attention fwd vs F.scaled_dot_product_attention"][1] == "met"
    assert v["attention fwd+bwd (causal, D=64, T=1024, B*H=192)"][1] == "not met"
    assert v["attention fwd+bwd vs F.scaled_dot_product_attention"][1] == "not met"
    assert v["layer_norm fwd+bwd at (16384, 768), share of copy bandwidth"][1] == "met"
    assert v["layer_norm fwd+bwd vs torch.compile"][1] == "met"
    assert v["add_layer_norm fwd+bwd vs torch.compile"][1] == "not met"
    assert v["cross_entropy fwd+bwd (8192 x 50304), share of copy bandwidth"] == ("70% (2,000 GB/s)", "not met")
    assert v["linear_cross_entropy fwd+bwd vs compiled F.linear + F.cross_entropy"][1] == "met"
    assert v["linear_cross_entropy peak memory vs compiled F.linear + F.cross_entropy"][1] == "met"  # 300/1600
    assert v["linear_gelu fwd vs matmul + GELU unfused (eager)"][1] == "met"
    assert v["linear_gelu fwd vs cuBLAS's matmul alone"][1] == "not met"
    assert v["loss curves, torch vs triton backend, same seed"][1] == "met"


def test_missing_files_are_not_measured(tmp_path):
    _gpu_folder(tmp_path)
    (tmp_path / "kernels.json").unlink()
    (tmp_path / "converge.json").unlink()
    v = _verdicts(campaign_goals.summarize(tmp_path))
    assert v["training step tokens/sec, fastest triton path at its best batch"][1] == "met"
    assert v["kernel goals"][1] == "not measured: no kernel benchmark result"
    assert v["loss curves, torch vs triton backend, same seed"][1].startswith("not measured: no convergence comparison")


def test_merge_step_takes_each_paths_best_try(tmp_path):
    def try_(path, batch, tps, status="ok"):
        return {**campaign_tasks.step.empty_path(path), "batch": batch, "status": status, "tokens_per_sec": tps,
                "ms_per_step": batch * 1024 / tps * 1e3 if tps else None, "try_seconds": 1.0,
                "reason": None if status == "ok" else "out of memory"}

    head = {"kind": "train_step", "created_utc": "2026-01-01T00:00:00+00:00", "settings": {"model": "gpt2"},
            "flops": {}, "gpu_figures": True}
    for path, tries in (("torch+compile", [try_("torch+compile", 16, 100.0), try_("torch+compile", 32, 120.0)]),
                        ("triton", [try_("triton", 16, 150.0), try_("triton", 32, None, "skipped")])):
        (tmp_path / f"step-{campaign_tasks.slug(path)}.json").write_text(
            json.dumps({**head, "path": path, "candidates": [16, 32, 64], "tries": tries, "stopped": "x"}))
    merged = _json(campaign_tasks.merge_step(tmp_path))
    paths = {p["path"]: p for p in merged["paths"]}
    assert paths["torch+compile"]["batch"] == 32 and paths["triton"]["batch"] == 16
    assert paths["triton"]["speedup_vs_torch_compile"] == pytest.approx(150 / 120)
    assert paths["triton"]["batch_search"] == [[16, True], [32, False]]
    assert paths["torch"]["status"] == "skipped" and "no try finished" in paths["torch"]["reason"]
    assert merged["settings"]["batch_candidates"] == [16, 32, 64]
