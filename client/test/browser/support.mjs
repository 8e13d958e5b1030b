// Browser test support: a real herald process and headless Debian Chromium via playwright-core.
// Every wait has a deadline. Run with `npm run test:browser` (sets HERALD_BROWSER=1); under plain
// `npm test` these tests are skipped so the unit run stays fast and needs no binaries.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { CLIENT_DIR, ORIGINAL_MIN_JS } from '../helpers/env.mjs';

export const HERALD_BIN = process.env.HERALD_BIN || join(CLIENT_DIR, '..', 'target', 'debug', 'herald');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const GLOBAL_BUILD = readFileSync(join(CLIENT_DIR, 'dist', 'rws.global.js'), 'utf8');

/** Why the browser tests cannot run here, or null. */
export function skipReason() {
  if (process.env.HERALD_BROWSER !== '1') return 'browser tests run with `npm run test:browser` (HERALD_BROWSER=1)';
  if (!existsSync(HERALD_BIN)) return `no herald binary at ${HERALD_BIN} (cargo build, or set HERALD_BIN)`;
  if (!existsSync(CHROMIUM)) return `no chromium at ${CHROMIUM} (apt-get install -y chromium)`;
  return null;
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

/** Starts `herald serve --listen 127.0.0.1:<port>`; resolves once it printed its address. */
export async function startHerald(port = 0) {
  const cwd = mkdtempSync(join(tmpdir(), 'herald-browser-'));
  const env = Object.assign({}, process.env);
  delete env.HERALD_CONFIG;
  const proc = spawn(HERALD_BIN, ['serve', '--listen', `127.0.0.1:${port}`], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
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
  return {
    addr,
    port: Number(addr.split(':').pop()),
    /** SIGTERM (graceful: goaway + 1012), SIGKILL after 5 s. */
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
export async function restartHerald(port) {
  let lastErr;
  for (let i = 0; i < 20; i++) {
    try {
      return await startHerald(port);
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
 * Routes the static files the test pages load: the original min.js, and /herald.js from dist/
 * when the server's /herald.js is not our build yet (`heraldJsFromServer` says which).
 */
export async function servePages(context, addr, pages = {}) {
  const served = await fetch(`http://${addr}/herald.js`).then((r) => r.text(), () => '');
  const heraldJsFromServer = served === GLOBAL_BUILD;
  await context.route(`http://${addr}/static/reconnecting-websocket.min.js`, (route) =>
    route.fulfill({ contentType: 'text/javascript', body: readFileSync(ORIGINAL_MIN_JS, 'utf8') })
  );
  if (!heraldJsFromServer) {
    await context.route(`http://${addr}/herald.js`, (route) => route.fulfill({ contentType: 'text/javascript', body: GLOBAL_BUILD }));
  }
  for (const [path, html] of Object.entries(pages)) {
    await context.route(`http://${addr}${path}`, (route) => route.fulfill({ contentType: 'text/html', body: html }));
  }
  return { heraldJsFromServer };
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
