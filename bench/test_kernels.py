"""Kernel benchmarks: `pytest bench/` (pytest-benchmark), on a GPU.

Each public op of `kernels`, forward, backward and both, at GPT-2 124M's sizes and a larger sweep,
against eager and compiled PyTorch (bench/ops.py has the cases and the byte/FLOP formulas).
The figures in each case's extra_info come from triton.testing.do_bench (CUDA events, median,
L2 flushed between calls): ms, the rate by the op's formula (GB/s or TFLOP/s), and that rate as a
percentage of the roofline measured at the start of the run. pytest-benchmark's own columns time
the same call from the host with a synchronize, so they include launch overhead. A JSON summary
of every case goes to bench/results/ (or --bench-out).

    pytest bench/ -k "layer_norm and gpt2"        # a subset
    pytest bench/ --benchmark-group-by=group      # providers side by side per op, size and mode
"""

import pytest
import torch

from bench import common, ops


@pytest.mark.parametrize("case", ops.gpu_cases(), ids=lambda c: c.id)
def test_kernel(benchmark, case, device, roofline, kernel_records):
    benchmark.group = f"{case.op} {case.size} {case.mode}"
    rec, prepared = ops.measure(case, roofline, device, torch.bfloat16)
    kernel_records.append(rec)
    benchmark.extra_info.update(rec)
    if prepared is None:
        pytest.skip(f"{case.id}: {rec['reason']}")
    run, grads = prepared

    def call():
        for t in grads:
            t.grad = None
        run()
        torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=20, warmup_rounds=3, iterations=1)
    assert rec["ms"] > 0 and rec["rate"] > 0
    run = grads = prepared = None
    common.free_memory(device)
