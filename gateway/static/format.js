// Units and number formatting: every number the dashboard shows goes through here, so
// each carries its unit (bytes as KiB/MiB/GiB, rates per second, ratios as percent).

const IEC = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
const SI = ['', 'k', 'M', 'G', 'T', 'P'];

/** Three significant digits at most, no trailing zeros: 1.23, 12.3, 123. */
function sig3(v) {
  const a = Math.abs(v);
  if (a >= 100 || a === 0) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1).replace(/\.0$/, '');
  return v.toFixed(2).replace(/\.?0+$/, '');
}

export function isNum(v) {
  return typeof v === 'number' && Number.isFinite(v);
}

export function bytes(v) {
  if (!isNum(v)) return '–';
  let i = 0;
  let a = Math.abs(v);
  while (a >= 1024 && i < IEC.length - 1) { a /= 1024; i += 1; }
  return `${sig3(Math.sign(v) * a)} ${IEC[i]}`;
}

export function bytesRate(v) {
  return isNum(v) ? `${bytes(v)}/s` : '–';
}

export function si(v, unit = '') {
  if (!isNum(v)) return '–';
  let i = 0;
  let a = Math.abs(v);
  while (a >= 1000 && i < SI.length - 1) { a /= 1000; i += 1; }
  const prefix = SI[i];
  const text = i === 0 && Number.isInteger(v) ? String(v) : sig3(Math.sign(v) * a);
  if (!prefix && !unit) return text;
  return `${text} ${prefix}${unit}`;
}

export function perSecond(v) {
  return isNum(v) ? `${si(v)}/s` : '–';
}

export function percent(ratio) {
  if (!isNum(ratio)) return '–';
  const p = ratio * 100;
  const a = Math.abs(p);
  return `${a > 0 && a < 10 ? p.toFixed(1) : p.toFixed(0)}%`;
}

export function duration(s) {
  if (!isNum(s)) return '–';
  const a = Math.abs(s);
  if (a === 0) return '0 s';
  if (a < 1e-3) return `${sig3(s * 1e6)} µs`;
  if (a < 1) return `${sig3(s * 1e3)} ms`;
  if (a < 120) return `${sig3(s)} s`;
  if (a < 7200) return `${sig3(s / 60)} min`;
  if (a < 172800) return `${sig3(s / 3600)} h`;
  return `${sig3(s / 86400)} d`;
}

export function celsius(v) {
  return isNum(v) ? `${v.toFixed(Math.abs(v) < 10 ? 1 : 0)} °C` : '–';
}

/** How long ago an epoch-seconds time was, relative to `now` (epoch seconds). */
export function ago(ts, now) {
  if (!isNum(ts) || ts <= 0) return '–';
  const d = Math.max(0, now - ts);
  if (d < 1.5) return 'just now';
  return `${duration(Math.round(d))} ago`;
}

export function timeOfDay(ts) {
  const d = new Date(ts * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** `net_rx_bytes_total.eth0` -> ['net_rx_bytes_total', 'eth0']; no instance -> [name, '']. */
export function splitName(name) {
  const dot = name.indexOf('.');
  return dot < 0 ? [name, ''] : [name.slice(0, dot), name.slice(dot + 1)];
}

/**
 * The unit a metric's name implies (docs/metrics.md naming rules): one of
 * 'ratio', 'bytes', 'bytes/s', '1/s', 'seconds', 'timestamp', 'celsius', 'count', 'up', ''.
 */
export function unitOf(name) {
  const base = splitName(name)[0];
  if (base.endsWith('_up')) return 'up'; // 1 while a thing is reachable (redis_up)
  if (base.endsWith('_bytes_per_second')) return 'bytes/s';
  if (base.endsWith('_per_second')) return '1/s';
  if (base.endsWith('_ratio') || base.includes('_ratio_')) return 'ratio';
  if (base.endsWith('_timestamp_seconds') || base.endsWith('_time_seconds')) return 'timestamp';
  if (base.endsWith('_celsius')) return 'celsius';
  if (/(^|_)seconds(_|$)/.test(base)) return 'seconds';
  if (/(^|_)bytes(_|$)/.test(base)) return 'bytes';
  if (base.endsWith('_total')) return 'count';
  return '';
}

export function isCounter(name) {
  return splitName(name)[0].endsWith('_total');
}

/** The unit of a counter's rate: bytes_total -> bytes/s, seconds_total -> ratio, else 1/s. */
export function rateUnit(unit) {
  if (unit === 'bytes') return 'bytes/s';
  if (unit === 'seconds') return 'ratio';
  return '1/s';
}

export function formatUnit(unit, v, now = Date.now() / 1000) {
  switch (unit) {
    case 'ratio': return percent(v);
    case 'bytes': return bytes(v);
    case 'bytes/s': return bytesRate(v);
    case '1/s': return perSecond(v);
    case 'seconds': return duration(v);
    case 'timestamp': return ago(v, now);
    case 'celsius': return celsius(v);
    case 'up': return isNum(v) ? (v ? 'up' : 'down') : '–';
    default: return si(v);
  }
}

export function formatValue(name, v, now) {
  return formatUnit(unitOf(name), v, now);
}

/** Readable label of a metric base name: `net_rx_bytes_per_second` -> `net rx bytes/s`. */
export function label(base) {
  return base
    .replace(/_bytes_per_second$/, ' bytes/s')
    .replace(/_per_second$/, '/s')
    .replace(/_/g, ' ');
}

/** Natural order for names with numbers: cpu2 < cpu10, web-9 < web-10. */
export const naturalCompare = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' }).compare;
