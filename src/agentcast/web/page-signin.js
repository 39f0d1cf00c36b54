/**
 * Signing in and out: the token from the link `agentcast serve` printed (its
 * `#token=` fragment) or from the sign-in form, kept in `localStorage`; the
 * sign-in screen; and signing out, which any module does when the server
 * refuses the token.
 *
 * @module page-signin
 */

import { page, ui } from "./page-state.js";

const TOKEN_KEY = "agentcast.token";

/** The token of the link the page was opened with, else the one kept from before. */
export function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    // Keep the token out of the address bar, history and bookmarks.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return fromUrl ?? localStorage.getItem(TOKEN_KEY);
}

/** @param {string} [message] */
export function showSignin(message) {
  ui.app.hidden = true;
  ui.signin.hidden = false;
  ui.signinError.textContent = message ?? "";
  ui.signinError.hidden = !message;
  ui.tokenInput.focus();
}

/** @param {string} [message] */
export function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  page.client?.close();
  page.client = null;
  page.token = null;
  showSignin(message);
}

/**
 * Call `start` with each token the sign-in form is given.
 * @param {(token: string) => void} start
 */
export function onSignin(start) {
  ui.signinForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = ui.tokenInput.value.trim().replace(/^Bearer\s+/i, "");
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    ui.tokenInput.value = "";
    start(token);
  });
}

ui.signout.addEventListener("click", () => signOut());
