// Canvas charts of our own, small and fast: sparklines for tiles, time-series line charts
// with axes and hover, a heatmap for per-core CPU. Each draws only when its owner asks,
// once per animation frame at most, and decimates to one min/max pair per pixel column.

import { formatUnit, timeOfDay, isNum } from './format.js';

let colors = null;

/** Theme colours from the CSS custom properties (re-read when the theme changes). */
export function palette() {
  if (colors) return colors;
  const css = getComputedStyle(document.documentElement);
  const get = (name) => css.getPropertyValue(name).trim();
  colors = {
    fg: get('--fg'),
    muted: get('--muted'),
    grid: get('--grid'),
    panel: get('--panel'),
    ok: get('--ok'),
    warn: get('--warn'),
    crit: get('--crit'),
    accent: get('--accent'),
    series: [1, 2, 3, 4, 5, 6, 7, 8].map((i) => get(`--s${i}`)),
    font: `11px ${get('--font-mono') || 'monospace'}`,
  };
  return colors;
}

export function resetPalette() { colors = null; }

/** Size the backing store to the element's box times devicePixelRatio; null if hidden. */
export function fitCanvas(canvas) {
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (!w || !h) return null;
  const dpr = window.devicePixelRatio || 1;
  const bw = Math.round(w * dpr);
  const bh = Math.round(h * dpr);
  if (canvas.width !== bw || canvas.height !== bh) {
    canvas.width = bw;
    canvas.height = bh;
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function withAlpha(color, alpha) {
  // Colours come from our CSS as #rrggbb; anything else is drawn opaque.
  if (/^#[0-9a-f]{6}$/i.test(color)) {
    const a = Math.round(alpha * 255).toString(16).padStart(2, '0');
    return color + a;
  }
  return color;
}

/**
 * Trace one series into `ctx` as a path: x from `ts`, y from `get(row.v)`, broken at
 * gaps (null rows, missing values, or more than `gapS` between points). Above two points
 * per pixel it keeps each column's first, min, max and last, so the shape survives.
 * With `baseY`, each unbroken run is closed down to that line: an area to fill.
 */
function trace(ctx, rows, start, end, get, xOf, yOf, gapS, baseY) {
  let open = false;
  let col = NaN;
  let cMin = 0; let cMax = 0; let cLast = 0;
  let prevTs = -Infinity;
  let drawn = 0;
  const close = () => {
    if (!open) return;
    ctx.lineTo(col, yOf(cMin));
    ctx.lineTo(col, yOf(cMax));
    ctx.lineTo(col, yOf(cLast));
    if (baseY !== undefined) { ctx.lineTo(col, baseY); ctx.closePath(); }
    open = false;
  };
  for (let i = start; i < end; i += 1) {
    const r = rows[i];
    const y = r.v === null ? undefined : get(r.v, i, rows);
    if (!isNum(y)) { close(); prevTs = -Infinity; continue; }
    if (r.ts - prevTs > gapS) close();
    prevTs = r.ts;
    const x = Math.round(xOf(r.ts));
    if (!open) {
      if (baseY !== undefined) { ctx.moveTo(x, baseY); ctx.lineTo(x, yOf(y)); }
      else ctx.moveTo(x, yOf(y));
      open = true;
    } else if (x === col) {
      if (y < cMin) cMin = y;
      if (y > cMax) cMax = y;
      cLast = y;
      continue;
    } else {
      ctx.lineTo(col, yOf(cMin));
      ctx.lineTo(col, yOf(cMax));
      ctx.lineTo(col, yOf(cLast));
    }
    col = x; cMin = y; cMax = y; cLast = y;
    drawn += 1;
  }
  close();
  return drawn;
}

/** The slice [start, end) of `rows` within [t0, t1] plus one point either side. */
function windowOf(rows, t0, t1) {
  let lo = 0;
  let hi = rows.length;
  while (lo < hi) { const m = (lo + hi) >>> 1; if (rows[m].ts < t0) lo = m + 1; else hi = m; }
  const start = Math.max(0, lo - 1);
  lo = start; hi = rows.length;
  while (lo < hi) { const m = (lo + hi) >>> 1; if (rows[m].ts <= t1) lo = m + 1; else hi = m; }
  return [start, Math.min(rows.length, lo + 1)];
}

/** Median spacing of the last rows, for gap detection (a break is 3x that). */
function typicalStep(rows, start, end) {
  const steps = [];
  for (let i = Math.max(start + 1, end - 30); i < end; i += 1) steps.push(rows[i].ts - rows[i - 1].ts);
  if (!steps.length) return 1;
  steps.sort((a, b) => a - b);
  return Math.max(steps[steps.length >> 1], 0.05);
}

/**
 * Stacked sparklines in one canvas, one lane per spec: `{key | get(v, i, rows), color, max}`
 * where `max` is a number (fixed scale, 1 for ratios) or 0 to scale to the lane's own peak.
 */
export function drawSparks(canvas, rows, t0, t1, specs, laneH) {
  const fit = fitCanvas(canvas);
  if (!fit) return;
  const { ctx, w } = fit;
  const [start, end] = windowOf(rows, t0, t1);
  const span = Math.max(t1 - t0, 1);
  const xOf = (ts) => ((ts - t0) / span) * (w - 2) + 1;
  const gapS = typicalStep(rows, start, end) * 3.5;
  ctx.lineWidth = 1.25;
  ctx.lineJoin = 'round';
  specs.forEach((spec, lane) => {
    const top = lane * laneH + 3;
    const h = laneH - 6;
    const get = spec.get || ((v) => v[spec.key]);
    let max = spec.max;
    if (!max) {
      max = 0;
      for (let i = start; i < end; i += 1) {
        const v = rows[i].v;
        const y = v ? get(v, i, rows) : NaN;
        if (y > max) max = y;
      }
      max = max > 0 ? max * 1.15 : 1;
    }
    const yOf = (y) => top + h - (Math.max(0, Math.min(y, max)) / max) * h;
    ctx.beginPath();
    trace(ctx, rows, start, end, get, xOf, yOf, gapS);
    ctx.strokeStyle = spec.color;
    ctx.stroke();
    if (spec.fill !== false) {
      // The area under the line: the level reads at a glance.
      ctx.beginPath();
      trace(ctx, rows, start, end, get, xOf, yOf, gapS, top + h);
      ctx.fillStyle = withAlpha(spec.color, 0.16);
      ctx.fill();
    }
    // A faint baseline keeps an empty lane from looking like a rendering error.
    ctx.fillStyle = withAlpha(spec.color, 0.1);
    ctx.fillRect(1, top + h, w - 2, 1);
  });
}

const NICE = [1, 2, 2.5, 5, 10];

function niceStep(raw, base) {
  if (!(raw > 0)) return 1;
  if (base === 1024 && raw >= 1024) {
    const p = Math.floor(Math.log(raw) / Math.log(1024));
    const unit = 1024 ** p;
    return unit * niceStep(raw / unit, 10);
  }
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return p * NICE.find((n) => n >= m - 1e-9);
}

/**
 * A time-series line chart. `series`: [{label, get(values) -> number, color, dash, fill}].
 * `unit` formats the y axis and the legend; `yMax` fixes the top (1 for ratios).
 */
export class LineChart {
  constructor(canvas, opts) {
    this.canvas = canvas;
    this.unit = opts.unit || '';
    this.series = opts.series;
    this.yMax = opts.yMax;
    this.yMin = opts.yMin ?? 0;
    this.stacked = !!opts.stacked;
    this.hoverX = null; // CSS px within the canvas, or null
    this.points = 0;
    this.last = null; // values at the newest point, for the legend
    this.layout = null;
  }

  draw(rows, t0, t1) {
    const fit = fitCanvas(this.canvas);
    if (!fit) return;
    const { ctx, w, h } = fit;
    const c = palette();
    const [start, end] = windowOf(rows, t0, t1);
    // y range from the data in view
    let max = -Infinity;
    let min = Infinity;
    let count = 0;
    for (let i = start; i < end; i += 1) {
      const v = rows[i].v;
      if (!v || rows[i].ts < t0) continue;
      count += 1;
      for (const s of this.series) {
        const y = s.get(v, i, rows);
        if (isNum(y)) { if (y > max) max = y; if (y < min) min = y; }
      }
    }
    this.points = count;
    this.canvas.dataset.points = String(count);
    let lo = Math.min(this.yMin, isNum(min) ? min : 0);
    let hi = this.yMax ?? (isNum(max) && max > lo ? max * 1.1 : lo + 1);
    if (this.yMax !== undefined && isNum(max) && max > this.yMax) hi = max * 1.05;
    const base = this.unit === 'bytes' || this.unit === 'bytes/s' ? 1024 : 10;
    const step = this.unit === 'ratio' && hi <= 1.0001 ? 0.25 : niceStep((hi - lo) / 4, base);
    hi = Math.ceil(hi / step - 1e-9) * step;
    lo = Math.floor(lo / step + 1e-9) * step;
    ctx.font = c.font;
    const ticks = [];
    for (let y = lo; y <= hi + step / 2; y += step) ticks.push(y);
    const labels = ticks.map((y) => formatUnit(this.unit, y));
    const padL = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 10;
    const padR = 8; const padT = 6; const padB = 18;
    const pw = Math.max(10, w - padL - padR);
    const ph = Math.max(10, h - padT - padB);
    const span = Math.max(t1 - t0, 1);
    const xOf = (ts) => padL + ((ts - t0) / span) * pw;
    const yOf = (y) => padT + ph - ((y - lo) / (hi - lo || 1)) * ph;
    this.layout = { padL, pw, t0, span };
    // grid and axes
    ctx.fillStyle = c.muted;
    ctx.strokeStyle = c.grid;
    ctx.lineWidth = 1;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    ctx.beginPath();
    ticks.forEach((y, i) => {
      const py = Math.round(yOf(y)) + 0.5;
      ctx.moveTo(padL, py); ctx.lineTo(padL + pw, py);
      ctx.fillText(labels[i], padL - 6, py);
    });
    ctx.stroke();
    ctx.textAlign = 'center';
    ctx.textBaseline = 'alphabetic';
    const tStep = niceTimeStep(span / Math.max(2, Math.floor(pw / 90)));
    for (let t = Math.ceil(t0 / tStep) * tStep; t <= t1; t += tStep) {
      const x = xOf(t);
      if (x < padL + 20 || x > padL + pw - 20) continue;
      ctx.fillText(timeOfDay(t), x, h - 4);
    }
    // series
    const gapS = typicalStep(rows, start, end) * 3.5;
    ctx.save();
    ctx.beginPath();
    ctx.rect(padL, padT - 1, pw, ph + 2);
    ctx.clip();
    ctx.lineJoin = 'round';
    this.series.forEach((s) => {
      ctx.beginPath();
      const drawn = trace(ctx, rows, start, end, s.get, xOf, yOf, gapS);
      if (!drawn) return;
      ctx.setLineDash(s.dash ? [4, 3] : []);
      ctx.lineWidth = s.width || 1.5;
      ctx.strokeStyle = s.color;
      ctx.stroke();
      if (s.fill) {
        ctx.beginPath();
        trace(ctx, rows, start, end, s.get, xOf, yOf, gapS, yOf(lo));
        ctx.fillStyle = withAlpha(s.color, 0.12);
        ctx.fill();
      }
    });
    ctx.restore();
    this.last = end > 0 ? rows[end - 1] : null;
    if (this.hoverX !== null) this.drawHover(ctx, rows, start, end, xOf, yOf, padT, ph, c);
  }

  /** The row nearest to the pointer, or null. */
  rowAt(rows, x) {
    if (!this.layout || !rows.length) return null;
    const { padL, pw, t0, span } = this.layout;
    const ts = t0 + ((x - padL) / pw) * span;
    let lo = 0; let hi = rows.length;
    while (lo < hi) { const m = (lo + hi) >>> 1; if (rows[m].ts < ts) lo = m + 1; else hi = m; }
    const cands = [rows[lo - 1], rows[lo]].filter((r) => r && r.v);
    if (!cands.length) return null;
    return cands.reduce((a, b) => (Math.abs(a.ts - ts) <= Math.abs(b.ts - ts) ? a : b));
  }

  drawHover(ctx, rows, start, end, xOf, yOf, padT, ph, c) {
    const row = this.rowAt(rows, this.hoverX);
    if (!row) return;
    const x = Math.round(xOf(row.ts)) + 0.5;
    ctx.strokeStyle = c.muted;
    ctx.setLineDash([2, 2]);
    ctx.beginPath(); ctx.moveTo(x, padT); ctx.lineTo(x, padT + ph); ctx.stroke();
    ctx.setLineDash([]);
    const i = rows.indexOf(row);
    for (const s of this.series) {
      const y = s.get(row.v, i, rows);
      if (!isNum(y)) continue;
      ctx.fillStyle = s.color;
      ctx.beginPath(); ctx.arc(x, yOf(y), 3, 0, Math.PI * 2); ctx.fill();
    }
    this.hoverRow = row;
    this.hoverIndex = i;
  }
}

function niceTimeStep(raw) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];
  return steps.find((s) => s >= raw) || 86400;
}

/**
 * Per-core utilisation as a heatmap: one row per core, one column per time bucket, colour
 * from the panel background (idle) through the accent to the critical red (busy).
 */
export class Heatmap {
  constructor(canvas) {
    this.canvas = canvas;
    this.points = 0;
  }

  draw(rows, t0, t1, keys) {
    const fit = fitCanvas(this.canvas);
    if (!fit) return;
    const { ctx, w, h } = fit;
    const c = palette();
    const padL = 44; const padB = 4;
    const [start, end] = windowOf(rows, t0, t1);
    const span = Math.max(t1 - t0, 1);
    const n = keys.length || 1;
    const rowH = (h - padB) / n;
    const pw = w - padL - 4;
    ctx.font = c.font;
    ctx.fillStyle = c.muted;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    const every = Math.ceil(12 / rowH);
    keys.forEach((k, j) => {
      if (j % every === 0) ctx.fillText(k, padL - 6, j * rowH + rowH / 2);
    });
    // One cell per pixel column at most (the busiest sample in it), so a 64-core node over
    // an hour costs no more than a 4-core one over five minutes.
    const step = typicalStep(rows, start, end);
    const cols = Math.max(1, Math.min(Math.floor(pw), Math.ceil(span / step)));
    const grid = new Float32Array(cols * n).fill(NaN);
    let count = 0;
    for (let i = start; i < end; i += 1) {
      const r = rows[i];
      if (!r.v || r.ts < t0) continue;
      count += 1;
      const col = Math.min(cols - 1, Math.floor(((r.ts - t0) / span) * cols));
      for (let j = 0; j < n; j += 1) {
        const v = r.v[`cpu_utilization_ratio.${keys[j]}`];
        const at = col * n + j;
        if (isNum(v) && !(grid[at] >= v)) grid[at] = v;
      }
    }
    const cellW = pw / cols;
    for (let col = 0; col < cols; col += 1) {
      for (let j = 0; j < n; j += 1) {
        const v = grid[col * n + j];
        if (Number.isNaN(v)) continue;
        ctx.fillStyle = heat(v, c);
        ctx.fillRect(padL + col * cellW, j * rowH, Math.ceil(cellW), Math.max(1, rowH - 1));
      }
    }
    this.points = count;
    this.canvas.dataset.points = String(count);
  }
}

function heat(v, c) {
  // The accent grows stronger with load; only the overview's warning and critical levels
  // get their own colours, so the map reads the same as the tiles.
  if (v < 0.8) return withAlpha(c.accent, 0.1 + (v / 0.8) * 0.9);
  if (v < 0.95) return c.warn;
  return c.crit;
}
