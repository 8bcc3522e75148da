// DOM helpers, the confirmation dialog every action goes through, and the result line.
import { ApiError } from "./api.js";

// h("tag.class", {attrs, on: {event: fn}}, ...children): a small element builder.
export function h(spec, attrs = {}, ...children) {
  const [head, ...classes] = spec.split(".");
  const [tag, id] = head.split("#");
  const node = document.createElement(tag || "div");
  if (id) node.id = id;
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "text") {
      node.textContent = value;
    } else if (key in node && typeof value !== "string") {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : value);
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function badge(kind, text) {
  return h("span", { class: `badge ${kind}`, text });
}

export function button(text, onClick, { kind = "", name, title } = {}) {
  return h(`button${kind ? `.${kind}` : ""}`, {
    type: "button",
    text,
    title,
    dataset: name ? { action: name } : undefined,
    on: { click: onClick },
  });
}

// A table: columns [{label, num?, narrow?}], rows of cells (each a node, text or {cell, label}).
export function table(columns, rows, { id, stack = true, empty = "Nothing yet." } = {}) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) =>
    h("th", { scope: "col", class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" ").trim() || null, text: c.label }))));
  const body = h("tbody", {}, rows.map((row) => row));
  const result = h("div.table-wrap", {},
    h("table", { id, class: stack ? "stack" : null }, head, body));
  if (!rows.length) result.append(h("p.empty", { text: empty }));
  return result;
}

// A row: cells aligned with the columns, labelled for the stacked phone layout.
export function row(columns, cells, attrs = {}) {
  return h("tr", attrs, cells.map((cell, index) => {
    const column = columns[index];
    const classes = [column.num ? "num" : "", column.narrow ? "hide-narrow" : "", column.nowrap ? "nowrap" : ""]
      .join(" ").trim();
    return h("td", { class: classes || null, dataset: column.label ? { label: column.label } : undefined }, cell);
  }));
}

// ---- the result line ---------------------------------------------------------------------------

const flashBox = () => document.getElementById("flash");

export function flash(kind, text) {
  const box = flashBox();
  box.dataset.kind = kind;
  box.dataset.seq = String(Number(box.dataset.seq || 0) + 1);
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  document.getElementById("flash-text").textContent = text;
  box.hidden = false;
}

export function clearFlash() {
  flashBox().hidden = true;
}

export function errorText(error) {
  if (error instanceof ApiError) {
    if (!error.status) return error.message;
    return `${error.message} (HTTP ${error.status}, ${error.reason || error.code})`;
  }
  return String(error && error.message ? error.message : error);
}

// ---- confirmation ------------------------------------------------------------------------------

function fieldInput(field) {
  const id = `confirm-field-${field.name}`;
  let input;
  if (field.type === "select") {
    input = h("select", { id, name: field.name },
      (field.options || []).map((option) => h("option", { value: option.value, text: option.label, selected: option.value === field.value })));
  } else if (field.type === "checkbox") {
    input = h("input", { id, name: field.name, type: "checkbox", checked: Boolean(field.value) });
  } else if (field.type === "textarea") {
    input = h("textarea", { id, name: field.name, rows: 3, text: field.value ?? "" });
  } else {
    input = h("input", {
      id, name: field.name, type: field.type || "text", autocomplete: "off",
      min: field.min, max: field.max, placeholder: field.placeholder,
    });
    input.value = field.value ?? "";
  }
  if (field.required) input.required = true;
  return h("div.field", {}, h("label", { for: id, text: field.label }), input);
}

function readFields(fields, form) {
  const values = {};
  for (const field of fields) {
    const input = form.elements.namedItem(field.name);
    if (field.type === "checkbox") values[field.name] = input.checked;
    else if (field.type === "number") values[field.name] = input.value === "" ? "" : Number(input.value);
    else values[field.name] = input.value.trim();
    if (field.required && values[field.name] === "") return { missing: field.label };
  }
  return { values };
}

// Ask; resolves to the field values, or null when cancelled.
export function ask({ title, text = "", fields = [], confirmLabel = "Confirm", danger = false }) {
  const dialog = document.getElementById("confirm");
  const form = document.getElementById("confirm-form");
  const ok = document.getElementById("confirm-ok");
  const cancel = document.getElementById("confirm-cancel");
  const error = document.getElementById("confirm-error");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-fields").replaceChildren(...fields.map(fieldInput));
  error.textContent = "";
  ok.textContent = confirmLabel;
  ok.className = danger ? "danger" : "";
  return new Promise((resolve) => {
    const finish = (value) => {
      form.removeEventListener("submit", submit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const submit = (event) => {
      event.preventDefault();
      const { values, missing } = readFields(fields, form);
      if (missing) {
        error.textContent = `${missing} is required.`;
        return;
      }
      finish(values);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(null);
    };
    form.addEventListener("submit", submit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    const first = dialog.querySelector("#confirm-fields input, #confirm-fields select, #confirm-fields textarea");
    (first || ok).focus();
  });
}

// Every action: confirm, run, then show the result or the server's error message.
// Resolves to the action's result, or undefined when cancelled or refused.
export async function action({ title, text, fields, confirmLabel, danger, run, done }) {
  const values = await ask({ title, text, fields, confirmLabel, danger });
  if (values === null) {
    flash("info", `${title}: cancelled.`);
    return undefined;
  }
  try {
    const result = await run(values);
    flash("ok", done ? done(result, values) : `${title}: done.`);
    return result ?? true;
  } catch (error) {
    flash("error", `${title} failed: ${errorText(error)}`);
    return undefined;
  }
}

// Load something for a view; on failure show the reason in place of it.
export async function loading(container, load) {
  container.replaceChildren(h("p.hint", { text: "Loading…" }));
  try {
    const node = await load();
    container.replaceChildren(...[node].flat());
  } catch (error) {
    container.replaceChildren(h("p.error", { role: "alert", text: `Cannot load: ${errorText(error)}` }));
  }
}
