"""Server settings: flags and ``AGENTCAST_*`` environment variables, one table.

Every field here is documented in ``docs/operations.md``; the engine's own
limits (runs, tools, recovery) come from :class:`agentcast.config.EngineSettings`
and are read from the same environment, so one prefix configures everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..config import EngineSettings

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseSettings):
    """What the network side of agentcast can be told."""

    model_config = SettingsConfigDict(env_prefix="AGENTCAST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    #: Where SQLite, the lock file, the development secret and token live.
    data_dir: Path = Path(".agentcast")
    #: Extra agents to serve beside the built-in ones: ``package.module:attr``.
    agents: list[str] = Field(default_factory=list)
    default_agent: str = "demo"

    # --- auth
    #: HS256 secret. Unset: a development secret is created in ``data_dir``.
    jwt_secret: str | None = None
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    #: PEM public key for RS256/ES256 (or a path to one).
    jwt_public_key: str | None = None
    #: JWKS URL; with it (or a public key) ``iss`` and ``aud`` are checked.
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    ticket_ttl_s: float = 60.0
    dev_token_ttl_s: float = 30 * 24 * 3600.0
    #: Clock skew tolerated on ``exp``/``nbf``/``iat``, in seconds.
    jwt_leeway_s: float = 0.0

    # --- HTTP
    cors_origins: list[str] = Field(default_factory=list)
    #: Largest request body accepted (413 beyond).
    http_max_body_bytes: int = 1024 * 1024

    # --- WebSocket
    ws_max_frame_bytes: int = 64 * 1024
    #: Bytes a connection may have queued for sending before it is a slow consumer (4008).
    ws_send_queue_bytes: int = 4 * 1024 * 1024
    #: Inbound frames per second (token bucket refill) and burst.
    ws_rate_per_s: float = 20.0
    ws_rate_burst: int = 60
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    ws_compression: bool = False
    #: Events read per catch-up step (catch-up is paced from the log, never lag).
    catchup_batch: int = 256

    # --- SSE
    sse_keepalive_s: float = 15.0

    # --- engine (also see EngineSettings)
    log_backend: Literal["sqlite", "memory"] = "sqlite"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    shutdown_grace_s: float = 10.0
    #: At shutdown, after the runs ended: how long connections get to send the
    #: events already in the log (the cancelled runs' terminal events).
    shutdown_drain_s: float = Field(default=5.0, ge=0)
    #: Then how long closing them (1001) may take; one deadline for all of them.
    shutdown_close_s: float = Field(default=2.0, ge=0)

    def engine_settings(self) -> EngineSettings:
        """The engine's settings: ``AGENTCAST_*`` from the environment, then these fields."""
        return EngineSettings.from_env(
            data_dir=self.data_dir,
            log_backend=self.log_backend,
            sqlite_synchronous=self.sqlite_synchronous,
            shutdown_grace_s=self.shutdown_grace_s,
        )
