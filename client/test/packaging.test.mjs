// Packaging (§5.1): dist is fresh, the three formats load, no DOM is needed, C8 global build.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { renderFromDisk, COMMITTED } from '../build.mjs';
import { CLIENT_DIR, createEnv } from './helpers/env.mjs';

// rws.mjs and rws.cjs are not committed: `npm test` regenerates them first (pretest).
test('committed dist/ is up to date with src/ (run `npm run build` after editing the source)', () => {
  const fresh = renderFromDisk();
  for (const name of COMMITTED) {
    const onDisk = readFileSync(join(CLIENT_DIR, 'dist', name), 'utf8');
    assert.ok(onDisk === fresh[name], `dist/${name} is stale: run npm run build`);
  }
});

test('ESM: default and named export; loads in Node with no window/document', async () => {
  const mod = await import('../dist/rws.mjs');
  assert.equal(mod.default, mod.ReconnectingWebSocket);
  assert.equal(typeof mod.isTerminalCloseCode, 'function');
  assert.equal(typeof globalThis.window, 'undefined');
  const env = createEnv();
  const sock = new mod.default('ws://h.test/', null, { WebSocket: env.WebSocket, watchNetwork: false });
  assert.ok(sock instanceof EventTarget);
  assert.equal(env.sockets.length, 1);
  sock.close();
});

test('CJS: module.exports is the class, with .default for interop; package exports map resolves', () => {
  const require = createRequire(import.meta.url);
  const R = require('../dist/rws.cjs');
  assert.equal(typeof R, 'function');
  assert.equal(R.default, R);
  assert.equal(R.ReconnectingWebSocket, R);
  const pkg = JSON.parse(readFileSync(join(CLIENT_DIR, 'package.json'), 'utf8'));
  assert.deepEqual(pkg.exports['.'], { types: './reconnecting-websocket.d.ts', import: './dist/rws.mjs', require: './dist/rws.cjs' });
  assert.equal(pkg.sideEffects, false);
  assert.deepEqual(pkg.dependencies, undefined, 'no runtime dependencies');
});

test('without a WebSocket implementation the constructor says so', async () => {
  const { default: R } = await import('../dist/rws.mjs');
  if (typeof globalThis.WebSocket === 'function') return; // Node >= 22 has one
  assert.throws(() => new R('ws://h.test/'), /no WebSocket implementation/);
});

function evalGlobalBuild(globals) {
  const source = readFileSync(join(CLIENT_DIR, 'dist', 'rws.global.js'), 'utf8');
  const names = Object.keys(globals);
  return new Function(...names, source).apply(globals.self, names.map((n) => globals[n]));
}

test('C8 global build: UMD branches (global, AMD, CommonJS) like 1.0.0', () => {
  const root = {};
  evalGlobalBuild({ self: root, globalThis: root, define: undefined, module: undefined });
  assert.equal(typeof root.ReconnectingWebSocket, 'function');
  assert.equal(root.ReconnectingWebSocket.OPEN, 1);

  let defined;
  const define = (deps, factory) => (defined = factory());
  define.amd = {};
  const root2 = {};
  evalGlobalBuild({ self: root2, globalThis: root2, define, module: undefined });
  assert.equal(typeof defined, 'function');
  assert.equal(root2.ReconnectingWebSocket, undefined);

  const module = { exports: {} };
  evalGlobalBuild({ self: {}, globalThis: {}, define: undefined, module });
  assert.equal(typeof module.exports, 'function');
});

test('the seed page code runs unchanged on the global build (C8)', () => {
  const env = createEnv();
  const root = { WebSocket: env.WebSocket, location: { protocol: 'http:', host: 'h.test:8000', href: 'http://h.test:8000/' } };
  root.window = root;
  const clock = { setTimeout: env.clock.setTimeout, clearTimeout: env.clock.clearTimeout, Date: { now: () => env.clock.now } };
  evalGlobalBuild(Object.assign({ self: root, globalThis: root, define: undefined, module: undefined }, clock));
  const out = [];
  // --- the seed's page code, verbatim apart from the template variable and console ---
  const page = new Function('window', 'ReconnectingWebSocket', 'console', `
    var ws_scheme = window.location.protocol == "https:" ? "wss" : "ws";
    var ws_path = ws_scheme + '://' + window.location.host + "/message/" + "42/" + "stream/";
    console.log("Connecting to " + ws_path);
    var socket = new ReconnectingWebSocket(ws_path);
    socket.onmessage = function (message) { console.log("message " + message.data); };
    socket.onopen = function () { console.log("Connected to notification socket"); };
    socket.onclose = function () { console.log("Disconnected to notification socket"); };
    return socket;
  `);
  const socket = page(root, root.ReconnectingWebSocket, { log: (s) => out.push(s) });
  env.sockets[0].accept();
  env.sockets[0].receive('{"n":1}');
  env.sockets[0].serverClose(1000);
  env.clock.advance(1000);
  env.sockets[1].accept();
  env.sockets[1].receive('{"n":2}');
  assert.deepEqual(out, [
    'Connecting to ws://h.test:8000/message/42/stream/',
    'Connected to notification socket',
    'message {"n":1}',
    'Disconnected to notification socket',
    'Connected to notification socket',
    'message {"n":2}',
  ]);
  assert.deepEqual(env.sockets[0].protocols, [], 'no subprotocol offered to an unknown server');
  socket.close();
});
