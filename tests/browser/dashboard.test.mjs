// The dashboard in headless Chromium against a running taskq-local (scripts/test starts one).
// Needs TASKQ_URL (the server) and TASKQ_TOKEN (a token with the admin role, for that server);
// screenshots go to TASKQ_ARTIFACTS (default: target/test-artifacts at the repository root).
//
//   TASKQ_URL=http://127.0.0.1:8080 TASKQ_TOKEN=$(taskq token --user you --roles admin) \
//     node --test tests/browser/
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.TASKQ_URL;
const TOKEN = process.env.TASKQ_TOKEN;
const ARTIFACTS = process.env.TASKQ_ARTIFACTS || resolve(here, "../../target/test-artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

// Never skip silently: without a server there is nothing to test, and that is a failure.
if (!BASE || !TOKEN) {
  throw new Error("set TASKQ_URL (a running taskq-local) and TASKQ_TOKEN (an admin token for it); scripts/test does both");
}

async function api(method, path, body) {
  const response = await fetch(BASE + path, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

describe("dashboard", () => {
  let context, page, userDataDir;
  const pageErrors = [];

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    userDataDir = mkdtempSync(join(tmpdir(), "taskq-chromium-"));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 900 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    page = context.pages()[0] || (await context.newPage());
    // A script error in the page fails the test instead of passing unnoticed.
    page.on("pageerror", (e) => pageErrors.push(e.message));
  });

  afterEach(() => {
    assert.deepEqual(pageErrors.splice(0), [], "errors in the page's scripts");
  });

  after(async () => {
    await context?.close();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  });

  test("refuses a pasted value that is not a token, then signs in with a real one", async () => {
    await page.goto(BASE + "/");
    await page.locator("#sign-in").waitFor({ state: "visible" });
    await page.fill("#token-input", "not a token");
    await page.click("#sign-in-form button[type=submit]");
    assert.match(await page.textContent("#sign-in-error"), /not a JWT/);

    await page.fill("#token-input", TOKEN);
    await page.click("#sign-in-form button[type=submit]");
    await page.locator("#app").waitFor({ state: "visible" });
    assert.match(await page.textContent("#who"), /\(.*admin.*\)/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("taskq.token")), TOKEN);
    // The token survives a reload of the tab (sessionStorage), so no second sign-in.
    await page.reload();
    await page.locator("#app").waitFor({ state: "visible" });
  });

  test("shows queue depth per priority, including a delayed task", async () => {
    await api("POST", "/v1/tasks", { type: "echo", payload: {}, priority: "low", delay_seconds: 600 });
    const delayed = page.locator('#queue-rows tr[data-priority="low"] td[data-field="delayed"]');
    await page.waitForFunction(
      () => Number(document.querySelector('#queue-rows tr[data-priority="low"] td[data-field="delayed"]')?.textContent) >= 1,
      null,
      { timeout: 10_000 },
    );
    assert.ok(Number(await delayed.textContent()) >= 1);
    const priorities = await page.locator("#queue-rows tr").evaluateAll((rows) => rows.map((r) => r.dataset.priority));
    assert.deepEqual(priorities, ["high", "normal", "low"]);
    for (const field of ["visible", "in_flight", "dead_letters"]) {
      const text = await page.textContent(`#queue-rows tr[data-priority="high"] td[data-field="${field}"]`);
      assert.match(text, /^\d+$/, field);
    }
  });

  test("shows a submitted task and its status change from running to succeeded", async () => {
    // Long enough to be seen running by a 2 s auto-refresh at least once.
    const task = await api("POST", "/v1/tasks", { type: "sleep", payload: { ms: 5000 }, priority: "high" });
    const row = (status) => page.locator(`#task-rows tr[data-task-id="${task.id}"]${status ? `[data-status="${status}"]` : ""}`);
    await row().waitFor({ timeout: 10_000 });
    await row("running").waitFor({ timeout: 10_000 });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-running.png"), fullPage: true });
    await row("succeeded").waitFor({ timeout: 20_000 });
    assert.equal((await row().locator(".status-cell").textContent()).trim(), "succeeded");

    // Its detail: the result and the history as a timeline, in order.
    await row().click();
    await page.waitForFunction((id) => document.getElementById("detail-id").textContent === id, task.id);
    await page.locator('#timeline li[data-type="succeeded"]').waitFor();
    const types = await page.locator("#timeline li").evaluateAll((items) => items.map((i) => i.dataset.type));
    assert.deepEqual(types, ["submitted", "started", "succeeded"]);
    assert.deepEqual(JSON.parse(await page.textContent("#detail-result")), { slept_ms: 5000 });
    assert.equal(await page.isHidden("#detail-error"), true);
    assert.equal(new URL(page.url()).hash, `#/tasks/${task.id}`);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-succeeded.png"), fullPage: true });
  });

  test("shows a failed task's error, and the status filter finds it", async () => {
    const task = await api("POST", "/v1/tasks", { type: "fail", payload: { times: 5 }, max_attempts: 1 });
    await page.selectOption("#status-filter", "failed");
    const row = page.locator(`#task-rows tr[data-task-id="${task.id}"]`);
    await row.waitFor({ timeout: 15_000 });
    // The filter shows failed tasks only.
    const statuses = await page.locator("#task-rows tr").evaluateAll((rows) => rows.map((r) => r.dataset.status));
    assert.ok(statuses.length >= 1 && statuses.every((s) => s === "failed"), statuses.join(","));

    await row.click();
    await page.locator("#detail-error").waitFor({ state: "visible" });
    assert.equal(await page.textContent("#detail-error-kind"), "deliberate_failure");
    assert.equal(await page.textContent("#detail-error-message"), "attempt 1 of the first 5 fails");
    assert.equal(await page.getAttribute("#detail", "data-status"), "failed");
    const types = await page.locator("#timeline li").evaluateAll((items) => items.map((i) => i.dataset.type));
    assert.deepEqual(types, ["submitted", "started", "failed"]);
    assert.match(await page.textContent('#timeline li[data-type="failed"]'), /running → failed/);
    // A finished task cannot be cancelled: no button. A failed one can be retried.
    assert.equal(await page.isHidden("#cancel-task"), true);
    assert.equal(await page.isHidden("#retry-task"), false);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-failed.png"), fullPage: true });
  });

  test("cancels a queued task from its detail", async () => {
    const task = await api("POST", "/v1/tasks", { type: "echo", payload: {}, delay_seconds: 600 });
    await page.selectOption("#status-filter", "");
    await page.goto(`${BASE}/#/tasks/${task.id}`);
    await page.locator("#cancel-task").waitFor({ state: "visible" });
    await page.click("#cancel-task");
    await page.waitForFunction(() => document.getElementById("detail").dataset.status === "cancelled");
    assert.equal((await api("GET", `/v1/tasks/${task.id}`)).status, "cancelled");
    // A cancelled task can run again: the retry button queues it, and its timeline goes on.
    assert.equal(await page.isHidden("#cancel-task"), true);
    await page.locator("#retry-task").waitFor({ state: "visible" });
    await page.click("#retry-task");
    await page.waitForFunction(() => document.getElementById("detail").dataset.status !== "cancelled");
    await page.locator('#timeline li[data-type="retried"]').waitFor();
    assert.notEqual((await api("GET", `/v1/tasks/${task.id}`)).status, "cancelled");
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-retried.png"), fullPage: true });
  });

  test("a token the API refuses sends the user back to sign in", async () => {
    await page.evaluate(() => sessionStorage.setItem("taskq.token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad"));
    await page.reload();
    await page.locator("#sign-in").waitFor({ state: "visible" });
    assert.match(await page.textContent("#sign-in-error"), /refused the token: 401/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("taskq.token")), null);
  });
});
