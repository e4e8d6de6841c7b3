// The dashboard's shell: sign-in, the hash router, and the header.
import { api, ApiError, clearKey, getKey, setKey } from "./api.js";
import { errorBox, h, setContent } from "./dom.js";
import * as corpora from "./corpora.js";
import * as curricula from "./curricula.js";
import * as jobs from "./jobs.js";
import * as manifests from "./manifests.js";
import * as models from "./models.js";
import * as projections from "./projections.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signout = document.getElementById("signout");

const ROUTES = [
  [/^#?\/?$/, () => { location.replace("#/jobs"); }],
  [/^#\/jobs$/, jobs.listPage, "jobs"],
  [/^#\/jobs\/new(?:\/([\w-]+))?$/, jobs.newPage, "jobs"],
  [/^#\/jobs\/([\w-]+)$/, jobs.jobPage, "jobs"],
  [/^#\/corpora$/, corpora.listPage, "corpora"],
  [/^#\/corpora\/([\w-]+)$/, corpora.corpusPage, "corpora"],
  [/^#\/manifests$/, manifests.listPage, "manifests"],
  [/^#\/manifests\/([\w-]+)$/, manifests.manifestPage, "manifests"],
  [/^#\/projections$/, projections.listPage, "projections"],
  [/^#\/projections\/([\w-]+)$/, projections.projectionPage, "projections"],
  [/^#\/curricula\/([\w-]+)$/, curricula.curriculumPage, "jobs"],
  [/^#\/models$/, models.listPage, "models"],
  [/^#\/models\/([\w-]+)$/, models.modelPage, "models"],
];

let session = null;   // {tenant, auth} once signed in
let cleanup = null;   // what the current page must stop (streams, timers, charts)

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* ignore */ } cleanup = null; }
  if (!session) return;
  const hash = location.hash || "#/";
  for (const [re, page, sectionName] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.section === sectionName);
    const page_el = h("div", { class: "page" });
    setContent(main, page_el);
    const ctrl = new AbortController();
    try {
      const stop = await page(page_el, ...m.slice(1).map(decodeURIComponent), { signal: ctrl.signal, session });
      cleanup = () => { ctrl.abort(); if (typeof stop === "function") stop(); };
    } catch (e) {
      ctrl.abort();
      if (e.name === "AbortError") return;
      if (e instanceof ApiError && e.status === 401) return;  // the sign-in screen took over
      page_el.append(errorBox(e));
      console.error(e);
    }
    return;
  }
  setContent(main, h("div", { class: "card" }, h("h1", {}, "Not found"), h("p", {}, `No page at ${hash}.`),
    h("a", { href: "#/jobs" }, "Back to jobs")));
}

function showSignIn(message) {
  session = null;
  if (cleanup) { cleanup(); cleanup = null; }
  nav.hidden = true;
  signout.hidden = true;
  who.textContent = "";
  const input = h("input", { id: "key", type: "password", autocomplete: "off", placeholder: "API key", required: true,
                             "aria-label": "API key" });
  const msg = h("div", { id: "signin-message" }, message ? h("div", { class: "error", role: "alert" }, message) : null);
  const form = h("form", { id: "signin-form", class: "card signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "This Thresher service requires an API key. The key stays in this browser tab " +
      "(sessionStorage) and is sent as a bearer token."),
    h("label", { for: "key" }, "API key"), input, msg,
    h("button", { id: "signin", type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setKey(input.value.trim());
    await start();
  });
  setContent(main, form);
  input.focus();
}

async function start() {
  try {
    session = await api("/v1/whoami");
  } catch (e) {
    const hadKey = !!getKey();
    clearKey();
    if (e instanceof ApiError && e.status === 401) {
      showSignIn(hadKey ? `That API key was not accepted (${e.message}). Check the key and try again.` : null);
    } else {
      setContent(main, errorBox(e, "Cannot load the dashboard: "));
    }
    return;
  }
  nav.hidden = false;
  who.textContent = session.auth ? `tenant ${session.tenant}` : "open (no API keys configured)";
  signout.hidden = !session.auth;
  await route();
}

signout.addEventListener("click", () => {
  clearKey();
  showSignIn(null);
});

window.addEventListener("thresher:unauthorized", (ev) => {
  if (!session) return;
  clearKey();
  showSignIn(`Your API key is no longer accepted (${ev.detail.message}). Sign in again.`);
});

window.addEventListener("hashchange", route);
start();
