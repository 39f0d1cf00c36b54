"""The LLM benchmark's viewers: one WebSocket client per ChatAgent run.

``python -m bench.llm_load --spec JSON`` (started by ``bench/llm_bench.py``,
pinned beside the replay server) opens ``runs`` authenticated connections to
``agentcast serve``, one user each, then starts one ``bench_llm`` run per
connection with ``start_agent``; the message is the run's
:class:`~bench.llm_script.RunScript`, whose tokens the replay server sends on an
open-loop schedule from ``t0``. The starting connection follows the run's
thread (docs/protocol.md), so it is the run's viewer.

What it measures:

* **token → screen latency**: each ``text_delta`` is split on spaces; token
  ``i`` of a run was due to leave the model at ``t0 + i / tokens_per_s``, so
  its latency is *receipt - due* (wall clock on both sides, one machine):
  the model server's own lateness, the SDK, the agent, the 30 ms coalescing
  window, the log and the socket all count.
* **server CPU per token**: the server process's user+system CPU (psutil)
  from just before the ``start_agent`` frames go out until every viewer saw
  its run end, divided by the tokens delivered.
* **correctness**: every run ends with ``agent_completed``; each viewer's
  concatenated text equals the script exactly (order, no gap, no duplicate),
  so does ``final_response``; ``seq`` grows by one from event to event.

One JSON line goes to stdout. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from array import array
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # python bench/llm_load.py: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import psutil  # type: ignore[import-untyped]
import websockets
from bench.llm_script import LLM_AGENT, RunScript
from bench.load import _mint
from bench.stats import Usage, percentiles, raise_nofile_limit
from websockets.asyncio.client import ClientConnection

__all__ = ["main", "run_viewers"]

#: Seconds a handshake or a command's reply may take.
REPLY_TIMEOUT_S: Final = 30.0


class _Data(msgspec.Struct):
    delta: str = ""
    final_response: str | None = None
    error_type: str = ""
    message: str = ""


class _Frame(msgspec.Struct):
    """Only what the viewer reads; the decoder skips the rest."""

    type: str
    seq: int = 0
    thread_id: str = ""
    ts: float = 0.0
    code: str = ""
    message: str = ""
    data: _Data | None = None


_decode = msgspec.json.Decoder(_Frame).decode


class Viewer:
    """One connection: starts one run and follows its thread to the end."""

    def __init__(
        self,
        script: RunScript,
        token: str,
        latencies: array[float],
        delivery: array[float] | None = None,
    ) -> None:
        self.script = script
        self.token = token
        self.latencies = latencies
        #: receipt - the event's ``ts`` (stamped at emit) per ``text_delta``: agentcast's
        #: own part of the way, after the coalesced delta left the agent.
        self.delivery: array[float] = delivery if delivery is not None else array("d")
        self.ws: ClientConnection | None = None
        self.parts: list[str] = []
        self.tokens = 0
        self.next_index = 0
        self.last_seq = 0
        self.seq_errors = 0
        self.index_errors = 0
        self.final: str | None = None
        self.ended: str | None = None  # the terminal event's type
        self.error = ""
        self.done = asyncio.Event()
        self._reply: asyncio.Future[_Frame] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, url: str) -> None:
        """Open the socket and read ``connection_established``."""
        ws = await websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            compression=None,
            ping_interval=None,
            open_timeout=REPLY_TIMEOUT_S,
            close_timeout=2,
            proxy=None,
            user_agent_header=None,
        )
        first = _decode(await asyncio.wait_for(ws.recv(decode=False), REPLY_TIMEOUT_S))
        if first.type != "connection_established":
            await ws.close()
            raise RuntimeError(f"expected connection_established, got {first.type}")
        self.ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))

    async def start(self) -> None:
        """``start_agent`` with the run's script; the connection then follows the run."""
        assert self.ws is not None
        self._reply = asyncio.get_running_loop().create_future()
        frame = {"type": "start_agent", "agent": LLM_AGENT, "message": self.script.encode()}
        await self.ws.send(json.dumps(frame | {"id": 1}))
        reply = await asyncio.wait_for(self._reply, REPLY_TIMEOUT_S)
        if reply.type != "run_accepted":
            raise RuntimeError(f"start_agent: {reply.type} {reply.code} {reply.message}")

    async def close(self) -> None:
        """Close (bounded) and stop the reader."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _read(self, ws: ClientConnection) -> None:
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = time.time()
                frame = _decode(raw)
                if frame.seq <= 0:
                    reply = self._reply
                    if reply is not None and not reply.done():
                        reply.set_result(frame)
                    elif frame.type == "error":
                        self.error = f"error frame: {frame.code} {frame.message}"
                    continue
                if self.last_seq and frame.seq != self.last_seq + 1:
                    self.seq_errors += 1
                self.last_seq = frame.seq
                self._on_event(frame, now)
        except websockets.ConnectionClosed as exc:
            if self.ended is None:
                code = exc.rcvd.code if exc.rcvd is not None else None
                self.error = f"closed by server: {code}"
                self.done.set()
        except msgspec.DecodeError as exc:
            self.error = f"undecodable frame: {exc}"
            self.done.set()

    def _on_event(self, frame: _Frame, now: float) -> None:
        kind = frame.type
        data = frame.data
        if kind == "text_delta" and data is not None:
            self.parts.append(data.delta)
            if frame.ts:
                self.delivery.append(now - frame.ts)
            script = self.script
            for piece in data.delta.split():
                _, _, index = piece.rpartition(".")
                i = int(index) if index.isdigit() else -1
                if i != self.next_index:
                    self.index_errors += 1
                self.next_index = i + 1
                self.tokens += 1
                self.latencies.append(now - script.due(i))
        elif kind in ("agent_completed", "agent_error", "agent_cancelled"):
            self.ended = kind
            if data is not None:
                self.final = data.final_response
                if kind == "agent_error":
                    self.error = f"{data.error_type}: {data.message}"[:200]
            self.done.set()

    def problems(self) -> list[str]:
        """What is wrong with this viewer's run (empty: exactly the script)."""
        found: list[str] = []
        name = self.script.run
        if self.ended != "agent_completed":
            found.append(f"{name}: ended with {self.ended} {self.error}".strip())
        text = "".join(self.parts)
        if text != self.script.text():
            found.append(f"{name}: text differs ({len(text)} vs {len(self.script.text())} chars)")
        if self.ended == "agent_completed" and self.final != self.script.text():
            found.append(f"{name}: final_response differs from the script")
        if self.seq_errors or self.index_errors:
            found.append(f"{name}: {self.seq_errors} seq jumps, {self.index_errors} token jumps")
        return found


async def run_viewers(spec: dict[str, Any]) -> dict[str, Any]:
    """One phase: connect, start every run, follow them to the end; the figures."""
    server = psutil.Process(int(spec["server_pid"]))
    model = psutil.Process(int(spec["replay_pid"])) if spec.get("replay_pid") else None
    runs = int(spec["runs"])
    latencies: array[float] = array("d")
    delivery: array[float] = array("d")
    label = str(spec["label"])
    viewers: list[Viewer] = []
    for k in range(runs):
        placeholder = RunScript(f"{label}r{k}", 0.0, float(spec["tokens_per_s"]), 1)
        viewers.append(
            Viewer(placeholder, _mint(spec["secret"], f"{label}-u{k}"), latencies, delivery)
        )
    try:
        gate = asyncio.Semaphore(50)

        async def connect(viewer: Viewer) -> None:
            async with gate:
                await viewer.connect(str(spec["url"]))

        await asyncio.gather(*(connect(v) for v in viewers))
        # Every run's first token is due at the same t0 (or the one asked for):
        # the worst case for the server, 50 answers streaming at once.
        t0 = max(time.time() + float(spec.get("lead", 1.0)), float(spec.get("t0") or 0.0))
        for v in viewers:
            v.script = RunScript(v.script.run, t0, float(spec["tokens_per_s"]), int(spec["tokens"]))
        gc.collect()
        gc.freeze()  # this process's own pauses must not read as the server's latency
        before, times_before = Usage.sample(server), server.cpu_times()
        model_before = _cpu(model)
        await asyncio.gather(*(v.start() for v in viewers))
        end = max(v.script.end for v in viewers)
        deadline = end + float(spec.get("drain_timeout", 15.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(v.done.wait() for v in viewers)),
                max(0.1, deadline - time.time()),
            )
        after, times_after = Usage.sample(server), server.cpu_times()
        model_after = _cpu(model)
    finally:
        gc.unfreeze()
        await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)
    tokens = sum(v.tokens for v in viewers)
    span = max(1e-9, after.at - before.at)
    server_cpu = after.server_cpu - before.server_cpu
    own_cpu = after.own_cpu - before.own_cpu
    busy = after.machine_busy - before.machine_busy
    model_cpu = model_after - model_before
    problems = [p for v in viewers for p in v.problems()]
    return {
        "kind": "agentcast",
        "runs": runs,
        "runs_ok": sum(1 for v in viewers if not v.problems()),
        "tokens": tokens,
        "expected_tokens": runs * int(spec["tokens"]),
        "text_deltas": sum(len(v.parts) for v in viewers),
        "latency_ms": percentiles(latencies),
        # Emit (the bridge's ts) → receipt, per text_delta: the log, fan-out and socket.
        "emit_to_screen_ms": percentiles(delivery),
        "window_s": round(span, 3),
        "cpu_s": round(server_cpu, 4),
        "cpu_user_s": round(times_after.user - times_before.user, 4),
        "cpu_system_s": round(times_after.system - times_before.system, 4),
        "text_deltas_per_s": round(sum(len(v.parts) for v in viewers) / span, 1),
        "cpu_us_per_token": round(server_cpu / tokens * 1e6, 2) if tokens else None,
        "server_cpu_cores": round(server_cpu / span, 3),
        "viewer_cpu_cores": round(own_cpu / span, 3),
        "model_cpu_cores": round(model_cpu / span, 3),
        # Everything else on the machine: another user's work shows here.
        "other_cpu_cores": round(max(0.0, busy - server_cpu - own_cpu - model_cpu) / span, 3),
        "server_rss_mb": round(after.server_rss / 2**20, 1),
        "problems": problems[:10],
        "problem_count": len(problems),
    }


def _cpu(proc: psutil.Process | None) -> float:
    """User+system CPU seconds of ``proc`` (0 without one, or once it is gone)."""
    if proc is None:
        return 0.0
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> None:
    """One phase from ``--spec``; one JSON line on stdout."""
    parser = argparse.ArgumentParser(description="viewers of the LLM benchmark")
    parser.add_argument("--spec", required=True, help="the phase as JSON")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    import uvloop

    try:
        result = uvloop.run(run_viewers(json.loads(args.spec)))
    except Exception as exc:  # reported, the orchestrator decides
        result = {"kind": "agentcast", "failed": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
