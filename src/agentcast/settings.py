"""The one settings model: every ``AGENTCAST_*`` variable, its default and its rule.

agentcast had three places that each declared some settings (the engine's
dataclass, the agents' dataclass, the gateway's pydantic-settings class), so a
default or a bound could differ between them and nothing checked the table in
``docs/operations.md``. Now each setting is declared once, in one of six
sections below; :class:`AgentcastSettings` groups them (nested in code:
``settings.engine.run_timeout_s``) while the environment stays flat
(``AGENTCAST_RUN_TIMEOUT_S``), so no deployment has to rename a variable.
Every flat name is therefore unique across sections (a test checks it).

The older classes are views of this model and keep their public API:
:class:`agentcast.gateway.settings.GatewaySettings` inherits every section's
fields (flat), :class:`agentcast.config.EngineSettings` and
:class:`agentcast.agents.settings.AgentSettings` stay light frozen dataclasses
whose defaults come from here and whose values are checked by
:func:`check_field` against the same rules.

The rules, so that a typo cannot silently disable a safety bound:

* **timeouts, intervals, TTLs and rates** (``*_timeout_s``, ``*_interval_s``,
  ``*_ttl_s``, ``recovery_*_s``, ``sse_keepalive_s``, ``ws_rate_per_s``) are
  ``> 0``: zero would mean "fail at once" or "spin", never "no limit".
* **limits and budgets** (concurrency, batch sizes, buffers, byte budgets) are
  ``>= 1``; ``max_value_bytes`` is ``>= 64`` so a truncation marker still fits.
* **``>= 0`` on purpose**: ``shutdown_grace_s``, ``shutdown_drain_s`` and
  ``shutdown_close_s`` (``0``: do not wait; tests use it), ``jwt_leeway_s``
  (``0``: no clock skew tolerated), ``text_coalesce_ms`` (``0``: send each
  chunk), ``max_queued_per_user`` and ``max_queued_per_thread`` (``0``:
  nothing may wait).
* ``port`` is ``0..65535`` (``0``: any free port); enums are ``Literal``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import InvalidInput
from .events import DEFAULT_MAX_VALUE_BYTES

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "AgentcastSettings",
    "AgentsSection",
    "AuthSection",
    "EngineSection",
    "GatewaySection",
    "InvalidSetting",
    "LlmSection",
    "LogSection",
    "Origin",
    "check_consistency",
    "check_field",
    "default_of",
    "env_name",
    "field_info",
    "is_dsn",
    "is_secret",
    "load_settings",
    "read_env",
]

ENV_PREFIX = "AGENTCAST_"

#: A timeout, interval, TTL or rate: zero or less is refused (see the module docstring).
Seconds = Annotated[float, Gt(0)]
#: A duration where ``0`` legitimately means "do not wait".
Wait = Annotated[float, Ge(0)]
#: A count, size or byte budget: at least one.
Limit = Annotated[int, Ge(1)]
#: A queue bound where ``0`` means "nothing may wait".
QueueBound = Annotated[int, Ge(0)]

#: Marks a field whose value must never be printed (``agentcast settings`` shows ``***``).
_SECRET: dict[str, Any] = {"secret": True}

LogBackend = Literal["sqlite", "memory"]
Synchronous = Literal["FULL", "NORMAL"]


class InvalidSetting(InvalidInput, ValueError):
    """A setting breaks its rule.

    Both an :class:`~agentcast.errors.InvalidInput` (what ``EngineSettings``
    always raised) and a :class:`ValueError` (what ``AgentSettings`` raised),
    so callers of either keep working.
    """


# --- sections ------------------------------------------------------------------------
# Not frozen: GatewaySettings inherits them and tests adjust a live gateway's settings.


class EngineSection(BaseModel):
    """Runs, scheduling, shutdown and the bridge's health and recovery."""

    run_timeout_s: Seconds = 300.0
    max_runs_per_user: Limit = 3
    max_queued_per_user: QueueBound = 20
    max_queued_per_thread: QueueBound = 10
    max_concurrent_runs: Limit = 100
    #: On shutdown, how long running runs get to finish (``0``: cancel them at once).
    shutdown_grace_s: Wait = 10.0
    init_timeout_s: Seconds = 30.0
    health_interval_s: Seconds = 60.0
    probe_timeout_s: Seconds = 5.0
    recovery_base_s: Seconds = 1.0
    recovery_max_s: Seconds = 30.0
    recovery_attempts: Limit = 6
    emit_buffer: Limit = 10_000
    append_batch: Limit = 512
    #: An append that has not committed within this is an outage (retried).
    append_timeout_s: Seconds = 30.0
    #: Largest encoded event (envelope and payload); ``emit`` refuses a larger one
    #: with :class:`~agentcast.errors.EventTooLarge`, so no viewer ever gets it.
    max_event_bytes: Limit = 1024 * 1024


class LogSection(BaseModel):
    """Where and how events are stored."""

    #: Where the SQLite database, the lock file, the development secret and token live.
    data_dir: Path = Path(".agentcast")
    #: ``sqlite`` (durable, the default) or ``memory`` (tests; history lost on restart).
    log_backend: LogBackend = "sqlite"
    #: ``FULL`` (durable across power loss) or ``NORMAL`` (faster; may lose the last commits).
    sqlite_synchronous: Synchronous = "FULL"
    tail_events_per_thread: Limit = 1024
    #: Retention: events older than this are trimmed (unset: kept whatever their age).
    retention_max_age_s: Seconds | None = None
    #: Retention: at most this many events kept per thread (unset: no bound).
    retention_max_events: Limit | None = None
    #: How often the retention sweep runs (only when a retention bound is set).
    retention_interval_s: Seconds = 60.0
    #: ``postgresql://user:password@host:port/db?sslmode=…``: PostgreSQL holds the log
    #: and the store instead of the data directory's SQLite database (unset: SQLite).
    #: Shown with its password masked (:func:`agentcast.dsn.mask_dsn`).
    database_url: str | None = Field(default=None, json_schema_extra={"dsn": True})
    #: Connections of the PostgreSQL pool (reads and the store), beside the writer's
    #: and the listener's own connection.
    pg_pool_max_size: Limit = 10
    #: How often each process checks the heads of the threads it follows, so that a
    #: lost notification delays an event by at most this long.
    pg_head_check_interval_s: Seconds = 1.0
    #: Connecting to PostgreSQL (each attempt) gives up after this long.
    pg_connect_timeout_s: Seconds = 10.0


class GatewaySection(BaseModel):
    """The network side: listening, agents served, HTTP, WebSocket, SSE, shutdown."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    #: Extra agents to serve beside the built-in ones: ``package.module:attr``.
    agents: list[str] = Field(default_factory=list)
    default_agent: str = "demo"
    cors_origins: list[str] = Field(default_factory=list)
    #: Largest request body accepted (413 beyond).
    http_max_body_bytes: Limit = 1024 * 1024
    #: Per-user HTTP request rate (token-bucket refill per second) and burst (429 beyond).
    http_rate_per_s: Seconds = 20.0
    http_rate_burst: Limit = 60
    #: Largest page of ``GET /v1/threads/{id}/events`` in bytes (a page has at least one event).
    http_events_page_bytes: Limit = 1024 * 1024
    #: Subscriptions one WebSocket may hold at once (``limit_exceeded`` beyond).
    max_subscriptions_per_connection: Limit = 100
    #: Open WebSocket and SSE connections of one user in this process (close 4029 / 429 beyond).
    max_connections_per_user: Limit = 20
    ws_max_frame_bytes: Limit = 64 * 1024
    #: Bytes a connection may have queued for sending before it is a slow consumer (4008).
    ws_send_queue_bytes: Limit = 4 * 1024 * 1024
    #: Inbound frames per second (token bucket refill) and burst.
    ws_rate_per_s: Seconds = 20.0
    ws_rate_burst: Limit = 60
    ws_ping_interval_s: Seconds = 20.0
    ws_ping_timeout_s: Seconds = 20.0
    ws_compression: bool = False
    #: Events read per catch-up step (catch-up is paced from the log, never lag).
    catchup_batch: Limit = 256
    sse_keepalive_s: Seconds = 15.0
    #: At shutdown, after the runs ended: how long connections get to send the
    #: events already in the log (the cancelled runs' terminal events).
    shutdown_drain_s: Wait = 5.0
    #: Then how long closing them (1001) may take; one deadline for all of them.
    shutdown_close_s: Wait = 2.0


class AuthSection(BaseModel):
    """Who may connect: JWT verification and the tokens agentcast mints itself."""

    #: HS256 secret. Unset (and no public key or JWKS URL): ``serve`` and
    #: ``create_app`` refuse to start unless in development mode, which signs
    #: with a random secret created in ``data_dir``.
    jwt_secret: str | None = Field(default=None, repr=False, json_schema_extra=_SECRET)
    #: Not restricted here: ``Authenticator`` refuses ``none`` with its own message.
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    #: PEM public key for RS256/ES256 (or a path to one).
    jwt_public_key: str | None = Field(default=None, repr=False, json_schema_extra=_SECRET)
    #: JWKS URL; with it (or a public key) ``iss`` and ``aud`` are checked.
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    ticket_ttl_s: Seconds = 60.0
    #: Unused WebSocket tickets one user may hold (``limit_exceeded`` beyond).
    max_tickets_per_user: Limit = 10
    #: Longest token lifetime accepted: a token whose ``exp`` lies further than
    #: this after its ``iat`` (or after now) is refused, as is one without ``exp``.
    max_token_lifetime_s: Seconds = 7 * 24 * 3600.0
    dev_token_ttl_s: Seconds = 7 * 24 * 3600.0
    #: Clock skew tolerated on ``exp``/``nbf``/``iat``, in seconds (``0``: none).
    jwt_leeway_s: Wait = 0.0

    @property
    def has_key(self) -> bool:
        """Whether a key to check tokens with is configured (secret, public key or JWKS)."""
        return bool(self.jwt_secret or self.jwt_public_key or self.jwks_url)


class AgentsSection(BaseModel):
    """Per-run knobs of the agent API (:class:`agentcast.agents.AgentSettings`)."""

    #: Window in which streamed text is merged into one ``text_delta`` (``0``: each chunk).
    text_coalesce_ms: Wait = 30.0
    tool_timeout_s: Seconds = 60.0
    tool_concurrency: Limit = 4
    #: Larger values are replaced by a truncation marker, which needs 64 bytes.
    max_value_bytes: Annotated[int, Ge(64)] = DEFAULT_MAX_VALUE_BYTES
    #: A run's conversation history: at most this many earlier turns of its thread ...
    history_max_turns: Limit = 20
    #: ... and at most this many tokens (estimated as characters / 4), oldest dropped first.
    history_max_tokens: Limit = 8000


class LlmSection(BaseModel):
    """Defaults of the LLM agent (``agentcast.llm.ChatAgent``); its arguments win."""

    llm_model: str = "gpt-4o-mini"
    #: An OpenAI-compatible base URL (vLLM, llama.cpp, Ollama …); unset: OpenAI's.
    llm_base_url: str | None = None
    llm_api_key: str | None = Field(default=None, repr=False, json_schema_extra=_SECRET)
    #: A model stream that sends nothing for this long after the request ends the run.
    llm_first_token_timeout_s: Seconds = 60.0
    #: A model stream silent for this long between two chunks ends the run.
    llm_chunk_timeout_s: Seconds = 30.0
    #: Model calls per run at most (each tool round is one); then the run fails.
    llm_max_steps: Limit = 8
    #: Retries of a model call that has emitted nothing yet (429, 5xx, connection).
    llm_max_retries: QueueBound = 2


#: Section name -> its model, in the order ``agentcast settings`` prints them.
SECTIONS: dict[str, type[BaseModel]] = {
    "engine": EngineSection,
    "log": LogSection,
    "gateway": GatewaySection,
    "auth": AuthSection,
    "agents": AgentsSection,
    "llm": LlmSection,
}


def _flat_fields() -> dict[str, tuple[str, FieldInfo]]:
    fields: dict[str, tuple[str, FieldInfo]] = {}
    for section, model in SECTIONS.items():
        for name, info in model.model_fields.items():
            if name in fields:  # pragma: no cover - a programming error, caught at import
                raise RuntimeError(f"setting {name} is declared in {fields[name][0]} and {section}")
            fields[name] = (section, info)
    return fields


#: Flat field name -> (section, field). The environment is flat, so names are unique.
FIELDS: dict[str, tuple[str, FieldInfo]] = _flat_fields()


def env_name(name: str) -> str:
    """The environment variable of the flat field ``name``."""
    return f"{ENV_PREFIX}{name.upper()}"


def field_info(name: str) -> FieldInfo:
    """The declaration (type, default, bounds) of the flat field ``name``."""
    return FIELDS[name][1]


def default_of(name: str) -> Any:
    """The default of ``name``, so views declare no default of their own."""
    return field_info(name).get_default(call_default_factory=True)


def is_dsn(name: str) -> bool:
    """Whether ``name`` holds a database URL (shown with its password masked)."""
    extra = field_info(name).json_schema_extra
    return isinstance(extra, dict) and extra.get("dsn") is True


def is_secret(name: str) -> bool:
    """Whether ``name`` holds a secret (never printed)."""
    extra = field_info(name).json_schema_extra
    return isinstance(extra, dict) and extra.get("secret") is True


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    info = field_info(name)
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated.__class_getitem__((annotation, *info.metadata))  # type: ignore[attr-defined]
    return TypeAdapter(annotation)


def _problem(name: str, message: str, value: Any) -> str:
    """One field's complaint: its name, its variable, the rule and (unless secret) the value."""
    if is_secret(name):
        got = "***"
    elif is_dsn(name) and isinstance(value, str):
        from .dsn import mask_dsn

        got = repr(mask_dsn(value))
    else:
        got = repr(value)
    return f"{name} ({env_name(name)}): {message}, got {got}"


def _describe(name: str, exc: ValidationError) -> str:
    return "; ".join(_problem(name, str(e["msg"]), e.get("input")) for e in exc.errors())


def check_field(name: str, value: Any) -> Any:
    """``value`` validated (and coerced) by the rule of ``name``.

    Raises:
        InvalidSetting: naming the field and its variable, e.g.
            ``run_timeout_s (AGENTCAST_RUN_TIMEOUT_S): Input should be greater than 0``.
    """
    try:
        return _adapter(name).validate_python(value)
    except ValidationError as exc:
        raise InvalidSetting(_describe(name, exc)) from None


def read_env(
    environ: Mapping[str, str] | None = None, only: Collection[str] | None = None
) -> dict[str, Any]:
    """The flat fields set in ``environ`` (default ``os.environ``), as raw values.

    ``only`` limits it to those fields, so a view is not refused over a
    variable it does not use.

    Names match case-insensitively, like pydantic-settings does for
    ``GatewaySettings``; list fields are JSON (``AGENTCAST_CORS_ORIGINS='["…"]'``).
    """
    env = os.environ if environ is None else environ
    upper = {key.upper(): value for key, value in env.items() if key.upper().startswith(ENV_PREFIX)}
    values: dict[str, Any] = {}
    for name, (_, info) in FIELDS.items():
        if only is not None and name not in only:
            continue
        raw = upper.get(env_name(name))
        if raw is None:
            continue
        if "list[" in str(info.annotation):
            try:
                values[name] = json.loads(raw)
            except ValueError:
                raise InvalidSetting(f"{name} ({env_name(name)}): not a JSON list") from None
        else:
            values[name] = raw
    return values


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        if name not in FIELDS:
            raise InvalidSetting(f"unknown setting {name!r}")
        nested.setdefault(FIELDS[name][0], {})[name] = value
    return nested


class _FlatEnvSource(PydanticBaseSettingsSource):
    """Reads the flat ``AGENTCAST_<FIELD>`` variables into the nested sections."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        return _nest(read_env())


class AgentcastSettings(BaseSettings):
    """Every setting, grouped by section; the environment is flat (see the module docstring).

    ``AgentcastSettings()`` reads ``os.environ``; keyword arguments (sections as
    dicts or models) win over it. :func:`load_settings` also records where each
    value came from.
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    engine: EngineSection = Field(default_factory=EngineSection)
    log: LogSection = Field(default_factory=LogSection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    auth: AuthSection = Field(default_factory=AuthSection)
    agents: AgentsSection = Field(default_factory=AgentsSection)
    llm: LlmSection = Field(default_factory=LlmSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments first, then the flat environment; no ``.env`` or secret files."""
        return init_settings, _FlatEnvSource(settings_cls)

    @model_validator(mode="after")
    def _consistent(self) -> AgentcastSettings:
        check_consistency(self.flat())
        return self

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name (what the views are built from)."""
        values: dict[str, Any] = {}
        for section in SECTIONS:
            values.update(dict(getattr(self, section)))
        return values


def check_consistency(values: Mapping[str, Any]) -> None:
    """Rules between fields, which no single field's bound can state.

    Raises:
        ValueError: naming the fields and their variables.
    """
    problems: list[str] = []
    if values["ws_send_queue_bytes"] < values["max_event_bytes"]:
        problems.append(
            f"ws_send_queue_bytes ({env_name('ws_send_queue_bytes')}) must be at least "
            f"max_event_bytes ({env_name('max_event_bytes')}): a larger event could never "
            "be sent and every viewer of its thread would be closed as a slow consumer"
        )
    if values["dev_token_ttl_s"] > values["max_token_lifetime_s"]:
        problems.append(
            f"dev_token_ttl_s ({env_name('dev_token_ttl_s')}) must not exceed "
            f"max_token_lifetime_s ({env_name('max_token_lifetime_s')}): minted tokens "
            "would be refused"
        )
    url = values.get("database_url")
    if url is not None:
        from .dsn import is_postgres_url, mask_dsn

        if not is_postgres_url(url):
            problems.append(
                f"database_url ({env_name('database_url')}) must be a postgresql:// URL, "
                f"not {mask_dsn(url)!r}"
            )
        if values["log_backend"] == "memory":
            problems.append(
                f"database_url ({env_name('database_url')}) and log_backend=memory "
                f"({env_name('log_backend')}) contradict each other: set one"
            )
    if problems:
        raise ValueError("; ".join(problems))


Origin = Literal["default", "environment", "flag"]


def load_settings(
    environ: Mapping[str, str] | None = None, **flags: Any
) -> tuple[AgentcastSettings, dict[str, Origin]]:
    """The effective settings and, per flat field, where its value came from.

    ``flags`` (flat names; ``None`` means "not given") win over ``environ``,
    which wins over the defaults: the order ``agentcast serve`` applies.

    Raises:
        InvalidSetting: a value breaks its rule; the message names every such field.
    """
    from_env = read_env(environ)
    given = {name: value for name, value in flags.items() if value is not None}
    merged = {**from_env, **given}
    try:
        settings = AgentcastSettings.model_validate(_nest(merged))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            # loc is (section, field[, item]); the flat name is what users know.
            loc = error["loc"]
            if not loc:  # a rule between fields (check_consistency) names them itself
                problems.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            name = str(loc[1]) if len(loc) > 1 else str(loc[0])
            value = error.get("input")
            problems.append(
                _problem(name, str(error["msg"]), value)
                if name in FIELDS
                else f"{name}: {error['msg']}"
            )
        raise InvalidSetting("; ".join(problems)) from None
    origins: dict[str, Origin] = {}
    for name in FIELDS:
        origins[name] = (
            "flag" if name in given else "environment" if name in from_env else "default"
        )
    return settings, origins
