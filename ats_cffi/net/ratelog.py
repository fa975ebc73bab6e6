"""A failure that repeats is logged at most once per interval, with a count.

A flood of one kind of failure (connects refused at the fd limit, a dead upstream) must not
become a flood of log lines: the first is logged at once, the ones within ``interval``
seconds after it are counted, and the next line logged says how many there were, as ATS's
throttle warnings do (``check_throttle_warning``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds between two lines of one kind (ATS warns of throttling once a minute at most).
DEFAULT_INTERVAL = 60.0


class RateLimitedLog:
    """``log(msg, *args)``: log ``msg % args`` at ``level`` on ``logger``, unless a line of
    this kind was logged less than ``interval`` seconds ago (on ``clock``): then only count
    it. The next line logged ends with ``(N more since the last)``. Any thread."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self.clock = clock
        #: Occurrences not logged since the last line.
        self.suppressed = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def __call__(self, msg: str, *args: Any) -> bool:
        """Log or count one occurrence; True if it was logged."""
        now = self.clock()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                self.suppressed += 1
                return False
            self._last = now
            more, self.suppressed = self.suppressed, 0
        if more:
            self.logger.log(self.level, msg + " (%d more since the last)", *args, more)
        else:
            self.logger.log(self.level, msg, *args)
        return True


__all__ = ["DEFAULT_INTERVAL", "RateLimitedLog"]
