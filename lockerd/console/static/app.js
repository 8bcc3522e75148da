// lockerd operators' console: sign-in, navigation (#/section/...), and the views.
// Plain ES modules, no build step; only the public API of this origin.
import { ApiError, get, post, session, whenUnauthorized } from "./api.js";
import { refreshAlertCount, alertsView } from "./alerts.js";
import { auditView } from "./audit.js";
import { bankView } from "./bank.js";
import { knowUsers } from "./format.js";
import { connect, disconnect, fleetView, live, subscribe, subscribeAlerts } from "./fleet.js";
import { metricsView } from "./metrics.js";
import { peopleView } from "./people.js";
import { action, clearFlash, errorText } from "./ui.js";

const $ = (id) => document.getElementById(id);
let stopView = () => {};

// ---- signing in and out ----------------------------------------------------------------------

function showLogin(message) {
  stopView();
  stopView = () => {};
  disconnect();
  session.clear();
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("view").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("login-token").value = "";
  $("login-password").value = "";
  $("login-email").focus();
}

whenUnauthorized((message) => {
  if (session.token()) showLogin(message);
});
live.onRefused = async () => {
  // the websocket refuses a token that no longer works; ask the API why
  try {
    await get("api/admin/locker-banks");
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) showLogin("Your sign-in is no longer accepted; please sign in again.");
  }
};

$("password-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = $("login-email").value.trim();
  const password = $("login-password").value;
  if (!email || !password) {
    $("login-error").textContent = "Enter your email and password.";
    return;
  }
  $("login-error").textContent = "";
  try {
    const { token } = await post("api/login", { email, password }, { quiet401: true });
    const me = await get("api/me", { token, quiet401: true });
    if (me.role !== "admin") {
      await post("api/logout", undefined, { token, quiet401: true }).catch(() => {});
      $("login-error").textContent = "This account is not an administrator; the console needs the admin role.";
      return;
    }
    session.save(token, "password", me.email, me);
    start();
  } catch (error) {
    $("login-error").textContent = error instanceof ApiError && error.status === 401
      ? "Wrong email or password (or the account is disabled)."
      : `Cannot sign in: ${errorText(error)}`;
  }
});

$("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("login-token").value.trim();
  if (!token) {
    $("login-error").textContent = "Paste the admin token.";
    return;
  }
  $("login-error").textContent = "";
  try {
    await get("api/admin/locker-banks", { token, quiet401: true });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) $("login-error").textContent = "That token was not accepted.";
    else if (error instanceof ApiError && error.status === 403) $("login-error").textContent = "That token is not an admin token.";
    else $("login-error").textContent = `Cannot sign in: ${errorText(error)}`;
    return;
  }
  session.save(token, "token", "admin token");
  start();
});

$("sign-out").addEventListener("click", async () => {
  if (session.kind() === "password") await post("api/logout", undefined, { quiet401: true }).catch(() => {});
  clearFlash();
  showLogin("Signed out.");
});
$("flash-close").addEventListener("click", clearFlash);

function start() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("view").hidden = false;
  $("sign-out").hidden = false;
  $("who").hidden = false;
  $("who").textContent = `Signed in: ${session.who()}`;
  if (session.me()) knowUsers([session.me()]);
  live.attempt = 0;
  connect();
  refreshAlertCount();
  route();
}

// The open-alert count follows alert messages and the banks' alert lists (not every heartbeat).
const alertKeys = new Map();
subscribe((id) => {
  const ids = id === null ? [...live.banks.keys()] : [id];
  let changed = id === null;
  for (const bankId of ids) {
    const key = JSON.stringify(live.banks.get(bankId)?.alerts || []);
    if (alertKeys.get(bankId) !== key) {
      alertKeys.set(bankId, key);
      changed = true;
    }
  }
  if (changed) refreshAlertCount();
});
subscribeAlerts(() => refreshAlertCount());

// ---- creating a bank (from the fleet view) --------------------------------------------------

async function createBank() {
  const result = await action({
    title: "New locker bank",
    text: "Compartments are numbered from 1, one Modbus slave, addresses from 0; edit them later.",
    fields: [
      { name: "name", label: "Name", required: true },
      { name: "location", label: "Location" },
      { name: "compartments", label: "Compartments", type: "number", min: 1, max: 200, value: 4, required: true },
      { name: "heartbeat_interval_seconds", label: "Heartbeat interval (s)", type: "number", min: 1, max: 3600, value: 10 },
    ],
    confirmLabel: "Create",
    run: (values) => post("api/admin/locker-banks", {
      name: values.name,
      ...(values.location ? { location: values.location } : {}),
      ...(values.heartbeat_interval_seconds !== "" ? { heartbeat_interval_seconds: values.heartbeat_interval_seconds } : {}),
      compartments: Array.from({ length: Math.max(1, Number(values.compartments) || 1) },
        (_, i) => ({ number: i + 1, slave_id: 1, address: i })),
    }),
    done: (bank) => `Bank ${bank.name} created; provisioning token: ${bank.provisioning_token}`,
  });
  if (result && result.id) window.location.hash = `#/banks/${result.id}`;
}

// ---- routing ---------------------------------------------------------------------------------

function route() {
  if (!session.token()) return;
  const hash = window.location.hash.replace(/^#\/?/, "") || "fleet";
  const [path, search = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(search);
  const section = parts[0] === "banks" ? "fleet" : parts[0];
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  stopView();
  const view = $("view");
  view.dataset.view = parts[0] || "fleet";
  switch (parts[0]) {
    case "banks":
      stopView = bankView(view, decodeURIComponent(parts[1] || ""));
      break;
    case "people":
      stopView = peopleView(view);
      break;
    case "alerts":
      stopView = alertsView(view, params);
      break;
    case "audit":
      stopView = auditView(view, params);
      break;
    case "metrics":
      stopView = metricsView(view, params);
      break;
    default:
      view.dataset.view = "fleet";
      stopView = fleetView(view, { onCreate: createBank });
  }
  view.dataset.route = `/${hash}`;
  document.title = `lockerd · ${view.dataset.view}`;
}

window.addEventListener("hashchange", route);

if (session.token()) start();
else showLogin("");
