"""The spectra studies as analysis-only jobs (`labcore.task.Task`), picked by `experiment=`:

    Observe    EXP0  q-norm vs attention metrics per token and head; significant and consistent heads
    QScale     EXP1  scale a target and a control head's query by each alpha; metric curves
    Gain       EXP2  gain = slope of each metric on ln(alpha), for the chosen heads or every head
    QKControl  EXP3  scale the target head's query, then its key-value head's key: for a head with
                     its own key-value head the curves coincide; a shared key moves its whole group

Everything the config names (model layout, layer and head indices, alphas, metric names, the text
source) is checked in `validate`, before any weights load or any forward pass. Tables go to
`tables/` (CSV), figures to `figures/`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labcore.output import progress_bar
from labcore.tables import CsvStream, write_csv
from labcore.task import Task
from labcore.validate import ConfigError, get, instantiate_or_explain, positive_int, require
from spectra.metrics import METRICS

STUDIED = [m for m in METRICS if m != "q_norm"]


class SpectraTask(Task):
    """What every study shares: model spec and layout, text samples, batches, checked indices."""

    def validate(self) -> None:
        cfg = self.cfg
        self.spec = instantiate_or_explain(cfg, "model")
        if not (hasattr(self.spec, "layout") and hasattr(self.spec, "load")):
            raise ConfigError("model", f"{type(self.spec).__name__} is not a model to analyse: use a pretrained "
                              "preset (hf_minilm, gpt_char, hf_gpt2, hf_llama3_8b, hf_gemma3_4b)")
        self.layout = self.spec.layout()
        self.max_length = positive_int(cfg, "max_length")
        self.batch_size = positive_int(cfg, "batch_size")
        self.skip_first = require(cfg, "skip_first", lambda v: isinstance(v, int) and v >= 0,
                                  "must be an integer >= 0")
        self.metrics = self._metric_names("metrics")
        self.dataset = instantiate_or_explain(cfg, "dataset")
        if not hasattr(self.dataset, "texts"):
            raise ConfigError("dataset", f"{type(self.dataset).__name__} gives no text samples: use "
                              "shakespeare_text, text_samples (dataset.path=...) or slimpajama")
        try:
            self.texts = self.dataset.texts()
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError("dataset", str(e)) from None
        self.validate_study()

    def validate_study(self) -> None:
        pass

    def _metric_names(self, key: str) -> list[str]:
        names = require(self.cfg, key, lambda v: len(v) > 0 and all(isinstance(m, str) for m in v),
                        "must be a non-empty list of metric names")
        unknown = [m for m in names if m not in STUDIED]
        if unknown:
            raise ConfigError(key, f"unknown metric {unknown[0]!r}; known: {', '.join(STUDIED)}")
        return list(names)

    def _layer(self, key: str, value, default: int | None = None) -> int:
        return self._index(key, default if value is None else value, self.layout.n_layers, "layer", "layers")

    def _head(self, key: str, value, default: int | None = None) -> int:
        return self._index(key, default if value is None else value, self.layout.n_heads, "head",
                           "query heads per layer")

    @staticmethod
    def _index(key: str, value, n: int, what: str, unit: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n:
            raise ConfigError(key, f"{what} {value!r} does not exist: the model has {n} {unit} (0..{n - 1})")
        return value

    def _alphas(self, key: str) -> list[float]:
        alphas = require(self.cfg, key, lambda v: len(v) >= 2 and all(isinstance(a, (int, float)) for a in v),
                         "must be a list of at least two numbers")
        bad = [a for a in alphas if not a > 0]
        if bad:
            raise ConfigError(key, f"alpha {bad[0]} is not > 0: a scale must be positive (ln(alpha) is fitted)")
        if 1 not in alphas and 1.0 not in alphas:
            alphas = sorted([*alphas, 1.0])   # the unscaled model is every curve's reference point
        return sorted(float(a) for a in alphas)

    def _heads_to_scale(self) -> list[tuple[str, int, int]]:
        """(role, layer, head) of the intervention's target and control heads."""
        middle = self.layout.n_layers // 2
        def layer(key, default):
            return self._layer(key, get(self.cfg, key), default)

        def head(key, default):
            return self._head(key, get(self.cfg, key), default)
        target = ("target", layer("intervention.target.layer", middle), head("intervention.target.head", 0))
        control_layer = layer("intervention.control.layer", target[1])
        control_head = head("intervention.control.head", self.layout.n_heads - 1)
        heads = [target]
        if (control_layer, control_head) != target[1:]:
            heads.append(("control", control_layer, control_head))
        return heads

    def prepare(self) -> None:
        from spectra.probe import batches
        self.lm = self.spec.load()
        self.encoded = list(batches(self.lm, self.texts, self.max_length, self.batch_size))
        self.n_tokens = int(sum(int(b["attention_mask"].sum()) for _, b in self.encoded))
        print(f"[spectra] {self.lm.name}: {self.layout.n_layers} layers x {self.layout.n_heads} heads "
              f"({self.layout.n_kv_heads} key-value), {'causal' if self.layout.causal else 'bidirectional'}; "
              f"{len(self.texts)} samples, {self.n_tokens} tokens", flush=True)

    @property
    def tables_dir(self) -> Path:
        d = self.output_dir / "tables"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def summary(self, metrics: dict[str, float]) -> list[tuple[str, object]]:
        return [(k, v) for k, v in metrics.items() if k != "wall_time_s"] + [("tables", str(self.tables_dir))]


class Observe(SpectraTask):
    def validate_study(self) -> None:
        from spectra.observe import Significance
        cfg = self.cfg
        layers = get(cfg, "observe.layers")
        self.layers = (list(range(self.layout.n_layers)) if layers is None
                       else sorted({self._layer("observe.layers", v) for v in layers}))
        self.significance = Significance(
            p_max=require(cfg, "observe.p_max", lambda v: 0 < v < 1, "must be in (0, 1)"),
            min_abs_r=require(cfg, "observe.min_abs_r", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
            consistent_fraction=require(cfg, "observe.consistent_fraction", lambda v: 0 < v <= 1, "must be in (0, 1]"))
        self.scatter_heads = [(self._layer("observe.scatter_heads", lh[0]), self._head("observe.scatter_heads", lh[1]))
                              for lh in get(cfg, "observe.scatter_heads") or []]

    def analyse(self) -> dict[str, float]:
        from spectra import figures
        from spectra.observe import (SIGNIFICANT_COLUMNS, TOKEN_COLUMNS, HeadStats, ScatterSample, head_columns,
                                     head_summary_columns, significant_columns, token_columns)
        from spectra.probe import measure
        cfg, tables = self.cfg, self.tables_dir
        scatter = ScatterSample(int(cfg.observe.scatter_points), self.n_tokens, self.metrics, int(cfg.seed))
        stats = HeadStats(self.layout.n_layers, self.layout.n_heads, self.metrics, self.significance)
        write_tokens = bool(cfg.observe.token_table)
        # every table streams: what stays in memory is fixed by the model's shape (HeadStats, the scatter sample)
        with CsvStream(tables / "tokens.csv", TOKEN_COLUMNS) as tokens, \
                CsvStream(tables / "head_summary.csv", head_summary_columns(self.metrics)) as summary, \
                CsvStream(tables / "significant_heads.csv", SIGNIFICANT_COLUMNS) as significant, \
                progress_bar(len(self.texts), "observe", unit="samples") as bar:
            for start, batch in self.encoded:
                for layer, measured in measure(self.lm, batch, self.layers, skip_first=self.skip_first).items():
                    cols = head_columns(start, layer, measured, self.metrics)
                    summary.write(**cols)
                    significant.write(**significant_columns(cols, self.metrics, self.significance))
                    stats.add(cols)
                    scatter.add(layer, measured)
                    if write_tokens:
                        tokens.write(**token_columns(start, layer, measured, batch["input_ids"]))
                bar.update(len(batch["input_ids"]))
        if not write_tokens:
            (tables / "tokens.csv").unlink()
        heads = stats.head_rows()
        write_csv(tables / "consistent_heads.csv", [h for h in heads if h["consistent"]])
        write_csv(tables / "head_correlations.csv", heads)
        layers = stats.layer_rows()
        write_csv(tables / "layer_statistics.csv", layers)

        n_layers, n_heads = self.layout.n_layers, self.layout.n_heads
        for m in self.metrics:
            figures.heatmap([h for h in heads if h["metric"] == m], "mean_r", n_layers, n_heads,
                            f"Pearson r, q-norm vs {m} (mean over samples)", self.figures_dir / f"r_heatmap_{m}.png")
        figures.layer_statistics(layers, self.figures_dir / "layer_statistics.png")
        first = self.metrics[0]
        ranked = sorted((h for h in heads if h["metric"] == first and np.isfinite(h["mean_r"])),
                        key=lambda h: -abs(h["mean_r"]))
        chosen = list(dict.fromkeys(self.scatter_heads + [(h["layer"], h["head"]) for h in ranked[:int(cfg.observe.scatter_top)]]))
        for layer, head in chosen:
            r = {h["metric"]: h["mean_r"] for h in heads if (h["layer"], h["head"]) == (layer, head)}
            figures.scatter(scatter.points(layer, head), layer, head, self.metrics,
                            self.figures_dir / f"scatter_L{layer}_H{head}.png", r)

        metrics: dict[str, float] = {"n_samples": len(self.texts), "n_tokens": self.n_tokens,
                                     "n_token_rows": tokens.rows, "n_significant": significant.rows}
        for m in self.metrics:
            row = [x for x in layers if x["metric"] == m]
            n = sum(x["n"] for x in row)
            metrics[f"mean_abs_r_{m}"] = sum(x["mean_abs_r"] * x["n"] for x in row) / n if n else 0.0
            mine = [h for h in heads if h["metric"] == m]
            metrics[f"fraction_significant_{m}"] = float(np.mean([h["fraction_significant"] for h in mine]))
            metrics[f"consistent_heads_{m}"] = sum(h["consistent"] for h in mine)
        return metrics


class QScale(SpectraTask):
    """Response curves of the target and control heads to scaling (by default) their query."""

    def validate_study(self) -> None:
        self.heads = self._heads_to_scale()
        self.alphas = self._alphas("intervention.alphas")
        self.tensors = require(self.cfg, "intervention.tensors",
                               lambda v: len(v) > 0 and all(t in ("q", "k") for t in v), "must list 'q' and/or 'k'")

    def curves(self, heads: list[tuple[str, int, int]], tensors) -> tuple[list[dict], list[dict]]:
        """(per-sample rows, per-alpha summary) for scaling each head's query ("q") or its key-value
        head's key ("k", measured on every query head that reads it)."""
        from spectra.curves import curve_rows, summarise
        rows: list[dict] = []
        steps = len(heads) * len(tensors) * len(self.alphas) * len(self.encoded)
        with progress_bar(steps, type(self).__name__, unit="passes") as bar:
            for role, layer, head in heads:
                for tensor in tensors:
                    scaled = head if tensor == "q" else self.layout.kv_head(head)
                    measured = [head] if tensor == "q" else self.layout.query_heads(scaled)
                    new = curve_rows(self.lm, self.encoded, layer=layer, tensor=tensor, scaled_heads=(scaled,),
                                     alphas=self.alphas, measured_heads=measured, skip_first=self.skip_first,
                                     progress=lambda: bar.update(1))
                    for r in new:
                        r["role"] = role if r["head"] == head else "group"
                    rows += new
        summary = summarise(rows, STUDIED)
        roles = {(r["tensor"], r["layer"], r["head"], r["scaled"]): r["role"] for r in rows}
        for s in summary:
            s["role"] = roles[(s["tensor"], s["layer"], s["head"], s["scaled"])]
        return rows, summary

    def analyse(self) -> dict[str, float]:
        from spectra import figures
        from spectra.curves import gain_rows
        rows, summary = self.curves(self.heads, self.tensors)
        write_csv(self.tables_dir / "q_scale.csv", rows)
        write_csv(self.tables_dir / "q_scale_summary.csv", summary)
        gains = gain_rows(summary, STUDIED)
        metrics = {}
        for role, layer, head in self.heads:
            for tensor in self.tensors:
                select = {"layer": layer, "head": head, "tensor": tensor}
                figures.curves(summary, [(f"{role} L{layer}H{head}", select)], self.metrics,
                               self.figures_dir / f"intervention_{tensor}_L{layer}_H{head}_{role}.png",
                               f"scaling {tensor} of L{layer}H{head} ({role})")
                gain = next(g for g in gains if all(g[k] == v for k, v in select.items()) and g["scaled"].startswith(tensor))
                for m in self.metrics:
                    metrics[f"{role}_{tensor}_{m}_gain"] = gain[f"{m}_gain"]
        series = [(f"{role} L{layer}H{head}", {"layer": layer, "head": head, "tensor": self.tensors[0], "role": role})
                  for role, layer, head in self.heads]
        figures.curves(summary, series, self.metrics, self.figures_dir / "target_vs_control.png",
                       f"scaling {self.tensors[0]}: target vs control", delta=True)
        return metrics


class Gain(QScale):
    """Gain fits for the chosen heads (`gain.heads=chosen`) or every head (`gain.heads=all`)."""

    def validate_study(self) -> None:
        super().validate_study()
        self.all_heads = require(self.cfg, "gain.heads", lambda v: v in ("chosen", "all"),
                                 "must be 'chosen' or 'all'") == "all"
        self.percentiles = require(self.cfg, "gain.percentiles",
                                   lambda v: len(v) == 2 and 0 <= v[0] < v[1] <= 100, "must be [low, high] in 0..100")

    def analyse(self) -> dict[str, float]:
        from spectra import figures
        from spectra.curves import curve_rows, gain_rows, label_by_percentile, summarise
        if self.all_heads:
            # every query head of a layer scaled at once: at that layer each head reads only its own
            # query, so this measures exactly the single-head interventions (tests check it)
            rows = []
            all_heads = list(range(self.layout.n_heads))
            with progress_bar(self.layout.n_layers * len(self.alphas) * len(self.encoded), "gain", unit="passes") as bar:
                for layer in range(self.layout.n_layers):
                    rows += curve_rows(self.lm, self.encoded, layer=layer, tensor="q", scaled_heads=None,
                                       alphas=self.alphas, measured_heads=all_heads, skip_first=self.skip_first,
                                       progress=lambda: bar.update(1))
            summary = summarise(rows, STUDIED)
        else:
            rows, summary = self.curves(self.heads, ["q"])
        write_csv(self.tables_dir / "gain_curves.csv", summary)
        gains = gain_rows(summary, STUDIED)
        first = self.metrics[0]
        label_by_percentile(gains, f"{first}_gain", *self.percentiles)
        write_csv(self.tables_dir / "gain_summary.csv", gains)
        metrics: dict[str, float] = {}
        for role, layer, head in self.heads:
            gain = next(g for g in gains if (g["layer"], g["head"]) == (layer, head))
            where = {"layer": layer, "head": head, "tensor": "q", "scaled": gain["scaled"]}
            for m in self.metrics:
                figures.gain_fit(summary, where, gain, m, self.figures_dir / f"gain_fit_{m}_L{layer}_H{head}_{role}.png",
                                 f"L{layer}H{head} ({role}): {m} against ln(alpha)")
                metrics[f"{role}_{m}_gain"] = gain[f"{m}_gain"]
                metrics[f"{role}_{m}_r2"] = gain[f"{m}_r2"]
        chosen = [next(g for g in gains if (g["layer"], g["head"]) == (layer, head)) for _, layer, head in self.heads]
        figures.gain_bars(chosen, [f"{role} L{layer}H{head}" for role, layer, head in self.heads], self.metrics,
                          self.figures_dir / "gain_comparison.png")
        if self.all_heads:
            for m in self.metrics:
                figures.heatmap(gains, f"{m}_gain", self.layout.n_layers, self.layout.n_heads,
                                f"gain: d {m} / d ln(alpha)", self.figures_dir / f"gain_heatmap_{m}.png")
            values = np.array([g[f"{first}_gain"] for g in gains])
            metrics[f"median_abs_{first}_gain"] = float(np.nanmedian(np.abs(values)))
            metrics["n_high_gain_heads"] = sum(g["group"] == "high" for g in gains)
        return metrics


class QKControl(QScale):
    """Q vs K scaling of the target head; with a shared key-value head, its effect on the whole group."""

    def validate_study(self) -> None:
        super().validate_study()
        self.heads = self.heads[:1]   # the target

    def analyse(self) -> dict[str, float]:
        from spectra import figures
        from spectra.curves import gain_rows
        _, layer, head = self.heads[0]
        rows, summary = self.curves(self.heads, ["q", "k"])
        write_csv(self.tables_dir / "qk_comparison.csv", rows)
        write_csv(self.tables_dir / "qk_comparison_summary.csv", summary)
        gains = gain_rows(summary, STUDIED)
        kv = self.layout.kv_head(head)
        by = {(g["tensor"], g["head"]): g for g in gains}
        sensitivity = []
        for h in self.layout.query_heads(kv):
            row = {"layer": layer, "head": h, "kv_head": kv, "role": "target" if h == head else "group"}
            for m in STUDIED:
                k_gain = by[("k", h)][f"{m}_gain"]
                q_gain = by[("q", h)][f"{m}_gain"] if h == head else 0.0   # q of the target moves no other head
                row.update({f"{m}_q_gain": q_gain, f"{m}_k_gain": k_gain,
                            f"{m}_q_over_k": q_gain / k_gain if k_gain else float("nan")})
            sensitivity.append(row)
        write_csv(self.tables_dir / "sensitivity_summary.csv", sensitivity)

        target = {"layer": layer, "head": head}
        for m in self.metrics:
            figures.curves(summary, [("scale q", {**target, "tensor": "q"}), (f"scale k (KV head {kv})", {**target, "tensor": "k"})],
                           [m], self.figures_dir / f"qk_{m}_comparison_L{layer}_H{head}.png",
                           f"L{layer}H{head}: query vs key scaling")
        figures.curves(summary, [("scale q", {**target, "tensor": "q"}), (f"scale k (KV head {kv})", {**target, "tensor": "k"})],
                       self.metrics, self.figures_dir / f"qk_delta_L{layer}_H{head}.png",
                       f"L{layer}H{head}: change from alpha = 1", delta=True)
        if self.layout.group_size > 1:
            figures.curves(summary, [(f"H{h}", {"layer": layer, "head": h, "tensor": "k"}) for h in self.layout.query_heads(kv)],
                           self.metrics, self.figures_dir / f"qk_group_L{layer}_KV{kv}.png",
                           f"scaling KV head {kv} of layer {layer}: every query head of its group", delta=True)

        q = {r["alpha"]: r for r in summary if r["tensor"] == "q" and r["head"] == head}
        k = {r["alpha"]: r for r in summary if r["tensor"] == "k" and r["head"] == head}
        diff = max(abs(q[a][f"{m}_mean"] - k[a][f"{m}_mean"]) for a in q for m in self.metrics)
        target_row = sensitivity[[r["head"] for r in sensitivity].index(head)]
        metrics = {"max_abs_q_minus_k": float(diff), "group_size": self.layout.group_size}
        for m in self.metrics:
            metrics[f"{m}_q_over_k"] = target_row[f"{m}_q_over_k"]
        others = [r for r in sensitivity if r["head"] != head]
        if others:
            metrics[f"group_max_abs_{self.metrics[0]}_k_gain"] = max(abs(r[f"{self.metrics[0]}_k_gain"]) for r in others)
        return metrics
