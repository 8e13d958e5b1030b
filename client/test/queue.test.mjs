// E3 bounded send queue, D4 legacy send.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './helpers/ours.mjs';

test('E3: sends while connecting are queued (false) and flushed in order before open is dispatched', () => {
  const t = setup({ watchNetwork: false });
  assert.equal(t.sock.send('a'), false);
  assert.equal(t.sock.send('b'), false);
  assert.deepEqual(t.sock.pendingMessages(), ['a', 'b']);
  let sentAtOpen;
  t.sock.onopen = () => {
    sentAtOpen = t.ws(1).sent.slice();
  };
  t.ws(1).accept();
  assert.deepEqual(sentAtOpen, ['a', 'b']);
  assert.equal(t.sock.send('c'), true);
  assert.deepEqual(t.ws(1).sent, ['a', 'b', 'c']);
  assert.deepEqual(t.sock.pendingMessages(), []);
});

test('E3: queued across an outage; flushed to the next socket', () => {
  const t = setup({ jitter: 'none', watchNetwork: false });
  t.ws(1).accept();
  t.ws(1).lose();
  assert.equal(t.sock.send('during backoff'), false, 'no throw while disconnected (D4)');
  t.env.clock.advance(1000);
  t.ws(2).accept();
  assert.deepEqual(t.ws(2).sent, ['during backoff']);
});

test('E3: overflow by count or bytes throws QuotaExceededError DOMException; nothing is dropped silently', () => {
  const t = setup({ sendQueue: { max: 2, maxBytes: 10 }, watchNetwork: false });
  t.sock.send('1');
  t.sock.send('2');
  assert.throws(() => t.sock.send('3'), (err) => err instanceof DOMException && err.name === 'QuotaExceededError');
  t.sock.clearQueue();
  t.sock.send('é'.repeat(4)); // 8 UTF-8 bytes
  assert.equal(t.sock.bufferedAmount, 8);
  assert.throws(() => t.sock.send('abc'), { name: 'QuotaExceededError' });
  t.sock.send(new Uint8Array(2));
  assert.equal(t.sock.bufferedAmount, 10);
  assert.deepEqual(t.sock.clearQueue().length, 2);
  assert.equal(t.sock.bufferedAmount, 0);
});

test('E3: entries older than ttlMs are dropped with a drop{count, reason:"ttl"} event', () => {
  const t = setup({ sendQueue: { ttlMs: 1000 }, timeoutInterval: 60000, watchNetwork: false });
  t.sock.send('old1');
  t.sock.send('old2');
  t.env.clock.advance(600);
  t.sock.send('young');
  t.env.clock.advance(500);
  t.ws(1).accept();
  const drop = t.last('drop');
  assert.deepEqual([drop.count, drop.reason], [2, 'ttl']);
  assert.deepEqual(t.ws(1).sent, ['young']);
  assert.deepEqual(t.types(), ['drop', 'open'], 'drop reported before open');
});

test('D4: sendQueue:false restores the legacy throws', () => {
  const t = setup({ sendQueue: false, jitter: 'none', watchNetwork: false });
  assert.throws(() => t.sock.send('x'), { name: 'InvalidStateError' });
  t.ws(1).accept();
  t.ws(1).lose();
  assert.throws(() => t.sock.send('x'), (err) => err === 'INVALID_STATE_ERR : Pausing to reconnect websocket');
});
