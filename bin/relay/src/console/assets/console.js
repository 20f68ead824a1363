// relay console: what the pages do with script. Every page works without it; this refreshes
// the overview's figures and charts, tails the event list, and selects all dead letters.
// No inline script, no eval, no innerHTML: the CSP allows this file alone.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const SVG = "http://www.w3.org/2000/svg";
  const EVERY_MS = 2000;

  async function getJSON(url) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { accept: "application/json" },
    });
    if (response.status === 401) {
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      throw new Error("signed out");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        message = (await response.json()).message || message;
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response.json();
  }

  // Overview: the cards' figures and the charts of the last hour.
  function overview(root) {
    const updated = $("#updated");
    const tick = async () => {
      try {
        const o = await getJSON("/api/v1/overview");
        for (const el of $$("[data-k]", root)) {
          const card = o.cards[el.dataset.k];
          if (!card) continue;
          el.textContent = card.text;
          el.closest(".card").dataset.tone = card.tone;
        }
        for (const svg of $$("svg[data-chart]", root)) draw(svg, o.history);
        if (updated) updated.textContent = "As of " + new Date(o.now).toLocaleTimeString();
        root.dataset.updates = String(Number(root.dataset.updates || 0) + 1);
      } catch (e) {
        if (updated) updated.textContent = "Cannot reach the console: " + e.message;
      }
    };
    tick();
    setInterval(tick, EVERY_MS);
  }

  // One line per series, over the history's time span, scaled to the highest value.
  function draw(svg, history) {
    const keys = svg.dataset.series.split(",");
    const width = 600;
    const height = 160;
    const top = 14;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (history.length < 2) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", "8");
      text.setAttribute("y", "20");
      text.textContent = "collecting: a point every 5 s";
      svg.appendChild(text);
      return;
    }
    const t0 = history[0].at;
    const span = Math.max(1, history[history.length - 1].at - t0);
    let max = 0;
    for (const s of history) {
      for (const k of keys) {
        const v = s[k];
        if (typeof v === "number" && Number.isFinite(v)) max = Math.max(max, v);
      }
    }
    const highest = max;
    max = max > 0 ? max * 1.1 : 1;
    keys.forEach((k, i) => {
      const points = history
        .filter((s) => typeof s[k] === "number" && Number.isFinite(s[k]))
        .map((s) => {
          const x = ((s.at - t0) / span) * width;
          const y = height - (s[k] / max) * (height - top);
          return x.toFixed(1) + "," + y.toFixed(1);
        });
      if (points.length === 0) return;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", "s" + i);
      line.setAttribute("points", points.join(" "));
      svg.appendChild(line);
    });
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "4");
    label.setAttribute("y", "11");
    label.textContent = "max " + highest.toLocaleString(undefined, { maximumFractionDigits: 1 });
    svg.appendChild(label);
  }

  // Events: with "Live tail" on, new events matching the filters appear on top.
  function tail(box) {
    const table = $("table.events tbody");
    if (!table) return;
    let timer = null;
    const seen = () => new Set($$("tr[data-id]", table).map((tr) => tr.dataset.id));
    const tick = async () => {
      try {
        const page = await getJSON(box.dataset.tail);
        const known = seen();
        const fresh = page.events.filter((e) => !known.has(e.event_id));
        for (const e of fresh.reverse()) table.insertBefore(row(e), table.firstChild);
        box.closest("label").dataset.tailed = String(Number(box.closest("label").dataset.tailed || 0) + 1);
      } catch (_) { /* tried again at the next tick */ }
    };
    box.addEventListener("change", () => {
      if (box.checked) {
        tick();
        timer = setInterval(tick, EVERY_MS);
      } else {
        clearInterval(timer);
      }
    });
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function row(e) {
    const tr = document.createElement("tr");
    tr.dataset.id = e.event_id;
    tr.className = "new";
    const id = document.createElement("td");
    const a = document.createElement("a");
    a.href = "/events/" + encodeURIComponent(e.event_id);
    const code = document.createElement("code");
    code.textContent = e.event_id;
    a.appendChild(code);
    id.appendChild(a);
    tr.appendChild(id);
    tr.appendChild(cell(e.name || ""));
    const status = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = e.status;
    badge.textContent = e.status;
    status.appendChild(badge);
    tr.appendChild(status);
    const received = cell("just now");
    received.title = new Date(e.received_at).toISOString();
    tr.appendChild(received);
    tr.appendChild(cell(String(e.tries), "num"));
    tr.appendChild(cell(e.last_error || "", "error-text"));
    return tr;
  }

  function selectAll(box) {
    box.addEventListener("change", () => {
      for (const other of $$("input[name='ids']", box.closest("form"))) other.checked = box.checked;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const live = $("[data-live='overview']");
    if (live) overview(live);
    const box = $("#tail");
    if (box) tail(box);
    const all = $("#select-all");
    if (all) selectAll(all);
  });
})();
