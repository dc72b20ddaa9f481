"""`python -m sae_lab.aggregate <sweep_dir>`: one trustworthy summary of an SAE sweep.

Reads every job directory of a Hydra multirun (`.hydra/` or `manifest.json` marks one), groups jobs
by all overrides except `seed`, and per group reports reconstruction metrics and seed consistency:
PWMCC between every pair of trained SAEs vs the same number of random dictionaries of identical
shape (seeds 1000+i), with bootstrap CIs, a one-sided Mann-Whitney test, Cohen's d and the rule
"training_signal_present" iff delta > 0 and p < 0.05. Jobs that failed, never finished, or left
a corrupt or partial metrics.json are named in the report; the rest are still aggregated.

Writes into `<sweep_dir>/aggregate/` (or --out): summary.csv, summary.md, pairwise_<group>.csv,
jobs.csv and figures/. Also runs as a Hydra callback at the end of a multirun (Hydra skips
callbacks when a job raised, so this command stands on its own).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_METRICS = ("explained_variance", "l0", "mse")
RANDOM_SEED_BASE = 1000
IGNORED_OVERRIDE_KEYS = ("seed", "hydra.", "hydra/", "paths.", "logger", "trainer.enable_progress_bar")


@dataclass
class Job:
    path: Path
    overrides: list[str]
    status: str = "ok"            # ok | missing | partial | corrupt | failed
    problem: str = ""
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def seed(self):
        return self.config.get("seed", _override_value(self.overrides, "seed"))

    @property
    def grouping_overrides(self) -> list[str]:
        return sorted(o for o in self.overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDE_KEYS))

    group: str = "default"   # set by find_jobs: the grouping overrides that vary across the sweep


def _override_value(overrides, key):
    for o in overrides:
        if o.split("=", 1)[0].lstrip("+~") == key:
            return o.split("=", 1)[1]
    return None


def _read_overrides(job_dir: Path, manifest: dict | None) -> list[str]:
    if manifest and manifest.get("overrides"):
        return list(manifest["overrides"])
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.exists():
        from omegaconf import OmegaConf
        return list(OmegaConf.load(path))
    return []


def _read_config(job_dir: Path, manifest: dict | None) -> dict:
    if manifest and manifest.get("config"):
        return manifest["config"]
    path = job_dir / ".hydra" / "config.yaml"
    if path.exists():
        from omegaconf import OmegaConf
        try:
            return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception:
            return {}
    return {}


def find_jobs(sweep_dir: Path) -> list[Job]:
    dirs = sorted({p.parent for p in sweep_dir.rglob("manifest.json")} |
                  {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")})
    dirs = [d for d in dirs if "aggregate" not in d.relative_to(sweep_dir).parts]
    jobs = []
    for d in dirs:
        manifest = None
        try:
            manifest = json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").exists() else None
        except (json.JSONDecodeError, OSError):
            pass
        job = Job(d, _read_overrides(d, manifest), config=_read_config(d, manifest))
        metrics_path = d / "metrics.json"
        if not metrics_path.exists():
            status = (manifest or {}).get("status", "never wrote a manifest")
            error = (manifest or {}).get("error")
            job.status = "failed" if status == "failed" else "missing"
            job.problem = f"no metrics.json (manifest status: {status}{'; ' + error if error else ''})"
        else:
            try:
                job.metrics = json.loads(metrics_path.read_text())
                if not isinstance(job.metrics, dict):
                    raise json.JSONDecodeError("not an object", "", 0)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                job.status, job.problem = "corrupt", f"metrics.json is not valid JSON ({e.msg if hasattr(e, 'msg') else e})"
            else:
                absent = [k for k in REQUIRED_METRICS if not isinstance(job.metrics.get(k), (int, float))]
                if absent:
                    job.status, job.problem = "partial", f"metrics.json lacks {', '.join(absent)}"
        jobs.append(job)
    # name groups by what varies: overrides shared by every job say nothing about a group
    shared = set.intersection(*(set(j.grouping_overrides) for j in jobs)) if jobs else set()
    for j in jobs:
        j.group = ",".join(o for o in j.grouping_overrides if o not in shared) or "all"
    return jobs


def _decoder(job: Job):
    from safetensors.torch import load_file
    path = job.path / "sae" / "sae_weights.safetensors"
    if not path.exists():
        return None
    return load_file(path)["W_dec"]  # [d_sae, d_in]: SAELens layout, rows are latents


def _mean(values):
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def summarise_group(name: str, jobs: list[Job], matching: bool = True, n_resamples: int = 10_000) -> tuple[dict, list, list]:
    from labcore.stats import bootstrap_ci, compare_groups
    from sae_lab.consistency import matched_fraction, pairwise_pwmcc, random_dictionary

    ok = [j for j in jobs if j.status == "ok"]
    row = {"group": name, "n_jobs": len(jobs), "n_ok": len(ok),
           "seeds": " ".join(str(j.seed) for j in ok)}
    sae_cfg = (ok[0].config if ok else jobs[0].config).get("sae", {})
    row.update({"architecture": sae_cfg.get("architecture"), "d_sae": sae_cfg.get("d_sae"), "k": sae_cfg.get("k")})
    for key in ("explained_variance", "l0", "mse", "dead_fraction", "acc_with_sae", "loss_recovered", "wall_time_s"):
        values = [j.metrics.get(key) for j in ok if isinstance(j.metrics.get(key), (int, float))]
        row[f"{key}_mean"] = _mean(values)
        if key in ("explained_variance", "l0") and len(values) > 1:
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = bootstrap_ci(values, n_resamples=n_resamples)
    decoders = {j.seed: d for j in ok if (d := _decoder(j)) is not None}
    trained_pairs, random_pairs = [], []
    if len(decoders) >= 2:
        trained_pairs = pairwise_pwmcc(decoders)
        shape = next(iter(decoders.values())).shape
        randoms = {RANDOM_SEED_BASE + i: random_dictionary(shape[0], shape[1], seed=RANDOM_SEED_BASE + i)
                   for i in range(len(decoders))}
        random_pairs = pairwise_pwmcc(randoms)
        stats = compare_groups([p for *_, p in trained_pairs], [p for *_, p in random_pairs])
        row.update({
            "pwmcc_trained_mean": stats["trained"]["mean"], "pwmcc_trained_ci_low": stats["trained"]["ci_low"],
            "pwmcc_trained_ci_high": stats["trained"]["ci_high"], "pwmcc_random_mean": stats["random"]["mean"],
            "pwmcc_random_ci_low": stats["random"]["ci_low"], "pwmcc_random_ci_high": stats["random"]["ci_high"],
            "pwmcc_delta": stats["delta"], "pwmcc_ratio": stats["ratio"], "mann_whitney_U": stats["U"],
            "p_value": stats["p"], "cohens_d": stats["cohens_d"], "conclusion": stats["conclusion"],
        })
        if matching and shape[0] <= 4096:
            row["matched_fraction_0.7_mean"] = _mean(
                [matched_fraction(decoders[a], decoders[b]) for a, b, _ in trained_pairs])
    else:
        row["conclusion"] = "too_few_seeds"
    return row, trained_pairs, random_pairs


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[:120] or "default"


def _write_csv(path: Path, rows: list[dict]) -> None:
    from labcore.artifacts import atomic_write_text
    if not rows:
        atomic_write_text(path, "")
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def _markdown(sweep_dir: Path, rows: list[dict], jobs: list[Job]) -> str:
    lines = [f"# Sweep summary: `{sweep_dir}`", ""]
    problems = [j for j in jobs if j.status != "ok"]
    lines.append(f"{len(jobs)} jobs found, {len(jobs) - len(problems)} aggregated, {len(problems)} with problems.")
    lines.append("")
    cols = ["group", "n_ok", "explained_variance_mean", "l0_mean", "pwmcc_trained_mean", "pwmcc_trained_ci_low",
            "pwmcc_trained_ci_high", "pwmcc_random_mean", "pwmcc_delta", "pwmcc_ratio", "p_value", "cohens_d",
            "conclusion"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines.append("")
    lines.append("PWMCC: mean over pairs of seeds of 1/2 [mean_i max_j |cos(a_i, b_j)| + mean_j max_i |cos(a_i, b_j)|] "
                 "between decoder rows; random: the same number of random unit dictionaries of identical shape. "
                 "CIs: bootstrap percentile 95%; p: one-sided Mann-Whitney U (trained > random); "
                 "conclusion `training_signal_present` iff delta > 0 and p < 0.05.")
    if problems:
        lines += ["", "## Problems", ""]
        lines += [f"- `{j.path.relative_to(sweep_dir)}` ({j.group}, seed {j.seed}): **{j.status}**: {j.problem}" for j in problems]
    return "\n".join(lines) + "\n"


def _figures(rows: list[dict], jobs: list[Job], fig_dir: Path) -> list[Path]:
    from labcore.plotting import save_figure, subplots
    written = []
    for param in ("k", "d_sae"):
        pts = [r for r in rows if r.get("pwmcc_trained_mean") is not None and r.get(param) is not None]
        others = {(r.get("architecture"), r.get("d_sae" if param == "k" else "k")) for r in pts}
        if len({r[param] for r in pts}) < 2 or len(others) != 1:
            continue  # only a clean one-parameter sweep makes this plot meaningful
        pts.sort(key=lambda r: r[param])
        x = [r[param] for r in pts]
        fig, ax = subplots(figsize=(6, 4))
        t = [r["pwmcc_trained_mean"] for r in pts]
        ax.errorbar(x, t, yerr=[[m - r["pwmcc_trained_ci_low"] for m, r in zip(t, pts)],
                                [r["pwmcc_trained_ci_high"] - m for m, r in zip(t, pts)]],
                    fmt="o-", capsize=3, label="trained (95% CI)")
        ax.fill_between(x, [r["pwmcc_random_ci_low"] for r in pts], [r["pwmcc_random_ci_high"] for r in pts],
                        alpha=0.3, color="gray", label="random baseline (95% CI)")
        ax.plot(x, [r["pwmcc_random_mean"] for r in pts], color="gray", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(param)
        ax.set_ylabel("PWMCC")
        ax.set_title(f"seed consistency vs {param}")
        ax.legend()
        written.append(save_figure(fig, fig_dir / f"pwmcc_vs_{param}.png"))
    ok = [j for j in jobs if j.status == "ok"]
    if ok:
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
        written.append(save_figure(fig, fig_dir / "ev_vs_l0.png"))
    return written


def aggregate(sweep_dir: str | Path, out_dir: str | Path | None = None, matching: bool = True,
              n_resamples: int = 10_000, wandb_project: str | None = None, log=print) -> dict:
    """Aggregate a sweep directory; returns {"rows": [...], "pairs": {group: {(seed_a, seed_b): pwmcc}},
    "problems": [...], "out_dir": ...}."""
    from labcore.artifacts import atomic_write_text
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory does not exist: {sweep_dir}")
    out = Path(out_dir) if out_dir else sweep_dir / "aggregate"
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"no job directories (with .hydra/ or manifest.json) under {sweep_dir}")
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.group, []).append(j)
    for stale in out.glob("pairwise_*.csv"):  # from an earlier aggregation with other groups
        stale.unlink()
    rows, pairs = [], {}
    for name, members in sorted(groups.items()):
        row, trained, random = summarise_group(name, members, matching=matching, n_resamples=n_resamples)
        rows.append(row)
        pairs[name] = {(a, b): p for a, b, p in trained}
        if trained:
            _write_csv(out / f"pairwise_{_slug(name)}.csv",
                       [{"seed_a": a, "seed_b": b, "pwmcc": p} for a, b, p in trained])
            _write_csv(out / f"pairwise_random_{_slug(name)}.csv",
                       [{"seed_a": a, "seed_b": b, "pwmcc": p} for a, b, p in random])
    _write_csv(out / "summary.csv", rows)
    _write_csv(out / "jobs.csv", [{"path": str(j.path.relative_to(sweep_dir)), "group": j.group, "seed": j.seed,
                                   "status": j.status, "problem": j.problem} for j in jobs])
    md = _markdown(sweep_dir, rows, jobs)
    atomic_write_text(out / "summary.md", md)
    figures = _figures(rows, jobs, out / "figures")
    problems = [j for j in jobs if j.status != "ok"]
    for j in problems:
        log(f"[aggregate] {j.status}: {j.path} ({j.problem})")
    log(md)
    log(f"[aggregate] wrote {out}")
    if wandb_project:
        log_to_wandb(wandb_project, sweep_dir, out, rows, figures)
    return {"rows": rows, "pairs": pairs, "problems": [(str(j.path), j.status, j.problem) for j in problems],
            "out_dir": out}


def log_to_wandb(project: str, sweep_dir: Path, out: Path, rows: list[dict], figures: list[Path]) -> None:
    """One W&B summary run in the sweep's group, with the summary table and figures."""
    import wandb

    from labcore.loggers import wandb_has_credentials
    run = wandb.init(project=project, group=Path(sweep_dir).name, job_type="aggregate", name=f"aggregate-{Path(sweep_dir).name}",
                     dir=str(out), mode=None if wandb_has_credentials() else "offline", reinit="finish_previous")
    try:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        run.log({"summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
                 **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
    finally:
        run.finish()


def _callback_base():
    from hydra.experimental.callback import Callback
    return Callback


class AggregateOnMultirunEnd(_callback_base()):
    """Hydra callback: aggregate the sweep when all its jobs returned (Hydra skips it otherwise,
    so `python -m sae_lab.aggregate <sweep_dir>` is the way to aggregate a sweep with failures)."""

    def __init__(self, enabled: bool = True, matching: bool = True, wandb_project: str | None = None):
        self.enabled, self.matching, self.wandb_project = enabled, matching, wandb_project

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.enabled:
            aggregate(config.hydra.sweep.dir, matching=self.matching, wandb_project=self.wandb_project)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sae_lab.aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory, e.g. multirun/sae_lab/<date>")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <sweep_dir>/aggregate)")
    parser.add_argument("--no-matching", action="store_true", help="skip the Hungarian matched-fraction metric")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--wandb", metavar="PROJECT", default=None, help="also log a W&B summary run to PROJECT")
    args = parser.parse_args(argv)
    try:
        result = aggregate(args.sweep_dir, args.out, matching=not args.no_matching, n_resamples=args.resamples,
                           wandb_project=args.wandb)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if not any(r.get("n_ok") for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
