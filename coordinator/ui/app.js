// meshgate console: polls the coordinator's REST API once a second with the admin token
// the operator pasted, and redraws only the parts whose data changed (so keyboard focus
// and scroll positions survive a refresh). Plain DOM, no framework, no build step.
'use strict';

const TOKEN_KEY = 'meshgate.adminToken';
const POLL_MS = 1000;
const STALE_MS = 3000;
const LOG_LIMIT = 200;

const state = {
  token: null,
  map: null,
  stats: null,
  cluster: null,
  logs: null,
  selected: null,
  replicaFilter: '',
  knownReplicas: new Set(),
  lastOk: 0,
  lastError: '',
  timer: null,
  generation: 0,
};

class AuthError extends Error {}

const $ = (id) => document.getElementById(id);

// h('tag.class', {attr: v}, ...children): children are nodes or text (never parsed as HTML).
function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(' ');
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'onclick' || k === 'onchange') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path) {
  const r = await fetch(path, {
    headers: { Authorization: 'Bearer ' + state.token },
    cache: 'no-store',
  });
  let body = null;
  try {
    body = await r.json();
  } catch {
    throw new Error(`${path}: HTTP ${r.status} without a JSON body`);
  }
  const why = (body.errors || []).map((e) => e.message).join('; ') || `HTTP ${r.status}`;
  if (r.status === 401 || r.status === 403) throw new AuthError(why);
  if (!body.success) throw new Error(`${path}: ${why}`);
  return body.result;
}

// ---- formatting -------------------------------------------------------------------

const pad = (n, w = 2) => String(n).padStart(w, '0');
function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
function count(n) {
  return Number(n || 0).toLocaleString('en-US');
}
function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n || 0);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}
const short = (id) => String(id || '').slice(0, 8);

// ---- redraw only what changed, keeping focus ----------------------------------------

function redraw(el, data, build) {
  const sig = JSON.stringify(data);
  if (el.dataset.sig === sig) return;
  const focusKey = document.activeElement && el.contains(document.activeElement)
    ? document.activeElement.dataset.focusKey : null;
  el.replaceChildren(...[build()].flat().filter((c) => c !== null && c !== undefined));
  el.dataset.sig = sig;
  if (focusKey) {
    const again = el.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
    if (again) again.focus();
  }
}

function table(caption, headers, rows, empty) {
  if (!rows.length) return h('p.empty', {}, empty);
  return h('table', {},
    h('caption.sr', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows));
}

// ---- sections --------------------------------------------------------------------

function counters(stats) {
  const cards = [
    ['Packets relayed', count(stats.packets_relayed)],
    ['Bytes relayed', bytes(stats.bytes_relayed)],
    ['Failovers', count(stats.failovers)],
    ['Participants connected', count(stats.participants_connected)],
    ['Auth failures', count(stats.auth_failures)],
  ];
  const drops = Object.entries(stats.drops || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const total = drops.reduce((s, [, v]) => s + v, 0);
  cards.push(['Drops', count(total)]);
  return [
    h('div.cards', {}, cards.map(([k, v]) => h('div.card', { dataset: { counter: k } },
      h('div.value', {}, v), h('div.label', {}, k)))),
    h('div.drops', {},
      h('h3', {}, 'Drops by reason'),
      h('ul.reasons', {}, drops.map(([k, v]) =>
        h(v ? 'li' : 'li.zero', { dataset: { reason: k } }, h('span', {}, k.replaceAll('_', ' ')), h('b', {}, count(v)))))),
  ];
}

function coordinators(map, cluster) {
  const conns = Object.fromEntries(map.coordinators.map((c) => [c.name, c.replica_connections]));
  const members = (cluster && cluster.members) || [];
  if (!members.length) {
    if (!map.coordinators.length) {
      return h('p.empty', {}, `This coordinator (API ${location.host}, v${map.version}): no replica connected.`);
    }
    members.push(...map.coordinators.map((c) => ({ name: c.name, status: 'up' })));
  }
  const etcd = cluster && cluster.etcd;
  return [
    h('div.coords', {}, members.map((m) => h(`div.coord.${m.status === 'up' ? 'up' : 'down'}`, { dataset: { coordinator: m.name, status: m.status } },
      h('div.coord-name', {}, m.name,
        m.status === 'up' ? null : h('span.badge.down', {}, m.status),
        cluster && cluster.decider === m.name ? h('span.badge.active', { title: 'this member decides HA elections now' }, 'decides elections') : null,
        m.self ? h('span.muted', {}, '(this API)') : null),
      h('div.muted', {}, [(m.public_addrs || []).join(', '), m.api_addr && `API ${m.api_addr}`].filter(Boolean).join(' · ')),
      h('div', {}, `${conns[m.name] || 0} replica connection${conns[m.name] === 1 ? '' : 's'}`)))),
    etcd ? h('p.muted.etcd', {}, `etcd: ${JSON.stringify(etcd)}`) : null,
    cluster ? h('p.muted', {}, `mode ${cluster.mode} · v${map.version}`) : null,
  ];
}

function statusBadge(r) {
  const role = r.role || r.ha_status;
  return h(`span.badge.${r.ha_status}.role-${role}`, {}, role === r.ha_status ? role : `${r.ha_status} · ${role}`);
}

function replicaRow(r, node) {
  const conns = (r.conns || []).map((c) => h('span.conn', { title: `from ${c.origin_ip} since ${c.opened_at}` }, c.colo_name));
  return h('tr', { dataset: { replicaId: r.id, haStatus: r.ha_status, role: r.role || '', epoch: r.epoch } },
    h('td.mono', { title: r.id }, short(r.id)),
    h('td', {}, statusBadge(r)),
    h('td.mono', {}, r.mesh_ip),
    h('td.num', {}, r.epoch),
    h('td', {}, conns.length ? conns : h('span.muted', {}, 'none')),
    h('td.muted', { title: r.run_at }, `up ${ago(Date.parse(r.run_at))}`));
}

function nodeCard(n, selected) {
  const replicas = n.replicas || [];
  const active = replicas.find((r) => r.ha_status === 'active');
  const epoch = replicas.reduce((e, r) => Math.max(e, r.epoch), 0);
  const health = active ? h('span.badge.active', {}, 'serving')
    : replicas.length ? h('span.badge.down', {}, 'no active replica') : h('span.badge.off', {}, 'offline');
  return h(selected ? 'article.node.selected' : 'article.node', { dataset: { nodeId: n.id, nodeName: n.name } },
    h('header', {},
      h('h3', {}, n.name),
      n.ha ? h('span.badge.ha', {}, 'HA') : null,
      health,
      h('span.muted', {}, `epoch ${epoch} · ${replicas.length} replica${replicas.length === 1 ? '' : 's'}`),
      tags(n.tags),
      h('span.grow'),
      h('button.quiet', {
        type: 'button', 'aria-pressed': selected ? 'true' : 'false',
        dataset: { focusKey: `node-${n.id}` }, onclick: () => select(n.id),
      }, 'Events & logs')),
    replicas.length
      ? h('table.replicas', {},
        h('caption.sr', {}, `Replicas of ${n.name}`),
        h('thead', {}, h('tr', {}, ['Replica', 'Status', 'Mesh IP', 'Epoch', 'Coordinators', 'Connected'].map((x) => h('th', { scope: 'col' }, x)))),
        h('tbody', {}, replicas.map((r) => replicaRow(r, n))))
      : h('p.empty', {}, 'No replica connected.'),
    h('div.chips', {}, (n.routes || []).map((r) => h('span.chip.mono', { title: r.comment || '' }, r.network))));
}

function nodes(map) {
  if (!map.nodes.length) return h('p.empty', {}, 'No nodes yet: POST /api/v1/nodes creates one.');
  return map.nodes.map((n) => nodeCard(n, n.id === state.selected));
}

function tags(list) {
  return (list || []).map((t) => h('span.tag', { title: 'tag' }, t));
}

function devices(map) {
  return table('Devices', ['Name', 'Mesh IP', 'Tags', 'Enrolled'],
    map.devices.map((d) => h('tr', { dataset: { deviceId: d.id } },
      h('td', {}, d.name), h('td.mono', {}, d.mesh_ip), h('td', {}, tags(d.tags)), h('td.muted', {}, d.created_at))),
    'No devices enrolled.');
}

function routes(map) {
  const rows = map.nodes.flatMap((n) => (n.routes || []).map((r) => h('tr', {},
    h('td.mono', {}, r.network), h('td', {}, n.name), h('td.muted', {}, r.comment || ''))));
  return table('Routes', ['Network', 'Via node', 'Comment'], rows, 'No routes advertised.');
}

const EVENT_TEXT = {
  registered: 'registered',
  disconnected: 'disconnected',
  lease_expired: 'lease expired',
  handover_requested: 'asked for handover',
  promoted: 'promoted to active',
};

function timeline(node) {
  const events = [...(node.events || [])].reverse();
  if (!events.length) return h('p.empty', {}, 'No election events yet.');
  return h('ol.timeline', { 'aria-label': `Election events of ${node.name}, newest first` }, events.map((e) => h(`li.ev.ev-${e.event}`, { dataset: { event: e.event, replica: e.replica, epoch: e.epoch } },
    h('time.mono', { datetime: new Date(e.at_unix_us / 1000).toISOString() }, clock(e.at_unix_us / 1000)),
    h('span.what', {}, EVENT_TEXT[e.event] || e.event),
    h('span.mono', { title: e.replica }, short(e.replica)),
    h('span.muted', {}, `epoch ${e.epoch}`),
    e.after_expiry_ms !== undefined ? h('span.muted', {}, `${e.after_expiry_ms} ms after the lease expired`) : null)));
}

// Every replica id the node's logs, events or connections ever named, so the filter
// still offers a replica that has gone (a killed active) after choosing another one.
function knownReplicas(node) {
  const known = state.knownReplicas;
  for (const id of [...(node.replicas || []).map((r) => r.id), ...(node.events || []).map((e) => e.replica),
    ...(state.logs || []).map((l) => l.replica), state.replicaFilter]) {
    if (id) known.add(id);
  }
  return [...known].sort();
}

const FLIP_TARGET = 'meshgate_agent::flip';

function logLine(l) {
  const level = String(l.level).toLowerCase();
  const flip = l.target === FLIP_TARGET;
  return h(`li.lvl-${level}${flip ? '.flip' : ''}`, { dataset: { replica: l.replica, seq: l.seq, level } },
    h('time', { datetime: new Date(l.at_unix_us / 1000).toISOString(), title: `received ${clock(l.received_unix_us / 1000)}` }, clock(l.at_unix_us / 1000)),
    h('span.lvl', {}, flip ? 'flip' : level),
    h('span.rep', { title: l.replica }, short(l.replica)),
    h('span.msg', { title: l.target }, l.message));
}

function logView(node) {
  if (!state.features.includes('logs')) return null;
  const ids = knownReplicas(node);
  const filter = h('select', {
    id: 'replica-filter', dataset: { focusKey: 'replica-filter' },
    onchange: (ev) => { state.replicaFilter = ev.target.value; state.logs = null; render(); poll(); },
  }, h('option', { value: '', selected: !state.replicaFilter }, 'all replicas'),
  ids.map((id) => h('option', { value: id, selected: id === state.replicaFilter }, short(id))));
  const lines = (state.logs || []).slice(-LOG_LIMIT).reverse();
  const whose = state.replicaFilter ? `replica ${short(state.replicaFilter)}` : 'all replicas';
  return [
    h('div.logbar', {}, h('h3', { id: 'h-logs' }, 'Combined replica logs'), h('label', { for: 'replica-filter' }, 'Replica'), filter),
    lines.length
      ? h('ol.logs.mono', { 'aria-label': `Logs of ${whose}, newest first`, tabindex: 0, dataset: { focusKey: 'logs' } }, lines.map(logLine))
      : h('p.empty', {}, state.logs ? `No warnings, errors or flips from ${whose} yet.` : 'Loading…'),
  ];
}

function detail(map) {
  const node = map.nodes.find((n) => n.id === state.selected);
  $('h-detail').textContent = node ? `${node.name}: events & logs` : 'Node';
  if (!node) return h('p.empty', {}, 'Choose “Events & logs” on a node.');
  // logView gives a list (or nothing): redraw flattens one level only.
  return [timeline(node), ...(logView(node) || [])];
}

// ---- the loop --------------------------------------------------------------------

function render() {
  const { map, stats } = state;
  if (!map || !stats) return;
  redraw($('counters'), stats, () => counters(stats));
  redraw($('coordinators'), [map.coordinators, state.cluster], () => coordinators(map, state.cluster));
  redraw($('nodes'), [map.nodes.map((n) => [n.id, n.name, n.ha, n.tags, n.replicas, n.routes]), state.selected, Math.floor(Date.now() / 10000)], () => nodes(map));
  redraw($('devices'), map.devices, () => devices(map));
  redraw($('routes'), map.nodes.map((n) => [n.name, n.routes]), () => routes(map));
  redraw($('detail-body'), [state.selected, map.nodes.find((n) => n.id === state.selected), state.logs, state.replicaFilter], () => detail(map));
  live();
}

function live() {
  const el = $('live');
  if (!state.lastOk) {
    el.textContent = 'connecting…';
    el.className = 'live';
    return;
  }
  const age = Date.now() - state.lastOk;
  const stale = age > STALE_MS;
  el.className = stale ? 'live stale' : 'live ok';
  el.textContent = stale
    ? `stale: last update ${ago(state.lastOk)} ago${state.lastError ? ` (${state.lastError})` : ''}`
    : `live · updated ${clock(state.lastOk)}`;
}

async function poll() {
  clearTimeout(state.timer);
  const generation = state.generation;
  try {
    const [map, stats] = await Promise.all([api('/api/v1/map'), api('/api/v1/stats')]);
    state.features = map.features || [];
    if (state.features.includes('cluster')) state.cluster = await api('/api/v1/cluster');
    if (!state.selected || !map.nodes.some((n) => n.id === state.selected)) {
      const first = map.nodes.find((n) => n.ha) || map.nodes[0];
      state.selected = first ? first.id : null;
      state.knownReplicas = new Set();
    }
    let logs = state.logs;
    const asked = [state.selected, state.replicaFilter].join('/');
    if (state.selected && state.features.includes('logs')) {
      const q = new URLSearchParams({ limit: String(LOG_LIMIT) });
      if (state.replicaFilter) q.set('replica', state.replicaFilter);
      logs = await api(`/api/v1/nodes/${encodeURIComponent(state.selected)}/logs?${q}`);
    }
    if (generation !== state.generation) return;
    // A filter changed while this poll was out: its answer is for the old choice.
    if (asked === [state.selected, state.replicaFilter].join('/')) state.logs = logs;
    Object.assign(state, { map, stats, lastOk: Date.now(), lastError: '' });
    render();
  } catch (e) {
    if (generation !== state.generation) return;
    if (e instanceof AuthError) {
      signOut(`The coordinator refused the token: ${e.message}`);
      return;
    }
    state.lastError = e.message;
    live();
  }
  // A poll started by a click may overlap the timed one: keep a single loop.
  clearTimeout(state.timer);
  state.timer = setTimeout(poll, POLL_MS);
}

function select(id) {
  state.selected = id;
  state.logs = null;
  state.replicaFilter = '';
  state.knownReplicas = new Set();
  render();
  poll();
}

function showConsole() {
  $('signin').hidden = true;
  $('console').hidden = false;
  $('signout').hidden = false;
  state.generation += 1;
  state.features = [];
  poll();
}

function signOut(message) {
  state.generation += 1;
  clearTimeout(state.timer);
  localStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, map: null, stats: null, cluster: null, logs: null, lastOk: 0 });
  for (const id of ['counters', 'coordinators', 'nodes', 'devices', 'routes', 'detail-body']) {
    $(id).replaceChildren();
    delete $(id).dataset.sig;
  }
  $('console').hidden = true;
  $('signout').hidden = true;
  $('signin').hidden = false;
  $('live').textContent = '';
  $('signin-error').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const token = $('token').value.trim();
  if (!token) {
    $('signin-error').textContent = 'Paste the admin token first.';
    return;
  }
  state.token = token;
  try {
    await api('/api/v1/stats');
  } catch (e) {
    state.token = null;
    $('signin-error').textContent = e instanceof AuthError ? `The coordinator refused the token: ${e.message}` : e.message;
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $('token').value = '';
  showConsole();
}

document.addEventListener('DOMContentLoaded', () => {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => signOut(''));
  setInterval(live, 500);
  state.token = localStorage.getItem(TOKEN_KEY);
  if (state.token) showConsole();
  else signOut('');
});
