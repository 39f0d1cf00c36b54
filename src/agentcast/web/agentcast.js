/**
 * agentcast.js — a dependency-free client for the agentcast wire protocol v1.
 *
 * One {@link AgentcastClient} holds one WebSocket to `/v1/ws` and keeps it up:
 * it reconnects with exponential backoff and jitter, re-subscribes every thread
 * from the last `seq` it delivered, and drops any event it already delivered, so
 * each event reaches the caller exactly once across reconnects (and across page
 * reloads when it is given the last positions, e.g. from `sessionStorage`).
 *
 * ```js
 * import { AgentcastClient } from "/static/agentcast.js";
 * const client = new AgentcastClient({ token, auth: "ticket" });
 * client.on("event", (event) => render(event));
 * client.on("state", ({ state }) => indicator.dataset.state = state);
 * await client.connect();
 * const { thread_id } = await client.startAgent({ agent: "demo", message: "How much?" });
 * ```
 *
 * Works in browsers and in Node ≥ 20 (pass `WebSocket` and `fetch` if the
 * runtime has none). Nothing is written to the global scope.
 *
 * @module agentcast
 */

/** The WebSocket subprotocol of wire contract v1. */
export const PROTOCOL = "agentcast.v1";

/**
 * Close codes the server uses (docs/protocol.md, "Close codes"). Names and values
 * equal `agentcast.errors.CloseCode`; tests/test_errors.py fails when they drift.
 */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SLOW_CONSUMER: 4008,
  UNAUTHORIZED: 4401,
});

/**
 * Error codes of the server's `error` frames and problem documents (docs/protocol.md,
 * "Errors: problem+json"). Names and values equal `agentcast.errors.ErrorCode`;
 * tests/test_errors.py fails when they drift.
 */
export const ErrorCode = Object.freeze({
  BAD_JSON: "bad_json",
  INVALID_MESSAGE: "invalid_message",
  UNKNOWN_TYPE: "unknown_type",
  NOT_FOUND: "not_found",
  RUN_ACTIVE: "run_active",
  LIMIT_EXCEEDED: "limit_exceeded",
  RATE_LIMITED: "rate_limited",
  UNAVAILABLE: "unavailable",
  INTERNAL: "internal",
  UNAUTHORIZED: "unauthorized",
  FORBIDDEN: "forbidden",
});

/**
 * Connection states, in the order a client usually sees them.
 * `open` is the first established connection; `resumed` is every later one,
 * once each subscribed thread has been re-subscribed.
 */
export const ConnectionState = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  RESUMED: "resumed",
  CLOSED: "closed",
});

/** Every event type of the envelope. */
export const EVENT_TYPES = Object.freeze([
  "agent_started",
  "agent_thinking",
  "tool_executing",
  "tool_completed",
  "text_delta",
  "progress",
  "agent_completed",
  "agent_error",
  "agent_cancelled",
  "custom",
]);

/** The events that end a run: every run has exactly one. */
export const TERMINAL_TYPES = Object.freeze(["agent_completed", "agent_error", "agent_cancelled"]);

/** The control frames a server sends; anything else is an event (it has `v` and `seq`). */
export const CONTROL_TYPES = Object.freeze([
  "connection_established",
  "run_accepted",
  "subscribed",
  "unsubscribed",
  "cancel_accepted",
  "pong",
  "error",
]);

/** Error codes the client itself produces (the server's are in docs/protocol.md). */
export const ClientErrorCode = Object.freeze({
  DISCONNECTED: "disconnected",
  TIMEOUT: "timeout",
  CLOSED: "closed",
  UNAUTHORIZED: "unauthorized",
  HTTP: "http_error",
  BAD_FRAME: "bad_frame",
});

/**
 * @typedef {"agent_started"|"agent_thinking"|"tool_executing"|"tool_completed"|"text_delta"
 *   |"progress"|"agent_completed"|"agent_error"|"agent_cancelled"|"custom"} EventType
 */

/**
 * An event envelope, exactly as the server sends it.
 * @typedef {object} AgentEvent
 * @property {1} v
 * @property {EventType} type
 * @property {string} event_id
 * @property {string} thread_id
 * @property {string} run_id
 * @property {string|null} parent_run_id
 * @property {number} seq        contiguous from 1 per thread; order by this, never by `ts`
 * @property {number} ts         UNIX seconds when the server accepted the event
 * @property {string} agent
 * @property {Record<string, any>} data
 */

/**
 * @typedef {object} Position  where a caller is in one thread's stream
 * @property {string|null} epoch
 * @property {number} seq      the last seq delivered to the caller (0: none)
 */

/**
 * @typedef {object} ConnectionInfo  the server's first frame
 * @property {string} connection_id
 * @property {string} user_id
 * @property {string} server_version
 */

/** @typedef {{run_id: string, thread_id: string, epoch: string, after_seq: number}} RunAccepted */
/** @typedef {{thread_id: string, epoch: string, after_seq: number, recovered: boolean}} Subscribed */
/** @typedef {{run_id: string, status: string}} CancelAccepted */

/**
 * @typedef {object} StateChange
 * @property {string} state       one of {@link ConnectionState}
 * @property {string} previous
 * @property {number} [attempt]   reconnect attempt (1 = first retry)
 * @property {number} [delayMs]   how long until that attempt
 * @property {number} [code]      close code that caused the change
 * @property {string} [reason]
 */

/**
 * Sent when the server could not resume a thread from the position asked for
 * (`subscribed.recovered === false`): the epoch changed, the position was
 * trimmed, or it lay beyond the head. Delivery restarts after `afterSeq`;
 * anything the caller built from the thread should be reloaded (e.g. from
 * `GET /v1/threads/{id}/events`).
 * @typedef {object} Resync
 * @property {string} threadId
 * @property {string} epoch       the stream's epoch now
 * @property {number} afterSeq    delivery restarts after this seq
 * @property {Position} previous  what the client asked for
 */

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initialDelayMs=250]  the first retry's upper bound
 * @property {number} [maxDelayMs=15000]    the cap
 * @property {number} [factor=2]            growth per attempt
 * @property {number} [jitter=0.5]          0..1: the share of each delay that is random
 */

/**
 * @typedef {object} StorageLike  e.g. `sessionStorage`
 * @property {(key: string) => string|null} getItem
 * @property {(key: string, value: string) => void} setItem
 */

/**
 * @typedef {object} ClientOptions
 * @property {string|(() => string|Promise<string>)} token  a JWT, or a function returning one
 *   (called before every connection attempt, so it may refresh)
 * @property {string} [url]        the server's base URL (default: the page's origin)
 * @property {string} [wsUrl]      the WebSocket URL (default: `url` + `/v1/ws`, ws/wss)
 * @property {"subprotocol"|"ticket"} [auth="subprotocol"]  send the token as subprotocol
 *   `bearer.<jwt>`, or exchange it for a one-use ticket (`POST /v1/ws-ticket`) per attempt
 * @property {boolean} [batch=false]  ask for array frames (`?batch=1`)
 * @property {boolean} [autoReconnect=true]
 * @property {BackoffOptions} [backoff]
 * @property {number} [requestTimeoutMs=30000]  a request without reply is rejected with `timeout`
 * @property {number} [pingIntervalMs=25000]    keepalive ping; 0 disables. No pong within the
 *   interval closes the socket and reconnects.
 * @property {Record<string, Position>} [positions]  positions to resume from (e.g. after a reload)
 * @property {StorageLike} [storage]  persist positions here after every delivered event
 * @property {string} [storageKey="agentcast.positions"]
 * @property {boolean} [watchNetwork=true]  in a browser, drop the socket on `offline` and
 *   reconnect at once on `online`
 * @property {typeof WebSocket} [WebSocket]  injectable (tests, Node)
 * @property {typeof fetch} [fetch]          injectable (tests, Node)
 * @property {() => number} [random]         injectable jitter source
 * @property {(fn: () => void, ms: number) => any} [setTimeout]
 * @property {(handle: any) => void} [clearTimeout]
 */

/** An error reply from the server, or a failure of the client itself. */
/**
 * Call every listener of `type` with `payload`. A listener's bug is reported
 * and does not break delivery to the others (shared by the clients here).
 *
 * @param {Map<string, Set<(payload: any) => void>>} listeners
 * @param {string} type
 * @param {unknown} payload
 */
export function notify(listeners, type, payload) {
  for (const listener of [...(listeners.get(type) ?? [])]) {
    try {
      listener(payload);
    } catch (error) {
      if (typeof globalThis.reportError === "function") globalThis.reportError(error);
      else console.error(error);
    }
  }
}

export class AgentcastError extends Error {
  /**
   * @param {string} code     the server's error code (`not_found`, `run_active`, …) or a
   *   {@link ClientErrorCode}
   * @param {string} message
   * @param {{ref?: string|null, status?: number}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = "AgentcastError";
    /** @type {string} */
    this.code = code;
    /** @type {string|null} */
    this.ref = details.ref ?? null;
    /** @type {number|undefined} HTTP status, for `http_error` and `unauthorized` */
    this.status = details.status;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0-based): the bound grows as
 * `initialDelayMs * factor ** attempt` up to `maxDelayMs`, and the delay is
 * drawn from `[bound * (1 - jitter), bound]`, so clients that lost the same
 * server spread out instead of returning together.
 *
 * @param {number} attempt
 * @param {BackoffOptions} [options]
 * @param {() => number} [random]  returns [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { initialDelayMs = 250, maxDelayMs = 15000, factor = 2, jitter = 0.5 } = options;
  const bound = Math.min(maxDelayMs, initialDelayMs * factor ** Math.max(0, attempt));
  const spread = Math.min(1, Math.max(0, jitter));
  return bound * (1 - spread * random());
}

/**
 * Whether a decoded frame is an event: events carry `v` and `seq`, control frames neither.
 * @param {Record<string, any>} frame
 */
function isEvent(frame) {
  return "v" in frame || "seq" in frame;
}

/**
 * Why an item cannot be delivered as an event, or "" if it can. Unknown fields
 * and unknown types are fine; what is needed is a place in a thread's stream.
 * @param {unknown} item
 * @returns {string}
 */
export function eventProblem(item) {
  if (!item || typeof item !== "object" || Array.isArray(item)) return "an event that is not an object";
  const e = /** @type {Record<string, any>} */ (item);
  if (!Number.isInteger(e.seq) || e.seq < 1) return "an event without an integer seq";
  if (typeof e.thread_id !== "string" || typeof e.type !== "string") {
    return `event ${e.seq} without a thread_id or a type`;
  }
  return "";
}

/**
 * Why a single (non-array) frame cannot be read, or "" if it can.
 * @param {unknown} frame
 */
function frameProblem(frame) {
  if (!frame || typeof frame !== "object") return "neither an object nor an array";
  const f = /** @type {Record<string, any>} */ (frame);
  if (isEvent(f)) return eventProblem(f);
  if (!CONTROL_TYPES.includes(f.type)) return `an unknown frame type ${JSON.stringify(f.type)}`;
  return "";
}

/**
 * A live connection to agentcast for one user: requests, typed events,
 * automatic reconnect and exactly-once resume.
 *
 * Listen with {@link AgentcastClient#on}:
 * - `"event"` — every {@link AgentEvent}, once, in seq order per thread; an event
 *   of a type this version does not know (a later server's) is delivered here too,
 *   as the server sent it, and moves the position like any other;
 * - an event type of {@link EVENT_TYPES} (`"agent_started"`, `"tool_completed"`, …) —
 *   only those events;
 * - `"state"` — a {@link StateChange};
 * - `"resync"` — a {@link Resync};
 * - `"connected"` — {@link ConnectionInfo} on every (re)connection;
 * - `"error"` — an {@link AgentcastError} that answers no request;
 * - `"unauthorized"` — the server refused the credentials (close 4401): no more reconnects.
 *
 * Additions by a later server are tolerated (unknown fields, unknown event types),
 * but nothing is skipped silently: a frame that cannot be read at all (not JSON, an
 * event without `seq`/`thread_id`/`type`, an unknown control frame) might have held
 * an event, so the client emits `error` with code `bad_frame` and closes for good.
 */
export class AgentcastClient {
  /** @type {Required<Pick<ClientOptions, "auth"|"batch"|"autoReconnect"|"requestTimeoutMs"|"pingIntervalMs"|"storageKey"|"watchNetwork">> & ClientOptions} */
  #options;
  /** @type {WebSocket|null} */
  #ws = null;
  #state = ConnectionState.IDLE;
  /** @type {Map<string, Set<(payload: any) => void>>} */
  #listeners = new Map();
  /**
   * Per thread: the position delivered so far, whether the caller wants it
   * subscribed, the seqs delivered while it was not (`aside`: they do not move
   * the position) and the callers waiting for its `subscribed`.
   * @type {Map<string, {epoch: string|null, seq: number, wanted: boolean, live: boolean,
   *   aside: Set<number>,
   *   waiters: {resolve: (s: Subscribed) => void, reject: (e: Error) => void}[]}>}
   */
  #threads = new Map();
  /**
   * Requests waiting for their reply, by id.
   * @type {Map<string, {type: string, threadId?: string, socket: WebSocket|null,
   *   resolve: (v: any) => void, reject: (e: Error) => void, timer: any}>}
   */
  #pending = new Map();
  /** Frames to send once connected. @type {object[]} */
  #outbox = [];
  #nextId = 0;
  #attempt = 0;
  /** A connection attempt is under way (fetching a ticket or a token). */
  #opening = false;
  #everConnected = false;
  #reconnectTimer = null;
  #pingTimer = null;
  #awaitingPong = false;
  /** Re-subscriptions outstanding before the state becomes `resumed`. */
  #resuming = new Set();
  /** @type {ConnectionInfo|null} */
  #info = null;
  /** @type {{resolve: (i: ConnectionInfo) => void, reject: (e: Error) => void}[]} */
  #connectWaiters = [];
  #networkHandlers = null;
  #stats = { delivered: 0, duplicates: 0, reconnects: 0 };

  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || !options.token) throw new TypeError("AgentcastClient: a token is required");
    this.#options = {
      auth: "subprotocol",
      batch: false,
      autoReconnect: true,
      requestTimeoutMs: 30000,
      pingIntervalMs: 25000,
      storageKey: "agentcast.positions",
      watchNetwork: true,
      ...options,
    };
    for (const [threadId, position] of Object.entries(this.#loadPositions())) {
      this.#thread(threadId, position);
    }
    for (const [threadId, position] of Object.entries(options.positions ?? {})) {
      this.#thread(threadId, position);
    }
  }

  // Public API

  /** The connection state (a {@link ConnectionState} value). */
  get state() {
    return this.#state;
  }

  /** Whether a connection is established (frames are sent now, not queued). */
  get isOpen() {
    return this.#info !== null && this.#ws !== null;
  }

  /** The current connection's `connection_established` frame, or null. */
  get connection() {
    return this.#info;
  }

  /** Counters: events delivered, duplicates dropped, reconnects. */
  get stats() {
    return { ...this.#stats };
  }

  /**
   * Listen to `type` ("event", an event type, "state", "resync", "connected",
   * "error", "unauthorized").
   * @param {string} type
   * @param {(payload: any) => void} listener
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /**
   * @param {string} type
   * @param {(payload: any) => void} listener
   */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  /**
   * Open the connection (idempotent). Resolves on the first
   * `connection_established`; rejects if the credentials are refused or the
   * client is closed first. Later drops are handled by reconnecting.
   * @returns {Promise<ConnectionInfo>}
   */
  connect() {
    if (this.#state === ConnectionState.CLOSED) {
      return Promise.reject(new AgentcastError(ClientErrorCode.CLOSED, "client is closed"));
    }
    if (this.isOpen && this.#info) return Promise.resolve(this.#info);
    const promise = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === ConnectionState.IDLE) {
      this.#watchNetwork();
      this.#setState(ConnectionState.CONNECTING);
      void this.#open();
    }
    return promise;
  }

  /** Close for good: no reconnect; pending requests are rejected with `closed`. */
  close() {
    this.#shutdown(ClientErrorCode.CLOSED, "client closed", CloseCode.NORMAL);
  }

  /**
   * Start a run (`start_agent`). The connection is subscribed to its thread
   * from the reply's `after_seq`, so the run's events follow.
   * @param {{agent: string, message: string, threadId?: string,
   *   onActive?: "reject"|"enqueue"|"interrupt", idempotencyKey?: string}} params
   * @returns {Promise<RunAccepted>}
   */
  startAgent({ agent, message, threadId, onActive, idempotencyKey }) {
    return this.#request({
      type: "start_agent",
      agent,
      message,
      ...(threadId ? { thread_id: threadId } : {}),
      ...(onActive ? { on_active: onActive } : {}),
      ...(idempotencyKey ? { idempotency_key: idempotencyKey } : {}),
    });
  }

  /**
   * Send a message to a thread's last agent, or the default agent (`user_message`).
   * @param {{message: string, threadId?: string, onActive?: "reject"|"enqueue"|"interrupt"}} params
   * @returns {Promise<RunAccepted>}
   */
  sendMessage({ message, threadId, onActive }) {
    return this.#request({
      type: "user_message",
      message,
      ...(threadId ? { thread_id: threadId } : {}),
      ...(onActive ? { on_active: onActive } : {}),
    });
  }

  /**
   * Subscribe to a thread. Without `afterSeq` it resumes from the last seq
   * this client delivered for the thread (0 if none); with it, delivery
   * restarts after `afterSeq` (events up to it are treated as delivered).
   * The subscription is renewed on every reconnect until {@link unsubscribe}.
   * @param {string} threadId
   * @param {{afterSeq?: number, epoch?: string|null}} [from]
   * @returns {Promise<Subscribed>}
   */
  subscribe(threadId, from = {}) {
    if (this.#state === ConnectionState.CLOSED) {
      return Promise.reject(new AgentcastError(ClientErrorCode.CLOSED, "client is closed"));
    }
    const thread = this.#thread(threadId);
    if (from.afterSeq !== undefined) {
      thread.seq = from.afterSeq;
      thread.epoch = from.epoch ?? null;
      thread.aside.clear(); // a restart: every event after afterSeq is delivered again
    } else if (from.epoch !== undefined) {
      thread.epoch = from.epoch;
    }
    thread.wanted = true;
    thread.live = false;
    const promise = new Promise((resolve, reject) => thread.waiters.push({ resolve, reject }));
    if (this.isOpen) this.#sendSubscribe(threadId);
    else this.#ensureConnecting();
    return promise;
  }

  /**
   * Stop receiving a thread's events (its position is kept).
   * @param {string} threadId
   * @returns {Promise<object>}
   */
  unsubscribe(threadId) {
    const thread = this.#threads.get(threadId);
    if (thread) {
      thread.wanted = false;
      thread.live = false;
      this.#rejectWaiters(thread, new AgentcastError(ClientErrorCode.CLOSED, "unsubscribed"));
    }
    this.#resuming.delete(threadId);
    if (!this.isOpen) return Promise.resolve({ type: "unsubscribed", thread_id: threadId });
    return this.#request({ type: "unsubscribe", thread_id: threadId });
  }

  /**
   * Cancel a run, or a thread's active run. The server answers
   * `cancel_accepted`, then the run's `agent_cancelled` follows (unless it had ended).
   * @param {{runId?: string, threadId?: string}} target
   * @returns {Promise<CancelAccepted>}
   */
  cancel({ runId, threadId }) {
    if (!runId && !threadId) throw new TypeError("cancel: runId or threadId is required");
    return this.#request({
      type: "cancel",
      ...(runId ? { run_id: runId } : { thread_id: threadId }),
    });
  }

  /** @returns {Promise<object>} the `pong` */
  ping() {
    return this.#request({ type: "ping" });
  }

  /**
   * Send any client frame and wait for its reply.
   * @param {string} type
   * @param {Record<string, unknown>} [fields]
   * @returns {Promise<any>}
   */
  request(type, fields = {}) {
    return this.#request({ ...fields, type });
  }

  /**
   * The last position delivered for a thread.
   * @param {string} threadId
   * @returns {Position|undefined}
   */
  position(threadId) {
    const thread = this.#threads.get(threadId);
    return thread ? { epoch: thread.epoch, seq: thread.seq } : undefined;
  }

  /** @returns {Record<string, Position>} every known thread's position */
  positions() {
    /** @type {Record<string, Position>} */
    const out = {};
    for (const [id, t] of this.#threads) out[id] = { epoch: t.epoch, seq: t.seq };
    return out;
  }

  /**
   * Close the socket as a network failure would (the client reconnects and
   * resumes). For tests and debugging.
   */
  dropConnection() {
    const ws = this.#ws;
    if (ws) {
      this.#detach(ws);
      try {
        ws.close(4000, "dropped by client");
      } catch {
        /* already closing */
      }
      this.#onDisconnect(1006, "dropped by client");
    }
  }

  /**
   * Authenticated HTTP helper against the same server (JSON in, JSON out).
   * @param {string} path  e.g. `/v1/threads`
   * @param {{method?: string, body?: unknown, signal?: AbortSignal}} [init]
   * @returns {Promise<any>}
   */
  async http(path, init = {}) {
    const doFetch = this.#options.fetch ?? globalThis.fetch;
    const token = await this.#token();
    const response = await doFetch(this.#baseUrl() + path, {
      method: init.method ?? "GET",
      headers: {
        Authorization: `Bearer ${token}`,
        ...(init.body !== undefined ? { "Content-Type": "application/json" } : {}),
      },
      body: init.body !== undefined ? JSON.stringify(init.body) : undefined,
      signal: init.signal,
    });
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = text;
    }
    if (!response.ok) {
      const code = response.status === 401 ? ClientErrorCode.UNAUTHORIZED : body?.code;
      const message = body?.detail ?? body?.message ?? body?.title ?? response.statusText;
      throw new AgentcastError(code || ClientErrorCode.HTTP, `${response.status} ${message}`, {
        status: response.status,
      });
    }
    return body;
  }

  // Connection

  async #open() {
    if (this.#state === ConnectionState.CLOSED || this.#opening || this.#ws) return;
    this.#opening = true;
    let url;
    let protocols;
    try {
      url = new URL(this.#wsUrl());
      if (this.#options.batch) url.searchParams.set("batch", "1");
      if (this.#options.auth === "ticket") {
        const { ticket } = await this.http("/v1/ws-ticket", { method: "POST", body: {} });
        url.searchParams.set("ticket", ticket);
      } else {
        protocols = [PROTOCOL, `bearer.${await this.#token()}`];
      }
    } catch (error) {
      this.#opening = false;
      if (this.#state === ConnectionState.CLOSED) return;
      if (error instanceof AgentcastError && (error.status === 401 || error.status === 403)) {
        this.#unauthorized(error.message);
      } else {
        this.#scheduleReconnect(undefined, String(error?.message ?? error));
      }
      return;
    }
    this.#opening = false;
    if (this.#state === ConnectionState.CLOSED || this.#ws) return;
    const Socket = this.#options.WebSocket ?? globalThis.WebSocket;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = protocols ? new Socket(url.toString(), protocols) : new Socket(url.toString());
    } catch (error) {
      this.#scheduleReconnect(undefined, String(error?.message ?? error));
      return;
    }
    this.#ws = ws;
    ws.onmessage = (message) => this.#onMessage(ws, message.data);
    ws.onclose = (close) => {
      if (this.#ws !== ws) return;
      this.#detach(ws);
      this.#onDisconnect(close.code, close.reason);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  /** @param {WebSocket} ws */
  #detach(ws) {
    ws.onmessage = ws.onclose = ws.onerror = null;
    if (this.#ws === ws) this.#ws = null;
    this.#stopPing();
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #onDisconnect(code, reason) {
    this.#info = null;
    this.#resuming.clear();
    for (const thread of this.#threads.values()) thread.live = false;
    // Requests sent on the lost socket may or may not have been processed:
    // their outcome is unknown, so they fail; callers can retry (start_agent
    // with an idempotency_key is safe to retry). Subscriptions are renewed.
    for (const [id, pending] of this.#pending) {
      if (pending.socket === null) continue; // still queued, sent on the next socket
      this.#pending.delete(id);
      this.#clearTimeout(pending.timer);
      if (pending.type === "subscribe") continue;
      pending.reject(
        new AgentcastError(ClientErrorCode.DISCONNECTED, `connection lost before the reply`, {
          ref: id,
        }),
      );
    }
    if (code === CloseCode.UNAUTHORIZED) {
      this.#unauthorized(reason || "unauthorized");
      return;
    }
    if (this.#state === ConnectionState.CLOSED) return;
    if (!this.#options.autoReconnect) {
      this.#shutdown(ClientErrorCode.DISCONNECTED, `connection closed (${code})`, undefined, code);
      return;
    }
    this.#scheduleReconnect(code, reason);
  }

  /**
   * @param {number|undefined} code
   * @param {string|undefined} reason
   */
  #scheduleReconnect(code, reason) {
    if (this.#state === ConnectionState.CLOSED || this.#reconnectTimer !== null) return;
    const delayMs = backoffDelay(this.#attempt, this.#options.backoff, this.#options.random);
    this.#attempt += 1;
    this.#setState(ConnectionState.RECONNECTING, { attempt: this.#attempt, delayMs, code, reason });
    this.#reconnectTimer = this.#setTimeout(() => {
      this.#reconnectTimer = null;
      this.#stats.reconnects += 1;
      void this.#open();
    }, delayMs);
  }

  /** Reconnect now (e.g. the network came back), forgetting the backoff. */
  #reconnectNow() {
    if (this.#state !== ConnectionState.RECONNECTING || this.#ws || this.#opening) return;
    if (this.#reconnectTimer !== null) this.#clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#attempt = 0;
    void this.#open();
  }

  #ensureConnecting() {
    if (this.#state === ConnectionState.IDLE) void this.connect().catch(() => {});
  }

  /** @param {string} reason */
  #unauthorized(reason) {
    this.#emit("unauthorized", { reason });
    this.#shutdown(
      ClientErrorCode.UNAUTHORIZED,
      `unauthorized: ${reason}`,
      undefined,
      CloseCode.UNAUTHORIZED,
    );
  }

  /**
   * @param {string} code
   * @param {string} message
   * @param {number} [closeWith]
   * @param {number} [closeCode]  the close code that caused it (for the state event)
   */
  #shutdown(code, message, closeWith, closeCode) {
    if (this.#state === ConnectionState.CLOSED) return;
    if (this.#reconnectTimer !== null) this.#clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const ws = this.#ws;
    if (ws) {
      this.#detach(ws);
      try {
        ws.close(closeWith ?? CloseCode.NORMAL);
      } catch {
        /* already closed */
      }
    }
    this.#unwatchNetwork();
    this.#info = null;
    const error = () => new AgentcastError(code, message);
    for (const pending of this.#pending.values()) {
      this.#clearTimeout(pending.timer);
      if (pending.type !== "subscribe") pending.reject(error());
    }
    this.#pending.clear();
    this.#outbox = [];
    for (const thread of this.#threads.values()) this.#rejectWaiters(thread, error());
    for (const waiter of this.#connectWaiters.splice(0)) waiter.reject(error());
    this.#setState(ConnectionState.CLOSED, { code: closeCode, reason: message });
  }

  // Frames

  /**
   * @param {WebSocket} ws
   * @param {unknown} data
   */
  #onMessage(ws, data) {
    if (this.#ws !== ws) return;
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      this.#badFrame("not JSON");
      return;
    }
    const items = Array.isArray(frame) ? frame : [frame];
    // Checked before any item is delivered: a bad batch delivers nothing of it.
    const why = Array.isArray(frame) ? items.map(eventProblem).find(Boolean) : frameProblem(frame);
    if (why) {
      this.#badFrame(why);
      return;
    }
    for (const item of items) {
      if (this.#ws !== ws) return; // a listener closed or dropped the connection
      this.#onFrame(item);
    }
  }

  /**
   * A frame that cannot be read may have held an event: going on would leave a
   * silent gap, so the client stops, loudly.
   * @param {string} why
   */
  #badFrame(why) {
    const message = `the server sent a frame that cannot be read: ${why}`;
    this.#emit("error", new AgentcastError(ClientErrorCode.BAD_FRAME, message));
    this.#shutdown(ClientErrorCode.BAD_FRAME, message);
  }

  /** @param {Record<string, any>} frame */
  #onFrame(frame) {
    this.#awaitingPong = false; // any frame proves the connection is alive
    if (isEvent(frame)) {
      this.#onEvent(/** @type {AgentEvent} */ (frame));
      return;
    }
    switch (frame.type) {
      case "connection_established":
        this.#onEstablished(/** @type {ConnectionInfo} */ (frame));
        return;
      case "subscribed":
        this.#onSubscribed(frame);
        return;
      case "run_accepted":
        this.#onRunAccepted(frame);
        break;
      case "error":
        this.#onError(frame);
        return;
      default:
        break;
    }
    this.#settle(frame.ref, frame);
  }

  /** @param {ConnectionInfo} info */
  #onEstablished(info) {
    this.#info = info;
    this.#attempt = 0;
    const reconnected = this.#everConnected;
    this.#everConnected = true;
    this.#startPing();
    // Renew every subscription from the last delivered position, then send
    // whatever was queued while disconnected.
    for (const [threadId, thread] of this.#threads) {
      if (!thread.wanted) continue;
      if (reconnected) this.#resuming.add(threadId);
      this.#sendSubscribe(threadId);
    }
    const ws = this.#ws;
    for (const frame of this.#outbox.splice(0)) {
      const pending = this.#pending.get(frame.id);
      if (!pending) continue; // timed out meanwhile
      pending.socket = ws;
      this.#send(frame);
    }
    // After a reconnect the state stays `reconnecting` until every thread is
    // re-subscribed: `resumed` means the feeds are live again.
    if (!reconnected) this.#setState(ConnectionState.OPEN);
    else if (this.#resuming.size === 0) this.#setState(ConnectionState.RESUMED);
    this.#emit("connected", info);
    for (const waiter of this.#connectWaiters.splice(0)) waiter.resolve(info);
  }

  /** @param {string} threadId */
  #sendSubscribe(threadId) {
    const thread = this.#thread(threadId);
    const frame = { type: "subscribe", thread_id: threadId, after_seq: thread.seq };
    if (thread.epoch) frame.epoch = thread.epoch;
    const id = this.#newId();
    this.#pending.set(id, {
      type: "subscribe",
      threadId,
      socket: this.#ws,
      resolve: () => {},
      reject: () => {},
      timer: null,
    });
    this.#send({ ...frame, id });
  }

  /** @param {Record<string, any>} frame */
  #onSubscribed(frame) {
    const pending = frame.ref ? this.#pending.get(frame.ref) : undefined;
    if (pending) this.#pending.delete(frame.ref);
    const threadId = frame.thread_id ?? pending?.threadId;
    const thread = this.#thread(threadId);
    const previous = { epoch: thread.epoch, seq: thread.seq };
    thread.epoch = frame.epoch ?? thread.epoch;
    if (frame.recovered === false) {
      // No silent gap: restart where the server says, and tell the caller.
      thread.seq = frame.after_seq ?? 0;
      thread.aside.clear();
    }
    thread.live = true;
    const subscribed = /** @type {Subscribed} */ ({ ...frame, thread_id: threadId });
    for (const waiter of thread.waiters.splice(0)) waiter.resolve(subscribed);
    this.#savePositions();
    if (frame.recovered === false) {
      this.#emit("resync", {
        threadId,
        epoch: thread.epoch,
        afterSeq: thread.seq,
        previous,
      });
    }
    if (this.#resuming.delete(threadId) && this.#resuming.size === 0 && this.#info) {
      this.#setState(ConnectionState.RESUMED);
    }
  }

  /** @param {Record<string, any>} frame */
  #onRunAccepted(frame) {
    const thread = this.#threads.get(frame.thread_id);
    if (thread && thread.wanted && thread.live) return; // already following: keep its position
    // The connection now follows this thread from after_seq (docs/protocol.md start_agent).
    const t = this.#thread(frame.thread_id);
    t.seq = frame.after_seq ?? 0;
    t.epoch = frame.epoch ?? t.epoch;
    t.wanted = true;
    t.live = true;
    this.#savePositions();
  }

  /** @param {Record<string, any>} frame */
  #onError(frame) {
    const error = new AgentcastError(frame.code ?? "internal", frame.message ?? "error", {
      ref: frame.ref ?? null,
    });
    const pending = frame.ref ? this.#pending.get(frame.ref) : undefined;
    if (pending?.type === "subscribe" && pending.threadId) {
      this.#pending.delete(frame.ref);
      const thread = this.#thread(pending.threadId);
      thread.wanted = false;
      thread.live = false;
      if (this.#resuming.delete(pending.threadId) && this.#resuming.size === 0 && this.#info) {
        this.#setState(ConnectionState.RESUMED);
      }
      if (thread.waiters.length) this.#rejectWaiters(thread, error);
      else this.#emit("error", error);
      return;
    }
    if (!this.#settle(frame.ref, undefined, error)) this.#emit("error", error);
  }

  /** @param {AgentEvent} event */
  #onEvent(event) {
    const thread = this.#thread(event.thread_id);
    if (event.seq <= thread.seq || thread.aside.has(event.seq)) {
      this.#stats.duplicates += 1; // already delivered: exactly once to the caller
      return;
    }
    if (thread.wanted) {
      thread.seq = event.seq;
      for (const seq of thread.aside) if (seq <= event.seq) thread.aside.delete(seq);
      this.#savePositions();
    } else {
      // A thread this client does not follow: the terminal event of a run it
      // cancelled. Delivered, but it does not move the position, so a later
      // subscribe still gets every event before it (and not this one twice).
      thread.aside.add(event.seq);
    }
    this.#stats.delivered += 1;
    this.#emit("event", event);
    // Only known types get a listener of their own: a later server's type must
    // never reach listeners of another kind ("error", "state", …).
    if (EVENT_TYPES.includes(event.type)) this.#emit(event.type, event);
  }

  // Requests

  /**
   * @param {Record<string, any>} frame
   * @returns {Promise<any>}
   */
  #request(frame) {
    if (this.#state === ConnectionState.CLOSED) {
      return Promise.reject(new AgentcastError(ClientErrorCode.CLOSED, "client is closed"));
    }
    const id = this.#newId();
    return new Promise((resolve, reject) => {
      const timer = this.#setTimeout(() => {
        this.#pending.delete(id);
        reject(new AgentcastError(ClientErrorCode.TIMEOUT, `no reply to ${frame.type}`, { ref: id }));
      }, this.#options.requestTimeoutMs);
      const open = this.isOpen && this.#ws !== null;
      this.#pending.set(id, {
        type: frame.type,
        socket: open ? this.#ws : null,
        resolve,
        reject,
        timer,
      });
      if (open) this.#send({ ...frame, id });
      else {
        this.#outbox.push({ ...frame, id });
        this.#ensureConnecting();
      }
    });
  }

  /**
   * Resolve or reject the request `ref`; false if there is none.
   * @param {string|undefined} ref
   * @param {unknown} value
   * @param {Error} [error]
   */
  #settle(ref, value, error) {
    if (!ref) return false;
    const pending = this.#pending.get(ref);
    if (!pending) return false;
    this.#pending.delete(ref);
    this.#clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve(value);
    return true;
  }

  /** @param {object} frame */
  #send(frame) {
    try {
      this.#ws?.send(JSON.stringify(frame));
    } catch {
      /* the close event handles it */
    }
  }

  #newId() {
    this.#nextId += 1;
    return `c${this.#nextId}`;
  }

  // Keepalive

  #startPing() {
    this.#stopPing();
    const interval = this.#options.pingIntervalMs;
    if (!interval) return;
    this.#awaitingPong = false;
    const tick = () => {
      if (this.#awaitingPong) {
        this.dropConnection(); // nothing heard for a whole interval: the link is dead
        return;
      }
      this.#awaitingPong = true;
      this.#send({ type: "ping", id: this.#newId() });
      this.#pingTimer = this.#setTimeout(tick, interval);
    };
    this.#pingTimer = this.#setTimeout(tick, interval);
  }

  #stopPing() {
    if (this.#pingTimer !== null) this.#clearTimeout(this.#pingTimer);
    this.#pingTimer = null;
  }

  #watchNetwork() {
    const target = globalThis;
    if (!this.#options.watchNetwork || typeof target.addEventListener !== "function") return;
    if (typeof globalThis.navigator === "undefined" || !("onLine" in globalThis.navigator)) return;
    const offline = () => this.dropConnection();
    const online = () => this.#reconnectNow();
    target.addEventListener("offline", offline);
    target.addEventListener("online", online);
    this.#networkHandlers = { offline, online };
  }

  #unwatchNetwork() {
    const handlers = this.#networkHandlers;
    if (!handlers) return;
    globalThis.removeEventListener("offline", handlers.offline);
    globalThis.removeEventListener("online", handlers.online);
    this.#networkHandlers = null;
  }

  // Helpers

  /**
   * @param {string} threadId
   * @param {Partial<Position>} [position]
   */
  #thread(threadId, position) {
    let thread = this.#threads.get(threadId);
    if (!thread) {
      thread = { epoch: null, seq: 0, wanted: false, live: false, aside: new Set(), waiters: [] };
      this.#threads.set(threadId, thread);
    }
    if (position) {
      thread.epoch = position.epoch ?? thread.epoch;
      thread.seq = Number(position.seq ?? thread.seq) || 0;
    }
    return thread;
  }

  /**
   * @param {{waiters: {reject: (e: Error) => void}[]}} thread
   * @param {Error} error
   */
  #rejectWaiters(thread, error) {
    for (const waiter of thread.waiters.splice(0)) waiter.reject(error);
  }

  /**
   * @param {string} state
   * @param {Partial<StateChange>} [details]
   */
  #setState(state, details = {}) {
    const previous = this.#state;
    if (previous === state && state !== ConnectionState.RECONNECTING) return;
    this.#state = state;
    this.#emit("state", { ...details, state, previous });
  }

  /**
   * @param {string} type
   * @param {unknown} payload
   */
  #emit(type, payload) {
    notify(this.#listeners, type, payload);
  }

  async #token() {
    const token = this.#options.token;
    return typeof token === "function" ? await token() : token;
  }

  #baseUrl() {
    const base = this.#options.url ?? globalThis.location?.origin;
    if (!base) throw new TypeError("AgentcastClient: url is required outside a browser");
    return base.replace(/\/+$/, "");
  }

  #wsUrl() {
    if (this.#options.wsUrl) return this.#options.wsUrl;
    return `${this.#baseUrl().replace(/^http/, "ws")}/v1/ws`;
  }

  /** @returns {Record<string, Position>} */
  #loadPositions() {
    const storage = this.#options.storage;
    if (!storage) return {};
    try {
      const parsed = JSON.parse(storage.getItem(this.#options.storageKey) ?? "{}");
      return parsed && typeof parsed === "object" ? parsed : {};
    } catch {
      return {};
    }
  }

  #savePositions() {
    const storage = this.#options.storage;
    if (!storage) return;
    try {
      storage.setItem(this.#options.storageKey, JSON.stringify(this.positions()));
    } catch {
      /* storage full or unavailable: resume falls back to in-memory positions */
    }
  }

  /**
   * @param {() => void} fn
   * @param {number} ms
   */
  #setTimeout(fn, ms) {
    return (this.#options.setTimeout ?? globalThis.setTimeout)(fn, ms);
  }

  /** @param {any} handle */
  #clearTimeout(handle) {
    if (handle !== null && handle !== undefined) {
      (this.#options.clearTimeout ?? globalThis.clearTimeout)(handle);
    }
  }
}
