// The operators' console. Plain DOM, no framework, no inline script (the
// page's CSP forbids it). Every value from the fleet is put in the page as
// text (Node.textContent / setAttribute), never as HTML. Live: one
// EventSource on /v1/events; a `change` refreshes what the page shows.
"use strict";

const POOLS = ["coder", "tester", "reviewer", "architect", "researcher", "analyst", "optimizer",
  "security", "performance", "ui", "mobile", "devops", "database", "network", "infrastructure",
  "coordinator"];
const STATUSES = ["idle", "active", "busy", "failed", "recovering", "halted"];
const STATES = ["queued", "assigned", "running", "retrying", "completed", "dead", "cancelled", "poison"];
const PAGE = 50;
const TRUNCATE = 4000;

let session = { signedIn: false };
let current = null; // { name, params, refresh }
let refreshing = false, again = false;
let mounts = 0; // one per page shown: a form of an earlier one changes nothing

// ---- DOM helpers ----

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) { e.addEventListener(k.slice(2), v); (e._on = e._on || {})[k.slice(2)] = v; }
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
// Makes `target` look like `fresh` in place: a node of the same kind (and
// the same data-key, where rows carry one) is kept and only what differs
// changes, so a live refresh never rebuilds the row or button under the
// pointer; a row of another item is replaced, never re-aimed.
function morph(target, fresh) {
  const same = target.nodeType === fresh.nodeType && target.nodeName === fresh.nodeName &&
    (target.nodeType !== 1 || target.getAttribute("data-key") === fresh.getAttribute("data-key"));
  if (!same) { target.replaceWith(fresh); return; }
  if (target.nodeType !== 1) { if (target.nodeValue !== fresh.nodeValue) target.nodeValue = fresh.nodeValue; return; }
  for (const a of [...target.attributes]) if (!fresh.hasAttribute(a.name)) target.removeAttribute(a.name);
  for (const a of fresh.attributes) if (target.getAttribute(a.name) !== a.value) target.setAttribute(a.name, a.value);
  if (target._on || fresh._on) {
    for (const [t, f] of Object.entries(target._on || {})) target.removeEventListener(t, f);
    for (const [t, f] of Object.entries(fresh._on || {})) target.addEventListener(t, f);
    target._on = fresh._on;
  }
  morphKids(target, [...fresh.childNodes]);
}
function morphKids(parent, kids) {
  const old = [...parent.childNodes];
  kids.forEach((k, i) => { if (i < old.length) morph(old[i], k); else parent.append(k); });
  for (let i = kids.length; i < old.length; i++) old[i].remove();
}
// replaceChildren for a live refresh: updates in place (see morph).
function update(parent, ...kids) {
  morphKids(parent, [...el("div", {}, ...kids).childNodes]);
}
const $ = (s) => document.querySelector(s);
const link = (href, text) => el("a", { href }, text);
const agentLink = (id) => id ? link("#/agents/" + encodeURIComponent(id), id) : "";
const taskLink = (id) => link("#/tasks/" + encodeURIComponent(id), id);
const when = (ms) => ms ? new Date(Number(ms)).toLocaleString() : "";
// A number for people: at most 3 significant decimals, grouped thousands.
const num = (v) => typeof v === "number" ? v.toLocaleString(undefined, { maximumFractionDigits: 3 }) : (v ?? "?");
const ago = (ms) => {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - Number(ms)) / 1000);
  return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
};
function clip(v) {
  const text = typeof v === "string" ? v : JSON.stringify(v, null, 2);
  if (text === undefined) return "";
  return text.length > TRUNCATE ? text.slice(0, TRUNCATE) + `\n… (${text.length - TRUNCATE} more characters)` : text;
}
// A table row that stays the same node while it shows the same item.
const keyed = (key, cells) => Object.assign(cells, { key });
function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.filter(p => p).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}
function table(columns, rows, id) {
  return el("div", { class: "table-wrap" },
    el("table", { id },
      el("thead", {}, el("tr", {}, columns.map(c => el("th", { scope: "col" }, c)))),
      el("tbody", {}, rows.length ? rows.map(r => el("tr", { "data-key": r.key }, r.map(c => el("td", c && c.wrap ? { class: "wrap" } : {}, c && c.wrap ? c.wrap : c))))
        : el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, "nothing here")))));
}
function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}
function confirmAction(text) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  d.returnValue = "";
  d.showModal();
  $("#confirm-cancel").focus();
  return new Promise(resolve => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
}

// ---- the API ----

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: { "x-fleet-console": "1" } };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    return { status: 0, ok: false, data: { error: "unreachable", detail: String(e) } };
  }
  let data = null;
  try { data = await r.json(); } catch (_) { /* no body */ }
  if (r.status === 401 && path !== "/console/session") {
    session = { signedIn: false };
    route();
  }
  return { status: r.status, ok: r.ok, data };
}
async function get(path) {
  const r = await api("GET", path);
  if (!r.ok) throw new Error((r.data && (r.data.detail || r.data.error)) || `HTTP ${r.status}`);
  return r.data;
}

const role = () => session.userRole || "viewer";
const leading = () => !session.commander || session.commander.role === "leader";
const mayAct = () => (role() === "operator" || role() === "admin") && leading();

async function act(question, method, path, body, done) {
  if (!await confirmAction(question)) return;
  const r = await api(method, path, body);
  if (r.ok) toast(done);
  else toast(`refused (${r.status}): ${(r.data && (r.data.detail || r.data.error)) || "error"}`);
  refresh();
}

// ---- frame: navigation, who is signed in, the live feed ----

// What the navigation counts (from the commander's metrics, every 5 s).
const navCounts = { dead: null, poison: null };
function frame() {
  const n = (c) => c === null ? "" : ` (${num(c)})`;
  const pages = [["#/", "Overview"], ["#/agents", "Agents"], ["#/tasks", "Tasks"],
    ["#/dead-letters", "Dead letters" + n(navCounts.dead)], ["#/poison", "Poison" + n(navCounts.poison)], ["#/scaling", "Scaling"]];
  if (role() === "admin") pages.push(["#/audit", "Audit log"]);
  const here = "#/" + (location.hash.slice(2).split(/[/?]/)[0] || "");
  update($("#nav"), ...(session.signedIn ? pages.map(([h, t]) =>
    el("a", { href: h, "aria-current": (h === here || (h === "#/" && here === "#/")) ? "page" : null }, t)) : []));
  $("#who").replaceChildren(session.signedIn
    ? el("span", {}, `${session.name} (${role()})`, session.open ? "" :
      el("button", { id: "sign-out", onclick: signOut }, "Sign out"))
    : "");
  const b = $("#banner");
  const c = session.commander;
  if (session.signedIn && c && c.role !== "leader") {
    b.textContent = "This commander stands by: read-only." +
      (c.leader && c.leader.address ? ` The leader is at ${c.leader.address}.` : "");
    b.hidden = false;
  } else b.hidden = true;
}

let feed = null;
// What changed since a page last looked (the events' `kinds`).
const changed = new Set();
function live() {
  if (feed || !session.signedIn) return;
  feed = new EventSource("/v1/events");
  feed.addEventListener("change", (e) => {
    try { for (const k of JSON.parse(e.data).kinds || []) changed.add(k); } catch { changed.add("fleet"); }
    refresh();
  });
  feed.onerror = () => { /* the browser reconnects by itself */ };
}

async function signOut() {
  await api("DELETE", "/console/session");
  if (feed) { feed.close(); feed = null; }
  session = { signedIn: false };
  route();
}

function loginPage(main) {
  const input = el("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-label": "token" });
  const msg = el("p", { id: "login-error", class: "muted", "aria-live": "polite" });
  const form = el("form", {
    class: "login", onsubmit: async (e) => {
      e.preventDefault();
      const r = await api("POST", "/console/session", { token: input.value });
      input.value = "";
      if (!r.ok) { msg.textContent = "That token was not accepted."; return; }
      await start();
    }
  },
  el("h1", {}, "Sign in"),
  el("p", { class: "muted" }, "With a token from ", el("code", {}, "fleet-commander tokens issue"),
    ". It is kept in an HttpOnly cookie, never in the address."),
  el("label", {}, "Token", input), " ",
  el("p", {}, el("button", { type: "submit", id: "sign-in" }, "Sign in")), msg);
  main.replaceChildren(form);
  input.focus();
}

// ---- the router ----

function parseHash() {
  const h = location.hash.slice(1) || "/";
  const [path, query] = h.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || "") };
}
function setParams(name, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  history.replaceState(null, "", "#/" + name + (s ? "?" + s : ""));
}

async function route() {
  frame();
  const main = $("#main");
  if (!session.signedIn) { current = null; loginPage(main); return; }
  const { parts, params } = parseHash();
  const pages = {
    "": overview, agents: parts[1] ? agentPage : agentsPage, tasks: parts[1] ? taskPage : tasksPage,
    "dead-letters": heldPage("dead"), poison: heldPage("poison"), scaling: scalingPage, audit: auditPage,
  };
  const page = pages[parts[0] || ""] || overview;
  mounts += 1;
  current = page(main, parts, params);
  await refresh();
}

async function refresh() {
  if (!current) return;
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    await current.refresh();
    // For the console bench: when the first page was drawn with data.
    if (!performance.getEntriesByName("fleet-first-render").length) performance.mark("fleet-first-render");
  } catch (e) {
    toast("Could not load: " + e.message);
  } finally {
    refreshing = false;
    if (again) { again = false; setTimeout(refresh, 100); }
  }
}

// ---- sparklines, from the commander's own counters and histograms ----

const spark = { last: null, tput: [], lat: [] };

function parseMetrics(text) {
  const m = { done: 0, allocSum: 0, allocCount: 0, oldest: {}, failed: 0, retried: 0, deadTotal: 0,
    dead: 0, poison: 0, quarantined: 0, unschedulable: {}, unanswered: {} };
  const byPool = (key) => (/pool="([a-z]+)"/.exec(key) || [])[1];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const cut = line.lastIndexOf(" ");
    const key = line.slice(0, cut), v = Number(line.slice(cut + 1));
    if (key.startsWith("fleet_tasks_failed_total")) m.failed += v;
    else if (key.startsWith("fleet_tasks_retried_total")) m.retried += v;
    else if (key.startsWith("fleet_tasks_dead_lettered_total")) m.deadTotal += v;
    else if (key === "fleet_dead_letters") m.dead = v;
    else if (key === "fleet_poison_tasks") m.poison = v;
    else if (key === "fleet_agents_quarantined") m.quarantined = v;
    else if (key.startsWith("fleet_tasks_unschedulable{") && v > 0) m.unschedulable[byPool(key)] = v;
    else if (key.startsWith("fleet_scale_requests_unanswered{") && v > 0) m.unanswered[byPool(key)] = v;
    if (key.startsWith("fleet_tasks_completed_total")) m.done += v;
    else if (key.startsWith("fleet_allocation_duration_seconds_sum")) m.allocSum += v;
    else if (key.startsWith("fleet_allocation_duration_seconds_count")) m.allocCount += v;
    else if (key.startsWith("fleet_queue_oldest_wait_seconds{")) {
      const pool = /pool="([a-z]+)"/.exec(key);
      if (pool) m.oldest[pool[1]] = v;
    }
  }
  return m;
}

function sample(m) {
  const now = Date.now();
  if (spark.last && now - spark.last.t >= 500) {
    const dt = (now - spark.last.t) / 1000;
    spark.tput.push(Math.max(0, (m.done - spark.last.done) / dt));
    const n = m.allocCount - spark.last.allocCount;
    spark.lat.push(n > 0 ? 1000 * (m.allocSum - spark.last.allocSum) / n : 0);
    spark.tput = spark.tput.slice(-60);
    spark.lat = spark.lat.slice(-60);
  }
  if (!spark.last || now - spark.last.t >= 500) spark.last = { t: now, ...m };
}

function sparkline(values, label) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", "160");
  svg.setAttribute("height", "32");
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const max = Math.max(1e-9, ...values);
  const pts = values.map((v, i) => `${(i * 160) / Math.max(1, values.length - 1)},${30 - (28 * v) / max}`).join(" ");
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", pts || "0,30 160,30");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#0b57d0");
  line.setAttribute("stroke-width", "2");
  svg.append(line);
  return svg;
}

// ---- pages ----

function overview(main) {
  const summary = el("p", { id: "summary" });
  const totals = el("p", { id: "totals", class: "muted" });
  const warnings = el("ul", { id: "warnings", class: "warnings" });
  const sparks = el("div", { id: "sparks", class: "actions" });
  const tiles = el("div", { class: "tiles", id: "tiles" });
  const commanders = el("div");
  const decisions = el("div");
  const cache = { scaling: null, metrics: null, metricsAt: 0, governance: null };
  const governance = el("div", { id: "governance" });
  main.replaceChildren(el("h1", {}, "Fleet"), summary, totals, warnings, sparks, tiles,
    el("h2", {}, "Commanders"), commanders, el("h2", {}, "Recent scaling decisions"), decisions,
    el("h2", {}, "Governance"), governance);
  return {
    overview: true,
    async refresh() {
      // Each change costs the commander three small reads per page: the
      // scaling decisions are read again only when one was made, and the
      // metrics (sparklines, oldest wait) at most every 5 s.
      const now = Date.now();
      const needScaling = !cache.scaling || changed.has("scaling") || changed.has("fleet");
      const needMetrics = !cache.metrics || now - cache.metricsAt >= 5000;
      changed.clear();
      const [fleet, pools, cmd, scaling, metrics, gov, history] = await Promise.all([get("/v1/fleet"), get("/v1/pools"),
        get("/v1/commanders"), needScaling ? get("/v1/scaling?limit=100") : cache.scaling,
        needMetrics ? fetch("/metrics", { credentials: "same-origin" }).then(r => r.ok ? r.text() : "").catch(() => "") : null,
        needMetrics ? get("/v1/governance") : cache.governance,
        needMetrics ? get("/v1/history").catch(() => ({ samples: [] })) : cache.history]);
      cache.history = history;
      cache.governance = gov;
      update(governance, 
        el("p", { id: "validators" }, `${gov.validators} validators (${gov.live} live, weight ${gov.liveWeight} of ${gov.totalWeight}); ` +
          `tolerates f = ${gov.tolerance} lying; governed: ${gov.actions.length ? gov.actions.join(", ") : "nothing"}; ` +
          `quorum ${Math.round(gov.quorum * 100)}% of the weight`),
        table(["opened", "action", "params", "state", "allow / quarantine / deny", "proposer"],
          gov.proposals.slice(0, 10).map(p => [when(p.proposal.createdAt), p.proposal.action, JSON.stringify(p.proposal.params),
            p.state, `${p.weights.allow} / ${p.weights.quarantine} / ${p.weights.deny} (need ${p.proposal.quorum})`, p.proposal.proposer]),
          "proposals"));
      cache.scaling = scaling;
      if (needMetrics) {
        cache.metrics = parseMetrics(metrics);
        cache.metricsAt = now;
        sample(cache.metrics);
      }
      const m = cache.metrics;
      const lastOf = (a) => a.length ? a[a.length - 1] : 0;
      // Throughput and queue from the commander's own samples (the last
      // hour, so they survive a reload); allocation time from this page's.
      const hs = (history.samples || []).slice(-120);
      const tput = hs.slice(1).map((h, i) => Math.max(0, (h.completed - hs[i].completed) / Math.max(0.001, (h.ts - hs[i].ts) / 1000)));
      const queued = hs.map(h => h.queued);
      update(sparks,
        el("span", { id: "spark-tput" }, "tasks completed/s ", sparkline(tput, "tasks completed per second, last 10 minutes"), ` ${num(lastOf(tput))}`),
        el("span", { id: "spark-queued" }, "queued ", sparkline(queued, "tasks queued, last 10 minutes"), ` ${num(lastOf(queued))}`),
        el("span", {}, "allocation, mean ms ", sparkline(spark.lat, "mean allocation time in ms"), ` ${num(lastOf(spark.lat))}`));
      navCounts.dead = m.dead;
      navCounts.poison = m.poison;
      frame();
      update(totals, `Since this commander started: ${num(m.done)} tasks completed, ${num(m.failed)} attempts failed, ` +
        `${num(m.retried)} retried, ${num(m.deadTotal)} dead-lettered.`);
      // What needs an operator, each a sentence with where to look.
      const warn = [];
      const short = pools.filter(p => p.currentAgents < p.minAgents);
      const unanswered = short.filter(p => m.unanswered[p.type]).length;
      const why = unanswered ? `; no spawner answered the scale-up requests of ${unanswered}` : "";
      if (short.length > 3) warn.push([`${short.length} pools are below their minimum: ` +
        short.map(p => `${p.type} (${p.currentAgents} of ${p.minAgents})`).join(", ") + why, "#/scaling"]);
      else for (const p of short) warn.push([`pool ${p.type} has ${p.currentAgents} agents, below its minimum of ${p.minAgents}` +
        (m.unanswered[p.type] ? `: no spawner answered its last ${m.unanswered[p.type]} scale-up request(s)` : ""), "#/scaling"]);
      for (const p of pools) {
        const s = p.byStatus || {};
        const live = (s.idle || 0) + (s.active || 0) + (s.busy || 0);
        if (m.unschedulable[p.type]) warn.push([`pool ${p.type}: ${m.unschedulable[p.type]} queued task(s) need capabilities no agent of the pool declares`, `#/tasks?pool=${p.type}&state=queued`]);
        if (p.pausedAt) warn.push([`pool ${p.type}'s queue is paused (${num(p.queued)} waiting) since ${when(p.pausedAt)}`, "#/scaling"]);
        else if (p.queued > 0 && live === 0) warn.push([`pool ${p.type}: ${num(p.queued)} task(s) wait and no live agent can take them`, `#/agents?pool=${p.type}`]);
      }
      if (m.quarantined > 0) warn.push([`${m.quarantined} agent(s) in quarantine (given no tasks)`, "#/agents?quarantined=true"]);
      if (m.dead > 0) warn.push([`${num(m.dead)} dead letter(s) wait for an operator`, "#/dead-letters"]);
      if (m.poison > 0) warn.push([`${num(m.poison)} poison task(s) wait for an operator`, "#/poison"]);
      update(warnings, warn.map(([t, h]) => el("li", { "data-key": t }, link(h, t))));
      const by = fleet.byStatus || {};
      update(summary, `${fleet.totalAgents} agents (max ${fleet.maxAgents}): `,
        STATUSES.map(s => `${s} ${by[s] || 0}`).join(", "), ` — as of ${when(fleet.generatedAt)}`);
      const last = {};
      for (const d of scaling.items) if (!last[d.pool]) last[d.pool] = d;
      update(tiles, ...pools.map(p => {
        const s = p.byStatus || {};
        const live = (s.idle || 0) + (s.active || 0) + (s.busy || 0);
        const util = live ? ((s.active || 0) + (s.busy || 0)) / live : 0;
        const d = last[p.type];
        // Fairness means something only once the agents have had work to share.
        const judged = p.fairness && live >= 2 && p.fairness.tasksPerAgent >= 5;
        return el("section", { class: "tile", "data-pool": p.type, "data-key": p.type, "aria-label": `pool ${p.type}` },
          el("h3", {}, link("#/agents?pool=" + p.type, p.type),
            el("span", { class: "size" }, `${p.currentAgents} / ${p.minAgents}..${p.maxAgents}`)),
          el("div", { class: "bar", title: "size within its bounds" },
            el("span", { style: null, "data-w": 0 })),
          el("dl", {},
            STATUSES.map(st => [el("dt", {}, st), el("dd", { class: `count-${st}` }, s[st] || 0)]),
            el("dt", {}, "utilisation"), el("dd", {}, `${(util * 100).toFixed(0)}%`),
            el("dt", {}, "queued"), el("dd", { class: "queued" }, num(p.queued ?? 0)),
            el("dt", {}, "oldest wait"), el("dd", {}, m.oldest[p.type] ? `${m.oldest[p.type].toFixed(1)} s` : "—"),
            el("dt", {}, "fairness"), el("dd", { title: p.fairness ? `skew ${num(p.fairness.skewRatio)}, ${num(p.fairness.tasksPerAgent)} tasks per agent` : "" },
              judged ? p.fairness.label.replace("_", " ") : "— (too little work to judge)"),
            p.pausedAt ? [el("dt", {}, "queue"), el("dd", { class: "paused" }, "paused")] : "",
            el("dt", {}, "last scaling"), el("dd", {}, d ? `${d.direction} ${d.count} (${d.reason}), ${ago(d.ts)}` : "—")));
      }));
      // The bar's width, set through the CSSOM (the CSP forbids inline styles).
      tiles.querySelectorAll(".tile").forEach((t, i) => {
        const p = pools[i];
        t.querySelector(".bar span").style.width = `${Math.min(100, 100 * p.currentAgents / Math.max(1, p.maxAgents))}%`;
      });
      const list = cmd.commanders || cmd.list || [];
      update(commanders, table(["id", "role", "epoch", "address", "renewed"],
        list.map(c => [c.id, c.role, c.epoch, c.address, when(c.renewedAt)]), "commanders"));
      update(decisions, scalingTable(scaling.items.slice(0, 10)));
    }
  };
}

function scalingTable(items) {
  return table(["time", "pool", "decision", "reason", "live", "busy", "queued", "oldest wait", "utilisation"],
    items.map(d => [when(d.ts), d.pool, `${d.direction} ${d.count}`, d.reason, d.live, d.busy, d.queued,
      `${((d.oldestWaitMs || 0) / 1000).toFixed(1)} s`, `${((d.utilization || 0) * 100).toFixed(0)}%`]), "scaling");
}

function select(id, label, values, value) {
  return el("label", {}, label, el("select", { id, name: id },
    el("option", { value: "" }, "any"), values.map(v => el("option", { value: v, selected: v === value }, v))));
}
function text(id, label, value, placeholder) {
  return el("label", {}, label, el("input", { id, name: id, type: "search", value: value || "", placeholder }));
}
function pager(total, offset, go) {
  const end = Math.min(total, offset + PAGE);
  return el("div", { class: "pager" },
    el("button", { id: "prev", disabled: offset <= 0, onclick: () => go(Math.max(0, offset - PAGE)) }, "Previous"),
    el("span", { id: "range" }, total ? `${offset + 1}–${end} of ${total}` : "none"),
    el("button", { id: "next", disabled: end >= total, onclick: () => go(offset + PAGE) }, "Next"));
}
function filterForm(fields, name, params, onchange) {
  const form = el("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() }, fields);
  let timer = null;
  const mount = mounts;
  const update = () => {
    // A form of a page that was left (its inputs may fire `change` as they
    // are removed) changes nothing.
    if (mount !== mounts || !form.isConnected) return;
    const p = {};
    for (const f of form.querySelectorAll("input, select")) p[f.name] = f.value.trim();
    p.offset = "";
    setParams(name, p);
    onchange();
  };
  form.addEventListener("change", update);
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(update, 300); });
  return form;
}

function agentsPage(main, _parts, params) {
  const body = el("div");
  const form = filterForm([
    text("q", "Agent id", params.get("q"), "part of an id"),
    select("pool", "Pool", POOLS, params.get("pool")),
    select("status", "Status", STATUSES, params.get("status")),
    text("capability", "Capability", params.get("capability"), "exact"),
    select("quarantined", "Quarantined", ["true", "false"], params.get("quarantined")),
    select("draining", "Draining", ["true", "false"], params.get("draining")),
    select("sort", "Sort by", ["id", "pool", "status", "lastHeartbeat", "score", "tasksCompleted", "load"], params.get("sort")),
    select("order", "Order", ["asc", "desc"], params.get("order")),
  ], "agents", params, () => refresh());
  main.replaceChildren(el("h1", {}, "Agents"), form, body);
  return {
    async refresh() {
      const p = parseHash().params;
      const offset = Number(p.get("offset") || 0);
      p.set("limit", PAGE);
      const [page, departed] = await Promise.all([get("/v1/agents?" + p.toString()),
        offset ? [] : get("/v1/departed?limit=20").catch(() => [])]);
      const now = Date.now();
      const left = departed.length ? [el("h2", {}, "Left lately"),
        table(["id", "pool", "left", "why", "done", "failed", "health"],
          departed.map(d => keyed(d.id, [d.id, d.pool || "", ago(d.leftAt), d.leftBecause || "",
            num(d.tasksCompleted), num(d.tasksFailed), d.health])), "departed")] : [];
      update(body, 
        table(["id", "pool", "status", "capabilities", "load", "health", "done", "last heartbeat", "flags"],
          page.items.map(a => keyed(a.id, [agentLink(a.id), a.pool, el("span", { class: "status-" + a.status }, a.status),
            { wrap: a.capabilities.join(", ") }, a.load.toFixed(2), a.health.score, a.performance.tasksCompleted,
            ago(a.health.lastHeartbeat),
            [a.health.quarantinedUntil > now ? "quarantined" : "", a.draining ? "draining" : ""].filter(Boolean).join(" ")])),
          "agents"),
        pager(page.total, offset, (o) => { p.set("offset", o); p.delete("limit"); setParams("agents", Object.fromEntries(p)); refresh(); }),
        left);
    }
  };
}

function agentPage(main, parts) {
  const id = parts[1];
  const body = el("div");
  main.replaceChildren(el("h1", {}, "Agent ", el("span", { id: "agent-id" }, id)), body);
  return {
    async refresh() {
      const r = await api("GET", "/v1/agents/" + encodeURIComponent(id));
      if (r.status === 404) { update(body, el("p", {}, "No such agent (it may have left).")); return; }
      if (!r.ok) throw new Error(r.data && r.data.error || `HTTP ${r.status}`);
      const a = r.data;
      const [held, recent] = await Promise.all([
        get(`/v1/tasks?agent=${encodeURIComponent(id)}&state=running&limit=50`),
        get(`/v1/tasks?agent=${encodeURIComponent(id)}&limit=20`)]);
      const [assigned, dead, retrying] = await Promise.all(["assigned", "dead", "retrying"].map(st =>
        get(`/v1/tasks?agent=${encodeURIComponent(id)}&state=${st}&limit=50`)));
      const budget = await get(`/v1/agents/${encodeURIComponent(id)}/budget`);
      const h = a.health, now = Date.now();
      const topUp = async () => {
        const amount = Number(prompt(`Top up agent ${id}'s budget by how many ${budget.unit}?`, String(budget.allowance)));
        if (!(amount > 0)) return;
        act(`Add ${amount} ${budget.unit} to agent ${id}'s budget?`, "POST",
          `/v1/agents/${encodeURIComponent(id)}/budget`, { topUp: amount }, `Agent ${id} topped up by ${amount}`);
      };
      update(body, 
        mayAct() && a.status !== "failed" && !a.draining ? el("div", { class: "actions" },
          el("button", { id: "drain-agent", class: "danger",
            onclick: () => act(`Drain agent ${id}? It takes no new tasks, finishes what it holds, then leaves.`,
              "POST", `/v1/agents/${encodeURIComponent(id)}/drain`, undefined, `Agent ${id} is draining`) }, "Drain"),
          budget.allowance > 0 ? el("button", { id: "top-up", onclick: topUp }, "Top up budget") : "") : "",
        kv([["pool", a.pool], ["status", el("span", { id: "agent-status", class: "status-" + a.status }, a.status)],
          ["draining", a.draining ? "yes" : "no"], ["capabilities", a.capabilities.join(", ")],
          ["capacity", a.capacity], ["load", num(a.load)], ["priority", a.priority], ["registered", when(a.registeredAt)],
          ["health score", h.score], ["failures", h.failures], ["last heartbeat", `${when(h.lastHeartbeat)} (${ago(h.lastHeartbeat)})`],
          ["quarantine", h.quarantinedUntil > now ? `until ${when(h.quarantinedUntil)}` : "no"],
          ["stuck", h.stuck ? `${h.stuck} time(s), last ${when(h.stuckAt)}` : "never"],
          ["budget", el("span", { id: "agent-budget" }, budget.allowance > 0
            ? `${num(budget.balance)} of ${num(budget.allowance)} ${budget.unit} left (spent ${num(budget.spent)}; halted below ${num(budget.minBalance)}${budget.windowEnds ? `; renews ${when(budget.windowEnds)}` : ""})`
            : "none")],
          h.probation ? ["probation", "yes: one task at a time until its score recovers"] : null,
          ["tasks completed", num(a.performance.tasksCompleted)], ["success rate", `${num(100 * a.performance.successRate)}%`],
          ["average task time", `${num(a.performance.avgTaskTime)} ms`]]),
        el("h2", {}, "Current tasks"), taskTable([...assigned.items, ...held.items], "agent-tasks"),
        el("h2", {}, "Recent tasks"), taskTable(recent.items, "agent-recent"),
        el("h2", {}, "Failed tasks it tried last (dead or waiting to retry)"),
        taskTable([...dead.items, ...retrying.items], "agent-failed"));
    }
  };
}

function taskTable(items, id) {
  return table(["task", "client id", "pool", "state", "priority", "attempt", "agent", "submitted", "updated"],
    items.map(t => keyed(t.id, [taskLink(t.id), t.clientId || "", t.pool, el("span", { class: "state-" + t.state }, t.state),
      t.priority, t.attempt, agentLink(t.agentId), when(t.submittedAt), when(t.updatedAt)])), id);
}

function tasksPage(main, _parts, params) {
  const body = el("div");
  const form = filterForm([
    text("q", "Task id or client id", params.get("q"), "exact"),
    select("pool", "Pool", POOLS, params.get("pool")),
    select("state", "State", STATES, params.get("state")),
  ], "tasks", params, () => refresh());
  main.replaceChildren(el("h1", {}, "Tasks"), form,
    el("p", { class: "muted" }, "The 10,000 newest tasks; any task by its id or client id."), body);
  return {
    async refresh() {
      const p = parseHash().params;
      const offset = Number(p.get("offset") || 0);
      p.set("limit", PAGE);
      const page = await get("/v1/tasks?" + p.toString());
      update(body, taskTable(page.items, "tasks"),
        pager(page.total, offset, (o) => { p.set("offset", o); p.delete("limit"); setParams("tasks", Object.fromEntries(p)); refresh(); }));
    }
  };
}

function taskPage(main, parts) {
  const id = parts[1];
  const body = el("div");
  main.replaceChildren(el("h1", {}, "Task ", el("span", { id: "task-id" }, id)), body);
  return {
    async refresh() {
      const r = await api("GET", "/v1/tasks/" + encodeURIComponent(id));
      if (r.status === 404) { update(body, el("p", {}, "No such task (finished tasks expire).")); return; }
      if (!r.ok) throw new Error(r.data && r.data.error || `HTTP ${r.status}`);
      const t = r.data.task || r.data;
      const ev = await get(`/v1/tasks/${encodeURIComponent(id)}/evidence`);
      const evidence = Array.isArray(ev) ? ev : (ev.evidence || ev.items || []);
      // Every attempt from the task's own history: who, when, how long, how it ended.
      const timeline = [["submitted", when(t.submittedAt)]];
      for (const a of t.attempts || []) {
        const took = a.endedAt ? ` (${((a.endedAt - a.startedAt) / 1000).toFixed(1)} s)` : "";
        timeline.push([`attempt ${a.attempt} by ${a.agentId}`,
          `${when(a.startedAt)} → ${a.endedAt ? when(a.endedAt) : "now"}${took}: ${a.outcome}${a.error ? " — " + a.error : ""}`,
          "outcome-" + a.outcome]);
      }
      timeline.push([t.state, when(t.updatedAt)]);
      const open = ["queued", "assigned", "running", "retrying"].includes(t.state);
      update(body, 
        mayAct() && open ? el("div", { class: "actions" },
          el("button", { id: "cancel-task", class: "danger",
            onclick: () => act(`Cancel task ${id}?`, "POST", `/v1/tasks/${encodeURIComponent(id)}/cancel`, undefined, `Task ${id} cancelled`) },
          "Cancel")) : "",
        kv([["state", el("span", { id: "task-state", class: "state-" + t.state }, t.state)], ["pool", t.pool],
          ["client id", t.clientId || ""], ["priority", t.priority], ["attempt", t.attempt],
          ["agent", agentLink(t.agentId)], ["timeout", `${t.timeoutMs} ms`], ["retries", t.maxRetries],
          ["capabilities", (t.capabilities || []).join(", ")], t.error ? ["error", t.error] : null]),
        el("h2", {}, "Timeline"), el("ol", { id: "timeline" }, timeline.map(([k, v, c]) => el("li", { class: c || "" }, `${k}: ${v}`))),
        el("h2", {}, "Allocation evidence"),
        evidence.length ? el("ol", { id: "evidence" }, evidence.map(e => el("li", {},
          el("strong", {}, `attempt ${e.attempt ?? "?"}: ${e.agentId || e.agent || "?"}`),
          ` chosen by the ${e.strategy || "?"} strategy (score ${num(e.score)})${e.reason ? ": " + e.reason : ""}.`,
          el("details", {}, el("summary", {}, "raw"), el("pre", {}, clip(e)))))) : el("p", { class: "muted" }, "No allocation yet."),
        el("h2", {}, "Payload"), el("pre", { id: "payload" }, clip(t.payload)),
        t.result !== undefined && t.result !== null ? [el("h2", {}, "Result"), el("pre", { id: "result" }, clip(t.result))] : "");
    }
  };
}

// Tasks held aside until an operator acts: dead letters (out of retries)
// and poison (they took down too many agents).
function heldPage(which) {
  const [title, path, note] = which === "dead"
    ? ["Dead letters", "/v1/dead-letters", "Out of retries (or over their maxCost)."]
    : ["Poison", "/v1/poison", "Each took down tasks.poison_after agents (dead, restarted or stuck on it); requeue once fixed."];
  return (main) => {
    const body = el("div");
    main.replaceChildren(el("h1", {}, title), el("p", { class: "muted" }, note), body);
    return {
      async refresh() {
        const list = await get(path);
        // Dead letters in bulk: all of them at once (500 a click).
        const bulk = which === "dead" && mayAct() && list.length ? el("div", { class: "actions" },
          el("button", { id: "requeue-all",
            onclick: () => act(`Requeue all ${list.length} dead letters with fresh retries?`, "POST",
              "/v1/dead-letters/requeue", { all: true }, "Dead letters requeued") }, `Requeue all (${list.length})`),
          el("button", { id: "delete-all", class: "danger",
            onclick: () => act(`Delete all ${list.length} dead letters for good (records and evidence)?`, "POST",
              "/v1/dead-letters/delete", { all: true }, "Dead letters deleted") }, `Delete all (${list.length})`)) : "";
        update(body, bulk, table(["task", "client id", "pool", "attempts", "agents taken down", "error", "since", ""],
          list.map(t => keyed(t.id, [taskLink(t.id), t.clientId || "", t.pool, t.attempt, t.casualties || 0, { wrap: clip(t.error || "") },
            when(t.updatedAt),
            mayAct() ? el("button", { class: "requeue", "data-task": t.id,
              onclick: () => act(`Requeue task ${t.id} with fresh retries?`, "POST",
                `${path}/${encodeURIComponent(t.id)}/requeue`, undefined, `Task ${t.id} requeued`) }, "Requeue") : ""])),
          which === "dead" ? "dead-letters" : "poison"));
      }
    };
  };
}

function scalingPage(main) {
  const body = el("div");
  const pools = el("div");
  main.replaceChildren(el("h1", {}, "Scaling"), pools, el("h2", {}, "Decisions"), body);
  return {
    async refresh() {
      // The newest 100 decisions: a drain makes many, and the page stays short.
      const [scaling, views] = await Promise.all([get("/v1/scaling?limit=100"), get("/v1/pools")]);
      update(pools, table(["pool", "size", "bounds", "scaling", "queue", ""], views.map(p => keyed(p.type, [p.type, p.currentAgents,
        `${p.minAgents}..${p.maxAgents}`, p.scalingEnabled ? "auto" : "off",
        p.pausedAt ? el("span", { class: "paused" }, `paused ${ago(p.pausedAt)}, ${num(p.queued)} waiting`) : `${num(p.queued)} waiting`,
        mayAct() ? el("span", { class: "actions" },
          el("button", { class: "scale", "data-pool": p.type, onclick: () => scaleDialog(p) }, "Set size"),
          el("button", { class: "drain-pool", "data-pool": p.type,
            onclick: () => act(`Drain every agent of pool ${p.type}? The scaler refills it to its minimum.`,
              "POST", `/v1/pools/${p.type}/drain`, undefined, `Pool ${p.type} is draining`) }, "Drain pool"),
          p.pausedAt
            ? el("button", { class: "resume-queue", "data-pool": p.type,
              onclick: () => act(`Resume pool ${p.type}'s queue?`, "POST", `/v1/pools/${p.type}/resume`, undefined, `Pool ${p.type}'s queue resumed`) }, "Resume queue")
            : el("button", { class: "pause-queue", "data-pool": p.type,
              onclick: () => act(`Pause pool ${p.type}'s queue? Its tasks wait; none is handed out.`, "POST", `/v1/pools/${p.type}/pause`, undefined, `Pool ${p.type}'s queue paused`) }, "Pause queue"),
          el("button", { class: "clear-queue danger", "data-pool": p.type, disabled: !p.queued,
            onclick: () => act(`Cancel all ${p.queued} tasks waiting in pool ${p.type}'s queue?`, "POST", `/v1/pools/${p.type}/clear`, undefined, `Pool ${p.type}'s queue cleared`) }, "Clear queue")) : ""])), "pools"));
      update(body, scalingTable(scaling.items));
    }
  };
}

async function scaleDialog(p) {
  const size = prompt(`Size of pool ${p.type} (${p.minAgents}..${p.maxAgents}), or "auto":`, "auto");
  if (size === null) return;
  const body = size.trim() === "auto" ? { auto: true } : { agents: Number(size) };
  await act(`Set pool ${p.type} to ${size.trim()}?`, "POST", `/v1/pools/${p.type}/size`, body, `Pool ${p.type}: ${size.trim()}`);
}

function auditPage(main) {
  const body = el("div");
  main.replaceChildren(el("h1", {}, "Audit log"), body);
  return {
    async refresh() {
      const list = await get("/v1/audit?limit=200");
      const items = Array.isArray(list) ? list : (list.entries || []);
      update(body, table(["#", "time", "actor", "action", "target", "result"],
        items.map(e => [e.seq, when(e.ts), e.actor, e.action, { wrap: e.target || "" }, e.result]), "audit"));
    }
  };
}

// ---- start ----

async function start() {
  const r = await api("GET", "/console/session");
  session = r.ok ? r.data : { signedIn: false };
  if (session.signedIn) live();
  await route();
}

// The overview's sparklines move on when the fleet is quiet too (every
// 5 s: not a poll of the state, which comes with the change events).
setInterval(() => { if (current && current.overview) refresh(); }, 5000);

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", start);
