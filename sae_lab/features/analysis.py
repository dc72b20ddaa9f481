"""Step 3, per layer: which SAE features separate the two groups, and what they do to the model.

1. Group features: each feature's activation per sample (mean over the sample's tokens); Cohen's d
   between the groups on the training templates, d = (mu_A - mu_B) / (sqrt((s_A^2 + s_B^2) / 2) + 1e-8);
   the `top_k` largest toward each group, with feature cards of their top contexts.
2. The group probe: a logistic regression on the model's downstream representation (the last
   layer's output, mean-pooled over real tokens), trained on clean training templates, judged on
   held-out templates.
3. Ablation, measured on the model: the `n_intervene` top features toward each group removed at this
   layer in the forward pass; the effect is the drop of the probe's margin (logit of the true group
   minus the other) on held-out samples. The control: `n_random` sets of as many random live
   features. Reported: the group set's effect, the random sets', the difference with a bootstrap CI
   over samples, and the share of random sets doing at least as much (a permutation p).
4. Dose-response: the top features toward group A scaled by each factor (0 = ablation, 1 = none,
   2, 4 = amplification), the probe's mean P(A) on held-out samples; the same for a random set.
   A measured curve: nothing forces it to be linear or monotone.
Models with an LM head also get the logit difference between group-associated tokens
(`analysis.group_tokens`) under the same interventions, and (5.) greedy continuations of the first
`analysis.generate.prompts` held-out samples unchanged, with the group features ablated, with each
group's features amplified by the largest factor, and with a random set ablated (generations.json).
"""

from __future__ import annotations

import logging

import numpy as np

from labcore.task import Task
from labcore.validate import ConfigError, get, positive_int, require
from sae_lab.features import common

log = logging.getLogger(__name__)


def cohens_d_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per column: (mean_a - mean_b) / (sqrt((var_a + var_b) / 2) + 1e-8), population variances (the
    original study's formula; a column constant in both groups gives 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a.mean(0) - b.mean(0)) / (np.sqrt((a.var(0) + b.var(0)) / 2) + 1e-8)


def per_sample_means(z_rows: np.ndarray, rows_sample: np.ndarray, n_samples: int) -> np.ndarray:
    """[samples, features]: the mean of each feature over each sample's rows."""
    sums = np.zeros((n_samples, z_rows.shape[1]), dtype=np.float64)
    np.add.at(sums, rows_sample, z_rows)
    counts = np.bincount(rows_sample, minlength=n_samples).astype(np.float64)
    return sums / np.maximum(counts, 1)[:, None]


def encode_rows(sae, acts, rows_sample: np.ndarray, n_samples: int, chunk: int = 8192):
    """One pass over a layer's rows in chunks (a full code matrix of a large extraction would not
    fit in memory): (per-sample mean of every feature [samples, d_sae], how often each fires [d_sae])."""
    import torch
    sums = torch.zeros(n_samples, sae.d_sae, dtype=torch.float64)
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, len(acts), chunk):
            z = sae.encode(torch.as_tensor(np.asarray(acts[s:s + chunk], dtype=np.float32)))
            sums.index_add_(0, torch.as_tensor(rows_sample[s:s + chunk]), z.double())
            fires += (z > 0).sum(0)
    counts = np.bincount(rows_sample, minlength=n_samples).astype(np.float64)
    return sums.numpy() / np.maximum(counts, 1)[:, None], fires.numpy() / max(len(acts), 1)


def feature_columns(sae, acts, features: list[int], chunk: int = 8192) -> dict[int, np.ndarray]:
    """The activations of a few features on every row (for their cards)."""
    import torch
    cols = []
    with torch.no_grad():
        for s in range(0, len(acts), chunk):
            cols.append(sae.encode(torch.as_tensor(np.asarray(acts[s:s + chunk], dtype=np.float32)))[:, features].numpy())
    stacked = np.concatenate(cols) if cols else np.zeros((0, len(features)))
    return {f: stacked[:, i] for i, f in enumerate(features)}


def group_features(d: np.ndarray, top_k: int, label_names: list[str]) -> list[dict]:
    """The top_k features with the largest d toward each group (d > 0: toward label_names[0])."""
    order = np.argsort(-d, kind="stable")
    toward_a = [int(f) for f in order[:top_k] if d[f] > 0]
    toward_b = [int(f) for f in order[::-1][:top_k] if d[f] < 0]
    return ([{"feature": f, "cohens_d": float(d[f]), "toward": label_names[0]} for f in toward_a]
            + [{"feature": f, "cohens_d": float(d[f]), "toward": label_names[1]} for f in toward_b])


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: the probe's logit of the true group minus the other group's (two groups)."""
    true = logits[np.arange(len(labels)), labels]
    return true - logits[np.arange(len(labels)), 1 - labels]


def p_group_a(logits: np.ndarray) -> np.ndarray:
    """P(group 0) under the probe."""
    return 1.0 / (1.0 + np.exp(-(logits[:, 0] - logits[:, 1])))


class AnalyseTask(Task):
    def validate(self) -> None:
        cfg = self.cfg
        self.spec = common.model_spec(cfg)
        self.n_layers = self.spec.layout().n_layers
        self.layer = common.layer(cfg, self.n_layers)
        self.top_k = positive_int(cfg, "analysis.top_k")
        self.n_intervene = positive_int(cfg, "analysis.n_intervene")
        self.n_random = positive_int(cfg, "analysis.n_random")
        self.n_contexts = positive_int(cfg, "analysis.card_contexts")
        self.factors = [float(f) for f in require(
            cfg, "analysis.factors", lambda v: len(v) >= 2 and all(isinstance(f, (int, float)) and f >= 0 for f in v),
            "must be a list of at least two factors >= 0")]
        if 1.0 not in self.factors:
            self.factors = sorted([*self.factors, 1.0])       # the unchanged model anchors every curve
        self.group_tokens = get(cfg, "analysis.group_tokens") if "group_tokens" in cfg.analysis else None
        # greedy continuations under each intervention, for models that generate (0 prompts: none)
        self.generate_prompts = (require(cfg, "analysis.generate.prompts", lambda v: isinstance(v, int) and v >= 0,
                                         "must be an int >= 0 (0: no generated text)")
                                 if "generate" in cfg.analysis else 0)
        self.max_new_tokens = positive_int(cfg, "analysis.generate.max_new_tokens") if self.generate_prompts else 0
        self.settings = common.extract_settings(cfg)
        self.data = common.dataset(cfg)
        if len(self.data.label_names) != 2:
            raise ConfigError("dataset", f"the group analysis compares two groups; the data has "
                              f"{len(self.data.label_names)}: {self.data.label_names}")
        self.extraction = common.extraction_dir(cfg)
        self.sae_path = common.sae_dir(cfg, self.layer) / "sae"

    def prepare(self) -> None:
        from labcore.layer_extraction import read_extraction
        from sae_lab.saelens_io import load_sae
        self.meta = read_extraction(self.extraction)
        if not (self.sae_path / "cfg.json").exists():
            raise FileNotFoundError(f"{self.sae_path}: layer {self.layer}'s SAE is missing: run the sae step first")
        self.sae, _ = load_sae(self.sae_path)
        self.sae.eval()

    def analyse(self) -> dict[str, float]:
        import torch

        from labcore.artifacts import atomic_write_json
        from labcore.layer_extraction import load_layer, load_rows
        from labcore.probe import LogisticProbe
        from labcore.stats import bootstrap_ci
        from labcore.tables import write_csv
        from sae_lab.features import figures
        from sae_lab.features.cards import write_cards
        from sae_lab.features.interventions import feature_edit, pooled_outputs

        data, sae, layer = self.data, self.sae, self.layer
        labels = np.asarray(data.labels)
        split = np.load(self.extraction / "split.npy")
        train = np.flatnonzero(split != "heldout")
        heldout = np.flatnonzero(split == "heldout")
        if len(heldout) == 0:      # no held-out templates: hold out a seeded 30% of the samples
            perm = np.random.default_rng(self.cfg.features.split_seed).permutation(len(labels))
            heldout, train = np.sort(perm[: len(perm) * 3 // 10]), np.sort(perm[len(perm) * 3 // 10:])
        # 1. group features
        rows = load_rows(self.extraction)
        acts = load_layer(self.extraction, layer)
        per_sample, firing_rate = encode_rows(sae, acts, rows["sample"], len(labels))
        tr = per_sample[train]
        d = cohens_d_columns(tr[labels[train] == 0], tr[labels[train] == 1])
        features = group_features(d, self.top_k, data.label_names)
        toward = {g: [f["feature"] for f in features if f["toward"] == g][: self.n_intervene] for g in data.label_names}
        both = toward[data.label_names[0]] + toward[data.label_names[1]]
        alive = np.flatnonzero(firing_rate > 0)
        write_csv(self.output_dir / "cohens_d.csv",
                  [{"feature": int(f), "cohens_d": float(d[f]), "mean_" + data.label_names[0]: float(tr[labels[train] == 0, f].mean()),
                    "mean_" + data.label_names[1]: float(tr[labels[train] == 1, f].mean()),
                    "firing_rate": float(firing_rate[f])} for f in np.argsort(-np.abs(d))])
        write_cards(features, feature_columns(sae, acts, [f["feature"] for f in features]), rows, self.lm.tokenizer,
                    data.describe, data.label_names, labels, self.output_dir,
                    title=f"Layer {layer}: group features", n_contexts=self.n_contexts)

        # 2. the probe on the clean model
        lm, s = self.lm, self.settings
        logit_tokens = self._logit_tokens()
        run = lambda idx, edit=None: pooled_outputs(lm, data, idx, batch_size=s["batch_size"], max_length=s["max_length"],
                                                    edit_layer=layer, edit=edit, read_layer=self.n_layers - 1,
                                                    logits_tokens=logit_tokens)
        clean_train, _ = run(train)
        probe = LogisticProbe.fit(clean_train, labels[train], seed=self.cfg.seed, per_feature_scale=False)
        clean_held, clean_diff = run(heldout)
        y = labels[heldout]
        clean_logits = probe.logits(clean_held)
        clean_margin = margins(clean_logits, y)

        # 3. ablation of the group features vs random features of equal count
        rng = np.random.default_rng(self.cfg.seed)
        pool = np.setdiff1d(alive, both)
        if len(pool) < len(both) or not both:
            raise ValueError(f"layer {layer}: {len(both)} group features and {len(pool)} other live features: "
                             "too few for a random control of equal size")
        random_sets = [rng.choice(pool, size=len(both), replace=False) for _ in range(self.n_random)]

        def ablated(feature_set):
            rep, diff = run(heldout, feature_edit(sae, torch.as_tensor(np.asarray(feature_set)), 0.0))
            logits = probe.logits(rep)
            return clean_margin - margins(logits, y), float((logits.argmax(1) == y).mean()), diff

        group_drop, group_acc, group_diff = ablated(both)
        random_results = [ablated(r) for r in random_sets]
        random_drops = np.stack([r[0] for r in random_results])                 # [sets, samples]
        excess = group_drop - random_drops.mean(0)                               # per sample
        ci = bootstrap_ci(excess, n_resamples=10_000, seed=self.cfg.seed)
        random_effects = random_drops.mean(1)
        p_perm = float((1 + (random_effects >= group_drop.mean()).sum()) / (1 + len(random_effects)))
        ablation = {"n_features": len(both), "group_features": both,
                    "clean_accuracy": float((clean_logits.argmax(1) == y).mean()),
                    "group_ablated_accuracy": group_acc,
                    "random_ablated_accuracy_mean": float(np.mean([r[1] for r in random_results])),
                    "group_margin_drop": float(group_drop.mean()),
                    "random_margin_drop_mean": float(random_effects.mean()),
                    "random_margin_drops": [float(v) for v in random_effects],
                    "excess_drop": float(excess.mean()), "excess_drop_ci": list(ci), "permutation_p": p_perm,
                    "n_heldout": int(len(heldout)), "n_random": self.n_random}
        if clean_diff is not None:
            ablation["group_logit_diff_change"] = float((group_diff - clean_diff).mean())
            ablation["random_logit_diff_change_mean"] = float(np.mean([(r[2] - clean_diff).mean() for r in random_results]))

        # 4. dose-response: the features toward group A (and a random set of as many) scaled
        group_a = toward[data.label_names[0]]
        curves = []
        sets = {f"toward {data.label_names[0]}": group_a, f"toward {data.label_names[1]}": toward[data.label_names[1]],
                "random": list(random_sets[0][: len(group_a)])}
        for name, feature_set in sets.items():
            if not feature_set:
                continue
            for factor in self.factors:
                rep, diff = (clean_held, clean_diff) if factor == 1.0 else run(
                    heldout, feature_edit(sae, torch.as_tensor(np.asarray(feature_set)), factor))
                logits = probe.logits(rep)
                row = {"set": name, "factor": factor, "n_features": len(feature_set),
                       f"p_{data.label_names[0]}": float(p_group_a(logits).mean()),
                       "accuracy": float((logits.argmax(1) == y).mean()), "margin": float(margins(logits, y).mean())}
                if diff is not None:
                    row["logit_diff"] = float(diff.mean())
                curves.append(row)
        write_csv(self.output_dir / "dose_response.csv", curves)

        # 5. what the model then writes: greedy continuations of held-out prompts, each intervention
        generations = self._generations(heldout, toward, both, random_sets[0]) if self.generate_prompts else []
        if generations:
            atomic_write_json(self.output_dir / "generations.json", generations)

        paths = figures.layer_figures(layer, d, features, ablation, curves, data.label_names, self.figures_dir)
        result = {"layer": layer, "label_names": list(data.label_names), "n_train_samples": int(len(train)),
                  "n_heldout_samples": int(len(heldout)), "probe_clean_heldout_accuracy": ablation["clean_accuracy"],
                  "features": features, "ablation": ablation, "dose_response": curves,
                  "max_abs_cohens_d": float(np.abs(d).max()), "alive_features": int(len(alive)),
                  "figures": [str(p.relative_to(self.output_dir)) for p in paths],
                  "logits_measured": clean_diff is not None, "generations": generations}
        atomic_write_json(self.output_dir / "analysis.json", result)
        return {"layer": float(layer), "max_abs_cohens_d": result["max_abs_cohens_d"],
                "probe_clean_accuracy": ablation["clean_accuracy"],
                "group_ablated_accuracy": group_acc, "random_ablated_accuracy": ablation["random_ablated_accuracy_mean"],
                "group_margin_drop": ablation["group_margin_drop"],
                "random_margin_drop": ablation["random_margin_drop_mean"],
                "excess_drop_ci_low": ci[0], "excess_drop_ci_high": ci[1], "permutation_p": p_perm}

    @property
    def lm(self):
        if not hasattr(self, "_lm"):
            self._lm = self.spec.load()
        return self._lm

    def _generations(self, heldout, toward, both, random_set) -> list[dict]:
        """Greedy continuations of the first held-out samples with the model unchanged, the group
        features ablated, each group's features amplified by the largest factor, and a random set of
        equal size ablated; [] (with a note in the log) when the model has no LM head."""
        import torch

        from labcore.layer_extraction import resid_hook
        from sae_lab.features.interventions import feature_edit
        if not self.lm.generates:
            log.info("analysis.generate: %s does not generate text (no causal LM head): no generations",
                     self.lm.name)
            return []
        names, top = self.data.label_names, max(self.factors)
        as_tensor = lambda f: torch.as_tensor(np.asarray(f, dtype=np.int64))
        conditions = [("unchanged", None), ("group features ablated (x0)", feature_edit(self.sae, as_tensor(both), 0.0))]
        conditions += [(f"toward {g} amplified (x{top:g})", feature_edit(self.sae, as_tensor(toward[g]), top))
                       for g in names if toward[g]]
        conditions.append(("random features ablated (x0)", feature_edit(self.sae, as_tensor(random_set), 0.0)))
        rows = []
        for i in heldout[: self.generate_prompts]:
            batch = self.data.batch(self.lm, [int(i)], self.settings["max_length"])
            for name, edit in conditions:
                hooks = [(resid_hook(self.layer), edit)] if edit is not None else []
                with self.lm.model.hooks(hooks):
                    text = self.lm.generate(batch, self.max_new_tokens)
                rows.append({"sample": int(i), "prompt": self.data.describe(int(i)), "condition": name, "text": text})
        return rows

    def _logit_tokens(self):
        """(token ids of group A's words, of group B's) for models with an LM head and group_tokens set."""
        if not self.group_tokens:
            return None
        tok = self.lm.tokenizer
        ids = []
        for name in self.data.label_names:
            words = self.group_tokens.get(name)
            if not words:
                raise ConfigError("analysis.group_tokens", f"needs words for group {name!r}")
            ids.append([tok.encode(w, add_special_tokens=False)[0] for w in words])
        return tuple(ids)

    def summary(self, metrics):
        return list(metrics.items())
