"""`python -m nanodesmo.run_all`: the Nanodesmo pipeline, phase by phase, resumable.

    python -m nanodesmo.run_all --dry-run        # phases, commands, what is complete; nothing runs or is written
    python -m nanodesmo.run_all                  # run what is not complete (finished phases are skipped)
    python -m nanodesmo.run_all --resume         # the same, said explicitly
    python -m nanodesmo.run_all --only frozen_test_shakespeare
    python -m nanodesmo.run_all --smoke          # tiny iteration counts and model (CI)
    python -m nanodesmo.run_all --restart        # redo every phase
    python -m nanodesmo.run_all hydra/launcher=slurm_gpu   # extra overrides go to every training suite

Phases: shakespeare (the shakespeare_core suite: self_analysis, regimes_all, baseline,
vanilla_regimes), frozen_test_shakespeare, regime_deltas_shakespeare, separability_shakespeare,
leadlag_shakespeare, desmotic_shakespeare (the composite metrics of regimes_all), openwebtext (openwebtext_progress: OpenWebText streamed once when online, or
--second-corpus FILE), frozen_test_openwebtext, regime_deltas_openwebtext,
desmotic_openwebtext, memory (memory_buffer_grid), memory_comparison, controls (reviewer_controls),
controls_fixed_bias_0.5 / 1.0, controls_comparison, mlp_analysis, swaps (runs a and b, checkpointed half way),
swap_states, swap_a_swapped / swap_b_swapped (each resumed half way with the other's state),
swaps_summary, collect_figures, summary_figures, checklist.

A suite is one Hydra multirun: an interrupted job resumes from its last checkpoint when the phase
runs again, and a finished job is not retrained (labcore's runner). The checklist at the end (the
original's validation list) is printed and saved to <out>/checklist.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from labcore.orchestrate import Pipeline, Stage, add_pipeline_arguments, run_pipeline_cli

SMOKE = ["dataset.max_chars=50000", "dataset.block_size=32", "model.n_layer=2", "model.n_head=2",
         "model.d_model=64", "model.d_mlp=128", "train.max_iters=200", "train.batch_size=8",
         "train.warmup_iters=10", "train.eval_interval=100", "train.eval_iters=4", "checkpoint.every_n_steps=50",
         "trainer.enable_progress_bar=false"]
SUITES = {"shakespeare": "shakespeare_core", "openwebtext": "openwebtext_progress", "memory": "memory_buffer_grid",
          "controls": "reviewer_controls", "swaps": "swaps"}
MEMORY_RUNS = ["mem_ema", "mem_buf_l64", "mem_buf_l128", "self_bewilderment"]
CONTROL_RUNS = ["regimes_all", "vanilla_regimes", "self_dim1_regimes", "fixed_bias_0.5", "fixed_bias_1.0"]
FIGURES = {  # collected figure -> where a phase leaves it (relative to the output dir)
    "frozen-weight-test.png": "shakespeare/frozen_test/frozen_test.png",
    "openwebtext/frozen-weight-test.png": "openwebtext/frozen_test/frozen_test.png",
    "openwebtext/regime-deltas.png": "openwebtext/regimes_all/regime_deltas/regime_deltas.png",
    "perturbation/regime-deltas.png": "shakespeare/regimes_all/regime_deltas/regime_deltas.png",
    "perturbation/regime-delta-scatter.png": "shakespeare/regimes_all/regime_deltas/regime_delta_scatter.png",
    "controls/vanilla-regime-deltas.png": "shakespeare/vanilla_regimes/regime_deltas/regime_deltas.png",
    "perturbation/regime-separability.png": "shakespeare/regimes_all/separability/separability.png",
    "controls/state-effect-leadlag.png": "shakespeare/regimes_all/leadlag/state_effect_leadlag.png",
    "memory/memory-decay-summary.png": "memory/memory_decay_summary.png",
    "controls/controls-comparison.png": "controls/controls_comparison.png",
    "swaps/swaps-summary.png": "swaps_resumed/swaps_summary.png",
    "controls/mlp-analysis.png": "controls/regimes_all/mlp_analysis/mlp_analysis.png",
    **{f"composite/{corpus}-{name}.png": f"{corpus}/regimes_all/desmotic/{name}.png"
       for corpus in ("shakespeare", "openwebtext")
       for name in ("desmotic_timeseries", "desmotic_affect", "desmotic_by_regime")},
}


def stages(out: Path, overrides: list[str], smoke: bool, second_corpus: Path | None = None) -> list[Stage]:
    from labcore.sweep import sweep_complete
    from nanodesmo.desmotic import run_desmotic
    from nanodesmo.analyses import (run_controls_comparison, run_frozen_test, run_leadlag, run_memory_comparison,
                                    run_mlp_analysis, run_regime_deltas, run_separability, swap_checkpoints,
                                    swap_summary)
    settings = [*(SMOKE if smoke else []), *overrides]
    train = [sys.executable, "-m", "nanodesmo.train", *settings]                 # one run
    sweep = [sys.executable, "-m", "nanodesmo.train", "-m", *settings]           # a suite (one multirun)

    def suite(name, *extra):
        return Stage(name, command=[*sweep, f"experiment={SUITES[name]}", f"hydra.sweep.dir={out / name}", *extra],
                     complete=lambda: sweep_complete(out / name), what=f"train the {SUITES[name]} suite")

    max_iters = next((int(o.split("=", 1)[1]) for o in reversed(settings) if o.startswith("train.max_iters=")), 2000)
    swaps, resumed = out / "swaps", out / "swaps_resumed"

    def swapped(name):
        return Stage(f"swap_{name}", what=f"resume {name[0]} from the swap point with the other run's state",
                     command=[*train, f"+run=swap_{name[0]}", f"ckpt_path={resumed / name / 'start.ckpt'}",
                              f"hydra.run.dir={resumed / name}"],
                     complete=lambda: (resumed / name / "metrics.json").exists())

    def fixed_bias(x):
        # a fixed random state at x times the controls suite's self-state run's final norm
        def command(values):
            norm = self_norm(out / "controls" / "regimes_all")
            value = f"{x * norm:.6g}" if norm is not None else f"<{x} x the self_norm of controls/regimes_all>"
            return [*train, "+run=fixed_bias_regimes", f"self_state.fixed_norm={value}",
                    f"hydra.run.dir={out / 'controls' / f'fixed_bias_{x}'}"]
        return Stage(f"controls_fixed_bias_{x}", command=command, what=f"fixed-bias control at {x} x the self run's norm",
                     complete=lambda: (out / "controls" / f"fixed_bias_{x}" / "metrics.json").exists())

    def frozen(corpus):
        def call(values):
            result = run_frozen_test(out / corpus / "self_analysis", out / corpus / "frozen_test",
                                     batch_size=8 if smoke else 32, n_random=10 if smoke else 50)
            return {k: result[k] for k in ("effect_size", "effect_ci_low", "effect_ci_high", "passes")}
        return Stage(f"frozen_test_{corpus}", call=call, what=f"frozen-weight causal test of {corpus}/self_analysis",
                     dry_run_value={"effect_size": "<effect>"})

    def desmotic(corpus):
        return Stage(f"desmotic_{corpus}", what=f"composite (desmotic) metrics of {corpus}/regimes_all",
                     call=lambda values: str(run_desmotic(out / corpus / "regimes_all")))

    def deltas(values):
        return [str(run_regime_deltas(out / "shakespeare" / run)) for run in ("regimes_all", "vanilla_regimes")]

    return [
        suite("shakespeare"),
        frozen("shakespeare"),
        Stage("regime_deltas_shakespeare", call=deltas, what="regime deltas of regimes_all and vanilla_regimes"),
        Stage("separability_shakespeare", what="can regimes_all's reaction log tell the regimes apart?",
              call=lambda values: run_separability(out / "shakespeare" / "regimes_all")["accuracy"]),
        Stage("leadlag_shakespeare", what="state_effect(t) vs loss / entropy (t + lag) of regimes_all",
              call=lambda values: str(run_leadlag(out / "shakespeare" / "regimes_all"))),
        desmotic("shakespeare"),
        suite("openwebtext", *([f"dataset.path={second_corpus}"] if second_corpus else [])),
        frozen("openwebtext"),
        Stage("regime_deltas_openwebtext", what="regime deltas of openwebtext/regimes_all",
              call=lambda values: str(run_regime_deltas(out / "openwebtext" / "regimes_all"))),
        desmotic("openwebtext"),
        suite("memory"),
        Stage("memory_comparison", what="drift and recovery around the bewilderment window, per memory variant",
              call=lambda values: str(run_memory_comparison(out / "memory", MEMORY_RUNS))),
        suite("controls"),
        fixed_bias(0.5), fixed_bias(1.0),
        Stage("controls_comparison", what="regime deltas of the self-state run and every control",
              call=lambda values: str(run_controls_comparison(out / "controls", CONTROL_RUNS))),
        Stage("mlp_analysis", what="which statistics drive the self run's state update, and its size per regime",
              call=lambda values: str(run_mlp_analysis(out / "controls" / "regimes_all"))),
        suite("swaps", f"++callbacks.swap_point.step={max_iters // 2}"),
        Stage("swap_states", what=f"swap the states of runs a and b at step {max_iters // 2}",
              call=lambda values: {k: str(v) for k, v in
                                   swap_checkpoints(swaps / "swap_a", swaps / "swap_b", max_iters // 2, resumed).items()}),
        swapped("a_swapped"), swapped("b_swapped"),
        Stage("swaps_summary", what="loss, drift and state norm after the swap, swapped vs continued",
              call=lambda values: str(swap_summary(swaps, max_iters // 2, resumed))),
        Stage("collect_figures", call=lambda values: collect_figures(out), what=f"copy figures into {out / 'figures'}"),
        Stage("summary_figures", call=lambda values: summary_figures(out) + [str(write_figure_index(out))],
              what="cross-run figures, and figures/README.md linking every figure"),
        Stage("checklist", call=lambda values: checklist(out, values), what="the original's validation checklist"),
    ]


def self_norm(run_dir: Path) -> float | None:
    """The final state norm of a finished run (None before it exists: a dry run prints a placeholder)."""
    import json
    path = run_dir / "metrics.json"
    return float(json.loads(path.read_text())["self_norm"]) if path.exists() else None


def summary_figures(out: Path) -> list[str]:
    """Cross-run figures: every regime's reaction on one plot (the self-state run's loss, drift and
    state effect with the regime windows shaded, the vanilla control's loss beside it)."""
    from labcore.plotting import save_figure, subplots
    from nanodesmo.analyses import regime_names
    from nanodesmo.runs import read_reaction_log
    self_log = read_reaction_log(out / "shakespeare" / "regimes_all")
    vanilla = read_reaction_log(out / "shakespeare" / "vanilla_regimes")
    fig, axes = subplots(3, 1, figsize=(10, 7), sharex=True)
    panels = (("loss", [("self-state", self_log), ("vanilla", vanilla)]), ("self_drift", [("self-state", self_log)]),
              ("state_effect", [("self-state", self_log)]))
    for ax, (field, runs) in zip(axes, panels):
        for label, log in runs:
            points = [(r["step"], r[field]) for r in log if field in r]
            ax.plot(*zip(*points), linewidth=0.8, label=label, marker="o" if field == "state_effect" else None,
                    markersize=2)
        ax.set_ylabel(field)
        for i, name in enumerate(regime_names(self_log)):
            steps = [r["step"] for r in self_log if r[f"regime_{name}"]]
            if steps:
                ax.axvspan(steps[0], steps[-1] + 1, alpha=0.15, color=f"C{i + 2}", label=name if field == "loss" else None)
    axes[0].legend(fontsize=7, ncol=4)
    axes[-1].set_xlabel("step")
    target = out / "figures" / "perturbation" / "regime-reactions.png"
    save_figure(fig, target)
    return [str(target.relative_to(out / "figures"))]


def write_figure_index(out: Path) -> Path:
    """<out>/figures/README.md: every collected figure, linked, for people to look at."""
    from labcore.artifacts import atomic_write_text
    figures = sorted(p.relative_to(out / "figures") for p in (out / "figures").rglob("*.png"))
    lines = ["# Nanodesmo pipeline figures", ""] + [f"![{p.with_suffix('')}]({p.as_posix()})" for p in figures]
    atomic_write_text(out / "figures" / "README.md", "\n".join(lines) + "\n")
    return out / "figures" / "README.md"


def broken_links(readme: Path) -> list[str]:
    """Image links in a Markdown file whose target does not exist."""
    import re
    text = readme.read_text() if readme.exists() else ""
    return [t for t in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) if not (readme.parent / t).exists()]


def collect_figures(out: Path) -> list[str]:
    copied = []
    for name, source in FIGURES.items():
        if (out / source).exists():
            target = out / "figures" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / source, target)
            copied.append(name)
    return copied


def checklist(out: Path, values: dict) -> dict:
    from labcore.artifacts import atomic_write_json
    items = {f"figure {name} exists": (out / "figures" / name).exists() for name in FIGURES}
    items["figure perturbation/regime-reactions.png exists"] = (out / "figures" / "perturbation" / "regime-reactions.png").exists()
    broken = broken_links(out / "figures" / "README.md")
    items[f"every figure figures/README.md links exists ({len(broken)} broken)"] = (
        (out / "figures" / "README.md").exists() and not broken)
    for corpus, original in (("shakespeare", 0.35), ("openwebtext", 0.33)):
        frozen = values.get(f"frozen_test_{corpus}") or {}
        items[f"frozen-weight effect > 0.3 ({corpus}: {frozen.get('effect_size', float('nan')):.3f}; "
              f"the original: {original})"] = bool(frozen.get("passes"))
    for item, ok in items.items():
        print(f"[{'x' if ok else ' '}] {item}", flush=True)
    atomic_write_json(out / "checklist.json", {"items": items, **{k: v for k, v in values.items()
                                                                  if k.startswith("frozen_test_")}})
    return items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanodesmo.run_all", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every training suite")
    p.add_argument("--out", type=Path, default=Path("outputs/nanodesmo_pipeline"), help="the pipeline's directory")
    p.add_argument("--smoke", action="store_true", help="tiny model and iteration counts (minutes on a CPU)")
    p.add_argument("--resume", action="store_true", help="skip finished phases and runs (the default)")
    p.add_argument("--second-corpus", type=Path, default=None,
                   help="a local text file for the openwebtext suite (default: OpenWebText, streamed once when online)")
    add_pipeline_arguments(p)
    args = p.parse_args(argv)
    out = args.out.resolve()
    return run_pipeline_cli(Pipeline("nanodesmo", stages(out, args.overrides, args.smoke, args.second_corpus and args.second_corpus.resolve()), out), args)


if __name__ == "__main__":
    sys.exit(main())
