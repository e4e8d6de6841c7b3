// The API from the browser: the bearer key from sessionStorage, errors as ApiError, server-sent
// events read through fetch() (EventSource cannot send an Authorization header), downloads as blobs.

const KEY = "thresher.key";
// The service's root: the dashboard lives at <root>/ui/.
export const ROOT = location.pathname.replace(/\/ui(\/.*)?$/, "");

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

function headers(extra = {}) {
  const h = { ...extra };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function toError(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  const e = body && body.error;
  const err = new ApiError(r.status, e ? e.code : `http_${r.status}`, e ? e.message : (r.statusText || "request failed"),
                           e ? e.details : {});
  if (r.status === 401) window.dispatchEvent(new CustomEvent("thresher:unauthorized", { detail: err }));
  return err;
}

export async function api(path, { method = "GET", json, body, signal, raw = false } = {}) {
  const opts = { method, headers: headers(), signal };
  if (json !== undefined) {
    opts.body = JSON.stringify(json);
    opts.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    opts.body = body;
  }
  let r;
  try {
    r = await fetch(ROOT + path, opts);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network_error", `cannot reach the service: ${e.message}`);
  }
  if (!r.ok) throw await toError(r);
  if (raw) return r;
  if (r.status === 204) return null;
  return r.json();
}

export const query = (sql, tables, limit = 1000) => api("/v1/query", { method: "POST", json: { sql, tables, limit } });

// Follow a job's server-sent events; onJob gets each job object. Resolves when the stream ends.
export async function followJob(jobId, onJob, signal) {
  const r = await fetch(`${ROOT}/v1/jobs/${encodeURIComponent(jobId)}/events`,
                        { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!r.ok) throw await toError(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (event === "job" && data.length) onJob(JSON.parse(data.join("\n")));
    }
  }
}

// Download through fetch (the bearer header cannot ride on a plain link) and save as a file.
export async function download(path, filename) {
  const r = await api(path, { raw: true });
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
