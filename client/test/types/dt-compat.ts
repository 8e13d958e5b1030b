// Compile-only check (not run by node --test): our declarations are assignable to the
// DefinitelyTyped `@types/reconnectingwebsocket@1.0.10` surface, and the extensions type-check.
// Run with TypeScript >= 5.1 and @types/reconnectingwebsocket installed next to it, e.g.
//   tsc --noEmit --strict --lib es2017,dom --types reconnectingwebsocket test/types/dt-compat.ts
import Ours, { ReconnectingWebSocket as Named, type Options } from '../../reconnecting-websocket';
import DT = require('reconnectingwebsocket');

const ours = new Ours('ws://h.test/', null, { jitter: 'none', sendQueue: false });
const legacy: DT = ours; // instance surface
const Ctor: typeof DT = Ours; // constructor and statics
void legacy;
void Ctor;
void Named;

// 1.0.0-style page code type-checks against ours
ours.onopen = function (e) {
  const r: boolean = e.isReconnect;
  void r;
  void this.readyState;
};
ours.onconnecting = (e) => void e.code;
ours.onmessage = (e) => void e.data;
ours.onclose = null; // tolerated (D1)
ours.addEventListener('close', (e) => void e.willReconnect);
ours.addEventListener('gap', (e) => void [e.group, e.from, e.to]);
ours.addEventListener('join', (e) => void [e.group, e.sub.toUpperCase()]);
ours.onleave = (e) => void [e.group, e.sub.length];
ours.addEventListener('resync', (e) => void e.group);
ours.addEventListener('giveup', (e) => void e.attempts);
ours.addEventListener('drop', (e) => void e.count);
const queued: boolean = ours.send('x');
void queued;
ours.reconnectInterval = 4000;

const opts: Options = {
  herald: 'auto',
  sendQueue: { max: 10, ttlMs: 1000 },
  shouldReconnect: (c) => (c.code === 4003 ? 0 : undefined),
};
new Ours(async () => 'ws://h.test/?token=t', ['chat'], opts);
