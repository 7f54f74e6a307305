"""Shared test set-up: the interpreter switch, the parity rule and its tolerances, shared data."""

import glob
import os
import sys
from pathlib import Path

# Without a GPU the Triton kernels run under the interpreter, chosen before triton is imported.
# (torch does not import triton by itself; the check below guards that assumption.)
import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1", "triton imported too early"
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from tritongpt import prep  # noqa: E402
from tritongpt.train.config import load_config  # noqa: E402
from tritongpt.train.loop import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# No network in tests: Hugging Face libraries stay offline, tiktoken reads the shared cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The offline data folder: $TRITONGPT_DATA, else ../shared/data beside the project.
_data = Path(os.environ.get("TRITONGPT_DATA", ROOT.parent / "shared" / "data"))
if (_data / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_data / "tiktoken_cache"))
HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"

# Dtypes the kernels are checked in here: the interpreter cannot do bf16 arithmetic.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_GPU else [])

# The one tolerance table of the parity rule: the `atol` term, relative to the reference's scale.
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_parity(out, out_ref, out_pt, name="output", atol=None):
    """flash-attention's parity rule.

    out:     what the kernel (or model) under test returned;
    out_ref: the reference computed in fp32 from the same low-precision inputs;
    out_pt:  the reference computed in the low precision itself.
    Passes when max|out - out_ref| <= 2 * max|out_pt - out_ref| + atol, where atol defaults to
    ATOL[out.dtype] scaled by max(1, max|out_ref|).
    """
    assert out.shape == out_ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(out_ref.shape)}"
    if atol is None:
        atol = ATOL[out.dtype] * max(1.0, out_ref.detach().float().abs().max().item() if out_ref.numel() else 1.0)
    out, out_ref, out_pt = (t.detach().float() for t in (out, out_ref, out_pt))
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    if out.numel() == 0:
        return
    err = (out - out_ref).abs().max().item()
    base = (out_pt - out_ref).abs().max().item()
    assert err <= 2 * base + atol, f"{name}: max error {err:.3e} > 2 * {base:.3e} + {atol:.3e}"


def assert_models_agree(a, b, idx, targets):
    """Model b (under test) against model a (the reference) with the same weights, in fp32: the
    logits, the loss and every parameter's gradient, by the parity rule."""
    with torch.no_grad():
        assert_parity(b(idx), a(idx), a(idx), "logits")
    la, lb = a(idx, targets), b(idx, targets)
    la.backward()
    lb.backward()
    assert_parity(lb, la, la, "loss")
    ga, gb = dict(a.named_parameters()), dict(b.named_parameters())
    for name in ga:
        assert_parity(gb[name].grad, ga[name].grad, ga[name].grad, name)


def child_processes():
    """{parent pid: [child pids]} of every process, read from /proc (empty where there is none)."""
    children = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    return children


@pytest.hookimpl(tryfirst=True)  # before -m selects: `pytest -m gpu` must see the markers added here
def pytest_collection_modifyitems(config, items):
    """The GPU tests are those marked `gpu` and every bfloat16 case (bf16 is checked only where a
    GPU is); `pytest -m gpu tests` selects them all. Without a GPU the marked ones are skipped."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and any(v is torch.bfloat16 for v in callspec.params.values()):
            item.add_marker(pytest.mark.gpu)
        if not HAS_GPU and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def shared_data():
    """Path of the offline data; skipped when absent on a user's machine, an error in CI."""
    path = _data
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data folder {path} is missing in CI")
        pytest.skip(f"offline data not found at {path} (set TRITONGPT_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- the trainer's tests' data and runs


def make_char_dataset(directory, text, block_size=16, val_fraction=0.1):
    """A char-level dataset of `text` in `directory`, written by prep itself."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    source = directory.parent / f"{directory.name}.txt"
    source.write_text(text, encoding="utf-8")
    return prep.prepare("text", out_dir=str(directory.parent), input=str(source), out_name=directory.name,
                        tokenizer="char", block_size=block_size, val_fraction=val_fraction, quiet=True)


@pytest.fixture(scope="module")
def one_thread():
    """One thread here and in every subprocess: models this small gain nothing from a second one
    (and lose a lot on a busy machine), and CPU matmuls sum in an order that depends on it, so
    runs compared bit for bit must use the same number."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    return (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def small_ds(shakespeare, tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp("data") / "small", shakespeare[:50_000])


def tiny(ds, out_dir, **overrides):
    """Arguments for a tiny fp32 CPU run: 20 steps, checkpoints at 10 and 20, dropout on so that
    the RNG state matters."""
    args = dict(dataset=ds, out_dir=out_dir, n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4,
                gradient_accumulation_steps=2, max_iters=20, lr_decay_iters=20, warmup_iters=3, learning_rate=3e-3,
                eval_interval=10, eval_iters=2, log_interval=1, dropout=0.1, device="cpu", dtype="float32",
                backend="torch", seed=7)
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.fixture(scope="module")
def straight(small_ds, tmp_path_factory):
    """20 steps that never stopped."""
    out = str(tmp_path_factory.mktemp("straight"))
    train(load_config(tiny(small_ds, out)))
    return out
