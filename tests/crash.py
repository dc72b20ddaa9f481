"""A Lightning callback that kills its process hard (no exception, no cleanup) in one job of a
sweep: how a segfault or an OOM kill looks to the launcher. Used by the SLURM test as
`+callbacks.crash._target_=tests.crash.HardCrash +callbacks.crash.crash_seed=2 '+callbacks.crash.job_seed=${seed}'`."""

import os

from lightning.pytorch.callbacks import Callback


class HardCrash(Callback):
    def __init__(self, crash_seed: int, job_seed: int):
        self.crash = crash_seed == job_seed

    def on_train_start(self, trainer, pl_module):
        if self.crash:
            os._exit(3)
