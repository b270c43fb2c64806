// Drives the burro dashboard in a real browser (Debian's Chromium through
// playwright-core) against a running `burro serve`.
//
//   node tests/e2e/dashboard.mjs SERVER_URL SCREENSHOT.png
//
// The server must have two external jobs registered: `numbered`
// (crates/burro/tests/workers/numbered.py) and `sleep`
// (crates/burro/tests/workers/sleep_long.py). The script enqueues jobs through
// the API, watches their rows change in the page, cancels a running job with
// its button and follows a job's page. It saves SCREENSHOT.png (the jobs
// table) and, next to it, -job.png and -overview.png. On failure it saves
// -failure.png, prints the failed step and exits with status 1.

import { chromium } from "playwright-core";
import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname } from "node:path";

const CHROMIUM = process.env.BURRO_E2E_CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// Upper bound of the whole run; each step has its own shorter limit.
const TOTAL_LIMIT_MS = 150_000;

const [serverUrl, screenshotPath] = process.argv.slice(2);
if (!serverUrl || !screenshotPath) {
  console.error("usage: node tests/e2e/dashboard.mjs SERVER_URL SCREENSHOT.png");
  process.exit(2);
}
if (!existsSync(CHROMIUM)) {
  console.error(`${CHROMIUM} does not exist: install it with \`apt-get install chromium\` (./scripts/test does this)`);
  process.exit(1);
}
const base = serverUrl.replace(/\/+$/, "");
const sibling = (suffix) => screenshotPath.replace(/(\.png)?$/i, `${suffix}.png`);

let currentStep = "start";
function step(name) {
  currentStep = name;
  console.log(`step: ${name}`);
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${base}${path}`, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) throw new Error(`${method} ${path} returned ${response.status}: ${text}`);
  return json;
}

async function enqueue(name, data) {
  const { id } = await api("POST", "/api/jobs", { name, data });
  console.log(`enqueued ${name} ${id}`);
  return id;
}

const rowSelector = (id) => `#jobs-body tr[data-job-id="${id}"]`;

/** Waits until the row of `id` in the jobs table has `status`. */
async function waitForRowStatus(page, id, status, timeout) {
  await page.waitForSelector(`${rowSelector(id)}[data-status="${status}"]`, { timeout });
}

/** Returns the aria-valuenow of the row's progress bar, or null. */
async function rowPercent(page, id) {
  return page.$eval(`${rowSelector(id)} [role="progressbar"]`, (bar) => {
    const value = bar.getAttribute("aria-valuenow");
    return value == null ? null : Number(value);
  });
}

async function run(browser) {
  const page = await browser.newPage({ viewport: { width: 1360, height: 860 } });
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));
  page.on("console", (message) => {
    if (message.type() === "error") console.log(`browser console: ${message.text()}`);
  });

  try {
    step("open the dashboard and connect to the jobs stream");
    await page.goto(`${base}/#/jobs`, { waitUntil: "load", timeout: 20_000 });
    await page.waitForSelector('#connection[data-state="live"]', { timeout: 15_000 });

    step("enqueue a long job to cancel and a job that reports progress");
    const sleepId = await enqueue("sleep", { seconds: 120 });
    const numberedId = await enqueue("numbered", { count: 40, delay: 0.1 });

    step("the progress job's row appears");
    await page.waitForSelector(rowSelector(numberedId), { timeout: 15_000 });

    step("the progress bar moves");
    await page.waitForFunction(
      (selector) => {
        const bar = document.querySelector(`${selector} [role="progressbar"]`);
        const value = bar && Number(bar.getAttribute("aria-valuenow"));
        return value > 0 && value < 100;
      },
      rowSelector(numberedId),
      { timeout: 20_000, polling: 50 },
    );
    const first = await rowPercent(page, numberedId);
    await page.waitForFunction(
      ([selector, previous]) => {
        const bar = document.querySelector(`${selector} [role="progressbar"]`);
        return bar && Number(bar.getAttribute("aria-valuenow")) > previous;
      },
      [rowSelector(numberedId), first],
      { timeout: 10_000, polling: 50 },
    );
    const second = await rowPercent(page, numberedId);
    console.log(`progress moved from ${first}% to ${second}%`);

    step("the progress job reaches completed at 100%");
    await waitForRowStatus(page, numberedId, "completed", 30_000);
    const final = await rowPercent(page, numberedId);
    if (final !== 100) throw new Error(`the completed row shows ${final}%, expected 100%`);
    const attempts = (await page.textContent(`${rowSelector(numberedId)} td.num`)).trim();
    if (!/^1\/\d+$/.test(attempts)) throw new Error(`attempts cell shows ${JSON.stringify(attempts)}`);

    step("cancel the running long job with its button");
    await waitForRowStatus(page, sleepId, "running", 20_000);
    await page.click(`${rowSelector(sleepId)} button[data-action="cancel"]`, { timeout: 5_000 });
    await waitForRowStatus(page, sleepId, "cancelled", 30_000);
    const cancelled = await api("GET", `/api/jobs/${sleepId}`);
    if (cancelled.status !== "cancelled") throw new Error(`the API reports the cancelled job as ${cancelled.status}`);
    const retryShown = await page.isVisible(`${rowSelector(sleepId)} button[data-action="retry"]`);
    if (!retryShown) throw new Error("a cancelled job's row has no Retry button");

    step("save the jobs screenshot");
    mkdirSync(dirname(screenshotPath), { recursive: true });
    await page.waitForSelector('#status-strip .chip[data-status="cancelled"] .chip-count:text-is("1")', { timeout: 10_000 });
    await page.screenshot({ path: screenshotPath, fullPage: true });

    step("retry the cancelled job with its button");
    await page.click(`${rowSelector(sleepId)} button[data-action="retry"]`, { timeout: 5_000 });
    await page.waitForSelector(`${rowSelector(sleepId)}:is([data-status="pending"], [data-status="running"])`, { timeout: 10_000 });
    await page.waitForSelector(`${rowSelector(sleepId)} button[data-action="cancel"]`, { timeout: 5_000 });
    const retried = await api("GET", `/api/jobs/${sleepId}`);
    if (retried.status !== "pending" && retried.status !== "running") {
      throw new Error(`the API reports the retried job as ${retried.status}`);
    }

    step("follow a running job on its page: live log and progress history");
    const liveId = await enqueue("numbered", { count: 30, delay: 0.15 });
    await page.goto(`${base}/#/jobs/${liveId}`, { waitUntil: "load" });
    await page.waitForSelector("#job-name:not(:empty)", { timeout: 10_000 });
    await page.waitForFunction(() => document.querySelectorAll("#job-history li").length >= 3, null, { timeout: 20_000 });
    await page.waitForFunction(() => document.querySelectorAll("#job-log .log-line").length >= 3, null, { timeout: 10_000 });
    await page.waitForSelector('#job-status[data-status="completed"]', { timeout: 30_000 });
    await page.waitForFunction(() => document.querySelectorAll("#job-log .log-line").length >= 30, null, { timeout: 10_000 });
    const lines = await page.$$eval("#job-log .log-line .log-message", (nodes) => nodes.map((n) => n.textContent));
    for (let n = 1; n <= 30; n++) {
      if (!lines.includes(String(n))) throw new Error(`the job's log lacks the line ${n}: ${JSON.stringify(lines)}`);
    }
    if (lines.length !== 30) throw new Error(`the job's log shows ${lines.length} lines, expected 30: ${JSON.stringify(lines)}`);
    if (await page.isVisible("#job-cancel")) throw new Error("the Cancel button is shown for a completed job");
    await page.waitForTimeout(400);
    await page.screenshot({ path: sibling("-job"), fullPage: true });

    step("the overview counts the jobs and lists the running one");
    await page.goto(`${base}/#/overview`, { waitUntil: "load" });
    await page.waitForSelector('#overview-status .card[data-status="completed"] .card-count:text-is("2")', { timeout: 10_000 });
    await page.waitForSelector(`#running-body tr[data-job-id="${sleepId}"]`, { timeout: 15_000 });
    await page.waitForFunction(
      (id) => / ago$/.test(document.querySelector(`#running-body tr[data-job-id="${id}"] [data-heartbeat-of]`)?.textContent || ""),
      sleepId,
      { timeout: 10_000 },
    );
    await page.screenshot({ path: sibling("-overview"), fullPage: true });
    await api("POST", `/api/jobs/${sleepId}/cancel`);
    await page.waitForSelector(`#running-body tr[data-job-id="${sleepId}"]`, { state: "detached", timeout: 30_000 });

    if (pageErrors.length) throw new Error(`the page raised errors: ${pageErrors.join("; ")}`);
  } catch (err) {
    await page.screenshot({ path: sibling("-failure"), fullPage: true }).catch(() => {});
    throw err;
  }
}

async function main() {
  const limit = setTimeout(() => {
    console.error(`dashboard test failed: timed out after ${TOTAL_LIMIT_MS} ms at step "${currentStep}"`);
    process.exit(1);
  }, TOTAL_LIMIT_MS);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  try {
    await run(browser);
  } finally {
    await browser.close();
    clearTimeout(limit);
  }
  const size = statSync(screenshotPath).size;
  console.log(`dashboard test passed; screenshot ${screenshotPath} (${size} bytes)`);
}

main().catch((err) => {
  console.error(`dashboard test failed at step "${currentStep}": ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
