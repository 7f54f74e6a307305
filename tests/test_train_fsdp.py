"""Beyond one device's memory, on a CPU with gloo: FSDP against one process, sharded checkpoints
(exact resume, another number of processes, damage, a full disk, a restart after a killed rank),
their conversion to a single file and a Hugging Face directory, activation checkpointing, and the
memory estimate by hand."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import tritongpt.train.__main__ as train_command
from conftest import ROOT, tiny
from tritongpt.gpt import GPT, GPTConfig
from test_train import CRASHING_TRAIN, assert_same_weights, losses, torchrun
from tritongpt.train import checkpoint, memory
from tritongpt.train.cli import run_cli
from tritongpt.train.config import load_config
from tritongpt.train.convert import ConvertConfig, convert
from tritongpt.train.loop import train
from tritongpt.train.sample import SampleConfig, sample

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-6  # one process against two: the same sums in another order (as test_two_processes_equal_one)


def evals(out_dir):
    """{step: (train loss, val loss)} of the evaluations in out_dir/metrics.jsonl."""
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return {r["step"]: (r["train_loss"], r["val_loss"]) for r in records if r.get("event") == "eval"}


def norms(out_dir):
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return {r["step"]: r["grad_norm"] for r in records if "grad_norm" in r}


def sharded_weights(path):
    """The weights of a checkpoint of either kind, read in this process."""
    state = checkpoint.read(path)
    model = GPT(GPTConfig(**state["model_args"]))
    checkpoint.load_weights(state, model)
    return model.state_dict()


def assert_close(a, b, what):
    assert sorted(a) == sorted(b), what
    for k in a:
        assert abs(a[k] - b[k]) <= TOL if not isinstance(a[k], tuple) else max(map(abs, (a[k][0] - b[k][0], a[k][1] - b[k][1]))) <= TOL, \
            (what, k, a[k], b[k])


def run_ok(args, **kw):
    r = torchrun(args, **kw)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


# ----------------------------------------------------------------------------- FSDP = one process

COMMON = dict(dropout=0.0)  # dropout draws other masks in each process: none, to compare 1 and 2 processes


@pytest.fixture(scope="module")
def one(small_ds, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one"))
    train(load_config(tiny(small_ds, out, **COMMON)))
    return out


@pytest.fixture(scope="module")
def fsdp_two(small_ds, tmp_path_factory):
    """20 steps on 2 processes, sharded (reducing after each micro-step), each block recomputed in its backward."""
    out = str(tmp_path_factory.mktemp("fsdp_two"))
    run_ok(tiny(small_ds, out, fsdp="true", fsdp_accumulate="sharded", activation_checkpointing="true", **COMMON), nproc=2)
    return out


def test_fsdp_equals_one_process(one, fsdp_two):
    """fp32, the same global batch (2 micro-steps: 2 x 1 or 1 x 2): the losses, gradient norms,
    evaluations and final weights of FSDP on 2 processes are those of 1 plain process."""
    assert sorted(losses(fsdp_two)) == list(range(1, 21))
    assert_close(losses(one), losses(fsdp_two), "loss")
    assert_close(norms(one), norms(fsdp_two), "grad norm")
    assert sorted(evals(fsdp_two)) == [0, 10, 20]
    assert_close(evals(one), evals(fsdp_two), "evaluation")
    a, b = sharded_weights(f"{one}/ckpt_00000020.pt"), sharded_weights(f"{fsdp_two}/ckpt_00000020")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=TOL)
    # the layout: each process's shards, DCP's index, meta.pt; best/ its own copy; nothing half-written
    assert sorted(os.listdir(fsdp_two)) == ["best", "ckpt_00000010", "ckpt_00000020", "metrics.jsonl"]
    assert sorted(os.listdir(f"{fsdp_two}/ckpt_00000020")) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert not os.path.samefile(f"{fsdp_two}/best/__0_0.distcp", f"{fsdp_two}/ckpt_00000020/__0_0.distcp")


def test_two_process_checkpoint_resumes_in_one(one, fsdp_two, small_ds, tmp_path, capsys):
    """The newest checkpoint damaged (a byte of a shard), a half-written one and one without its
    meta.pt beside it: one FSDP process skips all three, resumes the 2-process run from step 10,
    resharded, with a note that its RNGs are new, and goes on as the plain process did."""
    out = str(tmp_path / "run")
    shutil.copytree(fsdp_two, out)
    with open(f"{out}/ckpt_00000020/__1_0.distcp", "r+b") as f:
        f.seek(os.path.getsize(f.name) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x55]))
    shutil.copytree(f"{out}/ckpt_00000010", f"{out}/ckpt_00000030.tmp")  # a save cut short
    shutil.copytree(f"{out}/ckpt_00000010", f"{out}/ckpt_00000025")
    os.remove(f"{out}/ckpt_00000025/meta.pt")
    train(load_config(tiny(small_ds, out, init_from="resume", fsdp="true", **COMMON)))
    printed = capsys.readouterr().out
    assert "ckpt_00000025 is incomplete (no meta.pt)" in printed
    assert "ckpt_00000020 is damaged (__1_0.distcp no longer matches its checksum)" in printed
    assert "resuming from" in printed and "ckpt_00000010 (step 10)" in printed
    assert "the checkpoint was written by 2 processes, now 1: RNGs re-seeded" in printed
    a, b = losses(one), losses(out)
    assert_close({s: a[s] for s in range(11, 21)}, {s: b[s] for s in range(11, 21)}, "loss after the resume")
    assert max(abs(x - y) for x, y in zip(evals(one)[20], evals(out)[20], strict=True)) <= TOL
    assert sorted(os.listdir(out)) == ["best", "ckpt_00000020", "ckpt_00000025", "metrics.jsonl"]  # keep_last=2


# ----------------------------------------------------------------------------- exact resume and restarts

LONG = dict(max_iters=40, lr_decay_iters=40, gradient_accumulation_steps=4, fsdp="true")  # 2 micro-steps per process


@pytest.fixture(scope="module")
def fsdp_forty(small_ds, tmp_path_factory):
    """40 steps on 2 processes that never stopped: dropout on (each process's RNG state matters),
    accumulating unsharded between micro-steps (fsdp_accumulate=auto, which fits here)."""
    out = str(tmp_path_factory.mktemp("fsdp_forty"))
    r = run_ok(tiny(small_ds, out, **LONG), nproc=2)
    assert "memory per process (estimate, FSDP unsharded)" in r.stdout
    return out


def test_fsdp_resume_is_exact(fsdp_forty, small_ds, tmp_path):
    """20 steps, then resumed to 40, on 2 processes: bit for bit the run that never stopped."""
    out = str(tmp_path)
    run_ok(tiny(small_ds, out, **dict(LONG, max_iters=20)), nproc=2)
    r = run_ok(tiny(small_ds, out, init_from="resume", **LONG), nproc=2)
    assert f"resuming from {out}/ckpt_00000020 (step 20)" in r.stdout and "re-seeded" not in r.stdout
    a, b = losses(fsdp_forty), losses(out)
    assert sorted(b) == list(range(1, 41)) and a == b
    assert evals(fsdp_forty) == {s: v for s, v in evals(out).items()}
    assert_same_weights(sharded_weights(f"{fsdp_forty}/ckpt_00000040"), sharded_weights(f"{out}/ckpt_00000040"))


def test_killed_fsdp_rank_resumes_from_its_latest_checkpoint(fsdp_forty, small_ds, tmp_path):
    """Rank 1 killed with SIGKILL before step 25; torchrun restarts both processes, which resume
    from the sharded checkpoint of step 20 and end bit for bit where the run that never stopped did."""
    out = str(tmp_path)
    r = run_ok(["25:1", *tiny(small_ds, out, **LONG)], nproc=2, extra=["--max-restarts=1"], script=CRASHING_TRAIN)
    assert "dying before step 25 in rank 1" in r.stdout
    assert f"resuming from {out}/ckpt_00000020 (step 20) after a restart" in r.stdout
    assert losses(fsdp_forty) == losses(out)
    assert_same_weights(sharded_weights(f"{fsdp_forty}/ckpt_00000040"), sharded_weights(f"{out}/ckpt_00000040"))


def test_full_disk_at_a_sharded_checkpoint_is_one_line(small_ds, tmp_path, capsys, monkeypatch):
    """DCP's write of step 10 meets a full disk: one line naming the last good checkpoint, a
    non-zero exit, nothing half-written left, step 5 whole."""
    real_save = checkpoint.dcp.save

    def save(state, checkpoint_id):
        if checkpoint_id.endswith("ckpt_00000010.tmp"):
            os.makedirs(checkpoint_id)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{checkpoint_id}/__0_0.distcp")
        return real_save(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(checkpoint.dcp, "save", save)
    out = str(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_cli(train_command.main, tiny(small_ds, out, fsdp="true", max_iters=10, eval_interval=5), train_command.__doc__)
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: could not write {out}/ckpt_00000010 (No space left on device")
    assert f"the last good checkpoint is {out}/ckpt_00000005" in err
    assert sorted(os.listdir(out)) == ["best", "ckpt_00000005", "metrics.jsonl"]
    assert checkpoint.read(f"{out}/ckpt_00000005")["step"] == 5


# ----------------------------------------------------------------------------- conversion


def test_convert_to_a_single_file_and_hugging_face(fsdp_two, small_ds, tmp_path):
    """The sharded checkpoint of 2 processes as the trainer's single file (which samples, and
    resumes in one plain process) and as a Hugging Face directory (which transformers loads, with
    the same logits)."""
    transformers = pytest.importorskip("transformers")
    one_file, hf = str(tmp_path / "run" / "ckpt_00000020.pt"), str(tmp_path / "hf")
    assert convert(ConvertConfig(out_dir=fsdp_two, to_file=one_file, to_hf=hf)) == [one_file, hf]
    state = checkpoint.read(one_file)
    assert state["step"] == 20 and len(state["rng"]) == 2 and state["optimizer"]["state"]
    assert_same_weights(state["model"], sharded_weights(f"{fsdp_two}/ckpt_00000020"))
    text = sample(SampleConfig(out_dir=str(tmp_path / "run"), num_samples=1, max_new_tokens=8, start="A"))[0]
    assert text.startswith("A") and len(text) == 9
    train(load_config(tiny(small_ds, str(tmp_path / "run"), init_from="resume", max_iters=22, eval_interval=22, **COMMON)))
    assert checkpoint.read(str(tmp_path / "run" / "ckpt_00000022.pt"))["step"] == 22
    ours = GPT(GPTConfig(**state["model_args"]))
    ours.load_state_dict(state["model"])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf)
    idx = torch.randint(0, state["model_args"]["real_vocab_size"], (2, 16))
    with torch.no_grad():
        want = ours(idx)[..., : state["model_args"]["real_vocab_size"]]
        got = theirs(idx).logits[..., : state["model_args"]["real_vocab_size"]]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a second conversion never writes over the first
    with pytest.raises(ValueError, match="already exists"):
        convert(ConvertConfig(out_dir=fsdp_two, to_file=one_file))


# ----------------------------------------------------------------------------- activation checkpointing


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_activation_checkpointing_changes_nothing_but_memory(backend):
    """With dropout on (the triton backend's in its attention kernel too): the same loss and
    gradients, bit for bit (the recompute replays the RNG), and far fewer bytes kept for the backward."""
    cfg = GPTConfig(block_size=32, vocab_size=64, n_layer=3, n_head=2, n_embd=32, dropout=0.2, backend=backend)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx, targets = torch.randint(0, 64, (4, 32)), torch.randint(0, 64, (4, 32))
    results = {}
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad(set_to_none=True)
        kept = []
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t, kept=kept: kept.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss = model(idx, targets)
        loss.backward()
        results[on] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(kept))
    (loss_a, grads_a, kept_a), (loss_b, grads_b, kept_b) = results[False], results[True]
    assert torch.equal(loss_a, loss_b)
    assert_same_weights(grads_a, grads_b)
    assert kept_b < kept_a / 2, (kept_a, kept_b)


# ----------------------------------------------------------------------------- the memory estimate


def test_memory_estimate_by_hand():
    """GPT-2 124M (bias, tied head, vocabulary 50304): N = 12 (12 C^2 + 13 C) + V C + T C + 2 C."""
    C, L, V, T = 768, 12, 50304, 1024
    N = L * (12 * C * C + 13 * C) + V * C + T * C + 2 * C
    assert N == 124_475_904
    cfg = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=12, n_embd=C, backend="triton")
    B = 8
    fp32 = memory.estimate(cfg, B, T, world_size=1, dtype="float32")
    assert (fp32["parameters"], fp32["gradients"], fp32["optimizer"]) == (4 * N, 4 * N, 8 * N)
    assert fp32["activations"] == L * B * T * 16 * C * 4  # the fused loss keeps no logits
    matmul = L * 12 * C * C + V * C
    ddp = memory.estimate(cfg, B, T, world_size=8, dtype="bfloat16")
    assert ddp["parameters"] == 4 * N + 2 * matmul and ddp["gradients"] == 8 * N  # autocast's copies; DDP's buckets
    root, block = V * C + T * C + 2 * C, 12 * C * C + 13 * C
    fsdp = memory.estimate(cfg, B, T, world_size=8, dtype="bfloat16", options=memory.Options(fsdp=True))
    assert fsdp["parameters"] == pytest.approx(4 * N / 8 + 2 * (root + 2 * block))
    assert fsdp["optimizer"] == pytest.approx(8 * N / 8)
    ac = memory.estimate(cfg, B, T, world_size=8, dtype="bfloat16", options=memory.Options(activation_checkpointing=True))
    assert ac["activations"] == B * T * L * 2 * C * 2 + B * T * 16 * C * 2
    torch_backend = memory.estimate(GPTConfig(**{**cfg.to_dict(), "backend": "torch"}), B, T, world_size=1)
    assert torch_backend["activations"] - memory.estimate(cfg, B, T, world_size=1)["activations"] == B * T * V * 8
    # GPT-NeoX 20B does not fit four 80 GB GPUs, whatever the options; the trainer says what would
    name, T, options = memory.MODELS[-1]
    neox = memory.model_config(T, options)
    lines = memory.report(neox, 8, T, 4, "bfloat16", memory.Options(), 80e9, "80 GB")
    assert "does NOT fit" in lines and "--fsdp=true --activation_checkpointing=true on 8 processes would" in lines
    gptj = memory.model_config(*memory.MODELS[-2][1:])
    assert "--fsdp=true --activation_checkpointing=true would fit" in memory.report(gptj, 8, T, 8, "bfloat16",
                                                                                    memory.Options(), 80e9, "80 GB")


def test_readme_memory_table_is_the_codes():
    r = subprocess.run([sys.executable, "-m", "tritongpt.train.memory"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    table = memory.table()
    assert table in r.stdout
    assert table in (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
