"""Multirun sweeps: every job leaves metrics.json; the base model and activations are built once."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY


def sweep(tmp_path, *extra, timeout=600):
    cache = tmp_path / "cache"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "sae_lab.train", "-m", *TINY, f"paths.cache_dir={cache}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return cache, tmp_path / "sweep", out.stdout + out.stderr


def built_entries(cache, kind):
    return [p for p in (cache / kind).iterdir() if p.is_dir() and not p.name.startswith(".")]


@pytest.mark.slow
def test_basic_launcher_sweep(tmp_path):
    cache, sweep_dir, log = sweep(tmp_path, "sae.k=2,4", "seed=0,1")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        manifest = json.loads((job / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        seen.add(tuple(sorted(manifest["overrides"])))
        assert metrics["l0"] == pytest.approx(int(manifest["config"]["sae"]["k"]))
    assert len(seen) == 4
    assert len(built_entries(cache, "base_models")) == 1 and len(built_entries(cache, "activations")) == 1
    assert log.count("base_models") == 1  # one "building" line: later jobs found it in the cache


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    cache, sweep_dir, _ = sweep(tmp_path, "hydra/launcher=local", "seed=0,1")
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(jobs) == 2 and all((j / "metrics.json").exists() for j in jobs)
    assert len(built_entries(cache, "base_models")) == 1
