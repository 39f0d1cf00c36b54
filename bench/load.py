"""The load generator: many WebSocket clients in one process, speaking the real protocol.

``bench/run.py`` starts this module once (``python -m bench.load --rpc``, pinned
to its own CPU) and sends it one *phase* per line on stdin (a JSON object, see
:class:`StreamSpec` and :class:`IdleSpec`); it answers each with one line of
JSON results on stdout. Keeping one process for the whole run avoids paying
Python's start-up per step; every phase opens and closes its own connections.

What it measures, and why this way:

* **Latency** is *receipt time - due time*: every bench event carries the
  wall-clock time its slot was due (:mod:`bench.schedule`), so queueing
  anywhere — in the agent's emit, the log, the fan-out, the socket, this
  process — is counted, and a server that falls behind cannot hide it
  (no coordinated omission). *Receipt time - ``ts``* (the bridge's stamp) is
  reported beside it. Only slots due inside the measurement window count;
  the window starts after the warm-up and after every run was set up.
* **Throughput** is events received inside the window ÷ its length, summed
  over connections (one event delivered to three tabs counts three times).
* **Server cost**: the server process's CPU time (psutil, user + system) over
  the window ÷ the deliveries in it, its RSS, and this process's own CPU, so a
  load generator that saturates first is visible in the results.
* **Correctness**, per connection and thread, by ``seq`` alone
  (docs/protocol.md: clients order by ``seq``): a hole never filled is a *gap*, an
  event seen twice a *duplicate*, one arriving after a later one a *reorder*,
  and events of the run still missing when the drain deadline passes are
  *undelivered*. A connection the server closes unexpectedly (e.g. 4008 slow
  consumer) resumes with ``after_seq`` like a real client and is counted.

Every phase is bounded: connects, set-up, the schedule and the drain all have
deadlines, after which whatever is missing is reported as missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import psutil  # type: ignore[import-untyped]
import websockets
from bench.schedule import AGENT_NAME, Schedule
from bench.stats import Tracker, Usage, percentiles, raise_nofile_limit, sockstat_tcp_pages
from websockets.asyncio.client import ClientConnection

__all__ = ["IdleSpec", "StreamSpec", "main", "run_phase"]

#: A frame at least this large is a "big" event (W5's 64 KiB tool results).
BIG_FRAME_BYTES: Final = 16 * 1024
#: Frames up to this size are accepted (a 64 KiB result plus its envelope).
MAX_FRAME_BYTES: Final = 8 * 1024 * 1024
#: Seconds a reply to one command may take before the phase reports a failure.
REPLY_TIMEOUT_S: Final = 30.0


# --- wire decoding -------------------------------------------------------------------


class _Due(msgspec.Struct):
    due: float = 0.0


class _Data(msgspec.Struct):
    value: _Due | None = None  # custom
    parameters: _Due | None = None  # tool_executing
    results: _Due | None = None  # tool_completed


class _Frame(msgspec.Struct):
    """Only the fields the load generator reads; the rest is skipped by the decoder."""

    type: str
    seq: int = 0
    ts: float = 0.0
    thread_id: str = ""
    epoch: str = ""
    after_seq: int = 0
    recovered: bool = True
    code: str = ""
    message: str = ""
    data: _Data | None = None


_decode_frame = msgspec.json.Decoder(_Frame | list[_Frame]).decode
_DUE_FIELD: Final = {"custom": "value", "tool_executing": "parameters", "tool_completed": "results"}


# --- phase specifications ------------------------------------------------------------


@dataclass(slots=True)
class StreamSpec:
    """W1, W2 (one step), W4, W5: runs emitting on an open-loop schedule.

    Attributes:
        url: ``ws://127.0.0.1:PORT/v1/ws``.
        server_pid: The server process (CPU and RSS are read from it).
        secret: HS256 secret to mint user tokens with; ``None`` for the baseline.
        label: Prefix of the user names (unique per phase on one server).
        users: Users, one thread and one run each.
        conns_pattern: Connections per user, cycled over users (``[1, 2, 3]``).
        rate: Total events per second over all runs.
        duration: Seconds of schedule.
        warmup: Seconds at the start of the schedule left out of the figures.
        big_every: Every n-th slot is a tool call with a big result (0: none).
        big_bytes: Size of the big result.
        drop_at: Seconds after the schedule starts at which every connection
            drops at once and resumes (W4); ``None``: no drop.
        reconnect_jitter: Reconnects are spread uniformly over this many seconds.
        drain_timeout: Seconds after the last slot allowed for delivery to finish.
        connect_concurrency: Handshakes in flight at once.
        batch: Connect with ``?batch=1``.
        lead: Seconds between the last connect and slot 0, for setting up the
            runs (the window starts after set-up anyway).
    """

    url: str
    server_pid: int
    secret: str | None
    label: str
    users: int
    conns_pattern: list[int]
    rate: float
    duration: float
    warmup: float
    big_every: int = 0
    big_bytes: int = 64 * 1024
    drop_at: float | None = None
    reconnect_jitter: float = 1.0
    drain_timeout: float = 15.0
    connect_concurrency: int = 100
    batch: bool = False
    lead: float = 1.0


@dataclass(slots=True)
class IdleSpec:
    """W3: authenticated, subscribed connections that then sit idle.

    Attributes:
        url, server_pid, secret, label: as in :class:`StreamSpec`.
        connections: Idle connections to hold.
        conns_per_user: Connections per user (each user has one thread).
        settle: Seconds to wait before and after opening them, for RSS to settle.
        connect_concurrency: Handshakes in flight at once.
    """

    url: str
    server_pid: int
    secret: str | None
    label: str
    connections: int
    conns_per_user: int = 10
    settle: float = 2.0
    connect_concurrency: int = 200


# --- per-connection state -------------------------------------------------------------


class Client:
    """One WebSocket connection (re-opened on a drop) following one thread."""

    def __init__(self, index: int, user: str, token: str, phase: Phase) -> None:
        self.index = index
        self.user = user
        self.token = token
        self.phase = phase
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.thread_id = ""
        self.epoch = ""
        self.tracker = Tracker(0)
        self._waiter: asyncio.Future[_Frame] | None = None
        self.closing = False  # a close or drop this side started
        self.unexpected_closes = 0
        self.not_recovered = 0
        self.errors: list[str] = []
        self.resumed_at: float | None = None  # when the resumed subscription was sent
        self.live_at: float | None = None  # first event due after resumed_at, received

    # Public methods

    async def connect(self) -> None:
        """Open the socket, read ``connection_established``, start the reader."""
        url = self.phase.url + ("?batch=1" if self.phase.batch else "")
        ws = await websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            compression=None,
            max_size=MAX_FRAME_BYTES,
            ping_interval=None,
            open_timeout=REPLY_TIMEOUT_S,
            close_timeout=2,
            proxy=None,
            user_agent_header=None,
        )
        first = _decode_frame(await asyncio.wait_for(ws.recv(decode=False), REPLY_TIMEOUT_S))
        if isinstance(first, list) or first.type != "connection_established":
            await ws.close()
            raise RuntimeError(f"expected connection_established, got {first!r}")
        self.ws = ws
        self.closing = False
        self.reader = asyncio.get_running_loop().create_task(self._read(ws))

    async def request(self, frame: dict[str, Any], replies: Iterable[str]) -> _Frame:
        """Send a command and wait for its reply (one outstanding command per client)."""
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Frame] = loop.create_future()
        self._waiter = waiter
        await self.ws.send(json.dumps(frame))
        reply = await asyncio.wait_for(waiter, REPLY_TIMEOUT_S)
        if reply.type not in replies:
            raise RuntimeError(f"{frame['type']}: {reply.type} {reply.code} {reply.message}")
        return reply

    async def subscribe(self, after_seq: int) -> None:
        """Follow the thread from ``after_seq`` (``epoch`` given when resuming)."""
        frame: dict[str, Any] = {"type": "subscribe", "thread_id": self.thread_id, "id": 1}
        if after_seq:
            frame["after_seq"] = after_seq
            frame["epoch"] = self.epoch
        reply = await self.request(frame, ("subscribed",))
        if not reply.recovered:
            self.not_recovered += 1

    def drop(self) -> None:
        """Cut the TCP connection without a close handshake (a network drop)."""
        self.closing = True
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()

    async def close(self) -> None:
        """Close the socket cleanly (bounded) and stop the reader."""
        self.closing = True
        ws, reader = self.ws, self.reader
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
            if ws.transport is not None:
                ws.transport.abort()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def resume(self, delay: float, deadline: float) -> None:
        """Reconnect after ``delay`` and resume from the last contiguous seq, until ``deadline``."""
        await asyncio.sleep(delay)
        attempt = 0
        while True:
            try:
                await self.connect()
                self.resumed_at = time.time()
                await self.subscribe(self.tracker.contig)
                return
            except (OSError, TimeoutError, RuntimeError, websockets.WebSocketException) as exc:
                attempt += 1
                if self.ws is not None:
                    await self.close()
                if time.time() > deadline:
                    self.errors.append(f"resume failed after {attempt} attempts: {exc!r}")
                    return
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt) * random.random())

    # Private methods

    async def _read(self, ws: ClientConnection) -> None:
        phase = self.phase
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = time.time()
                frame = _decode_frame(raw)
                if isinstance(frame, list):
                    size = len(raw) // max(1, len(frame))
                    for event in frame:
                        phase.on_event(self, event, now, size)
                elif frame.seq > 0:
                    phase.on_event(self, frame, now, len(raw))
                else:
                    self._on_control(frame)
        except websockets.ConnectionClosed as exc:
            if not self.closing and ws is self.ws:  # not a stale socket of a resumed client
                self.unexpected_closes += 1
                code = exc.rcvd.code if exc.rcvd is not None else None
                self.errors.append(f"closed by server: {code}")
                phase.on_unexpected_close(self)
        except msgspec.DecodeError as exc:
            self.errors.append(f"undecodable frame: {exc}")

    def _on_control(self, frame: _Frame) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(frame)
        elif frame.type == "subscribed" and not frame.recovered:
            self.not_recovered += 1  # unsolicited: history lost under a live subscription
        elif frame.type == "error":
            self.errors.append(f"error frame: {frame.code} {frame.message}")


# --- measurements ---------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    """Shared state of one phase: the clients, the window and what was measured."""

    url: str
    batch: bool = False
    window: tuple[float, float] = (math.inf, math.inf)
    # Arrays of doubles, not lists of floats: the garbage collector never walks
    # them (a million samples in lists added ~10 ms to each of the load
    # generator's full collections, read as the server's latency).
    latencies: array[float] = field(default_factory=lambda: array("d"))
    small_latencies: array[float] = field(default_factory=lambda: array("d"))
    big_latencies: array[float] = field(default_factory=lambda: array("d"))
    ts_latencies: array[float] = field(default_factory=lambda: array("d"))
    delivered: int = 0
    delivered_bytes: int = 0
    frame_bytes: dict[str, list[int]] = field(default_factory=dict)
    resume: Callable[[Client], None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    incomplete: int = 0

    def on_event(self, client: Client, event: _Frame, now: float, size: int) -> None:
        """Account for one received event (hot path: keep it short)."""
        tracker = client.tracker
        was_complete = tracker.complete
        tracker.see(event.seq)
        if not was_complete and tracker.complete:
            self.incomplete -= 1
            if self.incomplete <= 0:
                self.done.set()
        kind = event.type
        stat = self.frame_bytes.get(kind)
        if stat is None:
            self.frame_bytes[kind] = [1, size]
        else:
            stat[0] += 1
            stat[1] += size
        start, end = self.window
        if start <= now <= end:
            self.delivered += 1
            self.delivered_bytes += size
        holder = _DUE_FIELD.get(kind)
        if holder is None or event.data is None:
            return
        due_obj = getattr(event.data, holder)
        if due_obj is None:
            return
        due = due_obj.due
        if client.resumed_at is not None and client.live_at is None and due >= client.resumed_at:
            client.live_at = now
        if start <= due <= end:
            latency = now - due
            self.latencies.append(latency)
            (self.big_latencies if size >= BIG_FRAME_BYTES else self.small_latencies).append(
                latency
            )
            self.ts_latencies.append(now - event.ts)

    def on_unexpected_close(self, client: Client) -> None:
        """The server closed a connection: resume it like a real client would."""
        if self.resume is not None:
            self.resume(client)


# --- phases ---------------------------------------------------------------------------


def _mint(secret: str | None, user: str) -> str:
    """A token for ``user`` signed like agentcast's own (``Authenticator.mint_token``)."""
    if secret is None:
        return "baseline-needs-no-token"
    from agentcast.gateway.auth import Authenticator
    from agentcast.gateway.settings import GatewaySettings

    global _AUTH
    if _AUTH is None or _AUTH[0] != secret:
        _AUTH = (secret, Authenticator(GatewaySettings(jwt_secret=secret)))
    return _AUTH[1].mint_token(user, ttl_s=3600)


_AUTH: tuple[str, Any] | None = None


async def _bounded(
    items: Iterable[Any], fn: Callable[[Any], Awaitable[None]], concurrency: int
) -> list[BaseException]:
    """Run ``fn`` over ``items`` with at most ``concurrency`` in flight; return the failures."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> None:
        async with gate:
            await fn(item)

    results = await asyncio.gather(*(one(i) for i in items), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


async def _close_all(clients: list[Client]) -> None:
    async def close(client: Client) -> None:
        await client.close()

    await _bounded(clients, close, 500)


def _correctness(clients: list[Client]) -> dict[str, Any]:
    gaps = sum(len(c.tracker.missing) for c in clients)
    undelivered = sum(max(0, c.tracker.expected - c.tracker.max_seen) for c in clients)
    errors = [e for c in clients for e in c.errors]
    return {
        "gaps": gaps,
        "duplicates": sum(c.tracker.duplicates for c in clients),
        "reorders": sum(c.tracker.reorders for c in clients),
        "undelivered": undelivered,
        "unexpected_closes": sum(c.unexpected_closes for c in clients),
        "not_recovered": sum(c.not_recovered for c in clients),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }


def _usage_delta(a: Usage, b: Usage, delivered: int) -> dict[str, Any]:
    span = max(1e-9, b.at - a.at)
    server_cpu = b.server_cpu - a.server_cpu
    own_cpu = b.own_cpu - a.own_cpu
    busy = b.machine_busy - a.machine_busy
    return {
        "window_s": round(span, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_cores": round(server_cpu / span, 3),
        "cpu_us_per_event": round(server_cpu / delivered * 1e6, 2) if delivered else None,
        "loadgen_cpu_cores": round(own_cpu / span, 3),
        "other_cpu_cores": round(max(0.0, busy - server_cpu - own_cpu) / span, 3),
        "server_rss_mb": round(b.server_rss / 2**20, 1),
    }


async def run_stream(spec: StreamSpec) -> dict[str, Any]:
    """One streaming phase; see :class:`StreamSpec`."""
    server = psutil.Process(spec.server_pid)
    phase = Phase(url=spec.url, batch=spec.batch)
    clients: list[Client] = []
    primaries: list[list[Client]] = []
    for u in range(spec.users):
        user = f"{spec.label}-u{u}"
        token = _mint(spec.secret, user)
        group = [
            Client(len(clients) + k, user, token, phase)
            for k in range(spec.conns_pattern[u % len(spec.conns_pattern)])
        ]
        clients.extend(group)
        primaries.append(group)
    started = time.time()
    try:
        return await _stream(spec, server, phase, clients, primaries, started)
    finally:
        gc.unfreeze()  # frozen in _stream once set up; the clients may go now
        await _close_all(clients)


async def _stream(
    spec: StreamSpec,
    server: psutil.Process,
    phase: Phase,
    clients: list[Client],
    groups: list[list[Client]],
    started: float,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()

    async def connect(client: Client) -> None:
        await client.connect()

    failures = await _bounded(clients, connect, spec.connect_concurrency)
    if failures:
        raise RuntimeError(f"{len(failures)} connections failed: {failures[0]!r}")
    connected = time.time()

    interval = spec.users / spec.rate  # seconds between two slots of one run
    count = max(1, round(spec.duration / interval))
    lead = spec.lead + 0.004 * spec.users  # set-up time for the runs, before slot 0
    t0 = time.time() + lead
    schedules = [
        Schedule(
            t0=t0 + interval * u / spec.users,  # runs interleaved: a smooth total rate
            count=count,
            interval=interval,
            big_every=spec.big_every,
            big_bytes=spec.big_bytes,
        )
        for u in range(spec.users)
    ]
    phase.incomplete = len(clients)
    for group, schedule in zip(groups, schedules, strict=True):
        for client in group:
            client.tracker = Tracker(schedule.last_seq())

    async def start(u: int) -> None:
        group = groups[u]
        first = group[0]
        message = {"type": "start_agent", "agent": AGENT_NAME, "id": 1}
        message["message"] = schedules[u].encode()
        reply = await first.request(message, ("run_accepted",))
        for client in group:
            client.thread_id, client.epoch = reply.thread_id, reply.epoch
        await asyncio.gather(*(c.subscribe(0) for c in group[1:]))

    failures = await _bounded(range(spec.users), start, 32)
    if failures:
        raise RuntimeError(f"{len(failures)} runs failed to start: {failures[0]!r}")
    # The instrument's own pauses must not read as the server's latency: a full
    # collection over every client's objects stopped this loop for 10-20 ms.
    # Set-up is over, so what exists now lives until the phase ends.
    gc.collect()
    gc.freeze()
    set_up = time.time()
    end = t0 + spec.duration
    win_start = max(t0 + spec.warmup, set_up + 0.5)
    if win_start >= end - 0.5:
        raise RuntimeError(f"set-up took {set_up - connected:.1f}s: no measurement window left")
    phase.window = (win_start, end)

    resumes: list[asyncio.Task[None]] = []
    storm: dict[str, Any] = {}

    def resume_later(client: Client) -> None:
        deadline = end + spec.drain_timeout
        resumes.append(loop.create_task(client.resume(random.uniform(0, 0.2), deadline)))

    phase.resume = resume_later

    await asyncio.sleep(max(0.0, win_start - time.time()))
    before = Usage.sample(server)
    rss_max = before.server_rss
    if spec.drop_at is not None:
        await asyncio.sleep(max(0.0, t0 + spec.drop_at - time.time()))
        dropped_at = time.time()
        for client in clients:  # all at once: one pass, no await
            client.drop()
        jitter = spec.reconnect_jitter
        deadline = dropped_at + 30.0
        resumed = [loop.create_task(c.resume(random.uniform(0, jitter), deadline)) for c in clients]
        resumes.extend(resumed)
        storm_before = Usage.sample(server)
        await asyncio.wait(resumed)
        storm_after = Usage.sample(server)
        storm = _storm_figures(clients, dropped_at, end)
        span = max(1e-9, storm_after.at - storm_before.at)
        # Which side was saturated while everyone came back: server or load generator.
        storm["server_cpu_cores"] = round(
            (storm_after.server_cpu - storm_before.server_cpu) / span, 3
        )
        storm["loadgen_cpu_cores"] = round((storm_after.own_cpu - storm_before.own_cpu) / span, 3)
    while time.time() < end:
        await asyncio.sleep(min(0.5, max(0.0, end - time.time())))
        rss_max = max(rss_max, server.memory_info().rss)
    after = Usage.sample(server)
    drain_deadline = end + spec.drain_timeout
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(phase.done.wait(), max(0.1, drain_deadline - time.time()))
    drained = time.time()
    if resumes:
        await asyncio.wait(resumes, timeout=max(0.1, drain_deadline - time.time()))
    if storm:
        storm.update(_storm_figures(clients, storm["dropped_at"], end))

    threads = spec.users
    result: dict[str, Any] = {
        "kind": "stream",
        "connections": len(clients),
        "users": spec.users,
        "threads": threads,
        "rate": spec.rate,
        "offered_deliveries_per_s": round(spec.rate * len(clients) / threads, 1),
        "duration": spec.duration,
        "setup_s": round(set_up - started, 3),
        "setup_late_s": round(max(0.0, set_up - t0), 3),
        "drain_s": round(max(0.0, drained - end), 3),
        "latency_ms": percentiles(phase.latencies),
        "small_latency_ms": percentiles(phase.small_latencies),
        "big_latency_ms": percentiles(phase.big_latencies),
        "ts_latency_ms": percentiles(phase.ts_latencies),
        "delivered": phase.delivered,
        "server_rss_max_mb": round(rss_max / 2**20, 1),
        "frame_bytes": {k: round(v[1] / v[0]) for k, v in sorted(phase.frame_bytes.items())},
        **_usage_delta(before, after, phase.delivered),
        **_correctness(clients),
    }
    result["delivered_per_s"] = round(phase.delivered / max(1e-9, result["window_s"]), 1)
    if storm:
        result["storm"] = storm
    return result


def _storm_figures(clients: list[Client], dropped_at: float, end: float) -> dict[str, Any]:
    """W4: how long until every client was subscribed again and receiving new events."""
    live = [c.live_at - dropped_at for c in clients if c.live_at is not None]
    resumed = [c.resumed_at - dropped_at for c in clients if c.resumed_at is not None]
    own = [
        c.live_at - c.resumed_at
        for c in clients
        if c.live_at is not None and c.resumed_at is not None
    ]
    return {
        "dropped_at": dropped_at,
        "clients": len(clients),
        "resubscribed": len(resumed),
        "live_again": len(live),
        "all_resubscribed_s": round(max(resumed), 3) if len(resumed) == len(clients) else None,
        "all_live_s": round(max(live), 3) if len(live) == len(clients) else None,
        "resume_to_live_ms": percentiles(own),
        "schedule_left_s": round(end - dropped_at, 3),
    }


async def run_idle(spec: IdleSpec) -> dict[str, Any]:
    """W3: open, authenticate and subscribe ``connections`` sockets; measure memory per socket."""
    server = psutil.Process(spec.server_pid)
    phase = Phase(url=spec.url)
    users = max(1, math.ceil(spec.connections / spec.conns_per_user))
    tokens = [_mint(spec.secret, f"{spec.label}-u{u}") for u in range(users)]
    setup = [Client(u, f"{spec.label}-u{u}", tokens[u], phase) for u in range(users)]
    clients = [
        Client(i, f"{spec.label}-u{i % users}", tokens[i % users], phase)
        for i in range(spec.connections)
    ]
    threads: list[tuple[str, str]] = [("", "")] * users
    try:
        # One thread per user first (an echo run: exactly three events), on
        # connections closed again before the first memory reading.
        async def make_thread(client: Client) -> None:
            await client.connect()
            frame = {"type": "start_agent", "agent": "echo", "message": "idle", "id": 1}
            reply = await client.request(frame, ("run_accepted",))
            threads[client.index] = (reply.thread_id, reply.epoch)
            await client.close()

        failures = await _bounded(setup, make_thread, 32)
        if failures:
            raise RuntimeError(f"{len(failures)} threads failed: {failures[0]!r}")
        await asyncio.sleep(spec.settle)
        rss0, pages0, own0 = server.memory_info().rss, sockstat_tcp_pages(), _own_rss()
        phase.incomplete = len(clients)

        async def open_idle(client: Client) -> None:
            client.thread_id, client.epoch = threads[client.index % users]
            client.tracker = Tracker(3)
            await client.connect()
            await client.subscribe(0)

        started = time.time()
        failures = await _bounded(clients, open_idle, spec.connect_concurrency)
        if failures:
            raise RuntimeError(f"{len(failures)} idle connections failed: {failures[0]!r}")
        opened = time.time() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.done.wait(), 30)
        await asyncio.sleep(spec.settle)
        rss1, pages1, own1 = server.memory_info().rss, sockstat_tcp_pages(), _own_rss()
        alive = sum(1 for c in clients if c.ws is not None and c.ws.close_code is None)
        page = os.sysconf("SC_PAGE_SIZE")
        n = len(clients)
        kernel = None
        if pages0 is not None and pages1 is not None:
            kernel = round((pages1 - pages0) * page / n / 1024, 2)
        return {
            "kind": "idle",
            "connections": n,
            "users": users,
            "alive": alive,
            "open_s": round(opened, 3),
            "server_rss_before_mb": round(rss0 / 2**20, 1),
            "server_rss_mb": round(rss1 / 2**20, 1),
            "server_kb_per_conn": round((rss1 - rss0) / n / 1024, 2),
            "kernel_tcp_kb_per_conn_both_ends": kernel,
            "loadgen_kb_per_conn": round((own1 - own0) / n / 1024, 2),
            **_correctness(clients),
        }
    finally:
        await _close_all(setup + clients)


def _own_rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def run_phase(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the phase described by ``spec`` (``{"kind": "stream"|"idle", ...}``)."""
    fields = {k: v for k, v in spec.items() if k != "kind"}
    if spec.get("kind") == "idle":
        return await run_idle(IdleSpec(**fields))
    return await run_stream(StreamSpec(**fields))


# --- process ------------------------------------------------------------------------


async def _rpc() -> None:
    """Answer one phase per stdin line with one result line on stdout, until EOF."""
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        if not line.strip():
            continue
        try:
            result = await run_phase(json.loads(line))
        except Exception as exc:
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """``--rpc`` (used by bench/run.py) or ``--spec JSON`` for one phase by hand."""
    parser = argparse.ArgumentParser(description="the load generator of python -m bench")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rpc", action="store_true", help="phases on stdin, results on stdout")
    group.add_argument("--spec", help="one phase as JSON")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    import uvloop

    if args.rpc:
        uvloop.run(_rpc())
    else:
        print(json.dumps(uvloop.run(run_phase(json.loads(args.spec))), indent=2))


if __name__ == "__main__":
    main()
