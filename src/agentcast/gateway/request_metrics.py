"""One ASGI middleware that counts every answered HTTP request.

Counting in each endpoint meant every new route had to remember to do it, and
routes Starlette answers itself (405, a mounted static file) were never
counted. Here the count is taken once, around the whole app, with the same
family and labels as before (``agentcast_http_requests_total{route,status}``,
see :mod:`.metrics`).

Why pure ASGI and not ``BaseHTTPMiddleware``: the latter runs the endpoint in
a separate task and pipes the body through a memory stream, which delays and
can buffer a Server-Sent Events stream and breaks its disconnect handling.
This middleware only looks at ``http.response.start`` on its way out and
passes every message through unchanged, at once.

Labels: ``route`` is the template of the route the router matched
(``scope["route"].path``, e.g. ``/v1/runs/{run_id}``), never the raw path, so
ids do not blow up the label set. A request no route of this app matched
(404, a CORS preflight) has no template and is not counted: its raw path is
exactly what must not become a label. The request is counted when the
response starts, so a long-lived stream counts when it opens, not when it ends.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestCounter", "RequestMetricsMiddleware"]


class RequestCounter(Protocol):
    """Where the counts go (:class:`~.metrics.GatewayMetrics`)."""

    def http_request(self, route: str, status: int) -> None:
        """Count one answered request."""
        ...


class RequestMetricsMiddleware:
    """Counts each HTTP request by route template and status.

    Args:
        app: The wrapped application.
        metrics: Where to count.
    """

    def __init__(self, app: ASGIApp, metrics: RequestCounter) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through; count it when its response starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A host app that mounts this one has already put its Mount here: only
        # a route matched by *this* app's router names a template of ours.
        outer = scope.get("route")
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            route = scope.get("route")
            path = getattr(route, "path", None)
            if route is not outer and isinstance(path, str):
                self._metrics.http_request(path or "/", status)

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start" and not counted:
                count(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if not counted:
                count(500)  # the server error middleware outside us answers 500
            raise
