"""What the kernel files share: the interpreter and autotune switches, input checks, autocast,
the device guard every launch runs under, and the namespace of the ops registered with
torch.library."""

import contextlib
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Every op is registered as tritongpt::<name> (torch.ops.tritongpt.<name>): torch.compile sees
# each one as a single node of its graph, with a fake (shape-only) implementation for tracing.
NAMESPACE = "tritongpt"


def interpreted():
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# The one switch of the matmul-shaped kernels (attention, linear_gelu): autotuning over their
# curated Hopper lists, or a single config under the interpreter and with TRITONGPT_AUTOTUNE=0.
def fix_interpreter():
    """Triton 3.6's interpreter turns a scalar into a Python int with int() on its one-element
    array, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted"): every kernel
    whose loop bound is a runtime value fails. Later Triton squeezes the array first; do the same
    on the versions that do not. Only under the interpreter; compiled kernels never take this path."""
    if not interpreted():
        return
    import inspect

    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor
    if getattr(patch, "squeezes_scalars", False) or "int(self.handle.data))" not in inspect.getsource(patch):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.squeezes_scalars = True
    interpreter._patch_lang_tensor = patched


AUTOTUNE = not interpreted() and os.environ.get("TRITONGPT_AUTOTUNE", "1") != "0"
_FIXED_TILES = [False]


def fix_tiles(on=True):
    """Run the matmul-shaped kernels on their one fixed config (the one TRITONGPT_AUTOTUNE=0 runs)
    instead of autotuning, from now on in this process (the trainer's deterministic=true): the
    autotuner picks the fastest config by timing, separately in each process, so two runs of one
    config may pick different tiles, whose sums run in different orders."""
    _FIXED_TILES[0] = bool(on)


def tiles_fixed():
    return _FIXED_TILES[0]


# ----------------------------------------------------------------------------- input checks
# Each takes the op's name and the tensors by argument name (None for an absent optional one)
# and raises a ValueError that names the op, the argument and what to do.


def check_tensors(op, **tensors):
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_device(op, **tensors):
    """All tensors on one device, and one a kernel can run on: CUDA, or the CPU under Triton's
    interpreter (TRITON_INTERPRET=1)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: expected all tensors on one device, got {where}; move them to one device")
    device = next(iter(devices.values()))
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        raise ValueError(
            f"{op}: tensors are on {device}, but the Triton kernel runs on CUDA tensors "
            "(or on CPU tensors with TRITON_INTERPRET=1, Triton's interpreter)"
        )


def check_float(op, **tensors):
    """Each tensor float32, float16 or bfloat16; they may differ (layer_norm's bf16 x, fp32 weight)."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_one_dtype(op, **tensors):
    """All tensors of one dtype, and that one float32, float16 or bfloat16."""
    dtypes = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(dtypes.values())) > 1 or not set(dtypes.values()) <= set(FLOAT_DTYPES):
        got = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise ValueError(
            f"{op}: {', '.join(dtypes)} must share one of float32, float16 or bfloat16, but {got}; "
            "cast them to one dtype (under torch.autocast the op casts them for you)"
        )


# ----------------------------------------------------------------------------- autocast


def autocast_inputs(*tensors):
    """The tensors cast to torch.autocast's dtype when autocast is on for the first one's device,
    else as they are (None and non-tensors pass through, for the checks to report).

    Autocast does not cast the inputs of our torch.library ops, so a public op whose torch
    counterpart autocast would cast (F.linear, SDPA) casts its inputs itself, here, before the op
    is called: fp32 master weights, bf16 compute. The casts are part of the autograd graph (and
    of a compiled graph, where they fuse with their neighbours), so gradients come back in each
    input's own dtype."""
    dtype = autocast_dtype(tensors[0])
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in tensors)


def autocast_dtype(t):
    """torch.autocast's dtype when autocast is on for t's device, else None (the dtype an op
    whose output feeds a matmul writes that output in, so no cast pass follows it)."""
    if not isinstance(t, torch.Tensor) or t.device.type not in ("cpu", "cuda"):
        return None
    if not torch.is_autocast_enabled(t.device.type):
        return None
    return torch.get_autocast_dtype(t.device.type)


# ----------------------------------------------------------------------------- launches


def device_guard(t):
    """The context every launch runs in: t's CUDA device made current, so that a kernel runs
    where its tensors are (cuda:1 included) whatever the current device is; nothing on a CPU."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def num_sms(device):
    """Multiprocessors to size persistent grids by; a small number under the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


# ----------------------------------------------------------------------------- occupancy
# What one streaming multiprocessor holds at once, by compute capability (major * 10 + minor):
# 32-bit registers, shared memory in bytes (each CTA also takes 1 KiB of it for the system),
# threads and CTAs; and the shared memory one CTA may ask for (smem_cta). sm_90 is H100 / H200,
# sm_80 A100; the others for completeness.
SM_LIMITS = {
    80: dict(regs=65536, smem=167936, smem_cta=166912, threads=2048, ctas=32),
    86: dict(regs=65536, smem=102400, smem_cta=101376, threads=1536, ctas=16),
    89: dict(regs=65536, smem=102400, smem_cta=101376, threads=1536, ctas=24),
    90: dict(regs=65536, smem=233472, smem_cta=232448, threads=2048, ctas=32),
}
SMEM_PER_CTA_RESERVED = 1024


def ctas_per_sm(n_regs, num_warps, shared, limits):
    """CTAs of a compiled kernel (n_regs registers a thread, num_warps warps, `shared` bytes of
    shared memory) that one SM with `limits` (an SM_LIMITS entry) holds at once: the least of
    what registers, shared memory, threads and the CTA slots allow, as CUDA's occupancy
    calculator counts them (registers go out per warp in units of 256, from four quarters of
    the register file; shared memory in units of 128 bytes)."""
    regs_per_warp = -(-max(n_regs, 1) * 32 // 256) * 256
    by_regs = (limits["regs"] // 4 // regs_per_warp) * 4 // num_warps
    smem_per_cta = -(-(shared + SMEM_PER_CTA_RESERVED) // 128) * 128
    by_smem = limits["smem"] // smem_per_cta
    by_threads = limits["threads"] // (32 * num_warps)
    return max(0, min(by_regs, by_smem, by_threads, limits["ctas"]))


def sm_limits(device):
    """SM_LIMITS of a CUDA device (from its properties where the table lacks its capability)."""
    props = torch.cuda.get_device_properties(device)
    arch = props.major * 10 + props.minor
    if arch in SM_LIMITS:
        return SM_LIMITS[arch]
    return dict(
        regs=props.regs_per_multiprocessor, smem=props.shared_memory_per_multiprocessor,
        smem_cta=props.shared_memory_per_block_optin, threads=props.max_threads_per_multi_processor, ctas=16,
    )


_RESIDENT = {}  # (kernel, device, argument dtypes, meta) -> CTAs per SM


def resident_ctas(kernel, args, meta, device):
    """How many CTAs of `kernel`, compiled for these arguments and meta-parameters, one SM of
    `device` holds at once: read from the compiled kernel's registers and shared memory, so a
    persistent grid of this many CTAs per SM is exactly what runs at once. The kernel is
    compiled here if it is not yet (the launch that follows reuses it); the answer is kept per
    kernel, device, argument dtypes and meta-parameters. Under the interpreter: 2."""
    if device.type != "cuda":
        return 2
    dtypes = tuple(a.dtype if isinstance(a, torch.Tensor) else type(a) for a in args)
    key = (kernel, device.index, dtypes, tuple(sorted(meta.items())))
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **meta)
        compiled._init_handles()  # loads the binary: fills n_regs
        _RESIDENT[key] = max(1, ctas_per_sm(compiled.n_regs, compiled.metadata.num_warps, compiled.metadata.shared,
                                            sm_limits(device)))
    return _RESIDENT[key]
