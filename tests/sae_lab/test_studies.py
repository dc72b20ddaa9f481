"""Named studies (sae_lab.studies, .selection, .study_report): selection rules, the consistency loss term,
and one tiny run of each study end to end."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from labcore import run
from labcore.validate import ConfigError
from sae_lab.training import SAETraining, reference_alignment
from sae_lab.sae import build_sae
from sae_lab.saelens_io import save_sae
from sae_lab.selection import ranking_key, select_adaptive_l0, select_consistency
from sae_lab.studies import main
from sae_lab.study_report import adaptive_l0_conclusion, edge_note, versus_random
from tests.conftest import REPO, TINY


# ---- selection rules on synthetic aggregate rows -----------------------------------------------

def row(k=None, ev=0.5, ci_low=0.40, random_high=0.30, delta=0.10, lam=None, alignment=None):
    r = {"group": f"k={k}" if lam is None else f"lambda={lam}", "k": k, "n_ok": 5,
         "explained_variance_mean": ev, "pwmcc_trained_ci_low": ci_low, "pwmcc_random_ci_high": random_high,
         "pwmcc_delta": delta}
    if lam is not None:
        r.update(consistency_lambda=lam, reference_alignment_mean=alignment)
    return r


def winner_k(rows, **kw):
    w = select_adaptive_l0(rows, **kw)["winner"]
    return None if w is None else w["k"]


def test_ranking_key_is_margin_then_delta_then_ev():
    assert ranking_key(row(ci_low=0.45, random_high=0.30, delta=0.2, ev=0.7)) == pytest.approx((0.15, 0.2, 0.7))


def test_margin_decides_before_delta_and_ev():
    rows = [row(k=8, ci_low=0.40, delta=0.30, ev=0.9), row(k=16, ci_low=0.41, delta=0.05, ev=0.3)]
    assert winner_k(rows) == 16


def test_ties_fall_through_to_delta_then_ev_then_smaller_k():
    assert winner_k([row(k=8, delta=0.10), row(k=16, delta=0.11)]) == 16
    assert winner_k([row(k=8, ev=0.61), row(k=16, ev=0.60)]) == 8
    assert winner_k([row(k=16), row(k=8)]) == 8


def test_ev_floor_excludes_the_best_ranked_k():
    sel = select_adaptive_l0([row(k=4, ev=0.15, ci_low=0.9), row(k=32, ev=0.20), row(k=64, ev=0.8, ci_low=0.3)])
    assert sel["winner"]["k"] == 32  # EV exactly at the floor passes
    by_k = {c["k"]: c for c in sel["candidates"]}
    assert not by_k[4]["eligible"] and "< floor 0.2" in by_k[4]["excluded_because"] and by_k[4]["rank"] is None
    assert [by_k[32]["rank"], by_k[64]["rank"]] == [1, 2]
    assert sel["candidates"][0]["k"] == 32  # the table lists the winner first


def test_no_candidate_passes_the_ev_floor():
    sel = select_adaptive_l0([row(k=4, ev=0.1), row(k=8, ev=0.19)])
    assert sel["winner"] is None and "no k passes" in sel["reason"]
    assert not any(c["eligible"] for c in sel["candidates"])


def test_groups_without_a_pwmcc_ci_are_not_ranked():
    sel = select_adaptive_l0([row(k=4, ci_low=float("nan"), ev=0.9), row(k=8, ci_low=0.2)])
    assert sel["winner"]["k"] == 8
    assert "no PWMCC CI" in next(c for c in sel["candidates"] if c["k"] == 4)["excluded_because"]


def test_consistency_respects_the_ev_budget_against_lambda_0():
    rows = [row(lam=0.0, ev=0.80, alignment=0.5), row(lam=1e-3, ev=0.75, ci_low=0.45, alignment=0.6),
            row(lam=2e-3, ev=0.70, ci_low=0.60, alignment=0.7)]
    sel = select_consistency(rows)
    assert sel["winner"]["consistency_lambda"] == 1e-3  # drop 0.05 is allowed, 0.10 is not
    lam = {c["consistency_lambda"]: c for c in sel["candidates"]}
    assert not lam[2e-3]["eligible"] and "EV drop" in lam[2e-3]["excluded_because"]
    assert lam[1e-3]["margin_gain"] == pytest.approx(0.05)


def test_consistency_alignment_breaks_ties_and_lambda_0_can_win():
    tied = [row(lam=0.0, alignment=0.5), row(lam=1e-4, alignment=0.7), row(lam=5e-4, alignment=0.6)]
    assert select_consistency(tied)["winner"]["consistency_lambda"] == 1e-4
    worse = [row(lam=0.0, alignment=0.5), row(lam=1e-4, ci_low=0.35, alignment=0.9)]
    assert select_consistency(worse)["winner"]["consistency_lambda"] == 0.0
    with pytest.raises(ValueError, match="lambda = 0"):
        select_consistency([row(lam=1e-4, alignment=0.5)])


def test_a_winner_at_the_edge_of_the_grid_is_flagged():
    assert "smallest value searched" in edge_note("k", 4, [4, 8, 64])
    assert "largest value searched" in edge_note("lambda", 2e-3, [0, 1e-3, 2e-3])
    assert edge_note("k", 8, [4, 8, 64]) == ""


def test_reports_name_the_seed_level_test_and_an_untestable_retrain():
    retrain = {**row(k=8, ci_low=0.50), "n_ok": 3, "seeds": "5 6 7", "pwmcc_trained_mean": 0.55,
               "pwmcc_trained_ci_high": 0.6, "pwmcc_random_mean": 0.25, "pwmcc_random_ci_low": 0.24,
               "p_value": 0.05, "p_min": 0.05, "cohens_d": 9.0, "conclusion": "insufficient_seeds"}
    sentence = versus_random(retrain)
    assert "permutation test over seed labels p = 0.05 (smallest attainable 0.05)" in sentence
    assert "bootstrap CIs over seeds" in sentence and "**insufficient_seeds**" in sentence
    text = adaptive_l0_conclusion(8, {**row(k=8), "seeds": "0 1 2"}, retrain)
    assert "cannot be tested against random dictionaries" in text and "do **not** agree" not in text
    assert "do **not** agree" in adaptive_l0_conclusion(8, row(k=8), {**retrain, "conclusion": "no_training_signal"})


# ---- the consistency loss term ---------------------------------------------------------------

def test_alignment_is_one_for_the_reference_up_to_permutation_and_sign():
    ref = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    same = ref[torch.randperm(16)] * torch.tensor([1.0, -1.0]).repeat(8)[:, None] * 3.0  # any scale
    assert 1 - reference_alignment(same, ref, chunk_size=5) == pytest.approx(0.0, abs=1e-6)


def test_penalty_is_positive_and_differentiable_elsewhere():
    torch.manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    w = torch.randn(12, 8, requires_grad=True)
    penalty = 1 - reference_alignment(w, ref, chunk_size=5)  # chunks of 5: the last one is partial
    assert 0 < penalty.item() < 1
    penalty.backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    # same value and gradient as differentiating the full cosine matrix
    w2 = w.detach().clone().requires_grad_(True)
    dense = 1 - (torch.nn.functional.normalize(w2, dim=1) @ ref.T).abs().amax(dim=1).mean()
    dense.backward()
    assert dense.item() == pytest.approx(penalty.item(), abs=1e-6)
    assert torch.allclose(w.grad, w2.grad, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")  # no Trainer here
def test_training_step_adds_lambda_times_the_penalty():
    torch.manual_seed(0)
    sae = build_sae("topk", 8, 16, k=4)
    ref = torch.randn(16, 8)
    x = torch.randn(32, 8)
    plain = SAETraining(sae, lr=1e-3, reference=ref).training_step(x, 0)
    regularised = SAETraining(sae, lr=1e-3, consistency_lambda=0.5, reference=ref)
    logged = {}
    regularised.log_dict = lambda values, **kw: logged.update(values)  # no Trainer to log to here
    loss = regularised.training_step(x, 0)
    penalty = 1 - reference_alignment(sae.W_dec, regularised.reference).item()
    assert (loss - plain).item() == pytest.approx(0.5 * penalty, rel=1e-5)
    assert float(logged["train/consistency"].detach()) == pytest.approx(0.5 * penalty, rel=1e-5)
    loss.backward()
    assert sae.W_dec.grad is not None and torch.isfinite(sae.W_dec.grad).all()


# ---- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key, fragment", [
    (["train.consistency_lambda=0.001"], "train.consistency_reference", "needs a reference SAE"),
    (["train.consistency_lambda=0.001", "train.consistency_reference=/nonexistent/sae"],
     "train.consistency_reference", "does not exist"),
    (["train.consistency_lambda=-1"], "train.consistency_lambda", ">= 0"),
])
def test_bad_consistency_config_names_the_key(tiny_cfg, tmp_path, overrides, key, fragment):
    with pytest.raises(ConfigError) as err:
        run(tiny_cfg(*overrides, f"paths.cache_dir={tmp_path / 'fresh_cache'}"))
    assert err.value.key == key and fragment in str(err.value)
    assert not (tmp_path / "fresh_cache").exists()  # refused before any compute


def test_reference_of_another_width_is_refused(tiny_cfg, tmp_path):
    save_sae(build_sae("topk", 16, 32, k=4), tmp_path / "ref", hook_name="h", model_name="m")  # TINY d_in is 32
    cfg = tiny_cfg("train.consistency_lambda=0.001", f"train.consistency_reference={tmp_path / 'ref'}")
    with pytest.raises(ConfigError, match="reference d_in=16 does not match sae.d_in=32"):
        run(cfg)


# ---- the orchestrators ---------------------------------------------------------------------------

def test_dry_run_prints_the_sweeps_and_owned_keys_are_refused(tmp_path, capsys):
    assert main(["adaptive_l0", "--dry-run", "--study-dir", str(tmp_path), "--k", "4,8", "trainer.max_epochs=3"]) == 0
    # the plan lists every stage; its command lines are the two sweeps
    search, retrain = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("$ ")]
    assert "experiment=adaptive_l0_search" in search and "sae.k=4,8" in search
    assert f"hydra.sweep.dir={tmp_path / 'search'}" in search and "trainer.max_epochs=3" in retrain
    assert "experiment=adaptive_l0_retrain" in retrain and "sae.k=<winner>" in retrain
    assert not any(tmp_path.iterdir())  # nothing ran
    with pytest.raises(SystemExit):
        main(["adaptive_l0", "sae.k=4,8"])
    assert "use --k" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["consistency_reg", "--lambdas", "1e-4,1e-3"])
    assert "must include 0" in capsys.readouterr().err


def study(name, *args, timeout=300):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "sae_lab.studies", name, "--resamples", "1000", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


# 3 seeds, not 2: two seeds give one seed pair, which has no bootstrap CI, so no group could be ranked.
@pytest.mark.slow
def test_adaptive_l0_study_end_to_end(tmp_path, cache_dir):
    tiny = [o for o in TINY if not o.startswith("sae.k=")]  # k is the study's
    study("adaptive_l0", "--study-dir", str(tmp_path), "--k", "4,8", "--seeds", "0,1,2", "--retrain-seeds", "5,6,7",
          *tiny, f"paths.cache_dir={cache_dir}")
    selection = json.loads((tmp_path / "selection.json").read_text())
    candidates = selection["candidates"]
    assert sorted(c["k"] for c in candidates) == [4, 8] and all(c["eligible"] for c in candidates)  # tiny EV > 0.2
    best = max(candidates, key=lambda c: (c["margin"], c["pwmcc_delta"], c["explained_variance_mean"]))
    k = selection["winner"]["k"]
    assert k == best["k"] and best["rank"] == 1
    assert selection["retrain"]["k"] == k and selection["retrain"]["n_ok"] == 3
    assert selection["retrain"]["seeds"] == "5 6 7"
    assert [st["stage"] for st in selection["stages"]] == ["search", "retrain"]
    assert f"sae.k={k}" in selection["stages"][1]["command"]
    with open(tmp_path / "search" / "aggregate" / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    summary = (tmp_path / "summary.md").read_text()
    assert f"## Retrain of k = {k}" in summary and "## Conclusion" in summary
    # 3 retrain seeds: the seed-level test cannot reach p < 0.05, and the summary says so
    assert "permutation test over seed labels" in summary and selection["retrain"]["conclusion"] == "insufficient_seeds"
    assert "cannot be tested against random dictionaries" in summary
    assert (tmp_path / "search.log").exists() and (tmp_path / "retrain.log").exists()


@pytest.mark.slow
def test_consistency_reg_study_end_to_end(tmp_path, cache_dir):
    study("consistency_reg", "--study-dir", str(tmp_path), "--lambdas", "0,0.5", "--seeds", "0,1,2",
          *TINY, f"paths.cache_dir={cache_dir}")
    selection = json.loads((tmp_path / "selection.json").read_text())
    reference = tmp_path / "reference" / "0" / "sae"
    assert selection["reference"] == str(reference) and (reference / "sae_weights.safetensors").exists()
    lam = {c["consistency_lambda"]: c for c in selection["candidates"]}
    assert set(lam) == {0.0, 0.5} and selection["winner"]["consistency_lambda"] in lam
    assert lam[0.0]["ev_drop"] == 0 and lam[0.0]["gain_vs_lambda0"] == 0
    # the term pulls the decoders towards the reference
    assert lam[0.5]["reference_alignment_mean"] > lam[0.0]["reference_alignment_mean"]
    assert lam[0.5]["gain_ci_low"] <= lam[0.5]["gain_vs_lambda0"] <= lam[0.5]["gain_ci_high"]
    jobs = [d for d in (tmp_path / "lambdas").iterdir() if d.name.isdigit()]
    assert len(jobs) == 6
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0 < metrics["reference_alignment"] <= 1
        assert "train/consistency" in (job / "logs" / "metrics.csv").read_text().splitlines()[0]
    summary = (tmp_path / "summary.md").read_text()
    assert "## Lambda sweep" in summary and "## Conclusion" in summary


def test_adaptive_l0_refuses_an_architecture_without_k(capsys):
    with pytest.raises(SystemExit) as e:
        main(["adaptive_l0", "sae=jumprelu", "--study-dir", "unused"])
    assert e.value.code == 2
    assert "sae=jumprelu has no sae.k" in capsys.readouterr().err


# The studies with the newer architectures: JumpReLU (thresholds, no k) through the consistency term,
# Matryoshka (prefixes as fractions of the tiny d_sae 64) through the k search and retrain.
@pytest.mark.slow
def test_consistency_reg_study_with_jumprelu(tmp_path, cache_dir):
    tiny = [o for o in TINY if not o.startswith("sae.k=")]
    study("consistency_reg", "--study-dir", str(tmp_path), "--lambdas", "0,0.5", "--seeds", "0,1,2",
          *tiny, f"paths.cache_dir={cache_dir}", "sae=jumprelu")
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert {c["consistency_lambda"] for c in selection["candidates"]} == {0.0, 0.5}
    for job in [d for d in (tmp_path / "lambdas").iterdir() if d.name.isdigit()]:
        assert json.loads((job / "sae" / "cfg.json").read_text())["architecture"] == "jumprelu"
    assert "## Conclusion" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_adaptive_l0_study_with_matryoshka(tmp_path, cache_dir):
    tiny = [o for o in TINY if not o.startswith("sae.k=")]
    study("adaptive_l0", "--study-dir", str(tmp_path), "--k", "4,8", "--seeds", "0,1,2", "--retrain-seeds", "5,6,7",
          *tiny, f"paths.cache_dir={cache_dir}", "sae=matryoshka")
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection["retrain"]["n_ok"] == 3
    job = next(d for d in (tmp_path / "retrain").iterdir() if d.name.isdigit())
    meta = json.loads((job / "sae" / "cfg.json").read_text())["metadata"]
    assert meta["interp_lab_architecture"] == "matryoshka"
    assert meta["interp_lab_config"]["prefixes"] == [4, 16, 64]
