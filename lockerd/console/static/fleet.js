// The live fleet: /ws/status (a snapshot, then one message per changed bank), shared by every view.
import { session } from "./api.js";
import { agoNode, setServerTime } from "./format.js";
import { badge, h, row, table } from "./ui.js";

const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;

export const live = {
  banks: new Map(), // id -> status entry as /ws/status sends it
  ready: false,
  listeners: new Set(), // fn(changedBankId | null for a snapshot)
  alertListeners: new Set(), // fn(alert) for every {"type":"alert"} message
  socket: null,
  attempt: 0,
  retry: null,
  onRefused: () => {},
};

function setConnection(kind, text) {
  const node = document.getElementById("connection");
  node.dataset.state = kind;
  node.textContent = text;
}

function notify(id) {
  for (const listener of live.listeners) {
    try {
      listener(id);
    } catch (error) {
      console.error(error);
    }
  }
}

// Alert changes as /ws/status sends them ({"type":"alert","alert":{…}}).
export function subscribeAlerts(listener) {
  live.alertListeners.add(listener);
  return () => live.alertListeners.delete(listener);
}

export function subscribe(listener) {
  live.listeners.add(listener);
  return () => live.listeners.delete(listener);
}

export function disconnect() {
  clearTimeout(live.retry);
  live.retry = null;
  const socket = live.socket;
  live.socket = null;
  if (socket) {
    socket.onclose = null;
    socket.close(1000, "console closed");
  }
  live.banks.clear();
  live.ready = false;
  setConnection("idle", "Not connected");
}

export function connect() {
  const token = session.token();
  if (!token) return;
  clearTimeout(live.retry);
  const url = new URL("ws/status", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", token);
  setConnection("connecting", live.attempt ? "Reconnecting…" : "Connecting…");
  const socket = new WebSocket(url);
  let opened = false;
  live.socket = socket;
  socket.onopen = () => {
    opened = true;
  };
  socket.onmessage = (event) => {
    if (socket !== live.socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "snapshot") {
      live.attempt = 0;
      if (message.server_time) setServerTime(message.server_time);
      live.banks = new Map(message.banks.map((bank) => [bank.id, bank]));
      live.ready = true;
      setConnection("live", "Live");
      notify(null);
    } else if (message.type === "bank") {
      live.banks.set(message.bank.id, message.bank);
      notify(message.bank.id);
    } else if (message.type === "alert") {
      for (const listener of live.alertListeners) listener(message.alert);
    }
  };
  socket.onclose = () => {
    if (socket !== live.socket) return;
    live.socket = null;
    if (!opened && live.attempt >= 2) live.onRefused();
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** live.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    live.attempt += 1;
    setConnection("down", `Connection lost; reconnecting in ${Math.ceil(delay / 1000)} s`);
    live.retry = setTimeout(connect, delay);
  };
}

const byName = (a, b) =>
  (a.name || "").localeCompare(b.name || "", undefined, { sensitivity: "base" }) || a.id.localeCompare(b.id);

export function sortedBanks() {
  return [...live.banks.values()].sort(byName);
}

// ---- the fleet view ------------------------------------------------------------------------

const COLUMNS = [
  { label: "Bank" },
  { label: "Presence" },
  { label: "Last seen", nowrap: true },
  { label: "Pending", num: true },
  { label: "Restarts", num: true, narrow: true },
  { label: "Supervision" },
  { label: "Alerts", num: true },
];

function bankRow(bank) {
  const alerts = (bank.alerts || []).length;
  return row(COLUMNS, [
    [h("a.bank-link", { href: `#/banks/${bank.id}`, text: bank.name || bank.id }),
      bank.location ? h("div.hint", { text: bank.location }) : null],
    [badge(`presence-${bank.presence}`, bank.presence),
      bank.decommissioned ? badge("bad", "decommissioned") : null],
    agoNode(bank.last_seen),
    String(bank.pending_commands ?? 0),
    String(bank.restarts ?? 0),
    badge(`supervision-${bank.supervision}`, bank.supervision || "–"),
    alerts ? badge("bad", String(alerts)) : "0",
  ], { dataset: { bankId: bank.id, presence: bank.presence, decommissioned: String(Boolean(bank.decommissioned)) } });
}

export function fleetView(container, { onCreate }) {
  const summary = h("p#summary.hint");
  const filter = h("input#filter", { type: "search", placeholder: "name, location, state…", "aria-label": "Filter banks" });
  const body = h("div");
  const render = () => {
    const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const banks = sortedBanks();
    const shown = banks.filter((bank) => {
      const text = [bank.name, bank.location, bank.id, bank.presence, bank.supervision].join(" ").toLowerCase();
      return words.every((word) => text.includes(word));
    });
    const online = banks.filter((bank) => bank.presence === "online").length;
    const offline = banks.filter((bank) => bank.presence === "offline").length;
    summary.textContent = live.ready
      ? `${banks.length} bank${banks.length === 1 ? "" : "s"} · ${online} online · ${offline} offline`
      : "Connecting…";
    body.replaceChildren(table(COLUMNS, shown.map(bankRow), {
      id: "fleet-table",
      empty: banks.length ? "No bank matches the filter." : "No locker banks yet.",
    }));
  };
  filter.addEventListener("input", render);
  container.replaceChildren(h("section.card", { "aria-labelledby": "fleet-title" },
    h("div.head", {},
      h("h2#fleet-title", { text: "Locker banks" }), summary, h("span.spacer"),
      h("button#new-bank", { type: "button", text: "New bank", on: { click: onCreate } })),
    filter, body));
  render();
  return subscribe(() => render());
}
