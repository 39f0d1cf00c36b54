/**
 * requests.js — the client's request bookkeeping: ids, the requests waiting for
 * their reply (with their timeouts), and the outbox of frames queued while no
 * connection is open. It sends nothing itself; client.js does.
 *
 * @module requests
 */

/**
 * @typedef {object} Timers  `setTimeout`/`clearTimeout`, injectable for tests
 * @property {(fn: () => void, ms: number) => any} set
 * @property {(handle: any) => void} clear  ignores null and undefined
 */

/**
 * @typedef {object} PendingRequest
 * @property {string} type              the request's frame type
 * @property {string} [threadId]        for `subscribe`
 * @property {WebSocket|null} socket    the socket it was sent on (null: still queued)
 * @property {(v: any) => void} resolve
 * @property {(e: Error) => void} reject
 * @property {any} timer
 */

/** Requests waiting for their reply, by id, and the frames still to send. */
export class RequestTable {
  /** @type {Map<string, PendingRequest>} */
  #pending = new Map();
  /** Frames to send once connected. @type {Record<string, any>[]} */
  #outbox = [];
  #nextId = 0;
  /** @type {Timers} */
  #timers;

  /** @param {Timers} timers */
  constructor(timers) {
    this.#timers = timers;
  }

  /** A new request id (`c1`, `c2`, …). */
  newId() {
    this.#nextId += 1;
    return `c${this.#nextId}`;
  }

  /**
   * @param {string} id
   * @returns {PendingRequest|undefined}
   */
  get(id) {
    return this.#pending.get(id);
  }

  /**
   * @param {string} id
   * @param {PendingRequest} request
   */
  add(id, request) {
    this.#pending.set(id, request);
  }

  /** @param {string} id */
  delete(id) {
    this.#pending.delete(id);
  }

  /** @param {Record<string, any>} frame  a frame with its `id`, to send once connected */
  queue(frame) {
    this.#outbox.push(frame);
  }

  /**
   * Empty the outbox: the frames whose request still waits (the others timed
   * out meanwhile), each now marked as sent on `socket`.
   * @param {WebSocket|null} socket
   * @returns {Record<string, any>[]}
   */
  takeQueued(socket) {
    const frames = [];
    for (const frame of this.#outbox.splice(0)) {
      const pending = this.#pending.get(frame.id);
      if (!pending) continue; // timed out meanwhile
      pending.socket = socket;
      frames.push(frame);
    }
    return frames;
  }

  /**
   * Resolve or reject the request `ref`; false if there is none.
   * @param {string|undefined} ref
   * @param {unknown} value
   * @param {Error} [error]
   */
  settle(ref, value, error) {
    if (!ref) return false;
    const pending = this.#pending.get(ref);
    if (!pending) return false;
    this.#pending.delete(ref);
    this.#timers.clear(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve(value);
    return true;
  }

  /**
   * The connection was lost: every request sent on it is dropped, and all but
   * `subscribe`s (which are renewed) are rejected with `makeError(id)`. Queued
   * requests stay, to be sent on the next socket.
   * @param {(id: string) => Error} makeError
   */
  failSent(makeError) {
    for (const [id, pending] of this.#pending) {
      if (pending.socket === null) continue; // still queued, sent on the next socket
      this.#pending.delete(id);
      this.#timers.clear(pending.timer);
      if (pending.type === "subscribe") continue;
      pending.reject(makeError(id));
    }
  }

  /**
   * The client is closed: every request but `subscribe`s is rejected with
   * `makeError()`, and the outbox is emptied.
   * @param {() => Error} makeError
   */
  rejectAll(makeError) {
    for (const pending of this.#pending.values()) {
      this.#timers.clear(pending.timer);
      if (pending.type !== "subscribe") pending.reject(makeError());
    }
    this.#pending.clear();
    this.#outbox = [];
  }
}
