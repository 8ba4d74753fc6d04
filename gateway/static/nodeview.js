// The node view: live charts of one node. On opening it subscribes `<node>/*` and asks for
// `history` of each kind, so charts are full at once; live updates merge in by timestamp.

import {
  bytes, formatUnit, isCounter, isNum, label, naturalCompare, percent, si, splitName,
  timeOfDay, unitOf, rateUnit, duration,
} from './format.js';
import { Heatmap, LineChart, drawSparks, palette } from './charts.js';
import { NodeDetail, LEVEL_NAME, THRESHOLDS, levelOf } from './store.js';

const BUILTIN = new Set(['system', 'gateway', 'alert']);
const MAX_KIND_ROWS = 60;
const CHARTS_PER_FRAME = 4;
const MAX_HISTORY_POINTS = 1200;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Rate of a counter between row i-1 and row i; NaN across a reset or a gap row. */
function counterRate(key) {
  return (v, i, rows) => {
    const prev = i > 0 ? rows[i - 1] : null;
    if (!prev || !prev.v) return NaN;
    const dv = v[key] - prev.v[key];
    const dt = rows[i].ts - prev.ts;
    return dt > 0 && dv >= 0 ? dv / dt : NaN;
  };
}

const pick = (key) => (v) => v[key];

/** A titled card with a legend and a canvas chart, redrawn when its kind's data changes. */
class ChartCard {
  constructor(parent, spec) {
    this.spec = spec;
    this.kind = spec.kind || 'system';
    this.root = el('figure', 'card chart-card');
    this.root.dataset.chart = spec.id;
    const cap = el('figcaption');
    this.titleEl = el('span', 'chart-title', spec.title);
    this.extra = el('span', 'chart-extra');
    this.legend = el('span', 'legend');
    cap.append(this.titleEl, this.extra, this.legend);
    this.canvas = el('canvas', spec.heat ? 'chart heat' : 'chart');
    this.canvas.setAttribute('role', 'img');
    this.canvas.setAttribute('aria-label', `${spec.title} chart`);
    this.canvas.dataset.points = '0';
    this.root.append(cap, this.canvas);
    parent.append(this.root);
    this.chart = spec.heat ? new Heatmap(this.canvas) : new LineChart(this.canvas, spec);
    this.drawnVersion = -1;
    this.legendItems = [];
    if (!spec.heat) {
      for (const s of spec.series) {
        const item = el('span', 'legend-item');
        const sw = el('i', 'swatch');
        sw.style.background = s.color;
        if (s.dash) sw.classList.add('dashed');
        const val = el('b', '', '–');
        item.append(sw, document.createTextNode(`${s.label} `), val);
        this.legend.append(item);
        this.legendItems.push(val);
      }
      this.canvas.addEventListener('pointermove', (ev) => {
        this.chart.hoverX = ev.offsetX;
        this.drawnVersion = -1;
        this.onHover();
      });
      this.canvas.addEventListener('pointerleave', () => {
        this.chart.hoverX = null;
        this.chart.hoverRow = null;
        this.drawnVersion = -1;
        this.onHover();
      });
    }
    this.onHover = () => {};
  }

  draw(series, t0, t1) {
    const rows = series.rows;
    if (this.spec.heat) {
      this.chart.draw(rows, t0, t1, this.spec.keys);
    } else {
      this.chart.draw(rows, t0, t1);
      const row = this.chart.hoverRow && this.chart.hoverX !== null ? this.chart.hoverRow
        : this.chart.last;
      const i = row ? rows.indexOf(row) : -1;
      this.spec.series.forEach((s, j) => {
        const y = row && row.v ? s.get(row.v, i, rows) : NaN;
        const text = formatUnit(this.spec.unit, y);
        if (this.legendItems[j].textContent !== text) this.legendItems[j].textContent = text;
      });
      const hover = this.chart.hoverX !== null && row ? ` at ${timeOfDay(row.ts)}` : '';
      if (this.extra.dataset.hover !== hover) {
        this.extra.dataset.hover = hover;
        this.extra.textContent = (this.spec.extraText || '') + hover;
      }
    }
    this.drawnVersion = series.version;
  }

  remove() { this.root.remove(); }
}

/** System charts for a sample: which cards exist follows the instances the node reports. */
function systemSpecs(v, c) {
  const s = c.series;
  const inst = (base) => Object.keys(v).filter((k) => k.startsWith(`${base}.`))
    .map((k) => k.slice(base.length + 1)).sort(naturalCompare);
  const specs = [];
  specs.push({
    id: 'cpu', title: 'CPU', unit: 'ratio', yMax: 1,
    series: [
      { label: 'total', get: pick('cpu_utilization_ratio'), color: s[0], fill: true, width: 2 },
      { label: 'user', get: pick('cpu_user_ratio'), color: s[1] },
      { label: 'system', get: pick('cpu_system_ratio'), color: s[2] },
      { label: 'iowait', get: pick('cpu_iowait_ratio'), color: s[3] },
      { label: 'steal', get: pick('cpu_steal_ratio'), color: s[5] },
    ].filter((x) => x.get(v) !== undefined),
  });
  const cores = inst('cpu_utilization_ratio');
  if (cores.length) {
    specs.push({ id: 'cores', title: `Per-core CPU · ${cores.length} cores`, heat: true,
      keys: cores, wide: cores.length > 16 });
  }
  specs.push({
    id: 'mem', title: 'Memory', unit: 'bytes',
    series: [
      { label: 'used', get: pick('memory_used_bytes'), color: s[1], fill: true, width: 2 },
      { label: 'cached', get: pick('memory_cached_bytes'), color: s[4] },
      { label: 'buffers', get: pick('memory_buffers_bytes'), color: s[6] },
      { label: 'swap', get: pick('swap_used_bytes'), color: s[3] },
      { label: 'total', get: pick('memory_total_bytes'), color: c.muted, dash: true, width: 1 },
    ].filter((x) => x.get(v) !== undefined),
  });
  specs.push({
    id: 'load', title: 'Load average', unit: '',
    series: [
      { label: '1 min', get: pick('load1'), color: s[0], width: 2 },
      { label: '5 min', get: pick('load5'), color: s[4] },
      { label: '15 min', get: pick('load15'), color: s[7] },
      { label: 'CPUs', get: pick('cpu_count'), color: c.muted, dash: true, width: 1 },
    ].filter((x) => x.get(v) !== undefined),
  });
  const nics = new Set([...inst('net_rx_bytes_per_second'), ...inst('net_rx_bytes_total')]);
  for (const nic of [...nics].sort(naturalCompare)) {
    specs.push({
      id: `net:${nic}`, title: `Network · ${nic}`, unit: 'bytes/s',
      series: [
        { label: '↓ rx', get: pick(`net_rx_bytes_per_second.${nic}`), color: s[2], fill: true },
        { label: '↑ tx', get: pick(`net_tx_bytes_per_second.${nic}`), color: s[0] },
      ],
    });
  }
  const devs = new Set([...inst('disk_read_bytes_per_second'), ...inst('disk_read_bytes_total')]);
  for (const dev of [...devs].sort(naturalCompare)) {
    specs.push({
      id: `disk:${dev}`, title: `Disk · ${dev}`, unit: 'bytes/s', busyKey: `disk_busy_ratio.${dev}`,
      series: [
        { label: 'read', get: pick(`disk_read_bytes_per_second.${dev}`), color: s[4], fill: true },
        { label: 'write', get: pick(`disk_written_bytes_per_second.${dev}`), color: s[3] },
      ],
    });
  }
  const activity = [
    { label: 'ctx switches', get: pick('context_switches_per_second'), color: s[5] },
    { label: 'interrupts', get: pick('interrupts_per_second'), color: s[6] },
    { label: 'soft irq', get: pick('soft_interrupts_per_second'), color: s[7] },
  ].filter((x) => x.get(v) !== undefined);
  if (activity.length) {
    specs.push({ id: 'activity', title: 'Kernel activity', unit: '1/s', series: activity });
  }
  const temps = inst('temperature_celsius').slice(0, 8);
  if (temps.length) {
    specs.push({
      id: 'temp', title: 'Temperatures', unit: 'celsius', yMin: 0,
      series: temps.map((t, i) => ({ label: t, get: pick(`temperature_celsius.${t}`), color: s[i % 8] })),
    });
  }
  return specs;
}

export class NodeView {
  constructor(root, client, fleet, { onClose, invalidate }) {
    this.root = root;
    this.client = client;
    this.fleet = fleet;
    this.invalidate = invalidate;
    this.name = null;
    this.detail = null;
    this.cards = new Map();
    this.signature = '';
    this.kindCards = new Map();
    this.fsVersion = -1;
    this.fsSig = '';
    this.headVersion = -1;
    this.forceAll = false;
    this.windowEl = root.querySelector('#nv-window');
    this.windowEl.value = localStorage.getItem('mh.window') || '900';
    this.windowEl.addEventListener('change', () => {
      localStorage.setItem('mh.window', this.windowEl.value);
      if (!this.detail) return;
      this.detail.windowS = Number(this.windowEl.value);
      for (const k of this.detail.kinds.values()) k.history = null; // fetch the longer span
      this.loadHistory();
      this.redrawAll();
    });
    root.querySelector('#nv-back').addEventListener('click', onClose);
    this.chartsEl = root.querySelector('#nv-charts');
    this.fsEl = root.querySelector('#nv-fs');
    this.kindsEl = root.querySelector('#nv-kinds');
    this.noteEl = root.querySelector('#nv-note');
    new ResizeObserver(() => { this.redrawAll(); this.invalidate(); }).observe(this.chartsEl);
  }

  get windowS() { return Number(this.windowEl.value) || 900; }

  open(name) {
    if (this.name === name) return;
    this.close();
    this.name = name;
    this.detail = new NodeDetail(name, this.windowS);
    this.root.hidden = false;
    this.root.querySelector('#nv-name').textContent = name;
    this.noteEl.hidden = true;
    this.client.subscribe([`${name}/*`]);
    this.detail.kind('system');
    this.loadHistory();
    this.invalidate();
  }

  close() {
    if (this.name === null) return;
    this.client.unsubscribe([`${this.name}/*`]);
    this.name = null;
    this.detail = null;
    for (const c of this.cards.values()) c.remove();
    this.cards.clear();
    for (const k of this.kindCards.values()) k.root.remove();
    this.kindCards.clear();
    this.fsEl.replaceChildren();
    this.signature = '';
    this.cardSigs = new Map();
    this.fsVersion = -1;
    this.fsSig = '';
    this.headVersion = -1;
    this.root.hidden = true;
  }

  /** Request history for every kind that has none yet (on open, new kind, reconnect). */
  loadHistory() {
    const detail = this.detail;
    if (!detail || this.client.state !== 'live') return;
    for (const [kind, k] of detail.kinds) {
      if (k.history !== null && k.history !== 'retry') continue;
      k.history = 'pending';
      const node = this.fleet.nodes.get(detail.name);
      const stepS = Math.max(1, (node && node.intervalMs ? node.intervalMs : 1000) / 1000);
      const since = this.client.serverNow() - detail.windowS;
      // A chart shows at most about two points per pixel, and a history answer is parsed in
      // one go (900 points of a system sample are ~2 MB of JSON): cap it, and let the
      // gateway thin a long window evenly.
      const maxPoints = Math.min(MAX_HISTORY_POINTS, Math.ceil(detail.windowS / stepS) + 30);
      this.client.history(`${detail.name}/${kind}`, since, maxPoints).then((msg) => {
        if (this.detail !== detail) return; // the view moved on
        if (msg.type === 'history') {
          detail.merge(kind, msg.points || []);
          k.history = 'loaded';
        } else if (msg.code === 'disconnected' || msg.code === 'offline' || msg.code === 'timeout') {
          k.history = 'retry'; // asked again when the connection is back
        } else {
          k.history = 'failed';
          k.historyError = msg.message || msg.code;
          this.showNote(`History of ${kind} is not available (${msg.code}); its charts start now.`);
        }
        this.invalidate();
      });
    }
  }

  showNote(text) {
    this.noteEl.textContent = text;
    this.noteEl.hidden = false;
  }

  onSample(msg) {
    if (!this.detail || msg.node !== this.name) return;
    const known = this.detail.kinds.has(msg.kind);
    this.detail.add(msg.kind, msg.ts, msg.values);
    if (!known) this.loadHistory();
  }

  /** The gateway could not resume: mark the gap and fetch history again to fill it. */
  onReset() {
    if (!this.detail) return;
    this.detail.gapAll();
    for (const k of this.detail.kinds.values()) k.history = 'retry';
    this.loadHistory();
  }

  onLive() {
    this.loadHistory();
  }

  redrawAll() {
    for (const c of this.cards.values()) c.drawnVersion = -1;
    this.forceAll = true;
  }

  /** Theme changed: series colours live in the specs, so rebuild the cards. */
  retheme() {
    this.signature = '';
    this.cardSigs = new Map();
    for (const card of this.kindCards.values()) {
      card.drawn = -1;
      for (const row of card.rows.values()) row.drawn = -1;
    }
    this.redrawAll();
  }

  syncCards(sample) {
    const c = palette();
    const specs = systemSpecs(sample, c);
    const sigOf = (s) => `${s.id}:${s.title}:`
      + (s.series ? s.series.map((x) => x.label) : s.keys).join(',');
    const sig = specs.map(sigOf).join('|');
    if (sig === this.signature) return;
    this.signature = sig;
    if (!this.cardSigs) this.cardSigs = new Map();
    const wanted = new Set(specs.map((s) => s.id));
    for (const [id, card] of this.cards) {
      if (!wanted.has(id)) { card.remove(); this.cards.delete(id); this.cardSigs.delete(id); }
    }
    for (const spec of specs) {
      const old = this.cards.get(spec.id);
      if (old && this.cardSigs.get(spec.id) === sigOf(spec)) continue;
      if (old) old.remove();
      const card = new ChartCard(this.chartsEl, spec);
      if (spec.wide) card.root.classList.add('wide');
      card.onHover = this.invalidate;
      this.cards.set(spec.id, card);
      this.cardSigs.set(spec.id, sigOf(spec));
    }
    // DOM order follows the spec order (a new interface lands next to the others)
    specs.forEach((spec, i) => {
      const card = this.cards.get(spec.id).root;
      const here = this.chartsEl.children[i] || null;
      if (here !== card) this.chartsEl.insertBefore(card, here);
    });
  }

  render(deadline, nowS) {
    const detail = this.detail;
    if (!detail) return false;
    const sys = detail.kinds.get('system');
    this.renderHead(nowS);
    if (sys && sys.latest) this.syncCards(sys.latest);
    const t1 = nowS;
    const t0 = t1 - detail.windowS;
    let left = false;
    let drawn = 0;
    for (const card of this.cards.values()) {
      const k = detail.kinds.get(card.kind);
      if (!k || card.drawnVersion === k.series.version) continue;
      // A few charts per frame: each redrawn canvas also costs raster time after our code,
      // so a sample that changes all of them is spread over several frames.
      if ((performance.now() > deadline || drawn >= CHARTS_PER_FRAME) && !this.forceAll) {
        left = true;
        break;
      }
      drawn += 1;
      if (card.spec.busyKey && k.latest) {
        const busy = k.latest[card.spec.busyKey];
        card.spec.extraText = isNum(busy) ? `busy ${percent(busy)}` : '';
        card.extra.textContent = card.spec.extraText;
      }
      card.draw(k.series, t0, t1);
    }
    this.forceAll = false;
    if (sys && sys.series.version !== this.fsVersion && sys.latest) {
      this.renderFilesystems(sys.latest);
      this.fsVersion = sys.series.version;
    }
    if (!left) left = this.renderKinds(deadline, t0, t1);
    return left;
  }

  renderHead(nowS) {
    const node = this.fleet.nodes.get(this.name);
    const status = this.root.querySelector('#nv-status');
    const meta = this.root.querySelector('#nv-meta');
    if (!node || !node.values) {
      status.textContent = 'waiting for data';
      status.dataset.level = 'stale';
      return;
    }
    if (this.headVersion === node.version && !node.stale) return;
    this.headVersion = node.version;
    const lv = LEVEL_NAME[node.level];
    status.textContent = node.stale ? `stale: last sample ${duration(Math.round(nowS - node.ts))} ago` : lv;
    status.dataset.level = lv;
    const v = node.values;
    const parts = [];
    if (node.d.cpus) parts.push(`${node.d.cpus} CPUs`);
    if (isNum(v.memory_total_bytes)) parts.push(`${bytes(v.memory_total_bytes)} memory`);
    if (isNum(v.process_count)) parts.push(`${si(v.process_count)} processes`);
    if (isNum(v.boot_time_seconds)) parts.push(`up ${duration(Math.max(0, nowS - v.boot_time_seconds))}`);
    parts.push(`sample at ${timeOfDay(node.ts)}`);
    meta.textContent = parts.join(' · ');
  }

  renderFilesystems(v) {
    const mounts = Object.keys(v).filter((k) => k.startsWith('fs_used_ratio.'))
      .map((k) => k.slice('fs_used_ratio.'.length)).sort(naturalCompare);
    // Filesystems change slowly: rebuild the rows only when what they show changed.
    const sig = mounts.map((m) => `${m}:${percent(v[`fs_used_ratio.${m}`])}:${bytes(v[`fs_used_bytes.${m}`])}`
      + `:${percent(v[`fs_inodes_used_ratio.${m}`])}`).join('|');
    if (sig === this.fsSig) return;
    this.fsSig = sig;
    const rows = mounts.map((m) => {
      const ratio = v[`fs_used_ratio.${m}`];
      const row = el('div', 'fs-row');
      row.dataset.level = LEVEL_NAME[levelOf(ratio, THRESHOLDS.fs)];
      const name = el('span', 'fs-name', m);
      const bar = el('span', 'bar');
      const fill = el('i');
      fill.style.width = `${Math.max(0, Math.min(1, ratio)) * 100}%`;
      bar.append(fill);
      bar.setAttribute('role', 'meter');
      bar.setAttribute('aria-valuemin', '0');
      bar.setAttribute('aria-valuemax', '100');
      bar.setAttribute('aria-valuenow', String(Math.round(ratio * 100)));
      bar.setAttribute('aria-label', `${m} used`);
      const used = v[`fs_used_bytes.${m}`];
      const size = v[`fs_size_bytes.${m}`];
      const inodes = v[`fs_inodes_used_ratio.${m}`];
      let text = percent(ratio);
      if (isNum(used) && isNum(size)) text += ` · ${bytes(used)} of ${bytes(size)}`;
      if (isNum(inodes)) text += ` · inodes ${percent(inodes)}`;
      row.append(name, bar, el('span', 'fs-text', text));
      return row;
    });
    if (!rows.length) rows.push(el('p', 'empty', 'This node reports no filesystems.'));
    this.fsEl.replaceChildren(...rows);
  }

  /** Custom kinds: every numeric value listed with a small chart; counters as rates. */
  renderKinds(deadline, t0, t1) {
    const detail = this.detail;
    const kinds = [...detail.kinds.keys()].filter((k) => !BUILTIN.has(k)).sort(naturalCompare);
    const empty = this.root.querySelector('#nv-kinds-empty');
    empty.hidden = kinds.length > 0;
    const c = palette();
    for (const kind of kinds) {
      const k = detail.kinds.get(kind);
      let card = this.kindCards.get(kind);
      if (!card) {
        card = { root: el('section', 'card kind-card'), rows: new Map(), drawn: -1 };
        card.root.dataset.kind = kind;
        const h = el('h4', '', kind);
        card.list = el('div', 'kv');
        card.more = el('p', 'muted');
        card.root.append(h, card.list, card.more);
        this.kindsEl.append(card.root);
        this.kindCards.set(kind, card);
      }
      if (card.drawn === k.series.version || !k.latest) continue;
      const version = k.series.version;
      const names = Object.keys(k.latest).filter((n) => isNum(k.latest[n])).sort(naturalCompare);
      for (const name of names.slice(0, MAX_KIND_ROWS)) {
        let row = card.rows.get(name);
        if (row && row.drawn === version) continue;
        // Row by row within the budget: a kind with 60 values may take a few frames.
        if (performance.now() > deadline) return true;
        if (!row) {
          const counter = isCounter(name);
          row = { root: el('div', 'kv-row'), counter, drawn: -1 };
          const [base, inst] = splitName(name);
          const n = el('span', 'kv-name', inst ? `${label(base)} · ${inst}` : label(base));
          n.title = name;
          row.val = el('span', 'kv-val');
          row.canvas = el('canvas', 'mini');
          row.canvas.setAttribute('aria-hidden', 'true');
          row.root.append(n, row.val, row.canvas);
          row.unit = unitOf(name);
          row.get = counter ? counterRate(name) : pick(name);
          card.list.append(row.root);
          card.rows.set(name, row);
        }
        const rows = k.series.rows;
        const value = k.latest[name];
        let text = formatUnit(row.unit, value);
        if (row.counter) {
          const last = rows.length - 1;
          const rate = last > 0 && rows[last].v ? row.get(rows[last].v, last, rows) : NaN;
          const total = formatUnit(row.unit === 'count' ? '' : row.unit, value);
          text = `${total} · ${formatUnit(rateUnit(row.unit), rate)}`;
        }
        if (row.val.textContent !== text) row.val.textContent = text;
        drawSparks(row.canvas, rows, t0, t1, [{ get: row.get, color: c.series[4], max: 0 }],
          row.canvas.clientHeight || 24);
        row.canvas.dataset.points = String(rows.length);
        row.drawn = version;
      }
      card.more.textContent = names.length > MAX_KIND_ROWS
        ? `and ${names.length - MAX_KIND_ROWS} more values` : '';
      card.drawn = k.series.version;
    }
    return false;
  }
}
