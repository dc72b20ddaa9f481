"""The registry and what each architecture declares: config files, keys, rebuild from its config."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from labcore.paths import CONFIG_DIR, compose
from sae_lab import sae as old_path
from sae_lab.architectures import ARCHITECTURES, REGISTRY, build_sae, saelens_class
from sae_lab.architectures.matryoshka import resolve_prefixes

SHARED_KEYS = {"_target_", "architecture", "d_in", "d_sae"}
KEYWORDS = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "matryoshka": {"k": 4, "prefixes": [8, 32]},
            "relu": {}, "jumprelu": {}}


def test_every_architecture_is_registered_and_has_a_config_file():
    assert ARCHITECTURES == ("topk", "batchtopk", "relu", "jumprelu", "matryoshka")
    files = {p.stem for p in (Path(CONFIG_DIR) / "sae_lab" / "sae").glob("*.yaml")}
    assert files == set(ARCHITECTURES)
    assert old_path.ARCHITECTURES == ARCHITECTURES and old_path.build_sae is build_sae  # the first import path


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_config_file_holds_exactly_the_class_keys(name):
    """`sae=<name>` replaces the whole group: no key of another architecture is left over (relu and
    jumprelu have no k), and every key the class takes is set."""
    cfg = compose("sae_lab", [f"sae={name}"])
    cls = REGISTRY[name]
    assert cfg.sae.architecture == name
    assert set(cfg.sae) - SHARED_KEYS == set(cls.config_keys)
    keywords = set(inspect.signature(cls.__init__).parameters) | {
        p for base in cls.__mro__[1:] if "__init__" in vars(base) for p in inspect.signature(base.__init__).parameters}
    assert set(cls.config_keys) <= keywords
    cls.validate_config(cfg)                # the defaults are valid
    sae = instantiate(cfg.sae)              # and build this class
    assert type(sae) is cls and sae.d_sae == cfg.sae.d_sae


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_config_rebuilds_the_same_sae(name):
    sae = build_sae(name, 8, 32, **KEYWORDS[name])
    again = type(sae)(8, 32, **sae.config())
    assert again.config() == sae.config()
    assert set(sae.config()) == set(type(sae).config_keys)


def test_build_sae_ignores_keys_of_other_architectures_but_names_unknown_ones():
    assert build_sae("relu", 8, 16, k=4).config() == {"l1_coeff": 5e-4, "dead_after_tokens": 50_000}
    with pytest.raises(ValueError, match="sae.kk is not a key of any SAE architecture; topk takes k, aux_k"):
        build_sae("topk", 8, 16, kk=4)
    with pytest.raises(ValueError, match="sae.architecture"):
        build_sae("gated", 4, 8)


def test_saelens_names():
    assert {n: REGISTRY[n].saelens_architecture for n in ARCHITECTURES} == {
        "topk": "topk", "batchtopk": "jumprelu", "relu": "standard", "jumprelu": "jumprelu", "matryoshka": "jumprelu"}
    # a jumprelu file from elsewhere is a JumpReLU SAE (per-latent thresholds), not a BatchTopK one
    assert [saelens_class(n).architecture for n in ("topk", "standard", "jumprelu")] == ["topk", "relu", "jumprelu"]
    assert saelens_class("gated") is None


@pytest.mark.parametrize("prefixes, problem", [
    ([8, 32], None), ([32], None), ([], "non-empty"), ([8, 8, 32], "strictly increasing"),
    ([16, 8, 32], "strictly increasing"), ([8, 16], "must end at sae.d_sae=32"), ([0, 32], "positive integers"),
    ([8.5, 32], "positive integers"), ("8,32", "non-empty list"), ([0.25, 1], "strictly increasing"),
    ([0.01, 1.0], "at least one latent"), ([0.25, 0.5], "must end at sae.d_sae=32")])
def test_matryoshka_prefixes(prefixes, problem):
    sizes, found = resolve_prefixes(prefixes, 32)
    assert found is None if problem is None else problem in found
    if problem:
        with pytest.raises(ValueError, match="sae.prefixes"):
            build_sae("matryoshka", 8, 32, k=4, prefixes=prefixes)
    else:
        assert build_sae("matryoshka", 8, 32, k=4, prefixes=prefixes).prefixes == tuple(sizes)


@pytest.mark.parametrize("d_sae, sizes", [(64, (4, 16, 64)), (128, (8, 32, 128)), (1024, (64, 256, 1024))])
def test_matryoshka_default_prefixes_are_fractions_that_hold_at_every_d_sae(d_sae, sizes):
    # the config's default, as fractions of d_sae, in a d_sae sweep (the HUSAI one goes down to 64)
    cfg = compose("sae_lab", ["sae=matryoshka", f"sae.d_sae={d_sae}"])
    REGISTRY["matryoshka"].validate_config(cfg)
    sae = instantiate(cfg.sae)
    assert sae.prefixes == sizes and sae.config()["prefixes"] == list(sizes)  # a rebuild gets latents


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_encode_is_per_example_after_training_steps(name):
    torch.manual_seed(0)
    sae = build_sae(name, 16, 64, **KEYWORDS[name] | ({"prefixes": [16, 64]} if name == "matryoshka" else {}))
    for s in range(3):
        x = torch.randn(32, 16, generator=torch.Generator().manual_seed(s))
        sae(x).loss.backward()
    sae.eval()
    x = torch.randn(20, 16)
    torch.testing.assert_close(sae.encode(x)[:3], sae.encode(x[:3]))


@pytest.mark.parametrize("name", ["batchtopk", "matryoshka"])
def test_calibrated_threshold_gives_k_on_average(name):
    """The inference threshold set once training ends: on the rows it was set from, the mean L0 is k
    exactly (continuous values, no ties); on fresh rows of the same distribution, k up to sampling
    noise (per-row L0 std ~2 here, so the mean of 4096 rows has a standard error ~0.03)."""
    torch.manual_seed(0)
    sae = build_sae(name, 16, 64, **KEYWORDS[name] | ({"prefixes": [16, 64]} if name == "matryoshka" else {}))
    sae.eval()
    mean = torch.randn(16)
    calib, fresh = (torch.randn(n, 16, generator=torch.Generator().manual_seed(s)) + mean
                    for n, s in ((512, 1), (4096, 2)))
    assert float(sae.threshold) < 0  # not yet estimated: per-example top-k until then
    sae.calibrate_threshold(calib)
    l0 = (sae.encode(calib) > 0).sum(1).float()
    assert l0.mean().item() == sae.k and l0.std() > 0.5  # k on average, not k in every row
    assert (sae.encode(fresh) > 0).sum(1).float().mean().item() == pytest.approx(sae.k, abs=0.25)
