/**
 * What the modules of the page share: `ui`, the page's elements (looked up
 * once, by id, from index.html), and `page`, its state (the signed-in client,
 * the thread on screen, the thread list, the agents). Every page module reads
 * and writes these two objects and nothing else global, so here is all of it.
 *
 * @module page-state
 */

/** @typedef {import("./agentcast.js").AgentcastClient} AgentcastClient */
/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

export const ui = {
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
export const page = {
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
