"""The runner's two kinds of job: analysis only (no module, no trainer) and train-then-analyse
(here with manual optimisation), sharing validation, seeding, manifest, step log and metrics.json."""

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from labcore import run
from labcore.steplog import read_step_log
from labcore.validate import ConfigError
from tests.conftest import REPO


def job(tmp_path, task, **extra):
    return OmegaConf.create({
        "name": "tiny", "seed": 3, "task": {"_target_": f"tests.labcore.{task}"},
        "paths": {"output_dir": str(tmp_path / "out")}, "logger": {}, "callbacks": {}, **extra})


TRAINER = {"_target_": "lightning.pytorch.Trainer", "max_steps": 30, "accelerator": "cpu", "devices": 1,
           "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
           "enable_checkpointing": False}


def test_analysis_only_job(tmp_path):
    metrics = run(job(tmp_path, "tiny_analysis.NoiseStatistics", n=1000))
    out = tmp_path / "out"
    torch.manual_seed(3)  # the runner seeded with cfg.seed before analyse
    assert metrics["mean"] == pytest.approx(float(torch.randn(1000).mean()))
    assert json.loads((out / "metrics.json").read_text())["mean"] == metrics["mean"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert (out / "figures" / "noise.png").stat().st_size > 1000
    assert not (out / "steps.jsonl").exists() and not (out / "checkpoints").exists()


def test_analysis_only_job_never_imports_lightning(tmp_path):
    code = ("import sys; from omegaconf import OmegaConf; from labcore import run; "
            f"run(OmegaConf.create({json.dumps(OmegaConf.to_container(job(tmp_path, 'tiny_analysis.NoiseStatistics', n=10)))})); "
            "print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_analysis_only_job_is_validated_before_compute(tmp_path):
    with pytest.raises(ConfigError, match="^n: must be a positive integer"):
        run(job(tmp_path, "tiny_analysis.NoiseStatistics", n=0))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "n: must be" in manifest["error"]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_training_job_with_manual_optimisation(tmp_path):
    metrics = run(job(tmp_path, "tiny_training.RegressionTraining", n=64, clip=0.5, trainer=TRAINER))
    assert metrics["steps"] == 30 and metrics["w_error"] < 3.7  # it learned (w starts ~3.7 away)
    log = read_step_log(tmp_path / "out" / "steps.jsonl")
    steps = [r["step"] for r in log if "train/grad_norm" in r]
    assert steps == list(range(30))
    norms = [r["train/grad_norm"] for r in log if "train/grad_norm" in r]
    assert max(norms) > 0.5  # the norm before clipping, not the clipped one
    ema = 0.0
    for n in norms:  # the carried state is an EMA of exactly those norms
        ema = 0.9 * ema + 0.1 * n
    assert metrics["grad_norm_ema"] == pytest.approx(ema, rel=1e-5)


def test_resumed_fit_truncates_the_step_log_to_its_checkpoint(tmp_path):
    """A fit resumed from a mid-run checkpoint cuts the step log back to what that checkpoint had
    seen: the records of steps after it are replaced, not duplicated."""
    ckpt = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": str(tmp_path / "ckpt"),
            "every_n_train_steps": 10, "save_top_k": -1, "filename": "{step}"}
    trainer = {**TRAINER, "enable_checkpointing": True}
    run(job(tmp_path, "tiny_training.RegressionTraining", n=64, clip=0.5, trainer=trainer, callbacks={"ckpt": ckpt}))
    full = read_step_log(tmp_path / "out" / "steps.jsonl")
    assert len({r["step"] for r in full}) == 30
    # as if killed after step 30 and restarted from the step-10 checkpoint in the same directory
    resumed = job(tmp_path, "tiny_training.RegressionTraining", n=64, clip=0.5, trainer=trainer, callbacks={"ckpt": ckpt},
                  ckpt_path=str(tmp_path / "ckpt" / "step=10.ckpt"))
    run(resumed)
    log = read_step_log(tmp_path / "out" / "steps.jsonl")
    assert [r["step"] for r in log] == [r["step"] for r in full]
    assert [r["train/loss"] for r in log][:10] == [r["train/loss"] for r in full][:10]


@pytest.mark.parametrize("every, saved_at", [(10, 10), (6, 12)], ids=["ckpt-at-epoch-end", "ckpt-mid-epoch"])
def test_interrupted_fit_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, every, saved_at):
    """Killed at step 17 with a checkpoint at step 10 or 12 (5 batches an epoch; random noise,
    shuffled batches, a carried state in flight), the same job run again in the same directory ends
    exactly where an uninterrupted run ends: same metrics, same weights, same step log."""
    from labcore.signals import JobInterrupted
    from tests.labcore import tiny_training

    def cfg(out):
        return job(out, "tiny_training.RegressionTraining", n=40, clip=0.5, trainer=TRAINER,
                   checkpoint={"every_n_steps": every, "every_minutes": None})

    reference = run(cfg(tmp_path / "a"))
    step = tiny_training.ClippedRegression.training_step

    def crash_at_17(self, batch, i):
        if self.global_step == 17:
            raise JobInterrupted(15)  # as if SIGTERM arrived with no chance to checkpoint
        return step(self, batch, i)

    monkeypatch.setattr(tiny_training.ClippedRegression, "training_step", crash_at_17)
    with pytest.raises(JobInterrupted):
        run(cfg(tmp_path / "b"))
    out = tmp_path / "b" / "out"
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == saved_at
    monkeypatch.setattr(tiny_training.ClippedRegression, "training_step", step)
    resumed = run(cfg(tmp_path / "b"))
    assert {k: v for k, v in resumed.items() if k != "wall_time_s"} == \
           {k: v for k, v in reference.items() if k != "wall_time_s"}
    a, b = (read_step_log(p / "out" / "steps.jsonl") for p in (tmp_path / "a", tmp_path / "b"))
    assert a == b
    # and a finished job is not run again
    assert run(cfg(tmp_path / "b")) == resumed


def test_resume_refuses_another_config_and_resume_false_starts_clean(tmp_path):
    base = dict(n=40, clip=0.5, trainer=TRAINER)
    run(job(tmp_path, "tiny_training.RegressionTraining", **base))
    with pytest.raises(ConfigError, match="^resume: .* holds a finished job with another config \\(clip differ\\)"):
        run(job(tmp_path, "tiny_training.RegressionTraining", **{**base, "clip": 0.25}))
    metrics = run(job(tmp_path, "tiny_training.RegressionTraining", **{**base, "clip": 0.25}, resume=False))
    assert metrics["steps"] == 30
    assert len(read_step_log(tmp_path / "out" / "steps.jsonl")) == 30  # the first attempt's log is gone


def test_non_finite_metrics_fail_the_job_naming_them(tmp_path, monkeypatch):
    from tests.labcore import tiny_analysis
    from labcore.runner import NonFiniteMetricsError
    monkeypatch.setattr(tiny_analysis.NoiseStatistics, "analyse", lambda self: {"ev": float("nan"), "l0": 3.0})
    with pytest.raises(NonFiniteMetricsError, match="ev"):
        run(job(tmp_path, "tiny_analysis.NoiseStatistics", n=10))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "non-finite final metrics (NaN/Inf): ev" in manifest["error"]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_failing_write_keeps_the_original_error(tmp_path, monkeypatch, capsys):
    """On a full disk the metrics write fails and so does the manifest's: the job's error is the
    first one, and the second is reported, not raised in its place."""
    import errno

    from labcore import artifacts, runner

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    writes = []
    real_write = artifacts.Manifest.write

    def manifest_write(self):  # the disk fills up after the job started
        writes.append(1)
        return real_write(self) if len(writes) == 1 else full_disk()

    monkeypatch.setattr(runner, "atomic_write_json", lambda path, obj: full_disk())
    monkeypatch.setattr(artifacts.Manifest, "write", manifest_write)
    with pytest.raises(OSError) as err:
        runner.run(job(tmp_path, "tiny_analysis.NoiseStatistics", n=10))
    assert err.value.errno == errno.ENOSPC
    assert "Manifest.finish failed: OSError" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "running"  # not "completed"


def test_errors_that_cross_processes_pickle_with_their_fields():
    """submitit pickles a failed job's exception back to the sweep driver: every error of ours must
    come back as itself, not as a TypeError from the default reduce."""
    import pickle

    from labcore.datasets.text import CorpusNotFoundError
    from labcore.hooks import UnknownHookError
    from labcore.orchestrate import StageFailed
    from labcore.signals import JobInterrupted
    from labcore.store import CacheFileError
    errors = [ConfigError("sae.k", "must be a positive integer (got 0)"), UnknownHookError("blocks.9.x", ["blocks.0.x"]),
              StageFailed("search", "/tmp/search.log", "exit status 1"), CorpusNotFoundError("/data/x.txt", None, "gone"),
              CacheFileError("/cache/acts.npy", "truncated"), JobInterrupted(15)]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.args == err.args


def test_submitit_time_limit_signal_checkpoints_first_then_requeues(tmp_path, monkeypatch):
    """Under submitit, SIGUSR2 (SLURM: the time limit is near) is taken like SIGTERM: the step ends,
    the checkpoint is written, then submitit's own handler runs (it requeues the job and exits)."""
    import os
    import signal

    from labcore.signals import JobInterrupted
    from tests.labcore import tiny_training

    class SignalHandler:  # stands in for submitit.core.job_environment.SignalHandler
        calls = []

        def checkpoint_and_try_requeue(self, signum, frame):
            ckpt = tmp_path / "out" / "checkpoints" / "last.ckpt"
            self.calls.append((signum, torch.load(ckpt, weights_only=False)["global_step"]))
            raise SystemExit(-1)  # what submitit does after `scontrol requeue`

    SignalHandler.__module__ = "submitit.core.job_environment"
    previous = signal.signal(signal.SIGUSR2, SignalHandler().checkpoint_and_try_requeue)
    step = tiny_training.ClippedRegression.training_step

    def warned_at_7(self, batch, i):
        if self.global_step == 7:
            os.kill(os.getpid(), signal.SIGUSR2)
        return step(self, batch, i)

    monkeypatch.setattr(tiny_training.ClippedRegression, "training_step", warned_at_7)
    try:
        with pytest.raises(JobInterrupted) as err:
            run(job(tmp_path, "tiny_training.RegressionTraining", n=40, clip=0.5, trainer=TRAINER))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert err.value.signum == signal.SIGUSR2
    assert SignalHandler.calls == [(signal.SIGUSR2, 8)]  # after the step that received it was saved
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "interrupted"


def test_native_bf16_matmul_is_torch_s_own_dispatch_test(monkeypatch):
    from labcore.fit import native_bf16_matmul
    assert native_bf16_matmul("cuda")  # a device type alone; no GPU needed
    assert native_bf16_matmul("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not native_bf16_matmul("cpu")


@pytest.mark.parametrize("precision, cpu_has_bf16, warns", [
    ("bf16-mixed", False, True), ("bf16-true", False, True), ("bf16-mixed", True, False), ("32-true", False, False)])
def test_a_bf16_fit_on_a_cpu_without_bf16_kernels_is_warned_of(tmp_path, monkeypatch, recwarn,
                                                                precision, cpu_has_bf16, warns):
    from labcore import fit
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu_has_bf16)
    monkeypatch.setattr(fit, "_warned_precisions", set())
    for _ in range(2):  # a job with two fits (base model, SAE) is told once
        fit.build_trainer(OmegaConf.create({**TRAINER, "precision": precision}), tmp_path)
    messages = [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
    slow = [m for m in messages if "no bf16 matrix kernels" in m]
    assert len(slow) == warns, messages
    if warns:
        assert slow[0].startswith(f"trainer.precision={precision}:") and "32-true" in slow[0]
