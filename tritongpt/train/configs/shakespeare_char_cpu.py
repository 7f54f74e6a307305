# A CPU-sized baby GPT on tiny Shakespeare, character-level: 0.8M parameters, context 64.
# Fits a laptop: a few minutes on 2 cores and a val loss under 2.0. The main command's CPU choice.
out_dir = "out/shakespeare_char_cpu"
dataset = "shakespeare_char"

eval_interval = 500
eval_iters = 20
log_interval = 100
always_save_checkpoint = True

gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0  # too small and too short a run to overfit
# On a CPU the exact GELU is the cheaper one (torch's erf kernel against its tanh one), and padding
# 65 characters to 128 only doubles the LM head's work: no matmul tile to fill here.
gelu = "exact"
vocab_multiple = 1

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
dtype = "float32"
# Ops this small gain nothing from splitting over threads: one thread runs a step in ~70-110 ms,
# while two take several times longer as soon as anything else runs on the machine.
cpu_threads = 1
