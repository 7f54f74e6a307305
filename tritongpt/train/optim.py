"""Muon for the hidden matrices, AdamW for everything else: the trainer's `--optimizer=muon`.

Muon (Keller Jordan, 2024; the GPT-2 speedrun's and nanochat's optimizer) runs SGD with Nesterov
momentum and replaces each matrix's step by the nearest semi-orthogonal matrix, U V^T of the
step's SVD U S V^T, found by five quintic Newton-Schulz steps (kernels.reference.newton_schulz;
kernels.newton_schulz on the triton backend, in bf16 on a GPU). Every direction of the matrix then
moves by the same amount, however small its gradient. The hidden matrices are the 2-D weights of
the blocks: attention's c_attn (orthogonalized as three C x C blocks, q, k and v, each on its own)
and c_proj, the MLP's c_fc and c_proj. The embeddings, the LM head and every 1-D parameter (norm
gains, biases) take AdamW, with weight decay on the 2-D ones only, as GPT.configure_optimizers does.

The learning rate of a matrix of R x C (each block of c_attn) is muon_lr * max(1, R / C) ** 0.5,
the speedrun's scaling: a tall matrix (the MLP's c_fc, 4C x C) moves each output row as far as a
square one does. Muon's rate follows the trainer's schedule (warm-up, cosine) as a share of it:
each step it is muon_lr * lr(step) / learning_rate. No weight decay on the matrices.

Under several processes, Newton-Schulz runs once per matrix, in the process that owns it: the
matrices, largest first, are dealt out in rounds of one per process. We give whole matrices to
processes rather than gather each one everywhere, because the iteration costs 5 x 3 matmuls of
the matrix's size, which every process would otherwise repeat: dealt out, a round costs each
process one matrix's work and moves each matrix's data across the network about once.
- DDP: every process holds the averaged gradients and the momentum of every matrix (so rank 0's
  state is the whole state, as checkpoints need); the owner orthogonalizes its matrix, and one
  all_gather per round hands each process every update of the round.
- FSDP2: each process holds a shard of rows of every matrix, its gradient and its momentum (the
  momentum is a DTensor sharded as the weight, so sharded checkpoints hold it as they hold AdamW's
  moments). One all_to_all per round sends each owner the shards of its matrix, the owner
  orthogonalizes the whole matrix, and a second all_to_all sends every process its rows of each
  update. A matrix is never whole in a process that does not orthogonalize it.
Either way each process computes the same update from the same averaged gradient as one process
would (tests/test_train_muon.py holds it).

With `found_inf` set (a 0-d tensor, nonzero when the gradients are not finite), a step leaves the
weights and every state unchanged, on the device, without waiting for it: the trainer sets it on a
GPU, as for the fused AdamW.
"""

import torch
import torch.distributed as dist

from tritongpt import kernels
from tritongpt.kernels import reference

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # torch before 2.6
    from torch.distributed._tensor import DTensor, Shard

OPTIMIZERS = ("adamw", "muon")


def _local(t):
    """A DTensor's shard in this process (the same storage), or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def hidden_matrices(model):
    """{name: how many row blocks it is orthogonalized as} of the matrices Muon takes: the 2-D
    weights inside the blocks (c_attn as its q, k and v blocks)."""
    return {name: 3 if name.endswith("attn.c_attn.weight") else 1
            for name, p in model.named_parameters() if name.startswith("transformer.h.") and p.dim() == 2}


def row_counts(rows, world):
    """The rows of each process's shard of a matrix of `rows` rows, as FSDP2 shards dim 0
    (torch.chunk's split: ceil(rows / world) each, the last ones short or empty)."""
    each = -(-rows // world)
    return [max(0, min(each, rows - r * each)) for r in range(world)]


class Muon(torch.optim.Optimizer):
    """Muon for the param groups with muon=True, AdamW for the others, as one optimizer (one
    state_dict, one step, as the trainer and torch.distributed.checkpoint expect).

    Group keys: lr, weight_decay; AdamW's betas, eps; Muon's momentum, ns_steps, split (row
    blocks orthogonalized apart: 3 for a fused q, k, v matrix); lr_ratio, the group's rate as a
    share of the schedule's (the trainer sets lr = lr_ratio * lr(step) each step).
    orthogonalize(x, steps): the Newton-Schulz function, on (blocks, rows, cols); ns_dtype: the
    dtype it runs in (None: the gradients').
    """

    def __init__(self, params, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, momentum=0.95, ns_steps=5,
                 orthogonalize=reference.newton_schulz, ns_dtype=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, muon=False, momentum=momentum,
                        ns_steps=ns_steps, split=1, lr_ratio=1.0)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"]:
                bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2 or p.shape[0] % group["split"]]
                if bad:
                    raise ValueError(f"Muon: a muon group takes 2-D matrices whose rows split into {group['split']} "
                                     f"blocks, got shapes {bad}; give the other parameters to AdamW (muon=False)")
        self.orthogonalize = orthogonalize
        self.ns_dtype = ns_dtype
        self.found_inf = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # keep: 1, or a 0-d tensor that is 0 where the step must change nothing (found_inf)
        keep = 1.0 if self.found_inf is None else (self.found_inf == 0).float()
        matrices = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    matrices.append((p, group, self._momentum(p, group, keep)))
                else:
                    self._adamw(p, group, keep)
        self._muon(matrices, keep)
        return loss

    # ------------------------------------------------------------------------- AdamW

    def _adamw(self, p, group, keep):
        """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments), written
        with tensors for the step count so that nothing waits for the device."""
        state = self.state[p]
        x, g = _local(p), _local(p.grad)
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=x.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if state["step"].device != x.device:  # a checkpoint read onto the CPU
            state["step"] = state["step"].to(x.device)
        step, m, v = state["step"], _local(state["exp_avg"]), _local(state["exp_avg_sq"])
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        if torch.is_tensor(keep):
            g = torch.where(keep > 0, g, torch.zeros_like(g))
        step.add_(keep)
        m.lerp_(g, (1 - beta1) * keep)
        v.lerp_(g * g, (1 - beta2) * keep)
        if group["weight_decay"]:
            x.mul_(1 - lr * group["weight_decay"] * keep)
        # with keep = 0 before any step, both corrections are 0 (and both moments too): no 0 / 0
        correction1 = (1 - beta1**step).clamp_min(1e-30)
        correction2 = (1 - beta2**step).clamp_min(1e-30)
        denom = (v / correction2).sqrt_().add_(eps)
        x.sub_(m / denom * (lr * keep / correction1))

    # ------------------------------------------------------------------------- Muon

    def _momentum(self, p, group, keep):
        """Update the momentum buffer of p with its gradient; returns the Nesterov step
        g + momentum * (buf - g) (this process's rows under FSDP)."""
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf, g = _local(state["momentum_buffer"]), _local(p.grad)
        if torch.is_tensor(keep):
            g = torch.where(keep > 0, g, torch.zeros_like(g))
        mu = group["momentum"]
        buf.lerp_(g, (1 - mu) * keep)
        return g.lerp(buf, mu)

    def _orthogonalized(self, u, group):
        """The update of a whole matrix from its Nesterov step u (R, C): each of its `split` row
        blocks orthogonalized and scaled by max(1, rows / cols) ** 0.5."""
        R, C = u.shape
        blocks = u.view(group["split"], R // group["split"], C)
        o = self.orthogonalize(blocks.to(self.ns_dtype or u.dtype), group["ns_steps"])
        scale = max(1.0, (R // group["split"]) / C) ** 0.5
        return (o.to(u.dtype) * scale).view(R, C)

    def _muon(self, matrices, keep):
        """Orthogonalize every matrix's step, each in the process that owns it, and apply them."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        sharded = any(isinstance(p, DTensor) for p, _, _ in matrices)
        order = sorted(matrices, key=lambda m: -m[0].numel())  # largest first: a round's matrices are alike
        for start in range(0, len(order), world):
            chunk = order[start : start + world]
            if world == 1:
                updates = [self._orthogonalized(u, group) for _, group, u in chunk]
            elif sharded:
                updates = self._sharded_round(chunk, rank, world)
            else:
                updates = self._replicated_round(chunk, rank, world)
            for (p, group, _), u in zip(chunk, updates, strict=True):
                _local(p).sub_(u * (group["lr"] * keep))

    def _replicated_round(self, chunk, rank, world):
        """DDP: process r orthogonalizes chunk[r]; one all_gather hands every update to every process."""
        size = max(u.numel() for _, _, u in chunk)
        u0 = chunk[0][2]
        mine = torch.zeros(size, dtype=u0.dtype, device=u0.device)
        if rank < len(chunk):
            _, group, u = chunk[rank]
            mine[: u.numel()] = self._orthogonalized(u, group).reshape(-1)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        return [gathered[j][: u.numel()].view_as(u) for j, (_, _, u) in enumerate(chunk)]

    def _sharded_round(self, chunk, rank, world):
        """FSDP2: process r orthogonalizes chunk[r]. An all_to_all brings it every process's rows
        of that matrix; after Newton-Schulz another sends each process its rows of every update."""
        counts = []
        for p, _, u in chunk:
            if tuple(p.placements) != (Shard(0),):
                raise ValueError(f"Muon: expected weights sharded by rows (Shard(0)), got {p.placements}")
            counts.append(row_counts(p.shape[0], world))
            if counts[-1][rank] != u.shape[0]:
                raise ValueError(f"Muon: this process holds {u.shape[0]} rows of a {tuple(p.shape)} weight, "
                                 f"not the {counts[-1][rank]} of an even split by rows")
        slot = max(c[0] * p.shape[1] for c, (p, _, _) in zip(counts, chunk, strict=True))
        u0 = chunk[0][2]
        send = torch.zeros(world, slot, dtype=u0.dtype, device=u0.device)
        for j, (_, _, u) in enumerate(chunk):
            send[j, : u.numel()] = u.reshape(-1)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)  # recv[r]: process r's rows of chunk[rank]
        back = torch.zeros_like(send)
        if rank < len(chunk):
            p, group, _ = chunk[rank]
            C = p.shape[1]
            whole = torch.cat([recv[r, : n * C].view(n, C) for r, n in enumerate(counts[rank])])
            update = self._orthogonalized(whole, group)
            for r, rows in enumerate(update.split(counts[rank][0])):
                back[r, : rows.numel()] = rows.reshape(-1)
        dist.all_to_all_single(recv, back)  # recv[j]: this process's rows of chunk[j]'s update
        return [recv[j, : u.numel()].view_as(u) for j, (_, _, u) in enumerate(chunk)]


def build(model, cfg, device_type):
    """The optimizer `cfg.optimizer` names for `model` (an unsharded or an FSDP2-sharded GPT):
    AdamW (GPT.configure_optimizers), or Muon for the hidden matrices and AdamW for the rest.
    On the triton backend Newton-Schulz runs on kernels.newton_schulz; on a GPU in bf16."""
    if cfg.optimizer == "adamw":
        return model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    splits = hidden_matrices(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ratio = cfg.muon_lr / cfg.learning_rate
    groups = [{"params": [p for n, p in named if splits.get(n) == s], "muon": True, "split": s,
               "lr": cfg.muon_lr, "lr_ratio": ratio, "weight_decay": 0.0} for s in sorted(set(splits.values()))]
    rest = [p for n, p in named if n not in splits]
    groups += [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    orthogonalize = kernels.newton_schulz if cfg.backend == "triton" else reference.newton_schulz
    return Muon([g for g in groups if g["params"]], lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                momentum=cfg.muon_momentum, orthogonalize=orthogonalize,
                ns_dtype=torch.bfloat16 if device_type == "cuda" else None)
