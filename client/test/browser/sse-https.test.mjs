// HTTP/2 over TLS (DESIGN.md §14): Chromium holds 10 native EventSource streams in one page, over
// the 6-connections-per-host limit of HTTP/1.1, so they all receive only if herald multiplexes
// them on one h2 connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import https from 'node:https';
import { createInterface } from 'node:readline';
import { requirePrerequisites, HERALD_BIN, CHROMIUM, deadline } from './support.mjs';

const STREAMS = 10;
let dir;
let herald;
let browser;

before(async () => {
  requirePrerequisites();
  dir = mkdtempSync(join(tmpdir(), 'herald-h2-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
  ], { stdio: 'ignore' });
  writeFileSync(join(dir, 'herald.toml'), `[tls]\ncert = "${join(dir, 'cert.pem')}"\nkey = "${join(dir, 'key.pem')}"\n`);
  const proc = spawn(HERALD_BIN, ['serve', '--listen', '127.0.0.1:0', '--config', join(dir, 'herald.toml')], { cwd: dir, stdio: ['ignore', 'pipe', 'ignore'] });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  const addr = await deadline(
    new Promise((resolve, reject) => {
      createInterface({ input: proc.stdout }).on('line', (line) => {
        const m = /listening on https:\/\/(\S+)/.exec(line);
        if (m) resolve(m[1]);
      });
      exited.then(() => reject(new Error('herald exited before listening')));
    }),
    15000,
    'herald prints its https address'
  );
  proc.stdout.resume();
  herald = {
    addr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await deadline(exited, 10000, 'herald exits');
    },
  };
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic'] });
});

after(async () => {
  if (browser) await browser.close();
  if (herald) await herald.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function publish(addr, group, text) {
  const body = JSON.stringify({ group, text });
  const [host, port] = addr.split(':');
  return deadline(
    new Promise((resolve, reject) => {
      const req = https.request({ host, port, path: '/api/publish', method: 'POST', rejectUnauthorized: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`publish ${res.statusCode}`))));
      });
      req.on('error', reject);
      req.end(body);
    }),
    5000,
    'publish'
  );
}

test('Chromium over HTTPS: 10 SSE streams in one page all receive (HTTP/2)', async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  try {
    await page.goto(`https://${herald.addr}/healthz`, { timeout: 15000 });
    assert.equal(await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol), 'h2');
    await page.evaluate((n) => {
      window.got = [];
      window.sources = [];
      for (let i = 0; i < n; i++) {
        got.push([]);
        const source = new EventSource(`/message/${i}/stream/`);
        source.onmessage = (e) => got[i].push(e.data);
        sources.push(source);
      }
    }, STREAMS);
    await page.waitForFunction(() => sources.every((s) => s.readyState === 1), null, { timeout: 15000 });
    for (let i = 0; i < STREAMS; i++) await publish(herald.addr, `user.${i}`, `for ${i}`);
    await page.waitForFunction(() => got.every((g) => g.length === 1), null, { timeout: 15000 });
    const got = await page.evaluate(() => got);
    assert.deepEqual(got, Array.from({ length: STREAMS }, (_, i) => [`for ${i}`]));
  } finally {
    await context.close();
  }
});
