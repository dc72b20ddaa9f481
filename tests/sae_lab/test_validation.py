"""Bad input fails fast with a message naming the key, before any compute or cache write."""

import numpy as np
import pytest

from labcore import run
from labcore.activations import NonFiniteActivationsError, check_finite
from labcore.validate import ConfigError


@pytest.mark.parametrize("override, key, fragment", [
    ("sae.k=0", "sae.k", "positive integer"),
    ("sae.k=100", "sae.k", "must not exceed sae.d_sae=64"),
    ("activations.hook_name=blocks.3.hook_resid_post", "activations.hook_name", "unknown hook name"),
    ("activations.hook_name=blocks.0.hook_resid_pots", "activations.hook_name", "did you mean"),
    ("train.lr=-0.001", "train.lr", "positive number"),
    ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path", "does not exist"),
    ("base_model.checkpoint=/nonexistent/base", "base_model.checkpoint", "does not exist"),
    ("sae.architecture=gated", "sae.architecture", "must be one of"),
    ("dataset.train_frac=1.5", "dataset.train_frac", "fraction"),
    ("model.n_head=3", "model", "not divisible"),
])
def test_bad_input_names_the_key(tiny_cfg, tmp_path, override, key, fragment):
    cfg = tiny_cfg(override, f"paths.cache_dir={tmp_path / 'fresh_cache'}")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.key == key
    assert str(err.value).startswith(key) and fragment in str(err.value)
    assert not (tmp_path / "fresh_cache").exists()        # nothing was computed
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_non_finite_activations_are_counted():
    acts = np.ones((10, 4), dtype=np.float32)
    acts[2, 1] = np.nan
    acts[7, :2] = np.inf
    with pytest.raises(NonFiniteActivationsError, match="3 non-finite values .* in 2 of 10 rows"):
        check_finite(acts, "blocks.0.hook_resid_post")
    check_finite(np.ones((3, 2)), "fine")
