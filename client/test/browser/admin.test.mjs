// /admin/ in headless Chromium: two herald nodes on one Redis with traffic running; the page
// (served by one of them) shows both nodes, the connection counts their /metrics report, and
// charts that move; a screenshot goes to test-output/admin.png. Without the key, every data
// endpoint answers 401.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { requirePrerequisites, startRedis, redisLayerEnv, startHerald, launch, outputPath, until, deadline } from './support.mjs';

const KEY = 'admin-key-for-the-browser-test';

let browser;
let redis;
const nodes = [];
const sockets = [];
let traffic;

/** A raw WebSocket held open (the upgrade handshake only; herald's pings are ignored). */
async function holdWebSocket(addr, path) {
  const [host, port] = addr.split(':');
  const socket = connect(Number(port), host);
  sockets.push(socket);
  await deadline(
    new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.write(
          `GET ${path} HTTP/1.1\r\nHost: ${addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'
        );
      });
      socket.once('data', (d) => (String(d).startsWith('HTTP/1.1 101') ? resolve() : reject(new Error(String(d)))));
    }),
    5000,
    `websocket on ${addr}${path}`
  );
}

async function metric(addr, name) {
  const text = await deadline(fetch(`http://${addr}/metrics`).then((r) => r.text()), 5000, 'GET /metrics');
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  assert.ok(line, `${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

before(async () => {
  requirePrerequisites({ redis: true });
  redis = await startRedis();
  const env = Object.assign(redisLayerEnv(redis, `herald-admin-${process.pid}-${Date.now()}`), {
    HERALD_ADMIN_KEY: KEY,
    HERALD_ADMIN_REPORT_INTERVAL: '300ms',
  });
  nodes.push(await startHerald(0, env), await startHerald(0, env));
  browser = await launch();
});

after(async () => {
  clearInterval(traffic);
  for (const s of sockets) s.destroy();
  if (browser) await browser.close();
  for (const n of nodes) await n.stop();
  if (redis) await redis.stop();
});

test('without the key, every data endpoint answers 401', async () => {
  const [a] = nodes;
  const calls = [
    ['GET', '/admin/api/cluster', {}],
    ['GET', '/admin/api/cluster', { Authorization: 'Bearer wrong' }],
    ['POST', '/admin/api/session', {}],
    ['POST', '/admin/api/publish', {}],
    ['GET', '/admin/stream/', {}],
    ['GET', '/admin/stream/?session=guessed', {}],
  ];
  for (const [method, path, headers] of calls) {
    const res = await deadline(fetch(`http://${a.addr}${path}`, { method, headers }), 5000, path);
    assert.equal(res.status, 401, `${method} ${path}`);
    assert.equal((await res.json()).error, 'unauthorized');
  }
});

test('/admin/ shows both nodes, their connections and moving charts', async () => {
  const [a, b] = nodes;
  for (const user of ['1', '2', '3']) await holdWebSocket(a.addr, `/message/${user}/stream/`);
  for (const user of ['4', '5']) await holdWebSocket(b.addr, `/message/${user}/stream/`);
  let n = 0;
  traffic = setInterval(() => {
    n += 1;
    for (const node of nodes) {
      fetch(`http://${node.addr}/api/publish`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ group: `user.${1 + (n % 5)}`, text: `tick ${n}` }),
      }).catch(() => {});
    }
  }, 50);

  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`http://${a.addr}/admin/`, { timeout: 15000 });
  // A wrong key is refused on the page.
  await page.fill('#key', 'not-the-key');
  await page.click('#login-button');
  await until(async () => (await page.textContent('#login-error')) === 'Wrong key.', 10000, 'wrong key refused');
  await page.fill('#key', KEY);
  await page.click('#login-button');
  await until(async () => (await page.textContent('#status')) === 'live', 10000, 'the page is live');
  await until(async () => (await page.textContent('#node-count')) === '2', 10000, 'both nodes shown');

  // The connections shown are the ones each node's /metrics reports (A also holds the
  // page's own stream). Counts are stable now: no one connects or leaves.
  const expected = [await metric(a.addr, 'herald_connections'), await metric(b.addr, 'herald_connections')].sort();
  assert.deepEqual(expected, [2, 4]);
  await until(
    async () => {
      const shown = await page.$$eval('#nodes tr .connections', (cells) => cells.map((c) => Number(c.textContent)));
      return JSON.stringify(shown.sort()) === JSON.stringify(expected);
    },
    10000,
    `node rows show ${expected}`
  );
  assert.equal(await page.textContent('#total-connections'), String(expected[0] + expected[1]));
  const route = await page.textContent('#routes tr[data-route="/message/{user_id}/stream/"] .websocket');
  assert.equal(route, '5');

  // The charts move: points are added every second and the publish rate is above zero.
  const points = async (id) => Number(await page.getAttribute(id, 'data-points'));
  const before = await points('#chart-publishes');
  await until(async () => (await points('#chart-publishes')) >= before + 6, 15000, 'chart points added');
  await until(async () => Number(await page.getAttribute('#chart-publishes', 'data-last')) > 0, 10000, 'publish rate above 0');
  await until(async () => (await page.$$('#busiest li')).length > 0, 10000, 'busiest groups listed');
  await page.screenshot({ path: outputPath('admin.png'), fullPage: true });

  // The test-message form publishes.
  await page.fill('#pub-group', 'user.3');
  await page.fill('#pub-text', 'from the form');
  await page.click('#pub-send');
  await until(async () => /^Published at offset \d+/.test(await page.textContent('#pub-result')), 10000, 'form published');
  assert.deepEqual(errors, []);
  await page.close();
});
