"""`gpt_char`: the framework's GPT trained as a character-level model, once, then read from the cache.

A tiny recipe (20 steps of a 1-layer d_model 32 model on the first 20,000 characters of Shakespeare)
trains in about a second; the module's tests share that one cache entry.
"""

import math
import shutil

import pytest
import torch

from labcore.models import char_lm
from labcore.models.char_lm import CharGPT
from labcore.paths import compose
from labcore.validate import ConfigError
from tests.conftest import SHAKESPEARE

pytestmark = pytest.mark.skipif(not SHAKESPEARE.exists(), reason="needs ../shared/data/tinyshakespeare")

TINY = dict(n_layer=1, n_head=2, d_model=32, d_mlp=64, block_size=32, steps=20, batch_size=16, lr=1e-2,
            max_chars=20_000, device="cpu")


def spec(cache_dir, corpus=SHAKESPEARE, **fields) -> CharGPT:
    return CharGPT(corpus=str(corpus), cache_dir=str(cache_dir), **{**TINY, **fields})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("char_gpt_cache")


@pytest.fixture(scope="module")
def lm(cache):
    return spec(cache).load()


def entry(cache):
    [found] = [p for p in (cache / "char_gpt").iterdir() if p.is_dir()]     # beside it: its .lock
    return found


def test_load_trains_once_then_reads_the_cache(lm, cache, monkeypatch):
    built = entry(cache)
    assert {"model.safetensors", "config.json", "COMPLETE"} <= {p.name for p in built.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the model is cached")
    monkeypatch.setattr(char_lm, "train", no_training)
    again = spec(cache).load()                      # a fresh spec with the same fields
    assert entry(cache) == built
    x = torch.randint(0, 20, (2, 16))
    assert torch.equal(again.model(x), lm.model(x))


def test_training_learns(lm, cache):
    from labcore.models.gpt import load_gpt
    _, info = load_gpt(entry(cache))
    assert info["steps"] == TINY["steps"] and len(info["chars"]) == lm.model.cfg.vocab_size
    # below a uniform guess over the vocabulary, on held-out text
    assert info["val_loss"] < math.log(len(info["chars"])) - 0.5
    assert info["train_loss"] < math.log(len(info["chars"]))


def test_hooks_layout_and_a_causal_pattern(lm):
    names = lm.model.hook_names()
    assert lm.query_hook(0) in names and lm.key_hook(0) in names and lm.pattern_hook(0) in names
    assert lm.layout == spec("unused").layout()
    assert (lm.layout.n_layers, lm.layout.n_heads, lm.layout.n_kv_heads, lm.layout.d_head) == (1, 2, 2, 16)
    assert lm.layout.causal and not lm.takes_attention_mask
    batch = lm.encode(["First Citizen:", "Before we proceed"], max_length=64)
    _, acts = lm.model.run_with_cache(batch["input_ids"], names=[lm.pattern_hook(0)])
    pattern = acts[lm.pattern_hook(0)]
    assert pattern.shape == (2, 2, 14, 14)
    assert torch.equal(pattern.triu(1), torch.zeros_like(pattern))      # no attention to later characters


def test_encode_cuts_every_text_to_the_shortest(lm):
    batch = lm.encode(["ROMEO:", "JULIET: hello"], max_length=100)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"].all()
    assert lm.encode(["ROMEO: hi there"], max_length=4)["input_ids"].shape == (1, 4)
    assert lm.encode(["a" * 100], max_length=1000)["input_ids"].shape == (1, TINY["block_size"])
    assert lm.forward(batch).shape == (2, 6, lm.model.cfg.vocab_size)


def test_unknown_character_is_named(lm):
    with pytest.raises(ValueError, match=r"character '€' \(text 1\).*trained on .*input.txt"):
        lm.encode(["ROMEO:", "€5 a head"], max_length=100)
    with pytest.raises(ValueError, match="empty text"):
        lm.encode(["ROMEO:", ""], max_length=100)


@pytest.mark.parametrize("fields, key", [
    ({"n_head": 3}, "model.n_head"),            # does not divide d_model 32
    ({"steps": 0}, "model.steps"),
    ({"lr": -1.0}, "model.lr"),
    ({"val_frac": 1.5}, "model.val_frac"),
    ({"act": "tanh"}, "model.act"),
    ({"device": "floppy"}, "model.device"),
    ({"max_chars": 0, "key": "lm"}, "lm.max_chars"),
])
def test_bad_fields_name_their_key(fields, key, tmp_path):
    with pytest.raises(ConfigError) as info:
        spec(tmp_path, **fields)
    assert info.value.key == key
    assert not any(tmp_path.iterdir())              # construction reads and writes nothing


def test_cache_key_follows_the_corpus_bytes(tmp_path):
    copy = tmp_path / "input.txt"
    shutil.copy(SHAKESPEARE, copy)
    same = spec(tmp_path).cache_key(SHAKESPEARE)
    assert spec(tmp_path, corpus=copy).cache_key(copy) == same     # the path is not part of it
    copy.write_text(SHAKESPEARE.read_text() + "!")
    assert spec(tmp_path, corpus=copy).cache_key(copy) != same
    assert spec(tmp_path, steps=21).cache_key(SHAKESPEARE) != same


def test_preset_composes_to_a_cheap_spec(tmp_path):
    from hydra.utils import instantiate
    cfg = compose("sae_lab", ["+model@lm=gpt_char", f"paths.data_dir={SHAKESPEARE.parent.parent}",
                              f"paths.cache_dir={tmp_path}"])
    made = instantiate(cfg.lm)
    assert isinstance(made, CharGPT) and made.corpus == str(SHAKESPEARE)
    assert made.layout().causal and made.layout().n_heads * made.layout().d_head == made.d_model
    assert not any(tmp_path.iterdir())
