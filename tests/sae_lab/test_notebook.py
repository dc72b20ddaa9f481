"""The quickstart notebook runs top to bottom on a real (tiny) finished sweep."""

import pytest

from labcore import run
from tests.conftest import execute_notebook


@pytest.mark.slow
def test_quickstart_notebook_executes(tiny_cfg, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        run(tiny_cfg(f"seed={seed}", f"paths.output_dir={sweep / str(seed)}"))
    monkeypatch.setenv("LAB_SWEEP_DIR", str(sweep))
    outputs = execute_notebook("quickstart.ipynb", monkeypatch)
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) == 2  # both figures drawn
    assert (sweep / "aggregate" / "summary.csv").exists()
