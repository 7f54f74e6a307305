"""Sample text from a trained checkpoint or from pretrained Hugging Face weights.

    python -m tritongpt.train.sample --out_dir=out/shakespeare_char_cpu --start="ROMEO:" --num_samples=2
    python -m tritongpt.train.sample --init_from=gpt2 --start=FILE:prompt.txt --max_new_tokens=100
    python -m tritongpt.train.sample --init_from=EleutherAI/pythia-70m --start="The" --max_new_tokens=50

The prompt is encoded and the samples decoded with the dataset's tokenizer (read through
prep.load from the dataset the checkpoint was trained on, found by the absolute path its run
recorded, then relative to here, and refused when its fingerprint differs from the run's; or
from --dataset), with tiktoken's gpt2 for gpt2*, and with the model's own tokenizer (through
transformers) for a Hugging Face directory or hub name that has one.
"""

import math
import os
import sys
from dataclasses import dataclass, replace

import torch

from tritongpt import prep
from tritongpt.gpt import GPT, GPTConfig
from tritongpt.train import checkpoint
from tritongpt.train.cli import run_cli
from tritongpt.train.config import GPT2_PRESETS, ConfigError, load_config, pretrained_source
from tritongpt.train.system import autocast, resolve_system


@dataclass
class SampleConfig:
    init_from: str = "resume"  # resume (out_dir's newest readable checkpoint, a file or sharded) | best | gpt2* | a Hugging Face dir or hub name
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
    if cfg.init_from not in ("resume", "best") and not pretrained_source(cfg.init_from):
        raise ConfigError(f"config key 'init_from' must be resume, best, one of {', '.join(GPT2_PRESETS)}, a Hugging Face "
                          f"model directory or a hub name; got {cfg.init_from!r}")
    for key in ("num_samples", "max_new_tokens"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(cfg, key)}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        raise ConfigError(f"config key 'temperature' must be a finite number >= 0 (0 is greedy), got {cfg.temperature}")
    if cfg.top_k < 0:
        raise ConfigError(f"config key 'top_k' must not be negative (0 keeps every token), got {cfg.top_k}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"config key 'top_p' must be in (0, 1], got {cfg.top_p}")
    if not cfg.start:
        raise ConfigError("config key 'start' is empty: give at least one token of prompt")


def _tokenizer_vocab(config, vocab_size):
    """config with the ids past the tokenizer's vocabulary (a padded 65 -> 128, in a checkpoint
    older than real_vocab_size too) masked, so that only ids the tokenizer knows can be sampled."""
    return replace(config, real_vocab_size=min(config.real_vocab_size, vocab_size))


MAX_PROMPT_BYTES = 64 << 20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _hf_tokenizer(name_or_dir):
    """The tokenizer saved with Hugging Face weights (a local directory must hold its files: without
    them transformers would make an empty one)."""
    missing = os.path.isdir(name_or_dir) and not any(os.path.isfile(os.path.join(name_or_dir, f)) for f in TOKENIZER_FILES)
    try:
        import transformers

        if not missing:
            return transformers.AutoTokenizer.from_pretrained(name_or_dir)
    except (OSError, ValueError, TypeError):
        pass
    raise ConfigError(f"config key 'init_from': {name_or_dir} has no tokenizer that transformers reads; "
                      "name a prepared dataset whose tokenizer to use with --dataset")


def _pretrained(cfg):
    """(model, encode, decode) of Hugging Face weights, with their own tokenizer where they have one."""
    try:
        model = GPT.from_pretrained(cfg.init_from, backend=cfg.backend)
    except ValueError as e:
        raise ConfigError(f"config key 'init_from': {e}") from None
    if cfg.dataset:
        ds = prep.load(cfg.dataset)
        encode, decode, vocab_size = ds.encode, ds.decode, ds.vocab_size
    elif cfg.init_from in GPT2_PRESETS:
        import tiktoken

        enc = tiktoken.get_encoding("gpt2")
        encode, decode, vocab_size = (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode, enc.n_vocab
    else:
        tok = _hf_tokenizer(cfg.init_from)
        encode, decode, vocab_size = tok.encode, tok.decode, len(tok)
    model.config.real_vocab_size = min(model.config.real_vocab_size, vocab_size)  # read by each forward
    return model, encode, decode


def load_model(cfg):
    """(model, encode, decode) as cfg says."""
    resolve_system(cfg)
    if cfg.init_from not in ("resume", "best"):
        return _pretrained(cfg)
    for line in checkpoint.recover(cfg.out_dir):  # a sharded save cut short
        print(line, file=sys.stderr)
    if cfg.init_from == "best":
        path = (checkpoint.bests(cfg.out_dir) or [f"{cfg.out_dir}/{checkpoint.BEST}"])[0]
        state = checkpoint.read(path)
    else:
        state, path = checkpoint.load_latest(cfg.out_dir, log=lambda m: print(m, file=sys.stderr))
        if state is None:
            raise ConfigError(f"config key 'out_dir': {cfg.out_dir!r} holds no checkpoint")
    ds = _dataset(cfg, state)
    config = GPTConfig(**state["model_args"], dropout=0.0, backend=cfg.backend)
    config = _tokenizer_vocab(config, ds.vocab_size)
    model = GPT(config)
    checkpoint.load_weights(state, model)
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


def _read_prompt(path):
    """The text of the prompt file `path`; ConfigError when it is unreadable or not UTF-8 text."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPT_BYTES + 1)  # not forever from /dev/zero
    except OSError as e:
        raise ConfigError(f"config key 'start': cannot read {path!r} ({e.strerror})") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise ConfigError(f"config key 'start': {path!r} holds more than {MAX_PROMPT_BYTES >> 20} MiB; give a shorter "
                          "prompt (the model sees only its last block_size tokens)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config key 'start': {path!r} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                          f"{e.start}); give a text file, converted to UTF-8 (e.g. with iconv)") from None
    if "\0" in text:
        raise ConfigError(f"config key 'start': {path!r} holds NUL bytes, so it is no text file; give a text file")
    return text


def sample(cfg):
    """The samples as a list of strings (the prompt included)."""
    _check(cfg)
    start = _read_prompt(cfg.start[5:]) if cfg.start.startswith("FILE:") else cfg.start  # before the model loads
    model, encode, decode = load_model(cfg)
    model.eval().to(cfg.device)
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
