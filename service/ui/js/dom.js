// Small DOM and formatting helpers shared by the pages.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "html") el.innerHTML = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function setContent(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const link = (href, text, attrs = {}) => h("a", { href, ...attrs }, text);

export function fmtNum(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "—";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`);

export function badge(state) {
  return h("span", { class: `badge state-${state}` }, state);
}

// A table from column specs [{label, value: row => node|text, cls}] and rows.
export function table(columns, rows, attrs = {}) {
  return h("table", { class: "grid", ...attrs },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.cls }, c.label)))),
    h("tbody", {}, rows.length
      ? rows.map((r) => h("tr", c0(r, attrs), columns.map((c) => h("td", { class: c.cls }, c.value(r)))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, attrs.empty || "Nothing yet."))));
}
const c0 = (r, attrs) => (attrs.rowAttrs ? attrs.rowAttrs(r) : {});

export function errorBox(err, prefix = "") {
  const where = err && err.details && err.details.field ? ` (field ${err.details.field})` : "";
  const code = err && err.code ? `${err.code}: ` : "";
  return h("div", { class: "error", role: "alert" }, `${prefix}${code}${err ? err.message : "unknown error"}${where}`);
}

export function progressBar(done, total, attrs = {}) {
  const frac = total > 0 ? Math.max(0, Math.min(1, done / total)) : 0;
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                    "aria-valuenow": Math.round(frac * 100), ...attrs },
    h("div", { class: "bar", style: `width:${(frac * 100).toFixed(1)}%` }));
}

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export const section = (title, ...children) => h("section", { class: "card" }, h("h2", {}, title), ...children);

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}
