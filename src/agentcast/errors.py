"""Every error code, every close code, and the one exception tree of agentcast.

Why one module: a WebSocket ``error`` frame, an HTTP problem document, an SSE
stream's problem and a WebSocket close all answer from :data:`ERRORS` (and the
close-only codes from :data:`CLOSES`), so the transports cannot drift apart,
and docs/protocol.md and the JavaScript client's constants are checked against
these tables by tests (tests/test_errors.py).

The exception tree (``code`` is the row of :data:`ERRORS` it answers with)::

    Exception
    └── AgentcastError                 code, message, retryable (from its row)
        ├── InvalidInput               invalid_message  (bad arguments, bad events)
        │   ├── InvalidEvent           an event that fails the contract
        │   │   └── EventTooLarge      over max_event_bytes once encoded
        │   ├── InvalidSetting*        a bad setting, also a ValueError (settings)
        │   ├── BadRequest*            HTTP 400 instead of 422 (gateway.problems)
        │   └── PayloadTooLarge*       HTTP 413 instead of 422 (gateway.problems)
        ├── BadJson*                   bad_json         (gateway.problems)
        ├── ProtocolError*             bad_json | invalid_message | unknown_type (protocol)
        ├── NotFound                   not_found        (also: owned by someone else)
        ├── RunActive                  run_active
        ├── LimitExceeded              limit_exceeded
        ├── RateLimited                rate_limited
        ├── Unavailable                unavailable      (shutting down, bridge FAILED)
        │   └── LogUnavailable         the event log cannot be reached
        │       ├── FollowerClosed*    a follower was closed (log.follower)
        │       ├── HistoryLost*       events trimmed under a follower (log.follower)
        │       └── WriteOutcomeUnknown*  a commit may or may not have happened (db.sqlite)
        ├── AuthError                  unauthorized | forbidden (credentials)
        ├── AppendRejected             internal         (this append can never succeed)
        ├── InternalError              internal
        │   ├── InvalidTransition      lifecycle misuse
        │   ├── DataDirLocked          a second writer
        │   │   └── RunnerLocked       a second runner on a PostgreSQL database
        │   ├── RunnerLockLost         that lock lost to another process
        │   └── SchemaOutdated*        the PostgreSQL schema is not this code's (db.pg_migrate)
        ├── ToolError* → ToolTimeout*, SubRunFailed*, SubRunCancelled*  (agents.exceptions)
        ├── ServeError*                the server could not start (gateway.server)
        ├── LlmError* → LlmFirstTokenTimeout*, LlmChunkTimeout*, LlmBadStream*,
        │   LlmMaxSteps*, LlmOutputTruncated*, LlmConnectionError*,
        │   LlmProviderError* → LlmRateLimited*  (llm.errors),
        │   LocalModelNotInstalled*  (llm.local; also a FileNotFoundError)
        └── ClientError                what the Python client raises: a wire code,
                                       or one of its own (disconnected, timeout, …)

``*`` marks a class defined next to the code that raises it; every other class
is defined here. ``AuthError`` is re-exported by :mod:`agentcast.gateway.auth`
and ``ClientError`` by :mod:`agentcast.client`, where callers import them from.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import ClassVar, Final

__all__ = [
    "CLOSES",
    "CLOSE_CODE_EXPLANATIONS",
    "ERRORS",
    "ERROR_CODE_EXPLANATIONS",
    "NO_RECONNECT_CLOSE_CODES",
    "AgentcastError",
    "AppendRejected",
    "AuthError",
    "ClientError",
    "CloseCode",
    "CloseSpec",
    "DataDirLocked",
    "ErrorCode",
    "ErrorSpec",
    "EventTooLarge",
    "InternalError",
    "InvalidEvent",
    "InvalidInput",
    "InvalidTransition",
    "LimitExceeded",
    "LogUnavailable",
    "NotFound",
    "RateLimited",
    "RunActive",
    "RunnerLockLost",
    "RunnerLocked",
    "Unavailable",
    "spec_of",
]


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` frame or problem document."""

    BAD_JSON = "bad_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    NOT_FOUND = "not_found"
    RUN_ACTIVE = "run_active"
    LIMIT_EXCEEDED = "limit_exceeded"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"


class CloseCode(IntEnum):
    """WebSocket close codes agentcast uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SLOW_CONSUMER = 4008
    TOO_MANY_CONNECTIONS = 4029
    UNAUTHORIZED = 4401


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """How every transport answers one error code.

    Attributes:
        meaning: What the code says; also the message of an exception raised
            without one.
        http_status: The status of its problem document (an exception class
            may answer with a more precise one, see
            :attr:`AgentcastError.http_status`).
        title: The problem document's fixed ``title``.
        close_code: The WebSocket close code when the error ends a connection
            rather than one request; ``None`` when it never does.
        retryable: Whether the same request may succeed later unchanged (HTTP
            answers carry ``Retry-After`` then).
    """

    meaning: str
    http_status: int
    title: str
    close_code: CloseCode | None
    retryable: bool


#: The one error table: docs/protocol.md, the problem documents, the error
#: frames and the JavaScript client's constants are all checked against it.
ERRORS: Final[dict[ErrorCode, ErrorSpec]] = {
    ErrorCode.BAD_JSON: ErrorSpec(
        "The frame or request body is not valid JSON.", 400, "Malformed JSON", None, False
    ),
    ErrorCode.INVALID_MESSAGE: ErrorSpec(
        "A field is missing, of the wrong type or out of range.",
        422,
        "Invalid request",
        None,
        False,
    ),
    ErrorCode.UNKNOWN_TYPE: ErrorSpec(
        "The frame's type is not one the server knows.", 400, "Unknown type", None, False
    ),
    ErrorCode.NOT_FOUND: ErrorSpec(
        "No such thread, run or agent for this user. A resource of another user "
        "answers exactly the same.",
        404,
        "Not found",
        None,
        False,
    ),
    ErrorCode.RUN_ACTIVE: ErrorSpec(
        "The thread already has an active run and on_active is reject.",
        409,
        "Run already active",
        None,
        False,
    ),
    ErrorCode.LIMIT_EXCEEDED: ErrorSpec(
        "A bound was reached: runs per user or thread, subscriptions per connection, "
        "open tickets per user; the limit field names the setting.",
        429,
        "Limit exceeded",
        None,
        False,
    ),
    ErrorCode.RATE_LIMITED: ErrorSpec(
        "Too many frames or requests in too short a time; slow down.",
        429,
        "Rate limited",
        None,
        True,
    ),
    ErrorCode.UNAVAILABLE: ErrorSpec(
        "The server is shutting down or its event log is unavailable.",
        503,
        "Unavailable",
        CloseCode.GOING_AWAY,
        True,
    ),
    ErrorCode.INTERNAL: ErrorSpec(
        "An unexpected server error; nothing about it is revealed.",
        500,
        "Internal error",
        CloseCode.INTERNAL_ERROR,
        False,
    ),
    ErrorCode.UNAUTHORIZED: ErrorSpec(
        "Missing, invalid or expired credentials.",
        401,
        "Unauthorized",
        CloseCode.UNAUTHORIZED,
        False,
    ),
    ErrorCode.FORBIDDEN: ErrorSpec(
        "Valid credentials that are not allowed this.", 403, "Forbidden", None, False
    ),
}


@dataclass(frozen=True, slots=True)
class CloseSpec:
    """What one WebSocket close code means to a client.

    Attributes:
        meaning: Why the server closed (or the client, for ``NORMAL``).
        reconnect: Whether a client should reconnect and resume by itself.
            Only after ``UNAUTHORIZED`` must it not: the same token would be
            refused again.
    """

    meaning: str
    reconnect: bool


#: Every close code, including those no error code maps to (1000, 1009, 4008).
CLOSES: Final[dict[CloseCode, CloseSpec]] = {
    CloseCode.NORMAL: CloseSpec("Normal closure.", True),
    CloseCode.GOING_AWAY: CloseSpec("The server is shutting down; reconnect and resume.", True),
    CloseCode.MESSAGE_TOO_BIG: CloseSpec("An inbound frame exceeded the size limit.", True),
    CloseCode.INTERNAL_ERROR: CloseSpec(
        "The server hit an unexpected error; reconnect and resume.", True
    ),
    CloseCode.SLOW_CONSUMER: CloseSpec(
        "The client fell too far behind; reconnect and resume from the log.", True
    ),
    CloseCode.TOO_MANY_CONNECTIONS: CloseSpec(
        "The user has too many open connections; reconnect later (with backoff).", True
    ),
    CloseCode.UNAUTHORIZED: CloseSpec("Missing, invalid or expired credentials.", False),
}

#: ``meaning`` of each error code (kept for callers that only want the words).
ERROR_CODE_EXPLANATIONS: Final[dict[ErrorCode, str]] = {
    code: spec.meaning for code, spec in ERRORS.items()
}

#: ``meaning`` of each close code (kept for callers that only want the words).
CLOSE_CODE_EXPLANATIONS: Final[dict[CloseCode, str]] = {
    code: spec.meaning for code, spec in CLOSES.items()
}

#: After these close codes a client must not reconnect by itself.
NO_RECONNECT_CLOSE_CODES: Final = frozenset(
    code for code, spec in CLOSES.items() if not spec.reconnect
)

_BY_VALUE: Final[dict[str, ErrorSpec]] = {code.value: spec for code, spec in ERRORS.items()}


def spec_of(code: str) -> ErrorSpec | None:
    """The row of a code given as a plain string; ``None`` for a code not in the table.

    A :class:`ClientError` may carry a client-side code or one a newer server
    sent, so lookups by string must be able to miss.
    """
    return _BY_VALUE.get(code)


class AgentcastError(Exception):
    """Base of every agentcast error. Carries its wire code.

    ``code`` is typed ``str`` because :class:`ClientError` may hold a code
    that is not in :data:`ERRORS`; every server-side class sets an
    :class:`ErrorCode`.

    Args:
        message: A human-readable explanation, safe to show to the client;
            the code's ``meaning`` when empty.
    """

    code: str = ErrorCode.INTERNAL
    #: A more precise HTTP status than the code's row, for one class of cause.
    http_status: ClassVar[int | None] = None
    #: Whether ``message`` may be shown to a client. False for errors whose text
    #: comes from lower layers (file paths, DSNs, driver messages): clients then
    #: get the row's meaning and the server log gets the text.
    client_safe: bool = True

    def __init__(self, message: str = "") -> None:
        spec = spec_of(self.code)
        text = message or (spec.meaning if spec is not None else self.code)
        super().__init__(text)
        self.message = text

    @property
    def error_spec(self) -> ErrorSpec:
        """The row this error answers with (``internal``'s for an unknown code)."""
        return spec_of(self.code) or ERRORS[ErrorCode.INTERNAL]

    @property
    def retryable(self) -> bool:
        """Whether retrying unchanged may succeed: read from the table, never per class."""
        spec = spec_of(self.code)
        return spec is not None and spec.retryable


class InvalidInput(AgentcastError):
    """Arguments or a message that break the contract."""

    code = ErrorCode.INVALID_MESSAGE


class InvalidEvent(InvalidInput):
    """An event that fails validation; it is never appended."""


class EventTooLarge(InvalidEvent):
    """An event larger than ``max_event_bytes`` once encoded; it is never appended.

    Refused at ``emit``, before the log: appended, it would be sent to every
    viewer of the thread, and a viewer whose budget it exceeds could never
    read the thread again.
    """


class NotFound(AgentcastError):
    """Unknown thread, run or agent — or one owned by another user."""

    code = ErrorCode.NOT_FOUND


class RunActive(AgentcastError):
    """The thread has an active run and ``on_active`` is ``reject``."""

    code = ErrorCode.RUN_ACTIVE


class LimitExceeded(AgentcastError):
    """A bound was reached (runs, queued runs, subscriptions, tickets).

    Args:
        message: What was refused, safe to show to the client.
        limit: The setting that bounds it (``max_runs_per_user``,
            ``max_subscriptions_per_connection`` …): sent as the ``limit``
            field of the error frame or problem document, so a client can
            tell the bounds apart without parsing the message.
    """

    code = ErrorCode.LIMIT_EXCEEDED

    def __init__(self, message: str = "", limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class RateLimited(AgentcastError):
    """Too many requests in too short a time."""

    code = ErrorCode.RATE_LIMITED


class Unavailable(AgentcastError):
    """The server is shutting down, or the bridge is FAILED.

    Its text usually comes from the log or database layer (paths, DSNs,
    driver errors), so it is not shown to clients unless raised with
    ``client_safe=True`` by code that wrote the text for them.
    """

    code = ErrorCode.UNAVAILABLE
    client_safe = False

    def __init__(self, message: str = "", *, client_safe: bool = False) -> None:
        super().__init__(message)
        self.client_safe = client_safe


class LogUnavailable(Unavailable):
    """The event log could not be reached; the append did not happen."""


class AuthError(AgentcastError):
    """Credentials missing or refused; carries the HTTP status to answer with.

    Part of the tree so that its code, status and close code come from
    :data:`ERRORS` like every other error's; the gateway still catches it
    before :class:`AgentcastError` because it needs the ``WWW-Authenticate``
    header and a refused handshake.

    Args:
        reason: Why, safe to show to the client (never the token itself).
        status_code: 401 (no or bad credentials) or 403.
    """

    def __init__(self, reason: str, status_code: int = 401) -> None:
        self.code = ErrorCode.FORBIDDEN if status_code == 403 else ErrorCode.UNAUTHORIZED
        super().__init__(reason)
        self.reason = reason
        self.status_code = ERRORS[self.code].http_status


class AppendRejected(AgentcastError):
    """The log refused this append for good; nothing of it was stored.

    Not a :class:`LogUnavailable`: the same events would fail the same way
    (a constraint, a bad value, a projector bug), so retrying them would stall
    every emit queued behind them. The bridge fails only this emit.
    """

    code = ErrorCode.INTERNAL


class InternalError(AgentcastError):
    """An unexpected failure; its details are logged, not sent."""

    code = ErrorCode.INTERNAL


class InvalidTransition(InternalError):
    """A lifecycle transition that the table does not allow."""


class DataDirLocked(InternalError):
    """Another process already owns this SQLite data directory."""


class RunnerLocked(DataDirLocked):
    """Another process already runs agents on this PostgreSQL database (db.pg_runner_lock)."""


class RunnerLockLost(InternalError):
    """The runner lock of a PostgreSQL database was lost and another process holds it now."""


class ClientError(AgentcastError):
    """A request failed (an ``error`` frame), or the connection cannot continue.

    ``code`` is a wire error code (``not_found``, ``run_active`` …) or one of
    the client's own: ``disconnected`` (the request's connection dropped),
    ``unauthorized`` (refused credentials or close 4401), ``timeout`` (no
    reply within ``request_timeout``), ``closed``, ``bad_frame`` (the server
    sent a frame that cannot be read, so an event may be hidden in it).
    ``str()`` shows ``"<code>: <message>"`` so a log line names the code.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
