"""Where the shared config tree lives: `conf/` at the repository root (editable install)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = str(REPO_ROOT / "conf")
