"""Randomised, seeded stories over real WebSockets: every thread tells a whole story.

Several threads run in parallel on a live server (memory and SQLite log), two
users with two connections each: the *primary* connection starts every run of
its threads, the *second* one cancels them (by run id or by thread id) or
interrupts them with a new run, at a random moment. Some runs wait until the
run timeout ends them. The agent (tests/gateway/story_agents.py) calls fast,
slow, sync and failing tools, streams numbered tokens and delegates to
itself, sequentially and concurrently, all from a seed carried in its message.

Each thread's driver starts the next run (``on_active: reject``) the moment
its primary connection receives the previous run's terminal event: the runner
frees the thread before any client can see that event, so the start is
accepted every time.

At the end every thread's story is checked, as stored (HTTP and the bridge)
and as each connection received it: seqs contiguous from 1, no duplicate
event; per run and sub-run ``agent_started`` first and exactly one terminal
event last, tool calls paired, a parent ending after its sub-runs; the text
of a run a prefix of its numbered tokens (all of them if it completed); the
stored status of every run agreeing with its terminal event; each connection
receiving every event of a thread exactly once, in seq order, from where it
started following the thread up to the head, a cancelled run's terminal event
after ``cancel_accepted`` — even on a connection that does not follow the
thread — and ``run_accepted`` before any event of its run.

``AGENTCAST_STORY_SEED=<seed>`` (printed, and in the failure message) replays
a run's choices — scripts, actions, their moments; the timing of the machine
is its own, so a race may need a few runs to show again.
``AGENTCAST_STORY_ROUNDS`` sets the runs per thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agentcast.events import TERMINAL_TYPES, Event
from agentcast.log.base import StoredEvent
from tests.gateway import story_agents
from tests.gateway.story_agents import AGENT
from tests.gateway.ws_support import LiveServer, ServerFactory
from tests.invariants import assert_contiguous, assert_run_lifecycles, decode_all
from tests.utils import MS, seconds, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timing]

T = TypeVar("T")

#: One seed for the whole module (both backends), printed and reported.
SEED: Final = int(os.environ.get("AGENTCAST_STORY_SEED") or secrets.randbelow(2**32))
#: Runs each thread's driver starts (interrupts add more).
ROUNDS: Final = int(os.environ.get("AGENTCAST_STORY_ROUNDS") or 40)
USERS: Final = ("alice", "bob")
THREADS_PER_USER: Final = 4
#: Small enough that the ``timeout`` action (and some long stories) hit it.
RUN_TIMEOUT_S: Final = seconds(0.4)
#: The moment of a run's action: in 0 .. this many (scaled) milliseconds, early
#: moments likelier (most runs are over within about 150 ms).
ACTION_WINDOW_MS: Final = 300.0
#: The bound on any single wait for something that must come.
WAIT_S: Final = seconds(10)
#: What happens to a run, drawn with these weights.
ACTIONS: Final = ("nothing", "cancel_run", "cancel_thread", "interrupt", "timeout")
ACTION_WEIGHTS: Final = (3, 2, 2, 2, 1)
STATUS_OF: Final = {
    "agent_completed": "completed",
    "agent_error": "failed",
    "agent_cancelled": "cancelled",
}
CANCELLING: Final = ("queued", "running")


class Stuck(AssertionError):
    """Something that must arrive did not within :data:`WAIT_S`."""


async def bounded(fut: asyncio.Future[T], what: str) -> T:
    """``fut``'s result, waiting at most :data:`WAIT_S` (the future is left alone)."""
    await asyncio.wait({fut}, timeout=WAIT_S)
    if not fut.done():
        raise Stuck(f"no {what} within {WAIT_S:g} s")
    return fut.result()


class StoryConn:
    """One WebSocket client: every frame in arrival order, replies matched by ``ref``."""

    def __init__(self, name: str, user: str, ws: ClientConnection) -> None:
        self.name = name
        self.user = user
        self.ws = ws
        #: Every frame received after ``connection_established``, batches flattened.
        self.frames: list[dict[str, Any]] = []
        #: Index in :attr:`frames` of the reply to each request, by ``ref``.
        self.reply_index: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.ended: str | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._terminals: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self.reader = asyncio.create_task(self._read(), name=f"story-reader-{name}")

    def terminal(self, run_id: str) -> asyncio.Future[dict[str, Any]]:
        """The terminal event of top-level run ``run_id``, once this connection receives it."""
        fut = self._terminals.get(run_id)
        if fut is None:
            fut = self._terminals[run_id] = asyncio.get_running_loop().create_future()
        return fut

    async def request(self, **frame: Any) -> asyncio.Future[dict[str, Any]]:
        """Send ``frame`` with a fresh ``id``; the future resolves with its reply."""
        self._next_id += 1
        ref = f"{self.name}-{self._next_id}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ref] = fut
        await self.ws.send(json.dumps({**frame, "id": ref}))
        return fut

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                data = json.loads(raw)
                for item in data if isinstance(data, list) else [data]:
                    self._received(item)
            self.ended = "closed by the server"
        except ConnectionClosed as exc:
            self.ended = f"closed: {exc}"

    def _received(self, item: dict[str, Any]) -> None:
        self.frames.append(item)
        if "seq" in item:
            if item["type"] in TERMINAL_TYPES and item["parent_run_id"] is None:
                terminal = self.terminal(item["run_id"])
                if not terminal.done():
                    terminal.set_result(item)
            return
        ref = item.get("ref")
        reply = self._replies.get(ref) if isinstance(ref, str) else None
        if not isinstance(ref, str) or reply is None or reply.done():
            self.unexpected.append(f"{self.name}: unexpected frame {item}")
            return
        self.reply_index[ref] = len(self.frames) - 1
        reply.set_result(item)

    def ref_of(self, fut: asyncio.Future[dict[str, Any]]) -> str:
        return next(ref for ref, f in self._replies.items() if f is fut)


@dataclass(frozen=True)
class Plan:
    """One round of a thread, drawn up front so that the draws never depend on timing."""

    seed: int
    action: str
    delay_s: float
    interrupt_seed: int
    user_message: bool

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        (action,) = rng.choices(ACTIONS, ACTION_WEIGHTS)
        return cls(
            seed=rng.getrandbits(32),
            action=action,
            delay_s=rng.random() ** 2 * ACTION_WINDOW_MS * MS,
            interrupt_seed=rng.getrandbits(32),
            user_message=rng.random() < 0.3,
        )


@dataclass(eq=False)
class Cancel:
    """A cancel sent by a connection, and its reply."""

    conn: StoryConn
    reply: asyncio.Future[dict[str, Any]]
    target: str
    late: bool


@dataclass(eq=False)
class Story:
    """One thread: what its driver did, and what went wrong."""

    index: int
    user: str
    primary: StoryConn
    second: StoryConn
    thread_id: str = ""
    #: Top-level runs accepted in this thread, in the order they were accepted.
    runs: list[str] = field(default_factory=list)
    #: The ``run_accepted`` reply of each run, and the connection that got it.
    accepted: dict[str, tuple[StoryConn, dict[str, Any]]] = field(default_factory=dict)
    #: Runs told to hang until the run timeout (and not cancelled or interrupted).
    hanging: set[str] = field(default_factory=set)
    cancels: list[Cancel] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    late: Counter[str] = field(default_factory=Counter)
    follow_ups: int = 0
    problems: list[str] = field(default_factory=list)

    def record(self, reply: dict[str, Any], conn: StoryConn) -> str:
        run_id: str = reply["run_id"]
        self.runs.append(run_id)
        self.accepted[run_id] = (conn, reply)
        return run_id


# --- driving -------------------------------------------------------------------------------


def start_frame(plan: Plan, thread_id: str | None) -> dict[str, Any]:
    message = story_agents.message(plan.seed, hang=plan.action == "timeout")
    if thread_id is None:
        return {"type": "start_agent", "agent": AGENT, "message": message}
    if plan.user_message:  # the thread's last agent: the story agent again
        return {
            "type": "user_message",
            "message": message,
            "thread_id": thread_id,
            "on_active": "reject",
        }
    return {
        "type": "start_agent",
        "agent": AGENT,
        "message": message,
        "thread_id": thread_id,
        "on_active": "reject",
    }


async def drive(story: Story, rng: random.Random) -> None:
    """Play :data:`ROUNDS` runs in one thread; a failure ends the thread's driver."""
    try:
        await _drive(story, rng)
    except Stuck as exc:
        story.problems.append(f"driver stuck: {exc}")


async def _drive(story: Story, rng: random.Random) -> None:
    primary, second = story.primary, story.second
    plan = Plan.draw(rng)
    reply = await bounded(await primary.request(**start_frame(plan, None)), "first run_accepted")
    if reply.get("type") != "run_accepted":
        story.problems.append(f"the first start was refused: {reply}")
        return
    story.thread_id = reply["thread_id"]
    run = story.record(reply, primary)
    for round_ in range(ROUNDS):
        next_plan = Plan.draw(rng) if round_ + 1 < ROUNDS else None
        run, cancel_late = await play(story, plan, run)
        # ``run``'s terminal event has just arrived on the primary connection.
        follow = None
        if next_plan is not None:
            follow = await primary.request(**start_frame(next_plan, story.thread_id))
        if cancel_late:  # the run ended first: a cancel of an ended run, meanwhile
            fut = await second.request(type="cancel", run_id=run)
            story.cancels.append(Cancel(second, fut, run, late=True))
        if follow is None or next_plan is None:
            return
        reply = await bounded(follow, "reply to the follow-up start")
        if reply.get("type") != "run_accepted":
            story.problems.append(
                f"the start sent on the terminal event of {run} was refused: {reply}"
            )
            return
        story.follow_ups += 1
        run = story.record(reply, primary)
        plan = next_plan


async def play(story: Story, plan: Plan, run: str) -> tuple[str, bool]:
    """Do the plan's action to ``run`` at its moment; return once the thread's last run ended.

    Returns that run (``run``, or the run that interrupted it) and whether a
    cancel by run id is still to be sent (the run ended before its moment).
    """
    primary, second = story.primary, story.second
    terminal = primary.terminal(run)
    story.actions[plan.action] += 1
    if plan.action in ("nothing", "timeout"):
        if plan.action == "timeout":
            story.hanging.add(run)
        await bounded(terminal, f"terminal event of {run}")
        return run, False
    await asyncio.wait({terminal}, timeout=plan.delay_s)
    if terminal.done():
        story.late[plan.action] += 1
        return run, plan.action == "cancel_run"
    if plan.action == "cancel_run":
        fut = await second.request(type="cancel", run_id=run)
        story.cancels.append(Cancel(second, fut, run, late=False))
    elif plan.action == "cancel_thread":
        fut = await second.request(type="cancel", thread_id=story.thread_id)
        story.cancels.append(Cancel(second, fut, story.thread_id, late=False))
    else:
        assert plan.action == "interrupt"
        fut = await second.request(
            type="start_agent",
            agent=AGENT,
            message=story_agents.message(plan.interrupt_seed),
            thread_id=story.thread_id,
            on_active="interrupt",
        )
        reply = await bounded(fut, f"reply to the interrupt of {run}")
        if reply.get("type") == "run_accepted":
            run = story.record(reply, second)
            terminal = primary.terminal(run)
        else:
            story.problems.append(f"the interrupt of {run} was refused: {reply}")
    await bounded(terminal, f"terminal event of {run}")
    return run, False


# --- checking ------------------------------------------------------------------------------


async def read_events(http: httpx.AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        after = events[-1]["seq"] if events else 0
        r = await http.get(
            f"/v1/threads/{thread_id}/events", params={"after_seq": after, "limit": 1000}
        )
        assert r.status_code == 200, r.text
        page = r.json()["events"]
        if not page:
            return events
        events.extend(page)


async def read_bridge(live: LiveServer, thread_id: str) -> list[Event]:
    bridge = live.gateway.engine.bridge
    stored: list[StoredEvent] = []
    while True:
        page = await bridge.read(thread_id, stored[-1].seq if stored else 0, 1000)
        if not page:
            return decode_all(stored)
        stored.extend(page)


def check_texts(by_run: dict[str, list[Event]]) -> list[str]:
    """No text twice: each run's text is a prefix of its tokens, all of them if it completed."""
    problems = []
    for run_id, evs in by_run.items():
        deltas = [e.data for e in evs if e.type == "text_delta"]
        if any(d["message_id"] != f"msg_{run_id}" for d in deltas):
            problems.append(f"{run_id}: text_delta of another message")
        text = "".join(d["delta"] for d in deltas)
        count = len(text.split())
        if text != story_agents.tokens(count):
            problems.append(f"{run_id}: text is not a prefix of its tokens: {text[:200]!r}")
            continue
        terminal = evs[-1]
        if terminal.type == "agent_completed":
            expected = story_agents.completed_response(count)
            if terminal.data.get("final_response") != expected:
                problems.append(
                    f"{run_id}: completed saying {count} tokens but final response "
                    f"{terminal.data.get('final_response')!r}"
                )
    return problems


async def check_statuses(
    http: httpx.AsyncClient, thread_id: str, by_run: dict[str, list[Event]], head: int
) -> list[str]:
    """The stored status of every run and sub-run agrees with its terminal event."""
    problems = []
    for run_id, evs in by_run.items():
        r = await http.get(f"/v1/runs/{run_id}")
        if r.status_code != 200:
            problems.append(f"GET /v1/runs/{run_id}: {r.status_code} {r.text}")
            continue
        run = r.json()
        expected = (STATUS_OF[evs[-1].type], evs[0].seq, evs[-1].seq)
        got = (run["status"], run["first_seq"], run["last_seq"])
        if got != expected:
            problems.append(f"{run_id}: stored (status, first, last) {got} != events {expected}")
    r = await http.get(f"/v1/threads/{thread_id}")
    thread = r.json()
    if thread["last_seq"] != head:
        problems.append(f"thread last_seq {thread['last_seq']} != head {head}")
    for run in thread["runs"]:
        if run["status"] not in STATUS_OF.values():
            problems.append(f"{run['run_id']} left {run['status']}")
    return problems


def check_connection(
    story: Story,
    conn: StoryConn,
    stored: dict[int, dict[str, Any]],
    terminal_seq: dict[str, int],
    head: int,
) -> list[str]:
    """What ``conn`` received of the thread: each event once, in order, none missing."""
    tid = story.thread_id
    problems: list[str] = []
    frames = conn.frames
    events = [(i, f) for i, f in enumerate(frames) if "seq" in f and f["thread_id"] == tid]
    seqs = [f["seq"] for _, f in events]
    if any(a >= b for a, b in itertools.pairwise(seqs)):
        dupes = sorted(s for s, n in Counter(seqs).items() if n > 1)
        problems.append(f"{conn.name}: seqs not strictly increasing (duplicates {dupes[:10]})")
    for _, f in events:
        if f != stored.get(f["seq"]):
            problems.append(f"{conn.name}: event {f['seq']} differs from the stored one")
    accepts = [
        (i, f) for i, f in enumerate(frames)
        if f.get("type") == "run_accepted" and f.get("thread_id") == tid
    ]  # fmt: skip
    start = accepts[0][1]["after_seq"] if accepts else None
    # Terminal events of runs this connection cancelled while not following the thread.
    effective = []
    for cancel in story.cancels:
        if cancel.conn is not conn or not cancel.reply.done():
            continue
        reply = cancel.reply.result()
        if reply.get("type") == "cancel_accepted" and reply["status"] in CANCELLING:
            effective.append((cancel, reply))
    forwarded = sorted(
        {
            terminal_seq[reply["run_id"]]
            for _, reply in effective
            if reply["run_id"] in terminal_seq
            and (start is None or terminal_seq[reply["run_id"]] <= start)
        }
    )
    before = [s for s in seqs if start is None or s <= start]
    if before != forwarded:
        problems.append(
            f"{conn.name}: events before following the thread (from {start}) {before[:20]}, "
            f"expected only the cancelled runs' terminal events {forwarded[:20]}"
        )
    if start is not None:
        after = [s for s in seqs if s > start]
        if after != list(range(start + 1, head + 1)):
            missing = sorted(set(range(start + 1, head + 1)) - set(after))
            problems.append(
                f"{conn.name}: from {start} to the head {head}: {len(after)} events, "
                f"missing {missing[:20]}"
            )
    for i, accepted in accepts:
        first = next((j for j, f in events if f["run_id"] == accepted["run_id"]), None)
        if first is not None and first < i:
            problems.append(f"{conn.name}: an event of {accepted['run_id']} before run_accepted")
    for cancel, reply in effective:
        index = conn.reply_index[conn.ref_of(cancel.reply)]
        run_id = reply["run_id"]
        ends = [j for j, f in events if f["run_id"] == run_id and f["type"] in TERMINAL_TYPES]
        if not ends:
            problems.append(f"{conn.name}: no terminal event of {run_id} after cancel_accepted")
        elif ends[0] < index:
            following = start is not None and accepts[0][0] < ends[0]
            problems.append(
                f"{conn.name}: terminal event of {run_id} (seq {frames[ends[0]]['seq']}, "
                f"{frames[ends[0]]['type']}) before {reply}"
                f"{' (following the thread)' if following else ''}"
            )
    return problems


def check_cancels(story: Story, terminals: dict[str, Event]) -> list[str]:
    """Every cancel was answered; one of an ended run reports the run's final status."""
    problems = []
    for cancel in story.cancels:
        if not cancel.reply.done():
            problems.append(f"{cancel.conn.name}: no reply to the cancel of {cancel.target}")
            continue
        reply = cancel.reply.result()
        if reply.get("type") == "error":
            # By thread id, the run may have ended just before: nothing was active.
            if not (cancel.target == story.thread_id and reply["code"] == "not_found"):
                problems.append(f"the cancel of {cancel.target} failed: {reply}")
            continue
        terminal = terminals.get(reply["run_id"])
        if terminal is None:
            problems.append(f"cancel_accepted for {reply['run_id']}, not a run of the thread")
        elif reply["status"] not in CANCELLING and reply["status"] != STATUS_OF[terminal.type]:
            problems.append(
                f"cancel of an ended run {reply['run_id']} reported {reply['status']}, "
                f"it ended with {terminal.type}"
            )
        elif cancel.late and reply["status"] in CANCELLING:
            problems.append(f"the cancel of {reply['run_id']} after its terminal event: {reply}")
    return problems


@dataclass
class Figures:
    runs: int = 0
    sub_runs: int = 0
    follow_ups: int = 0
    terminals: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    effective_cancels: int = 0
    #: Runs that a cancel caught (``running``/``queued``) which still ended otherwise:
    #: the cancel came while their terminal event was being written, or after a timeout.
    cancel_overtaken: Counter[str] = field(default_factory=Counter)
    tools: Counter[str] = field(default_factory=Counter)


async def check_story(
    live: LiveServer, http: httpx.AsyncClient, story: Story, figures: Figures
) -> None:
    """Every rule, on the stored thread and on what each connection received."""
    if not story.thread_id:
        return
    raw = await read_events(http, story.thread_id)
    events = [msgspec.convert(e, Event) for e in raw]
    stored = {e["seq"]: e for e in raw}
    head = events[-1].seq if events else 0
    problems = story.problems
    if events != await read_bridge(live, story.thread_id):
        problems.append("the events over HTTP differ from the bridge's")
    try:
        assert_contiguous(events)
        by_run = assert_run_lifecycles(events)
    except AssertionError as exc:
        problems.append(f"stored events: {exc}")
        return
    top = [run_id for run_id, evs in by_run.items() if evs[0].parent_run_id is None]
    if sorted(top) != sorted(story.runs):
        problems.append(f"top-level runs {sorted(top)} != accepted {sorted(story.runs)}")
    problems.extend(check_texts(by_run))
    problems.extend(await check_statuses(http, story.thread_id, by_run, head))
    terminals = {run_id: evs[-1] for run_id, evs in by_run.items()}
    # A cancel by thread id sent just before a run ended may reach the next one.
    cancelled = {c.reply.result().get("run_id") for c in story.cancels if c.reply.done()}
    for run_id in story.hanging - cancelled:
        if run_id in terminals and terminals[run_id].type != "agent_error":
            problems.append(f"{run_id} should have hung until its timeout: {terminals[run_id]}")
    problems.extend(check_cancels(story, terminals))
    terminal_seq = {run_id: e.seq for run_id, e in terminals.items()}
    for conn in (story.primary, story.second):
        problems.extend(check_connection(story, conn, stored, terminal_seq, head))
    # Figures.
    figures.runs += len(top)
    figures.sub_runs += len(by_run) - len(top)
    figures.follow_ups += story.follow_ups
    for run_id in top:
        t = terminals[run_id]
        figures.terminals[t.type] += 1
        figures.timeouts += t.type == "agent_error" and t.data.get("error_type") == "timeout"
    for e in events:
        if e.type == "tool_completed":
            figures.tools[f"{e.data['tool_name']}:{e.data['status']}"] += 1
    for cancel in story.cancels:
        reply = cancel.reply.result() if cancel.reply.done() else {}
        if reply.get("type") == "cancel_accepted" and reply["status"] in CANCELLING:
            figures.effective_cancels += 1
            terminal = terminals[reply["run_id"]]
            if terminal.type != "agent_cancelled":
                figures.cancel_overtaken[
                    f"{reply['status']}->{terminal.type}:{terminal.data.get('error_type', '')}"
                ] += 1


def caught_up(stories: list[Story], heads: dict[str, int]) -> bool:
    """Whether every connection received the head of every thread it follows."""
    for story in stories:
        head = heads.get(story.thread_id, 0)
        for conn in (story.primary, story.second):
            following = any(
                f.get("type") == "run_accepted" and f.get("thread_id") == story.thread_id
                for f in conn.frames
            )
            if following and not any(
                f.get("seq") == head and f.get("thread_id") == story.thread_id
                for f in reversed(conn.frames)
            ):
                return False
    return True


# --- the test ------------------------------------------------------------------------------


async def test_stories_over_websockets(make_ws_server: ServerFactory, backend: str) -> None:
    live = await make_ws_server(
        log_backend=backend,
        agents=["agentcast.agents.builtin:registry", "tests.gateway.story_agents:registry"],
        ws_rate_per_s=1e6,
        ws_rate_burst=1_000_000,
        engine_settings={"run_timeout_s": RUN_TIMEOUT_S},
    )
    conns: list[StoryConn] = []
    stories: list[Story] = []
    async with contextlib.AsyncExitStack() as stack:
        https = {
            user: await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{live.port}",
                    headers={"Authorization": f"Bearer {live.token(user)}"},
                    timeout=WAIT_S,
                )
            )
            for user in USERS
        }
        try:
            for u, user in enumerate(USERS):
                # One user's primary connection takes batch frames, the other's second one.
                primary = StoryConn(f"{user}-1", user, await live.connect(user, batch=u == 0))
                second = StoryConn(f"{user}-2", user, await live.connect(user, batch=u == 1))
                conns += [primary, second]
                for _ in range(THREADS_PER_USER):
                    stories.append(Story(len(stories), user, primary, second))
            print(f"\nstory seed {SEED} ({backend}): AGENTCAST_STORY_SEED={SEED} replays it")
            t0 = time.monotonic()
            await asyncio.gather(*(drive(s, random.Random(f"{SEED}:{s.index}")) for s in stories))
            elapsed = time.monotonic() - t0
            # Quiesce: every cancel answered, every connection at the head of its threads.
            replies = {c.reply for s in stories for c in s.cancels}
            if replies:
                await asyncio.wait(replies, timeout=WAIT_S)
            bridge = live.gateway.engine.bridge
            heads = {
                s.thread_id: (await bridge.info(s.thread_id)).last_seq
                for s in stories
                if s.thread_id
            }
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: caught_up(stories, heads), within=WAIT_S)
            # A pong comes after anything queued before the ping.
            pongs = {await conn.request(type="ping") for conn in conns}
            await asyncio.wait(pongs, timeout=WAIT_S)
            figures = Figures()
            for story in stories:
                await check_story(live, https[story.user], story, figures)
        finally:
            for conn in conns:
                conn.reader.cancel()
            await asyncio.gather(*(c.reader for c in conns), return_exceptions=True)

    unexpected = [line for conn in conns for line in conn.unexpected]
    ended = [f"{c.name}: {c.ended}" for c in conns if c.ended is not None]
    broken = [s for s in stories if s.problems]
    actions = sum((s.actions for s in stories), Counter[str]())
    late = sum((s.late for s in stories), Counter[str]())
    print(
        f"story seed {SEED} ({backend}): {figures.runs} runs (+{figures.sub_runs} sub-runs, "
        f"{figures.follow_ups} follow-up starts on a terminal event) in {elapsed:.1f} s, "
        f"{figures.runs / elapsed:.1f} runs/s; broken stories: {len(broken)}\n"
        f"  actions {dict(actions)}, too late {dict(late)}\n"
        f"  endings {dict(figures.terminals)}, {figures.timeouts} timeouts; "
        f"{figures.effective_cancels} cancels took effect, "
        f"ended otherwise: {dict(figures.cancel_overtaken)}\n"
        f"  tool calls {dict(sorted(figures.tools.items()))}"
    )
    details = [f"thread {s.index} ({s.thread_id}): {p}" for s in broken for p in s.problems]
    for line in details[:40]:
        print("  BROKEN", line)
    reproduce = f"AGENTCAST_STORY_SEED={SEED} ({backend})"
    assert not broken, f"{len(broken)} broken stories, {reproduce}:\n" + "\n".join(details[:40])
    assert not unexpected, f"{reproduce}: " + "\n".join(unexpected[:20])
    assert not ended, f"{reproduce}: connections ended early: {ended}"
    assert figures.timeouts > 0, f"{reproduce}: no run hit the run timeout"
    assert figures.effective_cancels > 0, f"{reproduce}: no cancel took effect"
