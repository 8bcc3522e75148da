// Readable times, actors and event details (history and audit log).
import { h } from "./ui.js";

const MOMENT = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

export function moment(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : MOMENT.format(date);
}

export function timeNode(iso, cls = "event-time") {
  return h("time", { class: cls, datetime: iso || "", title: iso || "", text: moment(iso) });
}

let serverOffsetMs = 0;
export function setServerTime(iso) {
  const parsed = Date.parse(iso);
  if (!Number.isNaN(parsed)) serverOffsetMs = parsed - Date.now();
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((Date.now() + serverOffsetMs - Date.parse(iso)) / 1000));
  if (seconds < 90) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 36) return `${hours} h ago`;
  return `${Math.round(hours / 24)} d ago`;
}

export function agoNode(iso) {
  if (!iso) return document.createTextNode("never");
  return h("time.ago", { datetime: iso, title: moment(iso), text: ago(iso) });
}

// "last seen" cells count up by themselves.
setInterval(() => {
  for (const node of document.querySelectorAll("time.ago")) node.textContent = ago(node.dateTime);
}, 1000);

// ---- who did it ------------------------------------------------------------------------------

const users = new Map(); // id -> {email, name}
export function knowUsers(list) {
  for (const user of list || []) users.set(user.id, user);
}
export function userLabel(id) {
  const user = users.get(id);
  return user ? user.email : id;
}

export function actorText(actor) {
  if (!actor || typeof actor !== "object") return actor ? String(actor) : "–";
  if (actor.kind === "admin_token") return "admin token";
  if (actor.kind === "user") return userLabel(actor.id);
  return JSON.stringify(actor);
}

// ---- event details as key/value chips (never wrapping inside a pair) ------------------------

const HIDDEN = new Set(["actor"]);

const ISO_MOMENT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

function valueText(key, value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "string" && ISO_MOMENT.test(value)) return moment(value);
  if (key === "actor") return actorText(value);
  if (key === "user_id" || key === "granted_by") return typeof value === "string" ? userLabel(value) : actorText(value);
  if (Array.isArray(value)) {
    if (value.every((item) => typeof item !== "object")) return value.join(", ");
    return `${value.length} item${value.length === 1 ? "" : "s"}`;
  }
  if (typeof value === "object") {
    if ("kind" in value) return actorText(value);
    return Object.entries(value).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  }
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

const LABELS = {
  transaction_id: "transaction",
  compartment_id: "compartment",
  compartment_number: "no.",
  user_id: "user",
  group_id: "group",
  error_code: "error",
  heartbeat_interval_seconds: "heartbeat",
  config_hash: "config",
  applied_config_hash: "applied config",
};

export function details(data, { skip = [] } = {}) {
  const entries = Object.entries(data || {}).filter(
    ([key, value]) => !HIDDEN.has(key) && !skip.includes(key) && value !== null && value !== undefined && value !== "",
  );
  if (!entries.length) return h("span.hint", { text: "–" });
  return h("ul.kvs", {}, entries.map(([key, value]) => {
    const text = valueText(key, value);
    const full = typeof value === "object" ? JSON.stringify(value) : String(value);
    return h("li.kv", { dataset: { key } },
      h("span.k", { text: LABELS[key] || key.replaceAll("_", " ") }),
      h("span.v", { title: full, text }));
  }));
}

// Dates from <input type="datetime-local"> (local time) to ISO 8601 UTC.
export function isoFromLocal(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toISOString();
}
