"""Aggregation of a real (tiny) sweep, including jobs that failed or left broken metrics."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from sae_lab.aggregate import aggregate, main
from tests.conftest import REPO, TINY


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """sae.k=2,4 x seeds 0-2 (d_sae 64 > d_in 32) through the CLI; the callback aggregates it."""
    root = tmp_path_factory.mktemp("agg")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "sae_lab.train", "-m", *TINY, f"paths.cache_dir={root / 'cache'}",
                          f"hydra.sweep.dir={root / 'sweep'}", "sae.k=2,4", "seed=0,1,2",
                          "hydra.callbacks.aggregate.matching=false"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "sweep"


def rows_by_group(path):
    with open(path) as f:
        return {r["group"]: r for r in csv.DictReader(f)}


def test_callback_aggregated_the_sweep(sweep_dir):
    rows = rows_by_group(sweep_dir / "aggregate" / "summary.csv")
    assert set(rows) == {"sae.k=2", "sae.k=4"}
    for r in rows.values():
        assert r["n_ok"] == "3" and r["conclusion"] in ("training_signal_present", "no_training_signal")
        assert float(r["pwmcc_trained_ci_low"]) <= float(r["pwmcc_trained_mean"]) <= float(r["pwmcc_trained_ci_high"])
    with open(sweep_dir / "aggregate" / "pairwise_sae.k=2.csv") as f:
        pairs = list(csv.DictReader(f))
    assert [(p["seed_a"], p["seed_b"]) for p in pairs] == [("0", "1"), ("0", "2"), ("1", "2")]
    assert (sweep_dir / "aggregate" / "figures" / "pwmcc_vs_k.png").exists()
    assert "sae.k=2" in (sweep_dir / "aggregate" / "summary.md").read_text()


def test_broken_jobs_are_named_and_the_rest_aggregated(sweep_dir, tmp_path, capsys):
    broken = tmp_path / "sweep"
    shutil.copytree(sweep_dir, broken)
    jobs = {json.loads((d / "manifest.json").read_text())["seed"]: d
            for d in broken.iterdir() if d.name.isdigit() and "sae.k=4" in (d / ".hydra/overrides.yaml").read_text()}
    (jobs[0] / "metrics.json").unlink()                                    # missing
    (jobs[1] / "metrics.json").write_text('{"explained_variance": 0.5')   # corrupt (truncated)
    (jobs[2] / "metrics.json").write_text('{"wall_time_s": 3.0}')         # partial
    result = aggregate(broken, n_resamples=500, matching=False)
    problems = {os.path.basename(p): (status, why) for p, status, why in result["problems"]}
    assert problems[jobs[0].name][0] == "missing" and "no metrics.json" in problems[jobs[0].name][1]
    assert problems[jobs[1].name][0] == "corrupt"
    assert problems[jobs[2].name][0] == "partial" and "explained_variance" in problems[jobs[2].name][1]
    rows = rows_by_group(broken / "aggregate" / "summary.csv")
    assert rows["sae.k=2"]["n_ok"] == "3" and rows["sae.k=4"]["n_ok"] == "0"
    md = (broken / "aggregate" / "summary.md").read_text()
    assert md.count("**missing**") == 1 and md.count("**corrupt**") == 1 and md.count("**partial**") == 1
    assert "missing" in capsys.readouterr().out


def test_failed_job_reported_with_its_error(sweep_dir, tmp_path):
    broken = tmp_path / "sweep"
    shutil.copytree(sweep_dir, broken)
    job = next(d for d in sorted(broken.iterdir()) if d.name.isdigit())
    (job / "metrics.json").unlink()
    manifest = json.loads((job / "manifest.json").read_text())
    manifest.update(status="failed", error="RuntimeError: out of memory")
    (job / "manifest.json").write_text(json.dumps(manifest))
    result = aggregate(broken, n_resamples=200, matching=False, log=lambda m: None)
    assert any(status == "failed" and "out of memory" in why for _, status, why in result["problems"])


def test_cli_errors_and_exit_codes(tmp_path, sweep_dir, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(sweep_dir), "--out", str(tmp_path / "agg"), "--resamples", "200", "--no-matching"]) == 0
    assert (tmp_path / "agg" / "summary.csv").exists()


def test_d_sae_smaller_than_d_in_is_not_transposed(tmp_path):
    """The original code transposed decoders when d_sae < d_in; here rows are latents, always."""
    from sae_lab.consistency import pwmcc
    from sae_lab.sae import build_sae
    from sae_lab.saelens_io import save_sae
    sae = build_sae("topk", 128, 64, k=8)  # d_sae 64 < d_in 128
    save_sae(sae, tmp_path / "a", hook_name="h", model_name="m")
    from safetensors.torch import load_file
    w = load_file(tmp_path / "a" / "sae_weights.safetensors")["W_dec"]
    assert w.shape == (64, 128)
    assert pwmcc(w, w) == pytest.approx(1.0, abs=1e-6)
    assert pwmcc(w, sae.W_dec.detach().T.contiguous(), layout=("rows", "columns")) == pytest.approx(1.0, abs=1e-6)
    assert pwmcc(w, torch.randn(64, 128)) < 0.5
