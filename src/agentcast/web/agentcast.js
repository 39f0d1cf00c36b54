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
 * This file is the public entry point and only re-exports; the code lives in
 * one module per concern next to it:
 * - protocol.js — wire constants (close codes, error codes, event types, …),
 *   the typedefs of what the server sends, and frame checks;
 * - errors.js — `AgentcastError`;
 * - backoff.js — `backoffDelay`;
 * - emitter.js — `notify`, the listener helper shared with sse.js;
 * - client.js — `AgentcastClient`, which uses requests.js (request
 *   bookkeeping), threads.js (thread positions), keepalive.js (ping and
 *   online/offline) and http.js (token, URLs, HTTP requests).
 *
 * @module agentcast
 */

export {
  ClientErrorCode,
  CloseCode,
  ConnectionState,
  CONTROL_TYPES,
  ErrorCode,
  EVENT_TYPES,
  eventProblem,
  PROTOCOL,
  TERMINAL_TYPES,
} from "./protocol.js";
export { AgentcastError } from "./errors.js";
export { backoffDelay } from "./backoff.js";
export { notify } from "./emitter.js";
export { AgentcastClient } from "./client.js";

/** @typedef {import("./protocol.js").EventType} EventType */
/** @typedef {import("./protocol.js").AgentEvent} AgentEvent */
/** @typedef {import("./protocol.js").Position} Position */
/** @typedef {import("./protocol.js").ConnectionInfo} ConnectionInfo */
/** @typedef {import("./protocol.js").RunAccepted} RunAccepted */
/** @typedef {import("./protocol.js").Subscribed} Subscribed */
/** @typedef {import("./protocol.js").CancelAccepted} CancelAccepted */
/** @typedef {import("./protocol.js").StateChange} StateChange */
/** @typedef {import("./protocol.js").Resync} Resync */
/** @typedef {import("./backoff.js").BackoffOptions} BackoffOptions */
/** @typedef {import("./threads.js").StorageLike} StorageLike */
/** @typedef {import("./client.js").ClientOptions} ClientOptions */
