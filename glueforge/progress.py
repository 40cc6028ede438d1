"""Progress of long steps: a bar in a terminal (tqdm), plain log lines otherwise.

    with progress("download aliked-n16.pth", total=size, unit="B") as bar:
        bar.update(len(chunk))

In a terminal (standard error is a TTY) this draws a tqdm bar; elsewhere (CI, doit's captured
output, a log file) it logs the start, at most one line per ``interval`` seconds, and the end,
so logs stay readable (transfers under 16 MiB log nothing). ``GLUEFORGE_PROGRESS=bar|log|off``
overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("glueforge.progress")
QUIET_BELOW = 16 << 20  # in log mode, transfers smaller than this log nothing (a bundle's small files)


def _mode() -> str:
    chosen = os.environ.get("GLUEFORGE_PROGRESS", "").lower()
    if chosen in ("bar", "log", "off"):
        return chosen
    return "bar" if sys.stderr.isatty() else "log"


class _LogProgress:
    def __init__(self, description: str, total: float | None, unit: str, interval: float) -> None:
        self.description, self.total, self.unit, self.interval = description, total, unit, interval
        self.n = 0.0
        self.started = self.last = time.monotonic()

    def _amount(self, n: float) -> str:
        if self.unit == "B":
            return f"{n / 2**20:.1f} MiB"
        return f"{n:g} {self.unit}"

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            log.info("%s: %s%s", self.description, self._amount(self.n), share)

    def close(self) -> None:
        amount = f"{self._amount(self.n)} " if self.n else ""
        log.info("%s: done, %sin %.1f s", self.description, amount, time.monotonic() - self.started)

    def stop(self) -> None:
        log.info("%s: stopped after %.1f s", self.description, time.monotonic() - self.started)


class _Silent:
    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress(description: str, total: float | None = None, unit: str = "it", interval: float = 10.0,
             enabled: bool = True) -> Iterator:
    """A progress reporter with ``update(n)``; see the module docstring. ``enabled=False``: silent."""
    mode = _mode() if enabled else "off"
    if mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                   leave=False, file=sys.stderr)
    elif mode == "log" and not (unit == "B" and total is not None and total < QUIET_BELOW):
        log.info("%s ...", description)
        bar = _LogProgress(description, total, unit, interval)
    else:
        bar = _Silent()
    try:
        yield bar
    except BaseException:
        getattr(bar, "stop", bar.close)()  # not "done": the error that stopped it follows
        raise
    bar.close()
