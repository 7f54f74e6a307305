"""python -m tritongpt.train [CONFIG] [--key=value ...]

With no arguments at all, the main command: prepare tiny Shakespeare (character-level) if it is
not there, train the config that fits this machine (shakespeare_char on a GPU,
shakespeare_char_cpu on a CPU; a finished run is not trained again), then print a sample.
"""

import os
import sys

import torch

from tritongpt import prep
from tritongpt.train import checkpoint
from tritongpt.train.cli import run_cli
from tritongpt.train.config import ConfigError, load_config
from tritongpt.train.loop import train
from tritongpt.train.sample import SampleConfig, sample


def main_command():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the main command runs in one process; under torchrun name a config: -m tritongpt.train shakespeare_char")
    name = "shakespeare_char" if torch.cuda.is_available() else "shakespeare_char_cpu"
    cfg = load_config([name])
    if not os.path.isfile(os.path.join(cfg.data_dir, "shakespeare_char", "meta.json")):
        prep.prepare("shakespeare_char", out_dir=cfg.data_dir)
    if checkpoint.checkpoints(cfg.out_dir):
        cfg.init_from = "resume"  # a finished run is sampled again, an interrupted one continues
    print(f"training {name} into {cfg.out_dir}", flush=True)
    train(cfg)
    text = sample(SampleConfig(out_dir=cfg.out_dir, num_samples=1, max_new_tokens=500))[0]
    print(text)


def main(argv):
    if not argv:
        main_command()
    else:
        train(load_config(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:], __doc__)
