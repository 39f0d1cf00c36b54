"""The /v1 HTTP API: shapes, status codes, pagination, isolation and problem+json."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from agentcast.gateway.app import agentcast_lifespan
from agentcast.gateway.context import Gateway
from tests.utils import wait_until

from .conftest import (
    BOTH_LOGS,
    AppFactory,
    ClientFactory,
    gateway_of,
    make_app,
    start_run,
    wait_terminal,
)

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    # ``limit`` is the one extension member, and only limit_exceeded carries it.
    assert set(body) - {"limit"} == PROBLEM_KEYS
    assert ("limit" in body) is (code == "limit_exceeded")
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:agentcast:problem:{code}"
    return body


# --- runs ---------------------------------------------------------------------------------


@BOTH_LOGS
async def test_start_run_and_status_final_with_terminal_event(alice: httpx.AsyncClient) -> None:
    accepted = await start_run(alice, agent="echo", message="hello")
    assert set(accepted) == {"run_id", "thread_id", "epoch", "after_seq"}
    assert accepted["after_seq"] == 0
    events = await wait_terminal(alice, accepted["thread_id"])
    assert [e["type"] for e in events] == ["agent_started", "agent_thinking", "agent_completed"]
    assert [e["seq"] for e in events] == [1, 2, 3]
    r = await alice.get(f"/v1/runs/{accepted['run_id']}")
    assert r.status_code == 200
    run = r.json()
    assert run["status"] == "completed"
    assert run["output"] == "hello"
    assert (run["first_seq"], run["last_seq"]) == (1, 3)
    assert run["agent"] == "echo"
    assert "user_id" not in run


async def test_continuing_a_thread_uses_its_last_agent(alice: httpx.AsyncClient) -> None:
    first = await start_run(alice, agent="echo", message="one")
    await wait_terminal(alice, first["thread_id"])
    second = await start_run(alice, message="two", thread_id=first["thread_id"])
    assert second["thread_id"] == first["thread_id"]
    assert second["after_seq"] == 3
    assert second["epoch"] == first["epoch"]
    events = await wait_terminal(alice, first["thread_id"], second["run_id"])
    assert [e["seq"] for e in events] == list(range(1, 7))
    run = (await alice.get(f"/v1/runs/{second['run_id']}")).json()
    assert (run["agent"], run["output"]) == ("echo", "two")


async def test_default_agent_for_a_new_thread(
    app_factory: AppFactory, client_for: ClientFactory
) -> None:
    app = await app_factory(default_agent="echo")
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app),
        base_url="http://test",
        headers={"authorization": f"Bearer {gateway_of(app).auth.mint_token('a')}"},
    )
    async with client:
        accepted = await start_run(client, message="hi")
        run = (await client.get(f"/v1/runs/{accepted['run_id']}")).json()
        assert run["agent"] == "echo"
        await wait_terminal(client, accepted["thread_id"])


async def test_demo_is_the_default_agent(alice: httpx.AsyncClient) -> None:
    accepted = await start_run(alice, message="where does the money go?")
    events = await wait_terminal(alice, accepted["thread_id"])
    assert events[0]["agent"] == "demo"
    assert events[-1]["type"] == "agent_completed"


async def test_unknown_agent_is_404(alice: httpx.AsyncClient) -> None:
    r = await alice.post("/v1/runs", json={"agent": "nope", "message": "x"})
    body = assert_problem(r, 404, "not_found")
    assert body["detail"] == "unknown agent 'nope'"


@BOTH_LOGS
async def test_run_active_is_409_and_cancel(alice: httpx.AsyncClient) -> None:
    accepted = await start_run(alice, agent="countdown", message="100 20")
    r = await alice.post(
        "/v1/runs", json={"agent": "echo", "message": "x", "thread_id": accepted["thread_id"]}
    )
    assert_problem(r, 409, "run_active")
    r = await alice.post(f"/v1/runs/{accepted['run_id']}/cancel")
    assert r.status_code == 202
    assert r.json() == {"run_id": accepted["run_id"], "status": "running"}
    events = await wait_terminal(alice, accepted["thread_id"])
    assert events[-1]["type"] == "agent_cancelled"
    run = (await alice.get(f"/v1/runs/{accepted['run_id']}")).json()
    assert run["status"] == "cancelled"
    # Cancelling an ended run answers its final status and emits nothing more.
    r = await alice.post(f"/v1/runs/{accepted['run_id']}/cancel")
    assert r.json() == {"run_id": accepted["run_id"], "status": "cancelled"}


@BOTH_LOGS
async def test_enqueue_and_idempotency(alice: httpx.AsyncClient) -> None:
    first = await start_run(alice, agent="countdown", message="3 5", idempotency_key="k1")
    again = await start_run(alice, agent="countdown", message="3 5", idempotency_key="k1")
    assert again["run_id"] == first["run_id"]
    queued = await start_run(
        alice, agent="echo", message="next", thread_id=first["thread_id"], on_active="enqueue"
    )
    events = await wait_terminal(alice, first["thread_id"], queued["run_id"])
    assert events[-1]["run_id"] == queued["run_id"]


async def test_limit_exceeded_is_429(app_factory: AppFactory, client_for: ClientFactory) -> None:
    app = await app_factory(engine_settings={"max_runs_per_user": 1, "max_queued_per_user": 1})
    token = gateway_of(app).auth.mint_token("busy")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app),
        base_url="http://t",
        headers={"authorization": f"Bearer {token}"},
    ) as client:
        running = await start_run(client, agent="countdown", message="100 20")
        queued = await start_run(client, agent="echo", message="queued")
        r = await client.post("/v1/runs", json={"agent": "echo", "message": "too many"})
        assert assert_problem(r, 429, "limit_exceeded")["limit"] == "max_queued_per_user"
        for run in (queued, running):
            await client.post(f"/v1/runs/{run['run_id']}/cancel")


async def test_unavailable_when_not_accepting(alice: httpx.AsyncClient, gateway: Gateway) -> None:
    await gateway.engine.runner.shutdown(0)
    r = await alice.post("/v1/runs", json={"agent": "echo", "message": "x"})
    assert_problem(r, 503, "unavailable")
    assert r.headers["retry-after"] == "1"


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "status", "code"),
    [
        ("not_json", b"{nope", 400, "bad_json"),
        ("empty", b"", 400, "bad_json"),
        ("not_object", b"[1]", 422, "invalid_message"),
        ("missing_message", b'{"agent":"echo"}', 422, "invalid_message"),
        ("message_not_string", b'{"message":3}', 422, "invalid_message"),
        ("unknown_field", b'{"message":"x","agnet":"echo"}', 422, "invalid_message"),
        ("bad_on_active", b'{"message":"x","on_active":"later"}', 422, "invalid_message"),
        ("empty_thread_id", b'{"message":"x","thread_id":""}', 422, "invalid_message"),
        ("too_large", b'{"message":"' + b"x" * 2_000_000 + b'"}', 413, "invalid_message"),
    ],
)
async def test_start_run_validation(
    alice: httpx.AsyncClient, name: str, content: bytes, status: int, code: str
) -> None:
    r = await alice.post("/v1/runs", content=content, headers={"content-type": "application/json"})
    assert_problem(r, status, code)


async def test_message_too_long_for_the_runner(alice: httpx.AsyncClient) -> None:
    r = await alice.post("/v1/runs", json={"agent": "echo", "message": "x" * 100_001})
    assert_problem(r, 422, "invalid_message")


@pytest.mark.parametrize(
    "query",
    ["after_seq=-1", "after_seq=x", "limit=0", "limit=1001", "limit=1.5"],
)
async def test_events_query_validation(alice: httpx.AsyncClient, query: str) -> None:
    accepted = await start_run(alice, agent="echo", message="x")
    r = await alice.get(f"/v1/threads/{accepted['thread_id']}/events?{query}")
    assert_problem(r, 400, "invalid_message")


# --- threads and events ------------------------------------------------------------------


@BOTH_LOGS
async def test_events_pagination_is_exact(alice: httpx.AsyncClient, gateway: Gateway) -> None:
    accepted = await start_run(alice, agent="countdown", message="5 0")
    tid = accepted["thread_id"]
    await wait_terminal(alice, tid)
    pages = []
    cursors = []
    after = 0
    while True:
        r = await alice.get(f"/v1/threads/{tid}/events", params={"after_seq": after, "limit": 3})
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"thread_id", "epoch", "events", "next_after_seq"}
        assert (body["thread_id"], body["epoch"]) == (tid, accepted["epoch"])
        cursors.append(body["next_after_seq"])
        if not body["events"]:
            break
        pages.append([e["seq"] for e in body["events"]])
        after = body["events"][-1]["seq"]
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    # The cursor is the last seq while more events follow, null once the head is reached.
    assert cursors == [3, 6, None, None]
    # The stored envelope bytes are spliced in as they are.
    r = await alice.get(f"/v1/threads/{tid}/events", params={"after_seq": 2, "limit": 2})
    stored = await gateway.engine.bridge.read(tid, 2, 2)
    assert r.content == (
        b'{"thread_id":"' + tid.encode() + b'","epoch":"' + accepted["epoch"].encode()
        + b'","events":[' + b",".join(ev.raw for ev in stored) + b'],"next_after_seq":4}'
    )  # fmt: skip
    assert r.headers["content-type"] == "application/json"


@BOTH_LOGS
async def test_events_after_trim_start_at_first_retained(
    alice: httpx.AsyncClient, gateway: Gateway
) -> None:
    accepted = await start_run(alice, agent="countdown", message="5 0")
    tid = accepted["thread_id"]
    await wait_terminal(alice, tid)
    await gateway.engine.log.trim(tid, 4)
    r = await alice.get(f"/v1/threads/{tid}/events")
    assert [e["seq"] for e in r.json()["events"]] == [4, 5, 6, 7]


async def test_threads_newest_first_with_cursor(alice: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        accepted = await start_run(alice, agent="echo", message=f"m{i}")
        ids.append(accepted["thread_id"])
        await wait_terminal(alice, accepted["thread_id"])
    seen: list[list[str]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = (await alice.get("/v1/threads", params=params)).json()
        assert set(body) == {"threads", "next_cursor"}
        seen.append([t["thread_id"] for t in body["threads"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    thread = (await alice.get("/v1/threads", params={"limit": 1})).json()["threads"][0]
    assert set(thread) == {"thread_id", "title", "last_agent", "created_at", "updated_at"}
    assert (thread["title"], thread["last_agent"]) == ("m4", "echo")


@pytest.mark.parametrize(
    "query",
    [
        "cursor=%%%",
        "cursor=" + base64.urlsafe_b64encode(b'{"a":1}').decode(),
        "limit=0",
        "limit=201",
    ],
)
async def test_threads_query_validation(alice: httpx.AsyncClient, query: str) -> None:
    assert_problem(await alice.get(f"/v1/threads?{query}"), 400, "invalid_message")


async def test_thread_detail(alice: httpx.AsyncClient) -> None:
    accepted = await start_run(alice, agent="echo", message="hi there")
    await wait_terminal(alice, accepted["thread_id"])
    body = (await alice.get(f"/v1/threads/{accepted['thread_id']}")).json()
    assert set(body) == {"thread", "epoch", "last_seq", "runs", "messages"}
    assert body["thread"]["thread_id"] == accepted["thread_id"]
    assert (body["epoch"], body["last_seq"]) == (accepted["epoch"], 3)
    assert [r["run_id"] for r in body["runs"]] == [accepted["run_id"]]
    assert (body["messages"][0]["role"], body["messages"][0]["content"]) == ("user", "hi there")


# --- isolation ------------------------------------------------------------------------------


async def test_another_users_resources_answer_like_made_up_ids(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    accepted = await start_run(alice, agent="countdown", message="50 20")
    tid, rid = accepted["thread_id"], accepted["run_id"]

    async def running() -> bool:
        return bool((await alice.get(f"/v1/runs/{rid}")).json()["status"] == "running")

    await wait_until(running)
    made_tid, made_rid = "th_01a2000000000000000000000000", "run_01a2000000000000000000000000"
    cases = [
        ("GET", "/v1/runs/{r}", None),
        ("POST", "/v1/runs/{r}/cancel", None),
        ("GET", "/v1/threads/{t}", None),
        ("GET", "/v1/threads/{t}/events", None),
        ("GET", "/v1/threads/{t}/stream", None),
        ("POST", "/v1/runs", {"agent": "echo", "message": "x", "thread_id": "{t}"}),
        ("POST", "/v1/runs", {"message": "x", "thread_id": "{t}"}),
    ]
    for method, path, body in cases:
        answers = []
        for t, r in ((tid, rid), (made_tid, made_rid)):
            json_body = None
            if body is not None:
                json_body = {k: v.format(t=t) for k, v in body.items()}
            resp = await bob.request(method, path.format(t=t, r=r), json=json_body)
            answers.append((resp.status_code, resp.headers["content-type"], resp.content))
        assert answers[0] == answers[1], (method, path)
        assert answers[0][0] == 404
    # Bob's attempts changed nothing: alice's run is still running, then cancellable.
    assert await running()
    assert (await bob.get("/v1/threads")).json() == {"threads": [], "next_cursor": None}
    await alice.post(f"/v1/runs/{rid}/cancel")


# --- problems, health, metrics, static -------------------------------------------------------


async def test_unknown_route_and_method_are_problems(alice: httpx.AsyncClient) -> None:
    assert_problem(await alice.get("/v1/nope"), 404, "not_found")
    assert_problem(await alice.delete("/v1/runs"), 405, "invalid_message")


async def test_internal_errors_reveal_nothing(
    alice: httpx.AsyncClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError("secret database password in this message")

    monkeypatch.setattr(gateway.engine.store, "get_run", broken)
    r = await alice.get("/v1/runs/run_x")
    body = assert_problem(r, 500, "internal")
    assert "secret" not in r.text
    assert "Traceback" not in r.text
    assert body["title"] == "Internal error"


async def test_health_ready_metrics(alice: httpx.AsyncClient) -> None:
    r = await alice.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = await alice.get("/readyz")
    assert r.status_code == 200
    assert r.json()["state"] == "active"
    assert r.json()["last_probe"]["ok"] is True
    await alice.get("/v1/agents")
    r = await alice.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text
    assert 'agentcast_http_requests_total{route="/v1/agents",status="200"} 1.0' in text
    assert 'agentcast_open_connections{transport="sse"} 0.0' in text
    assert 'agentcast_bridge_state{state="active"} 1.0' in text


async def test_readyz_503_before_start_and_while_closing(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    gateway = gateway_of(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["state"] == "uninitialized"
        assert (await c.get("/healthz")).status_code == 200
        async with agentcast_lifespan(app):
            assert (await c.get("/readyz")).status_code == 200
            gateway.closing = True
            r = await c.get("/readyz")
            assert (r.status_code, r.json()["reason"]) == (503, "shutting down")
            gateway.closing = False
        assert (await c.get("/readyz")).json()["state"] == "closed"


async def test_static_page(alice: httpx.AsyncClient) -> None:
    r = await alice.get("/")
    assert r.status_code == 200
    assert "agentcast" in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert (await alice.get("/static/index.html")).status_code == 200


async def test_cors(app_factory: AppFactory) -> None:
    app: Starlette = await app_factory(cors_origins=["https://app.example"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        r = await c.options(
            "/v1/runs",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await c.get("/healthz", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_no_cors_by_default(alice: httpx.AsyncClient) -> None:
    r = await alice.get("/healthz", headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers


def test_problem_bodies_are_compact_json() -> None:
    from agentcast.gateway.problems import problem

    r = problem(404, "not_found", "no such run")
    assert msgspec.json.decode(r.body) == {
        "type": "urn:agentcast:problem:not_found",
        "title": "Not found",
        "status": 404,
        "detail": "no such run",
        "code": "not_found",
    }


async def test_readyz_reports_postgres_notification_queue_and_warns_past_half(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path, engine_settings={"database_url": pg_url})
    gateway = gateway_of(app)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c,
        agentcast_lifespan(app),
    ):
        await gateway.engine.bridge.check_health()
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["notification_queue_usage"] == 0
        assert "warnings" not in r.json()

        async def busy() -> float:
            return 0.62

        monkeypatch.setattr(gateway.engine.log, "notification_queue_usage", busy)
        await gateway.engine.bridge.check_health()
        r = await c.get("/readyz")
        assert r.status_code == 200  # every process shares the queue: ready all the same
        assert r.json()["notification_queue_usage"] == 0.62
        assert r.json()["warnings"] == ["PostgreSQL's notification queue is over half full"]
        metrics = (await c.get("/metrics")).text
        assert "agentcast_pg_notification_queue_usage 0.62" in metrics
