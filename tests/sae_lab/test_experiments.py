"""Named studies compose and set the protocol they promise."""

import pytest

from tests.conftest import compose


def sweeper_params(name):
    from labcore.paths import compose as lab_compose
    cfg = lab_compose("sae_lab", [f"experiment={name}"], return_hydra_config=True)
    return cfg, dict(cfg.hydra.sweeper.params)


def test_trained_vs_random_protocol():
    cfg, params = sweeper_params("husai_trained_vs_random")
    assert params == {"seed": "42,123,456,789,1011"}
    assert (cfg.sae.architecture, cfg.sae.d_sae, cfg.sae.k, cfg.trainer.max_epochs) == ("topk", 1024, 32, 20)


@pytest.mark.parametrize("name, key, values, fixed", [
    ("husai_k_sweep", "sae.k", "8,16,32,64", ("d_sae", 128)),
    ("husai_dsae_sweep", "sae.d_sae", "64,128,256,512", ("k", 32)),
])
def test_core_ablations(name, key, values, fixed):
    cfg, params = sweeper_params(name)
    assert params[key] == values and params["seed"] == "42,123,456,789,1011"
    assert cfg.sae[fixed[0]] == fixed[1]
    assert cfg.name == name


def test_overlay_values_can_still_be_overridden():
    cfg = compose(["experiment=husai_k_sweep", "trainer.max_epochs=3"])
    assert cfg.trainer.max_epochs == 3
