"""The dropout mask the attention kernels draw, written out for the tests to check and to hand
to the reference. Built on the kernels' own `_keep`, and reading its seed from a (1,) int64
tensor as they do, so the mask is the very one they use."""

import torch
import triton
import triton.language as tl

from tritongpt.kernels.flash_attention_kernels import _keep


@triton.jit
def _dropout_mask_kernel(
    mask_ptr,  # (B * H, T, T) int8 output: 1 where kept
    seed_ptr,  # (1,) int64
    T, dropout_p,
    BLOCK: tl.constexpr,
):
    bh = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = _keep(tl.load(seed_ptr), bh, rows[:, None], cols[None, :], T, dropout_p)
    inside = (rows[:, None] < T) & (cols[None, :] < T)
    tl.store(mask_ptr + bh * T * T + rows[:, None] * T + cols[None, :], keep.to(tl.int8), mask=inside)


def seed_tensor(seed, device):
    """A seed as the ops take it: a (1,) int64 tensor on the device."""
    return torch.tensor([seed], dtype=torch.int64, device=device)


def dropout_mask(seed, B, H, T, dropout_p, device):
    """The (B, H, T, T) bool mask of kept positions the kernels draw for `seed` (an int or the
    (1,) int64 seed tensor itself)."""
    seed = seed if isinstance(seed, torch.Tensor) else seed_tensor(seed, device)
    mask = torch.empty((B, H, T, T), dtype=torch.int8, device=device)
    BLOCK = 64
    grid = (triton.cdiv(T, BLOCK), triton.cdiv(T, BLOCK), B * H)
    _dropout_mask_kernel[grid](mask, seed, T, dropout_p, BLOCK=BLOCK)
    return mask.bool()
