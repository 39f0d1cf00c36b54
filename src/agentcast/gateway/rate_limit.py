"""The per-user HTTP request rate limit: one token bucket per user, bounded in memory.

Why per user and not per connection or per address: every ``/v1`` request is
authenticated, and the user is what the server's other bounds (runs,
connections, tickets) are counted by; one user's burst must never slow another
(docs/architecture.md invariant 6). A request over the bucket answers 429
``rate_limited`` with ``Retry-After`` (whole seconds until a token is back).

What is charged: every authenticated ``/v1`` HTTP request, including the one
that opens an SSE stream — but not the stream once open (its events are not
requests), nor ``/healthz``, ``/readyz``, ``/metrics``, the web page, or a
request refused for its credentials (it never becomes a user). The WebSocket
has its own frame limit (``ws_rate_per_s``).

Memory: a user's bucket that has refilled completely is indistinguishable
from a new one, so it is dropped when the map is swept; the map holds at most
:data:`MAX_TRACKED_USERS` users, and only if that many are *all* mid-burst is
the least recently seen one forgotten (it gets a full bucket back: the bound
errs on the side of the user, never of memory).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_TRACKED_USERS", "RATE_LIMIT_NAME", "UserRateLimiter"]

#: Users whose buckets are kept at once (see the module docstring).
MAX_TRACKED_USERS: Final = 100_000
#: The setting a refusal is counted and reported under.
RATE_LIMIT_NAME: Final = "http_rate_per_s"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class UserRateLimiter:
    """Token buckets by user id: ``rate_per_s`` refill, ``burst`` capacity.

    Args:
        rate_per_s: Tokens added per second (requests per second sustained).
        burst: Bucket capacity (requests accepted at once after a quiet time).
        clock: Monotonic clock (tests pass a fake one).
        max_users: Buckets kept at most (:data:`MAX_TRACKED_USERS`).
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = MAX_TRACKED_USERS,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._max_users = max_users
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, user_id: str) -> int:
        """Charge one request to ``user_id``: 0 if accepted, else the seconds to wait.

        A refused request is not charged; the wait is whole seconds (at least 1)
        until a token is back, the ``Retry-After`` of the 429.
        """
        now = self.clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[user_id] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(user_id)
            self._refill(bucket, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        wait = (1.0 - bucket.tokens) / self.rate_per_s
        return max(1, math.ceil(wait))

    # Private methods

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
        bucket.updated = now

    def _make_room(self, now: float) -> None:
        """Before adding a user to a full map: drop full buckets, then the least recent."""
        if len(self._buckets) < self._max_users:
            return
        for user_id, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.tokens >= self.burst:
                del self._buckets[user_id]
        while len(self._buckets) >= self._max_users:
            self._buckets.popitem(last=False)
