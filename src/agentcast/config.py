"""Engine settings: every limit with its documented default (docs/architecture.md invariant 6).

Settings are a frozen dataclass so that a bridge, a runner and a test can each
hold their own without touching process-wide state. :meth:`EngineSettings.from_env`
reads ``AGENTCAST_*`` variables; the table in ``docs/operations.md`` lists them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInput

__all__ = ["EngineSettings"]

LogBackend = Literal["sqlite", "memory"]
Synchronous = Literal["FULL", "NORMAL"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Everything below the network that can be tuned, with safe defaults."""

    #: Where the SQLite database and the lock file live.
    data_dir: Path = field(default_factory=lambda: Path(".agentcast"))
    #: ``sqlite`` (durable, the default) or ``memory`` (tests; history lost on restart).
    log_backend: LogBackend = "sqlite"
    #: ``FULL`` (durable across power loss, the default) or ``NORMAL`` (opt-in,
    #: faster; a power loss may lose the last commits, never reissue a seq).
    sqlite_synchronous: Synchronous = "FULL"

    # --- events and tools
    max_value_bytes: int = 256 * 1024
    text_coalesce_ms: float = 30.0
    tool_timeout_s: float = 60.0
    tool_concurrency: int = 4

    # --- runs
    run_timeout_s: float = 300.0
    max_runs_per_user: int = 3
    max_queued_per_user: int = 20
    max_queued_per_thread: int = 10
    max_concurrent_runs: int = 100
    shutdown_grace_s: float = 10.0

    # --- bridge health and recovery
    init_timeout_s: float = 30.0
    health_interval_s: float = 60.0
    probe_timeout_s: float = 5.0
    recovery_base_s: float = 1.0
    recovery_max_s: float = 30.0
    recovery_attempts: int = 6
    emit_buffer: int = 10_000
    append_batch: int = 512
    #: An append that has not committed within this is an outage (retried).
    append_timeout_s: float = 30.0

    # --- log
    tail_events_per_thread: int = 1024

    def __post_init__(self) -> None:
        if self.log_backend not in ("sqlite", "memory"):
            raise InvalidInput(f"unknown log backend {self.log_backend!r}")
        if self.sqlite_synchronous not in ("FULL", "NORMAL"):
            raise InvalidInput("sqlite_synchronous must be FULL or NORMAL")
        for name in (
            "max_runs_per_user",
            "max_concurrent_runs",
            "tool_concurrency",
            "emit_buffer",
            "append_batch",
            "recovery_attempts",
        ):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1")

    def with_(self, **changes: Any) -> EngineSettings:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EngineSettings:
        """Build settings from ``AGENTCAST_<FIELD>`` variables, then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"AGENTCAST_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, cls.__dataclass_fields__[f.name].type)
        values.update(overrides)
        return cls(**values)


def _parse(name: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    try:
        if text == "Path":
            return Path(raw)
        if text.startswith("int"):
            return None if raw.lower() in ("", "none") else int(raw)
        if text == "float":
            return float(raw)
    except ValueError:
        raise InvalidInput(f"AGENTCAST_{name.upper()}={raw!r} is not a number") from None
    return raw
