"""Measurements of the load generator, kept apart from its sockets.

:class:`Tracker` judges one connection's stream by ``seq`` alone (docs/protocol.md:
clients order by ``seq``, never by ``ts``); :func:`percentiles` uses the
nearest-rank definition so that p99.9 of 1,000 samples is a real sample;
:class:`Usage` reads the server's CPU and RSS with psutil, so the cost per
event comes from the kernel's accounting, not from the server's own claims.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]

__all__ = ["Tracker", "Usage", "percentiles", "raise_nofile_limit", "sockstat_tcp_pages"]


class Tracker:
    """Correctness of one connection's view of one thread, by ``seq`` alone."""

    __slots__ = ("contig", "duplicates", "expected", "max_seen", "missing", "reorders")

    def __init__(self, expected: int) -> None:
        self.expected = expected  # the seq of the run's terminal event
        self.contig = 0  # every seq <= contig was received
        self.max_seen = 0
        self.missing: set[int] = set()  # holes below max_seen
        self.duplicates = 0
        self.reorders = 0

    def see(self, seq: int) -> None:
        """Account for one received event."""
        if seq == self.max_seen + 1 and self.contig == self.max_seen:
            self.contig = self.max_seen = seq  # the common case
            return
        if seq > self.max_seen:
            self.missing.update(range(self.max_seen + 1, seq))
            self.max_seen = seq
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reorders += 1
        else:
            self.duplicates += 1
            return
        while self.contig < self.max_seen and self.contig + 1 not in self.missing:
            self.contig += 1

    @property
    def complete(self) -> bool:
        """Every event of the run was received."""
        return self.contig >= self.expected


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50 / p99 / p99.9 / max in milliseconds (nearest rank), and the count."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000, 3)

    return {
        "count": n,
        "p50": rank(0.50),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": round(ordered[-1] * 1000, 3),
    }


@dataclass(slots=True)
class Usage:
    """CPU and memory of the server, this process and the whole machine at one instant."""

    at: float
    server_cpu: float
    server_rss: int
    own_cpu: float
    machine_busy: float

    @classmethod
    def sample(cls, server: psutil.Process) -> Usage:
        """Read every counter now."""
        st = server.cpu_times()
        own = psutil.Process().cpu_times()
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        return cls(
            at=time.time(),
            server_cpu=st.user + st.system,
            server_rss=server.memory_info().rss,
            own_cpu=own.user + own.system,
            machine_busy=sum(machine) - idle,
        )


def sockstat_tcp_pages() -> int | None:
    """Kernel TCP socket memory in pages (``/proc/net/sockstat``), ``None`` elsewhere."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("mem") + 1])
    except (OSError, ValueError):
        return None
    return None


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (thousands of sockets); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
