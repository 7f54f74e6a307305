"""The CPU demo's training step against nanoGPT's, side by side in one process.

    python tools/cpu_step_vs_nanogpt.py --nanogpt PATH/TO/nanoGPT [--config shakespeare_char_cpu]
        [--seeds 3] [--rounds 12] [--block 25] [--out tritongpt/train/results/cpu-step-vs-nanogpt.json]

Both models get the config's shape (layers, heads, width, context, batch, dropout) on tiny
Shakespeare, character-level (65 tokens), fp32, no compile, the config's CPU threads. Ours is one
call of the trainer's own step (Trainer.train_step: batch, forward, backward, clipping, AdamW, with
the config's GELU and vocabulary padding); nanoGPT's is its train.py loop body with its own model
and configure_optimizers (batch from a memmap, forward, backward, clip, AdamW, zero_grad). Blocks of
`--block` steps alternate between the two (who goes first alternates too), so that whatever else
the machine does falls on both alike; each seed builds both models anew. The JSON holds every
block's ms/step; the ratio is ours over nanoGPT's, of the medians.
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from tritongpt import prep
from tritongpt.instrument.run import run_info
from tritongpt.train.config import load_config
from tritongpt.train.loop import Trainer


def ours(cfg_name, data_dir, out_dir, seed, overrides):
    cfg = load_config([cfg_name, f"--data_dir={data_dir}", f"--out_dir={out_dir}", f"--seed={seed}", "--device=cpu",
                       "--compile=false", "--dtype=float32", *overrides])
    trainer = Trainer(cfg)
    state = {"step": 0}

    def step():
        loss, _, _ = trainer.train_step(state["step"])
        state["step"] += 1
        return loss

    return cfg, trainer, step


def theirs(nanogpt_dir, cfg, vocab_size, train_bin, seed):
    sys.path.insert(0, nanogpt_dir)
    try:
        import model as nanogpt_model  # nanoGPT's model.py
    finally:
        sys.path.remove(nanogpt_dir)
    torch.manual_seed(seed)
    conf = nanogpt_model.GPTConfig(block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer,
                                   n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
    model = nanogpt_model.GPT(conf)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")
    gen = torch.Generator().manual_seed(seed)
    state = {"step": 0}

    def get_batch():  # as nanoGPT's train.py: a fresh memmap per batch, random windows
        data = np.memmap(train_bin, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - cfg.block_size, (cfg.batch_size,), generator=gen)
        x = torch.stack([torch.from_numpy(data[i : i + cfg.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + cfg.block_size].astype(np.int64)) for i in ix])
        return x, y

    def lr(it):  # nanoGPT's get_lr
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
        if it > cfg.lr_decay_iters:
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)

    def step():
        for group in optimizer.param_groups:
            group["lr"] = lr(state["step"])
        x, y = get_batch()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        return loss

    return step


def timed_block(step, n):
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step()
    loss.item()
    return (time.perf_counter() - t0) * 1e3 / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", required=True, help="a checkout of nanoGPT (its model.py is imported)")
    p.add_argument("--config", default="shakespeare_char_cpu")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=12, help="blocks per model and seed")
    p.add_argument("--block", type=int, default=25, help="steps per block")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per model and seed")
    p.add_argument("overrides", nargs="*", help="--key=value for our trainer's config (after --)")
    p.add_argument("--out", default="tritongpt/train/results/cpu-step-vs-nanogpt.json")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.nanogpt, "model.py")):
        sys.exit(f"error: --nanogpt {args.nanogpt!r} has no model.py; give a checkout of nanoGPT")

    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        prep.prepare("shakespeare_char", out_dir=tmp, quiet=True)
        vocab = prep.load(os.path.join(tmp, "shakespeare_char")).vocab_size
        for seed in range(1, args.seeds + 1):
            cfg, trainer, our_step = ours(args.config, tmp, os.path.join(tmp, f"out{seed}"), seed, args.overrides)
            their_step = theirs(args.nanogpt, cfg, vocab, os.path.join(tmp, "shakespeare_char", "train.bin"), seed)
            timed_block(our_step, args.warmup)
            timed_block(their_step, args.warmup)
            blocks = {"tritongpt": [], "nanogpt": []}
            for r in range(args.rounds):
                order = [("tritongpt", our_step), ("nanogpt", their_step)]
                for name, step in order if r % 2 == 0 else order[::-1]:
                    blocks[name].append(round(timed_block(step, args.block), 3))
            med = {k: statistics.median(v) for k, v in blocks.items()}
            seeds.append({"seed": seed, "ms_per_step_blocks": blocks, "median_ms_per_step": med,
                          "ratio": med["tritongpt"] / med["nanogpt"]})
            print(f"seed {seed}: tritongpt {med['tritongpt']:.2f} ms/step, nanoGPT {med['nanogpt']:.2f} ms/step, "
                  f"ratio {seeds[-1]['ratio']:.3f}", flush=True)
            trainer.metrics.close()
    ratios = [s["ratio"] for s in seeds]
    result = {
        "what": "ms per training step, tritongpt's CPU demo config against nanoGPT's model and loop, alternating blocks",
        **run_info(torch.device("cpu")),
        "config": args.config, "overrides": args.overrides, "gelu": cfg.gelu, "vocab_size": vocab, "threads": torch.get_num_threads(),
        "shape": {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "bias", "dropout")},
        "rounds": args.rounds, "block": args.block, "seeds": seeds,
        "ratio_mean": statistics.mean(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"ratio (ours / nanoGPT) {result['ratio_mean']:.3f} (seeds {min(ratios):.3f}-{max(ratios):.3f}); wrote {args.out}")


if __name__ == "__main__":
    main()
