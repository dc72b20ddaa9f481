"""`python -m sae_lab.train [overrides]`: train and evaluate one SAE (or a sweep with -m).

    python -m sae_lab.train                                   # the built-in default study
    python -m sae_lab.train sae=relu sae.d_sae=2048
    python -m sae_lab.train -m sae.k=4,8,32 'seed=range(8)'   # 24 jobs, one base model
    python -m sae_lab.train --cfg job                         # print the composed config
"""

import hydra
from omegaconf import DictConfig

from labcore.paths import line_config_dir


@hydra.main(version_base="1.3", config_path=line_config_dir("sae_lab"), config_name="sae_lab")
def main(cfg: DictConfig) -> None:
    from labcore import run
    run(cfg)


if __name__ == "__main__":
    main()
