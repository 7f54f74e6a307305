# GPT-2 medium (350M) from scratch on OpenWebText: about 0.5M tokens per step
# (8 x 1024 x 60 = 491,520). Learning rate from the GPT-3 paper's table for this size.
out_dir = "out/gpt2_medium"
dataset = "openwebtext"
wandb_run_name = "gpt2-medium"

batch_size = 8
block_size = 1024
gradient_accumulation_steps = 60

n_layer = 24
n_head = 16
n_embd = 1024
dropout = 0.0

learning_rate = 3e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 3e-5
warmup_iters = 2000

eval_interval = 1000
eval_iters = 200
log_interval = 10
