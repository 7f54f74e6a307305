"""python tests/crashing_train.py FAULT [CONFIG] [--key=value ...]: the trainer's command (python -m
train) with a fault injected from outside the trainer, as a killed node would have it. FAULT is

    STEP               every process exits (status 17) before step STEP, on the first attempt only
    STEP:RANK          process RANK is killed with SIGKILL before step STEP, on the first attempt only
    STEP:RANK:stuck    as STEP:RANK, and on the restarted attempt process RANK hangs at start-up,
                       never joining the others

Under `torchrun --max-restarts=N` the restarted attempt (TORCHELASTIC_RESTART_COUNT > 0) runs normally
and resumes by itself from the latest checkpoint."""

import os
import signal
import sys
import time

import tritongpt.train.__main__ as train_command
from tritongpt.train.cli import run_cli
from tritongpt.train.loop import Trainer


def die_before(step, rank=None):
    real = Trainer.train_step

    def train_step(self, s):
        if s == step:
            print(f"test fault: dying before step {step}" + ("" if rank is None else f" in rank {rank}"), flush=True)
            if rank is None:
                os._exit(17)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, s)

    Trainer.train_step = train_step


if __name__ == "__main__":
    step, rank, stuck = (sys.argv[1].split(":") + [None, None])[:3]
    this_rank = os.environ.get("RANK", "0")
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
    if first_attempt and rank in (None, this_rank):
        die_before(int(step), rank)
    elif not first_attempt and stuck == "stuck" and rank == this_rank:
        print(f"test fault: rank {rank} hangs at start-up", flush=True)
        time.sleep(3600)
    run_cli(train_command.main, sys.argv[2:], train_command.__doc__)
