"""bf16 autocast training (`trainer.precision=bf16-mixed`): the encoder GEMM runs in bf16 while the
parameters, the optimiser and the decoder normalisation stay fp32; the result matches fp32 training."""

import json

import pytest
import torch

from labcore import run
from sae_lab.saelens_io import load_sae


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu", "matryoshka"])
def test_bf16_mixed_job_matches_fp32(tiny_cfg, tmp_path, arch):
    fp32 = run(tiny_cfg(f"sae={arch}", f"paths.output_dir={tmp_path / 'fp32'}"))
    bf16 = run(tiny_cfg(f"sae={arch}", "trainer.precision=bf16-mixed", f"paths.output_dir={tmp_path / 'bf16'}"))
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["config"]["trainer"]["precision"] == "bf16-mixed"
    sae, _ = load_sae(tmp_path / "bf16" / "sae")
    assert all(p.dtype == torch.float32 for p in sae.parameters())          # fp32 master weights
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-5, rtol=0)
    assert bf16["explained_variance"] == pytest.approx(fp32["explained_variance"], abs=0.02)
    # k-sparse codes keep their L0 (BatchTopK's within its calibration); learned sparsity moves a little
    assert bf16["l0"] == pytest.approx(fp32["l0"], abs=0.5) if arch in ("topk", "batchtopk", "matryoshka") \
        else bf16["l0"] == pytest.approx(fp32["l0"], rel=0.15)
    # bf16 changed the training (different rounding), it did not just rerun fp32
    fp32_sae, _ = load_sae(tmp_path / "fp32" / "sae")
    assert not torch.equal(sae.W_enc, fp32_sae.W_enc)


def test_the_fast_path_gemm_runs_in_bf16_under_autocast():
    from sae_lab.fast_topk import topk_encode
    torch.manual_seed(0)
    x, W, b = torch.randn(64, 16), torch.randn(16, 256), torch.randn(256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vals, idx = topk_encode(x, W, b, 8)
    assert vals.dtype == torch.bfloat16
    ref = (x.bfloat16() @ W.bfloat16()).float() + b.bfloat16().float()
    torch.testing.assert_close(vals.float(), ref.gather(1, idx).relu(), atol=0.1, rtol=0.02)
