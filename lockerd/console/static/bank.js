// A bank's page: its facts and live status, compartments with their actions and grants,
// the bank's actions (edit, apply config, provisioning token, restart, decommission) and history.
import { del, enc, get, patch, post } from "./api.js";
import { actorText, agoNode, details, isoFromLocal, moment, timeNode } from "./format.js";
import { live, subscribe } from "./fleet.js";
import { directory, grantTargets, targetLabel } from "./people.js";
import { action, badge, button, flash, h, row, table } from "./ui.js";

const HISTORY_ROWS = 300;

// Follow an operator's open to its outcome (GET /api/transactions/{id}?wait=).
export async function followTransaction(id, label) {
  for (let round = 0; round < 4; round += 1) {
    let transaction;
    try {
      transaction = await get(`api/transactions/${enc(id)}?wait=30`);
    } catch (error) {
      return;
    }
    if (transaction.status !== "pending") {
      const more = [transaction.error_code, transaction.message].filter(Boolean).join(": ");
      flash(transaction.status === "success" ? "ok" : "error",
        `${label}: ${transaction.status}${more ? ` (${more})` : ""}; transaction ${id}.`);
      return;
    }
  }
}

export function bankView(container, bankId) {
  let bank = null;
  let grantsFor = null; // compartment id whose grants are shown
  let historyKey = null;
  let compartmentsKey = null;
  let stopped = false;

  const title = h("h2#bank-title", { text: "Locker bank" });
  const facts = h("dl#bank-facts.facts");
  const bankActions = h("div#bank-actions.actions");
  const compartments = h("div#compartments");
  const grants = h("section#grants.card", { hidden: true });
  const historyStatus = h("p#history-status.hint", { role: "status" });
  const addButton = button("Add compartment", addCompartment, { name: "add-compartment" });
  const history = h("div#history");

  container.replaceChildren(
    h("p", {}, h("a", { href: "#/fleet", text: "← All banks" })),
    h("section.card", { "aria-labelledby": "bank-title" },
      h("div.head", {}, title, h("span.spacer"), bankActions), facts),
    h("section.card", { "aria-labelledby": "compartments-title" },
      h("div.head", {}, h("h2#compartments-title", { text: "Compartments" }), h("span.spacer"),
        addButton),
      compartments),
    grants,
    h("section.card", { "aria-labelledby": "history-title" },
      h("div.head", {}, h("h2#history-title", { text: "History" }), h("span.spacer"),
        button("Refresh", () => loadHistory(), { kind: "quiet", name: "refresh-history" })),
      historyStatus, history),
  );

  async function load() {
    try {
      bank = await get(`api/admin/locker-banks/${enc(bankId)}`);
    } catch (error) {
      title.textContent = "Locker bank";
      facts.replaceChildren(h("p.error", { role: "alert", text: `Cannot load this bank: ${error.message}` }));
      return;
    }
    if (stopped) return;
    render();
    if (grantsFor) loadGrants(grantsFor);
  }

  function status() {
    return live.banks.get(bankId) || {};
  }

  function render() {
    if (!bank) return;
    const st = status();
    title.textContent = bank.name || bank.id;
    const presence = st.presence || bank.presence;
    const configState = bank.config_hash && bank.config_hash === bank.applied_config_hash ? "applied" : "not applied yet";
    const entries = [
      ["Id", h("code", { text: bank.id })],
      ["Location", bank.location || "–"],
      ["Presence", badge(`presence-${presence}`, presence)],
      ["Last seen", agoNode(st.last_seen || bank.last_seen)],
      ["Provisioned", bank.provisioned_at ? moment(bank.provisioned_at) : "not yet"],
      ["Heartbeat", bank.heartbeat_interval_seconds ? `every ${bank.heartbeat_interval_seconds} s` : null],
      ["Configuration", configState],
      ["Supervision", st.supervision ? `${st.supervision}, ${st.restarts ?? 0} restart${st.restarts === 1 ? "" : "s"}` : null],
      ["Pending commands", st.pending_commands !== undefined ? String(st.pending_commands) : null],
      ["Decommissioned", bank.decommissioned ? badge("bad", "decommissioned") : null],
      ["Last error", st.last_error || null],
    ].filter(([, value]) => value !== null && value !== undefined);
    facts.replaceChildren(...entries.flatMap(([term, value]) => [h("dt", { text: term }), h("dd", {}, value)]));
    facts.dataset.presence = presence;

    // A decommissioned bank takes no action any more (the server would refuse each with 409):
    // its page keeps the facts, the grants and the history, and says why the buttons are gone.
    const actionsKey = bank.decommissioned ? "decommissioned" : "active";
    if (bankActions.dataset.state !== actionsKey) {
      bankActions.dataset.state = actionsKey;
      addButton.hidden = Boolean(bank.decommissioned);
      bankActions.replaceChildren(...(bank.decommissioned
        ? [h("p#decommissioned-note.hint", { text: "Decommissioned: its credentials are revoked and nothing can be done with it any more; its history stays readable." })]
        : [
          button("Edit", editBank, { name: "edit-bank", kind: "quiet" }),
          button("Apply config", applyConfig, { name: "apply-config" }),
          button("New provisioning token", newToken, { name: "provisioning-token" }),
          button("Restart actor", restart, { name: "restart" }),
          button("Decommission", decommission, { name: "decommission", kind: "danger" }),
        ]));
    }
    // Rebuilt only when what it shows changed (heartbeats arrive often; buttons keep focus).
    const key = JSON.stringify([bank.compartments, status().doors, Boolean(bank.decommissioned)]);
    if (key !== compartmentsKey) {
      compartmentsKey = key;
      renderCompartments();
    }
  }

  const COLUMNS = [
    { label: "No.", num: true },
    { label: "Modbus", nowrap: true },
    { label: "Door" },
    { label: "Service" },
    { label: "Actions" },
  ];

  function renderCompartments() {
    const doors = status().doors || {};
    const list = [...(bank.compartments || [])].sort((a, b) => a.number - b.number);
    compartments.replaceChildren(table(COLUMNS, list.map((compartment) => {
      const door = doors[String(compartment.number)] || compartment.door_state || "unknown";
      const off = Boolean(compartment.out_of_service);
      return row(COLUMNS, [
        String(compartment.number),
        `slave ${compartment.slave_id} · addr ${compartment.address}`,
        badge(`door-${door}`, door),
        off ? badge("warn", "out of service") : badge("ok", "in service"),
        bank.decommissioned
          ? h("div.actions", {},
            button("Grants", () => showGrants(compartment.id), { name: "grants", kind: "small quiet" }))
          : h("div.actions", {},
          button("Open", () => openCompartment(compartment), { name: "open", kind: "small" }),
          button(off ? "Back in service" : "Out of service", () => setOutOfService(compartment, !off),
            { name: "out-of-service", kind: "small quiet" }),
          button("Edit", () => editCompartment(compartment), { name: "edit-compartment", kind: "small quiet" }),
          button("Grants", () => showGrants(compartment.id), { name: "grants", kind: "small quiet" }),
          button("Retire", () => retireCompartment(compartment), { name: "retire", kind: "small danger" })),
      ], { dataset: { compartmentId: compartment.id, number: String(compartment.number), door, outOfService: String(off) } });
    }), { id: "compartment-table", empty: "No compartments." }));
  }

  // ---- bank actions -------------------------------------------------------------------------

  async function editBank() {
    const result = await action({
      title: "Edit bank",
      text: "A new heartbeat interval changes the configuration; it is pushed to the device.",
      fields: [
        { name: "name", label: "Name", value: bank.name, required: true },
        { name: "location", label: "Location", value: bank.location || "" },
        { name: "heartbeat_interval_seconds", label: "Heartbeat interval (s)", type: "number", min: 1, max: 3600,
          value: bank.heartbeat_interval_seconds ?? "" },
      ],
      confirmLabel: "Save",
      run: (values) => {
        const body = {};
        if (values.name !== bank.name) body.name = values.name;
        if (values.location !== (bank.location || "")) body.location = values.location;
        if (values.heartbeat_interval_seconds !== "" && values.heartbeat_interval_seconds !== bank.heartbeat_interval_seconds) {
          body.heartbeat_interval_seconds = values.heartbeat_interval_seconds;
        }
        return patch(`api/admin/locker-banks/${enc(bankId)}`, body);
      },
      done: (updated) => `Bank saved: ${updated.name}.`,
    });
    if (result) await refresh();
  }

  async function applyConfig() {
    const result = await action({
      title: "Apply configuration",
      text: `Send the configuration to “${bank.name}” now?`,
      confirmLabel: "Send",
      run: () => post(`api/admin/locker-banks/${enc(bankId)}/apply-config`),
      done: (answer) => `Configuration sent; transaction ${answer.transaction_id}.`,
    });
    if (result) await refresh();
  }

  async function newToken() {
    const result = await action({
      title: "New provisioning token",
      text: "Every earlier token of this bank stops working; the device must register again with the new one.",
      confirmLabel: "Issue token",
      danger: true,
      run: () => post(`api/admin/locker-banks/${enc(bankId)}/provisioning-token`),
      done: (answer) => `New provisioning token: ${answer.provisioning_token}`,
    });
    if (result) await refresh();
  }

  async function restart() {
    const result = await action({
      title: "Restart actor",
      text: "Start this bank's actor again (after it has failed past its restart budget)?",
      confirmLabel: "Restart",
      run: () => post(`api/admin/locker-banks/${enc(bankId)}/restart`),
      done: () => "Restart requested.",
    });
    if (result) await refresh();
  }

  async function decommission() {
    const result = await action({
      title: "Decommission bank",
      text: `Decommission “${bank.name}”? Its device credentials are revoked and opens refused; its history stays.`,
      confirmLabel: "Decommission",
      danger: true,
      run: () => post(`api/admin/locker-banks/${enc(bankId)}/decommission`),
      done: (answer) => `Bank decommissioned: ${answer.name}.`,
    });
    if (result) await refresh();
  }

  async function addCompartment() {
    const used = (bank.compartments || []).map((c) => c.number);
    const next = used.length ? Math.max(...used) + 1 : 1;
    const result = await action({
      title: "Add compartment",
      fields: [
        { name: "number", label: "Number", type: "number", min: 1, value: next, required: true },
        { name: "slave_id", label: "Modbus slave id", type: "number", min: 0, value: 1, required: true },
        { name: "address", label: "Modbus address", type: "number", min: 0, value: next - 1, required: true },
      ],
      confirmLabel: "Add",
      run: (values) => post(`api/admin/locker-banks/${enc(bankId)}/compartments`, values),
      done: (compartment) => `Compartment ${compartment.number} added.`,
    });
    if (result) await refresh();
  }

  // ---- compartment actions ------------------------------------------------------------------

  async function openCompartment(compartment) {
    const label = `Compartment ${compartment.number} of ${bank.name}`;
    const result = await action({
      title: `Open compartment ${compartment.number}`,
      text: "The door opens without a grant; the reason is recorded with your name.",
      fields: [{ name: "reason", label: "Reason", required: true, placeholder: "e.g. item stuck, maintenance" }],
      confirmLabel: "Open",
      danger: true,
      run: (values) => post(`api/admin/compartments/${enc(compartment.id)}/open`, { reason: values.reason }),
      done: (answer) => `${label}: open requested (${answer.status}); transaction ${answer.transaction_id}.`,
    });
    if (result && result.transaction_id) {
      await refresh();
      await followTransaction(result.transaction_id, `${label}: open`);
      await refresh();
    }
  }

  async function setOutOfService(compartment, value) {
    const result = await action({
      title: value ? `Take compartment ${compartment.number} out of service` : `Put compartment ${compartment.number} back in service`,
      text: value ? "Opens of this compartment are refused until it is back in service." : "It can be opened again.",
      confirmLabel: value ? "Out of service" : "Back in service",
      run: () => patch(`api/admin/compartments/${enc(compartment.id)}`, { out_of_service: value }),
      done: (answer) => `Compartment ${answer.number ?? compartment.number} is ${value ? "out of service" : "back in service"}.`,
    });
    if (result) await refresh();
  }

  async function editCompartment(compartment) {
    const result = await action({
      title: `Edit compartment ${compartment.number}`,
      text: "A new slave id or address changes the configuration; it is pushed to the device.",
      fields: [
        { name: "slave_id", label: "Modbus slave id", type: "number", min: 0, value: compartment.slave_id, required: true },
        { name: "address", label: "Modbus address", type: "number", min: 0, value: compartment.address, required: true },
      ],
      confirmLabel: "Save",
      run: (values) => patch(`api/admin/compartments/${enc(compartment.id)}`, values),
      done: (answer) => `Compartment ${answer.number ?? compartment.number} saved.`,
    });
    if (result) await refresh();
  }

  async function retireCompartment(compartment) {
    const result = await action({
      title: `Retire compartment ${compartment.number}`,
      text: "The compartment is removed from the bank and its configuration; its history stays.",
      confirmLabel: "Retire",
      danger: true,
      run: () => del(`api/admin/compartments/${enc(compartment.id)}`),
      done: () => `Compartment ${compartment.number} retired.`,
    });
    if (result) {
      if (grantsFor === compartment.id) grantsFor = null;
      grants.hidden = grantsFor === null;
      await refresh();
    }
  }

  // ---- grants -------------------------------------------------------------------------------

  function showGrants(compartmentId) {
    grantsFor = compartmentId;
    grants.hidden = false;
    loadGrants(compartmentId);
    grants.scrollIntoView({ block: "nearest" });
  }

  const GRANT_COLUMNS = [
    { label: "Who" },
    { label: "Expires", nowrap: true },
    { label: "Granted", nowrap: true, narrow: true },
    { label: "By" },
    { label: "" },
  ];

  async function loadGrants(compartmentId) {
    const compartment = (bank.compartments || []).find((c) => c.id === compartmentId);
    if (!compartment) {
      grants.hidden = true;
      return;
    }
    const body = h("div#grant-list", {}, h("p.hint", { text: "Loading…" }));
    grants.replaceChildren(
      h("div.head", {}, h("h2#grants-title", { text: `Grants of compartment ${compartment.number}` }), h("span.spacer"),
        button("Grant…", () => grant(compartment), { name: "grant" })),
      body);
    const { users, groups } = await directory();
    let list;
    try {
      list = await get(`api/admin/compartments/${enc(compartmentId)}/grants`);
    } catch (error) {
      body.replaceChildren(h("p.error", { text: `Cannot list grants: ${error.message}` }));
      return;
    }
    body.replaceChildren(table(GRANT_COLUMNS, list.map((entry) => row(GRANT_COLUMNS, [
      targetLabel(entry, users, groups),
      entry.expires_at ? moment(entry.expires_at) : "never",
      moment(entry.granted_at),
      actorText(entry.granted_by),
      button("Revoke", () => revoke(compartment, entry, users, groups), { name: "revoke", kind: "small danger" }),
    ], { dataset: { userId: entry.user_id || "", groupId: entry.group_id || "" } })), { id: "grant-table", empty: "No grants." }));
  }

  async function grant(compartment) {
    const { users, groups } = await directory();
    const options = grantTargets(users, groups);
    const result = await action({
      title: `Grant compartment ${compartment.number}`,
      text: "A user, or every member of a group, may then open it.",
      fields: [
        options.length
          ? { name: "target", label: "To", type: "select", options }
          : { name: "target", label: "User id", required: true },
        { name: "expires_at", label: "Expires (optional)", type: "datetime-local" },
      ],
      confirmLabel: "Grant",
      run: (values) => {
        const body = values.target.startsWith("group:") ? { group_id: values.target.slice(6) }
          : { user_id: values.target.replace(/^user:/, "") };
        if (values.expires_at) body.expires_at = isoFromLocal(values.expires_at);
        return post(`api/admin/compartments/${enc(compartment.id)}/grants`, body);
      },
      done: (_, values) => `Granted compartment ${compartment.number} to ${options.find((o) => o.value === values.target)?.label || values.target}.`,
    });
    if (result) await loadGrants(compartment.id);
  }

  async function revoke(compartment, entry, users, groups) {
    const who = targetLabel(entry, users, groups);
    const path = entry.group_id
      ? `api/admin/compartments/${enc(compartment.id)}/grants/groups/${enc(entry.group_id)}`
      : `api/admin/compartments/${enc(compartment.id)}/grants/${enc(entry.user_id)}`;
    const result = await action({
      title: "Revoke grant",
      text: `${who} may no longer open compartment ${compartment.number}.`,
      confirmLabel: "Revoke",
      danger: true,
      run: () => del(path),
      done: () => `Grant of ${who} to compartment ${compartment.number} revoked.`,
    });
    if (result) await loadGrants(compartment.id);
  }

  // ---- history ------------------------------------------------------------------------------

  const HISTORY_COLUMNS = [
    { label: "#", num: true },
    { label: "Event" },
    { label: "By" },
    { label: "Details" },
  ];

  let historyRequest = 0;
  async function loadHistory() {
    const request = ++historyRequest;
    historyStatus.textContent = "Loading…";
    let events;
    try {
      events = await get(`api/admin/locker-banks/${enc(bankId)}/events`);
    } catch (error) {
      if (request === historyRequest) historyStatus.textContent = `Cannot load the history: ${error.message}`;
      return;
    }
    if (request !== historyRequest || stopped) return;
    await directory(); // actor names
    const newest = events.slice(-HISTORY_ROWS).reverse();
    history.replaceChildren(table(HISTORY_COLUMNS, newest.map((event) => row(HISTORY_COLUMNS, [
      String(event.position),
      [h("span.event-type", { text: event.type }), timeNode(event.recorded_at)],
      event.data && event.data.actor ? actorText(event.data.actor) : "–",
      details(event.data),
    ], { dataset: { type: event.type } })), { id: "history-table", empty: "No events." }));
    const shown = newest.length < events.length ? `, newest ${newest.length} shown` : "";
    historyStatus.textContent = `${events.length} event${events.length === 1 ? "" : "s"}${shown}, newest first.`;
  }

  async function refresh() {
    await load();
    await loadHistory();
  }

  // Live: re-render on every change of this bank; reload what is recorded when it may have changed.
  const unsubscribe = subscribe((id) => {
    if (id !== null && id !== bankId) return;
    render();
    const st = status();
    const key = JSON.stringify([st.presence, st.doors, (st.alerts || []).length, st.pending_commands,
      st.config_hash, st.applied_config_hash, st.supervision, st.name]);
    if (key !== historyKey) {
      historyKey = key;
      load();
      loadHistory();
    }
  });

  refresh();
  return () => {
    stopped = true;
    unsubscribe();
  };
}

