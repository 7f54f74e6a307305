"""The ops of each backend, looked up once when the modules are built (never inside forward).

    torch   stock PyTorch: the references of kernels.reference, attention through SDPA, and the
            LM head followed by the cross-entropy
    triton  the public ops of kernels: each residual add fused into the LayerNorm after it,
            attention on c_attn's output as it is (no copy to split q, k, v or to join their
            gradients), the LM head fused into the loss, so the (B*T, V) logits never exist at once

Both take the same arguments, so a module calls its op without knowing the backend:

    layer_norm(x, weight, bias, eps)
    add_layer_norm(x, y, weight, bias, eps)           -> (x + y, its LayerNorm)
    mlp_up(x, c_fc, approximate)                      -> gelu(c_fc(x)), "tanh" or "none" (exact erf)
    attention(qkv, dropout_p, scale, window, rotary)  -> (B, T, nh, hs), causal
        qkv (B, T, 3, nh, hs): c_attn's output; scale: None (1/sqrt(hs)) or the softmax scale;
        window: 0, or the positions each query sees (itself included); rotary: None, or
        (cos, sin, interleaved) with cos, sin (T, R/2) as in kernels.reference.rotary, applied to
        q and k before the scores
    lm_head_loss(x, lm_head, targets, vocab_size)     -> mean cross-entropy of lm_head(x) over its
        first vocab_size columns (the rest, a padded vocabulary's, take no probability)
"""

import torch.nn.functional as F

from tritongpt import kernels
from tritongpt.kernels import reference


def _torch_mlp_up(x, fc, approximate):
    return reference.gelu(fc(x), approximate)


def _torch_attention(qkv, dropout_p, scale=None, window=0, rotary=None):
    if rotary is None and not window:  # GPT-2's path
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, nh, T, hs) views of (B, T, 3, nh, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
        return y.transpose(1, 2)
    q, k, v = qkv.unbind(2)  # (B, T, nh, hs) each
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


def _torch_lm_head_loss(x, lm_head, targets, vocab_size):
    return reference.cross_entropy(lm_head(x), targets, ignore_index=-1, vocab_size=vocab_size)


def _triton_mlp_up(x, fc, approximate):
    return kernels.linear_gelu(x, fc.weight, fc.bias, approximate=approximate)  # "tanh" or "none", as F.gelu


def _triton_attention(qkv, dropout_p, scale=None, window=0, rotary=None):
    return kernels.attention_qkv(qkv, causal=True, dropout_p=dropout_p, scale=scale, window=window, rotary=rotary)


def _triton_lm_head_loss(x, lm_head, targets, vocab_size):
    if lm_head.bias is not None:  # GPT-J's head: the logits, then the cross-entropy kernel
        return kernels.cross_entropy(lm_head(x), targets, ignore_index=-1, vocab_size=vocab_size)
    return kernels.linear_cross_entropy(x, lm_head.weight, targets, ignore_index=-1, vocab_size=vocab_size)


OPS = {
    "torch": dict(layer_norm=reference.layer_norm, add_layer_norm=reference.add_layer_norm, mlp_up=_torch_mlp_up,
                  attention=_torch_attention, lm_head_loss=_torch_lm_head_loss),
    "triton": dict(layer_norm=kernels.layer_norm, add_layer_norm=kernels.add_layer_norm, mlp_up=_triton_mlp_up,
                   attention=_triton_attention, lm_head_loss=_triton_lm_head_loss),
}
