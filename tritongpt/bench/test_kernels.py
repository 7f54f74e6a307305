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
"""

import pytest

from tritongpt.bench import common, ops


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
