// The admin page: the admin API, called with the session cookie and the page's CSRF token.
// Everything a user or model name reaches is set as text, never as HTML.
"use strict";

const API = "/api/v1/admin";
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const COLORS = ["#3b6ea5", "#e07b39", "#4b9e5f", "#c0504d", "#8064a2", "#4bacc6", "#9c8b2e", "#d16ba5"];

async function api(method, path, body) {
  const response = await fetch(API + path, {
    method,
    headers: { "X-CSRF-Token": CSRF, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  if (response.status === 401) {
    location.reload(); // the session ended: back to the login form
    throw new Error("logged out");
  }
  if (response.status === 204) return null;
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error ? answer.error.message : response.statusText);
  return answer;
}

function el(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const money = (n) => (n === null || n === undefined ? "–" : "$" + Number(n).toFixed(4));
const models = (text) => {
  const names = text.split(",").map((m) => m.trim()).filter(Boolean);
  return names.length ? names : null;
};

// Status: this instance's requests in flight and breakers, every 5 s.
async function showStatus() {
  const status = await api("GET", "/status");
  const box = document.getElementById("status");
  box.replaceChildren(
    el("span", `v${status.version}`),
    el("span", `in flight ${status.in_flight} / ${status.max_in_flight}`, { id: "in-flight" }),
    el("span", `rate ${status.limits.rate_limit_agent}` + (status.limits.redis ? " · shared on Redis" : " · this instance")),
  );
  for (const breaker of status.breakers) {
    box.append(el("span", `${breaker.name}: ${breaker.state}`, { class: `breaker ${breaker.state}` }));
  }
}

// Users, a page at a time, with this month's usage beside each.
let nextCursor = null;
let usageByUser = new Map();

async function loadUsers(reset = true) {
  const tbody = document.querySelector("#users tbody");
  if (reset) {
    tbody.replaceChildren();
    nextCursor = null;
    const usage = await api("GET", "/usage");
    usageByUser = new Map(usage.map((u) => [u.user_id, u]));
  }
  const page = await api("GET", "/users?limit=50" + (nextCursor ? `&cursor=${encodeURIComponent(nextCursor)}` : ""));
  for (const user of page.data) tbody.append(userRow(user));
  nextCursor = page.next_cursor;
  document.getElementById("more-users").hidden = !nextCursor;
  const select = document.querySelector('#usage-filter select[name="user_id"]');
  for (const user of page.data) {
    if (![...select.options].some((o) => o.value === user.id)) select.append(el("option", user.id, { value: user.id }));
  }
}

function userRow(user) {
  const usage = usageByUser.get(user.id);
  const used = usage ? usage.total_tokens : 0;
  const share = user.monthly_limit ? ` (${Math.round((100 * used) / user.monthly_limit)} %)` : "";
  const row = el("tr", undefined, { "data-user": user.id });
  row.append(
    el("td", user.id),
    el("td", user.allowed_models ? user.allowed_models.join(", ") : "all"),
    el("td", user.monthly_limit === null ? "none" : number(user.monthly_limit)),
    el("td", number(used) + share),
    el("td", money(usage ? usage.estimated_cost : null)),
    el("td", user.litellm_key_hint, { class: "key" }),
  );
  const actions = el("td", undefined, { class: "actions" });
  const edit = el("button", "Edit", { type: "button" });
  edit.addEventListener("click", () => editRow(row, user));
  const rotate = el("button", "Rotate key", { type: "button" });
  rotate.addEventListener("click", () => act(() => api("POST", `/users/${encodeURIComponent(user.id)}/rotate-key`), `New key for ${user.id}.`));
  const remove = el("button", "Remove", { type: "button", class: "danger" });
  remove.addEventListener("click", () => {
    if (confirm(`Remove ${user.id}? Their usage stays in the ledger.`)) {
      act(() => api("DELETE", `/users/${encodeURIComponent(user.id)}`), `${user.id} removed.`);
    }
  });
  actions.append(edit, rotate, remove);
  row.append(actions);
  return row;
}

function editRow(row, user) {
  const form = el("form", undefined, { class: "edit" });
  const allowed = el("input", undefined, { name: "allowed_models", placeholder: "all models" });
  allowed.defaultValue = user.allowed_models ? user.allowed_models.join(", ") : "";
  const limit = el("input", undefined, { name: "monthly_limit", type: "number", min: "0", placeholder: "no limit" });
  limit.defaultValue = user.monthly_limit === null ? "" : String(user.monthly_limit);
  form.append(allowed, limit, el("button", "Save", { type: "submit" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    // Only what was edited: an allow-list round-tripped through the text box could change.
    const changes = {};
    if (allowed.value !== allowed.defaultValue) changes.allowed_models = models(allowed.value);
    if (limit.value !== limit.defaultValue) changes.monthly_limit = limit.value === "" ? null : Number(limit.value);
    if (!Object.keys(changes).length) return loadUsers();
    act(() => api("PATCH", `/users/${encodeURIComponent(user.id)}`, changes), `${user.id} saved.`);
  });
  const cell = el("td", undefined, { colspan: "7" });
  cell.append(form);
  row.replaceChildren(cell);
}

async function act(call, done) {
  const message = document.getElementById("users-message");
  try {
    await call();
    message.textContent = done;
    message.className = "message ok";
    await loadUsers();
    await showUsage();
  } catch (error) {
    message.textContent = error.message;
    message.className = "message error";
  }
}

function addUser(event) {
  event.preventDefault();
  const form = event.target;
  const field = (name) => form.elements.namedItem(name).value.trim(); // not form.id: the form's own id
  const body = { id: field("id") };
  if (field("litellm_key")) body.litellm_key = field("litellm_key");
  const allowed = models(field("allowed_models"));
  if (allowed) body.allowed_models = allowed;
  if (field("monthly_limit") !== "") body.monthly_limit = Number(field("monthly_limit"));
  act(() => api("POST", "/users", body).then(() => form.reset()), `${body.id} added.`);
}

// Usage: the month's days as stacked bars by model, requests as bars, and each model's share.
async function showUsage() {
  const filter = document.getElementById("usage-filter");
  const month = filter.month.value;
  const user = filter.user_id.value;
  const query = `?month=${month}` + (user ? `&user_id=${encodeURIComponent(user)}` : "");
  const [daily, usage] = await Promise.all([api("GET", "/usage/daily" + query), api("GET", "/usage" + query)]);
  const days = daysOf(month);
  const names = [...new Set(daily.days.map((d) => d.model || "(none)"))].sort();
  const tokens = new Map(names.map((name) => [name, days.map(() => 0)]));
  const requests = days.map(() => 0);
  for (const row of daily.days) {
    const index = days.indexOf(row.day);
    if (index < 0) continue;
    tokens.get(row.model || "(none)")[index] += row.total_tokens;
    requests[index] += row.requests;
  }
  barChart(document.getElementById("tokens-chart"), days, names.map((name, i) => [name, tokens.get(name), COLORS[i % COLORS.length]]));
  barChart(document.getElementById("requests-chart"), days, [["requests", requests, COLORS[0]]]);
  const legend = document.getElementById("legend");
  legend.replaceChildren(...names.map((name, i) => {
    const item = el("li", name);
    item.style.setProperty("--swatch", COLORS[i % COLORS.length]);
    return item;
  }));
  modelTable(daily.days, Array.isArray(usage) ? usage : [usage]);
}

function daysOf(month) {
  const [year, m] = month.split("-").map(Number);
  const count = new Date(Date.UTC(year, m, 0)).getUTCDate();
  return Array.from({ length: count }, (_, i) => `${month}-${String(i + 1).padStart(2, "0")}`);
}

function modelTable(days, usage) {
  const totals = new Map();
  for (const row of days) {
    const name = row.model || "(none)";
    const total = totals.get(name) || { tokens: 0, requests: 0, estimated: 0, cost: null };
    total.tokens += row.total_tokens;
    total.requests += row.requests;
    total.estimated += row.estimated_requests;
    totals.set(name, total);
  }
  for (const user of usage) {
    for (const model of user.models || []) {
      const total = totals.get(model.model || "(none)");
      if (total && model.estimated_cost !== null) total.cost = (total.cost || 0) + model.estimated_cost;
    }
  }
  const all = [...totals.values()].reduce((sum, t) => sum + t.tokens, 0);
  const tbody = document.querySelector("#models tbody");
  tbody.replaceChildren(...[...totals.entries()].sort((a, b) => b[1].tokens - a[1].tokens).map(([name, t]) => {
    const row = el("tr");
    const share = all ? `${((100 * t.tokens) / all).toFixed(1)} %` : "–";
    const estimated = t.requests ? `${((100 * t.estimated) / t.requests).toFixed(1)} %` : "–";
    row.append(el("td", name), el("td", number(t.tokens)), el("td", share), el("td", number(t.requests)), el("td", estimated), el("td", money(t.cost)));
    return row;
  }));
}

// A bar chart in SVG: one bar per day, series stacked; the tallest bar's value on the axis.
function barChart(svg, days, series) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 640, height = 220, left = 56, bottom = 24, top = 8;
  const totals = days.map((_, i) => series.reduce((sum, [, values]) => sum + values[i], 0));
  const max = Math.max(1, ...totals);
  const step = (width - left) / days.length;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" });
  add("text", { x: left - 6, y: top + 10, "text-anchor": "end", class: "label" }, number(max));
  add("text", { x: left - 6, y: height - bottom, "text-anchor": "end", class: "label" }, "0");
  days.forEach((day, i) => {
    let y = height - bottom;
    for (const [name, values, color] of series) {
      if (!values[i]) continue;
      const h = ((height - bottom - top) * values[i]) / max;
      y -= h;
      const bar = add("rect", { x: left + i * step + 1, y, width: Math.max(1, step - 2), height: h, fill: color, class: "bar", "data-day": day, "data-series": name });
      const title = document.createElementNS(ns, "title");
      title.textContent = `${day} · ${name}: ${number(values[i])}`;
      bar.append(title);
    }
    if (i % 5 === 0) add("text", { x: left + i * step + step / 2, y: height - 6, "text-anchor": "middle", class: "label" }, day.slice(8));
  });
}

async function logout() {
  await fetch("/admin/logout", { method: "POST", headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" });
  location.assign("/admin");
}

document.addEventListener("DOMContentLoaded", () => {
  const filter = document.getElementById("usage-filter");
  filter.month.value = new Date().toISOString().slice(0, 7);
  filter.addEventListener("change", showUsage);
  document.getElementById("add-user").addEventListener("submit", addUser);
  document.getElementById("more-users").addEventListener("click", () => loadUsers(false));
  document.getElementById("logout").addEventListener("click", logout);
  showStatus();
  setInterval(showStatus, 5000);
  loadUsers().then(showUsage);
});
