"""What clusters do to jobs: kill -9, SIGTERM (time limits, preemption), Ctrl-C. Nothing finished is
lost, nothing unfinished looks finished, and running the same command again in the same directory
resumes to exactly the result of an uninterrupted run (metrics.json, SAE weights, the step log's
training records).

Every wait is for an event (a line in the step log, a process exit), never a fixed sleep."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from labcore.steplog import read_step_log
from tests.conftest import REPO, assert_resumed_log, tiny_cli_args

pytestmark = pytest.mark.slow

STEPS = 180  # 60 epochs x 3 batches of the tiny config
EXTRA = ["trainer.max_epochs=60", "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=10"]


def cli(args, *, sweep=False):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sae_lab.train", *(["-m"] if sweep else []), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for(what, predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the job exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def train_steps_logged(run_dir) -> int:
    return sum("train/loss" in r for r in read_step_log(run_dir / "steps.jsonl"))


def result(run_dir) -> tuple[dict, bytes, list]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("wall_time_s")
    return metrics, (run_dir / "sae" / "sae_weights.safetensors").read_bytes(), read_step_log(run_dir / "steps.jsonl")


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    return tiny_cli_args(tmp_path_factory.mktemp("cache")) + EXTRA


@pytest.fixture(scope="module")
def uninterrupted(args, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    rc, out = finish(cli(args + [f"hydra.run.dir={run_dir}"]))
    assert rc == 0, out[-3000:]
    return result(run_dir)


def assert_same_result(run_dir, uninterrupted):
    metrics, weights, log = result(run_dir)
    assert metrics == uninterrupted[0]
    assert weights == uninterrupted[1]
    assert_resumed_log(log, uninterrupted[2])


def test_kill_9_at_a_random_point_then_rerun_resumes_exactly(args, uninterrupted, tmp_path):
    seed = random.randrange(10**6)
    at = random.Random(seed).randrange(5, STEPS - 5)
    print(f"killing after {at} logged steps (seed {seed})")
    run_dir = tmp_path / "run"
    proc = cli(args + [f"hydra.run.dir={run_dir}"])
    wait_for(f"{at} logged steps", lambda: train_steps_logged(run_dir) >= at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()  # nothing unfinished looks finished
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    rc, out = finish(cli(args + [f"hydra.run.dir={run_dir}"]))
    assert rc == 0, out[-3000:]
    assert_same_result(run_dir, uninterrupted)
    # a finished job is not run again
    rc, out = finish(cli(args + [f"hydra.run.dir={run_dir}"]))
    assert rc == 0 and "not running it again" in out


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_exits_non_zero_and_resumes(args, uninterrupted, tmp_path, signum, status):
    run_dir = tmp_path / "run"
    proc = cli(args + [f"hydra.run.dir={run_dir}"])
    wait_for("20 logged steps", lambda: train_steps_logged(run_dir) >= 20, proc)
    proc.send_signal(signum)
    rc, out = finish(proc, timeout=120)
    assert rc == status, out[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and signal.Signals(signum).name in manifest["error"]
    assert not (run_dir / "metrics.json").exists()
    import torch
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step >= 20  # checkpointed when the signal came, not only at the last periodic save
    rc, out = finish(cli(args + [f"hydra.run.dir={run_dir}"]))
    assert rc == 0 and f"continuing from {run_dir / 'checkpoints' / 'last.ckpt'}" in out, out[-3000:]
    assert_same_result(run_dir, uninterrupted)


def test_sigterm_stops_the_sweep_non_zero_and_the_sweep_resumes(args, uninterrupted, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_args = args + [f"hydra.sweep.dir={sweep_dir}", "seed=0,1", "hydra.callbacks.aggregate.enabled=false"]
    proc = cli(sweep_args, sweep=True)
    wait_for("job 0 under way", lambda: train_steps_logged(sweep_dir / "0") >= 20, proc)
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc, timeout=120)
    assert rc == 143, out[-3000:]  # the driver failed too: nothing silently skipped the rest
    assert not (sweep_dir / "1").exists()
    rc, out = finish(cli(sweep_args, sweep=True))
    assert rc == 0, out[-3000:]
    assert "continuing from" in out
    assert_same_result(sweep_dir / "0", uninterrupted)  # seed 0 is the default seed of `uninterrupted`
    assert json.loads((sweep_dir / "1" / "manifest.json").read_text())["status"] == "completed"
