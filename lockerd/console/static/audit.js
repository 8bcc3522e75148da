// The audit log: every bank's history and every operator action, newest first, with filters.
import { get, query } from "./api.js";
import { actorText, details, isoFromLocal, timeNode } from "./format.js";
import { live, sortedBanks } from "./fleet.js";
import { directory } from "./people.js";
import { h, row, table } from "./ui.js";

const COLUMNS = [
  { label: "#", num: true, narrow: true },
  { label: "When", nowrap: true },
  { label: "Event" },
  { label: "Actor" },
  { label: "Bank" },
  { label: "Details" },
];
const FILTERS = ["actor_id", "bank_id", "type", "since", "until", "limit"];

// datetime-local wants "YYYY-MM-DDTHH:MM" in local time.
function localValue(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export function auditView(container, params) {
  const form = h("form#audit-filters.filters", { novalidate: true });
  const list = h("div#audit-list");
  const status = h("p#audit-status.hint", { role: "status" });
  container.replaceChildren(h("section.card", { "aria-labelledby": "audit-title" },
    h("h2#audit-title", { text: "Audit log" }), form, status, list));

  async function build() {
    const { users } = await directory();
    const actorOptions = [{ value: "", label: "anyone" }, { value: "admin_token", label: "admin token" },
      ...users.map((user) => ({ value: user.id, label: user.email }))];
    const bankOptions = [{ value: "", label: "every bank" },
      ...sortedBanks().map((bank) => ({ value: bank.id, label: bank.name }))];
    const select = (name, label, options) => h("div", {},
      h("label", { for: `audit-${name}`, text: label }),
      h("select", { id: `audit-${name}`, name },
        options.map((option) => h("option", { value: option.value, text: option.label, selected: option.value === (params.get(name) || "") }))));
    const input = (name, label, type, value) => {
      const field = h("input", { id: `audit-${name}`, name, type, autocomplete: "off" });
      field.value = value;
      return h("div", {}, h("label", { for: `audit-${name}`, text: label }), field);
    };
    form.replaceChildren(
      select("actor_id", "Actor", actorOptions),
      select("bank_id", "Bank", bankOptions),
      input("type", "Event type", "text", params.get("type") || ""),
      input("since", "Since", "datetime-local", params.get("since") ? localValue(params.get("since")) : ""),
      input("until", "Until", "datetime-local", params.get("until") ? localValue(params.get("until")) : ""),
      input("limit", "At most", "number", params.get("limit") || "200"),
      h("div", {}, h("button#audit-apply", { type: "submit", text: "Show" })),
    );
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = {};
    for (const name of FILTERS) {
      const value = form.elements.namedItem(name).value.trim();
      values[name] = name === "since" || name === "until" ? isoFromLocal(value) : value;
    }
    const next = `#/audit${query(values)}`;
    if (window.location.hash === next) load();
    else window.location.hash = next;
  });

  async function load() {
    const filters = {};
    for (const name of FILTERS) filters[name] = params.get(name) || "";
    if (!filters.limit) filters.limit = "200";
    status.textContent = "Loading…";
    let entries;
    try {
      entries = await get(`api/admin/audit${query(filters)}`);
    } catch (error) {
      status.textContent = "";
      list.replaceChildren(h("p.error", { role: "alert", text: `Cannot load the audit log: ${error.message}` }));
      return;
    }
    status.textContent = `${entries.length} entr${entries.length === 1 ? "y" : "ies"}, newest first.`;
    list.replaceChildren(table(COLUMNS, entries.map((entry) => {
      const bank = entry.bank_id ? live.banks.get(entry.bank_id) : null;
      return row(COLUMNS, [
        String(entry.position),
        timeNode(entry.recorded_at),
        h("span.event-type", { text: entry.type }),
        actorText(entry.actor),
        entry.bank_id ? h("a", { href: `#/banks/${entry.bank_id}`, text: bank?.name || entry.bank_id }) : "–",
        details(entry.data),
      ], { dataset: { type: entry.type, actor: entry.actor ? JSON.stringify(entry.actor) : "" } });
    }), { id: "audit-table", empty: "Nothing matches these filters." }));
  }

  build().then(load);
  return () => {};
}
