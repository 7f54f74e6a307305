# GPT-2 124M from scratch on OpenWebText: about 0.5M tokens per step
# (12 sequences x 1024 tokens x 40 micro-steps = 491,520), split over the processes.
#   python -m tritongpt.prep openwebtext
#   torchrun --standalone --nproc_per_node=8 -m tritongpt.train gpt2
out_dir = "out/gpt2"
dataset = "openwebtext"
wandb_run_name = "gpt2-124M"

batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

learning_rate = 6e-4
max_iters = 600000  # 300B tokens
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1

eval_interval = 1000
eval_iters = 200
log_interval = 10
