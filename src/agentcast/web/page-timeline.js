/**
 * The page's one `Timeline` and the controls that act on its runs: each run's
 * stop button and the composer's Stop (all active runs), and the composer's
 * active state, which follows the timeline. Apart from the thread list and
 * the composer, as both use it.
 *
 * @module page-timeline
 */

import { describe, showNotice } from "./page-notice.js";
import { page, ui } from "./page-state.js";
import { Timeline } from "./timeline.js";

export const timeline = new Timeline(ui.timeline, {
  onStop: (runId) => void stopRun(runId),
  onChange: () => updateComposer(),
});

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

/** Offer Stop while a top-level run is active. */
export function updateComposer() {
  const active = timeline.activeRuns().length > 0;
  ui.stop.hidden = !active;
  ui.composer.dataset.active = String(active);
}

ui.stop.addEventListener("click", () => {
  for (const run of timeline.activeRuns()) void stopRun(run.id);
});
