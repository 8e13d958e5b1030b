// E5: offline/online, bfcache (pagehide/pageshow), visibility liveness check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeWindow } from './helpers/env.mjs';
import { setup } from './helpers/ours.mjs';

function withWindow(options = {}, load = {}) {
  const win = fakeWindow();
  const document = new EventTarget();
  document.visibilityState = 'visible';
  const t = setup(Object.assign({ jitter: 'none' }, options), { load: Object.assign({ host: win, document, random: () => 0.5 }, load) });
  return Object.assign(t, { win, document });
}

const fire = (target, type, fields = {}) => target.dispatchEvent(Object.assign(new Event(type), fields));

test('E5: offline closes the socket (one close), pauses, probes every maxReconnectInterval; online reconnects soon', () => {
  const t = withWindow({ maxReconnectInterval: 20000 });
  t.ws(1).accept();
  fire(t.win, 'offline');
  assert.equal(t.sock.state, 'offline');
  assert.equal(t.sock.readyState, 0);
  assert.deepEqual(t.types(), ['open', 'connecting', 'close']);
  assert.deepEqual(t.env.clock.pending(), [20000]);
  t.env.clock.advance(20000);
  assert.equal(t.env.sockets.length, 2, 'probe');
  t.ws(2).fail();
  assert.equal(t.sock.state, 'offline');
  assert.equal(t.all('close').length, 1, 'still one close for the outage');
  fire(t.win, 'online');
  assert.equal(t.sock.state, 'backoff');
  assert.deepEqual(t.env.clock.pending(), [550], 'random(100, 1000)');
  t.env.clock.advance(550);
  t.ws(3).accept();
  assert.equal(t.sock.state, 'open');
  assert.equal(t.last('open').isReconnect, true);
});

test('E5: pagehide{persisted} closes with 1001 and waits; pageshow{persisted} reconnects at once', () => {
  const t = withWindow();
  t.ws(1).accept();
  fire(t.win, 'pagehide', { persisted: true });
  assert.deepEqual(t.ws(1).closedWith, { code: 1001, reason: 'pagehide' });
  assert.deepEqual(t.env.clock.pending(), []);
  fire(t.win, 'pageshow', { persisted: true });
  assert.equal(t.env.sockets.length, 2);
  fire(t.win, 'pagehide', { persisted: false });
  assert.equal(t.ws(2).closedWith, null, 'a normal unload is left alone');
});

test('E5: becoming visible runs a liveness check (idleTimeout exceeded -> refresh)', () => {
  const t = withWindow({ idleTimeout: 30000 });
  t.ws(1).accept();
  t.env.clock.sleep(31000); // timers did not run (hidden tab), wall clock moved
  t.document.visibilityState = 'visible';
  fire(t.document, 'visibilitychange');
  t.env.clock.runTasks();
  assert.equal(t.last('connecting').code, 1005);
});

test('E5: close() removes the window listeners', () => {
  const t = withWindow();
  t.ws(1).accept();
  t.sock.close();
  t.env.clock.runTasks();
  fire(t.win, 'offline');
  fire(t.win, 'online');
  assert.equal(t.sock.state, 'closed');
  assert.deepEqual(t.env.clock.pending(), []);
});
