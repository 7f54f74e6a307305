"""The trainer on a CPU: exact resume, N processes = 1 process, restarts under torchrun, corrupt
checkpoints, non-finite losses, bad configs and data, and a short Shakespeare run that learns."""

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tritongpt import prep
from tritongpt.kernels import lm_head
from tritongpt.kernels import losses as loss_kernels
import tritongpt.train.__main__ as train_command
import tritongpt.train.loop as train_loop
import tritongpt.train.sample as sample_command
from conftest import ROOT, child_processes, make_char_dataset, tiny
from tritongpt.gpt import GPT, pad_vocab
from tritongpt.train import checkpoint
from tritongpt.train.cli import run_cli
from tritongpt.train.config import ConfigError, load_config
from tritongpt.train.data import Batches
from tritongpt.train.loop import Trainer, TrainingStopped, train
from tritongpt.train.sample import SampleConfig, sample

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT = 120  # seconds for any subprocess: a hung process group fails the test instead of CI
CRASHING_TRAIN = ROOT / "tests" / "crashing_train.py"  # python -m tritongpt.train, made to die before a given step


def losses(out_dir):
    """{step: loss} of the training log lines in out_dir/metrics.jsonl (the last record per step)."""
    out = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                out[r["step"]] = r["loss"]
    return out


def weights(path):
    return checkpoint.read(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def torchrun(args, nproc=1, env=None, extra=(), script=None):
    """torchrun of `python -m tritongpt.train args`, or of `python script args`."""
    program = ["-m", "tritongpt.train"] if script is None else [str(script)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra,
           *program, *args]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))  # as this process (one_thread)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in a session of its own: kill the whole tree, not just its group
        for pid in _process_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT} s:\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _process_tree(root):
    """root and every process descended from it (from /proc; just root where there is none)."""
    children = child_processes()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def test_metrics_file_starts_with_where_and_how_it_ran(straight):
    with open(os.path.join(straight, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    assert first["event"] == "start" and first["step"] == 0
    for key in ("device_name", "torch", "triton", "git_commit", "created_utc", "tokens_per_step"):
        assert key in first, key
    assert first["config"]["max_iters"] == 20 and first["model"]["n_layer"] == 1


def test_padded_vocabulary_keeps_its_real_size(straight, small_ds):
    """The trainer pads the dataset's vocabulary for matmul speed and gives the model the real
    size, so the padding takes no probability; checkpoints record both."""
    V = prep.load(small_ds).vocab_size
    args = checkpoint.read(f"{straight}/ckpt_00000020.pt")["model_args"]
    assert args["vocab_size"] == pad_vocab(V) > V and args["real_vocab_size"] == V


# ----------------------------------------------------------------------------- resume


def test_resume_is_exact(straight, small_ds, tmp_path):
    out = str(tmp_path)
    train(load_config(tiny(small_ds, out, max_iters=10)))
    assert os.path.basename(checkpoint.checkpoints(out)[0]) == "ckpt_00000010.pt"
    train(load_config(tiny(small_ds, out, init_from="resume")))
    a, b = losses(straight), losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert a == b  # bit for bit: floats round-trip exactly through JSON
    assert a[20] < a[1]
    assert_same_weights(weights(f"{straight}/ckpt_00000020.pt"), weights(f"{out}/ckpt_00000020.pt"))


@pytest.mark.parametrize("override", ["n_layer=2", "n_embd=64", "bias=true"])
def test_resume_refuses_a_shape_the_checkpoint_does_not_have(override, straight, small_ds, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(straight, out)
    key, value = override.split("=")
    args = [a for a in tiny(small_ds, out, init_from="resume") if not a.startswith(f"--{key}=")] + [f"--{override}"]
    with pytest.raises(SystemExit) as e:
        run_cli(train_command.main, args, train_command.__doc__)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: config key '{key}' is " in err and f"the checkpoint in {out} has" in err
    assert sorted(os.listdir(out)) == sorted(os.listdir(straight))  # nothing written


def test_corrupt_latest_falls_back_to_previous(straight, small_ds, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(straight, out)
    latest = f"{out}/ckpt_00000020.pt"
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    train(load_config(tiny(small_ds, out, init_from="resume")))
    printed = capsys.readouterr().out
    assert "ckpt_00000020.pt is unreadable" in printed
    assert "resuming from" in printed and "ckpt_00000010.pt (step 10)" in printed
    # the run went on from step 10 and wrote step 20 again, the same as the first time
    assert_same_weights(weights(f"{straight}/ckpt_00000020.pt"), weights(latest))


def test_checkpoints_keep_last_k_and_best(tmp_path):
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5)]:
        state = dict(model={"w": torch.full((2,), float(step))}, optimizer={}, step=step, config={}, model_args={})
        checkpoint.save(state, str(tmp_path), keep_last=2, is_best=val == 1.0)
    names = sorted(os.listdir(tmp_path))
    assert names == ["best.pt", "ckpt_00000003.pt", "ckpt_00000004.pt"]
    assert checkpoint.read(f"{tmp_path}/best.pt")["step"] == 2
    # every ckpt file unreadable: best.pt is the last resort; nothing at all is an error
    for path in checkpoint.checkpoints(str(tmp_path)):
        open(path, "wb").close()
    state, path = checkpoint.load_latest(str(tmp_path), log=lambda m: None)
    assert state["step"] == 2 and path.endswith("best.pt")
    open(path, "wb").close()
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint"):
        checkpoint.load_latest(str(tmp_path), log=lambda m: None)


def test_torchrun_restart_resumes_and_matches(straight, small_ds, tmp_path):
    """Killed before step 15 (after the checkpoint at 10), restarted by torchrun, resumed by itself."""
    out = str(tmp_path)
    r = torchrun(["15", *tiny(small_ds, out)], extra=["--max-restarts=1"], script=CRASHING_TRAIN)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "dying before step 15" in r.stdout
    assert "ckpt_00000010.pt (step 10) after a restart" in r.stdout
    assert_same_weights(weights(f"{straight}/ckpt_00000020.pt"), weights(f"{out}/ckpt_00000020.pt"))


RESTART_TRIALS = 10  # a restart that failed one time in three would pass all ten with probability 1.7%


@pytest.fixture(scope="module")
def straight_two(small_ds, tmp_path_factory):
    """20 steps on 2 processes that never stopped."""
    out = str(tmp_path_factory.mktemp("straight_two"))
    r = torchrun(tiny(small_ds, out), nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out


@pytest.mark.parametrize("trial", range(RESTART_TRIALS))
def test_torchrun_restart_two_processes(trial, straight_two, small_ds, tmp_path):
    """One of 2 processes killed with SIGKILL before a random step; torchrun restarts both, which
    join again (under keys of the new attempt: those the first attempt left in torchrun's store
    must not be read) and resume, ending bit for bit where the run that never stopped ended."""
    rng = random.Random(trial)
    step, rank = rng.randint(1, 19), rng.randint(0, 1)
    out = str(tmp_path)
    r = torchrun([f"{step}:{rank}", *tiny(small_ds, out)], nproc=2, extra=["--max-restarts=1"], script=CRASHING_TRAIN)
    assert r.returncode == 0, f"killed rank {rank} before step {step}\n" + r.stdout[-2000:] + r.stderr[-3000:]
    assert f"dying before step {step} in rank {rank}" in r.stdout
    if step >= 10:
        assert "ckpt_00000010.pt (step 10) after a restart" in r.stdout
    # no gloo traceback: the survivor names the lost rank in one line (unless torchrun stopped it first)
    assert "Connection closed by peer" not in r.stderr, r.stderr[-3000:]
    assert all(f"rank {rank} (process " in line for line in r.stderr.splitlines() if line.startswith("error: "))
    a, b = losses(straight_two), losses(out)
    assert sorted(b) == list(range(1, 21)) and a == b
    assert_same_weights(weights(f"{straight_two}/ckpt_00000020.pt"), weights(f"{out}/ckpt_00000020.pt"))


def test_a_killed_process_is_named_in_one_line_by_the_survivor(small_ds, tmp_path):
    """Rank 1 killed with SIGKILL before step 15: rank 0's collective finds its connection closed and
    says so in one line naming rank 1, not gloo's traceback (torchrun here waits 2 s before it
    stops the survivor itself, so that the line always comes; with no restart left, torchrun then
    ends with its own summary of the failure)."""
    r = torchrun(["15:1", *tiny(small_ds, str(tmp_path))], nproc=2, extra=["--monitor-interval=2"], script=CRASHING_TRAIN)
    assert r.returncode != 0 and "dying before step 15 in rank 1" in r.stdout
    assert "Connection closed by peer" not in r.stderr and "[rank0]: Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: process 0 of 2: rank 1 (process "), r.stderr[-3000:]
    assert errors[0].endswith("of this run died (killed, or out of memory: see its log), so this one stops too; "
                              "under torchrun --max-restarts the group restarts from the latest checkpoint")


def test_torchrun_restart_that_cannot_rejoin_fails_in_bounded_time(small_ds, tmp_path):
    """After the restart one process never joins: the other gives up after join_timeout with one line
    naming it, and torchrun ends with an error instead of hanging."""
    start = time.monotonic()
    r = torchrun(["12:1:stuck", *tiny(small_ds, str(tmp_path), join_timeout=3)], nproc=2,
                 extra=["--max-restarts=1"], script=CRASHING_TRAIN)
    assert r.returncode != 0
    assert time.monotonic() - start < 60
    assert "rank 1 hangs at start-up" in r.stdout
    assert "error: process 0 of 2, restart attempt 1: rank(s) 1 did not join within join_timeout=3 s" in r.stderr


# ----------------------------------------------------------------------------- the dataset of a run


def test_a_run_refuses_its_dataset_prepared_again_from_other_text(shakespeare, tmp_path, capsys):
    data = tmp_path / "data" / "d"
    make_char_dataset(data, shakespeare[:30_000])
    out = str(tmp_path / "out")
    train(load_config(tiny(str(data), out, max_iters=4, eval_interval=4)))
    # the same text again: the same dataset
    prep.prepare("text", out_dir=str(data.parent), input=str(data.parent / "d.txt"), out_name="d", tokenizer="char",
                 block_size=16, force=True, quiet=True)
    train(load_config(tiny(str(data), out, max_iters=6, eval_interval=6, init_from="resume")))
    (data.parent / "d.txt").write_text(shakespeare[30_000:60_000].upper())
    prep.prepare("text", out_dir=str(data.parent), input=str(data.parent / "d.txt"), out_name="d", tokenizer="char",
                 block_size=16, force=True, quiet=True)
    for command, args in [(train_command, tiny(str(data), out, max_iters=8, init_from="resume")),
                          (sample_command, [f"--out_dir={out}", "--max_new_tokens=5", "--num_samples=1"])]:
        with pytest.raises(SystemExit) as e:
            run_cli(command.main, args, command.__doc__)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is not the dataset that the run in {out} was trained on" in err, err
    assert [os.path.basename(p) for p in checkpoint.checkpoints(out)] == ["ckpt_00000006.pt", "ckpt_00000004.pt"]


def test_sampling_from_another_directory_finds_the_runs_dataset(shakespeare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_char_dataset("data/rel", shakespeare[:30_000])
    train(load_config(tiny("data/rel", "out", max_iters=2, eval_interval=2)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = sample(SampleConfig(out_dir=str(tmp_path / "out"), num_samples=1, max_new_tokens=8, start="A"))[0]
    assert text.startswith("A") and len(text) == 9
    os.rename(tmp_path / "data", tmp_path / "moved")
    with pytest.raises(prep.DatasetError, match=r"trained on 'data/rel' \(at .*data/rel\), which is not there .*"
                                                 r"--dataset=PATH"):
        sample(SampleConfig(out_dir=str(tmp_path / "out"), num_samples=1, max_new_tokens=8))
    text = sample(SampleConfig(out_dir=str(tmp_path / "out"), dataset=str(tmp_path / "moved" / "rel"), num_samples=1,
                               max_new_tokens=8, start="A"))[0]
    assert len(text) == 9


# ----------------------------------------------------------------------------- processes


def test_two_processes_equal_one(small_ds, tmp_path):
    """The same global batch (2 micro-steps) on 1 process or split over 2 with gloo."""
    common = dict(dropout=0.0, max_iters=6, eval_interval=6)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train(load_config(tiny(small_ds, one, **common)))
    r = torchrun(tiny(small_ds, two, **common), nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    wa, wb = weights(f"{one}/ckpt_00000006.pt"), weights(f"{two}/ckpt_00000006.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_init_from_pretrained_directory(small_ds, tmp_path):
    """Fine-tuning: the shape comes from the pretrained weights, whatever the config says."""
    from tritongpt.gpt import GPT, GPTConfig

    pretrained = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32, bias=True))
    pretrained.save_pretrained(str(tmp_path / "hf"))
    out = str(tmp_path / "out")
    train(load_config(tiny(small_ds, out, init_from=str(tmp_path / "hf"), max_iters=2, eval_interval=2)))
    state = checkpoint.read(f"{out}/ckpt_00000002.pt")
    assert state["model_args"]["n_layer"] == 2 and state["config"]["n_layer"] == 2
    assert state["model_args"]["block_size"] == 32 and state["model_args"]["vocab_size"] == 64
    before = pretrained.state_dict()["transformer.h.1.mlp.c_fc.weight"]
    after = state["model"]["transformer.h.1.mlp.c_fc.weight"]
    assert 0 < (after - before).abs().max() < 0.05  # trained a little, from the pretrained weights


def test_bfloat16_autocast_trains_and_samples(small_ds, tmp_path):
    """The GPU's mixed-precision path (autocast, fp32 master weights), here on the CPU."""
    out = str(tmp_path)
    train(load_config(tiny(small_ds, out, dtype="bfloat16", max_iters=4, eval_interval=4)))
    steps = losses(out)
    assert sorted(steps) == [1, 2, 3, 4] and all(np.isfinite(v) for v in steps.values())
    state = checkpoint.read(f"{out}/ckpt_00000004.pt")
    assert state["config"]["dtype"] == "bfloat16"
    assert all(v.dtype == torch.float32 for v in state["model"].values())
    text = sample(SampleConfig(out_dir=out, num_samples=1, max_new_tokens=10, start="A", dtype="bfloat16"))[0]
    assert text.startswith("A") and len(text) == 11


# ----------------------------------------------------------------------------- non-finite losses


@pytest.fixture
def nan_steps(monkeypatch):
    """A set of steps whose training loss is made NaN right after the forward (so the backward and
    the update see it, as in a diverging run): add steps to it before training."""
    steps, current = set(), []
    real_step, real_forward = Trainer.train_step, GPT.forward

    def train_step(self, step):
        current.append(step)
        try:
            return real_step(self, step)
        finally:
            current.pop()

    def forward(self, idx, targets=None):
        out = real_forward(self, idx, targets)
        return out * float("nan") if targets is not None and current and current[-1] in steps else out

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(GPT, "forward", forward)
    return steps


def test_nan_loss_is_skipped_and_counted(small_ds, tmp_path, nan_steps):
    nan_steps.add(4)
    out = str(tmp_path)
    train(load_config(tiny(small_ds, out, max_iters=8, eval_interval=8)))
    records = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    steps = {r["step"]: r for r in records if "loss" in r}
    assert [steps[s]["skipped"] for s in range(1, 9)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert np.isnan(steps[5]["loss"]) and np.isnan(steps[5]["grad_norm"])
    assert all(np.isfinite(steps[s]["loss"]) for s in (1, 2, 3, 4, 6, 7, 8))
    state = checkpoint.read(f"{out}/ckpt_00000008.pt")
    assert state["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_losses_in_a_row_stop_the_run(small_ds, tmp_path, nan_steps):
    nan_steps.update({5, 6, 7})
    out = str(tmp_path)
    with pytest.raises(TrainingStopped, match=r"3 non-finite losses in a row .*ckpt_00000004\.pt"):
        train(load_config(tiny(small_ds, out, max_iters=12, eval_interval=4, max_bad_steps=3)))
    assert [os.path.basename(p) for p in checkpoint.checkpoints(out)] == ["ckpt_00000004.pt"]
    state = checkpoint.read(f"{out}/ckpt_00000004.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_out_of_range_target_stops_the_run_at_the_log_step(small_ds, tmp_path, monkeypatch):
    """As on a GPU, where the kernels only record a target outside the vocabulary (no host sync
    in the step): the bad step it causes, read one step late, names it. Made so here on a CPU: the triton backend
    (which the trainer keeps for GPUs) runs under the interpreter, and the ops do not read their
    record at once."""
    for module in (loss_kernels, lm_head):
        monkeypatch.setattr(module, "raise_at_once", lambda device: False)
    real_resolve = train_loop.resolve_system

    def resolve_system(cfg):
        cfg.backend = "torch"
        real_resolve(cfg)
        cfg.backend = "triton"

    monkeypatch.setattr(train_loop, "resolve_system", resolve_system)
    # and as on a GPU, the bad-step count is read one step late (train.health)
    monkeypatch.setattr(train_loop, "BadSteps", functools.partial(train_loop.BadSteps, late=True))
    real_get, seen = Batches.get, []

    def get(self, split, step, micro):
        x, y = real_get(self, split, step, micro)
        if split == "train" and step == 0:
            y[0, 5] = 1000
        seen.append((split, step))
        return x, y

    monkeypatch.setattr(Batches, "get", get)
    args = tiny(small_ds, str(tmp_path), backend="triton", max_iters=4, eval_iters=1, log_interval=2, dropout=0.0,
                batch_size=2, block_size=8, gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match=r"target\(s\) outside the vocabulary of \d+ classes, such as class id 1000 "):
        train(load_config(args))
    assert seen[-1] == ("train", 1)  # the next step ran (nothing waited for the device), then the stop named it


# ----------------------------------------------------------------------------- bad configs and data


def _bad_datasets(root, good):
    """A few broken copies of the dataset `good`; {name: path}."""
    out = {}
    truncated = os.path.join(root, "truncated")
    shutil.copytree(good, truncated)
    with open(os.path.join(truncated, "train.bin"), "ab") as f:
        f.write(b"\x01")  # an odd number of bytes for uint16
    out["truncated"] = truncated
    wrong_vocab = os.path.join(root, "wrong_vocab")
    shutil.copytree(good, wrong_vocab)
    meta = json.load(open(os.path.join(good, "meta.json")))
    with open(os.path.join(wrong_vocab, "train.bin"), "ab") as f:
        f.write(np.array([1000], dtype=np.uint16).tobytes())  # an id above the vocabulary of meta.json
    meta["train_tokens"] += 1
    json.dump(meta, open(os.path.join(wrong_vocab, "meta.json"), "w"))
    out["wrong_vocab"] = wrong_vocab
    out["short"] = make_char_dataset(os.path.join(root, "short"), "to be or not to be, that is the question " * 2,
                                     block_size=4, val_fraction=0.5)
    return out


BAD = [
    # (argument overrides, words the one-line message must hold)
    (dict(n_layr=2), "unknown config key 'n_layr'"),
    (dict(batch_size="big"), "'batch_size' must be int"),
    (dict(bias="maybe"), "'bias' must be true or false"),
    (dict(n_embd=30, n_head=4), "'n_embd' (30) must be divisible by n_head (4)"),
    (dict(dtype="float8"), "'dtype' must be one of"),
    (dict(compile="maybe"), "'compile' must be auto, true or false"),
    (dict(compile_mode="fastest"), "'compile_mode' must be one of default, reduce-overhead"),
    (dict(init_from="gpt5"), "'init_from' must be scratch, resume"),
    (dict(init_from="resume"), "holds no checkpoint"),
    (dict(device="cuda"), "no CUDA device") if not torch.cuda.is_available() else (dict(dtype="float99"), "'dtype'"),
    (dict(dataset="no_such_dataset"), "is not a prepared dataset"),
    (dict(dataset="truncated"), "truncated"),
    (dict(dataset="wrong_vocab"), "outside the model's vocabulary"),
    (dict(dataset="short", block_size=200), "'block_size' (200) is too long"),
    (dict(fsdp="true", dtype="float16"), "'fsdp' is on with dtype float16"),
    (dict(fsdp_accumulate="never"), "'fsdp_accumulate' must be one of auto, unsharded, sharded"),
    (dict(fsdp="true", compile_mode="reduce-overhead"), "'compile_mode' is reduce-overhead, whose CUDA graphs"),
    (dict(optimizer="sgd"), "'optimizer' must be one of adamw, muon"),
    (dict(optimizer="muon", learning_rate=0), "'learning_rate' must be positive with optimizer=muon"),
    (dict(muon_momentum=1.0), "'muon_momentum' must be in [0, 1)"),
    (dict(muon_lr=-0.02), "'muon_lr' must not be negative"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[m for _, m in BAD])
def test_bad_config_or_data_is_one_line(overrides, message, small_ds, tmp_path, capsys):
    bad = _bad_datasets(str(tmp_path), small_ds)
    if overrides.get("dataset") in bad:
        overrides = dict(overrides, dataset=bad[overrides["dataset"]])
    args = tiny(small_ds, str(tmp_path / "out"))
    args = [a for a in args if a.split("=")[0][2:] not in overrides] + [f"--{k}={v}" for k, v in overrides.items()]
    with pytest.raises(SystemExit) as e:
        run_cli(train_command.main, args, train_command.__doc__)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_bad_config_combinations(small_ds, tmp_path, capsys, monkeypatch):
    from tritongpt.gpt import GPT, GPTConfig

    # the global batch cannot be split over the processes
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit):
        run_cli(train_command.main, tiny(small_ds, str(tmp_path / "a")), train_command.__doc__)
    assert "'gradient_accumulation_steps' (2) must be divisible by the number of processes (3)" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    # fine-tuning with a block longer than the pretrained model's
    pretrained = str(tmp_path / "hf")
    GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=32, bias=True)).save_pretrained(pretrained)
    with pytest.raises(SystemExit):
        run_cli(train_command.main, tiny(small_ds, str(tmp_path / "b"), init_from=pretrained), train_command.__doc__)
    assert "'block_size' (16) is longer than the model's (8)" in capsys.readouterr().err
    # a fresh run never writes over another run's checkpoints
    os.makedirs(tmp_path / "c")
    open(tmp_path / "c" / "ckpt_00000010.pt", "wb").close()
    with pytest.raises(SystemExit):
        run_cli(train_command.main, tiny(small_ds, str(tmp_path / "c")), train_command.__doc__)
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("arg,key", [("--temperature=-1", "temperature"), ("--top_k=-2", "top_k"), ("--top_p=0", "top_p"),
                                     ("--max_new_tokens=0", "max_new_tokens"), ("--start=", "start")])
def test_bad_sampling_key_is_one_line_naming_it(arg, key, straight, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(sample_command.main, [f"--out_dir={straight}", arg], sample_command.__doc__, SampleConfig)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config key '{key}' ") and err.count("\n") == 1, err


def test_cli_bad_key_exits_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tritongpt.train", "shakespeare_char_cpu", "--learning_rate=fast"],
                       capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: config key 'learning_rate' must be float, got 'fast'", r.stderr
    r = subprocess.run([sys.executable, "-m", "tritongpt.train.sample", "--out_dir=nowhere"], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "holds no checkpoint" in r.stderr


# ----------------------------------------------------------------------------- the Shakespeare run


def test_shakespeare_cpu_learns_and_samples(shakespeare, tmp_path, monkeypatch, capsys):
    """The main command (shortened) on a machine without network: tiny Shakespeare from the copy
    that ships with the package, then a sample: the CPU config here, the baby GPT where there is a GPU."""
    name = "shakespeare_char" if torch.cuda.is_available() else "shakespeare_char_cpu"
    monkeypatch.setattr(prep.sources, "SHAKESPEARE_URL", "http://127.0.0.1:0/input.txt")  # no download
    monkeypatch.chdir(tmp_path)
    short = ["--max_iters=80", "--lr_decay_iters=80", "--warmup_iters=10", "--eval_interval=80", "--eval_iters=4",
             "--log_interval=40"]
    import tritongpt.train.__main__ as cli

    real = cli.load_config
    monkeypatch.setattr(cli, "load_config", lambda argv: real(argv + short))
    cli.main([])
    printed, said = capsys.readouterr()
    assert "using the copy that ships with tritongpt" in said
    evals = [json.loads(line) for line in open(f"out/{name}/metrics.jsonl") if '"eval"' in line]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 80
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0, evals  # about 4.9 -> 2.7
    text = printed.split(f"saved out/{name}/ckpt_00000080.pt")[1].split("\n", 1)[1]
    assert len(text.strip()) > 200 and set(text) <= set(shakespeare)
    # sampling again: the seed fixes the text; a different seed changes it
    again = sample(SampleConfig(out_dir=f"out/{name}", num_samples=2, max_new_tokens=60, start="ROMEO:"))
    assert all(s.startswith("ROMEO:") and len(s) == 66 for s in again)
    assert again == sample(SampleConfig(out_dir=f"out/{name}", num_samples=2, max_new_tokens=60,
                                        start="ROMEO:"))
    (tmp_path / "prompt.txt").write_text("JULIET:\n")
    from_file = sample(SampleConfig(out_dir=f"out/{name}", num_samples=1, max_new_tokens=20,
                                    start=f"FILE:{tmp_path / 'prompt.txt'}", temperature=0.0))
    assert from_file[0].startswith("JULIET:\n") and len(from_file[0]) == 28
    # a second main command finds the finished run and only samples
    cli.main([])
    assert f"resuming from out/{name}/ckpt_00000080.pt" in capsys.readouterr().out


def test_help_lists_every_key(capsys):
    run_cli(train_command.main, ["--help"], train_command.__doc__)
    out = capsys.readouterr().out
    assert out.startswith("python -m tritongpt.train [CONFIG]")
    assert "--n_layer=12  (int)" in out and "--init_from='scratch'  (str)" in out and "--keep_last=2" in out


def test_compile_is_on_where_a_gpu_is(tmp_path):
    """compile: auto resolves to on with a GPU, off on a CPU; true / false as --key=value in any
    spelling of a bool, or as a bool in a config file; the mode is one of torch.compile's."""
    from tritongpt.train.system import resolve_system

    cfg = load_config(["--device=cpu"])
    assert cfg.compile == "auto" and cfg.compile_mode == "default"
    resolve_system(cfg)
    assert cfg.compile == "false"
    if torch.cuda.is_available():
        cfg = load_config([])
        resolve_system(cfg)
        assert cfg.compile == "true"
    assert load_config(["--compile=Yes"]).compile == "true" and load_config(["--compile=0"]).compile == "false"
    path = tmp_path / "mine.py"
    path.write_text("compile = True\ncompile_mode = 'reduce-overhead'\n")
    cfg = load_config([str(path)])
    assert cfg.compile == "true" and cfg.compile_mode == "reduce-overhead"


# ----------------------------------------------------------------------------- deterministic=true


@pytest.fixture
def deterministic_off(monkeypatch):
    """Put back what deterministic=true switches on for the rest of the process."""
    from tritongpt.train.system import deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # and back as it was
    yield
    deterministic(False)


def test_deterministic_runs_are_bitwise_equal(small_ds, tmp_path, deterministic_off):
    """Off by default; on, it fixes the kernels' tiles (no autotuning), Inductor's choices and
    torch's algorithms, and two runs of one config give the same losses and weights, bit for bit."""
    import torch._inductor.config as inductor

    from tritongpt import kernels

    assert load_config([]).deterministic is False
    assert not kernels.tiles_fixed() and not torch.are_deterministic_algorithms_enabled()
    runs = [str(tmp_path / name) for name in ("a", "b")]
    for out in runs:
        train(load_config(tiny(small_ds, out, deterministic="true", max_iters=6, eval_interval=6)))
    assert kernels.tiles_fixed() and inductor.deterministic and torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert losses(runs[0]) == losses(runs[1]) and len(losses(runs[0])) == 6
    assert_same_weights(weights(f"{runs[0]}/ckpt_00000006.pt"), weights(f"{runs[1]}/ckpt_00000006.pt"))


def test_deterministic_refuses_compile_modes_that_time_kernels():
    with pytest.raises(ConfigError, match="'deterministic' is on with compile_mode max-autotune, which picks kernels"):
        load_config(["--deterministic=true", "--compile_mode=max-autotune"])
