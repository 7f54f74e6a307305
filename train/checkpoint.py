"""Checkpoints in out_dir: ckpt_STEP.pt, the last `keep_last` of them, and best.pt.

Rank 0 writes each one to a temporary name, flushes it to disk and renames it into place, so a
file named ckpt_*.pt is always complete. Each carries a SHA-256 checksum of its contents (every
tensor's bytes, every other value), checked when it is read back, so bytes changed on disk are
found instead of trained on. best.pt is a copy of the checkpoint with the lowest val loss so far,
a file of its own: damage to the newest checkpoint leaves it whole, and pruning old checkpoints
never touches it. Loading takes the newest checkpoint that reads back, and says which ones did not.
A checkpoint that cannot be written (a full or read-only disk) is a CheckpointError, its
temporary file removed.
"""

import hashlib
import os
import random
import re
import shutil

import numpy as np
import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
BEST = "best.pt"
REQUIRED = ("model", "optimizer", "step", "config", "model_args")
CHECKSUM = "checksum"  # the key of the SHA-256 hex digest of everything else in the state


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed."""


def path_for(out_dir, step):
    return os.path.join(out_dir, f"ckpt_{step:08d}.pt")


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


def _write(state, path):
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def _copy(src, dst):
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def save(state, out_dir, keep_last, is_best):
    """Write `state` (with its checksum added) as out_dir/ckpt_STEP.pt, copy it to best.pt when
    `is_best`, and delete all but the newest `keep_last` ckpt files. Returns the path written;
    CheckpointError when the disk refuses, with no temporary file left behind."""
    path = path_for(out_dir, state["step"])
    tmp, best_tmp = path + ".tmp", os.path.join(out_dir, BEST + ".tmp")
    state = dict(state)
    state[CHECKSUM] = checksum(state)
    try:
        os.makedirs(out_dir, exist_ok=True)
        _write(state, tmp)
        os.replace(tmp, path)
        if is_best:
            _copy(path, best_tmp)
            os.replace(best_tmp, os.path.join(out_dir, BEST))
        _fsync_dir(out_dir)
        for old in checkpoints(out_dir)[keep_last:]:
            os.remove(old)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        for leftover in (tmp, best_tmp):
            try:
                os.remove(leftover)
            except OSError:
                pass
        raise CheckpointError(f"could not write {path} ({_reason(e)})") from None
    return path


def _reason(e):
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}; is the disk full or read-only?"


def read(path):
    """The state in `path`; raises CheckpointError when it is unreadable or incomplete."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, I/O error: all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]})") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    if CHECKSUM in state and state[CHECKSUM] != checksum(state):  # older checkpoints have none
        raise CheckpointError(f"checkpoint {path} is damaged (its contents no longer match their checksum)")
    return state


def checksum(state):
    """SHA-256 hex digest of everything in `state` but its checksum: each tensor's dtype, shape and
    bytes, and the repr of every other value, in order."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM})
    return h.hexdigest()


def _feed(h, x):
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(x, dict):
        h.update(f"dict {len(x)}:".encode())
        for k, v in x.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(x, (list, tuple)):
        h.update(f"{type(x).__name__} {len(x)}:".encode())
        for v in x:
            _feed(h, v)
    else:
        h.update(f"{repr(x)};".encode())


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
