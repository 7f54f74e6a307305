"""What `python tools/aot.py` compiles (and tools/warm_cache.py, the campaign's share of it): every
kernel launch of the project, as its host launcher makes it, at GPT-2 124M's shapes. One Launch per launch kind: the jit function, its arguments
(pointers by dtype, 16-byte aligned as torch allocates them; sizes and strides as at GPT-2
scale, since divisibility by 16 changes the code), the constexpr flags the host passes, and the
configs it can run (its autotuner's list, pruned as the autotuner prunes it, and the configs the
host picks itself). The host's own helpers and constants (normalization._tile, losses._block_v,
flash_attention._flags, the config lists, ...) choose the tiles and flags here too, so those
choices live in one place; a kernel whose arguments change needs its entry here changed (the
command names the argument an entry lacks).

A new variant of attention (a head dim, a flag of kernels.flash_attention._flags) is one more
entry in ATTENTION; a new kernel is one more function in LAUNCHES.

Import it through tools/aot.py, which turns Triton's interpreter off before triton is imported:
under the interpreter the kernels are not jit functions and cannot be compiled.
"""

import dataclasses
import types

import torch
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from tritongpt.kernels import flash_attention as fa
from tritongpt.kernels import flash_attention_kernels as fak
from tritongpt.kernels import fused_mlp as mlp
from tritongpt.kernels import losses, normalization
from tritongpt.kernels.newton_schulz import SINGLE_CONFIG as XXT_SINGLE_CONFIG  # (kernels.newton_schulz is the function)
from tritongpt.kernels.newton_schulz import _input_precision as xxt_input_precision
from tritongpt.kernels.newton_schulz import _xxt_kernel
from tritongpt.kernels.reference import NS_COEFFICIENTS

F32, I64 = torch.float32, torch.int64
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# GPT-2 124M: B x T = 16 x 1024 rows of C = 768, 12 heads, a 4C MLP, V = 50304 (50257 padded).
B, T, C, V = 16, 1024, 768, 50304
GPT2_VOCAB = 50257
ROWS = B * T
# Attention: one entry per variant (head dim, dropout); every kernel of the forward and backward
# is compiled for each. A new variant of the kernels (a flag of kernels.flash_attention._flags)
# is one more entry here.
# The families' options: GPT-Neo's window (256, at its 125M's head dim 64), Pythia-2.8B's head
# dim 80 with a quarter of it turned by rotary (GPT-NeoX's halves), GPT-J's head dim 256 with 64
# dims turned (interleaved pairs). The speedrun's QK-norm: at GPT-2's head dim 64 alone, and as
# nanochat runs it, with rotary over the whole head (halves) at head dims 64 and 128.
ATTENTION = [
    dict(head_dim=64, dropout_p=0.0),
    dict(head_dim=64, dropout_p=0.1),
    dict(head_dim=128, dropout_p=0.0),
    dict(head_dim=128, dropout_p=0.1),
    dict(head_dim=64, dropout_p=0.0, window=256),
    dict(head_dim=64, dropout_p=0.1, window=256),
    dict(head_dim=80, dropout_p=0.0, rotary_dim=20),
    dict(head_dim=80, dropout_p=0.1, rotary_dim=20),
    dict(head_dim=256, dropout_p=0.0, rotary_dim=64, interleaved=True),
    dict(head_dim=256, dropout_p=0.1, rotary_dim=64, interleaved=True),
    dict(head_dim=64, dropout_p=0.0, qk_norm=True),
    dict(head_dim=64, dropout_p=0.1, qk_norm=True),
    dict(head_dim=64, dropout_p=0.0, rotary_dim=64, qk_norm=True),
    dict(head_dim=128, dropout_p=0.0, rotary_dim=128, qk_norm=True),
    dict(head_dim=128, dropout_p=0.1, rotary_dim=128, qk_norm=True),
]


# ----------------------------------------------------------------------------- the launches


@dataclasses.dataclass
class Launch:
    """One kernel launch of the project, as its host launcher makes it."""

    op: str  # the public op that launches it
    what: str  # which of its launches, e.g. "backward, add under autocast, bias"
    dtype: str  # bf16, fp16 or fp32: what it computes in
    kernel: JITFunction  # the jit function
    args: dict  # its runtime arguments: name -> torch dtype (a pointer to one), int, float or tuple
    flags: dict  # the constexpr flags the host passes
    tuned: Autotuner = None  # the autotuner the host launches it through, if any: its configs are tried
    fixed: tuple = ()  # the configs the host passes itself (meta-parameters, num_warps, num_stages)


def layer_norm_launches(dtype):
    """tritongpt::layer_norm and add_layer_norm at width C, forward and backward, with and without
    a bias: in `dtype` throughout, and (add_layer_norm) as under autocast, the residual stream s
    in fp32 beside a `dtype` branch and output with fp32 weights. fp32: everything in fp32. And
    the same launches of RMSNorm (rms_norm, add_rms_norm), with and without a gain."""
    dt = DTYPES[dtype]
    if dt == F32:
        cases = [("layer_norm", F32, None, F32, F32), ("add_layer_norm", F32, F32, F32, F32)]
    else:  # (op, x and s, r, y, weight)
        cases = [("layer_norm", dt, None, dt, dt), ("add_layer_norm", F32, dt, dt, F32)]
        cases += [("add_layer_norm", dt, dt, dt, dt)]
    fwd_m, fwd_n, fwd_w = normalization._tile(C, normalization.FWD_MAX_TILE)
    bwd_m, bwd_n, bwd_w = normalization._tile(C, normalization.BWD_MAX_TILE)
    norms = [(False, dict(HAS_BIAS=bias, HAS_WEIGHT=True), "bias" if bias else "no bias") for bias in (True, False)]
    norms += [(True, dict(HAS_BIAS=False, HAS_WEIGHT=gain), "gain" if gain else "no gain") for gain in (True, False)]
    for op, x, r, y, w in cases:
        add = r is not None
        autocast = add and x != r
        for rms, flags, kind in norms:
            name = op.replace("layer_norm", "rms_norm") if rms else op
            what = ("under autocast, " if autocast else "") + kind
            flags = dict(flags, RMS=rms)
            wt = w if flags["HAS_WEIGHT"] else F32  # no gain: the host passes an fp32 buffer, never read
            yield Launch(
                name, "forward, " + what, dtype, normalization._layer_norm_fwd_kernel,
                dict(x_ptr=x, r_ptr=r or x, s_ptr=x if add else y, y_ptr=y, w_ptr=wt, b_ptr=wt,
                     mean_ptr=F32, rstd_ptr=F32, stride_x=C, stride_r=C, M=ROWS, N=C, eps=1e-5),
                dict(ADD=add, **flags), fixed=(dict(BLOCK_M=fwd_m, BLOCK_N=fwd_n, num_warps=fwd_w),),
            )  # fmt: skip
            # backward: dy in y's dtype, ds (the residual's gradient) in s's, dx in x's, dr in r's
            yield Launch(
                name, "backward, " + what, dtype, normalization._layer_norm_bwd_kernel,
                dict(x_ptr=x, dy_ptr=y, ds_ptr=x if add else y, dx_ptr=x, dr_ptr=r if autocast else x, w_ptr=wt,
                     mean_ptr=F32, rstd_ptr=F32, dw_part_ptr=F32, db_part_ptr=F32,
                     stride_x=C, stride_dy=C, stride_ds=C, M=ROWS, N=C),
                dict(HAS_DS=add, STORE_DR=autocast, **flags),
                fixed=(dict(BLOCK_M=bwd_m, BLOCK_N=bwd_n, num_warps=bwd_w),),
            )  # fmt: skip


def linear_gelu_launches(dtype):
    """tritongpt::linear_gelu, GPT-2's c_fc (ROWS x C) @ (4C x C).T, with the tanh GELU (GPT-2's),
    the exact erf GELU (GPT-NeoX's, Cerebras-GPT's) and ReLU^2 (the speedrun's): the forward with
    and without a bias, storing h (training) or not (evaluation), and the backward's elementwise pass."""
    dt = DTYPES[dtype]
    N = 4 * C
    for activation in mlp.ACTIVATIONS:
        gelu = {"gelu_tanh": "", "gelu_exact": ", exact GELU", "relu2": ", ReLU^2"}[activation]
        for bias in (True, False):
            for store_h in (True, False):
                what = f"forward, {'bias' if bias else 'no bias'}, {'training' if store_h else 'evaluation'}{gelu}"
                yield Launch(
                    "linear_gelu", what, dtype, _jit(mlp._linear_gelu_fwd_kernel),
                    dict(x_ptr=dt, w_ptr=dt, b_ptr=dt, y_ptr=dt, h_ptr=dt, M=ROWS, N=N, K=C,
                         stride_xm=C, stride_xk=1, stride_wn=C, stride_wk=1, M_BUCKET=mlp.rows_bucket(ROWS)),
                    dict(HAS_BIAS=bias, STORE_H=store_h, ACTIVATION=activation, INPUT_PRECISION=mlp._input_precision(dt)),
                    tuned=mlp._linear_gelu_fwd_kernel, fixed=(mlp.SINGLE_CONFIG.all_kwargs(),),
                )  # fmt: skip
            yield Launch(
                "linear_gelu", f"backward (dy * act'(h)), {'bias' if bias else 'no bias'}{gelu}", dtype,
                mlp._linear_gelu_bwd_kernel, dict(dy_ptr=dt, h_ptr=dt, dh_ptr=dt, db_ptr=F32, M=ROWS, N=N),
                dict(HAS_BIAS=bias, ACTIVATION=activation),
                fixed=(dict(BLOCK_M=mlp.BWD_BLOCK_M, BLOCK_N=mlp.BWD_BLOCK_N, num_warps=mlp.BWD_WARPS),),
            )  # fmt: skip


def cross_entropy_launches(dtype):
    """tritongpt::cross_entropy (forward, backward) and the row kernel of linear_cross_entropy,
    which writes the gradient in place, over V = 50304 columns of which GPT-2's 50257 are classes;
    each without and with the logit soft-cap (nanochat's 15)."""
    dt = DTYPES[dtype]
    block_v, warps = losses._block_v(V)
    fixed = (dict(BLOCK_V=block_v, num_warps=warps),)
    for cap in (0.0, 15.0):
        row = dict(
            logits_ptr=dt, targets_ptr=I64, loss_ptr=F32, lse_ptr=F32, scale_ptr=F32, status_ptr=I64, stride_l=V, V=V,
            vocab=GPT2_VOCAB, ignore_index=-1, softcap=cap,
        )
        capped = f", soft-cap {cap:g}" if cap else ""
        yield Launch(
            "cross_entropy", "forward" + capped, dtype, losses._cross_entropy_fwd_kernel, row,
            dict(WRITE_GRAD=False, SOFTCAP=cap > 0), fixed=fixed,
        )
        yield Launch(
            "linear_cross_entropy", "row kernel, gradient in place" + capped, dtype, losses._cross_entropy_fwd_kernel,
            row, dict(WRITE_GRAD=True, SOFTCAP=cap > 0), fixed=fixed,
        )
        yield Launch(
            "cross_entropy", "backward" + capped, dtype, losses._cross_entropy_bwd_kernel,
            dict(logits_ptr=dt, dlogits_ptr=dt, targets_ptr=I64, lse_ptr=F32, scale_ptr=F32, stride_l=V, V=V,
                 vocab=GPT2_VOCAB, ignore_index=-1, softcap=cap),
            dict(SOFTCAP=cap > 0), fixed=fixed,
        )  # fmt: skip


def attention_launches(dtype):
    """tritongpt::attention_qkv (the model's form: q, k, v views of c_attn's (B, T, 3, H, D)
    output, the output and its gradient (B, T, H, D)), causal, for each entry of ATTENTION:
    the forward, the backward's delta pass and both launches of its main kernel."""
    dt = DTYPES[dtype]
    for entry in ATTENTION:
        D, p, window, R = entry["head_dim"], entry["dropout_p"], entry.get("window", 0), entry.get("rotary_dim", 0)
        H = C // D
        q = types.SimpleNamespace(shape=(B, H, T, D), dtype=dt)  # what the host helpers read
        rotary = (None, None, entry.get("interleaved", False)) if R else None
        flags = fa._flags(q, True, p, window, rotary, entry.get("qk_norm", False))
        tuned = fa._autotuned(q)
        qkv = (T * 3 * H * D, D, 3 * H * D, 1)  # strides of q, k, v, dq, dk, dv seen as (B, H, T, D)
        out = (T * H * D, D, H * D, 1)  # strides of o and dO, (B, T, H, D) seen as (B, H, T, D)
        seed = I64 if p > 0 else F32  # without dropout the host passes lse in the seed's place
        scalars = dict(H=H, T=T, qk_scale=fa.LOG2E / D**0.5, dropout_p=p, drop_scale=1.0 / (1.0 - p), window=window,
                       rot_dim=R, cos_ptr=F32, sin_ptr=F32)  # without rotary the host passes lse for the tables
        what = f"D={D}" + (f", dropout {p}" if p > 0 else "") + (f", window {window}" if window else "")
        what += (f", rotary {R}" + (" interleaved" if entry.get("interleaved") else "")) if R else ""
        what += ", QK-norm" if entry.get("qk_norm") else ""
        yield Launch(
            "attention", "forward, " + what, dtype, fak._attn_fwd_kernel,
            dict(q_ptr=dt, k_ptr=dt, v_ptr=dt, o_ptr=dt, lse_ptr=F32, seed_ptr=seed,
                 q_strides=qkv, k_strides=qkv, v_strides=qkv, o_strides=out, **scalars),
            flags, tuned=fa._attn_fwd_tuned if tuned else None,
            fixed=(fa._one_config(q, flags, fa.SMALL_FWD, fa.FP32_FWD),),
        )  # fmt: skip
        yield Launch(
            "attention", "backward delta, " + what, dtype, fak._attn_bwd_delta_kernel,
            dict(o_ptr=dt, do_ptr=dt, delta_ptr=F32, o_strides=out, do_strides=out, H=H, T=T),
            dict(HEAD_DIM=D, BLOCK_D=flags["BLOCK_D"], BLOCK_M=fa.DELTA_BLOCK_M), fixed=({},),
        )
        for dkdv in (True, False):
            yield Launch(
                "attention", ("backward dK dV, " if dkdv else "backward dQ, ") + what, dtype, fak._attn_bwd_kernel,
                dict(q_ptr=dt, k_ptr=dt, v_ptr=dt, do_ptr=dt, dq_ptr=dt, dk_ptr=dt, dv_ptr=dt, lse_ptr=F32,
                     delta_ptr=F32, seed_ptr=seed, q_strides=qkv, k_strides=qkv, v_strides=qkv, do_strides=out,
                     g_strides=qkv, sm_scale=1.0 / D**0.5, **scalars),
                {**flags, "DKDV": dkdv}, tuned=fa._attn_bwd_tuned if fa._autotuned(q, flags, backward=True) else None,
                fixed=(fa._one_config(q, flags, fa.SMALL_BWD, fa.FP32_BWD),),
            )  # fmt: skip


def xxt_launches(dtype):
    """tritongpt::xxt in Muon's Newton-Schulz steps on GPT-2 124M's matrices: X X^T of the MLP's
    (C x 4C, c_fc turned wide) and of a C x C block (q, k, v, attention's c_proj), and b A + c A A^T."""
    dt = DTYPES[dtype]
    _, b, c = NS_COEFFICIENTS
    for what, K, add in (("X X^T, 768 x 3072", 4 * C, False), ("X X^T, 768 x 768", C, False),
                         ("b A + c A A^T, 768 x 768", C, True)):
        yield Launch(
            "xxt", what, dtype, _jit(_xxt_kernel),
            dict(x_ptr=dt, add_ptr=dt, out_ptr=dt, M=C, K=K, stride_xb=C * K, stride_xm=K, stride_xk=1,
                 stride_ab=C * C, stride_am=C, stride_an=1, alpha=c if add else 1.0, beta=b if add else 0.0),
            dict(HAS_ADD=add, INPUT_PRECISION=xxt_input_precision(dt)),
            tuned=_xxt_kernel, fixed=(XXT_SINGLE_CONFIG.all_kwargs(),),
        )  # fmt: skip


LAUNCHES = (layer_norm_launches, linear_gelu_launches, cross_entropy_launches, attention_launches, xxt_launches)


def _jit(kernel):
    """The jit function inside an autotuner / heuristics wrapper."""
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel
