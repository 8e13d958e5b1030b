// Browser test support: real herald (and redis-server) processes and headless Debian Chromium
// via playwright-core. Every wait has a deadline. Run with `npm run test:browser`; `npm test`
// does not load these files at all. A missing prerequisite fails the run: nothing is skipped.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { CLIENT_DIR, ORIGINAL_MIN_JS } from '../helpers/env.mjs';

export const REPO_DIR = join(CLIENT_DIR, '..');
export const HERALD_BIN = process.env.HERALD_BIN || join(REPO_DIR, 'target', 'debug', 'herald');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const REDIS_SERVER = process.env.HERALD_REDIS_SERVER || 'redis-server';
export const GLOBAL_BUILD = readFileSync(join(CLIENT_DIR, 'dist', 'rws.global.js'), 'utf8');
/** Where artifacts (screenshots) go: <repo>/test-output, gitignored. */
export const OUTPUT_DIR = process.env.HERALD_TEST_OUTPUT || join(REPO_DIR, 'test-output');

/** Throws when the browser tests cannot run here (they fail; they are never skipped). */
export function requirePrerequisites({ redis = false } = {}) {
  if (!existsSync(HERALD_BIN)) throw new Error(`no herald binary at ${HERALD_BIN} (cargo build -p herald, or set HERALD_BIN)`);
  if (!existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
  if (redis && spawnSync(REDIS_SERVER, ['--version']).status !== 0) {
    throw new Error(`no ${REDIS_SERVER} (apt-get install -y redis-server, or set HERALD_REDIS_SERVER)`);
  }
}

export function outputPath(name) {
  mkdirSync(OUTPUT_DIR, { recursive: true });
  return join(OUTPUT_DIR, name);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 25 ms until it returns a truthy value; throws after `ms`. */
export async function until(check, ms, what) {
  const start = Date.now();
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms: ${what}`);
    await sleep(25);
  }
}

async function freePort() {
  const server = createServer();
  await new Promise((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Starts a throwaway redis-server on a free loopback port (never 6379), no persistence.
 * Returns {port, url, stop()}; stop() kills that process only.
 */
export async function startRedis() {
  let lastErr;
  for (let i = 0; i < 5; i++) {
    const port = await freePort();
    if (port === 6379) continue;
    const proc = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    try {
      await deadline(
        new Promise((resolve, reject) => {
          proc.stdout.on('data', (d) => {
            out = (out + d).slice(-4000);
            if (/Ready to accept connections/.test(out)) resolve();
          });
          proc.once('error', reject);
          exited.then(({ code }) => reject(new Error(`redis-server exited (${code}): ${out}`)));
        }),
        10000,
        'redis-server is ready'
      );
    } catch (err) {
      lastErr = err;
      if (proc.exitCode === null) proc.kill('SIGKILL');
      continue;
    }
    proc.stdout.resume();
    proc.stderr.resume();
    return {
      port,
      url: `redis://127.0.0.1:${port}/0`,
      async stop() {
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        await deadline(exited, 5000, 'redis-server exits');
      },
    };
  }
  throw lastErr;
}

/** herald's env for the Redis layer, with a key prefix of its own. */
export function redisLayerEnv(redis, prefix) {
  return { HERALD_LAYER_KIND: 'redis', HERALD_LAYER_URL: redis.url, HERALD_LAYER_PREFIX: prefix };
}

export function deadline(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Starts `herald serve --listen 127.0.0.1:<port>` with `extraEnv` (HERALD_* settings) on top of
 * this process's environment, and `config` (TOML text, e.g. routes) as its --config file;
 * resolves once it printed its address.
 */
export async function startHerald(port = 0, extraEnv = {}, { config } = {}) {
  const cwd = mkdtempSync(join(tmpdir(), 'herald-browser-'));
  const env = Object.assign({}, process.env, extraEnv);
  delete env.HERALD_CONFIG;
  const args = ['serve', '--listen', `127.0.0.1:${port}`];
  if (config) {
    writeFileSync(join(cwd, 'herald.toml'), config);
    args.push('--config', join(cwd, 'herald.toml'));
  }
  const proc = spawn(HERALD_BIN, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const addr = await deadline(
    new Promise((resolve, reject) => {
      const lines = createInterface({ input: proc.stdout });
      lines.on('line', (line) => {
        const m = /listening on http:\/\/(\S+)/.exec(line);
        if (m) resolve(m[1]);
      });
      exited.then(({ code }) => reject(new Error(`herald exited (${code}) before listening: ${stderr}`)));
    }),
    15000,
    'herald prints its address'
  );
  proc.stdout.resume();
  return {
    addr,
    port: Number(addr.split(':').pop()),
    env: extraEnv,
    config,
    /** SIGTERM (graceful: goaway + 1012), SIGKILL after 5 s; stop('SIGKILL') is a crash. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      try {
        await deadline(exited, 5000, 'herald exits');
      } catch (err) {
        proc.kill('SIGKILL');
        await deadline(exited, 5000, 'herald exits after SIGKILL');
      }
      rmSync(cwd, { recursive: true, force: true });
    },
  };
}

/** Starts herald on a port that was just used, retrying briefly while the port is released. */
export async function restartHerald(port, extraEnv = {}, options = {}) {
  let lastErr;
  for (let i = 0; i < 20; i++) {
    try {
      return await startHerald(port, extraEnv, options);
    } catch (err) {
      lastErr = err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw lastErr;
}

export async function publish(addr, group, text) {
  const res = await deadline(
    fetch(`http://${addr}/api/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ group, text }) }),
    5000,
    'publish'
  );
  if (!res.ok) throw new Error(`publish ${res.status}: ${await res.text()}`);
  return res.json();
}

/** One batch publish: `[{group, text}, ...]`, in order. */
export async function publishBatch(addr, messages) {
  const res = await deadline(
    fetch(`http://${addr}/api/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages }) }),
    5000,
    'batch publish'
  );
  if (!res.ok) throw new Error(`publish ${res.status}: ${await res.text()}`);
  return res.json();
}

export async function launch() {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'herald-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Fails unless the server's /herald.js (embedded in the binary) is exactly client/dist/rws.global.js:
 * a stale binary would test old client code.
 */
export async function assertServesCurrentBuild(addr) {
  const served = await deadline(fetch(`http://${addr}/herald.js`).then((r) => r.text()), 5000, 'GET /herald.js');
  if (served !== GLOBAL_BUILD) {
    throw new Error(`${HERALD_BIN} serves a /herald.js that is not client/dist/rws.global.js: rebuild it (cargo build -p herald)`);
  }
}

/**
 * Routes the static files the seed's page loads that herald does not serve: the original
 * 1.0.0 min.js at /static/reconnecting-websocket.min.js, plus any test `pages`. /herald.js comes
 * from the server itself (checked against dist/).
 */
export async function servePages(context, addr, pages = {}) {
  await assertServesCurrentBuild(addr);
  await context.route(`http://${addr}/static/reconnecting-websocket.min.js`, (route) =>
    route.fulfill({ contentType: 'text/javascript', body: readFileSync(ORIGINAL_MIN_JS, 'utf8') })
  );
  for (const [path, html] of Object.entries(pages)) {
    await context.route(`http://${addr}${path}`, (route) => route.fulfill({ contentType: 'text/html', body: html }));
  }
}

/**
 * Loads a plain herald URL (GET /healthz: no scripts, unlike the demo page at /, whose global
 * `socket` would clash with the seed's) so the document really comes from the server's
 * loopback origin, then replaces its content with the test page. A page fulfilled by interception has
 * no IP address space, and Chromium's Local Network Access checks then block WebSockets to
 * 127.0.0.1 (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS).
 */
export async function openOnServer(page, addr, html) {
  await page.goto(`http://${addr}/healthz`, { timeout: 15000 });
  await page.setContent(html, { timeout: 15000 });
}

/** The seed's page code (CLIENT.md / seed README), with the user id filled in and the message handler logging. */
export function seedPage(scriptSrc, userId = '42') {
  return `<!doctype html>
<html><head><meta charset="utf-8"><script src="${scriptSrc}"></script></head><body>
<script>
        var ws_scheme = window.location.protocol == "https:" ? "wss" : "ws";
        var ws_path = ws_scheme + '://' + window.location.host + "/message/" + "${userId}/" + "stream/";
        console.log("Connecting to " + ws_path);
        var socket = new ReconnectingWebSocket(ws_path);

        // Handle incoming messages
        socket.onmessage = function (message) {
            console.log("message " + message.data);
        };

        // Helpful debugging
        socket.onopen = function () {
            console.log("Connected to notification socket");
        }
        socket.onclose = function () {
            console.log("Disconnected to notification socket");
        }
</script></body></html>`;
}

/** Collects console lines of a page; waitFor(text) has a deadline. */
export function consoleOf(page) {
  const lines = [];
  const errors = [];
  page.on('console', (msg) => lines.push(msg.text()));
  page.on('pageerror', (err) => errors.push(String(err)));
  return {
    lines,
    errors,
    count: (text) => lines.filter((l) => l === text).length,
    async waitFor(text, { count = 1, timeout = 15000 } = {}) {
      const start = Date.now();
      while (lines.filter((l) => l === text).length < count) {
        if (Date.now() - start > timeout) throw new Error(`timed out after ${timeout} ms waiting for console "${text}" x${count}; got: ${lines.slice(-15).join(' | ')}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
  };
}
