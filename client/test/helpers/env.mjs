// Test environment shared by every node test: a fake clock, a step-driven mock WebSocket, a
// minimal DOM shim for joewalnes' original, and loaders that evaluate a library file with those
// fakes bound to the free names it uses (setTimeout, Date, document, ...). Nothing here sleeps.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const CLIENT_DIR = join(here, '..', '..');
export const ORIGINAL_JS = join(CLIENT_DIR, 'node_modules', 'reconnectingwebsocket', 'reconnecting-websocket.js');
export const ORIGINAL_MIN_JS = join(CLIENT_DIR, 'node_modules', 'reconnectingwebsocket', 'reconnecting-websocket.min.js');
export const DIST_CJS = join(CLIENT_DIR, 'dist', 'rws.cjs');

/** Deterministic PRNG (mulberry32) so jitter tests are reproducible. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Virtual time. setTimeout/clearTimeout are what the libraries see; `tasks` model the browser's
 * event-loop tasks that deliver socket events (not timers, so not logged). advance(ms) runs
 * tasks, then every timer due within the window in order, running tasks after each.
 */
export class FakeClock {
  constructor(log) {
    this.now = 1_700_000_000_000;
    this.timers = [];
    this.tasks = [];
    this.seq = 0;
    this.log = log;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      const delay = Math.max(0, Math.trunc(Number(ms) || 0));
      this.timers.push({ id, due: this.now + delay, fn });
      if (this.log) this.log(`timer(${ms})`);
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers = this.timers.filter((t) => t.id !== id);
    };
  }

  queueTask(fn) {
    this.tasks.push(fn);
  }

  runTasks() {
    let guard = 0;
    while (this.tasks.length) {
      if (++guard > 100000) throw new Error('task storm');
      this.tasks.shift()();
    }
  }

  advance(ms) {
    const target = this.now + ms;
    this.runTasks();
    for (let guard = 0; ; guard++) {
      if (guard > 100000) throw new Error('timer storm');
      let next = null;
      for (const t of this.timers) {
        if (t.due <= target && (!next || t.due < next.due || (t.due === next.due && t.id < next.id))) next = t;
      }
      if (!next) break;
      this.timers = this.timers.filter((t) => t !== next);
      this.now = Math.max(this.now, next.due); // after sleep(), overdue timers fire late
      next.fn();
      this.runTasks();
    }
    this.now = target;
  }

  /** A jump of the wall clock with no timer running (a laptop asleep). */
  sleep(ms) {
    this.now += ms;
  }

  pending() {
    return this.timers.map((t) => t.due - this.now).sort((a, b) => a - b);
  }
}

/** Creates a clock plus a MockWebSocket class bound to it; `sockets` lists every instance. */
export function createEnv({ logSockets = true } = {}) {
  const lines = [];
  const log = (line) => lines.push(line);
  const clock = new FakeClock(log);
  const sockets = [];

  class MockWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.protocol = '';
      this.extensions = '';
      this.bufferedAmount = 0;
      this.binaryType = 'blob';
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onclose = this.onmessage = this.onerror = null;
      sockets.push(this);
      this.id = sockets.length;
      const offered = protocols === undefined || protocols === null ? [] : [].concat(protocols);
      if (logSockets) log(`new ws${this.id} ${url} ${JSON.stringify(offered)}`);
    }

    send(data) {
      if (this.readyState === 0) throw new DOMException('Still in CONNECTING state.', 'InvalidStateError');
      if (this.readyState !== 1) return;
      this.sent.push(data);
      if (logSockets) log(`ws${this.id}.send(${typeof data === 'string' ? data : '[binary]'})`);
    }

    close(code, reason) {
      if (this.readyState >= 2) return;
      if (logSockets) log(`ws${this.id}.close(${code === undefined ? '' : code})`);
      this.closedWith = { code, reason };
      if (this.readyState === 0) {
        // closing a connecting socket fails the connection: error, then close 1006
        this.readyState = 3;
        clock.queueTask(() => {
          this._fire('onerror', { type: 'error' });
          this._fire('onclose', { type: 'close', code: 1006, reason: '', wasClean: false });
        });
        return;
      }
      this.readyState = 2;
      clock.queueTask(() => {
        this.readyState = 3;
        this._fire('onclose', { type: 'close', code: code === undefined ? 1005 : code, reason: reason || '', wasClean: true });
      });
    }

    _fire(name, event) {
      const handler = this[name];
      if (typeof handler === 'function') handler.call(this, event);
    }

    // ---- server side, driven by the test ----
    accept(protocol = '') {
      this.readyState = 1;
      this.protocol = protocol;
      this._fire('onopen', { type: 'open' });
    }

    receive(data) {
      this._fire('onmessage', { type: 'message', data });
    }

    /** Connection refused / handshake failed. */
    fail() {
      this.readyState = 3;
      this._fire('onerror', { type: 'error' });
      this._fire('onclose', { type: 'close', code: 1006, reason: '', wasClean: false });
    }

    /** Server closes with a close frame. */
    serverClose(code = 1000, reason = '') {
      this.readyState = 3;
      this._fire('onclose', { type: 'close', code, reason, wasClean: true });
    }

    /** Connection lost without a close frame. */
    lose() {
      this.readyState = 3;
      this._fire('onclose', { type: 'close', code: 1006, reason: '', wasClean: false });
    }

    error() {
      this._fire('onerror', { type: 'error' });
    }
  }
  MockWebSocket.CONNECTING = 0;
  MockWebSocket.OPEN = 1;
  MockWebSocket.CLOSING = 2;
  MockWebSocket.CLOSED = 3;

  return { lines, log, clock, sockets, WebSocket: MockWebSocket };
}

// ---- the original needs a DOM ----------------------------------------------------------------

class ShimEvent {
  initCustomEvent(type, bubbles, cancelable, detail) {
    this.type = type;
    this.detail = detail;
  }
}

class ShimEventTarget {
  constructor(log) {
    this.listeners = new Map();
    this.log = log;
  }
  addEventListener(type, fn) {
    const list = this.listeners.get(type) || [];
    if (!list.includes(fn)) list.push(fn);
    this.listeners.set(type, list);
  }
  removeEventListener(type, fn) {
    const list = this.listeners.get(type) || [];
    this.listeners.set(type, list.filter((f) => f !== fn));
  }
  dispatchEvent(event) {
    event.target = this;
    for (const fn of [...(this.listeners.get(event.type) || [])]) {
      try {
        fn.call(this, event);
      } catch (err) {
        // a browser reports a throwing listener and carries on with the next one
        this.log(`uncaught ${err && err.name}`);
      }
    }
    return true;
  }
}

const quietConsole = { debug() {}, log() {}, warn() {}, error() {} };

/** Evaluates joewalnes' reconnecting-websocket(.min).js against the env; returns the class. */
export function loadOriginal(file, env) {
  const source = readFileSync(file, 'utf8');
  const module = { exports: {} };
  const window = { WebSocket: env.WebSocket };
  const document = {
    createElement: () => new ShimEventTarget(env.log),
    createEvent: () => new ShimEvent(),
  };
  const factory = new Function('window', 'document', 'WebSocket', 'setTimeout', 'clearTimeout', 'console', 'define', 'module', source);
  factory.call({}, window, document, env.WebSocket, env.clock.setTimeout, env.clock.clearTimeout, quietConsole, undefined, module);
  return module.exports;
}

/**
 * Evaluates our shipped dist/rws.cjs with the env's clock as setTimeout/Date and an optional
 * seeded Math.random. `host` stands in for globalThis (window events, sessionStorage,
 * location); `document` for the DOM (currentScript, visibility).
 */
export function loadOurs(env, { random, host = {}, document, file = DIST_CJS } = {}) {
  const source = readFileSync(file, 'utf8');
  const module = { exports: {} };
  const fakeMath = Object.create(Math);
  fakeMath.random = random || Math.random;
  const fakeDate = { now: () => env.clock.now };
  const factory = new Function(
    'module', 'exports', 'setTimeout', 'clearTimeout', 'Date', 'Math', 'globalThis', 'self', 'window', 'document', 'console',
    source
  );
  factory(module, module.exports, env.clock.setTimeout, env.clock.clearTimeout, fakeDate, fakeMath, host, undefined, undefined, document, quietConsole);
  return module.exports;
}

/** A minimal window-like EventTarget for E5 tests. */
export function fakeWindow(extra = {}) {
  const target = new EventTarget();
  return Object.assign(target, extra);
}
