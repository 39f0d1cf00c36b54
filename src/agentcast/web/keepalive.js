/**
 * keepalive.js — knowing whether the link is alive: the ping/pong keepalive
 * (nothing heard for a whole interval means the link is dead) and, in a
 * browser, the `online`/`offline` events.
 *
 * @module keepalive
 */

/** @typedef {import("./requests.js").Timers} Timers */

/** Pings every interval; a whole interval without any frame calls `onDead`. */
export class Keepalive {
  /** @type {Timers} */
  #timers;
  /** @type {() => void} */
  #sendPing;
  /** @type {() => void} */
  #onDead;
  #timer = null;
  #awaitingPong = false;

  /**
   * @param {Timers} timers
   * @param {{sendPing: () => void, onDead: () => void}} hooks
   */
  constructor(timers, { sendPing, onDead }) {
    this.#timers = timers;
    this.#sendPing = sendPing;
    this.#onDead = onDead;
  }

  /** @param {number} interval  milliseconds; 0 disables */
  start(interval) {
    this.stop();
    if (!interval) return;
    this.#awaitingPong = false;
    const tick = () => {
      if (this.#awaitingPong) {
        this.#onDead(); // nothing heard for a whole interval: the link is dead
        return;
      }
      this.#awaitingPong = true;
      this.#sendPing();
      this.#timer = this.#timers.set(tick, interval);
    };
    this.#timer = this.#timers.set(tick, interval);
  }

  stop() {
    if (this.#timer !== null) this.#timers.clear(this.#timer);
    this.#timer = null;
  }

  /** A frame arrived: any frame proves the connection is alive. */
  heard() {
    this.#awaitingPong = false;
  }
}

/**
 * In a browser, call `offline` and `online` on those events of the global scope.
 * @param {() => void} offline
 * @param {() => void} online
 * @returns {(() => void)|null}  stops watching; null where there is nothing to watch
 */
export function watchNetwork(offline, online) {
  const target = globalThis;
  if (typeof target.addEventListener !== "function") return null;
  if (typeof globalThis.navigator === "undefined" || !("onLine" in globalThis.navigator)) return null;
  target.addEventListener("offline", offline);
  target.addEventListener("online", online);
  return () => {
    globalThis.removeEventListener("offline", offline);
    globalThis.removeEventListener("online", online);
  };
}
