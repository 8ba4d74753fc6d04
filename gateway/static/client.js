// The WebSocket client of protocol v1 (PROTOCOL.md): subscribe, resume with the last cursor
// after a reconnect, back off between attempts, heartbeat with `ping`, match replies to
// requests by id. It knows nothing about the page; it hands each message to `onMessage`.

export const SUBPROTOCOL = 'mh.v1.json';

export const STATE = Object.freeze({
  IDLE: 'idle',
  CONNECTING: 'connecting', // socket opening, or waiting for `welcome`
  LIVE: 'live', // welcome received, subscriptions sent
  WAITING: 'waiting', // closed; the next attempt is scheduled
});

const MAX_BACKOFF_MS = 15000;
const STABLE_MS = 5000; // a connection that lived this long resets the backoff
const WELCOME_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 15000;

/** The dashboard's own gateway: same origin, `/ws`, with the page's `?token=` if any. */
export function defaultUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  const token = new URLSearchParams(loc.search).get('token');
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  return `${scheme}//${loc.host}/ws${query}`;
}

export class HubClient {
  /**
   * @param {{url: string, throttleMs?: number, onMessage: (msg) => void,
   *          onState?: (client) => void, onReset?: (msg) => void}} opts
   */
  constructor(opts) {
    this.url = opts.url;
    this.onMessage = opts.onMessage;
    this.onState = opts.onState || (() => {});
    this.throttleMs = opts.throttleMs ?? 1000;
    this.effectiveThrottleMs = null;
    this.patterns = new Set(); // what the page wants
    this.resumable = new Set(); // what the cursor covers: held on a previous connection
    this.cursor = null;
    this.state = STATE.IDLE;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.attempt = 0;
    this.retryAt = 0;
    this.retryTimer = 0;
    this.welcomeTimer = 0;
    this.pingTimer = 0;
    this.openedAt = 0;
    this.liveSince = 0;
    this.lastRecv = 0;
    this.heartbeatS = 30;
    this.clockOffset = 0; // server epoch s minus local epoch s
    this.gateway = null;
    this.rttMs = null;
    this.lastClose = null; // {code, reason} of the last close
    this.lastError = null; // the last `error` message without a pending request
    this.stats = { frames: 0, bytes: 0, updates: 0, snapshots: 0, connects: 0, resets: 0,
      resumes: 0, lost: 0, handleMs: 0 };
    this.seqs = new Map(); // topic -> [epoch, seq] for loss detection
    this.sent = []; // the last requests sent (for tests and the debug hook)
  }

  /** Epoch seconds on the gateway's clock. */
  serverNow() {
    return Date.now() / 1000 + this.clockOffset;
  }

  start() {
    if (this.state === STATE.IDLE) this.open();
    window.addEventListener('online', () => this.retryNow());
  }

  /** Connect now if waiting for the next attempt. */
  retryNow() {
    if (this.state === STATE.WAITING) this.open();
  }

  open() {
    clearTimeout(this.retryTimer);
    this.setState(STATE.CONNECTING);
    let ws;
    try {
      ws = new WebSocket(this.url, [SUBPROTOCOL]);
    } catch (err) {
      this.lastClose = { code: 0, reason: String(err) };
      this.scheduleRetry(null);
      return;
    }
    this.ws = ws;
    this.openedAt = performance.now();
    ws.onmessage = (ev) => { if (this.ws === ws) this.onFrame(ev); };
    ws.onclose = (ev) => { if (this.ws === ws) this.lost(ev.code, ev.reason); };
    ws.onerror = () => {}; // a close event always follows, with the code
    clearTimeout(this.welcomeTimer);
    this.welcomeTimer = setTimeout(() => {
      if (this.ws === ws && this.state === STATE.CONNECTING) this.drop('no welcome from gateway');
    }, WELCOME_TIMEOUT_MS);
  }

  /** Give up on the current socket at once (a dead peer may never complete a close). */
  drop(reason) {
    const ws = this.ws;
    if (!ws) return;
    try { ws.close(1000, reason.slice(0, 100)); } catch (_) { /* already closing */ }
    this.lost(1006, reason);
  }

  lost(code, reason) {
    const lived = this.liveSince ? performance.now() - this.liveSince : 0;
    this.ws = null;
    clearTimeout(this.welcomeTimer);
    clearInterval(this.pingTimer);
    this.lastClose = { code, reason: reason || '' };
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.resolve({ type: 'error', id, code: 'disconnected', message: 'connection lost' });
    }
    this.pending.clear();
    if (lived >= STABLE_MS) this.attempt = 0;
    this.liveSince = 0;
    this.scheduleRetry(code);
  }

  scheduleRetry(code) {
    let delay;
    if (code === 1001 && this.attempt === 0) {
      delay = 100 + Math.random() * 400; // draining: another gateway is ready now
    } else {
      const base = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt);
      delay = base / 2 + Math.random() * (base / 2); // jitter: a restart is not a stampede
      if (code === 1013) delay = Math.max(delay, 5000); // over capacity or too slow
      if (code === 4001 || code === 4003) delay = MAX_BACKOFF_MS; // a token will not appear
    }
    this.attempt += 1;
    this.retryAt = performance.now() + delay;
    this.setState(STATE.WAITING);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  setState(state) {
    this.state = state;
    this.onState(this);
  }

  onFrame(ev) {
    if (typeof ev.data !== 'string') return; // mh.v1.json is text frames only
    const t0 = performance.now();
    this.stats.frames += 1;
    this.stats.bytes += ev.data.length;
    this.lastRecv = performance.now();
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch (err) {
      console.warn('metrics-hub: a frame that is not JSON', err);
      return;
    }
    if (msg && msg.type === 'batch' && Array.isArray(msg.items)) {
      for (const item of msg.items) this.dispatch(item);
    } else if (msg) {
      this.dispatch(msg);
    }
    this.stats.handleMs += performance.now() - t0; // parse + apply, for the benchmark
  }

  dispatch(msg) {
    switch (msg.type) {
      case 'welcome':
        this.welcome(msg);
        return;
      case 'update':
        this.stats.updates += 1;
        this.checkSeq(msg);
        this.onMessage(msg);
        if (typeof msg.cursor === 'string') this.cursor = msg.cursor;
        return;
      case 'snapshot':
        this.stats.snapshots += 1;
        this.seqs.set(`${msg.node}/${msg.kind}`, [msg.epoch, msg.seq]);
        this.onMessage(msg);
        return;
      case 'reset':
        this.stats.resets += 1;
        this.seqs.clear();
        this.onMessage(msg);
        return;
      case 'ack':
      case 'history':
      case 'pong':
      case 'error': {
        const p = msg.id !== null && msg.id !== undefined ? this.pending.get(msg.id) : null;
        if (p) {
          this.pending.delete(msg.id);
          clearTimeout(p.timer);
          if (msg.type === 'pong') this.rttMs = performance.now() - p.sentAt;
          if (msg.type === 'ack' && typeof msg.throttle_ms === 'number') {
            this.effectiveThrottleMs = msg.throttle_ms;
            this.onState(this);
          } else if (msg.type === 'error' && p.op !== 'history') {
            this.lastError = msg; // history errors are the node view's to show
            this.onState(this);
          }
          p.resolve(msg);
        } else if (msg.type === 'error') {
          this.lastError = msg;
          console.warn(`metrics-hub gateway error ${msg.code}: ${msg.message}`);
          this.onState(this);
        }
        return;
      }
      default:
        this.onMessage(msg); // alert, and whatever a newer gateway sends
    }
  }

  /** A jump in `seq` within one epoch on an unthrottled subscription is a lost sample. */
  checkSeq(msg) {
    const topic = `${msg.node}/${msg.kind}`;
    const prev = this.seqs.get(topic);
    if (prev && prev[0] === msg.epoch && this.effectiveThrottleMs === 0 && msg.seq > prev[1] + 1) {
      this.stats.lost += msg.seq - prev[1] - 1;
    }
    if (!prev || prev[0] !== msg.epoch || msg.seq > prev[1]) this.seqs.set(topic, [msg.epoch, msg.seq]);
  }

  welcome(msg) {
    clearTimeout(this.welcomeTimer);
    this.gateway = msg.gateway ?? null;
    if (typeof msg.server_time === 'number') this.clockOffset = msg.server_time - Date.now() / 1000;
    if (typeof msg.heartbeat_s === 'number' && msg.heartbeat_s > 0) this.heartbeatS = msg.heartbeat_s;
    this.stats.connects += 1;
    this.liveSince = performance.now();
    this.setState(STATE.LIVE);
    // Patterns the cursor covers resume from it (no gap, no duplicate); patterns added
    // while away, or everything when there is no cursor yet, start from snapshots.
    const all = [...this.patterns];
    const resume = this.cursor ? all.filter((p) => this.resumable.has(p)) : [];
    const fresh = all.filter((p) => !resume.includes(p));
    if (resume.length) {
      this.stats.resumes += 1;
      this.request({ op: 'subscribe', topics: resume, throttle_ms: this.throttleMs,
        snapshot: false, resume: this.cursor });
    }
    if (fresh.length) {
      this.request({ op: 'subscribe', topics: fresh, throttle_ms: this.throttleMs, snapshot: true });
    }
    this.resumable = new Set(all);
    clearInterval(this.pingTimer);
    const every = Math.min(30, Math.max(5, this.heartbeatS)) * 1000;
    this.pingTimer = setInterval(() => this.heartbeat(every), every);
    this.request({ op: 'ping' }); // a first round-trip figure right away
  }

  heartbeat(every) {
    if (this.state !== STATE.LIVE) return;
    if (performance.now() - this.lastRecv > 2 * every + 5000) {
      this.drop('heartbeat timeout');
      return;
    }
    this.request({ op: 'ping' });
  }

  /** Send a request; resolves with its ack/history/pong/error (never rejects). */
  request(fields) {
    return new Promise((resolve) => {
      if (this.state !== STATE.LIVE || !this.ws) {
        resolve({ type: 'error', id: null, code: 'offline', message: 'not connected' });
        return;
      }
      const id = this.send(fields);
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve({ type: 'error', id, code: 'timeout', message: 'no answer from gateway' });
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, timer, op: fields.op, sentAt: performance.now() });
    });
  }

  send(fields) {
    const id = this.nextId++;
    const msg = { ...fields, id };
    this.ws.send(JSON.stringify(msg));
    this.sent.push(msg);
    if (this.sent.length > 50) this.sent.shift();
    return id;
  }

  subscribe(patterns) {
    const added = patterns.filter((p) => !this.patterns.has(p));
    for (const p of added) this.patterns.add(p);
    if (added.length && this.state === STATE.LIVE) {
      this.request({ op: 'subscribe', topics: added, throttle_ms: this.throttleMs, snapshot: true });
      for (const p of added) this.resumable.add(p);
    }
  }

  unsubscribe(patterns) {
    const held = patterns.filter((p) => this.patterns.has(p));
    for (const p of held) { this.patterns.delete(p); this.resumable.delete(p); }
    if (held.length && this.state === STATE.LIVE) this.request({ op: 'unsubscribe', topics: held });
  }

  /** Ask for at most one update per topic per `ms` (0: every sample) on every pattern held. */
  setThrottle(ms) {
    this.throttleMs = ms;
    if (this.state === STATE.LIVE && this.patterns.size) {
      // Subscribing a held pattern again replaces its throttle; no snapshots are needed.
      this.request({ op: 'subscribe', topics: [...this.patterns], throttle_ms: ms, snapshot: false });
    }
  }

  history(topic, since, maxPoints) {
    return this.request({ op: 'history', topic, since, max_points: maxPoints });
  }
}
