// E7 URL and protocol providers, URL resolution; E4 idle timeout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setup } from './helpers/ours.mjs';

const tick = () => new Promise((r) => setImmediate(r));

test('E7: a url function is evaluated on every attempt; url returns the last resolved string', () => {
  let n = 0;
  const t = setup({ jitter: 'none', watchNetwork: false }, { url: () => `ws://h.test/s/?token=t${++n}` });
  assert.equal(t.ws(1).url, 'ws://h.test/s/?token=t1');
  assert.equal(t.sock.url, 'ws://h.test/s/?token=t1');
  t.ws(1).accept();
  t.ws(1).lose();
  t.env.clock.advance(1000);
  assert.equal(t.ws(2).url, 'ws://h.test/s/?token=t2');
  assert.equal(t.sock.url, 'ws://h.test/s/?token=t2');
});

test('E7: async url and protocols providers', async () => {
  const t = setup({ watchNetwork: false, automaticOpen: false }, { url: async () => 'ws://h.test/async', protocols: async () => ['p'] });
  t.sock.open();
  assert.equal(t.env.sockets.length, 0);
  assert.deepEqual(t.types(), ['connecting'], 'connecting is announced before the provider resolves');
  await tick();
  assert.equal(t.ws(1).url, 'ws://h.test/async');
  assert.deepEqual(t.ws(1).protocols, ['p']);
  t.ws(1).accept('p');
  assert.equal(t.sock.protocol, 'p');
});

test('E7: a throwing or rejecting provider is an error event and a retry, never an unhandled rejection', async () => {
  let calls = 0;
  const t = setup({ jitter: 'none', watchNetwork: false, automaticOpen: false }, {
    url: () => {
      calls++;
      if (calls === 1) throw new Error('no token');
      if (calls === 2) return Promise.reject(new Error('still no token'));
      return 'ws://h.test/ok';
    },
  });
  t.sock.open();
  assert.deepEqual(t.types(), ['connecting', 'error', 'connecting', 'close']);
  assert.equal(t.last('error').error.message, 'no token');
  t.env.clock.advance(1000);
  await tick();
  assert.equal(t.last('error').error.message, 'still no token');
  t.env.clock.advance(1500);
  assert.equal(t.ws(1).url, 'ws://h.test/ok');
});

test('E7: http(s) and relative URLs map to ws(s) against location; ws URLs pass through untouched', () => {
  const host = { location: { href: 'https://app.test/page/index.html' } };
  assert.equal(setup({ watchNetwork: false }, { url: '/message/1/stream/', load: { host } }).ws(1).url, 'wss://app.test/message/1/stream/');
  assert.equal(setup({ watchNetwork: false }, { url: 'http://x.test/a', load: { host } }).ws(1).url, 'ws://x.test/a');
  assert.equal(setup({ watchNetwork: false }, { url: 'WS://Raw.Test/a?b', load: { host } }).ws(1).url, 'WS://Raw.Test/a?b');
  const t = setup({ watchNetwork: false }, { url: '/rel', load: { host } });
  assert.equal(t.sock.url, '/rel', 'a string url property is returned unchanged');
});

test('E4: idleTimeout refreshes a silent plain connection; frames keep it alive', () => {
  const t = setup({ idleTimeout: 10000, jitter: 'none', watchNetwork: false });
  t.ws(1).accept();
  t.env.clock.advance(9000);
  t.ws(1).receive('x');
  t.env.clock.advance(9000);
  assert.equal(t.ws(1).closedWith, null);
  t.env.clock.advance(1000);
  t.env.clock.runTasks();
  assert.deepEqual(t.ws(1).closedWith, { code: undefined, reason: undefined });
  assert.equal(t.last('connecting').code, 1005);
  t.env.clock.advance(1000);
  assert.equal(t.env.sockets.length, 2);
});
