// E1 jittered backoff, E2 adaptive connect timeout, the minUptime rule.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createEnv, loadOurs, seededRandom } from './helpers/env.mjs';
import { setup } from './helpers/ours.mjs';

function histogram(values, lo, hi, buckets) {
  const counts = new Array(buckets).fill(0);
  for (const v of values) {
    assert.ok(v >= lo && v < hi, `${v} outside [${lo}, ${hi})`);
    counts[Math.floor(((v - lo) / (hi - lo)) * buckets)]++;
  }
  return counts;
}

test('E1: first retry of 10k clients after a server drop is uniform over [0, reconnectInterval) within ±5% per bucket', () => {
  const env = createEnv({ logSockets: false });
  env.clock.log = null;
  const R = loadOurs(env, { random: seededRandom(42) });
  const delays = [];
  const socks = [];
  for (let i = 0; i < 10000; i++) {
    const sock = new R('ws://h.test/x', null, { WebSocket: env.WebSocket, watchNetwork: false });
    sock.addEventListener('connecting', (e) => {
      if (e.code !== undefined) delays.push(e.delay);
    });
    socks.push(sock);
  }
  for (const ws of env.sockets) ws.accept();
  env.clock.advance(10000); // up for longer than minUptime
  for (const ws of env.sockets) ws.serverClose(1012, 'restart');
  assert.equal(delays.length, 10000);
  // the scheduled timers are the advertised delays
  const pending = env.clock.pending();
  assert.equal(pending.length, 10000);
  // 5 buckets of 2000 expected: ±5% is ±100, about 2.5 standard deviations of a fair bucket
  // (with 10 buckets ±5% would be only 1.7 sigma and a perfect generator would fail often).
  const counts = histogram(delays, 0, 1000, 5);
  for (const c of counts) assert.ok(Math.abs(c - 2000) <= 100, `bucket ${c} not within ±5% of 2000: ${counts}`);
  // Kolmogorov-Smirnov against U(0, 1000): D < 1.36 / sqrt(n) at the 95% level
  const sorted = delays.slice().sort((a, b) => a - b);
  let ks = 0;
  sorted.forEach((v, i) => {
    ks = Math.max(ks, Math.abs((i + 1) / sorted.length - v / 1000), Math.abs(i / sorted.length - v / 1000));
  });
  assert.ok(ks < 1.36 / Math.sqrt(sorted.length), `KS distance ${ks}`);
  // and it really is spread: nobody waits the legacy fixed 1000 ms
  assert.ok(Math.min(...delays) < 10 && Math.max(...delays) > 990);
});

test('E1: full jitter draws from [min(250, interval), base] and grows with the step', () => {
  for (const [roll, pick] of [[0, 'floor'], [0.999999, 'top']]) {
    const t = setup({ watchNetwork: false }, { load: { random: () => roll } });
    const got = [];
    t.sock.addEventListener('connecting', (e) => e.code !== undefined && got.push(e.delay));
    t.ws(1).fail();
    for (let i = 0; i < 10; i++) {
      t.env.clock.advance(t.last('connecting').delay);
      t.ws().fail();
    }
    assert.equal(t.env.sockets.length, 11);
    if (pick === 'floor') assert.deepEqual(got, new Array(11).fill(250));
    else {
      const bases = [1000, 1500, 2250, 3375, 5062.5, 7593.75, 11390.6, 17085.9, 25628.9, 30000, 30000];
      got.forEach((d, i) => assert.ok(Math.abs(d - bases[i]) < 1, `step ${i}: ${d} vs ${bases[i]}`));
    }
  }
});

test("E1: 'equal' jitter is in [base/2, base]; 'none' is exactly 1.0.0", () => {
  const t = setup({ jitter: 'equal', watchNetwork: false }, { load: { random: () => 0 } });
  t.ws(1).fail();
  assert.equal(t.last('connecting').delay, 500);
  const n = setup({ jitter: 'none', watchNetwork: false }, { load: { random: () => 0.5 } });
  n.ws(1).accept();
  n.env.clock.advance(60000);
  n.ws(1).lose();
  assert.equal(n.last('connecting').delay, 1000, "no random first retry under 'none'");
});

test('E1: a connection up for less than minUptime does not reset the backoff step', () => {
  const t = setup({ watchNetwork: false }, { load: { random: () => 0.999999 } });
  t.ws(1).fail(); // step 0
  t.env.clock.advance(1000);
  t.ws(2).fail(); // step 1 -> base 1500
  t.env.clock.advance(1500);
  t.ws(3).accept();
  assert.equal(t.sock.reconnectAttempts, 0, 'public counter resets on open (C2)');
  t.env.clock.advance(100); // flapping: up 100 ms
  t.ws(3).lose();
  assert.equal(Math.round(t.last('connecting').delay), 2250, 'continues at step 2');
  t.env.clock.advance(2250);
  t.ws(4).accept();
  t.env.clock.advance(5000); // stable
  t.ws(4).lose();
  assert.ok(t.last('connecting').delay < 1000, 'after minUptime: first retry in [0, interval)');
});

test('E2: each timed-out attempt doubles the next connect timeout up to maxTimeoutInterval; open resets it', () => {
  const t = setup({ jitter: 'none', timeoutInterval: 1000, maxTimeoutInterval: 4000, reconnectInterval: 10, reconnectDecay: 1, watchNetwork: false });
  for (const wait of [1000, 10, 2000, 10, 4000, 10, 4000, 10]) t.env.clock.advance(wait);
  // connect timers are the ones that are not the 10 ms retry
  const connectTimers = t.env.lines.filter((l) => /^timer\(/.test(l) && l !== 'timer(10)');
  assert.deepEqual(connectTimers.slice(0, 5), ['timer(1000)', 'timer(2000)', 'timer(4000)', 'timer(4000)', 'timer(4000)']);
  t.ws().accept();
  t.ws().lose();
  t.env.clock.advance(10);
  assert.equal(t.env.lines.at(-1), 'timer(1000)');
});

test('E2: a timed-out socket is detached first: its late events are ignored', () => {
  const t = setup({ jitter: 'none', timeoutInterval: 1000, watchNetwork: false });
  const ws1 = t.ws(1);
  t.env.clock.advance(1000);
  assert.deepEqual(ws1.closedWith, { code: undefined, reason: undefined });
  assert.deepEqual(t.types(), ['error', 'connecting', 'close']);
  ws1.accept(); // would have been a stray open
  ws1.receive('stray');
  ws1.lose();
  t.env.clock.runTasks();
  assert.deepEqual(t.types(), ['error', 'connecting', 'close']);
  assert.equal(t.sock.readyState, 0);
});
