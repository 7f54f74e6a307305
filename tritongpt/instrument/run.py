"""Where and when a run happened: the header of every result file (the trainer's metrics.jsonl,
the benchmarks' JSON, the profiles' summaries).

    run_info(device)     # {"created_utc", "device", "device_name", "torch", "triton", "cuda",
                         #  "python", "git_commit", "git_dirty"}
    git_commit()         # (commit, dirty) of the checkout the code runs from
"""

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def device_name(device):
    """The GPU's name (as the peak-FLOPs table keys it), or "CPU (<machine>)"."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine() or 'unknown'})"


def package_version(package):
    """The installed version of `package`, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit():
    """(commit, dirty) of the checkout the code runs from. Outside a git checkout (a copy of the
    tree on another machine) the commit that TRITONGPT_GIT_COMMIT names ("SHA", or "SHA-dirty"
    for a tree with changes), else (None, None)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        named = os.environ.get("TRITONGPT_GIT_COMMIT")
        if not named:
            return None, None
        return named.removesuffix("-dirty"), named.endswith("-dirty")


def utc_stamp():
    """The UTC time for a file name: 20250101T120000Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run_info(device):
    """Where a run happened: device, versions, git commit, UTC time."""
    device = torch.device(device)
    commit, dirty = git_commit()
    return {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }
