"""Reading a prepared dataset: data/NAME/{train.bin, val.bin, meta.json}.

    ds = prep.load("data/shakespeare_char")
    ds.train, ds.val          # np.memmap of token ids (uint16 or uint32), read-only
    ds.vocab_size, ds.meta    # from meta.json
    ds.encode("text") -> list[int];  ds.decode(ids) -> str
    ds.fingerprint()          # changes when the dataset is prepared again from other text
"""

import glob
import hashlib
import json
import os
import shlex

import numpy as np

from tritongpt.prep.errors import DatasetError
from tritongpt.prep.pipeline import RECIPES
from tritongpt.prep.tokenizer import CharTokenizer, GPT2Tokenizer


def prep_command(path, meta=None, force=False):
    """The `python -m tritongpt.prep` command that writes the dataset folder `path` (again, with force), for
    the hints of error messages: a recipe when the folder is named after one, else `text` with the
    input left to fill in."""
    out_dir, name = os.path.split(os.path.normpath(path))
    if name in RECIPES and name != "text":
        args = [name]
    else:
        args = ["text", "--input", "YOUR_TEXT", "--name", name]
        if (meta or {}).get("tokenizer") == "char":
            args += ["--tokenizer", "char"]
    if out_dir != "data":
        args += ["--out_dir", out_dir or "."]
    if force:
        args.append("--force")
    return "python -m tritongpt.prep " + " ".join(a if a == "YOUR_TEXT" else shlex.quote(a) for a in args)


class Dataset:
    def __init__(self, path):
        self.path = os.fspath(path)
        meta_path = os.path.join(self.path, "meta.json")
        if not os.path.isfile(meta_path):
            if glob.glob(os.path.join(glob.escape(self.path), "*.tmp-*")):
                raise DatasetError(
                    f"{self.path} holds only the partial files of an interrupted run; prepare it again: "
                    f"{prep_command(self.path)}"
                )
            raise DatasetError(f"{self.path} is not a prepared dataset (no meta.json); prepare it: {prep_command(self.path)}")
        try:
            with open(meta_path, encoding="utf-8") as f:
                self.meta = json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{meta_path} is unreadable ({e}); prepare it again: {prep_command(self.path, force=True)}") from e
        for key in ("tokenizer", "vocab_size", "dtype"):
            if key not in self.meta:
                raise DatasetError(f"{meta_path} has no '{key}'; prepare it again: {self.prep_command()}")
        self.vocab_size = int(self.meta["vocab_size"])
        self.dtype = np.dtype(self.meta["dtype"])
        self.tokenizer = self.meta["tokenizer"]
        self._splits = {}
        self._encoder = None

    def split(self, name):
        """The token ids of split `name` ("train" or "val") as a read-only memmap."""
        if name not in self._splits:
            path = os.path.join(self.path, f"{name}.bin")
            if not os.path.isfile(path):
                raise DatasetError(f"{path} is missing; prepare the dataset again: {self.prep_command()}")
            size = os.path.getsize(path)
            if size % self.dtype.itemsize:
                raise DatasetError(f"{path} is truncated ({size} bytes); prepare the dataset again: {self.prep_command()}")
            expected = self.meta.get(f"{name}_tokens")
            if expected is not None and size // self.dtype.itemsize != expected:
                raise DatasetError(
                    f"{path} holds {size // self.dtype.itemsize} tokens but meta.json says {expected}; "
                    f"prepare the dataset again: {self.prep_command()}"
                )
            if size == 0:
                raise DatasetError(f"{path} is empty; prepare the dataset again with more text")
            self._splits[name] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._splits[name]

    def fingerprint(self, pieces=16, piece_tokens=1 << 15):
        """A short hash of what the dataset holds: its tokenizer, vocabulary and token counts, and
        its token ids (all of them in a small dataset; `pieces` evenly spaced runs of piece_tokens
        in a large one, a few MB read whatever its size). Preparing the same text again gives the
        same fingerprint; other text, another."""
        h = hashlib.sha256()
        keys = ("tokenizer", "vocab_size", "dtype", "chars", "eot_token", "train_tokens", "val_tokens")
        h.update(json.dumps({k: self.meta.get(k) for k in keys}, sort_keys=True, ensure_ascii=False).encode())
        for name in ("train", "val"):
            data = self.split(name)
            n = len(data)
            if n <= pieces * piece_tokens:
                runs = [(0, n)]
            else:
                runs = [(i * (n - piece_tokens) // (pieces - 1), piece_tokens) for i in range(pieces)]
            for start, length in runs:
                h.update(np.ascontiguousarray(data[start : start + length]).tobytes())
        return h.hexdigest()[:16]

    def prep_command(self):
        """The command that writes this dataset again (for hints)."""
        return prep_command(self.path, self.meta, force=True)

    @property
    def train(self):
        return self.split("train")

    @property
    def val(self):
        return self.split("val")

    def _codec(self):
        if self._encoder is None:
            if self.tokenizer == "char":
                tok = CharTokenizer(self.meta["chars"])
                self._encoder = (lambda text: tok.encode_array(text).tolist(), tok.decode)
            elif self.tokenizer == "gpt2":
                tok = GPT2Tokenizer()
                self._encoder = (tok.encode, tok.decode)
            else:
                raise DatasetError(f"{self.path}: unknown tokenizer {self.tokenizer!r} in meta.json")
        return self._encoder

    def encode(self, text):
        return self._codec()[0](text)

    def decode(self, ids):
        return self._codec()[1](ids)

    def __repr__(self):
        return f"Dataset({self.path!r}, tokenizer={self.tokenizer!r}, vocab_size={self.vocab_size})"


def load(path):
    """Open the prepared dataset in directory `path`."""
    return Dataset(path)
