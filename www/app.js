// Chat client: log in over HTTP for a one-time password (OTP), then talk JSON
// events over a WebSocket. Plain DOM code, no framework, no build step.
//
// The page never keeps the password: logging in also gives the browser a
// session cookie (HttpOnly: this script cannot read it), and every later
// connection, after a reload or a drop, asks POST /session/otp for its OTP.
// Only a 401 there brings the login form back. The user name is all the page
// keeps (in localStorage, to know who it is after a reload).
//
// Joining a room shows its last messages. When the connection drops, the
// page reconnects by itself (backing off, and at once when the browser is
// back online) and resumes after the id of the last message it showed: what
// was said meanwhile follows a marker in the list, each message once, and a
// "history_gap" from the server says that some could not be restored.
//
// Beside the messages, the room's members: the page asks for them with every
// join (presence), gets the server's list first, then who came ("presence_join")
// and who went ("presence_leave"), by name; in a big room only how many are
// there ("presence_count"). A lost connection hides the list until the next
// one brings a fresh one.
//
// Safety rule: text that comes from the network or from a user is only ever
// put into the page with textContent, never innerHTML.
'use strict';

(() => {
  // The server closes the connection (code 1009) when a frame is over 512
  // bytes. The limit is on the whole JSON frame we send, so we count exactly
  // that: the UTF-8 encoding of the frame we would send.
  const MAX_FRAME_BYTES = 512;
  const MAX_ROOM_BYTES = 64;
  const DEFAULT_ROOM = 'general';
  const MAX_RENDERED = 500; // keep the DOM bounded in long sessions
  // Messages asked for when joining a room (the server gives at most what it keeps).
  const JOIN_HISTORY = 50;
  // Asked for when resuming in a room where no message was shown yet: all we can keep.
  const RESUME_HISTORY = MAX_RENDERED;
  // Automatic reconnects wait this long (ms), a little more after each failure.
  const RETRY_DELAYS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
  // A connection that lived this long (ms) before it dropped starts the delays over.
  const STABLE_MS = 10000;
  // Closes caused by what this page sent: reconnecting by itself would not help,
  // so the page waits for the user (1002 protocol error, 1003 binary frame,
  // 1007 invalid UTF-8, 1009 message too large).
  const NO_AUTO_RECONNECT = new Set([1002, 1003, 1007, 1009]);
  // Where the user name is kept between page loads.
  const USER_KEY = 'chat.username';
  const PRESENCE_EVENTS = new Set(['presence', 'presence_join', 'presence_leave', 'presence_count']);

  const encoder = new TextEncoder();
  const byteLength = (s) => encoder.encode(s).length;
  const $ = (id) => document.getElementById(id);

  const ui = {
    whoami: $('whoami'),
    status: $('status'),
    logout: $('logout'),
    loginView: $('login-view'),
    loginForm: $('login-form'),
    username: $('username'),
    password: $('password'),
    loginError: $('login-error'),
    loginButton: $('login-button'),
    chatView: $('chat-view'),
    banner: $('disconnected-banner'),
    disconnectReason: $('disconnect-reason'),
    reconnect: $('reconnect'),
    roomForm: $('room-form'),
    roomName: $('room-name'),
    roomInput: $('room-input'),
    roomError: $('room-error'),
    messages: $('messages'),
    messageForm: $('message-form'),
    messageInput: $('message-input'),
    sendButton: $('send-button'),
    chatError: $('chat-error'),
    byteCounter: $('byte-counter'),
    members: $('members'),
    memberCount: $('member-count'),
    memberList: $('member-list'),
  };

  const state = {
    // Who is logged in: { username } ('' when the page resumed a session
    // without knowing the name), or null. Never the password.
    user: null,
    ws: null,
    // Bumped for every connection attempt; handlers of older attempts see a
    // different number and do nothing.
    generation: 0,
    room: DEFAULT_ROOM,
    // The id of the last message shown in this room: a reconnect resumes
    // after it. Ids are opaque; only the server compares them.
    lastId: null,
    // Ids of the messages shown in this room, so that none is shown twice.
    seen: new Set(),
    // Whether a connection was open in this room view: later connections
    // resume it rather than join it.
    joined: false,
    // The marker left in the message list where the connection dropped,
    // until the connection is back.
    away: null,
    // Automatic reconnect: the pending timer, how many attempts failed in a
    // row, and whether it waits for the browser to be online again.
    retryTimer: 0,
    retryAttempt: 0,
    waitingForNetwork: false,
    // Who is in this room, as the server last said: { users, count }, where
    // users maps each name to its number of connections, or is null when
    // the room is too big for names; null until the server's first list.
    presence: null,
    // Text we sent whose echo has not come back yet; given back to the user
    // if the connection closes before the server had it.
    pending: '',
  };

  // ---- small helpers -------------------------------------------------------

  function show(node, text) {
    node.textContent = text;
    node.hidden = false;
  }

  function hide(node) {
    node.textContent = '';
    node.hidden = true;
  }

  const STATUS_TEXT = {
    connecting: 'connecting…',
    connected: 'connected',
    disconnected: 'disconnected',
  };

  function setStatus(name) {
    ui.status.dataset.state = name;
    ui.status.textContent = STATUS_TEXT[name];
    const connected = name === 'connected';
    ui.messageInput.disabled = !connected;
    ui.roomInput.disabled = !connected;
    ui.roomForm.querySelector('button').disabled = !connected;
    updateCounter();
  }

  function frameFor(type, payload) {
    return JSON.stringify({ type, payload });
  }

  function messageFrame(text) {
    const from = state.user ? state.user.username : '';
    return frameFor('send_message', { message: text, from });
  }

  function isNearBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function append(item) {
    const list = ui.messages;
    const stick = isNearBottom(list);
    list.appendChild(item);
    while (list.children.length > MAX_RENDERED) {
      const old = list.firstChild;
      if (old.dataset.id) state.seen.delete(old.dataset.id);
      list.removeChild(old);
    }
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function addNotice(text, kind) {
    const li = document.createElement('li');
    li.className = kind ? `notice ${kind}` : 'notice';
    li.textContent = text;
    append(li);
    return li;
  }

  function formatTime(sent) {
    const date = new Date(sent);
    if (Number.isNaN(date.getTime())) return { short: '', long: '' };
    return {
      short: date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
      long: date.toLocaleString(),
    };
  }

  function timeNow() {
    return new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function addMessage(payload, id) {
    const text = typeof payload.message === 'string' ? payload.message : '';
    const from = typeof payload.from === 'string' ? payload.from : '?';
    const sent = typeof payload.sent === 'string' ? payload.sent : '';
    const own = Boolean(state.user && state.user.username) && from === state.user.username;

    const li = document.createElement('li');
    li.className = own ? 'message own' : 'message';
    li.dataset.own = String(own);
    li.dataset.from = from;
    if (id) li.dataset.id = id;

    const meta = document.createElement('div');
    meta.className = 'meta';
    const fromEl = document.createElement('span');
    fromEl.className = 'from';
    fromEl.textContent = from;
    meta.appendChild(fromEl);
    if (own) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = 'you';
      meta.appendChild(you);
    }
    const time = document.createElement('time');
    time.className = 'time';
    const when = formatTime(sent);
    time.dateTime = sent;
    time.textContent = when.short;
    if (when.long) time.title = when.long;
    meta.appendChild(time);

    const body = document.createElement('p');
    body.className = 'text';
    body.textContent = text;

    li.append(meta, body);
    append(li);
  }

  // ---- who is in the room ---------------------------------------------------

  function memberItem(name, connections) {
    const li = document.createElement('li');
    li.className = 'member';
    li.dataset.name = name;
    li.dataset.connections = String(connections);
    const nameEl = document.createElement('span');
    nameEl.className = 'member-name';
    nameEl.textContent = name;
    li.appendChild(nameEl);
    if (state.user && name === state.user.username) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = 'you';
      li.appendChild(you);
    }
    if (connections > 1) {
      const more = document.createElement('span');
      more.className = 'connections';
      more.textContent = `${connections} connections`;
      li.appendChild(more);
    }
    return li;
  }

  function renderMembers() {
    const presence = state.presence;
    ui.members.hidden = !presence;
    if (!presence) {
      ui.memberList.replaceChildren();
      return;
    }
    const { users, count } = presence;
    ui.memberCount.textContent = count === 1 ? '1 person here' : `${count.toLocaleString()} people here`;
    ui.memberList.hidden = !users;
    const names = users ? [...users.keys()].sort() : [];
    ui.memberList.replaceChildren(...names.map((name) => memberItem(name, users.get(name))));
  }

  function forgetMembers() {
    state.presence = null;
    renderMembers();
  }

  // The names of a presence_join / presence_leave, strings only.
  function namesOf(payload) {
    return Array.isArray(payload.names) ? payload.names.filter((name) => typeof name === 'string') : [];
  }

  // A presence event for the room on show: the server's list ("presence"),
  // then changes to it. Events about a room this page has left are dropped.
  function onPresence(type, payload) {
    if (payload.room !== state.room) return;
    if (type === 'presence') {
      let users = null;
      if (Array.isArray(payload.users)) {
        users = new Map();
        for (const user of payload.users) {
          if (!user || typeof user.name !== 'string') continue;
          const connections = Number.isInteger(user.connections) && user.connections > 0 ? user.connections : 1;
          users.set(user.name, connections);
        }
      }
      const count = users ? users.size : payload.count;
      if (!Number.isInteger(count)) return;
      state.presence = { users, count };
    } else {
      const presence = state.presence;
      if (!presence) return; // nothing to change before the server's list
      if (type === 'presence_count') {
        // The room grew too big for names: only how many, from now on.
        if (!Number.isInteger(payload.count)) return;
        presence.users = null;
        presence.count = payload.count;
      } else {
        if (!presence.users) return;
        for (const name of namesOf(payload)) {
          // A join is a user's first connection here, a leave its last one.
          if (type === 'presence_leave') presence.users.delete(name);
          else if (!presence.users.has(name)) presence.users.set(name, 1);
        }
        presence.count = presence.users.size;
      }
    }
    renderMembers();
  }

  function setRoom(name) {
    state.room = name;
    ui.roomName.textContent = name;
  }

  // A fresh view of room `name`: what the server replays of its history
  // (asked for with the join) follows the notice.
  function enterRoomView(name) {
    setRoom(name);
    ui.messages.replaceChildren();
    state.lastId = null;
    state.seen.clear();
    state.joined = false;
    state.away = null;
    forgetMembers();
    addNotice(`You're in room “${name}”.`);
  }

  // ---- server I/O ----------------------------------------------------------

  class OtpError extends Error {
    constructor(message, kind, retryAfterMs = 0) {
      super(message);
      // 'credentials' (wrong password) | 'session' (no valid session) |
      // 'forbidden' | 'network' | 'server'
      this.kind = kind;
      this.retryAfterMs = retryAfterMs;
    }
  }

  function storedUser() {
    try {
      return localStorage.getItem(USER_KEY) || '';
    } catch {
      return ''; // storage is off: the name lives in this page only
    }
  }

  function storeUser(name) {
    try {
      if (name) localStorage.setItem(USER_KEY, name);
      else localStorage.removeItem(USER_KEY);
    } catch {
      // storage is off: nothing to keep or clear
    }
  }

  // POSTs to `path` for a one-time password; `texts` words the failures.
  async function otpRequest(path, init, texts) {
    let response;
    try {
      response = await fetch(path, { method: 'POST', credentials: 'same-origin', cache: 'no-store', ...init });
    } catch {
      throw new OtpError(texts.network, 'network');
    }
    if (response.status === 401) throw new OtpError(texts.unauthorized, texts.unauthorizedKind);
    if (response.status === 403) {
      throw new OtpError('The server does not accept connections from this page’s address (HTTP 403).', 'forbidden');
    }
    if (!response.ok) {
      // 429 (too many at once) and 503 (the server's store is down) say when to try again.
      const after = Number(response.headers.get('Retry-After'));
      throw new OtpError(`${texts.failed} (HTTP ${response.status}).`, 'server', after > 0 ? after * 1000 : 0);
    }
    let data;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!data || typeof data.otp !== 'string' || data.otp === '') {
      throw new OtpError('The server sent an unexpected reply.', 'server');
    }
    return data.otp;
  }

  // POST /login: the password goes from its field straight into the request
  // body; no variable holds it. The answer also sets the session cookie.
  function loginOtp(username) {
    return otpRequest('/login', {
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password: ui.password.value }),
    }, {
      network: 'Cannot reach the server. Check that it is running and try again.',
      unauthorized: 'Wrong username or password.',
      unauthorizedKind: 'credentials',
      failed: 'Login failed',
    });
  }

  // POST /session/otp: an OTP for the session in the cookie, no password.
  function sessionOtp() {
    return otpRequest('/session/otp', {}, {
      network: 'Cannot reach the server.',
      unauthorized: 'Your session has ended. Log in again.',
      unauthorizedKind: 'session',
      failed: 'The server could not reconnect you',
    });
  }

  // The connection starts in the current room, with its last messages (a
  // join) or with everything after the last message shown (a resume), so a
  // resuming page never passes through the default room; and with the
  // room's members.
  function socketUrl(otp) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = new URLSearchParams({ otp, room: state.room, presence: '1' });
    if (state.lastId) query.set('since', state.lastId);
    else query.set('history', String(state.joined ? RESUME_HISTORY : JOIN_HISTORY));
    return `${scheme}//${location.host}/ws?${query}`;
  }

  function dropSocket() {
    const ws = state.ws;
    state.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'bye');
  }

  function closeReason(event, opened) {
    if (!opened) return 'Could not open the chat connection.';
    switch (event.code) {
      case 1009:
        return `The server closed the connection because a message was too large (limit ${MAX_FRAME_BYTES} bytes).`;
      case 1001:
        return 'The server is shutting down.';
      case 1006:
        return 'The connection to the server was lost.';
      default:
        return event.reason
          ? `The server closed the connection: ${event.reason}.`
          : 'The server closed the connection.';
    }
  }

  function showDisconnected(reason) {
    setStatus('disconnected');
    ui.disconnectReason.textContent = reason;
    ui.banner.hidden = false;
    ui.reconnect.disabled = false;
  }

  function cancelRetry() {
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    state.waitingForNetwork = false;
  }

  // Reconnects by itself after a while (longer after each failure), or as
  // soon as the browser is back online when it knows it is offline. The
  // Reconnect button stays there to try at once.
  function scheduleRetry(reason, atLeastMs = 0) {
    cancelRetry();
    showDisconnected(reason);
    const base = RETRY_DELAYS[Math.min(state.retryAttempt, RETRY_DELAYS.length - 1)];
    state.retryAttempt++;
    let delay = Math.max(atLeastMs, Math.round(base * (0.8 + 0.4 * Math.random())));
    if (navigator.onLine) {
      ui.disconnectReason.textContent = `${reason} Trying again in ${Math.max(1, Math.round(delay / 1000))} s…`;
    } else {
      // The "online" event reconnects at once; the slow timer is there in
      // case the browser is wrong (a server on this machine, no network).
      state.waitingForNetwork = true;
      delay = RETRY_DELAYS[RETRY_DELAYS.length - 1];
      ui.disconnectReason.textContent = `${reason} Waiting for the network…`;
    }
    state.retryTimer = setTimeout(() => {
      state.retryTimer = 0;
      connect();
    }, delay);
  }

  // Where the connection dropped: a marker in the message list, which says
  // so again once the connection is back and the missed messages follow it.
  function markAway() {
    if (state.away) return;
    const lost = timeNow();
    state.away = addNotice(`Connection lost at ${lost}.`, 'gap-marker');
    state.away.dataset.state = 'away';
    state.away.dataset.lost = lost;
  }

  function markBack() {
    const marker = state.away;
    if (!marker) return;
    state.away = null;
    marker.dataset.state = 'resumed';
    marker.textContent = `Connection lost at ${marker.dataset.lost}, back at ${timeNow()}. Messages sent meanwhile are below.`;
  }

  function onServerEvent(data) {
    if (!data || typeof data !== 'object') return;
    const payload = typeof data.payload === 'object' && data.payload ? data.payload : {};
    if (data.type === 'new_message') {
      const id = typeof payload.id === 'string' && payload.id !== '' ? payload.id : null;
      if (id && state.seen.has(id)) return; // shown already
      if (state.pending && state.user && payload.from === state.user.username && payload.message === state.pending) {
        // Our text reached the server (maybe seen only now, on a resume).
        if (ui.messageInput.value === state.pending) {
          ui.messageInput.value = '';
          updateCounter();
        }
        state.pending = '';
      }
      addMessage(payload, id);
      if (id) {
        state.seen.add(id);
        state.lastId = id;
      }
    } else if (data.type === 'history_gap') {
      if (typeof payload.room === 'string' && payload.room !== state.room) return;
      addNotice('Some messages could not be restored: the server no longer keeps them.', 'history-gap');
    } else if (data.type === 'error') {
      const text = typeof payload.message === 'string' ? payload.message : 'unknown error';
      show(ui.chatError, `Server error: ${text}`);
    } else if (PRESENCE_EVENTS.has(data.type)) {
      onPresence(data.type, payload);
    }
    // Any other type is not ours to show.
  }

  function openSocket(otp, generation) {
    let opened = false;
    let openedAt = 0;
    const ws = new WebSocket(socketUrl(otp));
    state.ws = ws;
    const current = () => generation === state.generation && state.ws === ws;

    ws.addEventListener('open', () => {
      if (!current()) return;
      opened = true;
      openedAt = Date.now();
      state.joined = true;
      cancelRetry();
      setStatus('connected');
      ui.banner.hidden = true;
      markBack();
      // Ready to type, unless the user is busy elsewhere on the page.
      const focused = document.activeElement;
      if (!focused || focused === document.body || focused === ui.reconnect || ui.loginView.contains(focused)) {
        ui.messageInput.focus();
      }
    });

    ws.addEventListener('message', (event) => {
      if (!current()) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return; // not ours to render
      }
      onServerEvent(data);
    });

    ws.addEventListener('close', (event) => {
      if (!current()) return;
      state.ws = null;
      forgetMembers(); // who is here is known again on the next connection
      if (opened) markAway();
      if (opened && Date.now() - openedAt > STABLE_MS) state.retryAttempt = 0;
      if (state.pending && !ui.messageInput.value) {
        // Give the user their text back so it is not lost; if the server had
        // it after all, the resume shows it and the box is emptied again.
        ui.messageInput.value = state.pending;
        updateCounter();
      }
      if (opened && event.code === 1009) state.pending = ''; // refused: it will never come back
      const reason = closeReason(event, opened);
      if (opened && NO_AUTO_RECONNECT.has(event.code)) {
        cancelRetry();
        showDisconnected(reason);
      } else {
        scheduleRetry(reason);
      }
    });
  }

  // A new connection for the session: after a drop, or the Reconnect button.
  async function connect() {
    if (!state.user) return;
    cancelRetry();
    const generation = ++state.generation;
    dropSocket();
    setStatus('connecting');
    ui.reconnect.disabled = true;
    ui.disconnectReason.textContent = 'Reconnecting…';
    let otp;
    try {
      otp = await sessionOtp();
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.kind === 'session') {
        // The only way back to the login form: the session is over.
        showLogin(err.message);
      } else if (err.kind === 'forbidden') {
        showDisconnected(err.message); // retrying would be refused the same way
      } else {
        scheduleRetry(err.message, err.retryAfterMs);
      }
      return;
    }
    if (generation !== state.generation) return;
    openSocket(otp, generation);
  }

  // On load: a valid session means the chat at once, no login form.
  async function start() {
    const generation = ++state.generation;
    setStatus('connecting');
    let otp;
    try {
      otp = await sessionOtp();
    } catch (err) {
      if (generation !== state.generation) return;
      const name = storedUser();
      if (err.kind === 'session' || !name) {
        showLogin(err.kind === 'session' ? '' : err.message);
      } else if (err.kind === 'forbidden') {
        showLogin(err.message);
      } else {
        // Logged in here before, and the server cannot say now: keep trying.
        enterChat(name);
        scheduleRetry(err.message, err.retryAfterMs);
      }
      return;
    }
    if (generation !== state.generation) return;
    enterChat(storedUser());
    openSocket(otp, generation);
  }

  function enterChat(name) {
    state.user = { username: name };
    state.retryAttempt = 0;
    ui.loginView.hidden = true;
    ui.chatView.hidden = false;
    ui.whoami.textContent = name;
    ui.whoami.hidden = !name;
    ui.logout.hidden = false;
    hide(ui.chatError);
    hide(ui.loginError);
    enterRoomView(DEFAULT_ROOM);
  }

  // Leaves the chat for the login form, with `message` above it if any.
  function showLogin(message) {
    state.generation++;
    cancelRetry();
    dropSocket();
    state.user = null;
    state.pending = '';
    state.retryAttempt = 0;
    setStatus('disconnected');
    ui.chatView.hidden = true;
    ui.banner.hidden = true;
    ui.loginView.hidden = false;
    ui.whoami.hidden = true;
    ui.logout.hidden = true;
    ui.messages.replaceChildren();
    state.lastId = null;
    state.seen.clear();
    state.away = null;
    forgetMembers();
    hide(ui.chatError);
    hide(ui.roomError);
    ui.password.value = '';
    ui.messageInput.value = '';
    if (message) show(ui.loginError, message);
    else hide(ui.loginError);
    const name = storedUser();
    if (name && !ui.username.value) ui.username.value = name;
    (ui.username.value ? ui.password : ui.username).focus();
  }

  // The Log out button: the page leaves the chat at once; the server ends the
  // session and clears its cookie.
  async function logout() {
    storeUser('');
    ui.username.value = '';
    showLogin('');
    // Until the server has answered, a new login could have its fresh cookie
    // cleared by this answer: wait for it.
    ui.loginButton.disabled = true;
    try {
      const response = await fetch('/logout', {
        method: 'POST',
        credentials: 'same-origin',
        cache: 'no-store',
        signal: AbortSignal.timeout(5000),
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
    } catch {
      // A failed logout keeps the cookie, so the session can be ended later.
      show(ui.loginError, 'Logged out on this page, but the server could not end the session: reload the page and log out again.');
    } finally {
      ui.loginButton.disabled = false;
    }
  }

  // ---- UI handlers ---------------------------------------------------------

  function updateCounter() {
    const text = ui.messageInput.value;
    const left = MAX_FRAME_BYTES - byteLength(messageFrame(text));
    const over = left < 0;
    ui.byteCounter.dataset.over = String(over);
    ui.byteCounter.textContent = over
      ? `Too long: ${-left} bytes over the ${MAX_FRAME_BYTES}-byte limit`
      : `${left} bytes left`;
    // Send stays enabled when the text is too long: pressing it (or Enter)
    // explains why nothing was sent, instead of silently doing nothing.
    const connected = ui.status.dataset.state === 'connected';
    ui.sendButton.disabled = !connected;
    ui.messageInput.setAttribute('aria-invalid', String(over));
    return { over, left };
  }

  ui.loginForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    hide(ui.loginError);
    const username = ui.username.value.trim();
    if (!username || !ui.password.value) {
      show(ui.loginError, 'Enter a username and a password.');
      return;
    }
    ui.loginButton.disabled = true;
    setStatus('connecting');
    let otp;
    try {
      otp = await loginOtp(username);
    } catch (err) {
      setStatus('disconnected');
      show(ui.loginError, err.message);
      ui.loginButton.disabled = false;
      ui.password.select();
      return;
    }
    ui.loginButton.disabled = false;
    ui.password.value = '';
    storeUser(username);
    enterChat(username);
    openSocket(otp, ++state.generation);
  });

  ui.reconnect.addEventListener('click', () => {
    hide(ui.chatError);
    connect();
  });

  // Back online while waiting to reconnect: now, not when the timer says.
  window.addEventListener('online', () => {
    if (!state.user || state.ws || !(state.retryTimer || state.waitingForNetwork)) return;
    state.retryAttempt = 0;
    connect();
  });

  ui.logout.addEventListener('click', logout);

  ui.roomForm.addEventListener('submit', (event) => {
    event.preventDefault();
    hide(ui.roomError);
    const name = ui.roomInput.value.trim();
    if (!name) {
      show(ui.roomError, 'Enter a room name.');
      return;
    }
    if (byteLength(name) > MAX_ROOM_BYTES) {
      show(ui.roomError, `Room names are at most ${MAX_ROOM_BYTES} bytes.`);
      return;
    }
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      show(ui.roomError, 'Not connected.');
      return;
    }
    ui.roomInput.value = '';
    if (name === state.room) {
      addNotice(`You're already in room “${name}”.`);
      return;
    }
    ws.send(frameFor('change_room', { name, history: JOIN_HISTORY, presence: true }));
    enterRoomView(name);
    ui.messageInput.focus();
  });

  ui.messageInput.addEventListener('input', () => {
    updateCounter();
    if (ui.chatError.textContent.startsWith('Too long')) hide(ui.chatError);
  });

  ui.messageForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = ui.messageInput.value;
    if (text.trim() === '') return;
    const { over } = updateCounter();
    if (over) {
      show(ui.chatError, `Too long: a message can be at most ${MAX_FRAME_BYTES} bytes including its envelope.`);
      return;
    }
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      show(ui.chatError, 'Not connected: reconnect first.');
      return;
    }
    hide(ui.chatError);
    state.pending = text;
    ws.send(messageFrame(text));
    ui.messageInput.value = '';
    updateCounter();
  });

  start();
})();
