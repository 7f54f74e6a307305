"""The speedrun recipe's configs and the tools that measure it (tools/lr_sweep.py,
tools/speedrun_compare.py, tools/muon_cpu_timing.py): the configs load and keep their baselines' size and tokens per step,
the sweep writes its JSON, and steps to a target are read off a curve as documented."""

import json
import sys

import pytest
import torch

from conftest import ROOT, tiny
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.train.config import load_config

sys.path.insert(0, str(ROOT / "tools"))
import lr_sweep  # noqa: E402
import muon_cpu_timing  # noqa: E402
import speedrun_compare  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps", "dataset",
         "vocab_multiple")


@pytest.mark.parametrize("dataset", sorted(speedrun_compare.PAIRS))
def test_each_recipe_has_its_baselines_size_and_tokens_per_step(dataset):
    baseline, recipe = (load_config([name]) for name in speedrun_compare.PAIRS[dataset])
    assert {k: getattr(recipe, k) for k in SHAPE} == {k: getattr(baseline, k) for k in SHAPE}
    assert baseline.optimizer == "adamw" and recipe.optimizer == "muon"
    assert recipe.max_iters <= baseline.max_iters


def test_gpt2_speedrun_is_the_124m_class_on_muon():
    cfg = load_config(["gpt2_speedrun"])
    assert (cfg.n_layer, cfg.n_embd, cfg.optimizer) == (12, 768, "muon")
    assert cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps == 524_288


def test_steps_to_target_interpolates_between_evaluations():
    curve = [(0, 4.0), (100, 2.5), (200, 2.0), (300, 1.8)]
    assert speedrun_compare.steps_to(curve, 2.0) == 200
    assert speedrun_compare.steps_to(curve, 2.25) == 150
    assert speedrun_compare.steps_to(curve, 1.9) == pytest.approx(250)
    assert speedrun_compare.steps_to(curve, 1.7) is None


def test_lr_sweep_writes_every_run_and_the_best(small_ds, tmp_path):
    out = tmp_path / "sweep.json"
    args = [a for a in tiny(small_ds, str(tmp_path / "unused")) if not a.startswith(("--out_dir", "--dataset"))]
    lr_sweep.main(["shakespeare_char_cpu_speedrun", "--grid", "muon_lr=0.01,0.05", "--set", f"dataset={small_ds}",
                   *[f"--set={a[2:]}" for a in args if not a.startswith("--max_iters")], "--set", "max_iters=4",
                   "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["values"] for r in result["runs"]] == [{"muon_lr": 0.01}, {"muon_lr": 0.05}]
    assert result["best"] == min(result["runs"], key=lambda r: r["val_loss"]) and result["steps"] == 4
    assert result["fixed"]["dataset"] == small_ds and "git_commit" in result
    assert result["settings"]["optimizer"] == "muon" and "muon_lr" not in result["settings"]


def test_lr_sweep_refuses_a_bad_grid(tmp_path):
    with pytest.raises(SystemExit, match="must be written KEY=VALUE"):
        lr_sweep.main(["shakespeare_char_cpu_speedrun", "--grid", "muon_lr", "--out", str(tmp_path / "x.json")])


def test_comparison_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    curves = {"a": {"1": [(0, 4.0), (100, 2.0), (200, 1.5)]}, "b": {"1": [(0, 4.0), (50, 1.8), (100, 1.4)]}}
    summary = dict(baseline="a", recipe="b", curves=curves, ms_per_step={"a": 10.0, "b": 15.0}, target_val_loss=1.5,
                   eval_iters=200, step_ratio=0.4, ms_ratio=1.5, wall_ratio=0.6, dataset="toy", device_name="CPU",
                   seeds=[1], torch="x", git_commit=None)
    speedrun_compare.plot(summary, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_muon_timing_takes_each_matrix_as_newton_schulz_sees_it():
    """c_attn as three C x C blocks, the MLP's matrices whole; 5 steps of X X^T (2 m^2 n), A A^T
    (2 m^3) and B X (2 m^2 n) per m x n block, m <= n."""
    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    shapes = sorted(tuple(b.shape) for b in muon_cpu_timing.blocks_of(model))
    assert shapes == [(1, 16, 16), (1, 16, 64), (1, 64, 16), (3, 16, 16)]
    assert muon_cpu_timing.ns_flops([torch.zeros(3, 16, 32)]) == 5 * 3 * (4 * 16 * 16 * 32 + 2 * 16**3)
    assert muon_cpu_timing.ns_flops([torch.zeros(1, 32, 16)]) == 5 * (4 * 16 * 16 * 32 + 2 * 16**3)


def test_kept_metrics_name_no_temporary_folder(tmp_path):
    records = [{"step": 0, "event": "start", "config": {"out_dir": str(tmp_path / "tmpabc" / "x-1"), "seed": 1}},
               {"step": 10, "event": "eval", "val_loss": 1.25}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    speedrun_compare.keep(tmp_path / "m.jsonl", tmp_path / "kept.jsonl")
    assert str(tmp_path) not in (tmp_path / "kept.jsonl").read_text()
    assert speedrun_compare.evals(tmp_path / "kept.jsonl") == [(10, 1.25)]
    assert json.loads((tmp_path / "kept.jsonl").read_text().splitlines()[0])["config"] == {"out_dir": "x-1", "seed": 1}
