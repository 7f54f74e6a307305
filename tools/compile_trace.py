"""python tools/compile_trace.py OUT.json: the seconds torch.compile spends tracing GPT-2 124M's
training step (Dynamo and AOTAutograd, forward and backward), per backend of the model, on this
machine: the first compiled call minus the fastest of the next two, with the aot_eager backend
(no code generation), at 8 tokens so that the step itself is small. One of the figures the GPU
campaign's time boxes rest on (docs/campaign.md); the rest of a compile (Inductor's code and its
Triton kernels) needs the GPU machine.
"""

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's tritongpt, before an installed one

import torch  # noqa: E402
import torch._dynamo  # noqa: E402

from tritongpt.bench.config import Settings, model_config  # noqa: E402
from tritongpt.gpt import GPT  # noqa: E402
from tritongpt.instrument.run import run_info  # noqa: E402


def main(out):
    result = {"what": __doc__.split("\n\n")[0], **run_info(torch.device("cpu")), "cpu": platform.processor(),
              "threads": torch.get_num_threads(), "backends": {}}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(model_config(Settings(model="gpt2")), backend=backend))
        step = torch.compile(model, backend="aot_eager")
        idx, targets = torch.randint(0, 50257, (2, 1, 8))
        calls = []
        for _ in range(3):
            t0 = time.perf_counter()
            step(idx, targets).backward()
            calls.append(round(time.perf_counter() - t0, 2))
        torch._dynamo.reset()
        result["backends"][backend] = {"calls_s": calls, "trace_s": round(calls[0] - min(calls[1:]), 1)}
        print(backend, result["backends"][backend], flush=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
