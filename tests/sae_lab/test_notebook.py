"""The quickstart notebook runs top to bottom on a real (tiny) finished sweep."""

import pytest

from labcore import run
from tests.conftest import REPO


@pytest.mark.slow
def test_quickstart_notebook_executes(tiny_cfg, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        run(tiny_cfg(f"seed={seed}", f"paths.output_dir={sweep / str(seed)}"))
    monkeypatch.setenv("LAB_SWEEP_DIR", str(sweep))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline, as for a person
    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) == 2  # both figures drawn
    assert (sweep / "aggregate" / "summary.csv").exists()
