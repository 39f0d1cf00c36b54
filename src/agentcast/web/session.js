/**
 * session.js — the engine behind {@link AgentcastClient} (client.js): what the
 * server's frames mean (dispatch, exactly-once delivery, resuming every thread
 * after a reconnect, `resync`), requests and their replies, and subscriptions.
 * Not public: only client.js uses it, and it reports to the client's listeners
 * through the `emit` callback it is given. The socket itself (open, reconnect,
 * keepalive, close) is connection.js's; request bookkeeping is in requests.js,
 * thread positions in threads.js, HTTP in http.js, constants in protocol.js.
 *
 * @module session
 */

import { Connection } from "./connection.js";
import { AgentcastError } from "./errors.js";
import { httpJson } from "./http.js";
import { ClientErrorCode, CloseCode, ConnectionState, EVENT_TYPES, isEvent } from "./protocol.js";
import { RequestTable } from "./requests.js";
import { loadPositions, rejectWaiters, savePositions, ThreadTable } from "./threads.js";

/** @typedef {import("./protocol.js").AgentEvent} AgentEvent */
/** @typedef {import("./protocol.js").Position} Position */
/** @typedef {import("./protocol.js").ConnectionInfo} ConnectionInfo */
/** @typedef {import("./protocol.js").Subscribed} Subscribed */

/** @typedef {import("./client.js").ClientOptions} ClientOptions */

/** The state and logic of one {@link AgentcastClient}. */
export class ClientSession {
  /** @type {Required<Pick<ClientOptions, "auth"|"batch"|"autoReconnect"|"requestTimeoutMs"|"pingIntervalMs"|"storageKey"|"watchNetwork">> & ClientOptions} */
  #options;
  /** @type {(type: string, payload: unknown) => void} */
  #emitTo;
  /** Per thread: position, subscription wish and waiters. */
  #threads = new ThreadTable();
  /** `setTimeout`/`clearTimeout`, looked up on every call (options first). */
  #timers = {
    set: (/** @type {() => void} */ fn, /** @type {number} */ ms) =>
      (this.#options.setTimeout ?? globalThis.setTimeout)(fn, ms),
    clear: (/** @type {any} */ handle) => {
      if (handle !== null && handle !== undefined) {
        (this.#options.clearTimeout ?? globalThis.clearTimeout)(handle);
      }
    },
  };
  /** Requests waiting for their reply, and frames to send once connected. */
  #requests = new RequestTable(this.#timers);
  /** The socket and the connection state. @type {Connection} */
  #connection;
  #everConnected = false;
  /** Re-subscriptions outstanding before the state becomes `resumed`. */
  #resuming = new Set();
  /** @type {ConnectionInfo|null} */
  #info = null;
  /** @type {{resolve: (i: ConnectionInfo) => void, reject: (e: Error) => void}[]} */
  #connectWaiters = [];
  #stats = { delivered: 0, duplicates: 0 };

  /**
   * @param {ClientOptions} options
   * @param {(type: string, payload: unknown) => void} emit  delivers to the client's listeners
   */
  constructor(options, emit) {
    this.#emitTo = emit;
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
    this.#connection = new Connection(this.#options, this.#timers, {
      emit: (type, payload) => this.#emit(type, payload),
      onFrame: (frame) => this.#onFrame(frame),
      onLost: () => this.#onLost(),
      onClosed: (makeError) => this.#onClosed(makeError),
      newId: () => this.#requests.newId(),
      http: (path, init) => this.http(path, init),
    });
    const stored = loadPositions(this.#options.storage, this.#options.storageKey);
    for (const [threadId, position] of Object.entries(stored)) {
      this.#threads.ensure(threadId, position);
    }
    for (const [threadId, position] of Object.entries(options.positions ?? {})) {
      this.#threads.ensure(threadId, position);
    }
  }

  // Public to client.js

  /** The connection state (a {@link ConnectionState} value). */
  get state() {
    return this.#connection.state;
  }

  /** Whether a connection is established (frames are sent now, not queued). */
  get isOpen() {
    return this.#info !== null && this.#connection.socket !== null;
  }

  /** The current connection's `connection_established` frame, or null. */
  get connection() {
    return this.#info;
  }

  /** Counters: events delivered, duplicates dropped, reconnects. */
  get stats() {
    return { ...this.#stats, reconnects: this.#connection.reconnects };
  }

  /**
   * Open the connection (idempotent). Resolves on the first
   * `connection_established`; rejects if the credentials are refused or the
   * client is closed first. Later drops are handled by reconnecting.
   * @returns {Promise<ConnectionInfo>}
   */
  connect() {
    if (this.state === ConnectionState.CLOSED) {
      return Promise.reject(new AgentcastError(ClientErrorCode.CLOSED, "client is closed"));
    }
    if (this.isOpen && this.#info) return Promise.resolve(this.#info);
    const promise = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.state === ConnectionState.IDLE) this.#connection.start();
    return promise;
  }

  /** Close for good: no reconnect; pending requests are rejected with `closed`. */
  close() {
    this.#connection.shutdown(ClientErrorCode.CLOSED, "client closed", CloseCode.NORMAL);
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
    if (this.state === ConnectionState.CLOSED) {
      return Promise.reject(new AgentcastError(ClientErrorCode.CLOSED, "client is closed"));
    }
    const thread = this.#threads.ensure(threadId);
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
      rejectWaiters(thread, new AgentcastError(ClientErrorCode.CLOSED, "unsubscribed"));
    }
    this.#resuming.delete(threadId);
    if (!this.isOpen) return Promise.resolve({ type: "unsubscribed", thread_id: threadId });
    return this.request({ type: "unsubscribe", thread_id: threadId });
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
    return this.#threads.positions();
  }

  /**
   * Close the socket as a network failure would (the client reconnects and
   * resumes). For tests and debugging.
   */
  dropConnection() {
    this.#connection.drop();
  }

  /**
   * @param {string} path
   * @param {{method?: string, body?: unknown, signal?: AbortSignal}} [init]
   */
  http(path, init = {}) {
    return httpJson(this.#options, path, init);
  }

  // Connection

  /** The socket is gone: replies to what was sent on it will not come. */
  #onLost() {
    this.#info = null;
    this.#resuming.clear();
    for (const thread of this.#threads.values()) thread.live = false;
    // Requests sent on the lost socket may or may not have been processed:
    // their outcome is unknown, so they fail; callers can retry (start_agent
    // with an idempotency_key is safe to retry). Subscriptions are renewed.
    this.#requests.failSent(
      (id) =>
        new AgentcastError(ClientErrorCode.DISCONNECTED, `connection lost before the reply`, {
          ref: id,
        }),
    );
  }

  /** @param {() => Error} error  closed for good: everything waiting fails with it */
  #onClosed(error) {
    this.#info = null;
    this.#requests.rejectAll(error);
    for (const thread of this.#threads.values()) rejectWaiters(thread, error());
    for (const waiter of this.#connectWaiters.splice(0)) waiter.reject(error());
  }

  #ensureConnecting() {
    if (this.state === ConnectionState.IDLE) void this.connect().catch(() => {});
  }

  // Frames

  /** @param {Record<string, any>} frame */
  #onFrame(frame) {
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
    this.#requests.settle(frame.ref, frame);
  }

  /** @param {ConnectionInfo} info */
  #onEstablished(info) {
    this.#info = info;
    this.#connection.established();
    const reconnected = this.#everConnected;
    this.#everConnected = true;
    // Renew every subscription from the last delivered position, then send
    // whatever was queued while disconnected.
    for (const [threadId, thread] of this.#threads.entries()) {
      if (!thread.wanted) continue;
      if (reconnected) this.#resuming.add(threadId);
      this.#sendSubscribe(threadId);
    }
    for (const frame of this.#requests.takeQueued(this.#connection.socket)) this.#send(frame);
    // After a reconnect the state stays `reconnecting` until every thread is
    // re-subscribed: `resumed` means the feeds are live again.
    if (!reconnected) this.#connection.setState(ConnectionState.OPEN);
    else if (this.#resuming.size === 0) this.#connection.setState(ConnectionState.RESUMED);
    this.#emit("connected", info);
    for (const waiter of this.#connectWaiters.splice(0)) waiter.resolve(info);
  }

  /** @param {string} threadId */
  #sendSubscribe(threadId) {
    const thread = this.#threads.ensure(threadId);
    /** @type {{type: string, thread_id: string, after_seq: number, epoch?: string}} */
    const frame = { type: "subscribe", thread_id: threadId, after_seq: thread.seq };
    if (thread.epoch) frame.epoch = thread.epoch;
    const id = this.#requests.newId();
    this.#requests.add(id, {
      type: "subscribe",
      threadId,
      socket: this.#connection.socket,
      resolve: () => {},
      reject: () => {},
      timer: null,
    });
    this.#send({ ...frame, id });
  }

  /** @param {Record<string, any>} frame */
  #onSubscribed(frame) {
    const pending = frame.ref ? this.#requests.get(frame.ref) : undefined;
    if (pending) this.#requests.delete(frame.ref);
    const threadId = frame.thread_id ?? pending?.threadId;
    const thread = this.#threads.ensure(threadId);
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
      this.#connection.setState(ConnectionState.RESUMED);
    }
  }

  /** @param {Record<string, any>} frame */
  #onRunAccepted(frame) {
    const thread = this.#threads.get(frame.thread_id);
    if (thread && thread.wanted && thread.live) return; // already following: keep its position
    // The connection now follows this thread from after_seq (docs/protocol.md start_agent).
    const t = this.#threads.ensure(frame.thread_id);
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
    const pending = frame.ref ? this.#requests.get(frame.ref) : undefined;
    if (pending?.type === "subscribe" && pending.threadId) {
      this.#requests.delete(frame.ref);
      const thread = this.#threads.ensure(pending.threadId);
      thread.wanted = false;
      thread.live = false;
      if (this.#resuming.delete(pending.threadId) && this.#resuming.size === 0 && this.#info) {
        this.#connection.setState(ConnectionState.RESUMED);
      }
      if (thread.waiters.length) rejectWaiters(thread, error);
      else this.#emit("error", error);
      return;
    }
    if (!this.#requests.settle(frame.ref, undefined, error)) this.#emit("error", error);
  }

  /** @param {AgentEvent} event */
  #onEvent(event) {
    const thread = this.#threads.ensure(event.thread_id);
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
  request(frame) {
    if (this.state === ConnectionState.CLOSED) {
      return Promise.reject(new AgentcastError(ClientErrorCode.CLOSED, "client is closed"));
    }
    const id = this.#requests.newId();
    return new Promise((resolve, reject) => {
      const timer = this.#timers.set(() => {
        this.#requests.delete(id);
        reject(new AgentcastError(ClientErrorCode.TIMEOUT, `no reply to ${frame.type}`, { ref: id }));
      }, this.#options.requestTimeoutMs);
      const socket = this.#connection.socket;
      const open = this.isOpen && socket !== null;
      this.#requests.add(id, {
        type: frame.type,
        socket: open ? socket : null,
        resolve,
        reject,
        timer,
      });
      if (open) this.#send({ ...frame, id });
      else {
        this.#requests.queue({ ...frame, id });
        this.#ensureConnecting();
      }
    });
  }

  /** @param {object} frame */
  #send(frame) {
    this.#connection.send(frame);
  }

  // Helpers

  /**
   * @param {string} type
   * @param {unknown} payload
   */
  #emit(type, payload) {
    this.#emitTo(type, payload);
  }

  #savePositions() {
    if (!this.#options.storage) return;
    savePositions(this.#options.storage, this.#options.storageKey, this.positions());
  }
}
