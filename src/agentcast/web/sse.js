/**
 * sse.js — follow one thread over Server-Sent Events, for code that only listens.
 *
 * A {@link ThreadStream} reads `GET /v1/threads/{thread_id}/stream` with `fetch`
 * (so it can send `Authorization: Bearer`, which a browser `EventSource` cannot),
 * delivers every event of the thread once, in seq order, and reconnects with
 * backoff from the last seq it delivered.
 *
 * ```js
 * import { ThreadStream } from "/static/sse.js";
 * const stream = new ThreadStream({ threadId, token, afterSeq: 0 });
 * stream.on("event", (event) => render(event));
 * stream.on("resync", ({ afterSeq }) => reloadView(afterSeq));
 * stream.open();
 * ```
 *
 * The epoch rule. SSE ids are plain seqs, so a seq only means something with
 * the epoch it belongs to. When `subscribed` announces an epoch other than the
 * one this stream asked with (the history was lost: `recovered: false`), every
 * later request asks with the new epoch and the last seq delivered in it. A
 * browser `EventSource` cannot do that: it keeps its URL and reconnects with the
 * old `?epoch=` and a `Last-Event-ID` of the new epoch, which the server must
 * treat as lost history, so the whole thread would be replayed on every
 * reconnect. An `EventSource` user must close it and open a new one instead.
 *
 * @module sse
 */

import { backoffDelay } from "./backoff.js";
import { notify } from "./emitter.js";
import { AgentcastError } from "./errors.js";
import { ClientErrorCode, EVENT_TYPES, eventProblem } from "./protocol.js";

/** The states of a {@link ThreadStream}. */
export const StreamState = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** @typedef {typeof StreamState[keyof typeof StreamState]} StreamStateValue */

/**
 * @typedef {object} ThreadStreamOptions
 * @property {string} threadId
 * @property {string|(() => string|Promise<string>)} token  a JWT, or a function returning one
 *   (called before every request, so it may refresh)
 * @property {string} [url]          the server's base URL (default: the page's origin)
 * @property {number} [afterSeq=0]   deliver events after this seq
 * @property {string|null} [epoch]   the epoch `afterSeq` belongs to (null: a first subscribe)
 * @property {boolean} [autoReconnect=true]
 * @property {import("./backoff.js").BackoffOptions} [backoff]
 * @property {number} [idleTimeoutMs=45000]  nothing received for this long (the server sends a
 *   keepalive every 15 s): the link is dead, reconnect. 0 disables.
 * @property {typeof fetch} [fetch]
 * @property {() => number} [random]
 * @property {(fn: () => void, ms: number) => any} [setTimeout]
 * @property {(handle: any) => void} [clearTimeout]
 */

/**
 * One thread's events over SSE, exactly once across reconnects.
 *
 * Listen with {@link ThreadStream#on}:
 * - `"event"` — every event, once, in seq order (unknown types too, as sent);
 * - an event type of `EVENT_TYPES` — only those events;
 * - `"subscribed"` — each `subscribed` message `{thread_id, epoch, after_seq, recovered}`;
 * - `"resync"` — `{threadId, epoch, afterSeq, previous}` when the server could not resume
 *   from the position (`recovered: false`): delivery restarts after `afterSeq`;
 * - `"state"` — `{state, previous, attempt?, delayMs?, status?}`;
 * - `"error"` — an `AgentcastError` (`not_found`, `bad_frame`, `http_error`, …);
 * - `"unauthorized"` — the server refused the token (401/403): the stream is closed.
 */
export class ThreadStream {
  /** @type {Required<Pick<ThreadStreamOptions, "autoReconnect"|"idleTimeoutMs">> & ThreadStreamOptions} */
  #options;
  /** @type {Map<string, Set<(payload: any) => void>>} */
  #listeners = new Map();
  /** @type {StreamStateValue} */
  #state = StreamState.IDLE;
  /** @type {string|null} */
  #epoch;
  #seq;
  #attempt = 0;
  /** @type {AbortController|null} */
  #abort = null;
  #reconnectTimer = null;
  #idleTimer = null;

  /** @param {ThreadStreamOptions} options */
  constructor(options) {
    if (!options?.threadId || !options.token) {
      throw new TypeError("ThreadStream: threadId and token are required");
    }
    this.#options = { autoReconnect: true, idleTimeoutMs: 45000, ...options };
    this.#epoch = options.epoch ?? null;
    this.#seq = Number(options.afterSeq ?? 0) || 0;
  }

  // Public API

  /** The state (a {@link StreamState} value). */
  get state() {
    return this.#state;
  }

  /**
   * The last position delivered: the seq of the last event and its epoch.
   * @returns {{epoch: string|null, seq: number}}
   */
  get position() {
    return { epoch: this.#epoch, seq: this.#seq };
  }

  /**
   * @param {string} type
   * @param {(payload: any) => void} listener
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.#listeners.get(type)?.delete(listener);
  }

  /** Start streaming (idempotent). */
  open() {
    if (this.#state !== StreamState.IDLE) return;
    this.#setState(StreamState.CONNECTING);
    void this.#connect();
  }

  /** Stop for good. */
  close() {
    this.#stop(undefined);
  }

  /** The URL of the next request: always the current epoch and position, never a stale one. */
  get url() {
    const base = (this.#options.url ?? globalThis.location?.origin ?? "").replace(/\/+$/, "");
    if (!base) throw new TypeError("ThreadStream: url is required outside a browser");
    const url = new URL(`${base}/v1/threads/${encodeURIComponent(this.#options.threadId)}/stream`);
    url.searchParams.set("after_seq", String(this.#seq));
    if (this.#epoch) url.searchParams.set("epoch", this.#epoch);
    return url.toString();
  }

  // Connection

  async #connect() {
    if (this.#state === StreamState.CLOSED) return;
    const abort = new AbortController();
    this.#abort = abort;
    let response;
    try {
      const token = this.#options.token;
      const jwt = typeof token === "function" ? await token() : token;
      const doFetch = this.#options.fetch ?? globalThis.fetch;
      this.#armIdle(abort);
      response = await doFetch(this.url, {
        headers: { Authorization: `Bearer ${jwt}`, Accept: "text/event-stream" },
        signal: abort.signal,
        cache: "no-store",
      });
    } catch (error) {
      this.#lost(abort, String(/** @type {any} */ (error)?.message ?? error));
      return;
    }
    if (this.#abort !== abort) return;
    if (!response.ok) {
      this.#refused(abort, response.status);
      return;
    }
    this.#attempt = 0;
    this.#setState(StreamState.OPEN, { status: response.status });
    try {
      await this.#read(abort, /** @type {ReadableStream<Uint8Array>} */ (response.body));
    } catch (error) {
      if (this.#abort === abort) {
        this.#lost(abort, String(/** @type {any} */ (error)?.message ?? error));
      }
      return;
    }
    this.#lost(abort, "the stream ended"); // shutdown, token expiry: resume from the position
  }

  /**
   * @param {AbortController} abort
   * @param {ReadableStream<Uint8Array>} body
   */
  async #read(abort, body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const parser = new SSEParser((message) => this.#onMessage(message));
    try {
      while (this.#abort === abort) {
        const { value, done } = await reader.read();
        if (done || this.#abort !== abort) return;
        this.#armIdle(abort);
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      reader.releaseLock?.();
    }
  }

  /**
   * @param {AbortController} abort
   * @param {number} status
   */
  #refused(abort, status) {
    if (status === 401 || status === 403) {
      this.#emit("unauthorized", { status });
      this.#stop(new AgentcastError(ClientErrorCode.UNAUTHORIZED, `${status} refused`, { status }));
    } else if (status === 404 || status === 400) {
      const code = status === 404 ? "not_found" : "invalid_message";
      this.#stop(new AgentcastError(code, `${status} for ${this.#options.threadId}`, { status }));
    } else {
      this.#lost(abort, `HTTP ${status}`, status); // 503 while a server restarts: retry
    }
  }

  /**
   * The stream failed or ended: reconnect from the position (or stop).
   * @param {AbortController} abort
   * @param {string} reason
   * @param {number} [status]
   */
  #lost(abort, reason, status) {
    if (this.#abort !== abort || this.#state === StreamState.CLOSED) return;
    abort.abort();
    this.#abort = null;
    this.#clearTimeout(this.#idleTimer);
    if (!this.#options.autoReconnect) {
      this.#stop(new AgentcastError(ClientErrorCode.DISCONNECTED, reason, { status }));
      return;
    }
    const delayMs = backoffDelay(this.#attempt, this.#options.backoff, this.#options.random);
    this.#attempt += 1;
    this.#setState(StreamState.RECONNECTING, { attempt: this.#attempt, delayMs, status, reason });
    this.#reconnectTimer = this.#setTimeout(() => {
      this.#reconnectTimer = null;
      void this.#connect();
    }, delayMs);
  }

  /** @param {AgentcastError|undefined} error */
  #stop(error) {
    if (this.#state === StreamState.CLOSED) return;
    this.#abort?.abort();
    this.#abort = null;
    this.#clearTimeout(this.#reconnectTimer);
    this.#clearTimeout(this.#idleTimer);
    if (error) this.#emit("error", error);
    this.#setState(StreamState.CLOSED, error ? { reason: error.message } : {});
  }

  /** @param {AbortController} abort */
  #armIdle(abort) {
    this.#clearTimeout(this.#idleTimer);
    const ms = this.#options.idleTimeoutMs;
    if (!ms) return;
    this.#idleTimer = this.#setTimeout(() => this.#lost(abort, "nothing received"), ms);
  }

  // Messages

  /** @param {{event: string, data: string, id: string|null}} message */
  #onMessage(message) {
    if (this.#state === StreamState.CLOSED) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      this.#badFrame(`${message.event} data that is not JSON`);
      return;
    }
    if (message.event === "subscribed") {
      this.#onSubscribed(data);
      return;
    }
    const why = eventProblem(data);
    if (why) {
      this.#badFrame(why);
      return;
    }
    if (data.seq <= this.#seq) return; // already delivered: exactly once
    this.#seq = data.seq;
    this.#emit("event", data);
    if (EVENT_TYPES.includes(data.type)) this.#emit(data.type, data);
  }

  /** @param {Record<string, any>} frame */
  #onSubscribed(frame) {
    const previous = { epoch: this.#epoch, seq: this.#seq };
    // From here on every request carries this epoch (the rule in the module doc).
    this.#epoch = frame.epoch ?? this.#epoch;
    if (frame.recovered === false) this.#seq = Number(frame.after_seq ?? 0) || 0;
    this.#emit("subscribed", frame);
    if (frame.recovered === false) {
      this.#emit("resync", {
        threadId: this.#options.threadId,
        epoch: this.#epoch,
        afterSeq: this.#seq,
        previous,
      });
    }
  }

  /** @param {string} why */
  #badFrame(why) {
    const message = `the server sent a message that cannot be read: ${why}`;
    this.#stop(new AgentcastError(ClientErrorCode.BAD_FRAME, message));
  }

  // Helpers

  /**
   * @param {StreamStateValue} state
   * @param {Record<string, unknown>} [details]
   */
  #setState(state, details = {}) {
    const previous = this.#state;
    if (previous === state && state !== StreamState.RECONNECTING) return;
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

/**
 * An incremental `text/event-stream` parser (the WHATWG rules agentcast needs:
 * `event`, `data`, `id`, comments, and CRLF / LF / CR line ends split anywhere).
 */
export class SSEParser {
  #buffer = "";
  #event = "";
  /** @type {string[]} */
  #data = [];
  /** @type {string|null} */
  #id = null;

  /** @param {(message: {event: string, data: string, id: string|null}) => void} onMessage */
  constructor(onMessage) {
    this.onMessage = onMessage;
  }

  /** @param {string} text  the next decoded chunk */
  push(text) {
    this.#buffer += text;
    const lines = this.#buffer.split(/\r\n|\n|\r/);
    this.#buffer = lines.pop() ?? "";
    // A chunk ending in "\r" may be half of a "\r\n": keep it for the next one.
    if (text.endsWith("\r") && lines.length) {
      this.#buffer = `${lines.pop()}\r${this.#buffer}`;
    }
    for (const line of lines) this.#line(line);
  }

  /** @param {string} line */
  #line(line) {
    if (line === "") {
      if (this.#data.length) {
        this.onMessage({ event: this.#event || "message", data: this.#data.join("\n"), id: this.#id });
      }
      this.#event = "";
      this.#data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: the keepalive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") this.#data.push(value);
    else if (field === "id" && !value.includes("\0")) this.#id = value;
  }
}
