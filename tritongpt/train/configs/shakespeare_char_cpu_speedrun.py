# The speedrun recipe on the CPU demo's model and tokens per step (shakespeare_char_cpu: 4 layers,
# 128 wide, context 64, 12 sequences a step): Muon for the blocks' matrices, and nanochat's model
# options. It reaches the demo's final val loss in fewer steps (tritongpt/train/results/).
out_dir = "out/shakespeare_char_cpu_speedrun"
dataset = "shakespeare_char"

eval_interval = 100
eval_iters = 20
log_interval = 100
always_save_checkpoint = True

gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
vocab_multiple = 1

# the model (docs/model-options.md): nanochat's options; rotary positions and an untied head
# measured to help here (results/sweeps/shakespeare_char-ablation.json)
position_embedding = "rotary"
tie_embeddings = False
norm = "rms"
mlp_activation = "relu2"
qk_norm = True
logit_softcap = 15.0
zero_init_proj = True

# the optimizer (docs/muon.md): Muon for the matrices, AdamW for the embedding, head and gains, both
# rates from the sweeps (results/sweeps/shakespeare_char-*.json), decaying to 0 over the run
optimizer = "muon"
muon_lr = 0.01
learning_rate = 1e-2
max_iters = 400  # 300 already pass the baseline's 2000-step val loss in the sweep; 400 leave a margin
lr_decay_iters = 400
min_lr = 0.0
beta2 = 0.99
warmup_iters = 100

device = "cpu"
dtype = "float32"
cpu_threads = 1
