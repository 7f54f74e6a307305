"""Every process's random number generators (Python's, NumPy's, torch's on the CPU and on its GPU):
seeded at the start of a run, saved with each checkpoint, and restored on resume, or re-seeded
where the checkpoint was written by another number of processes (whose streams were not these)."""

import random

import numpy as np
import torch


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def restore(rngs, rank, world_size, seed, device, log):
    """This process's states from `rngs` (one per process of the run that saved them); with another
    number of processes, a seed of its own (`seed`, which the caller makes differ by rank and step)
    and a note through `log`."""
    if len(rngs) == world_size:
        set_rng_state(rngs[rank], device)
        return
    log(f"note: the checkpoint was written by {len(rngs)} processes, now {world_size}: RNGs re-seeded")
    torch.manual_seed(seed)


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
