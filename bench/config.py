"""What ``python -m bench`` runs: the servers under test, the presets, the rules.

Two presets: ``smoke`` (every workload and server, tiny and a few seconds each;
CI asserts only correctness) and ``full`` (the sizes of the performance targets,
bounded to well under ten minutes on two cores). ``--set FIELD=VALUE``
overrides one field of a preset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "BASELINE",
    "CORRECTNESS",
    "KNEE_P99_MS",
    "MEMLOG",
    "MEMLOG_BATCH",
    "MEMORY",
    "NO_LOG",
    "PG_SYNC",
    "PG_URL",
    "POSTGRES",
    "PRESETS",
    "REPO",
    "SQLITE",
    "SQLITE_BATCH",
    "SQLITE_FULL",
    "Preset",
    "Target",
]

REPO: Final = Path(__file__).resolve().parent.parent
#: The knee rule of W2 (and of the baseline's W2): p99 must stay at or under this.
KNEE_P99_MS: Final = 50.0
#: Correctness counters that must be zero in every phase.
CORRECTNESS: Final = ("gaps", "duplicates", "reorders", "undelivered")
SQLITE_FULL: Final = "SQLite WAL, synchronous=FULL"
MEMORY: Final = "in-memory log (not durable)"
NO_LOG: Final = "none (no log, no auth)"
#: agentcast never turns ``synchronous_commit`` off; the bench checks the server's value
#: with SHOW before it measures and records every durability setting in the JSON.
PG_SYNC: Final = "PostgreSQL, synchronous_commit=on"
#: A PostgreSQL server and a database on it the bench may connect to in order to create
#: (and drop) its own ``agentcast_b_<hex>`` databases; the tests' variable is the fallback
#: so that one setting serves both.
PG_URL: Final = os.environ.get(
    "AGENTCAST_BENCH_PG_URL",
    os.environ.get("AGENTCAST_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)


@dataclass(frozen=True, slots=True)
class Target:
    """One server under test: agentcast with a log backend, or the baseline."""

    server: str  # "agentcast" | "baseline"
    backend: str | None = None  # "sqlite" | "memory" | "postgres" for agentcast
    #: Clients connect with ``?batch=1`` (docs/protocol.md): events queued for a
    #: connection go out as one array frame. Same server, same log, same
    #: schedule; only what the clients ask for differs.
    batch: bool = False

    @property
    def name(self) -> str:
        """A short label for tables: ``agentcast/sqlite``, ``agentcast/sqlite+batch``."""
        base = self.server if self.backend is None else f"{self.server}/{self.backend}"
        return base + ("+batch" if self.batch else "")

    @property
    def frames(self) -> str:
        """How events reach the clients: one frame each, or array frames (``?batch=1``)."""
        return "batch=1" if self.batch else "per event"

    @property
    def durability(self) -> str:
        """What an event's delivery waited for: every figure names it."""
        if self.server == "baseline":
            return NO_LOG
        if self.backend == "postgres":
            return PG_SYNC
        return SQLITE_FULL if self.backend == "sqlite" else MEMORY


SQLITE: Final = Target("agentcast", "sqlite")
MEMLOG: Final = Target("agentcast", "memory")
SQLITE_BATCH: Final = Target("agentcast", "sqlite", batch=True)
MEMLOG_BATCH: Final = Target("agentcast", "memory", batch=True)
#: ``agentcast serve --database-url``: the same process, its log and store in a
#: database of its own on the PostgreSQL server of :data:`PG_URL`.
POSTGRES: Final = Target("agentcast", "postgres")
BASELINE: Final = Target("baseline")


@dataclass(frozen=True, slots=True)
class Preset:
    """Sizes and durations of every workload; ``smoke`` and ``full`` are defined below."""

    name: str
    lead: float  # seconds between the last connect and slot 0 (set-up of the runs)
    fresh_servers: bool  # one server process per workload (clean RSS) or one per target
    fsync_samples: int
    # W1 / W5
    users: int
    conns_pattern: tuple[int, ...]
    rate: float
    duration: float
    warmup: float
    big_every: int  # W5: every n-th slot is a 64 KiB tool call
    w1_targets: tuple[Target, ...]
    w5_targets: tuple[Target, ...]
    # W2
    ramp_start: float
    ramp_factor: float
    ramp_steps: int
    ramp_duration: float
    ramp_warmup: float
    w2_targets: tuple[Target, ...]
    # W3
    idle_connections: int
    idle_per_user: int
    idle_settle: float
    w3_targets: tuple[Target, ...]
    # W4
    storm_users: int
    storm_rate: float
    storm_duration: float
    storm_drop_at: float
    storm_jitter: float
    w4_targets: tuple[Target, ...]
    drain_timeout: float = 15.0
    #: W2: steps that bisect between the last rate within the rule and the first past it.
    ramp_refine: int = 0
    #: W2: steps down (÷ ``ramp_factor``) when the first step is already past the rule.
    ramp_down_steps: int = 0


PRESETS: Final[dict[str, Preset]] = {
    # CI: every workload, every server, tiny and short; only correctness is asserted.
    "smoke": Preset(
        name="smoke",
        lead=0.3,
        fresh_servers=False,
        fsync_samples=20,
        users=3,
        conns_pattern=(1, 2, 3),
        rate=60.0,
        duration=1.2,
        warmup=0.3,
        big_every=5,
        w1_targets=(SQLITE, MEMLOG, SQLITE_BATCH, POSTGRES, BASELINE),
        w5_targets=(SQLITE, BASELINE),
        ramp_start=40.0,
        ramp_factor=2.0,
        ramp_steps=2,
        ramp_duration=1.0,
        ramp_warmup=0.3,
        w2_targets=(SQLITE, BASELINE),
        idle_connections=20,
        idle_per_user=5,
        idle_settle=0.3,
        w3_targets=(SQLITE, BASELINE),
        storm_users=5,
        storm_rate=50.0,
        storm_duration=2.5,
        storm_drop_at=1.0,
        storm_jitter=0.3,
        w4_targets=(SQLITE,),
        drain_timeout=10.0,
    ),
    # The performance targets, bounded to well under ten minutes on two cores.
    "full": Preset(
        name="full",
        lead=1.0,
        fresh_servers=True,
        fsync_samples=300,
        users=100,
        conns_pattern=(1, 2, 3, 2),  # 200 connections
        rate=2000.0,
        duration=15.0,
        warmup=3.0,
        big_every=20,  # 1 slot in 20 is two events, one of them big: ~4.8 % of events
        w1_targets=(SQLITE, MEMLOG, POSTGRES, BASELINE),
        w5_targets=(SQLITE, MEMLOG, BASELINE),
        ramp_start=1000.0,
        ramp_factor=1.4,
        ramp_steps=14,
        ramp_refine=2,
        ramp_down_steps=3,  # down to R = 364 (PostgreSQL on a loaded machine)
        ramp_duration=5.0,
        ramp_warmup=1.5,
        w2_targets=(SQLITE, MEMLOG, SQLITE_BATCH, MEMLOG_BATCH, POSTGRES, BASELINE),
        idle_connections=5000,
        idle_per_user=10,
        idle_settle=2.0,
        w3_targets=(SQLITE, BASELINE),
        storm_users=1000,  # 2,000 connections
        storm_rate=2000.0,
        storm_duration=14.0,
        storm_drop_at=6.0,
        storm_jitter=1.0,
        w4_targets=(SQLITE, MEMLOG, POSTGRES),
    ),
}
