"""Tiny standalone Hydra app used as a test asset for the local SLURM cluster (scripts/slurm).

    python tests/slurm_app/app.py x=2                                  # local run
    python tests/slurm_app/app.py -m hydra/launcher=submitit_slurm \
        hydra.launcher.partition=debug x=1,2,3 crash=3                 # job x=3 dies hard

Each job writes result.json (x, y=x*x, SLURM ids, host, LAB_SLURM_SETUP) into its Hydra output dir.
With crash=true, or crash=N and x == N, the job dies with os._exit(3): no result, no traceback,
which is what a segfault / OOM kill looks like to submitit.
"""
import json
import os
import socket
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def should_crash(x, crash) -> bool:
    if isinstance(crash, bool):
        return crash
    if crash is None:
        return False
    if isinstance(crash, str):  # e.g. crash="true" from an odd override
        return crash.strip().lower() in ("true", "1", "yes")
    return crash == x


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> float:
    out_dir = HydraConfig.get().runtime.output_dir
    if should_crash(cfg.x, cfg.crash):
        print(f"slurm_app: x={cfg.x}: crashing hard (os._exit(3))", flush=True)
        sys.stderr.flush()
        os._exit(3)
    result = {
        "x": cfg.x,
        "y": cfg.x * cfg.x,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "host": socket.gethostname(),
        "lab_slurm_setup": os.environ.get("LAB_SLURM_SETUP"),
        "output_dir": out_dir,
    }
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f)
    print(f"slurm_app: x={cfg.x} -> {result['y']}", flush=True)
    return float(result["y"])


if __name__ == "__main__":
    main()
