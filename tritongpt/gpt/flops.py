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

import re

# Dense peaks (FLOP/s) by GPU model and the math a run's matmuls take: bf16 (fp16 is the same)
# and tf32 on the tensor cores, fp32 on the CUDA cores. From NVIDIA's datasheets: "NVIDIA H100
# Tensor Core GPU" (H100 SXM, PCIe and NVL, 2024), "NVIDIA H200 Tensor Core GPU" (H200 SXM and
# NVL, 2024) and "NVIDIA A100 Tensor Core GPU" (2021: 40 GB and 80 GB, SXM and PCIe alike). Their
# tensor-core figures are "with sparsity": the dense ones here are half of them, rounded down to
# a TFLOP/s.
PEAKS = {
    "H100 SXM": dict(bf16=989e12, tf32=494e12, fp32=67e12),  # datasheet: 1,979 / 989 sparse; 67
    "H100 PCIe": dict(bf16=756e12, tf32=378e12, fp32=51e12),  # 1,513 / 756 sparse; 51
    "H100 NVL": dict(bf16=835e12, tf32=417e12, fp32=60e12),  # 1,671 / 835 sparse; 60
    "H200 SXM": dict(bf16=989e12, tf32=494e12, fp32=67e12),  # 1,979 / 989 sparse; 67
    "H200 NVL": dict(bf16=835e12, tf32=417e12, fp32=60e12),  # 1,671 / 835 sparse; 60
    "A100": dict(bf16=312e12, tf32=156e12, fp32=19.5e12),  # 624 / 312 sparse; 19.5
}
MATH = {"bfloat16": "bf16", "float16": "bf16", "float32": "fp32"}  # a run's dtype -> its matmuls' peak


def gpu_model(device_name):
    """The PEAKS key of a torch.cuda.get_device_name string ("NVIDIA H100 80GB HBM3" is the SXM
    card, "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL",
    "NVIDIA A100-SXM4-80GB", ...), or None for a device not in the table. A bare "H100" is the
    SXM card."""
    name = (device_name or "").upper()
    for family in ("H200", "H100"):
        if re.search(rf"\b{family}\b", name):  # not GH200, whose peaks differ by version
            if "NVL" in name:
                return f"{family} NVL"
            if "PCIE" in name:
                return "H100 PCIe" if family == "H100" else None
            return f"{family} SXM"
    return "A100" if re.search(r"\bA100\b", name) else None


def peak_math(dtype="bfloat16", tf32=True):
    """The math a run in `dtype` (a train.system.PTDTYPE key) does its matmuls in: bf16 (fp16
    alike), tf32 for float32 with TF32 on (torch.backends.cuda.matmul.allow_tf32, which the
    trainer turns on), else fp32."""
    if dtype not in MATH:
        raise ValueError(f"no peak for dtype {dtype!r}; choose one of {', '.join(MATH)}")
    math = MATH[dtype]
    return "tf32" if math == "fp32" and tf32 else math


def peak_flops(device_name, dtype="bfloat16", tf32=True):
    """The device's dense peak in FLOP/s for a run in `dtype` (see peak_math), or None when the
    device is not in the table."""
    model = gpu_model(device_name)
    return None if model is None else PEAKS[model][peak_math(dtype, tf32)]


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


def mfu(config, T, tokens_per_sec, device_name, dtype="bfloat16", tf32=True):
    """Achieved FLOP/s over the device's peak for the dtype, or None when the peak is unknown."""
    peak = peak_flops(device_name, dtype, tf32)
    if peak is None:
        return None
    return flops_per_token(config, T) * tokens_per_sec / peak
