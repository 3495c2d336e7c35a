"""pipeline.data.audioset.rate_limit: starts spaced across threads."""

from __future__ import annotations

import threading
import time

from pipeline.data.audioset.rate_limit import RateLimiter


def test_rate_limit_spaces_the_calls():
    limiter, stop = RateLimiter(20.0), threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=limiter.wait, args=(stop,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.24  # 6 starts at 20/s: the last one 0.25 s after the first
