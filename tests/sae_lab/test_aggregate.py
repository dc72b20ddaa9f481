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
        # 3 seeds vs 3 random dictionaries: the smallest attainable p is 1/C(6, 3) = 0.05, never < 0.05
        assert r["n_ok"] == "3" and r["conclusion"] == "insufficient_seeds" and float(r["p_min"]) == pytest.approx(0.05)
        assert float(r["pwmcc_trained_ci_low"]) <= float(r["pwmcc_trained_mean"]) <= float(r["pwmcc_trained_ci_high"])
    with open(sweep_dir / "aggregate" / "pairwise_sae.k=2.csv") as f:
        pairs = list(csv.DictReader(f))
    assert [(p["seed_a"], p["seed_b"]) for p in pairs] == [("0", "1"), ("0", "2"), ("1", "2")]
    assert (sweep_dir / "aggregate" / "figures" / "pwmcc_vs_k.png").exists()
    assert (sweep_dir / "aggregate" / "figures" / "pwmcc_by_group.png").stat().st_size > 1000
    assert "sae.k=2" in (sweep_dir / "aggregate" / "summary.md").read_text()


def test_the_plan_from_multirun_yaml_is_what_hydra_launched(sweep_dir):
    from labcore.sweep import sweep_plan
    from omegaconf import OmegaConf
    plan = sweep_plan(sweep_dir)
    assert len(plan.jobs) == 6
    for expected in plan.jobs:
        assert expected.path == sweep_dir / str(expected.num)
        assert expected.overrides == list(OmegaConf.load(expected.path / ".hydra" / "overrides.yaml"))
        assert expected.overrides == json.loads((expected.path / "manifest.json").read_text())["overrides"]


def test_jobs_that_never_started_are_listed(sweep_dir, tmp_path):
    broken = tmp_path / "sweep"
    shutil.copytree(sweep_dir, broken)
    shutil.rmtree(broken / "4")                 # the launcher died before job 4 made its directory
    logged = []
    result = aggregate(broken, n_resamples=200, matching=False, log=logged.append)
    assert [(os.path.basename(p), status) for p, status, _ in result["problems"]] == [("4", "not_started")]
    md = (broken / "aggregate" / "summary.md").read_text()
    assert ("5 jobs found, 5 aggregated, 0 with problems. "
            "The sweep launched 6 jobs (multirun.yaml): 1 never started.") in md
    assert "`4` (sae.k=4, seed 1): **not_started**: launched as job 4 of 6" in md
    with open(broken / "aggregate" / "jobs.csv") as f:
        assert {r["path"]: r["status"] for r in csv.DictReader(f)}["4"] == "not_started"
    assert any("not_started" in m and str(broken / "4") in m for m in logged)
    assert rows_by_group(broken / "aggregate" / "summary.csv")["sae.k=4"]["n_jobs"] == "3"


def test_two_finished_jobs_of_one_seed_are_both_named_and_one_counts(sweep_dir, tmp_path):
    twice = tmp_path / "sweep"
    shutil.copytree(sweep_dir, twice)
    shutil.copytree(twice / "0", twice / "6")   # seed 0 of sae.k=2 again, e.g. rerun into the same sweep
    manifest = json.loads((twice / "6" / "manifest.json").read_text())
    manifest["started_at"] = "2000-01-01T00:00:00+0000"       # ... but finished long before job 0
    (twice / "6" / "manifest.json").write_text(json.dumps(manifest))
    logged = []
    result = aggregate(twice, n_resamples=200, matching=False, log=logged.append)
    assert result["duplicates"] == [(str(twice / "6"), str(twice / "0"))] and result["problems"] == []
    row = rows_by_group(twice / "aggregate" / "summary.csv")["sae.k=2"]
    assert row["n_ok"] == "3" and row["seeds"].split() == ["0", "1", "2"]
    md = (twice / "aggregate" / "summary.md").read_text()
    assert "7 jobs found, 6 aggregated, 0 with problems, 1 excluded as duplicates." in md
    assert "## Duplicates" in md and "finished last" in md
    assert "`6` and `0` both finished; `0` finished later and counts, `6` is excluded" in md
    with open(twice / "aggregate" / "jobs.csv") as f:
        by_path = {r["path"]: r for r in csv.DictReader(f)}
    assert by_path["6"]["status"] == "duplicate" and by_path["6"]["duplicate_of"] == "0"
    assert by_path["0"]["status"] == "ok"
    assert any("duplicate" in m and str(twice / "6") in m and str(twice / "0") in m for m in logged)


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


# ---- the seed as the unit: a group shaped like husai_trained_vs_random ------------------------------

HUSAI_SEEDS = (42, 123, 456, 789, 1011)


def decoder_jobs(root, seeds, d_sae=128, d_in=32, noise=0.5):
    """Finished jobs whose decoders share most directions (as trained SAEs do), one per seed."""
    from safetensors.torch import save_file

    from labcore.sweep import Job
    shared = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(0))
    jobs = []
    for seed in seeds:
        w = shared + noise * torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed))
        (root / str(seed) / "sae").mkdir(parents=True)
        save_file({"W_dec": w.contiguous()}, root / str(seed) / "sae" / "sae_weights.safetensors")
        jobs.append(Job(root / str(seed), [f"seed={seed}"], config={"seed": seed, "sae": {"d_sae": d_sae, "k": 8}},
                        metrics={"explained_variance": 0.8, "l0": 8.0, "mse": 0.1}))
    return jobs


def test_husai_shaped_group_is_tested_with_the_seed_as_unit(tmp_path):
    """5 trained seeds vs 5 random dictionaries: 10 pairs each, but 5 units each. The test permutes
    seed labels (252 assignments), so p is 1/252 at best, not the ~1e-5 a test over 10 vs 10 pairs
    would claim."""
    from sae_lab.group_statistics import summarise_group
    row, pairs = summarise_group("all", decoder_jobs(tmp_path, HUSAI_SEEDS), matching=False, n_resamples=500)
    assert len(pairs["trained"]) == len(pairs["random"]) == 10 and len(pairs["trained_random"]) == 25
    assert row["conclusion"] == "training_signal_present"
    assert row["p_value"] == pytest.approx(1 / 252) and row["p_min"] == pytest.approx(1 / 252)
    assert row["pwmcc_trained_mean"] == pytest.approx(sum(p for *_, p in pairs["trained"]) / 10)
    assert row["pwmcc_trained_ci_low"] > row["pwmcc_random_ci_high"]
    assert "mann_whitney_U" not in row


@pytest.mark.parametrize("seeds", [HUSAI_SEEDS[:3], HUSAI_SEEDS[:2]])
def test_too_few_seeds_to_reach_significance_say_so(tmp_path, seeds):
    from sae_lab.group_statistics import summarise_group
    row, _ = summarise_group("all", decoder_jobs(tmp_path, seeds), matching=False, n_resamples=200)
    assert row["pwmcc_delta"] > 0.1           # clearly more alike than random, yet untestable
    assert row["conclusion"] == "insufficient_seeds" and row["p_min"] >= 0.05


def test_two_decoders_of_one_seed_are_never_collapsed_silently(tmp_path):
    from sae_lab.group_statistics import summarise_group
    jobs = decoder_jobs(tmp_path / "a", (1, 2, 3)) + decoder_jobs(tmp_path / "b", (3,))
    with pytest.raises(ValueError, match="two finished jobs with seed 3"):
        summarise_group("all", jobs, matching=False, n_resamples=100)
