"""Every error and close code agentcast speaks, and the one exception tree.

::

    AgentcastError                 code, message, retryable
    ├── InvalidInput               invalid_message  (bad arguments, bad events)
    │   └── InvalidEvent           an event that fails the contract
    ├── NotFound                   not_found        (also: owned by someone else)
    ├── RunActive                  run_active
    ├── LimitExceeded              limit_exceeded
    ├── RateLimited                rate_limited
    ├── Unavailable                unavailable      (shutting down, bridge FAILED)
    │   └── LogUnavailable         the event log cannot be reached
    ├── AppendRejected             internal         (this append can never succeed)
    ├── InternalError              internal
    ├── InvalidTransition          internal         (lifecycle misuse)
    └── DataDirLocked              internal         (a second writer)

The codes match docs/protocol.md exactly; ``ERROR_CODE_EXPLANATIONS`` and
``CLOSE_CODE_EXPLANATIONS`` are the one table the docs are written from.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "CLOSE_CODE_EXPLANATIONS",
    "ERROR_CODE_EXPLANATIONS",
    "AgentcastError",
    "AppendRejected",
    "CloseCode",
    "DataDirLocked",
    "ErrorCode",
    "InternalError",
    "InvalidEvent",
    "InvalidInput",
    "InvalidTransition",
    "LimitExceeded",
    "LogUnavailable",
    "NotFound",
    "RateLimited",
    "RunActive",
    "Unavailable",
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


ERROR_CODE_EXPLANATIONS: dict[ErrorCode, str] = {
    ErrorCode.BAD_JSON: "The frame is not valid JSON.",
    ErrorCode.INVALID_MESSAGE: "A field is missing, of the wrong type or out of range.",
    ErrorCode.UNKNOWN_TYPE: "The frame's type is not one the server knows.",
    ErrorCode.NOT_FOUND: (
        "No such thread, run or agent for this user. A resource of another user "
        "answers exactly the same."
    ),
    ErrorCode.RUN_ACTIVE: "The thread already has an active run and on_active is reject.",
    ErrorCode.LIMIT_EXCEEDED: "A per-user or per-thread bound on runs was reached.",
    ErrorCode.RATE_LIMITED: "Too many frames in too short a time; slow down.",
    ErrorCode.UNAVAILABLE: "The server is shutting down or its event log is unavailable.",
    ErrorCode.INTERNAL: "An unexpected server error; nothing about it is revealed.",
}


class CloseCode(IntEnum):
    """WebSocket close codes agentcast uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SLOW_CONSUMER = 4008
    UNAUTHORIZED = 4401


CLOSE_CODE_EXPLANATIONS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "Normal closure.",
    CloseCode.GOING_AWAY: "The server is shutting down; reconnect and resume.",
    CloseCode.MESSAGE_TOO_BIG: "An inbound frame exceeded the size limit.",
    CloseCode.INTERNAL_ERROR: "The server hit an unexpected error; reconnect and resume.",
    CloseCode.SLOW_CONSUMER: "The client fell too far behind; reconnect and resume from the log.",
    CloseCode.UNAUTHORIZED: "Missing, invalid or expired credentials.",
}


class AgentcastError(Exception):
    """Base of every agentcast error. Carries its wire code.

    Args:
        message: A human-readable explanation, safe to show to the client.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or ERROR_CODE_EXPLANATIONS[self.code])
        self.message = message or ERROR_CODE_EXPLANATIONS[self.code]


class InvalidInput(AgentcastError):
    """Arguments or a message that break the contract."""

    code = ErrorCode.INVALID_MESSAGE


class InvalidEvent(InvalidInput):
    """An event that fails validation; it is never appended."""


class NotFound(AgentcastError):
    """Unknown thread, run or agent — or one owned by another user."""

    code = ErrorCode.NOT_FOUND


class RunActive(AgentcastError):
    """The thread has an active run and ``on_active`` is ``reject``."""

    code = ErrorCode.RUN_ACTIVE


class LimitExceeded(AgentcastError):
    """A bound on concurrent or queued runs was reached."""

    code = ErrorCode.LIMIT_EXCEEDED


class RateLimited(AgentcastError):
    """Too many requests in too short a time."""

    code = ErrorCode.RATE_LIMITED
    retryable = True


class Unavailable(AgentcastError):
    """The server is shutting down, or the bridge is FAILED."""

    code = ErrorCode.UNAVAILABLE
    retryable = True


class LogUnavailable(Unavailable):
    """The event log could not be reached; the append did not happen."""


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
