/**
 * How a failure reaches the user: the notice above the timeline, the words
 * for each error code, and telling a refused token apart from other errors
 * (that one signs the user out instead).
 *
 * @module page-notice
 */

import { AgentcastError } from "./agentcast.js";
import { ui } from "./page-state.js";

/** @type {Record<string, string>} */
const ERROR_TEXT = {
  run_active: "A run is still active in this thread. Stop it or wait for it to finish.",
  limit_exceeded: "Too many runs are waiting. Try again when some have finished.",
  rate_limited: "Slow down a little and try again.",
  unavailable: "The server is not accepting runs right now.",
  not_found: "Not found — it does not exist, or it is not yours.",
  disconnected: "The connection dropped before the server answered. Check the thread and retry.",
  timeout: "The server did not answer in time.",
};

/** @param {string} text */
export function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

export function hideNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

/** @param {unknown} error */
export function isUnauthorized(error) {
  return error instanceof AgentcastError && (error.status === 401 || error.code === "unauthorized");
}

/** @param {unknown} error */
export function describe(error) {
  if (error instanceof AgentcastError) return ERROR_TEXT[error.code] ?? error.message;
  return error instanceof Error ? error.message : String(error);
}
