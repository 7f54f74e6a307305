# Fine-tune the pretrained GPT-2 (124M) on tiny Shakespeare with the GPT-2 BPE.
#   python -m tritongpt.prep shakespeare
#   python -m tritongpt.train finetune_shakespeare            (or --init_from=gpt2-xl for the largest)
# The model's shape comes from the pretrained weights; block_size may be at most 1024.
out_dir = "out/finetune_shakespeare"
dataset = "shakespeare"
init_from = "gpt2"

eval_interval = 5
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # keep only improvements: it overfits within a few hundred steps

# 1 x 32 x 1024 = 32,768 tokens per step; tiny Shakespeare is about 300K tokens, so ~1 epoch in 10 steps
batch_size = 1
gradient_accumulation_steps = 32
block_size = 1024

learning_rate = 3e-5  # small and constant: the weights are already good
decay_lr = False
max_iters = 20
dropout = 0.1
