"""Frame helpers for the raw-WebSocket tests: send dicts, read frames, collect events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

from agentcast.events import TERMINAL_TYPES
from tests.utils import seconds

RECV_TIMEOUT = seconds(5.0)


async def send(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> Any:
    """The next frame, decoded (an object, or a list for a batch frame)."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_control(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
    """The next frame, which must be a control frame (not an event)."""
    frame = await recv(ws, timeout)
    assert isinstance(frame, dict), frame
    assert "seq" not in frame, frame
    return frame


async def request(ws: ClientConnection, **frame: Any) -> dict[str, Any]:
    """Send a frame with an ``id`` and return the reply with that ``ref``."""
    frame.setdefault("id", f"r{id(frame)}")
    await send(ws, **frame)
    while True:
        reply = await recv(ws)
        if isinstance(reply, dict) and reply.get("ref") == frame["id"]:
            return reply


async def frames_until(
    ws: ClientConnection, done: Any, timeout: float | None = None
) -> list[dict[str, Any]]:
    """Every frame (batches flattened) up to and including the first where ``done(frame)``."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds(10.0) if timeout is None else timeout):
        while True:
            frame = json.loads(await ws.recv())
            items = frame if isinstance(frame, list) else [frame]
            for item in items:
                out.append(item)
                if done(item):
                    return out


def is_terminal_of(run_id: str) -> Any:
    return lambda f: f.get("run_id") == run_id and f.get("type") in TERMINAL_TYPES and "seq" in f


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "seq" in f]
