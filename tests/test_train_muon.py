"""Muon (train/optim.py): the Newton-Schulz reference orthogonalizes, the matrices it takes, its
update by hand, its AdamW half against torch's, a skipped step, and in the trainer: exact resume,
and DDP and FSDP2 on 2 gloo processes against one process."""

import copy

import pytest
import torch

from conftest import tiny
from test_train import losses, weights
from test_train_fsdp import assert_close, evals, norms, run_ok, sharded_weights
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.kernels import reference
from tritongpt.train import checkpoint, optim
from tritongpt.train.config import load_config
from tritongpt.train.health import BadSteps
from tritongpt.train.loop import train
from tritongpt.train.optim import Muon, hidden_matrices, row_counts
from tritongpt.train.step import TrainStep

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-6  # one process against two: the same sums in another order (as tests/test_train_fsdp.py)


# ----------------------------------------------------------------------------- the method


@pytest.mark.parametrize("shape", [(32, 32), (24, 80), (80, 24), (3, 16, 40)], ids=str)
def test_newton_schulz_takes_every_singular_value_near_one(shape):
    """Five quintic steps take the singular values of g / ||g||, spread over two decades, to about
    [0.7, 1.2] (not exactly 1: Muon needs no more), keeping the singular vectors: the result is
    near U V^T of g's SVD. (Values far smaller still grow 3.4x a step, but do not get there.)"""
    u, _, vh = torch.linalg.svd(torch.randn(shape, dtype=torch.float64), full_matrices=False)
    s = torch.logspace(0, -2, u.shape[-1], dtype=torch.float64)  # condition number 100
    g = (u * s.unsqueeze(-2)) @ vh
    o = reference.newton_schulz(g.float()).double()
    assert o.shape == g.shape
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv
    cosine = (o * (u @ vh)).sum((-2, -1)) / (o.norm(dim=(-2, -1)) * (u @ vh).norm(dim=(-2, -1)))
    assert (cosine > 0.95).all(), cosine
    assert torch.equal(reference.newton_schulz(torch.zeros(shape)), torch.zeros(shape))  # no 0 / 0


def test_hidden_matrices_are_the_blocks_2d_weights():
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, bias=True,
                          position_embedding="learned", tie_embeddings=False))
    got = hidden_matrices(model)
    want = {f"transformer.h.{i}.{name}.weight": 3 if name == "attn.c_attn" else 1
            for i in range(2) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert got == want  # not wte, wpe, lm_head, the norms or any bias


def test_row_counts_split_as_fsdp_does():
    assert row_counts(33, 2) == [17, 16]
    assert row_counts(96, 2) == [48, 48]
    assert row_counts(5, 4) == [2, 2, 1, 0]
    assert row_counts(2, 4) == [1, 1, 0, 0]
    for rows in (1, 7, 33):
        assert [len(c) for c in torch.arange(rows).chunk(4)] == [n for n in row_counts(rows, 4) if n]


def _toy(seed=0):
    torch.manual_seed(seed)
    qkv = torch.nn.Parameter(torch.randn(48, 16))  # three 16 x 16 blocks
    fc = torch.nn.Parameter(torch.randn(64, 16))  # tall: scaled by sqrt(64 / 16) = 2
    emb, gain = torch.nn.Parameter(torch.randn(10, 16)), torch.nn.Parameter(torch.randn(16))
    return qkv, fc, emb, gain


def _grads(params, seed):
    torch.manual_seed(seed)
    for p in params:
        p.grad = torch.randn_like(p)


def test_muon_step_by_hand():
    """Two steps: the momentum, the Nesterov step, q, k and v orthogonalized apart, the rate
    scaled by max(1, rows / cols) ** 0.5; the 1-D and embedding parameters move by AdamW."""
    qkv, fc, emb, gain = _toy()
    start = [p.detach().clone() for p in (qkv, fc)]
    opt = Muon([{"params": [qkv], "muon": True, "split": 3, "lr": 0.1}, {"params": [fc], "muon": True, "lr": 0.1},
                {"params": [emb, gain]}], lr=0.01, momentum=0.9)
    grads = []
    for seed in (1, 2):
        _grads([qkv, fc, emb, gain], seed)
        grads.append([qkv.grad.clone(), fc.grad.clone()])
        opt.step()
    for i, (p, blocks, scale) in enumerate(((qkv, 3, 1.0), (fc, 1, 2.0))):
        g1, g2 = grads[0][i], grads[1][i]
        buf = 0.1 * g1
        step1 = g1.lerp(buf, 0.9)
        buf = buf.lerp(g2, 0.1)
        step2 = g2.lerp(buf, 0.9)
        expect = start[i]
        for s in (step1, step2):
            o = reference.newton_schulz(s.view(blocks, -1, s.shape[1])).view_as(s)
            expect = expect - 0.1 * scale * o
        torch.testing.assert_close(p.detach(), expect, rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=0, atol=0)
    assert not torch.equal(emb, _toy()[2]) and set(opt.state[gain]) == {"step", "exp_avg", "exp_avg_sq"}


def test_adamw_half_equals_torch_adamw():
    """The groups without muon are torch.optim.AdamW's update, weight decay and all."""
    ours, theirs = _toy()[2:], [p.detach().clone().requires_grad_() for p in _toy()[2:]]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "weight_decay": 0.0}]  # noqa: E731
    a = Muon(groups(ours), lr=3e-3, betas=(0.8, 0.95))
    b = torch.optim.AdamW(groups(theirs), lr=3e-3, betas=(0.8, 0.95), foreach=False)
    for seed in range(5):
        _grads(ours, seed)
        _grads(theirs, seed)
        a.step()
        b.step()
    for x, y in zip(ours, theirs, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a.state[x]["exp_avg_sq"], b.state[y]["exp_avg_sq"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("first", [True, False], ids=["first step", "later step"])
def test_found_inf_leaves_weights_and_state_as_they_were(first):
    """With found_inf nonzero (non-finite gradients) a step changes nothing, with no NaN creeping
    into the weights or the states (made on the first step: zero, the step count 0), on the first
    step as on any other; with it zero, the step is the plain one."""
    params = _toy()
    opt = Muon([{"params": params[:2], "muon": True, "lr": 0.1}, {"params": params[2:]}], lr=0.01)
    if not first:
        _grads(params, 1)
        opt.step()
    before = [p.detach().clone() for p in params]
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    _grads(params, 2)
    params[0].grad[0, 0] = float("nan")
    params[3].grad[1] = float("inf")
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p, b)
        for k, v in opt.state[p].items():  # as before; made now (the first step): zero
            assert torch.equal(v, state[id(p)].get(k, torch.zeros_like(v))), k
    # found_inf = 0: the same step as without it
    twin = [p.detach().clone().requires_grad_() for p in params]
    plain = Muon([{"params": twin[:2], "muon": True, "lr": 0.1}, {"params": twin[2:]}], lr=0.01)
    plain.load_state_dict(copy.deepcopy(opt.state_dict()))  # its own tensors, not views of these
    _grads(params, 3)
    _grads(twin, 3)
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    plain.step()
    for p, t in zip(params, twin, strict=True):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-6)  # a tensor rate against a float: an ulp


def test_muon_group_takes_matrices_only():
    with pytest.raises(ValueError, match=r"2-D matrices whose rows split into 3 blocks, got shapes \[\(16,\)\]"):
        Muon([{"params": [torch.nn.Parameter(torch.ones(16))], "muon": True, "split": 3}], lr=0.1)
    with pytest.raises(ValueError, match=r"got shapes \[\(10, 4\)\]"):
        Muon([{"params": [torch.nn.Parameter(torch.ones(10, 4))], "muon": True, "split": 3}], lr=0.1)


def test_the_step_gives_muon_its_share_of_the_schedule():
    """TrainStep at rate lr: Muon's groups step at muon_lr * lr / learning_rate, AdamW's at lr;
    and Muon skips bad steps on the device on a GPU."""
    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    cfg = load_config(["--optimizer=muon", "--muon_lr=0.02", "--learning_rate=0.01", "--backend=torch"])
    opt = optim.build(model, cfg, "cpu")
    step = TrainStep(model, opt, "cpu", "float32")
    step(lambda micro: (torch.randint(32, (2, 8)), torch.randint(32, (2, 8))), lr=0.005)
    rates = {g.get("muon", False): g["lr"] for g in opt.param_groups}
    assert rates == {True: pytest.approx(0.01), False: 0.005}
    # on a GPU a bad step is skipped on the device (found_inf), as with the fused AdamW; on a CPU by the host
    assert TrainStep(model, opt, "cuda:0", "float32", bad=BadSteps("cpu")).fused and not step.fused


# ----------------------------------------------------------------------------- in the trainer

MUON = dict(optimizer="muon", muon_lr=0.05)


@pytest.fixture(scope="module")
def muon_straight(small_ds, tmp_path_factory):
    """20 Muon steps that never stopped (dropout on: the RNG state matters)."""
    out = str(tmp_path_factory.mktemp("muon_straight"))
    train(load_config(tiny(small_ds, out, **MUON)))
    return out


def test_muon_trains_and_resumes_exactly(muon_straight, small_ds, tmp_path):
    """Resumed at step 10, a Muon run ends bit for bit where the run that never stopped ended:
    the momentum buffers and AdamW's moments are in the checkpoint."""
    a = losses(muon_straight)
    assert a[20] < a[1] - 0.3
    state = checkpoint.read(f"{muon_straight}/ckpt_00000020.pt")
    buffers = [s for s in state["optimizer"]["state"].values() if "momentum_buffer" in s]
    assert len(buffers) == 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj of the one block
    out = str(tmp_path)
    train(load_config(tiny(small_ds, out, max_iters=10, **MUON)))
    train(load_config(tiny(small_ds, out, init_from="resume", **MUON)))
    assert losses(out) == a
    w1, w2 = weights(f"{muon_straight}/ckpt_00000020.pt"), weights(f"{out}/ckpt_00000020.pt")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_muon_trains_faster_than_adamw_here(muon_straight, straight):
    """Not a benchmark: on this tiny run Muon's loss after 20 steps is below AdamW's."""
    assert losses(muon_straight)[20] < losses(straight)[20]


COMMON = dict(dropout=0.0, mlp_hidden=33, **MUON)  # 33 MLP rows: an uneven split over 2 processes


@pytest.fixture(scope="module")
def muon_one(small_ds, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("muon_one"))
    train(load_config(tiny(small_ds, out, **COMMON)))
    return out


def _same_run(one, other, other_ckpt):
    assert sorted(losses(other)) == list(range(1, 21))
    assert_close(losses(one), losses(other), "loss")
    assert_close(norms(one), norms(other), "grad norm")
    assert_close(evals(one), evals(other), "evaluation")
    a, b = sharded_weights(f"{one}/ckpt_00000020.pt"), sharded_weights(other_ckpt)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=TOL)


def test_muon_under_ddp_equals_one_process(muon_one, small_ds, tmp_path):
    """DDP on 2 processes, each orthogonalizing half of the matrices: the run of one process."""
    out = str(tmp_path)
    run_ok(tiny(small_ds, out, **COMMON), nproc=2)
    _same_run(muon_one, out, f"{out}/ckpt_00000020.pt")


def test_muon_under_fsdp_equals_one_process_and_resumes_exactly(muon_one, small_ds, tmp_path):
    """FSDP2 on 2 processes (c_fc's 33 rows split 17 + 16): the run of one process; and from its
    sharded checkpoint at step 10 (the momentum sharded as the weights), bit for bit itself."""
    two, resumed = str(tmp_path / "two"), str(tmp_path / "resumed")
    run_ok(tiny(small_ds, two, fsdp="true", **COMMON), nproc=2)
    _same_run(muon_one, two, f"{two}/ckpt_00000020")
    run_ok(tiny(small_ds, resumed, fsdp="true", max_iters=10, **COMMON), nproc=2)
    run_ok(tiny(small_ds, resumed, fsdp="true", init_from="resume", **COMMON), nproc=2)
    assert losses(resumed) == losses(two)
    a, b = sharded_weights(f"{two}/ckpt_00000020"), sharded_weights(f"{resumed}/ckpt_00000020")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_single_file_checkpoint_resumes_under_fsdp(muon_one, small_ds, tmp_path):
    """A one-process Muon checkpoint (a single file) resumed by 2 FSDP processes: the optimizer
    state, momentum included, sharded on load; the run goes on as the one process did."""
    out = str(tmp_path)
    train(load_config(tiny(small_ds, out, max_iters=10, **COMMON)))
    run_ok(tiny(small_ds, out, fsdp="true", init_from="resume", **COMMON), nproc=2)
    a, b = losses(muon_one), losses(out)
    assert_close({s: a[s] for s in range(11, 21)}, {s: b[s] for s in range(11, 21)}, "loss after the resume")
