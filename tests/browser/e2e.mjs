// End-to-end test of the chat page (www/index.html) in headless Chromium.
//
//   node tests/browser/e2e.mjs <base_url> <user1:password1> <user2:password2>
//
// Normally started by tests/browser.rs, which starts the real server with a
// users file holding both accounts, a session key file, short heartbeats (a
// silent client is dropped within seconds) and a history of 5 messages per
// room. Talks to the harness over stdio:
//   - prints "RESTART_SERVER" on stdout, then waits for a line "RESTARTED"
//     (the harness kills the server and starts it again on the same address
//     with the same flags, so sessions signed before are still valid);
//   - prints "KILL_SERVER" on stdout, then waits for a line "KILLED" on stdin
//     (the harness kills the server in between);
// and exits 0 when every check passed, non-zero otherwise. What the scripts
// here share (checks, the console-error watch, page helpers, the harness
// conversation, launching Chromium) is in common.mjs.
//
// Resume after a dropped connection: a page goes offline through the DevTools
// protocol (Network.emulateNetworkConditions). In Chromium 156 that does not
// close an open WebSocket; it holds whatever arrives on it, pongs included,
// so the server drops the connection once a message reaches the offline page,
// and the page sees the close when it is back online. The test waits for the
// server to count the connection gone (/metrics), whichever way it went, so it
// also holds for a browser that cuts the socket at once.
//
// Screenshots: target/browser-e2e.png (desktop, conversation in "general"),
// target/browser-e2e-phone.png (phone width),
// target/browser-e2e-resume.png (the gap markers after two resumes) and
// target/browser-e2e-disconnected.png (after the server was killed);
// target/browser-e2e-failure-*.png when a check fails.
//
// Waits are on page state (locators, waitForFunction), never on sleeps.

import path from 'node:path';

import {
  OUT_DIR, allowed, askHarness, changeRoom, checkNothingUnexpected, hasMessage, login, metric, newContext, ok,
  openPage, requestLog, runScript, sendMessage, splitCreds, waitMessage, waitStatus, waitUntil, waitVisible,
} from './common.mjs';

const TOTAL_TIMEOUT_MS = 150_000;
const MAX_FRAME_BYTES = 512;
// The server's --history in tests/browser.rs: messages kept per room.
const HISTORY_KEPT = 5;
// Time allowed for the server to drop an offline page (its heartbeat is short).
const DROP_TIMEOUT_MS = 20_000;

const [baseUrl, userA = 'alice:wonderland', userB = 'bob:builder'] = process.argv.slice(2);
if (!baseUrl) {
  console.error('usage: node e2e.mjs <base_url> [user1:password1] [user2:password2]');
  process.exit(2);
}
const alice = splitCreds(userA);
const bob = splitCreds(userB);

// ---- helpers of this script ----------------------------------------------------

async function sendRaw(page, frame) {
  await page.evaluate((f) => {
    const ws = window.__e2eSockets.at(-1);
    if (!ws || ws.readyState !== WebSocket.OPEN) throw new Error('no open socket');
    ws.send(f);
  }, frame);
}

async function noHorizontalScroll(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}

function frameBytes(message, from) {
  const frame = JSON.stringify({ type: 'send_message', payload: { message, from } });
  return Buffer.byteLength(frame, 'utf8');
}

// The texts of the messages a page shows, in order.
async function messageTexts(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages .message .text')].map((p) => p.textContent));
}

// What the message list shows, in order: ['message', text] or [kind, text]
// for a notice (its class after "notice", e.g. 'gap-marker').
async function listItems(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages > li')].map((li) => (li.classList.contains('message')
    ? ['message', li.querySelector('.text')?.textContent ?? '']
    : [[...li.classList].filter((c) => c !== 'notice').join(' ') || 'notice', li.textContent])));
}

// The page's network, on or off, through the DevTools protocol.
const cdpSessions = new Map();
async function setOffline(page, offline) {
  let cdp = cdpSessions.get(page);
  if (!cdp) {
    cdp = await page.context().newCDPSession(page);
    await cdp.send('Network.enable');
    cdpSessions.set(page, cdp);
  }
  await cdp.send('Network.emulateNetworkConditions', {
    offline,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: -1,
  });
}

// Takes `page` offline, has `sender` say each of `texts` while it is away
// (the first one right away, the rest once the server has dropped the
// page), then brings it back. Returns how the drop went, for the log.
async function awayWhileOthersTalk(page, sender, texts) {
  const wsBefore = await metric('chat_connections{phase="websocket"}');
  const heartbeatsBefore = await metric('chat_heartbeat_timeouts_total');
  const socketsBefore = await page.evaluate(() => window.__e2eSockets.length);
  const offlineAt = Date.now();
  await setOffline(page, true);
  // Something arriving for the offline page: in Chromium 156 it is held, and
  // so are the pings behind it, which the server then stops hearing pongs to.
  await sendMessage(sender, texts[0]);
  await waitMessage(sender, texts[0]);
  await waitUntil('the server to drop the offline page\'s connection',
    async () => (await metric('chat_connections{phase="websocket"}')) === wsBefore - 1, DROP_TIMEOUT_MS);
  const droppedAfter = Date.now() - offlineAt;
  const how = (await metric('chat_heartbeat_timeouts_total')) > heartbeatsBefore
    ? 'no pong: dropped by the server\'s heartbeat'
    : 'closed by the browser';
  const pageSaw = await page.evaluate(() => ({
    readyState: window.__e2eSockets.at(-1).readyState,
    status: document.querySelector('#status').dataset.state,
    onLine: navigator.onLine,
  }));
  console.log(`offline emulation: connection gone after ${droppedAfter} ms (${how}); while offline the page saw `
    + `readyState ${pageSaw.readyState}, status "${pageSaw.status}", navigator.onLine ${pageSaw.onLine}`);
  for (const text of texts.slice(1)) {
    await sendMessage(sender, text);
    await waitMessage(sender, text);
  }
  await setOffline(page, false);
  await waitUntil('the page to open a new connection by itself',
    async () => (await page.evaluate(() => window.__e2eSockets.length)) > socketsBefore);
  ok((await waitStatus(page, 'connected')) === 'connected', 'back online, the page reconnected by itself');
  return page.evaluate(() => window.__e2eSockets.at(-1).url);
}

// Whether any string in the page's JavaScript heap contains `secret`: a heap
// snapshot (taken after a garbage collection) holds every string the page's
// scripts can still reach, whatever variable, closure or object holds it.
// A canary string put there first proves that the snapshot sees page data.
async function heapHolds(page, secret) {
  const canary = await page.evaluate(() => {
    window.__e2eCanary = ['canary', String(Math.random()).slice(2)].join('-');
    return window.__e2eCanary;
  });
  const cdp = await page.context().newCDPSession(page);
  const chunks = [];
  cdp.on('HeapProfiler.addHeapSnapshotChunk', ({ chunk }) => chunks.push(chunk));
  await cdp.send('HeapProfiler.enable');
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
  await cdp.detach();
  const { strings } = JSON.parse(chunks.join(''));
  await page.evaluate(() => delete window.__e2eCanary);
  if (!strings.includes(canary)) throw new Error('the heap snapshot did not see a string the page holds');
  return strings.filter((s) => s.includes(secret)).length;
}

// Checks that the page keeps no password: not in its JS heap, not in its
// storage, and that its session cookie is out of the scripts' reach.
async function checkNoPassword(page, who, when) {
  ok((await heapHolds(page, who.pass)) === 0, `${when}: no string in ${who.user}'s page's JS heap holds the password`);
  const stored = await page.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }]));
  ok(!stored.includes(who.pass), `${when}: ${who.user}'s local and session storage hold no password (${stored})`);
  ok(!(await page.evaluate(() => document.cookie)).includes('chat_session'),
    `${when}: the session cookie is HttpOnly, out of the page's scripts' reach`);
  ok((await page.locator('#password').inputValue()) === '', `${when}: the password field is empty`);
}

// ---- the test --------------------------------------------------------------------

async function run(browser) {
  // Alice on a desktop-sized window, Bob on a phone-sized one.
  const ctxA = await newContext(browser, { viewport: { width: 1100, height: 760 } });
  const ctxB = await newContext(browser, {
    viewport: { width: 390, height: 760 },
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 2,
  });
  const pageA = await openPage(ctxA, alice.user);
  const pageB = await openPage(ctxB, bob.user);

  // -- the page loads, logged out --
  // Alice uses the address as given (127.0.0.1), Bob the same server as
  // "localhost": both are the server's own origin, and the page must build its
  // ws:// URL from location.host either way.
  const urlB = baseUrl.replace('//127.0.0.1:', '//localhost:');
  for (const [page, url] of [[pageA, baseUrl], [pageB, urlB]]) {
    allowed.session401++;
    const probe = page.waitForResponse((r) => r.url().endsWith('/session/otp'));
    const response = await page.goto(url);
    ok(response && response.status() === 200, `GET ${url} answers 200`);
    const probed = await probe;
    ok(probed.request().method() === 'POST' && probed.status() === 401,
      'on load the page first asks POST /session/otp, and without a session gets 401');
    ok((await waitStatus(page, 'disconnected')) === 'disconnected', 'status shows "disconnected" before login');
    ok(await page.locator('#login-form').isVisible(), 'login form is visible');
  }

  // -- wrong password: inline error, no dialog --
  allowed.login401 = 1;
  await login(pageA, { user: alice.user, pass: `${alice.pass}-wrong` });
  await waitVisible(pageA, '#login-error');
  const loginError = await pageA.locator('#login-error').textContent();
  ok(/wrong username or password/i.test(loginError), `wrong password shows an inline error ("${loginError}")`);
  ok((await waitStatus(pageA, 'disconnected')) === 'disconnected', 'status stays "disconnected" after a failed login');
  ok(await pageA.locator('#login-form').isVisible(), 'login form stays visible after a failed login');
  allowed.login401 = 0;

  // -- alice logs in (mouse-free: fill + Enter) --
  await login(pageA, alice);
  ok((await waitStatus(pageA, 'connected')) === 'connected', `${alice.user} is connected`);
  ok(await pageA.locator('#login-error').isHidden(), 'login error is gone after a good login');
  ok((await pageA.locator('#room-name').textContent()) === 'general', 'room starts as "general"');
  ok(await pageA.evaluate(() => localStorage.getItem('chat.username')) === alice.user, 'the page keeps the user name');
  await checkNoPassword(pageA, alice, 'just after logging in');

  // -- bob logs in using only the keyboard: the username field has focus on load --
  await pageB.waitForFunction(() => document.activeElement?.id === 'username');
  await pageB.keyboard.type(bob.user);
  await pageB.keyboard.press('Tab');
  await pageB.keyboard.type(bob.pass);
  await pageB.keyboard.press('Enter');
  ok((await waitStatus(pageB, 'connected')) === 'connected', `${bob.user} is connected (keyboard-only login)`);
  // After connecting, focus moves to the message box, so Enter sends at once.
  await pageB.waitForFunction(() => document.activeElement?.id === 'message-input');
  ok(true, 'message input has focus after connecting');

  // -- both in general exchange messages --
  const hello = `hello from ${alice.user}`;
  await sendMessage(pageA, hello);
  const seenByA = await waitMessage(pageA, hello);
  const seenByB = await waitMessage(pageB, hello);
  ok(seenByA.from === alice.user && seenByA.own, `${alice.user} sees her own message, marked as own`);
  ok(seenByB.from === alice.user && !seenByB.own, `${bob.user} sees ${alice.user}'s message with the right sender, not marked as own`);
  ok(seenByB.time.length > 0 && !Number.isNaN(Date.parse(seenByB.datetime)), `message shows a local time ("${seenByB.time}" for ${seenByB.datetime})`);
  ok(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(seenByB.datetime), 'sent timestamp is RFC 3339 UTC');

  const reply = `hi ${alice.user}, ${bob.user} here`;
  await pageB.keyboard.type(reply); // focus is already in the message box
  await pageB.keyboard.press('Enter');
  const replyA = await waitMessage(pageA, reply);
  const replyB = await waitMessage(pageB, reply);
  ok(replyA.from === bob.user && !replyA.own, `${alice.user} sees ${bob.user}'s reply with the right sender`);
  ok(replyB.from === bob.user && replyB.own, `${bob.user} sees his own reply, marked as own`);

  // -- a message that looks like HTML stays text --
  const xss = '<img src=x onerror=alert(1)>';
  await sendMessage(pageA, xss);
  const xssB = await waitMessage(pageB, xss);
  await waitMessage(pageA, xss);
  ok(xssB.from === alice.user, 'the HTML-looking message arrives as literal text');
  ok((await pageB.locator('#messages img').count()) === 0 && (await pageA.locator('#messages img').count()) === 0,
    'no <img> element was created from message text');

  // Screenshot of the conversation so far (includes the HTML-looking text shown literally).
  await pageA.screenshot({ path: path.join(OUT_DIR, 'browser-e2e.png') });

  const multi = 'Unicode ✓ — “quotes” & <b>tags</b> 🎉';
  await sendMessage(pageB, multi);
  ok((await waitMessage(pageA, multi)).from === bob.user, 'Unicode, quotes and ampersands arrive unchanged');

  // -- the byte limit --
  const counter = pageA.locator('#byte-counter');
  await pageA.locator('#message-input').fill('é'.repeat(300)); // 600 bytes of UTF-8
  await pageA.waitForFunction(() => document.querySelector('#byte-counter').dataset.over === 'true');
  ok(/over/i.test(await counter.textContent()), `byte counter flags a 600-byte message ("${await counter.textContent()}")`);
  const sentBefore = await pageA.evaluate(() => window.__e2eSent.length);
  await pageA.locator('#message-input').press('Enter');
  await waitVisible(pageA, '#chat-error');
  ok(/too long/i.test(await pageA.locator('#chat-error').textContent()), 'Enter on an over-long message shows a clear error');
  ok((await pageA.evaluate(() => window.__e2eSent.length)) === sentBefore, 'the over-long message was not sent');
  ok((await pageA.locator('#message-input').inputValue()) === 'é'.repeat(300), 'the over-long text stays in the input for editing');
  ok((await waitStatus(pageA, 'connected')) === 'connected', 'still connected after the refused send');

  // Exactly at the limit: the whole frame the page sends is 512 bytes.
  const overhead = frameBytes('', alice.user);
  const atLimit = 'x'.repeat(MAX_FRAME_BYTES - overhead);
  ok(frameBytes(atLimit, alice.user) === MAX_FRAME_BYTES, 'test message makes a frame of exactly 512 bytes');
  await pageA.locator('#message-input').fill(atLimit);
  await pageA.waitForFunction(() => document.querySelector('#byte-counter').dataset.over === 'false');
  ok(/^0 bytes left/.test(await counter.textContent()), `counter shows 0 bytes left at the limit ("${await counter.textContent()}")`);
  ok(await pageA.locator('#chat-error').isHidden(), 'the too-long error clears once the text fits');
  await pageA.locator('#message-input').press('Enter');
  ok((await waitMessage(pageB, atLimit)).from === alice.user, 'a message whose frame is exactly 512 bytes is delivered');

  // -- the server's "error" event is shown, and the connection stays open --
  await sendRaw(pageA, JSON.stringify({ type: 'change_room', payload: { name: '' } }));
  await waitVisible(pageA, '#chat-error');
  const serverError = await pageA.locator('#chat-error').textContent();
  ok(/^Server error: ./.test(serverError), `an "error" event from the server is shown ("${serverError}")`);
  ok((await waitStatus(pageA, 'connected')) === 'connected', 'connection stays open after an error event');
  ok((await pageA.locator('#room-name').textContent()) === 'general', 'a refused room change leaves the room as it was');

  // -- rooms: bob moves to "lounge" and stops receiving general --
  await changeRoom(pageB, 'lounge');
  ok((await pageB.locator('#messages .message').count()) === 0, 'changing room clears the message view');
  ok(/lounge/.test(await pageB.locator('#messages .notice').last().textContent()), 'the view says which room you are in');

  const generalOnly = `general only: ${bob.user} must not see this`;
  await sendMessage(pageA, generalOnly);
  await waitMessage(pageA, generalOnly); // the server has fanned it out to general by now
  const marker = `marker in lounge from ${bob.user}`;
  await sendMessage(pageB, marker);
  ok((await waitMessage(pageB, marker)).own, `${bob.user}'s marker arrives in lounge`);
  ok(!(await hasMessage(pageB, generalOnly)), `${bob.user} (lounge) did not receive the general message sent before his marker`);
  ok(!(await hasMessage(pageA, marker)), `${alice.user} (general) did not receive the lounge marker`);

  // alice joins lounge too and they talk there; joining shows what was said
  // there last
  await changeRoom(pageA, 'lounge');
  ok((await waitMessage(pageA, marker)).from === bob.user,
    `joining lounge, ${alice.user} sees the last messages said there (${bob.user}'s marker)`);
  const inLounge = `${alice.user} in lounge`;
  await sendMessage(pageA, inLounge);
  ok((await waitMessage(pageB, inLounge)).from === alice.user, `${bob.user} receives ${alice.user}'s message once both are in lounge`);
  // (No emoji here: this text is in the screenshot, and the machine may lack an emoji font.)
  await sendMessage(pageB, 'welcome to the lounge!');
  await waitMessage(pageA, 'welcome to the lounge!');

  // Layout at both widths: nothing sticks out sideways.
  ok(await noHorizontalScroll(pageA), 'desktop width: no horizontal scrolling');
  ok(await noHorizontalScroll(pageB), 'phone width: no horizontal scrolling');
  ok(await pageB.locator('#status').isVisible() && await pageB.locator('#send-button').isVisible(),
    'phone width: status and Send button are visible');
  await pageB.screenshot({ path: path.join(OUT_DIR, 'browser-e2e-phone.png') });

  // -- an oversized frame makes the server close with 1009; the page says so and can reconnect --
  await sendRaw(pageA, JSON.stringify({ type: 'send_message', payload: { message: 'y'.repeat(600), from: alice.user } }));
  ok((await waitStatus(pageA, 'disconnected')) === 'disconnected', 'status shows "disconnected" after the server closed with 1009');
  const reason = await pageA.locator('#disconnect-reason').textContent();
  ok(/too large/i.test(reason), `the close reason says the message was too large ("${reason}")`);
  ok(await pageA.locator('#reconnect').isVisible(), 'a Reconnect button is offered');
  // No automatic reconnect loop: the page stays disconnected until asked.
  ok((await pageA.evaluate(() => window.__e2eSockets.length)) === 1, 'the page did not reconnect by itself');
  ok(!/trying again|waiting for the network/i.test(reason),
    'after a 1009 the page waits for the user instead of retrying by itself (it would only be refused again)');
  await pageA.locator('#reconnect').focus();
  await pageA.keyboard.press('Enter');
  ok((await waitStatus(pageA, 'connected')) === 'connected', 'Reconnect logs in again and reconnects');
  ok((await pageA.evaluate(() => window.__e2eSockets.length)) === 2, 'reconnecting opened exactly one new socket');
  ok((await pageA.locator('#room-name').textContent()) === 'lounge', 'the room is kept across a reconnect');
  const afterReconnect = `${bob.user} after ${alice.user} reconnected`;
  await sendMessage(pageB, afterReconnect);
  ok((await waitMessage(pageA, afterReconnect)).from === bob.user, `${alice.user} rejoined lounge on the new connection`);

  // -- resume: alice's network drops long enough for the server to drop her;
  //    bob says 5 things meanwhile; back online, she shows each once, in order --
  const lastSeen = `${bob.user} before ${alice.user} goes offline`;
  await sendMessage(pageB, lastSeen);
  await waitMessage(pageA, lastSeen);
  const missed = [1, 2, 3, 4, 5].map((n) => `while ${alice.user} was away ${n}/5`);
  const resumeUrl = new URL(await awayWhileOthersTalk(pageA, pageB, missed));
  ok(resumeUrl.searchParams.get('room') === 'lounge' && /\S/.test(resumeUrl.searchParams.get('since') ?? ''),
    `the new connection resumes in lounge after the last id shown (${resumeUrl.search.replace(/otp=[^&]*/, 'otp=…')})`);
  await waitMessage(pageA, missed.at(-1));
  const shown = (await messageTexts(pageA)).filter((t) => t.startsWith(`while ${alice.user} was away`));
  ok(JSON.stringify(shown) === JSON.stringify(missed),
    `${alice.user} shows all 5 messages sent while she was away, once each, in order (${JSON.stringify(shown)})`);
  let items = await listItems(pageA);
  const at = (kind, text) => items.findIndex(([k, t]) => k.includes(kind) && (text === undefined || t === text));
  const lastMarker = () => items.findLastIndex(([k]) => k.includes('gap-marker'));
  const markerAt = lastMarker();
  ok(markerAt > at('message', lastSeen) && markerAt < at('message', missed[1]),
    `a marker shows where the gap was ("${items[markerAt]?.[1]}")`);
  ok(await pageA.locator('#messages .gap-marker').last().getAttribute('data-state') === 'resumed',
    'the marker says the connection is back');
  ok(at('history-gap') === -1, 'nothing was lost, so no "could not be restored" notice');
  const afterResume = `${alice.user} after the resume`;
  await sendMessage(pageA, afterResume);
  ok((await waitMessage(pageB, afterResume)).from === alice.user, `${bob.user} hears ${alice.user} again after her resume`);

  // -- a gap: more is said while alice is away than the server keeps --
  const tooMany = Array.from({ length: HISTORY_KEPT + 3 }, (_, i) => `too much while away ${i + 1}/${HISTORY_KEPT + 3}`);
  await awayWhileOthersTalk(pageA, pageB, tooMany);
  await waitMessage(pageA, tooMany.at(-1));
  await waitVisible(pageA, '#messages .history-gap');
  const gapText = await pageA.locator('#messages .history-gap').last().textContent();
  ok(/some messages could not be restored/i.test(gapText), `a history_gap shows "${gapText}"`);
  const kept = tooMany.slice(-HISTORY_KEPT);
  const shownAfterGap = (await messageTexts(pageA)).filter((t) => t.startsWith('too much while away'));
  ok(JSON.stringify(shownAfterGap.slice(-HISTORY_KEPT)) === JSON.stringify(kept)
    && new Set(shownAfterGap).size === shownAfterGap.length,
    `the ${HISTORY_KEPT} messages still kept are shown after it, once each, in order (${JSON.stringify(shownAfterGap)})`);
  items = await listItems(pageA);
  ok(lastMarker() !== -1 && lastMarker() < at('history-gap')
    && at('history-gap') < at('message', kept[0]),
    'the gap marker, then the notice, then the kept messages');
  await pageA.screenshot({ path: path.join(OUT_DIR, 'browser-e2e-resume.png') });

  // -- the server restarts: both pages reconnect by themselves through their
  //    sessions, with no password and no login form --
  const socketsBefore = await Promise.all([pageA, pageB].map((p) => p.evaluate(() => window.__e2eSockets.length)));
  const requestsBefore = [pageA, pageB].map((p) => requestLog.get(p).length);
  const shownBefore = await Promise.all([pageA, pageB].map((p) => p.evaluate(() => window.__e2eLoginShown)));
  allowed.serverDown = true; // until the pages are back: their retries meanwhile are refused
  await askHarness('RESTART_SERVER', 'RESTARTED');
  for (const [i, [page, who]] of [[pageA, alice.user], [pageB, bob.user]].entries()) {
    await waitUntil(`${who}'s page to reconnect after the restart`, async () => page.evaluate(
      (n) => window.__e2eSockets.length > n && window.__e2eSockets.at(-1).readyState === WebSocket.OPEN
        && document.querySelector('#status').dataset.state === 'connected',
      socketsBefore[i],
    ), 30_000);
    ok(true, `${who}'s page reconnected by itself after the server restarted`);
    const requests = requestLog.get(page).slice(requestsBefore[i]);
    ok(requests.includes('POST /session/otp') && !requests.includes('POST /login'),
      `${who}'s page got its OTP from its session, not by logging in (${[...new Set(requests)].join(', ')})`);
    ok((await page.evaluate(() => window.__e2eLoginShown)) === shownBefore[i] && await page.locator('#login-view').isHidden(),
      `${who}'s page never showed the login form`);
    ok((await page.locator('#room-name').textContent()) === 'lounge', `${who} is still in lounge`);
  }
  allowed.serverDown = false;
  const afterRestart = `${bob.user} after the restart`;
  await sendMessage(pageB, afterRestart);
  ok((await waitMessage(pageA, afterRestart)).from === bob.user, 'the chat goes on after the restart');
  await checkNoPassword(pageA, alice, 'after the restart');

  // -- a reload with a valid session: straight into the chat, no login form --
  let mark = requestLog.get(pageA).length;
  await pageA.reload();
  ok((await waitStatus(pageA, 'connected')) === 'connected', `${alice.user}'s page, reloaded, connects through its session`);
  ok((await pageA.evaluate(() => window.__e2eLoginShown)) === 0, 'the reloaded page never showed the login form');
  ok((await pageA.locator('#whoami').textContent()) === alice.user, 'the reloaded page knows who is logged in');
  ok(!requestLog.get(pageA).slice(mark).includes('POST /login'), 'the reload sent no password');
  const afterReload = `${alice.user} after a reload`;
  await sendMessage(pageA, afterReload);
  ok((await waitMessage(pageA, afterReload)).own, 'after the reload her messages are still marked as hers');

  // -- a second tab of the same browser shares the session: no login form --
  const pageA2 = await openPage(ctxA, `${alice.user} (second tab)`);
  await pageA2.goto(baseUrl);
  ok((await waitStatus(pageA2, 'connected')) === 'connected', `a second tab of ${alice.user}'s browser connects through the same session`);
  ok((await pageA2.evaluate(() => window.__e2eLoginShown)) === 0 && !requestLog.get(pageA2).includes('POST /login'),
    'the second tab never showed the login form nor sent a password');

  // -- log out there: the server ends the session and clears the cookie --
  const logoutAnswer = pageA2.waitForResponse((r) => r.url().endsWith('/logout'));
  await pageA2.locator('#logout').click();
  ok((await logoutAnswer).status() === 200 && (await logoutAnswer).request().method() === 'POST', 'Log out sends POST /logout, answered 200');
  await waitVisible(pageA2, '#login-form');
  ok((await waitStatus(pageA2, 'disconnected')) === 'disconnected', 'after logging out the tab shows the login form, disconnected');
  ok(await pageA2.evaluate(() => localStorage.getItem('chat.username')) === null, 'logging out forgets the user name');
  await pageA2.close();

  // -- the first tab's connection drops: its reconnect finds the session
  //    over (401), and only then does the login form come back --
  allowed.session401++;
  const refused = pageA.waitForResponse((r) => r.url().endsWith('/session/otp'));
  await pageA.evaluate(() => window.__e2eSockets.at(-1).close());
  ok((await refused).status() === 401, `${alice.user}'s first tab asks /session/otp to reconnect and is refused: the session is over`);
  await waitVisible(pageA, '#login-form');
  const ended = await pageA.locator('#login-error').textContent();
  ok(/session has ended/i.test(ended), `the login form comes back, saying why ("${ended}")`);
  allowed.session401++;
  const probe = pageA.waitForResponse((r) => r.url().endsWith('/session/otp'));
  await pageA.reload();
  ok((await probe).status() === 401, 'a reload after logging out finds no session (401)');
  await waitVisible(pageA, '#login-form');
  ok(true, 'a reload after logging out shows the login form');
  mark = requestLog.get(pageA).length;
  await login(pageA, alice);
  ok((await waitStatus(pageA, 'connected')) === 'connected', `${alice.user} logs in again`);
  ok(requestLog.get(pageA).slice(mark).includes('POST /login'), 'logging in again takes the password');

  // -- killing the server shows "disconnected" on both pages --
  allowed.serverDown = true;
  await askHarness('KILL_SERVER', 'KILLED');
  for (const [page, who] of [[pageA, alice.user], [pageB, bob.user]]) {
    ok((await waitStatus(page, 'disconnected')) === 'disconnected', `${who}'s page shows "disconnected" after the server died`);
    await waitVisible(page, '#reconnect');
    ok(await page.locator('#message-input').isDisabled(), `${who}'s message input is disabled while disconnected`);
  }
  await pageA.screenshot({ path: path.join(OUT_DIR, 'browser-e2e-disconnected.png') });

  checkNothingUnexpected();
}

runScript('e2e', baseUrl, run, TOTAL_TIMEOUT_MS);
