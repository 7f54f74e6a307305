"""How the model is spread over the processes: DDP (the default) or FSDP2, and what a training step
does differently under each: which micro-steps reduce gradients, how the gradient norm is taken.

DDP keeps a whole copy of the model, its gradients and AdamW's states in every process and
averages the gradients on the last micro-step of each step. FSDP (`--fsdp=true`, PyTorch's own
FSDP2, `fully_shard`) gives each of W processes 1/W of every parameter, gradient and AdamW state:
each block is one unit, gathered from all processes just before its forward (and again before its
backward) and freed after it; the root (embeddings, ln_f, LM head) is one more. On a GPU in
bfloat16 the gathered copies are bfloat16 and gradients are reduced in fp32 (MixedPrecisionPolicy):
the sharded fp32 weights are the master copy AdamW updates.

Compiling under FSDP: each block is compiled on its own (nn.Module.compile, before it is
sharded), not the whole model. FSDP's hooks around each block are closed to torch.compile, so a
whole-model graph breaks at every block anyway, and a checkpointed block (activation
checkpointing) would fall out of the graph at those breaks; compiled per block, the hooks run
eagerly between the graphs, and the blocks share one graph (two: the first block, which gets no
previous output, and the rest), so compile time does not grow with depth. The root's work (the
embeddings, and the LM head with the loss: one fused op on the triton backend) runs eagerly.

Gradient accumulation under FSDP (`fsdp_accumulate`): `unsharded` keeps each block gathered from
its first forward to the last micro-step's backward and its gradients unsharded in fp32 between
micro-steps, so a step gathers the weights once and reduces the gradients once, as DDP does, at
the cost of a whole bfloat16 copy of the weights and an fp32 one of the gradients per process;
`sharded` gathers before every forward and backward and reduces after every backward, holding
the least. `auto` takes `unsharded` where train/memory.py's estimate says it fits.
"""

import contextlib
import warnings

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel as DDP

try:
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor
except ImportError:  # torch before 2.6 had them under private names
    from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.distributed._tensor import DTensor

# A block returns a view (a Linear's output): FSDP2 warns that an in-place op on it would skip its
# hook. The model never changes a block's output in place (the next LayerNorm adds it out of place).
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def shard(model, device_type, dtype, compile_mode=None, unsharded=False):
    """Shard `model` (a GPT, in place) over every process of the default group with FSDP2: each
    block, then the root. dtype: the run's; in bfloat16 the gathered weights are bfloat16 and the
    gradients reduced in fp32. compile_mode: compile each block first (None: eager).
    unsharded: keep gathered weights until the last micro-step's backward (see the docstring)."""
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if dtype == "bfloat16" \
        else MixedPrecisionPolicy()
    for block in model.transformer.h:
        if compile_mode is not None:
            block.compile(mode=None if compile_mode == "default" else compile_mode)
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=not unsharded)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def wrap(model, cfg, device_type, local_rank, world_size, unsharded=False):
    """(the model a training step calls, the one evaluation calls) for this run: sharded with FSDP,
    else compiled as a whole where asked and wrapped in DDP over several processes."""
    compiled = cfg.compile == "true"
    if cfg.fsdp:
        model = shard(model, device_type, cfg.dtype, cfg.compile_mode if compiled else None, unsharded)
        return model, model
    if compiled:
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    if world_size == 1:
        return model, model
    return DDP(model, device_ids=[local_rank] if device_type == "cuda" else None), model


def micro_step(model, last, unsharded):
    """The context of one micro-step's forward and backward: gradients are reduced on the last
    micro-step only (DDP; FSDP accumulating unsharded), or on each (FSDP, sharded)."""
    if isinstance(model, DDP):
        return contextlib.nullcontext() if last else model.no_sync()
    if isinstance(model, FSDPModule) and unsharded:
        model.set_requires_gradient_sync(last)  # every FSDP unit, recursively
        model.set_reshard_after_backward(last)
    return contextlib.nullcontext()


def reshard(model):
    """Free the gathered weights an evaluation left behind (FSDP keeps the root's, and every
    block's when accumulating unsharded): the optimizer updates the shards, and a later forward
    must gather them anew."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def clip_grad_norm(params, max_norm):
    """Clip the gradients to max_norm (inf: only measure) and return their global norm, a plain
    tensor equal in every process: under FSDP each process holds a shard of every gradient, and
    the norm of DTensors is reduced over all of them."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def all_finite(params):
    """Whether every weight is finite, in every process (each checks its own shards under FSDP)."""
    local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
    ok = torch.stack([torch.isfinite(p).all() for p in local]).all().to(torch.int32)
    if any(isinstance(p, DTensor) for p in params):
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def named_optimizer_state(model, make_optimizer, state_dict):
    """A single file's optimizer state (keyed by parameter number) keyed by parameter name, from
    `model` before it is sharded, so that load_named_optimizer_state can shard it after."""
    optimizer = make_optimizer(model)
    optimizer.load_state_dict(state_dict)
    return get_optimizer_state_dict(model, optimizer)


def load_named_optimizer_state(model, optimizer, named):
    """Load a named_optimizer_state into the optimizer of the sharded `model`: each process keeps its shards."""
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
