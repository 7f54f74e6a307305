"""python tests/warm_cache_probe.py CACHE KERNELS [odd]: the campaign's launches of the kernels named
in KERNELS (comma-separated, as tools/warm_cache.py --only takes them), made through Triton's
runtime as the host launchers make them, everything but the GPU launch itself: real tensors,
the arguments by position and the flags by name; an autotuned launch through its autotuner's own
warm-up (the configs its pruning keeps, each called with Config.all_kwargs(), as its benchmark
calls them); a fixed config through JITFunction.run with the config as keywords. Each compile
looks CACHE up (TRITON_CACHE_DIR), for sm_90 (tools/aot.py's compile-only driver).

With `odd`, each integer argument that is a multiple of 16 is made one larger: a specialization
the warm cache was not built for, which must miss.

tests/test_campaign.py runs it as its own process: Triton must compile here, not interpret.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
os.environ["TRITON_INTERPRET"] = "0"

import aot  # noqa: E402 - turns the interpreter off before triton is imported
import torch  # noqa: E402
import warm_cache  # noqa: E402
from triton.runtime import driver  # noqa: E402


def real(value):
    """A MockTensor (a pointer of a dtype) -> a real tensor of that dtype; anything else as it is."""
    return torch.empty(16, dtype=value.dtype) if isinstance(value, aot.MockTensor) else value


def call(v, odd):
    L = v.launch
    kwargs = {k: real(x) for k, x in aot.launch_kwargs(v).items()}
    for name, value in L.args.items() if odd else ():
        if type(value) is int and value % 16 == 0:
            kwargs[name] += 1
    params = [p.name for p in L.kernel.params]
    positional = []
    for name in params:  # the arguments by position, as the host passes them, up to the first flag
        if name not in L.args:
            break
        positional.append(kwargs.pop(name))
    driver.set_active(aot.CompileOnlyDriver(90))
    if v.tuned:
        for k in v.config:  # the autotuner adds each config itself
            kwargs.pop(k)
        L.tuned.warmup(*positional, grid=(1,), **kwargs)
    else:
        L.kernel.run(*positional, grid=(1,), warmup=True, **kwargs)


def main(cache, kernels, odd=False):
    os.environ["TRITON_CACHE_DIR"] = str(Path(cache).resolve())
    done = set()
    for v in warm_cache.campaign_variants(90, kernels.split(",")):
        once = (id(v.launch), v.tuned) if v.tuned else (id(v.launch), repr(v.config))
        if once not in done:  # an autotuner's warm-up covers all its configs at once
            done.add(once)
            call(v, odd)
    print(f"{len(done)} launches made")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], odd=sys.argv[3:] == ["odd"]))
