"""The trainer on the other GPT families, on a CPU: from scratch (Pythia- and GPT-Neo-shaped),
resumed and sampled from their checkpoints, fine-tuned from a Hugging Face directory of each
family, the backend a model runs on, and the family options as trainer keys."""

import pytest
import torch

import tritongpt.train.__main__ as train_command
from tritongpt.gpt import GPTConfig
from tritongpt.gpt.flops import num_params
from conftest import make_char_dataset, tiny
from tritongpt.train import checkpoint
from tritongpt.train.cli import run_cli
from tritongpt.train.config import FAMILY_KEYS, ConfigError, TrainConfig, load_config
from tritongpt.train.loop import train
from tritongpt.train.sample import SampleConfig, sample

transformers = pytest.importorskip("transformers")

TEXT = "".join(f"{w} the quick brown fox jumps over the lazy dog {w}.\n" for w in ("one", "two", "three", "four") * 300)

FROM_SCRATCH = {
    "pythia": dict(position_embedding="rotary", rotary_fraction=0.25, parallel_residual=True, tie_embeddings=False,
                   gelu="exact", bias=True),
    "gpt_neo": dict(attention_pattern="global,local", window_size=4, scaled_attention=False, qkv_bias=False, bias=True),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp("data") / "fox", TEXT)


@pytest.mark.parametrize("family", list(FROM_SCRATCH))
def test_family_from_scratch_trains_resumes_and_samples(family, ds, tmp_path):
    out = str(tmp_path / "out")
    options = FROM_SCRATCH[family]
    train(load_config(tiny(ds, out, n_layer=2, max_iters=10, lr_decay_iters=10, eval_interval=5, **options)))
    state = checkpoint.read(f"{out}/ckpt_00000010.pt")
    for key, value in options.items():  # the checkpoint holds the model's whole config
        assert state["model_args"][key] == value and state["config"][key] == value, key
    # resuming rebuilds the same family from the checkpoint, whatever the command line says now
    train(load_config(tiny(ds, out, n_layer=2, max_iters=12, lr_decay_iters=12, eval_interval=5, init_from="resume")))
    resumed = checkpoint.read(f"{out}/ckpt_00000012.pt")
    assert resumed["model"].keys() == state["model"].keys()
    assert resumed["model_args"] == state["model_args"]
    text = sample(SampleConfig(out_dir=out, num_samples=1, max_new_tokens=12, start="the"))[0]
    assert text.startswith("the") and len(text) == 15


def test_named_configs_are_the_shapes_they_say():
    pythia = load_config(["pythia_70m"])
    neo = load_config(["gpt_neo_125m"])
    shapes = []
    for cfg in (pythia, neo):
        model = GPTConfig(block_size=cfg.block_size, vocab_size=50304, n_layer=cfg.n_layer, n_head=cfg.n_head,
                          n_embd=cfg.n_embd, bias=cfg.bias, **{k: getattr(cfg, k) for k in FAMILY_KEYS})
        tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps * cfg.max_iters
        shapes.append((round(num_params(model) / 1e5) / 10, round(tokens / num_params(model))))
    assert shapes == [(70.4, 20), (125.2, 20)]  # millions of parameters, tokens per parameter
    assert (pythia.position_embedding, pythia.rotary_fraction, pythia.gelu) == ("rotary", 0.25, "exact")
    assert (neo.window_size, neo.scaled_attention, neo.qkv_bias) == (256, False, False)


def _hf_model(family):
    t = transformers
    torch.manual_seed(0)
    if family == "neox":
        return t.GPTNeoXForCausalLM(t.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=128,
                                                    max_position_embeddings=32, rotary_pct=0.25))
    if family == "gptj":
        return t.GPTJForCausalLM(t.GPTJConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=2, rotary_dim=4,
                                              n_positions=32))
    return t.GPTNeoForCausalLM(t.GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
                                              attention_types=[[["global", "local"], 1]], window_size=4,
                                              max_position_embeddings=32))


EXPECTED = {
    "neox": dict(position_embedding="rotary", rotary_style="halves", parallel_residual=True, tie_embeddings=False),
    "gptj": dict(position_embedding="rotary", rotary_style="pairs", shared_ln=True, lm_head_bias=True),
    "neo": dict(attention_pattern="global,local", window_size=4, scaled_attention=False),
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_finetune_from_hf_directory_of_each_family(family, ds, tmp_path):
    hf_dir = str(tmp_path / "hf")
    _hf_model(family).save_pretrained(hf_dir)
    out = str(tmp_path / "out")
    train(load_config(tiny(ds, out, init_from=hf_dir, max_iters=2, eval_interval=2)))
    state = checkpoint.read(f"{out}/ckpt_00000002.pt")
    for key, value in EXPECTED[family].items():
        assert state["model_args"][key] == value and state["config"][key] == value, key
    assert state["model_args"]["n_layer"] == 2 and state["model_args"]["vocab_size"] == 64
    text = sample(SampleConfig(out_dir=out, num_samples=1, max_new_tokens=8, start="the"))[0]
    assert text.startswith("the") and len(text) == 11
    # sampling from the directory itself: its tokenizer, or a prepared dataset's
    text = sample(SampleConfig(init_from=hf_dir, dataset=ds, num_samples=1, max_new_tokens=8, start="fox"))[0]
    assert text.startswith("fox") and len(text) == 11
    with pytest.raises(ConfigError, match="has no tokenizer that transformers reads"):
        sample(SampleConfig(init_from=hf_dir, num_samples=1, max_new_tokens=8, start="fox"))


def test_family_keys_default_to_gptconfigs():
    for key in FAMILY_KEYS:
        assert getattr(TrainConfig(), key) == getattr(GPTConfig(), key), key


@pytest.mark.parametrize("override, message", [
    ("--window_size=3", "config key 'window_size' has no effect"),
    ("--gelu=relu", "config key 'gelu' must be one of"),
    ("--shared_ln=true", "config key 'shared_ln' needs parallel_residual=True"),
    ("--init_from=no-such-dir", "'init_from' must be scratch, resume"),
])
def test_bad_family_key_is_one_line(override, message, ds, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(train_command.main, tiny(ds, str(tmp_path / "out")) + [override], train_command.__doc__)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_sample_from_hf_directory_with_its_tokenizer(shared_data, tmp_path):
    """A GPT-Neo directory that holds GPT-2's BPE files (as the real ones do): sampled with it."""
    import shutil

    torch.manual_seed(0)
    hf = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
        vocab_size=50257, hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]],
        window_size=4, max_position_embeddings=64))
    hf.save_pretrained(tmp_path / "neo")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_data / "gpt2_tokenizer" / name, tmp_path / "neo" / name)
    text = sample(SampleConfig(init_from=str(tmp_path / "neo"), num_samples=1, max_new_tokens=5, start="Hello world",
                               temperature=0.0))[0]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "neo")
    assert text.startswith("Hello world") and len(tok.encode(text)) > 2
