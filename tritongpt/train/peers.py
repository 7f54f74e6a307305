"""The other processes of a run, known by their host and process id, so that when one dies mid-run
(killed, out of memory) the survivors say which, in one line, instead of the raw traceback of the
collective that found its connection closed ("Connection closed by peer" from gloo).

    peers.record()                 # every process, once the process group is up
    ...
    except RuntimeError as e:
        raise peers.lost(e) or e   # PeerLost naming the dead rank(s), or the error as it was

A process on this machine is dead when /proc no longer has it or has it as a zombie (its parent,
torchrun's agent, has not reaped it yet); the survivor waits up to a couple of seconds for that,
since its connection may close a moment before the dying process is marked dead. A rank on
another machine cannot be looked at: the line then says that contact was lost.
"""

import os
import socket
import time

import torch.distributed as dist

_PEERS = None  # [(host, pid)] by rank
_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
          "socket closed", "Connection refused")


class PeerLost(RuntimeError):
    """Another process of the run died or could not be reached mid-run; the message names it."""


def record():
    """Note every process's host and process id (every process calls this once, in a process group)."""
    global _PEERS
    peers = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    _PEERS = peers


def _dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel, which counts a zombie as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def dead_ranks(wait=2.0):
    """The ranks of this machine whose process is gone (after waiting up to `wait` seconds for one)."""
    if _PEERS is None:
        return []
    host, me = socket.gethostname(), os.getpid()
    local = [(rank, pid) for rank, (h, pid) in enumerate(_PEERS) if h == host and pid != me]
    deadline = time.monotonic() + wait
    while True:
        dead = [rank for rank, pid in local if _dead(pid)]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


def lost(error):
    """PeerLost for `error` when it came from a peer that died (or a connection to one that broke),
    else None."""
    if _PEERS is None:
        return None
    text = str(error)
    dist_error = isinstance(error, getattr(dist, "DistError", ())) or any(sign in text for sign in _SIGNS)
    dead = dead_ranks(2.0 if dist_error else 0.0)
    if not dead and not dist_error:
        return None
    me = next(r for r, (h, pid) in enumerate(_PEERS) if pid == os.getpid() and h == socket.gethostname())
    if dead:
        who = ", ".join(f"rank {r} (process {_PEERS[r][1]})" for r in dead)
        what = f"{who} of this run died (killed, or out of memory: see its log)"
    else:
        what = "lost contact with another process of this run (on another machine, or it hung up)"
    return PeerLost(f"process {me} of {len(_PEERS)}: {what}, so this one stops too; under torchrun "
                    "--max-restarts the group restarts from the latest checkpoint")
