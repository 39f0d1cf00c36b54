"""HTTP errors as ``application/problem+json`` (RFC 9457), one shape for every endpoint.

Every error body is ``{"type", "title", "status", "detail", "code"}``. ``code``
is the same stable code a WebSocket ``error`` frame carries
(:class:`agentcast.errors.ErrorCode`), plus ``unauthorized`` and ``forbidden``
for credentials, which only HTTP needs (a WebSocket refuses the handshake or
closes with 4401 instead). ``type`` is ``urn:agentcast:problem:<code>``.

An ``internal`` problem never carries the exception's text: it is logged, and
the client gets a fixed sentence (docs/architecture.md: errors reveal nothing).

:func:`api_endpoint` wraps every HTTP endpoint: authentication, the mapping
from exceptions to problems and the request counter live in one place, so no
endpoint can forget one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ERROR_CODE_EXPLANATIONS, AgentcastError, ErrorCode, InvalidInput
from .auth import AuthError, Principal

if TYPE_CHECKING:
    from .context import Gateway

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "BadJson",
    "BadRequest",
    "PayloadTooLarge",
    "api_endpoint",
    "auth_problem",
    "error_problem",
    "http_exception_problem",
    "internal_problem",
    "problem",
]

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

#: The HTTP status of each wire code (a subclass may override with ``http_status``).
STATUS_OF_CODE: Final[dict[str, int]] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.INVALID_MESSAGE: 422,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RUN_ACTIVE: 409,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

#: One short, fixed title per code (``detail`` says what happened this time).
TITLES: Final[dict[str, str]] = {
    ErrorCode.BAD_JSON: "Malformed JSON",
    ErrorCode.INVALID_MESSAGE: "Invalid request",
    ErrorCode.UNKNOWN_TYPE: "Unknown type",
    ErrorCode.NOT_FOUND: "Not found",
    ErrorCode.RUN_ACTIVE: "Run already active",
    ErrorCode.LIMIT_EXCEEDED: "Limit exceeded",
    ErrorCode.RATE_LIMITED: "Rate limited",
    ErrorCode.UNAVAILABLE: "Unavailable",
    ErrorCode.INTERNAL: "Internal error",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
}

_INTERNAL_DETAIL: Final = ERROR_CODE_EXPLANATIONS[ErrorCode.INTERNAL]


class BadRequest(InvalidInput):
    """A query or path parameter is invalid (400, ``invalid_message``)."""

    http_status = 400


class BadJson(AgentcastError):
    """The request body is not JSON (400, ``bad_json``)."""

    code = ErrorCode.BAD_JSON


class PayloadTooLarge(InvalidInput):
    """The request body exceeds ``http_max_body_bytes`` (413, ``invalid_message``)."""

    http_status = 413


def problem(
    status: int, code: str, detail: str, *, headers: Mapping[str, str] | None = None
) -> Response:
    """A problem+json response."""
    body = msgspec.json.encode(
        {
            "type": f"urn:agentcast:problem:{code}",
            "title": TITLES.get(code, "Error"),
            "status": status,
            "detail": detail,
            "code": code,
        }
    )
    return Response(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def error_problem(exc: AgentcastError) -> Response:
    """The problem for an :class:`AgentcastError` (internal ones reveal nothing)."""
    code = exc.code
    if code is ErrorCode.INTERNAL:
        return internal_problem()
    status = getattr(exc, "http_status", None) or STATUS_OF_CODE[code]
    headers = {"Retry-After": "1"} if exc.retryable else None
    return problem(status, code, exc.message, headers=headers)


def auth_problem(exc: AuthError) -> Response:
    """401 (with ``WWW-Authenticate: Bearer``, RFC 6750) or 403."""
    if exc.status_code == 403:
        return problem(403, "forbidden", exc.reason)
    reason = exc.reason.replace('"', "'")
    return problem(
        401,
        "unauthorized",
        exc.reason,
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="agentcast", error="invalid_token", error_description="{reason}"'
            )
        },
    )


def internal_problem() -> Response:
    """500 with a fixed detail: the cause is in the server log only."""
    return problem(500, ErrorCode.INTERNAL, _INTERNAL_DETAIL)


def http_exception_problem(exc: HTTPException) -> Response:
    """Starlette's own errors (no route, wrong method) in the same shape."""
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_MESSAGE
    if exc.status_code >= 500:
        return internal_problem()
    return problem(exc.status_code, code, str(exc.detail), headers=exc.headers)


Handler = Callable[[Request, Principal], Awaitable[Response]]


def api_endpoint(
    gateway: Gateway, route: str, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler(request, principal)``: authenticate, map errors, count the request.

    Args:
        gateway: The gateway the endpoint serves.
        route: The route template, the ``route`` label of the request counter.
        handler: The endpoint proper; it may raise any :class:`AgentcastError`.
    """

    async def endpoint(request: Request) -> Response:
        try:
            principal = await gateway.auth.authenticate_request(request)
            response = await handler(request, principal)
        except AuthError as exc:
            response = auth_problem(exc)
        except AgentcastError as exc:
            if exc.code is ErrorCode.INTERNAL:
                logger.error("internal error on %s", route, exc_info=exc)
            response = error_problem(exc)
        except Exception:
            logger.exception("unhandled error on %s", route)
            response = internal_problem()
        gateway.metrics.http_request(route, response.status_code)
        return response

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint
