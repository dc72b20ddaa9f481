"""SIGTERM and SIGINT for a job: what `timeout`, SLURM time limits, preemption and Ctrl-C send.

A job stops with `JobInterrupted`, a `SystemExit` whose exit status is 128 + the signal number
(143 for SIGTERM, 130 for SIGINT), so a shell, a sweep driver or SLURM sees it failed, and nothing
in between can swallow it as an ordinary exception. Where stopping at once would lose work, a
region may defer the signal (`deferred()`): the signal is only recorded, and the code inside
checks `pending` at safe points (a training step's end), saves what it has and raises. A second
signal while one is pending stops at once. Inside a submitit job, SIGUSR2 (SLURM's warning that the
time limit is near) is taken the same way, then handed to submitit's handler, which requeues the job.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class JobInterrupted(SystemExit):
    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name} (exit status {self.code})"

    def __reduce__(self):
        return type(self), (self.signum,)


def _is_submitit_handler(handler) -> bool:
    owner = getattr(handler, "__self__", None)
    return callable(handler) and type(owner).__module__.startswith("submitit")


class Interruptions:
    """Installs the job's SIGTERM/SIGINT (and, under submitit, SIGUSR2) handlers for the duration of
    a `with` block (main thread only: Python delivers signals there; elsewhere this does nothing)."""

    def __init__(self):
        self.pending: int | None = None
        self._deferring = False
        self._previous: dict[int, object] = {}
        self._forward: dict[int, object] = {}

    def __enter__(self) -> "Interruptions":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            # submitit's SIGUSR2 handler (a SLURM time limit is near) requeues the job and exits at
            # once; take the signal like SIGTERM and hand it on once the step is checkpointed
            forward = signal.getsignal(signal.SIGUSR2)
            if _is_submitit_handler(forward):
                self._forward[signal.SIGUSR2] = forward
                self._previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._forward.clear()

    def _handle(self, signum: int, frame) -> None:
        if self._deferring and self.pending is None:
            self.pending = signum
            # os.write, not print: a handler may run while the main thread is inside a buffered write
            os.write(2, f"[labcore] {signal.Signals(signum).name} received: checkpointing at the end of this "
                        "step, then stopping (a second signal stops at once)\n".encode())
            return
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        forward = self._forward.get(signum)
        if forward is not None:
            try:
                forward(signum, None)  # e.g. submitit: requeue, then exit
            except SystemExit:
                pass
        raise JobInterrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator["Interruptions"]:
        """Inside, a first signal only sets `pending`; leaving the block raises it if nobody did."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self._stop(signum)

    def raise_if_pending(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self._stop(signum)
