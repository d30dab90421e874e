"""A fixed-window rate limiter per client address, for the public (no login) endpoints.

In-process: each server process counts its own clients, which is what protects its own
database from a scraper. Behind a load balancer, set the limit per process accordingly (or
put a shared limiter in front); documented in docs/refunds.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shoudan.core.errors import DomainError, ErrorCode

WINDOW_SECONDS = 60.0
MAX_TRACKED = 100_000  # bound memory under a flood of distinct addresses


class RateLimiter:
    def __init__(
        self,
        per_window: int,
        window_seconds: float = WINDOW_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_window = per_window
        self.window = window_seconds
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> None:
        """Count one request for ``key``; over the limit raises ``rate_limited``."""
        now = self.monotonic()
        with self._lock:
            started, count = self._counts.get(key, (now, 0))
            if now - started >= self.window:
                started, count = now, 0
            if count >= self.per_window:
                retry = max(1, int(started + self.window - now))
                raise DomainError(
                    ErrorCode.RATE_LIMITED,
                    f"too many requests: try again in {retry} s",
                    retry_after=retry,
                )
            if len(self._counts) >= MAX_TRACKED:
                self._forget_old(now)
            self._counts[key] = (started, count + 1)

    def _forget_old(self, now: float) -> None:
        for key in [k for k, (s, _) in self._counts.items() if now - s >= self.window]:
            del self._counts[key]
        if len(self._counts) >= MAX_TRACKED:
            self._counts.clear()  # a flood of live addresses: start over rather than grow
