// The npm package as a user gets it: `npm pack` in a copy of this directory as git has it (no
// node_modules, no generated ESM/CommonJS builds: prepack must make them), then `npm install <tarball>` into a fresh project outside this directory, then
// the package is imported from ESM, required from CommonJS and type-checked with the real tsc.
// Everything runs offline: the tarball is local and has no dependencies.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, writeFileSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { GENERATED } from '../build.mjs';
import { CLIENT_DIR } from './helpers/env.mjs';

const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const TSC = join(CLIENT_DIR, 'node_modules', 'typescript', 'bin', 'tsc');

let work; // temp dir holding the tarball and the project
let app; // the fresh project the tarball is installed into
let packed; // npm pack --json's description of the tarball

function run(cmd, args, cwd) {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

before(() => {
  work = realpathSync(mkdtempSync(join(tmpdir(), 'herald-client-pack-')));
  const source = join(work, 'client');
  const uncommitted = new Set(['node_modules', ...GENERATED.map((name) => join('dist', name))]);
  cpSync(CLIENT_DIR, source, { recursive: true, filter: (path) => !uncommitted.has(relative(CLIENT_DIR, path)) });
  for (const name of GENERATED) assert.ok(!existsSync(join(source, 'dist', name)));
  [packed] = JSON.parse(run(NPM, ['pack', '--json', '--silent', '--pack-destination', work], source));
  app = join(work, 'app');
  run('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  run(NPM, ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', join(work, packed.filename)], app);
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

test('npm pack: the three builds, the types and nothing else', () => {
  assert.equal(packed.name, 'herald-client');
  const files = packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, [
    'README.md',
    'dist/rws.cjs',
    'dist/rws.global.js',
    'dist/rws.mjs',
    'package.json',
    'reconnecting-websocket.d.ts',
  ]);
});

// What both module systems must see: the class, its documented statics and methods, and that it
// constructs against an injected WebSocket without touching the network.
const PROBE = `
class FakeWebSocket extends EventTarget {
  constructor(url, protocols) { super(); this.url = url; this.readyState = 0; FakeWebSocket.made.push(url); }
  close() { this.readyState = 3; }
  send() {}
}
FakeWebSocket.made = [];
function probe(R, named, isTerminal, resolved) {
  const sock = new R('ws://h.test/x', null, { WebSocket: FakeWebSocket, watchNetwork: false });
  const facts = {
    resolved,
    type: typeof R,
    sameNamed: named === R,
    statics: [R.CONNECTING, R.OPEN, R.CLOSING, R.CLOSED, R.HERALD_PROTOCOL],
    methods: ['send', 'close', 'refresh', 'addEventListener'].map((m) => typeof sock[m]),
    terminal: [4501, 1009, 1012, 1006].map(isTerminal),
    readyState: sock.readyState,
    made: FakeWebSocket.made,
  };
  sock.close();
  console.log(JSON.stringify(facts));
}
`;

function assertFacts(stdout) {
  const facts = JSON.parse(stdout);
  assert.ok(facts.resolved.startsWith(join(app, 'node_modules', 'herald-client') + sep), `resolved to ${facts.resolved}`);
  assert.equal(facts.type, 'function');
  assert.equal(facts.sameNamed, true);
  assert.deepEqual(facts.statics, [0, 1, 2, 3, 'herald.v1']);
  assert.deepEqual(facts.methods, ['function', 'function', 'function', 'function']);
  assert.deepEqual(facts.terminal, [true, true, false, false]);
  assert.equal(facts.readyState, 0);
  assert.deepEqual(facts.made, ['ws://h.test/x']);
}

test('ESM: import from the installed package', () => {
  writeFileSync(
    join(app, 'esm.mjs'),
    `import R, { ReconnectingWebSocket, isTerminalCloseCode } from 'herald-client';\n` +
      `import { fileURLToPath } from 'node:url';\n${PROBE}\n` +
      `probe(R, ReconnectingWebSocket, isTerminalCloseCode, fileURLToPath(import.meta.resolve('herald-client')));\n`,
  );
  const stdout = run(process.execPath, ['esm.mjs'], app);
  assertFacts(stdout);
  assert.ok(JSON.parse(stdout).resolved.endsWith(join('dist', 'rws.mjs')));
});

test('CommonJS: require the installed package', () => {
  writeFileSync(
    join(app, 'cjs.cjs'),
    `const R = require('herald-client');\n${PROBE}\n` +
      `probe(R, R.ReconnectingWebSocket, R.isTerminalCloseCode, require.resolve('herald-client'));\n` +
      `if (R.default !== R) throw new Error('no .default');\n`,
  );
  const stdout = run(process.execPath, ['cjs.cjs'], app);
  assertFacts(stdout);
  assert.ok(JSON.parse(stdout).resolved.endsWith(join('dist', 'rws.cjs')));
});

function tsc(name, source) {
  writeFileSync(join(app, `${name}.ts`), source);
  writeFileSync(
    join(app, `tsconfig.${name}.json`),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        target: 'es2020',
        module: 'esnext',
        moduleResolution: 'bundler',
        lib: ['es2020', 'dom'],
        types: [],
      },
      files: [`${name}.ts`],
    }),
  );
  return spawnSync(process.execPath, [TSC, '-p', `tsconfig.${name}.json`], { cwd: app, encoding: 'utf8' });
}

test('TypeScript: correct use of the installed package type-checks', () => {
  const result = tsc(
    'good',
    `import ReconnectingWebSocket, { isTerminalCloseCode, type Options } from 'herald-client';\n` +
      `const options: Options = { maxReconnectAttempts: 5, jitter: 'none' };\n` +
      `const socket = new ReconnectingWebSocket('ws://h.test/', null, options);\n` +
      `socket.onmessage = (e) => console.log(e.data);\n` +
      `socket.addEventListener('close', (e) => console.log(e.code, e.willReconnect));\n` +
      `const open: 1 = ReconnectingWebSocket.OPEN;\n` +
      `const queued: boolean = socket.send('hi');\n` +
      `const terminal: boolean = isTerminalCloseCode(4501);\n` +
      `socket.refresh();\n` +
      `socket.close(1000, 'bye');\n` +
      `console.log(open, queued, terminal);\n`,
  );
  assert.equal(result.status, 0, `tsc failed:\n${result.stdout}${result.stderr}`);
});

test('TypeScript: wrong use of the installed package is reported', () => {
  const result = tsc(
    'bad',
    `import ReconnectingWebSocket from 'herald-client';\n` +
      `const socket = new ReconnectingWebSocket('ws://h.test/');\n` +
      `const open: 2 = ReconnectingWebSocket.OPEN;\n` + // line 3: OPEN is 1
      `socket.reconnectInterval = 'fast';\n` + // line 4: a number
      `socket.sendd('x');\n` + // line 5: no such method
      `console.log(open);\n`,
  );
  const out = result.stdout + result.stderr;
  assert.notEqual(result.status, 0, `tsc accepted the wrong file:\n${out}`);
  const lines = [...out.matchAll(/bad\.ts\((\d+),\d+\): error (TS\d+)/g)].map((m) => `${m[1]}:${m[2]}`);
  assert.deepEqual(lines, ['3:TS2322', '4:TS2322', '5:TS2551'], out);
});
