# GPT-2 XL (1.5B) from scratch on OpenWebText: about 0.5M tokens per step
# (2 x 1024 x 240 = 491,520). Learning rate from the GPT-3 paper's table for this size.
out_dir = "out/gpt2_xl"
dataset = "openwebtext"
wandb_run_name = "gpt2-xl"

batch_size = 2
block_size = 1024
gradient_accumulation_steps = 240

n_layer = 48
n_head = 25
n_embd = 1600
dropout = 0.0

learning_rate = 2e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 2e-5
warmup_iters = 2000

eval_interval = 1000
eval_iters = 200
log_interval = 10
