"""python tools/aot.py: every Triton kernel of the project compiled for Hopper (sm_90) and Ampere
(sm_80) by Triton's own compiler and the ptxas it ships with, on a machine with no GPU.

    python tools/aot.py                        # sm_90 and sm_80 -> tools/results/aot-sm90.json, aot-sm80.json
    python tools/aot.py --reuse                # compile only what changed since the committed files
    python tools/aot.py --arch 90 --jobs 2     # one target, two compiles at a time
    python tools/aot.py --arch 90 80 --reuse --verify --out DIR   # what tests/test_aot.py runs
    python tools/aot.py --table                # docs/compile-audit.md's table, from the committed files

What it compiles: tools/aot_launches.py, every kernel launch of the project at GPT-2 124M's
shapes (16 x 1024 rows of 768, V = 50304, 12 heads of 64) and attention also at head dim 128 and
at the other families' options (a window; head dims 80 and 256 with rotary), with and without
dropout; each in bf16, fp16 and fp32, with every config the launch can run:
each config of its autotune list that the list's own pruning keeps for those arguments, and
each fixed config (the host's choice, or the one config that TRITONGPT_AUTOTUNE=0 runs).
Arguments are specialized as at a real launch (16-byte aligned pointers, the real sizes and
strides), since alignment and divisibility change the code.

For each variant it records registers a thread and spill bytes (local memory a thread: the stack
frame ptxas writes spilled registers to), from the cubin; shared memory a CTA; CTAs and warps one
SM holds at once (kernels.common.ctas_per_sm, the calculation the LayerNorm backward sizes its
grid with at launch); and whether the PTX uses wgmma (Hopper's warpgroup MMA) -- into a JSON
file per target, with the target, the Triton version, the git commit and the time. A compile
that fails is recorded with its error, and the command exits non-zero.

--reuse takes the records of an earlier file whose key (a hash of the kernel's source and of
the jit functions beside it, its arguments, flags, config, target and Triton version) is
unchanged and compiles the rest, so a changed kernel is always compiled anew; --verify compiles
one reused variant of each kernel again and fails if anything differs.

Another Triton version (the GPU machines run Triton 3.6 with torch 2.11): run the command with
the Python of an environment that has it, --out elsewhere, e.g.
    python -m venv venv36 && venv36/bin/pip install triton==3.6.0 torch==2.11.0 numpy
    venv36/bin/python tools/aot.py --out tools/results/aot-triton-3.6

Triton must compile here, not interpret: this module turns the interpreter off before triton is
first imported (kernels would turn it on without a GPU), so run it as its own process.
tools/warm_cache.py compiles the same launches into a Triton cache folder.
"""

import os
import sys

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITONGPT_AUTOTUNE"] = "1"  # the autotune lists are what is being compiled

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's tritongpt, before an installed one

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Heuristics  # noqa: E402
from triton.runtime.jit import JITFunction, MockTensor  # noqa: E402

from aot_launches import ATTENTION, LAUNCHES, B, C, ROWS, T, V, Launch  # noqa: E402
from tritongpt.bench.common import write_json  # noqa: E402
from tritongpt.instrument.run import git_commit  # noqa: E402
from tritongpt.kernels.common import SM_LIMITS, ctas_per_sm, interpreted  # noqa: E402

ARCHS = (90, 80)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _heuristics(kernel):
    """{name: function of the arguments} of every @triton.heuristics around a jit function."""
    found = {}
    while not isinstance(kernel, JITFunction):
        if isinstance(kernel, Heuristics):
            found.update(kernel.values)
        kernel = kernel.fn
    return found


# ----------------------------------------------------------------------------- variants


@dataclasses.dataclass
class Variant:
    launch: Launch
    config: dict  # meta-parameters with num_warps / num_stages
    tuned: bool  # from the autotune list (else a fixed config)
    arch: int

    def key(self):
        """What the compiled result depends on: a change to any of it compiles the variant anew."""
        L = self.launch
        spec = [L.kernel.fn.__name__, source_hash(L.kernel), self.arch, triton.__version__]
        spec += [sorted((k, repr(v)) for k, v in d.items()) for d in (L.args, L.flags, self.config)]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:24]

    def record(self):
        L = self.launch
        return dict(
            op=L.op, kernel=L.kernel.fn.__name__, launch=L.what, dtype=L.dtype, arch=self.arch, tuned=self.tuned,
            config=self.config, config_name=config_name(self.config), key=self.key(),
        )


def source_hash(kernel):
    """A hash of the kernel's source and of every jit function and tl.constexpr its module's
    globals hold (the helpers it calls among them). Unlike Triton's own cache key it leaves line
    numbers out: moving a kernel down its file changes only the compiled code's debug lines."""
    parts = [kernel.src]
    for name, value in sorted(kernel.__globals__.items()):
        if isinstance(value, JITFunction):
            parts.append(f"{name}:{value.src}")
        elif isinstance(value, tl.constexpr):
            parts.append(f"{name}={value.value!r}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def config_name(config):
    """BLOCK_M=128 BLOCK_N=64 warps=8 stages=3"""
    meta = " ".join(f"{k}={v}" for k, v in config.items() if k not in ("num_warps", "num_stages"))
    extra = "".join(f" {k[4:]}={config[k]}" for k in ("num_warps", "num_stages") if config.get(k) is not None)
    return (meta + extra).strip() or "defaults"


def _meta(config):
    """A triton.Config, or a dict of what the host passes, as one dict."""
    if isinstance(config, triton.Config):
        config = config.all_kwargs()
    return {k: v for k, v in config.items() if v is not None and k not in ("num_ctas", "ir_override")}


def variants(arch):
    """Every (launch, config) of the project for `arch`, in the order of LAUNCHES."""
    out = []
    for launches in LAUNCHES:
        for dtype in ("bf16", "fp16", "fp32"):
            for launch in launches(dtype):
                configs = []
                if launch.tuned is not None:
                    named = {k: MockTensor(v) if isinstance(v, torch.dtype) else v for k, v in launch.args.items()}
                    pruned = launch.tuned.configs
                    if launch.tuned.early_config_prune is not None:
                        pruned = launch.tuned.early_config_prune(launch.tuned.configs, named, **launch.flags)
                    configs += [(_meta(c), True) for c in pruned]
                configs += [(_meta(c), False) for c in launch.fixed if (_meta(c), True) not in configs]
                out += [Variant(launch, c, tuned, arch) for c, tuned in configs]
    return out


# ----------------------------------------------------------------------------- compiling


class CompileOnlyDriver:
    """Stands in for Triton's CUDA driver so that JITFunction.warmup compiles for `arch` without a
    GPU: it names the target, a device (the arch number, so each target keeps its own cache of
    compiled kernels) and a stream. Nothing is loaded or launched."""

    def __init__(self, arch):
        self.arch = arch

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0


def _cuobjdump():
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resources(cubin):
    """(registers a thread, local memory a thread in bytes) of a cubin, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        cmd = [str(_cuobjdump()), "--dump-resource-usage", f.name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if "REG:" in line)
    fields = dict(part.split(":", 1) for part in line.split() if ":" in part)
    return int(fields["REG"]), int(fields["STACK"]) + int(fields["LOCAL"])


def launch_kwargs(v):
    """The keyword arguments of the variant's launch: pointers as MockTensors of their dtype
    (Triton specializes them as 16-byte aligned), the flags, the config, and what the kernel's
    @triton.heuristics compute from them. A parameter with no value is a ValueError."""
    L = v.launch
    given = {**L.args, **L.flags, **v.config}
    kwargs = {k: MockTensor(x) if isinstance(x, torch.dtype) else x for k, x in given.items()}
    for name, rule in _heuristics(L.tuned or L.kernel).items():
        kwargs[name] = rule(given)
    missing = [p.name for p in L.kernel.params if p.name not in kwargs and not p.has_default]
    if missing:
        raise ValueError(f"tools/aot_launches.py's entry for {L.kernel.fn.__name__} ({L.op}, {L.what}) "
                         f"gives no value for {missing}")
    return kwargs


def compile_kernel(v):
    """The variant compiled for its target by the runtime's own path (JITFunction.warmup), through
    TRITON_CACHE_DIR like any launch: the CompiledKernel (its .hash names its cache folder)."""
    kwargs = launch_kwargs(v)
    driver.set_active(CompileOnlyDriver(v.arch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return v.launch.kernel.warmup(grid=(1,), **kwargs)


def compile_variant(v):
    """Compile one variant for its target -> its record, with the figures or the error."""
    rec = v.record()
    try:
        launch_kwargs(v)
    except ValueError as e:
        rec["error"] = str(e)
        return rec
    try:
        compiled = compile_kernel(v)
        regs, spill = resources(compiled.asm["cubin"])
    except Exception as e:  # noqa: BLE001 - recorded, and the command fails at the end
        rec["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        return rec
    limits = SM_LIMITS[v.arch]
    warps, shared = compiled.metadata.num_warps, compiled.metadata.shared
    ctas = ctas_per_sm(regs, warps, shared, limits) if shared <= limits["smem_cta"] else 0
    rec.update(
        num_warps=warps, registers=regs, spill_bytes=spill, shared_bytes=shared, ctas_per_sm=ctas,
        warps_per_sm=ctas * warps, wgmma="wgmma" in compiled.asm["ptx"], error=None,
    )
    return rec


FIGURES = ("num_warps", "registers", "spill_bytes", "shared_bytes", "ctas_per_sm", "warps_per_sm", "wgmma", "error")
_TODO = []  # the variants the worker processes compile, by index (set before they start)


def _compile_index(i):
    return i, compile_variant(_TODO[i])


def compile_all(todo, jobs):
    """Records of the variants in `todo`, compiled `jobs` at a time (each in a worker process)."""
    _TODO[:] = todo
    done = [None] * len(todo)
    if jobs <= 1:
        for i in range(len(todo)):
            done[i] = compile_variant(todo[i])
            _progress(i, len(todo), done[i])
        return done
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for n, (i, rec) in enumerate(pool.map(_compile_index, range(len(todo)), chunksize=1)):
            done[i] = rec
            _progress(n, len(todo), rec)
    return done


def _progress(n, total, rec):
    figures = (
        f"error: {rec['error']}" if rec.get("error")
        else f"{rec['registers']} regs, {rec['spill_bytes']} B spilled, {rec['shared_bytes'] // 1024} KiB smem, "
             f"{rec['ctas_per_sm']} CTAs/SM{', wgmma' if rec['wgmma'] else ''}"
    )  # fmt: skip
    print(f"[{n + 1}/{total}] sm_{rec['arch']} {rec['kernel']} {rec['dtype']} {rec['launch']} | "
          f"{rec['config_name']} | {figures}", flush=True)  # fmt: skip


# ----------------------------------------------------------------------------- one target


def run_arch(arch, out_dir, jobs, commit, reuse=None, verify=False):
    """Compile (or reuse) every variant for `arch`, write aot-sm<arch>.json to out_dir -> (its
    path, the number of variants compiled, a list of problems: errors and verify mismatches).
    commit: (git commit, dirty) of the tree, taken before any result file was rewritten."""
    todo = variants(arch)
    old = {}
    if reuse is not None and Path(reuse).exists():
        old = {r["key"]: r for r in json.loads(Path(reuse).read_text())["variants"] if not r.get("error")}
    records = [v.record() for v in todo]
    fresh = [i for i, r in enumerate(records) if r["key"] not in old]
    checks = []
    if verify:  # one reused variant of each kernel, compiled again
        seen = set()
        for i, r in enumerate(records):
            if r["key"] in old and r["kernel"] not in seen:
                seen.add(r["kernel"])
                checks.append(i)
    print(f"sm_{arch}: {len(todo)} variants, {len(todo) - len(fresh)} reused, {len(fresh)} to compile"
          + (f", {len(checks)} reused ones compiled again to verify" if checks else ""), flush=True)  # fmt: skip
    compiled = compile_all([todo[i] for i in fresh + checks], jobs)
    problems = []
    for r in records:
        if r["key"] in old:
            r.update({k: old[r["key"]][k] for k in FIGURES})
    for i, rec in zip(fresh + checks, compiled, strict=True):
        if i in fresh:
            records[i] = rec
        else:
            diff = {k: (records[i][k], rec[k]) for k in FIGURES if records[i][k] != rec[k]}
            if diff:
                problems.append(f"reused record differs from a fresh compile: {rec['kernel']} {rec['launch']} "
                                f"{rec['config_name']}: {diff}")  # fmt: skip
    problems += [f"{r['kernel']} {r['dtype']} {r['launch']} {r['config_name']}: {r['error']}"
                 for r in records if r["error"]]  # fmt: skip
    result = dict(
        what="every Triton kernel launch of the project compiled by Triton's compiler, no GPU (python tools/aot.py)",
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        target=dict(backend="cuda", arch=arch, name=f"sm_{arch}", limits=SM_LIMITS[arch]),
        triton=triton.__version__, torch=torch.__version__, python=platform.python_version(),
        git_commit=commit[0], git_dirty=commit[1],
        shapes=dict(rows=ROWS, batch=B, seq=T, width=C, vocab=V, attention=ATTENTION),
        compiled=len(fresh), reused=len(todo) - len(fresh), variants=records,
    )  # fmt: skip
    return write_json(result, Path(out_dir) / f"aot-sm{arch}.json"), len(fresh), problems


# ----------------------------------------------------------------------------- the audit's table


def _span(rows, key):
    return f"{min(r[key] for r in rows)}-{max(r[key] for r in rows)}"


def table(paths):
    """A markdown table per kernel from result files: variants, registers, spills, shared memory,
    CTAs per SM and wgmma of its 16-bit variants (autotune configs and fixed ones), per target."""
    lines = [
        "| target | kernel | 16-bit variants | registers | spill bytes | shared KiB | CTAs/SM | wgmma |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        data = json.loads(Path(path).read_text())
        rows = {}
        for r in data["variants"]:
            if r["dtype"] != "fp32" and not r["error"]:
                rows.setdefault(r["kernel"], []).append(r)
        for kernel, rs in rows.items():
            wgmma = sum(r["wgmma"] for r in rs)
            wgmma = "all" if wgmma == len(rs) else "none" if wgmma == 0 else f"{wgmma}/{len(rs)}"
            lines.append(
                f"| sm_{data['target']['arch']} | `{kernel}` | {len(rs)} | {_span(rs, 'registers')} | "
                f"{max(r['spill_bytes'] for r in rs)} | {max(r['shared_bytes'] for r in rs) // 1024} | "
                f"{_span(rs, 'ctas_per_sm')} | {wgmma} |"
            )  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tools/aot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(SM_LIMITS),
                   help="targets (default: 90 80)")  # fmt: skip
    p.add_argument("--out", default=str(RESULTS_DIR),
                   help="folder of the aot-sm<arch>.json files (default tools/results/)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at a time (default: the cores)")
    p.add_argument("--reuse", nargs="?", const="committed", default=None,
                   help="reuse unchanged records of a results folder (default: tools/results/)")  # fmt: skip
    p.add_argument("--verify", action="store_true", help="compile one reused variant of each kernel again and compare")
    p.add_argument("--table", action="store_true", help="print the audit's table from the files in --out and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table([Path(args.out) / f"aot-sm{a}.json" for a in args.arch]))
        return 0
    if interpreted():
        sys.exit("tools/aot.py: Triton was imported with TRITON_INTERPRET=1; run python tools/aot.py as its own process")
    problems = []
    commit = git_commit()
    for arch in args.arch:
        reuse = None
        if args.reuse is not None:
            reuse = Path(RESULTS_DIR if args.reuse == "committed" else args.reuse) / f"aot-sm{arch}.json"
        path, n, found = run_arch(arch, args.out, args.jobs, commit, reuse, args.verify)
        print(f"sm_{arch}: wrote {path} ({n} compiled)", flush=True)
        problems += found
    for line in problems:
        print("PROBLEM:", line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
