// Drives Debian's chromium through the csvstore page, as a person would, and checks what the
// page shows. Run by tests/test_webpage.py: `node webpage.mjs CONFIG.json`, where CONFIG is
//   {url, chromium, sessionId, apiKey|null, uploads: [{path, name, columns, firstRow}],
//    refused: path|null, dropped: {name, text}|null, downloadName, downloadTo, screenshot, moreSessions: n|null,
//    cutCell: {path, name}|null, query: {aggregate, chartLabels, summaryOf}|null}
// It prints one JSON line of what it saw; any failed check exits non-zero with the reason.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const STEP_TIMEOUT = 30_000; // generous: CI machines are shared, and Chromium is slow under load
const seen = { dialogs: [], downloads: [] };

// The flags a headless chromium needs on this machine: no sandbox as root, no GPU, and no
// background traffic to Google (the network is closed, so it would only fail and retry).
// Playwright adds --headless and a fresh, empty --user-data-dir of its own per launch.
const browser = await chromium.launch({
  executablePath: config.chromium,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const problems = []; // console errors and page errors that are not expected 401s

try {
  const context = await browser.newContext({
    acceptDownloads: true,
    viewport: { width: 1180, height: 760 },
    deviceScaleFactor: 1,
  });
  context.setDefaultTimeout(STEP_TIMEOUT);
  const page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    const text = message.text();
    // Chromium logs every non-2xx fetch; the 401 that asks for the key and the 400s of the
    // invalid session id and the refused file below are expected. Anything else (a CSP violation included) is not.
    if (message.type() === "error" && !/status of (401|400)/.test(text)) problems.push(`console: ${text}`);
  });
  page.on("dialog", async (dialog) => {
    seen.dialogs.push(dialog.message());
    await dialog.accept();
  });

  await page.goto(config.url);
  assert.equal(await page.title(), "csvstore");

  // ---- the API key, entered once when the server asks for it
  const keyDialog = page.locator("#key-dialog");
  if (config.apiKey) {
    await keyDialog.waitFor({ state: "visible" });
    await page.fill("#key-input", "not-the-key-at-all-0000");
    await page.click("#key-save");
    // A wrong key: asked again, with the server's reason.
    await page.waitForFunction(() => document.querySelector("#key-reason").textContent.includes("not valid"));
    assert.ok(await keyDialog.isVisible(), "a wrong key must ask again");
    await page.fill("#key-input", config.apiKey);
    await page.click("#key-save");
    await keyDialog.waitFor({ state: "hidden" });
    await page.locator("#key-state", { hasText: "API key set" }).waitFor();
    seen.storedKey = await page.evaluate(() => sessionStorage.getItem("csvstore.apiKey"));
  } else {
    await page.waitForLoadState("networkidle");
    assert.ok(!(await keyDialog.isVisible()), "an open server must not ask for a key");
  }

  // ---- pages of sessions: "More sessions" follows the Link header
  if (config.moreSessions) {
    await page.locator("#session-list li").nth(49).waitFor();
    seen.firstPage = await page.locator("#session-list li").count();
    await page.click("#sessions-more");
    await page.locator("#session-list li").nth(config.moreSessions - 1).waitFor();
    seen.afterMore = await page.locator("#session-list li").count();
    assert.ok(await page.locator("#sessions-more").isHidden(), "no more pages: the button goes");
  }

  // ---- create a session; an invalid id shows the server's problem+json detail
  await page.fill("#new-session-id", ".hidden");
  await page.click("#create-form button[type=submit]");
  const createError = page.locator("#create-error");
  await createError.waitFor({ state: "visible" });
  seen.createError = await createError.textContent();
  assert.match(seen.createError, /session id is 1-128 characters/);

  await page.fill("#new-session-id", config.sessionId);
  await page.click("#create-form button[type=submit]");
  await page.locator("#session-title", { hasText: config.sessionId }).waitFor();
  assert.ok(await createError.isHidden(), "the old error goes once a create succeeds");
  await page.locator(`#session-list li[data-session-id="${config.sessionId}"].selected`).waitFor();

  // ---- upload several files at once through the file input, each with its own progress bar
  await page.setInputFiles("#file-input", config.uploads.map((u) => u.path));
  const uploads = page.locator("#upload-list li");
  await page.locator("#upload-list li.done").nth(config.uploads.length - 1).waitFor();
  assert.equal(await uploads.count(), config.uploads.length);
  seen.progress = await page.$$eval("#upload-list progress", (bars) => bars.map((b) => b.value));
  assert.deepEqual(seen.progress, config.uploads.map(() => 100));

  // ---- a file the server refuses: its problem+json detail is shown on its line
  if (config.refused) {
    const before = await uploads.count();
    await page.setInputFiles("#file-input", [config.refused]);
    const failed = page.locator("#upload-list li.failed");
    await failed.waitFor();
    assert.equal(await uploads.count(), before + 1);
    seen.refused = await failed.locator(".status").textContent();
  }

  // ---- and one more by dropping it on the drop zone
  let expectedFiles = config.uploads.length;
  if (config.dropped) {
    await page.evaluate(({ name, text }) => {
      const data = new DataTransfer();
      data.items.add(new File([text], name, { type: "text/csv" }));
      document.querySelector("#drop-zone").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    }, config.dropped);
    expectedFiles += 1;
    await page.locator("#upload-list li.done").nth(expectedFiles - 1).waitFor();
  }

  // ---- the file list: name (as text, never as HTML), size, rows, columns, checksum
  const fileRows = page.locator("#file-rows tr");
  await fileRows.nth(expectedFiles - 1).waitFor();
  assert.equal(await fileRows.count(), expectedFiles);
  seen.files = await page.$$eval("#file-rows tr", (rows) =>
    rows.map((row) => ({
      id: row.dataset.fileId,
      cells: [...row.cells].slice(0, 6).map((cell) => cell.textContent),
      sha256: row.querySelector(".sha").title,
    })),
  );
  assert.equal(await page.locator("#file-table img, #upload-list img").count(), 0, "a file name became HTML");

  // ---- the first rows of each uploaded file, as a table
  seen.previews = [];
  for (const upload of config.uploads) {
    const row = page.locator("#file-rows tr").filter({ has: page.locator("td.name", { hasText: upload.name }) });
    await row.getByRole("button", { name: "Preview" }).click();
    await page.locator("#preview-title", { hasText: upload.name }).waitFor();
    await page.locator("#preview-table tbody tr").first().waitFor();
    const header = await page.$$eval("#preview-table thead th", (cells) => cells.slice(1).map((c) => c.textContent));
    const first = await page.$$eval("#preview-table tbody tr:first-child td", (cells) => cells.slice(1).map((c) => c.textContent));
    const count = await page.locator("#preview-table tbody tr").count();
    const title = await page.locator("#preview-title").textContent();
    assert.equal(title.includes(" before the header"), Boolean(upload.preamble), title);
    assert.equal(title.includes(" after the table"), Boolean(upload.footer), title);
    assert.deepEqual(header, upload.columns);
    assert.deepEqual(first, upload.firstRow);
    assert.equal(await page.locator("#preview-table img").count(), 0, "a cell became HTML");
    seen.previews.push({ name: upload.name, header, first, count, more: await page.locator("#preview-more").isVisible() });
  }
  // The last preview has more rows than one page: "More rows" appends the next page.
  if (seen.previews.at(-1).more) {
    const before = seen.previews.at(-1).count;
    await page.click("#preview-more");
    await page.locator("#preview-table tbody tr").nth(before).waitFor();
    seen.previews.at(-1).afterMore = await page.locator("#preview-table tbody tr").count();
  }

  // ---- the Query panel: prefilled SQL, a result table, a chart, a bad query's detail
  if (config.query) {
    const sql = page.locator("#query-sql");
    await page.waitForFunction(() => /^SELECT \* FROM \S+ LIMIT 100$/.test(document.querySelector("#query-sql").value));
    const tables = await page.evaluate(async (sessionId) => {
      const key = sessionStorage.getItem("csvstore.apiKey");
      const answer = await fetch(`api/csv/sessions/${sessionId}/tables`, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
      return (await answer.json()).map((t) => t.name);
    }, config.sessionId);
    seen.query = { prefill: await sql.inputValue(), tables, tablesShown: await page.locator("#query-tables").textContent() };
    await page.click("#query-run");
    await page.locator("#query-result").waitFor();
    seen.query.firstResult = {
      header: await page.$$eval("#query-table thead th", (cells) => cells.map((c) => c.textContent)),
      rows: await page.locator("#query-table tbody tr").count(),
      meta: await page.locator("#query-meta").textContent(),
    };
    await sql.fill(config.query.aggregate);
    await page.click("#query-run");
    await page.locator("#query-chart-wrap").waitFor();
    await page.waitForFunction((n) => document.querySelectorAll("#query-chart rect.bar").length === n, config.query.chartLabels.length);
    seen.query.bars = await page.locator("#query-chart rect.bar").count();
    seen.query.labels = await page.$$eval("#query-chart text.label", (texts) => texts.map((t) => t.textContent));
    seen.query.aggregateRows = await page.$$eval("#query-table tbody tr", (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
    if (config.query.screenshot) await page.locator("#query-panel").screenshot({ path: config.query.screenshot });
    await page.selectOption("#query-chart-kind", "line");
    seen.query.lines = await page.locator("#query-chart polyline.line").count();
    seen.query.barsAfterLine = await page.locator("#query-chart rect.bar").count();
    await sql.fill("COPY measurements_csv TO '/tmp/stolen.csv'");
    await page.click("#query-run");
    await page.locator("#query-error").waitFor();
    seen.query.error = await page.locator("#query-error").textContent();
    // ---- each file's summary, one click away
    const row = page.locator("#file-rows tr").filter({ has: page.locator("td.name", { hasText: config.query.summaryOf }) });
    await row.getByRole("button", { name: "Summary" }).click();
    await page.locator("#summary-title", { hasText: config.query.summaryOf }).waitFor();
    await page.locator("#summary-table tbody tr").first().waitFor();
    seen.query.summary = await page.$$eval("#summary-table tbody tr", (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
    assert.equal(await page.locator("#query-table img, #summary-table img").count(), 0, "a value became HTML");
  }

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: config.screenshot });

  // ---- download one upload and keep its bytes for the test to compare
  const toDownload = page.locator("#file-rows tr").filter({ has: page.locator("td.name", { hasText: config.downloadName }) });
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    toDownload.getByRole("link", { name: "Download" }).click(),
  ]);
  await download.saveAs(config.downloadTo);
  seen.downloads.push({ suggested: download.suggestedFilename(), url: download.url().split(":")[0] });

  // ---- a cell too long for a page: the preview marks it as cut, and shows only its start
  if (config.cutCell) {
    await page.setInputFiles("#file-input", [config.cutCell.path]);
    const done = await page.locator("#upload-list li.done").count();
    await page.locator("#upload-list li.done").nth(done).waitFor();
    const row = page.locator("#file-rows tr").filter({ has: page.locator("td.name", { hasText: config.cutCell.name }) });
    await row.getByRole("button", { name: "Preview" }).click();
    await page.locator("#preview-title", { hasText: config.cutCell.name }).waitFor();
    await page.locator("#preview-table tbody tr").first().waitFor();
    seen.cutCell = await page.$$eval("#preview-table tbody tr:first-child td", (cells) =>
      cells.slice(1).map((c) => ({ cut: c.classList.contains("truncated"), badge: c.querySelector(".cut")?.textContent ?? null, title: c.title, length: c.textContent.length })),
    );
  }

  // ---- delete one file, then the whole session
  if (config.dropped) {
    const row = page.locator("#file-rows tr").filter({ has: page.locator("td.name", { hasText: config.dropped.name }) });
    await row.getByRole("button", { name: "Delete" }).click();
    await page.locator("#file-rows tr").nth(expectedFiles - 2).waitFor();
    await page.waitForFunction((n) => document.querySelectorAll("#file-rows tr").length === n, expectedFiles - 1);
  }
  await page.click("#session-delete");
  await page.locator("#no-session").waitFor({ state: "visible" });
  await page.locator(`#session-list li[data-session-id="${config.sessionId}"]`).waitFor({ state: "detached" });
  seen.sessionsLeft = await page.locator("#session-list li").count();

  assert.deepEqual(problems, []);
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
