// Unit tests of the JS client's connection, reconnect and resume logic.
// Run with `node --test tests/js/` (no npm dependencies).

import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import {
  AgentcastClient,
  AgentcastError,
  backoffDelay,
  ConnectionState,
} from "../../src/agentcast/web/agentcast.js";
import { event, FakeSocket, flush, ManualTimers, MemoryStorage, ticketFetch } from "./fakes.mjs";

const BACKOFF = { initialDelayMs: 100, maxDelayMs: 1600, factor: 2, jitter: 0.5 };

/**
 * A client wired to fakes, recording what it emits.
 * @param {object} [options]
 */
function makeClient(options = {}) {
  const timers = new ManualTimers();
  const client = new AgentcastClient({
    url: "http://agentcast.test",
    token: "jwt-alice",
    WebSocket: /** @type {any} */ (FakeSocket),
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0.5,
    backoff: BACKOFF,
    pingIntervalMs: 0,
    watchNetwork: false,
    ...options,
  });
  const seen = { events: [], states: [], resyncs: [], errors: [], unauthorized: [] };
  client.on("event", (e) => seen.events.push(e));
  client.on("state", (s) => seen.states.push(s.state));
  client.on("resync", (r) => seen.resyncs.push(r));
  client.on("error", (e) => seen.errors.push(e));
  client.on("unauthorized", (u) => seen.unauthorized.push(u));
  return { client, timers, seen };
}

/** Connect a client and establish its first socket. */
async function connected(options = {}) {
  const made = makeClient(options);
  const opened = made.client.connect();
  await flush();
  FakeSocket.last.establish();
  await opened;
  return { ...made, socket: FakeSocket.last };
}

const seqs = (events) => events.map((e) => e.seq);

beforeEach(() => FakeSocket.reset());

describe("connecting", () => {
  test("a token is sent as subprotocols agentcast.v1 and bearer.<jwt>", async () => {
    const { socket, seen, client } = await connected();
    assert.equal(socket.url.href, "ws://agentcast.test/v1/ws");
    assert.deepEqual(socket.protocols, ["agentcast.v1", "bearer.jwt-alice"]);
    assert.deepEqual(seen.states, ["connecting", "open"]);
    assert.equal(client.connection.user_id, "alice");
  });

  test("a ticket is fetched with the bearer token for every attempt", async () => {
    const { fetch, calls } = ticketFetch();
    const { socket, timers } = await connected({ auth: "ticket", fetch, batch: true });
    assert.equal(calls[0].url, "http://agentcast.test/v1/ws-ticket");
    assert.equal(calls[0].init.method, "POST");
    assert.equal(calls[0].init.headers.Authorization, "Bearer jwt-alice");
    assert.equal(socket.url.searchParams.get("ticket"), "ticket-1");
    assert.equal(socket.url.searchParams.get("batch"), "1");
    assert.equal(socket.protocols, undefined);
    socket.drop();
    timers.runNext();
    await flush();
    assert.equal(FakeSocket.last.url.searchParams.get("ticket"), "ticket-2"); // one use each
  });

  test("a refused ticket closes the client as unauthorized, without retrying", async () => {
    const { fetch } = ticketFetch({ status: 401 });
    const { client, timers, seen } = makeClient({ auth: "ticket", fetch });
    await assert.rejects(client.connect(), { code: "unauthorized" });
    assert.equal(client.state, ConnectionState.CLOSED);
    assert.equal(FakeSocket.instances.length, 0);
    assert.equal(timers.pending.size, 0);
    assert.equal(seen.unauthorized.length, 1);
  });
});

describe("requests", () => {
  test("replies are matched to requests by id/ref, whatever their order", async () => {
    const { client, socket } = await connected();
    const started = client.startAgent({ agent: "demo", message: "hi", onActive: "enqueue" });
    const pong = client.ping();
    const [start, ping] = socket.sent;
    assert.deepEqual(
      { ...start, id: undefined },
      { type: "start_agent", agent: "demo", message: "hi", on_active: "enqueue", id: undefined },
    );
    assert.notEqual(start.id, ping.id);
    socket.deliver({ type: "pong", ref: ping.id });
    socket.deliver({
      type: "run_accepted",
      ref: start.id,
      run_id: "r1",
      thread_id: "t1",
      epoch: "E",
      after_seq: 0,
    });
    assert.equal((await started).run_id, "r1");
    assert.equal((await pong).type, "pong");
  });

  test("an error frame rejects its request with the server's code", async () => {
    const { client, socket, seen } = await connected();
    const cancelled = client.cancel({ runId: "nope" });
    socket.reply("cancel", { type: "error", code: "not_found", message: "no such run" });
    await assert.rejects(cancelled, (error) => {
      assert.ok(error instanceof AgentcastError);
      assert.equal(error.code, "not_found");
      return true;
    });
    socket.deliver({ type: "error", code: "bad_json", message: "?", ref: null });
    assert.deepEqual(
      seen.errors.map((e) => e.code),
      ["bad_json"],
    );
  });

  test("a request without reply times out", async () => {
    const { client, timers } = await connected({ requestTimeoutMs: 500 });
    const ping = client.ping();
    assert.equal(timers.runNext(), 500);
    await assert.rejects(ping, { code: "timeout" });
  });

  test("requests made while disconnected are sent after reconnecting", async () => {
    const { client, socket, timers } = await connected();
    const inFlight = client.startAgent({ agent: "demo", message: "one" });
    socket.drop();
    await assert.rejects(inFlight, { code: "disconnected" });
    const queued = client.startAgent({ agent: "demo", message: "two" });
    timers.runNext();
    await flush();
    const next = FakeSocket.last;
    assert.deepEqual(next.sent, []);
    next.establish();
    next.reply("start_agent", {
      type: "run_accepted",
      run_id: "r2",
      thread_id: "t1",
      epoch: "E",
      after_seq: 0,
    });
    assert.equal((await queued).run_id, "r2");
  });
});

describe("exactly once across reconnects", () => {
  test("events at or below the last delivered seq are dropped", async () => {
    const { client, socket, timers, seen } = await connected();
    const subscribed = client.subscribe("t1");
    assert.deepEqual(
      { ...socket.lastSent("subscribe"), id: undefined },
      { type: "subscribe", thread_id: "t1", after_seq: 0, id: undefined },
    );
    socket.reply("subscribe", {
      type: "subscribed",
      thread_id: "t1",
      epoch: "E",
      after_seq: 0,
      recovered: true,
    });
    await subscribed;
    for (const seq of [1, 2, 3]) socket.deliver(event(seq));
    socket.drop(1006);
    assert.equal(client.state, ConnectionState.RECONNECTING);
    timers.runNext();
    await flush();
    const next = FakeSocket.last;
    next.establish();
    // Resubscribed from the last delivered position, with its epoch.
    const resubscribe = next.lastSent("subscribe");
    assert.equal(resubscribe.after_seq, 3);
    assert.equal(resubscribe.epoch, "E");
    assert.equal(client.state, ConnectionState.RECONNECTING); // until the subscription is back
    next.reply("subscribe", {
      type: "subscribed",
      thread_id: "t1",
      epoch: "E",
      after_seq: 3,
      recovered: true,
    });
    // A server that repeats the last event(s) on resume must not duplicate them.
    for (const seq of [2, 3, 3, 4, 5]) next.deliver(event(seq));
    next.deliver([event(5), event(6), event(7)]); // a ?batch=1 array frame
    assert.deepEqual(seqs(seen.events), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(seen.states, ["connecting", "open", "reconnecting", "resumed"]);
    assert.equal(client.stats.duplicates, 4);
    assert.deepEqual(client.position("t1"), { epoch: "E", seq: 7 });
  });

  test("reconnecting before the first event resumes from 0", async () => {
    const { client, socket, timers, seen } = await connected();
    client.subscribe("t1");
    socket.reply("subscribe", {
      type: "subscribed",
      thread_id: "t1",
      epoch: "E",
      after_seq: 0,
      recovered: true,
    });
    socket.drop();
    timers.runNext();
    await flush();
    FakeSocket.last.establish();
    assert.equal(FakeSocket.last.lastSent("subscribe").after_seq, 0);
    FakeSocket.last.deliver(event(1));
    assert.deepEqual(seqs(seen.events), [1]);
  });

  test("a started run's thread is followed from run_accepted.after_seq", async () => {
    const { client, socket, timers, seen } = await connected();
    const started = client.startAgent({ agent: "demo", message: "hi", threadId: "t1" });
    socket.reply("start_agent", {
      type: "run_accepted",
      run_id: "r9",
      thread_id: "t1",
      epoch: "E",
      after_seq: 10,
    });
    await started;
    socket.deliver(event(11));
    socket.drop();
    timers.runNext();
    await flush();
    FakeSocket.last.establish();
    const resubscribe = FakeSocket.last.lastSent("subscribe");
    assert.deepEqual([resubscribe.thread_id, resubscribe.after_seq], ["t1", 11]);
    assert.deepEqual(seqs(seen.events), [11]);
  });

  test("events are delivered once per thread, each thread on its own seq", async () => {
    const { client, socket } = await connected();
    const byThread = {};
    client.on("event", (e) => (byThread[e.thread_id] ??= []).push(e.seq));
    socket.deliver([event(1), event(1, { thread_id: "t2" }), event(2), event(1, { thread_id: "t2" })]);
    assert.deepEqual(byThread, { t1: [1, 2], t2: [1] });
  });

  test("a cancelled run's terminal event in an unfollowed thread leaves its position alone", async () => {
    const { client, socket, seen } = await connected();
    const cancelled = client.cancel({ runId: "r7" });
    socket.reply("cancel", { type: "cancel_accepted", run_id: "r7", status: "running" });
    assert.deepEqual(await cancelled, {
      type: "cancel_accepted",
      run_id: "r7",
      status: "running",
      ref: socket.lastSent("cancel").id,
    });
    socket.deliver(event(7, { thread_id: "t2", run_id: "r7", type: "agent_cancelled" }));
    assert.deepEqual(seqs(seen.events), [7]);
    // Subscribing later still gets everything before it, and not it a second time.
    client.subscribe("t2");
    assert.equal(socket.lastSent("subscribe").after_seq, 0);
    socket.reply("subscribe", { type: "subscribed", thread_id: "t2", epoch: "E", after_seq: 0, recovered: true });
    socket.deliver([1, 2, 3, 4, 5, 6, 7, 8].map((seq) => event(seq, { thread_id: "t2" })));
    assert.deepEqual(seqs(seen.events), [7, 1, 2, 3, 4, 5, 6, 8]);
    assert.deepEqual(client.position("t2"), { epoch: "E", seq: 8 });
  });

  test("typed listeners get only their type", async () => {
    const { client, socket } = await connected();
    const tools = [];
    client.on("tool_completed", (e) => tools.push(e.seq));
    socket.deliver([event(1), event(2, { type: "tool_completed" }), event(3)]);
    assert.deepEqual(tools, [2]);
  });

  test("a listener that throws does not stop delivery", async () => {
    const { client, socket, seen } = await connected();
    const reported = [];
    const original = globalThis.reportError;
    globalThis.reportError = (error) => reported.push(error);
    try {
      client.on("event", () => {
        throw new Error("boom");
      });
      socket.deliver([event(1), event(2)]);
    } finally {
      globalThis.reportError = original;
    }
    assert.deepEqual(seqs(seen.events), [1, 2]);
    assert.equal(reported.length, 2);
  });
});

describe("additions by a later server, and no silent skip", () => {
  test("unknown fields and unknown types are delivered in order and move the position", async () => {
    const { client, socket, seen } = await connected();
    const thinking = [];
    client.on("agent_thinking", (e) => thinking.push(e.seq));
    client.subscribe("t1");
    socket.reply("subscribe", { type: "subscribed", thread_id: "t1", epoch: "E", after_seq: 0, recovered: true });
    const { event_id: _, ...withoutId } = event(4);
    socket.deliver(event(1));
    socket.deliver(event(2, { added_by_a_later_server: { x: 1 } }));
    // A type this version does not know, named like one of the client's own listeners.
    socket.deliver(event(3, { type: "error", data: { mood: "calm" } }));
    socket.deliver([withoutId, event(5, { type: "agent_reflecting" })]);
    socket.deliver(event(6));
    assert.deepEqual(seqs(seen.events), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(
      seen.events.map((e) => e.type),
      ["agent_thinking", "agent_thinking", "error", "agent_thinking", "agent_reflecting", "agent_thinking"],
    );
    assert.deepEqual(seen.events[1].added_by_a_later_server, { x: 1 }); // passed on as sent
    assert.deepEqual(seen.errors, []); // the event typed "error" is not a client error
    assert.deepEqual(thinking, [1, 2, 4, 6]);
    assert.deepEqual(client.position("t1"), { epoch: "E", seq: 6 });
    assert.equal(client.state, ConnectionState.OPEN);
  });

  for (const [name, raw] of [
    ["not JSON", "{not json"],
    ["an event without seq", JSON.stringify({ v: 1, type: "agent_thinking", thread_id: "t1" })],
    ["an event without thread_id", JSON.stringify({ ...event(2), thread_id: undefined })],
    ["an unknown control frame", JSON.stringify({ type: "mystery" })],
    ["a batch with a bad item", JSON.stringify([event(2), 7])],
  ]) {
    test(`${name} ends the client with bad_frame instead of skipping it`, async () => {
      const { client, socket, seen } = await connected();
      client.subscribe("t1");
      socket.reply("subscribe", { type: "subscribed", thread_id: "t1", epoch: "E", after_seq: 0, recovered: true });
      socket.deliver(event(1));
      const pending = client.ping();
      socket.onmessage?.({ data: raw });
      socket.deliver(event(3)); // never delivered as if nothing was missing
      assert.deepEqual(seqs(seen.events), [1]);
      assert.deepEqual(
        seen.errors.map((e) => e.code),
        ["bad_frame"],
      );
      await assert.rejects(pending, { code: "bad_frame" });
      assert.equal(client.state, ConnectionState.CLOSED);
      assert.deepEqual(socket.closed, { code: 1000, reason: "" });
      assert.equal(FakeSocket.instances.length, 1); // no reconnect past the gap
    });
  }
});

describe("resume across page reloads", () => {
  test("given positions, it subscribes from them and drops what was delivered", async () => {
    const { client, socket, seen } = await connected({
      positions: { t1: { epoch: "E", seq: 7 } },
    });
    client.subscribe("t1");
    const subscribe = socket.lastSent("subscribe");
    assert.deepEqual([subscribe.after_seq, subscribe.epoch], [7, "E"]);
    socket.deliver([event(7), event(8)]);
    assert.deepEqual(seqs(seen.events), [8]);
  });

  test("positions saved in storage are picked up by the next client", async () => {
    const storage = new MemoryStorage();
    const first = await connected({ storage });
    first.client.subscribe("t1");
    first.socket.reply("subscribe", {
      type: "subscribed",
      thread_id: "t1",
      epoch: "E",
      after_seq: 0,
      recovered: true,
    });
    first.socket.deliver([event(1), event(2), event(3)]);
    first.client.close(); // the page is reloaded

    const second = await connected({ storage });
    assert.deepEqual(second.client.position("t1"), { epoch: "E", seq: 3 });
    second.client.subscribe("t1");
    assert.equal(second.socket.lastSent("subscribe").after_seq, 3);
    second.socket.deliver([event(3), event(4)]);
    assert.deepEqual(seqs(second.seen.events), [4]);
  });

  test("an explicit afterSeq restarts delivery from there", async () => {
    const { client, socket, seen } = await connected();
    socket.deliver([event(1), event(2)]);
    client.subscribe("t1", { afterSeq: 0, epoch: "E" });
    socket.deliver([event(1), event(2), event(3)]);
    assert.deepEqual(seqs(seen.events), [1, 2, 1, 2, 3]);
  });
});

describe("resync", () => {
  test("recovered: false emits resync and restarts from subscribed.after_seq", async () => {
    const { client, socket, timers, seen } = await connected();
    client.subscribe("t1");
    socket.reply("subscribe", {
      type: "subscribed",
      thread_id: "t1",
      epoch: "E1",
      after_seq: 0,
      recovered: true,
    });
    socket.deliver([event(1), event(2), event(3)]);
    socket.drop();
    timers.runNext();
    await flush();
    const next = FakeSocket.last;
    next.establish();
    // The server lost the stream's history: new epoch, delivery restarts at 0.
    next.reply("subscribe", {
      type: "subscribed",
      thread_id: "t1",
      epoch: "E2",
      after_seq: 0,
      recovered: false,
    });
    next.deliver([event(1), event(2)]);
    assert.deepEqual(seen.resyncs, [
      { threadId: "t1", epoch: "E2", afterSeq: 0, previous: { epoch: "E1", seq: 3 } },
    ]);
    assert.deepEqual(seqs(seen.events), [1, 2, 3, 1, 2]);
    assert.deepEqual(client.position("t1"), { epoch: "E2", seq: 2 });
  });

  test("a trimmed position restarts at the first retained event", async () => {
    const { client, socket, seen } = await connected({ positions: { t1: { epoch: "E", seq: 5 } } });
    const subscribed = client.subscribe("t1");
    socket.reply("subscribe", {
      type: "subscribed",
      thread_id: "t1",
      epoch: "E",
      after_seq: 20,
      recovered: false,
    });
    assert.equal((await subscribed).recovered, false);
    socket.deliver([event(20), event(21)]);
    assert.equal(seen.resyncs[0].afterSeq, 20);
    assert.deepEqual(seqs(seen.events), [21]);
  });

  test("a refused subscription rejects with its code and is not renewed", async () => {
    const { client, socket, timers } = await connected();
    const subscribed = client.subscribe("other-users-thread");
    socket.reply("subscribe", { type: "error", code: "not_found", message: "no such thread" });
    await assert.rejects(subscribed, { code: "not_found" });
    socket.drop();
    timers.runNext();
    await flush();
    FakeSocket.last.establish();
    assert.equal(FakeSocket.last.lastSent("subscribe"), undefined);
  });
});

describe("backoff", () => {
  test("delays grow by the factor up to the cap, within the jitter bounds", () => {
    const bounds = [100, 200, 400, 800, 1600, 1600, 1600];
    bounds.forEach((bound, attempt) => {
      assert.equal(backoffDelay(attempt, BACKOFF, () => 0), bound);
      assert.equal(backoffDelay(attempt, BACKOFF, () => 0.999999), bound * (1 - 0.5 * 0.999999));
      for (let i = 0; i < 50; i += 1) {
        const delay = backoffDelay(attempt, BACKOFF);
        assert.ok(delay >= bound / 2 && delay <= bound, `${delay} outside [${bound / 2}, ${bound}]`);
      }
    });
  });

  test("failed attempts back off exponentially; a good connection resets it", async () => {
    let r = 0;
    const randoms = [0, 0.999, 0.25, 0.5, 0.75, 0, 0, 0];
    const { socket, timers, seen } = await connected({ random: () => randoms[r++ % randoms.length] });
    socket.drop();
    const delays = [];
    for (let i = 0; i < 6; i += 1) {
      delays.push(timers.runNext());
      await flush();
      FakeSocket.last.drop(1006); // refused before connection_established
    }
    const bounds = [100, 200, 400, 800, 1600, 1600];
    delays.forEach((delay, i) => {
      assert.ok(delay >= bounds[i] / 2 && delay <= bounds[i], `attempt ${i}: ${delay}`);
    });
    assert.deepEqual(delays.slice(0, 3), [100, 200 * (1 - 0.5 * 0.999), 400 * (1 - 0.5 * 0.25)]);
    // Success resets the backoff.
    timers.runNext();
    await flush();
    FakeSocket.last.establish();
    FakeSocket.last.drop();
    assert.ok(timers.pendingDelays()[0] <= 100);
    assert.equal(seen.states.filter((s) => s === "reconnecting").length, 8);
  });

  test("close 4029 (too many connections) before connection_established backs off", async () => {
    const { socket, timers } = await connected({ random: () => 0 });
    socket.drop();
    const delays = [];
    for (let i = 0; i < 4; i += 1) {
      delays.push(timers.runNext());
      await flush();
      FakeSocket.last.drop(4029, "too many connections"); // accepted, then closed
    }
    assert.deepEqual(delays, [100, 200, 400, 800]); // never a tight loop
    assert.deepEqual(timers.pendingDelays(), [1600]);
  });

  test("close 1001 and 4008 reconnect", async () => {
    for (const code of [1001, 4008]) {
      FakeSocket.reset();
      const { client, socket, timers } = await connected();
      socket.drop(code);
      assert.equal(client.state, ConnectionState.RECONNECTING);
      timers.runNext();
      await flush();
      assert.equal(FakeSocket.instances.length, 2);
    }
  });
});

describe("close", () => {
  test("no reconnect after 4401; pending requests are rejected", async () => {
    const { client, socket, timers, seen } = await connected();
    const pong = client.ping();
    socket.drop(4401, "token expired");
    await assert.rejects(pong, { code: "disconnected" });
    assert.equal(client.state, ConnectionState.CLOSED);
    assert.equal(timers.pending.size, 0);
    assert.deepEqual(seen.unauthorized, [{ reason: "token expired" }]);
    assert.deepEqual(seen.states, ["connecting", "open", "closed"]);
    await assert.rejects(client.ping(), { code: "closed" });
    assert.equal(FakeSocket.instances.length, 1);
  });

  test("close() stops for good", async () => {
    const { client, socket, timers } = await connected();
    client.close();
    assert.deepEqual(socket.closed, { code: 1000, reason: "" });
    assert.equal(client.state, ConnectionState.CLOSED);
    assert.equal(timers.pending.size, 0);
  });

  test("dropConnection() behaves like a lost network", async () => {
    const { client, socket, timers, seen } = await connected();
    client.dropConnection();
    assert.equal(socket.closed.code, 4000);
    assert.equal(client.state, ConnectionState.RECONNECTING);
    timers.runNext();
    await flush();
    FakeSocket.last.establish();
    assert.deepEqual(seen.states, ["connecting", "open", "reconnecting", "resumed"]);
  });

  test("a silent connection is dropped after a missed pong", async () => {
    const { client, timers, socket } = await connected({ pingIntervalMs: 1000 });
    timers.runNext(); // ping
    assert.equal(socket.lastSent("ping").type, "ping");
    timers.runNext(); // no pong within the interval
    assert.equal(socket.closed.code, 4000);
    assert.equal(client.state, ConnectionState.RECONNECTING);
  });
});
