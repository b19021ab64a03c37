// What the Node tests share: the gateway they run against (started by
// tests/js_client.rs, which passes its URL and JWT secret in the
// environment), HS256 token minting, clients with Node's implementations,
// and waiting for frames with a bound.

import { createHmac, randomInt } from 'node:crypto';
import WebSocket from 'ws';
import { fetch } from 'undici';
import { ChatClient } from '../chatai.js';

export { WebSocket, fetch, ChatClient };

export const GATEWAY = process.env.CHATAI_TEST_GATEWAY_URL;
const SECRET = process.env.CHATAI_TEST_JWT_SECRET;
if (!GATEWAY || !SECRET) {
  throw new Error('CHATAI_TEST_GATEWAY_URL and CHATAI_TEST_JWT_SECRET must be set (tests/js_client.rs runs these tests)');
}

/** How long a test waits for a frame or a state before failing. */
export const WAIT_MS = 10_000;

/** The question the built-in FAQ assistant answers. */
export const FAQ = 'How do I reset my password?';

/** A WebSocket URL where nothing listens: a network that lets no WebSocket through. */
export const DEAD_WS = 'ws://127.0.0.1:1/';

const base64url = (value) => Buffer.from(value).toString('base64url');

/** An HS256 token for `sub` in `role`, valid for `ttlSecs`. */
export function mint(sub, role = 'user', ttlSecs = 3600, secret = SECRET) {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + ttlSecs;
  const claims = base64url(JSON.stringify({ sub: String(sub), role, exp }));
  const signature = createHmac('sha256', secret).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

/** An id no other test uses. */
export function freshId() {
  return randomInt(1_000_000, 2_000_000_000);
}

/** A client of the test gateway, with Node's WebSocket and fetch and short backoff. */
export function client(options) {
  return new ChatClient({
    baseUrl: GATEWAY,
    WebSocket,
    fetch,
    storage: null,
    backoffInitial: 50,
    backoffMax: 400,
    ...options,
  });
}

/**
 * A WebSocket class that records every socket it opens, and sends them to
 * a dead address while `offline` is true.
 */
export function controlledWebSocket() {
  const control = { sockets: [], urls: [], offline: false };
  control.WebSocket = class extends WebSocket {
    constructor(url, protocols) {
      super(control.offline ? DEAD_WS : url, protocols);
      control.urls.push(String(url));
      control.sockets.push(this);
    }
  };
  /** Drops the current socket without a close handshake, as a broken network would. */
  control.kill = () => control.sockets.at(-1).terminate();
  return control;
}

/** Records every frame a client gets; `waitFor(pred)` looks at past and future ones. */
export function recorder(chatClient) {
  const frames = [];
  const waiters = new Set();
  chatClient.on('*', (frame) => {
    frames.push(frame);
    for (const waiter of [...waiters]) {
      if (waiter.predicate(frame)) {
        waiters.delete(waiter);
        clearTimeout(waiter.timer);
        waiter.resolve(frame);
      }
    }
  });
  return {
    frames,
    of: (type) => frames.filter((frame) => frame.type === type),
    waitFor(predicate, what = 'a frame') {
      const seen = frames.find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = { predicate, resolve };
        waiter.timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`no ${what} within ${WAIT_MS} ms; got ${JSON.stringify(frames.map((f) => f.type))}`));
        }, WAIT_MS);
        waiters.add(waiter);
      });
    },
  };
}

/** Resolves with the first value `emitter.on(event)` gives that passes `predicate`. */
export function once(chatClient, event, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} within ${WAIT_MS} ms`));
    }, WAIT_MS);
    const off = chatClient.on(event, (value) => {
      if (!predicate(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** A plain `ws` connection of `sub` (query token), for a second device of the same user. */
export async function rawUser(sub) {
  const socket = new WebSocket(`${GATEWAY.replace(/^http/, 'ws')}/ws/${sub}?token=${mint(sub)}`);
  const frames = [];
  const waiters = [];
  socket.on('message', (data) => {
    const frame = JSON.parse(String(data));
    frames.push(frame);
    for (const waiter of waiters.splice(0)) {
      if (!waiter(frame)) waiters.push(waiter);
    }
  });
  const waitFor = (predicate) =>
    new Promise((resolve, reject) => {
      const seen = frames.find(predicate);
      if (seen) return resolve(seen);
      const timer = setTimeout(() => reject(new Error(`raw connection: no frame within ${WAIT_MS} ms`)), WAIT_MS);
      waiters.push((frame) => {
        if (!predicate(frame)) return false;
        clearTimeout(timer);
        resolve(frame);
        return true;
      });
    });
  await waitFor((frame) => frame.type === 'connected');
  return {
    send: (frame) => socket.send(JSON.stringify(frame)),
    waitFor,
    close: () => socket.close(),
  };
}

/** `promise`, or a failure naming `what` once WAIT_MS has passed. */
export function bounded(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
