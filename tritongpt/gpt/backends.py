"""The ops of each backend, looked up once when the modules are built (never inside forward).

    torch   stock PyTorch: the references of kernels.reference, attention through SDPA, and the
            LM head followed by the cross-entropy
    triton  the public ops of kernels: each residual add fused into the LayerNorm after it,
            attention on c_attn's output as it is (no copy to split q, k, v or to join their
            gradients), the LM head fused into the loss, so the (B*T, V) logits never exist at once

Both take the same arguments, so a module calls its op without knowing the backend:

    layer_norm(x, weight, bias, eps)                  weight, bias: either may be None
    add_layer_norm(x, y, weight, bias, eps)           -> (x + y, its LayerNorm)
    rms_norm(x, weight, bias, eps)                    RMSNorm; bias is always None (the norms' one signature)
    add_rms_norm(x, y, weight, bias, eps)             -> (x + y, its RMSNorm)
    mlp_up(x, c_fc, activation)                       -> act(c_fc(x)), act: gelu_tanh, gelu_exact or relu2
    attention(qkv, dropout_p, scale, window, rotary, qk_norm)  -> (B, T, nh, hs), causal
        qkv (B, T, 3, nh, hs): c_attn's output; scale: None (1/sqrt(hs)) or the softmax scale;
        window: 0, or the positions each query sees (itself included); rotary: None, or
        (cos, sin, interleaved) with cos, sin (T, R/2) as in kernels.reference.rotary, applied to
        q and k before the scores; qk_norm: q and k RMS-normalized per head first
    lm_head_loss(x, lm_head, targets, vocab_size, softcap)  -> mean cross-entropy of lm_head(x)
        over its first vocab_size columns (the rest, a padded vocabulary's, take no probability),
        the logits soft-capped at softcap (0: not)
"""

import torch.nn.functional as F

from tritongpt import kernels
from tritongpt.kernels import reference


def _torch_mlp_up(x, fc, activation):
    return reference.ACTIVATIONS[activation](fc(x))


def _torch_rms_norm(x, weight, bias, eps):
    return reference.rms_norm(x, weight, eps)


def _torch_add_rms_norm(x, y, weight, bias, eps):
    return reference.add_rms_norm(x, y, weight, eps)


def _torch_attention(qkv, dropout_p, scale=None, window=0, rotary=None, qk_norm=False):
    if rotary is None and not window and not qk_norm:  # GPT-2's path
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, nh, T, hs) views of (B, T, 3, nh, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
        return y.transpose(1, 2)
    q, k, v = qkv.unbind(2)  # (B, T, nh, hs) each
    if qk_norm:
        q, k = reference.qk_rms_norm(q), reference.qk_rms_norm(k)
    if rotary is not None:
        cos, sin, interleaved = rotary
        q, k = reference.rotary(q, cos, sin, interleaved), reference.rotary(k, cos, sin, interleaved)
    return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p, scale, window).transpose(1, 2)


def sdpa(q, k, v, dropout_p=0.0, scale=None, window=0):
    """Causal attention of q (B, nh, T, hs) over k, v (B, nh, S, hs), the T queries being the last
    T of the S positions (a prompt after a KV cache, or one new token), through SDPA."""
    T, S = q.shape[2], k.shape[2]
    if not window and T in (1, S):  # the causal square, or one new token that sees every position
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=dropout_p, scale=scale)
    mask = reference.attention_mask(T, S, window, q.device)  # (T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def _torch_lm_head_loss(x, lm_head, targets, vocab_size, softcap=0.0):
    return reference.cross_entropy(lm_head(x), targets, ignore_index=-1, vocab_size=vocab_size, softcap=softcap)


def _triton_mlp_up(x, fc, activation):
    return kernels.linear_act(x, fc.weight, fc.bias, activation=activation)


def _triton_rms_norm(x, weight, bias, eps):
    return kernels.rms_norm(x, weight, eps)


def _triton_add_rms_norm(x, y, weight, bias, eps):
    return kernels.add_rms_norm(x, y, weight, eps)


def _triton_attention(qkv, dropout_p, scale=None, window=0, rotary=None, qk_norm=False):
    return kernels.attention_qkv(qkv, causal=True, dropout_p=dropout_p, scale=scale, window=window, rotary=rotary,
                                 qk_norm=qk_norm)


def _triton_lm_head_loss(x, lm_head, targets, vocab_size, softcap=0.0):
    if lm_head.bias is not None:  # GPT-J's head: the logits, then the cross-entropy kernel
        return kernels.cross_entropy(lm_head(x), targets, ignore_index=-1, vocab_size=vocab_size, softcap=softcap)
    return kernels.linear_cross_entropy(x, lm_head.weight, targets, ignore_index=-1, vocab_size=vocab_size,
                                        softcap=softcap)


OPS = {
    "torch": dict(layer_norm=reference.layer_norm, add_layer_norm=reference.add_layer_norm, rms_norm=_torch_rms_norm,
                  add_rms_norm=_torch_add_rms_norm, mlp_up=_torch_mlp_up, attention=_torch_attention,
                  lm_head_loss=_torch_lm_head_loss),
    "triton": dict(layer_norm=kernels.layer_norm, add_layer_norm=kernels.add_layer_norm, rms_norm=_triton_rms_norm,
                   add_rms_norm=_triton_add_rms_norm, mlp_up=_triton_mlp_up, attention=_triton_attention,
                   lm_head_loss=_triton_lm_head_loss),
}
