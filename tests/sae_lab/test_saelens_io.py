import json

import pytest
import torch

from sae_lab.sae import build_sae
from sae_lab.saelens_io import load_sae, save_sae


ARCHS = ["topk", "batchtopk", "relu", "jumprelu", "matryoshka"]


def trained_like(arch):
    torch.manual_seed(0)
    sae = build_sae(arch, 12, 48, k=6, prefixes=[12, 48])
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        if arch == "jumprelu":  # thresholds of their own per latent, some of them 0
            sae.threshold.uniform_(0, 2).mul_(torch.rand(48) > 0.2)
    if arch in ("batchtopk", "matryoshka"):  # a global threshold learned in training steps
        for s in range(3):
            sae(torch.randn(32, 12))
    return sae.eval()


def test_the_saved_sae_is_not_a_trivial_encoder():
    for arch in ARCHS:
        z = trained_like(arch).encode(torch.randn(20, 12))
        assert 0 < (z > 0).float().mean() < 0.9, arch


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip(tmp_path, arch):
    sae = trained_like(arch)
    save_sae(sae, tmp_path / "sae", hook_name="blocks.0.hook_resid_post", model_name="m")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["d_in"] == 12 and cfg["d_sae"] == 48 and cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert cfg["metadata"]["interp_lab_architecture"] == arch
    loaded, _ = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.config() == sae.config()
    x = torch.randn(20, 12)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    from safetensors.torch import load_file
    w = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    assert w["W_enc"].shape == (12, 48) and w["W_dec"].shape == (48, 12)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu"])
def test_files_without_the_config_record_still_load(tmp_path, arch):
    """Files written before metadata.interp_lab_config existed (k in cfg.json or metadata.k)."""
    sae = trained_like(arch)
    save_sae(sae, tmp_path / "sae", hook_name="h", model_name="m")
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["metadata"]["interp_lab_config"]
    if arch == "batchtopk":
        cfg["metadata"]["k"] = sae.k
    cfg_path.write_text(json.dumps(cfg))
    loaded, _ = load_sae(tmp_path / "sae")
    x = torch.randn(20, 12)
    assert getattr(loaded, "k", None) == getattr(sae, "k", None)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))


@pytest.mark.interop
@pytest.mark.parametrize("arch", ARCHS)
def test_sae_lens_loads_our_files(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    sae = trained_like(arch)
    save_sae(sae, tmp_path / "sae", hook_name="blocks.0.hook_resid_post", model_name="m")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    x = torch.randn(20, 12)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.interop
@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])  # False: Gemma Scope's files
def test_a_jumprelu_sae_written_by_sae_lens_loads_as_jumprelu(tmp_path, apply_b_dec_to_input):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens import JumpReLUSAE as TheirJumpReLU, JumpReLUSAEConfig
    torch.manual_seed(0)
    theirs = TheirJumpReLU(JumpReLUSAEConfig(d_in=12, d_sae=48, dtype="float32", device="cpu",
                                             apply_b_dec_to_input=apply_b_dec_to_input))
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
        theirs.threshold.abs_()
    theirs.save_model(str(tmp_path / "theirs"))
    ours, cfg = load_sae(tmp_path / "theirs")
    assert type(ours).architecture == "jumprelu" and cfg["architecture"] == "jumprelu"
    x = torch.randn(20, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)), atol=1e-4, rtol=1e-5)
    assert (ours.encode(x) > 0).any()


def test_normalised_activations_are_refused(tmp_path):
    save_sae(trained_like("topk"), tmp_path / "sae", hook_name="h", model_name="m")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg | {"normalize_activations": "expected_average_only_in"}))
    with pytest.raises(ValueError, match="normalize_activations 'expected_average_only_in' is not supported"):
        load_sae(tmp_path / "sae")
