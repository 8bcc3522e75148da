// Alerts (open, acknowledged, resolved) with acknowledge; live: reloaded whenever a bank changes.
import { enc, get, post, query } from "./api.js";
import { details, moment } from "./format.js";
import { live, subscribe, subscribeAlerts } from "./fleet.js";
import { action, badge, button, h, row, table } from "./ui.js";

const STATES = ["open", "acknowledged", "resolved"];

const COLUMNS = [
  { label: "Raised", nowrap: true },
  { label: "Bank" },
  { label: "Type" },
  { label: "State" },
  { label: "Details" },
  { label: "" },
];

let countTimer = null;
// The open-alert count in the navigation bar, kept fresh by the app.
export async function refreshAlertCount() {
  clearTimeout(countTimer);
  countTimer = setTimeout(async () => {
    const node = document.getElementById("alert-count");
    try {
      const open = await get("api/admin/alerts?state=open", { quiet401: true });
      node.textContent = String(open.length);
      node.hidden = open.length === 0;
    } catch {
      node.hidden = true;
    }
  }, 200);
}

export function alertsView(container, params) {
  const state = STATES.includes(params.get("state")) ? params.get("state") : "open";
  const list = h("div#alert-list");
  const tabs = h("div.actions", { role: "group", "aria-label": "Which alerts" },
    STATES.map((name) => h("a", {
      href: `#/alerts?state=${name}`, text: name, class: name === state ? "badge ok" : "badge",
      "aria-current": name === state ? "page" : null,
    })));
  container.replaceChildren(h("section.card", { "aria-labelledby": "alerts-title" },
    h("div.head", {}, h("h2#alerts-title", { text: "Alerts" }), tabs), list));

  let request = 0;
  async function load() {
    const mine = ++request;
    let alerts;
    try {
      alerts = await get(`api/admin/alerts${query({ state })}`);
    } catch (error) {
      if (mine === request) list.replaceChildren(h("p.error", { text: `Cannot list alerts: ${error.message}` }));
      return;
    }
    if (mine !== request) return;
    list.replaceChildren(table(COLUMNS, alerts.map((alert) => {
      const bank = live.banks.get(alert.bank_id);
      return row(COLUMNS, [
        moment(alert.raised_at),
        alert.bank_id ? h("a", { href: `#/banks/${alert.bank_id}`, text: bank?.name || alert.bank_id }) : "–",
        h("strong", { text: alert.type }),
        badge(`alert-${alert.state}`, alert.state),
        details(alert.data, { skip: ["bank_id"] }),
        alert.state === "open" ? button("Acknowledge", () => acknowledge(alert, bank), { name: "acknowledge", kind: "small" }) : "",
      ], { dataset: { alertId: alert.id, type: alert.type, state: alert.state } });
    }), { id: "alert-table", empty: `No ${state} alerts.` }));
  }

  async function acknowledge(alert, bank) {
    const result = await action({
      title: "Acknowledge alert",
      text: `${alert.type} at ${bank?.name || alert.bank_id || "–"}, raised ${moment(alert.raised_at)}.`,
      confirmLabel: "Acknowledge",
      run: () => post(`api/admin/alerts/${enc(alert.id)}/acknowledge`),
      done: () => `Alert ${alert.type} acknowledged.`,
    });
    if (result) {
      await load();
      refreshAlertCount();
    }
  }

  // Live: /ws/status sends every alert change; a bank's entry also lists its open alerts.
  const seen = new Map(); // bank id -> its alerts as last seen
  let pending = null;
  const later = () => {
    clearTimeout(pending);
    pending = setTimeout(load, 100);
  };
  const unsubscribe = subscribe((id) => {
    const ids = id === null ? [...live.banks.keys()] : [id];
    let changed = false;
    for (const bankId of ids) {
      const key = JSON.stringify(live.banks.get(bankId)?.alerts || []);
      if (seen.get(bankId) !== key) {
        seen.set(bankId, key);
        changed = true;
      }
    }
    if (changed) later();
  });
  const unsubscribeAlerts = subscribeAlerts(later);
  load();
  return () => {
    unsubscribe();
    unsubscribeAlerts();
    clearTimeout(pending);
  };
}
