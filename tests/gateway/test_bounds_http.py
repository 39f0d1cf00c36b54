"""HTTP bounds: the events page in bytes, 64-bit query integers, the request rate, tickets.

Each bound is shown to hold, to answer with its documented code (and the
``limit`` it names), to leave another user untouched, and to lose nothing
already committed (docs/architecture.md invariant 6).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from agentcast.errors import LimitExceeded, Unavailable
from agentcast.gateway.auth import Authenticator, Principal
from agentcast.gateway.context import Gateway
from agentcast.gateway.settings import GatewaySettings
from agentcast.store.base import RunStatus
from tests.gateway.ws_support import blob
from tests.utils import wait_until

from .conftest import SECRET, AppFactory, ClientFactory, gateway_of, start_run

# --- helpers -------------------------------------------------------------------------------


def client(app: Any, user: str | None) -> httpx.AsyncClient:
    headers = {}
    if user is not None:
        headers["authorization"] = f"Bearer {gateway_of(app).auth.mint_token(user)}"
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://test", headers=headers
    )


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert (body["status"], body["code"]) == (status, code)
    return body


async def ended(gateway: Gateway, user: str, run_id: str) -> None:
    """Wait until the run's status is final, reading the store (no HTTP request charged)."""

    async def final() -> bool:
        record = await gateway.engine.store.get_run(user, run_id)
        return record.status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)

    await wait_until(final, message=f"run {run_id} ended")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the events page, bounded in bytes ---------------------------------------------------


async def read_all_pages(
    c: httpx.AsyncClient, tid: str, budget: int, limit: int = 1000
) -> tuple[list[int], list[int]]:
    """Follow ``next_after_seq`` from 0; the seqs read and each page's event count."""
    seqs: list[int] = []
    sizes: list[int] = []
    after = 0
    while True:
        r = await c.get(f"/v1/threads/{tid}/events", params={"after_seq": after, "limit": limit})
        assert r.status_code == 200, r.text
        body = r.json()
        page = [e["seq"] for e in body["events"]]
        assert len(r.content) <= budget or len(page) == 1, (len(r.content), page)
        seqs.extend(page)
        sizes.append(len(page))
        if body["next_after_seq"] is None:
            return seqs, sizes
        assert body["next_after_seq"] == page[-1]
        after = body["next_after_seq"]


@pytest.mark.parametrize("log_backend", ["memory", "sqlite"])
async def test_events_page_is_bounded_in_bytes_and_the_cursor_reads_everything_once(
    app_factory: AppFactory, log_backend: str
) -> None:
    budget = 10_000
    app = await app_factory(log_backend=log_backend, http_events_page_bytes=budget)
    gateway = gateway_of(app)
    gateway.engine.registry.register(blob, name="blob")
    async with client(app, "alice") as alice, client(app, "bob") as bob:
        accepted = await start_run(alice, agent="blob", message="30 2500")
        await ended(gateway, "alice", accepted["run_id"])
        tid = accepted["thread_id"]
        head = (await gateway.engine.bridge.info(tid)).last_seq
        assert head == 32  # agent_started, 30 blobs, agent_completed
        seqs, sizes = await read_all_pages(alice, tid, budget)
        assert seqs == list(range(1, head + 1))  # every event, once, in order
        assert len(sizes) > 3  # ~2.5 KB each: a few per 10 KB page
        assert max(sizes) <= 4
        # The count bound still holds beside the byte bound.
        seqs, sizes = await read_all_pages(alice, tid, budget, limit=2)
        assert seqs == list(range(1, head + 1))
        assert max(sizes) == 2
        # Another user's view of this thread is the usual not_found.
        r = await bob.get(f"/v1/threads/{tid}/events")
        assert_problem(r, 404, "not_found")


async def test_an_event_larger_than_the_page_comes_alone(app_factory: AppFactory) -> None:
    budget = 4_000
    app = await app_factory(http_events_page_bytes=budget)
    gateway = gateway_of(app)
    gateway.engine.registry.register(blob, name="blob")
    async with client(app, "alice") as alice:
        accepted = await start_run(alice, agent="blob", message="3 9000")
        await ended(gateway, "alice", accepted["run_id"])
        tid = accepted["thread_id"]
        seqs, sizes = await read_all_pages(alice, tid, budget)
        assert seqs == [1, 2, 3, 4, 5]
        # agent_started fits with nothing else; each blob comes alone; then the end.
        assert sizes == [1, 1, 1, 1, 1]
        stored = await gateway.engine.bridge.read(tid, 0, 10)
        r = await alice.get(f"/v1/threads/{tid}/events", params={"after_seq": 1})
        assert len(r.content) > budget
        assert r.json()["events"] == [json.loads(stored[1].raw)]
        assert r.json()["next_after_seq"] == 2


async def test_empty_page_and_page_at_the_head_have_no_cursor(
    alice: httpx.AsyncClient, gateway: Gateway
) -> None:
    accepted = await start_run(alice, agent="echo", message="hi")
    await ended(gateway, "alice", accepted["run_id"])
    tid = accepted["thread_id"]
    head = (await gateway.engine.bridge.info(tid)).last_seq
    body = (await alice.get(f"/v1/threads/{tid}/events")).json()
    assert [e["seq"] for e in body["events"]] == list(range(1, head + 1))
    assert body["next_after_seq"] is None
    body = (await alice.get(f"/v1/threads/{tid}/events", params={"after_seq": head})).json()
    assert (body["events"], body["next_after_seq"]) == ([], None)


# --- query integers beyond 64 bits -----------------------------------------------------------


@pytest.mark.parametrize("value", [str(2**63), str(10**30), str(-(2**63) - 1)])
async def test_query_integer_beyond_int64_is_400(
    alice: httpx.AsyncClient, gateway: Gateway, value: str
) -> None:
    accepted = await start_run(alice, agent="echo", message="kept")
    await ended(gateway, "alice", accepted["run_id"])
    tid = accepted["thread_id"]
    for path in (f"/v1/threads/{tid}/events", f"/v1/threads/{tid}/stream"):
        r = await alice.get(path, params={"after_seq": value})
        body = assert_problem(r, 400, "invalid_message")
        assert "after_seq" in body["detail"], body
    r = await alice.get(f"/v1/threads/{tid}/events", params={"limit": value})
    assert_problem(r, 400, "invalid_message")
    r = await alice.get("/v1/threads", params={"limit": value})
    assert_problem(r, 400, "invalid_message")
    # The largest 64-bit value is a valid position: nothing after it.
    body = (await alice.get(f"/v1/threads/{tid}/events", params={"after_seq": 2**63 - 1})).json()
    assert (body["events"], body["next_after_seq"]) == ([], None)
    # Nothing committed was touched.
    events = (await alice.get(f"/v1/threads/{tid}/events")).json()["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "agent_completed"


# --- the per-user request rate -----------------------------------------------------------------


async def test_rate_limit_is_per_user_with_retry_after_and_refills(
    app_factory: AppFactory,
) -> None:
    app = await app_factory(http_rate_per_s=0.25, http_rate_burst=3)
    gateway = gateway_of(app)
    clock = FakeClock()
    gateway.auth.rate_limiter.clock = clock
    async with client(app, "alice") as alice, client(app, "bob") as bob:
        accepted = await start_run(alice, agent="echo", message="before the limit")
        assert (await alice.get("/v1/agents")).status_code == 200
        assert (await alice.get("/v1/agents")).status_code == 200
        r = await alice.get("/v1/threads")
        body = assert_problem(r, 429, "rate_limited")
        assert body["limit"] == "http_rate_per_s"
        assert r.headers["retry-after"] == "4"  # one token at 0.25/s
        assert gateway.metrics.refusals("http_rate_per_s") == 1
        # A refused request was not charged: still refused, still 4 s away.
        r = await alice.post("/v1/runs", json={"agent": "echo", "message": "refused"})
        assert_problem(r, 429, "rate_limited")
        assert r.headers["retry-after"] == "4"
        # Bob, at the same moment, has his own bucket; the unauthenticated routes none.
        for _ in range(3):
            assert (await bob.get("/v1/agents")).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await alice.get(path)).status_code == 200, path
        # Half the wait: still refused, Retry-After counts down.
        clock.now += 2
        r = await alice.get("/v1/agents")
        assert (r.status_code, r.headers["retry-after"]) == (429, "2")
        clock.now += 2
        await ended(gateway, "alice", accepted["run_id"])
        r = await alice.get(f"/v1/threads/{accepted['thread_id']}/events")
        assert r.status_code == 200
        events = r.json()["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert (events[0]["type"], events[-1]["type"]) == ("agent_started", "agent_completed")
        # The refused start_run created nothing.
        threads = (await bob.get("/v1/threads")).json()["threads"]
        assert threads == []
        assert gateway.metrics.refusals("http_rate_per_s") == 3


def test_rate_limiter_memory_is_bounded() -> None:
    from agentcast.gateway.rate_limit import UserRateLimiter

    clock = FakeClock()
    limiter = UserRateLimiter(1.0, 2, clock=clock, max_users=3)
    for user in ("a", "b", "c"):
        assert limiter.take(user) == 0
    clock.now += 10  # every bucket refilled: indistinguishable from new ones
    assert limiter.take("d") == 0
    assert len(limiter) == 1
    for user in ("e", "f"):
        assert limiter.take(user) == 0
    assert limiter.take("d") == 0  # d is now empty
    assert limiter.take("g") == 0  # the map is full of mid-burst buckets: the least recent goes
    assert len(limiter) == 3
    assert limiter.take("e") == 0  # e was forgotten: a full bucket again
    assert limiter.take("d") == 1  # the most recent is kept, still empty: 1 s to wait


# --- WebSocket tickets per user -------------------------------------------------------------


async def test_tickets_are_bounded_per_user_and_a_flood_evicts_nobody(
    app_factory: AppFactory,
) -> None:
    app = await app_factory(max_tickets_per_user=3)
    gateway = gateway_of(app)
    async with client(app, "alice") as alice, client(app, "bob") as bob:
        r = await bob.post("/v1/ws-ticket")
        assert r.status_code == 200
        bobs = r.json()["ticket"]
        alices = []
        for _ in range(3):
            r = await alice.post("/v1/ws-ticket")
            assert r.status_code == 200
            alices.append(r.json()["ticket"])
        for _ in range(5):
            r = await alice.post("/v1/ws-ticket")
            body = assert_problem(r, 429, "limit_exceeded")
            assert body["limit"] == "max_tickets_per_user"
            assert "retry-after" not in r.headers
        assert gateway.metrics.refusals("max_tickets_per_user") == 5
        # Bob's earlier ticket survived the flood, and he may still get more.
        assert gateway.auth.redeem_ticket(bobs).user_id == "bob"
        assert (await bob.post("/v1/ws-ticket")).status_code == 200
        # A redeemed ticket no longer counts.
        assert gateway.auth.redeem_ticket(alices[0]).user_id == "alice"
        assert (await alice.post("/v1/ws-ticket")).status_code == 200
        assert gateway.auth.redeem_ticket(alices[1]).user_id == "alice"
        assert gateway.auth.tickets_held("alice") == 2


def test_expired_tickets_do_not_count(tmp_path: Any) -> None:
    settings = GatewaySettings(
        data_dir=tmp_path, jwt_secret=SECRET, ticket_ttl_s=30, max_tickets_per_user=2
    )
    clock = FakeClock()
    refused: list[str] = []
    auth = Authenticator(settings, clock=clock, on_refused=refused.append)
    alice = Principal("alice", None, "header")
    auth.issue_ticket(alice)
    auth.issue_ticket(alice)
    with pytest.raises(LimitExceeded):
        auth.issue_ticket(alice)
    assert refused == ["max_tickets_per_user"]
    clock.now += 31
    assert auth.tickets_held("alice") == 0
    auth.issue_ticket(alice)
    auth.issue_ticket(alice)
    assert auth.tickets_held("alice") == 2


async def test_the_ticket_store_refuses_when_full_and_evicts_nobody(
    client_for: ClientFactory, gateway: Gateway
) -> None:
    gateway.auth.tickets.max_total = 4
    issued = [gateway.auth.issue_ticket(Principal(f"u{i}", None, "header"))[0] for i in range(4)]
    with pytest.raises(Unavailable):
        gateway.auth.issue_ticket(Principal("u9", None, "header"))
    r = await client_for("zed").post("/v1/ws-ticket")
    body = assert_problem(r, 503, "unavailable")
    assert body["detail"] == "the server holds too many WebSocket tickets; retry shortly"
    assert r.headers["retry-after"] == "1"
    assert gateway.metrics.refusals("max_tickets_total") == 2
    assert [gateway.auth.redeem_ticket(t).user_id for t in issued] == ["u0", "u1", "u2", "u3"]
    assert (await client_for("zed").post("/v1/ws-ticket")).status_code == 200
