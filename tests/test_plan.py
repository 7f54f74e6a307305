"""python -m tritongpt.train.plan: compute-optimal tokens, FLOPs, time and a starting config, and bad input."""

import math

import pytest

from tritongpt.gpt.flops import flops_per_token, num_params
from tritongpt.train.config import load_config
from tritongpt.train.memory import main as memory_main
from tritongpt.train.plan import SHAPES, main, parse_amount, plan


def test_parse_amount():
    assert parse_amount("124M", "params") == 124e6 and parse_amount("1.3b", "params") == 1.3e9
    assert parse_amount("1e20", "flops") == 1e20 and parse_amount("7e6", "params") == 7e6
    for bad in ("abc", "-5", "0", "1e400", "12Q", "inf", "nan"):
        with pytest.raises(ValueError, match=r"--params must be a number in \[100,000, 1e\+13\] such as 124M"):
            parse_amount(bad, "params")


def test_params_plan_is_20_tokens_per_parameter():
    p = plan(params=70.4e6, family="pythia")
    cfg = p["config"]
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (6, 8, 512) and p["params"] == 70_426_624  # Pythia-70M's count
    assert cfg.position_embedding == "rotary" and not cfg.tie_embeddings
    assert p["tokens"] == 20 * p["params"]
    assert p["flops"] == pytest.approx(p["tokens"] * flops_per_token(cfg, 2048))
    assert p["gpu_hours"] == pytest.approx(p["flops"] / (989e12 * 0.4) / 3600)
    assert p["steps"] * p["tokens_per_step"] >= p["tokens"] > (p["steps"] - 1) * p["tokens_per_step"]


def test_budget_plans_spend_the_budget_on_the_nearest_optimal_shape():
    p = plan(flops=1e20)
    assert p["target"] == pytest.approx(math.sqrt(1e20 / 120))  # C = 6 N (20 N)
    assert p["tokens"] * p["flops_per_token"] == pytest.approx(1e20)
    sizes = [num_params(p["config"].__class__(**{**p["config"].to_dict(), "n_layer": s[0], "n_head": s[1],
                                                 "n_embd": s[2]})) for s, _ in SHAPES]
    assert p["params"] == min(sizes, key=lambda n: abs(math.log(n / p["target"])))
    h = plan(gpu_hours=100, gpu="H200", mfu=0.5, gpus=4)
    assert h["budget"] == pytest.approx(100 * 3600 * 989e12 * 0.5)
    assert h["gpu_hours"] == pytest.approx(100)


@pytest.mark.parametrize("family", ["gpt2", "pythia", "gpt_neo"])
def test_the_printed_command_is_a_valid_trainer_config(family, capsys):
    main(["--params=124M", f"--family={family}"])
    out = capsys.readouterr().out
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert set(lines) == {"target", "shape", "tokens", "FLOPs", "time", "start"}
    command = lines["start"].split("    (")[0].split()
    assert command[:3] == ["python", "-m", "tritongpt.train"]
    cfg = load_config(command[3:])
    p = plan(params=124e6, family=family)
    shape = p["config"]
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.max_iters) == (shape.n_layer, shape.n_head, shape.n_embd, p["steps"])
    for key in ("position_embedding", "parallel_residual", "tie_embeddings", "window_size", "gelu"):
        assert getattr(cfg, key) == getattr(shape, key), key  # the family's config holds its options


@pytest.mark.parametrize("argv, message", [
    (["--params=abc"], "--params must be a number in [100,000, 1e+13] such as 124M, 1.3B or 1e20; got 'abc'"),
    (["--params=1M", "--flops=1e20"], "exactly one of --params, --flops and --gpu_hours"),
    ([], "exactly one of"),
    (["--params=1B", "--gpu=V100"], "--gpu 'V100' has no bf16 peak"),
    (["--params=1B", "--mfu=1.5"], "--mfu must be a number in [0.001, 1]; got '1.5'"),
    (["--params=1B", "--gpus=0"], "--gpus must be a whole number in [1, 1,000,000]; got '0'"),
    (["--params=1B", "--gpus=two"], "--gpus must be a whole number in [1, 1,000,000]; got 'two'"),
    # what once ended in a math domain error, an OverflowError, a ZeroDivisionError, "inf GPU-hours"
    # or a 153-digit max_iters
    (["--gpu_hours=1e300"], "--gpu_hours must be a number in [0.001, 1e+08]; got '1e300'"),
    (["--params=1B", "--tokens_per_param=inf"], "--tokens_per_param must be a number in [0.01, 100,000]; got 'inf'"),
    (["--params=1B", "--tokens_per_param=1e308"], "--tokens_per_param must be"),
    (["--params=1B", "--tokens_per_param=1e-320"], "--tokens_per_param must be"),
    (["--params=1B", "--tokens_per_param=nan"], "--tokens_per_param must be"),
    (["--flops=1e308"], "--flops must be a number in [1e+12, 1e+28]"),
    (["--flops=1e-320"], "--flops must be"),
    (["--params=1B", "--mfu=1e-320"], "--mfu must be"),
    (["--params=1B", "--mfu=nan"], "--mfu must be"),
    (["--params=1B", "--block_size=99999999999"], "--block_size must be a whole number in [1, 1,048,576]"),
    (["--params=1B", "--family=llama"], "--family must be one of gpt2, pythia, gpt_neo"),
    (["--bogus=1"], "unrecognized arguments"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("kw, flag", [(dict(gpu_hours=math.inf), "gpu_hours"), (dict(params=1e9, tokens_per_param=0.0), "tokens_per_param"),
                                      (dict(params=1e9, mfu=float("nan")), "mfu"), (dict(flops=1e300), "flops"),
                                      (dict(params=1e9, gpus=2.5), "gpus")])
def test_the_function_checks_the_same_ranges(kw, flag):
    with pytest.raises(ValueError, match=f"^--{flag} must be "):
        plan(**kw)


def test_every_plan_in_range_is_finite_and_readable():
    """The corners of the ranges give finite figures and a max_iters of at most a dozen digits."""
    for kw in (dict(gpu_hours=1e8, mfu=1.0), dict(gpu_hours=1e-3, mfu=0.001), dict(flops=1e28, tokens_per_param=0.01),
               dict(flops=1e12, tokens_per_param=1e5), dict(params=1e13, tokens_per_param=1e5), dict(params=1e5)):
        p = plan(**kw)
        assert all(math.isfinite(p[k]) for k in ("tokens", "flops", "gpu_hours")) and 1 <= p["steps"] < 1e12, kw


@pytest.mark.parametrize("argv, message", [
    (["--gpu_gib=nan"], "--gpu_gib must be a number in [1, 10,000]; got 'nan'"),
    (["--gpu_gib=inf"], "--gpu_gib must be a number in [1, 10,000]; got 'inf'"),
    (["--gpu_gib=1e308"], "--gpu_gib must be"),
    (["--gpu_gib=1e-320"], "--gpu_gib must be"),
    (["--gpus=1,0"], "--gpus must be a whole number in [1, 1,000,000]; got '0'"),
    (["--gpus=1,1e9"], "--gpus must be a whole number"),
    (["--batch_size=-1"], "--batch_size must be a whole number in [1, 1,000,000]; got '-1'"),
])
def test_memory_flags_are_range_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        memory_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
