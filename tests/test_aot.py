"""Every Triton kernel launch of the project, compiled for Hopper (sm_90) and Ampere (sm_80) by
Triton's own compiler without a GPU (`python tools/aot.py`), held to what a GPU
run would need: it compiles, no config spills registers in 16-bit, shared memory fits, the
matmul-shaped kernels use wgmma on Hopper, and the LayerNorm backward's persistent grid gets
the occupancy it is sized for.

The command runs here as its own process (Triton must compile, not interpret), into a temporary
folder with an empty Triton cache. It reuses the records of tools/results/aot-sm*.json whose key
(a hash of the kernel's source, its arguments, config, target and Triton version) is unchanged
and compiles the rest, so a changed kernel is always compiled anew; it also compiles one reused
variant of every kernel again and fails if its figures differ from the committed ones. With
nothing changed that takes well under a minute; a kernel edit adds its variants' compiles (a few
seconds each); and the committed files must then be regenerated (`python tools/aot.py --reuse`),
which test_committed_results_are_current asks for.
"""

import json
import os
import subprocess
import sys
import types
from importlib import metadata

import pytest
import torch

from conftest import ROOT
from tritongpt.kernels import common, normalization
from tritongpt.kernels.common import SM_LIMITS, ctas_per_sm

COMMITTED = ROOT / "tools" / "results"
HALF = ("bf16", "fp16")
H100_SMS = 132


@pytest.fixture(scope="module")
def aot(tmp_path_factory):
    """{arch: the result file's contents} of `python tools/aot.py --arch 90 80 --reuse --verify`,
    after asserting that it exited 0 (every variant compiled, every verified record matched).
    With another Triton than the committed files' (pyproject pins the one for the tests) nothing
    can be reused: then sm_90 alone is compiled, all of it (minutes)."""
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITONGPT_AUTOTUNE")}
    env["TRITON_CACHE_DIR"] = str(out / "triton-cache")  # nothing compiled before counts
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    same = json.loads((COMMITTED / "aot-sm90.json").read_text())["triton"] == metadata.version("triton")
    archs = (90, 80) if same else (90,)
    cmd = [sys.executable, str(ROOT / "tools" / "aot.py"), "--arch", *map(str, archs), "--reuse", "--verify", "--jobs", "2",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, f"{' '.join(cmd[1:])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {arch: json.loads((out / f"aot-sm{arch}.json").read_text()) for arch in archs}


def _variants(data, kernel=None, dtypes=None):
    rows = [
        r for r in data["variants"]
        if (kernel is None or r["kernel"] == kernel) and (dtypes is None or r["dtype"] in dtypes)
    ]
    assert rows, f"no variants of {kernel} in {dtypes}: the test would check nothing"
    return rows


def _name(r):
    return f"{r['kernel']} {r['dtype']} {r['launch']} [{r['config_name']}]"


def test_every_variant_compiles_for_hopper_and_ampere(aot):
    for arch, data in aot.items():
        assert data["target"]["arch"] == arch
        kernels = {r["kernel"] for r in _variants(data)}
        assert len(kernels) == 10, f"sm_{arch}: kernels compiled: {sorted(kernels)}"
        failed = [f"{_name(r)}: {r['error']}" for r in data["variants"] if r["error"]]
        assert not failed, f"sm_{arch}: " + "\n".join(failed)


def test_no_config_spills_registers_on_sm90(aot):
    """Not in bf16/fp16, autotuned or fixed, and not in fp32 either."""
    spilled = [f"{_name(r)}: {r['spill_bytes']} bytes a thread" for r in _variants(aot[90]) if r["spill_bytes"]]
    assert not spilled, "\n".join(spilled)


def test_shared_memory_within_the_limit(aot):
    for arch, data in aot.items():
        limit = SM_LIMITS[arch]["smem_cta"]
        over = [f"{_name(r)}: {r['shared_bytes']} bytes" for r in _variants(data) if r["shared_bytes"] > limit]
        if arch == 90:
            assert not over, "\n".join(over)
        else:  # sm_80 has 163 KiB: the Hopper tiles that need more are skipped by the autotuner there
            assert all(r["tuned"] for r in _variants(data) if r["shared_bytes"] > limit), "\n".join(over)


def test_attention_linear_gelu_and_xxt_use_wgmma_on_sm90(aot):
    """All but the attention backward at head dim 256: every tile wgmma runs spills there, so it
    runs 16-row tiles (kernels.flash_attention.NARROW_BWD[256]) on mma.sync, and only there."""
    for kernel in ("_attn_fwd_kernel", "_attn_bwd_kernel", "_linear_gelu_fwd_kernel", "_xxt_kernel"):
        narrow = lambda r: r["config"].get("BLOCK_BIG", 64) < 64  # noqa: E731
        assert all("D=256" in r["launch"] for r in _variants(aot[90], kernel, HALF) if narrow(r))
        missing = [_name(r) for r in _variants(aot[90], kernel, HALF) if not r["wgmma"] and not narrow(r)]
        assert not missing, "no wgmma:\n" + "\n".join(missing)


def test_layer_norm_backward_grid_gets_its_occupancy(aot):
    """The backward's grid is CTAs-per-SM x SMs, with CTAs per SM read from the compiled kernel at
    launch (kernels.common.resident_ctas): the figure here is that same calculation on the
    compiled registers and shared memory, and the grid the launcher sizes from it is exactly what
    the SMs hold at once. Its tile was chosen for at least 4 CTAs (16 warps) an SM at GPT-2's width."""
    for r in _variants(aot[90], "_layer_norm_bwd_kernel"):
        ctas = ctas_per_sm(r["registers"], r["num_warps"], r["shared_bytes"], SM_LIMITS[90])
        assert ctas == r["ctas_per_sm"] and ctas >= 4, f"{_name(r)}: {r['registers']} registers, {ctas} CTAs an SM"
        grid = normalization.bwd_programs(16384, r["config"]["BLOCK_M"], ctas, H100_SMS)
        assert grid == ctas * H100_SMS


def test_committed_results_are_current(aot):
    """The committed files describe today's kernels: every record as a fresh run has it. (Run
    `python tools/aot.py --reuse` and commit tools/results/aot-sm*.json after a kernel change.)"""
    for arch, data in aot.items():
        committed = json.loads((COMMITTED / f"aot-sm{arch}.json").read_text())
        if committed["triton"] != data["triton"]:
            pytest.skip(f"the committed files were made with Triton {committed['triton']}, this is {data['triton']}")
        figures = lambda d: {r["key"]: {k: v for k, v in r.items() if k != "key"} for r in d["variants"]}  # noqa: E731
        old, new = figures(committed), figures(data)
        stale = sorted(_name(r) for key, r in new.items() if old.get(key) != r)
        gone = sorted(_name(r) for key, r in old.items() if key not in new)
        assert not stale and not gone, (
            f"tools/results/aot-sm{arch}.json is out of date (python tools/aot.py --reuse): "
            f"{len(stale)} new or changed, {len(gone)} gone, e.g. {(stale + gone)[:3]}"
        )


# ----------------------------------------------------------------------------- the calculation


def test_ctas_per_sm_counts_as_cudas_occupancy_calculator():
    h100 = SM_LIMITS[90]
    assert ctas_per_sm(255, 8, 0, h100) == 1  # 255 -> 256 registers a thread, 64 Ki a CTA of 8 warps
    assert ctas_per_sm(128, 8, 0, h100) == 2
    assert ctas_per_sm(129, 8, 0, h100) == 1  # 136 a thread: 3 warps a quarter, 12 an SM, 1 CTA of 8
    assert ctas_per_sm(96, 4, 4096, h100) == 5  # 5 warps a quarter
    assert ctas_per_sm(32, 4, 0, h100) == 16  # threads: 2048 / 128
    assert ctas_per_sm(16, 1, 0, h100) == 32  # the CTA slots
    assert ctas_per_sm(64, 4, 100 * 1024, h100) == 2  # shared memory: 228 KiB / (100 + 1) KiB
    assert ctas_per_sm(64, 4, 100 * 1024, SM_LIMITS[80]) == 1


def test_resident_ctas_reads_the_compiled_kernel_once(monkeypatch):
    """On a GPU the launch compiles (warmup) and reads registers, warps and shared memory off the
    compiled kernel, once per kernel, device, argument dtypes and meta-parameters."""
    calls = []

    class Kernel:
        def warmup(self, *args, grid, **meta):
            calls.append(meta)
            return types.SimpleNamespace(
                _init_handles=lambda: None, n_regs=96, metadata=types.SimpleNamespace(num_warps=4, shared=4096)
            )

    monkeypatch.setattr(common, "sm_limits", lambda device: SM_LIMITS[90])
    monkeypatch.setattr(common, "_RESIDENT", {})
    kernel, x, gpu = Kernel(), torch.empty(2, 8), torch.device("cuda", 0)
    assert common.resident_ctas(kernel, (x, 8), dict(BLOCK_M=2), gpu) == 5
    assert common.resident_ctas(kernel, (x, 16), dict(BLOCK_M=2), gpu) == 5  # same dtypes: remembered
    assert len(calls) == 1
    common.resident_ctas(kernel, (x.half(), 8), dict(BLOCK_M=2), gpu)
    assert len(calls) == 2
    assert common.resident_ctas(kernel, (x, 8), dict(BLOCK_M=2), torch.device("cpu")) == 2  # the interpreter
