// The seed's page, unchanged, secured by Django sessions through herald's connect hook:
// real Django (SQLite, sessions, the login form, django_herald's connect view), real herald
// with `auth = "hook"`, real nginx routing /message/ to herald and the rest to Django (the
// layout the README recommends), headless Chromium logging in through the form. The page's
// own code is not touched: an init script records the close codes and messages its
// WebSockets see.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requirePrerequisites, startHerald, restartHerald, publish, launch, until, deadline, REPO_DIR } from './support.mjs';
import { ORIGINAL_MIN_JS } from '../helpers/env.mjs';

const PYTHON = process.env.HERALD_PYTHON || join(REPO_DIR, '.venv', 'bin', 'python');
const NGINX = process.env.NGINX || '/usr/sbin/nginx';
const REFRESH = '2s';
const CACHE_TTL = '1s';

const tmp = mkdtempSync(join(tmpdir(), 'herald-django-hook-'));
const djangoEnv = {
  ...process.env,
  PYTHONPATH: join(REPO_DIR, 'python'),
  DJANGO_SETTINGS_MODULE: 'tests.e2e_settings',
  HERALD_E2E_DB: join(tmp, 'db.sqlite3'),
  HERALD_E2E_RWS_JS: ORIGINAL_MIN_JS,
};

let browser, django, herald, nginx, site, djangoPort;

async function freePort() {
  const server = createServer();
  await new Promise((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function python(args) {
  const run = spawnSync(PYTHON, args, { env: djangoEnv, encoding: 'utf8', timeout: 60000 });
  if (run.status !== 0) throw new Error(`python ${args.join(' ')} failed: ${run.stderr}`);
  return run.stdout;
}

async function startDjango(port) {
  const proc = spawn(PYTHON, ['-m', 'django', 'runserver', '--noreload', `127.0.0.1:${port}`], { env: djangoEnv, stdio: 'ignore' });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  await until(async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/login/`)).status === 200;
    } catch {
      return false;
    }
  }, 20000, 'django answers /login/');
  return {
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await deadline(exited, 5000, 'django exits');
    },
  };
}

async function startNginx(port, heraldAddr, djangoPort) {
  const prefix = join(tmp, 'nginx');
  mkdirSync(prefix, { recursive: true });
  const conf = join(prefix, 'nginx.conf');
  writeFileSync(
    conf,
    `worker_processes 1;
daemon off;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${prefix}/body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  server {
    listen 127.0.0.1:${port};
    location /message/ {
      proxy_pass http://${heraldAddr};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $http_host;
      proxy_read_timeout 1h;
    }
    location = /herald.js {
      proxy_pass http://${heraldAddr};
    }
    location / {
      proxy_pass http://127.0.0.1:${djangoPort};
      proxy_set_header Host $http_host;
    }
  }
}
`
  );
  const proc = spawn(NGINX, ['-p', prefix, '-c', conf], { stdio: 'ignore' });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  await until(async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/login/`)).status === 200;
    } catch {
      return false;
    }
  }, 10000, 'nginx proxies /login/ to django');
  return {
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await deadline(exited, 5000, 'nginx exits');
    },
  };
}

/** Records what every WebSocket of a page sees, without changing the page's code. */
function recordSockets() {
  const Native = window.WebSocket;
  window.__ws = { opens: 0, closes: [], messages: [] };
  function Recorded(url, protocols) {
    const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    ws.addEventListener('open', () => window.__ws.opens++);
    ws.addEventListener('close', (e) => window.__ws.closes.push(e.code));
    ws.addEventListener('message', (e) => window.__ws.messages.push(String(e.data)));
    return ws;
  }
  Recorded.prototype = Native.prototype;
  Object.assign(Recorded, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Recorded;
}

const seen = (page) => page.evaluate(() => window.__ws);

async function loggedInPage(context, username, password) {
  const page = await context.newPage();
  await page.goto(`${site}/login/`, { timeout: 15000 });
  await page.fill('#id_username', username);
  await page.fill('#id_password', password);
  await Promise.all([page.waitForURL(`${site}/page/`, { timeout: 15000 }), page.click('button[type=submit]')]);
  return page;
}

function heraldConfig(djangoPort) {
  return `[[routes]]
path = "/message/{user_id}/stream/"
groups = ["user.{user_id}"]
auth = "hook"

[hook]
url = "http://127.0.0.1:${djangoPort}/herald/connect/"
timeout = "2s"
cache_ttl = "${CACHE_TTL}"
refresh = "${REFRESH}"
`;
}

let alice; // the logged-in page on user 42's stream

before(async () => {
  requirePrerequisites();
  if (!existsSync(PYTHON)) throw new Error(`no python at ${PYTHON} (scripts/test python creates the venv, or set HERALD_PYTHON)`);
  if (!existsSync(NGINX)) throw new Error(`no nginx at ${NGINX} (apt-get install -y nginx-light, or set NGINX)`);
  python(['-m', 'django', 'migrate', '-v0']);
  python([
    '-c',
    `import django; django.setup()
from django.contrib.auth.models import User
User.objects.create_user(id=42, username="alice", password="alice-pw-42")
User.objects.create_user(id=43, username="bob", password="bob-pw-43")`,
  ]);
  djangoPort = await freePort();
  const heraldPort = await freePort();
  // The development page names herald's address; Django learns it before starting.
  djangoEnv.HERALD_E2E_HERALD_HOST = `127.0.0.1:${heraldPort}`;
  django = await startDjango(djangoPort);
  herald = await startHerald(heraldPort, {}, { config: heraldConfig(djangoPort) });
  const sitePort = await freePort();
  nginx = await startNginx(sitePort, herald.addr, djangoPort);
  site = `http://127.0.0.1:${sitePort}`;
  browser = await launch();
  await browser.context.addInitScript(recordSockets);
});

after(async () => {
  if (browser) await browser.close();
  if (nginx) await nginx.stop();
  if (herald) await herald.stop();
  if (django) await django.stop();
  rmSync(tmp, { recursive: true, force: true });
});

test("logged in through Django's form, the seed's page receives its own user's notifications", async () => {
  alice = await loggedInPage(browser.context, 'alice', 'alice-pw-42');
  await until(async () => (await seen(alice)).opens >= 1, 15000, 'the page connects');
  await publish(herald.addr, 'user.42', '{"for":42}');
  await until(async () => (await seen(alice)).messages.includes('{"for":42}'), 10000, 'the page receives user 42\'s message');
  assert.deepEqual((await seen(alice)).closes, [], 'no close so far');
});

test("the same browser on user 43's stream is closed with 4503 and receives nothing for 43", async () => {
  const page = await browser.context.newPage();
  try {
    await page.goto(`${site}/page/?as=43`, { timeout: 15000 });
    await until(async () => (await seen(page)).closes.length >= 1, 15000, 'a close');
    await publish(herald.addr, 'user.43', '{"for":43}');
    // The page (the 1.0.0 library retries any close) is refused again after the publish.
    await until(async () => (await seen(page)).closes.length >= 2, 15000, 'a second refusal');
    const { closes, messages, opens } = await seen(page);
    assert.ok(closes.every((c) => c === 4503), `close codes: ${closes}`);
    assert.deepEqual(messages, []);
    assert.ok(opens >= 1, 'the upgrade was accepted, then closed with the code');
  } finally {
    await page.close();
  }
});

test('a logged-out browser gets 4501', async () => {
  // The browser's profile is one persistent context: empty its cookie jar for this page,
  // then give the session back to the logged-in page's later reconnects.
  const anonymous = await browser.context.newPage();
  try {
    const cookies = await browser.context.cookies();
    await browser.context.clearCookies();
    await anonymous.goto(`${site}/page/?as=42`, { timeout: 15000 });
    await until(async () => (await seen(anonymous)).closes.length >= 1, 15000, 'a close');
    assert.equal((await seen(anonymous)).closes[0], 4501);
    assert.deepEqual((await seen(anonymous)).messages, []);
    await anonymous.close();
    await browser.context.addCookies(cookies);
  } finally {
    if (!anonymous.isClosed()) await anonymous.close();
  }
});

test('hook down → 1013 and the page keeps retrying; hook back → the page connects and receives', async () => {
  const before = await seen(alice);
  await django.stop();
  const port = herald.port;
  await herald.stop();
  herald = await restartHerald(port, {}, { config: heraldConfig(djangoPort) });
  await until(async () => (await seen(alice)).closes.filter((c) => c === 1013).length >= 2, 30000, 'two 1013 refusals while the hook is down');
  django = await startDjango(djangoPort);
  // A refused upgrade opens too (then closes with the code): connected means receiving.
  let n = 0;
  await until(
    async () => {
      await publish(herald.addr, 'user.42', `{"back":${++n}}`);
      return (await seen(alice)).messages.some((m) => m.startsWith('{"back":'));
    },
    30000,
    'the page connects again and receives'
  );
  const after = await seen(alice);
  assert.ok(after.opens > before.opens);
  assert.equal(after.closes.at(-1), 1013, 'the last refusal before reconnecting was 1013');
});

test('herald client (/herald.js): hook down → 1013 while reconnecting; hook back → resumes without loss', async () => {
  const page = await browser.context.newPage();
  try {
    await page.goto(`${site}/page-v1/`, { timeout: 15000 });
    assert.equal(await page.evaluate(() => typeof socket.refresh), 'function', 'the herald client is loaded');
    let n = 0;
    await until(
      async () => {
        await publish(herald.addr, 'user.42', `{"v1":${++n}}`);
        return (await seen(page)).messages.some((m) => m.includes('{"v1":'));
      },
      15000,
      'the herald client connects and receives'
    );
    assert.equal(await page.evaluate(() => socket.protocol), 'herald.v1');
    await django.stop();
    django = null;
    const closesBefore = (await seen(page)).closes.length;
    // The client reconnects (as after a network change) while the hook is down. Within
    // cache_ttl the cached decision still admits it; once that expired, the hook's outage
    // answers 1013.
    await until(
      async () => {
        if ((await seen(page)).closes.slice(closesBefore).includes(1013)) return true;
        await page.evaluate(() => socket.readyState === 1 && socket.refresh());
        return false;
      },
      15000,
      'a 1013 while the hook is down'
    );
    for (const k of ['a', 'b', 'c']) await publish(herald.addr, 'user.42', `{"missed":"${k}"}`);
    django = await startDjango(djangoPort);
    await until(async () => (await seen(page)).messages.some((m) => m.includes('"missed":"c"')), 30000, 'the missed messages after the hook is back');
    // herald.v1 text frames are a header line, then the payload: find the three in order, once each.
    const missed = (await seen(page)).messages.filter((m) => m.includes('"missed"'));
    assert.equal(missed.length, 3, `each missed message once: ${missed}`);
    assert.ok(missed[0].includes('"a"') && missed[1].includes('"b"') && missed[2].includes('"c"'), `in order: ${missed}`);
  } finally {
    await page.close();
    if (!django) django = await startDjango(djangoPort);
  }
});

test('logging out while connected closes the stream with 4003 within the refresh', async () => {
  const closesBefore = (await seen(alice)).closes.length;
  const status = await alice.evaluate(() => fetch('/logout-now/', { method: 'POST' }).then((r) => r.status));
  assert.equal(status, 204);
  // refresh (2 s) + cache_ttl (1 s), with room for a slow machine.
  await until(async () => (await seen(alice)).closes.length > closesBefore, 15000, 'a close after logout');
  assert.equal((await seen(alice)).closes[closesBefore], 4003);
});

test('development layout: Django and herald on two ports of one host, the session cookie still reaches herald', async () => {
  // Log in on Django's own port (no nginx): the cookie is for 127.0.0.1, any port.
  const page = await browser.context.newPage();
  try {
    await page.goto(`http://127.0.0.1:${djangoPort}/login/`, { timeout: 15000 });
    await page.fill('#id_username', 'bob');
    await page.fill('#id_password', 'bob-pw-43');
    await Promise.all([page.waitForURL(`http://127.0.0.1:${djangoPort}/page/`, { timeout: 15000 }), page.click('button[type=submit]')]);
    await page.goto(`http://127.0.0.1:${djangoPort}/dev-page/`, { timeout: 15000 });
    let n = 0;
    await until(
      async () => {
        await publish(herald.addr, 'user.43', `{"dev":${++n}}`);
        return (await seen(page)).messages.some((m) => m.startsWith('{"dev":'));
      },
      15000,
      "bob's page on Django's port receives from herald's port"
    );
    assert.ok(!(await seen(page)).closes.includes(4501), 'the session cookie reached herald');
  } finally {
    await page.close();
  }
});
