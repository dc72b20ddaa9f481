"""Console output fit for log files.

On a cluster (and in CI) stdout is a file: a progress bar redrawn every step fills it with
carriage returns, and every duplicated or decorative line costs the reader. So when stdout is not
a terminal, progress is one plain line every `PROGRESS_EVERY_S` seconds or every 10%, each message
is printed once, and third-party tips and deprecation noise are dropped. A terminal keeps bars.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

PROGRESS_EVERY_S = 10.0
PROGRESS_EVERY_FRACTION = 0.1

# Lightning's advertisements ("Tip: ... litlogger"), its note on every checkpoint save and load,
# and warnings about its own internals
NOISE_MESSAGES = ("💡 Tip:", "`weights_only` was not set")
NOISE_WARNINGS = (r".*LeafSpec.*", r".*does not have many workers.*", r".*GPU available but not used.*",
                  r".*The `srun` command is available on your system but is not used.*")


def is_terminal() -> bool:
    return sys.stdout.isatty()


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE_MESSAGES)


def quiet_third_party() -> None:
    """Each message once, without Lightning's tips and deprecation noise. Call after importing
    Lightning (it installs its own handler at import): when the root logger has handlers (Hydra's
    console + job log), Lightning's messages go through those only, instead of twice."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    # on the handlers: a logger's own filters do not see records its child loggers propagate
    for name in ("", "lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(_DropNoise())


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLines:
    """Plain progress lines: `desc 120/1000 (12%) 35.2 it/s ETA 0:25 loss 0.31`, printed when
    `PROGRESS_EVERY_S` seconds or a tenth of the total have passed since the last line, and at the end."""

    def __init__(self, desc: str, total: int | None, unit: str = "it", every_s: float = PROGRESS_EVERY_S,
                 every_fraction: float = PROGRESS_EVERY_FRACTION, stream=None):
        self.desc, self.total, self.unit = desc, total, unit
        self.every_s = every_s
        self.every_n = max(1, int(total * every_fraction)) if total else None
        self.stream = stream or sys.stdout
        self.start = self.last_time = time.monotonic()
        self.last_n = 0

    def update(self, n: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        due = now - self.last_time >= self.every_s or (self.every_n and n - self.last_n >= self.every_n)
        if not (due or force or (self.total and n >= self.total)) or n == self.last_n:
            return
        self.last_time, self.last_n = now, n
        elapsed = max(now - self.start, 1e-9)
        rate = n / elapsed
        parts = [self.desc, f"{n}/{self.total}" if self.total else str(n)]
        if self.total:
            parts.append(f"({100 * n / self.total:.0f}%)")
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and n < self.total:
            parts.append(f"ETA {format_duration((self.total - n) / rate)}")
        elif self.total and n >= self.total:
            parts.append(f"in {format_duration(elapsed)}")
        if extra:
            parts.append(extra)
        print(" ".join(parts), file=self.stream, flush=True)


class _LineBar:
    """`update(n)` like tqdm's, printed as ProgressLines."""

    def __init__(self, desc: str, total: int | None, unit: str):
        self.lines, self.n = ProgressLines(desc, total, unit), 0

    def update(self, n: int = 1) -> None:
        self.n += n
        self.lines.update(min(self.n, self.lines.total) if self.lines.total else self.n)


@contextmanager
def progress_bar(total: int | None, desc: str = "", unit: str = "it", enabled: bool = True):
    """A progress counter with `update(n)`: a tqdm bar on a terminal, plain lines in a log file."""
    if not enabled:
        yield _Silent()
    elif is_terminal():
        from tqdm.auto import tqdm
        with tqdm(total=total, desc=desc, unit=unit, leave=False) as bar:
            yield bar
    else:
        yield _LineBar(desc, total, unit)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it",
             unit_scale: int = 1) -> Iterator[T]:
    """Iterate with progress: a tqdm bar on a terminal, plain lines in a log file. `unit_scale`
    counts each item as that many units (e.g. rows per batch)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable) * unit_scale
    with progress_bar(total, desc, unit) as bar:
        for item in iterable:
            yield item
            bar.update(unit_scale)
