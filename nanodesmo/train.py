"""`python -m nanodesmo.train [overrides]`: train one self-state GPT (or a sweep with -m).

    python -m nanodesmo.train                                   # the self-state model, no regimes
    python -m nanodesmo.train regime=all_examples               # the original's perturbation schedule
    python -m nanodesmo.train self_state=vanilla                # control: no self-state
    python -m nanodesmo.train --cfg job                         # print the composed config
"""

import hydra
from omegaconf import DictConfig

from labcore.paths import line_config_dir


@hydra.main(version_base="1.3", config_path=line_config_dir("nanodesmo"), config_name="nanodesmo")
def main(cfg: DictConfig) -> None:
    from labcore import run
    run(cfg)


if __name__ == "__main__":
    main()
