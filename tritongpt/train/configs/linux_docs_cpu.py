# A small GPT-2 on the GPT-2 BPE tokens of the Linux kernel's documentation, sized for a CPU: 4
# layers, 64 wide, context 64, 2 sequences a step (128 tokens; 3.3M parameters, nearly all of them
# the 50,257-token embedding, which is also the LM head). Today's recipe: GPT-2's model, AdamW.
# The baseline of linux_docs_cpu_speedrun (tools/speedrun_compare.py).
#   python -m tritongpt.prep text --input ../shared/data/linux_docs.txt --name linux_docs --tokenizer gpt2
out_dir = "out/linux_docs_cpu"
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
gelu = "exact"  # the cheaper GELU on a CPU, as in shakespeare_char_cpu
vocab_multiple = 1  # no padding: the LM head and the loss over 50,257 columns are most of a step here

learning_rate = 1e-2  # the best of 1e-3, 3e-3, 1e-2, 3e-2 in 400-step runs (results/sweeps/linux_docs-baseline-*.json)
max_iters = 1000
lr_decay_iters = 1000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
dtype = "float32"
cpu_threads = 1
