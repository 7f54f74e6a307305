"""The trainer under faults: non-finite losses and evaluations, damaged checkpoints, a disk that
refuses a checkpoint, and the lines a long evaluation leaves in a log."""

import json
import os
import shutil

import pytest
import torch

import tritongpt.train.__main__ as train_command
from tritongpt.gpt import GPT
from conftest import tiny
from test_train import assert_same_weights, weights
from tritongpt.train import checkpoint
from tritongpt.train.cli import run_cli
from tritongpt.train.config import load_config
from tritongpt.train.health import BadSteps
from tritongpt.train.loop import Trainer, TrainingStopped, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def nan_at(monkeypatch):
    """Steps whose training loss (nan_at.train) or evaluation (nan_at.eval: the one before that
    step's update) is made NaN right after the forward, as in a diverging run: add steps before
    training."""

    class Steps:
        train, eval = set(), set()

    current, done = [], [0]  # the step being trained, the steps done
    real_step, real_forward = Trainer.train_step, GPT.forward

    def train_step(self, step):
        current.append(step)
        try:
            return real_step(self, step)
        finally:
            current.pop()
            done[0] = step + 1

    def forward(self, idx, targets=None):
        out = real_forward(self, idx, targets)
        if targets is not None and (current[-1] in Steps.train if current else done[0] in Steps.eval):
            out = out * float("nan")
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(GPT, "forward", forward)
    return Steps


# ----------------------------------------------------------------------------- non-finite states


def test_non_finite_state_is_never_saved_nor_named_good(small_ds, tmp_path, nan_at, capsys):
    """Two NaN steps (under max_bad_steps) and a NaN evaluation at step 8: no checkpoint at 8; when
    the run then stops, it names the checkpoint of step 4."""
    nan_at.train.update({6, 7, 9, 10, 11})
    nan_at.eval.add(8)
    out = str(tmp_path)
    with pytest.raises(TrainingStopped) as e:
        train(load_config(tiny(small_ds, out, max_iters=16, eval_interval=4, max_bad_steps=3, keep_last=5)))
    assert f"the last good checkpoint is {out}/ckpt_00000004.pt" in str(e.value)
    assert "step 8: no checkpoint, the losses or weights are not finite" in capsys.readouterr().out
    assert [os.path.basename(p) for p in checkpoint.checkpoints(out)] == ["ckpt_00000004.pt"]
    assert checkpoint.read(f"{out}/best.pt")["step"] == 4


def test_bad_steps_stop_within_the_limit_between_log_lines(small_ds, tmp_path, nan_at):
    """With log and eval lines 100 steps apart, NaN losses from step 5 on stop the run after
    max_bad_steps of them (at most one step later on a GPU, which reads its counter a step late)."""
    nan_at.train.update(range(5, 40))
    out = str(tmp_path)
    with pytest.raises(TrainingStopped, match=r"stopping at step (\d+): (\d+) non-finite losses in a row") as e:
        train(load_config(tiny(small_ds, out, max_iters=40, log_interval=100, eval_interval=100, max_bad_steps=3)))
    stopped_at = int(str(e.value).split()[3].rstrip(":"))
    assert stopped_at <= 5 + 3 + (1 if torch.cuda.is_available() else 0), str(e.value)
    assert "the last good checkpoint is none written yet" in str(e.value)


def test_bad_step_counter_read_one_step_late():
    """The GPU's way (here on the CPU): each call reads the count of the step before the last."""
    bad = BadSteps("cpu", late=True)
    seen = []
    for flag in (1, 1, 0, 1, 1, 1, 0):
        bad.count(torch.tensor(flag))
        seen.append(bad.latest())
    assert seen == [0, 1, 2, 0, 1, 2, 3]
    assert bad.now() == 0 and int(bad.total) == 5


# ----------------------------------------------------------------------------- damaged checkpoints


def _flip_bytes_inside(path, tensor):
    """Change two bytes of `tensor`'s data where it lies in the checkpoint file `path`."""
    data = bytearray(open(path, "rb").read())
    raw = tensor.contiguous().numpy().tobytes()
    at = data.find(raw[:64])
    assert at > 0 and len(raw) > 200
    for i in (at + 100, at + 101):
        data[i] ^= 0x55
    open(path, "wb").write(bytes(data))


def test_flipped_bytes_in_a_tensor_are_found_and_skipped(straight, small_ds, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(straight, out)
    latest = f"{out}/ckpt_00000020.pt"
    _flip_bytes_inside(latest, weights(latest)["transformer.h.0.mlp.c_fc.weight"])
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.read(latest)
    train(load_config(tiny(small_ds, out, init_from="resume")))
    printed = capsys.readouterr().out
    assert "ckpt_00000020.pt is damaged" in printed and "ckpt_00000010.pt (step 10)" in printed
    assert_same_weights(weights(f"{straight}/ckpt_00000020.pt"), weights(latest))


def test_best_survives_damage_to_the_latest(tmp_path):
    """With keep_last=1 the newest checkpoint is also the best: best.pt is a file of its own."""
    out = str(tmp_path)
    for step in (1, 2):
        state = dict(model={"w": torch.randn(64)}, optimizer={}, step=step, config={}, model_args={})
        checkpoint.save(state, out, keep_last=1, is_best=True)
    latest = f"{out}/ckpt_00000002.pt"
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    state, path = checkpoint.load_latest(out, log=lambda m: None)
    assert state["step"] == 2 and path.endswith("best.pt")


# ----------------------------------------------------------------------------- a disk that refuses


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_at_a_checkpoint_is_one_line(small_ds, tmp_path, capsys):
    """The checkpoint of step 20 goes to a full disk: one line naming the last good checkpoint,
    a non-zero exit, no temporary file left, the earlier checkpoint intact."""
    out = tmp_path / "run"
    out.mkdir()
    os.symlink("/dev/full", out / "ckpt_00000020.pt.tmp")  # writing there fails with ENOSPC
    with pytest.raises(SystemExit) as e:
        run_cli(train_command.main, tiny(small_ds, str(out)), train_command.__doc__)
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: could not write {out}/ckpt_00000020.pt (No space left on device")
    assert f"the last good checkpoint is {out}/ckpt_00000010.pt" in err
    assert not [n for n in os.listdir(out) if ".tmp" in n]
    assert checkpoint.read(f"{out}/ckpt_00000010.pt")["step"] == 10


def test_save_into_a_file_that_is_no_folder(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    state = dict(model={"w": torch.zeros(2)}, optimizer={}, step=1, config={}, model_args={})
    with pytest.raises(checkpoint.CheckpointError, match=r"could not write .*ckpt_00000001\.pt \(File exists"):
        checkpoint.save(state, str(blocker), keep_last=1, is_best=True)


# ----------------------------------------------------------------------------- evaluations in a log


def test_evaluation_says_when_it_starts_and_how_long_it_took(small_ds, tmp_path, capsys):
    out = str(tmp_path)
    train(load_config(tiny(small_ds, out, max_iters=2, eval_interval=2)))
    lines = capsys.readouterr().out.splitlines()
    for step in (0, 2):
        start = lines.index(f"step {step}: evaluating (2 batches of each split)")
        assert lines[start + 1].startswith(f"step {step}: train loss ") and "(evaluation took " in lines[start + 1]
    evals = [json.loads(line) for line in open(f"{out}/metrics.jsonl") if '"eval"' in line]
    assert [r["step"] for r in evals] == [0, 2] and all(r["seconds"] >= 0 for r in evals)
