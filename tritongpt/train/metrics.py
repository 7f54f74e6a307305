"""What the trainer reports: one log line per interval on rank 0, a JSONL file in out_dir, and
wandb when asked for.

    step 100/2000 | loss 2.4312 | lr 1.00e-03 | grad norm 0.731 | 62.1 ms | 12,371 tok/s | MFU n/a | mem 0.41 GiB | ETA 1m58s

ms and tok/s are averages over the interval; MFU uses gpt.flops and the device's dense peak for
the run's dtype (float32 against TF32's, which the trainer turns on; n/a where the device is not
in the table); mem is the peak CUDA memory allocated, or the
process's peak resident memory on a CPU. An evaluation prints a line when it starts and one with
its losses and how long it took, so that a log shows what a long first evaluation is doing.
"""

import contextlib
import json
import os
import resource
import sys
import time

import torch

from tritongpt.gpt.flops import mfu
from tritongpt.instrument.run import device_name
from tritongpt.train.config import ConfigError


def _duration(seconds):
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _seconds(seconds):
    return f"{seconds:.1f} s" if seconds < 60 else _duration(seconds)


def peak_memory_gib(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


class MetricsError(RuntimeError):
    """metrics.jsonl cannot be written (a full or read-only disk); the message is one line."""


class JsonLines:
    """A JSONL file that only ever holds whole lines: each record is appended with one write,
    and a write that fails part way (a full disk) is cut back off. A line an earlier process left
    unfinished (killed while writing) is cut off when the file is opened again. OSErrors become
    MetricsError."""

    def __init__(self, path):
        self.path = path
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise MetricsError(self._cannot(e)) from None
        try:
            self._cut_unfinished_line()
        except OSError as e:
            self.close()
            raise MetricsError(self._cannot(e)) from None

    def _cannot(self, e):
        return (f"could not write {self.path} ({e.strerror or e}); free space on that disk or choose a writable "
                "out_dir (the checkpoints stay where they are)")

    def _cut_unfinished_line(self):
        end = os.fstat(self.fd).st_size
        if not end or os.pread(self.fd, 1, end - 1) == b"\n":
            return
        at = end
        while at > 0:  # back to the last newline
            chunk = os.pread(self.fd, min(at, 1 << 16), max(at - (1 << 16), 0))
            i = chunk.rfind(b"\n")
            if i >= 0:
                at = at - len(chunk) + i + 1
                break
            at -= len(chunk)
        os.ftruncate(self.fd, at)

    def append(self, record):
        data = (json.dumps(record) + "\n").encode("utf-8")
        start = os.fstat(self.fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)  # no half line
            raise MetricsError(self._cannot(e)) from None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Metrics:
    def __init__(self, cfg, model_config, device, tokens_per_step, world_size, enabled):
        self.enabled = enabled  # rank 0 only
        self.cfg = cfg
        self.model_config = model_config
        self.device = device
        self.tokens_per_step = tokens_per_step  # over all processes
        self.world_size = world_size
        self.device_name = device_name(device)
        self.last_time, self.last_step = None, None
        self.step_seconds = None  # smoothed, for the ETA
        self.file = None
        self.wandb = None
        if not enabled:
            return
        self.file = JsonLines(os.path.join(cfg.out_dir, "metrics.jsonl"))
        if cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise ConfigError("config key 'wandb_log' is on but wandb is not installed (pip install wandb)") from None
            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=cfg.to_dict())
            self.wandb = wandb

    def start(self, step):
        """Start timing at `step` (the run's first step, or after an evaluation)."""
        self.last_time, self.last_step = time.perf_counter(), step

    def write(self, record):
        if self.file is not None:
            self.file.append(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k not in ("event", "step")}, step=record["step"])

    def event(self, step, event, **fields):
        self.write({"step": step, "event": event, "time": time.time(), **fields})

    def log_step(self, step, loss, lr, grad_norm, skipped):
        """`step` updates are done; `loss` and `grad_norm` are floats already on the host."""
        now = time.perf_counter()
        steps = step - self.last_step
        dt = (now - self.last_time) / max(steps, 1)
        self.last_time, self.last_step = now, step
        tok_s = self.tokens_per_step / dt
        util = mfu(self.model_config, self.cfg.block_size, tok_s / self.world_size, self.device_name,  # per device
                   self.cfg.dtype, torch.backends.cuda.matmul.allow_tf32)
        mem = peak_memory_gib(self.device)
        self.step_seconds = dt if self.step_seconds is None else 0.7 * self.step_seconds + 0.3 * dt
        eta = self.step_seconds * (self.cfg.max_iters - step)
        self.write(
            dict(step=step, loss=loss, lr=lr, grad_norm=grad_norm, ms=dt * 1e3, tok_per_s=tok_s, mfu=util,
                 mem_gib=mem, skipped=skipped, time=time.time())
        )
        if not self.enabled:
            return
        parts = [
            f"step {step}/{self.cfg.max_iters}",
            f"loss {loss:.4f}",
            f"lr {lr:.2e}",
            f"grad norm {grad_norm:.3f}",
            f"{dt * 1e3:.1f} ms",
            f"{tok_s:,.0f} tok/s",
            f"MFU {util * 100:.1f}%" if util is not None else "MFU n/a",
            f"mem {mem:.2f} GiB",
            f"ETA {_duration(eta)}",
        ]
        if skipped:
            parts.append(f"skipped {skipped}")
        print(" | ".join(parts), flush=True)

    def log_eval(self, step, losses, seconds):
        self.write(dict(step=step, event="eval", train_loss=losses["train"], val_loss=losses["val"], seconds=seconds,
                        time=time.time()))
        if self.enabled:
            print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                  f"(evaluation took {_seconds(seconds)})", flush=True)

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
