"""The self-state GPT trained through the labcore runner: the reaction log, the regimes' effects,
the controls, config errors before training, and exact resume after kill -9."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from labcore import run
from labcore.paths import compose
from labcore.steplog import read_step_log
from labcore.validate import ConfigError
from tests.conftest import NANODESMO_TINY, REPO


def job(out, *overrides):
    cfg = compose("nanodesmo", [*NANODESMO_TINY, f"paths.output_dir={out}", f"paths.cache_dir={out / 'cache'}",
                                *overrides])
    return run(cfg), [r for r in read_step_log(out / "reaction_log.jsonl") if "loss" in r]


def test_reaction_log_has_a_record_per_step_with_the_reference_fields(tmp_path):
    metrics, log = job(tmp_path)
    assert [r["step"] for r in log] == list(range(40))
    fields = {"loss", "lr", "grad_norm", "step_frac", "self_norm", "self_delta", "self_drift",
              "self_update_mlp_norm", *(f"stats_{n}" for n in ("loss", "grad_norm", "step_frac", "entropy", "top1_conf"))}
    assert all(fields <= set(r) for r in log)
    assert [r["step"] for r in log if "state_effect" in r] == [0, 10, 20, 30]
    # the statistics a step's update sees are the previous step's, with the regimes applied
    for prev, cur in zip(log, log[1:]):
        offset = 0.5 if cur["regime_false_feedback"] else 0.0
        assert cur["stats_loss"] == pytest.approx(prev["loss"] + offset, rel=1e-5)
        assert cur["stats_grad_norm"] == pytest.approx(prev["grad_norm"], rel=1e-5)
    # the schedule, scaled from 2000 reference steps to 40: heat wave at [6, 7), fog [12, 16), ...
    active = {name: [r["step"] for r in log if r[f"regime_{name}"]] for name in
              ("lr_heatwave", "sensory_fog", "false_feedback", "self_clamp", "bewilderment")}
    assert active == {"lr_heatwave": [6], "sensory_fog": [12, 13, 14, 15], "false_feedback": [18, 19],
                      "self_clamp": [22, 23], "bewilderment": [24, 25, 26, 27]}
    for r in log:
        if r["regime_self_clamp"]:
            assert r["self_norm"] <= 0.01 * math.sqrt(32) + 1e-6
    assert (tmp_path / "checkpoints" / "best.ckpt").exists()
    assert metrics["best_val_loss"] <= metrics["val_loss"] + 1e-6
    assert metrics["val_loss"] < math.log(len(set((REPO.parent / "shared/data/tinyshakespeare/input.txt").read_text()[:20000])))


def test_lr_heatwave_doubles_the_scheduled_rate(tmp_path):
    from nanodesmo.training import lr_at
    _, log = job(tmp_path)
    r = log[6]
    assert r["regime_lr_heatwave"] == 1.0
    assert r["lr"] == pytest.approx(2 * lr_at(6, 1e-3, 1e-4, 2, 40))
    assert log[7]["lr"] == pytest.approx(lr_at(7, 1e-3, 1e-4, 2, 40))


@pytest.mark.parametrize("control", ["vanilla", "fixed_bias", "dim1"])
def test_controls_are_configurations(tmp_path, control):
    metrics, log = job(tmp_path, f"self_state={control}")
    if control == "vanilla":
        assert "self_norm" not in metrics and not any("self_norm" in r for r in log)
    elif control == "fixed_bias":
        assert all(r["self_delta"] == 0 for r in log)              # never updated
        assert all(r["self_norm"] == pytest.approx(1.0, rel=1e-5) for r in log if not r["regime_self_clamp"])
    else:
        assert len(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
                   ["model.self_state.state"]) == 1


@pytest.mark.parametrize("override, key", [
    ("+regime.windows.x={channel: mood, start: 1, end: 2}", "regime.windows.x.channel"),
    ("+regime.windows.x={channel: input, start: 650, end: 700, prob: 0.1}", "regime.windows.x"),
    ("+regime.windows.x={channel: target, start: 1900, end: 2100, prob: 0.1}", "regime.windows.x.end"),
    ("+regime.windows.x={channel: target, start: 1900, end: 1950, prob: -0.1}", "regime.windows.x.prob"),
    ("+regime.windows.x={channel: self, start: 1900, end: 1950, lr_mult: 2}", "regime.windows.x.lr_mult"),
    ("train.warmup_iters=40", "train.warmup_iters"),
    ("self_state.memory=forever", "self_state.memory"),
    ("dataset.path=/nonexistent/corpus.txt", "dataset.path"),
    ("dataset=openwebtext_char", "dataset.path"),        # offline, and no local copy of OpenWebText
])
def test_bad_config_fails_before_training(tmp_path, monkeypatch, override, key):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        job(tmp_path, override)
    assert e.value.key == key, str(e.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "reaction_log.jsonl").exists()


def test_memory_variants_train(tmp_path):
    for memory in ("ema", "buffer"):
        _, log = job(tmp_path / memory, f"self_state.memory={memory}", "self_state.buffer_len=4",
                     "self_state.buffer_every=3")
        assert all(0 <= r["self_update_gate"] <= 1 for r in log)
        assert all(r["self_update_mem_clamped_norm"] <= r["self_update_mlp_norm"] * (1 + 1e-5) for r in log)


# ---- kill -9 and resume -------------------------------------------------------------------------------
def cli(out, *extra):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "nanodesmo.train", *NANODESMO_TINY, "train.max_iters=60",
                             "self_state.memory=buffer", "self_state.buffer_len=4", "self_state.buffer_every=3",
                             f"hydra.run.dir={out}", f"paths.cache_dir={out.parent / 'cache'}", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_state(out):
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"], [r for r in read_step_log(out / "reaction_log.jsonl") if "loss" in r]


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_gives_the_uninterrupted_log_and_checkpoint(tmp_path):
    reference = tmp_path / "reference"
    proc = cli(reference)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    at = random.Random().randrange(8, 50)
    print(f"killing after {at} logged steps")
    run_dir = tmp_path / "killed"
    proc = cli(run_dir)
    deadline = time.time() + 300
    while sum("loss" in r for r in read_step_log(run_dir / "reaction_log.jsonl")) < at:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "timed out waiting for the reaction log"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    proc = cli(run_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    weights, log = final_state(run_dir)
    ref_weights, ref_log = final_state(reference)
    assert log == ref_log
    assert weights.keys() == ref_weights.keys()
    for k in weights:
        assert torch.equal(weights[k], ref_weights[k]), k
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ref_metrics.pop("wall_time_s"), metrics.pop("wall_time_s")
    assert metrics == ref_metrics
