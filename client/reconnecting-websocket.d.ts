// Types for herald-client: a drop-in ReconnectingWebSocket (joewalnes 1.0.0) with extensions.
// Hand-written. An instance is assignable to the DefinitelyTyped `@types/reconnectingwebsocket`
// surface (checked by test/types/dt-compat.ts); everything beyond it is an extension.
// Handler properties use a TypeScript 5.1+ split accessor: they accept a typed handler or null
// (null is tolerated, D1) and read back as a plain function type.

export type BinaryTypeName = 'blob' | 'arraybuffer';

/** A URL, or a function evaluated before every attempt (e.g. to put a fresh token in it). */
export type UrlProvider = string | (() => string | Promise<string>);

export type ProtocolsProvider =
  | string
  | string[]
  | null
  | undefined
  | (() => string | string[] | null | undefined | Promise<string | string[] | null | undefined>);

/** 'connecting' | 'open' | 'backoff' (waiting to retry) | 'offline' (paused) | 'closed' */
export type ConnectionState = 'connecting' | 'open' | 'backoff' | 'offline' | 'closed';

export interface SendQueueOptions {
  /** Most queued messages. Default 100. */
  max?: number;
  /** Most queued bytes (UTF-8 for strings). Default 1048576. */
  maxBytes?: number;
  /** Queued messages older than this are dropped with a `drop` event. Default 30000 ms. */
  ttlMs?: number;
}

/** What a close looked like; passed to `shouldReconnect`. */
export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
}

/** A stream position per group, as sent in the herald.v1 `hello`. */
export interface StreamPosition {
  o: number | null;
  e: string | null;
}

export interface Options {
  // ---- reconnectingwebsocket 1.0.0 ----
  /** Log to console.debug. Default false. */
  debug?: boolean;
  /** Connect from the constructor. Default true. */
  automaticOpen?: boolean;
  /** Backoff base in ms. Default 1000. */
  reconnectInterval?: number;
  /** Backoff cap in ms. Default 30000. */
  maxReconnectInterval?: number;
  /** Backoff multiplier. Default 1.5. */
  reconnectDecay?: number;
  /** Connect timeout in ms. Default 5000 (1.0.0: 2000). */
  timeoutInterval?: number;
  /** Retries before giving up; null or 0 = unlimited. Default null. */
  maxReconnectAttempts?: number | null;
  /** Default 'blob'. */
  binaryType?: BinaryTypeName;

  // ---- extensions ----
  /** Backoff jitter. 'none' is 1.0.0's exact schedule. Default 'full'. */
  jitter?: 'full' | 'equal' | 'none';
  /** A connection must stay up this long (ms) before the backoff step resets. Default 5000. */
  minUptime?: number;
  /** Cap for the adaptive connect timeout (doubles after each timeout). Default 30000. */
  maxTimeoutInterval?: number;
  /** Queue sends while disconnected (true = defaults); false = 1.0.0 behaviour (throw). Default true. */
  sendQueue?: boolean | SendQueueOptions;
  /** Plain mode: refresh() when nothing arrived for this many ms. 0 = off (default). */
  idleTimeout?: number;
  /** Close codes that stop reconnection, in addition to 1009, 3500-3999 and 4500-4999. */
  terminalCloseCodes?: number[] | null;
  /** Decide per close: false = stop, true = back off, a number = retry after that many ms, undefined = default rule. */
  shouldReconnect?: ((close: CloseInfo) => boolean | number | undefined) | null;
  /** Offer the herald.v1 subprotocol: true, false, or 'auto' (only to the host that served /herald.js). Default 'auto'. */
  herald?: boolean | 'auto';
  /** Keep herald.v1 positions in sessionStorage (true, or the storage key to use). Default false. */
  persistPositions?: boolean | string;
  /** herald.v1: grace added to the server's ping_ms before the connection counts as dead. Default 10000. */
  maxPingDelay?: number;
  /** React to online/offline, pagehide/pageshow, visibility and focus. Default true. */
  watchNetwork?: boolean;
  /** WebSocket implementation (tests, Node without a global WebSocket). */
  WebSocket?: new (url: string, protocols?: string | string[]) => any;
  /**
   * Transports to use: WebSocket first, Server-Sent Events after `sseAfter` WebSocket attempts
   * in a row that never opened (a proxy stripping Upgrade). 'auto' = ['websocket', 'sse'] for
   * the host that served /herald.js, else ['websocket']. Default 'auto'. SSE only receives:
   * send() while on SSE queues or throws as when disconnected.
   */
  transports?: 'auto' | Array<'websocket' | 'sse'>;
  /** WebSocket attempts in a row that never opened before falling back to SSE. Default 3. */
  sseAfter?: number;
  /** Time on SSE (ms) before WebSocket is tried again. Default 60000. */
  websocketRetryInterval?: number;
  /** EventSource implementation (tests). */
  EventSource?: new (url: string) => any;
}

export interface OpenEvent extends Event {
  /** false on the first open, true after a reconnect. */
  isReconnect: boolean;
  /** true when a herald.v1 resume recovered every stream without loss. */
  recovered?: boolean;
  /** herald.v1 only: per group, what the server's welcome said. */
  streams?: Record<string, OpenStream>;
}

/** One group of a herald.v1 `open` event. */
export interface OpenStream {
  /** The server's current offset: the last message of the replay, if any. */
  o: number | null;
  /** The stream's epoch. */
  e: string | null;
  /** true when this group was resumed without loss (false on a first visit and on resync). */
  recovered: boolean;
  /** How many missed messages the server replays right after this event (0 unless recovered). */
  replay: number;
}

export interface ConnectingEvent extends Event {
  /** Fields of the native CloseEvent; absent on a fresh start. */
  code?: number;
  reason?: string;
  wasClean?: boolean;
  /** Number of the attempt this wait leads to. */
  attempt?: number;
  /** ms until that attempt; null while offline. */
  delay?: number | null;
  /** The attempt was abandoned by the connect timeout. */
  timeout?: boolean;
}

export interface CloseEventLike extends Event {
  code?: number;
  reason?: string;
  wasClean?: boolean;
  /** false after close(), a terminal close code, or giving up. */
  willReconnect?: boolean;
  delay?: number | null;
  timeout?: boolean;
}

export interface MessageEventLike<T = any> extends Event {
  /** The payload exactly as sent: a string, or a Blob/ArrayBuffer per binaryType. */
  data: T;
  /** herald.v1: the group and offset of the message. */
  group?: string;
  offset?: number;
}

export interface ErrorEventLike extends Event {
  /** Present when a URL/protocols provider failed. */
  error?: unknown;
}

export interface GiveupEvent extends Event {
  /** Reconnect attempts made. */
  attempts: number;
  /** The terminal close code, when a close code ended it. */
  code?: number;
  reason?: string;
}

export interface GapEvent extends Event {
  group: string;
  /** First missing offset. */
  from: number;
  /** Last missing offset. */
  to: number;
}

export interface ResyncEvent extends Event {
  /** The page must reload its state for this group: history could not fill the outage. */
  group: string;
}

/** herald.v1 on a route with `presence = true`: a user entered (`join`) or left (`leave`) a group. */
export interface PresenceEvent extends Event {
  group: string;
  /** The user's id: the connection token's or the connect hook's `sub`. */
  sub: string;
}

export interface DropEvent extends Event {
  count: number;
  reason: 'ttl';
}

export interface ReconnectingWebSocketEventMap {
  open: OpenEvent;
  close: CloseEventLike;
  connecting: ConnectingEvent;
  message: MessageEventLike;
  error: ErrorEventLike;
  giveup: GiveupEvent;
  gap: GapEvent;
  resync: ResyncEvent;
  drop: DropEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
}

type Handler<E> = ((this: ReconnectingWebSocket, event: E) => any) | null;
type AnyHandler = (this: any, event: any) => any;

declare class ReconnectingWebSocket extends EventTarget {
  constructor(url: UrlProvider, protocols?: ProtocolsProvider, options?: Options);

  static debugAll: boolean;
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  static readonly HERALD_PROTOCOL: 'herald.v1';
  /** The default terminal rule: 1009, 3500-3999, 4500-4999. */
  static isTerminalCloseCode(code: number): boolean;

  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  // options, live (read when used)
  debug: boolean;
  automaticOpen: boolean;
  reconnectInterval: number;
  maxReconnectInterval: number;
  reconnectDecay: number;
  timeoutInterval: number;
  maxReconnectAttempts: number | null;
  jitter: 'full' | 'equal' | 'none';
  minUptime: number;
  maxTimeoutInterval: number;
  sendQueue: boolean | SendQueueOptions;
  idleTimeout: number;
  terminalCloseCodes: number[] | null;
  shouldReconnect: ((close: CloseInfo) => boolean | number | undefined) | null;
  herald: boolean | 'auto';
  persistPositions: boolean | string;
  maxPingDelay: number;
  watchNetwork: boolean;
  transports: 'auto' | Array<'websocket' | 'sse'>;
  sseAfter: number;
  websocketRetryInterval: number;

  /** The url argument; with a provider function, the last URL it returned. */
  url: string;
  /** Retries since the last open (0 on open, +1 right before each retry). */
  reconnectAttempts: number;
  /** CONNECTING while connecting or waiting to retry; CLOSED only after close() or giving up. */
  readyState: number;
  /** null until the first open, then the server's choice. */
  protocol: string | null;
  /** Live: applies to the current socket as well. */
  binaryType: BinaryTypeName;
  /** Socket buffer plus send queue, in bytes. */
  readonly bufferedAmount: number;
  readonly extensions: string;
  readonly state: ConnectionState;
  /** herald.v1 and SSE: last handled position per group (a copy). */
  readonly positions: Record<string, StreamPosition>;
  /** The transport in use: 'websocket', or 'sse' after a fallback. */
  readonly transport: 'websocket' | 'sse';

  get onopen(): AnyHandler;
  set onopen(handler: Handler<OpenEvent>);
  get onclose(): AnyHandler;
  set onclose(handler: Handler<CloseEventLike>);
  get onconnecting(): AnyHandler;
  set onconnecting(handler: Handler<ConnectingEvent>);
  get onmessage(): AnyHandler;
  set onmessage(handler: Handler<MessageEventLike>);
  get onerror(): AnyHandler;
  set onerror(handler: Handler<ErrorEventLike>);
  ongiveup: Handler<GiveupEvent>;
  ongap: Handler<GapEvent>;
  onresync: Handler<ResyncEvent>;
  ondrop: Handler<DropEvent>;
  onjoin: Handler<PresenceEvent>;
  onleave: Handler<PresenceEvent>;

  /** Connect now. Clears the closed state; a falsy argument means a fresh start. */
  open(reconnectAttempt?: boolean): void;
  /** true = written to the socket, false = queued. Throws QuotaExceededError when the queue is full. */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): boolean;
  /** Close for good: cancels retries and pending attempts. */
  close(code?: number, reason?: string): void;
  /** Close the current socket and reconnect. */
  refresh(): void;
  /** Drop the current socket (if any) and connect again now; works after close() and giveup. */
  reconnect(code?: number, reason?: string): void;
  pendingMessages(): Array<string | ArrayBufferLike | Blob | ArrayBufferView>;
  clearQueue(): Array<string | ArrayBufferLike | Blob | ArrayBufferView>;

  addEventListener<K extends keyof ReconnectingWebSocketEventMap>(
    type: K,
    listener: (this: ReconnectingWebSocket, event: ReconnectingWebSocketEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ReconnectingWebSocketEventMap>(
    type: K,
    listener: (this: ReconnectingWebSocket, event: ReconnectingWebSocketEventMap[K]) => any,
    options?: boolean | EventListenerOptions
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export declare function isTerminalCloseCode(code: number): boolean;

export { ReconnectingWebSocket };
export default ReconnectingWebSocket;
