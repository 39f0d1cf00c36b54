/**
 * Which thread is on screen, and the sidebar that lists them. Opening a thread
 * shows its history from `GET /v1/threads/{id}/events`, then subscribes from
 * the last seq shown (live events that arrive meanwhile wait in `page.buffer`);
 * the thread is kept in the address (`?thread=`) and named in the title. The
 * list is reloaded from `GET /v1/threads` when a run starts or ends and when
 * the window regains focus. On narrow screens the sidebar is a menu.
 *
 * @module page-threads
 */

import { AgentcastError } from "./agentcast.js";
import { el } from "./dom.js";
import { relativeTime } from "./format.js";
import { describe, hideNotice, isUnauthorized, showNotice } from "./page-notice.js";
import { signOut } from "./page-signin.js";
import { page, ui } from "./page-state.js";
import { timeline, updateComposer } from "./page-timeline.js";

const HISTORY_PAGE = 1000;

// The thread list ------------------------------------------------------------------------

export async function loadThreads() {
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
export function scheduleThreadsRefresh() {
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

window.addEventListener("focus", () => {
  if (page.client) scheduleThreadsRefresh();
});

// The thread on screen -------------------------------------------------------------------

/**
 * Show a thread: its history first, then live events.
 * @param {string} threadId
 */
export async function openThread(threadId) {
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
      // Pages are bounded in bytes too: a short page is not the end, a null cursor is.
      const next = body.next_after_seq;
      if (next === null || next === undefined || !body.events?.length) break;
      after = next;
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

export function newThread() {
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

/**
 * The first run of a new thread was accepted: show that thread.
 * @param {string} threadId
 */
export function adoptNewThread(threadId) {
  page.threadId = threadId;
  ui.empty.hidden = true;
  setUrl(threadId);
  for (const event of page.stray.get(threadId) ?? []) timeline.add(event);
  page.stray.delete(threadId);
  setTitle();
}

export function setTitle() {
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

// The sidebar as a menu (narrow screens) -------------------------------------------------

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
