// The csvstore page: sessions, uploads with progress, file list, preview, downloads,
// SQL queries with a chart, column summaries.
// Plain JavaScript, no build step. Every string from the server reaches the DOM as text
// (textContent, setAttribute), never as HTML.

const API = "api/csv";
const KEY_STORAGE = "csvstore.apiKey";
const SESSIONS_PER_PAGE = 50;
const PREVIEW_ROWS = 20;
const PARALLEL_UPLOADS = 3;
const QUERY_LIMIT = 1000;
const CHART_POINTS = 50; // a chart of more bars than this is unreadable anyway
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

const state = {
  sessions: [], // the pages of sessions loaded so far
  nextSessionsUrl: null, // Link rel="next" of the last page
  current: null, // the session shown on the right
  preview: null, // {file, nextOffset}
  summary: null, // the file whose summary is shown
  query: { sessionId: null, edited: false, result: null },
};

// ---------------------------------------------------------------- small DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "onclick") node.addEventListener("click", value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

function setText(node, text) {
  node.textContent = text ?? "";
  show(node, Boolean(text));
}

let noticeTimer = null;
function notice(text, isError = false) {
  const node = $("notice");
  node.className = isError ? "error" : "ok";
  node.setAttribute("role", isError ? "alert" : "status");
  setText(node, text);
  clearTimeout(noticeTimer);
  if (!isError) noticeTimer = setTimeout(() => show(node, false), 4000);
}

function formatSize(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function formatTime(iso) {
  if (!iso) return "";
  // 2024-01-01T12:00:00.000Z -> 2024-01-01 12:00:00 UTC: readable, and the same for everyone.
  return iso.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC");
}

// Date and time as two pieces, so a narrow column breaks between them and nowhere else.
function timeEl(iso) {
  const [date, ...time] = formatTime(iso).split(" ");
  return el("time", { datetime: iso }, el("span", {}, date), " ", el("span", {}, time.join(" ")));
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// ---------------------------------------------------------------- the API key

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function showKeyState() {
  const key = apiKey();
  setText($("key-state"), key ? "API key set for this tab" : "");
  show($("key-forget"), Boolean(key));
}

let keyPrompt = null; // one dialog for every request that met a 401 at the same time

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  const input = $("key-input");
  setText($("key-reason"), reason);
  input.value = "";
  keyPrompt = new Promise((resolve, reject) => {
    const done = (key) => {
      $("key-form").removeEventListener("submit", onSubmit);
      $("key-cancel").removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      keyPrompt = null;
      if (key) {
        sessionStorage.setItem(KEY_STORAGE, key);
        showKeyState();
        resolve(key);
      } else {
        reject(new Error("an API key is needed"));
      }
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (key) done(key);
    };
    const onCancel = (event) => {
      event.preventDefault();
      done(null);
    };
    $("key-form").addEventListener("submit", onSubmit);
    $("key-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
  });
  dialog.showModal();
  input.focus();
  return keyPrompt;
}

function authHeaders(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

// ---------------------------------------------------------------- talking to the API

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// The problem+json `detail`, or the status line when the body is something else.
function problemDetail(status, statusText, bodyText) {
  try {
    const body = JSON.parse(bodyText);
    if (body && typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through
  }
  return `${status} ${statusText || "error"}`.trim();
}

// fetch with the key; a 401 asks for a key once and tries again with it.
async function request(url, options = {}) {
  for (;;) {
    const response = await fetch(url, { ...options, headers: authHeaders(options.headers) });
    if (response.status !== 401) return response;
    const detail = problemDetail(401, response.statusText, await response.text());
    if (apiKey()) sessionStorage.removeItem(KEY_STORAGE);
    showKeyState();
    await askForKey(detail);
  }
}

async function requestJson(url, options = {}) {
  const response = await request(url, options);
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, problemDetail(response.status, response.statusText, text));
  return { body: text ? JSON.parse(text) : null, response };
}

function nextLink(response) {
  const link = response.headers.get("Link") || "";
  const match = link.match(/<([^>]*)>\s*;\s*rel="?next"?/);
  if (!match) return null;
  // Followed with the API key: only ever to this page's own server.
  const next = new URL(match[1], response.url);
  return next.origin === location.origin ? next.pathname + next.search : null;
}

const sessionUrl = (id) => `${API}/sessions/${encodeURIComponent(id)}`;
const fileUrl = (id) => `${API}/files/${encodeURIComponent(id)}`;

// ---------------------------------------------------------------- sessions

async function loadSessions({ more = false } = {}) {
  const url = more ? state.nextSessionsUrl : `${API}/sessions?limit=${SESSIONS_PER_PAGE}`;
  try {
    const { body, response } = await requestJson(url);
    if (more) {
      // One created here since the last page may come again: show it once.
      const known = new Set(state.sessions.map((s) => s.session_id));
      state.sessions = state.sessions.concat(body.filter((s) => !known.has(s.session_id)));
    } else {
      state.sessions = body;
    }
    state.nextSessionsUrl = nextLink(response);
    renderSessions();
  } catch (error) {
    notice(`Could not list sessions: ${error.message}`, true);
  }
}

function renderSessions() {
  const list = $("session-list");
  list.replaceChildren(
    ...state.sessions.map((session) => {
      const count = session.csv_files.length;
      const selected = state.current && state.current.session_id === session.session_id;
      return el(
        "li",
        { class: selected ? "selected" : "", "data-session-id": session.session_id },
        el(
          "button",
          { type: "button", class: "session-open", onclick: () => openSession(session.session_id) },
          el("span", { class: "name" }, session.session_id),
          el("span", { class: "muted" }, plural(count, "file")),
        ),
        el(
          "button",
          {
            type: "button",
            class: "icon danger",
            title: `Delete session ${session.session_id}`,
            "aria-label": `Delete session ${session.session_id}`,
            onclick: () => deleteSession(session.session_id),
          },
          "×",
        ),
      );
    }),
  );
  show($("sessions-empty"), state.sessions.length === 0);
  show($("sessions-more"), Boolean(state.nextSessionsUrl));
}

async function createSession(event) {
  event.preventDefault();
  const input = $("new-session-id");
  const sessionId = input.value.trim();
  setText($("create-error"), "");
  try {
    await requestJson(`${API}/sessions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ session_id: sessionId }),
    });
  } catch (error) {
    setText($("create-error"), error.message);
    return;
  }
  input.value = "";
  notice(`Session ${sessionId} created.`);
  await openSession(sessionId);
}

// Keep the pages loaded so far, in the server's order (session_id, byte-wise), rather than
// reload from the first page and lose the user's place.
function rememberSession(session) {
  const index = state.sessions.findIndex((s) => s.session_id === session.session_id);
  if (index >= 0) {
    state.sessions[index] = session;
    return;
  }
  const after = state.sessions.findIndex((s) => s.session_id > session.session_id);
  state.sessions.splice(after < 0 ? state.sessions.length : after, 0, session);
}

async function deleteSession(sessionId) {
  if (!confirm(`Delete session “${sessionId}” and all its files?`)) return;
  try {
    await requestJson(sessionUrl(sessionId), { method: "DELETE" });
  } catch (error) {
    notice(`Could not delete ${sessionId}: ${error.message}`, true);
    return;
  }
  state.sessions = state.sessions.filter((s) => s.session_id !== sessionId);
  if (state.current && state.current.session_id === sessionId) closeSession();
  else renderSessions();
  notice(`Session ${sessionId} deleted.`);
}

// ---------------------------------------------------------------- one session

function closeSession() {
  state.current = null;
  closePreview();
  closeSummary();
  show($("session-view"), false);
  show($("no-session"), true);
  $("upload-list").replaceChildren();
  renderSessions();
}

async function openSession(sessionId) {
  if (!state.current || state.current.session_id !== sessionId) {
    $("upload-list").replaceChildren();
    closePreview();
    closeSummary();
    resetQuery(sessionId);
  }
  await refreshSession(sessionId);
}

async function refreshSession(sessionId = state.current && state.current.session_id) {
  if (!sessionId) return;
  let session;
  try {
    ({ body: session } = await requestJson(sessionUrl(sessionId)));
  } catch (error) {
    notice(`Could not open ${sessionId}: ${error.message}`, true);
    if (error.status === 404) closeSession();
    return;
  }
  state.current = session;
  rememberSession(session); // new, or its file count changed
  renderSession();
  renderSessions();
  await loadTables();
}

function renderSession() {
  const session = state.current;
  show($("no-session"), false);
  show($("session-view"), true);
  $("session-title").textContent = session.session_id;
  const meta = [`${plural(session.csv_files.length, "file")}`, `created ${formatTime(session.created_at)}`];
  if (session.expires_at) meta.push(`expires ${formatTime(session.expires_at)}`);
  $("session-meta").textContent = meta.join(" · ");
  const archive = $("archive-link");
  archive.href = `${sessionUrl(session.session_id)}/archive`;
  archive.setAttribute("download", `${session.session_id}.zip`);
  show(archive, session.csv_files.length > 0);

  const files = [...session.csv_files].sort((a, b) => a.created_at.localeCompare(b.created_at));
  $("file-rows").replaceChildren(...files.map(fileRow));
  show($("file-table"), files.length > 0);
  show($("files-empty"), files.length === 0);
}

function fileRow(file) {
  const columns = file.columns || [];
  const columnText =
    file.column_count === null || file.column_count === undefined
      ? ""
      : `${file.column_count}${columns.length ? ": " + columns.join(", ") : ""}`;
  const sha = file.sha256 || "";
  const download = el(
    "a",
    {
      class: "button",
      href: `${fileUrl(file.id)}/content`,
      download: file.original_filename,
      onclick: (event) => downloadWithKey(event),
    },
    "Download",
  );
  return el(
    "tr",
    { "data-file-id": file.id },
    el("td", { class: "name" }, file.original_filename),
    el("td", { class: "num", title: `${file.file_size} bytes` }, formatSize(file.file_size)),
    el("td", { class: "num" }, file.row_count ?? ""),
    el("td", { class: "columns", title: columns.join(", ") }, columnText),
    el("td", { class: "sha", title: sha }, el("code", {}, sha.slice(0, 12))),
    el("td", {}, timeEl(file.created_at)),
    el(
      "td",
      { class: "actions" },
      el("button", { type: "button", onclick: () => openPreview(file) }, "Preview"),
      el("button", { type: "button", onclick: () => openSummary(file) }, "Summary"),
      download,
      el("button", { type: "button", class: "danger", onclick: () => deleteFile(file) }, "Delete"),
    ),
  );
}

async function deleteFile(file) {
  if (!confirm(`Delete ${file.original_filename}?`)) return;
  try {
    await requestJson(fileUrl(file.id), { method: "DELETE" });
  } catch (error) {
    notice(`Could not delete ${file.original_filename}: ${error.message}`, true);
    return;
  }
  if (state.preview && state.preview.file.id === file.id) closePreview();
  if (state.summary && state.summary.id === file.id) closeSummary();
  notice(`${file.original_filename} deleted.`);
  await refreshSession();
}

// Without a key the browser streams the download itself. A link cannot carry an
// Authorization header, so with a key the page fetches the bytes and saves them.
async function downloadWithKey(event) {
  if (!apiKey()) return;
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const response = await request(link.href);
    if (!response.ok) {
      throw new ApiError(response.status, problemDetail(response.status, response.statusText, await response.text()));
    }
    const url = URL.createObjectURL(await response.blob());
    const save = el("a", { href: url, download: link.getAttribute("download") || "" });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    notice(`Download failed: ${error.message}`, true);
  }
}

// ---------------------------------------------------------------- preview

function closePreview() {
  state.preview = null;
  show($("preview"), false);
}

async function openPreview(file) {
  state.preview = { file, nextOffset: 0 };
  // Titles before the header and notes after the table are not rows: say they are left out.
  const left = [];
  if (file.preamble_lines) left.push(`${plural(file.preamble_lines, "line")} before the header`);
  if (file.header_rule) left.push("the rule line under the header");
  if (file.footer_lines) left.push(`${plural(file.footer_lines, "line")} after the table`);
  const skipped = left.length ? ` (${left.join(", ")} not shown)` : "";
  $("preview-title").textContent = `Preview: ${file.original_filename}${skipped}`;
  const table = $("preview-table");
  table.tHead.replaceChildren();
  table.tBodies[0].replaceChildren();
  setText($("preview-error"), "");
  show($("preview"), true);
  await loadPreviewRows();
  $("preview").scrollIntoView({ block: "nearest" });
}

async function loadPreviewRows() {
  const preview = state.preview;
  if (!preview || preview.nextOffset === null) return;
  const url = `${fileUrl(preview.file.id)}/rows?offset=${preview.nextOffset}&limit=${PREVIEW_ROWS}`;
  let page;
  try {
    ({ body: page } = await requestJson(url));
  } catch (error) {
    setText($("preview-error"), error.message);
    show($("preview-more"), false);
    return;
  }
  if (state.preview !== preview) return; // another file was chosen meanwhile
  const table = $("preview-table");
  if (!table.tHead.rows.length) {
    const width = Math.max(page.columns.length, ...page.rows.map((row) => row.length), 0);
    const names = page.columns.length ? page.columns : Array.from({ length: width }, (_, i) => `${i + 1}`);
    table.tHead.append(el("tr", {}, el("th", { class: "num" }, "#"), ...names.map((name) => el("th", {}, name))));
  }
  const first = preview.nextOffset;
  // Cells the server cut short (too long for a page) are marked as such, never shown as whole.
  const cut = new Set((page.truncated || []).map(([row, column]) => `${row},${column}`));
  const cell = (text, i, j) =>
    cut.has(`${i},${j}`)
      ? el("td", { class: "truncated", title: "Cut short: the whole cell is in the file's download" }, el("span", { class: "cut" }, "cut"), " ", text)
      : el("td", {}, text);
  table.tBodies[0].append(
    ...page.rows.map((row, i) => el("tr", {}, el("td", { class: "num muted" }, first + i + 1), ...row.map((text, j) => cell(text, i, j)))),
  );
  preview.nextOffset = page.next_offset;
  show($("preview-more"), page.next_offset !== null);
  if (!table.tBodies[0].rows.length) setText($("preview-error"), "This file has no data rows.");
}

// ---------------------------------------------------------------- summaries

function closeSummary() {
  state.summary = null;
  show($("summary"), false);
}

function formatNumber(value) {
  if (value === null || value === undefined) return "";
  return Number.isInteger(value) ? String(value) : Number(value).toPrecision(6).replace(/\.?0+$/, "");
}

async function openSummary(file) {
  state.summary = file;
  $("summary-title").textContent = `Summary: ${file.original_filename}`;
  const body = $("summary-table").tBodies[0];
  body.replaceChildren();
  setText($("summary-error"), "");
  show($("summary"), true);
  let summary;
  try {
    ({ body: summary } = await requestJson(`${fileUrl(file.id)}/summary`));
  } catch (error) {
    setText($("summary-error"), error.message);
    return;
  }
  if (state.summary !== file) return;
  const cellText = (value) => (value === null || value === undefined ? "" : typeof value === "number" ? formatNumber(value) : String(value));
  body.append(
    ...summary.columns.map((c) =>
      el(
        "tr",
        {},
        el("td", {}, c.name),
        el("td", { class: "muted" }, c.type),
        el("td", { class: "num" }, c.count),
        el("td", { class: "num" }, c.nulls),
        el("td", { class: "num" }, c.approx_distinct),
        el("td", {}, cellText(c.min)),
        el("td", {}, cellText(c.max)),
        el("td", { class: "num" }, formatNumber(c.mean)),
        el("td", { class: "num" }, formatNumber(c.std)),
        el("td", {}, c.top.map((t) => `${cellText(t.value)} (${t.count})`).join(", ")),
      ),
    ),
  );
  $("summary").scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- queries

function resetQuery(sessionId) {
  state.query = { sessionId, edited: false, result: null };
  $("query-sql").value = "";
  setText($("query-error"), "");
  setText($("query-meta"), "");
  setText($("query-tables"), "");
  show($("query-result"), false);
  show($("query-chart-wrap"), false);
}

async function loadTables() {
  const session = state.current;
  if (!session) return;
  let tables;
  try {
    ({ body: tables } = await requestJson(`${sessionUrl(session.session_id)}/tables`));
  } catch (error) {
    setText($("query-tables"), `Tables unavailable: ${error.message}`);
    return;
  }
  if (state.current !== session) return;
  setText($("query-tables"), tables.length ? `Tables: ${tables.map((t) => `${t.name} (${t.error ? "unreadable: " + t.error.split("\n")[0] : plural(t.row_count, "row")})`).join(", ")}` : "No tables: upload a CSV file first.");
  if (!state.query.edited) $("query-sql").value = tables.length ? `SELECT * FROM ${tables[0].name} LIMIT 100` : "";
}

async function runQuery(event) {
  event.preventDefault();
  if (!state.current) return;
  const sessionId = state.current.session_id;
  setText($("query-error"), "");
  setText($("query-meta"), "running…");
  let result;
  try {
    ({ body: result } = await requestJson(`${sessionUrl(sessionId)}/query`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql: $("query-sql").value, limit: QUERY_LIMIT }),
    }));
  } catch (error) {
    setText($("query-meta"), "");
    setText($("query-error"), error.message);
    return;
  }
  if (!state.current || state.current.session_id !== sessionId) return;
  state.query.result = result;
  const more = result.truncated ? ` (first ${QUERY_LIMIT})` : "";
  setText($("query-meta"), `${plural(result.row_count, "row")}${more} in ${Math.round(result.elapsed_ms)} ms`);
  renderResult(result);
  drawChart();
}

const cellValue = (value) => (value === null ? "null" : typeof value === "object" ? JSON.stringify(value) : String(value));

function renderResult(result) {
  const table = $("query-table");
  table.tHead.replaceChildren(el("tr", {}, ...result.columns.map((name, i) => el("th", { title: result.types[i] }, name))));
  table.tBodies[0].replaceChildren(...result.rows.map((row) => el("tr", {}, ...row.map((value) => el("td", { class: value === null ? "muted" : "" }, cellValue(value))))));
  show($("query-result"), true);
}

// A chart when the result is one label column and one numeric column.
function chartable(result) {
  if (!result || result.columns.length !== 2 || !result.rows.length) return null;
  const numeric = result.rows.every((row) => typeof row[1] === "number");
  return numeric ? result.rows.slice(0, CHART_POINTS).map((row) => [cellValue(row[0]), row[1]]) : null;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function drawChart() {
  const points = chartable(state.query.result);
  const chart = $("query-chart");
  show($("query-chart-wrap"), Boolean(points));
  if (!points) {
    chart.replaceChildren();
    return;
  }
  const [width, height, pad, bottom] = [800, 220, 40, 40];
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.setAttribute("preserveAspectRatio", "none");
  const values = points.map(([, v]) => v);
  const low = Math.min(0, ...values);
  const high = Math.max(0, ...values) || 1;
  const y = (v) => height - bottom - ((v - low) / (high - low || 1)) * (height - bottom - 10);
  const step = (width - pad) / points.length;
  const x = (i) => pad + step * i + step / 2;
  const parts = [
    svg("line", { class: "axis", x1: pad, x2: width, y1: y(0), y2: y(0) }),
    svg("text", { x: 2, y: 12 }, formatNumber(high)),
    svg("text", { x: 2, y: y(low) }, formatNumber(low)),
  ];
  if ($("query-chart-kind").value === "line") {
    parts.push(svg("polyline", { class: "line", points: points.map(([, v], i) => `${x(i)},${y(v)}`).join(" ") }));
  } else {
    for (const [i, [label, v]] of points.entries()) {
      const top = Math.min(y(v), y(0));
      const bar = svg("rect", { class: "bar", x: x(i) - step * 0.4, width: step * 0.8, y: top, height: Math.max(1, Math.abs(y(v) - y(0))) });
      bar.append(svg("title", {}, `${label}: ${v}`));
      parts.push(bar);
    }
  }
  const every = Math.ceil(points.length / 12); // labels that fit
  for (const [i, [label]] of points.entries()) {
    if (i % every === 0) parts.push(svg("text", { class: "label", x: x(i), y: height - bottom + 14, "text-anchor": "middle" }, label.slice(0, 14)));
  }
  chart.replaceChildren(...parts);
}

// ---------------------------------------------------------------- uploads

const uploadQueue = [];
let uploadsRunning = 0;

function queueUploads(fileList) {
  if (!state.current) return;
  const sessionId = state.current.session_id;
  for (const file of fileList) {
    const bar = el("progress", { max: 100, value: 0 });
    const status = el("span", { class: "status muted" }, "waiting");
    const item = el(
      "li",
      { "data-name": file.name },
      el("span", { class: "name" }, file.name),
      el("span", { class: "muted" }, formatSize(file.size)),
      bar,
      status,
    );
    $("upload-list").append(item);
    uploadQueue.push({ file, sessionId, item, bar, status });
  }
  pumpUploads();
}

function pumpUploads() {
  while (uploadsRunning < PARALLEL_UPLOADS && uploadQueue.length) {
    const job = uploadQueue.shift();
    uploadsRunning += 1;
    runUpload(job).finally(() => {
      uploadsRunning -= 1;
      pumpUploads();
    });
  }
}

// One XMLHttpRequest per file: fetch() cannot report upload progress.
function sendUpload(job) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${API}/upload`);
    const key = apiKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.floor((event.loaded / event.total) * 100);
      job.bar.value = percent;
      job.status.textContent = `${percent}%`;
    });
    xhr.addEventListener("load", () => resolve({ status: xhr.status, statusText: xhr.statusText, text: xhr.responseText }));
    xhr.addEventListener("error", () => resolve({ status: 0, statusText: "network error", text: "" }));
    xhr.addEventListener("abort", () => resolve({ status: 0, statusText: "aborted", text: "" }));
    const form = new FormData();
    form.append("session_id", job.sessionId); // first, so an unknown session fails early
    form.append("file", job.file, job.file.name);
    xhr.send(form);
    job.status.textContent = "uploading";
  });
}

async function runUpload(job) {
  let result;
  for (;;) {
    result = await sendUpload(job);
    if (result.status !== 401) break;
    sessionStorage.removeItem(KEY_STORAGE);
    showKeyState();
    try {
      await askForKey(problemDetail(401, result.statusText, result.text));
    } catch {
      break;
    }
  }
  if (result.status >= 200 && result.status < 300) {
    job.bar.value = 100;
    job.item.classList.add("done");
    const body = JSON.parse(result.text);
    const rows = body.file && body.file.row_count;
    job.status.textContent = rows === null || rows === undefined ? "stored" : `stored, ${plural(rows, "row")}`;
    job.status.className = "status ok";
  } else {
    job.item.classList.add("failed");
    job.status.textContent = problemDetail(result.status, result.statusText, result.text);
    job.status.className = "status error";
  }
  if (state.current && state.current.session_id === job.sessionId) await refreshSession(job.sessionId);
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    queueUploads(event.dataTransfer.files);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    queueUploads(input.files);
    input.value = ""; // choosing the same file again uploads it again
  });
  // A file dropped outside the zone would make the browser leave the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

// ---------------------------------------------------------------- start

function start() {
  $("create-form").addEventListener("submit", createSession);
  $("sessions-more").addEventListener("click", () => loadSessions({ more: true }));
  $("session-delete").addEventListener("click", () => state.current && deleteSession(state.current.session_id));
  $("archive-link").addEventListener("click", downloadWithKey);
  $("preview-more").addEventListener("click", loadPreviewRows);
  $("query-form").addEventListener("submit", runQuery);
  $("query-sql").addEventListener("input", () => {
    state.query.edited = true;
  });
  $("query-chart-kind").addEventListener("change", drawChart);
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showKeyState();
    notice("API key forgotten for this tab.");
  });
  setUpDropZone();
  showKeyState();
  loadSessions();
}

start();
