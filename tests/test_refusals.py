"""The trainer, the sampler and the converter given bad inputs and faults: non-finite checkpoints
with valid checksums, an out_dir that refuses metrics.jsonl (read-only or full, at the start, on
resume, mid-run), conversions to where nothing can be written, a sharded save cut short between its
two renames, a run that never beats step 0, and sampling at extreme temperatures or from a binary
prompt. Each refusal is one line, a non-zero exit, and nothing already written is lost."""

import errno
import json
import os
import shutil

import pytest
import torch

import tritongpt.train.__main__ as train_command
import tritongpt.train.convert as convert_command
import tritongpt.train.metrics as metrics_module
import tritongpt.train.sample as sample_command
from conftest import tiny
from test_train import weights
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.gpt.model import sample_next
from tritongpt.train import checkpoint
from tritongpt.train.cli import run_cli
from tritongpt.train.config import load_config
from tritongpt.train.convert import ConvertConfig
from tritongpt.train.loop import Trainer, train
from tritongpt.train.sample import SampleConfig, sample

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(capsys):
    """The one line a refusal printed, last, with no traceback (before it, stderr may hold what the
    command was doing: the checkpoint it read, a progress bar)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert "Traceback" not in err, err
    return lines[-1]


def cli(main, argv, doc, *cls):
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv, doc, *cls)
    return e.value.code


def snapshot(folder):
    """{name: bytes} of every file under folder."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


# ----------------------------------------------------------------------------- non-finite checkpoints


def nan_copy(path, key="transformer.h.0.mlp.c_fc.weight"):
    """Write the checkpoint `path` again with one weight NaN, its checksum valid (as another tool
    or version might have written it)."""
    state = checkpoint.read(path)
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    checkpoint.write({k: v for k, v in state.items() if k != checkpoint.CHECKSUM}, path)


def test_a_nan_checkpoint_with_a_valid_checksum_is_not_resumed(straight, small_ds, tmp_path, capsys):
    """The newest checkpoint holds NaN weights: resuming takes the one before it and says why; the
    run then never calls the NaN one its last good checkpoint."""
    out = str(tmp_path / "run")
    shutil.copytree(straight, out)
    nan_copy(f"{out}/ckpt_00000020.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"holds non-finite values \(model\.transformer\.h\.0\.mlp"):
        checkpoint.read(f"{out}/ckpt_00000020.pt")
    train(load_config(tiny(small_ds, out, init_from="resume", max_bad_steps=1000)))
    printed = capsys.readouterr().out
    assert f"warning: checkpoint {out}/ckpt_00000020.pt holds non-finite values" in printed
    assert f"resuming from {out}/ckpt_00000010.pt (step 10)" in printed
    assert torch.isfinite(weights(f"{out}/ckpt_00000020.pt")["transformer.h.0.mlp.c_fc.weight"]).all()


def test_only_nan_checkpoints_are_one_line_and_kept(straight, small_ds, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(straight, out)
    for name in ("ckpt_00000010.pt", "ckpt_00000020.pt", "best.pt"):
        nan_copy(f"{out}/{name}")
    before = snapshot(out)
    assert cli(train_command.main, tiny(small_ds, out, init_from="resume", max_bad_steps=1000), train_command.__doc__) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: no readable checkpoint in {out}: checkpoint {out}/ckpt_00000020.pt holds non-finite")
    assert snapshot(out) == before  # nothing written over, not even metrics.jsonl
    assert cli(sample_command.main, [f"--out_dir={out}", "--init_from=best"], sample_command.__doc__, SampleConfig) == 2
    assert "best.pt holds non-finite values" in one_line_error(capsys)


@pytest.fixture(scope="module")
def sharded(small_ds, tmp_path_factory):
    """20 steps of one FSDP process: sharded checkpoints at 10 and 20, and best/."""
    out = str(tmp_path_factory.mktemp("sharded"))
    train(load_config(tiny(small_ds, out, fsdp="true")))
    return out


def test_a_nan_sharded_checkpoint_is_one_line_in_train_convert_and_sample(sharded, small_ds, tmp_path, capsys):
    """DCP's shards hold the weights: they are checked once loaded, in every process."""
    out = str(tmp_path / "run")
    shutil.copytree(sharded, out)
    shutil.rmtree(f"{out}/best")
    state = checkpoint.read(f"{out}/ckpt_00000020")
    model = GPT(GPTConfig(**state["model_args"]))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    checkpoint.load_sharded(state["sharded"], model, optimizer)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    meta = {k: v for k, v in state.items() if k not in ("sharded", "files", checkpoint.CHECKSUM)}
    shutil.rmtree(f"{out}/ckpt_00000020")
    checkpoint.save_sharded(model, optimizer, meta, out, keep_last=2, is_best=False)
    before = snapshot(out)
    words = f"checkpoint {out}/ckpt_00000020 holds non-finite weights or optimizer states"
    assert cli(train_command.main, tiny(small_ds, out, fsdp="true", init_from="resume"), train_command.__doc__) == 2
    assert words in one_line_error(capsys)
    assert cli(convert_command.main, [f"--out_dir={out}", f"--to_hf={tmp_path / 'hf'}"], convert_command.__doc__,
               ConvertConfig) == 2
    assert words in one_line_error(capsys) and not (tmp_path / "hf").exists()
    assert cli(sample_command.main, [f"--out_dir={out}"], sample_command.__doc__, SampleConfig) == 2
    assert words in one_line_error(capsys)
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- best/ and best.pt


@pytest.mark.parametrize("new_copy_complete", [True, False])
def test_a_best_swap_cut_short_is_finished_on_the_next_start(new_copy_complete, sharded, small_ds, tmp_path, capsys):
    """Killed between the two renames of best/ (best/ -> best.old/, best.tmp/ -> best/): the next
    start puts best/ back, the new copy where it is complete, else the old one."""
    out = str(tmp_path / "run")
    shutil.copytree(sharded, out)
    os.rename(f"{out}/best", f"{out}/best.old")
    if new_copy_complete:
        shutil.copytree(f"{out}/ckpt_00000020", f"{out}/best.tmp")
    train(load_config(tiny(small_ds, out, fsdp="true", init_from="resume", max_iters=20)))
    printed = capsys.readouterr().out
    assert f"{out}/best: " + ("finished the save that was cut short" if new_copy_complete else
                              "put the previous copy back") in printed
    assert sorted(os.listdir(out)) == ["best", "ckpt_00000010", "ckpt_00000020", "metrics.jsonl"]
    assert checkpoint.read(f"{out}/best")["step"] == 20


def test_a_run_that_never_beats_step_0_writes_a_best(small_ds, tmp_path, monkeypatch):
    """Each evaluation worse than step 0's: best.pt is the first checkpoint after it (with
    always_save_checkpoint off, the only one)."""
    vals = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (v := next(vals)) and {"train": v, "val": v})
    out = str(tmp_path)
    train(load_config(tiny(small_ds, out, always_save_checkpoint="false")))
    assert sorted(os.listdir(out)) == ["best.pt", "ckpt_00000010.pt", "metrics.jsonl"]
    assert checkpoint.read(f"{out}/best.pt")["step"] == 10


# ----------------------------------------------------------------------------- metrics.jsonl


def refuse_opening_metrics(monkeypatch, err=errno.EROFS):
    """os.open of any metrics.jsonl fails as on a read-only disk (root writes through file modes)."""
    real = os.open

    def fake(path, *args, **kw):
        if str(path).endswith("metrics.jsonl"):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(metrics_module.os, "open", fake)


def test_a_read_only_out_dir_is_one_line_on_a_fresh_run(small_ds, tmp_path, capsys, monkeypatch):
    refuse_opening_metrics(monkeypatch)
    out = tmp_path / "out"
    assert cli(train_command.main, tiny(small_ds, str(out)), train_command.__doc__) == 2
    assert one_line_error(capsys) == (f"error: could not write {out}/metrics.jsonl (Read-only file system); free "
                                      "space on that disk or choose a writable out_dir (the checkpoints stay where they are)")


def test_a_read_only_out_dir_is_one_line_on_resume(straight, small_ds, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    shutil.copytree(straight, out)
    before = snapshot(out)
    refuse_opening_metrics(monkeypatch)
    assert cli(train_command.main, tiny(small_ds, out, init_from="resume", max_iters=30), train_command.__doc__) == 2
    assert "metrics.jsonl (Read-only file system)" in one_line_error(capsys)
    assert snapshot(out) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_folder_without_write_permission_is_one_line(straight, small_ds, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    before = snapshot(out)
    os.chmod(out / "metrics.jsonl", 0o444)
    os.chmod(out, 0o555)
    try:
        assert cli(train_command.main, tiny(small_ds, str(out), init_from="resume", max_iters=30), train_command.__doc__) == 2
        assert "metrics.jsonl (Permission denied)" in one_line_error(capsys)
    finally:
        os.chmod(out, 0o755)
    assert snapshot(out) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_at_the_first_line_is_one_line(small_ds, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink("/dev/full", out / "metrics.jsonl")  # every write fails with ENOSPC
    assert cli(train_command.main, tiny(small_ds, str(out)), train_command.__doc__) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: could not write {out}/metrics.jsonl (No space left on device)")
    assert line.endswith("the last good checkpoint is none written yet") or "choose a writable out_dir" in line
    assert sorted(os.listdir(out)) == ["metrics.jsonl"]


def test_a_disk_that_fills_mid_run_leaves_whole_lines(small_ds, tmp_path, capsys, monkeypatch):
    """The disk fills at step 15 part way through a line: the line is cut back off, the run stops
    with one line naming the last good checkpoint, and every line of the file is whole."""
    real_write, calls = os.write, []

    def write(fd, data):
        data = bytes(data)
        if calls or (b'"step": 15,' in data and b'"loss"' in data):
            calls.append(data)
            if len(calls) == 1:
                return real_write(fd, data[: len(data) // 2])  # part of it, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(metrics_module.os, "write", write)
    out = str(tmp_path)
    assert cli(train_command.main, tiny(small_ds, out), train_command.__doc__) == 2
    assert one_line_error(capsys) == (f"error: could not write {out}/metrics.jsonl (No space left on device); free space "
                                      "on that disk or choose a writable out_dir (the checkpoints stay where they are); "
                                      f"the last good checkpoint is {out}/ckpt_00000010.pt")
    records = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]  # every line whole
    assert max(r["step"] for r in records) == 14 and len(calls) == 2
    assert checkpoint.read(f"{out}/ckpt_00000010.pt")["step"] == 10


def test_a_line_cut_short_by_a_crash_is_dropped_on_resume(straight, small_ds, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(straight, out)
    with open(f"{out}/metrics.jsonl", "a") as f:
        f.write('{"step": 21, "loss": 2.')  # the process died while writing it
    train(load_config(tiny(small_ds, out, init_from="resume", max_iters=22, eval_interval=22)))
    records = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    assert [r["step"] for r in records if "loss" in r][-2:] == [21, 22]


# ----------------------------------------------------------------------------- convert


def test_convert_refusals_are_one_line(straight, tmp_path, capsys, monkeypatch):
    def convert(*args):
        assert cli(convert_command.main, list(args), convert_command.__doc__, ConvertConfig) == 2
        return one_line_error(capsys)

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = convert(f"--out_dir={straight}", f"--to_hf={blocker}/hf")
    assert line == f"error: config key 'to_hf': cannot write to '{blocker}/hf' (Not a directory); choose a writable directory"
    assert blocker.read_text() == "not a folder"
    # a run's out_dir given as the checkpoint
    line = convert(f"--checkpoint={straight}", f"--to_hf={tmp_path / 'hf'}")
    assert line == (f"error: config key 'checkpoint': '{straight}' is a run's out_dir, not a checkpoint; give "
                    f"--out_dir={straight} to convert its newest readable checkpoint, or "
                    f"--checkpoint={straight}/ckpt_00000020.pt")
    # a read-only target (faked: root writes through file modes)
    monkeypatch.setattr(convert_command.tempfile, "TemporaryFile",
                        lambda dir: (_ for _ in ()).throw(OSError(errno.EROFS, os.strerror(errno.EROFS), dir)))
    (tmp_path / "empty").mkdir()
    line = convert(f"--out_dir={straight}", f"--to_hf={tmp_path / 'empty'}")
    assert "'to_hf': cannot write to" in line and "(Read-only file system)" in line
    assert os.listdir(tmp_path / "empty") == []
    assert not (tmp_path / "hf").exists()


def test_convert_that_fills_the_disk_leaves_nothing_half_written(straight, tmp_path, capsys, monkeypatch):
    real = GPT.save_pretrained

    def save_pretrained(self, directory, family=None):
        real(self, directory, family)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as if the last file did not fit

    monkeypatch.setattr(GPT, "save_pretrained", save_pretrained)
    target = tmp_path / "new" / "hf"
    assert cli(convert_command.main, [f"--out_dir={straight}", f"--to_hf={target}"], convert_command.__doc__,
               ConvertConfig) == 2
    assert "'to_hf': could not write" in one_line_error(capsys) and not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 5e-324])
def test_a_tiny_temperature_is_greedy(temperature):
    logits = torch.randn(4, 50) * 30
    want = logits.argmax(dim=-1, keepdim=True)
    assert torch.equal(sample_next(logits, temperature=temperature), want)
    assert torch.equal(sample_next(logits, temperature=0.7, top_p=1e-300), want)
    assert torch.equal(sample_next(logits, temperature=1e-300, top_k=3, top_p=5e-324), want)


def test_a_huge_temperature_samples_every_token_alike():
    logits = torch.tensor([[100.0, 0.0, -100.0, float("-inf")]])
    torch.manual_seed(0)
    seen = torch.cat([sample_next(logits, temperature=1e308) for _ in range(300)]).flatten()
    assert set(seen.tolist()) == {0, 1, 2}  # never the masked id, each of the others about a third of the time


def test_sampling_at_extreme_values_works_or_is_one_line(straight, tmp_path, capsys):
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32))
    idx = torch.zeros(1, 1, dtype=torch.long)
    for kw in (dict(temperature=1e-300), dict(temperature=1e-45), dict(temperature=1e308), dict(top_p=1e-300)):
        out = model.generate(idx, 4, **kw)
        assert out.shape == (1, 5), kw
    greedy = sample(SampleConfig(out_dir=straight, num_samples=1, max_new_tokens=20, temperature=0.0))
    for kw in (dict(temperature=1e-300), dict(top_p=1e-300)):
        assert sample(SampleConfig(out_dir=straight, num_samples=1, max_new_tokens=20, **kw)) == greedy
    capsys.readouterr()
    for arg in ("--temperature=inf", "--temperature=nan", "--top_p=nan"):
        assert cli(sample_command.main, [f"--out_dir={straight}", arg], sample_command.__doc__, SampleConfig) == 2
        assert one_line_error(capsys).startswith(f"error: config key '{arg[2:].split('=')[0]}' must be")


def test_a_binary_prompt_file_is_one_line(straight, tmp_path, capsys):
    binary = tmp_path / "prompt.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert cli(sample_command.main, [f"--out_dir={straight}", f"--start=FILE:{binary}"], sample_command.__doc__,
               SampleConfig) == 2
    assert one_line_error(capsys) == (f"error: config key 'start': '{binary}' is not UTF-8 text (byte 0x80 at offset 128); "
                                      "give a text file, converted to UTF-8 (e.g. with iconv)")
    binary.write_bytes(b"ROMEO\0\0\0")
    assert cli(sample_command.main, [f"--out_dir={straight}", f"--start=FILE:{binary}"], sample_command.__doc__,
               SampleConfig) == 2
    assert "holds NUL bytes" in one_line_error(capsys)


# ----------------------------------------------------------------------------- numeric keys


@pytest.mark.parametrize("arg", ["--learning_rate=inf", "--join_timeout=nan", "--dropout=-inf", "--rotary_base=inf"])
def test_a_non_finite_float_key_is_one_line_naming_it(arg, small_ds, tmp_path, capsys):
    key = arg[2:].split("=")[0]
    assert cli(train_command.main, [*tiny(small_ds, str(tmp_path)), arg], train_command.__doc__) == 2
    assert one_line_error(capsys).startswith(f"error: config key '{key}' must be a finite number, got ")
    assert not os.listdir(tmp_path)
