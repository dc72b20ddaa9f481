"""Datasets shared by the lines: modular addition and character-level text over any local file."""

import pytest
import torch

from labcore.datasets.modular_addition import ModularAddition
from labcore.datasets.text import CharText, CorpusNotFoundError
from labcore.paths import compose
from tests.conftest import SHAKESPEARE


def test_modular_addition_never_shows_the_answer():
    data = ModularAddition(p=7, train_frac=0.5, split_seed=1)
    tokens, labels = data.examples()
    assert tokens.shape == (49, 3) and (tokens[:, 2] == 7).all()
    assert torch.equal(labels, (tokens[:, 0] + tokens[:, 1]) % 7)
    train, val, test = (set(part.tolist()) for part in data.split())
    assert len(train | val | test) == 49 and len(train) == 24 and (len(val), len(test)) == (12, 13)
    assert not (train & val or train & test or val & test)


def test_char_text_round_trip_split_and_batches(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello world, " * 40)
    data = CharText(path, block_size=8, val_frac=0.25)
    assert data.vocab_size == len(set("hello world, "))
    assert data.decode(data.encode("hello")) == "hello"
    assert len(data.train) == int(len("hello world, " * 40) * 0.75)
    x, y = data.batch("train", 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and torch.equal(x[:, 1:], y[:, :-1])  # targets shifted by one
    x2, _ = data.batch("train", 5, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="needs ../shared/data/tinyshakespeare")
def test_shakespeare_preset_reads_the_local_file():
    from hydra.utils import instantiate
    cfg = compose("sae_lab", ["+dataset@corpus=shakespeare_char", f"paths.data_dir={SHAKESPEARE.parent.parent}"])
    data = instantiate(cfg.corpus)
    assert data.vocab_size == 65 and len(data.train) + len(data.val) == 1_115_394  # nanoGPT's numbers


def test_missing_corpus_offline_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_OFFLINE", "1")
    missing = tmp_path / "nowhere" / "input.txt"
    with pytest.raises(CorpusNotFoundError, match=f"put the text file at {missing}"):
        CharText(missing, block_size=8, url="https://example.invalid/input.txt")
    assert not missing.exists()


def test_corpus_shorter_than_a_block_is_refused(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abc")
    with pytest.raises(ValueError, match="fewer than block_size"):
        CharText(path, block_size=8)
