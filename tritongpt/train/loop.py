"""The trainer: set-up (processes, device, data, model, optimizer, checkpoint), evaluation, and the
loop that ties them together; one training step is train/step.py's TrainStep.

    from tritongpt.train.config import load_config
    from tritongpt.train.loop import train
    train(load_config(["shakespeare_char_cpu", "--max_iters=100"]))

Under torchrun each process trains on its share of the global batch (gradient_accumulation_steps
micro-steps in all, split evenly), DDP averaging the gradients on the last micro-step only, or
FSDP sharding the model, its gradients and AdamW's states over the processes (train/parallel.py).

(A little over 400 lines: one set-up serves one process, DDP and FSDP, from scratch, from
pretrained weights or from a checkpoint of either kind.)
"""

import math
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from tritongpt import kernels
from tritongpt import prep
from tritongpt.gpt import GPT, GPTConfig, pad_vocab
from tritongpt.gpt.hf import read_config
from tritongpt.instrument import nvtx
from tritongpt.instrument.run import run_info
from tritongpt.train import checkpoint, memory, optim, parallel, peers, rng
from tritongpt.train.config import MODEL_KEYS, ConfigError, check_resumed_shape, validate
from tritongpt.train.data import EVAL, Batches, check_same_dataset, dataset_dir
from tritongpt.train.health import BadSteps
from tritongpt.train.metrics import Metrics, MetricsError
from tritongpt.train.step import TrainStep
from tritongpt.train.system import autocast, resolve_system, setup_device


class TrainingStopped(RuntimeError):
    """The run stopped itself; the message says why and which checkpoint holds the last good state."""


def learning_rate(step, cfg):
    """Linear warm-up to learning_rate over warmup_iters, then a cosine down to min_lr at
    lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self._setup_processes()
        self._setup_data()
        self.last_good = None  # the newest checkpoint written from a finite state (or resumed from)
        state = self._find_start()
        self._agree(-1 if state is None else state["step"], "found different checkpoints to start from (steps)")
        self._setup_model(state)
        self._setup_optimizer(state)
        self._restore_progress(state)
        self.step = TrainStep(self.model, self.optimizer, self.device, cfg.dtype, raw_model=self.raw_model,
                              micro_steps=self.micro_steps, grad_clip=cfg.grad_clip, scaler=self.scaler, bad=self.bad,
                              ddp=self.ddp, unsharded=self.unsharded)
        tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
        self.metrics = Metrics(cfg, self.raw_model.config, self.device, tokens_per_step, self.world_size, self.master)
        self.metrics.event(
            self.start_step, "resume" if self.resumed else "start",  # after a resume, lines may repeat steps a crash lost
            **run_info(self.device), world_size=self.world_size, tokens_per_step=tokens_per_step,
            config=cfg.to_dict(), model=self.raw_model.config.to_dict(),
        )
        if self.master:
            n = self.raw_model.get_num_params()
            print(
                f"model: {n / 1e6:.2f}M parameters, backend {cfg.backend}, {cfg.dtype} on {self.device}; "
                f"{tokens_per_step:,} tokens per step = {cfg.batch_size} x {cfg.block_size} x "
                f"{self.micro_steps} micro-steps x {self.world_size} processes",
                flush=True,
            )

    def log(self, text):
        if self.master:
            print(text, flush=True)

    # ------------------------------------------------------------------------- set-up

    def _setup_processes(self):
        cfg = self.cfg
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.ddp = self.world_size > 1  # several processes (DDP, or FSDP)
        self.fsdp = cfg.fsdp
        self.master = self.rank == 0
        validate(cfg, self.world_size)
        resolve_system(cfg)
        self.device_type = setup_device(cfg, self.local_rank, self.ddp)
        if self.ddp:
            peers.record()  # so that a process lost mid-run can be named
        self.device = cfg.device
        self.micro_steps = cfg.gradient_accumulation_steps // self.world_size
        self.autocast = autocast(self.device, cfg.dtype)  # evaluation's; the training step has its own
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=cfg.dtype == "float16")
        if cfg.nvtx:
            nvtx.enable(True)

    def _setup_data(self):
        cfg = self.cfg
        self.ds = prep.load(dataset_dir(cfg))
        self.fingerprint = self.ds.fingerprint()  # saved with each checkpoint, checked on resume
        self.batches = Batches(self.ds, cfg.batch_size, cfg.block_size, cfg.seed, self.device)

    def _find_start(self):
        """The checkpoint to start from, or None. Under torchrun a restarted job
        (TORCHELASTIC_RESTART_COUNT > 0) resumes from out_dir's latest checkpoint whatever init_from
        says; a fresh run refuses an out_dir that already holds checkpoints, so as to never
        overwrite them."""
        cfg = self.cfg
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        for line in checkpoint.recover(cfg.out_dir) if self.master else []:  # a sharded save cut short
            self.log(line)
        if self.ddp:
            dist.barrier()
        existing = checkpoint.checkpoints(cfg.out_dir) + checkpoint.bests(cfg.out_dir)
        self.has_best = bool(checkpoint.bests(cfg.out_dir))
        self._agree([os.path.basename(p) for p in existing], "see different checkpoints")  # before reading them together
        if cfg.init_from == "resume" or (restarted and existing):
            state, path = checkpoint.load_latest(cfg.out_dir, log=self.log)
            if state is None:
                raise ConfigError(f"config key 'init_from' is resume but out_dir {cfg.out_dir!r} holds no checkpoint")
            check_same_dataset(cfg, state, self.fingerprint)
            self.log(f"resuming from {path} (step {state['step']})" + (" after a restart" if restarted else ""))
            self.last_good = path
            return state
        if existing and not cfg.eval_only:
            raise ConfigError(
                f"config key 'out_dir' ({cfg.out_dir!r}) already holds checkpoints; "
                "continue with --init_from=resume or choose another out_dir"
            )
        return None

    def _agree(self, value, what):
        """Every process must see the same `value`: each reads out_dir itself, so across machines
        out_dir has to be on a file system that all of them see."""
        if not self.ddp:
            return
        seen = [None] * self.world_size
        dist.all_gather_object(seen, value)
        if any(v != seen[0] for v in seen):
            raise ConfigError(f"config key 'out_dir': the processes {what} ({seen}); "
                              "across machines out_dir must be on a shared file system")

    def _model_config(self, state):
        """The GPTConfig to build: the checkpoint's, the config's own (from scratch), or the pretrained
        model's (its config.json only; the weights are read once the backend is settled)."""
        cfg = self.cfg
        if state is not None:
            return GPTConfig(**dict(state["model_args"], dropout=cfg.dropout, backend=cfg.backend))
        if cfg.init_from == "scratch":
            return GPTConfig(block_size=cfg.block_size, vocab_size=pad_vocab(self.ds.vocab_size, cfg.vocab_multiple),
                             real_vocab_size=self.ds.vocab_size,  # the padding takes no probability
                             dropout=cfg.dropout, backend=cfg.backend, **{key: getattr(cfg, key) for key in MODEL_KEYS})
        try:
            return read_config(cfg.init_from, dropout=cfg.dropout, backend=cfg.backend)
        except ValueError as e:
            raise ConfigError(f"config key 'init_from': {e}") from None

    def _setup_model(self, state):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        model_config = self._model_config(state)
        if state is not None:
            check_resumed_shape(cfg, state["model_args"])
            model = GPT(model_config)
            if "model" in state:  # a single file; a sharded checkpoint's tensors load with the optimizer's
                model.load_state_dict(state["model"])
        elif cfg.init_from == "scratch":
            model = GPT(model_config)
        else:
            self.log(f"initialising from the pretrained {cfg.init_from}")
            try:
                model = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout, backend=cfg.backend)
            except ValueError as e:
                raise ConfigError(f"config key 'init_from': {e}") from None
        if cfg.block_size > model.config.block_size:
            raise ConfigError(
                f"config key 'block_size' ({cfg.block_size}) is longer than the model's ({model.config.block_size})"
            )
        for key in MODEL_KEYS:  # the config records the model actually trained
            setattr(cfg, key, getattr(model.config, key))
        self.batches.check_vocab(model.config.real_vocab_size)
        model.activation_checkpointing = cfg.activation_checkpointing
        report, self.unsharded = memory.plan_run(cfg, model.config, self.world_size)
        self.log(report)
        if self.fsdp and state is not None and "model" in state:  # a single file, for sharded processes: name
            state["optimizer"] = parallel.named_optimizer_state(model, self._optimizer, state["optimizer"])  # its tensors
        if not self.fsdp:
            model.to(self.device)  # FSDP moves each block's shards there as it shards it
        kernels.raise_on_bad_targets(self.device)  # makes the kernels' record of bad targets before any graph capture
        self.raw_model = model
        compiled = cfg.compile == "true"  # resolved from auto by resolve_system
        if cfg.nvtx and compiled:
            self.log("nvtx: per-module ranges are left out under compile (their hooks would break the graph)")
        elif cfg.nvtx:
            nvtx.annotate_model(model)
        if compiled:
            self.log(f"compiling the {'blocks' if self.fsdp else 'model'}, mode {cfg.compile_mode} (takes a minute)")
        self.model, self.eval_model = parallel.wrap(model, cfg, self.device_type, self.local_rank, self.world_size,
                                                    self.unsharded)

    def _optimizer(self, model):
        return optim.build(model, self.cfg, self.device_type)

    def _setup_optimizer(self, state):
        self.optimizer = self._optimizer(self.raw_model)
        if state is None:
            return
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if "sharded" in state:  # the weights too: DCP reshards them for this run's processes
            checkpoint.load_sharded(state["sharded"], self.raw_model, self.optimizer)
        elif self.fsdp:
            parallel.load_named_optimizer_state(self.raw_model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, fresh, strict=True):
            # This config's settings, not the saver's, but the saver's implementation (fused or
            # not: both run anywhere), so that a resumed run goes on with the same arithmetic.
            group.update({k: v for k, v in settings.items() if k != "fused" or k not in group})
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

    def _restore_progress(self, state):
        cfg = self.cfg
        self.bad = BadSteps(self.device, 0 if state is None else state.get("skipped_steps", 0))
        self.resumed = state is not None
        if state is None:
            self.start_step, self.best_val_loss = 0, float("inf")
            rng.seed_all(cfg.seed + self.rank)  # dropout differs between processes
            return
        self.start_step = state["step"]
        self.best_val_loss = state.get("best_val_loss", float("inf"))
        data = state.get("data", {})
        if data.get("seed", cfg.seed) != cfg.seed:
            self.log(f"note: data seed changes from {data['seed']} to {cfg.seed}: the batches differ from the first run's")
        rng.restore(state.get("rng") or [], self.rank, self.world_size, cfg.seed + self.rank + self.start_step,
                    self.device, self.log)

    # ------------------------------------------------------------------------- one step

    def train_step(self, step):
        """One optimizer step over the global batch (train/step.py). Returns device tensors (mean
        loss, pre-clip gradient norm) and the learning rate; nothing here waits for the device."""
        lr = learning_rate(step, self.cfg)
        first = self.rank * self.micro_steps  # this process's share of the step's micro-batches
        loss, norm = self.step(lambda micro: self.batches.get("train", step, first + micro), lr)
        return loss, norm, lr

    @torch.no_grad()
    def evaluate(self):
        """Mean loss of each split over eval_iters fixed batches, shared among the processes. Under
        FSDP every process runs as many forwards as the others (each gathers weights with all of
        them): one left without a batch of its own runs one more whose loss it does not count."""
        self.eval_model.eval()
        out = {}
        for split in ("train", "val"):
            total = torch.zeros((), device=self.device)
            ks = list(range(self.rank, self.cfg.eval_iters, self.world_size))
            if self.fsdp:
                ks += [None] * (-(-self.cfg.eval_iters // self.world_size) - len(ks))
            for k in tqdm(ks, desc=f"eval {split}", leave=False, disable=None if self.master else True):
                x, y = self.batches.get(split, EVAL, 0 if k is None else k)
                with self.autocast:
                    loss = self.eval_model(x, y).float()
                total += loss if k is not None else 0.0
            if self.ddp:
                dist.all_reduce(total)
            out[split] = total.item() / self.cfg.eval_iters
        kernels.raise_on_bad_targets(self.device)  # a target outside the vocabulary made a loss NaN
        if self.fsdp:
            parallel.reshard(self.raw_model)
        self.eval_model.train()
        return out

    def stop_if_bad(self, step, in_a_row):
        """Too many bad steps in a row (identical in every process) stop the run. A bad step may
        come from a target outside the vocabulary (its loss is NaN): that is named first."""
        if in_a_row:
            kernels.raise_on_bad_targets(self.device)
        if in_a_row >= self.cfg.max_bad_steps:
            raise TrainingStopped(
                f"stopping at step {step}: {in_a_row} non-finite losses in a row "
                f"(max_bad_steps={self.cfg.max_bad_steps}); the last good checkpoint is {self.last_good or 'none written yet'}"
            )

    def finite_state(self, losses):
        """Whether the losses and every weight are finite: only such a state is saved."""
        weights = parallel.all_finite(list(self.raw_model.parameters()))  # every process takes part
        return math.isfinite(losses["train"]) and math.isfinite(losses["val"]) and weights

    def save_checkpoint(self, step, val_loss, is_best):
        """Rank 0 writes the checkpoint (under FSDP every process its shards); a failure to write
        it stops every process with one line."""
        cfg = self.cfg
        rngs = [rng.rng_state(self.device)]
        if self.ddp:
            rngs = [None] * self.world_size
            dist.all_gather_object(rngs, rng.rng_state(self.device))
        state = {
            "scaler": self.scaler.state_dict(),
            "step": step,
            "config": cfg.to_dict(),
            "model_args": {k: v for k, v in self.raw_model.config.to_dict().items() if k not in ("backend", "dropout")},
            "val_loss": val_loss,
            "best_val_loss": self.best_val_loss,
            "skipped_steps": int(self.bad.total),
            "data": {"seed": cfg.seed, "step": step, "dataset": dataset_dir(cfg),
                     "dataset_abspath": os.path.abspath(dataset_dir(cfg)), "fingerprint": self.fingerprint},
            "rng": rngs,
            "world_size": self.world_size,
        }
        error = [None]
        try:
            if self.fsdp:
                path = checkpoint.save_sharded(self.raw_model, self.optimizer, state, cfg.out_dir, cfg.keep_last, is_best)
            elif self.master:
                state.update(model=self.raw_model.state_dict(), optimizer=self.optimizer.state_dict())
                path = checkpoint.save(state, cfg.out_dir, cfg.keep_last, is_best)
            if self.master:
                print(f"saved {path}" + (" (best so far)" if is_best else ""), flush=True)
        except checkpoint.CheckpointError as e:
            error = [str(e)]
        if self.ddp and not self.fsdp:  # every process learns of a failure and stops with rank 0
            dist.broadcast_object_list(error, src=0)
        if error[0]:
            raise checkpoint.CheckpointError(f"{error[0]}; the last good checkpoint is {self.last_good or 'none written yet'}")
        self.last_good = checkpoint.path_for(cfg.out_dir, step, sharded=self.fsdp)
        self.has_best = self.has_best or is_best

    # ------------------------------------------------------------------------- the loop

    def run(self):
        cfg = self.cfg
        step = self.start_step
        self.metrics.start(step)
        while True:
            at_eval = step % cfg.eval_interval == 0 or step == cfg.max_iters or cfg.eval_only
            if at_eval and not (self.resumed and step == self.start_step and not cfg.eval_only):
                self.log(f"step {step}: evaluating ({cfg.eval_iters} batches of each split)")
                start = time.perf_counter()
                losses = self.evaluate()
                self.metrics.log_eval(step, losses, time.perf_counter() - start)
                if cfg.eval_only:
                    break
                self.stop_if_bad(step, self.bad.now())
                if self.finite_state(losses):
                    improved = losses["val"] < self.best_val_loss
                    self.best_val_loss = min(self.best_val_loss, losses["val"])
                    if step > 0 and (improved or cfg.always_save_checkpoint or not self.has_best):
                        self.save_checkpoint(step, losses["val"], improved or not self.has_best)  # step 0 has none
                elif step > 0:
                    self.log(f"step {step}: no checkpoint, the losses or weights are not finite; "
                             f"the last good checkpoint is {self.last_good or 'none written yet'}")
                self.metrics.start(step)  # evaluation time is not training time
            if step >= cfg.max_iters:
                break
            loss, norm, lr = self.train_step(step)
            step += 1
            self.stop_if_bad(step, self.bad.latest())  # no wait for the device (see train.health)
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                if self.ddp:
                    dist.all_reduce(loss)
                    loss = loss / self.world_size
                loss, norm, skipped = torch.stack([loss, norm.float(), self.bad.total.float()]).tolist()  # the one wait
                kernels.raise_on_bad_targets(self.device)
                self.metrics.log_step(step, loss, lr, norm, int(skipped))
        return self.best_val_loss


def train(cfg):
    """Train as `cfg` says; returns the best val loss seen."""
    trainer = None
    finished = False
    try:
        trainer = Trainer(cfg)
        best = trainer.run()
        finished = True
        return best
    except MetricsError as e:
        if trainer is None:
            raise
        raise MetricsError(f"{e}; the last good checkpoint is {trainer.last_good or 'none written yet'}") from None
    except RuntimeError as e:  # a collective that found a peer gone: one line naming it, not gloo's traceback
        lost = None if isinstance(e, (TrainingStopped, checkpoint.CheckpointError)) else peers.lost(e)
        if lost is None:
            raise
        raise lost from None
    finally:
        if trainer is not None:
            trainer.metrics.close()
        if dist.is_initialized():
            if finished:
                # every process leaves together: tearing gloo down while a peer still writes the
                # last checkpoint can leave that peer hanging in the process group's destructor
                dist.barrier()
            del trainer
            dist.destroy_process_group()
