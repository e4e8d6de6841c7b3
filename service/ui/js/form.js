// A job-submission form built from a kind's spec JSON Schema: scalars get inputs (with their
// defaults), enums a select, ids of corpora/models/manifests a select of the caller's own (several
// for a list of ids: `restrict`, `against`), and anything nested a JSON text area.
import { api } from "./api.js";
import { errorBox, h } from "./dom.js";

function deref(schema, root) {
  while (schema && schema.$ref) schema = root.$defs[schema.$ref.split("/").pop()];
  return schema || {};
}

// What input a top-level property needs: {type, options, nullable, hint}.
export function fieldOf(name, prop, root, refs) {
  let s = deref(prop, root);
  let nullable = false;
  if (s.anyOf) {
    const other = s.anyOf.filter((x) => x.type !== "null");
    nullable = other.length < s.anyOf.length;
    if (other.length === 1) s = deref(other[0], root);
    else s = { type: "json", anyOf: other };
  }
  const hint = prop.description || s.description || "";
  if (refs[name]) return { type: s.type === "array" ? "refs" : "ref", table: refs[name], nullable, hint };
  if (s.enum) return { type: "enum", options: s.enum, nullable, hint };
  if (["boolean", "integer", "number", "string"].includes(s.type)) {
    return { type: s.type, nullable, hint, min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum };
  }
  return { type: "json", nullable, hint, example: example(s, root) };  // objects, arrays, unions
}

// A placeholder for a JSON field, from its schema: an object's fields with their defaults (… where
// there is none), an array of its items, the alternatives of a union.
function example(s, root, depth = 0) {
  s = deref(s, root);
  if (depth > 2) return "…";
  if (s.anyOf) {
    const other = s.anyOf.filter((x) => x.type !== "null");
    return other.map((x) => example(x, root, depth + 1)).join(" | ");
  }
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.type === "object" && s.properties) {
    const fields = Object.entries(s.properties);
    const required = new Set(s.required || []);
    // Alternatives such as {"fraction"} | {"count"} | {"tau"}: every field optional, none defaulted.
    if (!required.size && fields.every(([, p]) => p.default === null)) {
      return fields.map(([k]) => `{"${k}": …}`).join(" | ");
    }
    const shown = fields.filter(([k, p]) => required.has(k) || (p.default !== undefined && p.default !== null)).slice(0, 5);
    return `{${shown.map(([k, p]) => `"${k}": ${p.default !== undefined && p.default !== null ? JSON.stringify(p.default) : example(p, root, depth + 1)}`).join(", ")}}`;
  }
  if (s.type === "array") return `[${s.items ? example(s.items, root, depth + 1) : "…"}, …]`;
  if (s.enum) return s.enum.map((x) => JSON.stringify(x)).join(" | ");
  return "…";
}

const SINGULAR = { corpora: "corpus", models: "model", manifests: "manifest" };
const LABELS = { corpora: (r) => `${r.name} (${r.id}, ${r.num_docs ?? "?"} docs)`, models: (r) => `${r.name || r.id} (${r.id})`,
                 manifests: (r) => `${r.id} (${r.kind}, ${r.num_rows} rows)` };

export async function buildForm(kind, { signal, onSubmitted }) {
  const schema = kind.spec_schema;
  const required = new Set(schema.required || []);
  const lists = {};
  for (const table of new Set(Object.values(kind.refs))) {
    const page = await api(`/v1/${table}?limit=1000`, { signal });
    lists[table] = page.items.filter((r) => !r.state || r.state === "ready");
  }
  const inputs = {};
  const rows = [];
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const f = fieldOf(name, prop, schema, kind.refs);
    const id = `f-${name}`;
    const def = prop.default;
    let input;
    if (f.type === "ref") {
      input = h("select", { id, name },
        !required.has(name) ? h("option", { value: "" }, "— none —") : h("option", { value: "", disabled: true, selected: true }, `choose a ${SINGULAR[f.table]}…`),
        lists[f.table].map((r) => h("option", { value: r.id }, LABELS[f.table](r))));
    } else if (f.type === "refs") {   // several ids, sent in the list's order (newest first), not the order clicked
      input = h("select", { id, name, multiple: true, size: Math.min(6, Math.max(2, lists[f.table].length)) },
        lists[f.table].map((r) => h("option", { value: r.id }, LABELS[f.table](r))));
    } else if (f.type === "enum") {
      input = h("select", { id, name }, f.nullable || (!required.has(name) && def === undefined) ? h("option", { value: "" }, "—") : null,
        f.options.map((o) => h("option", { value: JSON.stringify(o), selected: o === def }, String(o))));
    } else if (f.type === "boolean") {
      input = h("input", { id, name, type: "checkbox", checked: def === true });
    } else if (f.type === "integer" || f.type === "number") {
      input = h("input", { id, name, type: "number", step: f.type === "integer" ? "1" : "any",
                           value: def ?? "", placeholder: f.nullable ? "optional" : "" });
    } else if (f.type === "string") {
      input = h("input", { id, name, type: "text", value: def ?? "", placeholder: f.nullable ? "optional" : "" });
    } else {
      input = h("textarea", { id, name, rows: 2, spellcheck: "false", placeholder: f.example || "JSON" },
                def !== undefined && def !== null ? JSON.stringify(def) : "");
    }
    inputs[name] = { input, f, def };
    rows.push(h("div", { class: "field", dataset: { field: name } },
      h("label", { for: id }, name, required.has(name) ? h("span", { class: "req", title: "required" }, " *") : null,
        h("span", { class: "type" }, f.type === "ref" ? `${SINGULAR[f.table]} id` : f.type === "refs" ? `${SINGULAR[f.table]} ids` : f.type)),
      input,
      f.hint ? h("div", { class: "hint" }, f.hint) : null,
      h("div", { class: "field-error" })));
  }
  const jobName = h("input", { id: "f--name", type: "text", placeholder: kind.name });
  const status = h("div", { class: "form-status" });
  const form = h("form", { class: "spec-form", id: `form-${kind.name}` },
    h("div", { class: "field" }, h("label", { for: "f--name" }, "job name", h("span", { class: "type" }, "optional")), jobName),
    rows,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "submit-job" }, `Submit ${kind.name} job`)),
    status);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const el of form.querySelectorAll(".field")) el.classList.remove("invalid");
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    status.replaceChildren();
    const spec = {};
    for (const [name, { input, f }] of Object.entries(inputs)) {
      let value;
      if (f.type === "boolean") value = input.checked;
      else if (f.type === "refs") {
        value = [...input.selectedOptions].map((o) => o.value);
        if (!value.length) continue;
      } else if (input.value === "") continue;
      else if (f.type === "enum") value = JSON.parse(input.value);
      else if (f.type === "integer" || f.type === "number") value = Number(input.value);
      else if (f.type === "json") {
        try { value = JSON.parse(input.value); } catch (e) {
          mark(form, name, `not valid JSON: ${e.message}`);
          return;
        }
      } else value = input.value;
      spec[name] = value;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: { kind: kind.name, name: jobName.value || null, spec } });
      onSubmitted(job);
    } catch (e) {
      const field = (e.details && e.details.field) || "";
      const top = field.startsWith("spec.") ? field.split(".")[1] : null;
      if (top && inputs[top]) mark(form, top, e.message);
      status.append(errorBox(e, "The job was refused: "));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function mark(form, name, message) {
  const row = form.querySelector(`.field[data-field="${name}"]`);
  row.classList.add("invalid");
  row.querySelector(".field-error").textContent = message;
}
