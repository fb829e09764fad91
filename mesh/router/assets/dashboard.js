// The capacity page: polls /dashboard/api/mesh and draws it. No framework, nothing from
// another origin; every string from the mesh goes in as text (never HTML).
"use strict";

const POLL_MS = 2000;
const token = new URLSearchParams(location.hash.slice(1)).get("token");
let lastOk = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return Math.round(seconds) + "s";
  if (seconds < 7200) return Math.round(seconds / 60) + "m";
  if (seconds < 172800) return Math.round(seconds / 3600) + "h";
  return Math.round(seconds / 86400) + "d";
}

function total(label, value) {
  return el("div", { class: "total" }, el("b", {}, value), el("span", {}, label));
}

function drawTotals(t) {
  const pct = t.capacity ? Math.round((100 * t.used) / t.capacity) + "%" : "–";
  document.getElementById("totals").replaceChildren(
    total("pods", t.pods),
    total("used of " + bytes(t.capacity), bytes(t.used) + " (" + pct + ")"),
    total("models loaded / registered", t.loaded + " / " + t.models),
    total("copies", t.copies),
    total("mesh LRU age", age(t.lru_age)),
    total("models failing", t.failed),
  );
}

function drawActivity(minutes) {
  const kinds = ["loads", "evictions", "misses", "failures"];
  const W = 600, H = 90, pad = 14;
  const max = Math.max(1, ...minutes.flatMap((m) => kinds.map((k) => m[k])));
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const slot = (W - 2 * pad) / Math.max(1, minutes.length);
  const bar = slot / (kinds.length + 1);
  minutes.forEach((m, i) => {
    kinds.forEach((k, j) => {
      const h = ((H - 2 * pad) * m[k]) / max;
      const r = document.createElementNS(svgNS, "rect");
      r.setAttribute("x", pad + i * slot + j * bar);
      r.setAttribute("y", H - pad - h);
      r.setAttribute("width", Math.max(1, bar - 1));
      r.setAttribute("height", h);
      r.setAttribute("class", k);
      const title = document.createElementNS(svgNS, "title");
      const when = new Date(m.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      title.textContent = `${when}: ${m[k]} ${k}`;
      r.append(title);
      svg.append(r);
    });
  });
  const sum = (k) => minutes.reduce((a, m) => a + m[k], 0);
  svg.setAttribute("aria-label", kinds.map((k) => `${sum(k)} ${k}`).join(", "));
  const axis = el("div", { class: "axis" },
    `per minute, the last ${minutes.length} (oldest left); peak ${max}; in all: ` +
    kinds.map((k) => `${sum(k)} ${k}`).join(", "));
  document.getElementById("activity").replaceChildren(svg, axis);
}

function tierBar(tier) {
  const frac = tier.capacity ? tier.used / tier.capacity : 0;
  const fill = el("div", { class: "fill" + (frac >= 0.97 ? " full" : frac >= 0.85 ? " high" : "") });
  fill.style.width = Math.min(100, 100 * frac).toFixed(1) + "%";
  return el("div", { class: "tier", "data-tier": tier.name },
    el("div", { class: "label" }, el("span", {}, tier.name),
      el("span", {}, `${bytes(tier.used)} of ${bytes(tier.capacity)} (${Math.round(100 * frac)}%)`)),
    el("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": tier.capacity,
      "aria-valuenow": tier.used, "aria-label": `${tier.name} used` }, fill));
}

function drawPod(p) {
  const models = p.models.length
    ? el("ul", { class: "models" }, ...p.models.map((m) =>
        el("li", { class: "model " + m.state, "data-model": m.model_id, title:
          `${m.model_id}: ${m.state}, ${bytes(m.size)}, idle ${age(m.idle)}` },
          m.model_id, el("small", {}, bytes(m.size) + " · " + age(m.idle)))))
    : el("div", { class: "empty" }, "no models");
  const host = p.host_models.length
    ? el("div", { class: "facts" }, el("span", {}, "in the host tier: "),
        ...p.host_models.map((m) => el("span", { class: "model host", "data-host-model": m }, m)))
    : null;
  const r = p.recent;
  return el("article", { class: "pod" + (p.draining ? " draining" : ""), "data-pod": p.pod_id },
    el("header", {}, el("div", {}, el("h3", {}, p.pod_id), el("div", { class: "addr" }, p.address)),
      el("span", { class: "badge" + (p.draining ? " draining" : "") }, p.draining ? "draining" : "serving")),
    ...p.tiers.map(tierBar),
    el("div", { class: "facts" },
      el("span", {}, "LRU age ", el("b", {}, age(p.lru_age))),
      el("span", {}, "models ", el("b", {}, p.models.length)),
      el("span", {}, "loading ", el("b", {}, p.loading)),
      el("span", {}, "in flight ", el("b", {}, p.in_flight)),
      el("span", {}, "heartbeat ", el("b", {}, age(p.heartbeat_age) + " ago"))),
    el("div", { class: "facts" },
      el("span", {}, "loads ", el("b", {}, r.loads)),
      el("span", {}, "evictions ", el("b", {}, r.evictions)),
      el("span", {}, "failures ", el("b", {}, r.failures))),
    models, host);
}

function draw(data) {
  drawTotals(data.totals);
  drawActivity(data.activity);
  const pods = document.getElementById("pods");
  pods.replaceChildren(...(data.pods.length ? data.pods.map(drawPod)
    : [el("div", { class: "empty" }, "no pods registered")]));
  document.getElementById("failures").replaceChildren(...(data.failures.length
    ? data.failures.map((f) => el("li", { "data-model": f.model_id }, el("b", {}, f.model_id), ": ", f.message))
    : [el("li", { class: "empty" }, "none")]));
  document.getElementById("vmodels").replaceChildren(...(data.vmodels.length
    ? data.vmodels.map((v) => el("li", {}, el("b", {}, v.vmodel_id), ` → ${v.active}`,
        v.target !== v.active ? ` (moving to ${v.target}: ${v.transition})` : ""))
    : [el("li", { class: "empty" }, "none")]));
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch("/dashboard/api/mesh", { headers, cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
    lastOk = Date.now();
    status.textContent = "live · " + new Date().toLocaleTimeString();
    status.classList.remove("stale");
  } catch (err) {
    status.textContent = `cannot reach the router (${err.message})` +
      (lastOk ? `; data from ${Math.round((Date.now() - lastOk) / 1000)}s ago` : "");
    status.classList.add("stale");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
