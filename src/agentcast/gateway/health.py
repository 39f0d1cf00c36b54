"""``/healthz``, ``/readyz`` and ``/metrics``: no credentials, nothing user-specific.

* ``/healthz`` — liveness: 200 ``{"status": "ok"}`` while the process serves.
  It does not look at the bridge: restarting a process whose log is down
  would not bring the log back.
* ``/readyz`` — readiness: 200 only while the bridge is ACTIVE and the
  gateway is not shutting down, else 503; the body names the state and a
  short fixed reason per state (docs/architecture.md invariant 8: health comes
  from real probes of the live path, which the bridge runs; this endpoint
  reports them, it does not probe). It needs no credentials, so it never
  repeats the bridge's own reason or a probe's detail: those hold exception
  text (file paths, DSNs, driver messages) and are logged by the bridge.
* ``/metrics`` — the engine's Prometheus registry, which also holds the
  gateway's request and connection metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..bridge import NOTIFY_QUEUE_WARN
from ..lifecycle import BridgeState

if TYPE_CHECKING:
    from .context import Gateway

__all__ = ["METRICS_CONTENT_TYPE", "READY_REASONS", "health_routes"]

#: Prometheus text exposition format 0.0.4.
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: The only reasons ``/readyz`` gives, one per bridge state.
READY_REASONS: Final[dict[BridgeState, str]] = {
    BridgeState.UNINITIALIZED: "not started",
    BridgeState.INITIALIZING: "starting",
    BridgeState.ACTIVE: "ready",
    BridgeState.DEGRADED: "event log degraded; retrying",
    BridgeState.FAILED: "event log unavailable",
    BridgeState.CLOSED: "closed",
}
_SHUTTING_DOWN: Final = "shutting down"
#: The one warning ``/readyz`` may add (PostgreSQL's notification queue, see above).
NOTIFY_QUEUE_WARNING: Final = "PostgreSQL's notification queue is over half full"


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(content), status_code, media_type="application/json")


def health_routes(gateway: Gateway) -> list[Route]:
    """The three unauthenticated routes, bound to ``gateway``."""

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        bridge = gateway.engine.bridge
        state = bridge.state
        reason = _SHUTTING_DOWN if gateway.closing else READY_REASONS.get(state, str(state))
        ready = state is BridgeState.ACTIVE and not gateway.closing
        report = bridge.last_report
        body: dict[str, Any] = {"state": str(state), "reason": reason}
        if report is not None:
            body["last_probe"] = {
                "ok": report.ok,
                "latency_ms": report.latency_ms,
                "detail": "ok" if report.ok else "probe failed",
                "checked_at": report.checked_at,
            }
            usage = report.notification_queue_usage
            if usage is not None:
                # Reported, not a reason to be unready: every process shares the one
                # queue, so taking them all out of rotation would be the outage.
                body["notification_queue_usage"] = round(usage, 4)
                if usage > NOTIFY_QUEUE_WARN:
                    body["warnings"] = [NOTIFY_QUEUE_WARNING]
        status = 200 if ready else 503
        return _json(body, status)

    async def metrics(request: Request) -> Response:
        return Response(gateway.engine.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
