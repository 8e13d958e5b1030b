// The demo page at / (crates/herald/assets/index.html, served by the binary, on /herald.js) shows
// a resumed stream after herald restarts. herald runs on Redis, so its history survives the
// restart; a second node on the same Redis takes publishes while the page's node is down.
// Saves <repo>/test-output/demo-resumed.png; the assertions are on the page text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirePrerequisites, startRedis, redisLayerEnv, startHerald, restartHerald, publish, launch, assertServesCurrentBuild, outputPath, sleep } from './support.mjs';

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

const note = (n, when) => `{"n":${n},"text":"notification ${n} (${when})"}`;

test('demo page: after a herald restart the stream resumes and shows the missed notifications', async (t) => {
  const env = Object.assign(redisLayerEnv(redis, `herald-demo-${process.pid}-${Date.now()}`), {
    HERALD_SHUTDOWN_GOAWAY_WINDOW: '1s', // the goaway asks clients to come back within 1 s
  });
  let server = await startHerald(0, env);
  const pub = await startHerald(0, env);
  const port = server.port;
  const page = await browser.context.newPage();
  await page.setViewportSize({ width: 900, height: 1000 });
  const errors = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  const logItems = () => page.locator('#log li').allTextContents();
  const waitForText = (selector, text, timeout = 15000) =>
    page.waitForFunction(([sel, txt]) => [...document.querySelectorAll(sel)].some((el) => el.textContent.includes(txt)), [selector, text], { timeout });
  try {
    await assertServesCurrentBuild(server.addr);
    await page.goto(`http://${server.addr}/`, { timeout: 15000 });
    await waitForText('#state', 'open');
    await waitForText('#log li', 'Connected to notification socket');
    assert.match(await page.locator('#info').textContent(), /protocol: herald\.v1/);

    for (const n of [1, 2, 3]) await publish(server.addr, 'user.42', note(n, 'before the restart'));
    await waitForText('#log li', '"n":3');

    // graceful restart: goaway + 1012; the page shows the outage
    await server.stop('SIGTERM');
    await waitForText('#state', 'reconnecting');
    await waitForText('#log li', 'Disconnected from notification socket');
    for (const n of [4, 5, 6]) await publish(pub.addr, 'user.42', note(n, 'published while disconnected'));
    await sleep(300);
    server = await restartHerald(port, env);
    await waitForText('#log li', 'stream resumed without loss', 20000);
    await waitForText('#log li', '"n":6');
    await publish(server.addr, 'user.42', note(7, 'after the restart'));
    await waitForText('#log li', '"n":7');
    await waitForText('#state', 'open');

    // the log is newest first
    const items = (await logItems()).reverse();
    t.diagnostic(items.join('\n'));
    const notes = items.filter((l) => l.startsWith('{"n":'));
    assert.deepEqual(
      notes.map((l) => JSON.parse(l.slice(0, l.indexOf('}') + 1)).n),
      [1, 2, 3, 4, 5, 6, 7],
      'every notification once, in order'
    );
    const replayed = notes.filter((l) => l.endsWith('missed while disconnected, replayed'));
    assert.deepEqual(replayed.map((l) => JSON.parse(l.slice(0, l.indexOf('}') + 1)).n), [4, 5, 6], 'the missed ones are marked as replayed');
    const events = items.filter((l) => !l.startsWith('{"n":'));
    assert.equal(events[0], 'Connected to notification socket');
    assert.match(events[1], /^Disconnected from notification socket \(code 1001, goaway\)$/);
    assert.equal(events[events.length - 1], 'Connected to notification socket (reconnected, stream resumed without loss: 3 missed notifications replayed)');
    assert.match(await page.locator('#resume').textContent(), /^Reconnected at .*: stream resumed without loss: 3 missed notifications replayed\.$/);
    assert.match(await page.locator('#info').textContent(), /notifications received: 7$/);
    assert.deepEqual(errors, []);

    const file = outputPath('demo-resumed.png');
    await page.screenshot({ path: file, fullPage: true, timeout: 15000 });
    t.diagnostic(`screenshot: ${file}`);
  } finally {
    await page.close().catch(() => {});
    await server.stop();
    await pub.stop();
  }
});
