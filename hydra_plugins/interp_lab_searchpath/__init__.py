"""Hydra search-path plugin: puts the shared groups of `conf/common/` beside each research line's
own config directory (`conf/sae_lab/`, `conf/spectra/`, ...).

A line's entrypoint reads its primary config from `conf/<line>/`, which also holds the groups only
that line uses (its `experiment/` studies, `sae/`, ...). Hydra lists and composes the groups of
every directory on its search path, so `--help` of one line shows its own studies and the shared
groups, never another line's studies. Hydra discovers this class by scanning `hydra_plugins`.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CONF = Path(__file__).resolve().parents[2] / "conf"
COMMON = CONF / "common"


def _is_line_dir(path: str) -> bool:
    path = Path(path.removeprefix("file://")).resolve()
    return path.parent == CONF and path != COMMON


class InterpLabSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if any(e.provider == "main" and _is_line_dir(e.path) for e in search_path.get_path()):
            search_path.append(provider="interp-lab", path=f"file://{COMMON}")
