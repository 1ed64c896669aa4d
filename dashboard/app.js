// taskq dashboard: plain browser JavaScript, no build step, no dependencies.
// Talks to the v1 API on the same origin (/v1/...). Every value from the API is put in the page
// with textContent, never as HTML: payloads and errors are user data.
"use strict";

const TOKEN_KEY = "taskq.token";
const REFRESH_MS = 2000;
const PAGE = 25;
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "dead"]);
// What POST /v1/tasks/{id}/retry accepts.
const RETRYABLE = new Set(["failed", "cancelled", "dead"]);

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  status: "",
  shown: PAGE, // how many tasks the list holds (grows with "Load more")
  nextCursor: null,
  selected: null, // task id in the detail panel
  refreshing: false,
  timer: null,
};

class ApiError extends Error {
  constructor(status, title, detail, retryAfter) {
    super(`${status} ${title}${detail ? ": " + detail : ""}`);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      ...options,
      headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json", ...(options.headers || {}) },
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "cannot reach the API", e.message);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const title = (body && body.title) || response.statusText || "error";
    const detail = (body && body.detail) || "";
    throw new ApiError(response.status, title, detail, response.headers.get("Retry-After"));
  }
  return { status: response.status, body };
}

// --- session -------------------------------------------------------------------------------

/// The token's claims, read (not verified: the API verifies) to show who is signed in.
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
    return JSON.parse(atob(padded));
  } catch {
    return null;
  }
}

function roles(c) {
  const r = c.roles || c["cognito:groups"] || [];
  return Array.isArray(r) ? r : String(r).replace(/[[\]]/g, "").split(/[\s,]+/).filter(Boolean);
}

function showSignIn(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopTimer();
  $("app").hidden = true;
  $("session").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token-input").focus();
}

function signIn(token) {
  const c = claims(token);
  if (!c || !c.sub) {
    $("sign-in-error").textContent = "That is not a JWT (three base64url parts with a sub claim).";
    return;
  }
  if (c.exp && c.exp * 1000 < Date.now()) {
    showSignIn(`That token expired at ${new Date(c.exp * 1000).toLocaleString()}.`);
    return;
  }
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  const r = roles(c);
  $("who").textContent = `${c.sub}${r.length ? " (" + r.join(", ") + ")" : ""}`;
  $("sign-in").hidden = true;
  $("session").hidden = false;
  $("app").hidden = false;
  refresh();
  startTimer();
}

// --- rendering helpers -----------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function badge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/// Time of day to the millisecond: events of one task are often milliseconds apart.
function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "";
  return d.toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3 });
}

/// A compact date and time for table cells.
function short(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "";
  return d.toLocaleString([], { month: "short", day: "numeric", hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} m ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} m`;
}

function json(v) {
  return v === undefined ? "" : JSON.stringify(v, null, 2);
}

function banner(message) {
  $("banner").textContent = message || "";
  $("banner").hidden = !message;
}

// --- panels ----------------------------------------------------------------------------------

async function loadQueues() {
  try {
    const { body } = await api("/v1/admin/queues");
    const rows = body.queues.map((q) =>
      el(
        "tr",
        { dataset: { priority: q.priority } },
        el("td", {}, q.priority),
        el("td", { class: "num", dataset: { field: "visible" } }, String(q.visible)),
        el("td", { class: "num", dataset: { field: "in_flight" } }, String(q.in_flight)),
        el("td", { class: "num", dataset: { field: "delayed" } }, String(q.delayed)),
        el("td", { class: "num" }, age(q.oldest_queued_age_seconds)),
        el("td", { class: q.dead_letters > 0 ? "num dlq-alert" : "num", dataset: { field: "dead_letters" } }, String(q.dead_letters)),
      ),
    );
    $("queue-rows").replaceChildren(...rows);
    $("queues-note").textContent = "";
  } catch (e) {
    if (e.status === 403) {
      $("queue-rows").replaceChildren();
      $("queues-note").textContent = "Queue depths need the admin role.";
      return;
    }
    throw e;
  }
}

function taskRow(t) {
  const row = el(
    "tr",
    { class: t.id === state.selected ? "selected" : "", dataset: { taskId: t.id, status: t.status }, tabindex: "0" },
    el("td", {}, el("code", {}, t.id)),
    el("td", {}, t.type),
    el("td", {}, t.priority),
    el("td", { class: "status-cell" }, badge(t.status)),
    el("td", { class: "num" }, `${t.attempts}/${t.max_attempts}`),
    el("td", { title: t.created_at }, short(t.created_at)),
  );
  const open = () => {
    location.hash = `#/tasks/${t.id}`;
  };
  row.addEventListener("click", open);
  row.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") open();
  });
  return row;
}

async function loadTasks() {
  const params = new URLSearchParams({ limit: String(Math.min(state.shown, 100)) });
  if (state.status) params.set("status", state.status);
  const { body } = await api(`/v1/tasks?${params}`);
  state.nextCursor = body.next_cursor;
  $("task-rows").replaceChildren(...body.tasks.map(taskRow));
  $("tasks-note").textContent = body.tasks.length ? "" : state.status ? `No ${state.status} tasks.` : "No tasks yet.";
  $("load-more").hidden = !state.nextCursor || state.shown >= 100;
}

async function loadMore() {
  if (!state.nextCursor) return;
  const params = new URLSearchParams({ limit: String(PAGE), cursor: state.nextCursor });
  if (state.status) params.set("status", state.status);
  const { body } = await api(`/v1/tasks?${params}`);
  state.shown += body.tasks.length;
  state.nextCursor = body.next_cursor;
  $("task-rows").append(...body.tasks.map(taskRow));
  $("load-more").hidden = !state.nextCursor || state.shown >= 100;
}

function eventItem(e, first) {
  const offset = first ? ((new Date(e.at) - new Date(first.at)) / 1000).toFixed(2) : "0.00";
  const change = e.from && e.to ? `${e.from} → ${e.to}` : e.to ? `→ ${e.to}` : "";
  return el(
    "li",
    { class: `event event-${e.type}`, dataset: { type: e.type } },
    el("span", { class: "event-time", title: e.at }, `${clock(e.at)} +${offset} s`),
    el("span", { class: "event-type" }, e.type),
    el("span", { class: "event-change" }, change),
    el("span", { class: "event-attempt" }, e.attempt ? `attempt ${e.attempt}` : ""),
    el("span", { class: "event-detail" }, e.detail || ""),
  );
}

async function loadDetail() {
  const id = state.selected;
  if (!id) {
    $("detail").hidden = true;
    return;
  }
  let task, events;
  try {
    [{ body: task }, { body: events }] = await Promise.all([
      api(`/v1/tasks/${encodeURIComponent(id)}`),
      api(`/v1/tasks/${encodeURIComponent(id)}/events`),
    ]);
  } catch (e) {
    if (e.status === 404) {
      $("detail").hidden = false;
      $("detail-id").textContent = id;
      $("detail-fields").replaceChildren(el("dt", {}, "not found"), el("dd", {}, "no task of yours has this id"));
      $("timeline").replaceChildren();
      $("detail-error").hidden = true;
      $("cancel-task").hidden = true;
      $("retry-task").hidden = true;
      return;
    }
    throw e;
  }
  if (state.selected !== id) return; // another task was opened meanwhile
  $("detail").hidden = false;
  $("detail").dataset.status = task.status;
  $("detail-id").textContent = task.id;
  const fields = [
    ["status", badge(task.status)],
    ["type", task.type],
    ["priority", task.priority],
    ["attempts", `${task.attempts}/${task.max_attempts}`],
    ["timeout", `${task.timeout_seconds} s`],
    ["created", time(task.created_at)],
    ["updated", time(task.updated_at)],
  ];
  if (task.run_at) fields.push(["runs at", time(task.run_at)]);
  if (task.started_at) fields.push(["started", time(task.started_at)]);
  if (task.finished_at) fields.push(["finished", time(task.finished_at)]);
  if (task.cancel_requested) fields.push(["cancel", "requested"]);
  $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, v)]));
  $("detail-error").hidden = !task.error;
  if (task.error) {
    $("detail-error-kind").textContent = task.error.kind;
    $("detail-error-message").textContent = task.error.message;
  }
  $("detail-payload").textContent = json(task.payload);
  $("detail-result-block").hidden = task.result === undefined || task.result === null;
  $("detail-result").textContent = json(task.result);
  const first = events.events[0];
  $("timeline").replaceChildren(...events.events.map((e) => eventItem(e, first)));
  $("cancel-task").hidden = TERMINAL.has(task.status) || task.cancel_requested === true;
  $("retry-task").hidden = !RETRYABLE.has(task.status);
}

// --- refresh loop ----------------------------------------------------------------------------

async function refresh() {
  if (!state.token || state.refreshing) return;
  state.refreshing = true;
  try {
    const results = await Promise.allSettled([loadQueues(), loadTasks(), loadDetail()]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) {
      const e = failed.reason;
      if (e.status === 401) {
        showSignIn(`The API refused the token: ${e.message}`);
        return;
      }
      banner(e.status === 429 ? `Rate limited; retrying (Retry-After ${e.retryAfter} s).` : e.message);
    } else {
      banner("");
    }
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } finally {
    state.refreshing = false;
  }
}

function startTimer() {
  stopTimer();
  if ($("auto-refresh").checked) state.timer = setInterval(refresh, REFRESH_MS);
}

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function selectFromHash() {
  const m = location.hash.match(/^#\/tasks\/([0-9A-Za-z]+)$/);
  state.selected = m ? m[1] : null;
  for (const row of $("task-rows").children) row.classList.toggle("selected", row.dataset.taskId === state.selected);
  if (!state.selected) $("detail").hidden = true;
  if (state.token) refresh();
}

// --- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn($("token-input").value.trim().replace(/^Bearer\s+/i, ""));
  });
  $("sign-out").addEventListener("click", () => showSignIn(""));
  $("auto-refresh").addEventListener("change", startTimer);
  $("status-filter").addEventListener("change", (ev) => {
    state.status = ev.target.value;
    state.shown = PAGE;
    refresh();
  });
  $("load-more").addEventListener("click", () => loadMore().catch((e) => banner(e.message)));
  $("close-detail").addEventListener("click", () => {
    history.pushState(null, "", location.pathname + location.search);
    selectFromHash();
  });
  // POST /v1/tasks/{id}/cancel or /retry on the open task, then show what it did.
  const taskAction = (verb) => async () => {
    try {
      await api(`/v1/tasks/${encodeURIComponent(state.selected)}/${verb}`, { method: "POST" });
    } catch (e) {
      banner(e.message);
    }
    refresh();
  };
  $("cancel-task").addEventListener("click", taskAction("cancel"));
  $("retry-task").addEventListener("click", taskAction("retry"));
  window.addEventListener("hashchange", selectFromHash);
  selectFromHash();
  if (state.token) signIn(state.token);
  else showSignIn("");
});
