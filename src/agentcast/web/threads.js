/**
 * threads.js — what the client knows of each thread: the position delivered so
 * far, whether the caller wants it subscribed, and the callers waiting for its
 * `subscribed`; plus saving and loading positions in a `StorageLike`.
 *
 * @module threads
 */

/** @typedef {import("./protocol.js").Position} Position */
/** @typedef {import("./protocol.js").Subscribed} Subscribed */

/**
 * @typedef {object} StorageLike  e.g. `sessionStorage`
 * @property {(key: string) => string|null} getItem
 * @property {(key: string, value: string) => void} setItem
 */

/**
 * One thread: the position delivered so far, whether the caller wants it
 * subscribed, the seqs delivered while it was not (`aside`: they do not move
 * the position) and the callers waiting for its `subscribed`.
 * @typedef {{epoch: string|null, seq: number, wanted: boolean, live: boolean,
 *   aside: Set<number>,
 *   waiters: {resolve: (s: Subscribed) => void, reject: (e: Error) => void}[]}} ThreadEntry
 */

/** Every thread the client knows, by id. */
export class ThreadTable {
  /** @type {Map<string, ThreadEntry>} */
  #threads = new Map();

  /**
   * @param {string} threadId
   * @returns {ThreadEntry|undefined}
   */
  get(threadId) {
    return this.#threads.get(threadId);
  }

  /**
   * The thread's entry, created if new; `position`, if given, is applied.
   * @param {string} threadId
   * @param {Partial<Position>} [position]
   * @returns {ThreadEntry}
   */
  ensure(threadId, position) {
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

  /** @returns {IterableIterator<[string, ThreadEntry]>} */
  entries() {
    return this.#threads.entries();
  }

  /** @returns {IterableIterator<ThreadEntry>} */
  values() {
    return this.#threads.values();
  }

  /** @returns {Record<string, Position>} every known thread's position */
  positions() {
    /** @type {Record<string, Position>} */
    const out = {};
    for (const [id, t] of this.#threads) out[id] = { epoch: t.epoch, seq: t.seq };
    return out;
  }
}

/**
 * @param {{waiters: {reject: (e: Error) => void}[]}} thread
 * @param {Error} error
 */
export function rejectWaiters(thread, error) {
  for (const waiter of thread.waiters.splice(0)) waiter.reject(error);
}

/**
 * @param {StorageLike|undefined} storage
 * @param {string} key
 * @returns {Record<string, Position>}
 */
export function loadPositions(storage, key) {
  if (!storage) return {};
  try {
    const parsed = JSON.parse(storage.getItem(key) ?? "{}");
    return parsed && typeof parsed === "object" ? parsed : {};
  } catch {
    return {};
  }
}

/**
 * @param {StorageLike|undefined} storage
 * @param {string} key
 * @param {Record<string, Position>} positions
 */
export function savePositions(storage, key, positions) {
  if (!storage) return;
  try {
    storage.setItem(key, JSON.stringify(positions));
  } catch {
    /* storage full or unavailable: resume falls back to in-memory positions */
  }
}
