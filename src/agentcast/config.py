"""Engine settings: the engine's view of :class:`agentcast.settings.AgentcastSettings`.

Settings are a frozen dataclass so that a bridge, a runner and a test can each
hold their own without touching process-wide state, and building one stays
cheap. Its defaults and rules are not declared here but taken from the one
settings model (``agentcast.settings``), so the engine, the gateway and
``docs/operations.md`` cannot disagree. :meth:`EngineSettings.from_env` reads
``AGENTCAST_*`` variables; the table in ``docs/operations.md`` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .settings import LogBackend, Synchronous, check_field, default_of, read_env

__all__ = ["EngineSettings"]


def _d(name: str) -> Any:
    """The model's default of ``name`` (immutable values only; Path is)."""
    return default_of(name)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Everything below the network that can be tuned, with safe defaults.

    Every field is a field of :class:`agentcast.settings.AgentcastSettings`
    (sections ``log``, ``agents`` and ``engine``) with the same name, default
    and rule; constructing one validates each value against that rule and
    raises :class:`agentcast.settings.InvalidSetting` (an ``InvalidInput``)
    naming the field.
    """

    #: Where the SQLite database and the lock file live.
    data_dir: Path = field(default_factory=lambda: Path(_d("data_dir")))
    #: ``sqlite`` (durable, the default) or ``memory`` (tests; history lost on restart).
    log_backend: LogBackend = _d("log_backend")  # noqa: RUF009 - a str, immutable
    #: ``FULL`` (durable across power loss, the default) or ``NORMAL`` (opt-in,
    #: faster; a power loss may lose the last commits, never reissue a seq).
    sqlite_synchronous: Synchronous = _d("sqlite_synchronous")  # noqa: RUF009 - a str

    # --- events and tools
    #: Largest encoded event; ``emit`` refuses a larger one (``EventTooLarge``).
    max_event_bytes: int = _d("max_event_bytes")
    max_value_bytes: int = _d("max_value_bytes")
    history_max_turns: int = _d("history_max_turns")
    history_max_tokens: int = _d("history_max_tokens")
    text_coalesce_ms: float = _d("text_coalesce_ms")
    tool_timeout_s: float = _d("tool_timeout_s")
    tool_concurrency: int = _d("tool_concurrency")

    # --- runs
    run_timeout_s: float = _d("run_timeout_s")
    max_runs_per_user: int = _d("max_runs_per_user")
    max_queued_per_user: int = _d("max_queued_per_user")
    max_queued_per_thread: int = _d("max_queued_per_thread")
    max_concurrent_runs: int = _d("max_concurrent_runs")
    shutdown_grace_s: float = _d("shutdown_grace_s")

    # --- bridge health and recovery
    init_timeout_s: float = _d("init_timeout_s")
    health_interval_s: float = _d("health_interval_s")
    probe_timeout_s: float = _d("probe_timeout_s")
    recovery_base_s: float = _d("recovery_base_s")
    recovery_max_s: float = _d("recovery_max_s")
    recovery_attempts: int = _d("recovery_attempts")
    emit_buffer: int = _d("emit_buffer")
    append_batch: int = _d("append_batch")
    #: An append that has not committed within this is an outage (retried).
    append_timeout_s: float = _d("append_timeout_s")

    # --- log
    tail_events_per_thread: int = _d("tail_events_per_thread")
    #: Retention (docs/event-log.md): trim events older than this (``None``: no age bound).
    retention_max_age_s: float | None = _d("retention_max_age_s")
    #: Retention: keep at most this many events per thread (``None``: no bound).
    retention_max_events: int | None = _d("retention_max_events")
    retention_interval_s: float = _d("retention_interval_s")
    #: PostgreSQL instead of SQLite for the log and the store (``None``: SQLite).
    database_url: str | None = _d("database_url")
    pg_pool_max_size: int = _d("pg_pool_max_size")
    pg_head_check_interval_s: float = _d("pg_head_check_interval_s")
    pg_connect_timeout_s: float = _d("pg_connect_timeout_s")

    def __repr__(self) -> str:
        """Every field, the database URL's password masked."""
        from .dsn import mask_dsn

        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.database_url is not None:
            shown["database_url"] = mask_dsn(self.database_url)
        return "EngineSettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def __post_init__(self) -> None:
        # Validate (and coerce: "5" -> 5, str -> Path) with the model's rules.
        for f in fields(self):
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name)))

    def with_(self, **changes: Any) -> EngineSettings:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EngineSettings:
        """Build settings from ``AGENTCAST_<FIELD>`` variables, then ``overrides``."""
        values = read_env(environ, only={f.name for f in fields(cls)})
        values.update(overrides)
        return cls(**values)
