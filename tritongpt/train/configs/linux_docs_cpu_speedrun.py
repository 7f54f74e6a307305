# The speedrun recipe on linux_docs_cpu's model and tokens per step (4 layers, 64 wide, context 64,
# 128 GPT-2 BPE tokens a step of the Linux kernel's documentation): Muon for the blocks' matrices,
# and nanochat's model options. Learning rates from tools/lr_sweep.py (tritongpt/train/results/).
out_dir = "out/linux_docs_cpu_speedrun"
dataset = "linux_docs"

eval_interval = 250
eval_iters = 20
log_interval = 50
always_save_checkpoint = True

gradient_accumulation_steps = 1
batch_size = 2
block_size = 64

n_layer = 4
n_head = 4
n_embd = 64
dropout = 0.0
vocab_multiple = 1

# the model (docs/model-options.md)
norm = "rms"
mlp_activation = "relu2"
qk_norm = True
logit_softcap = 15.0
zero_init_proj = True

# the optimizer (docs/muon.md): Muon for the matrices, AdamW for the embedding (the LM head) and gains
optimizer = "muon"
muon_lr = 0.01
learning_rate = 1e-2
max_iters = 1000
lr_decay_iters = 1000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
dtype = "float32"
cpu_threads = 1
