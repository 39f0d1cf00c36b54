/**
 * backoff.js — reconnect delays: exponential backoff with jitter, shared by the
 * WebSocket client (client.js) and the SSE reader (sse.js).
 *
 * @module backoff
 */

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initialDelayMs=250]  the first retry's upper bound
 * @property {number} [maxDelayMs=15000]    the cap
 * @property {number} [factor=2]            growth per attempt
 * @property {number} [jitter=0.5]          0..1: the share of each delay that is random
 */

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
