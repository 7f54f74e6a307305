"""What users saved with an earlier version still loads: a prepared dataset, single-file and
sharded checkpoints and a converted Hugging Face directory, written by tritongpt 0.1 (top-level
packages `train`, `prep`, `gpt`, ...; see tests/fixtures/saved-0.1/README.md for how)."""

import shutil

import pytest
import torch

from conftest import ROOT
from test_train import assert_same_weights, torchrun
from tritongpt import prep
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.train import checkpoint
from tritongpt.train.config import load_config
from tritongpt.train.loop import train
from tritongpt.train.sample import SampleConfig, sample

pytestmark = pytest.mark.usefixtures("one_thread")

SAVED = ROOT / "tests" / "fixtures" / "saved-0.1"
# The arguments the fixture's runs were made with (its README), paths relative to the run's folder.
ARGS = dict(dataset="data", n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, gradient_accumulation_steps=2,
            max_iters=6, lr_decay_iters=12, warmup_iters=2, learning_rate=3e-3, eval_interval=3, eval_iters=2,
            log_interval=1, dropout=0.1, device="cpu", dtype="float32", backend="torch", seed=7, keep_last=2)


def args(**overrides):
    return [f"--{k}={v}" for k, v in dict(ARGS, **overrides).items()]


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A copy of the fixture folder as the working directory, without the step-6 checkpoint that
    resuming from step 3 must reproduce."""
    shutil.copytree(SAVED, tmp_path, dirs_exist_ok=True)
    (tmp_path / "single" / "ckpt_00000006.pt").unlink()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dataset_loads():
    ds = prep.load(str(SAVED / "data"))
    assert ds.vocab_size > 0 and len(ds.train) > 0 and len(ds.val) > 0
    assert ds.decode(ds.encode("ROMEO")) == "ROMEO"


def test_single_file_checkpoint_resumes_bit_exact(saved):
    train(load_config(args(out_dir="single", init_from="resume")))
    resumed, straight = checkpoint.read(str(saved / "single" / "ckpt_00000006.pt")), checkpoint.read(
        str(SAVED / "single" / "ckpt_00000006.pt"))
    assert_same_weights(resumed["model"], straight["model"])
    a, b = resumed["optimizer"]["state"], straight["optimizer"]["state"]
    assert a.keys() == b.keys()
    for k in a:
        assert_same_weights(a[k], b[k])


def test_sharded_checkpoint_loads_and_resumes(saved):
    """The sharded step 3 holds the same weights as the single-file run's step 3 (the same run on
    one process), reads in this process, and resumes under FSDP to the single-file run's step 6."""
    sharded, single = checkpoint.read(str(saved / "sharded" / "ckpt_00000003")), checkpoint.read(
        str(SAVED / "single" / "ckpt_00000003.pt"))
    model = GPT(GPTConfig(**sharded["model_args"]))
    checkpoint.load_weights(sharded, model)
    assert_same_weights(model.state_dict(), single["model"])
    r = torchrun(args(out_dir="sharded", init_from="resume", fsdp="true"))  # in the working directory, `saved`
    assert r.returncode == 0, r.stderr[-3000:]
    model = GPT(GPTConfig(**sharded["model_args"]))
    checkpoint.load_weights(checkpoint.read(str(saved / "sharded" / "ckpt_00000006")), model)
    straight = checkpoint.read(str(SAVED / "single" / "ckpt_00000006.pt"))["model"]
    for k, v in model.state_dict().items():
        assert torch.allclose(v, straight[k], rtol=0, atol=1e-6), k


def test_hugging_face_directory_loads(saved):
    model = GPT.from_pretrained(str(saved / "hf"))
    step6 = checkpoint.read(str(SAVED / "single" / "ckpt_00000006.pt"))["model"]
    state = model.state_dict()
    for k, v in step6.items():
        assert torch.equal(state[k][: v.shape[0]] if v.shape != state[k].shape else state[k], v), k


def test_sampling_from_a_saved_run(saved):
    text = sample(SampleConfig(out_dir="single", num_samples=1, max_new_tokens=20, start="RO", device="cpu"))[0]
    assert text.startswith("RO") and len(text) == 22
