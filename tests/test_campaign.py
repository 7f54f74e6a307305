"""tools/campaign.py on a CPU: the smoke campaign end to end in the campaign's order, a phase
stopped by its box and rerun by --rest, the budget the boxes fit, and the warm Triton cache: its
keys are the ones Triton's runtime computes for the same launches (tools/warm_cache.py builds it,
tests/warm_cache_probe.py launches through the runtime)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import campaign  # noqa: E402

ORDER = ["env", "headline", "parity", "eager", "kernels", "converge-torch", "converge-triton", "profile"]


def _run(argv, shared_data, timeout=300, **extra):
    env = dict(os.environ, TRITONGPT_DATA=str(shared_data),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")]), **extra)
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _phases(out, run=-1):
    return {p["name"]: p for p in json.loads((out / "manifest.json").read_text())["runs"][run]["phases"]}


@pytest.fixture(scope="module")
def pack(tmp_path_factory, shared_data):
    pack = tmp_path_factory.mktemp("pack")
    run = _run([ROOT / "tools/campaign.py", "--pack", "data", "--smoke", "--pack-dir", pack], shared_data)
    assert run.returncode == 0, run.stdout + run.stderr
    return pack


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_data, pack):
    out = tmp_path_factory.mktemp("campaign") / "c"
    t0 = time.time()
    run = _run([ROOT / "tools/campaign.py", "--smoke", "--out", out, "--pack-dir", pack], shared_data)
    return out, run, time.time() - t0


def test_the_phases_are_in_the_order_of_their_value():
    assert [name for name, *_ in campaign.PHASES] == ORDER


def test_the_boxes_fit_the_commands():
    """The GPU boxes and the summary's reserve fit one command of 9.5 minutes; --rest fits 3."""
    assert sum(box for _, box, _, _ in campaign.PHASES) + campaign.RESERVE_S <= campaign.BUDGET_S["first"] <= 570
    assert campaign.BUDGET_S["rest"] <= 180


def test_every_phase_runs_in_order_and_is_recorded(smoke):
    out, run, seconds = smoke
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    phases = _phases(out)
    assert list(phases) == ORDER
    for p in phases.values():
        assert p["status"] == "ok", (p, (out / p["log"]).read_text()[-3000:])
        assert p["seconds"] <= p["box_s"] + 2 and p["cache"] == {"hits": 0, "misses": 0, "missed": {}}, p
    assert seconds < 90, f"the smoke campaign took {seconds:.0f} s"


def test_each_phase_leaves_its_files(smoke):
    out = smoke[0]
    env = json.loads((out / "env.json").read_text())
    assert env["importable"] == {"nvtx": False, "datasets": False}  # hidden, as on the GPU machines
    assert env["ceilings"]["copy_gbps"] > 0 and env["git_commit"] and env["warm_cache"]["usable"] is False
    for name, paths in (("headline", ["triton+compile", "torch+compile"]), ("eager", ["triton", "torch"])):
        step = json.loads((out / f"step-{name}.json").read_text())
        assert [p["path"] for p in step["paths"]] == paths and all(p["status"] == "ok" for p in step["paths"])
    assert "testsuite" in (out / "parity.xml").read_text()
    assert json.loads((out / "kernels.json").read_text())["cases"]
    conv = json.loads((out / "converge.json").read_text())
    assert [e["step"] for e in conv["evaluations"]] == [0, 5, 10] and conv["agree"]  # torch twice on a CPU
    assert json.loads((out / "profile" / "summary.json").read_text())["kind"] == "torch_profile"
    text = (out / "SUMMARY.md").read_text()
    assert all(f"| first | {name} | ok |" in text for name in ORDER) and "Convergence (converge.json)" in text


def test_a_stopped_phase_is_rerun_by_rest_alone(tmp_path, shared_data, pack):
    out = tmp_path / "c"
    first = _run([ROOT / "tools/campaign.py", "--smoke", "--out", out, "--pack-dir", pack, "--only", "env,eager",
                  "--box", "eager=4"], shared_data, timeout=120)
    assert first.returncode == 1  # a phase was not ok
    phases = _phases(out)
    assert phases["env"]["status"] == "ok" and phases["eager"]["status"] == "stopped"
    assert "outlived its box of 4 s" in phases["eager"]["note"] and phases["eager"]["seconds"] < 9
    rest = _run([ROOT / "tools/campaign.py", "--smoke", "--out", out, "--pack-dir", pack, "--rest", "--only", "env,eager"],
                shared_data, timeout=120)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert list(_phases(out)) == ["eager"] and _phases(out)["eager"]["command"] == "rest"
    text = (out / "SUMMARY.md").read_text()
    assert "| first | eager | stopped |" in text and "| rest | eager | ok |" in text


def test_run_boxed_kills_a_child_that_ignores_sigint(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    t0 = time.time()
    status, rc = campaign.run_boxed([sys.executable, "-c", code], tmp_path / "log", box=2, grace=1, env=dict(os.environ))
    assert status == "stopped" and rc == -9 and time.time() - t0 < 10
    assert "outlived its box of 2 s" in (tmp_path / "log").read_text()
    assert campaign.run_boxed([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "l2", 10, 1, dict(os.environ)) \
        == ("failed", 3)


def test_cache_counts_reads_the_log(tmp_path):
    log = tmp_path / "log"
    log.write_text("hit AAA _attn_fwd_kernel\nmiss BBB _attn_fwd_kernel\nmiss CCC _layer_norm_fwd_kernel\nmiss DDD _attn_fwd_kernel\n")
    assert campaign.cache_counts(log) == {"hits": 1, "misses": 3,
                                          "missed": {"_attn_fwd_kernel": 2, "_layer_norm_fwd_kernel": 1}}
    assert campaign.cache_counts(tmp_path / "none") == {"hits": 0, "misses": 0, "missed": {}}


@pytest.mark.parametrize("argv, message", [
    (["--out", "x", "--box", "nope=3"], "the phases are env, headline"),
    (["--out", "x", "--box", "profile=soon"], "give PHASE=SECONDS"),
    (["--out", "x", "--only", "tests"], "no phase tests"),
    ([], "give --out DIR"),
    (["--out", "nowhere", "--rest"], "holds no manifest.json"),
    (["--pack", "weights"], "give data, cache or data,cache"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        campaign.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_warm_cache_keys_are_the_runtime_keys(tmp_path, shared_data):
    """Build a few of the campaign's variants as tools/warm_cache.py does, move the folder (as the
    pack travels), relocate it as the campaign does, then launch the same kernels through Triton's
    runtime with real tensors and the autotuner's own calls: every lookup is a hit on an entry the
    build wrote, and nothing is compiled. Launches at sizes the build did not specialize for miss."""
    built, moved = tmp_path / "built", tmp_path / "moved"
    kernels = "_attn_fwd,_attn_bwd_delta"
    run = _run([ROOT / "tools/warm_cache.py", built, "--only", kernels, "--jobs", "2"], shared_data, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    wrote = {v["folder"] for v in json.loads((built / "warm-cache.json").read_text())["variants"]}
    shutil.copytree(built, moved)
    shutil.rmtree(built)
    campaign.relocate(moved)
    before = set(os.listdir(moved))
    for odd, only in ((False, kernels), (True, "_attn_bwd_delta")):
        log = tmp_path / f"lookups-{odd}"
        run = _run([ROOT / "tests/warm_cache_probe.py", moved, only] + ["odd"] * odd, shared_data,
                   TRITON_CACHE_MANAGER="cache_log:LoggingCacheManager", TRITONGPT_CACHE_LOG=str(log))
        assert run.returncode == 0, run.stdout + run.stderr
        lookups = [line.split() for line in log.read_text().splitlines()]
        if not odd:
            assert {folder for _, folder, _ in lookups} == wrote and len(lookups) == len(wrote)
            assert all(kind == "hit" for kind, _, _ in lookups), lookups
            assert set(os.listdir(moved)) == before  # nothing compiled
        else:
            assert [kind for kind, _, _ in lookups] == ["miss"] and lookups[0][1] not in wrote
