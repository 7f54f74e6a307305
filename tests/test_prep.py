"""prep: text -> train.bin / val.bin / meta.json, and back again through prep.load."""

import gzip
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import child_processes

from tritongpt import prep
from tritongpt.prep import pipeline
from tritongpt.prep import sources
from tritongpt.prep.errors import DatasetError


@pytest.fixture(scope="module")
def shakespeare(shared_data, tmp_path_factory):
    """The first 200 kB of tiny Shakespeare, as a file of its own."""
    path = tmp_path_factory.mktemp("text") / "shakespeare.txt"
    path.write_bytes((shared_data / "tinyshakespeare.txt").read_bytes()[:200_000])
    return path


@pytest.fixture(scope="module")
def gpt2(shared_data):
    import tiktoken

    return tiktoken.get_encoding("gpt2")


def files_of(folder):
    """{name: bytes} of every file in folder, to show that nothing changed."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def ids_of(ds):
    return np.concatenate([ds.train, ds.val]).tolist()


# ----------------------------------------------------------------------------- pieces and cuts


def test_safe_cuts_give_the_ids_of_the_whole_text(gpt2):
    # Awkward text: runs of spaces, tabs and newlines, contractions, digits, punctuation, non-ASCII.
    rng = random.Random(0)
    atoms = ["a", "Zb", "'s", "'ll", "7", "42", ".", "!?", " ", "  ", "\n", "\n\n", "\t", " \n", "\r\n", "\x0c", "é", "日本",
             "\u00a0", "-", "。", "Слово", "’", "\u3000", "\u2028", "\u0085", "\u2003", "١٢", "🙂"]
    text = "".join(rng.choice(atoms) for _ in range(20_000))
    data = text.encode()
    cuts = [m.start() for m in sources.SAFE_CUT.finditer(data)]
    assert len(cuts) > 100
    bounds = [0] + cuts + [len(data)]
    pieces = [data[a:b].decode() for a, b in zip(bounds, bounds[1:], strict=False)]
    ids = [i for piece in pieces for i in gpt2.encode_ordinary(piece)]
    assert ids == gpt2.encode_ordinary(text)


def test_read_pieces_covers_the_file_in_bounded_pieces(tmp_path):
    text = "".join(f"line {i}: sôme wörds here\n" for i in range(3000))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    size = path.stat().st_size
    pieces = list(sources.read_pieces(str(path), 0, size, 1000))
    assert "".join(p for p, _ in pieces) == text
    assert sum(n for _, n in pieces) == size
    assert len(pieces) > 50 and max(n for _, n in pieces) < 2000
    cut = sources.first_cut(str(path), size // 2)
    assert cut >= size // 2 and path.read_bytes()[cut : cut + 1].isspace()


def _scripts():
    """Texts with no ASCII whitespace after an ASCII character: Chinese with 。 line ends, Russian,
    and Chinese with no whitespace at all."""
    rng = random.Random(1)
    han = "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜"
    chinese = "".join("".join(rng.choice(han) for _ in range(rng.randint(5, 12))) + rng.choice("，。") +
                      ("\n" if rng.random() < 0.3 else "") for _ in range(3000))
    words = ["мир", "слово", "Москва", "книга", "читать", "весна", "ещё", "дом", "—"]
    russian = "".join(rng.choice(words) + rng.choice([" ", " ", " — ", "\n"]) for _ in range(6000))
    solid = "".join(rng.choice(han) for _ in range(20000))
    return {"chinese": chinese, "russian": russian, "no whitespace": solid}


@pytest.mark.parametrize("script", ["chinese", "russian", "no whitespace"])
@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_any_utf8_text_prepares(script, tokenizer, gpt2, tmp_path, monkeypatch):
    """Every split gets its share, and each split's ids are those of its text encoded whole."""
    monkeypatch.setattr(pipeline, "PIECE_BYTES", 8_000)
    text = _scripts()[script]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    ds = prep.load(prep.prepare("text", out_dir=tmp_path, input=str(tmp_path / "t.txt"), out_name="t",
                                tokenizer=tokenizer, block_size=8, num_proc=2, quiet=True))
    train, val = ds.decode(ds.train), ds.decode(ds.val)
    assert train + val == text and 0.08 < len(val.encode()) / len(text.encode()) < 0.12
    if tokenizer == "gpt2":
        assert ds.train.tolist() == gpt2.encode_ordinary(train) and ds.val.tolist() == gpt2.encode_ordinary(val)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("recipe,tokenizer", [("shakespeare_char", "char"), ("shakespeare", "gpt2")])
def test_round_trip_and_meta(recipe, tokenizer, shakespeare, gpt2, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "PIECE_BYTES", 16_000)  # many pieces, two processes for gpt2
    path = prep.prepare(recipe, out_dir=tmp_path, input=str(shakespeare), num_proc=2, quiet=True)
    assert path == os.path.join(tmp_path, recipe)
    ds = prep.load(path)
    text = shakespeare.read_text()
    assert ds.decode(ds.train) + ds.decode(ds.val) == text
    assert ids_of(ds) == (gpt2.encode_ordinary(text) if tokenizer == "gpt2" else ds.encode(text))
    meta = json.loads((tmp_path / recipe / "meta.json").read_text())
    assert meta["tokenizer"] == tokenizer and meta["dtype"] == "uint16" and meta["text_bytes"] == len(text)
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(ds.train), len(ds.val))
    assert os.path.getsize(tmp_path / recipe / "train.bin") == 2 * meta["train_tokens"]
    assert 0.08 < len(ds.decode(ds.val)) / len(text) < 0.12
    assert max(ds.train.max(), ds.val.max()) < ds.vocab_size
    if tokenizer == "char":
        assert meta["chars"] == sorted(set(text)) and ds.vocab_size == len(meta["chars"])
    else:
        assert ds.vocab_size == 50257
    assert not list((tmp_path / recipe).glob("*.tmp-*"))


def test_cli_shakespeare_char_matches_encoding_by_hand(shakespeare, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "tritongpt.prep", "shakespeare_char", "--input", str(shakespeare), "--out_dir", "d"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "MB/s" in r.stderr and "tokens/s" in r.stderr
    ds = prep.load(tmp_path / "d" / "shakespeare_char")
    text = shakespeare.read_text()
    chars = sorted(set(text))
    assert ids_of(ds) == [chars.index(ch) for ch in text]


def test_text_glob_puts_end_of_text_between_files(tmp_path, shakespeare, gpt2):
    text = shakespeare.read_text()
    parts = [text[:60_000], text[60_000:130_000], text[130_000:]]
    for i, part in enumerate(parts):
        (tmp_path / f"part{i}.txt").write_text(part)
    (tmp_path / "empty.txt").write_text("")  # empty files in a glob are skipped
    pattern = str(tmp_path / "*.txt")
    ds = prep.load(prep.prepare("text", out_dir=tmp_path / "d", input=pattern, out_name="g", quiet=True))
    assert ds.decode(ds.train) + ds.decode(ds.val) == "<|endoftext|>".join(parts)
    assert ids_of(ds).count(gpt2.eot_token) == 2
    ds = prep.load(prep.prepare("text", out_dir=tmp_path / "d", input=pattern, out_name="c", tokenizer="char", quiet=True))
    assert ds.decode(ds.train) + ds.decode(ds.val) == "".join(parts)


def test_large_vocabulary_takes_uint32_and_refuses_uint16(tmp_path):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20000, 0x20000 + 70_000)]
    rng.shuffle(alphabet)
    text = "".join("".join(alphabet[i : i + 100]) + " a b\n" for i in range(0, len(alphabet), 100))
    (tmp_path / "wide.txt").write_text(text)
    kw = dict(out_dir=tmp_path / "d", input=str(tmp_path / "wide.txt"), out_name="wide", tokenizer="char", block_size=64)
    with pytest.raises(DatasetError, match="does not fit in uint16.*--dtype uint32"):
        prep.prepare("text", dtype="uint16", quiet=True, **kw)
    assert not (tmp_path / "d" / "wide").exists()  # nothing left behind
    ds = prep.load(prep.prepare("text", quiet=True, **kw))
    assert ds.meta["dtype"] == "uint32" and ds.vocab_size == 70_000 + 4
    assert ds.decode(ds.train) + ds.decode(ds.val) == text


# ----------------------------------------------------------------------------- web corpora


@pytest.fixture
def documents(shakespeare, tmp_path):
    """A local json lines file of documents (Shakespeare's speeches) standing in for the hub."""
    docs = [d.strip() + "\n" for d in shakespeare.read_text().split("\n\n") if d.strip()][:400]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return docs, path


def test_web_path_with_two_workers_gives_the_single_process_ids(documents, tmp_path, monkeypatch):
    docs, path = documents
    monkeypatch.setattr(pipeline, "PIECE_BYTES", 4_000)  # many batches
    kw = dict(out_dir=tmp_path, input=str(path), val_docs=40, block_size=64, quiet=True)
    one = prep.load(prep.prepare("openwebtext", out_name="one", num_proc=1, **kw))
    two = prep.load(prep.prepare("openwebtext", out_name="two", num_proc=2, **kw))
    assert ids_of(one) == ids_of(two)
    assert (one.meta["train_docs"], one.meta["val_docs"]) == (len(docs) - 40, 40)
    val_docs = one.decode(one.val).split("<|endoftext|>")
    train_docs = one.decode(one.train).split("<|endoftext|>")
    assert val_docs[-1] == train_docs[-1] == ""  # every document ends with the end-of-text token
    assert sorted(val_docs[:-1] + train_docs[:-1]) == sorted(docs)
    assert val_docs[:-1] + train_docs[:-1] != docs  # shuffled, with the seed
    limited = prep.load(prep.prepare("fineweb_edu", out_name="lim", limit=100, **kw))
    assert limited.meta["train_docs"] + limited.meta["val_docs"] == 100


# ----------------------------------------------------------------------------- bad input


def run_prep(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tritongpt.prep", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_one_line_error(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("prep: error: "), r.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture
def existing(shakespeare, tmp_path):
    """A prepared char-level dataset and a snapshot of its files."""
    prep.prepare("text", out_dir=tmp_path / "data", input=str(shakespeare), out_name="old", tokenizer="char", quiet=True)
    folder = tmp_path / "data" / "old"
    return folder, files_of(folder)


def test_existing_output_is_refused_without_force(existing, shakespeare, tmp_path):
    folder, before = existing
    r = run_prep("text", "--input", str(shakespeare), "--name", "old", "--out_dir", "data", cwd=tmp_path)
    assert_one_line_error(r, "already holds a dataset", "--force")
    assert files_of(folder) == before


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"caf\xe9 au lait, " * 500, "is not UTF-8 text (byte 0xe9 at offset 3)"),
        (b"Too short to train on.\n" * 5, "less than one training block"),
    ],
)
def test_bad_input_is_one_line_and_damages_nothing(content, message, existing, tmp_path):
    folder, before = existing
    bad = tmp_path / "bad.txt"
    if content is not None:
        bad.write_bytes(content)
    with pytest.raises(DatasetError, match="; ") as e:  # says what to do after the semicolon
        prep.prepare("text", out_dir=tmp_path / "data", input=str(bad), out_name="old", tokenizer="char", force=True, quiet=True)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert files_of(folder) == before  # the old dataset, and no temporary files


@pytest.mark.parametrize("content", [b"", b"caf\xe9 au lait, " * 500, b"Too short to train on.\n" * 5],
                         ids=["empty", "not UTF-8", "too short"])
def test_bad_text_ends_with_a_command_that_fixes_it(content, shakespeare, tmp_path):
    """The command at the end prepares other text in its place (YOUR_TEXT filled in), or the same
    text with a block that fits it; either way the dataset is there afterwards."""
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(DatasetError) as e:
        prep.prepare("text", out_dir=tmp_path / "data", input=str(bad), out_name="notes", tokenizer="char", quiet=True)
    assert "python -m tritongpt.prep text " in str(e.value) and "\n" not in str(e.value)
    _run_hint(str(e.value), tmp_path, YOUR_TEXT=shakespeare)
    assert prep.load(tmp_path / "data" / "notes").tokenizer == "char"


def test_a_failed_run_leaves_no_folders_behind(tmp_path):
    (tmp_path / "short.txt").write_text("Too short to train on.\n" * 5)
    with pytest.raises(DatasetError, match="less than one training block"):
        prep.prepare("text", out_dir=tmp_path / "new" / "data", input=str(tmp_path / "short.txt"), out_name="x", quiet=True)
    assert not (tmp_path / "new").exists()


def test_cli_bad_input_exit_codes(tmp_path):
    r = run_prep("text", "--input", "missing.txt", "--name", "x", cwd=tmp_path)
    assert_one_line_error(r, "missing.txt does not exist")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = run_prep("shakespeare", "--val_fraction", "1.5", cwd=tmp_path)
    assert_one_line_error(r, "--val_fraction 1.5 must lie between 0 and 1")
    r = run_prep("shakespeare", "--bogus", cwd=tmp_path)
    assert_one_line_error(r, "unrecognized arguments: --bogus")
    assert r.returncode == 2
    assert not (tmp_path / "data").exists()


def _proc_state(pid):
    """The state letter of a process in /proc (Z: a zombie, dead), or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _children(parent):
    return child_processes().get(parent, [])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_prep_leaves_no_worker_behind(shared_data, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):  # 84 MB of text, so that the workers are still busy when prep dies
        os.symlink(shared_data / "linux_docs.txt", corpus / f"{i}.txt")
    proc = subprocess.Popen([sys.executable, "-m", "tritongpt.prep", "text", "--input", str(corpus / "*.txt"), "--name", "x",
                             "--tokenizer", "gpt2", "--num_proc", "2", "--out_dir", str(tmp_path / "data"), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "prep started no tokenizer processes"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in workers if _proc_state(p) not in (None, "Z")]
        assert not alive, f"tokenizer processes {alive} outlived prep"
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_cli_reports_ctrl_c_and_system_errors_in_one_line(monkeypatch, capsys, tmp_path):
    import tritongpt.prep.__main__ as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "prepare", interrupted)
    assert cli.main(["shakespeare_char"]) == 130
    assert capsys.readouterr().err.startswith("prep: error: interrupted; the partial files were removed")
    monkeypatch.undo()
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "t.txt").write_text("some text\n" * 100)
    args = ["text", "--input", str(tmp_path / "t.txt"), "--name", "x", "--out_dir", str(tmp_path / "a_file")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("prep: error: [Errno") and err.count("\n") == 1


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(limit=10), "--val_docs and --limit apply to openwebtext and fineweb_edu"),
        (dict(tokenizer="gpt2"), "shakespeare_char uses the char tokenizer"),
        (dict(out_name="../elsewhere"), "must be a plain folder name"),
        (dict(block_size=0), "--block_size 0 must be a whole number"),
    ],
)
def test_bad_options(kw, message, tmp_path):
    with pytest.raises(DatasetError, match=message):
        prep.prepare("shakespeare_char", out_dir=tmp_path, quiet=True, **kw)
    with pytest.raises(DatasetError, match="use --val_docs N"):
        prep.prepare("fineweb_edu", out_dir=tmp_path, val_fraction=0.1, quiet=True)
    assert not list(tmp_path.iterdir())


def test_interrupted_run_keeps_the_old_dataset(existing, shakespeare, tmp_path, monkeypatch):
    folder, before = existing
    calls = []

    def interrupt(self, segments, dtype):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros(10, dtype)

    monkeypatch.setattr(pipeline, "PIECE_BYTES", 10_000)
    monkeypatch.setattr(prep.tokenizer.CharTokenizer, "encode_segments", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("text", out_dir=tmp_path / "data", input=str(shakespeare), out_name="old", tokenizer="char", force=True, quiet=True)
    assert files_of(folder) == before


def test_leftovers_of_a_killed_run(shakespeare, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names the temporary files of a run that no longer exists
    folder = tmp_path / "data" / "x"
    folder.mkdir(parents=True)
    (folder / f"train.bin.tmp-{dead.pid}").write_bytes(b"\0" * 100)
    with pytest.raises(DatasetError, match="partial files of an interrupted run; prepare it again: python -m tritongpt.prep text"):
        prep.load(folder)
    prep.prepare("text", out_dir=tmp_path / "data", input=str(shakespeare), out_name="x", tokenizer="char")
    assert "left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert len(prep.load(folder).val) > 0


def test_reader_rejects_a_damaged_dataset(existing):
    folder, _ = existing
    with open(folder / "val.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DatasetError, match="holds 500 tokens but meta.json says"):
        _ = prep.load(folder).val


# ----------------------------------------------------------------------------- tiny Shakespeare's download


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_is_checked_and_cached(shared_data, tmp_path, monkeypatch):
    data = (shared_data / "tinyshakespeare.txt").read_bytes()
    fetched = []
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: fetched.append(url) or _Response(data))
    ds = prep.load(prep.prepare("shakespeare_char", out_dir=tmp_path, quiet=True))
    assert fetched == [sources.SHAKESPEARE_URL] and ds.meta["source"].startswith("tiny Shakespeare")
    assert (tmp_path / "downloads" / "tinyshakespeare.txt").read_bytes() == data
    assert len(ds.train) + len(ds.val) == len(data) and ds.vocab_size == 65
    prep.prepare("shakespeare_char", out_dir=tmp_path, out_name="again", quiet=True)
    assert len(fetched) == 1  # the cached copy, not a second download


def _no_download(monkeypatch, failure):
    if failure == "unreachable":
        monkeypatch.setattr(sources, "SHAKESPEARE_URL", "http://127.0.0.1:0/input.txt")  # nothing can listen there
    else:
        monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: _Response(b"<html>login</html>"))


@pytest.mark.parametrize("failure", ["unreachable", "wrong content"])
def test_offline_uses_the_shipped_copy_and_says_so_in_one_line(failure, shared_data, tmp_path, monkeypatch, capsys):
    _no_download(monkeypatch, failure)
    ds = prep.load(prep.prepare("shakespeare_char", out_dir=tmp_path))
    said = [line for line in capsys.readouterr().err.splitlines() if "could not download" in line]
    assert len(said) == 1 and "the copy that ships with tritongpt" in said[0], said
    assert "ships with tritongpt" in ds.meta["source"]
    text = (shared_data / "tinyshakespeare.txt").read_text()
    assert ds.decode(ds.train) + ds.decode(ds.val) == text and ds.vocab_size == 65
    assert (tmp_path / "downloads" / "tinyshakespeare.txt").read_text() == text


@pytest.mark.parametrize("damage", ["missing", "not tiny Shakespeare"])
def test_offline_without_a_usable_shipped_copy_names_a_command_that_works(damage, tmp_path, monkeypatch):
    _no_download(monkeypatch, "unreachable")
    shipped = tmp_path / "shipped.txt.gz"
    if damage != "missing":
        shipped.write_bytes(gzip.compress(b"To be or not to be"))
    monkeypatch.setattr(sources, "SHIPPED_SHAKESPEARE", str(shipped))
    with pytest.raises(DatasetError, match=r"python -m tritongpt.prep shakespeare_char --out_dir \S+ --input PATH$") as e:
        prep.prepare("shakespeare_char", out_dir=tmp_path / "data")
    assert "\n" not in str(e.value) and not (tmp_path / "data" / "shakespeare_char").exists()


def _run_hint(message, cwd, **fill):
    """Run the command a one-line message ends with, its placeholders filled in."""
    command = "python -m tritongpt.prep" + message.rsplit("python -m tritongpt.prep", 1)[1]
    for placeholder, value in fill.items():
        command = command.replace(placeholder, str(value))
    argv = [sys.executable, *shlex.split(command)[1:]]
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (command, r.stderr)


def test_hints_are_commands_that_work(shared_data, shakespeare, tmp_path, monkeypatch):
    """Each hint ends with a command that does what it says, once its placeholder is filled in."""
    # the main command's: no download, no usable shipped copy
    _no_download(monkeypatch, "unreachable")
    monkeypatch.setattr(sources, "SHIPPED_SHAKESPEARE", str(tmp_path / "missing.gz"))
    with pytest.raises(DatasetError) as e:
        prep.prepare("shakespeare_char", out_dir=tmp_path / "data")
    _run_hint(str(e.value), tmp_path, PATH=shared_data / "tinyshakespeare.txt")
    assert prep.load(tmp_path / "data" / "shakespeare_char").vocab_size == 65
    # a dataset that was never prepared, then one whose bins were damaged, then one in the way
    folder = tmp_path / "sets" / "notes"
    with pytest.raises(DatasetError, match="is not a prepared dataset") as e:
        prep.load(folder)
    _run_hint(str(e.value), tmp_path, YOUR_TEXT=shakespeare)
    with open(folder / "val.bin", "r+b") as f:
        f.truncate(1001)
    with pytest.raises(DatasetError, match="truncated") as e:
        _ = prep.load(folder).val
    _run_hint(str(e.value), tmp_path, YOUR_TEXT=shakespeare)
    assert len(prep.load(folder).val) > 0
    with pytest.raises(DatasetError, match="already holds a dataset") as e:
        prep.prepare("text", out_dir=tmp_path / "sets", input=str(shakespeare), out_name="notes", tokenizer="char")
    _run_hint(str(e.value), tmp_path)
    assert prep.load(folder).tokenizer == "char"


def _can_build_wheels_offline():
    """Whether this environment's setuptools builds a wheel with no build isolation: bdist_wheel is
    part of setuptools from 70.1 on, before that it came from the wheel package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(n) for n in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    if (major, minor) >= (70, 1):
        return True
    try:
        version("wheel")
        return True
    except PackageNotFoundError:
        return False


def test_the_shipped_copy_is_in_the_wheel(tmp_path):
    """pip install of a wheel (not -e) carries tiny Shakespeare as package data."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    if not _can_build_wheels_offline():
        pytest.skip("building a wheel without a network needs setuptools >= 70.1 or the wheel package")
    src = tmp_path / "src"
    for name in tracked.stdout.splitlines():  # a clean copy: the build writes build/ and *.egg-info
        if (root / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("tritongpt-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "tritongpt/prep/corpora/tinyshakespeare.txt.gz" in names
        data = gzip.decompress(z.read("tritongpt/prep/corpora/tinyshakespeare.txt.gz"))
    assert hashlib.sha256(data).hexdigest() == sources.SHAKESPEARE_SHA256
