"""A rate limit on starting work, shared by threads (the yt-dlp calls of one job)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """At most `per_second` starts per second, across threads."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next, self.lock = 0.0, threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            stop.wait(start - now)
