/**
 * http.js — the client's HTTP side: resolving the token, the server's base and
 * WebSocket URLs, and authenticated JSON requests that fail as `AgentcastError`.
 *
 * @module http
 */

import { AgentcastError } from "./errors.js";
import { ClientErrorCode } from "./protocol.js";

/**
 * @param {string|(() => string|Promise<string>)} token  a JWT, or a function returning one
 * @returns {Promise<string>}
 */
export async function resolveToken(token) {
  return typeof token === "function" ? await token() : token;
}

/**
 * The server's base URL without trailing slashes (default: the page's origin).
 * @param {string|undefined} url
 */
export function baseUrl(url) {
  const base = url ?? globalThis.location?.origin;
  if (!base) throw new TypeError("AgentcastClient: url is required outside a browser");
  return base.replace(/\/+$/, "");
}

/**
 * The WebSocket URL: `wsUrl`, or `url` + `/v1/ws` with ws/wss.
 * @param {{url?: string, wsUrl?: string}} options
 */
export function wsUrl(options) {
  if (options.wsUrl) return options.wsUrl;
  return `${baseUrl(options.url).replace(/^http/, "ws")}/v1/ws`;
}

/**
 * Authenticated HTTP request (JSON in, JSON out).
 * @param {{url?: string, token: string|(() => string|Promise<string>), fetch?: typeof fetch}} options
 * @param {string} path  e.g. `/v1/threads`
 * @param {{method?: string, body?: unknown, signal?: AbortSignal}} [init]
 * @returns {Promise<any>}
 */
export async function httpJson(options, path, init = {}) {
  const doFetch = options.fetch ?? globalThis.fetch;
  const token = await resolveToken(options.token);
  const response = await doFetch(baseUrl(options.url) + path, {
    method: init.method ?? "GET",
    headers: {
      Authorization: `Bearer ${token}`,
      ...(init.body !== undefined ? { "Content-Type": "application/json" } : {}),
    },
    body: init.body !== undefined ? JSON.stringify(init.body) : undefined,
    signal: init.signal,
  });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (!response.ok) {
    const code = response.status === 401 ? ClientErrorCode.UNAUTHORIZED : body?.code;
    const message = body?.detail ?? body?.message ?? body?.title ?? response.statusText;
    throw new AgentcastError(code || ClientErrorCode.HTTP, `${response.status} ${message}`, {
      status: response.status,
    });
  }
  return body;
}
