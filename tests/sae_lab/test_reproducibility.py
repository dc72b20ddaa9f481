"""The SAE of a seed depends on the config and the seed only, never on what the cache held; a base
model that did not converge is an error and is never cached."""

import pytest

from labcore import run
from labcore.validate import ConfigError
from sae_lab.base_model import BaseModelNotConverged


def test_cold_and_warm_cache_give_the_same_sae(tiny_cfg, tmp_path):
    cold = tmp_path / "cold_cache"
    first = run(tiny_cfg(f"paths.cache_dir={cold}", f"paths.output_dir={tmp_path / 'a'}"))  # trains the base model
    second = run(tiny_cfg(f"paths.cache_dir={cold}", f"paths.output_dir={tmp_path / 'b'}"))  # reuses it
    weights = [(tmp_path / d / "sae" / "sae_weights.safetensors").read_bytes() for d in ("a", "b")]
    assert weights[0] == weights[1]
    assert {k: v for k, v in first.items() if k != "wall_time_s"} == {k: v for k, v in second.items() if k != "wall_time_s"}


def test_base_model_that_misses_its_target_is_an_error_and_not_cached(tiny_cfg, tmp_path):
    cache = tmp_path / "cache"
    cfg = tiny_cfg("base_model.max_epochs=3", "base_model.target_val_loss=0.1", f"paths.cache_dir={cache}")
    with pytest.raises(BaseModelNotConverged) as err:
        run(cfg)
    assert isinstance(err.value, ConfigError) and err.value.key == "base_model.target_val_loss"
    assert "raise base_model.max_epochs" in str(err.value) and "Nothing was cached" in str(err.value)
    assert not [p for p in (cache / "base_models").iterdir() if not p.name.endswith(".lock")]


def test_activation_batch_size_is_part_of_the_cache_key(tiny_cfg, tmp_path, capsys):
    run(tiny_cfg(f"paths.output_dir={tmp_path / 'a'}"))
    capsys.readouterr()
    run(tiny_cfg("activations.batch_size=100", f"paths.output_dir={tmp_path / 'b'}"))
    cache_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[cache] activations")]
    assert any(line.endswith("building") for line in cache_lines)  # another batch size: another extract
