"""Every primary config composes with every experiment overlay of its line, and each composition
runs end to end on a shrunken config (lightning-hydra-template's test_sweeps pattern)."""

from pathlib import Path

import pytest

from labcore import run
from labcore.paths import CONFIG_DIR, compose
from tests.conftest import NANODESMO_TINY, SHAKESPEARE, SPECTRA_TINY, TINY

# How to shrink each line's jobs to seconds. A new line must add its entry here.
SHRINK = {"sae_lab": TINY, "spectra": SPECTRA_TINY, "nanodesmo": NANODESMO_TINY}
# Studies that read from the network when their local copy is missing: point them at a local file.
OFFLINE = {("nanodesmo", "openwebtext_progress"): [f"dataset.path={SHAKESPEARE}"]}
# Studies whose model cannot exist offline: composed (and validated by their --dry-run tests), not run.
COMPOSE_ONLY = {("sae_lab", "feature_gemma3_captions"): "gemma-3-4b-it is not on this machine "
                                                        "(tests/sae_lab/test_feature_pipeline.py plans it offline)"}

LINES = sorted(d.name for d in Path(CONFIG_DIR).iterdir() if (d / f"{d.name}.yaml").exists())
CASES = [(line, None) for line in LINES] + [
    (line, p.stem) for line in LINES for p in sorted((Path(CONFIG_DIR) / line / "experiment").glob("*.yaml"))]


def test_every_line_has_a_primary_config_and_a_shrunken_form():
    assert "sae_lab" in LINES
    assert set(LINES) <= set(SHRINK), f"add a shrunken config for {set(LINES) - set(SHRINK)} to SHRINK"


@pytest.mark.parametrize("line", LINES)
def test_experiments_belong_to_their_line(line):
    """A line's studies are found under its own primary config only."""
    from hydra.errors import MissingConfigException
    for other in LINES:
        for study in (Path(CONFIG_DIR) / other / "experiment").glob("*.yaml"):
            if other != line and not (Path(CONFIG_DIR) / line / "experiment" / study.name).exists():
                with pytest.raises(MissingConfigException):
                    compose(line, [f"experiment={study.stem}"])


@pytest.mark.slow
@pytest.mark.parametrize("line, experiment", CASES, ids=[f"{l}-{e or 'default'}" for l, e in CASES])
def test_composes_and_runs_shrunken(line, experiment, tmp_path, cache_dir):
    shrink = SHRINK[line]
    if experiment and experiment.startswith("feature_"):
        # the feature pipeline's first step, on a tiny model where there is one (the later steps read
        # what it writes: tests/sae_lab/test_feature_pipeline.py runs them all)
        from tests.sae_lab.feature_fixtures import tiny_bert_dir
        shrink = ["feature_step=extract", f"features.dir={tmp_path / 'features'}", "trainer.enable_progress_bar=false",
                  f"paths.data_dir={SHAKESPEARE.parent.parent}"]
        if (line, experiment) not in COMPOSE_ONLY:
            shrink.append(f"model.path={tiny_bert_dir(tmp_path / 'tiny_bert')}")
    overrides = [*shrink, *OFFLINE.get((line, experiment), []), f"paths.output_dir={tmp_path}",
                 f"paths.cache_dir={cache_dir}"]
    cfg = compose(line, ([f"experiment={experiment}"] if experiment else []) + overrides)
    if (line, experiment) in COMPOSE_ONLY:
        pytest.skip(f"composed only: {COMPOSE_ONLY[(line, experiment)]}")
    metrics = run(cfg)
    assert metrics and (tmp_path / "metrics.json").exists()
