# GPT-2 124M-class with the speedrun recipe, for GPUs: nanochat's model (rotary, QK-norm, an untied
# head, ReLU^2, RMSNorm without gains, no biases, a logit soft-cap, zero-initialized projections),
# Muon for the blocks' matrices and AdamW for the embeddings and the head; ~0.5M tokens a step, as gpt2.
#   python -m tritongpt.prep fineweb_edu --limit 2000000      (or openwebtext)
#   torchrun --standalone --nproc_per_node=8 -m tritongpt.train gpt2_speedrun
# The rates carry over the CPU sweeps' findings (Muon's ~0.01-0.02, AdamW's 10x gpt2's) and the
# speedrun's; they have not been swept on a GPU. The length, 2B tokens, is where the speedrun's
# recipe passes GPT-2's validation loss with room to spare; shorten it once a run shows where.
out_dir = "out/gpt2_speedrun"
dataset = "fineweb_edu"
wandb_run_name = "gpt2-124M-speedrun"

batch_size = 16
block_size = 1024
gradient_accumulation_steps = 4 * 8  # 16 x 1024 x 32 = 524,288 tokens a step

n_layer = 12
n_head = 6  # head dim 128, as nanochat's and the speedrun's
n_embd = 768
dropout = 0.0
bias = False

position_embedding = "rotary"
tie_embeddings = False
norm = "rms"
norm_gain = False
mlp_activation = "relu2"
qk_norm = True
logit_softcap = 15.0
zero_init_proj = True

optimizer = "muon"
muon_lr = 0.02
muon_momentum = 0.95
learning_rate = 6e-3  # AdamW: the embeddings and the head
weight_decay = 0.0
beta1 = 0.8
beta2 = 0.95
max_iters = 3800  # ~2.0B tokens
lr_decay_iters = 3800
warmup_iters = 100
min_lr = 0.0

eval_interval = 250
eval_iters = 100
log_interval = 10
