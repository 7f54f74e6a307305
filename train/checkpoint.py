"""Checkpoints in out_dir: ckpt_STEP.pt, the last `keep_last` of them, and best.pt.

Rank 0 writes each one to a temporary name, flushes it to disk and renames it into place, so a
file named ckpt_*.pt is always complete. best.pt is a hard link to the checkpoint with the lowest
val loss so far (a copy where the file system has no hard links); pruning old checkpoints never
touches it. Loading takes the newest checkpoint that reads back, and says which ones did not.
"""

import os
import random
import re
import shutil

import numpy as np
import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
BEST = "best.pt"
REQUIRED = ("model", "optimizer", "step", "config", "model_args")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed."""


def checkpoints(out_dir):
    """Paths of ckpt_STEP.pt in out_dir, newest first."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(out_dir) if (m := _NAME.match(name))]
    return [os.path.join(out_dir, name) for _, name in sorted(found, reverse=True)]


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - directories cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save(state, out_dir, keep_last, is_best):
    """Write `state` as out_dir/ckpt_STEP.pt, point best.pt at it when `is_best`, and delete all but
    the newest `keep_last` ckpt files. Returns the path written."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"ckpt_{state['step']:08d}.pt")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if is_best:
        best_tmp = os.path.join(out_dir, BEST + ".tmp")
        if os.path.exists(best_tmp):
            os.remove(best_tmp)
        try:
            os.link(path, best_tmp)
        except OSError:
            shutil.copyfile(path, best_tmp)
        os.replace(best_tmp, os.path.join(out_dir, BEST))
    _fsync_dir(out_dir)
    for old in checkpoints(out_dir)[keep_last:]:
        os.remove(old)
    return path


def read(path):
    """The state in `path`; raises CheckpointError when it is unreadable or incomplete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, I/O error: all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]})") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    return state


def load_latest(out_dir, log=print):
    """(state, path) of the newest checkpoint in out_dir that reads back, falling back past
    unreadable ones (each reported through `log`), then to best.pt; (None, None) when out_dir
    holds no checkpoint at all."""
    candidates = checkpoints(out_dir)
    best = os.path.join(out_dir, BEST)
    if os.path.isfile(best):
        candidates.append(best)
    errors = []
    for path in candidates:
        try:
            return read(path), path
        except CheckpointError as e:
            errors.append(str(e))
            log(f"warning: {e}; trying the previous one")
    if errors:
        raise CheckpointError(f"no readable checkpoint in {out_dir}: {errors[0]}")
    return None, None


# ----------------------------------------------------------------------------- random number generators


def rng_state(device):
    """Every RNG state of this process, in types that torch.load(weights_only=True) reads back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if torch.device(device).type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(x):
    """random.setstate wants tuples where a round trip may have left lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
