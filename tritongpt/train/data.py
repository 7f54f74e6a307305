"""Batches of token ids from a prepared dataset's memmapped bins.

A batch is a pure function of (seed, split, step, micro-step): its random offsets come from a
generator seeded with exactly those numbers. So resuming at step S reads the batches a run that
never stopped would have read, and the global micro-step index (rank * local micro-steps + j)
makes N processes read together what one process reads alone.
"""

import os

import numpy as np
import torch

from tritongpt import prep
from tritongpt.train.config import ConfigError

_SPLITS = {"train": 0, "val": 1}
EVAL = -1  # the "step" of evaluation batches: the same batches at every evaluation


def dataset_dir(cfg):
    """`dataset` as a path when it is one, else data_dir/dataset."""
    if os.path.isdir(cfg.dataset) and os.path.isfile(os.path.join(cfg.dataset, "meta.json")):
        return cfg.dataset
    return os.path.join(cfg.data_dir, cfg.dataset)


def check_same_dataset(cfg, state, fingerprint):
    """A run resumes only on the dataset it was trained on: the fingerprint its checkpoint recorded
    (none in checkpoints of older versions) must be this dataset's."""
    saved = state.get("data", {}).get("fingerprint")
    if saved and saved != fingerprint:
        raise prep.DatasetError(
            f"{dataset_dir(cfg)} is not the dataset that the run in {cfg.out_dir} was trained on (its fingerprint "
            "changed: prepared again from other text?); to train on it, move that run away or choose another "
            "--out_dir; to go on with the run, prepare its own text again"
        )


class Batches:
    def __init__(self, ds, batch_size, block_size, seed, device):
        self.ds = ds
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.device = torch.device(device)
        for split in _SPLITS:
            n = len(ds.split(split))
            if n <= block_size:
                raise ConfigError(
                    f"config key 'block_size' ({block_size}) is too long for {ds.path}: "
                    f"its {split} split has only {n} tokens"
                )

    def check_vocab(self, vocab_size, chunk=1 << 26):
        """Every id of both splits must be below the model's vocabulary size (read once, in chunks)."""
        if self.ds.vocab_size > vocab_size:
            raise ConfigError(
                f"dataset {self.ds.path} has vocab_size {self.ds.vocab_size} but the model only {vocab_size}"
            )
        for split in _SPLITS:
            data = self.ds.split(split)
            top = max(int(data[i : i + chunk].max()) for i in range(0, len(data), chunk))
            if top >= vocab_size:
                raise prep.DatasetError(
                    f"{self.ds.path}/{split}.bin holds token id {top}, outside the model's vocabulary of "
                    f"{vocab_size}; prepare the dataset again: {self.ds.prep_command()}"
                )

    def get(self, split, step, micro):
        """x, y: (batch_size, block_size) int64 on the device; y is x shifted by one token."""
        data = self.ds.split(split)
        rng = np.random.default_rng([self.seed, _SPLITS[split], step + 1, micro])  # entropy must be >= 0
        ix = rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        buf = np.stack([data[i : i + self.block_size + 1] for i in ix]).astype(np.int64)  # (B, T + 1)
        x, y = torch.from_numpy(buf[:, :-1].copy()), torch.from_numpy(buf[:, 1:].copy())
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        return x, y
