"""Analyses of nanodesmo runs: regime deltas on a synthetic log, the frozen-weight test on models
whose state does or does not matter, and the pipeline end to end (--smoke, --dry-run, resume)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from labcore.steplog import read_step_log

from labcore.datasets.text import CharText
from labcore.models.gpt import GPTConfig
from nanodesmo.analyses import regime_deltas
from nanodesmo.frozen_test import frozen_test
from nanodesmo.model import SelfStateConfig, SelfStateGPT
from tests.conftest import REPO, SHAKESPEARE, execute_notebook


def test_regime_deltas_of_a_synthetic_log():
    log = [{"step": s, "loss": 1.0 + (2.0 if 10 <= s < 15 else 0.0), "stats_entropy": 3.0, "stats_top1_conf": 0.5,
            "self_drift": 0.1 * (s >= 10), "regime_fog": float(10 <= s < 15), "regime_clamp": float(20 <= s < 22),
            **({"state_effect": 0.2} if s % 5 == 0 else {})} for s in range(30)]
    rows = {r["regime"]: r for r in regime_deltas(log, baseline_steps=4)}
    fog = rows["fog"]
    assert (fog["start"], fog["end"], fog["baseline_steps"]) == (10, 15, 4)
    assert fog["loss_delta"] == pytest.approx(2.0) and fog["stats_entropy_delta"] == 0
    assert fog["self_drift_delta"] == pytest.approx(0.1)
    clamp = rows["clamp"]
    assert clamp["baseline_steps"] == 4 and clamp["loss_delta"] == pytest.approx(0.0)   # steps 16-19: regime-free


def tiny_model(proj_scale: float, unembed_scale: float = 1.0):
    data = CharText(SHAKESPEARE, block_size=16, max_chars=20000)
    torch.manual_seed(0)
    model = SelfStateGPT(GPTConfig(vocab_size=data.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=32,
                                   d_mlp=64), SelfStateConfig(dim=8))
    with torch.no_grad():
        model.self_state.proj.weight.mul_(proj_scale)
        model.gpt.unembed.weight.mul_(unembed_scale)   # peaked outputs, so entropy can move both ways
    return model, data


def test_frozen_test_finds_no_effect_where_the_state_cannot_act():
    model, data = tiny_model(0.0)
    r = frozen_test(model, data, batch_size=4, n_random=5, n_dims=2)
    assert r["effect_size"] == 0 and not r["passes"]
    assert r["entropy"]["confident"] == r["entropy"]["zero"] == r["entropy"]["random"]


def test_frozen_test_finds_the_dimensions_that_move_entropy():
    model, data = tiny_model(50.0, 30.0)     # a state that dominates the embedding
    r = frozen_test(model, data, batch_size=4, n_random=5, n_dims=2)
    assert r["entropy"]["confident"] < r["entropy"]["zero"] < r["entropy"]["uncertain"]
    assert r["effect_ci_low"] <= r["effect_size"] <= r["effect_ci_high"]
    assert set(r["confident_dims"]).isdisjoint(r["uncertain_dims"])
    assert r["sign_consistency"] == 1.0
    assert all(not p.requires_grad for p in model.parameters())          # frozen


@pytest.mark.slow
def test_pipeline_smoke_dry_run_resume_and_notebook(tmp_path, monkeypatch):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "LAB_DATA_DIR": str(SHAKESPEARE.parent.parent)}
    out = tmp_path / "pipe"
    # the second corpus offline: any local text file (here the project's own documentation)
    second = tmp_path / "second_corpus.txt"
    second.write_text("\n\n".join(p.read_text() for p in sorted(REPO.glob("**/*.md")) if ".pytest" not in str(p)))

    def run_all(*args):
        p = subprocess.run([sys.executable, "-m", "nanodesmo.run_all", "--smoke", "--out", str(out),
                            "--second-corpus", str(second), *args,
                            "train.max_iters=60", "train.eval_interval=30", f"paths.cache_dir={tmp_path / 'cache'}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p.stdout

    plan = run_all("--dry-run")
    assert "shakespeare: would run" in plan and not out.exists()          # a dry run writes nothing
    run_all()
    checklist = json.loads((out / "checklist.json").read_text())
    assert all(v for k, v in checklist["items"].items() if k.startswith(("figure", "every figure")))
    assert "perturbation/regime-reactions.png" in (out / "figures" / "README.md").read_text()
    for run in ("self_analysis", "regimes_all", "baseline", "vanilla_regimes"):
        assert (out / "shakespeare" / run / "metrics.json").exists()
        assert (out / "shakespeare" / run / "reaction_log.jsonl").exists()
    frozen = json.loads((out / "shakespeare" / "frozen_test" / "frozen_test_results.json").read_text())
    assert frozen["effect_size"] >= 0 and "confident_dims" in frozen
    assert (out / "shakespeare" / "regimes_all" / "regime_deltas" / "regime_deltas.csv").exists()
    assert (out / "openwebtext" / "frozen_test" / "frozen_test_results.json").exists()
    for corpus in ("shakespeare", "openwebtext"):
        desmotic = (out / corpus / "regimes_all" / "desmotic" / "desmotic_metrics.csv").read_text().splitlines()
        assert len(desmotic) == 1 + 60 and "valence" in desmotic[0]                   # a row per step
        assert (out / "figures" / "composite" / f"{corpus}-desmotic_affect.png").exists()
    for table in ("memory/memory_decay_summary.csv", "controls/controls_comparison.csv",
                  "swaps_resumed/swaps_summary.csv", "shakespeare/regimes_all/separability/separability.json"):
        assert (out / table).exists(), table
    # the swapped runs resumed half way (step 30 of 60) with the other run's state, and went on to the end
    for name in ("a_swapped", "b_swapped"):
        steps = [r["step"] for r in read_step_log(out / "swaps_resumed" / name / "reaction_log.jsonl") if "loss" in r]
        assert steps == list(range(30, 60))
    a = torch.load(out / "swaps" / "swap_a" / "checkpoints" / "step_30.ckpt", weights_only=False)["state_dict"]
    b_swapped = torch.load(out / "swaps_resumed" / "b_swapped" / "start.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(b_swapped["model.self_state.state"], a["model.self_state.state"])
    again = run_all("--resume")
    assert again.count(": skipped") == 25 and "running" not in again       # every phase skipped
    monkeypatch.setenv("LAB_NANODESMO_OUT", str(out))
    outputs = execute_notebook("nanodesmo.ipynb", monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) == 3   # reactions, frozen test, deltas


def synthetic_log(n=400, seed=0):
    import numpy as np
    g = np.random.default_rng(seed)
    log = []
    for s in range(n):
        fog, wave = 100 <= s < 200, 250 <= s < 350
        loss = 2.0 + 0.1 * g.normal() + (1.0 if fog else 0.0)
        log.append({"step": s, "loss": loss, "stats_entropy": 3 + 0.1 * g.normal() - (0.8 if wave else 0.0),
                    "stats_top1_conf": 0.3, "grad_norm": 1.0, "self_norm": 1.0, "self_delta": 0.1, "self_drift": 0.0,
                    "regime_fog": float(fog), "regime_wave": float(wave)})
    for r in log:   # state_effect(t) = loss(t + 5), every 10 steps
        if r["step"] % 10 == 0 and r["step"] + 5 < n:
            r["state_effect"] = log[r["step"] + 5]["loss"]
    return log


def test_separability_tells_regimes_apart_and_shuffled_labels_do_not():
    from nanodesmo.analyses import separability
    r = separability(synthetic_log(), shuffles=10)
    assert r["counts"] == {"none": 20, "fog": 10, "wave": 10}
    assert r["accuracy"] >= 0.95 and r["shuffled_mean"] < 0.7 and r["p_value"] <= 1 / 11 + 1e-9


def test_leadlag_peaks_at_the_lag_built_in():
    from nanodesmo.analyses import leadlag
    rows = leadlag(synthetic_log(), max_lag=10)
    best = max(rows, key=lambda r: r["r_loss"])
    assert best["lag"] == 5 and best["r_loss"] == pytest.approx(1.0)


def test_memory_decay_counts_the_steps_back_to_baseline():
    from nanodesmo.analyses import memory_decay
    drift = [0.1] * 50 + [1.0] * 10 + [0.5, 0.3, 0.15, 0.12, 0.1] + [0.1] * 10
    log = [{"step": s, "self_drift": d, "loss": 2.0 + (s >= 50 and s < 60), "regime_bew": float(50 <= s < 60)}
           for s, d in enumerate(drift)]
    r = memory_decay(log)
    assert (r["window_start"], r["window_end"]) == (50, 60)
    assert r["drift_baseline"] == pytest.approx(0.1) and r["drift_peak"] == pytest.approx(1.0)
    assert r["decay_steps"] == 2           # 0.15 <= 0.1 + 0.1 * 0.9 = 0.19 first at step 62
    assert r["loss_delta"] == pytest.approx(1.0)


def test_mlp_analysis_finds_the_statistic_the_update_reads():
    from nanodesmo.analyses import mlp_analysis
    model, _ = tiny_model(1.0)
    with torch.no_grad():
        model.self_state.trunk.weight[:, 1:] = 0          # the update reads the loss statistic only
    log = [{"step": s, "stats_loss": 3 - s / 50, "stats_grad_norm": 1 + (s % 3), "stats_step_frac": s / 100,
            "stats_entropy": 2.0, "stats_top1_conf": 0.3, "self_delta": 0.1, "regime_fog": float(20 <= s < 30)}
           for s in range(100)]
    sensitivity, by_regime = mlp_analysis(model, log)
    effect = {r["statistic"]: r["mean_abs_jacobian"] for r in sensitivity}
    assert effect["loss"] > 0 and all(effect[n] == 0 for n in ("grad_norm", "step_frac", "entropy", "top1_conf"))
    assert {r["regime"]: r["steps"] for r in by_regime} == {"none": 90, "fog": 10}


def trajectory_log(n=300):
    """A state walking a straight line at unit speed in calm steps, leaving its plane during a
    `kick` window (steps 100-120: a zig-zag along a fifth axis); state_effect every 10 steps, halved
    during the kick."""
    import numpy as np
    log = []
    for t in range(n):
        kick = 100 <= t < 120
        s = np.zeros(8)
        s[0] = t
        s[1] = np.sin(t / 7)               # calm motion spans axes 0 and 1 (and a mean)
        s[5] = (t % 2) * 3.0 if kick else 0.0
        r = {"step": t, "loss": 2.0 + (1.0 if kick else 0.0) + 0.01 * np.sin(t), "self_state": s.tolist(),
             "regime_kick": float(kick)}
        if t % 10 == 0:
            r["state_effect"] = 0.5 if kick else 1.0
        log.append(r)
    return log


def test_desmotic_metrics_of_a_known_trajectory():
    import numpy as np

    from nanodesmo.desmotic import by_regime, desmotic_metrics
    rows, summary = desmotic_metrics(trajectory_log())
    calm = [r for r in rows if r["regime"] == "calm" and r["step"] > 2 and not 100 <= r["step"] < 123]  # settled
    kick = [r for r in rows if r["regime"] == "kick"]
    # calm: speed sqrt(1 + (d sin)^2), nearly straight; the kick zig-zags (+1, +-3): turning angle arccos(-0.8)
    assert all(1.0 <= r["speed"] <= 1.02 for r in calm)
    assert max(r["curvature"] for r in calm) < 0.05
    assert [r["curvature"] for r in kick[2:]] == pytest.approx([np.arccos(-0.8)] * 18, abs=0.01)
    # the calm states lie in a plane the rank-4 PCA holds; the kick leaves it along axis 5
    assert max(r["pca_distance"] for r in calm) < 1e-9 and max(r["pca_distance"] for r in kick) == pytest.approx(3.0)
    # control: I* = median calm effect 1.0; ln(1/1) = 0 calm; ln(1/0.5) during the kick
    assert summary["I_star"] == 1.0
    assert all(r["control"] == pytest.approx(0.0) for r in calm)
    assert kick[-1]["control"] == pytest.approx(np.log(2))
    # z-scores are against calm steps: mean 0 there; the kick is intense and unpleasant
    means = {g["regime"]: g for g in by_regime(rows)}
    assert abs(means["calm"]["z_pca_distance"]) < 1e-9
    assert means["kick"]["intensity"] > 3 * means["calm"]["intensity"]
    assert means["kick"]["valence"] < 0 < means["kick"]["z_loss_surprise"]
    # a constant component (the calm loss surprise is not constant, but control is): left out, not NaN-poisoning
    assert "control" not in summary["intensity_components"] and np.isfinite(means["kick"]["intensity"])


def test_desmotic_metrics_need_a_state_trajectory():
    from nanodesmo.desmotic import desmotic_metrics
    with pytest.raises(ValueError, match="self_state trajectory"):
        desmotic_metrics([{"step": t, "loss": 1.0, "regime_a": 0.0} for t in range(50)])
