"""One training step: the trainer's, and the very one the benchmark and the profiles time.

    step = TrainStep(model, optimizer, "cuda:0", "bfloat16", grad_clip=1.0, micro_steps=4)
    loss, norm = step(batch, lr)        # batch(micro) -> (x, y), micro = 0 .. micro_steps - 1

Over micro_steps micro-batches: the forward under autocast, the backward of loss / micro_steps
(scaled by the GradScaler in float16), gradients reduced on the last micro-step only (DDP; FSDP
as train/parallel.py says). Then the gradients are unscaled, clipped to grad_clip (0: only
measured), and a step whose gradient norm (in float16: whose loss) is not finite skips its update
and is counted (train/health.py): on the device where the optimizer is fused, through the
optimizer's found_inf, so that nothing waits for the device; with the unfused optimizer (on a
CPU) by a check on the host. Then the scaler's update and the gradients zeroed. Returns device
tensors (mean loss, pre-clip gradient norm).
"""

import torch
import torch.distributed as dist

from tritongpt.instrument import nvtx
from tritongpt.train import optim, parallel
from tritongpt.train.health import BadSteps
from tritongpt.train.system import autocast


class TrainStep:
    def __init__(self, model, optimizer, device, dtype, *, raw_model=None, micro_steps=1, grad_clip=1.0, scaler=None,
                 bad=None, ddp=False, unsharded=False):
        """model: what the step calls (compiled, DDP- or FSDP-wrapped); raw_model: the GPT whose
        gradients are clipped (default: model). dtype: the run's, a train.system.PTDTYPE key.
        scaler: a GradScaler (default: one that is on in float16 only); bad: the BadSteps to count
        in (default: a new one). ddp: several processes (the float16 bad-step flag is agreed on);
        unsharded: FSDP accumulating unsharded (train/parallel.py)."""
        self.model, self.optimizer = model, optimizer
        self.raw_model = model if raw_model is None else raw_model
        self.device, self.micro_steps, self.grad_clip = device, micro_steps, grad_clip
        self.autocast = autocast(device, dtype)
        self.scaler = scaler or torch.amp.GradScaler(torch.device(device).type, enabled=dtype == "float16")
        self.bad = bad or BadSteps(device)
        self.ddp, self.unsharded = ddp, unsharded
        # skips a step with non-finite gradients on the device (found_inf): the fused AdamW, and Muon on a GPU
        self.fused = bool(optimizer.param_groups[0].get("fused")) or (
            isinstance(optimizer, optim.Muon) and torch.device(device).type == "cuda")

    def __call__(self, batch, lr=None):
        """One optimizer step over the micro-batches batch(0), ..., batch(micro_steps - 1), at
        learning rate lr (None: the optimizer's as it is; a group with an lr_ratio, Muon's, takes
        lr * lr_ratio). Returns (mean loss, gradient norm)."""
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_ratio", 1.0)  # Muon's matrices: muon_lr's share of the schedule
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.micro_steps):
            with nvtx.range("data"):
                x, y = batch(micro)
            with parallel.micro_step(self.model, micro == self.micro_steps - 1, self.unsharded):
                with nvtx.range("forward"), self.autocast:
                    loss = self.model(x, y)
                loss_sum += loss.detach().float()
                with nvtx.range("backward"):
                    self.scaler.scale(loss / self.micro_steps).backward()
        with nvtx.range("optimizer"):
            self.scaler.unscale_(self.optimizer)
            max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
            norm = parallel.clip_grad_norm(self.raw_model.parameters(), max_norm)  # of every shard under FSDP
            bad = (~torch.isfinite(norm)).long()  # identical in every process: the gradients are averaged
            if self.scaler.is_enabled():
                # fp16: the scaler skips steps whose gradients overflow and lowers its scale, routinely
                # at the start; only a non-finite loss counts as a bad step (in any process).
                bad = (~torch.isfinite(loss_sum)).long()
                if self.ddp:
                    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
                self.scaler.step(self.optimizer)
            elif self.fused:
                self.optimizer.found_inf = bad.float()  # the fused kernel skips the update on the device
                self.optimizer.step()
            elif not bad.item():  # the unfused optimizer runs on a CPU, where this check costs nothing
                self.optimizer.step()
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        self.bad.count(bad)
        return loss_sum / self.micro_steps, norm
