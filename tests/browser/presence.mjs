// Presence in a real browser: the room's member list on the chat page
// (www/index.html), and the tutorial's page, which never asks for it.
//
//   node tests/browser/presence.mjs <base_url> members|count <user1:pw1> <user2:pw2> <user3:pw3>
//
// Normally started by tests/browser.rs with a users file holding the three
// accounts. The first two users open our page (which asks for presence); the
// third is a client of the Go tutorial's page, in a page of the server's
// origin: it logs in, connects with nothing but its OTP, changes rooms with
// only a name, and shows an alert on any event type it does not know, as
// that page does. It stays among the others all along, so it would receive
// whatever a server wrongly sends to a member that did not ask.
//
// - `members` (default server flags): each of the two sees the other in the
//   member list; a second tab of one user is one member with two
//   connections; closing one of the two tabs leaves the list as it is,
//   closing the last one takes the name off; the list follows a room change.
// - `count` (the server started with --presence-max-users 1): past one user
//   the list is only "N people here", the count follows who comes and goes,
//   and the names come back when the room is small again.
//
// Exits 0 when every check passed, non-zero otherwise. Waits are on page
// state, never on sleeps.

import {
  allowed, changeRoom, checkNothingUnexpected, login, metric, newContext, ok, openPage, runScript, sendMessage,
  splitCreds, waitMessage, waitStatus, waitUntil,
} from './common.mjs';

const TOTAL_TIMEOUT_MS = 120_000;
const PRESENCE_EVENTS = ['presence', 'presence_join', 'presence_leave', 'presence_count'];

const [baseUrl, scenario, ...creds] = process.argv.slice(2);
if (!baseUrl || !['members', 'count'].includes(scenario) || creds.length !== 3) {
  console.error('usage: node presence.mjs <base_url> members|count <user1:pw1> <user2:pw2> <user3:pw3>');
  process.exit(2);
}
const [alice, bob, carol] = creds.map(splitCreds);

// ---- our page's member list ----------------------------------------------------

// What a page's member list shows: "(no list)", "N people here" when it
// shows only a count, else the names in order, each with "xN" when the user
// has N > 1 connections.
async function membersShown(page) {
  return page.evaluate(() => {
    if (document.querySelector('#members').hidden) return '(no list)';
    const list = document.querySelector('#member-list');
    if (list.hidden) return document.querySelector('#member-count').textContent;
    return [...list.children]
      .map((li) => (li.dataset.connections === '1' ? li.dataset.name : `${li.dataset.name} x${li.dataset.connections}`))
      .join(', ');
  });
}

async function waitMembers(page, who, expected) {
  let shown;
  await waitUntil(`${who}'s member list to show "${expected}"`, async () => {
    shown = await membersShown(page);
    return shown === expected;
  }).catch((err) => {
    throw new Error(`${err.message}; it shows "${shown}"`);
  });
  ok(true, `${who}'s member list shows ${expected}`);
}

// Our page, logged in as `user` in a browser of its own.
async function openOurPage(browser, user) {
  const page = await openPage(await newContext(browser), user.user);
  allowed.session401++; // no session yet: the page's first /session/otp is refused
  await page.goto(baseUrl);
  await page.locator('#login-form').waitFor({ state: 'visible' });
  await login(page, user);
  ok((await waitStatus(page, 'connected')) === 'connected', `${user.user} is connected on our page`);
  return page;
}

// The frames a page sent, parsed.
async function sentEvents(page) {
  return (await page.evaluate(() => window.__e2eSent)).map((frame) => JSON.parse(frame));
}

// ---- the tutorial's page -------------------------------------------------------

// A client of the tutorial's page, logged in as `user`: it records the type
// of every event it receives and the text of every message; any type but
// new_message makes it alert (which fails the script).
async function openTutorialClient(browser, user) {
  const ctx = await newContext(browser);
  // Any page of the server's origin, so that the client's requests carry the
  // server's own Origin, as the tutorial's page would; it has no icon (the
  // browser answers for it rather than log the server's 404).
  await ctx.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
  const page = await openPage(ctx, `${user.user} (tutorial's page)`);
  await page.goto(new URL('/healthz', baseUrl).href);
  await page.evaluate(async ({ username, password }) => {
    // As the tutorial's page does it: POST /login, then /ws with the OTP only.
    const response = await fetch('login', { method: 'post', body: JSON.stringify({ username, password }), mode: 'cors' });
    if (!response.ok) throw new Error(`login answered ${response.status}`);
    const { otp } = await response.json();
    window.tutorial = { types: [], messages: [] };
    // ws:// as the tutorial's page served over HTTP has it, wss:// as its
    // HTTPS version does.
    const scheme = document.location.protocol === 'https:' ? 'wss' : 'ws';
    const conn = new WebSocket(`${scheme}://${document.location.host}/ws?otp=${otp}`);
    window.tutorial.conn = conn;
    conn.onmessage = (evt) => {
      const event = JSON.parse(evt.data);
      window.tutorial.types.push(event.type);
      if (event.type === 'new_message') window.tutorial.messages.push(event.payload.message);
      else alert('unsupported message type');
    };
    await new Promise((resolve, reject) => {
      conn.onopen = resolve;
      conn.onerror = () => reject(new Error('the tutorial client could not connect'));
    });
  }, { username: user.user, password: user.pass });
  ok(true, `${user.user} is connected as the tutorial's page does it (/ws?otp=... only)`);
  return page;
}

async function tutorialSend(page, type, payload) {
  await page.evaluate(([t, p]) => window.tutorial.conn.send(JSON.stringify({ type: t, payload: p })), [type, payload]);
}

// The tutorial's client says `text` and waits for its own message to come
// back: whatever the server sent it before has arrived by then.
async function tutorialSay(page, text) {
  await tutorialSend(page, 'send_message', { message: text, from: carol.user });
  await page.waitForFunction((t) => window.tutorial.messages.includes(t), text);
}

// Checks that the tutorial's client received only new_message events, and
// that it did receive what was said in its room (`heard`).
async function checkTutorialSawNothingNew(page, heard) {
  const { types, messages } = await page.evaluate(() => ({ types: window.tutorial.types, messages: window.tutorial.messages }));
  const unknown = types.filter((t) => t !== 'new_message');
  ok(unknown.length === 0, `the tutorial's page received no new event type (${[...new Set(types)].join(', ')}`
    + `${unknown.some((t) => PRESENCE_EVENTS.includes(t)) ? '; presence events sent to a client that never asked' : ''})`);
  ok(heard.every((text) => messages.includes(text)),
    `the tutorial's page heard the messages said in its room meanwhile (${JSON.stringify(heard)})`);
}

// ---- the scenarios -------------------------------------------------------------

async function members(browser) {
  // carol, on the tutorial's page, is in general first.
  const tutorial = await openTutorialClient(browser, carol);
  const pageA = await openOurPage(browser, alice);
  const url = new URL(await pageA.evaluate(() => window.__e2eSockets.at(-1).url));
  ok(url.searchParams.get('presence') === '1' && url.searchParams.get('room') === 'general',
    `our page asks for the members on its /ws URL (${url.search.replace(/otp=[^&]*/, 'otp=…')})`);
  await waitMembers(pageA, alice.user, `${alice.user}, ${carol.user}`);
  const region = pageA.getByRole('complementary', { name: 'In this room' });
  ok((await region.getByRole('list', { name: 'In this room' }).getByRole('listitem').count()) === 2,
    'the members are a list labelled "In this room"');
  ok((await region.locator('#member-count').textContent()) === '2 people here', 'it says how many are here');
  ok((await pageA.locator(`#member-list [data-name="${alice.user}"] .you`).count()) === 1,
    `${alice.user}'s own name is marked as hers`);

  // bob comes: each sees the other.
  const pageB = await openOurPage(browser, bob);
  await waitMembers(pageB, bob.user, `${alice.user}, ${bob.user}, ${carol.user}`);
  await waitMembers(pageA, alice.user, `${alice.user}, ${bob.user}, ${carol.user}`);

  // Events the page does not know, or presence events it cannot use, change
  // nothing and break nothing (delivered to the page's socket handler as if
  // from the server).
  await pageA.evaluate(() => {
    const ws = window.__e2eSockets.at(-1);
    const frames = [
      { type: 'presence_someday', payload: { room: 'general', names: ['mallory'] } },
      { type: 'presence_join', payload: { room: 'general', names: 'mallory' } },
      { type: 'presence_join', payload: { room: 'elsewhere', names: ['mallory'] } },
      { type: 'presence_leave', payload: { room: 'general' } },
      { type: 'presence', payload: { room: 'general' } },
      { type: 'presence_count', payload: { room: 'general', count: 'many' } },
    ].map((event) => JSON.stringify(event));
    for (const data of [...frames, 'not JSON', 'null']) ws.dispatchEvent(new MessageEvent('message', { data }));
  });
  const hello = `hello from ${bob.user}`;
  await sendMessage(pageB, hello);
  await waitMessage(pageA, hello);
  ok((await membersShown(pageA)) === `${alice.user}, ${bob.user}, ${carol.user}`,
    'unknown and malformed events leave the list as it was, and the chat goes on');

  // bob opens a second tab: one member, two connections.
  const pageB2 = await openPage(pageB.context(), `${bob.user} (second tab)`);
  await pageB2.goto(baseUrl);
  ok((await waitStatus(pageB2, 'connected')) === 'connected', `${bob.user}'s second tab connects through his session`);
  await waitMembers(pageB2, `${bob.user} (second tab)`, `${alice.user}, ${bob.user} x2, ${carol.user}`);

  // Closing one of his two tabs is not a leave: once the server has seen it
  // go, bob speaks from the other; when alice hears it, any leave sent
  // before would have arrived.
  const connections = await metric('chat_connections{phase="websocket"}');
  await pageB2.close();
  await waitUntil('the server to see the second tab go',
    async () => (await metric('chat_connections{phase="websocket"}')) === connections - 1);
  const stillHere = `${bob.user} is still here`;
  await sendMessage(pageB, stillHere);
  await waitMessage(pageA, stillHere);
  ok((await membersShown(pageA)) === `${alice.user}, ${bob.user}, ${carol.user}`,
    `closing one of ${bob.user}'s two tabs leaves him on ${alice.user}'s list`);

  // Closing his last tab takes him off.
  await pageB.close();
  await waitMembers(pageA, alice.user, `${alice.user}, ${carol.user}`);

  // alice moves to lounge, asking for its members in her change_room.
  await changeRoom(pageA, 'lounge');
  const change = (await sentEvents(pageA)).findLast((event) => event.type === 'change_room');
  ok(change.payload.name === 'lounge' && change.payload.presence === true,
    `our page's change_room asks for the members (${JSON.stringify(change.payload)})`);
  await waitMembers(pageA, alice.user, alice.user);

  // carol follows as the tutorial's page does, with the name only: she shows
  // up on alice's list, and receives nothing new herself.
  await tutorialSend(tutorial, 'change_room', { name: 'lounge' });
  await waitMembers(pageA, alice.user, `${alice.user}, ${carol.user}`);
  const last = `${carol.user} in lounge`;
  await tutorialSay(tutorial, last);
  await waitMessage(pageA, last);
  await checkTutorialSawNothingNew(tutorial, [hello, stillHere, last]);
}

async function count(browser) {
  // Alone in general, alice sees her name.
  const pageA = await openOurPage(browser, alice);
  await waitMembers(pageA, alice.user, alice.user);
  ok((await pageA.locator('#member-count').textContent()) === '1 person here', 'alone, "1 person here"');

  // Past --presence-max-users (1), only how many: the count follows who comes and goes.
  const tutorial = await openTutorialClient(browser, carol);
  await waitMembers(pageA, alice.user, '2 people here');
  const pageB = await openOurPage(browser, bob);
  await waitMembers(pageB, bob.user, '3 people here');
  await waitMembers(pageA, alice.user, '3 people here');
  await pageB.close();
  await waitMembers(pageA, alice.user, '2 people here');
  const said = `${alice.user} in a big room`;
  await sendMessage(pageA, said);
  await tutorialSay(tutorial, `${carol.user} in a big room`);
  await checkTutorialSawNothingNew(tutorial, [said]);

  // carol leaves with the tutorial's change_room: the room is small again
  // and alice's list has names again.
  await tutorialSend(tutorial, 'change_room', { name: 'elsewhere' });
  await waitMembers(pageA, alice.user, alice.user);
  await tutorialSay(tutorial, `${carol.user} elsewhere`);
  await checkTutorialSawNothingNew(tutorial, [said]);
}

async function run(browser) {
  await (scenario === 'members' ? members : count)(browser);
  checkNothingUnexpected();
}

runScript(`presence-${scenario}`, baseUrl, run, TOTAL_TIMEOUT_MS);
