// What the browser scripts beside this file share: checks, the watch for
// console errors and dialogs, the page instrumentation, page helpers, the
// server's /metrics, the conversation with the harness (tests/browser.rs)
// and the main loop that launches headless Chromium, runs a script's checks
// and reports.
//
// Waits are on page state (locators, waitForFunction), never on sleeps.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
export const OUT_DIR = path.join(REPO, 'target');
const CHROMIUM = '/usr/bin/chromium';
export const STEP_TIMEOUT_MS = 10_000;

// "user:password" → { user, pass }.
export function splitCreds(s) {
  const i = s.indexOf(':');
  return { user: s.slice(0, i), pass: s.slice(i + 1) };
}

// ---- bookkeeping -----------------------------------------------------------

let checks = 0;
export function ok(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  checks++;
  console.log(`ok ${checks} - ${what}`);
}

const unexpectedErrors = [];
const dialogs = [];

// Console errors a script provokes on purpose, allowed only while it says so:
//
// - `login401`: a wrong-password login answers HTTP 401, and Chromium logs
//   every non-2xx fetch as "Failed to load resource: the server responded
//   with a status of 401 (Unauthorized)". That is the browser reporting the
//   response we asked for, not a page bug, so each wrong-password login
//   allows one (allowed.login401 = 1 before it), for <base_url>/login only.
// - `session401`: a page with no valid session asks POST /session/otp and
//   gets 401, which Chromium logs the same way. Each request that is meant to
//   find no session allows one (allowed.session401++ before it), for that URL
//   only.
// - `serverDown`: while the server is down on purpose, the pages keep trying
//   to reconnect, and Chromium logs each refused connection
//   ("net::ERR_CONNECTION_REFUSED", for the fetch and for the WebSocket).
//   Those are allowed only then, and only for this server's address.
//
// Every other console error or uncaught page error fails the script.
export const allowed = { login401: 0, session401: 0, serverDown: false };

// The server's addresses, set by runScript: as given (127.0.0.1) and as "localhost".
let urls = null;
function serverUrls(baseUrl) {
  const metricsUrl = new URL('/metrics', baseUrl).href;
  const sessionOtpUrl = new URL('/session/otp', baseUrl).href;
  const serverHost = new URL(baseUrl).host;
  return {
    login: new URL('/login', baseUrl).href,
    metrics: metricsUrl,
    sessionOtp: [sessionOtpUrl, sessionOtpUrl.replace('//127.0.0.1:', '//localhost:')],
    hosts: [serverHost, serverHost.replace(/^127\.0\.0\.1:/, 'localhost:')],
  };
}

function refusedWhileDown(text, url) {
  if (!allowed.serverDown || !/net::ERR_CONNECTION_REFUSED/.test(text)) return false;
  return urls.hosts.some((host) => url.includes(`//${host}/`) || text.includes(`//${host}/`));
}

function watch(page, name) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    const url = msg.location()?.url ?? '';
    if (allowed.login401 > 0 && /status of 401\b/.test(text) && url === urls.login) {
      allowed.login401--;
      console.log(`(${name}) expected console error for the wrong-password login: ${text}`);
      return;
    }
    if (allowed.session401 > 0 && /status of 401\b/.test(text) && urls.sessionOtp.includes(url)) {
      allowed.session401--;
      console.log(`(${name}) expected console error: /session/otp refused, no session: ${text}`);
      return;
    }
    if (refusedWhileDown(text, url)) {
      console.log(`(${name}) expected console error while the server is down: ${text}`);
      return;
    }
    unexpectedErrors.push(`${name} console.error: ${text} ${url}`);
  });
  page.on('pageerror', (err) => unexpectedErrors.push(`${name} pageerror: ${err.message}`));
  page.on('dialog', async (dialog) => {
    dialogs.push(`${name} ${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss().catch(() => {});
  });
}

// The checks every script ends with: nothing went wrong on the side.
export function checkNothingUnexpected() {
  ok(dialogs.length === 0, `no dialog (alert/confirm/prompt) fired${dialogs.length ? `: ${dialogs.join('; ')}` : ''}`);
  ok(unexpectedErrors.length === 0,
    `no console errors or page errors${unexpectedErrors.length ? `:\n  ${unexpectedErrors.join('\n  ')}` : ''}`);
}

// Test-only instrumentation, injected before the page's own scripts: remember
// every WebSocket the page opens (so that the test can send frames the UI
// would never send: an invalid event, an oversized frame) and every frame the
// page sends (to prove that something was not sent).
function recordSockets() {
  const Native = window.WebSocket;
  window.__e2eSockets = [];
  window.__e2eSent = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.__e2eSockets.push(this);
    }

    send(data) {
      window.__e2eSent.push(data);
      return super.send(data);
    }
  };
  // How many times the login form was shown in this document (it starts hidden).
  window.__e2eLoginShown = 0;
  document.addEventListener('DOMContentLoaded', () => {
    const form = document.getElementById('login-view');
    if (!form) return;
    if (!form.hidden) window.__e2eLoginShown++;
    new MutationObserver(() => {
      if (!form.hidden) window.__e2eLoginShown++;
    }).observe(form, { attributes: true, attributeFilter: ['hidden'] });
  });
}

// Every request a page makes, as "METHOD /path", across reloads.
export const requestLog = new Map();
function logRequests(page) {
  const log = [];
  requestLog.set(page, log);
  page.on('request', (request) => log.push(`${request.method()} ${new URL(request.url()).pathname}`));
  return log;
}

// A browser context with the instrumentation and the step timeout.
export async function newContext(browser, options = {}) {
  const ctx = await browser.newContext(options);
  ctx.setDefaultTimeout(STEP_TIMEOUT_MS);
  await ctx.addInitScript(recordSockets);
  return ctx;
}

// The pages opened so far, screenshot when a check fails.
const pages = [];

// A new page of `ctx`, watched (console errors, dialogs) under `name`, its
// requests logged.
export async function openPage(ctx, name) {
  const page = await ctx.newPage();
  watch(page, name);
  logRequests(page);
  pages.push(page);
  return page;
}

// ---- page helpers ------------------------------------------------------------

export async function waitStatus(page, state) {
  await page.waitForFunction(
    (s) => document.querySelector('#status')?.dataset.state === s,
    state,
  );
  const text = (await page.locator('#status').textContent()).trim();
  return text;
}

export async function waitVisible(page, selector) {
  await page.locator(selector).waitFor({ state: 'visible' });
}

export async function login(page, { user, pass }) {
  await page.locator('#username').fill(user);
  await page.locator('#password').fill(pass);
  await page.locator('#password').press('Enter');
}

export async function changeRoom(page, name) {
  const input = page.locator('#room-input');
  await input.fill(name);
  await input.press('Enter');
  await page.waitForFunction((n) => document.querySelector('#room-name').textContent === n, name);
}

export async function sendMessage(page, text) {
  const input = page.locator('#message-input');
  await input.fill(text);
  await input.press('Enter');
  await page.waitForFunction(() => document.querySelector('#message-input').value === '');
}

function findMessage(text) {
  for (const li of document.querySelectorAll('#messages .message')) {
    if (li.querySelector('.text')?.textContent === text) {
      const time = li.querySelector('.time');
      return {
        from: li.querySelector('.from')?.textContent ?? null,
        own: li.dataset.own === 'true' && li.classList.contains('own'),
        time: time?.textContent ?? '',
        datetime: time?.getAttribute('datetime') ?? '',
      };
    }
  }
  return null;
}

export async function waitMessage(page, text) {
  const handle = await page.waitForFunction(findMessage, text);
  return handle.jsonValue();
}

export async function hasMessage(page, text) {
  return (await page.evaluate(findMessage, text)) !== null;
}

// A sample of the server's /metrics (read by node, not by a page).
export async function metric(name) {
  const response = await fetch(urls.metrics);
  const text = await response.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no metric ${name}`);
  return Number(line.slice(name.length + 1));
}

// Polls `condition` until it holds; fails with `what` after `timeoutMs`.
export async function waitUntil(what, condition, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// ---- harness I/O ---------------------------------------------------------------

const stdinLines = readline.createInterface({ input: process.stdin });
const stdinIter = stdinLines[Symbol.asyncIterator]();

// Prints `command` on stdout for the harness, then waits for the line `answer`
// on stdin (the harness does what was asked in between).
export async function askHarness(command, answer) {
  console.log(command);
  for (;;) {
    const { value, done } = await stdinIter.next();
    if (done) throw new Error(`harness closed stdin before answering ${command}`);
    if (value.trim() === answer) return;
  }
}

// ---- main ------------------------------------------------------------------------

// Launches headless Chromium, runs `run(browser)` against the server at
// `baseUrl` and exits: 0 when every check passed, 1 when one failed (with a
// screenshot of each page, target/browser-<name>-failure-<i>.png), 3 when
// `timeoutMs` ran out first.
export async function runScript(name, baseUrl, run, timeoutMs) {
  urls = serverUrls(baseUrl);
  mkdirSync(OUT_DIR, { recursive: true });
  const watchdog = setTimeout(() => {
    console.error(`${name}: gave up after ${timeoutMs} ms`);
    process.exit(3);
  }, timeoutMs);

  // Over HTTPS the server has a certificate made for the test.
  const tlsArgs = baseUrl.startsWith('https:') ? ['--ignore-certificate-errors'] : [];
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      ...tlsArgs,
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  let failed = false;
  try {
    await run(browser);
    console.log(`${name}: all ${checks} checks passed`);
  } catch (err) {
    failed = true;
    console.error(`${name}: FAILED after ${checks} passing checks: ${err.stack || err}`);
    if (unexpectedErrors.length) console.error(`console/page errors so far:\n  ${unexpectedErrors.join('\n  ')}`);
    if (dialogs.length) console.error(`dialogs so far: ${dialogs.join('; ')}`);
    for (const [i, page] of pages.entries()) {
      const file = path.join(OUT_DIR, `browser-${name}-failure-${i}.png`);
      await page.screenshot({ path: file }).then(() => console.error(`screenshot: ${file}`), () => {});
    }
  } finally {
    await browser.close().catch(() => {});
    stdinLines.close();
    clearTimeout(watchdog);
  }
  process.exit(failed ? 1 : 0);
}
