"""The one top-level handler of the trainer's commands (python -m tritongpt.train, python -m tritongpt.train.sample)."""

import os
import sys

import torch.distributed as dist

from tritongpt import prep
from tritongpt.train import checkpoint
from tritongpt.train.config import ConfigError, TrainConfig, usage
from tritongpt.train.loop import TrainingStopped
from tritongpt.train.metrics import MetricsError
from tritongpt.train.peers import PeerLost
from tritongpt.train.system import JoinError


def run_cli(fn, argv, doc, cls=TrainConfig):
    """Run fn(argv): --help prints `doc` and every key of `cls`; a bad config, dataset or checkpoint,
    or an out_dir that refuses the metrics, is one line on stderr and exit status 2; a run that
    stopped itself, could not join its peers or lost one, exit status 1."""
    if "-h" in argv or "--help" in argv:
        print(doc.strip() + "\n\nKeys and defaults:\n" + usage(cls))
        return
    try:
        fn(argv)
    except (ConfigError, prep.DatasetError, checkpoint.CheckpointError, MetricsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (TrainingStopped, JoinError, PeerLost) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if dist.is_torchelastic_launched():
        # A worker of torchrun whose run ended well (every file written and closed, its process
        # group destroyed) leaves without the interpreter's teardown: there, gloo's threads can
        # still be joinable when their objects are destroyed, and the C++ runtime aborts the
        # process (SIGABRT, "terminate called without an active exception"), now and then, which
        # torchrun reports as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
