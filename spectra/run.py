"""`python -m spectra.run experiment=<observe|q_scale|gain|qk_control> [overrides]`.

    python -m spectra.run                                          # observe, MiniLM, tiny Shakespeare
    python -m spectra.run experiment=q_scale model=gpt_char
    python -m spectra.run experiment=gain gain.heads=all
    python -m spectra.run -m experiment=q_scale intervention.target.head=0,1,2,3
    python -m spectra.run --cfg job                                # print the composed config
"""

import hydra
from omegaconf import DictConfig

from labcore.paths import line_config_dir


@hydra.main(version_base="1.3", config_path=line_config_dir("spectra"), config_name="spectra")
def main(cfg: DictConfig) -> None:
    from labcore import run
    run(cfg)


if __name__ == "__main__":
    main()
