"""python tools/warm_cache.py DIR: the Triton kernels that the GPU campaign's runs launch, compiled
here for sm_90 into DIR, a Triton cache folder. The campaign runs with TRITON_CACHE_DIR=DIR, so a
bare GPU machine loads these kernels instead of compiling them.

    python tools/warm_cache.py pack/triton-cache             # what `python tools/campaign.py --pack` runs
    python tools/warm_cache.py DIR --jobs 1                  # one compile at a time: each variant's cold seconds
    python tools/warm_cache.py DIR --only _attn_fwd,_attn_bwd_delta   # the kernels whose name holds one of these

What it compiles: the launches of tools/aot_launches.py that the campaign makes (in_campaign: GPT-2
124M in bf16, and LayerNorm's fp16 and fp32 parity cases), each with every config its autotuner can
try, through the runtime's own path (JITFunction.warmup), so each entry lands under the key a launch
computes. That key hashes the Triton build (its sources and libtriton), the kernel's source and the
jit functions it calls, the arguments' specialization (dtypes, 16-byte alignment, divisibility by
16, values equal to 1), the constexprs, the options (warps, stages, ...), the target and ptxas.
So build it from the tree the campaign runs, with the Python and Triton wheel of the GPU machines
(Triton 3.6); the campaign says whether they match, and counts its hits and misses.

It writes only the cubins and metadata (TRITON_STORE_BINARY_ONLY), and DIR/warm-cache.json: the
Triton version and build, the target, each variant with its cache folder and compile seconds (cold
when `new`: the folder was not there before).

Compiled elsewhere, kept: the launch helpers Triton builds with the C compiler on a GPU machine,
and torch.compile's kernels (Inductor rewrites our kernels into its own module, under other keys;
both need the GPU machine's CUDA). The campaign keeps them in its pack folder for the next run.
"""

import aot  # first: it turns Triton's interpreter off before triton is imported

import argparse
import base64
import concurrent.futures
import datetime
import hashlib
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import triton
from triton._C.libtriton import get_cache_invalidating_env_vars
from triton.runtime.cache import triton_key

from tritongpt.bench.common import write_json
from tritongpt.instrument.run import git_commit

MANIFEST = "warm-cache.json"


def in_campaign(launch):
    """Whether the campaign's runs make this launch: GPT-2 124M (bias or not; dropout 0) in bf16 on
    the step, the kernel benchmarks, the parity tests and the convergence runs; LayerNorm also in
    fp16 and fp32 (its parity test at GPT-2's size). Not RMSNorm, the exact GELU, ReLU^2, the
    soft-cap, nor attention other than head dim 64 with no window, rotary, QK-norm or dropout."""
    if launch.op in ("layer_norm", "add_layer_norm"):
        return True
    if launch.dtype != "bf16":
        return False
    if launch.op == "linear_gelu":
        return "exact GELU" not in launch.what and "ReLU" not in launch.what
    if launch.op in ("cross_entropy", "linear_cross_entropy"):
        return "soft-cap" not in launch.what
    return launch.op == "attention" and launch.what.endswith(", D=64")


def folder_of(compiled_hash):
    """The cache folder of a compiled kernel: Triton names it by the base32 of its key's hash."""
    return base64.b32encode(bytes.fromhex(compiled_hash)).decode().rstrip("=")


def triton_build():
    """A short hash of everything Triton puts in each key about itself (version, sources, libtriton)."""
    return hashlib.sha256(triton_key().encode()).hexdigest()[:16]


def campaign_variants(arch, only=None):
    """The variants the campaign launches, of the kernels whose name holds one of `only` (a list) if given."""
    return [v for v in aot.variants(arch) if in_campaign(v.launch)
            and (not only or any(part in v.launch.kernel.fn.__name__ for part in only))]


_TODO = []  # the variants the workers compile, by index (set before they start)


def _build_one(i):
    v, cache = _TODO[i], os.environ["TRITON_CACHE_DIR"]
    rec = {k: v.record()[k] for k in ("op", "kernel", "launch", "dtype", "config_name", "tuned")}
    before = set(os.listdir(cache))
    t0 = time.perf_counter()
    try:
        folder = folder_of(aot.compile_kernel(v).hash)
    except Exception as e:  # noqa: BLE001 - recorded, and the command fails at the end
        rec.update(folder=None, seconds=None, new=None, error=f"{type(e).__name__}: {str(e).strip()[:300]}")
        return i, rec
    rec.update(folder=folder, seconds=round(time.perf_counter() - t0, 2), new=folder not in before, error=None)
    return i, rec


def build(cache, arch=90, jobs=1, only=None):
    """Compile the campaign's variants into `cache`; write and return its manifest."""
    cache = Path(cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = str(cache)
    os.environ["TRITON_STORE_BINARY_ONLY"] = "1"
    _TODO[:] = campaign_variants(arch, only)
    if not _TODO:
        raise SystemExit(f"warm_cache: --only {','.join(only or [])}: no kernel of the campaign's is named like that "
                         "(see tools/aot_launches.py)")
    print(f"sm_{arch}: {len(_TODO)} variants into {cache}, {jobs} at a time", flush=True)
    t0, done = time.perf_counter(), [None] * len(_TODO)
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for n, (i, rec) in enumerate(pool.map(_build_one, range(len(_TODO)), chunksize=1)):
            done[i] = rec
            what = rec["error"] or f"{rec['seconds']:.1f} s{'' if rec['new'] else ' (was there)'}"
            print(f"[{n + 1}/{len(_TODO)}] {rec['kernel']} {rec['dtype']} {rec['launch']} | {rec['config_name']} | {what}",
                  flush=True)
    commit, dirty = git_commit()
    manifest = dict(
        kind="warm_triton_cache", created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        triton=triton.__version__, triton_build=triton_build(), python=platform.python_version(), target=f"sm_{arch}",
        env_vars=get_cache_invalidating_env_vars(), git_commit=commit, git_dirty=dirty, jobs=jobs,
        seconds=round(time.perf_counter() - t0, 1), variants=done,
    )
    write_json(manifest, cache / MANIFEST)
    return manifest


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tools/warm_cache.py", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="the Triton cache folder to fill (created if missing)")
    p.add_argument("--arch", type=int, default=90, choices=sorted(aot.SM_LIMITS), help="target (default 90)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at a time (default: the cores)")
    p.add_argument("--only", default=None, help="comma-separated: only the kernels whose name holds one of these")
    args = p.parse_args(argv)
    if aot.interpreted():
        sys.exit("warm_cache: Triton was imported with TRITON_INTERPRET=1; run python tools/warm_cache.py as its own process")
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more")
    m = build(args.dir, args.arch, args.jobs, args.only and args.only.split(","))
    bad = [r for r in m["variants"] if r["error"]]
    for r in bad:
        print(f"PROBLEM: {r['kernel']} {r['dtype']} {r['launch']} {r['config_name']}: {r['error']}", file=sys.stderr)
    new = [r["seconds"] for r in m["variants"] if r["new"]]
    print(f"{len(m['variants'])} variants ({len(new)} compiled, {sum(new):.0f} s of compiles) in {m['seconds']:.0f} s; "
          f"Triton {m['triton']} build {m['triton_build']}, Python {m['python']}: {Path(args.dir) / MANIFEST}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
