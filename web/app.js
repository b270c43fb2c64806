// The burro dashboard: a jobs table, an overview and a page per job, kept
// current by the server's SSE streams. Plain browser JavaScript without a
// build step; the server embeds this file and serves it at /ui/app.js.
"use strict";

(() => {
  const STATUSES = ["pending", "scheduled", "running", "completed", "failed", "cancelled"];
  const FINISHED = new Set(["completed", "failed", "cancelled"]);
  const CANCELLABLE = new Set(["pending", "scheduled", "running"]);
  const RETRYABLE = new Set(["failed", "cancelled"]);
  // Events after which a job's status or attempt differs from the one shown.
  const STATE_EVENTS = ["spawned", "completed", "failed", "cancelled", "retrying", "lost", "reconnected"];
  // A running external job whose last heartbeat is older than this is shown as stale.
  const STALE_AFTER_MS = 30000;
  const DEFAULT_LIMIT = 50;
  const LOG_TAIL = 2000;
  const MAX_LOG_LINES = 5000;
  const MAX_HISTORY = 500;
  const POLL_MS = 5000;

  // ---------------------------------------------------------------------
  // Small helpers

  const byId = (id) => document.getElementById(id);

  /** Creates an element. `props` sets attributes, `class`, `text` and `on<event>` listeners. */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value == null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child != null) node.append(child);
    }
    return node;
  }

  /** Sets text only when it changed, so unchanged cells cause no DOM work. */
  function setText(node, text) {
    const value = text == null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setAttr(node, name, value) {
    if (value == null) {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else if (node.getAttribute(name) !== String(value)) {
      node.setAttribute(name, String(value));
    }
  }

  const pad = (n, width = 2) => String(n).padStart(width, "0");

  /** Difference between the server's clock and this browser's, from the Date header. */
  let clockOffsetMs = 0;
  const serverNow = () => Date.now() + clockOffsetMs;

  /** Local time of an RFC 3339 string or epoch milliseconds: the time for today, else date and time. */
  function formatTime(value, withMillis = false) {
    if (value == null) return "—";
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    let time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
    if (withMillis) time += `.${pad(date.getMilliseconds(), 3)}`;
    const today = new Date();
    if (date.toDateString() === today.toDateString()) return time;
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
  }

  /** Formats a duration in milliseconds as "850 ms", "12 s", "3 min 4 s", "2 h 5 min" or "3 d 4 h". */
  function formatDuration(ms) {
    if (ms == null || !Number.isFinite(ms)) return "—";
    if (ms < 0) ms = 0;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const seconds = Math.floor(ms / 1000);
    if (seconds < 60) return `${seconds} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return `${hours} h ${minutes % 60} min`;
    return `${Math.floor(hours / 24)} d ${hours % 24} h`;
  }

  function heartbeatAge(job) {
    if (!job || !job.lastHeartbeat) return null;
    return serverNow() - Date.parse(job.lastHeartbeat);
  }

  function formatPercent(percent) {
    if (percent == null) return "";
    return `${Math.round(percent * 10) / 10}%`;
  }

  function prettyJson(value) {
    return JSON.stringify(value, null, 2);
  }

  /**
   * Calls the API. Returns {ok, status, body}; `body` is the parsed JSON or
   * null. Network failures come back with status 0.
   */
  /**
   * Asks for the API token once and trades it for the session cookie that
   * the API and the event streams accept. Returns true when it was accepted.
   */
  let tokenRequest = null;
  function requestToken() {
    if (!tokenRequest) {
      tokenRequest = (async () => {
        const token = window.prompt("This burro server requires an API token:");
        if (!token) return false;
        const response = await fetch("/api/session", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ token }),
        });
        return response.ok;
      })().finally(() => {
        setTimeout(() => {
          tokenRequest = null;
        }, 0);
      });
    }
    return tokenRequest;
  }

  async function api(method, path, body) {
    const result = await apiOnce(method, path, body);
    if (result.status === 401 && (await requestToken())) {
      openChannel();
      return apiOnce(method, path, body);
    }
    return result;
  }

  async function apiOnce(method, path, body) {
    const init = { method, headers: { accept: "application/json" } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, body: { error: { code: "network", message: `cannot reach the server: ${err.message}` } } };
    }
    const date = Date.parse(response.headers.get("date") || "");
    if (!Number.isNaN(date)) {
      // The header has whole seconds, so only a larger skew is worth correcting.
      const offset = date - Date.now();
      clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
    }
    let parsed = null;
    const text = await response.text();
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
    }
    return { ok: response.ok, status: response.status, body: parsed };
  }

  function errorText(result) {
    const error = result.body && result.body.error;
    if (error && error.message) return error.message;
    return `HTTP ${result.status}`;
  }

  /**
   * Returns a function that runs `task` `wait` ms after its first call. Calls
   * before then join that run, and a call during a run schedules one more.
   */
  function coalesce(task, wait) {
    let timer = null;
    let running = false;
    let again = false;
    const run = async () => {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        await task();
      } catch (err) {
        console.error(err);
      } finally {
        running = false;
        if (again) {
          again = false;
          trigger();
        }
      }
    };
    const trigger = () => {
      if (timer == null) timer = setTimeout(run, wait);
    };
    return trigger;
  }

  // ---------------------------------------------------------------------
  // Notices

  function notify(message, kind = "info") {
    const box = byId("notices");
    const close = h("button", { type: "button", class: "close", "aria-label": "Dismiss" }, "×");
    const notice = h("div", { class: `notice notice-${kind}` }, h("span", { text: message }), close);
    close.addEventListener("click", () => notice.remove());
    box.append(notice);
    setTimeout(() => notice.remove(), kind === "error" ? 15000 : 6000);
  }

  // ---------------------------------------------------------------------
  // Shared widgets

  function statusBadge() {
    return h("span", { class: "badge" });
  }

  function updateStatusBadge(badge, status) {
    setText(badge, status);
    setAttr(badge, "data-status", status);
  }

  /** Builds a progress bar with a text label; updateProgress sets its value. */
  function progressWidget() {
    const fill = h("div", { class: "fill" });
    const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
    const label = h("span", { class: "bar-label" });
    const node = h("div", { class: "progress" }, bar, label);
    return { node, bar, fill, label };
  }

  function updateProgress(widget, job) {
    let percent = job.progress ? job.progress.percent : null;
    const message = job.progress ? job.progress.message : null;
    // A completed job is done even when it never reported progress.
    if (job.status === "completed" && percent == null) percent = 100;
    setAttr(widget.node, "data-status", job.status);
    setAttr(widget.bar, "aria-label", `Progress of ${job.name}`);
    if (percent == null) {
      setAttr(widget.bar, "aria-valuenow", null);
      setAttr(widget.bar, "aria-valuetext", message || "no progress reported");
      widget.fill.style.width = "0%";
    } else {
      const rounded = Math.round(percent * 10) / 10;
      setAttr(widget.bar, "aria-valuenow", rounded);
      setAttr(widget.bar, "aria-valuetext", message ? `${formatPercent(percent)}, ${message}` : formatPercent(percent));
      widget.fill.style.width = `${Math.min(100, Math.max(0, percent))}%`;
    }
    const parts = [];
    if (percent != null) parts.push(formatPercent(percent));
    if (message) parts.push(message);
    setText(widget.label, parts.join(" · "));
    setAttr(widget.label, "title", message || null);
  }

  function isStale(job) {
    if (!job || job.status !== "running") return false;
    if (staleIds.has(job.id)) return true;
    if (!job.external) return false;
    const age = heartbeatAge(job);
    return age != null && age > STALE_AFTER_MS;
  }

  /** Text of a heartbeat cell; the ticker refreshes every element with data-heartbeat-of. */
  function heartbeatCell(node, job) {
    setAttr(node, "data-heartbeat-of", job.id);
    refreshHeartbeat(node, job);
  }

  function refreshHeartbeat(node, job) {
    if (job.status !== "running") {
      // The age of the last heartbeat only matters while the job runs.
      setText(node, formatTime(job.lastHeartbeat));
      setAttr(node, "title", job.lastHeartbeat);
      node.classList.remove("is-stale");
      return;
    }
    const age = heartbeatAge(job);
    if (age == null) setText(node, "—");
    else setText(node, age < 1000 ? "< 1 s ago" : `${formatDuration(age)} ago`);
    setAttr(node, "title", job.lastHeartbeat ? `last heartbeat ${job.lastHeartbeat}` : null);
    node.classList.toggle("is-stale", isStale(job));
  }

  // ---------------------------------------------------------------------
  // Shared job state

  /** Jobs known to the open views, by id; each view keeps its own list of ids. */
  const jobs = new Map();
  /** Running jobs reported stale by the server and silent since. */
  const staleIds = new Set();
  /** Jobs whose cancel was requested while they were running. */
  const cancelRequested = new Set();

  function remember(job) {
    const known = jobs.get(job.id);
    if (known) Object.assign(known, job);
    else jobs.set(job.id, job);
    if (job.status !== "running") {
      staleIds.delete(job.id);
      cancelRequested.delete(job.id);
    }
    return jobs.get(job.id);
  }

  /** Applies an event to the known job, where the event tells enough. */
  function applyEvent(job, name, data) {
    const now = new Date(serverNow()).toISOString();
    switch (name) {
      case "progress":
        job.progress = job.progress || { percent: null, message: null };
        if (data.percent != null) job.progress.percent = data.percent;
        if (data.message != null) job.progress.message = data.message;
        if (job.external) job.lastHeartbeat = now;
        staleIds.delete(job.id);
        break;
      case "log":
        if (job.external) job.lastHeartbeat = now;
        staleIds.delete(job.id);
        break;
      case "spawned":
        job.status = "running";
        job.processState = "running";
        if (data.attempt != null) job.attempts = data.attempt;
        job.lastHeartbeat = now;
        staleIds.delete(job.id);
        break;
      case "completed":
        job.status = "completed";
        job.result = data.result === undefined ? null : data.result;
        job.error = null;
        job.stack = null;
        job.processState = null;
        job.completedAt = job.completedAt || now;
        break;
      case "failed":
        job.status = "failed";
        job.error = data.error === undefined ? job.error : data.error;
        job.stack = data.stack === undefined ? job.stack : data.stack;
        job.processState = null;
        job.completedAt = job.completedAt || now;
        break;
      case "cancelled":
        job.status = "cancelled";
        job.processState = null;
        job.completedAt = job.completedAt || now;
        break;
      case "retrying":
        job.status = "scheduled";
        if (data.error !== undefined) job.error = data.error;
        if (data.runAt) job.runAt = data.runAt;
        job.processState = null;
        break;
      case "stale":
        staleIds.add(job.id);
        break;
      default:
        break;
    }
    if (job.status !== "running") {
      staleIds.delete(job.id);
      cancelRequested.delete(job.id);
    }
  }

  async function cancelJob(id, name) {
    const result = await api("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
    if (result.ok && result.body) {
      const job = remember(result.body);
      if (job.status === "running") {
        cancelRequested.add(id);
        notify(`Cancel requested for ${name}; it stops when its process exits.`);
      } else {
        notify(`Cancelled ${name}.`);
      }
      refreshAllViews();
      return job;
    }
    if (result.status === 409 && result.body && result.body.job) remember(result.body.job);
    notify(`Cannot cancel ${name}: ${errorText(result)}`, "error");
    refreshAllViews();
    return null;
  }

  async function retryJob(id, name) {
    const result = await api("POST", `/api/jobs/${encodeURIComponent(id)}/retry`);
    if (result.ok && result.body) {
      const job = remember(result.body);
      notify(`Retrying ${name}: the job is ${job.status}, and attempt ${job.attempts + 1} of ${job.maxAttempts} runs next.`);
      refreshAllViews();
      return job;
    }
    if (result.status === 404 && result.body && result.body.error && result.body.error.code === "not_found") {
      notify(`Cannot retry ${name}: this server has no retry endpoint.`, "error");
    } else {
      notify(`Cannot retry ${name}: ${errorText(result)}`, "error");
    }
    return null;
  }

  function actionButton(job) {
    if (CANCELLABLE.has(job.status)) {
      const pending = cancelRequested.has(job.id);
      return { action: "cancel", text: pending ? "Cancelling…" : "Cancel", disabled: pending };
    }
    if (RETRYABLE.has(job.status)) return { action: "retry", text: "Retry", disabled: false };
    return null;
  }

  // ---------------------------------------------------------------------
  // Jobs view

  const jobsView = {
    filters: { status: "", name: "", limit: DEFAULT_LIMIT, offset: 0 },
    ids: [],
    total: 0,
    rows: new Map(),
    requestSeq: 0,
    loaded: false,
  };

  function filtersFromParams(params) {
    const limit = Number.parseInt(params.get("limit") || "", 10);
    const offset = Number.parseInt(params.get("offset") || "", 10);
    const status = params.get("status") || "";
    return {
      status: STATUSES.includes(status) ? status : "",
      name: params.get("name") || "",
      limit: limit > 0 ? Math.min(limit, 1000) : DEFAULT_LIMIT,
      offset: offset > 0 ? offset : 0,
    };
  }

  function jobsHash(filters) {
    const params = new URLSearchParams();
    if (filters.status) params.set("status", filters.status);
    if (filters.name) params.set("name", filters.name);
    if (filters.limit !== DEFAULT_LIMIT) params.set("limit", String(filters.limit));
    if (filters.offset) params.set("offset", String(filters.offset));
    const query = params.toString();
    return query ? `#/jobs?${query}` : "#/jobs";
  }

  async function loadJobs() {
    const seq = ++jobsView.requestSeq;
    const { status, name, limit, offset } = jobsView.filters;
    const params = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    if (status) params.set("status", status);
    if (name) params.set("name", name);
    const result = await api("GET", `/api/jobs?${params}`);
    if (seq !== jobsView.requestSeq) return;
    if (!result.ok || !result.body) {
      notify(`Cannot load jobs: ${errorText(result)}`, "error");
      return;
    }
    jobsView.ids = result.body.jobs.map((job) => remember(job).id);
    jobsView.total = result.body.total;
    jobsView.loaded = true;
    renderJobs();
  }
  const scheduleJobsReload = coalesce(loadJobs, 400);

  function createJobRow(id) {
    const cells = {
      status: statusBadge(),
      stale: h("span", { class: "badge badge-stale", text: "stale", hidden: true }),
      name: h("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "job-link" }),
      shortId: h("span", { class: "short-id", title: id, text: id.slice(-12) }),
      progress: progressWidget(),
      attempts: h("td", { class: "num" }),
      created: h("td", { class: "time" }),
      started: h("td", { class: "time" }),
      finished: h("td", { class: "time" }),
      button: h("button", { type: "button", class: "small" }),
    };
    cells.button.addEventListener("click", () => onRowAction(id, cells.button));
    const tr = h(
      "tr",
      { "data-job-id": id },
      h("td", { class: "status-cell" }, cells.status, " ", cells.stale),
      h("td", { class: "name-cell" }, cells.name, h("br"), cells.shortId),
      h("td", { class: "col-progress" }, cells.progress.node),
      cells.attempts,
      cells.created,
      cells.started,
      cells.finished,
      h("td", { class: "actions-cell" }, cells.button),
    );
    return { tr, cells };
  }

  function updateJobRow(row, job) {
    const { tr, cells } = row;
    setAttr(tr, "data-status", job.status);
    updateStatusBadge(cells.status, job.status);
    cells.stale.hidden = !isStale(job);
    tr.classList.toggle("is-stale", isStale(job));
    setText(cells.name, job.name);
    updateProgress(cells.progress, job);
    setText(cells.attempts, `${job.attempts}/${job.maxAttempts}`);
    setText(cells.created, formatTime(job.createdAt));
    setAttr(cells.created, "title", job.createdAt);
    // A scheduled job shows when it is due instead of when an earlier attempt started.
    if (job.status === "scheduled" && job.runAt) {
      setText(cells.started, `due ${formatTime(job.runAt)}`);
      setAttr(cells.started, "title", `run at ${job.runAt}`);
    } else {
      setText(cells.started, formatTime(job.startedAt));
      setAttr(cells.started, "title", job.startedAt);
    }
    setText(cells.finished, formatTime(job.completedAt));
    setAttr(cells.finished, "title", job.completedAt);
    const action = actionButton(job);
    cells.button.hidden = !action;
    if (action) {
      setText(cells.button, action.text);
      setAttr(cells.button, "data-action", action.action);
      cells.button.disabled = action.disabled;
      cells.button.className = action.action === "cancel" ? "small danger" : "small";
      setAttr(cells.button, "aria-label", `${action.text} ${job.name} ${job.id}`);
    }
  }

  async function onRowAction(id, button) {
    const job = jobs.get(id);
    if (!job) return;
    const action = button.getAttribute("data-action");
    button.disabled = true;
    if (action === "cancel") await cancelJob(id, job.name);
    else if (action === "retry") await retryJob(id, job.name);
    button.disabled = false;
    renderJobs();
  }

  function renderJobs() {
    const body = byId("jobs-body");
    const keep = new Set(jobsView.ids);
    for (const [id, row] of jobsView.rows) {
      if (!keep.has(id)) {
        row.tr.remove();
        jobsView.rows.delete(id);
      }
    }
    let previous = null;
    for (const id of jobsView.ids) {
      let row = jobsView.rows.get(id);
      if (!row) {
        row = createJobRow(id);
        jobsView.rows.set(id, row);
      }
      updateJobRow(row, jobs.get(id));
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (expected !== row.tr) body.insertBefore(row.tr, expected);
      previous = row.tr;
    }
    byId("jobs-empty").hidden = !jobsView.loaded || jobsView.ids.length > 0;

    const { limit, offset } = jobsView.filters;
    const total = jobsView.total;
    const first = jobsView.ids.length ? offset + 1 : 0;
    const last = offset + jobsView.ids.length;
    setText(byId("page-info"), jobsView.loaded ? `${first}–${last} of ${total}` : "Loading…");
    byId("page-prev").disabled = offset === 0;
    byId("page-next").disabled = offset + limit >= total;
  }

  function patchJobRow(id) {
    const row = jobsView.rows.get(id);
    const job = jobs.get(id);
    if (row && job) updateJobRow(row, job);
  }

  function setupJobsView() {
    const form = byId("filters");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const filters = {
        status: String(data.get("status") || ""),
        name: String(data.get("name") || "").trim(),
        limit: Number.parseInt(String(data.get("limit")), 10) || DEFAULT_LIMIT,
        offset: 0,
      };
      location.hash = jobsHash(filters);
    });
    byId("filter-status").addEventListener("change", () => form.requestSubmit());
    byId("filter-limit").addEventListener("change", () => form.requestSubmit());
    byId("filter-clear").addEventListener("click", () => {
      location.hash = "#/jobs";
    });
    byId("page-prev").addEventListener("click", () => {
      const f = jobsView.filters;
      location.hash = jobsHash({ ...f, offset: Math.max(0, f.offset - f.limit) });
    });
    byId("page-next").addEventListener("click", () => {
      const f = jobsView.filters;
      location.hash = jobsHash({ ...f, offset: f.offset + f.limit });
    });
  }

  function showJobsView(params) {
    const filters = filtersFromParams(params);
    const changed = JSON.stringify(filters) !== JSON.stringify(jobsView.filters);
    jobsView.filters = filters;
    byId("filter-status").value = filters.status;
    byId("filter-name").value = filters.name;
    const limitSelect = byId("filter-limit");
    if (![...limitSelect.options].some((o) => o.value === String(filters.limit))) {
      limitSelect.append(h("option", { text: String(filters.limit) }));
    }
    limitSelect.value = String(filters.limit);
    if (changed) {
      jobsView.loaded = false;
      jobsView.ids = [];
    }
    renderJobs();
    loadJobs();
    loadStats();
  }

  // ---------------------------------------------------------------------
  // Overview and the status strip

  const overview = { stats: null, statsError: null, runningIds: [], runningRows: new Map() };

  async function loadStats() {
    const result = await api("GET", "/api/stats");
    if (result.ok && result.body) {
      overview.stats = result.body;
      overview.statsError = null;
    } else {
      overview.stats = null;
      overview.statsError = result.status === 404 ? "This server does not report statistics (GET /api/stats is missing)." : `Cannot load statistics: ${errorText(result)}`;
    }
    renderStats();
  }
  const scheduleStatsReload = coalesce(loadStats, 500);

  function renderStats() {
    const stats = overview.stats;
    const byStatus = (stats && stats.byStatus) || {};
    const strip = byId("status-strip");
    strip.replaceChildren(
      ...STATUSES.map((status) => {
        const active = jobsView.filters.status === status;
        return h(
          "a",
          {
            class: "chip",
            href: jobsHash({ ...jobsView.filters, status: active ? "" : status, offset: 0 }),
            "data-status": status,
            "aria-current": active ? "true" : null,
            title: active ? `Show every status` : `Show only ${status} jobs`,
          },
          h("span", { class: "chip-label", text: status }),
          h("span", { class: "chip-count", text: stats ? String(byStatus[status] || 0) : "–" }),
        );
      }),
    );

    const cards = byId("overview-status");
    cards.replaceChildren(
      ...STATUSES.map((status) =>
        h(
          "a",
          { class: "card", href: jobsHash({ status, name: "", limit: DEFAULT_LIMIT, offset: 0 }), "data-status": status },
          h("span", { class: "card-count", text: stats ? String(byStatus[status] || 0) : "–" }),
          h("span", { class: "card-label", text: status }),
        ),
      ),
    );
    const error = byId("overview-stats-error");
    error.hidden = !overview.statsError;
    setText(error, overview.statsError || "");

    const byName = (stats && stats.byName) || {};
    const names = Object.keys(byName).sort();
    byId("job-names").replaceChildren(...names.map((name) => h("option", { value: name })));
    byId("names-head").replaceChildren(
      h(
        "tr",
        null,
        h("th", { scope: "col", text: "Name" }),
        ...STATUSES.map((status) => h("th", { scope: "col", class: "num", text: status })),
        h("th", { scope: "col", class: "num", text: "total" }),
      ),
    );
    byId("names-body").replaceChildren(
      ...names.map((name) => {
        const counts = byName[name] || {};
        const total = STATUSES.reduce((sum, status) => sum + (counts[status] || 0), 0);
        return h(
          "tr",
          null,
          h("th", { scope: "row" }, h("a", { href: jobsHash({ status: "", name, limit: DEFAULT_LIMIT, offset: 0 }), text: name })),
          ...STATUSES.map((status) => {
            const count = counts[status] || 0;
            if (!count) return h("td", { class: "num zero", text: "0" });
            return h(
              "td",
              { class: "num", "data-status": status },
              h("a", { href: jobsHash({ status, name, limit: DEFAULT_LIMIT, offset: 0 }), text: String(count), "aria-label": `${count} ${status} ${name} jobs` }),
            );
          }),
          h("td", { class: "num total", text: String(total) }),
        );
      }),
    );
    byId("names-empty").hidden = !stats || names.length > 0;
  }

  async function loadRunning() {
    const result = await api("GET", "/api/jobs?status=running&limit=1000");
    if (!result.ok || !result.body) {
      notify(`Cannot load running jobs: ${errorText(result)}`, "error");
      return;
    }
    overview.runningIds = result.body.jobs.filter((job) => job.external).map((job) => remember(job).id);
    renderRunning();
  }
  const scheduleRunningReload = coalesce(loadRunning, 500);

  function createRunningRow(id) {
    const cells = {
      name: h("a", { href: `#/jobs/${encodeURIComponent(id)}` }),
      stale: h("span", { class: "badge badge-stale", text: "stale", hidden: true }),
      process: h("td"),
      pid: h("td", { class: "num mono" }),
      heartbeat: h("td", { class: "num" }),
      progress: progressWidget(),
    };
    const tr = h(
      "tr",
      { "data-job-id": id },
      h("td", null, cells.name, " ", cells.stale),
      cells.process,
      cells.pid,
      cells.heartbeat,
      h("td", { class: "col-progress" }, cells.progress.node),
    );
    return { tr, cells };
  }

  function updateRunningRow(row, job) {
    const stale = isStale(job);
    row.tr.classList.toggle("is-stale", stale);
    row.cells.stale.hidden = !stale;
    setText(row.cells.name, job.name);
    setAttr(row.cells.name, "title", job.id);
    setText(row.cells.process, job.processState || "—");
    setText(row.cells.pid, job.pid == null ? "—" : job.pid);
    heartbeatCell(row.cells.heartbeat, job);
    updateProgress(row.cells.progress, job);
  }

  function renderRunning() {
    const body = byId("running-body");
    const keep = new Set(overview.runningIds);
    for (const [id, row] of overview.runningRows) {
      if (!keep.has(id)) {
        row.tr.remove();
        overview.runningRows.delete(id);
      }
    }
    let previous = null;
    for (const id of overview.runningIds) {
      let row = overview.runningRows.get(id);
      if (!row) {
        row = createRunningRow(id);
        overview.runningRows.set(id, row);
      }
      updateRunningRow(row, jobs.get(id));
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (expected !== row.tr) body.insertBefore(row.tr, expected);
      previous = row.tr;
    }
    byId("running-empty").hidden = overview.runningIds.length > 0;
  }

  function showOverview() {
    renderStats();
    renderRunning();
    loadStats();
    loadRunning();
  }

  // ---------------------------------------------------------------------
  // Job page

  /** State of the open job page; replaced whenever another job is opened. */
  let jobPage = null;

  function showJobPage(id) {
    if (jobPage && jobPage.id === id) return;
    closeJobPage();
    jobPage = {
      id,
      job: null,
      source: null,
      logsLoaded: false,
      bufferedLog: [],
      logCount: 0,
      history: [],
      progress: progressWidget(),
      timer: null,
    };
    byId("job-progress").replaceChildren(jobPage.progress.node);
    setText(byId("job-name"), "Loading…");
    setText(byId("job-id"), id);
    updateStatusBadge(byId("job-status"), "");
    byId("job-facts").replaceChildren();
    setText(byId("job-data"), "");
    byId("job-outcome").replaceChildren();
    byId("job-history").replaceChildren();
    byId("job-history-chart").replaceChildren();
    byId("job-history-empty").hidden = false;
    byId("job-log").replaceChildren();
    byId("job-log-empty").hidden = true;
    byId("job-cancel").hidden = true;
    byId("job-retry").hidden = true;
    openJobPage(jobPage);
  }

  async function openJobPage(page) {
    const result = await api("GET", `/api/jobs/${encodeURIComponent(page.id)}`);
    if (page !== jobPage) return;
    if (!result.ok || !result.body) {
      setText(byId("job-name"), result.status === 404 ? "Job not found" : "Cannot load the job");
      notify(errorText(result), "error");
      return;
    }
    page.job = remember(result.body);
    renderJobPage();
    openJobStream(page);
    loadJobLog(page);
    page.timer = setInterval(() => {
      if (page.job && !FINISHED.has(page.job.status) && !document.hidden) reloadJobPage(page);
    }, POLL_MS);
  }

  async function reloadJobPage(page) {
    const result = await api("GET", `/api/jobs/${encodeURIComponent(page.id)}`);
    if (page !== jobPage || !result.ok || !result.body) return;
    page.job = remember(result.body);
    renderJobPage();
  }

  function closeJobPage() {
    if (!jobPage) return;
    if (jobPage.source) jobPage.source.close();
    if (jobPage.timer) clearInterval(jobPage.timer);
    jobPage = null;
  }

  /** Follows GET /api/jobs/{id}/events; the server ends it after the final event. */
  function openJobStream(page) {
    if (page.source) page.source.close();
    const source = new EventSource(`/api/jobs/${encodeURIComponent(page.id)}/events`);
    page.source = source;
    const parse = (event) => {
      try {
        return JSON.parse(event.data);
      } catch {
        return {};
      }
    };
    source.addEventListener("job", (event) => {
      if (page !== jobPage) return;
      page.job = remember(parse(event));
      renderJobPage();
    });
    source.addEventListener("progress", (event) => {
      if (page !== jobPage || !page.job) return;
      const data = parse(event);
      applyEvent(page.job, "progress", data);
      page.history.push({ at: Date.now(), attempt: data.attempt != null ? data.attempt : page.job.attempts, percent: data.percent, message: data.message });
      if (page.history.length > MAX_HISTORY) page.history.shift();
      renderJobPage();
      renderHistory();
    });
    source.addEventListener("log", (event) => {
      if (page !== jobPage || !page.job) return;
      const data = parse(event);
      applyEvent(page.job, "log", data);
      const entry = {
        ts: Date.now(),
        attempt: data.attempt != null ? data.attempt : page.job.attempts,
        stream: data.stream || "log",
        level: data.level || "info",
        message: data.message == null ? "" : String(data.message),
        data: data.data == null ? undefined : data.data,
      };
      if (page.logsLoaded) appendLog([entry]);
      else page.bufferedLog.push(entry);
      refreshJobHeartbeat();
    });
    for (const name of ["spawned", "retrying", "stale", "lost", "reconnected"]) {
      source.addEventListener(name, (event) => {
        if (page !== jobPage || !page.job) return;
        applyEvent(page.job, name, parse(event));
        renderJobPage();
        reloadJobPage(page);
      });
    }
    for (const name of ["completed", "failed", "cancelled"]) {
      source.addEventListener(name, (event) => {
        if (page !== jobPage) return;
        if (page.job) applyEvent(page.job, name, parse(event));
        renderJobPage();
        // The stream ends after this event; the stored job has the exact times.
        source.close();
        reloadJobPage(page);
        // Log lines are written to the store when the attempt ends.
        setTimeout(() => page === jobPage && reloadJobLog(page), 500);
      });
    }
    source.addEventListener("resync", () => {
      if (page !== jobPage) return;
      reloadJobPage(page);
      reloadJobLog(page);
    });
  }

  async function loadJobLog(page) {
    const result = await api("GET", `/api/jobs/${encodeURIComponent(page.id)}/logs?tail=${LOG_TAIL}`);
    if (page !== jobPage) return;
    const entries = result.ok && result.body ? result.body.entries : [];
    if (!result.ok) notify(`Cannot load the log: ${errorText(result)}`, "error");
    const buffered = page.bufferedLog;
    page.bufferedLog = [];
    page.logsLoaded = true;
    byId("job-log").replaceChildren();
    page.logCount = 0;
    if (entries.length >= LOG_TAIL) {
      byId("job-log").append(h("div", { class: "log-note", text: `Showing the last ${LOG_TAIL} entries.` }));
    }
    // Lines that arrived as events before the response may also be in it:
    // skip the longest run of buffered lines that the response ends with.
    const overlap = logOverlap(entries, buffered);
    appendLog(entries.concat(buffered.slice(overlap)));
  }

  /** Reads the whole log again, after the server has flushed it. */
  function reloadJobLog(page) {
    page.logsLoaded = false;
    page.bufferedLog = [];
    loadJobLog(page);
  }

  function sameLogLine(a, b) {
    return a.stream === b.stream && a.level === b.level && a.message === b.message;
  }

  function logOverlap(entries, buffered) {
    const maxCount = Math.min(entries.length, buffered.length);
    for (let count = maxCount; count > 0; count--) {
      const start = entries.length - count;
      let match = true;
      for (let i = 0; i < count && match; i++) match = sameLogLine(entries[start + i], buffered[i]);
      if (match) return count;
    }
    return 0;
  }

  function appendLog(entries) {
    const log = byId("job-log");
    const follow = byId("log-follow").checked;
    const fragment = document.createDocumentFragment();
    for (const entry of entries) {
      const line = h(
        "div",
        { class: `log-line level-${entry.level} stream-${entry.stream}` },
        h("span", { class: "log-ts", text: formatTime(entry.ts, true), title: new Date(entry.ts).toISOString() }),
        h("span", { class: "log-attempt", text: `#${entry.attempt == null ? "?" : entry.attempt}`, title: "attempt" }),
        h("span", { class: "log-stream", text: entry.stream }),
        h("span", { class: "log-level", text: entry.level }),
        h(
          "span",
          { class: "log-message" },
          entry.message,
          entry.data !== undefined && entry.data !== null ? h("span", { class: "log-data", text: ` ${JSON.stringify(entry.data)}` }) : null,
        ),
      );
      fragment.append(line);
    }
    log.append(fragment);
    if (jobPage) jobPage.logCount += entries.length;
    while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
    byId("job-log-empty").hidden = log.childElementCount > 0;
    if (follow) log.scrollTop = log.scrollHeight;
  }

  function fact(label, value, props) {
    return [h("dt", { text: label }), h("dd", props || null, value)];
  }

  function renderJobPage() {
    if (!jobPage || !jobPage.job) return;
    const job = jobPage.job;
    setText(byId("job-name"), job.name);
    updateStatusBadge(byId("job-status"), job.status);
    document.title = `${job.name} ${job.status} · burro`;
    updateProgress(jobPage.progress, job);

    const cancel = byId("job-cancel");
    cancel.hidden = !CANCELLABLE.has(job.status);
    cancel.disabled = cancelRequested.has(job.id);
    setText(cancel, cancelRequested.has(job.id) ? "Cancelling…" : "Cancel");
    byId("job-retry").hidden = !RETRYABLE.has(job.status);

    const duration = job.startedAt ? (job.completedAt ? Date.parse(job.completedAt) : serverNow()) - Date.parse(job.startedAt) : null;
    const heartbeat = h("span");
    heartbeatCell(heartbeat, job);
    const stale = isStale(job) ? h("span", { class: "badge badge-stale", text: "stale" }) : null;
    byId("job-facts").replaceChildren(
      ...fact("Attempts", `${job.attempts} of ${job.maxAttempts}`),
      ...fact("Created", formatTime(job.createdAt), { title: job.createdAt }),
      ...fact(job.status === "scheduled" ? "Runs at" : "Run at", formatTime(job.runAt), { title: job.runAt }),
      ...fact("Started", formatTime(job.startedAt), { title: job.startedAt }),
      ...fact("Finished", formatTime(job.completedAt), { title: job.completedAt }),
      ...fact(FINISHED.has(job.status) ? "Duration" : "Running for", job.status === "running" || FINISHED.has(job.status) ? formatDuration(duration) : "—", {
        "data-running-since": job.status === "running" && job.startedAt ? job.startedAt : null,
      }),
      ...fact("Timeout", job.timeout == null ? "none" : formatDuration(job.timeout)),
      ...fact("Kind", job.external ? "external process" : "in-process"),
      ...(job.external
        ? [...fact("Process state", job.processState || "—"), ...fact("PID", job.pid == null ? "—" : String(job.pid), { class: "mono" }), ...fact(job.status === "running" ? "Heartbeat" : "Last heartbeat", [heartbeat, stale ? " " : null, stale])]
        : []),
    );

    const data = prettyJson(job.data);
    setText(byId("job-data"), data === undefined ? "null" : data);
    const outcome = [];
    if (job.status === "completed") {
      outcome.push(h("h3", { text: "Result" }), h("pre", { class: "json", text: prettyJson(job.result) }));
    }
    if (job.error) {
      outcome.push(
        h("h3", { text: job.status === "failed" ? "Error" : "Error of the last failed attempt" }),
        h("pre", { class: "error-text", text: job.error }),
      );
      if (job.stack) outcome.push(h("details", { open: job.status === "failed" }, h("summary", { text: "Stack trace" }), h("pre", { class: "stack", text: job.stack })));
    }
    const outcomeBox = byId("job-outcome");
    const signature = JSON.stringify([job.status, job.result, job.error, job.stack]);
    if (outcomeBox.dataset.signature !== signature) {
      outcomeBox.dataset.signature = signature;
      outcomeBox.replaceChildren(...outcome);
    }
  }

  function refreshJobHeartbeat() {
    if (!jobPage || !jobPage.job) return;
    for (const node of byId("job-facts").querySelectorAll("[data-heartbeat-of]")) refreshHeartbeat(node, jobPage.job);
  }

  function renderHistory() {
    const history = jobPage.history;
    byId("job-history-empty").hidden = history.length > 0;
    const list = byId("job-history");
    const latest = history[history.length - 1];
    if (latest) {
      const parts = [h("span", { class: "history-time", text: formatTime(latest.at, true) }), h("span", { class: "history-attempt", text: `#${latest.attempt}` }), h("span", { class: "history-percent", text: latest.percent == null ? "—" : formatPercent(latest.percent) })];
      if (latest.message) parts.push(h("span", { class: "history-message", text: latest.message }));
      list.prepend(h("li", null, ...parts));
      while (list.childElementCount > MAX_HISTORY) list.lastElementChild.remove();
    }
    renderHistoryChart(history);
  }

  /** A line of percent over time, one line per attempt. */
  function renderHistoryChart(history) {
    const box = byId("job-history-chart");
    const points = history.filter((p) => p.percent != null);
    if (points.length < 2) {
      box.replaceChildren();
      return;
    }
    const width = 600;
    const height = 80;
    const start = points[0].at;
    const span = Math.max(1, points[points.length - 1].at - start);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "chart");
    svg.setAttribute("role", "img");
    const last = points[points.length - 1];
    svg.setAttribute("aria-label", `Progress went from ${formatPercent(points[0].percent)} to ${formatPercent(last.percent)} in ${formatDuration(span)}`);
    for (const y of [0, 50, 100]) {
      const line = document.createElementNS(ns, "line");
      line.setAttribute("x1", "0");
      line.setAttribute("x2", String(width));
      line.setAttribute("y1", String(height - (y / 100) * height));
      line.setAttribute("y2", String(height - (y / 100) * height));
      line.setAttribute("class", "grid");
      svg.append(line);
    }
    const byAttempt = new Map();
    for (const p of points) {
      if (!byAttempt.has(p.attempt)) byAttempt.set(p.attempt, []);
      byAttempt.get(p.attempt).push(`${(((p.at - start) / span) * width).toFixed(1)},${(height - (p.percent / 100) * (height - 2) - 1).toFixed(1)}`);
    }
    for (const coords of byAttempt.values()) {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", coords.join(" "));
      line.setAttribute("class", "series");
      svg.append(line);
    }
    box.replaceChildren(svg);
  }

  function setupJobPage() {
    byId("job-cancel").addEventListener("click", async () => {
      if (!jobPage || !jobPage.job) return;
      const page = jobPage;
      byId("job-cancel").disabled = true;
      const job = await cancelJob(page.id, page.job.name);
      if (job && page === jobPage) page.job = job;
      renderJobPage();
    });
    byId("job-retry").addEventListener("click", async () => {
      if (!jobPage || !jobPage.job) return;
      const page = jobPage;
      byId("job-retry").disabled = true;
      const job = await retryJob(page.id, page.job.name);
      byId("job-retry").disabled = false;
      if (job && page === jobPage) {
        page.job = job;
        renderJobPage();
        // The previous stream ended with the job; follow the new attempt.
        openJobStream(page);
      }
    });
  }

  // ---------------------------------------------------------------------
  // The jobs channel

  let channel = null;

  function setConnection(state, text) {
    const box = byId("connection");
    box.dataset.state = state;
    setText(byId("connection-text"), text);
  }

  function openChannel() {
    if (channel) channel.close();
    setConnection("connecting", "Connecting…");
    const source = new EventSource("/api/events?channel=jobs");
    channel = source;
    let wasOpen = false;
    source.addEventListener("open", () => {
      setConnection("live", "Live");
      wasOpen = true;
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up, for example after a non-SSE response; a new
        // connection has no Last-Event-ID, so read everything again once open.
        setConnection("offline", "Offline, retrying…");
        setTimeout(() => {
          if (channel === source) {
            openChannel();
            reloadAll();
          }
        }, 3000);
      } else if (wasOpen) {
        setConnection("connecting", "Reconnecting…");
      }
    });
    const events = ["progress", "log", "stale", ...STATE_EVENTS];
    for (const name of events) {
      source.addEventListener(name, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        onChannelEvent(name, data);
      });
    }
    source.addEventListener("resync", () => reloadAll());
  }

  /** Fetches the jobs in the table whose state changed, batched; many at once reload the page instead. */
  const refreshIds = new Set();
  const scheduleJobRefresh = coalesce(async () => {
    const ids = [...refreshIds];
    refreshIds.clear();
    if (ids.length > 8) {
      await loadJobs();
      return;
    }
    await Promise.all(
      ids.map(async (id) => {
        const result = await api("GET", `/api/jobs/${encodeURIComponent(id)}`);
        if (!result.ok || !result.body) return;
        const job = remember(result.body);
        if (jobsView.filters.status && job.status !== jobsView.filters.status) scheduleJobsReload();
      }),
    );
    refreshAllViews();
  }, 300);

  function onChannelEvent(name, data) {
    const id = data.jobId;
    if (!id) return;
    const job = jobs.get(id);
    const inTable = jobsView.ids.includes(id);
    if (job) applyEvent(job, name, data);
    const stateChange = STATE_EVENTS.includes(name);
    if (stateChange) {
      scheduleStatsReload();
      if (currentView === "jobs") {
        if (inTable) {
          refreshIds.add(id);
          scheduleJobRefresh();
        } else {
          scheduleJobsReload();
        }
      }
      if (currentView === "overview") scheduleRunningReload();
    }
    if (!job) return;
    if (inTable) patchJobRow(id);
    const running = overview.runningRows.get(id);
    if (running) updateRunningRow(running, job);
  }

  function refreshAllViews() {
    if (currentView === "jobs") renderJobs();
    if (currentView === "overview") renderRunning();
    if (currentView === "job") renderJobPage();
  }

  function reloadAll() {
    if (currentView === "jobs") {
      loadJobs();
      loadStats();
    } else if (currentView === "overview") {
      loadStats();
      loadRunning();
    } else if (currentView === "job" && jobPage) {
      reloadJobPage(jobPage);
    }
  }

  // ---------------------------------------------------------------------
  // Routing: #/jobs?filters, #/jobs/<id>, #/overview

  let currentView = null;

  function route() {
    const hash = location.hash.replace(/^#/, "") || "/jobs";
    const [path, query] = hash.split("?", 2);
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean);
    let view;
    if (parts.length === 0 || (parts[0] === "jobs" && parts.length === 1)) view = "jobs";
    else if (parts[0] === "jobs" && parts.length === 2) view = "job";
    else if (parts[0] === "overview" && parts.length === 1) view = "overview";
    else view = "missing";

    if (view !== "job") closeJobPage();
    const changedView = view !== currentView;
    currentView = view;
    for (const name of ["jobs", "overview", "job", "missing"]) byId(`view-${name}`).hidden = name !== view;
    for (const link of document.querySelectorAll("[data-nav]")) {
      const active = link.dataset.nav === view || (view === "job" && link.dataset.nav === "jobs");
      setAttr(link, "aria-current", active ? "page" : null);
    }
    if (view === "jobs") {
      document.title = "Jobs · burro";
      showJobsView(params);
    } else if (view === "overview") {
      document.title = "Overview · burro";
      showOverview();
    } else if (view === "job") {
      byId("job-back").href = jobsHash(jobsView.filters);
      showJobPage(decodeURIComponent(parts[1]));
    } else {
      document.title = "Not found · burro";
    }
    if (changedView) byId("main").focus({ preventScroll: true });
  }

  /** Once a second: heartbeat ages and running durations. */
  function tick() {
    for (const node of document.querySelectorAll("[data-heartbeat-of]")) {
      const job = jobs.get(node.getAttribute("data-heartbeat-of"));
      if (job) refreshHeartbeat(node, job);
    }
    for (const node of document.querySelectorAll("[data-running-since]")) {
      setText(node, formatDuration(serverNow() - Date.parse(node.getAttribute("data-running-since"))));
    }
    for (const rows of [overview.runningRows, jobsView.rows]) {
      for (const [id, row] of rows) {
        const job = jobs.get(id);
        if (job && job.status === "running") {
          const stale = isStale(job);
          row.tr.classList.toggle("is-stale", stale);
          row.cells.stale.hidden = !stale;
        }
      }
    }
  }

  /** A slow poll for what no event announces, such as newly enqueued jobs. */
  function poll() {
    if (document.hidden) return;
    if (currentView === "jobs") {
      scheduleJobsReload();
      scheduleStatsReload();
    } else if (currentView === "overview") {
      scheduleRunningReload();
      scheduleStatsReload();
    }
  }

  function start() {
    setupJobsView();
    setupJobPage();
    window.addEventListener("hashchange", route);
    route();
    openChannel();
    setInterval(tick, 1000);
    setInterval(poll, POLL_MS);
  }

  start();
})();
