"""The baseline: the same stack as agentcast (uvicorn + Starlette) with nothing else.

No event log, no durability, no auth, no routing beyond one WebSocket route:
it answers the handful of frames the load generator sends (``start_agent``,
``subscribe``, ``ping``) with frames of the same shape and size as agentcast's,
and a ``bench`` run pushes an envelope built like agentcast's (fresh ``seq``
and ``ts`` spliced in) to every subscribed connection at each slot's due time
(:class:`bench.schedule.Schedule`). The load generator measures it exactly as
it measures agentcast, so ``agentcast / baseline`` is the price of the log,
the fan-out design, the bounds and the checks — the efficiency ``agentcast
bench`` reports.

To keep the load generator's correctness checks meaningful, a thread keeps the
frames it sent in a plain list so that a connection subscribing after a run
started still gets them from ``seq`` 1 (the bench subscribes before the first
slot is due, so only ``agent_started`` is ever replayed). Send queues are
unbounded: the baseline never disconnects a slow consumer.

Run: ``python -m bench.baseline_server --port 8001`` (``GET /healthz`` answers
once it serves).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import secrets
import time
from typing import Any, Final

import msgspec
import uvicorn
from bench.schedule import AGENT_NAME, BIG_TOOL_NAME, Schedule
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

__all__ = ["build_app", "main"]

_SERVER_VERSION: Final = "0.1.0"
_encode = msgspec.json.encode


def _id(prefix: str) -> str:
    """An id of the same length as agentcast's (``ev_`` + 28 hex digits)."""
    return f"{prefix}_{secrets.token_hex(14)}"


class _Conn:
    """One WebSocket: an unbounded FIFO drained by one writer task."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def write_loop(self) -> None:
        """Send queued frames in order until the socket goes away."""
        while True:
            frame = await self.queue.get()
            try:
                # As agentcast's writer does: text frames from encoded bytes.
                await self.websocket.send_text(frame.decode())
            except (WebSocketDisconnect, WebSocketDisconnected, RuntimeError):
                return


class _Thread:
    """One stream: its frames so far (for late subscribers) and its subscribers."""

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self.epoch = secrets.token_hex(8)
        self.frames: list[bytes] = []
        self.subscribers: set[_Conn] = set()

    def publish(self, run_id: str, agent: str, event_type: str, data: dict[str, Any]) -> None:
        """Build the envelope with the next seq and now as ``ts``; queue it to every subscriber."""
        frame = _encode(
            {
                "v": 1,
                "type": event_type,
                "event_id": _id("ev"),
                "thread_id": self.thread_id,
                "run_id": run_id,
                "parent_run_id": None,
                "seq": len(self.frames) + 1,
                "ts": time.time(),
                "agent": agent,
                "data": data,
            }
        )
        self.frames.append(frame)
        for conn in self.subscribers:
            conn.queue.put_nowait(frame)

    def subscribe(self, conn: _Conn, after_seq: int) -> None:
        """Queue what was sent after ``after_seq``, then join the fan-out (no await: atomic)."""
        for frame in self.frames[max(0, after_seq) :]:
            conn.queue.put_nowait(frame)
        self.subscribers.add(conn)


class _Hub:
    """All threads of the process and the run tasks that feed them."""

    def __init__(self) -> None:
        self.threads: dict[str, _Thread] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, agent: str, message: str) -> tuple[_Thread, str]:
        """Create a thread and start a run in it; the caller subscribes before any await."""
        thread = _Thread(_id("th"))
        self.threads[thread.thread_id] = thread
        run_id = _id("run")
        task = asyncio.get_running_loop().create_task(self._run(thread, run_id, agent, message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return thread, run_id

    async def _run(self, thread: _Thread, run_id: str, agent: str, message: str) -> None:
        started = time.perf_counter()
        thread.publish(run_id, agent, "agent_started", {"message": message})
        if agent != AGENT_NAME:  # e.g. echo (the idle-connection workload)
            thread.publish(run_id, agent, "agent_thinking", {"reasoning": message, "step": 1})
        else:
            await _play(thread, run_id, Schedule.decode(message))
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        thread.publish(
            run_id,
            agent,
            "agent_completed",
            {"status": "success", "final_response": "done", "duration_ms": duration_ms},
        )


async def _play(thread: _Thread, run_id: str, schedule: Schedule) -> None:
    """The bench agent's schedule, with the same sleeps and the same payloads."""
    async for i, due in schedule.slots():
        if schedule.is_big(i):
            call_id = f"call_{secrets.token_hex(8)}"
            params = {"due": due, "size": schedule.big_bytes}
            thread.publish(
                run_id,
                AGENT_NAME,
                "tool_executing",
                {"tool_call_id": call_id, "tool_name": BIG_TOOL_NAME, "parameters": params},
            )
            thread.publish(
                run_id,
                AGENT_NAME,
                "tool_completed",
                {
                    "tool_call_id": call_id,
                    "tool_name": BIG_TOOL_NAME,
                    "status": "success",
                    "results": {"due": due, "blob": "x" * schedule.big_bytes},
                    "duration_ms": 0.012,
                },
            )
        else:
            thread.publish(
                run_id, AGENT_NAME, "custom", {"name": "bench", "value": {"due": due, "i": i}}
            )


def build_app() -> Starlette:
    """The baseline ASGI app: ``/healthz`` and ``/v1/ws``."""
    hub = _Hub()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=_subprotocol(websocket))
        conn = _Conn(websocket)
        writer = asyncio.get_running_loop().create_task(conn.write_loop())

        def reply(frame: dict[str, Any]) -> None:
            conn.queue.put_nowait(_encode(frame))

        reply(
            {
                "type": "connection_established",
                "connection_id": _id("ws")[:19],
                "user_id": "bench",
                "server_version": _SERVER_VERSION,
            }
        )
        joined: list[_Thread] = []
        try:
            while True:
                text = await websocket.receive_text()
                frame = msgspec.json.decode(text)
                kind, ref = frame.get("type"), frame.get("id")
                if kind == "start_agent":
                    thread, run_id = hub.start(frame.get("agent", ""), frame.get("message", ""))
                    reply(
                        {
                            "type": "run_accepted",
                            "run_id": run_id,
                            "thread_id": thread.thread_id,
                            "epoch": thread.epoch,
                            "after_seq": 0,
                            "ref": ref,
                        }
                    )
                    thread.subscribe(conn, 0)
                    joined.append(thread)
                elif kind == "subscribe":
                    thread_id = frame.get("thread_id", "")
                    found = hub.threads.get(thread_id)
                    if found is None:
                        reply({"type": "error", "code": "not_found", "message": "?", "ref": ref})
                        continue
                    after = int(frame.get("after_seq", 0))
                    reply(
                        {
                            "type": "subscribed",
                            "thread_id": thread_id,
                            "epoch": found.epoch,
                            "after_seq": after,
                            "recovered": True,
                            "ref": ref,
                        }
                    )
                    found.subscribe(conn, after)
                    joined.append(found)
                elif kind == "ping":
                    reply({"type": "pong", "ref": ref})
                else:
                    reply({"type": "error", "code": "unknown_type", "message": "?", "ref": ref})
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass
        finally:
            for thread in joined:
                thread.subscribers.discard(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    return Starlette(
        routes=[Route("/healthz", healthz), WebSocketRoute("/v1/ws", ws_endpoint)],
    )


def _subprotocol(websocket: WebSocket) -> str | None:
    """Select ``agentcast.v1`` when offered, like agentcast (the token is not checked)."""
    offered = websocket.scope.get("subprotocols") or []
    return "agentcast.v1" if "agentcast.v1" in offered else None


def main(argv: list[str] | None = None) -> None:
    """Serve the baseline on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    # The same uvicorn settings as agentcast's server (gateway/server.py).
    config = uvicorn.Config(
        build_app(),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=64 * 1024,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    config.load()
    # As agentcast's server does (gateway/server.py, frozen_startup_heap): full
    # garbage-collector passes skip what exists at start-up.
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
