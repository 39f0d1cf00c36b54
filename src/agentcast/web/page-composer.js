/**
 * The composer: the agent picker (the agents from `GET /v1/agents`, the last
 * one chosen kept in `localStorage`), the message box with its example
 * questions, and sending, which starts a run in the thread on screen or, from
 * a new thread, in the thread the server creates for it.
 *
 * @module page-composer
 */

import { el } from "./dom.js";
import { describe, hideNotice, showNotice } from "./page-notice.js";
import { page, ui } from "./page-state.js";
import { adoptNewThread, scheduleThreadsRefresh } from "./page-threads.js";

const AGENT_KEY = "agentcast.agent";

const SUGGESTIONS = [
  "How much did we spend on AI last month, and how can we save?",
  "Which team spends the most, and on which models?",
  "How much would prompt caching save team search over the last 2 weeks?",
];

// Agents ---------------------------------------------------------------------------------

export async function loadAgents() {
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

// Sending --------------------------------------------------------------------------------

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

// The message box ------------------------------------------------------------------------

function autosize() {
  ui.message.style.height = "auto";
  ui.message.style.height = `${Math.min(ui.message.scrollHeight, 200)}px`;
}

ui.message.addEventListener("input", autosize);

ui.suggestions.addEventListener("click", (e) => {
  const target = /** @type {HTMLElement} */ (e.target);
  const button = target.closest("button[data-suggestion]");
  if (!(button instanceof HTMLButtonElement)) return;
  ui.message.value = button.dataset.suggestion ?? "";
  autosize();
  ui.message.focus();
});

ui.suggestions.replaceChildren(
  ...SUGGESTIONS.map((text) =>
    el("li", {}, el("button.suggestion", { type: "button", "data-suggestion": text, text })),
  ),
);
