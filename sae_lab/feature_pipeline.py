"""`python -m sae_lab.feature_pipeline`: extract -> per-layer SAEs -> per-layer analyses -> report.

    python -m sae_lab.feature_pipeline experiment=feature_minilm              # the offline MiniLM demo
    python -m sae_lab.feature_pipeline experiment=feature_minilm --dry-run    # the plan; runs and writes nothing
    python -m sae_lab.feature_pipeline experiment=feature_gemma3_captions hydra/launcher=slurm_gpu
    python -m sae_lab.feature_pipeline experiment=feature_minilm --only report

Each step starts when the one before is complete; a re-run skips what is complete and resumes what
is not (the extraction from its last checkpoint, a layer's SAE from its last training checkpoint).
The per-layer steps are Hydra multiruns over `layer`, so a launcher override (any argument that is
a Hydra override) makes each of them a SLURM job array; this driver runs where it is started (or
as a SLURM job itself) and waits for each array. Everything lives under `features.dir`:
extraction/, sae/layer_<l>/, analysis/layer_<l>/, report/report.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labcore.orchestrate import Pipeline, Stage, add_pipeline_arguments, run_pipeline_cli


def plan_layers(cfg) -> tuple[list[int], str]:
    """The layers of the run and a note: checked against the model's layout when its config can be
    read; offline with an uncached hub model, an explicit range is used as written (unchecked)."""
    from labcore.validate import ConfigError, parse_layers
    from sae_lab.features import common
    try:
        n_layers = common.model_spec(cfg).layout().n_layers
        return common.layers(cfg, n_layers), f"checked against the model's {n_layers} layers"
    except ConfigError as e:
        if e.key != "model.path":
            raise
        spec = cfg.features.layers
        if spec == "all":
            raise ConfigError("features.layers", f"'all' needs the model's config, which is not available here "
                              f"({e.message}); name the layers, e.g. '0-33'") from None
        return parse_layers(spec, 10_000, "features.layers"), f"not checked: {e.message}"


def stages(cfg, overrides: list[str], layers: list[int]) -> list[Stage]:
    """A stage is complete when its marker records the same command (labcore.orchestrate); a stage
    that runs again skips the layers already finished and resumes the interrupted ones."""
    from sae_lab.features import common
    from sae_lab.features.report import write_report
    root = common.pipeline_dir(cfg)
    job = [sys.executable, "-m", "sae_lab.train"]
    layer_list = ",".join(str(layer) for layer in layers)
    return [
        Stage("extract", command=[*job, *overrides, "feature_step=extract"], what=f"layers {layers} over the dataset"),
        Stage("sae", command=[*job, "-m", *overrides, "feature_step=sae", f"layer={layer_list}"],
              what=f"an SAE per layer ({len(layers)} jobs)"),
        Stage("analyse", command=[*job, "-m", *overrides, "feature_step=analyse", f"layer={layer_list}"],
              what=f"group features, cards, ablation and dose-response per layer ({len(layers)} jobs)"),
        Stage("report", call=lambda values: str(write_report(root, layers)), what=f"{root / 'report' / 'report.md'}"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sae_lab.feature_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every step (experiment=..., features.dir=..., "
                                                "a launcher)")
    add_pipeline_arguments(p)
    args = p.parse_args(argv)
    from labcore.paths import compose
    from labcore.validate import ConfigError
    from sae_lab.features import common
    cfg = compose("sae_lab", [o for o in args.overrides if not o.startswith("hydra/")])
    try:
        layers, note = plan_layers(cfg)
        root = common.pipeline_dir(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[feature_pipeline] {cfg.name}: layers {layers} ({note}); everything under {Path(root).resolve()}", flush=True)
    return run_pipeline_cli(Pipeline("feature_pipeline", stages(cfg, args.overrides, layers), root), args)


if __name__ == "__main__":
    sys.exit(main())
