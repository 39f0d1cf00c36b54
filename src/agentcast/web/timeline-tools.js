/**
 * The timeline's tool cards. A `tool_executing` opens a card (name, parameters,
 * spinner); its `tool_completed` fills in the same card (status, duration and
 * the result or error) as a child element of its own, so the card shows the
 * whole call while each event still has exactly one element.
 *
 * @module timeline-tools
 */

import { el, icon } from "./dom.js";
import { formatDuration, pretty, resultSummary, short } from "./format.js";
import { eventAttrs } from "./timeline-steps.js";

/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */

/**
 * The card of a running tool call.
 * @param {AgentEvent} event  tool_executing
 * @param {Record<string, any>} data
 */
export function toolCard(event, data) {
  const params = el("dl.tool-params");
  for (const [key, value] of Object.entries(data.parameters ?? {})) {
    params.append(el("div", {}, el("dt", { text: key }), el("dd", { text: short(value) })));
  }
  return el(
    "li.step.tool",
    { ...eventAttrs(event), "data-status": "running", "data-tool-call-id": data.tool_call_id },
    el(
      "div.tool-head",
      {},
      icon("tool"),
      el("span.tool-name", { text: data.tool_name ?? "tool" }),
      el("span.spinner", { role: "status", "aria-label": "running" }),
    ),
    params.childElementCount ? params : null,
  );
}

/**
 * A card for a completed call whose tool_executing is not shown (it was
 * trimmed from history).
 * @param {Record<string, any>} data  the tool_completed's
 */
export function orphanToolCard(data) {
  return el(
    "li.step.tool",
    { "data-tool-call-id": data.tool_call_id },
    el("div.tool-head", {}, icon("tool"), el("span.tool-name", { text: data.tool_name ?? "tool" })),
  );
}

/**
 * Fill in a card with how its call ended.
 * @param {HTMLElement} card
 * @param {AgentEvent} event  tool_completed
 * @param {Record<string, any>} data
 */
export function completeToolCard(card, event, data) {
  const status = data.status ?? "success";
  card.dataset.status = status;
  card.querySelector(".spinner")?.remove();
  const head = card.querySelector(".tool-head");
  head?.append(
    el(
      "span.tool-status",
      { "data-status": status },
      icon(status === "success" ? "check" : "cross"),
      el("span", { text: status === "success" ? "done" : status }),
    ),
    el("span.tool-duration", { text: formatDuration(data.duration_ms) }),
  );
  const result = el("div.tool-result", { ...eventAttrs(event), "data-status": status });
  if (status === "success") {
    const details = el(
      "details",
      {},
      el("summary", {}, el("span.result-label", { text: "Result" }), el("span.result-summary", { text: resultSummary(data.results) })),
      el("pre", { text: pretty(data.results) }),
    );
    result.append(details);
  } else {
    result.append(el("div.tool-error", { text: data.error ?? status }));
  }
  card.append(result);
}
