/**
 * The timeline's step elements for everything but tool calls: thinking,
 * streamed text, progress, how a run ended (answer, returned value, error,
 * cancellation) and events the page has no view for.
 *
 * Each function builds the element of one event, marked with `eventAttrs()`
 * (`data-seq`, `data-type`, `data-run-id`: the one-element-per-event rule of
 * timeline.js); where it goes is the timeline's business.
 *
 * @module timeline-steps
 */

import { el, icon } from "./dom.js";
import { pretty, resultSummary, short } from "./format.js";
import { renderMarkdown } from "./markdown.js";

/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */

/**
 * The attributes that tie an element to its event.
 * @param {AgentEvent} event
 */
export function eventAttrs(event) {
  return { "data-seq": event.seq, "data-type": event.type, "data-run-id": event.run_id };
}

/**
 * @param {AgentEvent} event  agent_thinking
 * @param {Record<string, any>} data
 */
export function thinkingItem(event, data) {
  return el("li.step.thinking", eventAttrs(event), icon("think"), el("span.step-text", { text: data.reasoning ?? "" }));
}

/**
 * A stream of text_deltas: the step and the block their spans go in.
 * @param {string} messageId
 */
export function streamItem(messageId) {
  const block = el("div.stream-text");
  return { item: el("li.step.stream", { "data-message-id": messageId }, icon("answer"), block), block };
}

/**
 * A stream of thinking_deltas (a model's reasoning): one step per message_id,
 * its spans appended to one block as they come.
 * @param {string} messageId
 */
export function thinkingStreamItem(messageId) {
  const block = el("div.stream-thinking");
  const item = el("li.step.thinking.stream", { "data-thinking-id": messageId }, icon("think"), block);
  return { item, block };
}

/**
 * @param {AgentEvent} event  text_delta or thinking_delta
 * @param {Record<string, any>} data
 */
export function textSpan(event, data) {
  return el("span", { ...eventAttrs(event), text: data.delta ?? "" });
}

/**
 * @param {AgentEvent} event  progress
 * @param {Record<string, any>} data
 * @param {number} pct  its percentage
 */
export function progressItem(event, data, pct) {
  return el(
    "li.step.progress",
    eventAttrs(event),
    icon("progress"),
    el("span.step-text", { text: `${Math.round(pct)}%${data.message ? ` — ${data.message}` : ""}` }),
  );
}

/**
 * How a run ended: a top-level run's answer (Markdown), the value a sub-run
 * returned, an error or a cancellation.
 * @param {AgentEvent} event  agent_completed, agent_error or agent_cancelled
 * @param {Record<string, any>} data
 * @param {boolean} topLevel
 */
export function endItem(event, data, topLevel) {
  if (event.type === "agent_completed") {
    const answer = String(data.final_response ?? "");
    if (topLevel) {
      const item = el("li.step.final", eventAttrs(event));
      const body = el("div.answer");
      body.append(renderMarkdown(answer));
      item.append(el("div.final-label", {}, icon("check"), el("span", { text: "Answer" })), body);
      return item;
    }
    return el(
      "li.step.returned",
      eventAttrs(event),
      el(
        "details",
        {},
        el("summary", {}, icon("check"), el("span", { text: "Returned " }), el("span.result-summary", { text: resultSummary(answer) })),
        el("pre.returned-text", { text: pretty(answer) }),
      ),
    );
  }
  if (event.type === "agent_error") {
    return el(
      "li.step.failure",
      { ...eventAttrs(event), role: topLevel ? "alert" : null },
      icon("cross"),
      el("div.step-text", {}, el("strong", { text: data.error_type ? `${data.error_type}: ` : "Error: " }), el("span", { text: data.message ?? "" })),
    );
  }
  return el(
    "li.step.cancelled",
    eventAttrs(event),
    icon("stop"),
    el("span.step-text", { text: `Cancelled${data.reason ? ` — ${data.reason}` : ""}` }),
  );
}

/**
 * An event the timeline has no view for (or could not render): its type, or a
 * custom event's name and value.
 * @param {AgentEvent} event
 */
export function customItem(event) {
  return el(
    "li.step.custom",
    eventAttrs(event),
    icon("custom"),
    el("span.step-text", {
      text: event.type === "custom" ? `${event.data?.name}: ${short(event.data?.value)}` : event.type,
    }),
  );
}
