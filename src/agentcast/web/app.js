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
 * @module app
 */

import { AgentcastClient, AgentcastError, TERMINAL_TYPES } from "./agentcast.js";
import { el, Timeline } from "./timeline.js";

/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */

/**
 * The server's base URL: the directory the page was served from, without its
 * trailing slash (`http://host` at `/`, `http://host/chat` at `/chat/`).
 */
const BASE_URL = new URL(".", document.baseURI).href.replace(/\/+$/, "");
const TOKEN_KEY = "agentcast.token";
const AGENT_KEY = "agentcast.agent";
const HISTORY_PAGE = 1000;

const SUGGESTIONS = [
  "How much did we spend on AI last month, and how can we save?",
  "Which team spends the most, and on which models?",
  "How much would prompt caching save team search over the last 2 weeks?",
];

/** @type {Record<string, string>} */
const STATE_LABEL = {
  idle: "Offline",
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  resumed: "Resumed",
  closed: "Offline",
};

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

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

const ui = {
  signin: $("signin"),
  signinForm: /** @type {HTMLFormElement} */ ($("signin-form")),
  tokenInput: /** @type {HTMLTextAreaElement} */ ($("token-input")),
  signinError: $("signin-error"),
  app: $("app"),
  conn: $("conn"),
  connLabel: /** @type {HTMLElement} */ ($("conn").querySelector(".label")),
  user: $("user-id"),
  signout: $("signout"),
  menu: $("menu"),
  sidebar: $("sidebar"),
  newThread: $("new-thread"),
  threads: $("threads"),
  title: $("thread-title"),
  notice: $("notice"),
  timeline: $("timeline"),
  empty: $("empty"),
  suggestions: $("suggestions"),
  composer: /** @type {HTMLFormElement} */ ($("composer")),
  agent: /** @type {HTMLSelectElement} */ ($("agent")),
  message: /** @type {HTMLTextAreaElement} */ ($("message")),
  send: /** @type {HTMLButtonElement} */ ($("send")),
  stop: /** @type {HTMLButtonElement} */ ($("stop")),
  hint: $("agent-hint"),
};

/** The page's state. */
const page = {
  /** @type {string|null} */
  token: null,
  /** @type {AgentcastClient|null} */
  client: null,
  /** @type {string|null} the thread on screen (null: a new one) */
  threadId: null,
  /** Bumped on every thread switch, so late answers for the old one are ignored. */
  view: 0,
  /** The thread asked for does not exist (or is someone else's). */
  missing: false,
  /** History is loading: live events wait in `buffer`. */
  loading: false,
  /** @type {AgentEvent[]} */
  buffer: [],
  /** Events of threads not on screen, kept while a new thread's id is awaited. */
  /** @type {Map<string, AgentEvent[]>} */
  stray: new Map(),
  starting: 0,
  /** @type {{thread_id: string, title: string, last_agent: string|null, updated_at: number}[]} */
  threads: [],
  /** @type {{name: string, description: string}[]} */
  agents: [],
};

const timeline = new Timeline(ui.timeline, {
  onStop: (runId) => void stopRun(runId),
  onChange: () => updateComposer(),
});

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

// Sign in ----------------------------------------------------------------------------

function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    // Keep the token out of the address bar, history and bookmarks.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return fromUrl ?? localStorage.getItem(TOKEN_KEY);
}

/** @param {string} [message] */
function showSignin(message) {
  ui.app.hidden = true;
  ui.signin.hidden = false;
  ui.signinError.textContent = message ?? "";
  ui.signinError.hidden = !message;
  ui.tokenInput.focus();
}

/** @param {string} [message] */
function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  page.client?.close();
  page.client = null;
  page.token = null;
  showSignin(message);
}

ui.signinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const token = ui.tokenInput.value.trim().replace(/^Bearer\s+/i, "");
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token);
  ui.tokenInput.value = "";
  void start(token);
});

ui.signout.addEventListener("click", () => signOut());

// Connection ---------------------------------------------------------------------------

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

// Threads ----------------------------------------------------------------------------

async function loadThreads() {
  if (!page.client) return;
  try {
    const body = await page.client.http("/v1/threads?limit=100");
    page.threads = body?.threads ?? [];
    renderThreads();
  } catch (error) {
    if (isUnauthorized(error)) signOut("Your session has expired.");
  }
}

let refreshTimer = 0;
function scheduleThreadsRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = window.setTimeout(() => void loadThreads(), 300);
}

function renderThreads() {
  const items = page.threads.map((thread) => {
    const current = thread.thread_id === page.threadId;
    const button = el(
      "button.thread",
      {
        type: "button",
        "data-thread-id": thread.thread_id,
        "aria-current": current ? "page" : null,
      },
      el("span.thread-title", { text: thread.title || "Untitled thread" }),
      el(
        "span.thread-meta",
        { text: [thread.last_agent, relativeTime(thread.updated_at)].filter(Boolean).join(" · ") },
      ),
    );
    button.addEventListener("click", () => {
      closeMenu();
      void openThread(thread.thread_id);
    });
    return el("li", {}, button);
  });
  if (!items.length) items.push(el("li.threads-empty", { text: "No threads yet." }));
  ui.threads.replaceChildren(...items);
  setTitle();
}

/**
 * Show a thread: its history first, then live events.
 * @param {string} threadId
 */
async function openThread(threadId) {
  const client = page.client;
  if (!client) return;
  const previous = page.threadId;
  if (previous && previous !== threadId) void client.unsubscribe(previous).catch(() => {});
  const view = ++page.view;
  page.threadId = threadId;
  page.missing = false;
  page.loading = true;
  page.buffer = [];
  hideNotice();
  timeline.reset();
  ui.empty.hidden = true;
  setUrl(threadId);
  renderThreads();
  setTitle();
  try {
    let epoch = null;
    let after = 0;
    for (;;) {
      const body = await client.http(
        `/v1/threads/${encodeURIComponent(threadId)}/events?after_seq=${after}&limit=${HISTORY_PAGE}`,
      );
      if (view !== page.view) return;
      epoch = body.epoch ?? epoch;
      for (const event of body.events ?? []) timeline.add(event);
      const last = body.events?.at(-1)?.seq;
      if (!last || body.events.length < HISTORY_PAGE) break;
      after = last;
    }
    // Live from the last seq shown: nothing missed, nothing twice.
    const subscribed = client.subscribe(threadId, { afterSeq: timeline.lastSeq, epoch });
    for (const event of page.buffer.splice(0)) timeline.add(event);
    page.loading = false;
    await subscribed;
  } catch (error) {
    if (view !== page.view) return;
    page.loading = false;
    if (isUnauthorized(error)) {
      signOut("Your session has expired.");
      return;
    }
    if (error instanceof AgentcastError && error.code === "not_found") {
      page.threadId = null;
      page.missing = true;
      setUrl(null);
      showNotice("This thread does not exist, or it belongs to someone else.");
      renderThreads();
      return;
    }
    showNotice(describe(error));
  } finally {
    if (view === page.view) {
      setTitle();
      updateComposer();
    }
  }
}

function newThread() {
  const client = page.client;
  if (page.threadId && client) void client.unsubscribe(page.threadId).catch(() => {});
  page.view += 1;
  page.threadId = null;
  page.missing = false;
  page.loading = false;
  page.buffer = [];
  timeline.reset();
  hideNotice();
  setUrl(null);
  setTitle();
  renderThreads();
  ui.empty.hidden = false;
  updateComposer();
  ui.message.focus();
}

ui.newThread.addEventListener("click", () => {
  closeMenu();
  newThread();
});

function setTitle() {
  if (page.missing) {
    ui.title.textContent = "Thread not found";
    document.title = "agentcast";
    return;
  }
  const thread = page.threads.find((t) => t.thread_id === page.threadId);
  const title = page.threadId ? thread?.title || timeline.firstMessage() || "Thread" : "New thread";
  ui.title.textContent = title;
  document.title = page.threadId ? `${title} — agentcast` : "agentcast";
}

/**
 * Put the thread on screen in the address (`?thread=`), so a reload or a copied link reopens it.
 * @param {string|null} threadId
 */
function setUrl(threadId) {
  const url = new URL(location.href);
  if (threadId) url.searchParams.set("thread", threadId);
  else url.searchParams.delete("thread");
  url.hash = "";
  if (url.href !== location.href) history.replaceState(null, "", url);
}

// Agents ------------------------------------------------------------------------------

async function loadAgents() {
  if (!page.client) return;
  const body = await page.client.http("/v1/agents");
  page.agents = Array.isArray(body) ? body : (body?.agents ?? []);
  const preferred = localStorage.getItem(AGENT_KEY) ?? "demo";
  ui.agent.replaceChildren(
    ...page.agents.map((agent) => el("option", { value: agent.name, text: agent.name })),
  );
  if (page.agents.some((a) => a.name === preferred)) ui.agent.value = preferred;
  showAgentHint();
}

function showAgentHint() {
  const agent = page.agents.find((a) => a.name === ui.agent.value);
  ui.hint.textContent = (agent?.description ?? "").split("\n")[0];
  ui.suggestions.hidden = ui.agent.value !== "demo";
}

ui.agent.addEventListener("change", () => {
  localStorage.setItem(AGENT_KEY, ui.agent.value);
  showAgentHint();
});

// Sending and stopping ------------------------------------------------------------------

async function send() {
  const client = page.client;
  const message = ui.message.value.trim();
  if (!client || !message) return;
  hideNotice();
  const threadId = page.threadId;
  const view = page.view;
  ui.send.disabled = true;
  page.starting += 1;
  try {
    const accepted = await client.startAgent({
      agent: ui.agent.value,
      message,
      ...(threadId ? { threadId, onActive: "enqueue" } : {}),
    });
    ui.message.value = "";
    autosize();
    if (!threadId && view === page.view) adoptNewThread(accepted.thread_id);
    scheduleThreadsRefresh();
  } catch (error) {
    showNotice(describe(error));
  } finally {
    page.starting -= 1;
    if (page.starting === 0) page.stray.clear();
    ui.send.disabled = false;
    ui.message.focus();
  }
}

/**
 * The first run of a new thread was accepted: show that thread.
 * @param {string} threadId
 */
function adoptNewThread(threadId) {
  page.threadId = threadId;
  ui.empty.hidden = true;
  setUrl(threadId);
  for (const event of page.stray.get(threadId) ?? []) timeline.add(event);
  page.stray.delete(threadId);
  setTitle();
}

/** @param {string} runId */
async function stopRun(runId) {
  if (!page.client) return;
  timeline.markStopping(runId);
  try {
    await page.client.cancel({ runId });
  } catch (error) {
    timeline.unmarkStopping(runId);
    showNotice(describe(error));
  }
}

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  void send();
});

ui.message.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    void send();
  }
});

ui.message.addEventListener("input", autosize);

ui.stop.addEventListener("click", () => {
  for (const run of timeline.activeRuns()) void stopRun(run.id);
});

ui.suggestions.addEventListener("click", (e) => {
  const target = /** @type {HTMLElement} */ (e.target);
  const button = target.closest("button[data-suggestion]");
  if (!(button instanceof HTMLButtonElement)) return;
  ui.message.value = button.dataset.suggestion ?? "";
  autosize();
  ui.message.focus();
});

function updateComposer() {
  const active = timeline.activeRuns().length > 0;
  ui.stop.hidden = !active;
  ui.composer.dataset.active = String(active);
}

function autosize() {
  ui.message.style.height = "auto";
  ui.message.style.height = `${Math.min(ui.message.scrollHeight, 200)}px`;
}

// Layout helpers ----------------------------------------------------------------------

function closeMenu() {
  ui.sidebar.classList.remove("open");
  ui.menu.setAttribute("aria-expanded", "false");
}

ui.menu.addEventListener("click", () => {
  const open = ui.sidebar.classList.toggle("open");
  ui.menu.setAttribute("aria-expanded", String(open));
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") closeMenu();
});

window.addEventListener("focus", () => {
  if (page.client) scheduleThreadsRefresh();
});

/** @param {string} text */
function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

/** @param {unknown} error */
function isUnauthorized(error) {
  return error instanceof AgentcastError && (error.status === 401 || error.code === "unauthorized");
}

/** @param {unknown} error */
function describe(error) {
  if (error instanceof AgentcastError) return ERROR_TEXT[error.code] ?? error.message;
  return error instanceof Error ? error.message : String(error);
}

/** @param {number} ts UNIX seconds */
function relativeTime(ts) {
  if (!ts) return "";
  const seconds = ts - Date.now() / 1000;
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const steps = /** @type {const} */ ([
    [60, "second"],
    [3600, "minute"],
    [86400, "hour"],
    [604800, "day"],
  ]);
  let unit = "week";
  let size = 604800;
  for (const [limit, name] of steps) {
    if (Math.abs(seconds) < limit) {
      unit = name;
      break;
    }
  }
  size = /** @type {Record<string, number>} */ ({
    second: 1,
    minute: 60,
    hour: 3600,
    day: 86400,
    week: 604800,
  })[unit];
  if (unit === "second") return "just now";
  return format.format(Math.round(seconds / size), /** @type {Intl.RelativeTimeFormatUnit} */ (unit));
}

// Start ---------------------------------------------------------------------------------

ui.suggestions.replaceChildren(
  ...SUGGESTIONS.map((text) =>
    el("li", {}, el("button.suggestion", { type: "button", "data-suggestion": text, text })),
  ),
);

const token = readToken();
if (token) void start(token);
else showSignin();
