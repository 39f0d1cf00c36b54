/**
 * protocol.js — the wire contract v1 as data: the subprotocol name, close codes,
 * error codes (the server's and the client's own), connection states, event and
 * control frame types, the typedefs of what the server sends, and the checks
 * that decide whether a decoded frame can be read.
 *
 * No behaviour lives here; import it through `agentcast.js`, the public entry point.
 *
 * @module protocol
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
  TOO_MANY_CONNECTIONS: 4029,
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

/** @typedef {typeof ConnectionState[keyof typeof ConnectionState]} ConnectionStateValue */

/** Every event type of the envelope. */
export const EVENT_TYPES = Object.freeze([
  "agent_started",
  "agent_thinking",
  "tool_executing",
  "tool_completed",
  "text_delta",
  "thinking_delta",
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
 *   |"thinking_delta"|"progress"|"agent_completed"|"agent_error"|"agent_cancelled"|"custom"}
 *   EventType
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
 * Whether a decoded frame is an event: events carry `v` and `seq`, control frames neither.
 * @param {Record<string, any>} frame
 */
export function isEvent(frame) {
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
export function frameProblem(frame) {
  if (!frame || typeof frame !== "object") return "neither an object nor an array";
  const f = /** @type {Record<string, any>} */ (frame);
  if (isEvent(f)) return eventProblem(f);
  if (!CONTROL_TYPES.includes(f.type)) return `an unknown frame type ${JSON.stringify(f.type)}`;
  return "";
}
