// The overview: one tile per node, sorted and filtered. Tiles are built once and then only
// their text and one sparkline canvas change; offscreen tiles are not drawn until they
// scroll into view, and each frame draws as many dirty tiles as its time budget allows.

import { bytes, bytesRate, percent, si, naturalCompare } from './format.js';
import { drawSparks, palette } from './charts.js';
import { LEVEL, LEVEL_NAME, THRESHOLDS, levelOf } from './store.js';

const LANE_H = 20; // one sparkline lane per row of text, same height as the row
const RESORT_MS = 3000;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

class Tile {
  constructor(node, onOpen) {
    this.node = node;
    this.drawn = -1; // node.version last drawn
    this.visible = false;
    this.text = new Map(); // span -> last text, so unchanged text is never written
    const root = el('article', 'tile');
    root.dataset.node = node.name;
    root.tabIndex = 0;
    root.setAttribute('role', 'button');
    root.setAttribute('aria-label', `Node ${node.name}: open details`);
    const head = el('header', 'tile-head');
    this.nameEl = el('span', 'tile-name', node.name);
    this.badge = el('span', 'badge');
    this.badgeLevel = el('span');
    this.badgeAge = el('span', 'age');
    this.badge.append(this.badgeLevel, this.badgeAge);
    head.append(this.nameEl, this.badge);
    const body = el('div', 'tile-body');
    const row = (key, title) => {
      const k = el('span', 'k', key);
      k.title = title;
      const v = el('span', 'v');
      body.append(k, v);
      return v;
    };
    this.cpu = row('CPU', 'CPU utilisation, all cores');
    this.mem = row('Mem', 'memory used of total');
    this.net = row('Net', 'network receive ↓ and transmit ↑, all interfaces but lo');
    this.disk = row('Disk', 'disk read and write, all devices');
    this.canvas = el('canvas', 'spark');
    this.canvas.setAttribute('aria-hidden', 'true');
    body.append(this.canvas);
    this.foot = el('footer', 'tile-foot');
    root.append(head, body, this.foot);
    root.addEventListener('click', () => onOpen(node.name));
    root.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); onOpen(node.name); }
    });
    this.root = root;
    this.level = -1;
  }

  set(span, text, cls) {
    if (this.text.get(span) !== text) {
      span.textContent = text;
      this.text.set(span, text);
    }
    if (cls !== undefined && span.dataset.lv !== cls) span.dataset.lv = cls;
  }

  render(nowS, sparkWindowS) {
    const n = this.node;
    const d = n.d;
    if (this.level !== n.level) {
      this.root.dataset.level = LEVEL_NAME[n.level];
      this.level = n.level;
    }
    this.set(this.badgeLevel, LEVEL_NAME[n.level]);
    this.set(this.badgeAge, n.stale ? ` · ${ageText(nowS - n.ts)}` : '');
    if (n.stale) this.root.title = `no sample for ${ageText(nowS - n.ts)}`;
    else if (this.root.title) this.root.title = '';
    this.set(this.cpu, percent(d.cpu), LEVEL_NAME[levelOf(d.cpu, THRESHOLDS.cpu)]);
    const memText = d.memTotal ? `${percent(d.mem)} · ${bytesPair(d.memUsed, d.memTotal)}`
      : percent(d.mem);
    this.set(this.mem, memText, LEVEL_NAME[levelOf(d.mem, THRESHOLDS.mem)]);
    this.set(this.net, `↓${bytesRate(d.rx)}  ↑${bytesRate(d.tx)}`);
    this.set(this.disk, `R ${bytesRate(d.rd)}  W ${bytesRate(d.wr)}`);
    const fs = Number.isFinite(d.fsMax) ? `fs ${percent(d.fsMax)} ${d.fsMount}` : 'fs –';
    const load = Number.isFinite(d.load1) ? `load ${si(d.load1)}` : 'load –';
    const cpus = d.cpus ? ` · ${d.cpus} CPU` : '';
    this.set(this.foot, `${load} · ${fs}${cpus}`, LEVEL_NAME[levelOf(d.fsMax, THRESHOLDS.fs)]);
    const c = palette();
    const rows = n.spark.rows;
    const t1 = rows.length ? rows[rows.length - 1].ts : nowS;
    // Until the window is full the lines start at the left edge: a new tile shows its
    // trend at once instead of a dot at the right. Sparklines have no time axis to mislead.
    const first = rows.length ? rows[0].ts : t1;
    const t0 = Math.max(t1 - sparkWindowS, Math.min(first, t1 - 10));
    drawSparks(this.canvas, rows, t0, t1, [
      { key: 'cpu', color: c.series[0], max: 1 },
      { key: 'mem', color: c.series[1], max: 1 },
      { key: 'net', color: c.series[2], max: 0 },
      { key: 'disk', color: c.series[3], max: 0 },
    ], LANE_H);
    this.drawn = n.version;
  }
}

/** `8.1/16 GiB` when both share a unit, else `900 MiB/16 GiB`. */
function bytesPair(used, total) {
  const u = bytes(used);
  const t = bytes(total);
  const [un, uu] = u.split(' ');
  const [tn, tu] = t.split(' ');
  return uu === tu ? `${un}/${tn} ${tu}` : `${u}/${t}`;
}

function ageText(s) {
  if (!(s >= 0) || s > 1e9) return 'no data';
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

const SORTS = {
  // Worst first, in 5% steps so that small wobbles do not reshuffle the grid every time.
  worst: (a, b) => b.level - a.level || Math.floor(b.worst * 20) - Math.floor(a.worst * 20)
    || naturalCompare(a.name, b.name),
  name: (a, b) => naturalCompare(a.name, b.name),
  cpu: (a, b) => (b.d.cpu || 0) - (a.d.cpu || 0) || naturalCompare(a.name, b.name),
  mem: (a, b) => (b.d.mem || 0) - (a.d.mem || 0) || naturalCompare(a.name, b.name),
  net: (a, b) => ((b.d.rx || 0) + (b.d.tx || 0)) - ((a.d.rx || 0) + (a.d.tx || 0))
    || naturalCompare(a.name, b.name),
  disk: (a, b) => ((b.d.rd || 0) + (b.d.wr || 0)) - ((a.d.rd || 0) + (a.d.wr || 0))
    || naturalCompare(a.name, b.name),
};

/** `web-*` style globs, or a case-insensitive substring. */
function matcher(text) {
  const q = text.trim().toLowerCase();
  if (!q) return () => true;
  if (q.includes('*') || q.includes('?')) {
    const escaped = q.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    const re = new RegExp(`^${escaped.replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
    return (name) => re.test(name.toLowerCase());
  }
  return (name) => name.toLowerCase().includes(q);
}

export class Overview {
  constructor(root, fleet, { onOpen }) {
    this.root = root;
    this.fleet = fleet;
    this.onOpen = onOpen;
    this.grid = root.querySelector('#tiles');
    this.empty = root.querySelector('#tiles-empty');
    this.countEl = root.querySelector('#tiles-count');
    this.filterEl = root.querySelector('#filter');
    this.sortEl = root.querySelector('#sort');
    this.tiles = new Map();
    this.order = [];
    this.sortedAt = 0;
    this.fleetVersion = -1;
    this.layoutDirty = true;
    this.hovering = false;
    this.active = true;
    this.match = matcher('');
    this.sparkWindowS = 120;
    this.filterEl.value = localStorage.getItem('mh.filter') || '';
    this.sortEl.value = localStorage.getItem('mh.sort') || 'worst';
    this.match = matcher(this.filterEl.value);
    this.filterEl.addEventListener('input', () => {
      this.match = matcher(this.filterEl.value);
      localStorage.setItem('mh.filter', this.filterEl.value);
      this.layoutDirty = true;
      this.invalidate();
    });
    this.sortEl.addEventListener('change', () => {
      localStorage.setItem('mh.sort', this.sortEl.value);
      this.layoutDirty = true;
      this.invalidate();
    });
    // Tiles do not jump away from under the pointer: re-sorting waits while it is there.
    this.grid.addEventListener('pointerenter', () => { this.hovering = true; });
    this.grid.addEventListener('pointerleave', () => { this.hovering = false; this.invalidate(); });
    this.io = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const tile = this.tiles.get(e.target.dataset.node);
        if (tile) tile.visible = e.isIntersecting;
      }
      this.invalidate();
    }, { rootMargin: '200px 0px' });
    this.invalidate = () => {};
  }

  setActive(active) {
    this.active = active;
    this.root.hidden = !active;
    if (active) { this.layoutDirty = true; this.invalidate(); }
  }

  /** Re-check visibility and redraw everything (a theme change). */
  redrawAll() {
    for (const t of this.tiles.values()) t.drawn = -1;
  }

  ensureTiles() {
    if (this.fleetVersion === this.fleet.version) return;
    this.fleetVersion = this.fleet.version;
    for (const node of this.fleet.nodes.values()) {
      if (this.tiles.has(node.name)) continue;
      const tile = new Tile(node, this.onOpen);
      this.tiles.set(node.name, tile);
      this.grid.append(tile.root);
      this.io.observe(tile.root);
      this.layoutDirty = true;
    }
  }

  /** Filter and sort; move DOM nodes only when the order really changed. */
  relayout(now) {
    const sortKey = this.sortEl.value in SORTS ? this.sortEl.value : 'worst';
    const nodes = [...this.fleet.nodes.values()];
    nodes.sort(SORTS[sortKey]);
    let shown = 0;
    const order = [];
    for (const n of nodes) {
      const tile = this.tiles.get(n.name);
      const show = this.match(n.name);
      if (tile.root.hidden === show) tile.root.hidden = !show;
      if (show) shown += 1;
      order.push(n.name);
    }
    const same = order.length === this.order.length && order.every((x, i) => x === this.order[i]);
    if (!same) {
      // Move only the tiles that are out of place: re-inserting all 200 would restyle and
      // re-lay out every one, which costs a dropped frame at each re-sort.
      let at = this.grid.firstElementChild;
      for (const name of order) {
        const root = this.tiles.get(name).root;
        if (root === at) at = at.nextElementSibling;
        else this.grid.insertBefore(root, at);
      }
      this.order = order;
    }
    this.countEl.textContent = shown === nodes.length ? `${nodes.length} nodes`
      : `${shown} of ${nodes.length} nodes`;
    this.empty.hidden = nodes.length > 0;
    this.sortedAt = now;
    this.layoutDirty = false;
  }

  /** Draw what changed, within `deadline` (performance.now() ms); true if work is left. */
  render(deadline, nowS) {
    if (!this.active) return false;
    const now = performance.now();
    this.ensureTiles();
    const sortKey = this.sortEl.value;
    const resortDue = sortKey !== 'name' && now - this.sortedAt > RESORT_MS && !this.hovering;
    if (this.layoutDirty || resortDue) this.relayout(now);
    let left = false;
    for (const tile of this.tiles.values()) {
      if (!tile.visible || tile.root.hidden || tile.drawn === tile.node.version) continue;
      if (performance.now() > deadline) { left = true; break; }
      tile.render(nowS, this.sparkWindowS);
    }
    return left;
  }
}

export { LEVEL };
