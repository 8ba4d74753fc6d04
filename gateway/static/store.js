// The dashboard's data: messages are applied here, never to the DOM. Views read these
// objects once per animation frame and compare `version` counters to know what changed.

import { splitName } from './format.js';

export const LEVEL = Object.freeze({ OK: 0, WARN: 1, CRIT: 2, STALE: 3 });
export const LEVEL_NAME = ['ok', 'warning', 'critical', 'stale'];

// Warning and critical thresholds of the overview (ratios). Filesystems fill slowly and
// then all at once, so they warn a little earlier than memory does.
export const THRESHOLDS = Object.freeze({
  cpu: [0.8, 0.95],
  mem: [0.85, 0.95],
  fs: [0.85, 0.95],
  swap: [0.5, 0.8],
});

export function levelOf(value, [warn, crit]) {
  if (!(value >= warn)) return LEVEL.OK; // NaN and undefined are OK, not critical
  return value >= crit ? LEVEL.CRIT : LEVEL.WARN;
}

/**
 * Rows `{ts, v}` in ascending `ts`, bounded by age and count. `v` is the sample's `values`
 * object exactly as parsed (no copy), or null for a gap (lines break there).
 * Appends are O(1); an older point (history arriving after live updates) is inserted in
 * place, and a point with a `ts` already held replaces it, so replays never duplicate.
 */
export class Series {
  constructor(maxAgeS, maxRows) {
    this.rows = [];
    this.maxAgeS = maxAgeS;
    this.maxRows = maxRows;
    this.version = 0;
  }

  get length() { return this.rows.length; }
  get last() { return this.rows.length ? this.rows[this.rows.length - 1] : null; }
  get first() { return this.rows.length ? this.rows[0] : null; }

  add(ts, v) {
    const rows = this.rows;
    const n = rows.length;
    if (n === 0 || ts > rows[n - 1].ts) {
      rows.push({ ts, v });
    } else {
      const i = this.indexAtOrAfter(ts);
      if (i < n && rows[i].ts === ts) rows[i].v = v;
      else rows.splice(i, 0, { ts, v });
    }
    this.version += 1;
    this.trim();
  }

  /** Merge ascending `[[ts, values], ...]` (a history answer). */
  merge(points) {
    if (!points.length) return;
    const rows = this.rows;
    if (rows.length === 0 || points[points.length - 1][0] < rows[0].ts) {
      const head = points.map(([ts, v]) => ({ ts, v }));
      this.rows = head.concat(rows);
    } else {
      for (const [ts, v] of points) {
        const i = this.indexAtOrAfter(ts);
        if (i < this.rows.length && this.rows[i].ts === ts) continue; // live data wins
        this.rows.splice(i, 0, { ts, v });
      }
    }
    this.version += 1;
    this.trim();
  }

  /** A break in the line just after `ts` (a reset lost the samples in between). */
  gap(ts) {
    const last = this.last;
    if (last && last.v !== null && ts >= last.ts) this.add(ts + 1e-3, null);
  }

  indexAtOrAfter(ts) {
    let lo = 0;
    let hi = this.rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.rows[mid].ts < ts) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  trim() {
    const rows = this.rows;
    const n = rows.length;
    if (n === 0) return;
    // Trim in chunks of 32 or more: splice(0, k) is O(n), so never pay it per update.
    let drop = n > this.maxRows + 32 ? n - this.maxRows : 0;
    const cutoff = rows[n - 1].ts - this.maxAgeS;
    if (rows[0].ts < cutoff) {
      const old = this.indexAtOrAfter(cutoff);
      if (old >= 32) drop = Math.max(drop, old);
    }
    if (drop > 0) rows.splice(0, drop);
  }
}

/** What a node tile shows, from one `system` sample. */
export function deriveSystem(v) {
  let rx = NaN; let tx = NaN; let rd = NaN; let wr = NaN;
  let fsMax = NaN; let fsMount = ''; let cores = 0;
  for (const key in v) {
    const dot = key.indexOf('.');
    if (dot < 0) continue;
    const base = key.slice(0, dot);
    const val = v[key];
    switch (base) {
      case 'net_rx_bytes_per_second':
        if (key.slice(dot + 1) !== 'lo') rx = (rx || 0) + val;
        break;
      case 'net_tx_bytes_per_second':
        if (key.slice(dot + 1) !== 'lo') tx = (tx || 0) + val;
        break;
      case 'disk_read_bytes_per_second': rd = (rd || 0) + val; break;
      case 'disk_written_bytes_per_second': wr = (wr || 0) + val; break;
      case 'fs_used_ratio':
        if (!(val <= fsMax)) { fsMax = val; fsMount = key.slice(dot + 1); }
        break;
      case 'cpu_utilization_ratio': cores += 1; break;
      default: break;
    }
  }
  const memTotal = v.memory_total_bytes;
  const memUsed = v.memory_used_bytes;
  let mem = v.memory_used_ratio;
  if (mem === undefined && memTotal > 0 && memUsed >= 0) mem = memUsed / memTotal;
  return {
    cpu: v.cpu_utilization_ratio,
    mem,
    memUsed,
    memTotal,
    swap: v.swap_used_ratio,
    rx,
    tx,
    rd,
    wr,
    fsMax,
    fsMount,
    load1: v.load1,
    cpus: v.cpu_count || cores || undefined,
  };
}

export class NodeInfo {
  constructor(name) {
    this.name = name;
    this.values = null; // the newest system sample's values
    this.ts = 0; // its collection time (epoch s)
    this.seq = -1;
    this.epoch = null;
    this.seenAt = 0; // performance.now() when it arrived
    this.intervalMs = 0; // smoothed time between arrivals
    this.d = deriveSystem({});
    this.spark = new Series(900, 400);
    this.level = LEVEL.OK;
    this.worst = 0;
    this.stale = false;
    this.version = 0;
  }

  /** Apply a system sample; returns false for a duplicate or an older one. */
  applySystem(msg, now) {
    const newer = msg.epoch !== this.epoch || msg.seq > this.seq || this.values === null;
    const d = deriveSystem(msg.values);
    const net = (d.rx || 0) + (d.tx || 0);
    const disk = (d.rd || 0) + (d.wr || 0);
    this.spark.add(msg.ts, { cpu: d.cpu, mem: d.mem, net, disk });
    if (!newer || msg.ts < this.ts) {
      this.version += 1; // an older sample still lands in the sparkline
      return false;
    }
    if (this.seenAt > 0) {
      const gap = now - this.seenAt;
      this.intervalMs = this.intervalMs ? this.intervalMs * 0.8 + gap * 0.2 : gap;
    }
    this.values = msg.values;
    this.ts = msg.ts;
    this.seq = msg.seq;
    this.epoch = msg.epoch;
    this.seenAt = now;
    this.d = d;
    this.stale = false;
    this.rank();
    this.version += 1;
    return true;
  }

  rank() {
    const d = this.d;
    const lv = Math.max(
      levelOf(d.cpu, THRESHOLDS.cpu),
      levelOf(d.mem, THRESHOLDS.mem),
      levelOf(d.fsMax, THRESHOLDS.fs),
      levelOf(d.swap, THRESHOLDS.swap),
    );
    this.level = this.stale ? LEVEL.STALE : lv;
    this.worst = Math.max(d.cpu || 0, d.mem || 0, d.fsMax || 0);
  }
}

/**
 * Every node seen on `*\/system`, plus the kinds seen per node. `version` changes when a node
 * is added, so views re-sort and re-filter only then (and on their own timer).
 */
export class Fleet {
  constructor() {
    this.nodes = new Map();
    this.kinds = new Map(); // node -> Set of kinds seen
    this.version = 0;
    this.valuesVersion = 0;
  }

  node(name) {
    let n = this.nodes.get(name);
    if (!n) {
      n = new NodeInfo(name);
      this.nodes.set(name, n);
      this.version += 1;
    }
    return n;
  }

  noteKind(node, kind) {
    let set = this.kinds.get(node);
    if (!set) { set = new Set(); this.kinds.set(node, set); }
    if (!set.has(kind)) { set.add(kind); this.version += 1; }
  }

  applySystem(msg, now) {
    const n = this.node(msg.node);
    const changed = n.applySystem(msg, now);
    this.valuesVersion += 1;
    return changed;
  }

  /**
   * Mark nodes whose data stopped: nothing for 3.5 intervals (at least 5 s) while the
   * connection itself was up. `since` is when the connection last came up, so a gateway
   * outage never makes the whole fleet look dead.
   */
  checkStale(now, since, throttleMs) {
    let changed = 0;
    for (const n of this.nodes.values()) {
      const expected = Math.max(n.intervalMs || 1000, throttleMs || 0);
      const limit = Math.max(5000, expected * 3.5);
      const stale = now - Math.max(n.seenAt, since) > limit;
      if (stale !== n.stale) {
        n.stale = stale;
        n.rank();
        n.version += 1;
        changed += 1;
      }
    }
    if (changed) this.valuesVersion += 1;
    return changed;
  }

  /** After a reset the following snapshots replace what we held: break every sparkline. */
  breakAll() {
    for (const n of this.nodes.values()) {
      n.spark.gap(n.ts);
      n.seq = -1;
      n.epoch = null;
      n.version += 1;
    }
  }

  counts() {
    const c = [0, 0, 0, 0];
    for (const n of this.nodes.values()) c[n.level] += 1;
    return { ok: c[0], warning: c[1], critical: c[2], stale: c[3], total: this.nodes.size };
  }
}

/** Full-detail series of the one node the node view shows, per kind. */
export class NodeDetail {
  constructor(name, windowS) {
    this.name = name;
    this.windowS = windowS;
    this.kinds = new Map(); // kind -> {series, latest, history: 'pending'|'loaded'|'failed'|null}
    this.version = 0;
  }

  kind(kind) {
    let k = this.kinds.get(kind);
    if (!k) {
      k = { series: new Series(Math.max(this.windowS, 3600) + 60, 20000), latest: null,
        latestTs: 0, history: null, historyError: '' };
      this.kinds.set(kind, k);
      this.version += 1;
    }
    return k;
  }

  add(kind, ts, values) {
    const k = this.kind(kind);
    k.series.add(ts, values);
    if (ts >= k.latestTs) { k.latest = values; k.latestTs = ts; }
    this.version += 1;
  }

  merge(kind, points) {
    const k = this.kind(kind);
    k.series.merge(points);
    const last = points[points.length - 1];
    if (last && last[0] >= k.latestTs) { k.latest = last[1]; k.latestTs = last[0]; }
    this.version += 1;
  }

  gapAll() {
    for (const k of this.kinds.values()) k.series.gap(k.latestTs);
    this.version += 1;
  }
}

/** Firing and recently resolved alerts, from `alert` messages. */
export class AlertBook {
  constructor() {
    this.byKey = new Map();
    this.version = 0;
    this.received = 0;
  }

  apply(msg, nowS) {
    const key = `${msg.rule}\u0000${msg.node}`;
    const prev = this.byKey.get(key);
    const since = msg.state === 'firing' && prev && prev.state === 'firing' ? prev.since : msg.ts;
    this.byKey.set(key, { ...msg, since, receivedAt: nowS });
    this.received += 1;
    this.version += 1;
  }

  /** Firing alerts (critical first, then newest) and those resolved within `keepS`. */
  lists(nowS, keepS = 3600) {
    const firing = [];
    const resolved = [];
    for (const [key, a] of this.byKey) {
      if (a.state === 'firing') firing.push(a);
      else if (nowS - a.ts <= keepS) resolved.push(a);
      else this.byKey.delete(key);
    }
    const sev = (a) => ({ critical: 0, error: 1, warning: 2 }[a.severity] ?? 3);
    firing.sort((a, b) => sev(a) - sev(b) || b.since - a.since);
    resolved.sort((a, b) => b.ts - a.ts);
    return { firing, resolved: resolved.slice(0, 20) };
  }
}

/** The `gateway` kind: each gateway's newest values and the one before (for rates). */
export class GatewayBook {
  constructor() {
    this.gateways = new Map();
    this.version = 0;
  }

  apply(msg) {
    const prev = this.gateways.get(msg.node);
    if (prev && msg.ts <= prev.ts) return;
    this.gateways.set(msg.node, {
      node: msg.node,
      ts: msg.ts,
      values: msg.values,
      prevTs: prev ? prev.ts : 0,
      prevValues: prev ? prev.values : null,
    });
    this.version += 1;
  }
}

/**
 * Group a gateway's metric names for display without a fixed name contract:
 * a leading `gateway_` is dropped; `base.instance` groups by base (`connections.open`);
 * otherwise the first word is the group (`cache_hit_ratio` -> cache / hit ratio).
 */
export function groupMetrics(names) {
  const groups = new Map();
  for (const name of names) {
    const [base, inst] = splitName(name);
    const stripped = base.replace(/^gateway_/, '');
    let group;
    let item;
    if (inst) {
      group = stripped;
      item = inst;
    } else {
      const us = stripped.indexOf('_');
      group = us < 0 ? stripped : stripped.slice(0, us);
      item = us < 0 ? '' : stripped.slice(us + 1);
    }
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push({ name, item });
  }
  return groups;
}
