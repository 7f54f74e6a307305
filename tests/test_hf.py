"""Hugging Face GPT-2 weights in and out, beside transformers and Hugging Face's `kernels` package
(the other families: tests/test_families.py)."""

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import ROOT  # noqa: E402

from tritongpt.gpt import GPT, GPTConfig  # noqa: E402


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


ONE_PROCESS = """
import importlib.util, os, sys, tempfile
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from tritongpt import GPT
from tritongpt.kernels import attention, layer_norm, reference
root = sys.argv[1]
spec = importlib.util.find_spec("kernels")  # Hugging Face's, which transformers 5.25 on requires
assert spec is None or os.path.dirname(os.path.dirname(spec.origin)) != root, f"kernels is a folder of this checkout: {spec.origin}"
import tritongpt
assert tritongpt.__file__.startswith(root), f"tritongpt from {tritongpt.__file__}, not this checkout"
torch.manual_seed(0)
hf = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
idx = torch.randint(0, 50, (1, 8))
with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d + "/in")
    ours = GPT.from_pretrained(d + "/in").eval()
    assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-5)
    ours.save_pretrained(d + "/out")
    back = GPT2LMHeadModel.from_pretrained(d + "/out").eval()
    assert torch.allclose(back(idx).logits, hf(idx).logits, atol=1e-5)
x, w, b = torch.randn(3, 16), torch.randn(16), torch.randn(16)
assert torch.allclose(layer_norm(x, w, b), reference.layer_norm(x, w, b), atol=1e-5)
q, k, v = torch.randn(3, 1, 2, 5, 16).unbind(0)
assert torch.allclose(attention(q, k, v), reference.attention(q, k, v), atol=1e-5)
print("ok", spec.origin if spec else "no kernels package")
"""


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_transformers_and_our_ops_in_one_process(where, tmp_path):
    """transformers' GPT-2 (which imports Hugging Face's `kernels` package from 5.25 on), our ops and
    a round trip through from_pretrained and save_pretrained, in one process, run from the
    repository root and from another directory: no name of ours shadows another distribution's."""
    cwd = ROOT if where == "root" else tmp_path
    out = subprocess.run([sys.executable, "-c", ONE_PROCESS, str(ROOT)], capture_output=True, text=True, timeout=300,
                         cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")
