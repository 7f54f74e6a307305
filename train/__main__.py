"""python -m train [CONFIG] [--key=value ...]

With no arguments at all, the main command: prepare tiny Shakespeare (character-level) if it is
not there, train the config that fits this machine (shakespeare_char on a GPU,
shakespeare_char_cpu on a CPU; a finished run is not trained again), then print a sample.
"""

import os
import sys

import torch

import prep
from train import checkpoint
from train.config import ConfigError, TrainConfig, load_config, usage
from train.loop import TrainingStopped, train
from train.sample import SampleConfig, sample


def main_command():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the main command runs in one process; under torchrun name a config: -m train shakespeare_char")
    name = "shakespeare_char" if torch.cuda.is_available() else "shakespeare_char_cpu"
    cfg = load_config([name])
    if not os.path.isfile(os.path.join(cfg.data_dir, "shakespeare_char", "meta.json")):
        if not hasattr(prep, "prepare"):
            raise ConfigError("prep.prepare is not available: prepare the data first with `python -m prep shakespeare_char`")
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


def run_cli(fn, argv, doc=__doc__, cls=TrainConfig):
    """Run fn(argv) with the one top-level handler: a bad config, dataset or checkpoint is one line
    on stderr and exit status 2; a run that stopped itself, exit status 1."""
    if "-h" in argv or "--help" in argv:
        print(doc.strip() + "\n\nKeys and defaults:\n" + usage(cls))
        return
    try:
        fn(argv)
    except (ConfigError, prep.DatasetError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
