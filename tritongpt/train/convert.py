"""Turn a checkpoint, sharded (an FSDP run's ckpt_STEP/) or not, into a single file and/or a Hugging
Face directory, in one process.

    python -m tritongpt.train.convert --out_dir=out/gptj --to_file=out/gptj-one/ckpt_00005000.pt
    python -m tritongpt.train.convert --checkpoint=out/gptj/ckpt_00005000 --to_hf=gptj-hf

The checkpoint is out_dir's newest readable one (as --init_from=resume takes it), or --checkpoint.
--to_file writes the trainer's own single-file format (weights, AdamW's states, step, config,
data position, RNG states, checksum): named ckpt_STEP.pt in an out_dir, it resumes there
(python -m tritongpt.train ... --init_from=resume, with or without --fsdp) and samples (python -m
train.sample --out_dir=...). --to_hf writes what transformers' AutoModelForCausalLM loads (the
model's family, or --family). Both read the sharded checkpoint whole into this process's memory
(the weights and AdamW's two moments: 12 bytes per parameter).
"""

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

from tritongpt.gpt import GPT, GPTConfig
from tritongpt.train import checkpoint
from tritongpt.train.cli import run_cli
from tritongpt.train.config import ConfigError, load_config


@dataclass
class ConvertConfig:
    out_dir: str = "out"  # the run whose newest readable checkpoint to convert
    checkpoint: str = ""  # or this checkpoint: a ckpt_STEP/ directory or a .pt file
    to_file: str = ""  # write a single-file checkpoint here
    to_hf: str = ""  # write a Hugging Face directory here
    family: str = ""  # the Hugging Face family to write (gpt2, gpt_neox, gptj, gpt_neo); default: the model's own


def read_checkpoint(cfg):
    """(state, path) of the checkpoint cfg names."""
    if cfg.checkpoint:
        if not os.path.exists(cfg.checkpoint):
            raise ConfigError(f"config key 'checkpoint': {cfg.checkpoint!r} does not exist")
        inside = checkpoint.checkpoints(cfg.checkpoint) + checkpoint.bests(cfg.checkpoint)
        if inside or os.path.isfile(os.path.join(cfg.checkpoint, "metrics.jsonl")):
            raise ConfigError(f"config key 'checkpoint': {cfg.checkpoint!r} is a run's out_dir, not a checkpoint; give "
                              f"--out_dir={cfg.checkpoint} to convert its newest readable checkpoint"
                              + (f", or --checkpoint={inside[0]}" if inside else ""))
        return checkpoint.read(cfg.checkpoint), cfg.checkpoint
    for line in checkpoint.recover(cfg.out_dir):  # a sharded save cut short
        print(line, file=sys.stderr)
    state, path = checkpoint.load_latest(cfg.out_dir, log=lambda m: print(m, file=sys.stderr))
    if state is None:
        raise ConfigError(f"config key 'out_dir': {cfg.out_dir!r} holds no checkpoint")
    return state, path


def convert(cfg):
    """Write what cfg asks for; returns the paths written."""
    if not cfg.to_file and not cfg.to_hf:
        raise ConfigError("give --to_file=PATH (a single-file checkpoint) and/or --to_hf=DIR (a Hugging Face directory)")
    for key in ("to_file", "to_hf"):
        where = getattr(cfg, key)
        if where and os.path.exists(where) and not (os.path.isdir(where) and not os.listdir(where)):
            raise ConfigError(f"config key '{key}': {where!r} already exists; remove it or choose another path")
    made = _writable_dir(cfg.to_hf) if cfg.to_hf else None
    try:
        return _convert(cfg)
    except BaseException:
        if made:  # what this run created, or wrote into the empty folder it was given
            _remove_new(*made)
        raise


def _writable_dir(where):
    """Create --to_hf's directory (and the folders above it) and check that a file can be written
    there, before the checkpoint is read: one line if not. Returns (the topmost folder created
    here, or `where` itself where it was there already, empty; whether it was)."""
    there = os.path.isdir(where)
    top = os.path.abspath(where)
    while not there and not os.path.exists(os.path.dirname(top)) and os.path.dirname(top) != top:
        top = os.path.dirname(top)
    try:
        os.makedirs(where, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        _remove_new(top, there)
        raise ConfigError(f"config key 'to_hf': cannot write to {where!r} ({e.strerror or e}); choose a writable "
                          "directory") from None
    return top, there


def _remove_new(top, there):
    """Remove the folder `top` created here, or, where it was there already, only what is in it now."""
    if not there:
        shutil.rmtree(top, ignore_errors=True)
        return
    for name in os.listdir(top) if os.path.isdir(top) else []:
        path = os.path.join(top, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


def _convert(cfg):
    state, path = read_checkpoint(cfg)
    print(f"converting {path} (step {state['step']})", file=sys.stderr)
    model = GPT(GPTConfig(**state["model_args"], backend="torch"))
    written = []
    if cfg.to_file:
        run = state["config"]
        optimizer = model.configure_optimizers(run["weight_decay"], run["learning_rate"], (run["beta1"], run["beta2"]), "cpu")
        if "sharded" in state:
            checkpoint.load_sharded(state["sharded"], model, optimizer)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        whole = {k: v for k, v in state.items() if k not in ("sharded", "files", checkpoint.CHECKSUM)}
        whole.update(model=model.state_dict(), optimizer=optimizer.state_dict())
        checkpoint.write(whole, cfg.to_file)
        written.append(cfg.to_file)
    else:
        checkpoint.load_weights(state, model)
    if cfg.to_hf:
        try:
            model.save_pretrained(cfg.to_hf, cfg.family or None)
        except ValueError as e:
            raise ConfigError(f"config key 'to_hf': {e}") from None
        except OSError as e:  # a full or read-only disk
            raise ConfigError(f"config key 'to_hf': could not write {cfg.to_hf!r} ({e.strerror or e}); "
                              "free space or choose another directory") from None
        written.append(cfg.to_hf)
    return written


def main(argv):
    for path in convert(load_config(argv, cls=ConvertConfig)):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:], __doc__, ConvertConfig)
