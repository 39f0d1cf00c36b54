/**
 * connection.js — the socket's life for one client: opening it (subprotocol
 * or ticket auth), the connection state machine, reconnecting with backoff,
 * the keepalive and online/offline events, reading and checking each message,
 * and closing for good. It knows nothing of threads or requests: what the
 * frames mean is the session's business (session.js), reached through hooks.
 *
 * @module connection
 */

import { backoffDelay } from "./backoff.js";
import { AgentcastError } from "./errors.js";
import { resolveToken, wsUrl } from "./http.js";
import { Keepalive, watchNetwork } from "./keepalive.js";
import {
  ClientErrorCode,
  CloseCode,
  ConnectionState,
  eventProblem,
  frameProblem,
  PROTOCOL,
} from "./protocol.js";

/** @typedef {import("./protocol.js").StateChange} StateChange */
/** @typedef {import("./protocol.js").ConnectionStateValue} ConnectionStateValue */
/** @typedef {import("./requests.js").Timers} Timers */
/** @typedef {import("./client.js").ClientOptions} ClientOptions */

/**
 * @typedef {object} ConnectionHooks  how a {@link Connection} reaches its session
 * @property {(type: string, payload: unknown) => void} emit  to the client's listeners
 * @property {(frame: Record<string, any>) => void} onFrame  a readable frame (or batch item)
 * @property {() => void} onLost  the socket is gone (before any reconnect or shutdown)
 * @property {(makeError: () => Error) => void} onClosed  closed for good (before the state event)
 * @property {() => string} newId  a request id, for keepalive pings
 * @property {(path: string, init: object) => Promise<any>} http  authenticated HTTP
 */

/** One client's socket, kept up until closed for good. */
export class Connection {
  /** @type {ClientOptions & {autoReconnect: boolean, auth: string, batch: boolean, watchNetwork: boolean, pingIntervalMs: number}} */
  #options;
  /** @type {Timers} */
  #timers;
  /** @type {ConnectionHooks} */
  #hooks;
  /** @type {WebSocket|null} */
  #ws = null;
  /** @type {ConnectionStateValue} */
  #state = ConnectionState.IDLE;
  #attempt = 0;
  /** A connection attempt is under way (fetching a ticket or a token). */
  #opening = false;
  #reconnectTimer = null;
  #reconnects = 0;
  /** @type {Keepalive} */
  #keepalive;
  /** @type {(() => void)|null} stops watching online/offline */
  #unwatchNetwork = null;

  /**
   * @param {any} options  the client's options, with defaults applied
   * @param {Timers} timers
   * @param {ConnectionHooks} hooks
   */
  constructor(options, timers, hooks) {
    this.#options = options;
    this.#timers = timers;
    this.#hooks = hooks;
    this.#keepalive = new Keepalive(timers, {
      sendPing: () => this.send({ type: "ping", id: this.#hooks.newId() }),
      onDead: () => this.drop(),
    });
  }

  /** The connection state (a {@link ConnectionState} value). */
  get state() {
    return this.#state;
  }

  /** The open socket, or null. */
  get socket() {
    return this.#ws;
  }

  /** How many reconnect attempts were made. */
  get reconnects() {
    return this.#reconnects;
  }

  /** From `idle`: start watching the network and open the first socket. */
  start() {
    this.#watchNetwork();
    this.setState(ConnectionState.CONNECTING);
    void this.#open();
  }

  /** `connection_established` arrived: reset the backoff, start the keepalive. */
  established() {
    this.#attempt = 0;
    this.#keepalive.start(this.#options.pingIntervalMs);
  }

  /** @param {object} frame */
  send(frame) {
    try {
      this.#ws?.send(JSON.stringify(frame));
    } catch {
      /* the close event handles it */
    }
  }

  /** Close the socket as a network failure would (then reconnect and resume). */
  drop() {
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
   * @param {ConnectionStateValue} state
   * @param {Partial<StateChange>} [details]
   */
  setState(state, details = {}) {
    const previous = this.#state;
    if (previous === state && state !== ConnectionState.RECONNECTING) return;
    this.#state = state;
    this.#hooks.emit("state", { ...details, state, previous });
  }

  /**
   * Close for good.
   * @param {string} code     the error code pending work is rejected with
   * @param {string} message
   * @param {number} [closeWith]
   * @param {number} [closeCode]  the close code that caused it (for the state event)
   */
  shutdown(code, message, closeWith, closeCode) {
    if (this.#state === ConnectionState.CLOSED) return;
    if (this.#reconnectTimer !== null) this.#timers.clear(this.#reconnectTimer);
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
    this.#unwatchNetwork?.();
    this.#unwatchNetwork = null;
    this.#hooks.onClosed(() => new AgentcastError(code, message));
    this.setState(ConnectionState.CLOSED, { code: closeCode, reason: message });
  }

  async #open() {
    if (this.#state === ConnectionState.CLOSED || this.#opening || this.#ws) return;
    this.#opening = true;
    let url;
    let protocols;
    try {
      url = new URL(wsUrl(this.#options));
      if (this.#options.batch) url.searchParams.set("batch", "1");
      if (this.#options.auth === "ticket") {
        const { ticket } = await this.#hooks.http("/v1/ws-ticket", { method: "POST", body: {} });
        url.searchParams.set("ticket", ticket);
      } else {
        protocols = [PROTOCOL, `bearer.${await resolveToken(this.#options.token)}`];
      }
    } catch (error) {
      this.#opening = false;
      // Re-read after the await (`close()` may have run meanwhile).
      if (/** @type {ConnectionStateValue} */ (this.#state) === ConnectionState.CLOSED) return;
      if (error instanceof AgentcastError && (error.status === 401 || error.status === 403)) {
        this.#unauthorized(error.message);
      } else {
        this.#scheduleReconnect(undefined, String(/** @type {any} */ (error)?.message ?? error));
      }
      return;
    }
    this.#opening = false;
    if (/** @type {ConnectionStateValue} */ (this.#state) === ConnectionState.CLOSED || this.#ws) {
      return;
    }
    const Socket = this.#options.WebSocket ?? globalThis.WebSocket;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = protocols ? new Socket(url.toString(), protocols) : new Socket(url.toString());
    } catch (error) {
      this.#scheduleReconnect(undefined, String(/** @type {any} */ (error)?.message ?? error));
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
    this.#keepalive.stop();
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #onDisconnect(code, reason) {
    this.#hooks.onLost();
    if (code === CloseCode.UNAUTHORIZED) {
      this.#unauthorized(reason || "unauthorized");
      return;
    }
    if (this.#state === ConnectionState.CLOSED) return;
    if (!this.#options.autoReconnect) {
      this.shutdown(ClientErrorCode.DISCONNECTED, `connection closed (${code})`, undefined, code);
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
    this.setState(ConnectionState.RECONNECTING, { attempt: this.#attempt, delayMs, code, reason });
    this.#reconnectTimer = this.#timers.set(() => {
      this.#reconnectTimer = null;
      this.#reconnects += 1;
      void this.#open();
    }, delayMs);
  }

  /** Reconnect now (e.g. the network came back), forgetting the backoff. */
  #reconnectNow() {
    if (this.#state !== ConnectionState.RECONNECTING || this.#ws || this.#opening) return;
    if (this.#reconnectTimer !== null) this.#timers.clear(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#attempt = 0;
    void this.#open();
  }

  /** @param {string} reason */
  #unauthorized(reason) {
    this.#hooks.emit("unauthorized", { reason });
    this.shutdown(
      ClientErrorCode.UNAUTHORIZED,
      `unauthorized: ${reason}`,
      undefined,
      CloseCode.UNAUTHORIZED,
    );
  }

  #watchNetwork() {
    if (!this.#options.watchNetwork) return;
    this.#unwatchNetwork = watchNetwork(
      () => this.drop(),
      () => this.#reconnectNow(),
    );
  }

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
      this.#keepalive.heard(); // any frame proves the connection is alive
      this.#hooks.onFrame(item);
    }
  }

  /**
   * A frame that cannot be read may have held an event: going on would leave a
   * silent gap, so the client stops, loudly.
   * @param {string} why
   */
  #badFrame(why) {
    const message = `the server sent a frame that cannot be read: ${why}`;
    this.#hooks.emit("error", new AgentcastError(ClientErrorCode.BAD_FRAME, message));
    this.shutdown(ClientErrorCode.BAD_FRAME, message);
  }
}
