"""Fixtures of the kernel benchmarks (pytest bench/): the roofline, measured once at the start of
the run, and the records every case adds, written as one JSON summary at the end."""

import pytest
import torch

from bench import common, ops
from instrument.run import utc_stamp


def pytest_addoption(parser):
    parser.addoption(
        "--bench-out", default=None,
        help="kernel benchmark summary JSON path (default bench/results/kernels-<device>-<utc time>.json)",
    )


@pytest.fixture(scope="session")
def device():
    if not torch.cuda.is_available():
        pytest.skip(
            "no CUDA device: the kernel benchmarks need a GPU (here the Triton kernels would run under "
            "the interpreter, and the figures would mean nothing); tests/test_bench.py runs a CPU smoke "
            "of the same machinery"
        )
    return torch.device("cuda")


@pytest.fixture(scope="session")
def roofline(device):
    return ops.measure_roofline(device, torch.bfloat16)


@pytest.fixture(scope="session")
def kernel_records(request, device, roofline):
    records = []
    yield records
    if records:
        out = request.config.getoption("--bench-out") or (
            common.RESULTS_DIR / f"kernels-gpu-{utc_stamp()}.json"
        )
        path = common.write_json(ops.summary(records, roofline, device), out)
        print(f"\nkernel benchmark summary written to {path}")
