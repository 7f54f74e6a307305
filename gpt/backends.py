"""The ops of each backend, looked up once when the modules are built (never inside forward).

    torch   stock PyTorch: the references of kernels.reference, attention through SDPA, and the
            LM head followed by the cross-entropy
    triton  the public ops of kernels: each residual add fused into the LayerNorm after it,
            attention on c_attn's output as it is (no copy to split q, k, v or to join their
            gradients), the LM head fused into the loss, so the (B*T, V) logits never exist at once
"""

import torch.nn.functional as F

import kernels
from kernels import reference


def _torch_mlp_up(x, fc):
    return reference.gelu_tanh(fc(x))


def _torch_attention(qkv, dropout_p):
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, nh, T, hs) views of (B, T, 3, nh, hs)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p).transpose(1, 2)


def _torch_lm_head_loss(x, lm_head, targets, vocab_size):
    return reference.cross_entropy(lm_head(x), targets, ignore_index=-1, vocab_size=vocab_size)


def _triton_mlp_up(x, fc):
    return kernels.linear_gelu(x, fc.weight, fc.bias)


def _triton_attention(qkv, dropout_p):
    return kernels.attention_qkv(qkv, causal=True, dropout_p=dropout_p)


def _triton_lm_head_loss(x, lm_head, targets, vocab_size):
    return kernels.linear_cross_entropy(x, lm_head.weight, targets, ignore_index=-1, vocab_size=vocab_size)


# layer_norm(x, weight, bias, eps); add_layer_norm(x, y, weight, bias, eps) = (x + y, its
# LayerNorm); mlp_up(x, c_fc) = gelu_tanh(c_fc(x)); attention(qkv (B, T, 3, nh, hs), dropout_p) ->
# (B, T, nh, hs), causal; lm_head_loss(x, lm_head, targets, vocab_size) = mean cross-entropy of
# lm_head(x) over its first vocab_size columns (the rest, a padded vocabulary's, take no probability)
OPS = {
    "torch": dict(layer_norm=reference.layer_norm, add_layer_norm=reference.add_layer_norm, mlp_up=_torch_mlp_up,
                  attention=_torch_attention, lm_head_loss=_torch_lm_head_loss),
    "triton": dict(layer_norm=kernels.layer_norm, add_layer_norm=kernels.add_layer_norm, mlp_up=_triton_mlp_up,
                   attention=_triton_attention, lm_head_loss=_triton_lm_head_loss),
}
