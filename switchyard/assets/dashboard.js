// The operator's console: reads the control API once a second with the
// bearer token the operator pastes (kept in sessionStorage: this tab only)
// and drives it with confirmed buttons. Data is written with textContent,
// never as HTML.
"use strict";

const PHASES = ["planned", "expanded", "dual_write", "backfilled", "verified",
                "reads_switched", "contracted", "completed"];
const KEY = "switchyard-token";
let busy = false;

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function banner(text, info) {
  const b = document.getElementById("banner");
  b.textContent = text || "";
  b.className = info ? "info" : "";
  b.hidden = !text;
}

class Unauthorized extends Error {}

async function api(method, path) {
  const token = sessionStorage.getItem(KEY);
  const res = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token, "X-Switchyard-Actor": "dashboard" },
  });
  if (res.status === 401) throw new Unauthorized();
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const msg = (body.error && body.error.message) || res.statusText;
    throw new Error(`${method} ${path}: ${res.status} ${msg}`);
  }
  return body;
}

/// Runs a verb after the operator confirms it; the answer shows in the banner.
async function act(question, method, path) {
  if (!window.confirm(question)) return;
  try {
    busy = true;
    const body = await api(method, path);
    const what = body.reverted ? `reverted: ${body.reverted.join(", ") || "nothing"}` : "done";
    banner(`${method} ${path}: ${what}`, true);
  } catch (e) {
    if (e instanceof Unauthorized) return logout();
    banner(e.message);
  } finally {
    busy = false;
    refresh();
  }
}

function nextVerb(d) {
  const running = d.job && (d.job.state === "running" || d.job.state === "paused");
  if (running) return null;
  const stage = d.state ? d.state.stage : d.stage;
  switch (d.phase) {
    case "planned": return "expand";
    case "expanded": return "dual-write";
    case "dual_write": return "backfill";
    case "backfilled": return "verify";
    case "verified": return "switch-reads";
    case "reads_switched": {
      if (stage && stage.reads === "reverted") return "switch-reads";
      const parity = d.state && d.state.parity;
      return parity && parity.phase === "reads_switched" && parity.mismatches === 0 ? "contract" : "verify";
    }
    case "contracted": return "complete";
    default: return null;
  }
}

function phaseDiagram(phase) {
  const at = PHASES.indexOf(phase);
  return el("div", { class: "phases", "aria-label": "phases" },
    PHASES.map((p, i) => el("span", {
      class: "phase" + (i < at ? " done" : i === at ? " current" : ""),
      "data-phase": p,
    }, p.replace("_", " "))));
}

function routingText(d) {
  if (!d.routing) return "no rule (the proxy forwards statements untouched)";
  const stage = d.state ? d.state.stage : d.stage;
  const reads = stage && stage.reads === "reverted" ? "legacy (REVERTED)" : d.routing.reads;
  return `reads: ${reads} · writes: ${d.routing.writes}`;
}

function jobView(job) {
  if (!job) return "none";
  const total = job.rows_total_estimate || 0;
  const pct = total > 0 ? Math.min(100, (100 * job.rows_done) / total) : (job.state === "done" ? 100 : 0);
  const parts = [`${job.kind} ${job.state}`, `${job.rows_done} rows`];
  if (job.rows_per_second) parts.push(`${Math.round(job.rows_per_second)} rows/s`);
  if (job.eta_seconds !== null && job.eta_seconds !== undefined && job.state === "running") {
    parts.push(`ETA ${Math.round(job.eta_seconds)} s`);
  }
  // Set through the CSSOM: the page's CSP refuses style attributes.
  const fill = el("div", {});
  fill.style.width = `${pct}%`;
  return el("div", {},
    el("div", { class: "bar", role: "progressbar", "aria-valuenow": Math.round(pct) }, fill),
    el("div", {}, parts.join(" · ")),
    job.throttled ? el("div", { class: "muted" }, "held: " + job.throttled) : null,
    job.error ? el("div", { class: "reverted" }, job.error) : null);
}

function parityView(d) {
  const p = d.state && d.state.parity;
  if (!p) return "no pass yet";
  return `${p.mismatches} mismatching rows (pass completed in ${p.phase.replace("_", " ")})`;
}

function migrationCard(d) {
  const name = encodeURIComponent(d.name);
  const stage = d.state ? d.state.stage : d.stage;
  const reverted = stage && stage.reads === "reverted";
  const next = nextVerb(d);
  const job = d.job;
  const actions = [];
  if (next) {
    actions.push(el("button", {
      class: "primary", "data-verb": next,
      onclick: () => act(`Run "${next}" on ${d.name}?`, "POST", `/v1/migrations/${name}/${next}`),
    }, `Next: ${next}`));
  }
  if (job && job.kind === "backfill" && (job.state === "running" || job.state === "paused")) {
    const verb = job.state === "paused" ? "resume" : "pause";
    actions.push(el("button", {
      onclick: () => act(`${verb} the backfill of ${d.name}?`, "POST", `/v1/migrations/${name}/${verb}`),
    }, verb === "pause" ? "Pause backfill" : "Resume backfill"));
  }
  if (d.routing && d.routing.reads === "new") {
    actions.push(el("button", {
      class: "danger", "data-revert": d.name,
      onclick: () => act(`Revert routing of ${d.name}? Reads of the legacy column go back to it at once.`,
                         "POST", `/v1/migrations/${name}/revert`),
    }, "Revert routing"));
  }
  const uses = (d.legacy_uses || []).filter((u) => u.seconds_ago < 600);
  return el("div", { class: "card", "data-migration": d.name },
    el("h3", {}, d.name), el("span", { class: "table muted" }, d.table),
    phaseDiagram(d.phase),
    el("dl", { class: "facts" },
      el("dt", {}, "phase"), el("dd", { "data-field": "phase" }, d.phase),
      el("dt", {}, "routing"), el("dd", { "data-field": "routing", class: reverted ? "reverted" : "" }, routingText(d)),
      el("dt", {}, "job"), el("dd", {}, jobView(job)),
      el("dt", {}, "parity"), el("dd", {}, parityView(d)),
      el("dt", {}, "legacy name seen"), el("dd", {},
        uses.length === 0 ? "not in the last 10 minutes"
          : uses.map((u) => `${u.instance}: ${Math.round(u.seconds_ago)} s ago, "${u.statement}"`).join("; "))),
    el("div", { class: "actions" }, actions));
}

function table(id, head, rows) {
  const t = document.getElementById(id);
  t.replaceChildren(
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "empty", colspan: head.length }, "none"))));
}

async function refresh() {
  if (busy || !sessionStorage.getItem(KEY)) return;
  try {
    const [status, blockers, events] = await Promise.all([
      api("GET", "/v1/status"), api("GET", "/v1/blockers"), api("GET", "/v1/events"),
    ]);
    const details = await Promise.all(status.migrations.map(
      (m) => api("GET", `/v1/migrations/${encodeURIComponent(m.name)}`)));
    document.getElementById("login").hidden = true;
    document.getElementById("board").hidden = false;
    document.getElementById("version").textContent = `rules version ${status.rules_version}`;
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    const revertible = details.some((d) => d.routing && d.routing.reads === "new");
    document.getElementById("revert-all").hidden = !revertible;
    const box = document.getElementById("migrations");
    box.replaceChildren(...(details.length ? details.map(migrationCard)
      : [el("p", { class: "empty" }, "No migrations. Create one with POST /v1/migrations or switchyard ctl apply.")]));
    table("instances", ["instance", "acknowledged", "heartbeat", "live", "job holder"],
      status.instances.map((i) => el("tr", {},
        el("td", {}, i.id + (i.this ? " (this one)" : "")),
        el("td", {}, `${i.acknowledged_version} of ${status.rules_version}`),
        el("td", {}, `${i.heartbeat_age_seconds.toFixed(1)} s ago`),
        el("td", {}, i.live ? "yes" : "no"),
        el("td", {}, i.job_holder ? "yes" : ""))));
    table("blockers", ["pid", "user", "state", "lock", "in transaction", "query", ""],
      blockers.map((b) => el("tr", {},
        el("td", {}, b.pid), el("td", {}, b.user || ""), el("td", {}, b.state || ""),
        el("td", {}, `${b.mode} on ${b.table || "?"} ${b.granted ? "held" : "waiting"}`),
        el("td", {}, b.transaction_seconds ? `${b.transaction_seconds.toFixed(1)} s` : ""),
        el("td", { class: "query" }, b.query || ""),
        el("td", {},
          el("button", { onclick: () => act(`Cancel the query of session ${b.pid}?`, "POST", `/v1/blockers/${b.pid}/cancel`) }, "Cancel"),
          " ",
          el("button", { class: "danger", onclick: () => act(`Terminate session ${b.pid}? Its transaction rolls back.`, "POST", `/v1/blockers/${b.pid}/terminate`) }, "Terminate")))));
    table("events", ["when", "migration", "action", "by", "detail"],
      events.slice(-15).reverse().map((e) => el("tr", {},
        el("td", {}, new Date(e.at_unix_ms).toLocaleTimeString()),
        el("td", {}, e.migration || ""), el("td", {}, e.action), el("td", {}, e.actor),
        el("td", { class: "query" }, summarize(e.detail)))));
  } catch (e) {
    if (e instanceof Unauthorized) return logout();
    banner("Cannot reach the control API: " + e.message);
  }
}

function summarize(detail) {
  if (!detail) return "";
  if (detail.verb) return `${detail.verb}: ${detail.before || ""} → ${detail.after || ""}`;
  const text = JSON.stringify(detail);
  return text.length > 160 ? text.slice(0, 160) + "…" : text;
}

function logout() {
  sessionStorage.removeItem(KEY);
  document.getElementById("board").hidden = true;
  document.getElementById("revert-all").hidden = true;
  document.getElementById("login").hidden = false;
  banner("The token was refused (401). Enter the control API token.");
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
    banner("");
    refresh();
  });
  document.getElementById("revert-all").addEventListener("click", () =>
    act("Revert routing of EVERY migration? Reads go back to the legacy columns at once.", "POST", "/v1/revert"));
  if (sessionStorage.getItem(KEY)) refresh();
  else document.getElementById("login").hidden = false;
  setInterval(refresh, 1000);
});
