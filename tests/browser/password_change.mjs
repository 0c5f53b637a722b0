// Issue 23 in a real browser: a changed password ends the user's sessions,
// and the page takes it calmly.
//
//   node tests/browser/password_change.mjs <base_url> <user:old_password> <new_password> <other_user:password>
//
// Normally started by tests/browser.rs, which starts the real server with a
// users file holding both accounts. Talks to the harness over stdio: prints
// "CHANGE_PASSWORD" on stdout, then waits for a line "PASSWORD_CHANGED" on
// stdin (the harness writes a new hash of <new_password> for the user into
// the users file, sends the server SIGHUP and waits until it has re-read the
// accounts). Exits 0 when every check passed, non-zero otherwise.
//
// Alice is logged in on two tabs of one browser, Bob on another browser.
// After the change, each of Alice's tabs needs a new connection: the first is
// reloaded, the second's connection drops. Each asks POST /session/otp
// exactly once, is refused (401: the session is bound to the old password
// hash) and shows the login form, and then nothing more happens: the test
// watches for QUIET_MS that neither asks again nor opens a WebSocket (that
// wait is an observation of nothing happening, not a sleep before a check
// of something that should have happened). The old password is refused, the
// new one logs in, the chat with Bob goes on, and Bob never sees a login form.
//
// Screenshots: target/browser-password_change.png (the login form after the
// change); target/browser-password_change-failure-*.png when a check fails.

import path from 'node:path';

import {
  OUT_DIR, allowed, askHarness, checkNothingUnexpected, login, newContext, ok, openPage,
  requestLog, runScript, sendMessage, splitCreds, waitMessage, waitStatus, waitVisible,
} from './common.mjs';

const TOTAL_TIMEOUT_MS = 90_000;
// How long the pages are watched for a request that should never come.
const QUIET_MS = 2_000;

const [baseUrl, userA, newPassword, userB] = process.argv.slice(2);
if (!baseUrl || !userA || !newPassword || !userB) {
  console.error('usage: node password_change.mjs <base_url> <user:old_password> <new_password> <other_user:password>');
  process.exit(2);
}
const alice = splitCreds(userA);
const aliceNew = { user: alice.user, pass: newPassword };
const bob = splitCreds(userB);

// How many times `page` asked for `request` ("METHOD /path") so far, across reloads.
function count(page, request) {
  return requestLog.get(page).filter((r) => r === request).length;
}

const sockets = (page) => page.evaluate(() => window.__e2eSockets.length);
const loginShown = (page) => page.evaluate(() => window.__e2eLoginShown);

// Loads `page` with no session: one POST /session/otp, refused, and the login form.
async function loadLoggedOut(page) {
  allowed.session401++;
  const probe = page.waitForResponse((r) => r.url().endsWith('/session/otp'));
  await page.goto(baseUrl);
  ok((await probe).status() === 401, 'a page with no session is refused by /session/otp (401)');
  await waitVisible(page, '#login-form');
}

// Logs `who` in on `page` (showing the login form) and waits for the chat.
async function logIn(page, who) {
  const before = count(page, 'POST /login');
  await login(page, who);
  ok((await waitStatus(page, 'connected')) === 'connected', `${who.user} logs in and is connected`);
  ok(count(page, 'POST /login') === before + 1, `${who.user}'s login sent one POST /login`);
}

// `from` says `text`; each page of `to` shows it, from `from`'s user.
async function say(from, who, text, to) {
  await sendMessage(from, text);
  ok((await waitMessage(from, text)).own, `${who.user} sees "${text}" as their own`);
  for (const page of to) {
    ok((await waitMessage(page, text)).from === who.user, `"${text}" arrives from ${who.user}`);
  }
}

async function run(browser) {
  const ctxA = await newContext(browser, { viewport: { width: 1000, height: 700 } });
  const ctxB = await newContext(browser, { viewport: { width: 1000, height: 700 } });
  const reloaded = await openPage(ctxA, `${alice.user} (tab to reload)`);
  const pageB = await openPage(ctxB, bob.user);

  // -- before: alice logs in on one tab; a second tab of hers shares the
  //    session; bob logs in on his own browser; they talk --
  await loadLoggedOut(reloaded);
  await logIn(reloaded, alice);
  const dropped = await openPage(ctxA, `${alice.user} (tab whose connection drops)`);
  await dropped.goto(baseUrl);
  ok((await waitStatus(dropped, 'connected')) === 'connected' && (await loginShown(dropped)) === 0,
    `a second tab of ${alice.user}'s browser connects through her session, no login form`);
  await loadLoggedOut(pageB);
  await logIn(pageB, bob);
  await say(reloaded, alice, `${alice.user} before the change`, [dropped, pageB]);

  // -- the operator changes alice's password and reloads the accounts --
  await askHarness('CHANGE_PASSWORD', 'PASSWORD_CHANGED');

  // -- tab 1 is reloaded: one /session/otp, refused, then the login form --
  const otpBefore = count(reloaded, 'POST /session/otp');
  allowed.session401++;
  const refusedOnReload = reloaded.waitForResponse((r) => r.url().endsWith('/session/otp'));
  await reloaded.reload();
  ok((await refusedOnReload).status() === 401,
    `after the change, ${alice.user}'s reloaded tab asks /session/otp and is refused (401)`);
  await waitVisible(reloaded, '#login-form');
  ok((await waitStatus(reloaded, 'disconnected')) === 'disconnected', 'the reloaded tab shows the login form, disconnected');
  ok((await reloaded.locator('#username').inputValue()) === alice.user,
    `the form knows who was logged in (username "${alice.user}" filled in)`);
  ok((await reloaded.locator('#password').inputValue()) === ''
    && await reloaded.evaluate(() => document.activeElement?.id === 'password'),
    'the form asks for the password: its field is empty and has the focus');

  // -- tab 2's connection drops: it tries to reconnect once, is refused,
  //    and shows the login form saying why --
  const droppedOtpBefore = count(dropped, 'POST /session/otp');
  const droppedSocketsBefore = await sockets(dropped);
  allowed.session401++;
  const refusedOnDrop = dropped.waitForResponse((r) => r.url().endsWith('/session/otp'));
  await dropped.evaluate(() => window.__e2eSockets.at(-1).close());
  ok((await refusedOnDrop).status() === 401,
    `${alice.user}'s other tab, its connection dropped, asks /session/otp and is refused (401)`);
  await waitVisible(dropped, '#login-form');
  const ended = await dropped.locator('#login-error').textContent();
  ok(/session has ended/i.test(ended), `that tab shows the login form, saying why ("${ended}")`);
  ok((await dropped.locator('#username').inputValue()) === alice.user
    && (await dropped.locator('#password').inputValue()) === '',
    `its form has "${alice.user}" filled in and an empty password field`);
  await reloaded.screenshot({ path: path.join(OUT_DIR, 'browser-password_change.png') });

  // -- and then nothing: no retry loop on either tab --
  const quietFrom = [reloaded, dropped].map((p) => requestLog.get(p).length);
  await new Promise((resolve) => setTimeout(resolve, QUIET_MS)); // watching, see the header
  for (const [i, [page, what, otpFrom, socketsFrom]] of [
    [reloaded, 'the reloaded tab', otpBefore, 0],
    [dropped, 'the tab whose connection dropped', droppedOtpBefore, droppedSocketsBefore],
  ].entries()) {
    const asked = count(page, 'POST /session/otp') - otpFrom;
    ok(asked === 1, `${what} asked /session/otp exactly once, ${QUIET_MS} ms after the form came up too (${asked})`);
    const later = requestLog.get(page).slice(quietFrom[i]);
    ok(!later.includes('POST /session/otp') && !later.includes('POST /login'),
      `${what} sent nothing to log in by itself while the form was shown (${JSON.stringify(later)})`);
    ok((await sockets(page)) === socketsFrom, `${what} opened no WebSocket after the refusal`);
    ok(await page.locator('#login-form').isVisible() && (await loginShown(page)) === 1,
      `${what} still shows the login form, shown once`);
    ok(!/trying again|reconnecting/i.test(await page.locator('body').innerText()),
      `${what} does not say it is trying again`);
  }

  // -- bob's session is untouched: his connection is up, and a reload
  //    connects through his session, with no login form --
  ok((await waitStatus(pageB, 'connected')) === 'connected', `${bob.user} is still connected`);
  const bobFrom = requestLog.get(pageB).length;
  await pageB.reload();
  ok((await waitStatus(pageB, 'connected')) === 'connected' && (await loginShown(pageB)) === 0,
    `${bob.user}'s reloaded page connects through his session, no login form`);
  const bobAsked = requestLog.get(pageB).slice(bobFrom);
  ok(bobAsked.filter((r) => r === 'POST /session/otp').length === 1 && !bobAsked.includes('POST /login'),
    `${bob.user}'s reload took one /session/otp and no password (${JSON.stringify(bobAsked)})`);

  // -- the old password no longer logs in --
  allowed.login401 = 1;
  await login(reloaded, alice);
  await reloaded.waitForFunction(() => /wrong username or password/i.test(document.querySelector('#login-error').textContent));
  ok(await reloaded.locator('#login-form').isVisible(), `${alice.user}'s old password is refused: "Wrong username or password."`);
  allowed.login401 = 0;

  // -- the new one does, and the chat goes on --
  await logIn(reloaded, aliceNew);
  ok((await reloaded.locator('#whoami').textContent()) === alice.user, `the page says ${alice.user} is logged in`);
  await say(reloaded, alice, `${alice.user} with her new password`, [pageB]);
  await say(pageB, bob, `${bob.user} hears ${alice.user} again`, [reloaded]);

  // -- the other tab, reloaded, connects through the new session --
  await dropped.reload();
  ok((await waitStatus(dropped, 'connected')) === 'connected' && (await loginShown(dropped)) === 0,
    `${alice.user}'s other tab, reloaded, connects through her new session`);
  ok((await waitMessage(dropped, `${bob.user} hears ${alice.user} again`)).from === bob.user,
    'and shows what was said');

  checkNothingUnexpected();
}

runScript('password_change', baseUrl, run, TOTAL_TIMEOUT_MS);
