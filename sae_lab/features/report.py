"""Step 4: the report of a finished pipeline: every layer's numbers and figures in one Markdown page
and one JSON file, with cross-layer evolution figures.

    <features.dir>/report/report.md, report.json, cross_layer.png, dose_response_by_layer.png
"""

from __future__ import annotations

import json
from pathlib import Path


def read_layer_results(pipeline_dir: Path, layers: list[int]) -> list[dict]:
    results = []
    for layer in layers:
        path = pipeline_dir / "analysis" / f"layer_{layer}" / "analysis.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the analyse step for layer {layer}")
        result = json.loads(path.read_text())
        sae = pipeline_dir / "sae" / f"layer_{layer}" / "metrics.json"
        result["sae"] = json.loads(sae.read_text()) if sae.exists() else {}
        results.append(result)
    return results


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _generations_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    cell = lambda t: t.replace("|", "\\|").replace("\n", " ").strip() or "(nothing)"
    lines = ["", "Generated text (greedy, the features edited at every step):", "",
             "| prompt | condition | continuation |", "|---|---|---|"]
    return lines + [f"| {cell(g['prompt'])} | {g['condition']} | {cell(g['text'])} |" for g in rows]


def write_report(pipeline_dir: str | Path, layers: list[int], title: str = "Feature pipeline report") -> Path:
    from labcore.artifacts import atomic_write_json, atomic_write_text
    from sae_lab.features.figures import cross_layer_figures
    pipeline_dir = Path(pipeline_dir)
    out = pipeline_dir / "report"
    results = read_layer_results(pipeline_dir, layers)
    names = results[0]["label_names"]
    figures = cross_layer_figures(results, out)
    extraction = json.loads((pipeline_dir / "extraction" / "extraction.json").read_text())
    lines = [f"# {title}", "",
             f"Model `{extraction['model']}`, {extraction['samples']} samples ({extraction['rows']} token rows), "
             f"groups {names[0]} / {names[1]}, layers {layers}. Every effect below was measured by running the "
             "model with the features changed at that layer; the group probe reads the last layer's output "
             "(mean over real tokens) and is judged on held-out templates.", "",
             "Non-finite activations at extraction: " + (", ".join(
                 f"layer {l}: {c['values']}" for l, c in extraction["non_finite"].items() if c["values"]) or "none") + ".", "",
             *[f"![{Path(p).stem}]({Path(p).name})" for p in figures], "",
             "## Per layer", "",
             "| layer | SAE EV | SAE L0 | max abs d | probe acc (clean) | acc, group features ablated | acc, random ablated | "
             "margin drop: group | margin drop: random | excess drop [95% CI] | p (vs random sets) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["ablation"]
        lo, hi = a["excess_drop_ci"]
        lines.append(f"| {r['layer']} | {_fmt(r['sae'].get('explained_variance'))} | {_fmt(r['sae'].get('l0'), 1)} | "
                     f"{r['max_abs_cohens_d']:.2f} | {a['clean_accuracy']:.3f} | {a['group_ablated_accuracy']:.3f} | "
                     f"{a['random_ablated_accuracy_mean']:.3f} | {a['group_margin_drop']:.3f} | "
                     f"{a['random_margin_drop_mean']:.3f} | {a['excess_drop']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{a['permutation_p']:.3f} |")
    for r in results:
        layer_dir = f"../analysis/layer_{r['layer']}"
        a = r["ablation"]
        verdict = ("more than random features (the CI excludes 0)" if a["excess_drop_ci"][0] > 0 else
                   "no more than random features (the CI includes 0)" if a["excess_drop_ci"][1] >= 0 else
                   "less than random features")
        lines += ["", f"## Layer {r['layer']}", "",
                  f"Ablating the top {a['n_features']} group features {verdict}: margin drop "
                  f"{a['group_margin_drop']:.3f} vs {a['random_margin_drop_mean']:.3f} for {a['n_random']} random sets "
                  f"({a['n_heldout']} held-out samples). [Feature cards]({layer_dir}/feature_cards.md) "
                  f"([HTML]({layer_dir}/feature_cards.html)).", "",
                  "| feature | Cohen's d | toward |", "|---|---|---|",
                  *[f"| {f['feature']} | {f['cohens_d']:+.2f} | {f['toward']} |" for f in r["features"]], "",
                  "Dose-response (measured):", "", f"| set | factor | P({names[0]}) | accuracy | margin |",
                  "|---|---|---|---|---|",
                  *[f"| {c['set']} | {c['factor']:g} | {c[f'p_{names[0]}']:.3f} | {c['accuracy']:.3f} | {c['margin']:.3f} |"
                    for c in r["dose_response"]], "",
                  *[f"![{Path(p).stem}]({layer_dir}/{p})" for p in r["figures"]],
                  *_generations_table(r.get("generations") or [])]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "report.json", {"extraction": {k: extraction[k] for k in
                                                           ("model", "samples", "rows", "layers", "d_model", "non_finite")},
                                            "layers": results, "figures": [p.name for p in figures]})
    return out / "report.md"
