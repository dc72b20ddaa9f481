"""A Hydra callback that hands a finished multirun's sweep directory to a configured function,
so every line aggregates its sweeps the same way:

    hydra:
      callbacks:
        aggregate:
          _target_: labcore.sweep_callback.CallOnMultirunEnd
          function: my_line.aggregate.aggregate     # called as function(sweep_dir, **kwargs)
          enabled: true
          some_option: 1                            # any other key is passed on as a keyword

Hydra skips `on_multirun_end` when a job raised, so the function must also stand on its own as a
command (`python -m my_line.aggregate <sweep_dir>`) for sweeps with failures.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class CallOnMultirunEnd(Callback):
    def __init__(self, function: str, enabled: bool = True, **kwargs: Any):
        self.function, self.enabled, self.kwargs = function, enabled, kwargs

    def on_multirun_end(self, config, **kwargs) -> None:
        if not self.enabled:
            return
        from hydra.utils import get_method
        get_method(self.function)(config.hydra.sweep.dir, **self.kwargs)
