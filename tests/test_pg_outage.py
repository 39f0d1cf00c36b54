"""PostgreSQL outages under a live engine: nothing lost, nothing duplicated, a clear refusal.

Each test has a private server of its own (tests/pg_private.py) that it
stops, kills and starts again while the engine, a WebSocket client or a
follower is live:

* **mid-run** — the bridge turns DEGRADED, ``/readyz`` answers 503 with its
  short reason, the agent's emits wait; once the server is back the run
  completes and the client has every event of the thread exactly once, in
  order, as the log holds them (invariant 8: nothing is dropped);
* **at start** — an unreachable server (refused, or a port that never
  answers) makes ``Engine.start`` fail within its connect bound with
  ``LogUnavailable`` naming the masked URL; the same engine starts once the
  server is up;
* **followers only** — after a restart the ``LISTEN`` connection comes back
  and another process's append reaches a follower here through it.

Ordering rests on gates (an agent waits for the outage before it emits on)
and on waiting for states; only bounds are times (tests/utils.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from agentcast.agents import AgentRegistry, RunContext
from agentcast.config import EngineSettings
from agentcast.db.postgres import PostgresDatabase
from agentcast.engine import Engine
from agentcast.errors import LogUnavailable
from agentcast.events import EventType
from agentcast.lifecycle import BridgeState
from agentcast.log.base import EventDraft, StoredEvent
from agentcast.log.follower import StreamFollower
from agentcast.log.postgres import PostgresLog
from agentcast.types import new_event_id
from tests import pg_private
from tests.gateway.ws_support import LiveServer, ServerFactory
from tests.gateway.wsutil import is_terminal_of, request
from tests.invariants import assert_contiguous, assert_run_lifecycles, decode_all
from tests.pg_private import PrivatePostgres
from tests.utils import seconds, wait_until, within

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timing]

# The private server's fixtures, used by this module only.
pg_template = pg_private.pg_template
private_pg = pg_private.private_pg

#: Events the ticking agent emits; the second half only once the server is down.
TICKS: Final = 40
#: Its pace between two emits (an agent's schedule, not a synchronisation).
TICK_PACE_S: Final = 0.002
#: Retries of the bridge while the server is away: fast, and never FAILED during a test.
OUTAGE_SETTINGS: Final[dict[str, Any]] = {
    "recovery_base_s": 0.01,
    "recovery_max_s": 0.2,
    "recovery_attempts": 1_000_000,
    "health_interval_s": 3600,
    "shutdown_grace_s": 0.5,
}

Outage = Callable[[PrivatePostgres, Engine], Coroutine[Any, Any, None]]


async def _stop_immediate(server: PrivatePostgres, engine: Engine) -> None:
    await server.stop_async("immediate")


async def _kill(server: PrivatePostgres, engine: Engine) -> None:
    await server.kill_async()


def _arm_crash_after_commit(server: PrivatePostgres, engine: Engine) -> asyncio.Event:
    """Arm the writer's next ``COMMIT``: it commits, then the server goes down before the answer.

    The write's outcome is unknown to the engine (``WriteOutcomeUnknown``):
    the bridge appends the same events again once the server is back, and
    each must be stored and delivered once. The event returned is set once
    the crash happened.
    """
    db = engine.db
    assert isinstance(db, PostgresDatabase)
    real = db._commit
    crashed = asyncio.Event()

    async def commit_then_crash(conn: asyncpg.Connection) -> None:
        db._commit = real  # type: ignore[method-assign]  # once
        await real(conn)
        await server.stop_async("immediate")
        crashed.set()
        raise asyncpg.ConnectionDoesNotExistError("the server went down after COMMIT (injected)")

    db._commit = commit_then_crash  # type: ignore[method-assign]
    return crashed


async def _crash_after_commit(server: PrivatePostgres, engine: Engine) -> None:
    _arm_crash_after_commit(server, engine)


@dataclass(frozen=True)
class Case:
    """How the server goes away mid-run, and what the bridge and ``/readyz`` say meanwhile."""

    outage: Outage
    state: BridgeState = BridgeState.DEGRADED
    reason: str = "event log degraded; retrying"
    settings: dict[str, Any] = field(default_factory=dict)
    #: Ticks the outage itself may have committed (and a follower rightly delivered).
    committed_in_outage: int = 0


CASES: Final[dict[str, Case]] = {
    "immediate": Case(_stop_immediate),
    "kill": Case(_kill),
    "crash-after-commit": Case(_crash_after_commit, committed_in_outage=1),
    # Recovery exhausted: FAILED (new runs refused), still retrying, back when the server is.
    "failed": Case(
        _stop_immediate,
        BridgeState.FAILED,
        "event log unavailable",
        {"recovery_attempts": 2},
    ),
}


def ticker(gate: asyncio.Event) -> Callable[[RunContext], Coroutine[Any, Any, str]]:
    """An agent that emits ``int(message)`` ``custom`` ticks; half-way it waits for ``gate``."""

    async def ticking(ctx: RunContext) -> str:
        count = int(ctx.message)
        for i in range(count):
            if i == count // 2:
                await gate.wait()
            await ctx.custom("tick", i)
            await asyncio.sleep(TICK_PACE_S)
        return f"{count} ticks"

    return ticking


async def _collect(ws: ClientConnection, run_id: str, into: list[dict[str, Any]]) -> None:
    """Every frame of ``ws`` (batches flattened) into ``into``, up to the run's terminal event."""
    done = is_terminal_of(run_id)
    while True:
        frame = json.loads(await ws.recv())
        for item in frame if isinstance(frame, list) else [frame]:
            into.append(item)
            if done(item):
                return


async def _readyz(live: LiveServer) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=seconds(5.0)) as http:
        answer = await http.get(f"http://127.0.0.1:{live.port}/readyz")
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


@pytest.mark.parametrize(
    "name",
    list(CASES),
)
async def test_an_outage_mid_run_loses_and_duplicates_nothing(
    private_pg: PrivatePostgres, make_ws_server: ServerFactory, name: str
) -> None:
    case = CASES[name]
    live = await make_ws_server(
        engine_settings={"database_url": private_pg.url, **OUTAGE_SETTINGS, **case.settings}
    )
    engine = live.gateway.engine
    gate = asyncio.Event()
    engine.registry.register(ticker(gate), name="ticker", description="ticks, waits half-way")
    ws = await live.connect()
    accepted = await request(ws, type="start_agent", agent="ticker", message=str(TICKS))
    assert accepted["type"] == "run_accepted", accepted
    frames: list[dict[str, Any]] = []
    collecting = asyncio.create_task(_collect(ws, accepted["run_id"], frames))
    try:

        def ticks_seen() -> int:
            return sum(1 for f in frames if f.get("type") == EventType.CUSTOM)

        await wait_until(lambda: ticks_seen() == TICKS // 2, message="the first half of the run")
        status, body = await _readyz(live)
        assert (status, body["reason"]) == (200, "ready")

        await case.outage(private_pg, engine)
        gate.set()  # the agent emits on into the outage
        await wait_until(
            lambda: engine.bridge.state is case.state,
            within=seconds(10.0),
            message=f"the bridge to notice the outage ({case.state})",
        )
        status, body = await _readyz(live)
        assert (status, body["state"], body["reason"]) == (503, case.state.value, case.reason)
        await wait_until(
            lambda: engine.metrics.append_failures._value.get() >= 3,
            within=seconds(10.0),
            message="the appender to retry while the server is away",
        )
        # The emits wait: the agent is stuck on its first emit of the outage.
        assert engine.bridge.buffered >= 1
        assert TICKS // 2 <= ticks_seen() <= TICKS // 2 + case.committed_in_outage
        assert not collecting.done()

        await private_pg.start_async()
        await within(seconds(30.0), asyncio.shield(collecting), "the run to complete")
        await wait_until(
            lambda: engine.bridge.state is BridgeState.ACTIVE,
            within=seconds(10.0),
            message="the bridge to recover",
        )
        status, body = await _readyz(live)
        assert (status, body["reason"]) == (200, "ready")
        lock = engine.runner_lock
        assert lock is not None
        await wait_until(lambda: lock.held, message="the runner lock to be taken again")
    finally:
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await collecting
        if private_pg.pid is None:  # failed mid-outage: let the engine shut down promptly
            await private_pg.start_async()

    thread_id = accepted["thread_id"]
    stored = await engine.bridge.read(thread_id, 0, 100_000)
    events = decode_all(stored)
    assert_contiguous(events)
    assert_run_lifecycles(events)
    delivered = [f for f in frames if "seq" in f]
    assert [(f["seq"], f["event_id"], f["type"]) for f in delivered] == [
        (e.seq, e.event_id, e.type) for e in events
    ]
    ticks = [e.data["value"] for e in events if e.type == EventType.CUSTOM]
    assert ticks == list(range(TICKS))
    assert events[-1].type == EventType.AGENT_COMPLETED
    record = await engine.store.get_run("alice", accepted["run_id"])
    assert record.status.value == "completed"


async def test_a_crash_after_commit_stores_each_event_once(private_pg: PrivatePostgres) -> None:
    """The events of a write whose answer was lost are appended again and stored once."""
    gate = asyncio.Event()
    engine = _engine(private_pg.url, gate=gate)
    await engine.start()
    try:
        ticket = await engine.runner.start_run("alice", "ticker", str(TICKS))
        await wait_until(
            lambda: engine.runner.running_count == 1 and engine.bridge.buffered == 0,
            message="the run to reach its gate",
        )
        crashed = _arm_crash_after_commit(private_pg, engine)
        gate.set()
        await within(seconds(10.0), crashed.wait(), "the crash after COMMIT")
        await wait_until(
            lambda: engine.bridge.state is BridgeState.DEGRADED,
            within=seconds(10.0),
            message="the unknown outcome",
        )
        await private_pg.start_async()
        await _wait_completed(engine, ticket.run_id)
        events = decode_all(await engine.bridge.read(ticket.thread_id, 0, 100_000))
        assert_contiguous(events)
        assert_run_lifecycles(events)
        ticks = [e.data["value"] for e in events if e.type == EventType.CUSTOM]
        assert ticks == list(range(TICKS))
    finally:
        await engine.shutdown(grace_s=0)


def _engine(url: str, *, gate: asyncio.Event | None = None, **overrides: Any) -> Engine:
    registry = AgentRegistry()
    registry.register(ticker(gate or _open_gate()), name="ticker", description="ticks")
    return Engine(EngineSettings(database_url=url, **OUTAGE_SETTINGS).with_(**overrides), registry)


def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate


@contextlib.contextmanager
def _silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


async def test_an_unreachable_server_at_start_is_a_clear_bounded_refusal(
    private_pg: PrivatePostgres,
) -> None:
    await private_pg.stop_async("fast")
    secret_url = private_pg.url.replace("postgres@", "postgres:s3cr3t@")
    engine = _engine(secret_url, pg_connect_timeout_s=seconds(1.0))
    with pytest.raises(LogUnavailable) as refused:
        await within(seconds(10.0), engine.start(), "the refusal")
    message = str(refused.value)
    assert f"127.0.0.1:{private_pg.port}/agentcast" in message
    assert "s3cr3t" not in message
    assert engine.db is not None
    assert not engine.db.is_open
    assert engine.runner_lock is not None
    assert not engine.runner_lock.held
    assert str(engine.bridge.state) == BridgeState.UNINITIALIZED.value  # never initialised

    # The same engine starts once the server is there, and runs.
    await private_pg.start_async()
    await within(seconds(20.0), engine.start(), "the start once the server is up")
    try:
        assert engine.bridge.state is BridgeState.ACTIVE
        ticket = await engine.runner.start_run("alice", "ticker", "4")
        await _wait_completed(engine, ticket.run_id)
    finally:
        await engine.shutdown(grace_s=0)


async def test_a_server_that_never_answers_fails_the_start_within_the_connect_bound() -> None:
    with _silent_port() as port:
        url = f"postgresql://postgres:s3cr3t@127.0.0.1:{port}/agentcast"
        engine = _engine(url, pg_connect_timeout_s=seconds(0.5))
        with pytest.raises(LogUnavailable) as refused:
            await within(seconds(5.0), engine.start(), "the start to give up")
    message = str(refused.value)
    assert f"127.0.0.1:{port}/agentcast" in message
    assert "s3cr3t" not in message
    assert engine.bridge.state is BridgeState.UNINITIALIZED


async def _wait_completed(engine: Engine, run_id: str) -> None:
    async def completed() -> bool:
        record = await engine.store.get_run("alice", run_id)
        return record.status.value == "completed"

    await wait_until(completed, within=seconds(10.0), message=f"run {run_id} to complete")


@contextlib.asynccontextmanager
async def _process(url: str, *, head_check_interval_s: float) -> AsyncIterator[PostgresLog]:
    """What one server process holds: a database and a log on it (no engine)."""
    db = PostgresDatabase(url, connect_timeout_s=seconds(2.0))
    log = PostgresLog(db, head_check_interval_s=head_check_interval_s)
    await log.open()
    try:
        yield log
    finally:
        await log.close()
        await db.close()


def _drafts(thread_id: str, values: range) -> list[EventDraft]:
    return [
        EventDraft(
            event_id=new_event_id(),
            thread_id=thread_id,
            run_id="run_1",
            parent_run_id=None,
            type=EventType.CUSTOM,
            ts=0.0,
            agent=None,
            data=json.dumps({"name": "n", "value": v}).encode(),
        )
        for v in values
    ]


async def _append_when_back(log: PostgresLog, drafts: list[EventDraft]) -> list[StoredEvent]:
    """Append, retrying while the server is away (as the bridge does), within a bound."""
    result: list[StoredEvent] = []

    async def appended() -> bool:
        try:
            result.extend(await log.append(drafts))
        except LogUnavailable:
            return False
        return True

    await wait_until(appended, within=seconds(10.0), message="an append once the server is back")
    return result


@pytest.mark.parametrize("restart", ["fast", "immediate", "kill"])
async def test_a_restart_under_followers_only_and_a_later_foreign_append_arrives(
    private_pg: PrivatePostgres, restart: str
) -> None:
    thread_id = "th_followed"
    # Head checks every hour: what arrives after the restart came through LISTEN.
    async with (
        _process(private_pg.url, head_check_interval_s=3600) as ours,
        _process(private_pg.url, head_check_interval_s=3600) as other,
    ):
        listener = ours.listener
        assert listener is not None
        await wait_until(lambda: listener.connected, message="the listener to connect")
        before = await other.append(_drafts(thread_id, range(3)))
        info = await ours.info(thread_id)
        follower = await ours.follow(thread_id, 0, info.epoch)
        try:
            first = await within(seconds(5.0), _batch_until(follower, 3), "the events before")
            assert [e.event_id for e in first] == [e.event_id for e in before]
            connects = listener.connects

            if restart == "kill":
                await private_pg.kill_async()
                await private_pg.start_async()
            else:
                await private_pg.restart_async(restart)  # type: ignore[arg-type]
            await wait_until(
                lambda: listener.connects > connects and listener.connected,
                within=seconds(10.0),
                message="the listener to reconnect",
            )

            after = await _append_when_back(other, _drafts(thread_id, range(3, 6)))
            assert [e.seq for e in after] == [4, 5, 6]
            got = await within(seconds(5.0), _batch_until(follower, 3), "the foreign append")
            assert [(e.seq, e.event_id) for e in got] == [(e.seq, e.event_id) for e in after]
            assert not follower.closed
        finally:
            await follower.aclose()


async def _batch_until(follower: StreamFollower, count: int) -> list[StoredEvent]:
    """The follower's next ``count`` events (over as many batches as it takes)."""
    out: list[StoredEvent] = []
    while len(out) < count:
        out.extend(await follower.next_batch(count - len(out)))
    return out


async def test_a_follower_that_must_read_during_an_outage_waits_for_the_log(
    private_pg: PrivatePostgres,
) -> None:
    """``next_batch`` ends only with ``FollowerClosed`` or ``HistoryLost`` (log/follower.py).

    A follower whose events are not in the tail reads the database; while
    the server is down that read fails. The contract's answer is to wait
    for the log (as ``emit`` does), not to raise a third kind of ending that
    every transport treats as a crash.
    """
    thread_id = "th_cold"
    async with (
        _process(private_pg.url, head_check_interval_s=3600) as ours,
        _process(private_pg.url, head_check_interval_s=3600) as other,
    ):
        stored = await other.append(_drafts(thread_id, range(3)))
        info = await ours.info(thread_id)
        follower = await ours.follow(thread_id, 0, info.epoch)  # nothing in the tail: reads
        read_tried = asyncio.Event()
        real_read = ours.db.read

        async def read(op: Any) -> Any:
            read_tried.set()
            return await real_read(op)

        ours.db.read = read  # type: ignore[method-assign]
        try:
            await private_pg.stop_async("immediate")
            reading = asyncio.create_task(follower.next_batch(3))
            await within(seconds(5.0), read_tried.wait(), "the follower's read")
            await private_pg.start_async()
            got = await within(seconds(10.0), reading, "the read once the server is back")
            assert [e.event_id for e in got] == [e.event_id for e in stored]
        finally:
            await follower.aclose()
