// The seed's page on /herald.js, unchanged, behind a proxy that refuses every Upgrade (as some
// corporate proxies and old load balancers do): the client falls back to Server-Sent Events and
// receives every message. Without the proxy the same page uses WebSocket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { requirePrerequisites, startHerald, publishBatch, launch, openOnServer, seedPage, consoleOf, assertServesCurrentBuild, deadline } from './support.mjs';

let browser;
before(async () => {
  requirePrerequisites();
  browser = await launch();
});
after(async () => {
  if (browser) await browser.close();
});

const CONNECTED = 'Connected to notification socket';
const TOTAL = 200;

/** An HTTP proxy to `target` (host:port) that streams responses and answers every Upgrade 400. */
async function startUpgradeRefusingProxy(target) {
  const [host, port] = [target.split(':')[0], Number(target.split(':')[1])];
  let refused = 0;
  const server = http.createServer((req, res) => {
    const upstream = http.request({ host, port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on('upgrade', (req, socket) => {
    refused++;
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    refused: () => refused,
    async close() {
      server.closeAllConnections();
      await deadline(new Promise((resolve) => server.close(resolve)), 5000, 'proxy closes');
    },
  };
}

async function receivesAll(page, log, server) {
  const messages = Array.from({ length: TOTAL }, (_, i) => ({ group: 'user.42', text: `{"n":${i}}` }));
  for (let i = 0; i < TOTAL; i += 50) await publishBatch(server.addr, messages.slice(i, i + 50));
  await log.waitFor(`message {"n":${TOTAL - 1}}`, { timeout: 15000 });
  const got = log.lines.filter((l) => l.startsWith('message '));
  assert.deepEqual(got, messages.map((m) => `message ${m.text}`), 'every message once, in order');
  assert.deepEqual(log.errors, []);
}

test('behind a proxy that refuses Upgrade, the seed page on /herald.js falls back to SSE and receives every message', async () => {
  const server = await startHerald();
  const proxy = await startUpgradeRefusingProxy(server.addr);
  const page = await browser.context.newPage();
  try {
    await assertServesCurrentBuild(server.addr);
    const log = consoleOf(page);
    await openOnServer(page, proxy.addr, seedPage('/herald.js'));
    await log.waitFor(CONNECTED, { timeout: 20000 });
    assert.equal(await page.evaluate(() => socket.transport), 'sse');
    assert.ok(proxy.refused() >= 3, `WebSocket was tried first (${proxy.refused()} upgrades refused)`);
    await receivesAll(page, log, server);
  } finally {
    await page.close().catch(() => {});
    await proxy.close();
    await server.stop();
  }
});

test('without the proxy the same page uses WebSocket', async () => {
  const server = await startHerald();
  const page = await browser.context.newPage();
  try {
    const log = consoleOf(page);
    await openOnServer(page, server.addr, seedPage('/herald.js'));
    await log.waitFor(CONNECTED);
    assert.equal(await page.evaluate(() => socket.transport), 'websocket');
    assert.equal(await page.evaluate(() => socket.protocol), 'herald.v1');
    await receivesAll(page, log, server);
  } finally {
    await page.close().catch(() => {});
    await server.stop();
  }
});
