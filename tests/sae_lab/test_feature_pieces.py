"""The feature pipeline's pieces on a tiny random-init BERT: multi-layer extraction (resume after an
interruption and after kill -9 gives the arrays of an uninterrupted run; NaN counted per layer),
layer ranges, the demo data, interventions (factor 1 is the identity, bit for bit; factor 0 is
ablation), Cohen's d; on a tiny GPT-2 with an LM head, the logit measure at the last real token and
generation steered by an edit."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from labcore.layer_extraction import extract_layers, load_layer, load_rows, read_extraction, resid_hook
from labcore.validate import ConfigError, parse_layers
from sae_lab.group_sentences import GroupSentences, HELDOUT_TEMPLATES, SUBJECTS, TEMPLATES
from tests.conftest import REPO
from tests.sae_lab.feature_fixtures import tiny_bert_dir, tiny_gpt2_dir, tiny_lm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def lm(model_dir):
    return tiny_lm(model_dir)


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    from labcore.models.pretrained import HFModel
    path = tiny_gpt2_dir(tmp_path_factory.mktemp("tiny_gpt2"))
    return HFModel(str(path), device="cpu", auto_class="AutoModelForCausalLM").load()


@pytest.fixture(scope="module")
def data():
    return GroupSentences()


def arrays(directory, layers):
    return {layer: np.array(load_layer(directory, layer)) for layer in layers} | {"tokens": np.load(directory / "tokens.npy")}


def test_group_sentences_cover_every_subject_in_every_template(data):
    n_subjects = sum(len(s) for s in SUBJECTS.values())
    assert len(data) == n_subjects * len(TEMPLATES)
    assert data.label_names == ["female", "male"] and np.bincount(data.labels).tolist() == [len(data) // 2] * 2
    assert (data.split == "heldout").sum() == n_subjects * HELDOUT_TEMPLATES
    heldout_texts = {t.split("{s}")[0] for t in TEMPLATES[-HELDOUT_TEMPLATES:]}
    assert all(any(data.texts[i].startswith(h) for h in heldout_texts) for i in np.flatnonzero(data.split == "heldout"))


def test_layer_ranges_parse_and_bad_ones_name_the_key():
    assert parse_layers("0-10,20-33", 34, "features.layers") == [*range(11), *range(20, 34)]
    assert parse_layers("all", 3, "k") == [0, 1, 2] and parse_layers(["1", 2], 3, "k") == [1, 2]
    for bad in ("0-34", "5-2", "1,1", "one", [], 2.0):
        with pytest.raises(ConfigError, match="^features.layers: "):
            parse_layers(bad, 34, "features.layers")


def test_extraction_stores_every_real_token_of_every_layer(lm, data, tmp_path):
    subset = _Subset(data, 40)
    meta = extract_layers(lm, subset, [0, 2], tmp_path / "x", batch_size=7, progress=False)
    rows = load_rows(tmp_path / "x")
    enc = lm.encode(subset.texts, 64)
    assert meta["rows"] == int(enc["attention_mask"].sum()) == len(rows["sample"])
    # the stored rows are the activations of a plain forward, token by token
    _, cache = lm.model.run_with_cache(**enc, names=[resid_hook(2)])
    expected = cache[resid_hook(2)][enc["attention_mask"].bool()].numpy()
    np.testing.assert_allclose(load_layer(tmp_path / "x", 2), expected, atol=1e-5)
    assert (rows["token"] == enc["input_ids"][enc["attention_mask"].bool()].numpy()).all()
    # a finished extraction is returned as is; another one in its directory is refused, naming what differs
    assert extract_layers(lm, subset, [0, 2], tmp_path / "x", batch_size=7, progress=False) == meta
    with pytest.raises(ValueError, match="layers: \\[0, 2\\] there, \\[0, 1\\] asked"):
        extract_layers(lm, subset, [0, 1], tmp_path / "x", batch_size=7, progress=False)


class _Subset:
    """The first n samples of a labelled dataset."""

    def __init__(self, data, n):
        self.data, self.n = data, n
        self.labels, self.label_names, self.split = data.labels[:n], data.label_names, data.split[:n]
        self.texts = data.texts[:n]

    def __len__(self):
        return self.n

    def describe(self, i):
        return self.data.describe(i)

    def batch(self, lm, indices, max_length):
        return self.data.batch(lm, indices, max_length)


def test_interrupted_extraction_resumes_to_the_same_arrays(lm, data, tmp_path):
    subset = _Subset(data, 60)
    reference = tmp_path / "reference"
    extract_layers(lm, subset, [0, 1, 2], reference, batch_size=8, checkpoint_every=16, progress=False)
    batches = {"n": 0}

    def die_at_batch_5(act, hook):
        batches["n"] += 1
        if batches["n"] == 5:
            raise KeyboardInterrupt       # stands for a kill between two checkpoints
    interrupted = tmp_path / "interrupted"
    with lm.model.hooks([(resid_hook(0), die_at_batch_5)]), pytest.raises(KeyboardInterrupt):
        extract_layers(lm, subset, [0, 1, 2], interrupted, batch_size=8, checkpoint_every=16, progress=False)
    # the 5th forward (one probes the width, then batches of 8) dies in samples 24-31: the last
    # checkpoint (every 16 samples) is after sample 16
    progress = json.loads((interrupted / "progress.json").read_text())
    assert progress["samples_done"] == 16 and not (interrupted / "extraction.json").exists()
    meta = extract_layers(lm, subset, [0, 1, 2], interrupted, batch_size=8, checkpoint_every=16, progress=False)
    assert meta["resumed_from_sample"] == 16 and not (interrupted / "progress.json").exists()
    got, want = arrays(interrupted, [0, 1, 2]), arrays(reference, [0, 1, 2])
    assert all(np.array_equal(got[k], want[k]) for k in want)


KILL_SCRIPT = """
import sys
from tests.sae_lab.feature_fixtures import tiny_lm
from sae_lab.group_sentences import GroupSentences
from labcore.layer_extraction import extract_layers
from pathlib import Path
extract_layers(tiny_lm(Path(sys.argv[1])), GroupSentences(), [0, 1, 2], sys.argv[2], batch_size=2,
               checkpoint_every=8, progress=False)
"""


@pytest.mark.slow
def test_kill_9_mid_extraction_then_rerun_gives_the_uninterrupted_arrays(lm, data, model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    target = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(model_dir), str(target)], cwd=REPO, env=env)
    try:
        while not (target / "progress.json").exists():      # the event: a checkpoint was written
            assert proc.poll() is None, "the extraction ended before its first checkpoint"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (target / "extraction.json").exists()           # killed mid-way: nothing looks finished
    with pytest.raises(FileNotFoundError, match="interrupted: re-run to resume it"):
        read_extraction(target)
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(model_dir), str(target)], cwd=REPO, env=env, check=True)
    assert read_extraction(target)["resumed_from_sample"] > 0
    reference = tmp_path / "reference"
    extract_layers(lm, data, [0, 1, 2], reference, batch_size=2, checkpoint_every=8, progress=False)
    got, want = arrays(target, [0, 1, 2]), arrays(reference, [0, 1, 2])
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_nan_in_one_layer_is_counted_there_and_downstream(lm, data, tmp_path):
    subset = _Subset(data, 24)

    def poison(act, hook):               # one NaN in layer 1's output, in the batch's first sample
        act = act.clone()
        act[0, 2, 5] = float("nan")
        return act
    with lm.model.hooks([(resid_hook(1), poison)]):
        meta = extract_layers(lm, subset, [0, 1, 2], tmp_path / "nan", batch_size=8, progress=False)
    counts = {int(layer): c for layer, c in meta["non_finite"].items()}
    assert counts[0] == {"values": 0, "rows": 0}
    assert counts[1] == {"values": 3, "rows": 3}              # one value in each of 3 batches
    assert counts[2]["values"] > counts[1]["values"]            # attention spreads it to the whole sample

    from labcore.activations import NonFiniteActivationsError
    from sae_lab.features.layer_sae import LayerSAETask
    task = LayerSAETask.__new__(LayerSAETask)
    task.extraction, task.layer, task.val_frac, task.split_seed = tmp_path / "nan", 2, 0.1, 0
    with pytest.raises(NonFiniteActivationsError, match="layer 2 has .* non-finite values"):
        task.prepare()


def test_factor_one_is_bit_identical_and_factor_zero_is_ablation(lm, data):
    from sae_lab.features.interventions import ablate, feature_edit
    from sae_lab.sae import build_sae
    torch.manual_seed(0)
    sae = build_sae("relu", 32, 128).eval()
    with torch.no_grad():
        sae.W_enc.normal_()                               # plenty of features firing
    features = torch.tensor([3, 17, 40, 99])
    batch = lm.encode(data.texts[:6], 32)
    clean = lm.forward(batch).last_hidden_state
    with torch.no_grad(), lm.model.hooks([(resid_hook(0), feature_edit(sae, features, 1.0))]):
        same = lm.forward(batch).last_hidden_state
    assert torch.equal(same, clean)

    seen = {}
    with torch.no_grad(), lm.model.hooks([(resid_hook(0), lambda a, h: seen.setdefault("x", a.clone())),
                                          (resid_hook(0), feature_edit(sae, features, 0.0)),
                                          (resid_hook(0), lambda a, h: seen.setdefault("edited", a.clone()))]):
        zeroed = lm.forward(batch).last_hidden_state
    assert torch.equal(seen["edited"], ablate(sae, seen["x"], features))
    assert not torch.allclose(zeroed, clean)
    with torch.no_grad():
        assert torch.equal(sae.encode(seen["edited"])[..., features] * 0, torch.zeros_like(sae.encode(seen["x"])[..., features]))
    with torch.no_grad(), lm.model.hooks([(resid_hook(0), lambda a, h: ablate(sae, a, features))]):
        assert torch.equal(lm.forward(batch).last_hidden_state, zeroed)


def test_cohens_d_matches_the_formula_and_picks_each_direction():
    from sae_lab.features.analysis import cohens_d_columns, group_features, per_sample_means
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(70, 4))
    a[:, 1] += 2.0
    b[:, 3] += 1.0
    d = cohens_d_columns(a, b)
    expected = (a.mean(0) - b.mean(0)) / (np.sqrt((a.var(0) + b.var(0)) / 2) + 1e-8)
    np.testing.assert_allclose(d, expected)
    picked = group_features(d, 1, ["A", "B"])
    assert [(f["feature"], f["toward"]) for f in picked] == [(1, "A"), (3, "B")]
    z = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    np.testing.assert_allclose(per_sample_means(z, np.array([0, 0, 1]), 2), [[2.0, 1.0], [5.0, 4.0]])


def test_chunked_encoding_matches_the_whole_code_matrix():
    from sae_lab.features.analysis import encode_rows, feature_columns, per_sample_means
    from sae_lab.sae import build_sae
    torch.manual_seed(1)
    sae = build_sae("relu", 16, 48).eval()
    acts = np.random.default_rng(0).normal(size=(100, 16)).astype(np.float32)
    rows_sample = np.sort(np.random.default_rng(1).integers(0, 9, 100))
    with torch.no_grad():
        z = sae.encode(torch.as_tensor(acts)).numpy()
    means, rate = encode_rows(sae, acts, rows_sample, 9, chunk=7)
    np.testing.assert_allclose(means, per_sample_means(z, rows_sample, 9), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rate, (z > 0).mean(0))
    cols = feature_columns(sae, acts, [3, 40], chunk=7)
    np.testing.assert_allclose(cols[3], z[:, 3], rtol=1e-5, atol=1e-6)     # chunks change GEMM blocking only
    np.testing.assert_allclose(cols[40], z[:, 40], rtol=1e-5, atol=1e-6)


def test_last_real_token_on_either_padding_side():
    from labcore.layer_extraction import last_real_token
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_real_token(mask).tolist() == [2, 4, 4]


def test_logit_measure_reads_each_samples_last_real_token(causal_lm, data):
    """Batched with right padding, the group-token logit difference equals each sample run alone."""
    from sae_lab.features.interventions import pooled_outputs
    indices = [0, 5, 300, 700, 1100]                               # sentences of different lengths
    a, b = [1010, 2016], [2002, 2010]                              # two token ids per group
    pooled, diffs = pooled_outputs(causal_lm, data, indices, batch_size=5, max_length=64, read_layer=1,
                                   logits_tokens=(a, b))
    lengths = {int(data.batch(causal_lm, [i], 64)["attention_mask"].sum()) for i in indices}
    assert len(lengths) > 1                                        # padding did happen in the batch
    for j, i in enumerate(indices):
        logits = causal_lm.forward(data.batch(causal_lm, [i], 64)).logits[0, -1]
        assert diffs[j] == pytest.approx(float(logits[a].mean() - logits[b].mean()), abs=1e-5)
    assert pooled.shape == (5, 32)


def test_generation_follows_an_edit_and_is_refused_without_an_lm_head(causal_lm, lm, data):
    from sae_lab.features.interventions import feature_edit
    from sae_lab.sae import build_sae
    torch.manual_seed(0)
    sae = build_sae("relu", 32, 128).eval()
    batch = data.batch(causal_lm, [3], 64)
    clean = causal_lm.generate(batch, 8)
    assert clean and clean == causal_lm.generate(batch, 8)          # greedy: deterministic
    with causal_lm.model.hooks([(resid_hook(0), feature_edit(sae, torch.arange(128), 1.0))]):
        assert causal_lm.generate(batch, 8) == clean               # factor 1 leaves the text alone
    steps = []
    with causal_lm.model.hooks([(resid_hook(0), lambda a, h: steps.append(a.shape[1]) or -3 * a)]):
        steered = causal_lm.generate(batch, 8)
    assert steered != clean
    assert steps[0] == batch["input_ids"].shape[1] and set(steps[1:]) == {1}   # the edit ran at every new token
    with pytest.raises(ValueError, match="one sample at a time"):
        causal_lm.generate(data.batch(causal_lm, [0, 1], 64), 4)
    assert not lm.generates
    with pytest.raises(ValueError, match="does not generate text"):
        lm.generate(data.batch(lm, [0], 64), 4)
