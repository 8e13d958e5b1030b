// Browser scenarios from the client issue, against the real herald binary in headless Chromium:
// (a) the seed page with the original 1.0.0 library; (b) the same page on /herald.js;
// (d) terminal close and close() during backoff; (e) 200 clients spread their reconnects.
// (c), on Redis, is in redis.test.mjs; the demo page screenshot in demo.test.mjs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirePrerequisites, startHerald, restartHerald, publish, launch, servePages, openOnServer, seedPage, consoleOf } from './support.mjs';

let browser;
before(async () => {
  requirePrerequisites();
  browser = await launch();
});
after(async () => {
  if (browser) await browser.close();
});

const CONNECTED = 'Connected to notification socket';
const DISCONNECTED = 'Disconnected to notification socket';

async function seedScenario(t, scriptSrc) {
  let server = await startHerald();
  const page = await browser.context.newPage();
  try {
    await servePages(browser.context, server.addr);
    const log = consoleOf(page);
    await openOnServer(page, server.addr, seedPage(scriptSrc));
    await log.waitFor(CONNECTED);
    await publish(server.addr, 'user.42', '{"n":1}');
    await log.waitFor('message {"n":1}');
    const port = server.port;
    await server.stop();
    await log.waitFor(DISCONNECTED);
    server = await restartHerald(port);
    await log.waitFor(CONNECTED, { count: 2, timeout: 20000 });
    await publish(server.addr, 'user.42', '{"n":2}');
    await log.waitFor('message {"n":2}');
    assert.deepEqual(log.errors, []);
    assert.equal(log.count(DISCONNECTED), 1, 'onclose once per outage');
    return { page, server, log };
  } catch (err) {
    await page.close();
    await server.stop();
    throw err;
  }
}

test('(a) seed page + original reconnectingwebsocket 1.0.0 min.js: pushes arrive, reconnects after a herald restart', async (t) => {
  const { page, server } = await seedScenario(t, '/static/reconnecting-websocket.min.js');
  assert.equal(await page.evaluate(() => socket.protocol), '', 'plain mode');
  await page.close();
  await server.stop();
});

test('(b) same page with only the script src switched to /herald.js: herald.v1, resume without loss', async (t) => {
  const { page, server, log } = await seedScenario(t, '/herald.js');
  try {
    assert.equal(await page.evaluate(() => socket.protocol), 'herald.v1', "auto mode offers herald.v1 to the host that served /herald.js");
    await page.evaluate(() => {
      window.__ev = [];
      for (const type of ['open', 'resync', 'gap']) socket.addEventListener(type, (e) => window.__ev.push([type, e.recovered, e.group]));
      socket.jitter = 'none'; // a fixed 2 s outage so the publishes below land while disconnected
      socket.reconnectInterval = 2000;
      socket.refresh();
    });
    await log.waitFor(DISCONNECTED, { count: 2 });
    for (const n of [3, 4, 5]) await publish(server.addr, 'user.42', `{"n":${n}}`);
    await log.waitFor(CONNECTED, { count: 3, timeout: 15000 });
    await log.waitFor('message {"n":5}');
    const messages = log.lines.filter((l) => l.startsWith('message '));
    assert.deepEqual(messages, ['message {"n":1}', 'message {"n":2}', 'message {"n":3}', 'message {"n":4}', 'message {"n":5}'], 'no loss, no duplicate');
    assert.deepEqual(await page.evaluate(() => window.__ev), [['open', true, undefined]], 'recovered, no resync, no gap');
  } finally {
    await page.close();
    await server.stop();
  }
});

// The seed's route, plus a token route for (d1). No token at all is a 4501 (after the upgrade, so
// the browser sees the code), which is terminal.
const AUTH_CONFIG = `
[[routes]]
path = "/message/{user_id}/stream/"
groups = ["user.{user_id}"]
auth = "none"

[[routes]]
path = "/private/{user_id}/stream/"
groups = ["user.{user_id}"]
auth = "token"

[auth]
secret = "browser-test-secret-0123456789abcdef"
`;

test('(d) a terminal close (4501) stops reconnecting; close() during backoff stays closed', async () => {
  let server = await startHerald(0, {}, { config: AUTH_CONFIG });
  const page = await browser.context.newPage();
  try {
    await servePages(browser.context, server.addr);
    await openOnServer(page, server.addr, '<!doctype html><script src="/herald.js"></script>');
    const url = `ws://${server.addr}/message/7/stream/`;
    // d1: herald.v1 ignores well-formed client frames; a connection without a token on a token
    // route is closed with 4501 after the hello, a terminal code.
    await page.evaluate((u) => {
      window.made = 0;
      window.Counting = class extends WebSocket {
        constructor(...a) {
          super(...a);
          window.made++;
        }
      };
      window.ev = [];
      window.s1 = new ReconnectingWebSocket(u, null, { WebSocket: Counting });
      for (const type of ['open', 'close', 'giveup']) s1.addEventListener(type, (e) => ev.push([type, e.code, e.willReconnect]));
    }, url);
    await page.waitForFunction(() => s1.readyState === 1, null, { timeout: 10000 });
    assert.equal(await page.evaluate(() => s1.protocol), 'herald.v1');
    // page data goes out framed ({"t":"m"} header), text and binary; the server ignores it
    assert.deepEqual(await page.evaluate(() => [s1.send('small'), s1.send(new Uint8Array([1, 2, 3]))]), [true, true]);
    await page.waitForTimeout(500);
    assert.deepEqual(await page.evaluate(() => [s1.state, made, ev.length]), ['open', 1, 1]);
    await page.evaluate((u) => {
      window.made = 0;
      window.ev = [];
      window.s3 = new ReconnectingWebSocket(u, null, { WebSocket: Counting });
      for (const type of ['open', 'close', 'giveup']) s3.addEventListener(type, (e) => ev.push([type, e.code, e.willReconnect, e.reason]));
    }, url.replace('/message/', '/private/'));
    await page.waitForFunction(() => s3.state === 'closed', null, { timeout: 10000 });
    assert.deepEqual(await page.evaluate(() => ev), [['close', 4501, false, 'token required'], ['giveup', 4501, undefined, 'token required']]);
    assert.equal(await page.evaluate(() => s3.readyState), 3);
    await page.waitForTimeout(2500);
    assert.deepEqual(await page.evaluate(() => [made, s3.state]), [1, 'closed'], 'no reconnect after a 45xx close');
    await page.evaluate(() => s1.close());

    // d2: close() during the backoff wait; the server comes back; the socket stays closed
    await page.evaluate((u) => {
      window.made = 0;
      const Counting = class extends WebSocket {
        constructor(...a) {
          super(...a);
          window.made++;
        }
      };
      window.s2 = new ReconnectingWebSocket(u, null, { WebSocket: Counting, herald: false, reconnectInterval: 3000, jitter: 'none' });
    }, url);
    await page.waitForFunction(() => s2.readyState === 1, null, { timeout: 10000 });
    const port = server.port;
    await server.stop();
    await page.waitForFunction(() => s2.state === 'backoff', null, { timeout: 10000 });
    await page.evaluate(() => s2.close());
    assert.equal(await page.evaluate(() => s2.readyState), 3);
    server = await restartHerald(port, {}, { config: AUTH_CONFIG });
    await page.waitForTimeout(4000); // longer than the 3 s retry that close() cancelled
    assert.deepEqual(await page.evaluate(() => [s2.readyState, s2.state, made]), [3, 'closed', 1]);
  } finally {
    await page.close();
    await server.stop();
  }
});

test('(e) 200 clients spread their first reconnect over the jitter window after a restart', async (t) => {
  let server = await startHerald();
  const page = await browser.context.newPage();
  try {
    await servePages(browser.context, server.addr);
    await openOnServer(page, server.addr, '<!doctype html><script src="/herald.js"></script>');
    await page.evaluate((addr) => {
      window.firstRetry = [];
      window.opened = 0;
      window.clients = [];
      for (let i = 0; i < 200; i++) {
        // Only each client's first retry after the first drop counts: a retry that lands
        // before the server is back closes again, and must not count a second time.
        let droppedAt = null;
        let recorded = false;
        const Timed = class extends WebSocket {
          constructor(...a) {
            super(...a);
            if (droppedAt !== null && !recorded) {
              window.firstRetry.push(performance.now() - droppedAt);
              recorded = true;
            }
          }
        };
        const s = new ReconnectingWebSocket(`ws://${addr}/message/${i}/stream/`, null, { WebSocket: Timed, herald: false });
        s.addEventListener('open', () => window.opened++);
        s.addEventListener('close', () => {
          if (droppedAt === null) droppedAt = performance.now();
        });
        window.clients.push(s);
      }
    }, server.addr);
    await page.waitForFunction(() => window.opened === 200, null, { timeout: 30000 });
    await page.waitForTimeout(5500); // past minUptime, so the first retry uses [0, reconnectInterval)
    const port = server.port;
    await server.stop();
    server = await restartHerald(port);
    // Every client retries within [0, reconnectInterval) after the drop; the generous deadline
    // only absorbs a slow restart on a loaded machine.
    await page
      .waitForFunction(() => window.firstRetry.length === 200, null, { timeout: 40000 })
      .catch(async (e) => {
        const seen = await page.evaluate(() => [window.firstRetry.length, window.clients.map((c) => c.state)]);
        throw new Error(`${seen[0]} of 200 clients retried; states: ${[...new Set(seen[1])]} (${e.message})`);
      });
    await page.waitForFunction(() => window.opened >= 400, null, { timeout: 60000 });
    const d = (await page.evaluate(() => window.firstRetry)).sort((a, b) => a - b);
    const quarters = [0, 0, 0, 0];
    for (const v of d) quarters[Math.min(3, Math.floor(v / 250))]++;
    t.diagnostic(`first retry after drop: min ${d[0].toFixed(0)} ms, median ${d[100].toFixed(0)} ms, max ${d[199].toFixed(0)} ms, quarters of [0,1000): ${quarters}`);
    assert.ok(d[199] - d[0] > 600, `spread ${d[199] - d[0]} ms`);
    for (const q of quarters) assert.ok(q >= 20 && q <= 80, `quarters ${quarters}`);
  } finally {
    await page.evaluate(() => window.clients && window.clients.forEach((s) => s.close())).catch(() => {});
    await page.close();
    await server.stop();
  }
});
