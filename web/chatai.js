// chatai.js — the ChatAI Realtime client: one ES module, no build step, for
// browsers and Node (18+; pass `WebSocket` and `fetch` implementations where
// the runtime has none). It owns one logical connection to the gateway:
//
// - the transport: a WebSocket (`/ws/{id}` or `/ws/operator/{id}`, the token
//   in the `chatai.bearer.<token>` subprotocol) or Server-Sent Events
//   (`GET /sse` read with `fetch` and an `Authorization` header, client
//   frames by `POST /api/frames`); `auto` falls back to SSE when a WebSocket
//   cannot be opened;
// - resume: the cursor of the last durable event handled, sent back as
//   `?cursor=` (WebSocket) or `Last-Event-ID` (SSE) after any drop, with
//   jittered exponential backoff; kept in `storage` across page reloads;
// - the token: `refresh_token` before `exp` when `getToken` is given;
// - requests: a unique `id` per request frame, matched with its `ack` or
//   `error` by `ref`; re-sent with the same `id` after a reconnect (the
//   server de-duplicates by `id`);
// - events: every server frame goes to the callbacks registered for its
//   `type` (and `*`).
//
// The protocol itself is docs/protocol.md; this file's API is web/README.md.

/** The subprotocol the gateway selects; the token rides in a second one. */
const SUBPROTOCOL = 'chatai.v1';
const BEARER_PREFIX = 'chatai.bearer.';

/** Close codes after which reconnecting cannot help (docs/protocol.md). */
const FINAL_CLOSES = new Map([
  [1003, 'binary_frame'], // the client sent a binary frame
  [1007, 'invalid_utf8'],
  [1008, 'policy'], // Invalid token / Unauthorized / Rate limit exceeded
  [1009, 'frame_too_large'],
  [4004, 'replaced'], // a newer connection of the same user took the place
]);

/** 1008 reasons, as stable codes. */
const POLICY_REASONS = new Map([
  ['Invalid token', 'invalid_token'],
  ['Unauthorized', 'unauthorized'],
  ['Rate limit exceeded', 'rate_limited'],
]);

/** 4001 `Token expired`: final unless a fresh token can be had. */
const TOKEN_EXPIRED = 4001;

const DEFAULTS = {
  requestTimeout: 15_000,
  backoffInitial: 500,
  backoffMax: 30_000,
  /** Refresh this long before `exp` (at most; a quarter of a short token's life). */
  refreshLead: 60_000,
};

/** An Error for a failed request or connection, with a stable `code`. */
export class ChatError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'ChatError';
    this.code = code;
    Object.assign(this, extra);
  }
}

/** The claims of a JWT, read without checking it (the server checks). */
export function readClaims(token) {
  const part = String(token).split('.')[1];
  if (!part) throw new ChatError('invalid_token', 'not a JWT');
  const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
  const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** sessionStorage when the runtime has one (a browser tab), else nothing. */
function defaultStorage() {
  try {
    const store = globalThis.sessionStorage;
    if (!store) return null;
    return { get: (key) => store.getItem(key), set: (key, value) => store.setItem(key, value) };
  } catch {
    return null; // storage disabled (privacy settings, sandboxed frame)
  }
}

function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

/** Runs a callback; one that throws must not stop the client. */
function safely(fn, arg) {
  try {
    fn(arg);
  } catch (err) {
    if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
    else console.error(err);
  }
}

/**
 * One WebSocket: `onFrame(frame)`, `onOpen()`, `onClose({code, reason, opened})`.
 * `send(text)` returns whether the frame was handed to the socket.
 */
function openWebSocket(WebSocketImpl, url, token, handlers) {
  let opened = false;
  let done = false;
  const socket = new WebSocketImpl(url, [SUBPROTOCOL, BEARER_PREFIX + token]);
  socket.onopen = () => {
    opened = true;
    handlers.onOpen();
  };
  socket.onmessage = (event) => {
    if (typeof event.data !== 'string') return; // the server sends text only
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    handlers.onFrame(frame);
  };
  socket.onerror = () => {}; // a close event always follows
  socket.onclose = (event) => {
    if (done) return;
    done = true;
    handlers.onClose({ code: event.code, reason: event.reason, opened });
  };
  return {
    kind: 'websocket',
    send(text) {
      if (socket.readyState !== 1) return false;
      socket.send(text);
      return true;
    },
    close() {
      if (done) return;
      done = true;
      try {
        socket.close(1000);
      } catch {
        // already closing
      }
    },
  };
}

/**
 * Reads `text/event-stream` chunks into events: `onEvent({data, id})` per
 * event, `onComment()` per comment line (heartbeats). The WHATWG rules:
 * lines end with CRLF, LF or CR; `data` lines join with LF; a blank line
 * dispatches.
 */
export function sseParser(onEvent, onComment = () => {}) {
  let buffer = '';
  let data = [];
  let id;
  let sawCr = false;
  function line(text) {
    if (text === '') {
      if (data.length > 0) onEvent({ data: data.join('\n'), id });
      data = [];
      id = undefined;
      return;
    }
    if (text.startsWith(':')) {
      onComment(text.slice(1));
      return;
    }
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'id' && !value.includes('\0')) id = value;
  }
  return (chunk) => {
    buffer += chunk;
    let start = 0;
    for (let i = 0; i < buffer.length; i += 1) {
      const c = buffer[i];
      if (c === '\n' && sawCr) {
        sawCr = false;
        start = i + 1;
        continue;
      }
      sawCr = false;
      if (c === '\r' || c === '\n') {
        line(buffer.slice(start, i));
        start = i + 1;
        sawCr = c === '\r';
      }
    }
    buffer = buffer.slice(start);
  };
}

/**
 * One SSE stream: `GET /sse` with the token as a Bearer header, read with
 * `fetch`; client frames go by `POST /api/frames` and their answer (the
 * `ack` or `error` frame) comes back in the response body.
 */
function openSse(fetchImpl, baseUrl, token, currentToken, cursor, handlers) {
  const abort = new AbortController();
  let opened = false;
  let done = false;
  let connectionId = null;
  const finish = (code, reason) => {
    if (done) return;
    done = true;
    abort.abort();
    handlers.onClose({ code, reason, opened });
  };
  (async () => {
    const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${token}` };
    if (cursor) headers['Last-Event-ID'] = cursor;
    const response = await fetchImpl(`${baseUrl}/sse`, { headers, signal: abort.signal, cache: 'no-store' });
    if (!response.ok || !response.body) {
      // The same meanings as the WebSocket's close codes.
      let body = {};
      try {
        body = await response.json();
      } catch {
        // not JSON
      }
      const refused = response.status === 401 ? [1008, 'Invalid token'] : response.status === 403 ? [1008, 'Unauthorized'] : null;
      finish(refused ? refused[0] : 1006, refused ? refused[1] : body.message || `HTTP ${response.status}`);
      return;
    }
    opened = true;
    handlers.onOpen();
    const parse = sseParser(
      ({ data }) => {
        let frame;
        try {
          frame = JSON.parse(data);
        } catch {
          return;
        }
        if (frame.type === 'connected') connectionId = frame.connection_id;
        if (frame.type === 'closed') {
          finish(Number(frame.code) || 1006, frame.reason || '');
          return;
        }
        handlers.onFrame(frame);
      },
      () => handlers.onHeartbeat(),
    );
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    for (;;) {
      const { value, done: ended } = await reader.read();
      if (ended || done) break;
      parse(decoder.decode(value, { stream: true }));
    }
    finish(1006, 'stream ended');
  })().catch((err) => finish(1006, String(err?.message || err)));
  return {
    kind: 'sse',
    send(text) {
      if (done || !connectionId) return false;
      const frame = JSON.parse(text);
      frame.connection_id = connectionId;
      fetchImpl(`${baseUrl}/api/frames`, {
        method: 'POST',
        // The newest token: after a `refresh_token` the first one expires.
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${currentToken()}` },
        body: JSON.stringify(frame),
      })
        .then(async (response) => {
          const body = await response.json().catch(() => ({}));
          if (typeof body.type === 'string') {
            handlers.onFrame(body);
          } else if (frame.id !== undefined) {
            // An HTTP-level refusal ({"error": code, "message": …}).
            handlers.onFrame({
              type: 'error',
              ref: frame.id,
              code: body.error || body.code || `http_${response.status}`,
              message: body.message || `HTTP ${response.status}`,
            });
          }
        })
        // Not sent: a pending request is sent again after the reconnect.
        .catch(() => {});
      return true;
    },
    close() {
      if (done) return;
      done = true;
      abort.abort();
    },
  };
}

/** A client of one user, operator or admin; see web/README.md. */
export class ChatClient {
  #options;
  #handlers = new Map();
  #state = 'closed';
  #transport = null;
  #kind; // the transport used for the next attempt
  #token = null;
  #claims = null;
  #pending = new Map();
  #attempt = 0;
  #timers = new Set();
  #refreshTimer = null;
  #watchdog = null;
  #heartbeat = null;
  #connectWaiters = [];
  #stopped = true;
  #generation = 0;
  #storage;
  #storageKey = null;

  /** The id the server gave the current connection (`connected`). */
  connectionId = null;
  /** The cursor of the last durable event handled (resume point). */
  cursor = null;
  /** The transport in use: `websocket` or `sse` (null before the first open). */
  transport = null;

  constructor(options = {}) {
    if (!options.token && !options.getToken) {
      throw new ChatError('invalid_options', 'a token or getToken is required');
    }
    const location = globalThis.location;
    this.#options = {
      ...DEFAULTS,
      transport: 'auto',
      baseUrl: location ? location.origin : undefined,
      WebSocket: globalThis.WebSocket,
      fetch: globalThis.fetch?.bind(globalThis),
      ...options,
    };
    if (!this.#options.baseUrl) throw new ChatError('invalid_options', 'baseUrl is required outside a browser');
    this.#options.baseUrl = String(this.#options.baseUrl).replace(/\/+$/, '');
    const { transport } = this.#options;
    if (!['auto', 'websocket', 'sse'].includes(transport)) {
      throw new ChatError('invalid_options', `unknown transport ${transport}`);
    }
    const haveWebSocket = typeof this.#options.WebSocket === 'function';
    const haveFetch = typeof this.#options.fetch === 'function';
    if (transport === 'websocket' && !haveWebSocket) {
      throw new ChatError('invalid_options', 'no WebSocket implementation: pass one (e.g. the `ws` package)');
    }
    if (transport === 'sse' && !haveFetch) {
      throw new ChatError('invalid_options', 'no fetch implementation: pass one (e.g. `undici`)');
    }
    if (!haveWebSocket && !haveFetch) {
      throw new ChatError('invalid_options', 'neither WebSocket nor fetch: pass one (the `ws` package, `undici`)');
    }
    // `auto` without a WebSocket (Node before 22, say) uses SSE; without
    // fetch, WebSocket only.
    if (transport === 'auto' && !haveWebSocket) this.#options.transport = 'sse';
    if (transport === 'auto' && !haveFetch) this.#options.transport = 'websocket';
    this.#kind = this.#options.transport === 'sse' ? 'sse' : 'websocket';
    this.#storage = options.storage === undefined ? defaultStorage() : options.storage;
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this.#state;
  }

  /**
   * Calls `fn(frame)` for each server frame of `type` (`*`: every frame),
   * or on `state` changes and `disconnect` ({code, reason, reconnect}).
   * Returns a function that removes it.
   */
  on(type, fn) {
    if (!this.#handlers.has(type)) this.#handlers.set(type, new Set());
    this.#handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.#handlers.get(type)?.delete(fn);
  }

  /** Opens the connection; resolves with the `connected` frame. */
  connect() {
    const waiting = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#stopped) {
      this.#stopped = false;
      this.#attempt = 0;
      this.#setState('connecting');
      this.#open();
    }
    return waiting;
  }

  /**
   * Sends `frame` with a fresh `id` (unless it has one) and resolves with
   * its `ack`; rejects with a ChatError (`code`, `frame`) on an `error`
   * frame, `timeout`, or `closed`. Sent when the connection opens, and
   * again after a reconnect (same `id`) unless `resend: false`.
   */
  request(frame, { timeout = this.#options.requestTimeout, resend = true } = {}) {
    const id = frame.id ?? randomId();
    const message = { ...frame, id };
    return new Promise((resolve, reject) => {
      const entry = { message, resolve, reject, resend, sentOn: null, timer: null };
      entry.timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ChatError('timeout', `no answer to ${frame.type} (${id})`, { frame: message }));
      }, timeout);
      this.#pending.set(id, entry);
      if (this.#state === 'open') this.#sendPending(entry);
      else if (this.#stopped) this.#settle(id, new ChatError('closed', 'the client is closed'));
    });
  }

  /** Sends `frame` as is, if the connection is open; returns whether it was. */
  send(frame) {
    if (this.#state !== 'open' || !this.#transport) return false;
    return this.#transport.send(JSON.stringify(frame));
  }

  /** Closes for good: no reconnect; pending requests are rejected. */
  close() {
    this.#stopped = true;
    this.#generation += 1;
    this.#clearTimers();
    this.#transport?.close();
    this.#transport = null;
    for (const id of [...this.#pending.keys()]) this.#settle(id, new ChatError('closed', 'the client was closed'));
    this.#failConnect(new ChatError('closed', 'the client was closed'));
    this.#setState('closed');
  }

  // -- connection lifecycle --------------------------------------------------

  async #open() {
    const generation = ++this.#generation;
    let token;
    try {
      token = await this.#currentToken();
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#emit('disconnect', { code: 0, reason: `getToken failed: ${err?.message || err}`, reconnect: true });
      this.#retry();
      return;
    }
    if (generation !== this.#generation) return;
    try {
      this.#useToken(token);
    } catch (err) {
      this.#giveUp(err instanceof ChatError ? err : new ChatError('invalid_token', String(err?.message || err)));
      return;
    }
    this.#startTransport(generation, this.#kind);
  }

  #startTransport(generation, kind) {
    const { baseUrl } = this.#options;
    const handlers = {
      onOpen: () => {},
      onFrame: (frame) => generation === this.#generation && this.#onFrame(frame),
      onHeartbeat: () => generation === this.#generation && this.#feedWatchdog(),
      onClose: (close) => generation === this.#generation && this.#onClose(close, kind),
    };
    if (kind === 'websocket') {
      const sub = this.#claims.sub;
      const path = this.#role() === 'operator' ? `/ws/operator/${sub}` : `/ws/${sub}`;
      const query = this.cursor ? `?cursor=${encodeURIComponent(this.cursor)}` : '';
      const url = baseUrl.replace(/^http/, 'ws') + path + query;
      this.#transport = openWebSocket(this.#options.WebSocket, url, this.#token, handlers);
    } else {
      this.#transport = openSse(this.#options.fetch, baseUrl, this.#token, () => this.#token, this.cursor, handlers);
    }
  }

  #onClose({ code, reason, opened }, kind) {
    this.#transport = null;
    this.#stopTimers();
    const wasOpen = this.#state === 'open';
    // A WebSocket that never opened: the network may not let WebSockets
    // through; `auto` tries SSE at once (and keeps it from then on).
    if (!opened && kind === 'websocket' && this.#options.transport === 'auto') {
      this.#kind = 'sse';
      this.#startTransport(this.#generation, 'sse');
      return;
    }
    // Neither opened: the server may just be down; start from the WebSocket again.
    if (!opened && kind === 'sse' && this.#options.transport === 'auto') this.#kind = 'websocket';
    const final = this.#finalClose(code, reason);
    if (wasOpen) for (const entry of this.#pending.values()) {
      if (!entry.resend) this.#settle(entry.message.id, new ChatError('connection_lost', 'the connection dropped before the answer'));
    }
    this.#emit('disconnect', { code, reason, reconnect: !final });
    if (final) this.#giveUp(final);
    else this.#retry();
  }

  /** Ends the client after a failure reconnecting cannot mend. */
  #giveUp(error) {
    this.#stopped = true;
    this.#generation += 1;
    this.#clearTimers();
    this.#transport?.close();
    this.#transport = null;
    for (const id of [...this.#pending.keys()]) this.#settle(id, error);
    this.#failConnect(error);
    this.#setState('closed');
  }

  /** The error that ends the client after this close, or null to reconnect. */
  #finalClose(code, reason) {
    if (code === TOKEN_EXPIRED) {
      if (this.#options.getToken) {
        this.#token = null; // ask for a new one
        return null;
      }
      return new ChatError('token_expired', 'the token expired', { closeCode: code, reason });
    }
    const kind = FINAL_CLOSES.get(code);
    if (!kind) return null;
    const errorCode = code === 1008 ? POLICY_REASONS.get(reason) || 'policy' : kind;
    return new ChatError(errorCode, `closed by the server: ${code} ${reason}`, { closeCode: code, reason });
  }

  #retry() {
    if (this.#stopped) return;
    if (this.#state !== 'connecting') this.#setState('reconnecting');
    const ceiling = Math.min(this.#options.backoffMax, this.#options.backoffInitial * 2 ** this.#attempt);
    this.#attempt += 1;
    // "Equal jitter": half the window, plus a random share of the other half.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.#after(delay, () => this.#open());
  }

  #onFrame(frame) {
    this.#feedWatchdog();
    if (frame.type === 'connected') this.#onConnected(frame);
    if ((frame.type === 'ack' || frame.type === 'error') && frame.ref !== undefined && this.#pending.has(frame.ref)) {
      this.#settle(
        frame.ref,
        frame.type === 'ack' ? null : new ChatError(frame.code || 'error', frame.message, { frame }),
        frame,
      );
    }
    this.#emit(frame.type, frame);
    this.#emit('*', frame);
    // Handled: the resume point moves on (after the callbacks ran).
    if (typeof frame.cursor === 'string' && frame.type !== 'connected') this.#saveCursor(frame.cursor);
  }

  #onConnected(frame) {
    this.connectionId = frame.connection_id;
    this.transport = this.#transport?.kind ?? this.#kind;
    this.#attempt = 0;
    if (typeof frame.cursor === 'string') this.#saveCursor(frame.cursor);
    this.#setState('open');
    this.#startHeartbeat(Number(frame.heartbeat_interval) || 25);
    this.#scheduleRefresh();
    const waiters = this.#connectWaiters.splice(0);
    for (const waiter of waiters) waiter.resolve(frame);
    for (const entry of this.#pending.values()) this.#sendPending(entry);
  }

  #sendPending(entry) {
    if (entry.sentOn === this.connectionId) return;
    if (this.#transport?.send(JSON.stringify(entry.message))) entry.sentOn = this.connectionId;
  }

  #settle(id, error, frame) {
    const entry = this.#pending.get(id);
    if (!entry) return;
    this.#pending.delete(id);
    clearTimeout(entry.timer);
    if (error) {
      if (!error.frame) error.frame = frame;
      entry.reject(error);
    } else {
      entry.resolve(frame);
    }
  }

  #failConnect(error) {
    const waiters = this.#connectWaiters.splice(0);
    for (const waiter of waiters) waiter.reject(error);
  }

  // -- token ----------------------------------------------------------------

  async #currentToken() {
    const { getToken, token } = this.#options;
    if (!getToken) return token;
    if (this.#token && !this.#refreshDue()) return this.#token;
    return getToken();
  }

  #useToken(token) {
    const claims = readClaims(token);
    if (this.#claims && String(this.#claims.sub) !== String(claims.sub)) {
      throw new ChatError('invalid_token', 'getToken returned a token for another subject');
    }
    this.#token = token;
    this.#claims = claims;
    this.#claims.receivedAt = Date.now();
    if (!this.#storageKey) {
      this.#storageKey = `chatai.cursor.${this.#role()}.${claims.sub}`;
      const saved = this.#storage?.get(this.#storageKey);
      if (saved && !this.cursor) this.cursor = saved;
    }
  }

  #role() {
    return this.#options.role || this.#claims?.role || 'user';
  }

  /** Milliseconds before `exp` at which to refresh: a minute, or a quarter of a short token's life. */
  #refreshLead() {
    const life = this.#claims.exp * 1000 - this.#claims.receivedAt;
    return Math.max(500, Math.min(this.#options.refreshLead, life / 4));
  }

  #refreshDue() {
    if (!this.#claims?.exp) return false;
    return Date.now() >= this.#claims.exp * 1000 - this.#refreshLead();
  }

  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#timers.delete(this.#refreshTimer);
    if (!this.#options.getToken || !this.#claims?.exp) return;
    const delay = Math.max(0, this.#claims.exp * 1000 - this.#refreshLead() - Date.now());
    this.#refreshTimer = this.#after(delay, () => this.#refresh());
  }

  async #refresh() {
    const generation = this.#generation;
    try {
      const token = await this.#options.getToken();
      if (generation !== this.#generation || this.#state !== 'open') return;
      const ack = await this.request({ type: 'refresh_token', token }, { resend: false });
      this.#useToken(token);
      this.#emit('token_refreshed', ack);
      this.#scheduleRefresh();
    } catch (err) {
      if (generation !== this.#generation) return;
      // Try again shortly; if `exp` passes first the server closes 4001 and
      // the reconnect asks getToken again.
      this.#emit('token_refresh_failed', err);
      this.#refreshTimer = this.#after(Math.min(5_000, this.#refreshLead() / 2), () => this.#refresh());
    }
  }

  // -- heartbeats -------------------------------------------------------------

  /** WebSocket: a `heartbeat` each interval. Either transport: no byte for 2.5 intervals = dead. */
  #startHeartbeat(intervalSecs) {
    this.#heartbeatInterval = intervalSecs * 1000;
    if (this.#transport?.kind === 'websocket') {
      const beat = () => {
        this.send({ type: 'heartbeat' });
        this.#heartbeat = this.#after(this.#heartbeatInterval, beat);
      };
      this.#heartbeat = this.#after(this.#heartbeatInterval, beat);
    }
    this.#feedWatchdog();
  }

  #heartbeatInterval = 25_000;

  #feedWatchdog() {
    if (this.#state !== 'open') return;
    clearTimeout(this.#watchdog);
    this.#timers.delete(this.#watchdog);
    this.#watchdog = this.#after(this.#heartbeatInterval * 2.5, () => {
      const transport = this.#transport;
      if (!transport) return;
      transport.close();
      this.#onClose({ code: 4003, reason: 'Heartbeat timeout (client side)', opened: true }, transport.kind);
    });
  }

  // -- helpers --------------------------------------------------------------

  #saveCursor(cursor) {
    this.cursor = cursor;
    if (this.#storageKey) {
      try {
        this.#storage?.set(this.#storageKey, cursor);
      } catch {
        // storage full or gone: the cursor still lives in memory
      }
    }
  }

  #after(ms, fn) {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      fn();
    }, ms);
    this.#timers.add(timer);
    return timer;
  }

  /** Timers of the connection that just ended (not the reconnect's). */
  #stopTimers() {
    for (const timer of [this.#refreshTimer, this.#watchdog, this.#heartbeat]) {
      clearTimeout(timer);
      this.#timers.delete(timer);
    }
  }

  #clearTimers() {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit('state', state);
  }

  #emit(type, value) {
    const handlers = this.#handlers.get(type);
    if (!handlers) return;
    for (const fn of [...handlers]) safely(fn, value);
  }
}
