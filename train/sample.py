"""Sample text from a trained checkpoint or from a pretrained GPT-2.

    python -m train.sample --out_dir=out/shakespeare_char_cpu --start="ROMEO:" --num_samples=2
    python -m train.sample --init_from=gpt2 --start=FILE:prompt.txt --max_new_tokens=100

The prompt is encoded and the samples decoded with the dataset's tokenizer (read through
prep.load from the dataset the checkpoint was trained on, found by the absolute path its run
recorded, then relative to here, and refused when its fingerprint differs from the run's), or
with tiktoken's gpt2 for gpt2*.
"""

import os
import sys
from dataclasses import dataclass

import torch

import prep
from gpt import GPT, GPTConfig
from train import checkpoint
from train.cli import run_cli
from train.config import GPT2_PRESETS, ConfigError, load_config
from train.system import autocast, resolve_system


@dataclass
class SampleConfig:
    init_from: str = "resume"  # resume (out_dir's newest readable checkpoint) | best | gpt2 | gpt2-medium | ...
    out_dir: str = "out"
    dataset: str = ""  # the prepared dataset whose tokenizer to use; default: the checkpoint's
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 3
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 is greedy
    top_k: int = 200  # 0 keeps every token
    top_p: float = 1.0
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"


def _check(cfg):
    if cfg.init_from not in ("resume", "best", *GPT2_PRESETS):
        raise ConfigError(f"config key 'init_from' must be resume, best or one of {', '.join(GPT2_PRESETS)}; got {cfg.init_from!r}")
    for key in ("num_samples", "max_new_tokens"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(cfg, key)}")
    if not cfg.temperature >= 0:
        raise ConfigError(f"config key 'temperature' must not be negative (0 is greedy), got {cfg.temperature}")
    if cfg.top_k < 0:
        raise ConfigError(f"config key 'top_k' must not be negative (0 keeps every token), got {cfg.top_k}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"config key 'top_p' must be in (0, 1], got {cfg.top_p}")
    if not cfg.start:
        raise ConfigError("config key 'start' is empty: give at least one token of prompt")


def load_model(cfg):
    """(model, encode, decode) as cfg says."""
    resolve_system(cfg)
    if cfg.init_from in GPT2_PRESETS:
        import tiktoken

        enc = tiktoken.get_encoding("gpt2")
        model = GPT.from_pretrained(cfg.init_from, backend=cfg.backend)
        return model, (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode
    if cfg.init_from == "best":
        path = f"{cfg.out_dir}/{checkpoint.BEST}"
        state = checkpoint.read(path)
    else:
        state, path = checkpoint.load_latest(cfg.out_dir, log=lambda m: print(m, file=sys.stderr))
        if state is None:
            raise ConfigError(f"config key 'out_dir': {cfg.out_dir!r} holds no checkpoint")
    ds = _dataset(cfg, state)
    # The vocabulary was padded for speed (65 -> 128); drop the padding rows of the tied
    # embedding / LM head so that only ids the tokenizer knows can be sampled.
    args, weights = dict(state["model_args"]), state["model"]
    if args["vocab_size"] > ds.vocab_size:
        args["vocab_size"] = ds.vocab_size
        for key in ("transformer.wte.weight", "lm_head.weight"):
            weights[key] = weights[key][: ds.vocab_size]
    model = GPT(GPTConfig(**args, dropout=0.0, backend=cfg.backend))
    model.load_state_dict(weights)
    print(f"sampling from {path} (step {state['step']})", file=sys.stderr)
    return model, ds.encode, ds.decode


def _dataset(cfg, state):
    """The dataset whose tokenizer the checkpoint `state` was trained with: --dataset, else the
    one its run recorded (by absolute path, then relative to here); refused when its fingerprint
    is not the one the run recorded."""
    data = state.get("data", {})
    if cfg.dataset:
        where = cfg.dataset
    else:
        tried = [p for p in (data.get("dataset_abspath"), data.get("dataset")) if p]
        where = next((p for p in tried if os.path.isfile(os.path.join(p, "meta.json"))), None)
        if where is None:
            at = f"at {data['dataset_abspath']}" if data.get("dataset_abspath") else "relative to where it was trained"
            raise prep.DatasetError(
                f"the run in {cfg.out_dir} was trained on {data.get('dataset')!r} ({at}), which is not there "
                "(nor here); give that dataset's path: --dataset=PATH"
            )
    ds = prep.load(where)
    saved = data.get("fingerprint")  # none in checkpoints of older versions
    if saved and saved != ds.fingerprint():
        raise prep.DatasetError(
            f"{where} is not the dataset that the run in {cfg.out_dir} was trained on (its fingerprint changed: "
            "prepared again from other text?), so its vocabulary may differ; prepare the run's own text again, "
            "or give that dataset: --dataset=PATH"
        )
    return ds


def sample(cfg):
    """The samples as a list of strings (the prompt included)."""
    _check(cfg)
    model, encode, decode = load_model(cfg)
    model.eval().to(cfg.device)
    start = cfg.start
    if start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except OSError as e:
            raise ConfigError(f"config key 'start': cannot read {start[5:]!r} ({e.strerror})") from None
    try:
        ids = encode(start)
    except ValueError as e:
        raise ConfigError(f"config key 'start': {e}") from None
    if not ids:
        raise ConfigError("config key 'start' is empty: give at least one token of prompt")
    torch.manual_seed(cfg.seed)
    x = torch.tensor(ids, dtype=torch.long, device=cfg.device)[None, :]  # (1, T)
    out = []
    with autocast(cfg.device, cfg.dtype):
        for _ in range(cfg.num_samples):
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                               top_p=cfg.top_p)
            out.append(decode(y[0].tolist()))
    return out


def main(argv):
    cfg = load_config(argv, cls=SampleConfig)
    for text in sample(cfg):
        print(text)
        print("---------------")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:], __doc__, SampleConfig)
