"""Hugging Face GPT-2 weights in and out, and the `kernels` name clash with HF's `kernels`
(the other families: tests/test_families.py)."""

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gpt import GPT, GPTConfig  # noqa: E402


def small_hf(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=101, n_positions=40, n_embd=48, n_layer=2, n_head=4, activation_function="gelu_new")
    cfg.update(kw)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    return model


@pytest.fixture
def hf_dir(tmp_path):
    model = small_hf()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


def test_load_matches_transformers(hf_dir):
    path, hf = hf_dir
    ours = GPT.from_pretrained(str(path)).eval()
    assert ours.config.vocab_size == 101 and ours.config.block_size == 40
    idx = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    assert diff < 1e-4


def test_export_loads_in_transformers(tmp_path):
    torch.manual_seed(3)
    ours = GPT(GPTConfig(block_size=24, vocab_size=128, n_layer=2, n_head=2, n_embd=32)).eval()
    ours.save_pretrained(tmp_path / "out")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 128, (3, 24))
    with torch.no_grad():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    assert diff < 1e-4
    back = GPT.from_pretrained(str(tmp_path / "out"))
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_export_without_bias(tmp_path):
    ours = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, bias=False)).eval()
    ours.save_pretrained(tmp_path / "out")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() < 1e-4


def test_overrides_and_bad_source(hf_dir, tmp_path):
    path, _ = hf_dir
    # head dim 12 (a padded tile in the attention kernels): the triton backend runs it as torch does
    tri, ref = GPT.from_pretrained(str(path), backend="triton").eval(), GPT.from_pretrained(str(path)).eval()
    idx = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        assert (tri(idx) - ref(idx)).abs().max().item() < 1e-4
    small_hf(n_embd=64).save_pretrained(tmp_path / "hd16")
    model = GPT.from_pretrained(str(tmp_path / "hd16"), dropout=0.1, backend="triton")
    assert model.config.dropout == 0.1 and model.config.backend == "triton"
    with pytest.raises(ValueError, match="override"):
        GPT.from_pretrained(str(path), n_layer=3)
    with pytest.raises(ValueError, match="neither"):
        GPT.from_pretrained(str(tmp_path / "nothing-here"))


def test_greedy_decoding_matches_transformers(hf_dir):
    path, hf = hf_dir
    ours = GPT.from_pretrained(str(path)).eval()
    idx = torch.randint(0, 101, (1, 7))
    ref = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=25, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours.generate(idx, 25, temperature=0.0), ref)
    assert torch.equal(ours.generate(idx, 25, temperature=0.0, use_cache=False), ref)


def test_hf_kernels_probe_stays_false():
    """Our package is importable as `kernels`, the import name of Hugging Face's hub-kernels
    package. transformers must not take it for that package, and its GPT-2 must still run."""
    code = (
        "import kernels, torch, transformers\n"
        "from transformers.utils import is_kernels_available\n"
        "assert kernels.layer_norm, 'not our kernels'\n"
        "assert not is_kernels_available(), 'transformers took our kernels for HF kernels'\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "m = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2))\n"
        "print(m(torch.randint(0, 50, (1, 8))).logits.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([1, 8, 50])" in out.stdout
