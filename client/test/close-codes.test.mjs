// E6 terminal close codes (DESIGN.md §5), D1 close() authority, E8 reconnect().
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './helpers/ours.mjs';

const TERMINAL = [1009, 3500, 3999, 4500, 4501, 4503, 4999];
const RETRY = [1000, 1001, 1005, 1006, 1011, 1012, 1013, 3000, 3499, 4000, 4001, 4002, 4003, 4400, 4499];

for (const code of TERMINAL) {
  test(`E6: close ${code} is terminal: CLOSED, close{willReconnect:false}, giveup{code}, no retry`, () => {
    const t = setup({ watchNetwork: false });
    t.ws(1).accept();
    t.ws(1).serverClose(code, 'nope');
    assert.equal(t.sock.readyState, 3);
    assert.equal(t.sock.state, 'closed');
    assert.deepEqual(t.types(), ['open', 'close', 'giveup']);
    assert.equal(t.last('close').willReconnect, false);
    assert.equal(t.last('close').code, code);
    assert.deepEqual([t.last('giveup').code, t.last('giveup').reason], [code, 'nope']);
    assert.deepEqual(t.env.clock.pending(), []);
    t.env.clock.advance(600000);
    assert.equal(t.env.sockets.length, 1);
  });
}

test('E6: retryable codes reconnect', () => {
  for (const code of RETRY) {
    const t = setup({ watchNetwork: false });
    t.ws(1).accept();
    t.ws(1).serverClose(code, '');
    assert.equal(t.sock.readyState, 0, `code ${code}`);
    assert.equal(t.last('close').willReconnect, true);
    t.env.clock.advance(1000); // first retry after an open connection: within [0, 1000)
    assert.equal(t.env.sockets.length, 2, `code ${code}`);
  }
});

test('E6: a terminal code on a reconnect attempt still reports close{willReconnect:false} + giveup', () => {
  const t = setup({ jitter: 'none', watchNetwork: false });
  t.ws(1).accept();
  t.ws(1).lose();
  t.env.clock.advance(1000);
  t.ws(2).accept();
  t.ws(2).serverClose(4501, 'unauthorized');
  assert.deepEqual(t.types(), ['open', 'connecting', 'close', 'open', 'close', 'giveup']);
});

test('E6: terminalCloseCodes adds codes; shouldReconnect overrides (false / ms / undefined = default)', () => {
  const a = setup({ terminalCloseCodes: [4000], watchNetwork: false });
  a.ws(1).serverClose(4000);
  assert.equal(a.sock.state, 'closed');

  const b = setup({ shouldReconnect: (e) => (e.code === 4500 ? 1234 : e.code === 1000 ? false : undefined), watchNetwork: false });
  b.ws(1).accept();
  b.ws(1).serverClose(4500);
  assert.equal(b.last('connecting').delay, 1234);
  b.env.clock.advance(1234);
  b.ws(2).accept();
  b.ws(2).serverClose(1000);
  assert.equal(b.sock.state, 'closed');

  const c = setup({ shouldReconnect: () => undefined, watchNetwork: false });
  c.ws(1).serverClose(4503);
  assert.equal(c.sock.state, 'closed');
  assert.equal(c.R.isTerminalCloseCode(4503), true);
  assert.equal(c.R.isTerminalCloseCode(4403), false);
});

test('D1: close() during backoff cancels the timer; open() afterwards works and reconnects again', () => {
  const t = setup({ jitter: 'none', watchNetwork: false });
  t.ws(1).accept();
  t.ws(1).lose();
  t.sock.close();
  assert.deepEqual(t.env.clock.pending(), []);
  t.sock.open();
  t.ws(2).accept();
  t.ws(2).lose();
  t.env.clock.advance(1000);
  assert.equal(t.env.sockets.length, 3);
});

test('D1: close() cancels an in-flight async URL provider', async () => {
  let resolve;
  const t = setup({ watchNetwork: false }, { url: () => new Promise((r) => (resolve = r)) });
  t.sock.close();
  resolve('ws://h.test/late');
  await new Promise((r) => setImmediate(r));
  assert.equal(t.env.sockets.length, 0);
  assert.equal(t.sock.readyState, 3);
});

test('E8: reconnect() works after giving up, resets attempts, and reconnects an open socket at once', () => {
  const t = setup({ jitter: 'none', maxReconnectAttempts: 1, watchNetwork: false });
  t.ws(1).fail();
  t.env.clock.advance(1000);
  t.ws(2).fail();
  t.env.clock.advance(1500);
  assert.equal(t.sock.state, 'closed');
  assert.equal(t.last('giveup').attempts, 1);
  t.sock.reconnect();
  assert.equal(t.env.sockets.length, 3);
  assert.equal(t.sock.state, 'connecting');
  t.ws(3).accept();
  assert.equal(t.last('open').isReconnect, true);
  t.sock.reconnect(4000, 'rotate');
  assert.deepEqual(t.ws(3).closedWith, { code: 4000, reason: 'rotate' });
  assert.equal(t.env.sockets.length, 4);
  assert.deepEqual(t.types().slice(-2), ['connecting', 'close']);
  assert.equal(t.last('close').willReconnect, true);
});

test('E8: state walks connecting -> open -> backoff -> connecting -> closed', () => {
  const t = setup({ jitter: 'none', watchNetwork: false });
  const seen = [t.sock.state];
  t.ws(1).accept();
  seen.push(t.sock.state);
  t.ws(1).lose();
  seen.push(t.sock.state);
  t.env.clock.advance(1000);
  seen.push(t.sock.state);
  t.sock.close();
  t.env.clock.runTasks();
  seen.push(t.sock.state);
  assert.deepEqual(seen, ['connecting', 'open', 'backoff', 'connecting', 'closed']);
});
