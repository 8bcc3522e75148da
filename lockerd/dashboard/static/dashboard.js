// lockerd fleet dashboard: plain JavaScript, no build step.
// Streams /ws/status (snapshot, then one message per changed bank) into a table; a selected
// bank shows its compartments and its event history (GET /api/admin/locker-banks/{id}/events).
"use strict";

(() => {
  const TOKEN_KEY = "lockerd.adminToken";
  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const HISTORY_ROWS = 200;
  const PROBE_PATH = "api/admin/locker-banks/00000000-0000-0000-0000-000000000000";

  const $ = (id) => document.getElementById(id);
  const el = {
    connection: $("connection"),
    signOut: $("sign-out"),
    login: $("login"),
    loginForm: $("login-form"),
    token: $("token"),
    loginError: $("login-error"),
    workspace: $("workspace"),
    summary: $("summary"),
    filter: $("filter"),
    rows: document.querySelector("#banks tbody"),
    empty: $("empty"),
    detail: $("detail"),
    detailTitle: $("detail-title"),
    detailClose: $("detail-close"),
    facts: $("detail-facts"),
    doors: $("doors"),
    alerts: $("alerts"),
    historyRefresh: $("history-refresh"),
    historyStatus: $("history-status"),
    history: document.querySelector("#history tbody"),
  };

  const state = {
    banks: new Map(), // id -> bank status as sent by the server
    rows: new Map(), // id -> <tr>
    selected: null,
    historyKey: null, // what the shown history was loaded for
    historyRequest: 0,
    serverOffsetMs: 0, // server clock minus browser clock, from the snapshot
    socket: null,
    attempt: 0,
    retryTimer: null,
    dirty: new Set(),
    frame: 0,
  };

  // ---- token --------------------------------------------------------------------------------

  const getToken = () => sessionStorage.getItem(TOKEN_KEY);

  function showLogin(message) {
    disconnect();
    sessionStorage.removeItem(TOKEN_KEY);
    el.workspace.hidden = true;
    el.signOut.hidden = true;
    el.login.hidden = false;
    el.loginError.textContent = message || "";
    setConnection("idle", "Not connected");
    el.token.value = "";
    el.token.focus();
  }

  // 401 bad token, 403 not an admin, 404 (admin routes check the role first): token is fine.
  async function probeToken(token) {
    const response = await fetch(PROBE_PATH, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    if (response.status === 401) return "That token was not accepted.";
    if (response.status === 403) return "That token is not an admin token.";
    if (response.status >= 500) throw new Error(`server answered ${response.status}`);
    return null;
  }

  el.loginForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = el.token.value.trim();
    if (!token) {
      el.loginError.textContent = "Enter the admin token.";
      return;
    }
    el.loginError.textContent = "";
    try {
      const problem = await probeToken(token);
      if (problem) {
        el.loginError.textContent = problem;
        return;
      }
    } catch (error) {
      el.loginError.textContent = `Cannot reach the server: ${error.message}`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });

  el.signOut.addEventListener("click", () => showLogin(""));

  // ---- websocket with reconnect -------------------------------------------------------------

  function setConnection(kind, text) {
    el.connection.dataset.state = kind;
    el.connection.textContent = text;
  }

  function start() {
    el.login.hidden = true;
    el.workspace.hidden = false;
    el.signOut.hidden = false;
    state.attempt = 0;
    connect();
  }

  function disconnect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    if (state.socket) {
      const socket = state.socket;
      state.socket = null;
      socket.onclose = null;
      socket.close(1000, "dashboard closed");
    }
  }

  function connect() {
    const token = getToken();
    if (!token) {
      showLogin("");
      return;
    }
    disconnect();
    const url = new URL("ws/status", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", token);
    setConnection("connecting", state.attempt ? "Reconnecting…" : "Connecting…");
    const socket = new WebSocket(url);
    let opened = false;
    state.socket = socket;
    socket.onopen = () => {
      opened = true;
    };
    socket.onmessage = (event) => {
      if (socket !== state.socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "snapshot") {
        state.attempt = 0;
        applySnapshot(message);
        setConnection("live", "Live");
      } else if (message.type === "bank") {
        applyBank(message.bank);
      }
    };
    socket.onclose = (event) => {
      if (socket !== state.socket) return;
      state.socket = null;
      if (opened) {
        scheduleReconnect(closeText(event.code));
      } else {
        // The handshake failed: a refused token, or the server is down.
        probeToken(token).then(
          (problem) => (problem ? showLogin(problem) : scheduleReconnect("Cannot connect")),
          () => scheduleReconnect("Server unreachable"),
        );
      }
    };
  }

  function closeText(code) {
    switch (code) {
      case 1001:
        return "Server went away";
      case 1008:
      case 1013:
        return "Dropped as too slow";
      default:
        return "Connection lost";
    }
  }

  function scheduleReconnect(reason) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    state.attempt += 1;
    setConnection("down", `${reason}; reconnecting in ${Math.ceil(delay / 1000)} s`);
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, delay);
  }

  window.addEventListener("online", () => {
    if (!state.socket && getToken()) {
      state.attempt = 0;
      connect();
    }
  });

  // ---- fleet table --------------------------------------------------------------------------

  function applySnapshot(message) {
    if (message.server_time) {
      state.serverOffsetMs = Date.parse(message.server_time) - Date.now();
    }
    state.banks = new Map(message.banks.map((bank) => [bank.id, bank]));
    state.rows.clear();
    el.rows.replaceChildren();
    for (const bank of sortedBanks()) {
      const row = createRow(bank.id);
      state.rows.set(bank.id, row);
      el.rows.append(row);
      updateRow(row, bank);
    }
    if (state.selected && !state.banks.has(state.selected)) closeDetail();
    afterChange();
    if (state.selected) renderDetail(true);
  }

  function applyBank(bank) {
    const known = state.banks.get(bank.id);
    state.banks.set(bank.id, bank);
    if (!known || known.name !== bank.name) placeRow(bank.id);
    state.dirty.add(bank.id);
    if (!state.frame) state.frame = requestAnimationFrame(flush);
  }

  // Rows are updated at most once per animation frame, however many messages arrive.
  function flush() {
    state.frame = 0;
    for (const id of state.dirty) {
      const row = state.rows.get(id);
      const bank = state.banks.get(id);
      if (row && bank) updateRow(row, bank);
      if (id === state.selected) renderDetail(false);
    }
    state.dirty.clear();
    afterChange();
  }

  const byName = (a, b) =>
    a.name.localeCompare(b.name, undefined, { sensitivity: "base" }) || a.id.localeCompare(b.id);

  function sortedBanks() {
    return [...state.banks.values()].sort(byName);
  }

  function placeRow(id) {
    let row = state.rows.get(id);
    if (!row) {
      row = createRow(id);
      state.rows.set(id, row);
    }
    const bank = state.banks.get(id);
    const next = sortedBanks().find((other) => other.id !== id && byName(bank, other) < 0);
    el.rows.insertBefore(row, next ? state.rows.get(next.id) : null);
  }

  function createRow(id) {
    const row = document.createElement("tr");
    row.dataset.bankId = id;
    const nameCell = document.createElement("th");
    nameCell.scope = "row";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "bank-link";
    button.addEventListener("click", () => select(id));
    const location = document.createElement("span");
    location.className = "location";
    nameCell.append(button, location);
    row.append(nameCell);
    for (const name of ["presence", "last-seen", "pending", "mailbox", "restarts", "supervision", "alerts"]) {
      const cell = document.createElement("td");
      cell.className = name;
      if (["pending", "mailbox", "restarts", "alerts"].includes(name)) cell.classList.add("num");
      row.append(cell);
    }
    row.addEventListener("click", (event) => {
      if (!event.target.closest("button")) select(id);
    });
    return row;
  }

  function badge(kind, text) {
    const span = document.createElement("span");
    span.className = `badge ${kind}`;
    span.textContent = text;
    return span;
  }

  function updateRow(row, bank) {
    const cells = row.cells;
    const button = cells[0].querySelector("button");
    button.textContent = bank.name || bank.id;
    button.setAttribute("aria-label", `${bank.name || bank.id}: show details`);
    cells[0].querySelector(".location").textContent = bank.location || "";
    row.dataset.presence = bank.presence;
    row.dataset.supervision = bank.supervision;
    row.dataset.decommissioned = String(Boolean(bank.decommissioned));
    cells[1].replaceChildren(badge(`presence-${bank.presence}`, bank.presence));
    if (bank.decommissioned) cells[1].append(" ", badge("bad", "decommissioned"));
    setLastSeen(cells[2], bank.last_seen);
    cells[3].textContent = bank.pending_commands;
    cells[4].textContent = bank.mailbox;
    cells[5].textContent = bank.restarts;
    cells[6].replaceChildren(badge(`supervision-${bank.supervision}`, bank.supervision));
    const alerts = (bank.alerts || []).length;
    cells[7].replaceChildren(alerts ? badge("alert", String(alerts)) : document.createTextNode("0"));
    row.classList.toggle("selected", bank.id === state.selected);
    if (bank.id === state.selected) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");
  }

  function afterChange() {
    applyFilter();
    const count = { online: 0, offline: 0, unknown: 0, failed: 0 };
    for (const bank of state.banks.values()) {
      count[bank.presence] = (count[bank.presence] || 0) + 1;
      if (bank.supervision === "failed") count.failed += 1;
    }
    const total = state.banks.size;
    const parts = [`${total} ${total === 1 ? "bank" : "banks"}`, `${count.online} online`, `${count.offline} offline`];
    if (count.unknown) parts.push(`${count.unknown} unknown`);
    if (count.failed) parts.push(`${count.failed} failed`);
    el.summary.textContent = parts.join(" · ");
  }

  function applyFilter() {
    const words = el.filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const [id, row] of state.rows) {
      const bank = state.banks.get(id);
      const text = [bank.name, bank.location, bank.id, bank.presence, bank.supervision]
        .filter(Boolean)
        .join(" ")
        .toLowerCase();
      const visible = words.every((word) => text.includes(word));
      row.hidden = !visible;
      if (visible) shown += 1;
    }
    el.empty.hidden = shown > 0;
    el.empty.textContent = state.banks.size ? "No locker bank matches the filter." : "No locker banks yet.";
  }

  el.filter.addEventListener("input", applyFilter);

  // ---- "last seen 12 s ago", kept fresh every second -----------------------------------------

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, Math.round((Date.now() + state.serverOffsetMs - Date.parse(iso)) / 1000));
    if (seconds < 90) return `${seconds} s ago`;
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return `${minutes} min ago`;
    const hours = Math.round(minutes / 60);
    if (hours < 36) return `${hours} h ago`;
    return `${Math.round(hours / 24)} d ago`;
  }

  function setLastSeen(cell, iso) {
    let time = cell.querySelector("time");
    if (!iso) {
      cell.replaceChildren(document.createTextNode("never"));
      return;
    }
    if (!time) {
      time = document.createElement("time");
      cell.replaceChildren(time);
    }
    time.dateTime = iso;
    time.title = new Date(iso).toLocaleString();
    time.textContent = ago(iso);
  }

  setInterval(() => {
    for (const time of document.querySelectorAll("time[datetime].ago, #banks time[datetime]")) {
      time.textContent = ago(time.dateTime);
    }
  }, 1000);

  // ---- bank details: compartments, alerts, event history -------------------------------------

  function select(id) {
    state.selected = id;
    for (const [rowId, row] of state.rows) {
      row.classList.toggle("selected", rowId === id);
      if (rowId === id) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
    el.detail.hidden = false;
    state.historyKey = null;
    renderDetail(true);
    el.detail.focus();
  }

  function closeDetail() {
    const previous = state.selected;
    state.selected = null;
    state.historyKey = null;
    el.detail.hidden = true;
    for (const row of state.rows.values()) {
      row.classList.remove("selected");
      row.removeAttribute("aria-current");
    }
    const button = previous && state.rows.get(previous)?.querySelector("button");
    if (button) button.focus();
  }

  el.detailClose.addEventListener("click", closeDetail);
  el.historyRefresh.addEventListener("click", () => loadHistory(state.selected));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.selected) closeDetail();
  });

  function fact(term, value) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value ?? "–";
    return [dt, dd];
  }

  function renderDetail(force) {
    const bank = state.banks.get(state.selected);
    if (!bank) return;
    el.detailTitle.textContent = bank.name || bank.id;
    const seen = document.createElement("time");
    if (bank.last_seen) {
      seen.dateTime = bank.last_seen;
      seen.className = "ago";
      seen.title = new Date(bank.last_seen).toLocaleString();
      seen.textContent = ago(bank.last_seen);
    } else {
      seen.textContent = "never";
    }
    const configState =
      bank.config_hash && bank.config_hash === bank.applied_config_hash ? "applied" : "not applied";
    el.facts.replaceChildren(
      ...fact("Id", bank.id),
      ...fact("Location", bank.location),
      ...fact("Presence", badge(`presence-${bank.presence}`, bank.presence)),
      ...fact("Last seen", seen),
      ...fact("Supervision", `${bank.supervision}, ${bank.restarts} restart${bank.restarts === 1 ? "" : "s"}`),
      ...fact("Pending commands", String(bank.pending_commands)),
      ...fact("Mailbox", String(bank.mailbox)),
      ...fact("Configuration", bank.config_hash ? configState : "–"),
      ...(bank.decommissioned ? fact("Decommissioned", badge("bad", "decommissioned")) : []),
      ...((bank.out_of_service || []).length
        ? fact("Out of service", `compartment ${bank.out_of_service.join(", ")}`) : []),
      ...(bank.last_error ? fact("Last error", bank.last_error) : []),
    );

    const doors = Object.entries(bank.doors || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
    el.doors.replaceChildren(
      ...doors.map(([number, door]) => {
        const item = document.createElement("li");
        item.className = `door door-${door}`;
        item.dataset.number = number;
        const label = document.createElement("span");
        label.className = "door-number";
        label.textContent = `No. ${number}`;
        const value = document.createElement("span");
        value.className = "door-state";
        value.textContent = door;
        item.append(label, value);
        return item;
      }),
    );
    if (!doors.length) el.doors.append(emptyItem("No compartments reported."));

    // the bank's active alerts (open, or acknowledged while they last) as the server keeps them (GET /api/admin/alerts), newest first
    const alerts = [...(bank.alerts || [])].reverse();
    el.alerts.replaceChildren(
      ...alerts.map((alert) => {
        const item = document.createElement("li");
        item.dataset.alertId = alert.id;
        item.dataset.state = alert.state;
        const name = document.createElement("strong");
        name.textContent = alert.type;
        const raised = document.createElement("time");
        raised.dateTime = alert.raised_at;
        raised.title = new Date(alert.raised_at).toLocaleString();
        raised.textContent = formatMoment(alert.raised_at);
        item.append(name, " ", badge(`alert-${alert.state}`, alert.state), " ", raised, " ",
          detailChips(alert.data || {}));
        return item;
      }),
    );
    if (!alerts.length) el.alerts.append(emptyItem("None."));

    // Reload the history when something that is recorded as an event may have changed.
    const key = JSON.stringify([
      bank.id,
      bank.presence,
      bank.doors,
      (bank.alerts || []).map((alert) => `${alert.id}:${alert.state}`),
      bank.pending_commands,
      bank.config_hash,
      bank.applied_config_hash,
    ]);
    if (force || key !== state.historyKey) {
      state.historyKey = key;
      loadHistory(bank.id);
    }
  }

  function emptyItem(text) {
    const item = document.createElement("li");
    item.className = "none";
    item.textContent = text;
    return item;
  }

  // An event's data as key/value chips (readable; a long value is cut short, in full on hover).
  const ISO_MOMENT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

  function chipValue(value) {
    if (typeof value === "string" && ISO_MOMENT.test(value)) return formatMoment(value);
    if (Array.isArray(value) && value.every((item) => typeof item !== "object")) return value.join(", ");
    if (Array.isArray(value)) return `${value.length} item${value.length === 1 ? "" : "s"}`;
    if (value && typeof value === "object") {
      if (value.kind === "admin_token") return "admin token";
      if (value.kind === "user") return `user ${value.id}`;
      return JSON.stringify(value);
    }
    if (typeof value === "boolean") return value ? "yes" : "no";
    return String(value);
  }

  function detailChips(data) {
    const list = document.createElement("ul");
    list.className = "kvs";
    for (const [key, value] of Object.entries(data)) {
      if (value === null || value === undefined || value === "") continue;
      const item = document.createElement("li");
      item.className = "kv";
      item.dataset.key = key;
      const name = document.createElement("span");
      name.className = "k";
      name.textContent = key.replaceAll("_", " ");
      const text = document.createElement("span");
      text.className = "v";
      text.textContent = chipValue(value);
      text.title = typeof value === "object" ? JSON.stringify(value) : String(value);
      item.append(name, text);
      list.append(item);
    }
    if (!list.children.length) list.textContent = "–";
    return list;
  }

  const MOMENT = new Intl.DateTimeFormat(undefined, {
    day: "numeric",
    month: "short",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });

  function formatMoment(iso) {
    const moment = new Date(iso);
    return Number.isNaN(moment.getTime()) ? iso : MOMENT.format(moment);
  }

  async function loadHistory(id) {
    if (!id) return;
    const request = ++state.historyRequest;
    el.historyStatus.textContent = "Loading…";
    let response;
    try {
      response = await fetch(`api/admin/locker-banks/${encodeURIComponent(id)}/events`, {
        headers: { Authorization: `Bearer ${getToken()}` },
        cache: "no-store",
      });
    } catch (error) {
      if (request === state.historyRequest) el.historyStatus.textContent = `Cannot load history: ${error.message}`;
      return;
    }
    if (request !== state.historyRequest || id !== state.selected) return;
    if (response.status === 401 || response.status === 403) {
      showLogin("The token is no longer accepted.");
      return;
    }
    if (!response.ok) {
      el.historyStatus.textContent = `Cannot load history (HTTP ${response.status}).`;
      return;
    }
    const events = await response.json();
    if (request !== state.historyRequest) return;
    const newest = events.slice(-HISTORY_ROWS).reverse();
    el.history.replaceChildren(
      ...newest.map((event) => {
        const row = document.createElement("tr");
        const position = document.createElement("td");
        position.className = "num";
        position.textContent = event.position;
        const what = document.createElement("td");
        const type = document.createElement("span");
        type.className = "event-type";
        type.textContent = event.type;
        const time = document.createElement("time");
        time.dateTime = event.recorded_at;
        time.textContent = formatMoment(event.recorded_at);
        what.append(type, time);
        const details = document.createElement("td");
        details.className = "event-data";
        details.append(detailChips(event.data || {}));
        row.append(position, what, details);
        return row;
      }),
    );
    const shown = newest.length < events.length ? `, newest ${newest.length} shown` : "";
    el.historyStatus.textContent = `${events.length} event${events.length === 1 ? "" : "s"}${shown}.`;
  }

  // ---- go -----------------------------------------------------------------------------------

  if (getToken()) start();
  else showLogin("");
})();
