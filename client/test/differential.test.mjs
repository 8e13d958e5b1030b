// Differential harness (CLIENT.md §5.6): the same step-driven scripts run against joewalnes'
// reconnectingwebsocket@1.0.0 (.js and .min.js, from node_modules) and against our dist/rws.cjs
// with {jitter:'none', sendQueue:false}. The logs (events with readyState and key fields, socket
// calls, timer delays) must be identical; where we diverge on purpose (D1-D3, D6, E2, and the
// boolean isReconnect of C4) the test states the exact difference.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createEnv, loadOriginal, loadOurs, ORIGINAL_JS, ORIGINAL_MIN_JS } from './helpers/env.mjs';

const URL_ = 'ws://seed.test/message/42/stream/';
const LEGACY = ['open', 'close', 'connecting', 'message', 'error'];
const IMPLS = {
  'original .js': (env) => loadOriginal(ORIGINAL_JS, env),
  'original .min.js': (env) => loadOriginal(ORIGINAL_MIN_JS, env),
  ours: (env) => loadOurs(env),
};

function describeData(data) {
  if (typeof data === 'string') return JSON.stringify(data);
  if (data instanceof ArrayBuffer) return `ArrayBuffer(${data.byteLength})`;
  return String(data);
}

function format(tag, type, event, sock) {
  let line = `${tag}:${type} rs=${sock.readyState} ra=${sock.reconnectAttempts}`;
  if (type === 'connecting' && event.code !== undefined) line += ` code=${event.code} reason=${JSON.stringify(event.reason)} clean=${event.wasClean}`;
  if (type === 'open') line += ` isReconnect=${event.isReconnect} protocol=${JSON.stringify(sock.protocol)}`;
  if (type === 'message') line += ` data=${describeData(event.data)}`;
  return line;
}

/** Runs `script` against one implementation; returns {lines, events, sock, env}. */
function run(implName, script, options = {}) {
  const env = createEnv();
  const RWS = IMPLS[implName](env);
  const events = [];
  const base = implName === 'ours' ? { jitter: 'none', sendQueue: false, WebSocket: env.WebSocket } : {};
  const t = {
    env,
    impl: implName,
    ws: (n) => env.sockets[n - 1],
    advance: (ms) => env.clock.advance(ms),
    tasks: () => env.clock.runTasks(),
    note: (s) => env.log(`# ${s}`),
    make(url = URL_, protocols, extra = {}) {
      const sock = new RWS(url, protocols, Object.assign({}, base, options, extra));
      for (const type of LEGACY) {
        sock['on' + type] = function (event) {
          assert.equal(this, sock, 'handler this is the socket');
          env.log(format('H', type, event, sock));
        };
        sock.addEventListener(type, (event) => {
          events.push(event);
          env.log(format('L', type, event, sock));
        });
      }
      t.sock = sock;
      return sock;
    },
    trySend(data) {
      try {
        t.sock.send(data);
        env.log('send ok');
      } catch (err) {
        env.log(`send threw ${typeof err === 'string' ? JSON.stringify(err) : err.name}`);
      }
    },
  };
  script(t);
  return { lines: env.lines, events, sock: t.sock, env, RWS };
}

const OPTS = { timeoutInterval: 2000 }; // 1.0.0's default; ours defaults to 5000 (D6, tested below)

// Scripts whose logs must be identical for all three implementations.
const SAME = {
  'initial failure then success'(t) {
    t.make();
    t.ws(1).fail();
    t.advance(999);
    t.note('before first retry');
    t.advance(1);
    t.ws(2).accept();
    t.ws(2).receive('after');
  },
  'drop and reconnect'(t) {
    t.make();
    t.ws(1).accept();
    t.ws(1).receive('a');
    t.ws(1).serverClose(1000, 'bye');
    t.advance(1000);
    t.ws(2).accept();
    t.ws(2).receive('b');
    t.ws(2).serverClose(1001, 'going');
    t.advance(1000);
    t.ws(3).accept();
  },
  'repeated failures follow 1.0.0 backoff'(t) {
    t.make();
    t.ws(1).accept();
    t.ws(1).lose();
    for (const [n, wait] of [[2, 1000], [3, 1500], [4, 2250], [5, 3375], [6, 5062.5]]) {
      t.advance(Math.ceil(wait));
      t.ws(n).fail();
    }
    t.advance(7594);
    t.ws(7).accept();
  },
  'backoff caps at maxReconnectInterval'(t) {
    t.make(URL_, undefined, { reconnectInterval: 100, reconnectDecay: 2, maxReconnectInterval: 500 });
    t.ws(1).fail();
    for (const [n, wait] of [[2, 100], [3, 200], [4, 400], [5, 500], [6, 500]]) {
      t.advance(wait);
      t.ws(n).fail();
    }
  },
  'close() while OPEN'(t) {
    t.make();
    t.ws(1).accept();
    t.sock.close();
    t.note(`after close() rs=${t.sock.readyState}`);
    t.tasks();
    t.advance(60000);
  },
  'close(code, reason) passes them to the socket'(t) {
    t.make();
    t.ws(1).accept();
    t.sock.close(4000, 'done');
    t.tasks();
    t.advance(60000);
  },
  'close() while CONNECTING (first attempt)'(t) {
    t.make();
    t.sock.close();
    t.tasks();
    t.advance(60000);
  },
  'close() while a reconnect attempt is CONNECTING'(t) {
    t.make();
    t.ws(1).accept();
    t.ws(1).lose();
    t.advance(1000);
    t.sock.close();
    t.tasks();
    t.advance(60000);
  },
  'refresh() while OPEN reconnects with isReconnect'(t) {
    t.make();
    t.ws(1).accept();
    t.sock.refresh();
    t.tasks();
    t.advance(1000);
    t.ws(2).accept();
  },
  'refresh() during backoff does nothing'(t) {
    t.make();
    t.ws(1).accept();
    t.ws(1).lose();
    t.sock.refresh();
    t.advance(1000);
    t.ws(2).accept();
  },
  'options mutated after construction are used'(t) {
    t.make();
    t.sock.reconnectInterval = 200;
    t.sock.reconnectDecay = 3;
    t.sock.maxReconnectInterval = 1000;
    t.ws(1).fail();
    t.advance(200);
    t.ws(2).fail();
    t.advance(600);
    t.sock.timeoutInterval = 3000;
    t.ws(3).fail();
    t.advance(1000);
    t.ws(4).accept();
    t.sock.addEventListener('close', () => {
      t.sock.reconnectInterval = 50;
    });
    t.ws(4).lose();
    t.advance(50);
    t.ws(5).accept();
  },
  'automaticOpen false, then open()'(t) {
    t.make(URL_, undefined, { automaticOpen: false });
    t.note(`sockets=${t.env.sockets.length} rs=${t.sock.readyState}`);
    t.sock.open(false);
    t.ws(1).accept();
  },
  'legacy send(): ok, string during backoff, native error while connecting'(t) {
    t.make();
    t.trySend('early');
    t.ws(1).accept();
    t.trySend('x');
    t.ws(1).lose();
    t.trySend('y');
    t.advance(1000);
    t.trySend('z');
    t.ws(2).accept();
    t.trySend('w');
  },
  'messages: text and binary pass through'(t) {
    t.make();
    t.ws(1).accept();
    t.ws(1).receive('{"n":1,"text":"héllo ☃"}');
    t.ws(1).receive(new ArrayBuffer(7));
    t.ws(1).receive('');
  },
  'native error then close on an open socket'(t) {
    t.make();
    t.ws(1).accept();
    t.ws(1).error();
    t.ws(1).lose();
    t.advance(1000);
    t.ws(2).error();
    t.ws(2).lose();
    t.advance(1500);
    t.ws(3).accept();
  },
  'protocols argument: string, array, null'(t) {
    t.make(URL_, 'chat');
    t.ws(1).accept('chat');
    t.make(URL_, ['a', 'b']);
    t.make(URL_, null);
    t.note(`url=${t.sock.url}`);
  },
  'url property is the argument, protocol null until first open'(t) {
    t.make('ws://x.test/a');
    t.note(`url=${t.sock.url} protocol=${t.sock.protocol}`);
    t.ws(1).accept('p1');
    t.ws(1).lose();
    t.note(`protocol after drop=${t.sock.protocol}`);
  },
  'url mutated after construction is used on reconnect'(t) {
    t.make();
    t.ws(1).accept();
    t.sock.url = 'ws://other.test/x';
    t.ws(1).lose();
    t.advance(1000);
  },
  'handlers run before listeners; removeEventListener works'(t) {
    t.make();
    const extra = () => t.note('extra listener');
    t.sock.addEventListener('message', extra);
    t.ws(1).accept();
    t.ws(1).receive('1');
    t.sock.removeEventListener('message', extra);
    t.ws(1).receive('2');
  },
};

for (const [name, script] of Object.entries(SAME)) {
  test(`same as 1.0.0: ${name}`, () => {
    const ours = run('ours', script, OPTS).lines;
    assert.deepEqual(ours, run('original .js', script, OPTS).lines, 'vs reconnecting-websocket.js');
    assert.deepEqual(ours, run('original .min.js', script, OPTS).lines, 'vs reconnecting-websocket.min.js');
  });
}

test('the harness sees what CLIENT.md says 1.0.0 does (sanity)', () => {
  const { lines } = run('original .js', SAME['repeated failures follow 1.0.0 backoff'], OPTS);
  const retries = lines.filter((l) => /^timer\((?!2000\))/.test(l));
  assert.deepEqual(retries, ['timer(1000)', 'timer(1500)', 'timer(2250)', 'timer(3375)', 'timer(5062.5)', 'timer(7593.75)']);
  // one close per outage, with readyState CONNECTING
  assert.deepEqual(lines.filter((l) => l.startsWith('L:close')), ['L:close rs=0 ra=0']);
});

function splitAtCommonPrefix(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return { prefix: a.slice(0, i), a: a.slice(i), b: b.slice(i) };
}

describe('documented divergences', () => {
  test('D1: close() during backoff stays closed (1.0.0 reconnects anyway)', () => {
    const script = (t) => {
      t.make();
      t.ws(1).accept();
      t.ws(1).lose();
      t.note('close() in backoff');
      t.sock.close();
      t.advance(1000);
      if (t.ws(2)) t.ws(2).accept();
      t.advance(60000);
    };
    for (const orig of ['original .js', 'original .min.js']) {
      const o = run(orig, script, OPTS);
      const u = run('ours', script, OPTS);
      const d = splitAtCommonPrefix(u.lines, o.lines);
      assert.equal(d.prefix.at(-1), '# close() in backoff');
      assert.deepEqual(d.a, ['H:close rs=3 ra=0', 'L:close rs=3 ra=0']);
      assert.deepEqual(d.b, [`new ws2 ${URL_} []`, 'timer(2000)', 'H:open rs=1 ra=0 isReconnect=true protocol=""', 'L:open rs=1 ra=0 isReconnect=true protocol=""']);
      assert.equal(o.sock.readyState, 1, '1.0.0 ends OPEN after close()');
      assert.equal(u.sock.readyState, 3);
      assert.equal(u.sock.state, 'closed');
      assert.equal(u.env.clock.timers.length, 0, 'no timer left behind');
      const closeEvent = u.events.at(-1);
      assert.equal(closeEvent.willReconnect, false);
      assert.equal(closeEvent.code, 1000);
    }
  });

  test('D1: onX = null is tolerated (1.0.0 throws a TypeError from its listener)', () => {
    const script = (t) => {
      t.make();
      t.ws(1).accept();
      t.sock.onmessage = null;
      t.ws(1).receive('x');
      t.sock.onclose = null;
      t.sock.onconnecting = null;
      t.ws(1).serverClose(1000);
    };
    for (const orig of ['original .js', 'original .min.js']) {
      const o = run(orig, script, OPTS).lines;
      const u = run('ours', script, OPTS).lines;
      assert.equal(o.filter((l) => l === 'uncaught TypeError').length, 3);
      assert.deepEqual(u, o.filter((l) => l !== 'uncaught TypeError'));
    }
  });

  test('D1: open() after close() re-enables reconnection; C4: isReconnect is a boolean', () => {
    const script = (t) => {
      t.make();
      t.ws(1).accept();
      t.sock.close();
      t.tasks();
      t.note('open()');
      t.sock.open();
      t.ws(2).accept();
      t.ws(2).lose();
      t.advance(1000);
    };
    for (const orig of ['original .js', 'original .min.js']) {
      const o = run(orig, script, OPTS);
      const u = run('ours', script, OPTS);
      // 1.0.0's open() leaves readyState CLOSED until the socket opens; ours says CONNECTING (C2)
      const o2 = o.lines.map((l) => (/^[HL]:connecting rs=3/.test(l) ? l.replace('rs=3', 'rs=0') : l));
      const d = splitAtCommonPrefix(u.lines, o2);
      assert.ok(o.lines.includes('H:connecting rs=3 ra=0'));
      assert.equal(d.prefix.at(-1), 'timer(2000)');
      assert.deepEqual(d.b, [
        'H:open rs=1 ra=0 isReconnect=undefined protocol=""',
        'L:open rs=1 ra=0 isReconnect=undefined protocol=""',
        'H:close rs=3 ra=0', // 1.0.0: forcedClose is never reset, so this drop is final
        'L:close rs=3 ra=0',
      ]);
      assert.deepEqual(d.a, [
        'H:open rs=1 ra=0 isReconnect=false protocol=""',
        'L:open rs=1 ra=0 isReconnect=false protocol=""',
        'H:connecting rs=0 ra=0 code=1006 reason="" clean=false',
        'L:connecting rs=0 ra=0 code=1006 reason="" clean=false',
        'H:close rs=0 ra=0',
        'L:close rs=0 ra=0',
        'timer(1000)',
        `new ws3 ${URL_} []`,
        'timer(2000)',
      ]);
    }
  });

  test('D2: close carries code, reason and wasClean of the native event', () => {
    const script = (t) => {
      t.make();
      t.ws(1).accept();
      t.ws(1).serverClose(4001, 'slow consumer');
    };
    const o = run('original .js', script, OPTS);
    const u = run('ours', script, OPTS);
    assert.deepEqual(u.lines, o.lines);
    const oc = o.events.find((e) => e.type === 'close');
    const uc = u.events.find((e) => e.type === 'close');
    assert.equal(oc.code, undefined);
    assert.deepEqual([uc.code, uc.reason, uc.wasClean, uc.willReconnect, uc.delay], [4001, 'slow consumer', true, true, 1000]);
  });

  test('D3: past maxReconnectAttempts no socket is created; readyState CLOSED; giveup, no second close', () => {
    const script = (t) => {
      t.make(URL_, undefined, { maxReconnectAttempts: 2 });
      t.ws(1).fail();
      t.advance(1000);
      t.ws(2).fail();
      t.advance(1500);
      t.ws(3).fail();
      t.note('last backoff');
      t.advance(2250);
      t.advance(60000);
    };
    const o = run('original .js', script, OPTS);
    const u = run('ours', script, OPTS);
    const d = splitAtCommonPrefix(u.lines, o.lines);
    assert.equal(d.prefix.at(-1), '# last backoff');
    assert.deepEqual(d.b, [`new ws4 ${URL_} []`], '1.0.0 leaks a socket without handlers');
    assert.deepEqual(d.a, []);
    assert.equal(o.sock.readyState, 0, '1.0.0 stays CONNECTING forever');
    assert.equal(u.sock.readyState, 3);
    assert.equal(u.sock.state, 'closed');
    assert.equal(u.env.sockets.length, 3);
    // giveup is an extension event, not logged above
    const u2 = run('ours', (t) => {
      t.make(URL_, undefined, { maxReconnectAttempts: 2 });
      t.sock.addEventListener('giveup', (e) => t.note(`giveup attempts=${e.attempts} rs=${t.sock.readyState}`));
      script(Object.assign({}, t, { make: () => t.sock }));
    }, OPTS);
    assert.ok(u2.lines.includes('# giveup attempts=2 rs=3'));
    assert.equal(u2.lines.filter((l) => l.startsWith('L:close')).length, 1, 'only the outage close');
  });

  test('min.js has no maxReconnectAttempts; ours honours it (the presence is harmless, C8)', () => {
    const script = (t) => {
      t.make(URL_, undefined, { maxReconnectAttempts: 1 });
      t.ws(1).fail();
      t.advance(1000);
      t.ws(2).fail();
      t.advance(1500);
    };
    assert.equal(run('original .min.js', script, OPTS).env.sockets.length, 3);
    assert.equal(run('ours', script, OPTS).env.sockets.length, 2);
  });

  test('D6: default timeoutInterval is 5000 (1.0.0: 2000); explicit values are honoured', () => {
    const script = (t) => t.make();
    const o = run('original .js', script);
    const u = run('ours', script);
    assert.deepEqual(o.lines, [`new ws1 ${URL_} []`, 'timer(2000)']);
    assert.deepEqual(u.lines, [`new ws1 ${URL_} []`, 'timer(5000)']);
    assert.equal(u.sock.timeoutInterval, 5000);
  });

  test('E2: a connect timeout behaves like a failure; the next timeout doubles', () => {
    const script = (t) => {
      t.make();
      t.advance(2000);
      t.advance(1000);
      t.ws(2).accept();
    };
    const o = run('original .js', script, OPTS);
    const u = run('ours', script, OPTS);
    const expected = o.lines.map((l, i) => (l === 'timer(2000)' && i > 2 ? 'timer(4000)' : l));
    assert.deepEqual(u.lines, expected);
    assert.ok(o.lines.includes('ws1.close()'));
    const connecting = u.events.find((e) => e.type === 'connecting');
    assert.equal(connecting.timeout, true, 'ours flags the timeout; code/reason are what a browser reports');
  });
});

test('statics and prototype match 1.0.0', () => {
  const env = createEnv();
  const O = loadOriginal(ORIGINAL_JS, env);
  const U = loadOurs(env);
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED', 'debugAll']) assert.equal(U[k], O[k], k);
  for (const h of ['onopen', 'onclose', 'onconnecting', 'onmessage', 'onerror']) {
    assert.equal(typeof U.prototype[h], 'function', h);
    assert.equal(U.prototype[h](), undefined);
  }
  const settings = ['debug', 'automaticOpen', 'reconnectInterval', 'maxReconnectInterval', 'reconnectDecay', 'timeoutInterval', 'maxReconnectAttempts'];
  const o = new O(URL_, null, { automaticOpen: false });
  const u = new U(URL_, null, { automaticOpen: false, WebSocket: env.WebSocket });
  for (const k of settings) {
    if (k !== 'timeoutInterval') assert.equal(u[k], o[k], k);
  }
  for (const k of ['url', 'reconnectAttempts', 'readyState', 'protocol']) assert.equal(u[k], o[k], k);
  for (const m of ['open', 'close', 'refresh', 'send', 'addEventListener', 'removeEventListener', 'dispatchEvent']) {
    assert.equal(typeof u[m], 'function', m);
  }
});

test('message data is the very object the socket delivered', () => {
  const buf = new ArrayBuffer(3);
  for (const impl of Object.keys(IMPLS)) {
    const { events } = run(impl, (t) => {
      t.make();
      t.ws(1).accept();
      t.ws(1).receive(buf);
    }, OPTS);
    assert.equal(events.find((e) => e.type === 'message').data, buf, impl);
  }
});
