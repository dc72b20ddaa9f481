"""The framework's GPT: built from a config or from a config group's fields, saved and loaded."""

import pytest
import torch

from labcore.models.gpt import GPT, GPTConfig, load_gpt, save_gpt


def test_built_from_fields_like_a_config_group_target():
    torch.manual_seed(0)
    a = GPT(GPTConfig(vocab_size=11, block_size=5, n_layer=1, d_model=16, n_head=2, d_mlp=32))
    torch.manual_seed(0)
    b = GPT(vocab_size=11, block_size=5, n_layer=1, d_model=16, n_head=2, d_mlp=32)
    assert a.cfg == b.cfg
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(TypeError):
        GPT(a.cfg, n_layer=2)


def test_save_load_round_trip(tmp_path):
    model = GPT(vocab_size=11, block_size=5, n_layer=2, d_model=16, n_head=2, d_mlp=32).eval()
    save_gpt(model, tmp_path / "m", {"val_acc": 0.5})
    loaded, info = load_gpt(tmp_path / "m")
    x = torch.randint(0, 11, (3, 5))
    assert info == {"val_acc": 0.5} and loaded.cfg == model.cfg
    assert torch.equal(loaded(x), model(x))
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_gpt(tmp_path / "m")
