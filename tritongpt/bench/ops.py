"""Per-kernel speed against the roofline: each public op of `kernels`, forward, backward and both,
against eager and compiled PyTorch. bench/test_kernels.py drives this under pytest-benchmark.

Providers:
    kernels        the public op (kernels.layer_norm, ...): the Triton kernel where it has landed
    torch          eager PyTorch: what the torch backend of gpt/ runs (the references of
                   kernels.reference; F.scaled_dot_product_attention for attention)
    torch_compile  torch.compile of the same function, compiled afresh for each case
    matmul         linear_gelu only: cuBLAS's x @ W.T alone, the floor its fused epilogue must near

On a GPU each case also records the peak memory one call allocates beyond its inputs.

What is counted (s = bytes per element of the activations; N rows = B*T tokens):
    memory-bound ops, in GB/s against the measured device-to-device copy (bytes read + written):
        layer_norm (N, C):      fwd 2*N*C*s (read x, write y); bwd 3*N*C*s (read x, dy; write dx)
        add_layer_norm (N, C):  fwd 4*N*C*s (read x, y; write s, out); bwd 4*N*C*s (read s, ds,
                                dout; write one gradient, that of x and of y)
        cross_entropy (N, V):   fwd N*V*s (read logits); bwd 2*N*V*s (read logits, write dlogits)
    matmul-shaped ops, in TFLOP/s against the measured bf16 matmul rate:
        linear_gelu (N, K)->M:  fwd 2*N*K*M; bwd 4*N*K*M (dx and dW); linear_gelu_exact the same
                                with the exact erf GELU (GPT-NeoX's), at GPT-2's size only
        linear_cross_entropy (N, C), V: fwd 2*N*C*V; bwd 4*N*C*V (the LM-head matmuls only)
        attention (B, H, T, D) causal: fwd 2*B*H*T^2*D (half of the full square's 4*B*H*T^2*D);
                                bwd 2.5x fwd
        xxt (B, M, K):          fwd B*M*(M+1)*K (the lower triangle and diagonal of x x^T, half of
                                the full product's 2*B*M^2*K); bwd 2*B*M^2*K ((dout + dout^T) @ x)
    fwd+bwd is the sum. Parameters (C-sized vectors) and per-row statistics are left out.
    These are the work the op must do, not what an implementation does: a kernel that computes
    its gradients during the forward (the fused LM-head cross-entropy does) shows a slow forward
    and a nearly free backward, even above 100% of the roofline; compare such ops on fwd+bwd.
"""

import dataclasses
import functools

import torch
import torch.nn.functional as F

from tritongpt import kernels
from tritongpt.bench import common
from tritongpt.kernels import reference

MODES = ("fwd", "bwd", "fwd+bwd")
PROVIDERS = ("kernels", "torch", "torch_compile")


@dataclasses.dataclass
class Op:
    name: str
    unit: str  # "GB/s" (bytes) or "TFLOP/s" (FLOPs)
    formula: str
    sizes: dict  # label -> shape dict; "gpt2" is GPT-2 124M's (B*T = 8 * 1024 tokens)
    smoke: dict  # one tiny shape for the CPU smoke run
    inputs: object  # (shape, device, dtype) -> tuple of args (tensors needing grads have requires_grad)
    torch_fn: object
    kernel_fn: object
    fwd_work: object  # (shape, s) -> bytes or FLOPs of the forward
    bwd_work: object  # (shape, s) -> bytes or FLOPs of the backward
    baselines: dict = dataclasses.field(default_factory=dict)  # extra provider name -> fn


def providers(op):
    return PROVIDERS + tuple(op.baselines)


def _randn(shape, device, dtype, grad=True, scale=1.0):
    return (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_(grad)


def _ln_inputs(sz, device, dtype):
    N, C = sz["N"], sz["C"]
    return (_randn((N, C), device, dtype), _randn((C,), device, dtype), _randn((C,), device, dtype))


def _add_ln_inputs(sz, device, dtype):
    N, C = sz["N"], sz["C"]
    return (_randn((N, C), device, dtype), _randn((N, C), device, dtype), _randn((C,), device, dtype),
            _randn((C,), device, dtype))


def _lg_inputs(sz, device, dtype):
    N, K, M = sz["N"], sz["K"], sz["M"]
    return (_randn((N, K), device, dtype), _randn((M, K), device, dtype, scale=K**-0.5), _randn((M,), device, dtype))


def _targets(N, V, device):
    return torch.randint(0, V, (N,), device=device)


def _ce_inputs(sz, device, dtype):
    N, V = sz["N"], sz["V"]
    return (_randn((N, V), device, dtype), _targets(N, V, device))


def _lce_inputs(sz, device, dtype):
    N, C, V = sz["N"], sz["C"], sz["V"]
    return (_randn((N, C), device, dtype), _randn((V, C), device, dtype, scale=C**-0.5), _targets(N, V, device))


def _attn_inputs(sz, device, dtype):
    shape = (sz["B"], sz["H"], sz["T"], sz["D"])
    return tuple(_randn(shape, device, dtype) for _ in range(3))


def _xxt_inputs(sz, device, dtype):
    return (_randn((sz["B"], sz["M"], sz["K"]), device, dtype, scale=sz["K"] ** -0.5),)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _matmul_alone(x, w, b):
    return x @ w.t()  # no bias, no GELU: cuBLAS's matmul by itself


OPS = {
    op.name: op
    for op in [
        Op(
            "layer_norm", "GB/s", "fwd 2*N*C*s; bwd 3*N*C*s",
            {"gpt2": dict(N=8192, C=768), "N16k-C768": dict(N=16384, C=768), "N8k-C1600": dict(N=8192, C=1600),
             "N32k-C768": dict(N=32768, C=768), "N32k-C1600": dict(N=32768, C=1600)},
            dict(N=33, C=24), _ln_inputs,
            lambda x, w, b: reference.layer_norm(x, w, b, 1e-5),
            lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5),
            lambda z, s: 2 * z["N"] * z["C"] * s, lambda z, s: 3 * z["N"] * z["C"] * s,
        ),
        Op(
            "add_layer_norm", "GB/s", "fwd 4*N*C*s; bwd 4*N*C*s",
            {"gpt2": dict(N=8192, C=768), "N16k-C768": dict(N=16384, C=768), "N32k-C1600": dict(N=32768, C=1600)},
            dict(N=33, C=24), _add_ln_inputs,
            lambda x, y, w, b: reference.add_layer_norm(x, y, w, b, 1e-5),
            lambda x, y, w, b: kernels.add_layer_norm(x, y, w, b, 1e-5),
            lambda z, s: 4 * z["N"] * z["C"] * s, lambda z, s: 4 * z["N"] * z["C"] * s,
        ),
        Op(
            "linear_gelu", "TFLOP/s", "fwd 2*N*K*M; bwd 4*N*K*M",
            {"gpt2": dict(N=8192, K=768, M=3072), "medium": dict(N=8192, K=1024, M=4096),
             "xl": dict(N=8192, K=1600, M=6400), "N32k-gpt2": dict(N=32768, K=768, M=3072)},
            dict(N=33, K=16, M=64), _lg_inputs, reference.linear_gelu, kernels.linear_gelu,
            lambda z, s: 2 * z["N"] * z["K"] * z["M"], lambda z, s: 4 * z["N"] * z["K"] * z["M"],
            baselines={"matmul": _matmul_alone},
        ),
        Op(
            "linear_gelu_exact", "TFLOP/s", "fwd 2*N*K*M; bwd 4*N*K*M",
            {"gpt2": dict(N=8192, K=768, M=3072)},
            dict(N=33, K=16, M=64), _lg_inputs,
            lambda x, w, b: reference.linear_gelu(x, w, b, approximate="none"),
            lambda x, w, b: kernels.linear_gelu(x, w, b, approximate="none"),
            lambda z, s: 2 * z["N"] * z["K"] * z["M"], lambda z, s: 4 * z["N"] * z["K"] * z["M"],
        ),
        Op(
            "cross_entropy", "GB/s", "fwd N*V*s; bwd 2*N*V*s",
            {"gpt2": dict(N=8192, V=50304), "N16k": dict(N=16384, V=50304), "N32k": dict(N=32768, V=50304)},
            dict(N=33, V=100), _ce_inputs,
            lambda logits, t: reference.cross_entropy(logits, t, -1),
            lambda logits, t: kernels.cross_entropy(logits, t, -1),
            lambda z, s: z["N"] * z["V"] * s, lambda z, s: 2 * z["N"] * z["V"] * s,
        ),
        Op(
            "linear_cross_entropy", "TFLOP/s", "fwd 2*N*C*V; bwd 4*N*C*V",
            {"gpt2": dict(N=8192, C=768, V=50304), "xl": dict(N=8192, C=1600, V=50304),
             "N32k-gpt2": dict(N=32768, C=768, V=50304)},
            dict(N=33, C=16, V=100), _lce_inputs,
            lambda x, w, t: reference.linear_cross_entropy(x, w, t, -1),
            lambda x, w, t: kernels.linear_cross_entropy(x, w, t, -1),
            lambda z, s: 2 * z["N"] * z["C"] * z["V"], lambda z, s: 4 * z["N"] * z["C"] * z["V"],
        ),
        Op(
            "attention", "TFLOP/s", "fwd 2*B*H*T^2*D (causal half of 4*B*H*T^2*D); bwd 2.5x fwd",
            {"gpt2": dict(B=8, H=12, T=1024, D=64), "B16-H12": dict(B=16, H=12, T=1024, D=64),
             "T2k-H16": dict(B=4, H=16, T=2048, D=64),
             "T4k-H25": dict(B=2, H=25, T=4096, D=64), "D128": dict(B=8, H=12, T=1024, D=128)},
            dict(B=1, H=2, T=33, D=16), _attn_inputs, _sdpa,
            lambda q, k, v: kernels.attention(q, k, v, causal=True),
            lambda z, s: 2 * z["B"] * z["H"] * z["T"] ** 2 * z["D"],
            lambda z, s: 2.5 * 2 * z["B"] * z["H"] * z["T"] ** 2 * z["D"],
        ),
        Op(
            "xxt", "TFLOP/s", "fwd B*M*(M+1)*K (half of x x^T); bwd 2*B*M^2*K",
            {"gpt2": dict(B=1, M=768, K=3072), "gpt2-qkv": dict(B=3, M=768, K=768), "xl": dict(B=1, M=1600, K=6400)},
            dict(B=2, M=33, K=20), _xxt_inputs, reference.xxt, kernels.xxt,
            lambda z, s: z["B"] * z["M"] * (z["M"] + 1) * z["K"], lambda z, s: 2 * z["B"] * z["M"] ** 2 * z["K"],
        ),
    ]
}


def work(op, shape, mode, elem_bytes):
    fwd, bwd = op.fwd_work(shape, elem_bytes), op.bwd_work(shape, elem_bytes)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    size: str  # a label of Op.sizes, or "smoke"
    mode: str
    provider: str

    @property
    def id(self):
        return f"{self.op}-{self.size}-{self.mode}-{self.provider}"


def gpu_cases(sizes=None, modes=MODES):
    """Every op, size label (all, or those in `sizes`), mode and provider."""
    return [
        Case(o.name, size, mode, prov)
        for o in OPS.values() for size in o.sizes if sizes is None or size in sizes
        for mode in modes for prov in providers(o)
    ]


def smoke_cases(modes=MODES):
    return [Case(o.name, "smoke", mode, prov) for o in OPS.values() for mode in modes for prov in providers(o)]


def size_labels():
    return sorted({size for o in OPS.values() for size in o.sizes})


# ----------------------------------------------------------------------------- the roofline


def measure_roofline(device, dtype, copy_bytes=None, matmul_n=None):
    """The two ceilings the cases are compared with, measured now on this device:
    copy:   GB/s of dst.copy_(src), counting bytes read + written (2 * copy_bytes);
    matmul: TFLOP/s of an n x n x n matmul in `dtype` (2 * n^3 FLOPs)."""
    on_gpu = device.type == "cuda"
    copy_bytes = copy_bytes or (2**30 if on_gpu else 2**23)
    n = matmul_n or (8192 if on_gpu else 256)
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = common.time_ms(functools.partial(dst.copy_, src), device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    mm_ms = common.time_ms(functools.partial(torch.matmul, a, b), device)
    del src, dst, a, b
    common.free_memory(device)
    return {
        "copy_gbps": 2 * copy_bytes / (copy_ms * 1e-3) / 1e9,
        "copy_how": f"device-to-device copy of {copy_bytes / 2**20:.0f} MiB, bytes read + written",
        "matmul_tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12,
        "matmul_how": f"{n} x {n} x {n} matmul in {str(dtype).removeprefix('torch.')}, 2*n^3 FLOPs",
    }


# ----------------------------------------------------------------------------- one case


def peak_memory_mib(run, grads, device):
    """MiB that one call of run() allocates at its peak beyond what was allocated before it (the
    inputs, and in bwd mode the saved forward, are not counted). None on a CPU."""
    if device.type != "cuda":
        return None
    for t in grads:
        t.grad = None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def prepare(case, device, dtype, compile_backend="inductor", seed=0):
    """(run, grads): run() does the case's work once; grads are the tensors whose .grad the
    timer clears before each call (so backward never measures gradient accumulation)."""
    op = OPS[case.op]
    shape = op.smoke if case.size == "smoke" else op.sizes[case.size]
    torch.manual_seed(seed)
    args = op.inputs(shape, device, dtype)
    grads = [a for a in args if a.requires_grad]
    fn = {"kernels": op.kernel_fn, "torch": op.torch_fn, **op.baselines}.get(case.provider)
    if case.provider == "torch_compile":
        common.reset_compiler()
        fn = torch.compile(op.torch_fn, backend=compile_backend, dynamic=False)

    def outputs():
        """The op's outputs as a tuple (add_layer_norm has two, both with a gradient)."""
        out = fn(*args)
        return out if isinstance(out, tuple) else (out,)

    if case.mode == "fwd":
        def run():
            return fn(*args)
    elif case.mode == "bwd":
        outs = outputs()
        grad_outs = [torch.randn_like(o) if o.dim() else None for o in outs]

        def run():
            torch.autograd.backward(outs, grad_outs, retain_graph=True)
    else:
        def run():
            outs = outputs()
            torch.autograd.backward(outs, [torch.ones_like(o) if o.dim() else None for o in outs])
    return run, grads, shape


def measure(case, roofline, device, dtype, compile_backend="inductor", **timer):
    """One case's record: ms (median), the work by the op's formula, its rate, and the rate as a
    percentage of the roofline. A provider that fails (e.g. torch.compile) is recorded skipped."""
    op = OPS[case.op]
    elem = torch.tensor([], dtype=dtype).element_size()
    shape = op.smoke if case.size == "smoke" else op.sizes[case.size]
    amount = work(op, shape, case.mode, elem)
    ceiling = roofline["copy_gbps"] if op.unit == "GB/s" else roofline["matmul_tflops"]
    rec = {
        "op": case.op, "size": case.size, "shape": dict(shape), "mode": case.mode,
        "provider": case.provider, "dtype": str(dtype).removeprefix("torch."),
        "unit": op.unit, "formula": op.formula, "work": amount,
        "status": "ok", "reason": None, "ms": None, "rate": None, "roofline": ceiling,
        "percent_of_roofline": None, "peak_memory_mib": None,
    }
    try:
        run, grads, _ = prepare(case, device, dtype, compile_backend)
        ms = common.time_ms(run, device, grad_to_none=grads, **timer)
        rec["peak_memory_mib"] = peak_memory_mib(run, grads, device)
    except Exception as exc:  # noqa: BLE001 - recorded, the other cases go on
        if case.provider != "torch_compile" and not common.is_oom(exc):
            raise
        rec["status"], rec["reason"] = "skipped", common.first_line(exc)
        run = grads = None
        common.free_memory(device)
        return rec, None
    rate = amount / (ms * 1e-3) / (1e9 if op.unit == "GB/s" else 1e12)
    rec.update(ms=ms, rate=rate, percent_of_roofline=100.0 * rate / ceiling if ceiling else None)
    if rec["percent_of_roofline"] is None:
        rec["reason"] = "the roofline measured zero"
    return rec, (run, grads)


def summary(records, roofline, device):
    """The JSON summary of a kernel benchmark run."""
    return {
        "kind": "kernels",
        **common.result_header(device),
        "roofline": roofline,
        "formulas": {o.name: {"unit": o.unit, "formula": o.formula} for o in OPS.values()},
        "counting": __doc__.split("What is counted", 1)[1].strip(),
        "cases": records,
    }


def run_smoke(device, out_path, compile_backend="aot_eager"):
    """Every op, mode and provider at a tiny size (the CPU smoke behind the unit tests)."""
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    roofline = measure_roofline(device, dtype)
    # one untimed call and one timed call per case: the smoke checks the machinery, not speed
    records = [measure(c, roofline, device, dtype, compile_backend, warmup=1, reps=1)[0] for c in smoke_cases()]
    common.reset_compiler()
    return common.write_json(summary(records, roofline, device), out_path)
