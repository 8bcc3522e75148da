// A tenant's metrics as live charts: the last hour from GET …/metrics, then every new point
// from the SSE stream GET /api/admin/tenants/{id}/metrics/stream. Charts are hand-drawn SVG.
import { enc, get, post, query, stream } from "./api.js";
import { moment } from "./format.js";
import { action, button, errorText, h } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const MAX_POINTS = 500;
const WINDOW_MS = 60 * 60 * 1000;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function number(value) {
  return Math.abs(value) >= 1000 || Number.isInteger(value) ? String(Math.round(value * 100) / 100)
    : value.toPrecision(4).replace(/\.?0+$/, "");
}

class Chart {
  constructor(agentName, metric) {
    this.points = [];
    this.title = h("h3", { text: `${metric}` });
    this.sub = h("p.hint", { text: `agent ${agentName}` });
    this.last = h("p.last", { text: "–" });
    this.svg = svg("svg", { viewBox: "0 0 400 140", preserveAspectRatio: "none", role: "img" });
    this.range = h("div.range");
    this.node = h("figure.chart", { dataset: { metric } }, this.title, this.sub, this.last, this.svg, this.range);
    this.node.style.margin = "0";
  }

  add(point) {
    this.points.push(point);
    this.points.sort((a, b) => a.t - b.t);
    if (this.points.length > MAX_POINTS) this.points.splice(0, this.points.length - MAX_POINTS);
  }

  draw() {
    const points = this.points;
    this.node.dataset.points = String(points.length);
    this.svg.replaceChildren(svg("line", { class: "axis", x1: 0, y1: 139, x2: 400, y2: 139 }));
    if (!points.length) return;
    const latest = points[points.length - 1];
    this.last.textContent = number(latest.value);
    this.node.dataset.last = String(latest.value);
    const t0 = points[0].t;
    const t1 = Math.max(latest.t, t0 + 1);
    let lo = Math.min(...points.map((p) => p.value));
    let hi = Math.max(...points.map((p) => p.value));
    if (lo === hi) {
      lo -= 1;
      hi += 1;
    }
    const x = (t) => ((t - t0) / (t1 - t0)) * 400;
    const y = (v) => 130 - ((v - lo) / (hi - lo)) * 120;
    const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ");
    this.svg.append(svg("path", { class: "line", d: points.length === 1 ? `M0,${y(latest.value)} L400,${y(latest.value)}` : path }));
    const title = svg("title", {});
    title.textContent = `${points.length} points from ${moment(new Date(t0).toISOString())} to ${moment(latest.timestamp)}; min ${number(lo)}, max ${number(hi)}`;
    this.svg.append(title);
    this.range.replaceChildren(h("span", { text: `min ${number(Math.min(...points.map((p) => p.value)))}` }),
      h("span", { text: `${points.length} point${points.length === 1 ? "" : "s"}` }),
      h("span", { text: `max ${number(Math.max(...points.map((p) => p.value)))}` }));
  }
}

export function metricsView(container, params) {
  let controller = null;
  const picker = h("select#tenant", { "aria-label": "Tenant" });
  const agents = h("div#agents");
  const status = h("p#stream-status.hint", { role: "status" });
  const charts = h("div#charts.charts");
  container.replaceChildren(h("section.card", { "aria-labelledby": "metrics-title" },
    h("div.head", {}, h("h2#metrics-title", { text: "Metrics" }), h("label", { for: "tenant", text: "Tenant" }), picker,
      h("span.spacer"),
      button("New tenant", createTenant, { name: "new-tenant", kind: "quiet" }),
      button("New agent", createAgent, { name: "new-agent", kind: "quiet" })),
    agents, status, charts));

  let tenants = [];
  async function loadTenants(selected) {
    try {
      tenants = await get("api/admin/tenants");
    } catch (error) {
      status.textContent = `Cannot list tenants: ${errorText(error)}`;
      return;
    }
    picker.replaceChildren(h("option", { value: "", text: tenants.length ? "choose a tenant" : "no tenants yet" }),
      ...tenants.map((tenant) => h("option", { value: tenant.id, text: tenant.name, selected: tenant.id === selected })));
    if (selected) show(selected);
  }

  picker.addEventListener("change", () => {
    window.location.hash = `#/metrics${query({ tenant: picker.value })}`;
  });

  async function createTenant() {
    const result = await action({
      title: "New tenant",
      fields: [{ name: "name", label: "Name", required: true }],
      confirmLabel: "Create",
      run: (values) => post("api/admin/tenants", values),
      done: (answer, values) => `Tenant ${values.name} created (id ${answer.id}).`,
    });
    if (result) window.location.hash = `#/metrics?tenant=${enc(result.id)}`;
  }

  async function createAgent() {
    const tenant = picker.value;
    if (!tenant) {
      status.textContent = "Choose a tenant first.";
      return;
    }
    const result = await action({
      title: "New metrics agent",
      text: "Its MQTT password is shown once.",
      fields: [{ name: "name", label: "Name", required: true }],
      confirmLabel: "Create",
      run: (values) => post(`api/admin/tenants/${enc(tenant)}/agents`, values),
      done: (answer) => `Agent created: id ${answer.agent_id}, MQTT user ${answer.mqtt_user}, password ${answer.mqtt_password}`,
    });
    if (result) loadTenants(tenant);
  }

  function show(tenantId) {
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    const tenant = tenants.find((t) => t.id === tenantId);
    const names = new Map((tenant?.agents || []).map((agent) => [agent.agent_id, agent.name]));
    agents.replaceChildren(h("p.hint", {
      text: tenant?.agents?.length ? `Agents: ${tenant.agents.map((a) => a.name).join(", ")}` : "No agents yet.",
    }));
    const series = new Map();
    let frame = 0;
    const chartFor = (point) => {
      const key = `${point.agent_id}\u0000${point.metric}`;
      let chart = series.get(key);
      if (!chart) {
        chart = new Chart(names.get(point.agent_id) || point.agent_id, point.metric);
        chart.node.dataset.agentId = point.agent_id;
        series.set(key, chart);
        const ordered = [...series.entries()].sort((a, b) => a[0].localeCompare(b[0]));
        charts.replaceChildren(...ordered.map(([, c]) => c.node));
      }
      return chart;
    };
    const add = (point) => {
      const t = Date.parse(point.timestamp);
      if (Number.isNaN(t) || typeof point.value !== "number") return;
      chartFor(point).add({ t, value: point.value, timestamp: point.timestamp });
    };
    const redraw = () => {
      frame = 0;
      for (const chart of series.values()) chart.draw();
      if (!series.size) charts.replaceChildren(h("p.empty", { text: "No points in the last hour yet." }));
    };
    charts.replaceChildren(h("p.hint", { text: "Loading…" }));
    const since = new Date(Date.now() - WINDOW_MS).toISOString();
    // Subscribe first, then read the past: a point stored in between shows up (once: by timestamp).
    const seen = new Set();
    const once = (point) => {
      const id = `${point.agent_id}|${point.metric}|${point.timestamp}|${point.value}`;
      if (seen.has(id)) return;
      seen.add(id);
      add(point);
      if (!frame) frame = requestAnimationFrame(redraw);
    };
    status.textContent = "Connecting to the live stream…";
    status.dataset.state = "connecting";
    const live = stream(`api/admin/tenants/${enc(tenantId)}/metrics/stream`, once, signal, () => {
      status.textContent = "Live";
      status.dataset.state = "live";
    });
    live.then(() => {
      if (!signal.aborted) {
        status.textContent = "The live stream ended; reload to resume.";
        status.dataset.state = "down";
      }
    }, (error) => {
      if (!signal.aborted) {
        status.textContent = `Live stream unavailable: ${errorText(error)}`;
        status.dataset.state = "down";
      }
    });
    get(`api/admin/tenants/${enc(tenantId)}/metrics${query({ since })}`).then((points) => {
      if (signal.aborted) return;
      for (const point of points) once(point);
      redraw();
    }, (error) => {
      charts.replaceChildren(h("p.error", { text: `Cannot load metrics: ${errorText(error)}` }));
    });
  }

  loadTenants(params.get("tenant") || "");
  return () => {
    if (controller) controller.abort();
  };
}
