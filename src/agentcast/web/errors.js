/**
 * errors.js — {@link AgentcastError}, the one error type the client rejects
 * requests with and emits as `error` (server error frames, HTTP problems and
 * the client's own failures, see `ClientErrorCode` in protocol.js).
 *
 * @module errors
 */

/** An error reply from the server, or a failure of the client itself. */
export class AgentcastError extends Error {
  /**
   * @param {string} code     the server's error code (`not_found`, `run_active`, …) or a
   *   {@link ClientErrorCode}
   * @param {string} message
   * @param {{ref?: string|null, status?: number}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = "AgentcastError";
    /** @type {string} */
    this.code = code;
    /** @type {string|null} */
    this.ref = details.ref ?? null;
    /** @type {number|undefined} HTTP status, for `http_error` and `unauthorized` */
    this.status = details.status;
  }
}
