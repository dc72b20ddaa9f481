"""Figures of the feature pipeline: per layer (Cohen's d, ablation vs random, dose-response) and
across layers (the report's evolution plots)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labcore.plotting import save_figure, subplots


def layer_figures(layer: int, d: np.ndarray, features: list[dict], ablation: dict, curves: list[dict],
                  label_names: list[str], out: Path) -> list[Path]:
    paths = []
    fig, ax = subplots(figsize=(6, 3.6))
    ax.hist(d, bins=80, color="grey", alpha=0.7, log=True)
    for f in features:
        ax.axvline(f["cohens_d"], color="tab:red" if f["toward"] == label_names[0] else "tab:blue", linewidth=0.8)
    ax.set_xlabel(f"Cohen's d ({label_names[0]} - {label_names[1]})")
    ax.set_ylabel("features")
    ax.set_title(f"layer {layer}: group separation of every feature (top features marked)")
    paths.append(save_figure(fig, out / "cohens_d.png"))

    fig, ax = subplots(figsize=(5, 3.6))
    random = ablation["random_margin_drops"]
    ax.scatter(np.random.default_rng(0).uniform(-0.15, 0.15, len(random)), random, s=14, color="grey",
               label=f"{len(random)} random sets of {ablation['n_features']}")
    ax.scatter([1], [ablation["group_margin_drop"]], s=60, color="tab:red", label="group features")
    lo, hi = ablation["excess_drop_ci"]
    base = ablation["random_margin_drop_mean"]
    ax.errorbar([1], [ablation["group_margin_drop"]], yerr=[[ablation["excess_drop"] - lo], [hi - ablation["excess_drop"]]],
                color="tab:red", capsize=4)
    ax.axhline(base, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks([0, 1], ["random", "group"])
    ax.set_ylabel("drop of the probe's margin when ablated")
    ax.set_title(f"layer {layer}: ablation (95% CI of the excess over random)", fontsize=9)
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "ablation_vs_random.png"))

    key = f"p_{label_names[0]}"
    fig, ax = subplots(figsize=(5.5, 3.6))
    for name in dict.fromkeys(c["set"] for c in curves):
        pts = [(c["factor"], c[key]) for c in curves if c["set"] == name]
        ax.plot(*zip(*pts), marker="o", label=name, linestyle="--" if name == "random" else "-")
    ax.set_xlabel("factor on the features (0 = ablated, 1 = unchanged)")
    ax.set_ylabel(f"probe P({label_names[0]}), held-out samples")
    ax.set_title(f"layer {layer}: dose-response, measured on the model")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "dose_response.png"))
    return paths


def cross_layer_figures(results: list[dict], out: Path) -> list[Path]:
    """Across layers: the strongest group separation, the ablation effect vs random (with CI), and
    the dose-response of the features toward the first group."""
    layers = [r["layer"] for r in results]
    names = results[0]["label_names"]
    paths = []
    fig, (ax, bx) = subplots(1, 2, figsize=(11, 3.8))
    ax.plot(layers, [r["max_abs_cohens_d"] for r in results], marker="o")
    ax.set_xlabel("layer")
    ax.set_ylabel("max |Cohen's d| of a feature")
    ax.set_title("group separation by layer")
    group = [r["ablation"]["group_margin_drop"] for r in results]
    random = [r["ablation"]["random_margin_drop_mean"] for r in results]
    lo = [r["ablation"]["random_margin_drop_mean"] + r["ablation"]["excess_drop_ci"][0] for r in results]
    hi = [r["ablation"]["random_margin_drop_mean"] + r["ablation"]["excess_drop_ci"][1] for r in results]
    bx.plot(layers, group, marker="o", color="tab:red", label="group features ablated")
    bx.fill_between(layers, lo, hi, color="tab:red", alpha=0.2, label="95% CI (random + excess)")
    bx.plot(layers, random, marker="o", color="grey", linestyle="--", label="random features ablated (mean)")
    bx.set_xlabel("layer")
    bx.set_ylabel("drop of the probe's margin")
    bx.set_title("what ablation does to the group probe")
    bx.legend(fontsize=7)
    paths.append(save_figure(fig, out / "cross_layer.png"))

    key = f"p_{names[0]}"
    fig, ax = subplots(figsize=(6, 3.8))
    cmap = __import__("matplotlib").colormaps["viridis"]
    for i, r in enumerate(results):
        pts = [(c["factor"], c[key]) for c in r["dose_response"] if c["set"] == f"toward {names[0]}"]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=cmap(i / max(1, len(results) - 1)), label=f"layer {r['layer']}")
    ax.set_xlabel(f"factor on the features toward {names[0]}")
    ax.set_ylabel(f"probe P({names[0]})")
    ax.set_title("dose-response by layer")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "dose_response_by_layer.png"))
    return paths
