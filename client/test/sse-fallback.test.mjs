// The SSE fallback (DESIGN.md §14) against an injected EventSource: after `sseAfter` WebSocket
// attempts in a row that never opened, the client streams over EventSource with the same
// events and resumes from the positions in each event's id; later it tries WebSocket again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './helpers/ours.mjs';

function withEventSource(options = {}) {
  const sources = [];
  class MockEventSource {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.listeners = {};
      this.closed = false;
      this.onopen = this.onmessage = this.onerror = null;
      sources.push(this);
    }
    addEventListener(type, fn) {
      (this.listeners[type] = this.listeners[type] || []).push(fn);
    }
    close() {
      this.readyState = 2;
      this.closed = true;
    }
    // ---- server side, driven by the test ----
    open() {
      this.readyState = 1;
      this.onopen({ type: 'open' });
    }
    message(data, id) {
      this.onmessage({ type: 'message', data, lastEventId: id });
    }
    emit(type, data, id) {
      for (const fn of this.listeners[type] || []) fn({ type, data, lastEventId: id });
    }
    fail() {
      this.readyState = 0; // a native EventSource would reconnect by itself
      this.onerror({ type: 'error' });
    }
  }
  const t = setup(
    Object.assign({ EventSource: MockEventSource, transports: ['websocket', 'sse'], sseAfter: 2, watchNetwork: false, jitter: 'none' }, options)
  );
  return Object.assign(t, { sources, es: () => sources.at(-1) });
}

/** Fails WebSocket attempts until the client opens an EventSource. */
function failWebSockets(t, n) {
  for (let i = 0; i < n; i++) {
    t.ws().fail();
    t.env.clock.advance(t.last('connecting').delay);
  }
}

test('falls back to SSE after sseAfter WebSocket attempts that never opened, with the same events', () => {
  const t = withEventSource();
  assert.equal(t.sock.transport, 'websocket');
  failWebSockets(t, 2);
  assert.equal(t.env.sockets.length, 2, 'no third WebSocket');
  assert.equal(t.sources.length, 1);
  assert.equal(t.sock.transport, 'sse');
  assert.equal(t.es().url, 'http://h.test/message/42/stream/', 'same URL over http, no position yet');
  t.es().open();
  assert.equal(t.sock.readyState, 1);
  assert.equal(t.last('open').isReconnect, true);
  t.es().message('{"msg":"hi"}', 'user.42:7:Xy3');
  assert.equal(t.last('message').data, '{"msg":"hi"}');
  assert.deepEqual(t.sock.positions, { 'user.42': { o: 7, e: 'Xy3' } });
  assert.equal(t.sock.send('later'), false, 'SSE only receives: sends are queued');
  assert.equal(t.sock.pendingMessages().length, 1);
});

test('an SSE drop reconnects with the last position, and resync is reported per group', () => {
  const t = withEventSource();
  failWebSockets(t, 2);
  t.es().open();
  t.es().message('a', 'user.42:7:Xy3,team.1:2:Qw');
  t.es().fail();
  assert.equal(t.sources[0].closed, true, 'the native retry is replaced by ours');
  assert.equal(t.last('close').code, 1006);
  t.env.clock.advance(t.last('connecting').delay);
  assert.equal(t.sources.length, 2);
  assert.equal(t.es().url, 'http://h.test/message/42/stream/?last_event_id=' + encodeURIComponent('user.42:7:Xy3,team.1:2:Qw'));
  t.es().open();
  assert.equal(t.last('open').recovered, true);
  t.es().emit('resync', '{"groups":["team.1"]}', 'user.42:7:Xy3,team.1:40:Qw');
  assert.equal(t.last('resync').group, 'team.1');
  assert.equal(t.sock.positions['team.1'].o, 40);
});

test("herald's event: close carries the close code into the close event", () => {
  const t = withEventSource();
  failWebSockets(t, 2);
  t.es().open();
  t.es().emit('close', '{"code":1012,"reason":"server restart"}');
  assert.equal(t.last('close').code, 1012);
  assert.equal(t.last('close').reason, 'server restart');
  assert.equal(t.sock.state, 'backoff', 'and reconnects');
});

test('tries WebSocket again after websocketRetryInterval, and one more failure goes back to SSE', () => {
  const t = withEventSource({ websocketRetryInterval: 60000 });
  failWebSockets(t, 2);
  t.es().open();
  t.env.clock.advance(60000);
  t.es().fail();
  t.env.clock.advance(t.last('connecting').delay);
  assert.equal(t.sock.transport, 'websocket');
  assert.equal(t.env.sockets.length, 3, 'a new WebSocket');
  t.ws().fail();
  t.env.clock.advance(t.last('connecting').delay);
  assert.equal(t.sock.transport, 'sse');
  assert.equal(t.sources.length, 2);
});

test('a WebSocket that opened resets the count; without sse in transports there is no fallback', () => {
  const t = withEventSource();
  t.ws().fail();
  t.env.clock.advance(t.last('connecting').delay);
  t.ws().accept('');
  t.ws().lose();
  t.env.clock.advance(t.last('connecting').delay);
  t.ws().fail();
  t.env.clock.advance(t.last('connecting').delay);
  assert.equal(t.sock.transport, 'websocket', 'only one failure since the last open');
  assert.equal(t.sources.length, 0);

  const only = withEventSource({ transports: ['websocket'] });
  failWebSockets(only, 5);
  assert.equal(only.sock.transport, 'websocket');
  assert.equal(only.sources.length, 0);

  const auto = withEventSource({ transports: 'auto' });
  failWebSockets(auto, 5);
  assert.equal(auto.sources.length, 0, "'auto' falls back only for the server that served /herald.js");
});

test('an SSE attempt that never opens goes back to WebSocket (the server is down, not behind a proxy)', () => {
  const t = withEventSource();
  failWebSockets(t, 2);
  assert.equal(t.sources.length, 1);
  t.es().fail();
  t.env.clock.advance(t.last('connecting').delay);
  assert.equal(t.sock.transport, 'websocket');
  assert.equal(t.env.sockets.length, 3);
  t.ws().accept('');
  assert.equal(t.sock.readyState, 1, 'back on WebSocket once the server answers');
});
