// The CDRS dashboard. Reads /v1/targets, /v1/partitions, /v1/plugins and
// /v1/stats every second and follows /v1/events (server-sent events, read
// with fetch so the bearer token can be sent; resumes with Last-Event-ID).
// Every text from the server is set with textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const WINDOW_MS = 10_000;   // share, latency and errors: the last 10 s
const MINUTE_MS = 60_000;   // dead letters per minute
const EVENTS_SHOWN = 200;

const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem("cdrs-token") || "";
let samples = [];            // [{t, stats}] of /v1/stats, oldest first
const lastChange = new Map(); // target id -> {time, text}
let lastEventId = "0";       // all the history the server still holds
let refreshSoon = null;

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function notice(text) {
  const n = $("#notice");
  n.textContent = text || "";
  n.hidden = !text;
}

async function getJson(path) {
  const r = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (r.status === 401) {
    throw new Error("this admin API needs a token: type it above");
  }
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cell(text, cls) {
  return el("td", text, cls);
}

// A table's one row when it has nothing to show.
function emptyRow(text, columns) {
  const tr = el("tr");
  const td = cell(text, "muted");
  td.colSpan = columns;
  tr.append(td);
  return tr;
}

function num(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function pct(x) {
  return Number.isFinite(x) ? (100 * x).toFixed(1) + "%" : "–";
}

function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 0.001) return Math.round(seconds * 1e6) + " µs";
  if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0) + " ms";
  return seconds.toFixed(2) + " s";
}

// The stats sample closest to `ms` ago (the oldest one if none is that old).
function sampleAgo(ms) {
  const want = Date.now() - ms;
  let best = samples[0];
  for (const s of samples) {
    if (s.t <= want) best = s;
  }
  return best;
}

// Quantile q of the deliveries between two cumulative histograms
// ([[upper bound s, cumulative count]]), linear within a bucket, as
// Prometheus's histogram_quantile does.
function quantile(q, now, then) {
  if (!now || !now.latency_buckets.length) return NaN;
  const before = new Map((then ? then.latency_buckets : []).map(([le, c]) => [le, c]));
  const total = now.latency_count - (then ? then.latency_count : 0);
  if (total <= 0) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, c] of now.latency_buckets) {
    const count = c - (before.get(le) || 0);
    if (count >= rank) {
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + (le - prevLe) * ((rank - prevCount) / inBucket) : le;
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe; // beyond the last bucket: at least this
}

function renderTargets(snapshot, stats) {
  const body = $("#targets tbody");
  const old = sampleAgo(WINDOW_MS);
  const targets = snapshot.targets || [];
  const totalCapacity = targets.reduce((a, t) => a + (t.health === "down" ? 0 : t.capacity), 0);
  const delta = (id, key) => {
    const now = (stats.targets[id] || {})[key] || 0;
    const then = old && old.stats.targets[id] ? old.stats.targets[id][key] || 0 : 0;
    return Math.max(0, now - then);
  };
  const delivered = targets.reduce((a, t) => a + delta(t.id, "delivered_records"), 0);
  const rows = targets.map((t) => {
    const s = stats.targets[t.id] || { latency_buckets: [], latency_count: 0 };
    const then = old && old.stats.targets[t.id];
    const tr = el("tr");
    tr.dataset.target = t.id;
    tr.dataset.health = t.health;
    const name = cell(t.id + (t.dynamic ? " (joined)" : ""));
    if (t.subscribers !== undefined) {
      // An sse:// stream: its subscribers and how far behind the slowest is.
      const lags = t.stream ? t.stream.subscribers.map((s) => s.lag_records) : [];
      const n = t.subscribers;
      let text = "stream · " + num(n) + (n === 1 ? " subscriber" : " subscribers");
      if (lags.length) text += " · lag ≤ " + num(Math.max(...lags));
      name.append(el("span", text, "stream"));
    }
    tr.append(name);
    const health = el("td");
    health.append(el("span", t.health, "badge " + t.health));
    if (t.reason) health.append(el("span", t.reason, "reason"));
    tr.append(health);
    tr.append(cell(num(t.capacity), "n"));
    tr.append(cell(num(t.own_inflight), "n"));
    tr.append(cell(num(s.queue_records || 0), "n"));
    tr.append(cell(delivered ? pct(delta(t.id, "delivered_records") / delivered) : "–", "n"));
    tr.append(cell(totalCapacity && t.health !== "down" ? pct(t.capacity / totalCapacity) : "–", "n"));
    tr.append(cell(duration(quantile(0.5, s, then)) + " / " + duration(quantile(0.99, s, then)), "n"));
    const sent = delta(t.id, "deliveries_ok") + delta(t.id, "deliveries_error");
    tr.append(cell(sent ? pct(delta(t.id, "deliveries_error") / sent) : "–", "n"));
    const breaker = ["closed", "open", "half-open"][s.breaker_state || 0];
    const b = el("td");
    b.append(el("span", breaker, "badge " + breaker));
    tr.append(b);
    tr.append(cell(num(s.ejections || 0), "n"));
    const change = lastChange.get(t.id);
    const c = el("td", change ? ago(change.time) : "–");
    if (change) c.append(el("span", change.text, "reason"));
    tr.append(c);
    return tr;
  });
  body.replaceChildren(...rows);
  const up = targets.filter((t) => t.health !== "down").length;
  const oldIn = old ? old.stats.records_in : stats.records_in;
  const secs = old ? Math.max(1, (Date.now() - old.t) / 1000) : 1;
  $("#summary").textContent =
    up + " of " + targets.length + " targets up · " +
    num(Math.round((stats.records_in - oldIn) / secs)) + " records/s in";
}

function renderPartitions(parts) {
  const rows = parts.map((p) => {
    const tr = el("tr");
    tr.append(cell(p.topic), cell(p.partition, "n"), cell(num(p.committed_offset), "n"),
      cell(num(p.high_watermark), "n"), cell(num(p.lag_records), "n"),
      cell(p.lag_seconds === null ? "–" : p.lag_seconds.toFixed(1), "n"),
      cell(num(p.inflight_records), "n"), cell(num(p.prefetched_records), "n"));
    const reading = el("td");
    reading.append(el("span", p.held_back ? "held back" : "flowing", p.held_back ? "badge held" : "badge healthy"));
    tr.append(reading);
    return tr;
  });
  if (!rows.length) rows.push(emptyRow("no partitions assigned to this instance", 9));
  $("#partitions tbody").replaceChildren(...rows);
}

// The shadow router's comparison: agreement, then where it would send
// records against the live router, busiest first.
function shadowSummary(sh) {
  const pct = (x) => (100 * x).toFixed(1) + "%";
  const out = [el("span", "shadow: agrees on " + pct(sh.agreement) + " of " + num(sh.records)
    + " records (" + sh.sample_percent + "% of batches, " + num(sh.skipped_batches) + " skipped)", "shadow")];
  const rows = Object.entries(sh.targets).sort((a, b) => b[1].shadow_share - a[1].shadow_share);
  for (const [id, t] of rows.slice(0, 8)) {
    const load = t.predicted_load == null ? "" : " · load ×" + t.predicted_load.toFixed(2);
    out.push(el("span", id + ": " + pct(t.shadow_share) + " (live " + pct(t.live_share) + ")" + load, "reason"));
  }
  return out;
}

function renderPlugins(plugins) {
  const rows = plugins.map((p) => {
    const tr = el("tr");
    tr.dataset.plugin = p.name;
    tr.append(cell(p.name + " (" + p.kind + ")"));
    const v = cell(p.version.slice(0, 12));
    v.title = p.version;
    tr.append(v, cell(p.source));
    tr.append(cell(num(p.calls), "n"));
    const faults = cell(num(p.faults), "n");
    faults.title = "traps " + p.traps + ", deadline " + p.deadline_misses + ", memory " + p.memory_faults;
    if (p.faults) faults.append(el("span", "trap " + p.traps + " · deadline " + p.deadline_misses + " · memory " + p.memory_faults, "reason"));
    tr.append(faults);
    tr.append(cell(p.call_p50_us + " / " + p.call_p99_us + " µs", "n"));
    const last = cell(p.last_event || "–", "wrap");
    if (p.last_error) last.append(el("span", "refused: " + p.last_error, "reason down"));
    if (p.shadow) last.replaceChildren(...shadowSummary(p.shadow));
    tr.append(last);
    const logs = el("td", null, "wrap");
    if (p.recent_logs && p.recent_logs.length) {
      const d = el("details");
      const newest = p.recent_logs[p.recent_logs.length - 1];
      d.append(el("summary", newest.level + ": " + newest.message.slice(0, 60)));
      d.append(el("pre", p.recent_logs.map((l) =>
        new Date(l.at_ms).toISOString().slice(11, 23) + " " + l.level + " " + l.message).join("\n")));
      logs.append(d);
    } else {
      logs.textContent = "–";
    }
    tr.append(logs);
    const act = el("td");
    const router = plugins.find((q) => q.kind === "router");
    if (token && p.kind === "shadow" && router) {
      const btn = el("button", "promote");
      btn.type = "button";
      btn.title = "POST /v1/plugins/" + router.name + "/promote-shadow: " + p.name + " becomes the live router";
      btn.addEventListener("click", () => act_on("/v1/plugins/" + encodeURIComponent(router.name) + "/promote-shadow",
        "make " + p.name + " the live router"));
      act.append(btn);
    }
    if (token && p.previous_version) {
      const btn = el("button", "roll back");
      btn.type = "button";
      btn.title = "POST /v1/plugins/" + p.name + "/rollback: back to " + p.previous_version.slice(0, 12);
      btn.addEventListener("click", () => act_on("/v1/plugins/" + encodeURIComponent(p.name) + "/rollback",
        "roll back " + p.name + " to " + p.previous_version.slice(0, 12)));
      act.append(btn);
    }
    tr.append(act);
    return tr;
  });
  $("#plugins tbody").replaceChildren(...rows);
}

function renderDeadLetters(stats) {
  const old = sampleAgo(MINUTE_MS);
  const before = new Map(((old && old.stats.dead_letters) || []).map((d) => [d.stage + "\u0000" + d.reason, d.count]));
  const rows = stats.dead_letters
    .map((d) => ({ ...d, recent: d.count - (before.get(d.stage + "\u0000" + d.reason) || 0) }))
    .sort((a, b) => b.recent - a.recent || b.count - a.count)
    .map((d) => {
      const tr = el("tr");
      tr.append(cell(d.stage), cell(d.reason, "wrap"), cell(num(d.recent), "n"), cell(num(d.count), "n"));
      return tr;
    });
  if (!rows.length) rows.push(emptyRow("none", 4));
  $("#dead-letters tbody").replaceChildren(...rows);
}

async function refresh() {
  refreshSoon = null;
  try {
    const [snapshot, parts, plugins, stats] = await Promise.all([
      getJson("/v1/targets"), getJson("/v1/partitions"), getJson("/v1/plugins"), getJson("/v1/stats"),
    ]);
    const t = Date.now();
    samples.push({ t, stats });
    samples = samples.filter((s) => t - s.t <= MINUTE_MS + 2 * POLL_MS);
    renderTargets(snapshot, stats);
    renderPartitions(parts);
    renderPlugins(plugins);
    renderDeadLetters(stats);
    if ($("#notice").dataset.kind === "error") {
      notice("");
      delete $("#notice").dataset.kind;
    }
  } catch (e) {
    notice(e.message);
    $("#notice").dataset.kind = "error";
  }
}

function refreshNow() {
  if (!refreshSoon) refreshSoon = setTimeout(refresh, 50);
}

function describe(e) {
  const f = (k) => (e[k] === undefined || e[k] === null ? "" : String(e[k]));
  switch (e.type) {
    case "target.health": return f("target") + ": " + f("from") + " → " + f("to") + (e.reason ? " (" + e.reason + ")" : "");
    case "target.joined": return f("target") + " joined (" + f("health") + ")";
    case "target.left": return f("target") + " left";
    case "breaker.opened": return f("target") + ": " + f("reason") + "; last: " + f("last_error");
    case "breaker.closed": return f("target");
    case "plugin.swapped": return f("plugin") + ": " + f("from").slice(0, 12) + " → " + f("to").slice(0, 12) + " (" + f("source") + ")";
    case "plugin.rolled_back": return f("plugin") + ": " + f("from").slice(0, 12) + " → " + f("to").slice(0, 12) + ": " + f("reason");
    case "plugin.refused": return f("plugin") + " " + f("version") + ": " + f("error");
    case "partition.assigned":
    case "partition.revoked": return (e.partitions || []).map((p) => p.topic + "[" + p.partition + "]").join(", ");
    case "config.reloaded": return "changed: " + ((e.changed || []).join(", ") || "nothing");
    case "config.refused": return (e.errors || []).join("; ");
    case "events.gap": return f("reason");
    default: return JSON.stringify(e);
  }
}

function onEvent(e) {
  if (e.target && (e.type.startsWith("target.") || e.type.startsWith("breaker."))) {
    const what = {
      "target.health": () => e.from + " → " + e.to,
      "target.joined": () => "joined",
      "target.left": () => "left",
      "breaker.opened": () => "breaker opened: " + e.reason,
      "breaker.closed": () => "breaker closed",
    }[e.type];
    if (what) lastChange.set(e.target, { time: Date.parse(e.time), text: what() });
  }
  const li = el("li");
  li.dataset.type = e.type;
  const time = el("time", e.time.slice(11, 23));
  time.dateTime = e.time;
  li.append(time, el("span", e.type, "type"), el("span", describe(e)));
  const list = $("#events");
  list.prepend(li);
  while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
  refreshNow();
}

function setConn(state) {
  const c = $("#conn");
  c.dataset.state = state;
  c.textContent = state;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Server-sent events over fetch (EventSource cannot send a bearer token).
async function follow() {
  for (;;) {
    try {
      const r = await fetch("/v1/events", { headers: { ...authHeaders(), "Last-Event-ID": lastEventId }, cache: "no-store" });
      if (!r.ok) throw new Error("events: " + r.status);
      setConn("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) lastEventId = line.slice(3).trim();
            else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
          }
          if (data) onEvent(JSON.parse(data));
        }
      }
      setConn("reconnecting");
    } catch (e) {
      setConn(String(e.message).endsWith("401") ? "refused" : "reconnecting");
    }
    await sleep(1000);
  }
}

async function act_on(path, what) {
  if (!confirm(what + "?")) return;
  try {
    const r = await fetch(path, { method: "POST", headers: authHeaders() });
    const text = await r.text();
    let body = text;
    try { body = JSON.stringify(JSON.parse(text)); } catch (_) { /* not JSON */ }
    notice(what + ": " + r.status + " " + body);
  } catch (e) {
    notice(what + ": " + e.message);
  }
  refreshNow();
}

function showActions() {
  $("#reload").hidden = !token;
  $("#token").value = token ? "********" : "";
}

$("#use-token").addEventListener("click", () => {
  const v = $("#token").value.trim();
  if (v !== "********") {
    token = v;
    if (token) sessionStorage.setItem("cdrs-token", token);
    else sessionStorage.removeItem("cdrs-token");
  }
  showActions();
  refreshNow();
});
$("#reload").addEventListener("click", () => act_on("/v1/reload", "reload the config file"));

showActions();
refresh();
setInterval(refresh, POLL_MS);
follow();
