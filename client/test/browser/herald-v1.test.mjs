// herald.v1 details against the real server in Chromium, with a 1 s heartbeat so that a client
// that does not keep the server informed is dropped (4002) within ~2 s: the hello carries the
// stored positions; `ping` is answered with `pong` on an idle connection; a busy stream (which the
// server never pings) stays up thanks to the client's keepalive pongs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirePrerequisites, startHerald, publish, publishBatch, launch, servePages, openOnServer, sleep } from './support.mjs';

let browser;
before(async () => {
  requirePrerequisites();
  browser = await launch();
});
after(async () => {
  if (browser) await browser.close();
});

test('herald.v1 against herald: hello with positions, ping/pong when idle, keepalive on a busy stream', async (t) => {
  const server = await startHerald(0, { HERALD_HEARTBEAT_INTERVAL: '1s', HERALD_HEARTBEAT_TIMEOUT: '1s' });
  const page = await browser.context.newPage();
  try {
    await servePages(browser.context, server.addr);
    await openOnServer(page, server.addr, '<!doctype html><script src="/herald.js"></script>');
    await page.evaluate((u) => {
      window.sent = [];
      window.received = [];
      window.ev = [];
      window.got = [];
      const Recording = class extends WebSocket {
        constructor(...a) {
          super(...a);
          this.addEventListener('message', (e) => received.push(typeof e.data === 'string' ? e.data.split('\n')[0] : '[binary]'));
        }
        send(data) {
          sent.push(typeof data === 'string' ? data.split('\n')[0] : '[binary]');
          return super.send(data);
        }
      };
      window.s = new ReconnectingWebSocket(u, null, { WebSocket: Recording });
      s.addEventListener('message', (e) => got.push([e.offset, e.data]));
      for (const type of ['open', 'close', 'resync', 'gap']) s.addEventListener(type, (e) => ev.push([type, e.code, e.reason, e.isReconnect, e.recovered]));
    }, `ws://${server.addr}/message/7/stream/`);
    await page.waitForFunction(() => s.readyState === 1, null, { timeout: 10000 });
    assert.equal(await page.evaluate(() => s.protocol), 'herald.v1');
    assert.deepEqual(JSON.parse((await page.evaluate(() => sent))[0]), { t: 'hello', v: 1, streams: {} }, 'first visit: empty hello');
    const welcome = JSON.parse((await page.evaluate(() => received))[0]);
    assert.equal(welcome.t, 'welcome');
    assert.equal(welcome.ping_ms, 1000);
    const epoch = welcome.streams['user.7'].e;

    // idle for 4 s: the server pings, the client pongs, nobody drops anybody
    await sleep(4000);
    const idle = await page.evaluate(() => ({ sent: sent.slice(), received: received.slice(), ev: ev.slice(), state: s.state }));
    const pings = idle.received.filter((f) => f === '{"t":"ping"}').length;
    const pongs = idle.sent.filter((f) => f === '{"t":"pong"}').length;
    t.diagnostic(`idle 4 s: ${pings} pings, ${pongs} pongs`);
    assert.ok(pings >= 2, `server pinged: ${pings}`);
    assert.ok(pongs >= pings, `every ping answered: ${pings} pings, ${pongs} pongs`);
    assert.equal(idle.state, 'open');
    assert.deepEqual(idle.ev, [['open', undefined, undefined, false, false]], 'no drop while idle');

    // busy for 5 s: a message every 100 ms, so the server never pings; the client's keepalive
    // pongs keep it from dropping the connection as silent (4002 after ~2 s without them)
    const before = await page.evaluate(() => sent.length);
    for (let i = 1; i <= 50; i++) {
      await publish(server.addr, 'user.7', `busy ${i}`);
      await sleep(100);
    }
    await page.waitForFunction(() => got.length >= 50, null, { timeout: 10000 });
    const busy = await page.evaluate((from) => ({ sent: sent.slice(from), ev: ev.slice(), state: s.state }), before);
    t.diagnostic(`busy 5 s: client sent ${JSON.stringify(busy.sent)}`);
    assert.equal(busy.state, 'open');
    assert.deepEqual(busy.ev, [['open', undefined, undefined, false, false]], 'no 4002 on a busy stream');
    assert.ok(busy.sent.length >= 5 && busy.sent.every((f) => f === '{"t":"pong"}'), 'keepalive pongs, about one per 500 ms');

    // reconnect: the hello carries the last position handled; nothing is replayed twice
    await page.evaluate(() => s.refresh());
    await page.waitForFunction(() => ev.filter((e) => e[0] === 'open').length === 2, null, { timeout: 10000 });
    const hellos = (await page.evaluate(() => sent)).filter((f) => f.startsWith('{"t":"hello"'));
    assert.equal(hellos.length, 2);
    assert.deepEqual(JSON.parse(hellos[1]), { t: 'hello', v: 1, streams: { 'user.7': { o: 50, e: epoch } } });
    await publishBatch(server.addr, [{ group: 'user.7', text: 'after' }]);
    await page.waitForFunction(() => got.length >= 51, null, { timeout: 10000 });
    const got = await page.evaluate(() => got);
    assert.deepEqual(got.map((g) => g[0]), Array.from({ length: 51 }, (_, i) => i + 1));
    assert.deepEqual(got.at(-1), [51, 'after']);
    assert.deepEqual((await page.evaluate(() => ev)).at(-1), ['open', undefined, undefined, true, true]);
  } finally {
    await page.close().catch(() => {});
    await server.stop();
  }
});
