"""W&B offline: no account, no network. Jobs log beside the CSV; the aggregate logs a summary run."""

import pytest

from labcore import run


@pytest.mark.slow
def test_job_logs_to_wandb_offline(offline, tiny_cfg, tmp_path):
    import wandb
    run(tiny_cfg("logger=wandb"))
    assert wandb.run is None                              # finished: the next job gets its own run
    runs = list((tmp_path / "out").rglob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert (tmp_path / "out" / "logs" / "metrics.csv").exists()  # the CSV stays beside it


@pytest.mark.slow
def test_aggregate_summary_run_offline(offline, tiny_cfg, tmp_path):
    from sae_lab.aggregate import aggregate
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        run(tiny_cfg(f"seed={seed}", f"paths.output_dir={sweep / str(seed)}"))
    aggregate(sweep, n_resamples=200, matching=False, wandb_project="interp-lab-test", log=lambda m: None)
    runs = list((sweep / "aggregate").rglob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_offline_without_credentials(monkeypatch, tmp_path):
    from labcore.loggers import wandb_has_credentials
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert not wandb_has_credentials()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_has_credentials()
