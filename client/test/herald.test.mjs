// §5.5 herald.v1 mode against the mock: handshake, dedup, gap, resync, ping/pong, no-ping,
// goaway, persistence, binary frames, and the rule for when herald.v1 is offered at all.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createEnv, loadOurs } from './helpers/env.mjs';
import { setup, frame, binaryFrame } from './helpers/ours.mjs';

const G = 'user.42';

function heraldClient(options = {}, extra = {}) {
  return setup(Object.assign({ herald: true, watchNetwork: false, jitter: 'none' }, options), extra);
}

function welcome(ws, streams, ping_ms = 25000) {
  ws.receive(frame({ t: 'welcome', ping_ms, streams }));
}

function hello(ws) {
  const first = JSON.parse(ws.sent[0]);
  assert.equal(first.t, 'hello');
  assert.equal(first.v, 1);
  return first.streams;
}

test('offers herald.v1 after the user protocols only when asked', () => {
  const t = heraldClient({}, { protocols: ['chat'] });
  assert.deepEqual(t.ws(1).protocols, ['chat', 'herald.v1']);
  const plain = setup({ watchNetwork: false }, { protocols: 'chat' });
  assert.deepEqual(plain.ws(1).protocols, ['chat'], "default 'auto' offers nothing without the /herald.js script host");
  const off = setup({ herald: false, watchNetwork: false });
  assert.deepEqual(off.ws(1).protocols, []);
});

test("herald:'auto' offers herald.v1 only to the host that served /herald.js", () => {
  const env = createEnv();
  const document = { currentScript: { src: '/herald.js' }, baseURI: 'http://h.test:8000/page' };
  const R = loadOurs(env, { document });
  new R('ws://h.test:8000/message/42/stream/', null, { WebSocket: env.WebSocket, watchNetwork: false });
  new R('ws://elsewhere.test/message/42/stream/', null, { WebSocket: env.WebSocket, watchNetwork: false });
  assert.deepEqual(env.sockets[0].protocols, ['herald.v1']);
  assert.deepEqual(env.sockets[1].protocols, []);
  const R2 = loadOurs(env, { document: { currentScript: { src: 'http://h.test:8000/static/reconnecting-websocket.min.js' }, baseURI: 'http://h.test:8000/' } });
  new R2('ws://h.test:8000/message/42/stream/', null, { WebSocket: env.WebSocket, watchNetwork: false });
  assert.deepEqual(env.sockets[2].protocols, []);
});

test('plain mode when the server does not select herald.v1: open at once, frames untouched', () => {
  const t = heraldClient();
  t.ws(1).accept('');
  assert.equal(t.last('open').recovered, false);
  assert.deepEqual(t.ws(1).sent, [], 'no hello in plain mode');
  t.ws(1).receive('{"t":"m","s":"x","o":1}\nnot parsed in plain mode');
  assert.equal(t.last('message').data, '{"t":"m","s":"x","o":1}\nnot parsed in plain mode');
});

test('handshake: hello first, open only after welcome; payload bytes exact; dedup; gap', () => {
  const t = heraldClient();
  t.sock.send('queued before welcome');
  t.ws(1).accept('herald.v1');
  assert.deepEqual(hello(t.ws(1)), {});
  assert.equal(t.sock.readyState, 0, 'not open before welcome');
  assert.deepEqual(t.types(), []);
  assert.deepEqual(t.ws(1).sent.length, 1, 'queue not flushed before welcome');
  welcome(t.ws(1), { [G]: { o: 23, e: 'E1', recovered: false } });
  assert.equal(t.sock.readyState, 1);
  assert.equal(t.sock.protocol, 'herald.v1');
  assert.deepEqual(t.ws(1).sent.slice(1), ['{"t":"m"}\nqueued before welcome']);
  const open = t.last('open');
  assert.deepEqual([open.isReconnect, open.recovered], [false, false]);
  assert.deepEqual(t.all('resync'), [], 'no resync on a first visit');

  const payload = '{"text": "a\\nb"}\nsecond line\n';
  t.ws(1).receive(frame({ t: 'm', s: G, o: 24 }, payload));
  assert.equal(t.last('message').data, payload);
  assert.deepEqual([t.last('message').group, t.last('message').offset], [G, 24]);
  t.ws(1).receive(frame({ t: 'm', s: G, o: 24 }, 'dup'));
  t.ws(1).receive(frame({ t: 'm', s: G, o: 20 }, 'old'));
  assert.equal(t.all('message').length, 1, 'duplicates dropped');
  t.ws(1).receive(frame({ t: 'm', s: G, o: 27 }, 'after a hole'));
  const gap = t.last('gap');
  assert.deepEqual([gap.group, gap.from, gap.to], [G, 25, 26]);
  assert.deepEqual(t.types().slice(-2), ['gap', 'message']);
  t.ws(1).receive(frame({ t: 'm', s: G, o: 28 }, ''));
  assert.equal(t.last('message').data, '');
  assert.deepEqual(t.sock.positions, { [G]: { o: 28, e: 'E1' } });
});

test('resume: hello carries positions; replay fills in; recovered:true; no resync', () => {
  const t = heraldClient();
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), { [G]: { o: 10, e: 'E1', recovered: false } });
  t.ws(1).receive(frame({ t: 'm', s: G, o: 11 }, 'm11'));
  t.ws(1).lose();
  t.env.clock.advance(1000);
  t.ws(2).accept('herald.v1');
  assert.deepEqual(hello(t.ws(2)), { [G]: { o: 11, e: 'E1' } });
  welcome(t.ws(2), { [G]: { o: 14, e: 'E1', recovered: true } });
  const open = t.last('open');
  assert.deepEqual([open.isReconnect, open.recovered], [true, true]);
  assert.deepEqual(open.streams, { [G]: { o: 14, e: 'E1', recovered: true, replay: 3 } }, 'the page can tell how many missed messages follow');
  for (const o of [11, 12, 13, 14, 14, 15]) t.ws(2).receive(frame({ t: 'm', s: G, o }, `m${o}`));
  assert.deepEqual(t.all('message').map((e) => e.data), ['m11', 'm12', 'm13', 'm14', 'm15']);
  assert.deepEqual(t.all('gap'), []);
  assert.deepEqual(t.all('resync'), []);
});

test('resync when recovered is false or the epoch changed; the stream continues from the top', () => {
  for (const info of [{ o: 50, e: 'E1', recovered: false }, { o: 3, e: 'E2', recovered: true }]) {
    const t = heraldClient();
    t.ws(1).accept('herald.v1');
    welcome(t.ws(1), { [G]: { o: 10, e: 'E1', recovered: false } });
    t.ws(1).receive(frame({ t: 'm', s: G, o: 11 }, 'm11'));
    t.ws(1).lose();
    t.env.clock.advance(1000);
    t.ws(2).accept('herald.v1');
    welcome(t.ws(2), { [G]: info });
    assert.equal(t.last('open').recovered, false);
    assert.deepEqual(t.last('open').streams[G], { o: info.o, e: info.e, recovered: false, replay: 0 });
    assert.equal(t.last('resync').group, G);
    assert.deepEqual(t.types().slice(-2), ['open', 'resync']);
    t.ws(2).receive(frame({ t: 'm', s: G, o: info.o + 1 }, 'next'));
    assert.equal(t.last('message').data, 'next');
    assert.deepEqual(t.all('gap'), []);
  }
});

test('presence: join and leave frames become join/leave events, never messages', () => {
  const t = heraldClient();
  const seen = [];
  t.sock.onjoin = (e) => seen.push(['onjoin', e.group, e.sub]);
  t.sock.addEventListener('leave', (e) => seen.push(['leave', e.group, e.sub]));
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), { [G]: { o: 0, e: 'E', recovered: false } });
  t.ws(1).receive(frame({ t: 'join', s: G, sub: '7' }));
  t.ws(1).receive(frame({ t: 'leave', s: G, sub: '7' }));
  t.ws(1).receive(frame({ t: 'join', s: G }));
  assert.deepEqual(t.last('join').group, G);
  assert.deepEqual(seen, [['onjoin', G, '7'], ['leave', G, '7']], 'a join without sub is ignored');
  assert.deepEqual(t.all('message'), []);
  assert.deepEqual(t.all('gap'), [], 'offsets are untouched');
});

test('binary frames: u32 BE header length | header | payload, delivered per binaryType', async () => {
  const t = heraldClient({ binaryType: 'arraybuffer' });
  t.ws(1).accept('herald.v1');
  assert.equal(t.ws(1).binaryType, 'arraybuffer');
  welcome(t.ws(1), { [G]: { o: 0, e: 'E', recovered: false } });
  t.ws(1).receive(binaryFrame({ t: 'm', s: G, o: 1 }, new Uint8Array([0, 10, 255])));
  const data = t.last('message').data;
  assert.ok(data instanceof ArrayBuffer);
  assert.deepEqual([...new Uint8Array(data)], [0, 10, 255]);
  t.sock.binaryType = 'blob';
  t.ws(1).receive(binaryFrame({ t: 'm', s: G, o: 2 }, new Uint8Array([1, 2])));
  const blob = t.last('message').data;
  assert.ok(blob instanceof Blob);
  assert.deepEqual([...new Uint8Array(await blob.arrayBuffer())], [1, 2]);
});

test('ping is answered with pong; any frame keeps the connection alive', () => {
  const t = heraldClient();
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), {}, 25000);
  t.ws(1).receive('{"t":"ping"}');
  assert.equal(t.ws(1).sent.at(-1), '{"t":"pong"}');
  for (let i = 0; i < 10; i++) {
    t.env.clock.advance(25000);
    t.ws(1).receive('{"t":"ping"}');
  }
  assert.equal(t.sock.readyState, 1);
  assert.equal(t.env.sockets.length, 1);
});

test('keepalive: a busy stream (never pinged by the server) sends a pong at most every ping_ms / 2', () => {
  const t = heraldClient();
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), { [G]: { o: 0, e: 'E', recovered: true } }, 10000);
  const pongs = () => t.ws(1).sent.filter((f) => f === '{"t":"pong"}').length;
  assert.equal(t.all('open')[0].streams[G].recovered, false, 'a first visit is not a recovery');
  // 30 s of messages every 500 ms and no ping from the server
  for (let o = 1; o <= 60; o++) {
    t.env.clock.advance(500);
    t.ws(1).receive(frame({ t: 'm', s: G, o }, `m${o}`));
  }
  assert.equal(t.all('message').length, 60);
  assert.equal(pongs(), 6, 'one pong per 5 s of traffic, counted from the hello');
  // a ping answered right away does not add a keepalive pong on top
  t.env.clock.advance(4000);
  t.ws(1).receive('{"t":"ping"}');
  assert.equal(pongs(), 7);
  t.env.clock.advance(1000);
  t.ws(1).receive(frame({ t: 'm', s: G, o: 61 }, 'm61'));
  assert.equal(pongs(), 7);
  // page sends count as traffic too
  t.env.clock.advance(4000);
  t.sock.send('hi');
  t.env.clock.advance(1500);
  t.ws(1).receive(frame({ t: 'm', s: G, o: 62 }, 'm62'));
  assert.equal(pongs(), 7);
  // plain mode never sends anything the page did not
  const p = heraldClient();
  p.ws(1).accept('');
  for (let i = 0; i < 40; i++) {
    p.env.clock.advance(1000);
    p.ws(1).receive(`plain ${i}`);
  }
  assert.deepEqual(p.ws(1).sent, []);
});

test("no-ping: nothing within ping_ms + 10 s reconnects with reason 'no-ping'", () => {
  const t = heraldClient();
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), {}, 25000);
  t.env.clock.advance(20000);
  t.ws(1).receive('{"t":"ping"}');
  t.env.clock.advance(34999);
  assert.equal(t.sock.readyState, 1);
  t.env.clock.advance(1);
  const c = t.last('connecting');
  assert.deepEqual([c.code, c.reason], [4002, 'no-ping']);
  assert.deepEqual(t.ws(1).closedWith, { code: 4002, reason: 'no-ping' });
  assert.equal(t.last('close').willReconnect, true);
  t.env.clock.advance(1000);
  assert.equal(t.env.sockets.length, 2);
});

test('no-ping tolerates a late timer after sleep: one grace period for queued frames', () => {
  const t = heraldClient();
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), {}, 25000);
  t.env.clock.sleep(600000); // the machine slept; on wake the overdue watchdog fires at once
  t.env.clock.advance(1);
  assert.equal(t.sock.readyState, 1, 'late timer: grace, not death');
  t.ws(1).receive('{"t":"ping"}'); // the frame that was waiting in the socket
  t.env.clock.advance(2000);
  assert.equal(t.sock.readyState, 1);
  // and if nothing arrives the grace runs out
  const u = heraldClient();
  u.ws(1).accept('herald.v1');
  welcome(u.ws(1), {}, 25000);
  u.env.clock.sleep(600000);
  u.env.clock.advance(1);
  assert.equal(u.sock.readyState, 1);
  u.env.clock.advance(998); // the grace period started when the overdue timer fired
  assert.equal(u.sock.readyState, 1);
  u.env.clock.advance(1);
  assert.equal(u.last('connecting').reason, 'no-ping');
});

test('goaway: reconnect after a random delay in retry_ms, without an attempt penalty', () => {
  const t = heraldClient({}, { load: { random: () => 0.5 } });
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), {});
  t.ws(1).receive('{"t":"goaway","retry_ms":[1000,3000]}');
  assert.deepEqual(t.ws(1).closedWith, { code: 1000, reason: 'goaway' });
  const c = t.last('connecting');
  assert.deepEqual([c.code, c.reason, c.delay], [1001, 'goaway', 2000]);
  t.env.clock.advance(1999);
  assert.equal(t.env.sockets.length, 1);
  t.env.clock.advance(1);
  assert.equal(t.env.sockets.length, 2);
  assert.equal(t.sock.reconnectAttempts, 0, 'no attempt penalty');
  t.ws(2).accept('herald.v1');
  welcome(t.ws(2), {});
  assert.equal(t.last('open').isReconnect, true);
});

test('a missing welcome is bounded by the connect timeout', () => {
  const t = heraldClient({ timeoutInterval: 3000 });
  t.ws(1).accept('herald.v1');
  t.env.clock.advance(3000);
  assert.deepEqual(t.ws(1).closedWith, { code: 1000, reason: 'timeout' });
  assert.equal(t.last('connecting').timeout, true);
  assert.equal(t.sock.readyState, 0);
  t.env.clock.advance(1000);
  assert.equal(t.env.sockets.length, 2);
});

test('unknown and malformed frames are ignored', () => {
  const t = heraldClient();
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), {});
  t.ws(1).receive('{"t":"future-thing","x":1}');
  t.ws(1).receive('not json\npayload');
  t.ws(1).receive(new ArrayBuffer(2));
  assert.deepEqual(t.all('message'), []);
  assert.equal(t.sock.readyState, 1);
});

test('positions persist in sessionStorage when opted in, and a new page resumes from them', () => {
  const store = new Map();
  const sessionStorage = { getItem: (k) => (store.has(k) ? store.get(k) : null), setItem: (k, v) => store.set(k, String(v)) };
  const env = createEnv();
  const load = { host: { sessionStorage } };
  const a = heraldClient({ persistPositions: true }, { env, load });
  a.ws(1).accept('herald.v1');
  welcome(a.ws(1), { [G]: { o: 5, e: 'E9', recovered: false } });
  a.ws(1).receive(frame({ t: 'm', s: G, o: 6 }, 'six'));
  assert.deepEqual(JSON.parse(store.get('herald.positions:ws://h.test/message/42/stream/')), { [G]: { o: 6, e: 'E9' } });
  const b = heraldClient({ persistPositions: true }, { env, load }); // "after a reload"
  b.ws().accept('herald.v1');
  assert.deepEqual(hello(b.ws()), { [G]: { o: 6, e: 'E9' } });
  const c = heraldClient({}, { env, load });
  c.ws().accept('herald.v1');
  assert.deepEqual(hello(c.ws()), {}, 'off by default');
});

test('page data sent in herald.v1 mode is framed with a {"t":"m"} header (text and binary)', () => {
  const t = heraldClient();
  t.ws(1).accept('herald.v1');
  welcome(t.ws(1), {});
  t.sock.send('{"type":"chat"}');
  assert.equal(t.ws(1).sent.at(-1), '{"t":"m"}\n{"type":"chat"}');
  t.sock.send(new Uint8Array([7, 8]));
  const bin = new Uint8Array(t.ws(1).sent.at(-1));
  const len = new DataView(bin.buffer).getUint32(0, false);
  assert.equal(new TextDecoder().decode(bin.subarray(4, 4 + len)), '{"t":"m"}');
  assert.deepEqual([...bin.subarray(4 + len)], [7, 8]);
  const plain = setup({ watchNetwork: false });
  plain.ws(1).accept();
  plain.sock.send('raw');
  assert.equal(plain.ws(1).sent.at(-1), 'raw', 'plain mode is untouched');
});
