"""FLOPs of a training step and model FLOPs utilisation (MFU).

FLOPs per token of a training step (forward + backward):

    6 * N + 12 * n_layer * n_embd * T

N counts the parameters that take part in matmuls: the weights of every Linear, the LM head
once (tied, it is the token embedding; untied, the token embedding beside it is a lookup, no
matmul), the position embedding, LayerNorms and biases left out. The family options change
nothing here but the attention term: rotary has no position embedding anyway, a parallel
residual runs the same matmuls. The second term is attention's QK^T and PV over a context of T
(the full square, as in PaLM's appendix and nanoGPT; the causal half is not taken off), each
query of a local layer seeing min(T, window_size) keys instead.

num_params is the other count: every parameter (an untied LM head and the token embedding both
count), the N of Chinchilla's and Cerebras-GPT's 20 tokens per parameter.
"""

# Dense bf16 peak (FLOP/s) by device name, without sparsity.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower, see below
    "H100 PCIe": 756e12,
    "A100": 312e12,
}


def matmul_params(config):
    """N of the formula above, from the config alone."""
    C, L, H = config.n_embd, config.n_layer, config.mlp_width
    per_layer = C * 3 * C + C * C + C * H + H * C  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    return L * per_layer + config.vocab_size * C  # + the LM head (tied token embedding)


def num_params(config):
    """Every parameter of GPT(config), from the config alone."""
    C, V, b, H = config.n_embd, config.vocab_size, config.bias, config.mlp_width
    ln = (C if config.norm_gain else 0) + (C if b and config.norm == "layer" else 0)  # a norm's gain and bias
    per_layer = 4 * C * C + 2 * C * H + ln * (1 if config.shared_ln else 2)
    if b:
        per_layer += 3 * C * config.qkv_bias + C * config.attn_proj_bias + H + C  # c_attn, attn/mlp c_proj, c_fc
    n = config.n_layer * per_layer + V * C + ln  # + the token embedding (the tied head) + ln_f
    if config.position_embedding == "learned":
        n += config.block_size * C
    if not config.tie_embeddings:
        n += V * C
    return n + (V if config.lm_head_bias else 0)


def flops_per_token(config, T):
    """Training FLOPs (forward + backward) per token at sequence length T."""
    keys = sum(min(T, config.layer_window(i) or T) for i in range(config.n_layer))  # keys per query, all layers
    return 6 * matmul_params(config) + 12 * config.n_embd * keys


def peak_flops(device_name):
    """The device's dense bf16 peak in FLOP/s, or None when the device is not in the table."""
    if not device_name:
        return None
    name = device_name.upper()
    if "H100" in name and "PCIE" in name:
        return PEAK_BF16_FLOPS["H100 PCIe"]
    for key in ("H200", "H100", "A100"):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(config, T, tokens_per_sec, device_name):
    """Achieved FLOP/s over the device's peak, or None when the peak is unknown."""
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return flops_per_token(config, T) * tokens_per_sec / peak
