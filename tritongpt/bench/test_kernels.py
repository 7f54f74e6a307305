"""Kernel benchmarks: `pytest bench/` (pytest-benchmark), on a GPU.

Each public op of `kernels`, forward, backward and both, at GPT-2 124M's sizes and a larger sweep,
against eager and compiled PyTorch (bench/ops.py has the cases and the byte/FLOP formulas).
The figures in each case's extra_info come from triton.testing.do_bench (CUDA events, median,
L2 flushed between calls): ms, the rate by the op's formula (GB/s or TFLOP/s), and that rate as a
percentage of the roofline measured at the start of the run. pytest-benchmark's own columns time
the same call from the host with a synchronize, so they include launch overhead. A JSON summary
of every case goes to bench/results/ (or --bench-out), rewritten after each case.

    pytest bench/ -k "layer_norm and gpt2"        # a subset
    pytest bench/ --sizes gpt2 --modes fwd+bwd    # GPT-2 124M's sizes, forward + backward only
    pytest bench/ --benchmark-group-by=group      # providers side by side per op, size and mode
    pytest bench/ --bench-smoke                   # every case at a tiny size, also on a CPU
    pytest bench/ -k newton_schulz                # Muon's whole orthogonalization, GPT-2 124M's matrices

test_newton_schulz times the five Newton-Schulz steps of one optimizer step's matrix kinds (the
MLP's C x 4C, q, k and v's three C x C blocks at once, a C x C) in the op's dtype: kernels.newton_schulz
(xxt for the two symmetric products) against kernels.reference.newton_schulz, eager and compiled
(full matmuls); the FLOPs are those of the reference, 5 * (4 * m^2 * n + 2 * m^3) per m x n matrix (m <= n).
"""

import pytest
import torch

from tritongpt import kernels
from tritongpt.bench import common, ops
from tritongpt.kernels import reference


def test_kernel(benchmark, case, device, dtype, roofline, save_record, smoke):
    benchmark.group = f"{case.op} {case.size} {case.mode}"
    timer = {"warmup": 1, "reps": 1} if smoke and device.type == "cpu" else {}
    compile_backend = "aot_eager" if device.type == "cpu" else "inductor"  # inductor's C++ build is slow on a CPU
    rec, prepared = ops.measure(case, roofline, device, dtype, compile_backend, **timer)
    save_record(rec)
    benchmark.extra_info.update(rec)
    if prepared is None:
        pytest.skip(f"{case.id}: {rec['reason']}")
    run, grads = prepared

    def call():
        for t in grads:
            t.grad = None
        run()
        common.sync(device)

    rounds = 2 if smoke else 20
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1 if smoke else 3, iterations=1)
    assert rec["ms"] > 0 and rec["rate"] > 0
    run = grads = prepared = None
    common.free_memory(device)


NS_SHAPES = {"mlp": (1, 768, 3072), "qkv": (3, 768, 768), "proj": (1, 768, 768)}
NS_PROVIDERS = {"kernels": kernels.newton_schulz, "torch": reference.newton_schulz, "torch_compile": None}


@pytest.mark.parametrize("provider", list(NS_PROVIDERS))
@pytest.mark.parametrize("shape", list(NS_SHAPES))
def test_newton_schulz(benchmark, shape, provider, device, dtype, roofline, save_record, smoke):
    B, m, n = (2, 20, 33) if smoke else NS_SHAPES[shape]
    benchmark.group = f"newton_schulz {shape}"
    torch.manual_seed(0)
    g = torch.randn(B, m, n, device=device, dtype=torch.float32).to(dtype)
    fn = NS_PROVIDERS[provider]
    if fn is None:
        common.reset_compiler()
        fn = torch.compile(reference.newton_schulz, backend="aot_eager" if device.type == "cpu" else "inductor")
    timer = {"warmup": 1, "reps": 1} if smoke and device.type == "cpu" else {}
    ms = common.time_ms(lambda: fn(g), device, **timer)
    flops = 5 * B * (4 * m * m * n + 2 * m**3)
    rec = {"op": "newton_schulz", "size": shape, "shape": dict(B=B, m=m, n=n), "mode": "fwd", "provider": provider,
           "dtype": str(dtype).removeprefix("torch."), "unit": "TFLOP/s", "formula": "5 * B * (4 m^2 n + 2 m^3)",
           "work": flops, "status": "ok", "reason": None, "ms": ms, "rate": flops / (ms * 1e-3) / 1e12,
           "roofline": roofline["matmul_tflops"], "peak_memory_mib": None}
    rec["percent_of_roofline"] = 100.0 * rec["rate"] / rec["roofline"] if rec["roofline"] else None
    save_record(rec)
    benchmark.extra_info.update(rec)
    benchmark.pedantic(lambda: (fn(g), common.sync(device)), rounds=2 if smoke else 20, warmup_rounds=1, iterations=1)
    assert ms > 0
