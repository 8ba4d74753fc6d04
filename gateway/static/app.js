// The dashboard's entry point: wires the protocol client to the data stores and the views,
// and runs the render loop. Messages only change data and ask for a frame; each animation
// frame draws what changed within a time budget, so a burst of updates never blocks input.

import { HubClient, STATE, defaultUrl } from './client.js';
import { AlertBook, Fleet, GatewayBook } from './store.js';
import { Overview } from './overview.js';
import { NodeView } from './nodeview.js';
import { AlertsPanel, ClientPanel, HubPanel } from './panels.js';
import { resetPalette } from './charts.js';
import { duration } from './format.js';

const FRAME_BUDGET_MS = 8; // half a 60 Hz frame for us, half for style, layout and paint
const BASE_PATTERNS = ['*/system', '*/gateway', '*/alert'];

const params = new URLSearchParams(location.search);
const throttleEl = document.getElementById('throttle');
const storedThrottle = params.get('throttle') ?? localStorage.getItem('mh.throttle') ?? '1000';
throttleEl.value = [...throttleEl.options].some((o) => o.value === storedThrottle) ? storedThrottle : '1000';

const fleet = new Fleet();
const alerts = new AlertBook();
const gateways = new GatewayBook();
// Figures for the benchmark and the debug hook: frames drawn and the time our code took.
const perf = { frames: 0, messages: 0, workTotalMs: 0, workMaxMs: 0 };

let framePending = false;
function invalidate() {
  if (!framePending) {
    framePending = true;
    requestAnimationFrame(frame);
  }
}

const client = new HubClient({
  url: defaultUrl(),
  throttleMs: Number(throttleEl.value),
  onMessage,
  onState: () => { connDirty = true; invalidate(); },
});

const overview = new Overview(document.getElementById('overview'), fleet, { onOpen: openNode });
overview.invalidate = invalidate;
const nodeView = new NodeView(document.getElementById('node-view'), client, fleet, {
  onClose: () => { location.hash = '#/'; },
  invalidate,
});
const alertsPanel = new AlertsPanel(document.getElementById('alerts'), alerts, { onOpenNode: openNode });
const hubPanel = new HubPanel(document.getElementById('hub'), gateways);
const clientPanel = new ClientPanel(document.getElementById('hub'), client);

function openNode(name) {
  location.hash = `#/node/${encodeURIComponent(name)}`;
}

function onMessage(msg) {
  perf.messages += 1;
  const now = performance.now();
  switch (msg.type) {
    case 'update':
    case 'snapshot':
      if (typeof msg.node !== 'string' || typeof msg.kind !== 'string' || !msg.values) return;
      fleet.noteKind(msg.node, msg.kind);
      if (msg.kind === 'system') fleet.applySystem(msg, now);
      else if (msg.kind === 'gateway') gateways.apply(msg);
      if (msg.node === nodeView.name) nodeView.onSample(msg);
      break;
    case 'alert':
      alerts.apply(msg, client.serverNow());
      break;
    case 'reset':
      // The gateway could not replay everything since our cursor; the snapshots that
      // follow replace what we hold, and the charts show the hole instead of bridging it.
      fleet.breakAll();
      nodeView.onReset();
      notice('The gateway could not replay everything since the connection dropped '
        + `(${msg.reason || 'reset'}); `
        + 'charts show a gap where samples are missing.');
      break;
    default:
      return;
  }
  invalidate();
}

let noticeTimer = 0;
function notice(text) {
  const el = document.getElementById('notice');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.hidden = true; }, 20000);
}

// -- connection indicator and summary --------------------------------------------------
let connDirty = true;
let wasLive = false;
function renderConn() {
  const box = document.getElementById('conn');
  const text = document.getElementById('conn-text');
  const retry = document.getElementById('conn-retry');
  box.dataset.state = client.state;
  let t;
  if (client.state === STATE.LIVE) {
    t = `Live · ${client.gateway || 'gateway'}`;
    if (!wasLive) { wasLive = true; nodeView.onLive(); }
  } else {
    wasLive = false;
    if (client.state === STATE.WAITING) {
      const secs = Math.max(0, Math.ceil((client.retryAt - performance.now()) / 1000));
      const why = closeReason(client.lastClose);
      t = `Disconnected${why ? ` (${why})` : ''} · retry in ${secs} s`;
    } else {
      t = client.stats.connects ? 'Reconnecting…' : 'Connecting…';
    }
  }
  text.textContent = t;
  const tip = [`gateway: ${client.gateway || '–'}`, `attempt: ${client.attempt}`,
    `round trip: ${client.rttMs === null ? '–' : `${client.rttMs.toFixed(1)} ms`}`];
  if (client.lastError) tip.push(`last error: ${client.lastError.code}: ${client.lastError.message}`);
  box.title = tip.join('\n');
  retry.hidden = client.state !== STATE.WAITING;
  connDirty = client.state === STATE.WAITING; // the countdown ticks
}

function closeReason(close) {
  if (!close) return '';
  switch (close.code) {
    case 1001: return 'gateway restarting';
    case 1006: return close.reason || 'connection lost';
    case 1009: return 'message too large';
    case 1013: return close.reason || 'gateway busy';
    case 4001: return 'unauthorized: add ?token= to the URL';
    case 4003: return 'forbidden';
    case 4008: return 'rate limited';
    default: return close.reason || (close.code ? `code ${close.code}` : '');
  }
}

let summaryKey = '';
function renderSummary() {
  const c = fleet.counts();
  const parts = [[`${c.total}`, c.total === 1 ? 'node' : 'nodes', '']];
  if (c.critical) parts.push([`${c.critical}`, 'critical', 'critical']);
  if (c.warning) parts.push([`${c.warning}`, 'warning', 'warning']);
  if (c.stale) parts.push([`${c.stale}`, 'stale', 'stale']);
  if (alertsPanel.firing) parts.push([`${alertsPanel.firing}`, 'firing', 'critical']);
  const key = JSON.stringify(parts);
  if (key === summaryKey) return;
  summaryKey = key;
  const box = document.getElementById('summary');
  box.replaceChildren(...parts.map(([n, what, lv]) => {
    const chip = document.createElement('span');
    chip.className = 'chip';
    if (lv) chip.dataset.level = lv;
    const b = document.createElement('b');
    b.textContent = n;
    chip.append(b, ` ${what}`);
    return chip;
  }));
}

// -- the frame loop ----------------------------------------------------------------------
let panelsAt = 0;
let panelsTimer = 0;
const PANELS_EVERY_MS = 500; // side panels are text; twice a second is live enough

function frame() {
  framePending = false;
  const start = performance.now();
  const deadline = start + FRAME_BUDGET_MS;
  const nowS = client.serverNow();
  if (connDirty) renderConn();
  let more = overview.render(deadline, nowS);
  more = nodeView.render(deadline, nowS) || more;
  const panelsDue = alertsPanel.drawn !== alerts.version || hubPanel.drawn !== gateways.version;
  if (panelsDue || start - panelsAt > 10000) {
    if (start - panelsAt >= PANELS_EVERY_MS) {
      panelsAt = start;
      alertsPanel.render(nowS);
      hubPanel.render(nowS);
    } else if (!panelsTimer) {
      panelsTimer = setTimeout(() => { panelsTimer = 0; invalidate(); },
        PANELS_EVERY_MS - (start - panelsAt));
    }
  }
  renderSummary();
  const work = performance.now() - start;
  perf.frames += 1;
  perf.workTotalMs += work;
  if (work > perf.workMaxMs) perf.workMaxMs = work;
  if (more) invalidate();
}

// Once a second: staleness, relative times, client figures, the reconnect countdown.
setInterval(() => {
  if (client.state === STATE.LIVE) {
    const since = client.liveSince;
    fleet.checkStale(performance.now(), since, client.effectiveThrottleMs ?? client.throttleMs);
    for (const n of fleet.nodes.values()) if (n.stale) n.version += 1; // age text
  }
  clientPanel.render();
  connDirty = true;
  invalidate();
}, 1000);

// -- controls and routing ----------------------------------------------------------------
throttleEl.addEventListener('change', () => {
  localStorage.setItem('mh.throttle', throttleEl.value);
  client.setThrottle(Number(throttleEl.value));
  connDirty = true;
  invalidate();
});
document.getElementById('conn-retry').addEventListener('click', () => client.retryNow());

function route() {
  const m = location.hash.match(/^#\/node\/(.+)$/);
  if (m) {
    const name = decodeURIComponent(m[1]);
    overview.setActive(false);
    nodeView.open(name);
    document.title = `${name} · metrics-hub`;
  } else {
    nodeView.close();
    overview.setActive(true);
    document.title = 'metrics-hub';
  }
  window.scrollTo(0, 0);
  invalidate();
}
window.addEventListener('hashchange', route);
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && nodeView.name) location.hash = '#/';
  if (ev.key === '/' && document.activeElement.tagName !== 'INPUT' && !nodeView.name) {
    ev.preventDefault();
    document.getElementById('filter').focus();
  }
});

matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  resetPalette();
  overview.redrawAll();
  nodeView.retheme();
  invalidate();
});

client.subscribe(BASE_PATTERNS);
route();
client.start();

// A read-only window into the page for the browser tests and the benchmark.
window.__mh = {
  client,
  fleet,
  alerts,
  gateways,
  nodeView,
  perf,
  /** Timestamps held for `node/kind` in the node view, or in the overview sparkline. */
  seriesTimes(node, kind) {
    if (nodeView.detail && nodeView.detail.name === node) {
      const k = nodeView.detail.kinds.get(kind);
      return k ? k.series.rows.filter((r) => r.v).map((r) => r.ts) : [];
    }
    const n = fleet.nodes.get(node);
    return n && kind === 'system' ? n.spark.rows.filter((r) => r.v).map((r) => r.ts) : [];
  },
  describe() {
    return `${client.state}, ${fleet.nodes.size} nodes, cursor ${client.cursor ? 'held' : 'none'}, `
      + `uptime ${duration(performance.now() / 1000)}`;
  },
};
