"""Fixtures of the kernel benchmarks (pytest bench/): the cases to run, the roofline, measured once
at the start of the run, and the records every case adds to one JSON summary, rewritten after each
case so that a run cut short keeps what it measured.

    pytest bench/                                   # every size of bench/ops.py, on a GPU
    pytest bench/ --sizes gpt2 --modes fwd+bwd      # a subset (the GPU campaign's)
    pytest bench/ --bench-smoke                     # the tiny size on whatever device there is
"""

import pytest
import torch

from tritongpt.bench import common, ops
from tritongpt.instrument.run import utc_stamp


def pytest_addoption(parser):
    parser.addoption(
        "--bench-out", default=None,
        help="kernel benchmark summary JSON path (default bench/results/kernels-<device>-<utc time>.json)",
    )
    parser.addoption("--sizes", default=None, help="comma-separated size labels of bench/ops.py (default: all)")
    parser.addoption("--modes", default=",".join(ops.MODES), help="comma-separated subset of: " + ", ".join(ops.MODES))
    parser.addoption(
        "--bench-smoke", action="store_true",
        help="the tiny smoke size, on the CPU when there is no GPU (such figures mean nothing; it checks the machinery)",
    )


def _listed(config, option, allowed):
    text = config.getoption(option)
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in allowed]
    if unknown or not items:
        raise pytest.UsageError(f"{option} {text!r}: choose from {', '.join(allowed)}")
    return items


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    modes = _listed(config, "--modes", ops.MODES)
    sizes = _listed(config, "--sizes", ops.size_labels())
    cases = ops.smoke_cases(modes) if config.getoption("--bench-smoke") else ops.gpu_cases(sizes, modes)
    metafunc.parametrize("case", cases, ids=lambda c: c.id)


@pytest.fixture(scope="session")
def smoke(request):
    return request.config.getoption("--bench-smoke")


@pytest.fixture(scope="session")
def device(smoke):
    if torch.cuda.is_available():
        return torch.device("cuda")
    if smoke:
        return torch.device("cpu")
    pytest.skip(
        "no CUDA device: the kernel benchmarks need a GPU (here the Triton kernels would run under "
        "the interpreter, and the figures would mean nothing); --bench-smoke runs the same machinery "
        "at a tiny size on the CPU"
    )


@pytest.fixture(scope="session")
def dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter has no bf16


@pytest.fixture(scope="session")
def roofline(device, dtype):
    return ops.measure_roofline(device, dtype)


@pytest.fixture(scope="session")
def save_record(request, device, roofline):
    """save_record(rec): add one case's record and rewrite the summary JSON with every record so far."""
    out = request.config.getoption("--bench-out") or (
        common.RESULTS_DIR / f"kernels-{'gpu' if device.type == 'cuda' else 'cpu'}-{utc_stamp()}.json"
    )
    records = []

    def save(rec):
        records.append(rec)
        common.write_json(ops.summary(records, roofline, device), out)

    yield save
    if records:
        print(f"\nkernel benchmark summary written to {out}")
