/*
 * herald client: a WebSocket that reconnects by itself.
 *
 * Drop-in for joewalnes' ReconnectingWebSocket 1.0.0 (same constructor, options, properties,
 * on* handlers and event order), built on the native EventTarget so it needs no DOM. When the
 * server agrees to the `herald.v1` subprotocol it also resumes every group stream without loss.
 * The spec is CLIENT.md §5 (C1-C8 compatibility, D1-D6 divergences, E1-E8 extensions, §5.5);
 * the wire protocol is DESIGN.md §4 and the close codes §5.
 *
 * Syntax is ES2017: no object spread, optional chaining, `??`, class fields or optional catch
 * bindings. build.mjs wraps this file as UMD (classic <script>), ES module and CommonJS; the
 * export statements at the bottom are the only module syntax and are rewritten by it.
 */

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const HERALD_PROTOCOL = 'herald.v1';
const CLIENT_MESSAGE_HEADER = '{"t":"m"}';
const CLIENT_MESSAGE_HEADER_BYTES = [123, 34, 116, 34, 58, 34, 109, 34, 125]; // the same, as UTF-8

// The exact value 1.0.0 throws from send() during a backoff wait; `sendQueue: false` restores it (D4).
const LEGACY_SEND_ERROR = 'INVALID_STATE_ERR : Pausing to reconnect websocket';

// A watchdog that fires this much later than scheduled was throttled or slept through (a suspended
// laptop, a background tab). Socket data may be queued behind it, so it gets one grace period
// before the connection is declared dead (the centrifuge-js lateCallTimer/lateCallGrace idea).
const LATE_TIMER_MS = 1000;
const LATE_GRACE_MS = 1000;

// Events with an `on<type>` handler property. The first five are 1.0.0's; handlers run before
// addEventListener listeners because their dispatcher is registered first, in the constructor.
const LEGACY_EVENTS = ['open', 'close', 'connecting', 'message', 'error'];
const EXTENSION_EVENTS = ['giveup', 'gap', 'resync', 'drop', 'join', 'leave'];

// 1.0.0's options, with its names and units. Only timeoutInterval's default differs (D6).
const LEGACY_DEFAULTS = {
  debug: false,
  automaticOpen: true,
  reconnectInterval: 1000,
  maxReconnectInterval: 30000,
  reconnectDecay: 1.5,
  timeoutInterval: 5000,
  maxReconnectAttempts: null,
};

// Options this client adds. Like the legacy ones they become instance properties that are read
// at the moment they are needed, so changing them after construction takes effect.
const EXTENSION_DEFAULTS = {
  jitter: 'full',
  minUptime: 5000,
  maxTimeoutInterval: 30000,
  sendQueue: true,
  idleTimeout: 0,
  terminalCloseCodes: null,
  shouldReconnect: null,
  herald: 'auto',
  persistPositions: false,
  maxPingDelay: 10000,
  watchNetwork: true,
  // SSE fallback (DESIGN.md §14): 'auto' = ['websocket', 'sse'] when the server is herald (the
  // host that served /herald.js), else ['websocket'].
  transports: 'auto',
  sseAfter: 3,
  websocketRetryInterval: 60000,
};

const QUEUE_DEFAULTS = { max: 100, maxBytes: 1048576, ttlMs: 30000 };

function hostGlobal() {
  if (typeof globalThis !== 'undefined') return globalThis;
  if (typeof self !== 'undefined') return self;
  if (typeof window !== 'undefined') return window;
  return {};
}

// `herald: 'auto'` offers herald.v1 only to the host this file was served from as /herald.js.
// Offering a subprotocol to a server that does not select one makes browsers fail the handshake
// ("Sent non-empty 'Sec-WebSocket-Protocol' header but no response was received"), so it must
// never be offered to a server that is not known to be herald. Read once, while the classic
// script runs: document.currentScript is null later, and always null in an ES module.
const HERALD_SCRIPT_HOST = (function () {
  try {
    const doc = typeof document !== 'undefined' ? document : null;
    const script = doc && doc.currentScript;
    if (script && script.src) {
      const src = new URL(script.src, doc.baseURI);
      if (/\/herald\.js$/.test(src.pathname)) return src.host;
    }
  } catch (err) {
    // No DOM, or a src that does not parse: auto mode then never offers herald.v1.
  }
  return null;
})();

/**
 * Whether a close code stops reconnection by default (DESIGN.md §5, CLIENT.md E6): 1009 and
 * the 3500-3999 / 4500-4999 bands. 1000/1001/1006/1011/1012/1013 and 4000-4499 reconnect.
 */
function isTerminalCloseCode(code) {
  return code === 1009 || (code >= 3500 && code <= 3999) || (code >= 4500 && code <= 4999);
}

function makeEvent(type, fields) {
  const event = new Event(type);
  if (fields) {
    for (const key of Object.keys(fields)) event[key] = fields[key];
  }
  return event;
}

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') &&
    typeof value.then === 'function';
}

function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else {
        bytes += 3;
      }
    } else bytes += 3;
  }
  return bytes;
}

function byteSize(data) {
  if (typeof data === 'string') return utf8Length(data);
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return data.byteLength;
  if (data && typeof data.size === 'number') return data.size; // Blob
  return utf8Length(String(data));
}

function queueFullError() {
  if (typeof DOMException === 'function') return new DOMException('send queue full', 'QuotaExceededError');
  const err = new Error('send queue full');
  err.name = 'QuotaExceededError';
  return err;
}

// E7: relative and http(s) URLs are resolved against the page and mapped to ws(s). A ws(s) URL is
// passed through untouched, exactly as 1.0.0 passes it.
function toSocketUrl(raw) {
  if (typeof raw !== 'string' || /^wss?:\/\//i.test(raw)) return raw;
  const location = hostGlobal().location;
  let parsed;
  try {
    parsed = location && location.href ? new URL(raw, location.href) : new URL(raw);
  } catch (err) {
    return raw; // let the WebSocket constructor report it
  }
  if (parsed.protocol === 'http:') parsed.protocol = 'ws:';
  else if (parsed.protocol === 'https:') parsed.protocol = 'wss:';
  return parsed.href;
}

// The EventSource URL for a ws(s) URL, with the stream positions to resume from (herald reads
// `last_event_id` when the Last-Event-ID header cannot be set, as on a fresh EventSource).
function toEventSourceUrl(socketUrl, lastEventId) {
  let url = String(socketUrl).replace(/^ws(s?):/i, 'http$1:');
  if (lastEventId) url += (url.indexOf('?') < 0 ? '?' : '&') + 'last_event_id=' + encodeURIComponent(lastEventId);
  return url;
}

function base64ToBuffer(text) {
  const binary = typeof atob === 'function' ? atob(text) : '';
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

// An EventSource dressed as the WebSocket the rest of the client drives: onopen / onmessage /
// onerror / onclose, readyState, close(). It never reconnects by itself: the first error ends it
// (close 1006) and the client's own backoff opens the next one, with the positions it kept.
class SseSocket {
  constructor(Impl, url, binaryType) {
    this.url = url;
    this.readyState = CONNECTING;
    this.protocol = '';
    this.extensions = '';
    this.bufferedAmount = 0;
    this.binaryType = binaryType;
    this.onopen = this.onclose = this.onmessage = this.onerror = this.onresync = null;
    const es = new Impl(url);
    this._es = es;
    es.onopen = () => {
      this.readyState = OPEN;
      this._fire('onopen', { type: 'open' });
    };
    es.onmessage = (event) => this._fire('onmessage', { type: 'message', data: event.data, lastEventId: event.lastEventId });
    es.addEventListener('binary', (event) => {
      const buffer = base64ToBuffer(event.data);
      const data = this.binaryType === 'blob' && typeof Blob === 'function' ? new Blob([buffer]) : buffer;
      this._fire('onmessage', { type: 'message', data: data, lastEventId: event.lastEventId });
    });
    es.addEventListener('resync', (event) => this._fire('onresync', event));
    // herald says why it ends a stream, with the WebSocket close code.
    es.addEventListener('close', (event) => {
      let info = {};
      try {
        info = JSON.parse(event.data) || {};
      } catch (err) {
        // unreadable: a plain end
      }
      this._end(typeof info.code === 'number' ? info.code : 1006, typeof info.reason === 'string' ? info.reason : '', true);
    });
    es.onerror = () => {
      if (this.readyState === CLOSED) return;
      this._fire('onerror', { type: 'error' });
      this._end(1006, '', false);
    };
  }

  send() {
    throw new Error('the SSE transport only receives');
  }

  close() {
    this.readyState = CLOSED;
    this._es.close();
  }

  _end(code, reason, wasClean) {
    if (this.readyState === CLOSED) return;
    this.close();
    this._fire('onclose', { type: 'close', code: code, reason: reason, wasClean: wasClean });
  }

  _fire(name, event) {
    const handler = this[name];
    if (typeof handler === 'function') handler.call(this, event);
  }
}

function parseHeader(text) {
  try {
    const header = JSON.parse(text);
    return header && typeof header === 'object' && typeof header.t === 'string' ? header : null;
  } catch (err) {
    return null;
  }
}

function decodeUtf8(bytes) {
  if (typeof TextDecoder === 'function') return new TextDecoder().decode(bytes);
  let text = '';
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  return decodeURIComponent(escape(text));
}

function sessionStore() {
  try {
    const store = hostGlobal().sessionStorage;
    return store && typeof store.getItem === 'function' ? store : null;
  } catch (err) {
    return null; // SecurityError when storage is disabled
  }
}

class ReconnectingWebSocket extends EventTarget {
  /**
   * @param url string, or a function returning a string or a Promise of one (E7)
   * @param protocols null, a string, an array of strings, or a function returning one (E7)
   * @param options see LEGACY_DEFAULTS / EXTENSION_DEFAULTS and the README
   */
  constructor(url, protocols, options) {
    super();
    if (!options) options = {};

    // C1: every option becomes an instance property, read at time of use.
    for (const key of Object.keys(LEGACY_DEFAULTS)) {
      this[key] = typeof options[key] !== 'undefined' ? options[key] : LEGACY_DEFAULTS[key];
    }
    for (const key of Object.keys(EXTENSION_DEFAULTS)) {
      this[key] = typeof options[key] !== 'undefined' ? options[key] : EXTENSION_DEFAULTS[key];
    }

    // C2: the public properties 1.0.0 has. `url` is the argument as passed; with a provider
    // function it becomes the last string the provider returned.
    this._urlProvider = typeof url === 'function' ? url : null;
    this.url = this._urlProvider ? '' : url;
    this.reconnectAttempts = 0;
    this.readyState = CONNECTING;
    this.protocol = null;

    this._protocols = protocols;
    this._WebSocket = options.WebSocket || null;
    this._EventSource = options.EventSource || null;
    this._transport = 'websocket';
    this._wsFailures = 0; // consecutive WebSocket attempts that never opened
    this._sseSince = 0;
    this._binaryType = options.binaryType || 'blob';
    this._ctx = null; // the current attempt: its socket, mode and timers
    this._state = 'connecting';
    this._forcedClose = false;
    this._generation = 0; // bumped by every open/close so stale async work can tell it lost
    this._retryTimer = null;
    this._step = 0; // E1 backoff step; resets only after minUptime or a welcome
    this._timeoutFactor = 1; // E2 adaptive connect timeout
    this._queue = [];
    this._queueBytes = 0;
    this._positions = {};
    this._offline = false;
    this._suspended = false;
    this._detachEnvironment = null;

    for (const type of LEGACY_EVENTS.concat(EXTENSION_EVENTS)) {
      this.addEventListener(type, (event) => {
        const handler = this['on' + type];
        if (typeof handler === 'function') handler.call(this, event); // D1: null is tolerated
      });
    }

    this._loadPositions();

    if (this.automaticOpen == true) this.open(false);
  }

  // ---- public API -------------------------------------------------------------------------

  /** One of 'connecting' | 'open' | 'backoff' | 'offline' | 'closed' (E8). */
  get state() {
    return this._state;
  }

  get binaryType() {
    return this._binaryType;
  }

  set binaryType(value) {
    this._binaryType = value;
    const ctx = this._ctx;
    if (ctx && !ctx.herald) {
      try {
        ctx.ws.binaryType = value;
      } catch (err) {
        // an implementation rejecting the value keeps its own; our property still reports it
      }
    }
  }

  /** Bytes buffered in the socket plus bytes waiting in the send queue (UTF-8 for strings). */
  get bufferedAmount() {
    const ws = this._ctx && this._ctx.ws;
    return (ws && ws.bufferedAmount ? ws.bufferedAmount : 0) + this._queueBytes;
  }

  get extensions() {
    const ws = this._ctx && this._ctx.ws;
    return ws && ws.extensions ? ws.extensions : '';
  }

  /** 'websocket', or 'sse' after falling back to Server-Sent Events. */
  get transport() {
    return this._transport;
  }

  /** A copy of the last position handled per group: {group: {o, e}} (herald.v1 and SSE). */
  get positions() {
    const copy = {};
    for (const group of Object.keys(this._positions)) {
      copy[group] = { o: this._positions[group].o, e: this._positions[group].e };
    }
    return copy;
  }

  /**
   * Starts connecting. Called by the constructor unless automaticOpen is false. A falsy
   * argument marks a fresh start (a `connecting` event, reconnectAttempts = 0), as in 1.0.0.
   * Unlike 1.0.0 it clears the forced-close state, so the socket reconnects again (D1).
   */
  open(reconnectAttempt) {
    this._forcedClose = false;
    this._suspended = false;
    this._clearRetry();
    if (this._ctx) this._discard(this._ctx, 1000, 'reopen');
    this._attempt(!!reconnectAttempt);
  }

  /**
   * Sends now when open. Otherwise queues (returns false) within the sendQueue bounds and throws
   * a QuotaExceededError DOMException beyond them (E3). With `sendQueue: false` it behaves like
   * 1.0.0: the native error while a socket is connecting, the legacy string during backoff (D4).
   */
  send(data) {
    const ctx = this._ctx;
    // SSE only receives: sends wait in the queue for the next WebSocket, as while disconnected.
    if (ctx && ctx.opened && !ctx.sse) {
      this._log('send', data);
      this._transmit(ctx, data);
      return true;
    }
    const limits = this._queueLimits();
    if (!limits) {
      if (ctx && !ctx.sse) return this._transmit(ctx, data);
      throw LEGACY_SEND_ERROR;
    }
    this._expireQueue(limits);
    const size = byteSize(data);
    if (this._queue.length >= limits.max || this._queueBytes + size > limits.maxBytes) {
      throw queueFullError();
    }
    this._queue.push({ data: data, size: size, at: Date.now() });
    this._queueBytes += size;
    return false;
  }

  /**
   * Closes for good: cancels the pending retry, any in-flight attempt and all timers (D1).
   * `close` follows once the socket has closed; during a backoff wait it is dispatched at once.
   */
  close(code, reason) {
    if (typeof code === 'undefined') code = 1000;
    this._forcedClose = true;
    this._offline = false;
    this._suspended = false;
    this._generation++;
    this._clearRetry();
    const ctx = this._ctx;
    if (ctx) {
      this._clearAttemptTimers(ctx);
      ctx.ws.close(code, reason); // invalid codes throw here, as with a native WebSocket
      return;
    }
    if (this.readyState !== CLOSED) {
      this._finish();
      this._emit('close', { code: code, reason: reason || '', wasClean: true, willReconnect: false });
    }
  }

  /** Closes the current socket without stopping reconnection (1.0.0's refresh, C7). */
  refresh() {
    if (this._ctx) this._ctx.ws.close();
  }

  /**
   * Drops the current socket (if any) and connects again right away. Works in every state,
   * including after close() and after giving up (E8). Resets the backoff.
   */
  reconnect(code, reason) {
    this._forcedClose = false;
    this._offline = false;
    this._suspended = false;
    this._clearRetry();
    const ctx = this._ctx;
    this.reconnectAttempts = 0;
    this._step = 0;
    if (ctx) {
      if (typeof code === 'undefined') code = 1000;
      this._discard(ctx, code, reason);
      if (ctx.opened) {
        const fields = { code: code, reason: reason || '', wasClean: true };
        this.readyState = CONNECTING;
        this._emit('connecting', Object.assign({ attempt: 1, delay: 0 }, fields));
        this._emit('close', Object.assign({ willReconnect: true, delay: 0 }, fields));
      }
    }
    this._attempt(true);
  }

  /** The payloads waiting in the send queue, oldest first. */
  pendingMessages() {
    return this._queue.map((entry) => entry.data);
  }

  /** Empties the send queue and returns what it held. */
  clearQueue() {
    const pending = this.pendingMessages();
    this._queue = [];
    this._queueBytes = 0;
    return pending;
  }

  // ---- connecting -------------------------------------------------------------------------

  _attempt(reconnectAttempt) {
    // 1.0.0 counts before checking, so maxReconnectAttempts = N allows N retries. Unlike 1.0.0
    // no socket is created once the limit is passed (D3).
    if (reconnectAttempt && this.maxReconnectAttempts && this.reconnectAttempts > this.maxReconnectAttempts) {
      this._finish();
      this._emit('giveup', { attempts: this.reconnectAttempts - 1 });
      return;
    }
    this.readyState = CONNECTING;
    this._state = 'connecting';
    this._attachEnvironment();
    const generation = ++this._generation;
    let url;
    let protocols;
    try {
      url = this._urlProvider ? this._urlProvider() : this.url;
      protocols = typeof this._protocols === 'function' ? this._protocols() : this._protocols;
    } catch (err) {
      if (!reconnectAttempt) this._announceStart();
      this._providerFailed(reconnectAttempt, err);
      return;
    }
    if (isThenable(url) || isThenable(protocols)) {
      if (!reconnectAttempt) this._announceStart();
      Promise.all([url, protocols]).then(
        (resolved) => {
          if (generation === this._generation) this._connect(resolved[0], resolved[1], reconnectAttempt, false);
        },
        (err) => {
          if (generation === this._generation) this._providerFailed(reconnectAttempt, err);
        }
      );
      return;
    }
    this._connect(url, protocols, reconnectAttempt, !reconnectAttempt);
  }

  _announceStart() {
    this._emit('connecting', { attempt: 0, delay: 0 });
    this.reconnectAttempts = 0;
  }

  // A URL/protocols provider threw or rejected: report it and retry like a failed connection.
  _providerFailed(reconnectAttempt, err) {
    this._log('provider-error', err);
    this._emit('error', { error: err });
    const ctx = { ws: null, reconnectAttempt: reconnectAttempt, opened: false };
    this._afterDrop(ctx, { code: 1006, reason: 'url provider failed', wasClean: false }, { local: true });
  }

  _connect(url, protocols, reconnectAttempt, announce) {
    if (this._urlProvider) this.url = String(url);
    const target = toSocketUrl(url);
    if (this._transport === 'sse' && Date.now() - this._sseSince >= this.websocketRetryInterval) {
      // Time to try WebSocket again; one more failure that never opens goes back to SSE.
      this._transport = 'websocket';
      this._wsFailures = Math.max(0, this.sseAfter - 1);
    }
    const sse = this._transport === 'sse';
    const offered = sse ? [] : this._offer(protocols, target);
    const Impl = sse ? this._eventSourceImpl() : this._WebSocket || hostGlobal().WebSocket;
    if (typeof Impl !== 'function') {
      throw new TypeError('ReconnectingWebSocket: no WebSocket implementation; pass options.WebSocket');
    }
    let ws;
    try {
      ws = sse ? new SseSocket(Impl, toEventSourceUrl(target, this._lastEventId()), this._binaryType) : new Impl(target, offered);
    } catch (err) {
      if (announce) throw err; // a bad URL throws from the constructor, as with a native WebSocket
      this._providerFailed(reconnectAttempt, err);
      return;
    }
    const ctx = {
      ws: ws,
      target: target,
      sse: sse,
      reconnectAttempt: reconnectAttempt,
      offeredHerald: offered.indexOf(HERALD_PROTOCOL) >= 0,
      herald: false,
      welcomed: false,
      opened: false,
      openedAt: 0,
      lastRx: 0,
      lastTx: 0,
      pingMs: 0,
      grace: false,
      connectTimer: null,
      watchdog: null,
      chain: null,
    };
    this._ctx = ctx;
    try {
      ws.binaryType = this._binaryType;
    } catch (err) {
      // keep the implementation's default
    }
    ws.onopen = (event) => this._onSocketOpen(ctx, event);
    ws.onclose = (event) => this._onSocketClose(ctx, event);
    ws.onmessage = (event) => this._onSocketMessage(ctx, event);
    ws.onerror = (event) => this._onSocketError(ctx, event);
    if (sse) ws.onresync = (event) => this._onSseResync(ctx, event);

    if (announce) this._announceStart();
    this._log('attempt-connect', target);
    if (this._ctx !== ctx) return; // a connecting handler closed or reopened
    const limit = Math.max(this.maxTimeoutInterval, this.timeoutInterval);
    const timeout = Math.min(this.timeoutInterval * this._timeoutFactor, limit);
    ctx.connectTimer = setTimeout(() => this._onConnectTimeout(ctx), timeout);
  }

  _offer(protocols, target) {
    let list;
    if (protocols === null || typeof protocols === 'undefined' || protocols === '') list = [];
    else if (Array.isArray(protocols)) list = protocols.slice();
    else list = [String(protocols)];
    if (list.indexOf(HERALD_PROTOCOL) < 0 && this._wantsHerald(target)) list.push(HERALD_PROTOCOL);
    return list;
  }

  _eventSourceImpl() {
    return this._EventSource || hostGlobal().EventSource;
  }

  // Whether this connection may fall back to SSE (DESIGN.md §14).
  _mayUseSse(target) {
    if (typeof this._eventSourceImpl() !== 'function') return false;
    if (Array.isArray(this.transports)) return this.transports.indexOf('sse') >= 0;
    return this.transports === 'auto' && this._wantsHerald(target);
  }

  // Counts WebSocket attempts that never opened; after `sseAfter` of them in a row, the next
  // attempts use SSE for `websocketRetryInterval`.
  _noteWebSocketAttempt(ctx) {
    if (!ctx.target) return; // a URL provider that failed
    if (ctx.sse) {
      // SSE did not open either: the server is likely down, not behind an Upgrade-stripping
      // proxy. Alternate, so whichever transport works once it is back gets there.
      if (!ctx.opened) {
        this._transport = 'websocket';
        this._wsFailures = Math.max(0, this.sseAfter - 1);
      }
      return;
    }
    if (ctx.opened) {
      this._wsFailures = 0;
      return;
    }
    this._wsFailures++;
    if (this._wsFailures >= this.sseAfter && this._mayUseSse(ctx.target)) {
      this._log('fallback-sse', ctx.target);
      this._transport = 'sse';
      this._sseSince = Date.now();
      this._wsFailures = 0;
    }
  }

  // The SSE id of the positions kept: `group:offset:epoch` per group, joined by ','.
  _lastEventId() {
    const parts = [];
    for (const group of Object.keys(this._positions)) {
      const pos = this._positions[group];
      if (typeof pos.o === 'number' && typeof pos.e === 'string') parts.push(group + ':' + pos.o + ':' + pos.e);
    }
    return parts.join(',');
  }

  // Keeps the positions an SSE event's id carries.
  _takeEventId(id) {
    if (typeof id !== 'string' || !id) return;
    for (const part of id.split(',')) {
      const fields = part.split(':');
      const offset = Number(fields[1]);
      if (fields.length === 3 && fields[0] && Number.isSafeInteger(offset)) this._positions[fields[0]] = { o: offset, e: fields[2] };
    }
    this._savePositions();
  }

  _onSseResync(ctx, event) {
    if (this._ctx !== ctx) return;
    this._takeEventId(event.lastEventId);
    let groups = [];
    try {
      groups = JSON.parse(event.data).groups || [];
    } catch (err) {
      // unreadable: nothing to name
    }
    for (const group of groups) {
      if (this._ctx !== ctx) return;
      this._emit('resync', { group: group });
    }
  }

  _wantsHerald(target) {
    if (this.herald === true) return true;
    if (this.herald !== 'auto' || !HERALD_SCRIPT_HOST) return false;
    try {
      return new URL(String(target)).host === HERALD_SCRIPT_HOST;
    } catch (err) {
      return false;
    }
  }

  // E2: detach first so the abandoned socket cannot deliver stray events, then close it.
  _onConnectTimeout(ctx) {
    ctx.connectTimer = null;
    if (this._ctx !== ctx) return;
    this._log('connection-timeout', this.url);
    const limit = Math.max(this.maxTimeoutInterval, this.timeoutInterval);
    if (this.timeoutInterval * this._timeoutFactor < limit) this._timeoutFactor *= 2;
    const stillConnecting = ctx.ws.readyState === CONNECTING;
    this._discard(ctx, stillConnecting ? undefined : 1000, stillConnecting ? undefined : 'timeout');
    // A browser reports closing a connecting socket as error + close 1006; keep that shape.
    if (stillConnecting) this._emit('error', {});
    this._afterDrop(ctx, { code: 1006, reason: '', wasClean: false, timeout: true }, { local: true });
  }

  // ---- socket events ----------------------------------------------------------------------

  _onSocketOpen(ctx) {
    if (this._ctx !== ctx) return;
    ctx.lastRx = Date.now();
    if (ctx.sse) {
      // herald resumes from the positions in the URL; a resync event follows when it cannot.
      this._becomeOpen(ctx, this._lastEventId() !== '');
      return;
    }
    if (ctx.offeredHerald && ctx.ws.protocol === HERALD_PROTOCOL) {
      // §5.5: say where we are and wait for the welcome (still under the connect timeout)
      // before telling the page the socket is open.
      ctx.herald = true;
      try {
        ctx.ws.binaryType = 'arraybuffer';
      } catch (err) {
        // Blobs are handled too, just asynchronously
      }
      ctx.lastTx = Date.now();
      ctx.ws.send(JSON.stringify({ t: 'hello', v: 1, streams: this._helloStreams() }));
      return;
    }
    this._becomeOpen(ctx, false);
  }

  _becomeOpen(ctx, recovered, streams) {
    clearTimeout(ctx.connectTimer);
    ctx.connectTimer = null;
    this._timeoutFactor = 1;
    ctx.opened = true;
    ctx.openedAt = Date.now();
    this.protocol = ctx.ws.protocol;
    this.readyState = OPEN;
    this._state = 'open';
    this.reconnectAttempts = 0;
    this._offline = false;
    if (ctx.herald) this._step = 0; // a welcome is the server vouching for the connection (E1)
    const isReconnect = !!ctx.reconnectAttempt;
    ctx.reconnectAttempt = false;
    this._flushQueue(ctx); // E3: queued sends go out before the page hears `open`
    if (this._ctx !== ctx) return;
    this._armWatchdog(ctx);
    const fields = { isReconnect: isReconnect, recovered: recovered };
    if (streams) fields.streams = streams;
    this._emit('open', fields);
  }

  _onSocketClose(ctx, event) {
    if (this._ctx !== ctx) return;
    this._afterDrop(ctx, { code: event.code, reason: event.reason, wasClean: event.wasClean }, {});
  }

  _onSocketError(ctx) {
    if (this._ctx !== ctx) return;
    this._log('onerror', this.url);
    this._emit('error', {});
  }

  _onSocketMessage(ctx, event) {
    if (this._ctx !== ctx) return;
    ctx.lastRx = Date.now();
    ctx.grace = false;
    if (ctx.sse) {
      this._takeEventId(event.lastEventId);
      this._emit('message', { data: event.data });
      return;
    }
    if (!ctx.herald) {
      this._log('onmessage', this.url, event.data);
      this._emit('message', { data: event.data });
      return;
    }
    const data = event.data;
    // Frames must be handled in arrival order, so once one needs an async Blob read, later
    // frames queue behind it.
    if (ctx.chain || (data && typeof data === 'object' && typeof data.arrayBuffer === 'function')) {
      ctx.chain = (ctx.chain || Promise.resolve())
        .then(() => (typeof data === 'string' ? data : typeof data.arrayBuffer === 'function' ? data.arrayBuffer() : data))
        .then((ready) => {
          if (this._ctx === ctx) this._onHeraldFrame(ctx, ready);
        });
    } else {
      this._onHeraldFrame(ctx, data);
    }
    this._keepAlive(ctx);
  }

  // ---- losing a connection ----------------------------------------------------------------

  // Forgets the socket: no handler of it runs again, its timers are cancelled. Then closes it.
  _discard(ctx, code, reason) {
    this._clearAttemptTimers(ctx);
    if (this._ctx === ctx) this._ctx = null;
    const ws = ctx.ws;
    if (!ws) return;
    ws.onopen = ws.onclose = ws.onmessage = ws.onerror = null;
    if (ctx.sse) ws.onresync = null;
    try {
      if (typeof code === 'undefined') ws.close();
      else ws.close(code, reason);
    } catch (err) {
      // already closed, or the implementation refuses: it is forgotten either way
    }
  }

  _clearAttemptTimers(ctx) {
    clearTimeout(ctx.connectTimer);
    clearTimeout(ctx.watchdog);
    ctx.connectTimer = null;
    ctx.watchdog = null;
  }

  _clearRetry() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  /**
   * The one place a lost connection or failed attempt is handled. Event order follows 1.0.0
   * (C5): `connecting{code}` then, once per outage, `close`; then the retry is scheduled.
   * opts.local: we closed it ourselves (never terminal). opts.delay: a fixed retry delay.
   * opts.noPenalty: the retry does not count as an attempt (goaway, online).
   */
  _afterDrop(ctx, closeInfo, opts) {
    if (ctx.ws) this._discard(ctx);
    this._noteWebSocketAttempt(ctx);
    const fields = { code: closeInfo.code, reason: closeInfo.reason, wasClean: closeInfo.wasClean };
    if (closeInfo.timeout) fields.timeout = true;
    if (this._forcedClose) {
      this._finish();
      this._emit('close', Object.assign(fields, { willReconnect: false }));
      return;
    }
    const wasUp = ctx.opened;
    if (wasUp && Date.now() - ctx.openedAt >= this.minUptime) this._step = 0;

    let verdict = opts.local ? true : this._shouldReconnect(closeInfo);
    if (typeof opts.delay === 'number') verdict = opts.delay;
    if (verdict === false) {
      // E6: terminal close code
      this._finish();
      this._emit('close', Object.assign({}, fields, { willReconnect: false }));
      this._emit('giveup', { code: fields.code, reason: fields.reason, attempts: this.reconnectAttempts });
      return;
    }

    const paused = this._offline || this._suspended;
    const penalty = !opts.noPenalty;
    const roll = Math.random();
    const plan = () => (paused ? null : typeof verdict === 'number' ? verdict : this._backoffDelay(roll, wasUp));
    this.readyState = CONNECTING;
    this._state = paused ? 'offline' : 'backoff';
    const generation = this._generation;
    const delay = plan();
    const attempt = this.reconnectAttempts + (penalty ? 1 : 0);
    this._log('onclose', this.url, closeInfo.code);
    this._emit('connecting', Object.assign({ attempt: attempt, delay: delay }, fields));
    if (generation !== this._generation) return; // a handler called close(), open() or reconnect()
    if (!ctx.reconnectAttempt) {
      this._emit('close', Object.assign({ willReconnect: true, delay: delay }, fields));
      if (generation !== this._generation) return;
    }
    if (paused) {
      if (this._offline) this._scheduleProbe();
      return;
    }
    // Computed again: handlers may have changed reconnectInterval and friends (C1).
    this._scheduleRetry(plan(), penalty);
  }

  _shouldReconnect(closeInfo) {
    if (typeof this.shouldReconnect === 'function') {
      const answer = this.shouldReconnect(closeInfo);
      if (answer === false || answer === true) return answer;
      if (typeof answer === 'number' && answer >= 0) return answer;
    }
    const extra = this.terminalCloseCodes;
    if (Array.isArray(extra) && extra.indexOf(closeInfo.code) >= 0) return false;
    return !isTerminalCloseCode(closeInfo.code);
  }

  /**
   * E1. 'none' is 1.0.0's schedule: min(interval * decay^attempts, max). 'full' draws uniformly
   * between a small floor and that base, 'equal' between half the base and the base. The first
   * retry after a connection that was up draws from [0, reconnectInterval) so that a server
   * restart does not make every tab come back in the same instant.
   */
  _backoffDelay(roll, wasUp) {
    const mode = this.jitter;
    const legacy = mode === 'none' || mode === false;
    const step = legacy ? this.reconnectAttempts : this._step;
    const raw = this.reconnectInterval * Math.pow(this.reconnectDecay, step);
    const base = raw > this.maxReconnectInterval ? this.maxReconnectInterval : raw;
    if (legacy) return base;
    if (wasUp && this._step === 0) return roll * this.reconnectInterval;
    if (mode === 'equal') return base / 2 + roll * (base / 2);
    const floor = Math.min(250, this.reconnectInterval);
    return floor + roll * Math.max(0, base - floor);
  }

  _scheduleRetry(delay, penalty) {
    this._clearRetry();
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (penalty) {
        this.reconnectAttempts++;
        this._step++;
      }
      this._attempt(true);
    }, delay);
  }

  // E5: navigator.onLine can be wrong, so an offline client still tries now and then.
  _scheduleProbe() {
    this._clearRetry();
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._attempt(true);
    }, this.maxReconnectInterval);
  }

  // Terminal state: CLOSED, nothing pending, no window listeners.
  _finish() {
    this._clearRetry();
    this.readyState = CLOSED;
    this._state = 'closed';
    if (this._detachEnvironment) {
      this._detachEnvironment();
      this._detachEnvironment = null;
    }
  }

  // ---- liveness (E4, §5.5 no-ping) -------------------------------------------------------

  _watchdogLimit(ctx) {
    if (ctx.herald) return ctx.pingMs > 0 ? ctx.pingMs + this.maxPingDelay : 0;
    return this.idleTimeout > 0 ? this.idleTimeout : 0;
  }

  // One timer per connection, re-armed lazily: it compares the time of the last received frame
  // with the limit when it fires instead of being reset on every frame.
  _armWatchdog(ctx, wait) {
    clearTimeout(ctx.watchdog);
    ctx.watchdog = null;
    const limit = this._watchdogLimit(ctx);
    if (!(limit > 0)) return;
    const delay = typeof wait === 'number' ? wait : limit;
    const due = Date.now() + delay;
    ctx.watchdog = setTimeout(() => this._onWatchdog(ctx, due), delay);
  }

  _onWatchdog(ctx, due) {
    ctx.watchdog = null;
    if (this._ctx !== ctx) return;
    const now = Date.now();
    const limit = this._watchdogLimit(ctx);
    const idle = now - ctx.lastRx;
    if (idle < limit) {
      this._armWatchdog(ctx, limit - idle);
      return;
    }
    if (!ctx.grace && now - due > LATE_TIMER_MS) {
      // We were asleep: frames may be waiting behind this timer. Give them a moment.
      ctx.grace = true;
      this._armWatchdog(ctx, LATE_GRACE_MS);
      return;
    }
    this._livenessLost(ctx);
  }

  _livenessLost(ctx) {
    if (ctx.herald) {
      this._log('no-ping', this.url);
      this._discard(ctx, 4002, 'no-ping');
      this._afterDrop(ctx, { code: 4002, reason: 'no-ping', wasClean: false }, { local: true });
    } else {
      this._log('idle-timeout', this.url);
      this.refresh();
    }
  }

  _checkLiveness() {
    const ctx = this._ctx;
    if (!ctx || !ctx.opened) return;
    const limit = this._watchdogLimit(ctx);
    if (limit > 0 && Date.now() - ctx.lastRx >= limit) this._livenessLost(ctx);
  }

  // ---- herald.v1 (§5.5, DESIGN.md §4) ------------------------------------------------------

  _onHeraldFrame(ctx, data) {
    let header;
    let payload;
    if (typeof data === 'string') {
      const newline = data.indexOf('\n');
      header = parseHeader(newline < 0 ? data : data.slice(0, newline));
      payload = newline < 0 ? '' : data.slice(newline + 1);
    } else {
      const buffer = data instanceof ArrayBuffer ? data
        : ArrayBuffer.isView(data) ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)
          : null;
      if (!buffer || buffer.byteLength < 4) return this._badFrame(data);
      const headerLength = new DataView(buffer).getUint32(0, false);
      if (4 + headerLength > buffer.byteLength) return this._badFrame(data);
      header = parseHeader(decodeUtf8(new Uint8Array(buffer, 4, headerLength)));
      payload = buffer.slice(4 + headerLength);
      if (this._binaryType === 'blob' && typeof Blob === 'function') payload = new Blob([payload]);
    }
    if (!header) return this._badFrame(data);
    switch (header.t) {
      case 'm':
        return this._onHeraldMessage(ctx, header, payload);
      case 'welcome':
        return this._onWelcome(ctx, header);
      case 'ping':
        ctx.lastTx = Date.now();
        ctx.ws.send('{"t":"pong"}');
        return undefined;
      case 'goaway':
        return this._onGoaway(ctx, header);
      case 'join':
      case 'leave':
        // Routes with presence = true: another user (sub) entered or left the group.
        if (typeof header.s !== 'string' || typeof header.sub !== 'string') return this._badFrame(data);
        this._emit(header.t, { group: header.s, sub: header.sub });
        return undefined;
      default:
        this._log('unknown-frame', header.t); // newer server: ignore what we do not know
        return undefined;
    }
  }

  // herald pings only a connection it has not written to for a while, and drops one it has not
  // heard from within ping_ms + its timeout (4002). A busy stream is never idle, so it is never
  // pinged, and a page that only listens would be dropped every ~35 s. So while frames arrive,
  // an unsolicited pong goes out at most every ping_ms / 2 (the server accepts a pong anytime).
  _keepAlive(ctx) {
    if (this._ctx !== ctx || !ctx.welcomed || !(ctx.pingMs > 0)) return;
    const now = Date.now();
    if (now - ctx.lastTx < ctx.pingMs / 2) return;
    ctx.lastTx = now;
    try {
      ctx.ws.send('{"t":"pong"}');
    } catch (err) {
      // closing: the next connection says hello anyway
    }
  }

  _badFrame(data) {
    this._log('bad-frame', data);
  }

  _onWelcome(ctx, header) {
    if (ctx.welcomed) return;
    ctx.welcomed = true;
    ctx.pingMs = typeof header.ping_ms === 'number' && header.ping_ms > 0 ? header.ping_ms : 0;
    const streams = header.streams && typeof header.streams === 'object' ? header.streams : {};
    const resync = [];
    const report = {};
    let resumed = 0;
    for (const group of Object.keys(streams)) {
      const info = streams[group] || {};
      const top = typeof info.o === 'number' ? info.o : null;
      const epoch = typeof info.e === 'string' ? info.e : null;
      const had = this._positions[group];
      let replay = 0;
      let recovered = false;
      if (had) {
        resumed++;
        // Same epoch and recovered: replays follow, keep our offset. Otherwise the page must
        // reload its state and the stream continues from the server's top.
        const lost = info.recovered === false || had.e !== epoch || (top !== null && top < had.o);
        if (lost) resync.push(group);
        this._positions[group] = lost ? { o: top, e: epoch } : { o: had.o, e: epoch };
        recovered = !lost;
        if (!lost && top !== null && typeof had.o === 'number') replay = top - had.o;
      } else {
        // First visit to this group: the live stream starts after the server's top.
        this._positions[group] = { o: top, e: epoch };
      }
      // What the page may show: the server's offset, and how many missed messages follow.
      report[group] = { o: top, e: epoch, recovered: recovered, replay: replay };
    }
    this._savePositions();
    this._becomeOpen(ctx, resumed > 0 && resync.length === 0, report);
    for (const group of resync) {
      if (this._ctx !== ctx) return;
      this._emit('resync', { group: group });
    }
  }

  _onHeraldMessage(ctx, header, payload) {
    if (!ctx.welcomed) return this._badFrame(header);
    const group = header.s;
    const offset = header.o;
    if (typeof group === 'string' && typeof offset === 'number') {
      const had = this._positions[group];
      const last = had && typeof had.o === 'number' ? had.o : null;
      if (last !== null && offset <= last) {
        this._log('duplicate', group, offset);
        return undefined;
      }
      this._positions[group] = { o: offset, e: had ? had.e : null };
      this._savePositions();
      if (last !== null && offset > last + 1) {
        this._emit('gap', { group: group, from: last + 1, to: offset - 1 });
        if (this._ctx !== ctx) return undefined;
      }
    }
    this._emit('message', { data: payload, group: group, offset: offset });
    return undefined;
  }

  _onGoaway(ctx, header) {
    const range = Array.isArray(header.retry_ms) ? header.retry_ms : [0, this.reconnectInterval];
    const low = Math.max(0, Number(range[0]) || 0);
    const high = Math.max(low, Number(range[1]) || low);
    const delay = low + Math.random() * (high - low);
    this._log('goaway', delay);
    this._discard(ctx, 1000, 'goaway');
    this._afterDrop(ctx, { code: 1001, reason: 'goaway', wasClean: true }, { local: true, delay: delay, noPenalty: true });
  }

  _helloStreams() {
    const streams = {};
    for (const group of Object.keys(this._positions)) {
      const pos = this._positions[group];
      if (typeof pos.o === 'number' && typeof pos.e === 'string') streams[group] = { o: pos.o, e: pos.e };
    }
    return streams;
  }

  _storageKey() {
    if (typeof this.persistPositions === 'string') return this.persistPositions;
    const where = typeof this.url === 'string' && this.url ? this.url.split(/[?#]/)[0] : 'default';
    return 'herald.positions:' + where;
  }

  _loadPositions() {
    if (!this.persistPositions) return;
    const store = sessionStore();
    if (!store) return;
    try {
      const saved = JSON.parse(store.getItem(this._storageKey()) || '{}');
      for (const group of Object.keys(saved)) {
        const pos = saved[group];
        if (pos && typeof pos.o === 'number') this._positions[group] = { o: pos.o, e: typeof pos.e === 'string' ? pos.e : null };
      }
    } catch (err) {
      // unreadable or foreign data: start without positions
    }
  }

  _savePositions() {
    if (!this.persistPositions) return;
    const store = sessionStore();
    if (!store) return;
    try {
      store.setItem(this._storageKey(), JSON.stringify(this._positions));
    } catch (err) {
      // quota or privacy mode: resuming after a reload is best effort
    }
  }

  // ---- sending -------------------------------------------------------------------------------

  // Plain mode writes the page's data as is. In herald.v1 every client frame after the hello
  // carries a header (the server reads the JSON before the first newline), so page data goes out
  // framed like server messages: `{"t":"m"}\n<payload>`, or u32 length | header | payload.
  _transmit(ctx, data) {
    if (!ctx.herald) return ctx.ws.send(data);
    ctx.lastTx = Date.now();
    if (typeof data === 'string') return ctx.ws.send(CLIENT_MESSAGE_HEADER + '\n' + data);
    const head = CLIENT_MESSAGE_HEADER_BYTES;
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      const body = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      const out = new Uint8Array(4 + head.length + body.length);
      new DataView(out.buffer).setUint32(0, head.length, false);
      out.set(head, 4);
      out.set(body, 4 + head.length);
      return ctx.ws.send(out.buffer);
    }
    if (typeof Blob === 'function' && data instanceof Blob) {
      const prefix = new Uint8Array(4 + head.length);
      new DataView(prefix.buffer).setUint32(0, head.length, false);
      prefix.set(head, 4);
      return ctx.ws.send(new Blob([prefix, data]));
    }
    return ctx.ws.send(CLIENT_MESSAGE_HEADER + '\n' + String(data));
  }

  // ---- send queue (E3) ---------------------------------------------------------------------

  _queueLimits() {
    const opt = this.sendQueue;
    if (!opt) return null;
    return Object.assign({}, QUEUE_DEFAULTS, typeof opt === 'object' ? opt : {});
  }

  _expireQueue(limits) {
    if (!(limits.ttlMs > 0)) return;
    const oldest = Date.now() - limits.ttlMs;
    let count = 0;
    while (this._queue.length && this._queue[0].at < oldest) {
      this._queueBytes -= this._queue.shift().size;
      count++;
    }
    if (count) this._emit('drop', { count: count, reason: 'ttl' });
  }

  _flushQueue(ctx) {
    if (ctx.sse) return; // SSE only receives: the queue waits for a WebSocket
    const limits = this._queueLimits();
    if (limits) this._expireQueue(limits);
    while (this._queue.length && this._ctx === ctx) {
      const entry = this._queue[0];
      try {
        this._transmit(ctx, entry.data);
      } catch (err) {
        this._log('flush-failed', err);
        return; // keep it; the next open retries
      }
      this._queue.shift();
      this._queueBytes -= entry.size;
    }
  }

  // ---- network, visibility and bfcache (E5) -----------------------------------------------

  _attachEnvironment() {
    if (this._detachEnvironment || !this.watchNetwork) return;
    const host = hostGlobal();
    if (!host || typeof host.addEventListener !== 'function') return;
    const doc = typeof document !== 'undefined' && document && typeof document.addEventListener === 'function' ? document : null;
    const onWindow = {
      online: () => this._onOnline(),
      offline: () => this._onOffline(),
      pagehide: (event) => this._onPageHide(event),
      pageshow: (event) => this._onPageShow(event),
      focus: () => this._checkLiveness(),
    };
    const onVisibility = () => {
      if (doc.visibilityState === 'visible') this._checkLiveness();
    };
    for (const type of Object.keys(onWindow)) host.addEventListener(type, onWindow[type]);
    if (doc) doc.addEventListener('visibilitychange', onVisibility);
    this._detachEnvironment = () => {
      for (const type of Object.keys(onWindow)) host.removeEventListener(type, onWindow[type]);
      if (doc) doc.removeEventListener('visibilitychange', onVisibility);
    };
  }

  _onOffline() {
    if (this._state === 'closed' || this._offline) return;
    this._offline = true;
    const ctx = this._ctx;
    if (ctx) {
      this._discard(ctx, 1000, 'offline');
      this._afterDrop(ctx, { code: 1006, reason: 'offline', wasClean: false }, { local: true });
    } else {
      this._state = 'offline';
      this._scheduleProbe();
    }
  }

  _onOnline() {
    if (this._state === 'closed') return;
    const wasOffline = this._offline;
    this._offline = false;
    if (this._ctx) return; // a probe is already under way
    if (!wasOffline && this._state !== 'backoff') return;
    this._state = 'backoff';
    // `online` often fires before the network is usable; a short random wait also spreads tabs.
    this._scheduleRetry(100 + Math.random() * 900, false);
  }

  _onPageHide(event) {
    if (!event || !event.persisted || this._state === 'closed') return;
    this._suspended = true;
    this._clearRetry();
    const ctx = this._ctx;
    if (ctx) {
      this._discard(ctx, 1001, 'pagehide');
      this._afterDrop(ctx, { code: 1001, reason: 'pagehide', wasClean: true }, { local: true });
    } else {
      this._state = 'offline';
    }
  }

  _onPageShow(event) {
    if (this._suspended && event && event.persisted) {
      this._suspended = false;
      if (this._state !== 'closed') {
        this._clearRetry();
        this._attempt(true);
      }
      return;
    }
    this._checkLiveness();
  }

  // ---- helpers -----------------------------------------------------------------------------

  _emit(type, fields) {
    this.dispatchEvent(makeEvent(type, fields));
  }

  _log() {
    if (this.debug || ReconnectingWebSocket.debugAll) {
      const args = ['ReconnectingWebSocket'].concat(Array.prototype.slice.call(arguments));
      console.debug.apply(console, args);
    }
  }
}

// C3: handler properties are no-ops on the prototype, replaceable per instance.
ReconnectingWebSocket.prototype.onopen = function (event) {};
ReconnectingWebSocket.prototype.onclose = function (event) {};
ReconnectingWebSocket.prototype.onconnecting = function (event) {};
ReconnectingWebSocket.prototype.onmessage = function (event) {};
ReconnectingWebSocket.prototype.onerror = function (event) {};
ReconnectingWebSocket.prototype.ongiveup = null;
ReconnectingWebSocket.prototype.ongap = null;
ReconnectingWebSocket.prototype.onresync = null;
ReconnectingWebSocket.prototype.ondrop = null;
ReconnectingWebSocket.prototype.onjoin = null;
ReconnectingWebSocket.prototype.onleave = null;

ReconnectingWebSocket.prototype.CONNECTING = CONNECTING;
ReconnectingWebSocket.prototype.OPEN = OPEN;
ReconnectingWebSocket.prototype.CLOSING = CLOSING;
ReconnectingWebSocket.prototype.CLOSED = CLOSED;

ReconnectingWebSocket.debugAll = false;
ReconnectingWebSocket.CONNECTING = CONNECTING;
ReconnectingWebSocket.OPEN = OPEN;
ReconnectingWebSocket.CLOSING = CLOSING;
ReconnectingWebSocket.CLOSED = CLOSED;
ReconnectingWebSocket.HERALD_PROTOCOL = HERALD_PROTOCOL;
ReconnectingWebSocket.isTerminalCloseCode = isTerminalCloseCode;

// ---- exports (build.mjs rewrites everything below this line for each output format) ----
export default ReconnectingWebSocket;
export { ReconnectingWebSocket };
