// Server-Sent Events in Chromium, with a native EventSource and no herald script at all
// (DESIGN.md §14): each event's id carries the stream position, the browser sends it back as
// Last-Event-ID when it reconnects by itself, and herald resumes from it.
//
// Two herald nodes share one throwaway redis-server: `edge`, the page's server, is SIGKILLed and
// restarted on the same port; `pub` takes the publishes and never goes down, so messages keep
// being published while the edge is dead and the page can only get those from Redis history.
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
  openOnServer,
  sleep,
  until,
} from './support.mjs';

const TOTAL = 2000;
const BATCH = 25;
const PACE_MS = 100; // 25 messages every 100 ms: 2,000 over about 8 s
const KILL_AT = [500, 1300];
const DOWN_MS = 400;

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
<html><head><meta charset="utf-8"></head><body>
<script>
  window.got = [];
  window.ev = [];
  window.source = new EventSource('/message/42/stream/');
  source.onmessage = function (e) { got.push(e.data); };
  source.onopen = function () { ev.push({ type: 'open', at: got.length }); };
  source.onerror = function () { ev.push({ type: 'error', at: got.length, state: source.readyState }); };
  source.addEventListener('resync', function (e) { ev.push({ type: 'resync', data: e.data, at: got.length }); });
</script></body></html>`;

test('native EventSource: 2,000 messages, herald SIGKILLed and restarted twice, every message exactly once, in order', async (t) => {
  const env = Object.assign(redisLayerEnv(redis, `herald-sse-${process.pid}-${Date.now()}`), {
    HERALD_HISTORY_SIZE: '5000',
  });
  const pub = await startHerald(0, env);
  let edge = await startHerald(0, env);
  const port = edge.port;
  const page = await browser.context.newPage();
  let published = 0;
  const crashes = [];
  try {
    const pageErrors = [];
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    await openOnServer(page, edge.addr, PAGE);
    await page.waitForFunction(() => window.source && source.readyState === 1, null, { timeout: 15000 });

    const publisher = (async () => {
      for (let start = 0; start < TOTAL; start += BATCH) {
        const messages = [];
        for (let i = start; i < Math.min(TOTAL, start + BATCH); i++) messages.push({ group: 'user.42', text: String(i) });
        await publishBatch(pub.addr, messages);
        published += messages.length;
        await sleep(PACE_MS);
      }
    })();

    const chaos = (async () => {
      for (const [n, at] of KILL_AT.entries()) {
        await until(() => published >= at, 30000, `${at} messages published`);
        const seen = await page.evaluate(() => got.length);
        await edge.stop('SIGKILL');
        crashes.push({ published, seen });
        await sleep(DOWN_MS);
        edge = await restartHerald(port, env);
        // the browser reconnects by itself (retry: 3000) before the next crash
        await page.waitForFunction((k) => ev.filter((e) => e.type === 'open').length >= k, n + 2, { timeout: 20000 });
      }
    })();

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
    assert.equal(opens.length, 3, 'two reconnects');
    for (const open of opens.slice(1)) assert.ok(open.at < TOTAL, `reconnected mid-stream: ${JSON.stringify(open)}`);
    assert.deepEqual(ev.filter((e) => e.type === 'resync'), [], 'no resync');
    for (const [i, c] of crashes.entries()) assert.ok(c.seen < TOTAL && c.published < TOTAL, `crash ${i + 1} mid-stream: ${JSON.stringify(c)}`);
  } finally {
    await page.close().catch(() => {});
    await edge.stop();
    await pub.stop();
  }
});

test('native EventSource: a history trimmed while the page was away gets event: resync', async () => {
  const env = Object.assign(redisLayerEnv(redis, `herald-sse-resync-${process.pid}-${Date.now()}`), {
    HERALD_HISTORY_SIZE: '5',
  });
  const pub = await startHerald(0, env);
  let edge = await startHerald(0, env);
  const page = await browser.context.newPage();
  try {
    await openOnServer(page, edge.addr, PAGE);
    await page.waitForFunction(() => window.source && source.readyState === 1, null, { timeout: 15000 });
    await publishBatch(pub.addr, [{ group: 'user.42', text: 'before' }]);
    await page.waitForFunction(() => got.length === 1, null, { timeout: 10000 });
    const port = edge.port;
    await edge.stop('SIGKILL');
    // 20 messages while the page is away: more than the history keeps
    await publishBatch(pub.addr, Array.from({ length: 20 }, (_, i) => ({ group: 'user.42', text: `away ${i}` })));
    edge = await restartHerald(port, env);
    await page.waitForFunction(() => ev.some((e) => e.type === 'resync'), null, { timeout: 20000 });
    const resync = await page.evaluate(() => ev.find((e) => e.type === 'resync'));
    assert.equal(resync.data, '{"groups":["user.42"]}');
    await publishBatch(pub.addr, [{ group: 'user.42', text: 'after' }]);
    await page.waitForFunction(() => got.includes('after'), null, { timeout: 10000 });
    const got = await page.evaluate(() => got);
    assert.deepEqual(got, ['before', 'after'], 'nothing replayed from a history that no longer covers the page');
  } finally {
    await page.close().catch(() => {});
    await edge.stop();
    await pub.stop();
  }
});
