"""A stand-in for the runner: records every event a run emits, validated.

The fake ``emit`` validates each payload with :func:`agentcast.events.encode_payload`
(so an invalid event fails the test) and records the decoded JSON, exactly what
a client would see in ``data``. Like the real bridge, it commits an event as
soon as it is submitted: a caller cancelled while it waits for the commit does
not un-send it. The fake ``delegate`` runs the sub-agent with a
child :class:`RunContext` and emits its lifecycle events the way the runner
does, so nesting (``parent_run_id``) and ordering can be asserted.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from agentcast import events
from agentcast.agents import (
    AgentRegistry,
    AgentSettings,
    RunContext,
    SubRunFailed,
    result_text,
    sanitize_error,
)

__all__ = ["Harness", "Recorded", "assert_tools_paired"]


@dataclass(frozen=True)
class Recorded:
    """One emitted event, as a client would decode it."""

    run_id: str
    parent_run_id: str | None
    agent: str
    type: str
    data: dict[str, Any]
    at: float  # loop time when emit was called


class Harness:
    """Builds contexts, runs agents like the runner, and records events."""

    def __init__(
        self,
        registry: AgentRegistry | None = None,
        settings: AgentSettings | None = None,
        emit_delay: float = 0.0,
    ) -> None:
        self.registry = registry if registry is not None else AgentRegistry()
        self.settings = settings or AgentSettings()
        self.emit_delay = emit_delay
        self.events: list[Recorded] = []
        self.delegations: list[tuple[str, str, str]] = []  # (parent run, agent, message)
        self._ids = itertools.count(1)
        #: Set to make the next emit of that type raise once.
        self.fail_next: dict[str, Exception] = {}

    # Building blocks

    def emitter(
        self, run_id: str, agent: str, parent_run_id: str | None = None
    ) -> Callable[[str, Any], Any]:
        async def emit(event_type: str, data: Any) -> None:
            # The bridge's semantics: validated, then submitted — and a
            # submitted event is committed even if its caller is cancelled
            # while it waits for the commit. So it is recorded first, and
            # the wait (the commit's I/O) comes after.
            at = asyncio.get_running_loop().time()
            if event_type in self.fail_next:
                raise self.fail_next.pop(event_type)
            raw = events.encode_payload(event_type, data)  # raises InvalidEvent
            decoded = msgspec.json.decode(raw)
            self.events.append(Recorded(run_id, parent_run_id, agent, event_type, decoded, at))
            if self.emit_delay:
                await asyncio.sleep(self.emit_delay)
            else:
                await asyncio.sleep(0)  # an emit is I/O: let others run

        return emit

    def context(
        self, agent: str = "test", message: str = "", parent: RunContext | None = None
    ) -> RunContext:
        run_id = f"run{next(self._ids)}"
        parent_run_id = parent.run_id if parent else None
        return RunContext(
            run_id=run_id,
            thread_id="th_test",
            user_id="alice",
            agent=agent,
            message=message,
            parent_run_id=parent_run_id,
            emit=self.emitter(run_id, agent, parent_run_id),
            delegate=self.delegate,
            registry=self.registry,
            settings=self.settings,
        )

    # The runner's part

    async def execute(self, ctx: RunContext) -> tuple[str | None, str | None]:
        """Run ``ctx.agent`` from agent_started to its terminal event.

        Returns ``(final_response, error_message)``.
        """
        emit = self.emitter(ctx.run_id, ctx.agent, ctx.parent_run_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await emit("agent_started", {"message": ctx.message})
        try:
            result = await self.registry.get(ctx.agent).run(ctx)
            await ctx.aclose()
        except asyncio.CancelledError:
            await ctx.aclose()
            await emit(
                "agent_cancelled",
                {"reason": "cancelled", "duration_ms": (loop.time() - started) * 1000},
            )
            raise
        except Exception as exc:
            await ctx.aclose()
            message = sanitize_error(exc)
            await emit(
                "agent_error",
                {
                    "error_type": type(exc).__name__,
                    "message": message,
                    "duration_ms": (loop.time() - started) * 1000,
                },
            )
            return None, message
        final, structured = result_text(result, ctx)
        data: dict[str, Any] = {
            "final_response": final,
            "duration_ms": (loop.time() - started) * 1000,
        }
        if structured is not msgspec.UNSET:
            data["result"] = structured
        await emit("agent_completed", data)
        return final, None

    async def run(self, agent: str, message: str = "") -> tuple[str | None, str | None]:
        """A top-level run of ``agent``."""
        return await self.execute(self.context(agent, message))

    async def delegate(self, parent: RunContext, agent: str, message: str) -> str:
        """The runner's delegate: a sub-run to its end, in the parent's task."""
        self.delegations.append((parent.run_id, agent, message))
        self.registry.get(agent)  # NotFound for an unknown agent
        final, error = await self.execute(self.context(agent, message, parent))
        if error is not None or final is None:
            raise SubRunFailed(f"sub-agent {agent!r} failed: {error}", agent=agent)
        return final

    # Queries

    def types(self, run_id: str | None = None) -> list[str]:
        return [e.type for e in self.events if run_id is None or e.run_id == run_id]

    def of_type(self, event_type: str) -> list[Recorded]:
        return [e for e in self.events if e.type == event_type]

    def runs(self) -> list[str]:
        return list(dict.fromkeys(e.run_id for e in self.events))


def assert_tools_paired(recorded: list[Recorded]) -> None:
    """Every tool_executing is followed by exactly one tool_completed of the same id."""
    open_calls: dict[str, Recorded] = {}
    completed: set[str] = set()
    for event in recorded:
        if event.type == "tool_executing":
            call_id = event.data["tool_call_id"]
            assert call_id not in open_calls, call_id
            assert call_id not in completed, call_id
            open_calls[call_id] = event
        elif event.type == "tool_completed":
            call_id = event.data["tool_call_id"]
            assert call_id in open_calls, f"tool_completed without tool_executing: {call_id}"
            start = open_calls.pop(call_id)
            assert start.data["tool_name"] == event.data["tool_name"]
            assert start.run_id == event.run_id
            completed.add(call_id)
    assert not open_calls, f"unpaired tool calls: {sorted(open_calls)}"
