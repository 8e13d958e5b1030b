// Shortcuts for unit tests of our client against the mock WebSocket and fake clock.
import { createEnv, loadOurs } from './env.mjs';

export const URL_ = 'ws://h.test/message/42/stream/';
export const TYPES = ['open', 'close', 'connecting', 'message', 'error', 'giveup', 'gap', 'resync', 'drop', 'join', 'leave'];

/**
 * Builds one client. Returns {env, R, sock, events, ws(n), last(type), all(type)}.
 * load: options for loadOurs (random, host, document); env: reuse an env (many clients).
 */
export function setup(options = {}, { load = {}, env, url = URL_, protocols } = {}) {
  env = env || createEnv();
  const R = load.R || loadOurs(env, load);
  const events = [];
  const sock = new R(url, protocols, Object.assign({ WebSocket: env.WebSocket }, options));
  for (const type of TYPES) sock.addEventListener(type, (e) => events.push(e));
  return {
    env,
    R,
    sock,
    events,
    ws: (n) => (n === undefined ? env.sockets[env.sockets.length - 1] : env.sockets[n - 1]),
    last: (type) => events.filter((e) => e.type === type).at(-1),
    all: (type) => events.filter((e) => e.type === type),
    types: () => events.map((e) => e.type),
  };
}

/** herald.v1 text frame: header JSON, newline, payload. */
export function frame(header, payload) {
  return JSON.stringify(header) + (payload === undefined ? '' : '\n' + payload);
}

/** herald.v1 binary frame: u32 BE header length | header JSON | payload bytes. */
export function binaryFrame(header, payloadBytes) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(4 + head.length + payloadBytes.length);
  new DataView(out.buffer).setUint32(0, head.length, false);
  out.set(head, 4);
  out.set(payloadBytes, 4 + head.length);
  return out.buffer;
}
