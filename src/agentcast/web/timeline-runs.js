/**
 * The frame of each run in the timeline: a top-level run's `<section>` (the
 * user's message, a header with agent, status, time, duration and stop button,
 * a progress bar and its steps) or a sub-run's item nested in its parent's
 * steps; and the changes to that frame as the run is stopped and ends.
 *
 * What goes inside the steps is timeline-steps.js and timeline-tools.js; which
 * run an event belongs to is timeline.js.
 *
 * @module timeline-runs
 */

import { el, icon } from "./dom.js";
import { clock, formatDuration } from "./format.js";
import { eventAttrs } from "./timeline-steps.js";

/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */

/**
 * @typedef {object} RunView
 * @property {string} id
 * @property {string|null} parentId
 * @property {boolean} topLevel
 * @property {HTMLElement} root     the run's section (top level) or nested item
 * @property {HTMLElement} steps    where its steps go
 * @property {HTMLElement|null} head
 * @property {string} status
 * @property {number} startedTs
 * @property {Map<string, HTMLElement>} tools    tool_call_id → card
 * @property {Map<string, HTMLElement>} streams  message_id → text block
 */

/** @type {Record<string, string>} */
const STATUS_LABEL = {
  queued: "Queued",
  running: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

/**
 * A new run's view, put on the page: a section at the end of `timeline` for a
 * top-level run (or a sub-run whose parent is not shown), else an item at the
 * end of its parent's steps.
 * @param {AgentEvent} event  the run's first event seen
 * @param {AgentEvent|null} started  its agent_started, when that is the one
 * @param {RunView|undefined} parent
 * @param {HTMLElement} timeline
 * @param {(runId: string) => void} onStop  a click on the run's stop button
 * @returns {RunView}
 */
export function addRun(event, started, parent, timeline, onStop) {
  /** @type {RunView} */
  const run = {
    id: event.run_id,
    parentId: event.parent_run_id ?? null,
    topLevel: !event.parent_run_id,
    root: /** @type {HTMLElement} */ (/** @type {unknown} */ (null)),
    steps: /** @type {HTMLElement} */ (/** @type {unknown} */ (null)),
    head: null,
    status: "running",
    startedTs: event.ts,
    tools: new Map(),
    streams: new Map(),
  };
  if (run.topLevel || !parent) {
    run.head = el(
      "header.run-head",
      {},
      el("span.agent-badge", {}, icon("agent"), el("span", { text: event.agent })),
      el("span.status-chip", { "data-status": "running", text: STATUS_LABEL.running }),
      el("time.run-time", { datetime: new Date(event.ts * 1000).toISOString(), text: clock(event.ts) }),
      el("span.run-duration"),
      el("span.spacer"),
      stopButton(run.id, onStop),
    );
    const progress = el("div.run-progress", { role: "progressbar", "aria-label": "Progress" }, el("span"));
    run.steps = el("ol.steps");
    run.root = el(
      "section.run",
      { "data-run-id": run.id, "data-status": "running", "aria-label": `Run of ${event.agent}` },
      run.head,
      progress,
      run.steps,
    );
    if (started) {
      run.root.prepend(
        el("div.msg-user", eventAttrs(started), el("div.msg-text", { text: started.data?.message ?? "" })),
      );
    }
    timeline.append(run.root);
  } else {
    run.steps = el("ol.steps");
    run.head = el(
      "div.subrun-head",
      {},
      icon("agent"),
      el("span.subrun-agent", { text: event.agent }),
      el("span.status-chip", { "data-status": "running", text: STATUS_LABEL.running }),
      el("span.run-duration"),
    );
    run.root = el(
      "li.step.subrun",
      { "data-run-id": run.id, "data-status": "running" },
      run.head,
      started ? startedItem(started, run) : null,
      run.steps,
    );
    parent.steps.append(run.root);
  }
  return run;
}

/**
 * The element of a run's agent_started: the user's message (top level) or
 * the task a sub-run was given.
 * @param {AgentEvent} event
 * @param {RunView} run
 */
export function startedItem(event, run) {
  if (run.topLevel) {
    return el("div.msg-user", eventAttrs(event), el("div.msg-text", { text: event.data?.message ?? "" }));
  }
  return el("div.subrun-task", eventAttrs(event), el("span.task-text", { text: event.data?.message ?? "" }));
}

/**
 * @param {string} runId
 * @param {(runId: string) => void} onStop
 */
function stopButton(runId, onStop) {
  const button = el(
    "button.stop",
    { type: "button", "data-run-id": runId, title: "Stop this run" },
    icon("stop"),
    el("span", { text: "Stop" }),
  );
  button.addEventListener("click", () => onStop(runId));
  return button;
}

/**
 * Show a run's stop button as waiting for the run to stop, or as ready again.
 * @param {RunView|undefined} run
 * @param {boolean} stopping
 */
export function showStopping(run, stopping) {
  const button = run?.head?.querySelector("button.stop");
  if (button instanceof HTMLButtonElement) {
    button.disabled = stopping;
    /** @type {ChildNode} */ (button.lastChild).textContent = stopping ? "Stopping…" : "Stop";
  }
}

/**
 * A run has ended: its status and duration in the header, no stop button.
 * @param {RunView} run
 * @param {string} status  completed, failed or cancelled
 * @param {number|undefined} durationMs
 */
export function showEnded(run, status, durationMs) {
  run.status = status;
  run.root.dataset.status = status;
  const chip = run.head?.querySelector(".status-chip");
  if (chip instanceof HTMLElement) {
    chip.dataset.status = status;
    chip.textContent = STATUS_LABEL[status];
  }
  const duration = run.head?.querySelector(".run-duration");
  if (duration) duration.textContent = formatDuration(durationMs);
  run.head?.querySelector("button.stop")?.remove();
}

/**
 * Fill a top-level run's progress bar to `fraction` (clamped to 0…1).
 * @param {RunView} run
 * @param {number} fraction
 */
export function showProgress(run, fraction) {
  const bar = run.root.querySelector(":scope > .run-progress");
  if (!(bar instanceof HTMLElement)) return;
  const value = Math.max(0, Math.min(1, fraction));
  bar.setAttribute("aria-valuenow", String(Math.round(value * 100)));
  const fill = bar.firstElementChild;
  if (fill instanceof HTMLElement) fill.style.width = `${value * 100}%`;
}
