"""Gateway metrics, exported from the engine's own Prometheus registry.

Two families, both cheap to keep (a dict increment per request; the
connection gauge is computed only when ``/metrics`` is scraped, from the
gateway's connection set, so it can never drift from the truth):

* ``agentcast_http_requests_total{route,status}`` — ``route`` is the route
  template (``/v1/runs/{run_id}``), never the raw path, so ids do not blow
  up the label set;
* ``agentcast_open_connections{transport}`` — open WebSocket and SSE
  connections (a connection's ``transport`` attribute, ``websocket`` when it
  has none);
* ``agentcast_limit_refusals_total{limit}`` — requests, frames and
  connections refused because a bound was reached, by the setting that
  bounds it (``max_connections_per_user``, ``http_rate_per_s`` …): a limit
  that keeps refusing is either an attack or a default to raise.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["GatewayMetrics"]

logger = logging.getLogger(__name__)

_TRANSPORTS = ("websocket", "sse")


class GatewayMetrics(Collector):
    """Request and connection metrics of one gateway.

    Args:
        connections: The gateway's live connection set (read at scrape time).
        registry: Where to export; ``None`` keeps the counts unexported.
    """

    def __init__(
        self, connections: Collection[Any], registry: CollectorRegistry | None = None
    ) -> None:
        self._connections = connections
        self._requests: Counter[tuple[str, int]] = Counter()
        self._refusals: Counter[str] = Counter()
        if registry is not None:
            try:
                registry.register(self)
            except ValueError:
                # A second gateway over the same engine: the first one exports.
                logger.warning("gateway metrics already registered on this engine; not exported")

    # Public methods

    def http_request(self, route: str, status: int) -> None:
        """Count one answered HTTP request."""
        self._requests[(route, status)] += 1

    def refused(self, limit: str) -> None:
        """Count one refusal by the bound ``limit`` (a setting's name)."""
        self._refusals[limit] += 1

    def refusals(self, limit: str) -> int:
        """How many refusals ``limit`` caused (tests)."""
        return self._refusals[limit]

    def requests(self, route: str, status: int) -> int:
        """How many requests to ``route`` were answered with ``status`` (tests)."""
        return self._requests[(route, status)]

    def describe(self) -> Iterable[Metric]:
        """The families, without values (lets the registry refuse duplicates)."""
        return [self._request_family(), self._connection_family(), self._refusal_family()]

    def collect(self) -> Iterator[Metric]:
        """The families with their current values."""
        requests = self._request_family()
        for (route, status), count in sorted(self._requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        by_transport: Counter[str] = Counter(
            str(getattr(c, "transport", "websocket")) for c in list(self._connections)
        )
        connections = self._connection_family()
        for transport in sorted(set(_TRANSPORTS) | set(by_transport)):
            connections.add_metric([transport], by_transport[transport])
        yield connections
        refusals = self._refusal_family()
        for limit, count in sorted(self._refusals.items()):
            refusals.add_metric([limit], count)
        yield refusals

    # Private methods

    @staticmethod
    def _refusal_family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "agentcast_limit_refusals",
            "Requests, frames and connections refused by a bound, by its setting.",
            labels=["limit"],
        )

    @staticmethod
    def _request_family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "agentcast_http_requests",
            "HTTP requests answered, by route template and status.",
            labels=["route", "status"],
        )

    @staticmethod
    def _connection_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "agentcast_open_connections",
            "Open WebSocket and SSE connections, by transport.",
            labels=["transport"],
        )
