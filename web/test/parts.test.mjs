// The client's pieces that need no server: the event-stream parser, token
// claims, option checks.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, readClaims, sseParser } from '../chatai.js';

function parseAll(chunks) {
  const events = [];
  let comments = 0;
  const feed = sseParser(
    (event) => events.push(event),
    () => (comments += 1),
  );
  for (const chunk of chunks) feed(chunk);
  return { events, comments };
}

test('the event-stream parser joins data lines, keeps ids, counts comments, across chunk borders', () => {
  const { events, comments } = parseAll([
    ': heartbeat\n\n',
    'id: c1\ndata: {"type":"a"}\n\n',
    'data: line one\nda',
    'ta: line two\r\n\r\n',
    'id: c2\r',
    '\ndata:no-space\r\r',
    'data: unfinished',
  ]);
  assert.equal(comments, 1);
  assert.deepEqual(events, [
    { data: '{"type":"a"}', id: 'c1' },
    { data: 'line one\nline two', id: undefined },
    { data: 'no-space', id: 'c2' },
  ]);
});

test('readClaims reads a JWT payload (base64url, UTF-8)', () => {
  const payload = Buffer.from(JSON.stringify({ sub: '7', role: 'operator', name: 'Zoë', exp: 9 })).toString('base64url');
  assert.deepEqual(readClaims(`x.${payload}.y`), { sub: '7', role: 'operator', name: 'Zoë', exp: 9 });
  assert.throws(() => readClaims('nonsense'), { code: 'invalid_token' });
});

test('options: a token is required, and a transport the runtime cannot provide is refused at once', () => {
  assert.throws(() => new ChatClient({ baseUrl: 'http://x' }), { code: 'invalid_options' });
  assert.throws(
    () => new ChatClient({ baseUrl: 'http://x', token: 't', transport: 'websocket', WebSocket: undefined }),
    { code: 'invalid_options' },
  );
  assert.throws(() => new ChatClient({ baseUrl: 'http://x', token: 't', transport: 'carrier-pigeon' }), { code: 'invalid_options' });
  assert.throws(() => new ChatClient({ baseUrl: 'http://x', token: 't', WebSocket: undefined, fetch: undefined }), { code: 'invalid_options' });
});

test('a request on a client that is not connecting rejects with `closed`', async () => {
  const chat = new ChatClient({ baseUrl: 'http://x', token: 't', transport: 'sse', fetch: async () => new Response('') });
  await assert.rejects(chat.request({ type: 'heartbeat' }), { code: 'closed' });
});
