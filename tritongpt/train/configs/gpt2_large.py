# GPT-2 large (774M) from scratch on OpenWebText: about 0.5M tokens per step
# (4 x 1024 x 120 = 491,520). Learning rate from the GPT-3 paper's table for this size.
out_dir = "out/gpt2_large"
dataset = "openwebtext"
wandb_run_name = "gpt2-large"

batch_size = 4
block_size = 1024
gradient_accumulation_steps = 120

n_layer = 36
n_head = 20
n_embd = 1280
dropout = 0.0

learning_rate = 2.5e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 2.5e-5
warmup_iters = 2000

eval_interval = 1000
eval_iters = 200
log_interval = 10
