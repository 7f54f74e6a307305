# A GPT-Neo-125M-shaped model from scratch on OpenWebText: 12 layers, 768 wide, 12 heads of 64,
# context 2048, learned positions; every second layer attends locally to its last 256 positions,
# the scores are not scaled by 1/sqrt(head dim), and q, k, v have no bias: 125.2M parameters.
# Compute-optimal at 20 tokens per parameter (python -m tritongpt.train.plan --params=125.2M): 2.5B tokens
# = 4800 steps of 8 x 2048 x 32 = 524,288 tokens.
#   python -m tritongpt.prep openwebtext        (GPT-2's BPE, GPT-Neo's own)
#   python -m tritongpt.train gpt_neo_125m
out_dir = "out/gpt_neo_125m"
dataset = "openwebtext"
wandb_run_name = "gpt-neo-125m"

batch_size = 8
block_size = 2048
gradient_accumulation_steps = 32

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True
qkv_bias = False
attention_pattern = "global,local"
window_size = 256
scaled_attention = False

learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
max_iters = 4800
lr_decay_iters = 4800
warmup_iters = 100

eval_interval = 250
eval_iters = 100
log_interval = 10
