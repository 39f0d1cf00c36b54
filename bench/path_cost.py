"""The cost of agentcast's own delivery path per event, in one process, without the network.

The load benchmark (``run.py``) measures the whole server, uvicorn and the
kernel included, and its figures move with the machine's load. This measures
only what agentcast adds, and can be made independent of the load:

* the real engine — runner, ``RunContext.custom``, bridge, event log and
  store (SQLite ``synchronous=FULL`` or the in-memory log) — and real
  :class:`~agentcast.gateway.ws.WsConnection` objects with their outbox,
  subscriptions and writer task;
* a stand-in socket that takes every frame at once, so nothing of uvicorn,
  websockets or the kernel is counted.

``THREADS`` runs emit ``EVENTS`` ``custom`` events each as fast as they can;
every thread has ``CONNS`` connections subscribed (live) before the first
event. It prints process CPU microseconds per delivered event. Under
``valgrind --tool=callgrind`` the instruction count is the same on a busy and
on an idle machine; run two sizes and take the difference to leave start-up
out (``--events``)::

    python bench/path_cost.py --log memory --events 400   # on uvloop, like the server
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/path_cost.py --log memory --events 400   # "Collected : N"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentcast.agents import AgentRegistry, RunContext
from agentcast.gateway.app import create_app
from agentcast.gateway.auth import Principal
from agentcast.gateway.context import Gateway
from agentcast.gateway.settings import GatewaySettings
from agentcast.gateway.ws import WsConnection


class StandInSocket:
    """Takes frames at once and counts the events in them; replies go to a queue."""

    def __init__(self, run_event_type: str = "custom") -> None:
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events = 0
        self.wanted = 0
        self.done = asyncio.Event()
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._marker = f'"type":"{run_event_type}"'

    async def send(self, message: dict[str, Any]) -> None:
        text = message.get("text") or ""
        if self._marker in text:
            self.events += text.count(self._marker)
            if self.events >= self.wanted > 0:
                self.done.set()
        elif text.startswith("{"):
            self.replies.put_nowait(json.loads(text))

    async def receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": code})

    def command(self, frame: dict[str, Any]) -> None:
        self._inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})

    async def reply(self, wanted: str) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.replies.get(), 60)
            if frame["type"] == wanted:
                return frame
            if frame["type"] == "error":
                raise RuntimeError(f"error frame: {frame}")


def _registry() -> AgentRegistry:
    registry = AgentRegistry()

    async def ready(ctx: RunContext) -> str:
        return "ready"

    async def burst(ctx: RunContext) -> str:
        count = int(ctx.message)
        for i in range(count):
            await ctx.custom("burst", {"i": i})
        return f"{count} events"

    registry.register(ready, name="path_ready")
    registry.register(burst, name="path_burst")
    return registry


async def measure(
    log: str, threads: int, conns: int, events: int, data_dir: Path
) -> dict[str, Any]:
    """One measurement: CPU per delivered event over ``threads x conns`` live connections."""
    settings = GatewaySettings(
        jwt_secret="path-cost-" + "x" * 32,
        log_backend=log,  # type: ignore[arg-type]
        data_dir=data_dir,
        ws_rate_per_s=1e6,
        ws_rate_burst=1_000_000,
    )
    app = create_app(settings, _registry(), lifespan=False)
    gateway: Gateway = app.state.agentcast
    await gateway.startup()
    tasks: list[asyncio.Task[None]] = []
    sockets: list[list[StandInSocket]] = []
    try:
        for t in range(threads):
            group = []
            for _ in range(conns):
                sock = StandInSocket()
                conn = WsConnection(gateway, sock, Principal(f"u{t}", None, "header"), batch=False)  # type: ignore[arg-type]
                tasks.append(asyncio.create_task(conn.serve()))
                group.append(sock)
            sockets.append(group)
            first = group[0]
            first.command({"type": "start_agent", "agent": "path_ready", "message": "", "id": 1})
            accepted = await first.reply("run_accepted")
            for sock in group[1:]:
                sock.command({"type": "subscribe", "thread_id": accepted["thread_id"], "id": 2})
                await sock.reply("subscribed")
            group[0].thread_id = accepted["thread_id"]  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)  # the set-up runs end; their events are delivered
        for group in sockets:
            for sock in group:
                sock.events, sock.wanted = 0, events
                sock.done.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for group in sockets:
            group[0].command(
                {
                    "type": "start_agent",
                    "agent": "path_burst",
                    "message": str(events),
                    "thread_id": group[0].thread_id,  # type: ignore[attr-defined]
                    "id": 3,
                }
            )
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for g in sockets for s in g)), 600)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        for group in sockets:
            for sock in group:
                await sock.close()
        await asyncio.wait(tasks, timeout=10)
        await gateway.shutdown(grace_s=1)
    delivered = threads * conns * events
    received = sum(s.events for g in sockets for s in g)
    if received != delivered:  # exactly once: a frame too many is as wrong as one too few
        raise RuntimeError(f"{received} events received, {delivered} expected")
    return {
        "log": log,
        "threads": threads,
        "connections": threads * conns,
        "events_emitted": threads * events,
        "events_delivered": received,
        "cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "cpu_us_per_delivered": round(cpu / delivered * 1e6, 2),
        "cpu_us_per_emitted": round(cpu / (threads * events) * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--conns", type=int, default=2, help="connections per thread")
    parser.add_argument("--events", type=int, default=200, help="events per thread")
    args = parser.parse_args(argv)
    try:  # the loop the server runs on (uvicorn picks uvloop when it is installed)
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop_factory = None
    with (
        tempfile.TemporaryDirectory(prefix="agentcast-path-") as tmp,
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        result = runner.run(
            measure(args.log, args.threads, args.conns, args.events, Path(tmp) / "data")
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
