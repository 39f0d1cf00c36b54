"""The ``/v1`` HTTP API: tickets, agents, runs, threads and their events.

Each endpoint is a small function of ``(gateway, request, principal)``; the
routes are built by :func:`http_routes` with the gateway bound in, wrapped by
:func:`~agentcast.gateway.problems.api_endpoint` (authentication, errors as
problem+json, the request counter).

Isolation (docs/architecture.md invariant 4): every lookup goes through the store with
the caller's user id, and a ``NotFound`` is answered with one fixed detail
per resource ("no such thread", "no such run"), so another user's thread
answers byte for byte like a made-up id.

The events endpoint (:mod:`.http_events`) splices the stored envelope bytes
into the response: the log already holds each event encoded once, and decoding
and re-encoding them per request would only cost time and risk changing them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidInput, NotFound
from ..runner.runner import MAX_MESSAGE_CHARS
from ..store.base import MessageRecord, ThreadRecord
from .auth import Principal
from .problems import BadJson, BadRequest, PayloadTooLarge, api_endpoint

if TYPE_CHECKING:
    from .context import Gateway

__all__ = [
    "DEFAULT_EVENTS_LIMIT",
    "DEFAULT_THREADS_LIMIT",
    "INT64_MAX",
    "MAX_EVENTS_LIMIT",
    "MAX_THREADS_LIMIT",
    "StartRunBody",
    "http_routes",
    "query_int",
    "require_thread",
]

DEFAULT_THREADS_LIMIT: Final = 50
MAX_THREADS_LIMIT: Final = 200
#: The largest integer a query parameter may carry: seqs and counts are SQLite
#: INTEGERs (64-bit signed), and a larger value must be a 400, never an overflow.
INT64_MAX: Final = 2**63 - 1
DEFAULT_EVENTS_LIMIT: Final = 100
MAX_EVENTS_LIMIT: Final = 1000
_NO_THREAD: Final = "no such thread"
_NO_RUN: Final = "no such run"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class StartRunBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/runs``: unknown fields are refused, so a typo is an error, not a no-op."""

    message: Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]
    agent: Id | None = None
    thread_id: Id | None = None
    on_active: Literal["reject", "enqueue", "interrupt"] = "reject"
    idempotency_key: Id | None = None


# Helpers --------------------------------------------------------------------------------


def query_int(request: Request, name: str, default: int, lo: int, hi: int = INT64_MAX) -> int:
    """An integer query parameter within ``[lo, hi]``; ``hi`` is at most :data:`INT64_MAX`.

    Raises:
        BadRequest: not an integer, or out of range (400 ``invalid_message``).
    """
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    hi = min(hi, INT64_MAX)
    try:
        value = int(raw)
    except ValueError:  # also a string of more digits than int() will parse
        raise BadRequest(f"{name} must be an integer") from None
    if value < lo or value > hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


async def require_thread(gateway: Gateway, principal: Principal, thread_id: str) -> ThreadRecord:
    """The caller's thread, or ``NotFound("no such thread")`` — the same for anyone else's."""
    try:
        return await gateway.engine.store.get_thread(principal.user_id, thread_id)
    except NotFound:
        raise NotFound(_NO_THREAD) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_body(body: bytes) -> StartRunBody:
    try:
        return msgspec.json.decode(body, type=StartRunBody)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc)) from None
    except msgspec.DecodeError:
        raise BadJson("the request body is not valid JSON") from None


def _thread_public(t: ThreadRecord) -> dict[str, Any]:
    return {
        "thread_id": t.thread_id,
        "title": t.title,
        "last_agent": t.last_agent,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    }


def _message_public(m: MessageRecord) -> dict[str, Any]:
    return {
        "message_id": m.message_id,
        "run_id": m.run_id,
        "role": m.role,
        "content": m.content,
        "created_at": m.created_at,
    }


def _encode_cursor(t: ThreadRecord) -> str:
    raw = msgspec.json.encode([t.updated_at, t.thread_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated_at, thread_id = msgspec.json.decode(raw, type=tuple[float, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadRequest("invalid cursor") from None
    return updated_at, thread_id


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(content), status_code, media_type="application/json")


# Endpoints ------------------------------------------------------------------------------


async def thread_events(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``GET /v1/threads/{thread_id}/events``: see :func:`.http_events.thread_events`.

    Imported when called: :mod:`.http_events` uses this module's helpers.
    """
    from .http_events import thread_events as page

    return await page(gateway, request, principal)


async def ws_ticket(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``POST /v1/ws-ticket``: a one-use ticket for a browser WebSocket.

    429 ``limit_exceeded`` beyond ``max_tickets_per_user`` unused tickets
    (counted by the authenticator's ``on_refused``).
    """
    ticket, expires_in = gateway.auth.issue_ticket(principal)
    return _json({"ticket": ticket, "expires_in": expires_in})


async def list_agents(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``GET /v1/agents``: every registered agent with its description and tools."""
    return _json({"agents": gateway.engine.registry.describe()})


async def start_run(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``POST /v1/runs``: accept a run (202); its events follow on the thread's stream."""
    body = _decode_body(await _read_body(request, gateway.settings.http_max_body_bytes))
    agent = body.agent
    if agent is None:
        agent = gateway.settings.default_agent
        if body.thread_id is not None:
            thread = await require_thread(gateway, principal, body.thread_id)
            agent = thread.last_agent or agent
    if agent not in gateway.engine.registry:
        raise NotFound(f"unknown agent {agent!r}")
    try:
        ticket = await gateway.engine.runner.start_run(
            principal.user_id,
            agent,
            body.message,
            thread_id=body.thread_id,
            on_active=body.on_active,
            idempotency_key=body.idempotency_key,
        )
    except NotFound:
        # The agent was checked above: what is missing is the thread.
        raise NotFound(_NO_THREAD) from None
    return _json(
        {
            "run_id": ticket.run_id,
            "thread_id": ticket.thread_id,
            "epoch": ticket.epoch,
            "after_seq": ticket.after_seq,
        },
        202,
    )


async def get_run(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``GET /v1/runs/{run_id}``: the run's status, final once its terminal event exists."""
    try:
        record = await gateway.engine.store.get_run(
            principal.user_id, request.path_params["run_id"]
        )
    except NotFound:
        raise NotFound(_NO_RUN) from None
    return _json(record.to_public())


async def cancel_run(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``POST /v1/runs/{run_id}/cancel``: 202 with the status the run had when cancelled."""
    try:
        result = await gateway.engine.runner.cancel(
            principal.user_id, run_id=request.path_params["run_id"]
        )
    except NotFound:
        raise NotFound(_NO_RUN) from None
    return _json({"run_id": result.run_id, "status": str(result.status)}, 202)


async def list_threads(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``GET /v1/threads?limit=&cursor=``: newest first; ``next_cursor`` null on the last page."""
    limit = query_int(request, "limit", DEFAULT_THREADS_LIMIT, 1, MAX_THREADS_LIMIT)
    cursor = request.query_params.get("cursor")
    before = _decode_cursor(cursor) if cursor else None
    threads = await gateway.engine.store.list_threads(principal.user_id, limit + 1, before)
    page = threads[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(threads) > limit else None
    return _json({"threads": [_thread_public(t) for t in page], "next_cursor": next_cursor})


async def get_thread(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """``GET /v1/threads/{thread_id}``: the thread, its runs, its messages and stream head."""
    thread = await require_thread(gateway, principal, request.path_params["thread_id"])
    store = gateway.engine.store
    runs = await store.list_runs(principal.user_id, thread.thread_id)
    messages = await store.list_messages(principal.user_id, thread.thread_id)
    info = await gateway.engine.bridge.info(thread.thread_id)
    return _json(
        {
            "thread": _thread_public(thread),
            "epoch": info.epoch,
            "last_seq": info.last_seq,
            "runs": [r.to_public() for r in runs],
            "messages": [_message_public(m) for m in messages],
        }
    )


# Routes ---------------------------------------------------------------------------------

Endpoint = Callable[["Gateway", Request, Principal], Awaitable[Response]]

_TABLE: Final[list[tuple[str, str, Endpoint]]] = [
    ("POST", "/v1/ws-ticket", ws_ticket),
    ("GET", "/v1/agents", list_agents),
    ("POST", "/v1/runs", start_run),
    ("GET", "/v1/runs/{run_id}", get_run),
    ("POST", "/v1/runs/{run_id}/cancel", cancel_run),
    ("GET", "/v1/threads", list_threads),
    ("GET", "/v1/threads/{thread_id}", get_thread),
    ("GET", "/v1/threads/{thread_id}/events", thread_events),
]


def http_routes(gateway: Gateway) -> list[Route]:
    """The ``/v1`` HTTP routes bound to ``gateway`` (the SSE stream is in :mod:`.sse`)."""
    routes = []
    for method, path, fn in _TABLE:

        async def handler(request: Request, principal: Principal, fn: Endpoint = fn) -> Response:
            return await fn(gateway, request, principal)

        handler.__name__ = fn.__name__
        routes.append(Route(path, api_endpoint(gateway, path, handler), methods=[method]))
    return routes
