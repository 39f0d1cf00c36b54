/**
 * Values as the page shows them: durations, clock times, relative times, JSON
 * and one-line previews of tool parameters and results. Pure functions of
 * their input (no DOM), shared by the timeline and the thread list.
 *
 * @module format
 */

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
export function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/**
 * `just now`, `5 minutes ago`, `yesterday`, `3 weeks ago`.
 * @param {number} ts UNIX seconds
 */
export function relativeTime(ts) {
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

/**
 * JSON for display, shortened past `max` characters.
 * @param {unknown} value
 * @param {number} [max]
 */
export function pretty(value, max = 4000) {
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
export function short(value) {
  const text = typeof value === "string" ? JSON.stringify(value) : JSON.stringify(value) ?? "";
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

/**
 * A summary line for a tool's results.
 * @param {unknown} results
 */
export function resultSummary(results) {
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
