"""Figures of an aggregated SAE sweep: PWMCC against k or d_sae with the random band, PWMCC per
group (e.g. per architecture) against its random baseline, and explained variance against L0 for
every finished job."""

from __future__ import annotations

from pathlib import Path

from labcore.sweep import Job


def pwmcc_vs_parameter(rows: list[dict], param: str, path: Path) -> Path | None:
    """Trained PWMCC (95% CI over seeds as bars) and the random band against `param` ("k" or "d_sae"); None unless
    the sweep varies `param` alone, the only case in which the curve means something."""
    from labcore.plotting import save_figure, subplots
    pts = [r for r in rows if r.get("pwmcc_trained_mean") is not None and r.get(param) is not None]
    others = {(r.get("architecture"), r.get("d_sae" if param == "k" else "k")) for r in pts}
    if len({r[param] for r in pts}) < 2 or len(others) != 1:
        return None
    pts.sort(key=lambda r: r[param])
    x = [r[param] for r in pts]
    fig, ax = subplots(figsize=(6, 4))
    t = [r["pwmcc_trained_mean"] for r in pts]
    ax.errorbar(x, t, yerr=[[m - r["pwmcc_trained_ci_low"] for m, r in zip(t, pts)],
                            [r["pwmcc_trained_ci_high"] - m for m, r in zip(t, pts)]],
                fmt="o-", capsize=3, label="trained (95% CI over seeds)")
    ax.fill_between(x, [r["pwmcc_random_ci_low"] for r in pts], [r["pwmcc_random_ci_high"] for r in pts],
                    alpha=0.3, color="gray", label="random baseline (95% CI over seeds)")
    ax.plot(x, [r["pwmcc_random_mean"] for r in pts], color="gray", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(param)
    ax.set_ylabel("PWMCC")
    ax.set_title(f"seed consistency vs {param}")
    ax.legend()
    return save_figure(fig, path)


def pwmcc_by_group(rows: list[dict], path: Path) -> Path | None:
    """Each group's trained PWMCC (95% CI over seeds) next to its random baseline, one row per group:
    the comparison for sweeps over categories (architectures, ...); None with fewer than 2 groups."""
    from labcore.plotting import save_figure, subplots
    pts = sorted((r for r in rows if r.get("pwmcc_trained_mean") is not None), key=lambda r: r["pwmcc_trained_mean"])
    if len(pts) < 2:
        return None
    y = list(range(len(pts)))
    fig, ax = subplots(figsize=(6, 1.2 + 0.45 * len(pts)))
    t = [r["pwmcc_trained_mean"] for r in pts]
    ax.errorbar(t, y, xerr=[[m - r["pwmcc_trained_ci_low"] for m, r in zip(t, pts)],
                            [r["pwmcc_trained_ci_high"] - m for m, r in zip(t, pts)]],
                fmt="o", capsize=3, label="trained (95% CI over seeds)")
    ax.scatter([r["pwmcc_random_mean"] for r in pts], y, marker="|", s=200, color="gray",
               label="random dictionaries of the same shape")
    ax.set_yticks(y, [r["group"] for r in pts], fontsize=8)
    ax.set_xlabel("PWMCC between seeds")
    ax.set_title("seed consistency per group")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def ev_vs_l0(jobs: list[Job], path: Path) -> Path | None:
    """Held-out explained variance against L0, one colour per group; None without a finished job."""
    from labcore.plotting import save_figure, subplots
    ok = [j for j in jobs if j.ok]
    if not ok:
        return None
    fig, ax = subplots(figsize=(6, 4))
    groups = sorted({j.group for j in ok})
    for g in groups:
        js = [j for j in ok if j.group == g]
        ax.scatter([j.metrics["l0"] for j in js], [j.metrics["explained_variance"] for j in js], label=g, s=18)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (held-out)")
    ax.set_ylabel("explained variance (held-out)")
    ax.set_title("sparsity vs reconstruction")
    if len(groups) <= 12:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def sweep_figures(rows: list[dict], jobs: list[Job], fig_dir: Path) -> list[Path]:
    """Every figure that applies to this sweep, written into `fig_dir`."""
    drawn = [pwmcc_vs_parameter(rows, param, fig_dir / f"pwmcc_vs_{param}.png") for param in ("k", "d_sae")]
    drawn.append(pwmcc_by_group(rows, fig_dir / "pwmcc_by_group.png"))
    drawn.append(ev_vs_l0(jobs, fig_dir / "ev_vs_l0.png"))
    return [p for p in drawn if p is not None]
