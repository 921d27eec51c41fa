"""A small progress bar on stderr for long bulk operations (``runtime tasks retry``)."""

from __future__ import annotations

import time
from typing import TextIO

from runtime.management.formatting import duration


class ProgressBar:
    """``label [#########-----------] 12,000/20,000  60%  3,000/s  ETA 2.7 s``.

    On a terminal the line is redrawn in place (at most every ``interval`` seconds, and at
    the end); elsewhere (``--progress`` into a file or pipe) each update is a line of its own.
    """

    def __init__(self, stream: TextIO, label: str, width: int = 30,
                 interval: float = 0.1) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.interval = interval
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` (``done`` may exceed ``total`` if tasks were added)."""
        now = time.monotonic()
        if self.tty and now - self._last_draw < self.interval and done < total:
            return
        self._last_draw = now
        shown = min(done, total) if total else done
        fraction = shown / total if total else 1.0
        filled = round(fraction * self.width)
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        eta = (total - shown) / rate if rate > 0 and total > shown else 0.0
        line = (f"{self.label} [{'#' * filled}{'-' * (self.width - filled)}] "
                f"{done:,}/{total:,} {fraction * 100:4.0f}%  {rate:,.0f}/s  "
                f"ETA {duration(eta)}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """End the in-place line."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
