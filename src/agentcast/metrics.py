"""Prometheus metrics of one engine.

Each :class:`EngineMetrics` owns its own ``CollectorRegistry`` so that tests can
build several bridges side by side; the gateway exposes the registry of the
engine it serves at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from .histogram import LoopHistogram
from .lifecycle import BridgeState

__all__ = ["EngineMetrics"]

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class EngineMetrics:
    """Counters, gauges and histograms of the bridge, the runner and retention.

    The three histograms observed per event (append latency, batch size,
    delivery latency) are :class:`~agentcast.histogram.LoopHistogram`: they
    are observed only on the event loop, so they take no lock.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_emitted = Counter(
            "agentcast_events_emitted", "Events durably appended, by type.", ["type"], registry=r
        )
        self.append_latency = LoopHistogram(
            "agentcast_append_latency_seconds",
            "Time from emit() to the commit of its batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.append_batch_size = LoopHistogram(
            "agentcast_append_batch_events",
            "Events per group-committed append.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.delivery_latency = LoopHistogram(
            "agentcast_delivery_latency_seconds",
            "Time from emit() to a follower receiving the event.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.health_checks = Counter(
            "agentcast_health_checks", "Health probes, by result.", ["result"], registry=r
        )
        self.append_failures = Counter(
            "agentcast_append_failures", "Appends that failed and were retried.", registry=r
        )
        self.recoveries = Counter(
            "agentcast_recoveries", "Returns to ACTIVE after DEGRADED or FAILED.", registry=r
        )
        self.task_failures = Counter(
            "agentcast_background_task_failures",
            "Watched background tasks that died.",
            ["task"],
            registry=r,
        )
        self.state = Gauge(
            "agentcast_bridge_state", "1 for the bridge's current state.", ["state"], registry=r
        )
        self.emit_buffer = Gauge(
            "agentcast_emit_buffer_events", "Events waiting to be appended.", registry=r
        )
        self.active_runs = Gauge("agentcast_active_runs", "Runs running now.", registry=r)
        self.notification_queue_usage = Gauge(
            "agentcast_pg_notification_queue_usage",
            "PostgreSQL's notification queue in use (0 to 1) at the last health probe.",
            registry=r,
        )
        self.queued_runs = Gauge("agentcast_queued_runs", "Runs waiting to start.", registry=r)
        self.runs_finished = Counter(
            "agentcast_runs_finished", "Runs ended, by status.", ["status"], registry=r
        )
        self.events_refused = Counter(
            "agentcast_events_refused",
            "Events refused at emit and never appended, by reason (too_large, invalid).",
            ["reason"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "agentcast_llm_tokens",
            "Model tokens reported by agents, by agent, model and kind (prompt, completion).",
            ["agent", "model", "kind"],
            registry=r,
        )
        self.events_trimmed = Counter(
            "agentcast_events_trimmed",
            "Events deleted by retention (docs/event-log.md, Retention).",
            registry=r,
        )
        self.retention_sweeps = Counter(
            "agentcast_retention_sweeps",
            "Retention sweep passes, by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.set_state(BridgeState.UNINITIALIZED)

    def set_state(self, state: BridgeState) -> None:
        """Make ``state`` the one state gauge at 1."""
        for s in BridgeState:
            self.state.labels(state=s.value).set(1 if s is state else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
