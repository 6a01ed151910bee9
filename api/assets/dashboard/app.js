// hookq operator dashboard. Plain ES module, no dependencies, served from the binary.
//
// The admin token lives in sessionStorage: it is sent as `Authorization: Bearer` on every
// call (the live feed too — read with fetch() streaming, because EventSource cannot send
// headers), so the browser never holds an ambient credential a forged cross-site request
// could ride on (no CSRF), the token goes when the tab closes, and no page data is ever
// inserted as HTML (textContent only, and a CSP forbidding inline script) to keep XSS,
// the one way to read it, out.

const TOKEN_KEY = 'hookq_token';
const MAX_ROWS = 200;
const $ = (sel) => document.querySelector(sel);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  logs: new Map(),       // id -> log summary
  selected: null,
  feed: null,            // AbortController of the live feed
  timers: [],
};

// ------------------------------------------------------------------------ api

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const resp = await fetch(path, {
    ...opts,
    headers: { Authorization: `Bearer ${state.token}`, 'Content-Type': 'application/json', ...(opts.headers || {}) },
  });
  if (resp.status === 401) throw new Unauthorized('unauthorized');
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.detail || `${resp.status}`);
  return body;
}

function filters() {
  const f = {
    status: $('#f-status').value, event_type: $('#f-event').value,
    source: $('#f-source').value, integration_id: $('#f-integration').value,
    q: $('#f-q').value.trim(),
  };
  return Object.fromEntries(Object.entries(f).filter(([, v]) => v));
}

// Whether a live update belongs in the list. The search (`q`) also matches fields a
// list item does not carry (item id, dedup key), so under a search only rows already
// listed are updated; new matches come with the next load.
function matches(log, f, listed) {
  const { q, ...exact } = f;
  if (q && !listed) return false;
  return Object.entries(exact).every(([k, v]) => log[k] === v);
}

// ---------------------------------------------------------------------- login

function showLogin(message = '') {
  stopAll();
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  $('#login-token').focus();
}

async function signIn(token) {
  state.token = token;
  try {
    await api('/api/webhook-logs/stats');
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin(e instanceof Unauthorized ? 'That token was not accepted.' : `Cannot reach hookq: ${e.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  // A read-only token sees everything and changes nothing: what it cannot do is hidden.
  const session = await api('/api/session').catch(() => ({ role: 'admin' }));
  state.role = session.role;
  document.body.classList.toggle('readonly', session.role === 'readonly');
  $('#role').textContent = session.role === 'readonly' ? 'read-only' : '';
  $('#login').hidden = true;
  $('#app').hidden = false;
  start();
}

function guard(fn) {
  return (...args) => fn(...args).catch((e) => {
    if (e instanceof Unauthorized) { sessionStorage.removeItem(TOKEN_KEY); showLogin('Session expired: sign in again.'); }
    else toast(e.message);
  });
}

// ----------------------------------------------------------------- rendering

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v; else if (k === 'dataset') Object.assign(e.dataset, v); else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

const fmtTime = (t) => t ? new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' }) : '–';
const fmtDate = (t) => t ? new Date(t).toLocaleString() : '–';
const fmtNum = (n) => n == null ? '–' : Number(n).toLocaleString();
const badge = (s) => el('span', { class: `badge ${s}`, textContent: s.replace('_', ' ') });

function renderRow(log, fresh) {
  const tr = el('tr', { dataset: { id: String(log.id), status: log.status } },
    el('td', { class: 'num', textContent: log.id }),
    el('td', { textContent: fmtTime(log.received_at), title: fmtDate(log.received_at) }),
    el('td', { textContent: log.source }),
    el('td', { textContent: log.event_type }),
    el('td', { textContent: log.sender_name || '–' }),
    el('td', { class: 'msg', textContent: log.message_preview || '', title: log.message_preview || '' }),
    el('td', {}, badge(log.status), log.outcome ? el('span', { class: 'tag', textContent: log.skip_reason || log.outcome }) : null),
    el('td', { class: 'num', textContent: log.attempts }),
  );
  if (fresh) tr.classList.add('fresh');
  if (state.selected === log.id) tr.classList.add('selected');
  tr.addEventListener('click', () => openDetail(log.id));
  return tr;
}

function renderTable(freshIds = new Set()) {
  const rows = [...state.logs.values()]
    .sort((a, b) => (b.received_at.localeCompare(a.received_at)) || (b.id - a.id))
    .slice(0, MAX_ROWS);
  const tbody = $('#logs tbody');
  tbody.replaceChildren(...rows.map((l) => renderRow(l, freshIds.has(l.id))));
  $('#empty').hidden = rows.length > 0;
}

function renderCounts(c) {
  for (const card of document.querySelectorAll('.card.count')) {
    card.querySelector('.value').textContent = fmtNum(c[card.dataset.status]);
  }
  const finished = c.processed + c.dead_letter;
  $('#kpi-success').textContent = finished ? `${(c.processed / finished * 100).toFixed(1)}%` : '–';
}

function renderStats(s) {
  renderCounts(s.by_status);
  const p95 = s.processing_time.p95_ms;
  $('#kpi-latency').textContent = `p95 ${p95 == null ? '–' : p95 < 1000 ? `${Math.round(p95)} ms` : `${(p95 / 1000).toFixed(1)} s`} · ${s.last_minute.received}/min in`;
  $('#kpi-depth').textContent = fmtNum(s.queue.depth);
  const age = s.queue.oldest_pending_age_secs;
  $('#kpi-oldest').textContent = `oldest ${age == null ? '–' : `${age.toFixed(1)} s`} · ${s.queue.running} running`;
  fillSelect('#f-event', s.by_event_type.map((e) => [e.name, e.name]));
  fillSelect('#f-source', s.by_source.map((e) => [e.name, e.name]));
}

function fillSelect(sel, pairs) {
  const select = $(sel);
  const known = new Set([...select.options].map((o) => o.value));
  for (const [value, label] of pairs) {
    if (!known.has(value)) select.append(el('option', { value, textContent: label }));
  }
}

// ---------------------------------------------------------------------- chart

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function renderChart(minutes) {
  const W = 1000, H = 170, L = 36, R = 8, T = 10, B = 22;
  const max = Math.max(1, ...minutes.map((m) => Math.max(m.received, m.processed, m.failed)));
  const n = Math.max(1, minutes.length);
  const x = (i) => L + (i + 0.5) * (W - L - R) / n;
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': 'throughput per minute' });
  for (const f of [0, 0.5, 1]) {
    root.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
    const t = svg('text', { class: 'axis', x: L - 6, y: y(max * f) + 3, 'text-anchor': 'end' });
    t.textContent = Math.round(max * f);
    root.append(t);
  }
  const bw = Math.max(2, (W - L - R) / n * 0.5);
  minutes.forEach((m, i) => {
    if (m.failed > 0) root.append(svg('rect', { class: 'failed', x: x(i) - bw / 2, y: y(m.failed), width: bw, height: y(0) - y(m.failed) }));
  });
  const pts = (key) => minutes.map((m, i) => `${x(i).toFixed(1)},${y(m[key]).toFixed(1)}`).join(' ');
  if (minutes.length) {
    root.append(svg('polygon', { class: 'area', points: `${x(0)},${y(0)} ${pts('received')} ${x(n - 1)},${y(0)}` }));
    root.append(svg('polyline', { class: 'received', points: pts('received') }));
    root.append(svg('polyline', { class: 'processed', points: pts('processed') }));
  }
  for (const i of [0, Math.floor(n / 2), n - 1]) {
    if (!minutes[i]) continue;
    const anchor = i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle';
    const t = svg('text', { class: 'axis', x: i === n - 1 ? W - R : x(i), y: H - 6, 'text-anchor': anchor });
    t.textContent = new Date(minutes[i].minute).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    root.append(t);
  }
  $('#chart').replaceChildren(root);
}

// --------------------------------------------------------------------- detail

async function openDetail(id) {
  state.selected = id;
  const log = await api(`/api/webhook-logs/${id}`);
  if (state.selected !== id) return;
  document.querySelectorAll('#logs tbody tr').forEach((tr) => tr.classList.toggle('selected', tr.dataset.id === String(id)));
  $('#detail').hidden = false;
  $('#detail').dataset.id = String(id);
  $('#detail').dataset.status = log.status;
  document.querySelector('.layout').classList.add('with-detail');
  $('#detail-title').replaceChildren(`Log #${log.id} `, badge(log.status));
  const fields = [
    ['event', `${log.source} · ${log.event_type} (${log.handling})`],
    ['outcome', log.outcome ? `${log.outcome}${log.skip_reason ? ` · ${log.skip_reason}` : ''}` : '–'],
    ['attempts', String(log.attempts)],
    ['sender', [log.sender_name, log.sender_id].filter(Boolean).join(' · ') || '–'],
    ['message', log.message_text || '–'],
    ['account', log.account_id || log.user_external_id || '–'],
    ['post', log.post_external_id || '–'],
    ['received', fmtDate(log.received_at)],
    ['processed', fmtDate(log.processed_at)],
    ['next retry', fmtDate(log.next_retry_at)],
    ['job', log.job_id ? `#${log.job_id}${log.job ? ` · ${log.job.status}` : ''}` : '–'],
    ['correlation', log.correlation_id || '–'],
    ['duplicates', String(log.duplicate_count)],
  ];
  $('#detail-fields').replaceChildren(...fields.flatMap(([k, v]) => [el('dt', { textContent: k }), el('dd', { textContent: v })]));
  $('#detail-error').hidden = !log.error_message;
  $('#detail-error').textContent = log.error_message || '';
  $('#detail-reply').hidden = !log.reply_text;
  $('#detail-reply').textContent = log.reply_text ? `Reply: ${log.reply_text}` : '';
  const errors = log.job ? log.job.errors : [];
  $('#detail-attempts').replaceChildren(...(errors.length
    ? errors.map((e) => el('li', { textContent: `#${e.attempt} at ${fmtTime(e.at)}: ${e.error}` }))
    : [el('li', { class: 'muted none', textContent: log.attempts ? `${log.attempts} run${log.attempts === 1 ? '' : 's'}, no failures recorded` : 'not run yet' })]));
  $('#detail-payload').textContent = JSON.stringify(log.payload, null, 2);
  $('#detail-retry').hidden = !['failed', 'dead_letter'].includes(log.status);
  $('#detail-conversation').hidden = !log.conversation_key;
  $('#detail-conversation').dataset.key = log.conversation_key || '';
}

// ------------------------------------------------------------- conversation

// One conversation end to end: each event with its reply, the reply's delivery
// attempts and the platform's reports on it (WhatsApp sent/delivered/read/failed).
async function openConversation(key) {
  const c = await api(`/api/conversations/${encodeURIComponent(key)}`);
  $('#conversation-key').textContent = c.key;
  $('#conversation-more').hidden = !c.truncated;
  $('#conversation-events').replaceChildren(...c.events.map((e) => {
    const l = e.log;
    const li = el('li', { dataset: { id: String(l.id), status: l.status } },
      el('div', { class: 'conv-head' },
        el('span', { class: 'muted', textContent: `${fmtDate(l.received_at)} · #${l.id} · ${l.event_type}` }), ' ', badge(l.status)),
      el('div', { class: 'conv-msg', textContent: `${l.sender_name || 'someone'}: ${l.message_preview || ''}` }));
    if (l.reply_text) li.append(el('div', { class: 'conv-reply', textContent: `↳ ${l.reply_text}` }));
    else if (l.skip_reason) li.append(el('div', { class: 'muted', textContent: `no reply: ${l.skip_reason}` }));
    if (e.delivery) {
      const d = e.delivery;
      li.append(el('div', { class: 'conv-delivery', textContent:
        `delivery ${d.status} (${d.kind}) · ${d.attempts.length} attempt${d.attempts.length === 1 ? '' : 's'}` +
        (d.attempts.length ? `: ${d.attempts.map((a) => a.status_code ?? a.state).join(', ')}` : '') }));
    }
    for (const r of e.reports) {
      li.append(el('div', { class: 'conv-report', dataset: { status: r.status }, textContent: `platform: ${r.status} at ${fmtTime(r.occurred_at || r.received_at)}` }));
    }
    return li;
  }));
  $('#conversation').hidden = false;
  $('#conversation').dataset.key = c.key;
  $('#conversation').scrollIntoView({ block: 'start' });
}

// -------------------------------------------------------------- shadow replay

// What a log got, as one line: the reply, else the skip (or error).
function resultText(outcome, skip, reply, error) {
  if (error) return `error: ${error}`;
  if (reply) return reply;
  if (outcome === 'skipped') return `skipped: ${skip}`;
  return outcome || '–';
}

async function startReplay() {
  const body = { filter: filters(), limit: Number($('#replay-limit').value) || 100 };
  const fields = [['reply_template', '#replay-template'], ['system_prompt', '#replay-prompt'], ['model', '#replay-model']];
  for (const [k, sel] of fields) { const v = $(sel).value.trim(); if (v) body[k] = v; }
  const r = await api('/api/replays', { method: 'POST', body: JSON.stringify(body) });
  toast(`Replay #${r.id} of ${fmtNum(r.total)} log${r.total === 1 ? '' : 's'} started`);
  clearInterval(state.replayTimer);
  state.replayTimer = setInterval(guard(() => showReplay(r.id)), 1000);
  await showReplay(r.id);
}

// The replay's progress, and each log's old result next to the new one.
async function showReplay(id) {
  const d = await api(`/api/replays/${id}?limit=200`);
  const r = d.replay;
  $('#replay-panel').dataset.id = String(r.id);
  $('#replay-panel').dataset.done = String(r.done);
  $('#replay-status').hidden = false;
  $('#replay-status').textContent = `Replay #${r.id}: ${fmtNum(r.finished)} of ${fmtNum(r.total)} replayed` +
    ` · ${fmtNum(r.changed)} changed · ${fmtNum(r.failed)} failed${r.done ? ' · done' : ''}`;
  $('#replay-wrap').hidden = false;
  $('#replay-items tbody').replaceChildren(...d.items.items.map((i) => {
    const before = i.old_outcome ? resultText(i.old_outcome, i.old_skip_reason, i.old_reply, null) : i.old_status.replace('_', ' ');
    const after = i.status === 'pending' ? '…' : resultText(i.new_outcome, i.new_skip_reason, i.new_reply, i.error);
    const tr = el('tr', { dataset: { log: String(i.log_id), status: i.status } },
      el('td', { class: 'num', textContent: i.log_id }),
      el('td', { class: 'msg', textContent: i.message_preview || '', title: i.message_preview || '' }),
      el('td', { class: 'old', textContent: before }),
      el('td', { class: `new${after !== before && i.status !== 'pending' ? ' changed' : ''}`, textContent: after }));
    tr.addEventListener('click', () => openDetail(i.log_id));
    return tr;
  }));
  if (r.done) clearInterval(state.replayTimer);
}

// ------------------------------------------------------------ act on a filter

// What the bulk buttons may touch: retry takes failed and dead letters, delete takes
// processed, failed and dead letters (never a log in flight).
const BULK = {
  retry: { statuses: ['failed', 'dead_letter'], path: '/api/webhook-logs/retry', verb: 'Retry', done: (r) => r.retried },
  delete: { statuses: ['processed', 'failed', 'dead_letter'], path: '/api/webhook-logs/delete', verb: 'Delete', done: (r) => r.deleted },
};

// How many logs the action would touch: the list's total for the current filters, per
// status the action takes.
async function bulkCount(kind) {
  const f = filters();
  const statuses = f.status ? BULK[kind].statuses.filter((s) => s === f.status) : BULK[kind].statuses;
  let n = 0;
  for (const status of statuses) {
    const q = new URLSearchParams({ ...f, status, limit: '1' });
    n += (await api(`/api/webhook-logs?${q}`)).total;
  }
  return n;
}

async function bulkAsk(kind) {
  const n = await bulkCount(kind);
  const box = $('#bulk-confirm');
  box.dataset.kind = kind;
  box.dataset.count = String(n);
  $('#bulk-text').textContent = n
    ? `${BULK[kind].verb} ${fmtNum(n)} log${n === 1 ? '' : 's'} matching these filters?`
    : `No log matching these filters can be ${kind === 'retry' ? 'retried' : 'deleted'}.`;
  $('#bulk-go').hidden = n === 0;
  box.hidden = false;
}

async function bulkGo() {
  const box = $('#bulk-confirm');
  const kind = box.dataset.kind;
  const count = Number(box.dataset.count);
  box.hidden = true;
  // 10,000 per call (the API's most), until the shown count is done: a retried log
  // that fails again is not taken a second time.
  let total = 0;
  for (;;) {
    const limit = Math.min(10000, count - total);
    if (limit <= 0) break;
    const r = await api(BULK[kind].path, { method: 'POST', body: JSON.stringify({ ...filters(), limit }) });
    const n = BULK[kind].done(r);
    total += n;
    if (n < limit) break;
  }
  toast(`${fmtNum(total)} log${total === 1 ? '' : 's'} ${kind === 'retry' ? 'queued again' : 'deleted'}`);
  await loadList();
}

function closeDetail() {
  state.selected = null;
  $('#detail').hidden = true;
  document.querySelector('.layout').classList.remove('with-detail');
  document.querySelectorAll('#logs tbody tr.selected').forEach((tr) => tr.classList.remove('selected'));
}

// ---------------------------------------------------------------- data flows

async function loadList() {
  const q = new URLSearchParams({ ...filters(), limit: String(MAX_ROWS) });
  const page = await api(`/api/webhook-logs?${q}`);
  state.logs = new Map(page.items.map((l) => [l.id, l]));
  $('#total').textContent = `${fmtNum(page.total)} matching`;
  renderTable();
}

async function loadStats() { renderStats(await api('/api/webhook-logs/stats')); }
async function loadChart() { renderChart(await api('/api/webhook-logs/throughput?minutes=60')); }
async function loadIntegrations() {
  const page = await api('/api/integrations?limit=500');
  fillSelect('#f-integration', page.items.map((i) => [i.id, `${i.platform} · ${i.account_id}`]));
}

// The integrations panel: each account's backlog and state, paused or resumed here.
function renderIntegrations(page) {
  const rows = page.items.map((i) => {
    const button = el('button', {
      className: `admin-only ${i.paused ? '' : 'secondary'}`,
      textContent: i.paused ? 'Resume' : 'Pause',
    });
    button.dataset.id = i.id;
    button.dataset.action = i.paused ? 'resume' : 'pause';
    const age = i.oldest_pending_age_secs;
    const tr = el('tr', {},
      el('td', { textContent: `${i.platform} · ${i.account_id}` }),
      el('td', {}, el('span', { className: `badge ${i.paused ? 'paused' : 'active'}`, textContent: i.paused ? 'paused' : 'active' })),
      el('td', { className: 'num', textContent: fmtNum(i.pending) }),
      el('td', { className: 'num', textContent: i.max_concurrent == null ? fmtNum(i.running) : `${fmtNum(i.running)} / ${fmtNum(i.max_concurrent)}` }),
      el('td', { className: 'num', textContent: i.rate_limit == null ? '–' : `${fmtNum(i.rate_used)} / ${i.rate_limit}` }),
      el('td', { className: 'num', textContent: age == null ? '–' : `${age.toFixed(1)} s` }),
      el('td', {}, button));
    tr.dataset.id = i.id;
    return tr;
  });
  $('#integrations tbody').replaceChildren(...rows);
  $('#integrations-empty').hidden = rows.length > 0;
}
async function loadQueues() { renderIntegrations(await api('/api/integrations/queues?limit=100')); }

function applyUpdate(update) {
  const f = filters();
  const fresh = new Set();
  for (const log of update.logs) {
    const had = state.logs.has(log.id);
    if (matches(log, f, had)) { state.logs.set(log.id, log); if (!had) fresh.add(log.id); }
    else state.logs.delete(log.id);
    if (state.selected === log.id) guard(openDetail)(log.id);
  }
  if (update.logs.length) renderTable(fresh);
  if (update.counts) renderCounts(update.counts);
}

// The live feed: server-sent events read through fetch() so the bearer header goes
// along. Reconnects after a second whenever the stream ends.
async function liveFeed() {
  const ctrl = new AbortController();
  state.feed = ctrl;
  while (!ctrl.signal.aborted) {
    try {
      const resp = await fetch('/api/webhook-logs/events', { headers: { Authorization: `Bearer ${state.token}` }, signal: ctrl.signal });
      if (resp.status === 401) throw new Unauthorized('unauthorized');
      if (!resp.ok || !resp.body) throw new Error(`live feed answered ${resp.status}`);
      setLive(true);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
          if (data) applyUpdate(JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
      if (e instanceof Unauthorized) { showLogin('Session expired: sign in again.'); return; }
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function setLive(on) {
  $('#live').classList.toggle('on', on);
  $('#live').classList.toggle('off', !on);
  $('#live-text').textContent = on ? 'live' : 'reconnecting…';
}

function toast(text) {
  const t = $('#toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
}

function start() {
  guard(loadList)();
  guard(loadStats)();
  guard(loadChart)();
  guard(loadIntegrations)();
  guard(loadQueues)();
  liveFeed();
  state.timers.push(setInterval(guard(loadStats), 5000), setInterval(guard(loadChart), 10000),
    setInterval(guard(loadQueues), 5000));
}

function stopAll() {
  clearInterval(state.replayTimer);
  if (state.feed) state.feed.abort();
  state.feed = null;
  state.timers.forEach(clearInterval);
  state.timers = [];
}

// ------------------------------------------------------------------- wiring

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', (e) => { e.preventDefault(); signIn($('#login-token').value.trim()); });
  $('#logout').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); state.token = null; showLogin(); });
  $('#filters').addEventListener('change', guard(loadList));
  $('#filters').addEventListener('submit', (e) => { e.preventDefault(); guard(loadList)(); });
  let searchTimer;
  $('#f-q').addEventListener('input', () => { clearTimeout(searchTimer); searchTimer = setTimeout(guard(loadList), 300); });
  $('#bulk-retry').addEventListener('click', guard(() => bulkAsk('retry')));
  $('#bulk-delete').addEventListener('click', guard(() => bulkAsk('delete')));
  $('#bulk-go').addEventListener('click', guard(bulkGo));
  $('#bulk-cancel').addEventListener('click', () => { $('#bulk-confirm').hidden = true; });
  $('#detail-conversation').addEventListener('click', guard(() => openConversation($('#detail-conversation').dataset.key)));
  $('#conversation-close').addEventListener('click', () => { $('#conversation').hidden = true; });
  $('#replay-form').addEventListener('submit', (e) => { e.preventDefault(); guard(startReplay)(); });
  $('#detail-close').addEventListener('click', closeDetail);
  for (const card of document.querySelectorAll('.card.count')) {
    card.addEventListener('click', () => {
      const s = $('#f-status');
      s.value = s.value === card.dataset.status ? '' : card.dataset.status;
      document.querySelectorAll('.card.count').forEach((c) => c.classList.toggle('active', c.dataset.status === s.value));
      guard(loadList)();
    });
  }
  $('#detail-retry').addEventListener('click', guard(async () => {
    const id = Number($('#detail').dataset.id);
    await api(`/api/webhook-logs/${id}/retry`, { method: 'POST' });
    toast(`Log #${id} queued again`);
    await openDetail(id);
  }));
  $('#integrations').addEventListener('click', guard(async (e) => {
    const button = e.target.closest('button[data-action]');
    if (!button) return;
    button.disabled = true;
    const i = await api(`/api/integrations/${button.dataset.id}/${button.dataset.action}`, { method: 'POST' });
    toast(`${i.platform} · ${i.account_id} ${i.paused ? 'paused' : 'resumed'}`);
    await loadQueues();
  }));
  $('#retry-dead').addEventListener('click', guard(async () => {
    const r = await api('/api/webhook-logs/retry', { method: 'POST', body: JSON.stringify({ status: 'dead_letter' }) });
    toast(r.retried ? `${r.retried} dead letter${r.retried === 1 ? '' : 's'} queued again` : 'No dead letters to retry');
  }));
  if (state.token) signIn(state.token); else showLogin();
});
