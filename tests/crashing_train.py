"""python tests/crashing_train.py STEP [CONFIG] [--key=value ...]: the trainer's command (python -m
train), made to die before step STEP as a killed node would, on the first attempt only. Under
`torchrun --max-restarts=N` the restarted attempt (TORCHELASTIC_RESTART_COUNT > 0) runs normally
and resumes by itself from the latest checkpoint. The fault is added from outside the trainer."""

import os
import sys

import train.__main__ as train_command
from train.cli import run_cli
from train.loop import Trainer


def die_before(step):
    real = Trainer.train_step

    def train_step(self, s):
        if s == step:
            print(f"test fault: dying before step {step}", flush=True)
            os._exit(17)
        return real(self, s)

    Trainer.train_step = train_step


if __name__ == "__main__":
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        die_before(int(sys.argv[1]))
    run_cli(train_command.main, sys.argv[2:], train_command.__doc__)
