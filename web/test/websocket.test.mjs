// The client against a real gateway, over WebSocket: requests and acks,
// errors, refused tokens, resume after a drop, re-sent requests, token
// refresh (over SSE too).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bounded, client, controlledWebSocket, FAQ, freshId, mint, once, rawUser, recorder, WAIT_MS } from './support.mjs';

test('connects with the token in the subprotocol, gets the ack of a chat_message and the ai_response', async (t) => {
  const sub = freshId();
  const chat = client({ token: mint(sub), transport: 'websocket' });
  t.after(() => chat.close());
  const frames = recorder(chat);
  const states = [];
  chat.on('state', (state) => states.push(state));

  const connected = await bounded(chat.connect(), 'connect');
  assert.equal(connected.type, 'connected');
  assert.equal(connected.user_id, sub);
  assert.equal(chat.connectionId, connected.connection_id);
  assert.equal(chat.transport, 'websocket');
  assert.deepEqual(states, ['connecting', 'open']);

  const ack = await chat.request({ type: 'chat_message', message: FAQ });
  assert.equal(ack.type, 'ack');
  assert.equal(typeof ack.ref, 'string');
  assert.ok(ack.dialog_id > 0 && ack.message_id > 0);
  const answer = await frames.waitFor((f) => f.type === 'ai_response' && f.dialog_id === ack.dialog_id, 'ai_response');
  assert.match(answer.message, /password/i);
  assert.equal(chat.cursor, answer.cursor, 'the cursor follows the last durable event');

  chat.close();
  assert.equal(chat.state, 'closed');
});

test('a refused request rejects with the error frame and its code; the connection stays open', async (t) => {
  const chat = client({ token: mint(freshId()), transport: 'websocket' });
  t.after(() => chat.close());
  await bounded(chat.connect(), 'connect');

  const refused = { type: 'chat_message', id: 'not-mine-1', dialog_id: 1_999_999_999, message: 'hello?' };
  await assert.rejects(chat.request(refused), (err) => {
    assert.equal(err.code, 'dialog_not_found');
    assert.equal(err.frame.type, 'error');
    assert.equal(err.frame.ref, 'not-mine-1');
    return true;
  });
  await assert.rejects(chat.request({ type: 'no_such_frame' }), { code: 'unknown_type' });
  assert.equal(chat.state, 'open');
  const ack = await chat.request({ type: 'chat_message', message: FAQ });
  assert.equal(ack.type, 'ack');
});

test('a refused token ends the client: connect rejects with the reason, and it does not reconnect', async (t) => {
  const sub = freshId();
  const forged = client({ token: mint(sub, 'user', 3600, 'another-secret-of-at-least-32-bytes!!'), transport: 'websocket' });
  t.after(() => forged.close());
  const states = [];
  forged.on('state', (state) => states.push(state));
  await assert.rejects(forged.connect(), (err) => err.code === 'invalid_token' && err.closeCode === 1008);
  assert.deepEqual(states, ['connecting', 'closed']);

  // An operator's token on a user's endpoint.
  const wrongRole = client({ token: mint(sub, 'operator'), role: 'user', transport: 'websocket' });
  t.after(() => wrongRole.close());
  await assert.rejects(wrongRole.connect(), { code: 'unauthorized' });
  assert.equal(wrongRole.state, 'closed');
});

test('after a dropped connection it reconnects with the last cursor and gets what it missed, once', async (t) => {
  const sub = freshId();
  const control = controlledWebSocket();
  const chat = client({ token: mint(sub), transport: 'websocket', WebSocket: control.WebSocket });
  t.after(() => chat.close());
  const frames = recorder(chat);
  const states = [];
  chat.on('state', (state) => states.push(state));
  await bounded(chat.connect(), 'connect');
  const first = await chat.request({ type: 'chat_message', message: FAQ });
  const firstAnswer = await frames.waitFor((f) => f.type === 'ai_response' && f.dialog_id === first.dialog_id);
  const cursorBeforeDrop = chat.cursor;
  assert.equal(cursorBeforeDrop, firstAnswer.cursor);

  // The network breaks: the socket dies and reconnects fail until it is back.
  control.offline = true;
  control.kill();
  await once(chat, 'state', (state) => state === 'reconnecting');

  // Meanwhile the user's other device talks in the same dialog.
  const other = await rawUser(sub);
  t.after(() => other.close());
  other.send({ type: 'chat_message', id: 'other-1', dialog_id: first.dialog_id, message: 'Thanks! And how do I reset my password on the app?' });
  // The other device may also be handed the first answer (a connection
  // without a cursor gets what its user has not been seen to receive yet):
  // the answer it waits for is the new one.
  const missed = await other.waitFor(
    (f) => f.type === 'ai_response' && f.dialog_id === first.dialog_id && f.event_id !== firstAnswer.event_id,
  );

  control.offline = false;
  const reconnected = await frames.waitFor((f) => f.type === 'connected' && f.connection_id !== frames.of('connected')[0].connection_id, 'a second connected');
  assert.equal(reconnected.recovered, true);
  const lastUrl = new URL(control.urls.at(-1));
  assert.equal(lastUrl.searchParams.get('cursor'), cursorBeforeDrop, 'the reconnect resumes from the last cursor');
  await frames.waitFor((f) => f.type === 'ai_response' && f.event_id === missed.event_id, 'the missed ai_response');
  assert.equal(chat.state, 'open');
  assert.equal(chat.connectionId, reconnected.connection_id);

  const answers = frames.of('ai_response').map((f) => f.event_id);
  assert.deepEqual(answers, [firstAnswer.event_id, missed.event_id], 'each answer exactly once, in order');
  assert.equal(states[0], 'connecting');
  assert.deepEqual(states.slice(1), ['open', 'reconnecting', 'open']);
});

test('a request pending when the connection drops is sent again after the reconnect and stored once', async (t) => {
  const sub = freshId();
  const control = controlledWebSocket();
  const chat = client({ token: mint(sub), transport: 'websocket', WebSocket: control.WebSocket });
  t.after(() => chat.close());
  const frames = recorder(chat);
  await bounded(chat.connect(), 'connect');
  const firstConnection = chat.connectionId;

  const text = `pending across a drop ${freshId()}`;
  const answer = chat.request({ type: 'chat_message', message: text });
  control.kill(); // whether the server got it or not, the client sends it again
  const ack = await answer;
  assert.equal(ack.type, 'ack');
  assert.notEqual(chat.connectionId, firstConnection);

  const history = await chat.request({ type: 'get_history', dialog_id: ack.dialog_id });
  const copies = history.messages.filter((m) => m.sender === 'user' && m.message === text);
  assert.equal(copies.length, 1, 'the re-sent frame is stored once');
  assert.equal(frames.of('ack').filter((f) => f.ref === ack.ref && f.message_id !== ack.message_id).length, 0);
});

// Over SSE the refresh goes by POST /api/frames, naming the stream.
for (const transport of ['websocket', 'sse']) {
  test(`${transport}: refresh_token goes out before the token expires: the connection outlives its first tokens`, async (t) => {
    const sub = freshId();
    let minted = 0;
    const chat = client({
      getToken: async () => {
        minted += 1;
        return mint(sub, 'user', 5);
      },
      transport,
    });
    t.after(() => chat.close());
    const disconnects = [];
    chat.on('disconnect', (d) => disconnects.push(d));
    const refreshed = [];
    const twice = new Promise((resolve, reject) => {
      // Two 5 s tokens, refreshed ~1 s before `exp`: well within the bound.
      const timer = setTimeout(() => reject(new Error(`refreshed ${refreshed.length} times; disconnects: ${JSON.stringify(disconnects)}`)), 4 * WAIT_MS);
      chat.on('token_refreshed', (ack) => {
        refreshed.push(ack);
        if (refreshed.length === 2) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    await bounded(chat.connect(), 'connect');
    const connectionId = chat.connectionId;
    await twice; // by now the first token's `exp` is past

    assert.ok(refreshed.every((ack) => ack.type === 'ack' && ack.expires_at), JSON.stringify(refreshed));
    assert.equal(minted, 3);
    const ack = await chat.request({ type: 'chat_message', message: FAQ });
    assert.equal(ack.type, 'ack');
    assert.equal(chat.connectionId, connectionId, 'the same connection all along');
    assert.deepEqual(disconnects, []);
  });
}
