// Test doubles for the agentcast JS client: a scriptable WebSocket, manual
// timers, a fetch that answers ticket requests, and an in-memory Storage.

/** A WebSocket whose server side the test drives by hand. */
export class FakeSocket {
  /** @type {FakeSocket[]} every socket created, in order */
  static instances = [];

  /**
   * @param {string} url
   * @param {string[]} [protocols]
   */
  constructor(url, protocols) {
    this.url = new URL(url);
    this.protocols = protocols;
    /** @type {any[]} frames the client sent, parsed */
    this.sent = [];
    this.closed = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    FakeSocket.instances.push(this);
  }

  static reset() {
    FakeSocket.instances = [];
  }

  static get last() {
    return FakeSocket.instances.at(-1);
  }

  // What the client calls.

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000, reason = "") {
    this.closed = { code, reason };
  }

  // What the "server" does.

  /** @param {object|object[]} frame */
  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  establish(userId = "alice") {
    this.deliver({
      type: "connection_established",
      connection_id: `conn${FakeSocket.instances.indexOf(this)}`,
      user_id: userId,
      server_version: "test",
    });
  }

  /** @param {number} code */
  drop(code = 1006, reason = "") {
    this.onclose?.({ code, reason });
  }

  /** The last frame the client sent of `type`. */
  lastSent(type) {
    return this.sent.findLast((frame) => frame.type === type);
  }

  /** Reply to the last frame of `type` with `frame` (its `ref` filled in). */
  reply(type, frame) {
    const request = this.lastSent(type);
    if (!request) throw new Error(`the client sent no ${type}`);
    this.deliver({ ...frame, ref: request.id });
    return request;
  }
}

/** Timers that only fire when the test says so. */
export class ManualTimers {
  constructor() {
    this.now = 0;
    this.nextHandle = 1;
    /** @type {Map<number, {at: number, delay: number, fn: () => void}>} */
    this.pending = new Map();
    /** @type {number[]} every delay ever requested */
    this.delays = [];
    this.setTimeout = (fn, delay) => {
      const handle = this.nextHandle++;
      this.pending.set(handle, { at: this.now + delay, delay, fn });
      this.delays.push(delay);
      return handle;
    };
    this.clearTimeout = (handle) => {
      this.pending.delete(handle);
    };
  }

  /** Fire the earliest timer; returns its delay. */
  runNext() {
    const [handle, timer] = [...this.pending].sort((a, b) => a[1].at - b[1].at)[0] ?? [];
    if (!timer) throw new Error("no timer pending");
    this.pending.delete(handle);
    this.now = timer.at;
    timer.fn();
    return timer.delay;
  }

  /** Delays of the timers pending now. */
  pendingDelays() {
    return [...this.pending.values()].map((t) => t.delay);
  }
}

/** A Storage with getItem/setItem. */
export class MemoryStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
}

/**
 * A fetch answering `POST /v1/ws-ticket` with `ticket-1`, `ticket-2`, … or with `status`.
 * @param {{status?: number}} [options]
 */
export function ticketFetch(options = {}) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    const status = options.status ?? 200;
    const body = status === 200 ? { ticket: `ticket-${calls.length}`, expires_in: 30 } : {};
    return {
      ok: status >= 200 && status < 300,
      status,
      statusText: String(status),
      text: async () => JSON.stringify(body),
    };
  };
  return { fetch, calls };
}

/** Let pending promise callbacks run. */
export async function flush() {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * An event envelope.
 * @param {number} seq
 * @param {object} [fields]
 */
export function event(seq, fields = {}) {
  return {
    v: 1,
    type: "agent_thinking",
    event_id: `e${seq}`,
    thread_id: "t1",
    run_id: "r1",
    parent_run_id: null,
    seq,
    ts: 1764115200 + seq,
    agent: "countdown",
    data: { reasoning: String(seq) },
    ...fields,
  };
}
