"""What each desktop may spend of the box, per minute, beyond its request
rate (``api/limits.py``): the bytes of file content it has read.

A token bucket per client, refilled continuously; a read is charged what it
may return (its ``max_bytes``, at most the box's read limit) before it runs,
so a desktop that asks for more than its share is refused at once (429) and
nothing is read."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from appliance.errors import ApplianceError


class ReadQuota:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str, n: int) -> None:
        """Charge ``n`` bytes to ``client``, or refuse (429) and charge nothing."""
        now = self._clock()
        rate = self.per_minute / 60.0
        with self._lock:
            left, last = self._buckets.get(client, (float(self.per_minute), now))
            left = min(float(self.per_minute), left + (now - last) * rate)
            if n > left:
                wait = (n - left) / rate if rate else float("inf")
                raise ApplianceError(
                    f"{client} may read {self.per_minute >> 20} MiB of file content per minute; "
                    f"try again in {min(wait, 60.0):.0f} s",
                    code="read_quota",
                    status=429,
                )
            self._buckets[client] = (left - n, now)
            if len(self._buckets) > 10_000:  # bounded memory, as the rate limiter
                self._buckets.clear()
