# A Pythia-70M-shaped GPT-NeoX from scratch on OpenWebText: 6 layers, 512 wide, 8 heads of 64,
# context 2048; rotary positions on a quarter of each head's dims, attention and MLP side by side
# (each with its own LayerNorm), an untied LM head, the exact GELU: 70.4M parameters.
# Compute-optimal at 20 tokens per parameter (Chinchilla, Cerebras-GPT; python -m tritongpt.train.plan
# --params=70.4M): 1.41B tokens = 2700 steps of 16 x 2048 x 16 = 524,288 tokens.
#   python -m tritongpt.prep openwebtext        (GPT-2's BPE; Pythia's own tokenizer is GPT-NeoX's)
#   python -m tritongpt.train pythia_70m
out_dir = "out/pythia_70m"
dataset = "openwebtext"
wandb_run_name = "pythia-70m"

batch_size = 16
block_size = 2048
gradient_accumulation_steps = 16

n_layer = 6
n_head = 8
n_embd = 512
dropout = 0.0
bias = True
position_embedding = "rotary"
rotary_fraction = 0.25
rotary_base = 10000.0
rotary_style = "halves"
parallel_residual = True
tie_embeddings = False
gelu = "exact"

learning_rate = 1e-3  # Pythia-70M's
min_lr = 1e-4
weight_decay = 0.01  # Pythia's
beta1 = 0.9
beta2 = 0.95
max_iters = 2700
lr_decay_iters = 2700
warmup_iters = 100

eval_interval = 250
eval_iters = 100
log_interval = 10
