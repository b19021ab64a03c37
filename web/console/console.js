// The operator console (`/console`): sign in with a token, then, for an
// operator, the live queue, the team, the dialogs one holds (history,
// transcript, replies, typing, read receipts, complete, transfer, claim);
// for an admin, the live analytics and the system-alert form.
//
// Plain ES module on the gateway's JavaScript client (`/web/chatai.js`); the
// frames and their fields are those of docs/protocol.md. State lives in the
// plain objects below and is drawn into the page by the `render*` functions;
// nothing else writes to the DOM.

import { ChatClient } from '/web/chatai.js';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'chatai.console.token';
const DEV_KEY = 'chatai.console.dev';
const PRIORITY_RANK = { urgent: 0, high: 1, normal: 2, low: 3 };
const METRICS = ['active_connections', 'active_users', 'online_operators', 'messages_per_minute'];
const CHART_WINDOW_MS = 10 * 60 * 1000;
const TYPING_IDLE_MS = 2500;
const TYPING_REPEAT_MS = 3000;
const TYPING_SHOWN_MS = 6000;

/** Everything the console knows; drawn by the render functions. */
const state = {
  me: null, // { id, role, name, exp }
  token: null,
  dev: null, // { sub, role, name } when signed in with a development token
  client: null,
  queue: [], // [{ handoff_id, dialog_id, user_id, reason, priority, enteredAt }] in queue order
  queueVersion: -1,
  maxHandoffSeen: 0,
  roster: new Map(), // operator_id -> operator_status_change fields
  rosterVersion: -1,
  dialogs: new Map(), // dialog_id -> Dialog
  selected: null, // dialog_id
  metrics: new Map(), // metric -> [{ t, v }]
  lastChange: new Map(), // metric -> change
};

// ---------------------------------------------------------------- tokens

/** The claims of a JWT, read without checking it (the gateway checks). */
function claimsOf(token) {
  const part = token.split('.')[1];
  if (!part) throw new Error('not a JWT');
  const base64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const claims = JSON.parse(new TextDecoder().decode(bytes));
  const id = Number(claims.sub);
  if (!Number.isInteger(id) || id <= 0) throw new Error('the token has no numeric sub');
  if (!['operator', 'admin'].includes(claims.role)) {
    throw new Error(`the console is for operators and admins; this token's role is ${claims.role}`);
  }
  return { id, role: claims.role, name: claims.name || null, exp: claims.exp };
}

async function devToken({ sub, role, name }) {
  const query = new URLSearchParams({ sub, role });
  if (name) query.set('name', name);
  const response = await fetch(`/api/dev/token?${query}`);
  if (!response.ok) throw new Error(`the development token endpoint answered ${response.status}`);
  const body = await response.json();
  return body.token;
}

/** A token for the client: a fresh development token when signed in with one. */
async function currentToken() {
  if (state.dev) {
    state.token = await devToken(state.dev);
    sessionStorage.setItem(TOKEN_KEY, state.token);
  }
  return state.token;
}

// ---------------------------------------------------------------- sign in / out

async function signIn(token, dev = null) {
  const me = claimsOf(token.trim());
  state.me = me;
  state.token = token.trim();
  state.dev = dev;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  if (dev) sessionStorage.setItem(DEV_KEY, JSON.stringify(dev));
  else sessionStorage.removeItem(DEV_KEY);
  $('sign-in').hidden = true;
  $('me').hidden = false;
  $('me-name').textContent = `${me.name || `#${me.id}`} (${me.role} #${me.id})`;
  $('status-toggle').hidden = me.role !== 'operator';
  $('operator-view').hidden = me.role !== 'operator';
  $('admin-view').hidden = me.role !== 'admin';
  if (me.role === 'admin') renderCharts();
  await start();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(DEV_KEY);
  if (state.client) state.client.close();
  location.reload();
}

function showSignIn(message = '') {
  $('sign-in').hidden = false;
  $('me').hidden = true;
  $('operator-view').hidden = true;
  $('admin-view').hidden = true;
  $('sign-in-error').textContent = message;
  $('token-input').focus();
  // The development shortcut is offered only when the endpoint answers.
  fetch('/api/dev/token?sub=1&role=operator')
    .then((response) => { $('dev-form').hidden = !response.ok; })
    .catch(() => { $('dev-form').hidden = true; });
}

// ---------------------------------------------------------------- connection

async function start() {
  const client = new ChatClient({
    baseUrl: location.origin,
    getToken: currentToken,
    role: state.me.role,
    transport: 'auto',
  });
  state.client = client;
  client.on('state', renderConnection);
  client.on('connected', onConnected);
  client.on('queue_snapshot', onQueueSnapshot);
  client.on('handoff_request', onHandoffRequest);
  client.on('handoff_dequeued', onHandoffDequeued);
  client.on('operators_snapshot', onOperatorsSnapshot);
  client.on('operator_status_change', onOperatorStatus);
  client.on('operator_assigned', onOperatorAssigned);
  client.on('chat_message', onUserMessage);
  client.on('typing', onTyping);
  client.on('read', onRead);
  client.on('handoff_completed', onHandoffCompleted);
  client.on('analytics_snapshot', onAnalyticsSnapshot);
  client.on('analytics_update', onAnalyticsUpdate);
  client.on('system_alert', onSystemAlert);
  client.on('error', onErrorFrame);
  try {
    await client.connect();
  } catch (err) {
    client.close();
    state.client = null;
    showSignIn(`Could not connect: ${err.message || err}`);
  }
}

function onConnected(frame) {
  // Snapshots follow `connected` on every (re)connection: they replace what
  // the console held. Dialogs are listed again and their history reread.
  state.queueVersion = -1;
  state.rosterVersion = -1;
  if (state.me.role === 'operator') loadDialogs().catch((err) => notify(`Could not list dialogs: ${err.message}`));
  return frame;
}

function onErrorFrame(frame) {
  if (frame.ref) return; // a reply to a request: the request's caller shows it
  if (frame.code === 'cursor_expired') {
    for (const dialog of state.dialogs.values()) loadHistory(dialog).catch(() => {});
    return;
  }
  notify(`${frame.code}: ${frame.message}`);
}

async function request(frame) {
  try {
    return await state.client.request(frame);
  } catch (err) {
    notify(err.code ? `${err.code}: ${err.message}` : `${err.message || err}`);
    throw err;
  }
}

// ---------------------------------------------------------------- queue

function onQueueSnapshot(frame) {
  state.queueVersion = frame.version ?? 0;
  const now = Date.now();
  state.queue = frame.handoffs.map((h) => ({ ...h, enteredAt: now - (h.waiting_secs || 0) * 1000 }));
  for (const h of state.queue) state.maxHandoffSeen = Math.max(state.maxHandoffSeen, h.handoff_id);
  renderQueue();
}

function onHandoffRequest(frame) {
  if (frame.version !== undefined && frame.version <= state.queueVersion) return;
  state.queue = state.queue.filter((h) => h.handoff_id !== frame.handoff_id);
  const entry = { ...frame, enteredAt: Date.now() };
  // A handoff coming back (an id seen before) goes to the front of its
  // priority; a new one behind everyone of its priority.
  const back = frame.handoff_id <= state.maxHandoffSeen;
  state.maxHandoffSeen = Math.max(state.maxHandoffSeen, frame.handoff_id);
  const rank = PRIORITY_RANK[frame.priority] ?? 2;
  let at = state.queue.findIndex((h) => {
    const other = PRIORITY_RANK[h.priority] ?? 2;
    return back ? other >= rank : other > rank;
  });
  if (at < 0) at = state.queue.length;
  state.queue.splice(at, 0, entry);
  renderQueue();
}

function onHandoffDequeued(frame) {
  if (frame.version !== undefined && frame.version <= state.queueVersion) return;
  state.queue = state.queue.filter((h) => h.handoff_id !== frame.handoff_id);
  renderQueue();
}

async function claim(dialogId) {
  await request({ type: 'claim_handoff', dialog_id: dialogId }).catch(() => {});
}

// ---------------------------------------------------------------- roster and own status

function onOperatorsSnapshot(frame) {
  state.rosterVersion = frame.version ?? 0;
  state.roster = new Map(frame.operators.map((o) => [o.operator_id, o]));
  renderRoster();
}

function onOperatorStatus(frame) {
  if (frame.version !== undefined && frame.version <= state.rosterVersion) return;
  const known = state.roster.get(frame.operator_id) || {};
  state.roster.set(frame.operator_id, { ...known, ...frame });
  renderRoster();
}

async function chooseStatus(status) {
  try {
    await request({ type: 'set_status', status });
  } catch {
    renderRoster(); // back to what the server says
  }
}

// ---------------------------------------------------------------- dialogs

/** One dialog the operator holds (or held, until closed in the console). */
function dialogFor(dialogId, fields = {}) {
  let dialog = state.dialogs.get(dialogId);
  if (!dialog) {
    dialog = {
      id: dialogId,
      userId: null,
      reason: '',
      priority: '',
      held: true,
      ended: null,
      messages: new Map(), // message_id -> { message_id, sender, sender_id, message, timestamp }
      pending: [], // [{ key, message, failed }]
      typing: false,
      typingTimer: null,
      readByUser: 0,
      readByMe: 0,
      unread: 0,
    };
    state.dialogs.set(dialogId, dialog);
  }
  Object.assign(dialog, fields);
  return dialog;
}

async function loadDialogs() {
  const ack = await request({ type: 'list_dialogs', limit: 100 });
  for (const listed of ack.dialogs) {
    if (listed.state !== 'operator' || listed.operator_id !== state.me.id) continue;
    const dialog = dialogFor(listed.dialog_id, { userId: listed.user_id, held: true, ended: null });
    loadHistory(dialog).catch(() => {});
  }
  if (state.selected === null && state.dialogs.size > 0) select(state.dialogs.keys().next().value);
  renderDialogs();
}

async function loadHistory(dialog) {
  const ack = await state.client.request({ type: 'get_history', dialog_id: dialog.id, limit: 100 });
  mergeMessages(dialog, ack.messages);
}

/** Adds the messages not held yet (by `message_id`); returns how many. */
function mergeMessages(dialog, messages) {
  let added = 0;
  for (const m of messages || []) {
    if (!dialog.messages.has(m.message_id)) {
      dialog.messages.set(m.message_id, m);
      added += 1;
    }
  }
  renderDialogs();
  if (state.selected === dialog.id) renderConversation();
  return added;
}

function onOperatorAssigned(frame) {
  if (frame.operator_id !== state.me.id) return;
  const fresh = !state.dialogs.has(frame.dialog_id) || !state.dialogs.get(frame.dialog_id).held;
  const dialog = dialogFor(frame.dialog_id, {
    userId: frame.user_id,
    reason: frame.reason || '',
    priority: frame.priority || '',
    held: true,
    ended: null,
    transferredFrom: frame.transferred_from || null,
  });
  if (frame.transcript) mergeMessages(dialog, frame.transcript);
  else loadHistory(dialog).catch(() => {});
  if (fresh) notify(`Dialog ${dialog.id} is yours${frame.transferred_from ? ` (from operator ${frame.transferred_from})` : ''}.`);
  if (state.selected === null || fresh) select(dialog.id);
  renderDialogs();
}

function onUserMessage(frame) {
  const dialog = state.dialogs.get(frame.dialog_id);
  if (!dialog) return;
  dialog.typing = false;
  const added = mergeMessages(dialog, [{
    message_id: frame.message_id,
    sender: 'user',
    sender_id: frame.user_id,
    message: frame.message,
    timestamp: frame.timestamp,
  }]);
  if (added > 0 && state.selected !== dialog.id) {
    dialog.unread += added;
    renderDialogs();
  }
  markRead(dialog);
}

function onTyping(frame) {
  const dialog = state.dialogs.get(frame.dialog_id);
  if (!dialog || frame.user_id === undefined) return;
  dialog.typing = Boolean(frame.is_typing);
  clearTimeout(dialog.typingTimer);
  if (dialog.typing) {
    dialog.typingTimer = setTimeout(() => { dialog.typing = false; renderTyping(); }, TYPING_SHOWN_MS);
  }
  renderTyping();
}

function onRead(frame) {
  const dialog = state.dialogs.get(frame.dialog_id);
  if (!dialog || frame.reader !== 'user') return;
  dialog.readByUser = Math.max(dialog.readByUser, frame.message_id);
  if (state.selected === dialog.id) renderConversation();
}

function onHandoffCompleted(frame) {
  const dialog = state.dialogs.get(frame.dialog_id);
  if (!dialog || frame.operator_id !== state.me.id) return;
  dialog.held = false;
  const outcome = frame.outcome || 'completed';
  dialog.ended = outcome === 'completed'
    ? `Completed: ${frame.resolution || ''}`
    : outcome === 'transferred' ? 'Transferred' : `Ended (${frame.resolution || outcome})`;
  dialog.typing = false;
  renderDialogs();
  if (state.selected === dialog.id) renderConversation();
}

function select(dialogId) {
  state.selected = dialogId;
  const dialog = state.dialogs.get(dialogId);
  if (dialog) {
    dialog.unread = 0;
    markRead(dialog);
  }
  renderDialogs();
  renderConversation();
}

/** Tells the user how far the operator has read (the newest user message). */
function markRead(dialog) {
  if (state.selected !== dialog.id || document.hidden || !dialog.held) return;
  let newest = 0;
  for (const m of dialog.messages.values()) if (m.sender === 'user' && m.message_id > newest) newest = m.message_id;
  if (newest <= dialog.readByMe) return;
  dialog.readByMe = newest;
  state.client.request({ type: 'mark_read', dialog_id: dialog.id, message_id: newest }).catch(() => {});
}

let pendingKey = 0;

async function sendReply(dialog, text) {
  const pending = { key: ++pendingKey, message: text, failed: null };
  dialog.pending.push(pending);
  stopTyping(dialog);
  renderConversation();
  try {
    const ack = await state.client.request({ type: 'chat_message', dialog_id: dialog.id, message: text });
    dialog.pending = dialog.pending.filter((p) => p !== pending);
    mergeMessages(dialog, [{
      message_id: ack.message_id,
      sender: 'operator',
      sender_id: state.me.id,
      message: text,
      timestamp: ack.timestamp,
    }]);
  } catch (err) {
    pending.failed = err.code || err.message || 'not sent';
    renderConversation();
  }
}

// Typing, outgoing: `is_typing: true` at the first key and every few seconds
// while typing, `false` once idle or sent.
let typingSentAt = 0;
let typingIdle = null;

function typed(dialog) {
  const now = Date.now();
  if (now - typingSentAt > TYPING_REPEAT_MS) {
    typingSentAt = now;
    state.client.send({ type: 'typing', dialog_id: dialog.id, is_typing: true });
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(() => stopTyping(dialog), TYPING_IDLE_MS);
}

function stopTyping(dialog) {
  clearTimeout(typingIdle);
  if (typingSentAt === 0) return;
  typingSentAt = 0;
  state.client.send({ type: 'typing', dialog_id: dialog.id, is_typing: false });
}

// ---------------------------------------------------------------- admin: analytics and alerts

function onAnalyticsSnapshot(frame) {
  const now = Date.now();
  for (const [metric, value] of Object.entries(frame.metrics || {})) pushPoint(metric, now, value);
  renderCharts();
}

function onAnalyticsUpdate(frame) {
  pushPoint(frame.metric, Date.now(), frame.value);
  state.lastChange.set(frame.metric, frame.change);
  renderCharts();
}

function pushPoint(metric, t, v) {
  const series = state.metrics.get(metric) || [];
  series.push({ t, v: Number(v) || 0 });
  // Keep one point older than the window: the line starts at its value.
  while (series.length > 2 && series[1].t < t - CHART_WINDOW_MS) series.shift();
  state.metrics.set(metric, series);
}

async function sendAlert(event) {
  event.preventDefault();
  const body = {
    message: $('alert-message').value.trim(),
    severity: $('alert-severity').value,
    affected_services: [...document.querySelectorAll('#alert-form input[name=service]:checked')].map((c) => c.value),
  };
  const result = $('alert-result');
  result.textContent = 'Sending…';
  try {
    const response = await fetch('/api/alerts', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${await currentToken()}` },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      result.textContent = `Not sent: ${error.message || error.error || response.status}`;
      return;
    }
    result.textContent = `Sent at ${new Date().toLocaleTimeString()}.`;
    $('alert-message').value = '';
  } catch (err) {
    result.textContent = `Not sent: ${err.message}`;
  }
}

function onSystemAlert(frame) {
  const item = document.createElement('div');
  item.className = `alert alert-${frame.severity}`;
  item.setAttribute('role', frame.severity === 'critical' ? 'alert' : 'status');
  const text = document.createElement('span');
  const services = (frame.affected_services || []).join(', ');
  text.textContent = `${frame.severity.toUpperCase()}: ${frame.message}${services ? ` (${services})` : ''}`;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'quiet';
  close.textContent = 'Dismiss';
  close.setAttribute('aria-label', `Dismiss alert: ${frame.message}`);
  close.addEventListener('click', () => item.remove());
  item.append(text, close);
  $('alerts').prepend(item);
}

// ---------------------------------------------------------------- rendering

let noticeTimer = null;

function notify(text) {
  const notice = $('notice');
  notice.textContent = text;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 6000);
}

function renderConnection(s) {
  const labels = { connecting: 'Connecting…', open: 'Connected', reconnecting: 'Reconnecting…', closed: 'Disconnected' };
  const el = $('connection');
  el.dataset.state = s;
  el.textContent = labels[s] || s;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function formatWait(ms) {
  const secs = Math.max(0, Math.floor(ms / 1000));
  const m = Math.floor(secs / 60);
  const s = secs % 60;
  return m > 0 ? `${m}m ${String(s).padStart(2, '0')}s` : `${s}s`;
}

function operatorName(id) {
  const o = state.roster.get(id);
  return (o && o.name) || `Operator ${id}`;
}

/**
 * Redraws `container` with `draw`, keeping keyboard focus on the element
 * with the same `data-focus-key` if it is still there.
 */
function redraw(container, draw) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focusKey : undefined;
  draw();
  if (key !== undefined) {
    const again = container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

function renderQueue() {
  redraw($('queue'), drawQueue);
  $('queue-count').textContent = String(state.queue.length);
  $('queue-empty').hidden = state.queue.length > 0;
}

function drawQueue() {
  const body = $('queue').tBodies[0];
  const now = Date.now();
  const rows = state.queue.map((h, index) => el('tr', { dataset: { dialogId: h.dialog_id, handoffId: h.handoff_id } },
    el('td', { className: 'position' }, String(index + 1)),
    el('td', {}, el('span', { className: `priority priority-${h.priority}` }, h.priority)),
    el('td', { title: h.reason || '' },
      el('span', { className: 'dialog-ref' }, `Dialog ${h.dialog_id}`),
      el('span', { className: 'sub' }, ` user ${h.user_id}${h.reason ? ` · ${h.reason}` : ''}`)),
    el('td', { className: 'waiting', dataset: { since: h.enteredAt } }, formatWait(now - h.enteredAt)),
    el('td', {}, el('button', {
      type: 'button',
      className: 'claim',
      textContent: 'Claim',
      dataset: { focusKey: `claim-${h.dialog_id}` },
      'aria-label': `Claim dialog ${h.dialog_id} (user ${h.user_id}, ${h.priority})`,
      onclick: () => claim(h.dialog_id),
    }))));
  body.replaceChildren(...rows);
}

/** Moves the waiting times on without redrawing the rows (focus stays put). */
function tickWaiting() {
  const now = Date.now();
  for (const cell of document.querySelectorAll('#queue td.waiting')) {
    cell.textContent = formatWait(now - Number(cell.dataset.since));
  }
}

function renderRoster() {
  const operators = [...state.roster.values()].sort((a, b) =>
    (b.online === true) - (a.online === true) || String(a.name).localeCompare(String(b.name)));
  const rows = operators.map((o) => el('tr', { dataset: { operatorId: o.operator_id }, className: o.operator_id === state.me.id ? 'self' : '' },
    el('th', { scope: 'row' }, o.name || `Operator ${o.operator_id}`, o.operator_id === state.me.id ? el('span', { className: 'sub' }, ' (you)') : null),
    el('td', {}, el('span', { className: `status status-${o.status}` }, o.status)),
    el('td', { className: 'load' }, `${o.active_handoffs ?? 0}/${o.max_handoffs ?? '?'}`)));
  $('roster').tBodies[0].replaceChildren(...rows);

  const self = state.roster.get(state.me.id);
  if (self) {
    const chosen = self.chosen_status || self.status;
    for (const radio of document.querySelectorAll('#status-toggle input')) radio.checked = radio.value === chosen;
    $('effective-status').textContent = self.status !== chosen ? `now ${self.status}` : '';
  }
  renderTransferTargets();
}

function renderDialogs() {
  redraw($('dialog-list'), drawDialogs);
  $('dialogs-empty').hidden = state.dialogs.size > 0;
}

function drawDialogs() {
  const items = [...state.dialogs.values()].map((d) => {
    const last = [...d.messages.values()].sort((a, b) => b.message_id - a.message_id)[0];
    return el('li', {},
      el('button', {
        type: 'button',
        className: `dialog-item${d.held ? '' : ' ended'}`,
        'aria-current': state.selected === d.id ? 'true' : 'false',
        dataset: { dialogId: d.id, focusKey: `dialog-${d.id}` },
        onclick: () => select(d.id),
      },
      el('span', { className: 'title' }, `Dialog ${d.id}`, d.userId ? el('span', { className: 'sub' }, ` · user ${d.userId}`) : null),
      el('span', { className: 'preview' }, d.ended || (last ? last.message : 'No messages yet')),
      d.unread > 0 ? el('span', { className: 'badge', 'aria-label': `${d.unread} unread` }, String(d.unread)) : null));
  });
  $('dialog-list').replaceChildren(...items);
}

function senderLabel(m) {
  if (m.sender === 'assistant') return 'Assistant';
  if (m.sender === 'user') return `User ${m.sender_id ?? ''}`.trim();
  if (m.sender_id === state.me.id) return 'You';
  return operatorName(m.sender_id);
}

function renderConversation() {
  const dialog = state.dialogs.get(state.selected);
  $('conversation').hidden = !dialog;
  if (!dialog) return;
  $('conversation-title').textContent = `Dialog ${dialog.id}${dialog.userId ? ` with user ${dialog.userId}` : ''}`;
  const meta = [];
  if (dialog.priority) meta.push(`priority ${dialog.priority}`);
  if (dialog.reason) meta.push(`reason: ${dialog.reason}`);
  if (dialog.transferredFrom) meta.push(`transferred from ${operatorName(dialog.transferredFrom)}`);
  $('conversation-meta').textContent = meta.join(' · ');

  const sorted = [...dialog.messages.values()].sort((a, b) => a.message_id - b.message_id);
  let lastMineRead = 0;
  for (const m of sorted) if (m.sender === 'operator' && m.message_id <= dialog.readByUser) lastMineRead = m.message_id;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const items = sorted.map((m) => el('li', { className: `message from-${m.sender}`, dataset: { messageId: m.message_id } },
    el('span', { className: 'who' }, senderLabel(m)),
    el('time', { dateTime: m.timestamp || '' }, m.timestamp ? new Date(m.timestamp).toLocaleTimeString() : ''),
    el('p', { className: 'text' }, m.message),
    m.message_id === lastMineRead ? el('span', { className: 'receipt' }, 'Read') : null));
  for (const p of dialog.pending) {
    items.push(el('li', { className: `message from-operator pending${p.failed ? ' failed' : ''}` },
      el('span', { className: 'who' }, 'You'),
      el('p', { className: 'text' }, p.message),
      el('span', { className: 'receipt' }, p.failed ? `Not sent (${p.failed})` : 'Sending…')));
  }
  list.replaceChildren(...items);
  if (atBottom) list.scrollTop = list.scrollHeight;
  renderTyping();

  $('ended').hidden = dialog.held;
  $('ended').textContent = dialog.ended ? `${dialog.ended}. ` : '';
  if (!dialog.held) {
    $('ended').append(el('button', { type: 'button', className: 'quiet', textContent: 'Close this dialog', onclick: () => closeDialog(dialog.id) }));
  }
  for (const form of ['composer', 'complete-form', 'transfer-form']) {
    for (const control of $(form).elements) control.disabled = !dialog.held;
  }
}

function closeDialog(dialogId) {
  state.dialogs.delete(dialogId);
  state.selected = state.dialogs.size > 0 ? state.dialogs.keys().next().value : null;
  renderDialogs();
  renderConversation();
}

function renderTyping() {
  const dialog = state.dialogs.get(state.selected);
  const typing = $('typing');
  typing.hidden = !(dialog && dialog.typing);
  typing.textContent = dialog && dialog.typing ? `User ${dialog.userId ?? ''} is typing…` : '';
}

function renderTransferTargets() {
  const select = $('transfer-to');
  const chosen = select.value;
  const options = [el('option', { value: '' }, 'Back to the queue')];
  for (const o of state.roster.values()) {
    if (o.operator_id === state.me.id) continue;
    options.push(el('option', {
      value: String(o.operator_id),
      disabled: !o.online,
    }, `${o.name || `Operator ${o.operator_id}`} — ${o.status}, ${o.active_handoffs ?? 0}/${o.max_handoffs ?? '?'}`));
  }
  select.replaceChildren(...options);
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : '';
}

function renderCharts() {
  const now = Date.now();
  const cards = METRICS.map((metric) => {
    const series = state.metrics.get(metric) || [];
    const current = series.length ? series[series.length - 1].v : null;
    return el('figure', { className: 'chart', dataset: { metric } },
      el('figcaption', {},
        el('span', { className: 'name' }, metric.replace(/_/g, ' ')),
        el('span', { className: 'value' }, current === null ? '–' : String(current)),
        state.lastChange.has(metric) ? el('span', { className: 'change' }, String(state.lastChange.get(metric))) : null),
      sparkline(series, now, `${metric.replace(/_/g, ' ')} over the last 10 minutes`));
  });
  $('charts').replaceChildren(...cards);
}

/** An inline SVG step line of `series` over the last ten minutes. */
function sparkline(series, now, label) {
  const W = 260;
  const H = 70;
  const PAD = 4;
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const base = document.createElementNS(NS, 'line');
  Object.entries({ x1: 0, x2: W, y1: H - PAD, y2: H - PAD, class: 'axis' }).forEach(([k, v]) => base.setAttribute(k, v));
  svg.append(base);
  if (series.length === 0) return svg;
  const from = now - CHART_WINDOW_MS;
  const max = Math.max(1, ...series.map((p) => p.v));
  const x = (t) => PAD + ((Math.max(t, from) - from) / CHART_WINDOW_MS) * (W - 2 * PAD);
  const y = (v) => H - PAD - (v / max) * (H - 2 * PAD);
  const points = [];
  series.forEach((p, i) => {
    if (i > 0) points.push(`${x(p.t)},${y(series[i - 1].v)}`);
    points.push(`${x(p.t)},${y(p.v)}`);
  });
  points.push(`${x(now)},${y(series[series.length - 1].v)}`);
  const line = document.createElementNS(NS, 'polyline');
  line.setAttribute('points', points.join(' '));
  line.setAttribute('class', 'line');
  const top = document.createElementNS(NS, 'text');
  top.setAttribute('x', PAD);
  top.setAttribute('y', 10);
  top.setAttribute('class', 'scale');
  top.textContent = `max ${max}`;
  svg.append(line, top);
  return svg;
}

// ---------------------------------------------------------------- wiring

function wire() {
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    signIn($('token-input').value).catch((err) => showSignIn(err.message));
  });
  $('dev-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = event.target;
    const dev = { sub: form.sub.value, role: form.role.value, name: form.name.value.trim() };
    try {
      await signIn(await devToken(dev), dev);
    } catch (err) {
      showSignIn(err.message);
    }
  });
  $('sign-out').addEventListener('click', signOut);
  $('status-toggle').addEventListener('change', (event) => chooseStatus(event.target.value));

  const reply = $('reply');
  reply.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  reply.addEventListener('input', () => {
    const dialog = state.dialogs.get(state.selected);
    if (dialog && dialog.held && reply.value) typed(dialog);
  });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const dialog = state.dialogs.get(state.selected);
    const text = reply.value.trim();
    if (!dialog || !text) return;
    reply.value = '';
    sendReply(dialog, text);
  });
  $('complete-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const dialog = state.dialogs.get(state.selected);
    if (!dialog) return;
    const resolution = $('resolution').value.trim();
    await request({ type: 'complete_handoff', dialog_id: dialog.id, resolution })
      .then(() => { $('resolution').value = ''; })
      .catch(() => {});
  });
  $('transfer-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const dialog = state.dialogs.get(state.selected);
    if (!dialog) return;
    const frame = { type: 'transfer_handoff', dialog_id: dialog.id };
    const to = $('transfer-to').value;
    if (to) frame.to_operator_id = Number(to);
    const reason = $('transfer-reason').value.trim();
    if (reason) frame.reason = reason;
    await request(frame).then(() => { $('transfer-reason').value = ''; }).catch(() => {});
  });
  $('alert-form').addEventListener('submit', sendAlert);
  document.addEventListener('visibilitychange', () => {
    const dialog = state.dialogs.get(state.selected);
    if (dialog) markRead(dialog);
  });
  setInterval(tickWaiting, 1000);
  setInterval(() => { if (state.me && state.me.role === 'admin') renderCharts(); }, 5000);
}

wire();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  let dev = null;
  try { dev = JSON.parse(sessionStorage.getItem(DEV_KEY) || 'null'); } catch { dev = null; }
  signIn(saved, dev).catch((err) => showSignIn(err.message));
} else {
  showSignIn();
}
