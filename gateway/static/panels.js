// Side panels: alerts (from `alert` messages), the hub's own health (kind `gateway`, shown
// generically, grouped by name prefix) and this browser's connection figures.

import { ago, formatUnit, formatValue, isCounter, isNum, naturalCompare, percent, si,
  timeOfDay, unitOf, rateUnit, duration, bytesRate } from './format.js';
import { groupMetrics } from './store.js';

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export class AlertsPanel {
  constructor(root, book, { onOpenNode }) {
    this.root = root;
    this.book = book;
    this.onOpenNode = onOpenNode;
    this.list = root.querySelector('#alerts-list');
    this.countEl = root.querySelector('#alerts-count');
    this.drawn = -1;
    this.drawnAt = 0;
    this.firing = 0;
  }

  render(nowS) {
    // Relative times ("3 min ago") need a refresh now and then even without new alerts.
    if (this.drawn === this.book.version && nowS - this.drawnAt < 10) return;
    this.drawn = this.book.version;
    this.drawnAt = nowS;
    const { firing, resolved } = this.book.lists(nowS);
    this.firing = firing.length;
    this.countEl.textContent = firing.length ? `${firing.length} firing` : '';
    this.countEl.dataset.level = firing.some((a) => a.severity === 'critical') ? 'critical'
      : firing.length ? 'warning' : 'ok';
    const items = [];
    if (!firing.length && !resolved.length) {
      const p = el('p', 'empty');
      p.id = 'alerts-empty';
      p.textContent = this.book.received
        ? 'Nothing firing, and nothing resolved in the last hour.'
        : 'No alerts received. When an alert rule fires or resolves, the gateway sends it '
          + 'here; none has on this connection.';
      items.push(p);
    }
    const row = (a) => {
      const li = el('li', 'alert');
      li.dataset.state = a.state;
      li.dataset.severity = a.severity || 'warning';
      const head = el('div', 'alert-head');
      const rule = el('b', '', a.rule);
      const node = el('button', 'link', a.node);
      node.type = 'button';
      node.addEventListener('click', () => this.onOpenNode(a.node));
      const when = a.state === 'firing' ? `since ${timeOfDay(a.since)} · ${ago(a.since, nowS)}`
        : `resolved ${ago(a.ts, nowS)}`;
      head.append(el('span', 'sev', a.severity || ''), rule, node);
      li.append(head);
      const msg = a.message ? `${a.message} · ` : '';
      li.append(el('div', 'alert-meta', `${msg}value ${si(a.value)} · ${when}`));
      return li;
    };
    if (firing.length) {
      const ul = el('ul', 'alerts firing');
      ul.append(...firing.map(row));
      items.push(ul);
    }
    if (resolved.length) {
      items.push(el('h4', 'sub', 'Recently resolved'));
      const ul = el('ul', 'alerts resolved');
      ul.append(...resolved.map(row));
      items.push(ul);
    }
    this.list.replaceChildren(...items);
  }
}

/** `latency_seconds` -> `latency`: the unit is in the value; counters show as rates. */
function itemLabel(item, counter) {
  let words = item.split('_').filter((w) => !['seconds', 'bytes', 'ratio', 'celsius'].includes(w));
  if (counter) words = words.filter((w) => w !== 'total');
  return words.join(' ');
}

/**
 * A cache's hit ratio from a `*hits_total` / `*misses_total` pair in one group, over the
 * last interval (or since start, on the first sample); null without such a pair.
 */
function hitRatio(gw, items) {
  const hits = items.find((i) => /(^|_)hits_total$/.test(i.item || i.name));
  const misses = items.find((i) => /(^|_)misses_total$/.test(i.item || i.name));
  if (!hits || !misses) return null;
  const v = gw.values;
  const p = gw.prevValues;
  let h = v[hits.name];
  let m = v[misses.name];
  if (p && isNum(p[hits.name]) && isNum(p[misses.name])) {
    const dh = h - p[hits.name];
    const dm = m - p[misses.name];
    if (dh >= 0 && dm >= 0 && dh + dm > 0) { h = dh; m = dm; }
  }
  return h + m > 0 ? h / (h + m) : null;
}

/** The hub's own metrics: one card per gateway, values grouped by prefix, counters as rates. */
export class HubPanel {
  constructor(root, book) {
    this.root = root;
    this.book = book;
    this.list = root.querySelector('#hub-list');
    this.drawn = -1;
  }

  render(nowS) {
    if (this.drawn === this.book.version) return;
    this.drawn = this.book.version;
    const gws = [...this.book.gateways.values()].sort((a, b) => naturalCompare(a.node, b.node));
    if (!gws.length) {
      const p = el('p', 'empty', 'No gateway metrics yet. Each gateway publishes its own '
        + 'figures as kind “gateway”; none has arrived on this connection.');
      this.list.replaceChildren(p);
      return;
    }
    this.list.replaceChildren(...gws.map((gw) => this.card(gw, nowS)));
  }

  card(gw, nowS) {
    const card = el('section', 'gw');
    card.dataset.gateway = gw.node;
    const head = el('div', 'gw-head');
    head.append(el('b', '', gw.node), el('span', 'muted', `sample ${ago(gw.ts, nowS)}`));
    card.append(head);
    const names = Object.keys(gw.values).filter((n) => isNum(gw.values[n])).sort(naturalCompare);
    const groups = groupMetrics(names);
    const dl = el('dl', 'gw-groups');
    for (const [group, items] of groups) {
      dl.append(el('dt', '', itemLabel(group, true) || group));
      const dd = el('dd');
      const ratio = hitRatio(gw, items);
      if (ratio !== null) {
        const span = el('span', 'gw-item');
        span.title = 'hits over hits + misses since the previous sample';
        span.append(el('span', 'muted', 'hit ratio '), el('b', '', percent(ratio)));
        dd.append(span);
      }
      for (const { name, item } of items) {
        const span = el('span', 'gw-item');
        span.title = name;
        const value = gw.values[name];
        let text = formatValue(name, value, nowS);
        if (isCounter(name) && gw.prevValues && isNum(gw.prevValues[name]) && gw.ts > gw.prevTs) {
          const rate = (value - gw.prevValues[name]) / (gw.ts - gw.prevTs);
          if (rate >= 0) text = `${formatUnit(rateUnit(unitOf(name)), rate)}`;
        }
        const words = itemLabel(item, isCounter(name));
        if (words && words !== 'up') span.append(el('span', 'muted', `${words} `));
        span.append(el('b', '', text));
        dd.append(span);
      }
      dl.append(dd);
    }
    card.append(dl);
    return card;
  }
}

/** This browser's side of the connection: what arrives, what was lost, how resumes went. */
export class ClientPanel {
  constructor(root, client) {
    this.root = root;
    this.client = client;
    this.list = root.querySelector('#client-stats');
    this.prev = null;
  }

  render() {
    const c = this.client;
    const now = performance.now();
    const s = c.stats;
    let updRate = NaN;
    let byteRate = NaN;
    if (this.prev && now > this.prev.at) {
      const dt = (now - this.prev.at) / 1000;
      updRate = (s.updates - this.prev.updates) / dt;
      byteRate = (s.bytes - this.prev.bytes) / dt;
    }
    this.prev = { at: now, updates: s.updates, bytes: s.bytes };
    const throttle = c.effectiveThrottleMs === null ? '–'
      : c.effectiveThrottleMs === 0 ? 'every sample' : `${duration(c.effectiveThrottleMs / 1000)} per topic`;
    const rows = [
      ['updates', `${si(Math.round(updRate * 10) / 10)}/s`],
      ['received', bytesRate(byteRate)],
      ['throttle', throttle],
      ['round trip', c.rttMs === null ? '–' : `${c.rttMs.toFixed(1)} ms`],
      ['connects', si(s.connects)],
      ['resumes', si(s.resumes)],
      ['resets', si(s.resets)],
      ['lost samples', s.lost ? si(s.lost) : '0'],
    ];
    const dl = el('dl', 'stats');
    for (const [k, v] of rows) dl.append(el('dt', '', k), el('dd', '', v));
    this.list.replaceChildren(dl);
  }
}

