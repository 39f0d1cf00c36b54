/**
 * client.js — {@link AgentcastClient}: one WebSocket to `/v1/ws` kept up for
 * one user: its options, its public API and its listeners. The work is done
 * by the `ClientSession` of session.js, which reports through `emit`.
 *
 * Import it through `agentcast.js`, the public entry point.
 *
 * @module client
 */

import { notify } from "./emitter.js";
import { ClientSession } from "./session.js";

/** @typedef {import("./protocol.js").AgentEvent} AgentEvent */
/** @typedef {import("./protocol.js").Position} Position */
/** @typedef {import("./protocol.js").ConnectionInfo} ConnectionInfo */
/** @typedef {import("./protocol.js").RunAccepted} RunAccepted */
/** @typedef {import("./protocol.js").Subscribed} Subscribed */
/** @typedef {import("./protocol.js").CancelAccepted} CancelAccepted */
/** @typedef {import("./protocol.js").StateChange} StateChange */
/** @typedef {import("./protocol.js").Resync} Resync */
/** @typedef {import("./errors.js").AgentcastError} AgentcastError */
/** @typedef {import("./backoff.js").BackoffOptions} BackoffOptions */
/** @typedef {import("./threads.js").StorageLike} StorageLike */

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
  /** @type {Map<string, Set<(payload: any) => void>>} */
  #listeners = new Map();
  /** @type {ClientSession} */
  #session;

  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || !options.token) throw new TypeError("AgentcastClient: a token is required");
    this.#session = new ClientSession(options, (type, payload) =>
      notify(this.#listeners, type, payload),
    );
  }

  // Public API

  /** The connection state (a {@link ConnectionState} value). */
  get state() {
    return this.#session.state;
  }

  /** Whether a connection is established (frames are sent now, not queued). */
  get isOpen() {
    return this.#session.isOpen;
  }

  /** The current connection's `connection_established` frame, or null. */
  get connection() {
    return this.#session.connection;
  }

  /** Counters: events delivered, duplicates dropped, reconnects. */
  get stats() {
    return this.#session.stats;
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
    return this.#session.connect();
  }

  /** Close for good: no reconnect; pending requests are rejected with `closed`. */
  close() {
    this.#session.close();
  }

  /**
   * Start a run (`start_agent`). The connection is subscribed to its thread
   * from the reply's `after_seq`, so the run's events follow.
   * @param {{agent: string, message: string, threadId?: string,
   *   onActive?: "reject"|"enqueue"|"interrupt", idempotencyKey?: string}} params
   * @returns {Promise<RunAccepted>}
   */
  startAgent({ agent, message, threadId, onActive, idempotencyKey }) {
    return this.#session.request({
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
    return this.#session.request({
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
    return this.#session.subscribe(threadId, from);
  }

  /**
   * Stop receiving a thread's events (its position is kept).
   * @param {string} threadId
   * @returns {Promise<object>}
   */
  unsubscribe(threadId) {
    return this.#session.unsubscribe(threadId);
  }

  /**
   * Cancel a run, or a thread's active run. The server answers
   * `cancel_accepted`, then the run's `agent_cancelled` follows (unless it had ended).
   * @param {{runId?: string, threadId?: string}} target
   * @returns {Promise<CancelAccepted>}
   */
  cancel({ runId, threadId }) {
    if (!runId && !threadId) throw new TypeError("cancel: runId or threadId is required");
    return this.#session.request({
      type: "cancel",
      ...(runId ? { run_id: runId } : { thread_id: threadId }),
    });
  }

  /** @returns {Promise<object>} the `pong` */
  ping() {
    return this.#session.request({ type: "ping" });
  }

  /**
   * Send any client frame and wait for its reply.
   * @param {string} type
   * @param {Record<string, unknown>} [fields]
   * @returns {Promise<any>}
   */
  request(type, fields = {}) {
    return this.#session.request({ ...fields, type });
  }

  /**
   * The last position delivered for a thread.
   * @param {string} threadId
   * @returns {Position|undefined}
   */
  position(threadId) {
    return this.#session.position(threadId);
  }

  /** @returns {Record<string, Position>} every known thread's position */
  positions() {
    return this.#session.positions();
  }

  /**
   * Close the socket as a network failure would (the client reconnects and
   * resumes). For tests and debugging.
   */
  dropConnection() {
    this.#session.dropConnection();
  }

  /**
   * Authenticated HTTP helper against the same server (JSON in, JSON out).
   * @param {string} path  e.g. `/v1/threads`
   * @param {{method?: string, body?: unknown, signal?: AbortSignal}} [init]
   * @returns {Promise<any>}
   */
  http(path, init = {}) {
    return this.#session.http(path, init);
  }
}
