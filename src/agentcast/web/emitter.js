/**
 * emitter.js — listener delivery shared by the clients here: {@link notify}
 * calls every listener of a type and keeps one listener's bug from breaking
 * delivery to the others.
 *
 * @module emitter
 */

/**
 * Call every listener of `type` with `payload`. A listener's bug is reported
 * and does not break delivery to the others (shared by the clients here).
 *
 * @param {Map<string, Set<(payload: any) => void>>} listeners
 * @param {string} type
 * @param {unknown} payload
 */
export function notify(listeners, type, payload) {
  for (const listener of [...(listeners.get(type) ?? [])]) {
    try {
      listener(payload);
    } catch (error) {
      if (typeof globalThis.reportError === "function") globalThis.reportError(error);
      else console.error(error);
    }
  }
}
