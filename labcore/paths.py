"""Where the config tree lives: `conf/` at the repository root (editable install).

    conf/common/        groups every line shares: model, dataset, trainer, logger, callbacks,
                        paths, hydra/launcher
    conf/<line>/        one research line: its primary config `<line>.yaml`, its named studies
                        `experiment/`, and groups only it uses (sae_lab: sae/, base_model/)

A line's entrypoint reads `conf/<line>/`; the `hydra_plugins/interp_lab_searchpath` plugin puts
`conf/common/` beside it, so each line sees its own studies and the shared groups only.
"""

import os
from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "conf"


def line_config_dir(line: str) -> str:
    return str(CONFIG_DIR / line)


def compose(line: str, overrides: list[str] = (), return_hydra_config: bool = False):
    """The config `python -m <line>.<verb> <overrides>` would run, for notebooks and tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    with initialize_config_dir(config_dir=line_config_dir(line), version_base="1.3"):
        return hydra_compose(config_name=line, overrides=list(overrides), return_hydra_config=return_hydra_config)


def claim_dir(path: str) -> str:
    """Create `path` and return it, or `path_1`, `path_2`, ... when it exists: the directory is
    claimed by an atomic mkdir, so two runs or sweeps started in the same second never share one.

    Registered as the resolver `${claim_dir:...}` (cached per config, like Hydra's `now`): Hydra
    copies a sweep's resolver cache into every job's config, so all jobs see the one claimed path.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for n in range(10_000):
        candidate = path if n == 0 else f"{path}_{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not claim a fresh directory beside {path}")


OmegaConf.register_new_resolver("claim_dir", claim_dir, use_cache=True, replace=True)
