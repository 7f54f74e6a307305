"""FLOPs of a training step and model FLOPs utilisation (MFU).

FLOPs per token of a training step (forward + backward):

    6 * N + 12 * n_layer * n_embd * T

N counts the parameters that take part in matmuls: the weights of every Linear, with the token
embedding counted once (it is tied to the LM head, where it is a matmul) and the position
embedding, LayerNorms and biases left out. The second term is attention's QK^T and PV over a
context of T (the full square, as in PaLM's appendix and nanoGPT; the causal half is not taken off).
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
    C, L = config.n_embd, config.n_layer
    per_layer = C * 3 * C + C * C + C * 4 * C + 4 * C * C  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    return L * per_layer + config.vocab_size * C  # + the LM head (tied token embedding)


def flops_per_token(config, T):
    """Training FLOPs (forward + backward) per token at sequence length T."""
    return 6 * matmul_params(config) + 12 * config.n_layer * config.n_embd * T


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
