/**
 * The run timeline: turns agentcast events into DOM, one element per event.
 *
 * Every event gets exactly one element carrying `data-seq`, `data-type` and
 * `data-run-id` (a tool's `tool_completed` sits inside its `tool_executing`
 * card; streamed `text_delta`s are spans of one text block), so a test can
 * check exactly-once delivery by comparing the `data-seq`s on the page with
 * the thread's events. Adding an event twice is a no-op.
 *
 * Each top-level run is a `<section class="run">` with the user's message, a
 * header (agent, status, duration, stop button) and its steps; a sub-run is
 * nested, indented, inside its parent's steps.
 *
 * This module owns the bookkeeping: which seqs are shown, which run each
 * event belongs to, where its element goes, and keeping the page scrolled to
 * the newest step. The elements themselves are built by timeline-runs.js (a
 * run's frame), timeline-tools.js (tool cards) and timeline-steps.js (the
 * other steps).
 *
 * @module timeline
 */

import { addRun, showEnded, showProgress, showStopping, startedItem } from "./timeline-runs.js";
import {
  customItem,
  endItem,
  progressItem,
  streamItem,
  thinkingStreamItem,
  textSpan,
  thinkingItem,
} from "./timeline-steps.js";
import { completeToolCard, orphanToolCard, toolCard } from "./timeline-tools.js";

/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */
/** @typedef {import("./timeline-runs.js").RunView} RunView */

/** @type {Record<string, string>} */
const TERMINAL_STATUS = {
  agent_completed: "completed",
  agent_error: "failed",
  agent_cancelled: "cancelled",
};

export class Timeline {
  /** @type {Set<number>} */
  #seen = new Set();
  /** @type {Map<string, RunView>} */
  #runs = new Map();
  #lastSeq = 0;

  /**
   * @param {HTMLElement} root
   * @param {{onStop?: (runId: string) => void, onChange?: () => void}} [hooks]
   */
  constructor(root, hooks = {}) {
    this.root = root;
    this.hooks = hooks;
  }

  /** Forget everything and empty the view. */
  reset() {
    this.#seen.clear();
    this.#runs.clear();
    this.#lastSeq = 0;
    this.root.replaceChildren();
  }

  /** The highest seq shown. */
  get lastSeq() {
    return this.#lastSeq;
  }

  /** How many events are shown. */
  get size() {
    return this.#seen.size;
  }

  /** @param {number} seq */
  has(seq) {
    return this.#seen.has(seq);
  }

  /** Top-level runs that have not ended, oldest first. */
  activeRuns() {
    return [...this.#runs.values()].filter(
      (run) => run.topLevel && (run.status === "running" || run.status === "queued"),
    );
  }

  /** The message of the first top-level run (a title for an untitled thread). */
  firstMessage() {
    return this.root.querySelector(".run > .msg-user .msg-text")?.textContent ?? "";
  }

  /**
   * Show one event (a no-op if its seq is already shown).
   * @param {AgentEvent} event
   * @returns {boolean} whether it was new
   */
  add(event) {
    if (this.#seen.has(event.seq)) return false;
    this.#seen.add(event.seq);
    this.#lastSeq = Math.max(this.#lastSeq, event.seq);
    const stick = this.#nearBottom();
    try {
      this.#render(event);
    } catch (error) {
      console.error("timeline: cannot render", event, error);
      this.#fallback(event);
    }
    if (stick) this.#scrollToBottom();
    this.hooks.onChange?.();
    return true;
  }

  /**
   * Mark a run as being stopped (the stop button waits for `agent_cancelled`).
   * @param {string} runId
   */
  markStopping(runId) {
    showStopping(this.#runs.get(runId), true);
  }

  /**
   * Re-enable a stop button whose cancel failed.
   * @param {string} runId
   */
  unmarkStopping(runId) {
    showStopping(this.#runs.get(runId), false);
  }

  // Rendering

  /** @param {AgentEvent} event */
  #render(event) {
    const data = event.data ?? {};
    switch (event.type) {
      case "agent_started":
        this.#startRun(event);
        return;
      case "agent_thinking":
        this.#thinking(event, data);
        return;
      case "tool_executing":
        this.#toolExecuting(event, data);
        return;
      case "tool_completed":
        this.#toolCompleted(event, data);
        return;
      case "text_delta":
        this.#textDelta(event, data);
        return;
      case "progress":
        this.#progress(event, data);
        return;
      case "agent_completed":
      case "agent_error":
      case "agent_cancelled":
        this.#end(event, data);
        return;
      case "thinking_delta":
        this.#thinkingDelta(event, data);
        return;
      default:
        this.#fallback(event);
    }
  }

  /**
   * @param {AgentEvent} event
   * @returns {RunView}
   */
  #runOf(event) {
    return this.#runs.get(event.run_id) ?? this.#createRun(event, null);
  }

  /** @param {AgentEvent} event */
  #startRun(event) {
    const existing = this.#runs.get(event.run_id);
    if (existing) {
      // A step arrived before agent_started (history trimmed mid-run): fill in.
      existing.startedTs = event.ts;
      existing.steps.prepend(startedItem(event, existing));
      return;
    }
    this.#createRun(event, event);
  }

  /**
   * @param {AgentEvent} event  the run's first event seen
   * @param {AgentEvent|null} started  its agent_started, when that is the one
   * @returns {RunView}
   */
  #createRun(event, started) {
    const parent = event.parent_run_id ? this.#runs.get(event.parent_run_id) : undefined;
    const run = addRun(event, started, parent, this.root, (runId) => this.hooks.onStop?.(runId));
    this.#runs.set(run.id, run);
    return run;
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #thinking(event, data) {
    const run = this.#runOf(event);
    run.steps.append(thinkingItem(event, data));
    if (typeof data.progress === "number") this.#setProgress(run, data.progress);
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #toolExecuting(event, data) {
    const run = this.#runOf(event);
    const card = toolCard(event, data);
    run.tools.set(data.tool_call_id, card);
    run.steps.append(card);
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #toolCompleted(event, data) {
    const run = this.#runOf(event);
    let card = run.tools.get(data.tool_call_id);
    if (!card) {
      card = orphanToolCard(data);
      run.steps.append(card);
    }
    completeToolCard(card, event, data);
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #textDelta(event, data) {
    const run = this.#runOf(event);
    const key = data.message_id ?? "text";
    let block = run.streams.get(key);
    if (!block) {
      const stream = streamItem(key);
      block = stream.block;
      run.steps.append(stream.item);
      run.streams.set(key, block);
    }
    block.append(textSpan(event, data));
  }

  /**
   * Streamed reasoning: appended to one element per message_id, apart from its text.
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #thinkingDelta(event, data) {
    const run = this.#runOf(event);
    const key = `thinking:${data.message_id ?? "text"}`;
    let block = run.streams.get(key);
    if (!block) {
      const stream = thinkingStreamItem(key);
      block = stream.block;
      run.steps.append(stream.item);
      run.streams.set(key, block);
    }
    block.append(textSpan(event, data));
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #progress(event, data) {
    const run = this.#runOf(event);
    const pct = Number(data.percentage ?? 0);
    run.steps.append(progressItem(event, data, pct));
    this.#setProgress(run, pct / 100);
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #end(event, data) {
    const run = this.#runOf(event);
    const status = TERMINAL_STATUS[event.type];
    showEnded(run, status, data.duration_ms);
    if (status === "completed") this.#setProgress(run, 1);
    const item = endItem(event, data, run.topLevel);
    // The streamed text is now the formatted answer: keep it (one element per
    // event) but fold it away.
    if (event.type === "agent_completed" && run.topLevel && String(data.final_response ?? "").trim()) {
      for (const block of run.streams.values()) block.parentElement?.classList.add("superseded");
    }
    run.steps.append(item);
  }

  /** @param {AgentEvent} event */
  #fallback(event) {
    if (this.root.querySelector(`[data-seq="${event.seq}"]`)) return;
    const run = this.#runs.get(event.run_id);
    (run?.steps ?? this.root).append(customItem(event));
  }

  /**
   * Move the progress bar of a top-level run.
   * @param {RunView} run
   * @param {number} fraction
   */
  #setProgress(run, fraction) {
    let top = run;
    while (!top.topLevel && top.parentId && this.#runs.has(top.parentId)) {
      top = /** @type {RunView} */ (this.#runs.get(top.parentId));
    }
    if (top !== run) return; // sub-run progress is its own business
    showProgress(run, fraction);
  }

  #nearBottom() {
    const scroller = document.scrollingElement;
    if (!scroller) return false;
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
  }

  #scrollToBottom() {
    const scroller = document.scrollingElement;
    if (scroller) scroller.scrollTop = scroller.scrollHeight;
  }
}
