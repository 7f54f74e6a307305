"""The campaign's files: where things are, the commit that travels, the archive that comes back, the
choice of the path to profile, and the two steps on this side of a GPU call:

    python -m tritongpt.bench.campaign --prepare-carry    # before: carry/linux_docs_gpt2 (GPT-2 tokens) and carry/commit.json
    python -m tritongpt.bench.campaign --collect A.tar.gz [B.tar.gz]   # after: the results into the repo, named by device and time

--collect puts the training-step result at bench/results/step-gpt2-<device>-<time>.json and the
kernel result at bench/results/kernels-<device>-<time>.json (python -m tritongpt.bench's and pytest bench/'s
names, so bench.plot reads them), the profile in profiles/campaign-<device>-<time>/ (a Chrome
trace over 1 MiB gzipped), the convergence curves at
train/results/converge-<device>-<time>{-torch.jsonl,-triton.jsonl,.json,.png}, and the rest (manifests, environment, ceilings, the GPU tests' junit XML, logs, SUMMARY.md, each
path's batch search) in bench/results/campaign-<device>-<time>/. CPU runs are named "cpu" and
ignored by git.
"""

import datetime
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tritongpt.bench import campaign_goals
from tritongpt.bench.common import write_json

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / "carry"
ARCHIVE_LIMIT = 15 * 2**20  # what comes back from a GPU machine: files of at most 16 MiB
BULKY = ("profile/trace.json", "profile/capture.nsys-rep")  # left out of an archive that would pass the limit


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def last_line(path, width=300):
    try:
        lines = [x.strip() for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return None
    return lines[-1][:width] if lines else None


def data_folder():
    """The offline data folder: $TRITONGPT_DATA, else ../shared/data beside the project."""
    return Path(os.environ.get("TRITONGPT_DATA", ROOT.parent / "shared" / "data"))


def tiktoken_env():
    cache = data_folder() / "tiktoken_cache"
    return {"TIKTOKEN_CACHE_DIR": str(cache)} if "TIKTOKEN_CACHE_DIR" not in os.environ and cache.is_dir() else {}


def corpus_head(dest, nbytes):
    """The first ~nbytes of linux_docs.txt, cut at a line end, written to dest (the smoke's corpus)."""
    src = data_folder() / "linux_docs.txt"
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing: set TRITONGPT_DATA to the offline data folder")
    with open(src, "rb") as f:
        head = f.read(nbytes)
    Path(dest).write_bytes(head[: head.rfind(b"\n") + 1])
    return Path(dest)


# ----------------------------------------------------------------------------- the commit


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def commit_of_tree():
    """(commit, where it comes from): git where the tree is a checkout; on a GPU machine's copy of
    the tree, carry/commit.json as --prepare-carry wrote it before the call."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        return commit + ("-dirty" if dirty else ""), "git"
    except (OSError, subprocess.CalledProcessError):
        pass
    noted = read_json(CARRY / "commit.json")
    if noted and noted.get("commit"):
        return noted["commit"] + ("-dirty" if noted.get("dirty") else ""), \
            f"carry/commit.json, written {noted.get('written_utc')} before the call"
    return None, "unknown: no git checkout and no carry/commit.json"


# ----------------------------------------------------------------------------- the archive


def pack(folder, archive):
    """folder as a .tar.gz at `archive`, written under a temporary name and renamed; the bulky
    captures are left out (and a note says so) when the archive would pass ARCHIVE_LIMIT."""
    folder, archive = Path(folder), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    for leave_out in ((), BULKY):
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder).as_posix()
                if path.is_file() and not rel.endswith(".tmp") and rel not in leave_out:
                    tar.add(path, arcname=f"{folder.name}/{rel}")
        if tmp.stat().st_size <= ARCHIVE_LIMIT:
            break
        (folder / "ARCHIVE-NOTE.txt").write_text(
            f"{', '.join(BULKY)} left out of the archive: it would have passed {ARCHIVE_LIMIT // 2**20} MiB\n")
    os.replace(tmp, archive)
    return archive


def _extract(src, into):
    """A campaign archive or folder -> the folder that holds its manifests."""
    src = Path(src)
    if src.is_dir():
        root = src
    else:
        with tarfile.open(src, "r:gz") as tar:
            for m in tar.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise ValueError(f"{src}: unexpected member {m.name!r}")
            try:
                tar.extractall(into, filter="data")
            except TypeError:  # a Python without extraction filters; the members were checked above
                tar.extractall(into)
        root = into
    found = sorted(root.rglob("manifest-part*.json"))
    if not found:
        raise ValueError(f"{src} holds no manifest-part*.json: not a campaign folder or archive")
    return found[0].parent


# ----------------------------------------------------------------------------- the profile's path


def choose_profile_path(folder, smoke, path=None, batch=None):
    """The path (and micro-batch) to profile: as given; else the fastest of the training-step result
    in the campaign folder (part 1 run into it); else the newest GPU one in bench/results/ (part 1
    collected there before part 2's call); else triton at a default batch, said to be a guess."""
    default_batch = 2 if smoke else 16
    if path:
        return {"path": path, "batch": batch or default_batch, "why": "given on the command line", "ms_per_step": None}
    found = [(src, read_json(src)) for src in sorted((ROOT / "tritongpt" / "bench" / "results").glob("step-gpt2-*.json"))]
    newest_first = sorted((x for x in found if x[1]), key=lambda x: x[1].get("created_utc", ""), reverse=True)
    sources = [(Path(folder) / "step.json", read_json(Path(folder) / "step.json"))] + ([] if smoke else newest_first)
    for src, r in sources:
        if not r or r.get("kind") != "train_step" or (not smoke and not r.get("gpu_figures")):
            continue
        ok = [p for p in r["paths"] if p["status"] == "ok"]
        if ok:
            best = max(ok, key=lambda p: p["tokens_per_sec"])
            return {"path": best["path"], "batch": batch or best["batch"], "ms_per_step": best["ms_per_step"],
                    "why": f"the fastest path of {src.name} ({r['device_name']})", "source": str(src.name)}
    return {"path": "triton", "batch": batch or default_batch, "ms_per_step": None,
            "why": "no training-step result found: triton, not known to be the fastest"}


# ----------------------------------------------------------------------------- before a GPU call


def prepare_carry(corpus=None):
    """carry/linux_docs_gpt2 (GPT-2 tokens of linux_docs.txt, by python -m tritongpt.prep) when missing, and
    carry/commit.json: the commit of this tree, which the copy on the GPU machine cannot ask git for."""
    data = CARRY / "linux_docs_gpt2"
    if not (data / "meta.json").is_file():
        corpus = Path(corpus) if corpus else data_folder() / "linux_docs.txt"
        argv = [sys.executable, "-m", "tritongpt.prep", "text", "--input", str(corpus), "--name", data.name,
                "--tokenizer", "gpt2", "--out_dir", str(CARRY)]
        print("$ " + " ".join(argv), flush=True)
        rc = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, **tiktoken_env())).returncode
        if rc:
            return rc
    try:
        commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        print("error: --prepare-carry runs in the git checkout that the GPU call sends", file=sys.stderr)
        return 2
    write_json({"commit": commit, "dirty": dirty, "written_utc": utc_now()}, CARRY / "commit.json")
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"carry/: {size / 2**20:.1f} MiB (the GPU call carries it: carry=[\"carry\"]); commit {commit[:12]}"
          + (" with uncommitted changes: commit first, or the results will say dirty" if dirty else ""))
    return 0


# ----------------------------------------------------------------------------- after a GPU call


def device_slug(name):
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'; any CPU -> 'cpu'."""
    name = (name or "unknown").lower()
    if name.startswith("cpu"):
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.replace("nvidia", "")).strip("-") or "unknown"


def destinations(folder, dev, stamp, smoke):
    """{file in the campaign folder: where it goes in the repo, relative to its root}."""
    tag = f"{dev}-{stamp}"
    special = {
        "step.json": f"tritongpt/bench/results/step-{'smoke' if smoke else 'gpt2'}-{tag}.json",
        "kernels.json": f"tritongpt/bench/results/kernels-{tag}.json",
        "converge-torch.jsonl": f"tritongpt/train/results/converge-{tag}-torch.jsonl",
        "converge-triton.jsonl": f"tritongpt/train/results/converge-{tag}-triton.jsonl",
        "converge.json": f"tritongpt/train/results/converge-{tag}.json",
        "converge.png": f"tritongpt/train/results/converge-{tag}.png",
    }
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel in special:
            out[rel] = special[rel]
        elif rel.startswith("profile/"):
            out[rel] = f"tritongpt/profiles/campaign-{tag}/{rel.removeprefix('profile/')}"
        else:
            out[rel] = f"tritongpt/bench/results/campaign-{tag}/{rel}"
    return out


def collect(sources, dest):
    """Merge the campaign archives (or folders) of one campaign, write their SUMMARY.md again from
    all of them, and copy every file to where the repo keeps it."""
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged"
        merged.mkdir()
        try:
            for i, src in enumerate(sources):
                shutil.copytree(_extract(src, Path(tmp) / f"src{i}"), merged, dirs_exist_ok=True)
        except (OSError, ValueError, tarfile.TarError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        manifests = [read_json(p) for p in sorted(merged.glob("manifest-part*.json"))]
        first = manifests[0]
        env = read_json(merged / f"env-part{first['part']}.json") or {}
        dev = device_slug(env.get("device_name") or first.get("device_name"))
        smoke = any(m.get("smoke") for m in manifests)
        (merged / "SUMMARY.md").write_text("")  # so that it has a destination of its own
        plan = destinations(merged, dev, first["stamp"], smoke)
        campaign_goals.write_summary(merged, names=plan)
        for rel, target in plan.items():
            (dest / target).parent.mkdir(parents=True, exist_ok=True)
            if rel == "profile/trace.json" and (merged / rel).stat().st_size > 2**20:
                target += ".gz"  # a Chrome trace is mostly repeated names: a tenth of the size
                with open(merged / rel, "rb") as f, gzip.open(dest / target, "wb") as g:
                    shutil.copyfileobj(f, g)
            else:
                shutil.copyfile(merged / rel, dest / target)
            print(f"{rel} -> {target}")
    print(f"{len(plan)} files copied" + ("; CPU results, which git ignores" if dev == "cpu" else
                                         "; commit them unedited"))
    return 0
