"""HTTP errors as ``application/problem+json`` (RFC 9457), one shape for every endpoint.

Every error body is ``{"type", "title", "status", "detail", "code"}``. ``code``
is the same stable code a WebSocket ``error`` frame carries
(:class:`agentcast.errors.ErrorCode`); ``unauthorized`` and ``forbidden`` only
ever reach HTTP (a WebSocket refuses the handshake or closes with the code's
close code instead). ``type`` is ``urn:agentcast:problem:<code>``. Status and
title come from :data:`agentcast.errors.ERRORS`, the table every transport
answers from, so HTTP cannot disagree with a WebSocket about a code.

An ``internal`` problem never carries the exception's text: it is logged, and
the client gets a fixed sentence (docs/architecture.md: errors reveal nothing).
Neither does ``unavailable``: its causes come from the log and database layers,
whose messages name files, DSNs and driver errors, so :func:`client_message`
answers the row's fixed meaning unless the exception is marked ``client_safe``
(written for clients by the gateway itself), and :func:`api_endpoint` logs the
original with the route, method and user. The same function serves the
WebSocket's error frames.

:func:`api_endpoint` wraps every HTTP endpoint: authentication, the mapping
from exceptions to problems and the request counter live in one place, so no
endpoint can forget one of them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import (
    ERRORS,
    AgentcastError,
    AuthError,
    ErrorCode,
    InvalidInput,
    LimitExceeded,
    spec_of,
)
from .auth import Principal
from .rate_limit import RATE_LIMIT_NAME

if TYPE_CHECKING:
    from .context import Gateway

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "BadJson",
    "BadRequest",
    "PayloadTooLarge",
    "api_endpoint",
    "auth_problem",
    "client_message",
    "error_problem",
    "http_exception_problem",
    "internal_problem",
    "problem",
    "rate_limited_problem",
]

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

_INTERNAL_DETAIL: Final = ERRORS[ErrorCode.INTERNAL].meaning

#: The code of each HTTP status exactly one row of the table answers with.
_CODE_OF_STATUS: Final[dict[int, ErrorCode]] = {
    spec.http_status: code
    for code, spec in ERRORS.items()
    if Counter(other.http_status for other in ERRORS.values())[spec.http_status] == 1
}


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
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """A problem+json response; its ``title`` is the code's row in :data:`ERRORS`.

    ``extra`` adds extension members (RFC 9457), e.g. ``limit``.
    """
    spec = spec_of(code)
    body = msgspec.json.encode(
        {
            "type": f"urn:agentcast:problem:{code}",
            "title": spec.title if spec is not None else "Error",
            "status": status,
            "detail": detail,
            "code": code,
            **(extra or {}),
        }
    )
    return Response(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def client_message(exc: AgentcastError) -> str:
    """The text a client may see for ``exc`` (problem ``detail``, error frame ``message``).

    ``internal`` is always the row's fixed meaning; an :class:`Unavailable`
    (``LogUnavailable`` included: raised from the log and database layers, its
    text names files, DSNs and driver errors) gets its row's meaning too, unless
    it was raised with ``client_safe=True``; every other error's message is
    written for the client where it is raised.
    """
    spec = exc.error_spec
    if spec is ERRORS[ErrorCode.INTERNAL]:
        return _INTERNAL_DETAIL
    if not exc.client_safe:
        return spec.meaning
    return exc.message


def error_problem(exc: AgentcastError) -> Response:
    """The problem for an :class:`AgentcastError`, status and title from its row.

    Internal ones reveal nothing, nor do ``unavailable`` ones (:func:`client_message`);
    credentials get :func:`auth_problem`'s ``WWW-Authenticate``; a retryable
    code gets ``Retry-After: 1``; a bound names its setting in ``limit``.
    """
    if isinstance(exc, AuthError):
        return auth_problem(exc)
    spec = exc.error_spec
    if spec is ERRORS[ErrorCode.INTERNAL]:
        return internal_problem()
    status = exc.http_status or spec.http_status
    headers = {"Retry-After": "1"} if spec.retryable else None
    extra = {"limit": exc.limit} if isinstance(exc, LimitExceeded) and exc.limit else None
    return problem(status, exc.code, client_message(exc), headers=headers, extra=extra)


def auth_problem(exc: AuthError) -> Response:
    """401 (with ``WWW-Authenticate: Bearer``, RFC 6750) or 403, from the table."""
    status = ERRORS[ErrorCode(exc.code)].http_status
    if exc.code is not ErrorCode.UNAUTHORIZED:
        return problem(status, exc.code, exc.reason)
    reason = exc.reason.replace('"', "'")
    return problem(
        status,
        exc.code,
        exc.reason,
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="agentcast", error="invalid_token", error_description="{reason}"'
            )
        },
    )


def internal_problem() -> Response:
    """500 with a fixed detail: the cause is in the server log only."""
    return problem(ERRORS[ErrorCode.INTERNAL].http_status, ErrorCode.INTERNAL, _INTERNAL_DETAIL)


def http_exception_problem(exc: HTTPException) -> Response:
    """Starlette's own errors (no route, wrong method) in the same shape.

    The code is the one row with that status (404 → ``not_found``); a status
    no single row owns (405 …) is ``invalid_message``: the request is wrong.
    """
    if exc.status_code >= 500:
        return internal_problem()
    code = _CODE_OF_STATUS.get(exc.status_code, ErrorCode.INVALID_MESSAGE)
    return problem(exc.status_code, code, str(exc.detail), headers=exc.headers)


Handler = Callable[[Request, Principal], Awaitable[Response]]


def rate_limited_problem(retry_after_s: int) -> Response:
    """429 ``rate_limited`` naming ``http_rate_per_s``, ``Retry-After`` in whole seconds."""
    return problem(
        ERRORS[ErrorCode.RATE_LIMITED].http_status,
        ErrorCode.RATE_LIMITED,
        f"too many requests: retry after {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
        extra={"limit": RATE_LIMIT_NAME},
    )


def api_endpoint(
    gateway: Gateway, route: str, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler(request, principal)``: authenticate, rate-limit, map errors to problems.

    Requests are counted by :mod:`.request_metrics`, around the whole app.

    Args:
        gateway: The gateway the endpoint serves.
        route: The route template (names the route in error logs).
        handler: The endpoint proper; it may raise any :class:`AgentcastError`.
    """

    async def endpoint(request: Request) -> Response:
        user: str | None = None
        try:
            principal = await gateway.auth.authenticate_request(request)
            user = principal.user_id
            wait = gateway.auth.rate_limiter.take(user)
            if wait:
                gateway.metrics.refused(RATE_LIMIT_NAME)
                return rate_limited_problem(wait)
            response = await handler(request, principal)
        except AuthError as exc:
            response = auth_problem(exc)
        except AgentcastError as exc:
            if exc.error_spec is ERRORS[ErrorCode.INTERNAL]:
                logger.error(
                    "internal error on %s %s (user %s)", request.method, route, user, exc_info=exc
                )
            elif client_message(exc) != exc.message:
                # What the client is not told, the operator is.
                logger.warning(
                    "%s on %s %s (user %s): %s", exc.code, request.method, route, user, exc.message
                )
            response = error_problem(exc)
        except Exception:
            logger.exception("unhandled error on %s %s (user %s)", request.method, route, user)
            response = internal_problem()
        return response

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint
