// The chat widget (`/widget`): a user talks to the assistant, asks for a
// person, sees their place in the queue and the wait, the operator's name,
// typing and messages; a reload loses nothing (the dialog id is kept in
// sessionStorage, the history is read again with `get_history`, and the
// client resumes from its cursor; messages are kept by `message_id`, so a
// replayed event never shows twice).
//
// The token comes from the embedding page (README, "In the browser"):
// - `#token=<jwt>` in the widget's URL (a fragment never reaches a server
//   or its logs; it is kept in sessionStorage for reloads and taken out of
//   the address bar), or
// - `postMessage` from the parent window: the widget posts
//   `{type: 'chatai:ready'}` (and `{type: 'chatai:token-request'}` when its
//   token nears expiry) to its parent, which answers
//   `{type: 'chatai:token', token}` — what `/web/widget/embed.js` does.

import { ChatClient } from '/web/chatai.js';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'chatai.widget.token';
const REFRESH_MARGIN_SECS = 60;
const TYPING_IDLE_MS = 2500;
const TYPING_REPEAT_MS = 3000;
const TYPING_SHOWN_MS = 6000;
const embedded = window.parent !== window;

const state = {
  token: null,
  userId: null,
  client: null,
  dialogId: null,
  phase: 'assistant', // 'assistant' | 'queued' | 'operator'
  position: null,
  wait: undefined,
  operator: null, // { id, name }
  names: {}, // operator id -> name, for history lines
  messages: new Map(), // message_id -> { message_id, sender, sender_id, message, timestamp }
  pending: [], // [{ key, message, failed }]
  starting: false, // a first message is on its way (no dialog id yet)
  operatorTyping: false,
  readByOperator: 0,
  readByMe: 0,
  needsHuman: false,
};

// ---------------------------------------------------------------- the token

const tokenWaiters = [];

function claimsOf(token) {
  const part = token.split('.')[1] || '';
  const base64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

function takeToken(token) {
  if (typeof token !== 'string' || token.split('.').length !== 3) return;
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  while (tokenWaiters.length) tokenWaiters.shift()(token);
}

function tokenFresh() {
  if (!state.token) return false;
  try {
    const { exp } = claimsOf(state.token);
    return !exp || exp - Date.now() / 1000 > REFRESH_MARGIN_SECS;
  } catch {
    return false;
  }
}

/** The token for the client: a fresh one from the parent when it nears expiry. */
function getToken() {
  if (tokenFresh() || !embedded) return Promise.resolve(state.token);
  const next = new Promise((resolve) => tokenWaiters.push(resolve));
  window.parent.postMessage({ type: 'chatai:token-request' }, '*');
  const fallback = new Promise((resolve) => setTimeout(() => resolve(state.token), 10000));
  return Promise.race([next, fallback]);
}

window.addEventListener('message', (event) => {
  // Only the embedding page may hand a token over.
  if (event.source !== window.parent || !event.data || event.data.type !== 'chatai:token') return;
  takeToken(event.data.token);
  if (!state.client) start();
});

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token) {
    takeToken(token);
    history.replaceState(null, '', location.pathname + location.search);
  }
}

// ---------------------------------------------------------------- saved state

function stateKey() {
  return `chatai.widget.state.${state.userId}`;
}

function save() {
  const { dialogId, phase, position, wait, operator, names } = state;
  sessionStorage.setItem(stateKey(), JSON.stringify({ dialogId, phase, position, wait, operator, names }));
}

function restore() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(stateKey()) || 'null');
    if (saved) Object.assign(state, saved);
  } catch {
    sessionStorage.removeItem(stateKey());
  }
}

// ---------------------------------------------------------------- connection

function start() {
  if (state.client || !state.token) return;
  let claims;
  try {
    claims = claimsOf(state.token);
  } catch {
    showError('The token given to the widget is not a JWT.');
    return;
  }
  state.userId = Number(claims.sub);
  restore();
  render();
  const client = new ChatClient({
    baseUrl: location.origin,
    getToken,
    role: claims.role || 'user',
    transport: 'auto',
    // The client keeps its cursor in sessionStorage by default (per role and
    // user): a reload resumes where the page left off.
  });
  state.client = client;
  client.on('state', renderConnection);
  client.on('connected', () => { reload().catch(() => {}); });
  client.on('ai_response', onAssistant);
  client.on('operator_message', onOperatorMessage);
  client.on('handoff_queued', onQueued);
  client.on('operator_assigned', onAssigned);
  client.on('handoff_completed', onCompleted);
  client.on('typing', onTyping);
  client.on('read', onRead);
  client.on('balance_alert', (f) => note(f.message || 'Your balance is running low.'));
  client.on('system_alert', (f) => note(`${f.severity === 'info' ? 'Notice' : 'Service notice'}: ${f.message}`, `alert-${f.severity}`));
  client.on('error', onErrorFrame);
  $('input').disabled = false;
  $('send').disabled = false;
  client.connect().catch((err) => showError(`Could not connect: ${err.message || err}`));
}

/** After every (re)connection: the dialog's history and who answers it now. */
async function reload() {
  if (!state.dialogId) return;
  const [history, listed] = await Promise.all([
    state.client.request({ type: 'get_history', dialog_id: state.dialogId, limit: 100 }),
    state.client.request({ type: 'list_dialogs', limit: 20 }),
  ]);
  merge(history.messages);
  const mine = (listed.dialogs || []).find((d) => d.dialog_id === state.dialogId);
  if (mine) {
    if (mine.state === 'assistant') setPhase('assistant');
    else if (mine.state === 'queued') setPhase('queued');
    else if (mine.state === 'operator') {
      const id = mine.operator_id;
      setPhase('operator', { id, name: state.names[id] || (state.operator && state.operator.name) || 'an operator' });
    }
  }
  markRead();
}

function belongs(frame) {
  if (state.dialogId === null && state.starting && frame.dialog_id) setDialog(frame.dialog_id);
  return frame.dialog_id === state.dialogId;
}

function setDialog(id) {
  state.dialogId = id;
  save();
}

function setPhase(phase, operator = state.operator) {
  state.phase = phase;
  state.operator = phase === 'operator' ? operator : null;
  if (phase !== 'queued') {
    state.position = null;
    state.wait = undefined;
  }
  if (phase !== 'operator') state.operatorTyping = false;
  save();
  render();
}

function onErrorFrame(frame) {
  if (frame.ref) return;
  if (frame.code === 'cursor_expired') {
    reload().catch(() => {});
  } else if (frame.code === 'assistant_unavailable') {
    note('The assistant could not answer just now. Ask again, or talk to a person.');
  }
}

// ---------------------------------------------------------------- events

function merge(messages) {
  let added = 0;
  for (const m of messages || []) {
    if (!state.messages.has(m.message_id)) {
      state.messages.set(m.message_id, m);
      added += 1;
    }
  }
  if (added) renderMessages();
  return added;
}

function onAssistant(frame) {
  if (!belongs(frame)) return;
  state.needsHuman = Boolean(frame.needs_human) && state.phase === 'assistant';
  merge([{ message_id: frame.message_id, sender: 'assistant', sender_id: null, message: frame.message, timestamp: frame.timestamp }]);
  render();
}

function onOperatorMessage(frame) {
  if (!belongs(frame)) return;
  state.names[frame.operator_id] = frame.operator_name;
  state.operatorTyping = false;
  if (state.phase !== 'operator') setPhase('operator', { id: frame.operator_id, name: frame.operator_name });
  merge([{ message_id: frame.message_id, sender: 'operator', sender_id: frame.operator_id, message: frame.message, timestamp: frame.timestamp }]);
  markRead();
  renderTyping();
}

function onQueued(frame) {
  if (!belongs(frame)) return;
  state.needsHuman = false;
  state.phase = 'queued';
  state.position = frame.position;
  state.wait = frame.estimated_wait_time;
  save();
  render();
}

function onAssigned(frame) {
  if (!belongs(frame)) return;
  state.names[frame.operator_id] = frame.operator_name;
  const changed = !state.operator || state.operator.id !== frame.operator_id;
  setPhase('operator', { id: frame.operator_id, name: frame.operator_name });
  if (changed) note(`${frame.operator_name} joined the conversation.`);
}

function onCompleted(frame) {
  if (!belongs(frame)) return;
  const outcome = frame.outcome || 'completed';
  if (outcome === 'transferred') return; // operator_assigned names the next one
  const name = state.operator ? state.operator.name : 'The operator';
  const words = {
    completed: `${name} closed the conversation${frame.resolution ? `: ${frame.resolution}` : ''}. The assistant is here again.`,
    cancelled: 'You stopped waiting. The assistant is here again.',
    returned_to_assistant: 'No one was free in time. The assistant is here again; ask for a person later.',
    reassigned: 'Your operator had to leave; you are back in the queue.',
  };
  if (outcome !== 'reassigned') setPhase('assistant');
  note(words[outcome] || 'The conversation with the operator ended.');
}

let typingTimer = null;

function onTyping(frame) {
  if (!belongs(frame) || frame.operator_id === undefined) return;
  state.operatorTyping = Boolean(frame.is_typing);
  clearTimeout(typingTimer);
  if (state.operatorTyping) {
    typingTimer = setTimeout(() => { state.operatorTyping = false; renderTyping(); }, TYPING_SHOWN_MS);
  }
  renderTyping();
}

function onRead(frame) {
  if (!belongs(frame) || frame.reader !== 'operator') return;
  state.readByOperator = Math.max(state.readByOperator, frame.message_id);
  renderMessages();
}

/** Tells the operator how far the user has read. */
function markRead() {
  if (document.hidden || !state.dialogId || state.phase !== 'operator') return;
  let newest = 0;
  for (const m of state.messages.values()) if (m.sender === 'operator' && m.message_id > newest) newest = m.message_id;
  if (newest <= state.readByMe) return;
  state.readByMe = newest;
  state.client.request({ type: 'mark_read', dialog_id: state.dialogId, message_id: newest }).catch(() => {});
}

// ---------------------------------------------------------------- actions

let pendingKey = 0;

async function send(text) {
  const pending = { key: ++pendingKey, message: text, failed: null };
  state.pending.push(pending);
  stopTyping();
  renderMessages();
  const frame = { type: 'chat_message', message: text };
  if (state.dialogId) frame.dialog_id = state.dialogId;
  else state.starting = true;
  try {
    const ack = await state.client.request(frame);
    if (!state.dialogId) setDialog(ack.dialog_id);
    state.pending = state.pending.filter((p) => p !== pending);
    merge([{ message_id: ack.message_id, sender: 'user', sender_id: state.userId, message: text, timestamp: ack.timestamp }]);
    renderMessages();
  } catch (err) {
    pending.failed = err.code === 'insufficient_balance' ? 'your balance is used up' : (err.message || 'not sent');
    renderMessages();
  } finally {
    state.starting = false;
  }
}

async function askForHuman() {
  if (!state.dialogId) return;
  $('ask-human').disabled = true;
  try {
    const ack = await state.client.request({ type: 'handoff_request', dialog_id: state.dialogId, reason: 'asked in the chat widget' });
    if (!ack.operator_id && state.phase === 'assistant') {
      state.phase = 'queued';
      state.position = ack.position;
      state.wait = ack.estimated_wait_time;
      save();
    }
    state.needsHuman = false;
  } catch (err) {
    showError(err.code === 'handoff_exists' ? 'A person is already on the way.' : `Could not ask for a person: ${err.message}`);
  } finally {
    $('ask-human').disabled = false;
    render();
  }
}

async function cancelHandoff() {
  try {
    await state.client.request({ type: 'cancel_handoff', dialog_id: state.dialogId });
  } catch (err) {
    showError(`Could not stop waiting: ${err.message}`);
  }
}

let typingSentAt = 0;
let typingIdle = null;

function typed() {
  if (state.phase !== 'operator' || !state.dialogId) return;
  const now = Date.now();
  if (now - typingSentAt > TYPING_REPEAT_MS) {
    typingSentAt = now;
    state.client.send({ type: 'typing', dialog_id: state.dialogId, is_typing: true });
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdle);
  if (typingSentAt === 0 || !state.dialogId) return;
  typingSentAt = 0;
  state.client.send({ type: 'typing', dialog_id: state.dialogId, is_typing: false });
}

// ---------------------------------------------------------------- rendering

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(text) {
  $('error').textContent = text;
  setTimeout(() => { if ($('error').textContent === text) $('error').textContent = ''; }, 8000);
}

/** A line about the conversation (not a message: not stored, not counted). */
function note(text, className = '') {
  const item = el('li', `note ${className}`.trim(), text);
  $('messages').append(item);
  scrollDown();
}

function scrollDown() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

function renderConnection(s) {
  const dot = $('connection');
  dot.dataset.state = s;
  const labels = { connecting: 'Connecting', open: 'Connected', reconnecting: 'Reconnecting', closed: 'Disconnected' };
  dot.setAttribute('aria-label', labels[s] || s);
  dot.title = labels[s] || s;
  render();
}

function senderName(m) {
  if (m.sender === 'user') return 'You';
  if (m.sender === 'assistant') return 'Assistant';
  return state.names[m.sender_id] || 'Operator';
}

function renderMessages() {
  const list = $('messages');
  const notes = [...list.querySelectorAll('li.note')];
  const sorted = [...state.messages.values()].sort((a, b) => a.message_id - b.message_id);
  let lastSeen = 0;
  for (const m of sorted) if (m.sender === 'user' && m.message_id <= state.readByOperator) lastSeen = m.message_id;
  const items = sorted.map((m) => {
    const item = el('li', `message from-${m.sender}`);
    item.dataset.messageId = m.message_id;
    item.append(el('span', 'who', senderName(m)), el('p', 'text', m.message));
    if (m.message_id === lastSeen) item.append(el('span', 'receipt', 'Seen'));
    return item;
  });
  for (const p of state.pending) {
    const item = el('li', `message from-user pending${p.failed ? ' failed' : ''}`);
    item.append(el('span', 'who', 'You'), el('p', 'text', p.message), el('span', 'receipt', p.failed ? `Not sent: ${p.failed}` : 'Sending…'));
    items.push(item);
  }
  // Notes stay after the messages they followed.
  list.replaceChildren(...items, ...notes);
  $('empty').hidden = items.length > 0;
  scrollDown();
}

function renderTyping() {
  const typing = $('typing');
  const name = state.operator ? state.operator.name : 'The operator';
  typing.hidden = !state.operatorTyping;
  typing.textContent = state.operatorTyping ? `${name} is typing…` : '';
}

function minutes(secs) {
  if (secs === null || secs === undefined) return null;
  if (secs < 60) return 'under a minute';
  const m = Math.ceil(secs / 60);
  return `about ${m} minute${m === 1 ? '' : 's'}`;
}

function render() {
  const who = $('who');
  if (state.phase === 'operator' && state.operator) who.textContent = `You are talking to ${state.operator.name}`;
  else if (state.phase === 'queued') who.textContent = 'Waiting for a person';
  else who.textContent = 'Assistant';

  const waiting = $('waiting');
  waiting.hidden = state.phase !== 'queued';
  if (state.phase === 'queued') {
    const parts = [];
    parts.push(state.position ? `You are number ${state.position} in the queue.` : 'You are in the queue.');
    const wait = minutes(state.wait);
    if (wait) parts.push(`Estimated wait: ${wait}.`);
    else if (state.wait === null) parts.push('No operator is online right now; you keep your place.');
    waiting.textContent = parts.join(' ');
    waiting.dataset.position = state.position ?? '';
  }
  const ask = $('ask-human');
  ask.hidden = !(state.dialogId && state.phase === 'assistant');
  ask.classList.toggle('suggested', state.needsHuman);
  $('cancel-handoff').hidden = state.phase !== 'queued';
  renderTyping();
}

// ---------------------------------------------------------------- wiring

function wire() {
  const params = new URLSearchParams(location.search);
  if (params.get('title')) {
    $('title').textContent = params.get('title');
    document.title = params.get('title');
  }
  const input = $('input');
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  input.addEventListener('input', () => { if (input.value) typed(); });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !state.client) return;
    input.value = '';
    send(text);
  });
  $('ask-human').addEventListener('click', askForHuman);
  $('cancel-handoff').addEventListener('click', cancelHandoff);
  document.addEventListener('visibilitychange', markRead);
}

wire();
readFragment();
if (!state.token) state.token = sessionStorage.getItem(TOKEN_KEY);
if (state.token) start();
if (embedded) window.parent.postMessage({ type: 'chatai:ready' }, '*');
else if (!state.token) showError('No token: open the widget as /widget#token=<jwt>, or embed it with /web/widget/embed.js.');
