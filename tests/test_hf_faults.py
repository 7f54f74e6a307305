"""Broken Hugging Face directories given to --init_from, in the trainer and the sampler: each is one
line naming the file and what to do, exit status 2 and nothing written; a config.json that does not
describe its weights (a wrong model_type makes another family's model, maybe of 20 billion
parameters) is refused before anything of its size is allocated, under a memory limit of 3 GiB."""

import json
import os
import resource
import shutil
import struct
import subprocess
import sys

import pytest

import tritongpt.train.__main__ as train_command
import tritongpt.train.sample as sample_command
from conftest import ROOT, tiny
from tritongpt.gpt import GPT
from tritongpt.train.cli import run_cli
from tritongpt.train.sample import SampleConfig

FIXTURE = ROOT / "tests" / "fixtures" / "saved-0.1" / "hf"  # a 1-layer GPT-2 that transformers wrote
MEMORY_LIMIT = 3 << 30  # bytes of address space for the processes that must refuse a model before building it
TIMEOUT = 180


def hf_copy(tmp_path, name, config=None, weights=None):
    """A copy of the fixture's directory with config.json updated by `config` (a dict) and
    model.safetensors changed by weights(path)."""
    d = tmp_path / name
    shutil.copytree(FIXTURE, d)
    if config is not None:
        c = json.loads((d / "config.json").read_text())
        c.update(config)
        (d / "config.json").write_text(json.dumps(c))
    if weights is not None:
        weights(d / "model.safetensors")
    return d


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


BROKEN = [
    # (name, config.json update or its text, change to model.safetensors, words the one line must hold)
    ("empty weights", None, lambda p: p.write_bytes(b""), "model.safetensors is damaged or truncated (0 bytes"),
    ("tiny weights", None, lambda p: p.write_bytes(b"\x10\0\0"), "model.safetensors is damaged or truncated (3 bytes"),
    ("truncated weights", None, _truncate, "model.safetensors is truncated: its header lists"),
    ("no weights", None, os.remove, "no weights file (model.safetensors or pytorch_model.bin)"),
    ("n_embd disagrees", {"n_embd": 64}, None, "config.json describes a gpt2 of 55,232 parameters but"),
    ("n_layer disagrees", {"n_layer": 2}, None, "lacks transformer.h.1.attn.c_attn.bias, which the gpt2 of its config.json has"),
    ("wrong type", {"n_embd": "wide"}, None, "transformers cannot read its config.json as a gpt2 config"),
    ("config a list", "[1, 2]", None, "config.json holds a JSON list, not the object of a model's config"),
    ("config not JSON", "{n_embd: 32", None, "config.json is not JSON (Expecting property name"),
]


def broken_dir(tmp_path, name, config, weights):
    d = hf_copy(tmp_path, "hf", config if isinstance(config, dict) else None, weights)
    if isinstance(config, str):
        (d / "config.json").write_text(config)
    return d


@pytest.mark.parametrize("name,config,weights,words", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_directory_is_one_line_in_train_and_sample(name, config, weights, words, small_ds, tmp_path, capsys):
    d = broken_dir(tmp_path, name, config, weights)
    before = sorted(os.listdir(d))
    with pytest.raises(ValueError, match="config.json|weights|model.safetensors"):
        GPT.from_pretrained(str(d))  # the API's promise: a ValueError
    out = tmp_path / "out"
    for main, argv, doc, cls in (
        (train_command.main, tiny(small_ds, str(out), init_from=str(d)), train_command.__doc__, None),
        (sample_command.main, [f"--init_from={d}", "--max_new_tokens=2", "--num_samples=1"], sample_command.__doc__,
         SampleConfig),
    ):
        with pytest.raises(SystemExit) as e:
            run_cli(main, argv, doc, *([cls] if cls else []))
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        err = [line for line in err if not line.startswith("[transformers]")]  # its own warnings about config.json
        assert len(err) == 1 and err[0].startswith(f"error: config key 'init_from': {d}") and words in err[0], err
        if "file" in words or "not JSON" in words:
            assert str(d) in err[0]
    assert not out.exists() and sorted(os.listdir(d)) == before  # nothing written, nothing changed


# ----------------------------------------------------------------------------- under a memory limit


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(args):
    """python ARGS with at most MEMORY_LIMIT bytes of address space and one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=TIMEOUT,
                          preexec_fn=_limited)


def _one_line(r):
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("[transformers]")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def test_a_wrong_model_type_is_refused_before_it_is_built(small_ds, tmp_path):
    """GPT-2's config.json marked gpt_neox: transformers' GPT-NeoX defaults would fill in a
    20-billion-parameter model (80 GB in fp32); the weights hold 15 thousand. Refused in one line,
    in a process that may not take 3 GiB."""
    d = hf_copy(tmp_path, "hf", {"model_type": "gpt_neox"})
    out = tmp_path / "out"
    line = _one_line(run_limited(["-m", "tritongpt.train", *tiny(small_ds, str(out), init_from=str(d))]))
    assert line.startswith(f"error: config key 'init_from': {d}: its config.json describes a gpt_neox of ")
    assert "the config does not describe these weights (is model_type 'gpt_neox' right?)" in line
    line = _one_line(run_limited(["-m", "tritongpt.train.sample", f"--init_from={d}", "--max_new_tokens=2"]))
    assert "is model_type 'gpt_neox' right?" in line
    assert not out.exists()


def _gpt2_header_only(directory, n_layer, n_head, n_embd, vocab=50257, positions=1024):
    """A GPT-2 directory whose model.safetensors has a full header and no data written (a sparse
    file of the right size): every check of shapes passes, and nothing but the memory refuses it."""
    C = n_embd
    shapes = {"transformer.wte.weight": [vocab, C], "transformer.wpe.weight": [positions, C],
              "transformer.ln_f.weight": [C], "transformer.ln_f.bias": [C]}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": [C], p + "ln_1.bias": [C], p + "ln_2.weight": [C], p + "ln_2.bias": [C],
                       p + "attn.c_attn.weight": [C, 3 * C], p + "attn.c_attn.bias": [3 * C],
                       p + "attn.c_proj.weight": [C, C], p + "attn.c_proj.bias": [C],
                       p + "mlp.c_fc.weight": [C, 4 * C], p + "mlp.c_fc.bias": [4 * C],
                       p + "mlp.c_proj.weight": [4 * C, C], p + "mlp.c_proj.bias": [C]})
    header, at = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + n]}
        at += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    os.makedirs(directory)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + at)
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab, n_positions=positions)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def test_a_model_larger_than_the_free_memory_is_refused_before_it_is_built(small_ds, tmp_path):
    """GPT-2 XL's shapes (1.56B parameters: two fp32 copies and the mapped file, about 18 GiB) in a
    process that may take 3 GiB: refused in one line that says how much it needs."""
    d = tmp_path / "xl"
    _gpt2_header_only(d, n_layer=48, n_head=25, n_embd=1600)
    line = _one_line(run_limited(["-m", "tritongpt.train", *tiny(small_ds, str(tmp_path / "out"), init_from=str(d))]))
    assert line.startswith(f"error: config key 'init_from': {d}: loading its 1.56B-parameter 48-layer model needs about ")
    assert "the address-space limit (ulimit -v) leaves this process; load it on a machine with more memory" in line
