// Chat client: log in over HTTP for a one-time password (OTP), then talk JSON
// events over a WebSocket. Plain DOM code, no framework, no build step.
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
  };

  const state = {
    // Kept in memory only (never in storage) so that "Reconnect" can log in
    // again: OTPs are single use.
    creds: null,
    ws: null,
    // Bumped for every connection attempt; handlers of older attempts see a
    // different number and do nothing.
    generation: 0,
    room: DEFAULT_ROOM,
    // Text we sent whose echo has not come back yet; given back to the user
    // if the server closes the connection because the frame was too large.
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
    const from = state.creds ? state.creds.username : '';
    return frameFor('send_message', { message: text, from });
  }

  function isNearBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function append(item) {
    const list = ui.messages;
    const stick = isNearBottom(list);
    list.appendChild(item);
    while (list.children.length > MAX_RENDERED) list.removeChild(list.firstChild);
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function addNotice(text) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.textContent = text;
    append(li);
  }

  function formatTime(sent) {
    const date = new Date(sent);
    if (Number.isNaN(date.getTime())) return { short: '', long: '' };
    return {
      short: date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
      long: date.toLocaleString(),
    };
  }

  function addMessage(payload) {
    const text = typeof payload.message === 'string' ? payload.message : '';
    const from = typeof payload.from === 'string' ? payload.from : '?';
    const sent = typeof payload.sent === 'string' ? payload.sent : '';
    const own = Boolean(state.creds) && from === state.creds.username;

    const li = document.createElement('li');
    li.className = own ? 'message own' : 'message';
    li.dataset.own = String(own);
    li.dataset.from = from;

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

  function setRoom(name) {
    state.room = name;
    ui.roomName.textContent = name;
  }

  function enterRoomView(name) {
    setRoom(name);
    ui.messages.replaceChildren();
    addNotice(`You're in room “${name}”.`);
  }

  // ---- server I/O ----------------------------------------------------------

  class LoginError extends Error {
    constructor(message, kind) {
      super(message);
      this.kind = kind; // 'credentials' | 'network' | 'server'
    }
  }

  async function requestOtp(creds) {
    let response;
    try {
      response = await fetch('/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ username: creds.username, password: creds.password }),
        cache: 'no-store',
      });
    } catch {
      throw new LoginError('Cannot reach the server. Check that it is running and try again.', 'network');
    }
    if (response.status === 401) {
      throw new LoginError('Wrong username or password.', 'credentials');
    }
    if (!response.ok) {
      throw new LoginError(`Login failed (HTTP ${response.status}).`, 'server');
    }
    let data;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!data || typeof data.otp !== 'string' || data.otp === '') {
      throw new LoginError('The server sent an unexpected login reply.', 'server');
    }
    return data.otp;
  }

  function socketUrl(otp) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws?otp=${encodeURIComponent(otp)}`;
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

  function openSocket(otp, generation, isReconnect) {
    let opened = false;
    const ws = new WebSocket(socketUrl(otp));
    state.ws = ws;
    const current = () => generation === state.generation && state.ws === ws;

    ws.addEventListener('open', () => {
      if (!current()) return;
      opened = true;
      setStatus('connected');
      ui.banner.hidden = true;
      // New connections start in the default room; rejoin the one the user was in.
      if (state.room !== DEFAULT_ROOM) ws.send(frameFor('change_room', { name: state.room }));
      if (isReconnect) addNotice(`Reconnected. You're in room “${state.room}”.`);
      ui.messageInput.focus();
    });

    ws.addEventListener('message', (event) => {
      if (!current()) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return; // not ours to render
      }
      const payload = data && typeof data.payload === 'object' && data.payload ? data.payload : {};
      if (data.type === 'new_message') {
        if (state.creds && payload.from === state.creds.username && payload.message === state.pending) {
          state.pending = '';
        }
        addMessage(payload);
      } else if (data.type === 'error') {
        const text = typeof payload.message === 'string' ? payload.message : 'unknown error';
        show(ui.chatError, `Server error: ${text}`);
      }
    });

    ws.addEventListener('close', (event) => {
      if (!current()) return;
      state.ws = null;
      if (opened && event.code === 1009 && state.pending && !ui.messageInput.value) {
        // Give the user their text back so it is not lost.
        ui.messageInput.value = state.pending;
      }
      state.pending = '';
      showDisconnected(closeReason(event, opened));
    });
  }

  async function connect() {
    if (!state.creds) return;
    const generation = ++state.generation;
    dropSocket();
    setStatus('connecting');
    ui.reconnect.disabled = true;
    ui.disconnectReason.textContent = 'Reconnecting…';
    let otp;
    try {
      otp = await requestOtp(state.creds);
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.kind === 'credentials') {
        // Account changed under us: back to the login form.
        logout();
        show(ui.loginError, err.message);
        return;
      }
      showDisconnected(err.message);
      return;
    }
    if (generation !== state.generation) return;
    openSocket(otp, generation, true);
  }

  function logout() {
    state.generation++;
    dropSocket();
    state.creds = null;
    state.pending = '';
    setStatus('disconnected');
    ui.chatView.hidden = true;
    ui.banner.hidden = true;
    ui.loginView.hidden = false;
    ui.whoami.hidden = true;
    ui.logout.hidden = true;
    ui.messages.replaceChildren();
    hide(ui.chatError);
    hide(ui.roomError);
    ui.password.value = '';
    ui.username.focus();
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
    const password = ui.password.value;
    if (!username || !password) {
      show(ui.loginError, 'Enter a username and a password.');
      return;
    }
    ui.loginButton.disabled = true;
    setStatus('connecting');
    let otp;
    try {
      otp = await requestOtp({ username, password });
    } catch (err) {
      setStatus('disconnected');
      show(ui.loginError, err.message);
      ui.loginButton.disabled = false;
      ui.password.select();
      return;
    }
    ui.loginButton.disabled = false;
    state.creds = { username, password };
    ui.password.value = '';
    ui.loginView.hidden = true;
    ui.chatView.hidden = false;
    ui.whoami.textContent = username;
    ui.whoami.hidden = false;
    ui.logout.hidden = false;
    hide(ui.chatError);
    enterRoomView(DEFAULT_ROOM);
    const generation = ++state.generation;
    openSocket(otp, generation, false);
  });

  ui.reconnect.addEventListener('click', () => {
    hide(ui.chatError);
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
    ws.send(frameFor('change_room', { name }));
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

  setStatus('disconnected');
})();
