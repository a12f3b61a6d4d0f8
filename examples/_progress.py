"""A one-line progress bar for the examples (no dependency): ``[####....] 40% meta-loss 0.312``.

Shown only when standard output is a terminal, so logs and pipes get the results alone.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws one line in place; ``update`` at most every ``interval`` seconds, ``close`` at the end.

    Example:
        >>> import io
        >>> bar = Progress(10, "meta-training", stream=io.StringIO())  # not a terminal: silent
        >>> bar.update(5, loss=0.5); bar.close()
        >>> bar.stream.getvalue()
        ''
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30,
                 interval: float = 0.1) -> None:
        self.total, self.label, self.width, self.interval = max(total, 1), label, width, interval
        self.stream = sys.stdout if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self._last = time.perf_counter()

    def update(self, done: int, **values: float) -> None:
        """Show ``done`` of ``total`` and the ``values`` (e.g. ``loss=0.31``)."""
        now = time.perf_counter()
        if not self.enabled or (now - self._last < self.interval and done < self.total):
            return
        self._last = now
        filled = self.width * done // self.total
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        shown = "".join(f" {k} {v:.4g}" for k, v in values.items())
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{done}/{self.total}{shown}  {elapsed:.0f}s<{eta:.0f}s\033[K")
        self.stream.flush()

    def close(self) -> None:
        """Erase the line, so what follows starts on a clean one."""
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
