// Unit tests of ThreadStream (sse.js): SSE parsing, exactly once, and the epoch rule.
// Run with `node --test tests/js/` (no npm dependencies).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SSEParser, StreamState, ThreadStream } from "../../src/agentcast/web/sse.js";
import { event, flush, ManualTimers } from "./fakes.mjs";

const encoder = new TextEncoder();

/** A fetch whose responses the test writes by hand, one stream per request. */
class FakeServer {
  constructor() {
    /** @type {{url: URL, init: any, controller: ReadableStreamDefaultController|null, status: number}[]} */
    this.requests = [];
    /** statuses to answer with, in order (200 when empty) */
    this.statuses = [];
    this.fetch = async (url, init) => {
      const request = { url: new URL(url), init, controller: null, status: this.statuses.shift() ?? 200 };
      this.requests.push(request);
      const body = new ReadableStream({
        start(controller) {
          request.controller = controller;
        },
      });
      init.signal?.addEventListener("abort", () => {
        try {
          request.controller?.error(new Error("aborted"));
        } catch {
          /* already closed */
        }
      });
      return { ok: request.status === 200, status: request.status, body };
    };
  }

  get last() {
    return this.requests.at(-1);
  }

  /** Send raw SSE text on the latest stream. */
  write(text) {
    this.last.controller.enqueue(encoder.encode(text));
  }

  subscribed(fields) {
    this.write(`event: subscribed\ndata: ${JSON.stringify({ thread_id: "t1", ...fields })}\n\n`);
  }

  events(...events) {
    this.write(events.map((e) => `id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`).join(""));
  }

  /** End the latest stream (a server shutdown, a proxy timeout). */
  end() {
    this.last.controller.close();
  }
}

function makeStream(options = {}) {
  const server = new FakeServer();
  const timers = new ManualTimers();
  const stream = new ThreadStream({
    url: "http://agentcast.test",
    threadId: "t1",
    token: "jwt-alice",
    fetch: server.fetch,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0.5,
    idleTimeoutMs: 0,
    ...options,
  });
  const seen = { events: [], resyncs: [], errors: [], states: [] };
  stream.on("event", (e) => seen.events.push(e));
  stream.on("resync", (r) => seen.resyncs.push(r));
  stream.on("error", (e) => seen.errors.push(e));
  stream.on("state", (s) => seen.states.push(s.state));
  return { server, timers, stream, seen };
}

/** Fire the reconnect timer and let the new request start. */
async function reconnect(timers) {
  timers.runNext();
  await flush();
}

const seqs = (events) => events.map((e) => e.seq);
const params = (request) => Object.fromEntries(request.url.searchParams);

describe("ThreadStream", () => {
  test("authenticates with the bearer token and delivers events once, in order", async () => {
    const { server, stream, seen } = makeStream();
    stream.open();
    await flush();
    assert.equal(server.last.url.pathname, "/v1/threads/t1/stream");
    assert.equal(server.last.init.headers.Authorization, "Bearer jwt-alice");
    assert.deepEqual(params(server.last), { after_seq: "0" });
    server.subscribed({ epoch: "E", after_seq: 0, recovered: true });
    server.events(event(1), event(2));
    server.write(": keepalive\n\n");
    server.events(event(2), event(3, { type: "agent_reflecting" })); // a repeat, an unknown type
    await flush();
    assert.deepEqual(seqs(seen.events), [1, 2, 3]);
    assert.deepEqual(stream.position, { epoch: "E", seq: 3 });
    assert.equal(stream.state, StreamState.OPEN);
  });

  test("after an epoch change, reconnects ask with the new epoch: nothing is replayed", async () => {
    const { server, timers, stream, seen } = makeStream({ afterSeq: 5, epoch: "OLD" });
    stream.open();
    await flush();
    assert.deepEqual(params(server.last), { after_seq: "5", epoch: "OLD" });
    // The history of OLD is gone: the server restarts the thread in epoch NEW.
    server.subscribed({ epoch: "NEW", after_seq: 0, recovered: false });
    server.events(event(1), event(2));
    await flush();
    assert.deepEqual(seen.resyncs, [
      { threadId: "t1", epoch: "NEW", afterSeq: 0, previous: { epoch: "OLD", seq: 5 } },
    ]);
    server.end();
    await flush();
    assert.equal(stream.state, StreamState.RECONNECTING);
    await reconnect(timers);
    // Never the stale URL (epoch OLD with a seq of NEW, which would replay everything).
    assert.deepEqual(params(server.last), { after_seq: "2", epoch: "NEW" });
    server.subscribed({ epoch: "NEW", after_seq: 2, recovered: true });
    server.events(event(3));
    server.end();
    await flush();
    await reconnect(timers);
    assert.deepEqual(params(server.last), { after_seq: "3", epoch: "NEW" });
    assert.deepEqual(seqs(seen.events), [1, 2, 3]);
    assert.equal(seen.resyncs.length, 1);
  });

  test("a trimmed position mid-stream restarts where subscribed says", async () => {
    const { server, stream, seen } = makeStream();
    stream.open();
    await flush();
    server.subscribed({ epoch: "E", after_seq: 0, recovered: true });
    server.events(event(1));
    server.subscribed({ epoch: "E", after_seq: 5, recovered: false }); // 2..5 trimmed unsent
    server.events(event(6));
    await flush();
    assert.deepEqual(seqs(seen.events), [1, 6]);
    assert.deepEqual(seen.resyncs.map((r) => r.afterSeq), [5]);
  });

  test("messages split anywhere, with CRLF line ends, parse the same", async () => {
    const messages = [];
    const parser = new SSEParser((m) => messages.push(m));
    const text = 'event: subscribed\r\ndata: {"a":1}\r\n\r\n: keepalive\r\n\r\nid: 7\r\nevent: x\r\ndata: 2\r\n\r\n';
    for (const ch of text) parser.push(ch);
    assert.deepEqual(messages, [
      { event: "subscribed", data: '{"a":1}', id: null },
      { event: "x", data: "2", id: "7" },
    ]);
  });

  test("a 503 is retried with backoff; a 401 closes it as unauthorized", async () => {
    const { server, timers, stream, seen } = makeStream();
    const unauthorized = [];
    stream.on("unauthorized", (u) => unauthorized.push(u.status));
    server.statuses.push(503, 401);
    stream.open();
    await flush();
    assert.equal(stream.state, StreamState.RECONNECTING);
    await reconnect(timers);
    await flush();
    assert.deepEqual(unauthorized, [401]);
    assert.equal(stream.state, StreamState.CLOSED);
    assert.deepEqual(seen.errors.map((e) => e.code), ["unauthorized"]);
    assert.equal(server.requests.length, 2);
  });

  test("a silent link is dropped after idleTimeoutMs and resumed", async () => {
    const { server, timers, stream } = makeStream({ idleTimeoutMs: 1000 });
    stream.open();
    await flush();
    server.subscribed({ epoch: "E", after_seq: 0, recovered: true });
    server.events(event(1));
    await flush();
    timers.runNext(); // the idle timer: nothing for a whole interval
    await flush();
    assert.equal(stream.state, StreamState.RECONNECTING);
    await reconnect(timers);
    assert.deepEqual(params(server.last), { after_seq: "1", epoch: "E" });
  });

  test("an event that cannot be read closes the stream with bad_frame", async () => {
    const { server, stream, seen } = makeStream();
    stream.open();
    await flush();
    server.subscribed({ epoch: "E", after_seq: 0, recovered: true });
    server.events(event(1));
    server.write("id: 2\nevent: agent_thinking\ndata: {not json\n\n");
    server.events(event(3));
    await flush();
    assert.deepEqual(seqs(seen.events), [1]);
    assert.deepEqual(seen.errors.map((e) => e.code), ["bad_frame"]);
    assert.equal(stream.state, StreamState.CLOSED);
    assert.equal(server.requests.length, 1);
  });
});
