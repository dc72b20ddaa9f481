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


@pytest.mark.slow
def test_two_sweeps_launched_in_the_same_second_keep_all_their_jobs(tmp_path):
    """Both sweeps ask for the same directory (as `${now:...}` gives two launches in one second);
    each claims its own and keeps both of its jobs."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    same = "hydra.sweep.dir=${claim_dir:" + str(tmp_path / "multirun" / "same-second") + "}"
    procs = [subprocess.Popen([sys.executable, "-m", "sae_lab.train", "-m", *TINY, f"paths.cache_dir={tmp_path / 'cache'}",
                               same, f"sae.k={k}", "seed=0,1", "hydra.callbacks.aggregate.enabled=false"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in (2, 4)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    sweeps = sorted((tmp_path / "multirun").iterdir())
    assert [s.name for s in sweeps] == ["same-second", "same-second_1"]
    ks = set()
    for s in sweeps:
        metrics = [json.loads((s / str(j) / "metrics.json").read_text()) for j in (0, 1)]
        manifests = [json.loads((s / str(j) / "manifest.json").read_text()) for j in (0, 1)]
        assert {m["config"]["seed"] for m in manifests} == {0, 1}
        assert len({m["config"]["sae"]["k"] for m in manifests}) == 1 and all(m["l0"] > 0 for m in metrics)
        ks.add(manifests[0]["config"]["sae"]["k"])
    assert ks == {2, 4}


@pytest.mark.slow
def test_config_error_in_one_job_of_a_submitit_sweep(tmp_path):
    """A bad value in one job: the driver fails naming the key and the job's overrides, the other
    job's result is kept, and the aggregate reports the failed job and aggregates the rest."""
    from sae_lab.aggregate import aggregate
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "sae_lab.train", "-m", "hydra/launcher=local", *TINY,
                          f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}", "sae.k=0,4"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "sae.k: must be a positive integer (got 0)" in log and "TypeError" not in log
    [failed_job] = [line for line in log.splitlines() if line.startswith("Error executing job with overrides")]
    assert "'sae.k=0'" in failed_job
    assert json.loads((sweep_dir / "1" / "metrics.json").read_text())["l0"] == pytest.approx(4)
    result = aggregate(sweep_dir, n_resamples=100, matching=False, log=lambda m: None)
    [(path, status, why)] = result["problems"]
    assert path.endswith("/0") and status == "failed" and "ConfigError: sae.k: must be a positive integer" in why
    assert [row["n_ok"] for row in result["rows"] if row["n_ok"]] == [1]
