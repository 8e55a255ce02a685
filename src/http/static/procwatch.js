// procwatch landing page: refreshes the programs table from the API every few seconds, shows
// a program's last output lines on demand and, where lifecycle is enabled, calls the API's
// start/stop/restart. Same-origin only; no inline code, so a strict CSP holds.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const lifecycle = document.body.dataset.lifecycle === "true";
  let logsFor = null;

  function duration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, sec = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (d > 0) return d + "d" + h + "h";
    if (h > 0) return h + "h" + two(m) + "m";
    if (m > 0) return m + "m" + two(sec) + "s";
    return sec + "s";
  }

  function bytes(b) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = b, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? b + " B" : v.toFixed(1) + " " + units[u];
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function button(name, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = action;
    b.dataset.name = name;
    b.dataset.action = action;
    b.className = "action " + action;
    return b;
  }

  // The cells of a row, by class, and their text for a program.
  const CELLS = [
    ["name", (p) => p.name],
    ["state", (p) => p.state],
    ["ready", (p) => (p.ready ? "yes" : "no")],
    ["pid", (p) => (p.pid === null ? "-" : String(p.pid))],
    ["uptime", (p) => (p.pid === null ? "-" : duration(p.uptime_seconds))],
    ["cpu", (p) => (p.cpu_user_seconds + p.cpu_system_seconds).toFixed(2) + "s"],
    ["memory", (p) => (p.memory_bytes === null ? "-" : bytes(p.memory_bytes))],
    ["restarts", (p) => String(p.restarts)],
    ["last-exit", (p) => (p.last_exit ? p.last_exit.code + " (" + p.last_exit.reason + ")" : "-")],
  ];

  function row(p) {
    const tr = document.createElement("tr");
    tr.dataset.name = p.name;
    tr.dataset.live = "1";
    for (const [cls] of CELLS) tr.appendChild(cell("", cls));
    const cmd = cell("", "command");
    cmd.appendChild(document.createElement("code"));
    tr.appendChild(cmd);
    const actions = cell("", "actions");
    actions.appendChild(button(p.name, "logs"));
    if (lifecycle) {
      for (const a of ["start", "stop", "restart"]) actions.appendChild(button(p.name, a));
    }
    tr.appendChild(actions);
    return tr;
  }

  // Updates a row in place, so that a button keeps existing (and a click on it is not lost)
  // across refreshes.
  function update(tr, p) {
    for (const [cls, text] of CELLS) {
      const td = tr.querySelector("td." + cls);
      const t = text(p);
      if (td.textContent !== t) td.textContent = t;
    }
    tr.querySelector("td.state").className = "state " + p.state;
    tr.querySelector("td.command code").textContent = p.command.join(" ");
  }

  // The watches table: the event kinds are the server-rendered header's columns.
  function watches(list) {
    const kinds = Array.from(document.querySelectorAll("#watches thead th")).slice(3, -2).map((th) => th.textContent);
    const rows = list.map((w) => {
      const tr = document.createElement("tr");
      tr.dataset.watch = w.name;
      tr.appendChild(cell(w.name, "name"));
      const path = cell("", "path");
      const code = document.createElement("code");
      code.textContent = w.path;
      path.appendChild(code);
      tr.appendChild(path);
      tr.appendChild(cell(w.up ? "up" : "down", "state"));
      for (const k of kinds) tr.appendChild(cell(String(w.events[k] || 0), "events " + k));
      tr.appendChild(cell(String(w.overflows), "overflows"));
      tr.appendChild(cell(String(w.errors), "errors"));
      return tr;
    });
    document.querySelector("#watches tbody").replaceChildren(...rows);
  }

  function status(text, isError) {
    const el = document.getElementById("updated");
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  async function refresh() {
    try {
      const resp = await fetch("api/v1/programs", { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      const tbody = document.querySelector("#programs tbody");
      const old = new Map();
      for (const tr of tbody.querySelectorAll("tr[data-live]")) old.set(tr.dataset.name, tr);
      const rows = data.programs.map((p) => {
        const tr = old.get(p.name) || row(p);
        update(tr, p);
        return tr;
      });
      // Re-appending a row that is already in place keeps it (and its buttons).
      tbody.replaceChildren(...rows);
      watches(data.watches);
      status("updated " + new Date().toLocaleTimeString(), false);
      document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
    } catch (e) {
      status("update failed: " + e.message, true);
    }
    if (logsFor !== null) showLogs(logsFor);
  }

  async function showLogs(name) {
    logsFor = name;
    const section = document.getElementById("logs");
    section.hidden = false;
    document.getElementById("logs-name").textContent = name;
    const note = document.getElementById("logs-note");
    const pre = document.getElementById("logs-lines");
    try {
      const resp = await fetch("api/v1/programs/" + encodeURIComponent(name) + "/logs?lines=100", { cache: "no-store" });
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.error || "HTTP " + resp.status);
      note.textContent = data.captured ? data.lines.length + " last lines" : "output is not captured for this program";
      pre.replaceChildren(...data.lines.map((l) => {
        const span = document.createElement("span");
        span.className = l.stream;
        span.textContent = l.text + "\n";
        return span;
      }));
    } catch (e) {
      note.textContent = "cannot read the output: " + e.message;
    }
  }

  async function act(name, action) {
    try {
      const resp = await fetch("api/v1/programs/" + encodeURIComponent(name) + "/" + action, { method: "POST" });
      if (!resp.ok) {
        const data = await resp.json().catch(() => ({}));
        status(action + " " + name + " failed: " + (data.error || "HTTP " + resp.status), true);
      }
    } catch (e) {
      status(action + " " + name + " failed: " + e.message, true);
    }
    refresh();
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button.action");
    if (!b) return;
    if (b.dataset.action === "logs") showLogs(b.dataset.name);
    else act(b.dataset.name, b.dataset.action);
  });

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
