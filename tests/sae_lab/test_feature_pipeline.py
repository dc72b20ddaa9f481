"""The feature pipeline end to end on a tiny random-init BERT: extract -> per-layer SAEs -> analyses
-> report, a re-run skipping everything, bad config refused before compute, the gemma-3 plan printed
offline, and the notebook reading the report."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, execute_notebook
from tests.sae_lab.feature_fixtures import tiny_bert_dir, tiny_gpt2_dir

TINY = ["trainer.max_epochs=2", "sae.d_sae=128", "sae.l1_coeff=1e-3", "train.warmup_steps=5",
        "analysis.n_random=4", "analysis.top_k=3", "analysis.n_intervene=2", "analysis.factors=[0,1,3]",
        "analysis.card_contexts=3", "extract.batch_size=128", "trainer.enable_progress_bar=false"]


def pipeline(*args, check=True):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "sae_lab.feature_pipeline", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_feature_pipeline_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    model = tiny_bert_dir(tmp_path / "tiny_bert")
    root = tmp_path / "features"
    args = ["experiment=feature_minilm", f"model.path={model}", f"features.dir={root}", *TINY]
    plan = pipeline(*args, "--dry-run").stdout
    assert "layers [0, 1, 2]" in plan and "sae: would run" in plan and not root.exists()
    pipeline(*args)

    meta = json.loads((root / "extraction" / "extraction.json").read_text())
    assert meta["layers"] == [0, 1, 2] and meta["samples"] == 1248
    report = json.loads((root / "report" / "report.json").read_text())
    assert [r["layer"] for r in report["layers"]] == [0, 1, 2]
    for r in report["layers"]:
        assert len(r["features"]) == 6 and r["ablation"]["n_random"] == 4
        factors = sorted({c["factor"] for c in r["dose_response"]})
        assert factors == [0.0, 1.0, 3.0]
        # factor 1 is the unchanged model: every set's curve passes through the clean probe accuracy
        assert {c["accuracy"] for c in r["dose_response"] if c["factor"] == 1.0} == {r["ablation"]["clean_accuracy"]}
        for f in r["figures"]:
            assert (root / "analysis" / f"layer_{r['layer']}" / f).exists()
        assert "**" in (root / "analysis" / f"layer_{r['layer']}" / "feature_cards.md").read_text()
    text = (root / "report" / "report.md").read_text()
    assert "| 2 |" in text and "![cross_layer](cross_layer.png)" in text
    assert (root / "report" / "cross_layer.png").exists()

    again = pipeline(*args).stdout
    assert again.count(": skipped") == 4                                   # every stage complete

    monkeypatch.setenv("LAB_FEATURES_DIR", str(root))
    outputs = execute_notebook("feature_pipeline.ipynb", monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) == 1          # the dose-response panels
    assert any("text/markdown" in o.get("data", {}) for o in outputs)                 # the feature card


@pytest.mark.slow
def test_a_generative_model_gets_logit_effects_and_steered_text(tmp_path):
    """On a tiny GPT-2 with an LM head: the group-token logit difference under every intervention,
    and greedy continuations per condition in analysis and report (the unchanged one equals the
    model's own generation)."""
    from labcore.models.pretrained import HFModel
    from sae_lab.group_sentences import GroupSentences
    model = tiny_gpt2_dir(tmp_path / "tiny_gpt2")
    root = tmp_path / "features"
    pipeline("experiment=feature_minilm", f"model.path={model}", "model.auto_class=AutoModelForCausalLM",
             f"features.dir={root}", "features.layers='1'", *TINY, "analysis.generate.prompts=2",
             "analysis.generate.max_new_tokens=6", "+analysis.group_tokens={female: [she, her], male: [he, his]}")
    result = json.loads((root / "analysis" / "layer_1" / "analysis.json").read_text())
    assert result["logits_measured"] and "group_logit_diff_change" in result["ablation"]
    unchanged = {c["logit_diff"] for c in result["dose_response"] if c["factor"] == 1.0}
    assert len(unchanged) == 1                                      # every curve starts from the same model
    assert len({c["logit_diff"] for c in result["dose_response"]}) > 1
    gens = json.loads((root / "analysis" / "layer_1" / "generations.json").read_text())
    assert [g["condition"] for g in gens[:5]] == ["unchanged", "group features ablated (x0)",
                                                   "toward female amplified (x3)", "toward male amplified (x3)",
                                                   "random features ablated (x0)"]
    assert len(gens) == 10 and len({g["sample"] for g in gens}) == 2
    lm = HFModel(str(model), device="cpu", auto_class="AutoModelForCausalLM").load()
    data = GroupSentences()
    assert gens[0]["text"] == lm.generate(data.batch(lm, [gens[0]["sample"]], 64), 6)
    assert gens[0]["prompt"] == data.describe(gens[0]["sample"])
    assert "Generated text" in (root / "report" / "report.md").read_text()


def test_bad_layers_are_refused_before_any_compute(tmp_path):
    model = tiny_bert_dir(tmp_path / "tiny_bert")
    p = pipeline("experiment=feature_minilm", f"model.path={model}", f"features.dir={tmp_path / 'f'}",
                 "features.layers='0-5'", check=False)
    assert p.returncode == 2 and "features.layers: layer 3 does not exist" in p.stderr
    assert not (tmp_path / "f").exists()


def test_the_original_gemma_setting_plans_offline(tmp_path):
    p = pipeline("experiment=feature_gemma3_captions", f"features.dir={tmp_path / 'g'}", "hydra/launcher=slurm_gpu",
                 "--dry-run")
    assert "layers [0, 1, 2," in p.stdout and "33]" in p.stdout and "an SAE per layer (34 jobs)" in p.stdout
    assert "hydra/launcher=slurm_gpu" in p.stdout and not (tmp_path / "g").exists()
