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
 * @module timeline
 */

import { renderMarkdown } from "./markdown.js";

/** @typedef {import("./agentcast.js").AgentEvent} AgentEvent */

const SVG_NS = "http://www.w3.org/2000/svg";

/** 24×24 outline icons (paths). */
const ICONS = {
  think:
    "M9 18h6M10 21h4M12 3a6 6 0 0 0-3.5 10.9c.6.4 1 1.1 1 1.8V16h5v-.3c0-.7.4-1.4 1-1.8A6 6 0 0 0 12 3z",
  tool: "M14.7 6.3a4 4 0 0 0-5.4 5.2L3 17.8 6.2 21l6.3-6.3a4 4 0 0 0 5.2-5.4l-2.6 2.6-2.4-.6-.6-2.4z",
  agent: "M12 3l2.5 5 5.5.8-4 3.9.9 5.5L12 15.6 7.1 18.2l.9-5.5-4-3.9 5.5-.8z",
  check: "M5 12.5l4.5 4.5L19 7.5",
  cross: "M6 6l12 12M18 6L6 18",
  stop: "M7 7h10v10H7z",
  answer: "M4 5h16v11H8l-4 4z",
  progress: "M4 12h4l3-7 4 14 3-7h2",
  custom: "M4 7h16M4 12h16M4 17h10",
};

/**
 * @param {keyof typeof ICONS} name
 * @returns {SVGSVGElement}
 */
function icon(name) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.classList.add("icon", `icon-${name}`);
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

/**
 * `el("div.a.b", {attrs}, children…)`.
 * @param {string} spec  tag and classes
 * @param {Record<string, string|number|boolean|null|undefined>} [attrs]
 * @param {...(Node|string|null|undefined|false)} children
 * @returns {HTMLElement}
 */
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.classList.add(...classes);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/**
 * `1.2 s`, `340 ms`, `2 min 5 s`.
 * @param {number|undefined|null} ms
 */
export function formatDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** @param {number} ts UNIX seconds */
function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/**
 * JSON for display, shortened past `max` characters.
 * @param {unknown} value
 * @param {number} [max]
 */
function pretty(value, max = 4000) {
  let text;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  } catch {
    text = String(value);
  }
  return text.length > max ? `${text.slice(0, max)}\n… (${text.length - max} more characters)` : text;
}

/**
 * A one-line preview of a tool's parameter value.
 * @param {unknown} value
 */
function short(value) {
  const text = typeof value === "string" ? JSON.stringify(value) : JSON.stringify(value) ?? "";
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

/**
 * A summary line for a tool's results.
 * @param {unknown} results
 */
function resultSummary(results) {
  if (Array.isArray(results)) return `${results.length} item${results.length === 1 ? "" : "s"}`;
  if (results && typeof results === "object") {
    const keys = Object.keys(results);
    return keys.slice(0, 4).join(", ") + (keys.length > 4 ? ", …" : "");
  }
  if (typeof results === "string") {
    const firstLine = (results.split("\n").find((line) => line.trim()) ?? "")
      .replace(/^\s*(#{1,6}|[-*+])\s+/, "")
      .trim();
    return firstLine.length > 70 ? `${firstLine.slice(0, 67)}…` : firstLine;
  }
  return String(results);
}

/** @type {Record<string, string>} */
const STATUS_LABEL = {
  queued: "Queued",
  running: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

/** @type {Record<string, string>} */
const TERMINAL_STATUS = {
  agent_completed: "completed",
  agent_error: "failed",
  agent_cancelled: "cancelled",
};

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
    const button = this.#runs.get(runId)?.head?.querySelector("button.stop");
    if (button instanceof HTMLButtonElement) {
      button.disabled = true;
      /** @type {ChildNode} */ (button.lastChild).textContent = "Stopping…";
    }
  }

  /**
   * Re-enable a stop button whose cancel failed.
   * @param {string} runId
   */
  unmarkStopping(runId) {
    const button = this.#runs.get(runId)?.head?.querySelector("button.stop");
    if (button instanceof HTMLButtonElement) {
      button.disabled = false;
      /** @type {ChildNode} */ (button.lastChild).textContent = "Stop";
    }
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
      default:
        this.#fallback(event);
    }
  }

  /** @param {AgentEvent} event */
  #attrs(event) {
    return { "data-seq": event.seq, "data-type": event.type, "data-run-id": event.run_id };
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
      existing.steps.prepend(this.#startedItem(event, existing));
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
        this.#stopButton(run.id),
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
          el(
            "div.msg-user",
            this.#attrs(started),
            el("div.msg-text", { text: started.data?.message ?? "" }),
          ),
        );
      }
      this.root.append(run.root);
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
        started ? this.#startedItem(started, run) : null,
        run.steps,
      );
      parent.steps.append(run.root);
    }
    this.#runs.set(run.id, run);
    return run;
  }

  /**
   * The element of a sub-run's agent_started: the task it was given.
   * @param {AgentEvent} event
   * @param {RunView} run
   */
  #startedItem(event, run) {
    if (run.topLevel) {
      return el("div.msg-user", this.#attrs(event), el("div.msg-text", { text: event.data?.message ?? "" }));
    }
    return el("div.subrun-task", this.#attrs(event), el("span.task-text", { text: event.data?.message ?? "" }));
  }

  /** @param {string} runId */
  #stopButton(runId) {
    const button = el(
      "button.stop",
      { type: "button", "data-run-id": runId, title: "Stop this run" },
      icon("stop"),
      el("span", { text: "Stop" }),
    );
    button.addEventListener("click", () => this.hooks.onStop?.(runId));
    return button;
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #thinking(event, data) {
    const run = this.#runOf(event);
    const item = el(
      "li.step.thinking",
      this.#attrs(event),
      icon("think"),
      el("span.step-text", { text: data.reasoning ?? "" }),
    );
    run.steps.append(item);
    if (typeof data.progress === "number") this.#setProgress(run, data.progress);
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #toolExecuting(event, data) {
    const run = this.#runOf(event);
    const params = el("dl.tool-params");
    for (const [key, value] of Object.entries(data.parameters ?? {})) {
      params.append(el("div", {}, el("dt", { text: key }), el("dd", { text: short(value) })));
    }
    const card = el(
      "li.step.tool",
      { ...this.#attrs(event), "data-status": "running", "data-tool-call-id": data.tool_call_id },
      el(
        "div.tool-head",
        {},
        icon("tool"),
        el("span.tool-name", { text: data.tool_name ?? "tool" }),
        el("span.spinner", { role: "status", "aria-label": "running" }),
      ),
      params.childElementCount ? params : null,
    );
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
      // Its tool_executing was trimmed from history: a card of its own.
      card = el(
        "li.step.tool",
        { "data-tool-call-id": data.tool_call_id },
        el("div.tool-head", {}, icon("tool"), el("span.tool-name", { text: data.tool_name ?? "tool" })),
      );
      run.steps.append(card);
    }
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
    const result = el("div.tool-result", { ...this.#attrs(event), "data-status": status });
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

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #textDelta(event, data) {
    const run = this.#runOf(event);
    const key = data.message_id ?? "text";
    let block = run.streams.get(key);
    if (!block) {
      block = el("div.stream-text");
      run.steps.append(el("li.step.stream", { "data-message-id": key }, icon("answer"), block));
      run.streams.set(key, block);
    }
    block.append(el("span", { ...this.#attrs(event), text: data.delta ?? "" }));
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #progress(event, data) {
    const run = this.#runOf(event);
    const pct = Number(data.percentage ?? 0);
    run.steps.append(
      el(
        "li.step.progress",
        this.#attrs(event),
        icon("progress"),
        el("span.step-text", { text: `${Math.round(pct)}%${data.message ? ` — ${data.message}` : ""}` }),
      ),
    );
    this.#setProgress(run, pct / 100);
  }

  /**
   * @param {AgentEvent} event
   * @param {Record<string, any>} data
   */
  #end(event, data) {
    const run = this.#runOf(event);
    const status = TERMINAL_STATUS[event.type];
    run.status = status;
    run.root.dataset.status = status;
    const chip = run.head?.querySelector(".status-chip");
    if (chip instanceof HTMLElement) {
      chip.dataset.status = status;
      chip.textContent = STATUS_LABEL[status];
    }
    const duration = run.head?.querySelector(".run-duration");
    if (duration) duration.textContent = formatDuration(data.duration_ms);
    run.head?.querySelector("button.stop")?.remove();
    if (status === "completed") this.#setProgress(run, 1);

    let item;
    if (event.type === "agent_completed") {
      const answer = String(data.final_response ?? "");
      if (run.topLevel) {
        item = el("li.step.final", this.#attrs(event));
        const body = el("div.answer");
        body.append(renderMarkdown(answer));
        item.append(el("div.final-label", {}, icon("check"), el("span", { text: "Answer" })), body);
        // The streamed text is now the formatted answer: keep it (one element
        // per event) but fold it away.
        if (answer.trim()) {
          for (const block of run.streams.values()) block.parentElement?.classList.add("superseded");
        }
      } else {
        item = el(
          "li.step.returned",
          this.#attrs(event),
          el(
            "details",
            {},
            el("summary", {}, icon("check"), el("span", { text: "Returned " }), el("span.result-summary", { text: resultSummary(answer) })),
            el("pre.returned-text", { text: pretty(answer) }),
          ),
        );
      }
    } else if (event.type === "agent_error") {
      item = el(
        "li.step.failure",
        { ...this.#attrs(event), role: run.topLevel ? "alert" : null },
        icon("cross"),
        el("div.step-text", {}, el("strong", { text: data.error_type ? `${data.error_type}: ` : "Error: " }), el("span", { text: data.message ?? "" })),
      );
    } else {
      item = el(
        "li.step.cancelled",
        this.#attrs(event),
        icon("stop"),
        el("span.step-text", { text: `Cancelled${data.reason ? ` — ${data.reason}` : ""}` }),
      );
    }
    run.steps.append(item);
  }

  /** @param {AgentEvent} event */
  #fallback(event) {
    if (this.root.querySelector(`[data-seq="${event.seq}"]`)) return;
    const run = this.#runs.get(event.run_id);
    const item = el(
      "li.step.custom",
      this.#attrs(event),
      icon("custom"),
      el("span.step-text", {
        text: event.type === "custom" ? `${event.data?.name}: ${short(event.data?.value)}` : event.type,
      }),
    );
    (run?.steps ?? this.root).append(item);
  }

  /**
   * @param {RunView} run
   * @param {number} fraction
   */
  #setProgress(run, fraction) {
    let top = run;
    while (!top.topLevel && top.parentId && this.#runs.has(top.parentId)) {
      top = /** @type {RunView} */ (this.#runs.get(top.parentId));
    }
    if (top !== run) return; // sub-run progress is its own business
    const bar = run.root.querySelector(":scope > .run-progress");
    if (!(bar instanceof HTMLElement)) return;
    const value = Math.max(0, Math.min(1, fraction));
    bar.setAttribute("aria-valuenow", String(Math.round(value * 100)));
    const fill = bar.firstElementChild;
    if (fill instanceof HTMLElement) fill.style.width = `${value * 100}%`;
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
