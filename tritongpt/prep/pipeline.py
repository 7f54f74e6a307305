"""prep.prepare(): turn a corpus into OUT_DIR/NAME/{train.bin, val.bin, meta.json}.

    prep.prepare("shakespeare_char")                      # -> "data/shakespeare_char"
    prep.prepare("shakespeare", input="tinyshakespeare.txt")
    prep.prepare("fineweb_edu", limit=10_000)
    prep.prepare("text", input="notes/*.md", out_name="notes", tokenizer="gpt2")

The bins are written under temporary names and renamed at the end, meta.json last: a dataset
whose meta.json is there is complete, and an old dataset (replaced with force=True) stays whole
until the new one is.
"""

import collections
import concurrent.futures
import glob
import json
import os
import shlex
import signal
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from tritongpt.prep import sources
from tritongpt.prep.errors import DatasetError, TextError
from tritongpt.prep.tokenizer import CharTokenizer, GPT2Tokenizer

RECIPES = ("shakespeare_char", "shakespeare", "openwebtext", "fineweb_edu", "text")
WEB = ("openwebtext", "fineweb_edu")
PIECE_BYTES = 1 << 20  # text handed to one worker at a time
VAL_DOCS = 4000  # web corpora: documents held out for validation (at most a tenth of --limit)


def default_num_proc():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(
    name,
    out_dir="data",
    input=None,
    force=False,
    *,
    out_name=None,
    tokenizer=None,
    val_fraction=None,
    val_docs=None,
    seed=1337,
    limit=None,
    num_proc=None,
    block_size=1024,
    dtype="auto",
    quiet=False,
):
    """Prepare dataset `name` (one of RECIPES) in out_dir/out_name and return that folder.

    input:        a local file or glob instead of the download (required for "text")
    force:        replace an existing dataset (the old one stays until the new one is complete)
    out_name:     the dataset's folder name (default: name; required for "text")
    tokenizer:    "char" or "gpt2" (for "text"; default "gpt2")
    val_fraction: the share of the text held out for validation (default 0.1; not for web corpora)
    val_docs:     web corpora: documents held out for validation (default 4000, at most limit / 10)
    seed:         web corpora: the seed of the shuffled document order
    limit:        web corpora: take only `limit` documents (the first of the shuffled stream)
    num_proc:     processes that tokenize (default: all cores)
    block_size:   the training block: each split must hold at least block_size + 1 tokens
    dtype:        "auto" (uint16 when the vocabulary fits, else uint32), "uint16" or "uint32"
    Raises DatasetError, with a one-line message that says what to do, on bad input.
    """
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    options = _check_options(name, input, out_name, tokenizer, val_fraction, val_docs, limit, num_proc, block_size, dtype)
    out_name, tokenizer, val_fraction, val_docs, num_proc = options
    dest = os.path.join(out_dir, out_name)
    other_text = _TextHint(_command(name, out_dir, "YOUR_TEXT", out_name, tokenizer, block_size))
    existing = [f for f in ("train.bin", "val.bin", "meta.json") if os.path.exists(os.path.join(dest, f))]
    if existing and not force:
        raise DatasetError(
            f"{dest} already holds a dataset ({', '.join(existing)}); replace it with --force "
            f"(the old files stay until the new ones are complete): {_command(name, out_dir, input, out_name, tokenizer)}"
        )
    _remove_leftovers(dest, say)

    # Where the text comes from, cut into jobs: (split, segments, nbytes), segments being strings
    # or None for an end-of-text token.
    extra = {}  # what meta.json says besides the keys every dataset has
    if name in WEB:
        tok = GPT2Tokenizer()
        documents, source = sources.web_documents(name, input, seed, limit)
        jobs, total_bytes, counts = _web_jobs(documents, val_docs), None, collections.Counter()
        jobs = _counting(jobs, counts)
        extra.update(seed=seed, limit=limit)
    else:
        if name == "text":
            source = f"local text {input}"
        elif input:
            source = f"tiny Shakespeare (local copy {os.path.basename(input)})"
        else:
            input, source = sources.shakespeare(out_dir, say)  # noqa: A001 - the keyword users pass
        with other_text:
            files = sources.find_files(input)
            ranges = sources.split_files(files, val_fraction)
            total_bytes = sum(size for _, size in files)
            if tokenizer == "char":
                chars = set()
                for _, segments, _ in _text_jobs(ranges, False):
                    chars.update(segments[0])
                tok = CharTokenizer(sorted(chars))
            else:
                tok = GPT2Tokenizer()
        jobs = _text_jobs(ranges, tok.eot is not None)
        if len(files) > 1:
            source += f" ({len(files)} files)"
        extra.update(val_fraction=val_fraction)
    dtype = _choose_dtype(tok.vocab_size, dtype)
    if tok.name == "char":
        num_proc = 1  # numpy encodes characters faster than processes could be started
    elif total_bytes is not None:
        num_proc = max(1, min(num_proc, total_bytes // PIECE_BYTES))

    out = _Output(dest, dtype)
    try:
        start = time.perf_counter()
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenizing {out_name}", disable=quiet) as bar:
            with other_text:
                n_bytes = _tokenize(jobs, tok, dtype, num_proc, out, bar)
        seconds = time.perf_counter() - start
        for split in ("train", "val"):
            if out.tokens[split] < block_size + 1:
                fits = min(out.tokens.values()) - 1  # the longest block both splits hold
                fix = _command(name, out_dir, input, out_name, tokenizer, fits) if fits >= 1 else other_text.command
                raise DatasetError(f"{_too_short(split, out.tokens[split], block_size, name in WEB)}: {fix}")
        meta = dict(
            name=out_name, tokenizer=tok.name, vocab_size=tok.vocab_size, dtype=dtype,
            train_tokens=out.tokens["train"], val_tokens=out.tokens["val"], source=source, text_bytes=n_bytes,
        )
        meta.update(extra)
        if name in WEB:
            meta.update(train_docs=counts["train"], val_docs=counts["val"])
        if tok.eot is not None:
            meta["eot_token"] = tok.eot
        if tok.name == "char":
            meta["chars"] = tok.chars
        out.commit(meta)
    except BaseException:
        out.discard()
        raise
    tokens = out.tokens["train"] + out.tokens["val"]
    say(
        f"prep: wrote {dest}: {out.tokens['train']:,} train + {out.tokens['val']:,} val tokens "
        f"({tok.name}, vocab {tok.vocab_size:,}, {dtype}) from {source}"
    )
    say(
        f"prep: tokenized {n_bytes / 1e6:.1f} MB in {seconds:.2f} s: {n_bytes / 1e6 / seconds:.2f} MB/s, "
        f"{tokens / seconds / 1e6:.2f} M tokens/s ({num_proc} process{'es' if num_proc > 1 else ''})"
    )
    return dest


# ----------------------------------------------------------------------------- options


def _check_options(name, input, out_name, tokenizer, val_fraction, val_docs, limit, num_proc, block_size, dtype):
    if name not in RECIPES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(RECIPES)}")
    web = name in WEB
    if name == "text":
        if not input:
            raise DatasetError("text needs --input PATH_OR_GLOB, the text to prepare")
        if not out_name:
            raise DatasetError("text needs --name NAME, the folder to write the dataset to")
    fixed = {"shakespeare_char": "char", "text": tokenizer or "gpt2"}.get(name, "gpt2")
    if tokenizer not in (None, fixed):
        raise DatasetError(f"{name} uses the {fixed} tokenizer; --tokenizer applies to text only")
    if tokenizer not in (None, "char", "gpt2"):
        raise DatasetError(f"unknown tokenizer {tokenizer!r}; choose char or gpt2")
    out_name = out_name or name
    if os.path.basename(out_name) != out_name or out_name.startswith(".") or out_name == "downloads":
        raise DatasetError(f"--name {out_name!r} must be a plain folder name, such as my_corpus")
    if web and val_fraction is not None:
        raise DatasetError(f"{name} holds out whole documents: use --val_docs N instead of --val_fraction")
    if not web and (val_docs is not None or limit is not None):
        raise DatasetError(f"--val_docs and --limit apply to {' and '.join(WEB)}; use --val_fraction for {name}")
    if not web:
        val_fraction = 0.1 if val_fraction is None else val_fraction
        if not 0 < val_fraction < 1:
            raise DatasetError(f"--val_fraction {val_fraction} must lie between 0 and 1 (such as 0.1)")
    for option, value in (("--limit", limit), ("--val_docs", val_docs), ("--num_proc", num_proc), ("--block_size", block_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DatasetError(f"{option} {value} must be a whole number of at least 1")
    if web and val_docs is None:
        val_docs = VAL_DOCS if limit is None else max(1, min(VAL_DOCS, limit // 10))
    if web and limit is not None and val_docs >= limit:
        raise DatasetError(f"--val_docs {val_docs} leaves no training documents out of --limit {limit}; lower it")
    if dtype not in ("auto", "uint16", "uint32"):
        raise DatasetError(f"unknown dtype {dtype!r}; choose auto, uint16 or uint32")
    return out_name, fixed, val_fraction, val_docs, num_proc or default_num_proc()


def _command(name, out_dir, input, out_name, tokenizer, block_size=1024):
    """This run's command line, with --force (the options that choose what is written); YOUR_TEXT
    as `input` is a placeholder, left unquoted."""
    args = [name]
    if input:
        args += ["--input", input]
    if out_name != name:
        args += ["--name", out_name]
    if name == "text" and tokenizer != "gpt2":
        args += ["--tokenizer", tokenizer]
    if os.path.normpath(out_dir) != "data":
        args += ["--out_dir", str(out_dir)]
    if block_size != 1024:
        args += ["--block_size", str(block_size)]
    return "python -m tritongpt.prep " + " ".join(a if a == "YOUR_TEXT" else shlex.quote(a) for a in args) + " --force"


class _TextHint:
    """A context in which a TextError (the text itself cannot be prepared) gets `command`, the
    one that prepares other text in its place, at the end of its message."""

    def __init__(self, command):
        self.command = command

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if kind is not None and issubclass(kind, TextError) and "python -m tritongpt.prep" not in str(e):
            raise TextError(f"{e}: {self.command}") from None
        return False


def _choose_dtype(vocab_size, dtype):
    if dtype == "auto":
        return "uint16" if vocab_size <= 1 << 16 else "uint32"
    if vocab_size > np.iinfo(dtype).max + 1:
        raise DatasetError(
            f"a vocabulary of {vocab_size:,} tokens does not fit in {dtype} (at most {np.iinfo(dtype).max + 1:,}); "
            "use --dtype uint32 or auto"
        )
    return dtype


def _too_short(split, n, block_size, web):
    more = "more documents (a larger --limit) or more --val_docs" if web else (
        "more text or a larger --val_fraction" if split == "val" else "more text or a smaller --val_fraction"
    )
    return (
        f"the {split} split holds only {n:,} tokens, less than one training block of {block_size} + 1; "
        f"give {more}, or a smaller --block_size"
    )


# ----------------------------------------------------------------------------- jobs


def _text_jobs(ranges, eot):
    """Pieces of the files, in order; with eot, an end-of-text token after each file but the last."""
    for i, (path, begin, end, split) in enumerate(ranges):
        for text, nbytes in sources.read_pieces(path, begin, end, PIECE_BYTES):
            yield split, [text], nbytes
        if eot and i + 1 < len(ranges) and ranges[i + 1][0] != path:
            yield split, [None], 0


def _web_jobs(documents, val_docs):
    """Batches of documents, each followed by an end-of-text token: the first val_docs to "val"."""
    batch, nbytes, split = [], 0, "val"
    for i, text in enumerate(documents):
        if i == val_docs and batch:  # never mix the splits in one batch
            yield split, batch, nbytes
            batch, nbytes = [], 0
        split = "val" if i < val_docs else "train"
        batch += [text, None]
        nbytes += len(text.encode("utf-8"))
        if nbytes >= PIECE_BYTES:
            yield split, batch, nbytes
            batch, nbytes = [], 0
    if batch:
        yield split, batch, nbytes


def _counting(jobs, counts):
    """Pass jobs through, counting the documents of each split."""
    for split, segments, nbytes in jobs:
        counts[split] += segments.count(None)
        yield split, segments, nbytes


# ----------------------------------------------------------------------------- tokenizing

_worker = None  # (tokenizer, dtype) in a worker process


def _init_worker(tok, dtype):
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _worker = (tok, dtype)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent):
    """A worker ends when the process that started it is gone (killed with -9, say), instead of
    waiting for work forever: its parent changes then (under forkserver, the server leaves with
    the process that started it, and the worker's parent changes all the same)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode_in_worker(segments):
    tok, dtype = _worker
    return tok.encode_segments(segments, dtype)


def _tokenize(jobs, tok, dtype, num_proc, out, bar):
    """Encode the jobs in order and write their ids: here, or in num_proc worker processes with a
    few jobs in flight each (not the whole corpus queued). Returns the bytes of text encoded."""
    n_bytes = 0

    def write(split, ids, nbytes):
        nonlocal n_bytes
        out.write(split, ids)
        n_bytes += nbytes
        bar.update(nbytes)

    if num_proc == 1:
        for split, segments, nbytes in jobs:
            write(split, tok.encode_segments(segments, dtype), nbytes)
        return n_bytes
    pool = concurrent.futures.ProcessPoolExecutor(num_proc, initializer=_init_worker, initargs=(tok, dtype))
    try:
        pending = collections.deque()
        for split, segments, nbytes in jobs:
            pending.append((split, pool.submit(_encode_in_worker, segments), nbytes))
            while len(pending) > 2 * num_proc:
                split, result, nbytes = pending.popleft()
                write(split, result.result(), nbytes)
        for split, result, nbytes in pending:
            write(split, result.result(), nbytes)
    except concurrent.futures.process.BrokenProcessPool:
        raise DatasetError(
            "a tokenizer process died (out of memory, or started from a script it could not import); "
            "run again with --num_proc 1"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return n_bytes


# ----------------------------------------------------------------------------- output


def _alive(pid):
    if os.name != "posix":
        return True  # cannot tell: leave its files alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_leftovers(dest, say):
    """Remove the temporary files that an interrupted run (a process no longer alive) left."""
    for path in glob.glob(os.path.join(glob.escape(dest), "*.tmp-*")):
        pid = path.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            os.remove(path)
            say(f"prep: removed {path}, left by an interrupted run")


class _Output:
    """The two bins of a dataset being written, under temporary names until commit()."""

    def __init__(self, dest, dtype):
        self.dest, self.dtype = dest, dtype
        self.created = []  # the folders made here, removed again by discard() while empty
        folder = dest
        while folder and not os.path.isdir(folder):
            self.created.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(dest, exist_ok=True)
        suffix = f".tmp-{os.getpid()}"
        self.tmp = {name: os.path.join(dest, name + suffix) for name in ("train.bin", "val.bin", "meta.json")}
        self.files = {split: open(self.tmp[f"{split}.bin"], "wb") for split in ("train", "val")}
        self.tokens = {"train": 0, "val": 0}

    def write(self, split, ids):
        ids.astype(self.dtype, copy=False).tofile(self.files[split])
        self.tokens[split] += len(ids)

    def commit(self, meta):
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        with open(self.tmp["meta.json"], "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
            f.write("\n")
        final = os.path.join(self.dest, "meta.json")
        if os.path.exists(final):
            os.remove(final)  # from here until the last rename the folder does not look complete
        for name in ("train.bin", "val.bin", "meta.json"):
            os.replace(self.tmp[name], os.path.join(self.dest, name))

    def discard(self):
        for f in self.files.values():
            f.close()
        for path in self.tmp.values():
            if os.path.exists(path):
                os.remove(path)
        for folder in self.created:
            if os.listdir(folder):
                break
            os.rmdir(folder)
