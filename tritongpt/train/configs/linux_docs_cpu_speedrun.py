# The speedrun recipe on linux_docs_cpu's model and tokens per step (4 layers, 64 wide, context 64,
# 128 GPT-2 BPE tokens a step of the Linux kernel's documentation): Muon for the blocks' matrices,
# and nanochat's model options. Learning rates from tools/lr_sweep.py (tritongpt/train/results/).
out_dir = "out/linux_docs_cpu_speedrun"
dataset = "linux_docs"

eval_interval = 100
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

# the model (docs/model-options.md): nanochat's options with rotary positions and an untied head;
# no logit soft-cap: it changed the loss by 0.004 here (results/sweeps/linux_docs-softcap.json) and
# on the torch backend costs a third of the step over 50,257 logits a token
position_embedding = "rotary"
tie_embeddings = False
norm = "rms"
mlp_activation = "relu2"
qk_norm = True
zero_init_proj = True

# the optimizer (docs/muon.md): Muon for the matrices, AdamW for the embedding, the head and the
# gains; both rates from the sweeps (results/sweeps/linux_docs-*.json), decaying to 0 over the run
optimizer = "muon"
muon_lr = 0.003
learning_rate = 3e-2
max_iters = 400
lr_decay_iters = 400
min_lr = 0.0
beta2 = 0.99
warmup_iters = 100

device = "cpu"
dtype = "float32"
cpu_threads = 1
