// (c) of the client issue: herald on Redis; a page on /herald.js (herald.v1) receives a stream of
// 2,000 numbered messages while the herald it is connected to is SIGKILLed and restarted (same
// port, same Redis) twice. The page must end with every message exactly once, in order.
//
// Two herald nodes share one throwaway redis-server: `edge`, the page's server, is the one that
// crashes; `pub` takes the test's publishes through its API and never goes down, so messages keep
// being published while the edge is dead (the page can only get those from Redis history when it
// resumes), and no publish is ever in doubt (a publish cut off by the crash could have been stored
// or not, and retrying it could store it twice).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  requirePrerequisites,
  startRedis,
  redisLayerEnv,
  startHerald,
  restartHerald,
  publishBatch,
  launch,
  servePages,
  openOnServer,
  sleep,
  until,
} from './support.mjs';

const TOTAL = 2000;
const BATCH = 25;
const PACE_MS = 100; // 25 messages every 100 ms: 2,000 over about 8 s
const KILL_AT = [500, 1300]; // messages published when each crash happens
const DOWN_MS = 400; // the edge stays dead this long before it is restarted

let browser;
let redis;
before(async () => {
  requirePrerequisites({ redis: true });
  redis = await startRedis();
  browser = await launch();
});
after(async () => {
  if (browser) await browser.close();
  if (redis) await redis.stop();
});

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><script src="/herald.js"></script></head><body>
<script>
  window.got = [];
  window.ev = [];
  var socket = new ReconnectingWebSocket('ws://' + location.host + '/message/7/stream/');
  socket.onmessage = function (message) { got.push(message.data); };
  ['open', 'close', 'resync', 'gap', 'giveup'].forEach(function (type) {
    socket.addEventListener(type, function (e) {
      var replay = e.streams && e.streams['user.7'] ? e.streams['user.7'].replay : undefined;
      ev.push({ type: type, code: e.code, isReconnect: e.isReconnect, recovered: e.recovered, replay: replay, group: e.group, at: got.length });
    });
  });
</script></body></html>`;

test('(c) herald on Redis: 2,000 messages, herald SIGKILLed and restarted twice, every message exactly once, in order', async (t) => {
  const env = Object.assign(redisLayerEnv(redis, `herald-c-${process.pid}-${Date.now()}`), {
    // Outages here last ~1-3 s (about 250-750 messages); keep more than that, so what is under
    // test is the client's resume, not the default history bound of 1,000.
    HERALD_HISTORY_SIZE: '5000',
  });
  const pub = await startHerald(0, env);
  let edge = await startHerald(0, env);
  const port = edge.port;
  const page = await browser.context.newPage();
  let published = 0;
  const crashes = [];
  try {
    await servePages(browser.context, edge.addr);
    const pageErrors = [];
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    await openOnServer(page, edge.addr, PAGE);
    await page.waitForFunction(() => window.socket && socket.readyState === 1, null, { timeout: 15000 });
    assert.equal(await page.evaluate(() => socket.protocol), 'herald.v1');

    const publisher = (async () => {
      for (let start = 0; start < TOTAL; start += BATCH) {
        const messages = [];
        for (let i = start; i < Math.min(TOTAL, start + BATCH); i++) messages.push({ group: 'user.7', text: String(i) });
        await publishBatch(pub.addr, messages);
        published += messages.length;
        await sleep(PACE_MS);
      }
    })();

    const chaos = (async () => {
      for (const at of KILL_AT) {
        await until(() => published >= at, 30000, `${at} messages published`);
        const seen = await page.evaluate(() => got.length);
        await edge.stop('SIGKILL');
        crashes.push({ published, seen });
        await sleep(DOWN_MS);
        edge = await restartHerald(port, env);
        // the page must be back (and resumed) before the next crash
        const opens = KILL_AT.indexOf(at) + 2;
        await page.waitForFunction((n) => ev.filter((e) => e.type === 'open').length >= n, opens, { timeout: 20000 });
      }
    })();

    // both have deadlines; wait for both so nothing is left running when the test ends
    const settled = await Promise.allSettled([publisher, chaos]);
    for (const s of settled) if (s.status === 'rejected') throw s.reason;
    await page.waitForFunction((n) => got.length >= n, TOTAL, { timeout: 30000 });
    await sleep(500); // anything arriving late would be a duplicate
    const got = await page.evaluate(() => got);
    const ev = await page.evaluate(() => ev);
    t.diagnostic(`crashes at (published, received by the page): ${JSON.stringify(crashes)}`);
    t.diagnostic(`page events: ${JSON.stringify(ev)}`);

    assert.deepEqual(pageErrors, []);
    assert.equal(got.length, TOTAL, 'every message once');
    assert.deepEqual(got, Array.from({ length: TOTAL }, (_, i) => String(i)), 'in order, no loss, no duplicate');
    const opens = ev.filter((e) => e.type === 'open');
    assert.deepEqual(
      opens.map((e) => [e.isReconnect, e.recovered]),
      [[false, false], [true, true], [true, true]],
      'two reconnects, each resumed without loss'
    );
    assert.deepEqual(ev.filter((e) => e.type === 'close').map((e) => e.code), [1006, 1006], 'one close per crash (no close frame)');
    assert.deepEqual(ev.filter((e) => ['resync', 'gap', 'giveup'].includes(e.type)), [], 'no resync, gap or giveup');
    // the crashes happened mid-stream: the page had not received everything published before each
    for (const [i, c] of crashes.entries()) assert.ok(c.seen < TOTAL && c.published < TOTAL, `crash ${i + 1} mid-stream: ${JSON.stringify(c)}`);
    // and each resume replayed messages published while the edge was dead
    for (const open of opens.slice(1)) {
      assert.ok(open.at < TOTAL, 'reconnected before the end of the stream');
      assert.ok(open.replay > 0, `the resume replayed missed messages: ${JSON.stringify(open)}`);
    }
  } finally {
    await page.close().catch(() => {});
    await edge.stop();
    await pub.stop();
  }
});
