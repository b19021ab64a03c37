// The client over Server-Sent Events against a real gateway: the stream
// read with fetch, client frames by POST /api/frames, resume with
// Last-Event-ID after a dropped stream, and `auto`'s fallback when no
// WebSocket can be opened.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bounded, client, controlledWebSocket, FAQ, fetch, freshId, mint, once, rawUser, recorder } from './support.mjs';

/**
 * A fetch that records each `/sse` request, can drop the latest stream
 * (`kill`), and fails every `/sse` request while `offline`.
 */
function controlledFetch() {
  const control = { streams: [], offline: false };
  control.fetch = (url, init = {}) => {
    if (!String(url).endsWith('/sse')) return fetch(url, init);
    if (control.offline) return Promise.reject(new TypeError('network is down'));
    const abort = new AbortController();
    init.signal?.addEventListener('abort', () => abort.abort());
    control.streams.push({ headers: { ...init.headers }, abort });
    return fetch(url, { ...init, signal: abort.signal });
  };
  control.kill = () => control.streams.at(-1).abort.abort();
  return control;
}

test('over SSE: connected on the stream, a chat_message posted and acked, the ai_response on the stream', async (t) => {
  const sub = freshId();
  const chat = client({ token: mint(sub), transport: 'sse' });
  t.after(() => chat.close());
  const frames = recorder(chat);

  const connected = await bounded(chat.connect(), 'connect');
  assert.equal(connected.user_id, sub);
  assert.equal(chat.transport, 'sse');
  const ack = await chat.request({ type: 'chat_message', message: FAQ });
  assert.equal(ack.type, 'ack');
  const answer = await frames.waitFor((f) => f.type === 'ai_response' && f.dialog_id === ack.dialog_id, 'ai_response');
  assert.equal(chat.cursor, answer.cursor);

  await assert.rejects(chat.request({ type: 'chat_message', dialog_id: 1_999_999_999, message: 'x' }), { code: 'dialog_not_found' });
  assert.equal(chat.state, 'open');
});

test('over SSE: a dropped stream resumes with Last-Event-ID and gets what it missed, once', async (t) => {
  const sub = freshId();
  const control = controlledFetch();
  const chat = client({ token: mint(sub), transport: 'sse', fetch: control.fetch });
  t.after(() => chat.close());
  const frames = recorder(chat);
  await bounded(chat.connect(), 'connect');
  const first = await chat.request({ type: 'chat_message', message: FAQ });
  const firstAnswer = await frames.waitFor((f) => f.type === 'ai_response' && f.dialog_id === first.dialog_id);
  const cursorBeforeDrop = chat.cursor;

  control.offline = true;
  control.kill();
  await once(chat, 'state', (state) => state === 'reconnecting');
  const other = await rawUser(sub);
  t.after(() => other.close());
  other.send({ type: 'chat_message', id: 'other-1', dialog_id: first.dialog_id, message: 'And on the app?' });
  const missed = await other.waitFor((f) => f.type === 'ai_response' && f.dialog_id === first.dialog_id);

  control.offline = false;
  const reconnected = await frames.waitFor((f) => f.type === 'connected' && f !== frames.of('connected')[0], 'a second connected');
  assert.equal(reconnected.recovered, true);
  assert.equal(control.streams.at(-1).headers['Last-Event-ID'], cursorBeforeDrop);
  await frames.waitFor((f) => f.type === 'ai_response' && f.event_id === missed.event_id, 'the missed ai_response');
  assert.deepEqual(
    frames.of('ai_response').map((f) => f.event_id),
    [firstAnswer.event_id, missed.event_id],
  );
});

test('auto: when no WebSocket can be opened, the client falls back to SSE', async (t) => {
  const sub = freshId();
  const control = controlledWebSocket();
  control.offline = true; // every WebSocket goes nowhere
  const chat = client({ token: mint(sub), transport: 'auto', WebSocket: control.WebSocket });
  t.after(() => chat.close());
  const frames = recorder(chat);

  await bounded(chat.connect(), 'connect');
  assert.equal(chat.transport, 'sse');
  assert.ok(control.sockets.length >= 1, 'a WebSocket was tried first');
  const ack = await chat.request({ type: 'chat_message', message: FAQ });
  await frames.waitFor((f) => f.type === 'ai_response' && f.dialog_id === ack.dialog_id, 'ai_response');
});

test('auto: with WebSockets working, the client uses them', async (t) => {
  const chat = client({ token: mint(freshId()), transport: 'auto' });
  t.after(() => chat.close());
  await bounded(chat.connect(), 'connect');
  assert.equal(chat.transport, 'websocket');
});
