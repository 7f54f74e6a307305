"""Checkpoints in out_dir: ckpt_STEP.pt, or under FSDP the directory ckpt_STEP/, the last `keep_last`
of them, and best.pt (or best/).

A single file (DDP, one process): rank 0 writes it to a temporary name, flushes it to disk and
renames it into place, so a file named ckpt_*.pt is always complete. Each carries a SHA-256
checksum of its contents (every tensor's bytes, every other value), checked when it is read back,
so bytes changed on disk are found instead of trained on.

A sharded checkpoint (FSDP) is a directory written by torch.distributed.checkpoint (DCP): each
process writes its shards of the weights and of AdamW's states (`__RANK_N.distcp`, and `.metadata`,
DCP's index of them), and rank 0 adds meta.pt: everything else, as in a single file (step, config,
data position, every process's RNG states), the SHA-256 of every file DCP wrote, and a checksum of
its own. All of it goes to ckpt_STEP.tmp/ and is renamed ckpt_STEP/ only once every process has
written, synced and hashed its files, so a directory of that name is always complete; reading one
checks meta.pt and every file's hash (each process a share of the files). DCP reshards on load, so
any number of processes, sharded or not, load it.

best.pt (best/) is a copy of the checkpoint with the lowest val loss so far, of its own: damage
to the newest checkpoint leaves it whole, and pruning old checkpoints never touches it. Loading
takes the newest checkpoint that reads back, and says which ones did not. A checkpoint that
cannot be written (a full or read-only disk) is a CheckpointError, its temporary files removed.
"""

import hashlib
import os
import re
import shutil
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict

from tritongpt.train import parallel

_NAME = re.compile(r"^ckpt_(\d+)(\.pt)?$")  # ckpt_STEP.pt, a file; ckpt_STEP, a sharded directory
_LEFTOVER = re.compile(r"^(ckpt_\d+|best)\.(tmp|old)$")  # the directories a sharded save cut short leaves
BEST, BEST_SHARDED = "best.pt", "best"
META = "meta.pt"  # in a sharded checkpoint: all but the tensors of the model and the optimizer
REQUIRED = ("model", "optimizer", "step", "config", "model_args")
REQUIRED_META = ("step", "config", "model_args", "files")
CHECKSUM = "checksum"  # the key of the SHA-256 hex digest of everything else in the state


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed."""


def path_for(out_dir, step, sharded=False):
    return os.path.join(out_dir, f"ckpt_{step:08d}" + ("" if sharded else ".pt"))


def checkpoints(out_dir):
    """Paths of ckpt_STEP.pt and ckpt_STEP/ in out_dir, newest first."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(out_dir) if (m := _NAME.match(name))]
    return [os.path.join(out_dir, name) for _, name in sorted(found, reverse=True)]


def bests(out_dir):
    """best.pt and best/ where they are."""
    return [p for p in (os.path.join(out_dir, BEST), os.path.join(out_dir, BEST_SHARDED)) if os.path.exists(p)]


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


def write(state, path):
    """Write `state`, its checksum added, as the single file `path`: a temporary file, flushed to
    disk, renamed into place. CheckpointError when the disk refuses, no temporary file left."""
    tmp = path + ".tmp"
    state = dict(state)
    state[CHECKSUM] = checksum(state)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _write(state, tmp)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except (OSError, RuntimeError) as e:
        _remove(tmp)
        raise CheckpointError(f"could not write {path} ({_reason(e)})") from None


def save(state, out_dir, keep_last, is_best):
    """Write `state` (with its checksum added) as out_dir/ckpt_STEP.pt, copy it to best.pt when
    `is_best`, and delete all but the newest `keep_last` checkpoints. Returns the path written;
    CheckpointError when the disk refuses, with no temporary file left behind."""
    path = path_for(out_dir, state["step"])
    best_tmp = os.path.join(out_dir, BEST + ".tmp")
    write(state, path)
    try:
        if is_best:
            _copy(path, best_tmp)
            os.replace(best_tmp, os.path.join(out_dir, BEST))
            _fsync_dir(out_dir)
            _remove(os.path.join(out_dir, BEST_SHARDED))  # one best, of the newest kind
        _prune(out_dir, keep_last)
    except (OSError, RuntimeError) as e:
        if os.path.lexists(best_tmp):
            os.remove(best_tmp)
        raise CheckpointError(f"could not write {path} ({_reason(e)})") from None
    return path


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _prune(out_dir, keep_last):
    """Delete all but the newest keep_last checkpoints, and what sharded saves cut short left behind."""
    for old in checkpoints(out_dir)[keep_last:]:
        _remove(old)
    for name in os.listdir(out_dir):
        if _LEFTOVER.match(name) and os.path.isdir(os.path.join(out_dir, name)):
            _remove(os.path.join(out_dir, name))


def _reason(e):
    if isinstance(e, dcp.CheckpointException) and e.failures:  # DCP's, from any process: the first cause
        e = next(iter(e.failures.values()))[0]
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}; is the disk full or read-only?"


def read(path, required=REQUIRED):
    """The state in `path` (a file, or a sharded checkpoint's directory: see read_sharded); raises
    CheckpointError when it is unreadable, incomplete or damaged."""
    if os.path.isdir(path):
        return read_sharded(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, I/O error: all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]})") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    if CHECKSUM in state and state[CHECKSUM] != checksum(state):  # older checkpoints have none
        raise CheckpointError(f"checkpoint {path} is damaged (its contents no longer match their checksum)")
    bad = _first_non_finite(state)
    if bad:  # written so by another tool or version: its checksum is valid, its state is not
        raise CheckpointError(f"checkpoint {path} holds non-finite values ({bad}), so it is no state to go on from")
    return state


def _first_non_finite(x, name=""):
    """The name of the first floating-point tensor in `x` (nested dicts and lists) with a NaN or an
    infinity, or None."""
    if isinstance(x, torch.Tensor):
        return name or "a tensor" if x.is_floating_point() and not bool(torch.isfinite(x).all()) else None
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, (list, tuple)) else ()
    for k, v in items:
        bad = _first_non_finite(v, f"{name}.{k}" if name else str(k))
        if bad:
            return bad
    return None


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


def recover(out_dir):
    """Finish a sharded save that was cut short between the two renames that put a new directory
    in the place of an older one (ckpt_STEP/ saved again, or best/): where X.old is and X is not,
    X.tmp is complete (both renames come after every file is written and synced) and becomes X;
    without it, X.old goes back. Returns a line per directory put back. In a process group only
    one process may call it, before the others look at out_dir."""
    done = []
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    for name in names:
        m = _LEFTOVER.match(name)
        if not m or m.group(2) != "old" or m.group(1) in names:
            continue
        dst = os.path.join(out_dir, m.group(1))
        tmp = dst + ".tmp"
        if os.path.isfile(os.path.join(tmp, META)):
            os.rename(tmp, dst)
            _remove(dst + ".old")
            done.append(f"{dst}: finished the save that was cut short (its new copy was complete)")
        else:
            os.rename(dst + ".old", dst)
            done.append(f"{dst}: put the previous copy back (a save was cut short)")
        _fsync_dir(out_dir)
    return done


def load_latest(out_dir, log=print):
    """(state, path) of the newest checkpoint in out_dir that reads back, falling back past
    unreadable ones (each reported through `log`), then to best.pt (best/); (None, None) when out_dir
    holds no checkpoint at all. In a process group every process must call it, seeing the same
    checkpoints (the files of a sharded one are checked in shares)."""
    candidates = checkpoints(out_dir) + bests(out_dir)
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


# ----------------------------------------------------------------------------- sharded checkpoints (DCP)


def _group_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _share(names):
    """This process's share of `names` (all of them outside a process group)."""
    names = sorted(names)
    return names[dist.get_rank() :: _group_size()] if _group_size() > 1 else names


def _gather(value):
    """`value` of every process, in rank order ([value] outside a process group)."""
    if _group_size() == 1:
        return [value]
    out = [None] * _group_size()
    dist.all_gather_object(out, value)
    return out


def _together(path, fn):
    """Run fn() here (unless None), then agree with every other process: if it failed in any, a CheckpointError
    in all of them, naming the first failure."""
    error = None
    try:
        if fn is not None:
            fn()
    except (OSError, RuntimeError, ValueError, dcp.CheckpointException) as e:  # DCP's is a BaseException
        error = _reason(e)
    failed = [e for e in _gather(error) if e]
    if failed:
        raise CheckpointError(f"could not write {path} ({failed[0]})")


def _fsync_file(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _replace_dir(src, dst):
    """Rename directory src to dst, where an older dst may be (moved aside first, then deleted)."""
    if os.path.exists(dst):
        _remove(dst + ".old")
        os.rename(dst, dst + ".old")
    os.rename(src, dst)
    _remove(dst + ".old")


def save_sharded(model, optimizer, meta, out_dir, keep_last, is_best):
    """Every process: write the model's and the optimizer's shards with DCP, and rank 0 `meta` (the
    rest of the state, as in a single file) with every file's hash, as out_dir/ckpt_STEP/ (see the
    docstring); copy it to best/ when `is_best` (each process a share of the files) and prune as
    save() does. Returns the path; CheckpointError in every process when any one fails."""
    path = path_for(out_dir, meta["step"], sharded=True)
    tmp, best, best_tmp = path + ".tmp", os.path.join(out_dir, BEST_SHARDED), os.path.join(out_dir, BEST_SHARDED + ".tmp")
    master = _group_size() == 1 or dist.get_rank() == 0
    model_state, optimizer_state = get_state_dict(model, optimizer)  # DTensors under FSDP: each process its shards
    digests = {}

    def prepare():
        os.makedirs(out_dir, exist_ok=True)
        _remove(tmp)
        _remove(best_tmp)

    def hash_share():  # the files DCP wrote (synced to disk), read back a share per process
        digests.update({name: _sha256(os.path.join(tmp, name)) for name in _share(os.listdir(tmp))})

    def finish(shares):  # meta.pt, then the rename that makes the directory a checkpoint
        state = dict(meta, files={name: h for share in shares for name, h in share.items()})
        state[CHECKSUM] = checksum(state)
        _write(state, os.path.join(tmp, META))
        _fsync_dir(tmp)
        _replace_dir(tmp, path)
        _fsync_dir(out_dir)
        if is_best:
            os.makedirs(best_tmp)

    def copy_share():
        for name in _share(os.listdir(path)):
            shutil.copyfile(os.path.join(path, name), os.path.join(best_tmp, name))
            _fsync_file(os.path.join(best_tmp, name))

    def finish_best():
        _fsync_dir(best_tmp)
        _replace_dir(best_tmp, best)
        _remove(os.path.join(out_dir, BEST))  # one best, of the newest kind
        _fsync_dir(out_dir)

    try:
        _together(path, prepare if master else None)
        _together(path, lambda: dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp))
        _together(path, hash_share)
        files = _gather(digests)  # every process takes part; rank 0 writes them
        _together(path, (lambda: finish(files)) if master else None)
        if is_best:
            _together(path, copy_share)
            _together(path, finish_best if master else None)
        _together(path, (lambda: _prune(out_dir, keep_last)) if master else None)
    except CheckpointError:
        if master:
            for leftover in (tmp, best_tmp):
                shutil.rmtree(leftover, ignore_errors=True)
        raise
    return path


def read_sharded(path):
    """The state in meta.pt of the sharded checkpoint `path`, with "sharded": path added, once
    meta.pt's checksum and every file's hash check out (in a process group, each process checks
    a share of the files and all agree: every process must call this); CheckpointError otherwise."""
    meta = os.path.join(path, META)
    problems, state = [], None
    try:
        if not os.path.isfile(meta):
            raise CheckpointError(f"checkpoint {path} is incomplete (no {META})")
        state = read(meta, REQUIRED_META)
    except CheckpointError as e:
        problems.append(str(e))
    for name in _share(state["files"]) if state else []:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            problems.append(f"checkpoint {path} is damaged ({name} is missing)")
        elif _sha256(file) != state["files"][name]:
            problems.append(f"checkpoint {path} is damaged ({name} no longer matches its checksum)")
    problems = [p for share in _gather(problems) for p in share]
    if problems:
        raise CheckpointError(problems[0])
    return dict(state, sharded=path)


def load_sharded(path, model, optimizer=None):
    """Load the model's (and optimizer's) tensors of the sharded checkpoint `path` into `model`
    (and `optimizer`): sharded or whole, in any number of processes, DCP reading each process's
    part. In a process group every process must call it."""
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():  # outside a process group DCP warns that it reads alone, as meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    params = list(model.parameters())
    moments = [v for s in (optimizer.state.values() if optimizer else ()) for v in s.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0]  # beside their parameters (AdamW's step may be elsewhere)
    if not parallel.all_finite(params + moments):  # every process takes part
        raise CheckpointError(f"checkpoint {path} holds non-finite weights or optimizer states, so it is no state "
                              "to go on from")


def load_weights(state, model):
    """The weights of a checkpoint's `state` (as read() returns it, of either kind) into `model`."""
    if "sharded" in state:
        load_sharded(state["sharded"], model)
    else:
        model.load_state_dict(state["model"])
