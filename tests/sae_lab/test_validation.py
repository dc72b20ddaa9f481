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
    ("seed=-1", "seed", "integer in [0, 2**32)"),
    ("seed=1.5", "seed", "integer in [0, 2**32)"),
    ("dataset.split_seed=-3", "dataset.split_seed", "integer in [0, 2**32)"),
    ("activations.batch_size=0", "activations.batch_size", "positive integer"),
    ("sae.aux_k=0", "sae.aux_k", "positive integer"),
    ("sae.aux_k=1000", "sae.aux_k", "must not exceed sae.d_sae=64"),
    ("eval.dense_threshold=1.5", "eval.dense_threshold", "in [0, 1]"),
    ("train.betas=[0.9]", "train.betas", "two numbers in [0, 1)"),
    ("train.betas=[0.9,1.2]", "train.betas", "two numbers in [0, 1)"),
    ("dataset.p=3", "dataset.p", "too few for non-empty"),
    ("base_model.target_val_loss=-1", "base_model.target_val_loss", "positive number"),
])
def test_bad_input_names_the_key(tiny_cfg, tmp_path, override, key, fragment):
    cfg = tiny_cfg(override, f"paths.cache_dir={tmp_path / 'fresh_cache'}")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.key == key
    assert str(err.value).startswith(key) and fragment in str(err.value)
    assert not (tmp_path / "fresh_cache").exists()        # nothing was computed
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("overrides, key, fragment", [
    (["sae=relu", "sae.l1_coeff=-1"], "sae.l1_coeff", "must be a number >= 0"),
    (["sae=jumprelu", "sae.l0_coeff=-0.1"], "sae.l0_coeff", "must be a number >= 0"),
    (["sae=jumprelu", "sae.bandwidth=0"], "sae.bandwidth", "positive number"),
    (["sae=jumprelu", "sae.init_threshold=-1"], "sae.init_threshold", "must be a number >= 0"),
    (["sae=jumprelu", "sae.sparsity=l1"], "sae.sparsity", "must be one of ('step', 'tanh')"),
    (["sae=jumprelu", "sae.tanh_scale=0"], "sae.tanh_scale", "positive number"),
    (["sae=jumprelu", "sae.dead_after_tokens=0"], "sae.dead_after_tokens", "positive integer"),
    (["sae=matryoshka", "sae.prefixes=[16,8,64]"], "sae.prefixes", "strictly increasing"),
    (["sae=matryoshka", "sae.prefixes=[16,32]"], "sae.prefixes", "must end at sae.d_sae=64"),
    (["sae=matryoshka", "sae.prefixes=[]"], "sae.prefixes", "non-empty list"),
    (["sae=matryoshka", "sae.k=100"], "sae.k", "must not exceed sae.d_sae=64"),
    (["sae=batchtopk", "sae.threshold_momentum=1"], "sae.threshold_momentum", "in [0, 1)"),
    (["sae.aux_k_coeff=-1"], "sae.aux_k_coeff", "must be a number >= 0"),
    (["sae.fast=maybe"], "sae.fast", "true or false"),
])
def test_bad_architecture_keys_are_named(tiny_cfg, tmp_path, overrides, key, fragment):
    cfg = tiny_cfg(*overrides, f"paths.cache_dir={tmp_path / 'fresh_cache'}")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.key == key
    assert str(err.value).startswith(key) and fragment in str(err.value)
    assert not (tmp_path / "fresh_cache").exists()


def test_non_finite_activations_are_counted():
    acts = np.ones((10, 4), dtype=np.float32)
    acts[2, 1] = np.nan
    acts[7, :2] = np.inf
    with pytest.raises(NonFiniteActivationsError, match="3 non-finite values .* in 2 of 10 rows"):
        check_finite(acts, "blocks.0.hook_resid_post")
    check_finite(np.ones((3, 2)), "fine")


def test_a_file_that_is_not_a_checkpoint_is_refused(tiny_cfg, tmp_path):
    bogus = tmp_path / "last.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as err:
        run(tiny_cfg(f"ckpt_path={bogus}", f"paths.cache_dir={tmp_path / 'fresh_cache'}"))
    assert err.value.key == "ckpt_path" and "not a checkpoint file" in str(err.value)
    assert not (tmp_path / "fresh_cache").exists()
