"""The main job end to end on a tiny config, in-process (Hydra compose) and through the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from labcore import run
from labcore.steplog import read_step_log
from sae_lab.saelens_io import load_sae
from tests.conftest import REPO, tiny_cli_args

EXPECTED = {"explained_variance", "fvu", "mse", "l0", "dead_fraction_eval", "dead_fraction_train", "dense_fraction", "ce_clean",
            "ce_with_sae", "ce_zero_ablation", "loss_recovered", "delta_loss", "acc_clean", "acc_with_sae",
            "acc_zero_ablation", "wall_time_s"}


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu", "matryoshka"])
def test_job_leaves_a_complete_result(tiny_cfg, tmp_path, arch, capsys):
    metrics = run(tiny_cfg(f"sae={arch}"))
    out = tmp_path / "out"
    assert EXPECTED <= set(metrics)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["wall_time_s"] > 0
    assert set(manifest["inputs"]) == {"base_model", "activations"} and manifest["config"]["sae"]["architecture"] == arch
    assert manifest["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    for fig in ("training_curves.png", "latent_density.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    sae, cfg = load_sae(out / "sae")
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post" and sae.d_sae == 64
    assert -1 < metrics["explained_variance"] <= 1
    if arch == "topk":  # k = 4 in every example
        assert metrics["l0"] == pytest.approx(4, abs=1e-9)
    elif arch in ("batchtopk", "matryoshka"):
        # k = 4 on average over the training rows the threshold was calibrated on (exactly so:
        # test_architectures); the tiny job's 27 test rows are a sample of that, with a per-row L0
        # std ~1.9, so their mean has a standard error ~0.36 (seen: 3.48 and 3.56 on an AVX2 CPU)
        assert metrics["n_eval"] == 27 and metrics["l0"] == pytest.approx(4, abs=1.5)
    else:
        assert 0 < metrics["l0"] < 64
    assert type(sae).architecture == arch and sae.config() == cfg["metadata"]["interp_lab_config"]
    assert "explained_variance" in capsys.readouterr().out  # the summary table was printed
    # the module logs only on the steps the loggers write (labcore.fit.step_logs_due): every one of them
    every = manifest["config"]["trainer"]["log_every_n_steps"]
    logged = [r["step"] for r in read_step_log(out / "steps.jsonl") if "train/fvu" in r]
    assert logged == [s for s in range(int(metrics["train_steps"])) if (s + 1) % every == 0]


def test_cache_is_reused_by_the_next_job(tiny_cfg, tmp_path, capsys):
    run(tiny_cfg("seed=1"))
    capsys.readouterr()
    run(tiny_cfg("seed=2", "sae.k=2", f"paths.output_dir={tmp_path / 'second'}"))
    assert "building" not in capsys.readouterr().out


def _cli(args, **kw):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sae_lab.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_cli_output_reads_well_in_a_log_file(tmp_path):
    """stdout is a pipe here, as on SLURM: progress comes as lines, each message once, no tips."""
    args = [o for o in tiny_cli_args(tmp_path / "cache") if "enable_progress_bar" not in o]
    proc = _cli(args + [f"hydra.run.dir={tmp_path / 'run'}"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "\r" not in out
    assert out.count("[train] step") >= 2 and "(100%)" in out       # base model and SAE fits
    assert out.count("GPU available") == out.count("`Trainer.fit` stopped") == 2
    assert "Tip:" not in out and "LeafSpec" not in out and "weights_only" not in out


def test_cli_help_and_cfg_are_fast():
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "sae_lab.train", "--cfg", "job", "sae.k=8"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "k: 8" in out.stdout and "architecture: topk" in out.stdout
    assert time.time() - t < 20
