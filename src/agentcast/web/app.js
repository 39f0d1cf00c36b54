/**
 * The agentcast web page: sign in, threads, agents, the live run timeline.
 *
 * Opening a thread loads its history from `GET /v1/threads/{id}/events`, then
 * subscribes from the last seq shown; the client drops anything at or below
 * it and the timeline ignores a seq it already shows, so a reload or a dropped
 * connection mid-run continues exactly where the page was. `resync` (the
 * server could not resume) reloads the thread from its history.
 *
 * Every server URL is built from the page's own location (see `BASE_URL`; the
 * assets are `static/…`), so the page also works when agentcast is mounted under
 * a path prefix: the page at `/chat/` talks to `/chat/v1/…` and `/chat/v1/ws`.
 *
 * For tests and debugging, `window.__agentcast` exposes the client, the
 * connection states seen so far and `dropConnection()`.
 *
 * This module is the page's entry point (index.html loads it): it starts the
 * client once signed in and routes its events. The parts of the page are
 * page-signin.js, page-threads.js (the thread on screen and the sidebar),
 * page-composer.js (agents and sending), page-timeline.js (the timeline and
 * its stop controls) and page-notice.js, sharing page-state.js.
 *
 * @module app
 */

import { AgentcastClient, TERMINAL_TYPES } from "./agentcast.js";
import { loadAgents } from "./page-composer.js";
import { describe, isUnauthorized, showNotice } from "./page-notice.js";
import { onSignin, readToken, showSignin, signOut } from "./page-signin.js";
import { page, ui } from "./page-state.js";
import { loadThreads, newThread, openThread, scheduleThreadsRefresh, setTitle } from "./page-threads.js";
import { timeline } from "./page-timeline.js";

/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */

/**
 * The server's base URL: the directory the page was served from, without its
 * trailing slash (`http://host` at `/`, `http://host/chat` at `/chat/`).
 */
const BASE_URL = new URL(".", document.baseURI).href.replace(/\/+$/, "");

/** @type {Record<string, string>} */
const STATE_LABEL = {
  idle: "Offline",
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  resumed: "Resumed",
  closed: "Offline",
};

/** What tests and curious developers can reach from the console. */
const debug = {
  /** @type {string[]} every connection state, in order */
  states: [],
  get client() {
    return page.client;
  },
  get threadId() {
    return page.threadId;
  },
  timeline,
  dropConnection: () => page.client?.dropConnection(),
};
Object.defineProperty(window, "__agentcast", { value: debug });

/** @param {string} token */
async function start(token) {
  page.token = token;
  const client = new AgentcastClient({
    url: BASE_URL,
    token: () => page.token ?? "",
    auth: "ticket",
    batch: true,
  });
  page.client = client;
  client.on("state", ({ state }) => {
    debug.states.push(state);
    ui.conn.dataset.state = state;
    ui.connLabel.textContent = STATE_LABEL[state] ?? state;
  });
  client.on("connected", (info) => {
    ui.user.textContent = info.user_id;
  });
  client.on("event", onEvent);
  client.on("resync", ({ threadId }) => {
    if (threadId === page.threadId) void openThread(threadId);
  });
  client.on("unauthorized", () => signOut("Your session has expired or the token was refused."));
  client.on("error", (error) => showNotice(describe(error)));

  try {
    await loadAgents(); // proves the token before anything else
  } catch (error) {
    if (isUnauthorized(error)) {
      signOut("This token was refused. Paste a valid one.");
      return;
    }
    showNotice(describe(error));
  }
  ui.signin.hidden = true;
  ui.app.hidden = false;
  client.connect().catch(() => {});
  void loadThreads();
  const threadId = new URLSearchParams(location.search).get("thread");
  if (threadId) await openThread(threadId);
  else newThread();
  ui.message.focus();
}

/** @param {AgentEvent} event */
function onEvent(event) {
  if (event.thread_id !== page.threadId) {
    if (page.starting > 0) {
      // Maybe the thread a new run is about to be accepted in: keep it.
      const list = page.stray.get(event.thread_id) ?? [];
      if (list.length < 5000) list.push(event);
      page.stray.set(event.thread_id, list);
    }
    return;
  }
  if (page.loading) page.buffer.push(event);
  else timeline.add(event);
  if (event.parent_run_id === null) {
    if (event.type === "agent_started") setTitle();
    if (event.type === "agent_started" || TERMINAL_TYPES.includes(event.type)) {
      scheduleThreadsRefresh();
    }
  }
}

onSignin((token) => void start(token));

const token = readToken();
if (token) void start(token);
else showSignin();
