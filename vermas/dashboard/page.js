// The dashboard page's script (served as /page.js: the page's CSP allows no inline script).
"use strict";
const KEY = new URLSearchParams(location.search).get("key") || "";
let snap = null;
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const ago = t => t ? Math.max(0, Math.round(Date.now()/1000 - t)) + "s ago" : "";
const $ = q => document.querySelector(q);
function rows(sel, items, fn) { $(sel).innerHTML = items.map(fn).join("") || '<tr><td class="muted">none</td></tr>'; }
async function act(name, params) {
  const r = await fetch("/action/" + name + "?key=" + encodeURIComponent(KEY), {method: "POST",
    headers: {"Content-Type": "application/json", "X-Vermas-Key": KEY}, body: JSON.stringify(params)});
  const body = await r.json().catch(() => ({}));
  $("#msg").textContent = name + ": " + (body.ok ? "done" : (body.error || r.status));
}
async function pane(agent) {
  const r = await fetch("/pane?agent=" + encodeURIComponent(agent) + "&key=" + encodeURIComponent(KEY));
  const p = $("#pane"); p.hidden = false; p.textContent = agent + "\n" + await r.text();
}
function nudge(agent) { const m = prompt("Nudge " + agent + " with:"); if (m) act("nudge", {target: agent, message: m}); }
function sling(bead) { const rig = prompt("Sling " + bead + " to rig:", (snap.queues[0] || {status: {}}).status.rig || ""); if (rig) act("sling", {bead_id: bead, target: rig}); }
function reject(mr) { const why = prompt("Reject " + mr + " because:"); if (why) act("mq_reject", {mr_id: mr, reason: why}); }
// Buttons carry what they act on as data attributes (no inline handlers: the page's CSP allows
// no inline script); one listener dispatches them.
const BUTTONS = {
  pane: pane, nudge: nudge, sling: sling, reject: reject,
  retry: mr => act("mq_retry", {mr_id: mr}),
  ack: key => act("escalation_ack", {key: key}),
};
document.addEventListener("click", e => {
  const b = e.target instanceof Element ? e.target.closest("button[data-do]") : null;
  if (b && Object.hasOwn(BUTTONS, b.dataset.do)) BUTTONS[b.dataset.do](b.dataset.arg || "");
});
function render(s) {
  snap = s;
  $("#town").textContent = "town " + s.town;
  rows("#agents tbody", s.agents, a => `<tr data-agent="${esc(a.address)}"><td>${esc(a.address)}</td>
    <td class="s-${esc(a.state)}" title="${esc(a.evidence)}">${esc(a.state)}</td><td>${ago(a.since)}</td>
    <td>${esc(a.hooked || "")}${a.molecule ? ` <span class="muted">(${esc(a.molecule)})</span>` : ""}</td><td>${a.unread || ""}</td><td class="muted">${esc(a.last_events.join(" "))}</td>
    <td><button data-do="pane" data-arg="${esc(a.address)}">pane</button> <button data-do="nudge" data-arg="${esc(a.address)}">nudge</button></td></tr>`);
  $("#queues div").innerHTML = s.queues.map(q => `<h2>${esc(q.status.rig)} <span class="muted">${esc(q.status.untested ? "UNTESTED: no test_command" : q.status.test_command)}${q.status.paused_sha ? " · PAUSED " + esc(q.status.paused_reason) : ""}</span></h2>
    <div class="muted">${Object.entries(q.status.counts).filter(e => e[1]).map(e => esc(e[0]) + " " + e[1]).join(" · ") || "empty"}</div>
    <table class="mq">${q.requests.map(r => `<tr data-mr="${esc(r.id)}" data-state="${esc(r.state)}"><td>${esc(r.id)}</td><td>${esc(r.bead)}</td><td>${esc(r.polecat)}</td><td>${esc(r.state)}</td><td>${r.attempts}</td>
      <td>${["rework","conflict","failed"].includes(r.state) ? `<button data-do="retry" data-arg="${esc(r.id)}">retry</button>` : ""}
      ${["merged","rejected"].includes(r.state) ? "" : `<button data-do="reject" data-arg="${esc(r.id)}">reject</button>`}</td></tr>`).join("")}</table>
    ${q.runs.length ? "<div>runs: " + q.runs.map(r => `${esc(r.sha)} ${esc(r.status)} ${r.duration_s.toFixed(1)}s`).join(" · ") + "</div>" : ""}
    ${q.last_failure ? `<div>last failure: ${esc(q.last_failure.mr)} ${esc(q.last_failure.state)} ${esc(q.last_failure.reason || "")}<pre>${esc(q.last_failure.output_tail || "")}</pre></div>` : ""}`).join("") || '<span class="muted">no rigs</span>';
  $("#convoys div").innerHTML = s.convoys.map(c => `<div>${esc(c.id)} ${esc(c.title)} <span class="bar"><i style="width:${c.total ? 100 * c.closed / c.total : 0}%"></i></span> ${c.closed}/${c.total}</div>`).join("") || '<span class="muted">none</span>';
  $("#bystatus").textContent = Object.entries(s.beads_by_status).map(e => e[0] + " " + e[1]).join(" · ") || "no beads";
  rows("#ready", s.ready, b => `<tr data-bead="${esc(b.id)}"><td>${esc(b.id)}</td><td>P${b.priority}</td><td>${esc(b.title)}</td><td><button data-do="sling" data-arg="${esc(b.id)}">sling</button></td></tr>`);
  rows("#mail tbody", Object.entries(s.unread_mail), e => `<tr><td>${esc(e[0])}</td><td>${e[1]}</td></tr>`);
  rows("#escalations tbody", s.problems, p => `<tr data-kind="${esc(p.kind)}" data-subject="${esc(p.subject)}"><td class="s-dead">${esc(p.problems.join(" "))}</td>
    <td>${esc(p.kind.replace("_", " "))} ${esc(p.subject)}</td><td>${esc(p.reason)}</td><td>${ago(p.since)}</td>
    <td>${p.escalations.map(e => `to ${esc(e.to)} ${e.acked ? "acked" : `<button data-do="ack" data-arg="${esc(e.key)}">ack</button>`}`).join("<br>")}
    ${["rework","conflict","failed"].includes(p.state) ? `<button data-do="retry" data-arg="${esc(p.subject)}">retry</button> <button data-do="reject" data-arg="${esc(p.subject)}">reject</button>` : ""}</td></tr>`);
  $("#cost").hidden = !s.cost;
  if (s.cost) {
    const line = l => `<tr><td>${esc(l.key)}</td><td>${l.tokens.input_tokens + l.tokens.cache_read_tokens + l.tokens.cache_creation_tokens}</td><td>${l.tokens.output_tokens}</td><td>$${l.cost_usd.toFixed(4)}${l.estimated_usd ? " (est.)" : ""}</td></tr>`;
    const head = "<tr><th></th><th>tokens in</th><th>out</th><th>USD</th></tr>";
    $("#cost div").innerHTML = `<table class="cost">${head}${s.cost.by_agent.map(line).join("")}${line({...s.cost.total, key: "total"})}</table>
      <h3>by bead</h3><table class="cost">${head}${s.cost.by_bead.map(line).join("")}</table>`;
  }
  rows("#feed tbody", s.feed, f => `<tr><td class="muted">${ago(f.at)}</td><td>${esc(f.who)}</td><td>${esc(f.what)}</td></tr>`);
  document.body.dataset.updated = String(s.taken_at);
}
const source = new EventSource("/events?key=" + encodeURIComponent(KEY));
source.addEventListener("snapshot", e => { render(JSON.parse(e.data)); $("#conn").textContent = "live"; });
source.onerror = () => { $("#conn").textContent = "reconnecting…"; };
