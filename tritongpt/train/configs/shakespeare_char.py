# The baby GPT on tiny Shakespeare, character-level (nanoGPT's): 10.7M parameters, context 256.
# A few minutes on one GPU; val loss about 1.47. Prepare the data with `python -m tritongpt.prep shakespeare_char`.
out_dir = "out/shakespeare_char"
dataset = "shakespeare_char"

eval_interval = 250  # small model: it overfits, so evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only improvements

gradient_accumulation_steps = 1
batch_size = 64
block_size = 256

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small network can take a large step
max_iters = 5000
lr_decay_iters = 5000  # usually max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # few tokens per step: a longer second-moment memory
warmup_iters = 100
