// Drives the hookq dashboard in Debian's headless Chromium (playwright-core, no browser
// download): sign in, watch a log arrive live, open it, retry a dead letter, retry all
// dead letters, pause and resume an integration from its panel, search, delete what a
// search matches after seeing the count, open a conversation, run a shadow replay, save
// a screenshot, then sign in read-only and see nothing that changes anything. Run by tests/api/dashboard.rs, which starts hookq
// and passes: HOOKQ_BASE, HOOKQ_TOKEN, HOOKQ_READONLY, META_SECRET, SCREENSHOT.
import { createHmac } from 'node:crypto';
import { chromium } from 'playwright-core';

const base = process.env.HOOKQ_BASE;
const token = process.env.HOOKQ_TOKEN;
const metaSecret = process.env.META_SECRET;
const shot = process.env.SCREENSHOT;
const step = (s) => console.log(`· ${s}`);

async function signed(body) {
  const raw = JSON.stringify(body);
  const sig = 'sha256=' + createHmac('sha256', metaSecret).update(raw).digest('hex');
  const r = await fetch(`${base}/webhooks/instagram`, { method: 'POST', headers: { 'X-Hub-Signature-256': sig, 'Content-Type': 'application/json' }, body: raw });
  if (r.status !== 200) throw new Error(`webhook answered ${r.status}: ${await r.text()}`);
  return (await r.json()).ids[0];
}

async function admin(path, body) {
  const r = await fetch(`${base}${path}`, {
    method: body ? 'POST' : 'GET',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!r.ok) throw new Error(`${path} answered ${r.status}: ${await r.text()}`);
  return r.json();
}

const comment = (id, message, { persona = 'persona_123', post = 'post_123', name = 'Test User', parent } = {}) => ({
  entry: [{ changes: [{ value: { post_id: post, item: 'comment', comment_id: id, sender_id: `s_${id}`, sender_name: name, message, created_time: 1625097600,
    ...(parent ? { parent_id: parent } : {}) } }] }],
  object: 'instagram', user_id: 'user_123', persona_id: persona,
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('401')) problems.push(`console: ${m.text()}`); });

try {
  // Some history first, so the chart and counters have something to show.
  for (const [i, who, text] of [[1, 'Maya', 'Love this jacket!'], [2, 'Leo', 'Do you ship to Canada?'], [3, 'Ines', 'What a SCAM']]) {
    await signed(comment(`warm_${i}`, text, { name: who }));
  }

  step('sign in with a wrong token, then the right one');
  await page.goto(`${base}/dashboard`);
  await page.fill('#login-token', 'not-the-token');
  await page.click('#login-submit');
  await page.waitForSelector('#login-error:text("not accepted")');
  await page.fill('#login-token', token);
  await page.click('#login-submit');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForSelector('#live.on', { timeout: 10000 });
  await page.waitForSelector('.card[data-status=processed] .value:text-matches("^[1-9]")', { timeout: 15000 });

  step('a new log appears live, without a reload');
  const navs = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navs.push(f.url()); });
  const deadId = await signed(comment('live_dead', 'Is this still available?', { persona: 'ghost', post: 'post_x', name: 'Noah' }));
  await page.waitForSelector(`#logs tr[data-id="${deadId}"]`, { timeout: 10000 });
  await page.waitForSelector(`#logs tr[data-id="${deadId}"][data-status="dead_letter"]`, { timeout: 15000 });
  if (navs.length) throw new Error(`the page reloaded: ${navs}`);

  step('open it: the detail shows the error and the payload');
  await page.click(`#logs tr[data-id="${deadId}"]`);
  await page.waitForSelector(`#detail[data-id="${deadId}"]:not([hidden])`);
  await page.waitForSelector('#detail-error:text("persona \'ghost\' not found")');
  await page.waitForSelector('#detail-payload:text("live_dead")');
  await page.waitForSelector('#detail-retry:not([hidden])');

  step('fix the data, retry the dead letter: it is processed and replied');
  const users = await admin('/api/users');
  const tpls = await admin('/api/persona-templates');
  await admin('/api/personas', { external_id: 'ghost', user_id: users.items[0].id, template_id: tpls.items[0].id, name: 'Casper' });
  await page.click('#detail-retry');
  await page.waitForSelector(`#detail[data-id="${deadId}"][data-status="processed"]`, { timeout: 15000 });
  await page.waitForSelector('#detail-reply:text("Casper")');
  await page.waitForSelector(`#logs tr[data-id="${deadId}"][data-status="processed"]`);

  step('retry all dead letters');
  const d2 = await signed(comment('live_dead_2', 'hello?', { persona: 'phantom', post: 'post_x', name: 'Zoe' }));
  await page.waitForSelector(`#logs tr[data-id="${d2}"][data-status="dead_letter"]`, { timeout: 15000 });
  await page.click('#retry-dead');
  await page.waitForSelector('#toast:text("1 dead letter queued again")');

  step('filter by status');
  await page.selectOption('#f-status', 'processed');
  await page.waitForFunction(() => [...document.querySelectorAll('#logs tbody tr')].every((tr) => tr.dataset.status === 'processed'));
  await page.selectOption('#f-status', '');
  await page.waitForSelector(`#logs tr[data-id="${d2}"]`);

  step('pause an integration from its panel: its new comment waits pending; resume: it is answered');
  const ig = (await admin('/api/integrations')).items.find((i) => i.platform === 'instagram' && i.user_id === users.items[0].id);
  const row = `#integrations tr[data-id="${ig.id}"]`;
  const patched = await fetch(`${base}/api/integrations/${ig.id}`, {
    method: 'PATCH',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ reply_rate_limit: '1000/h', max_concurrent: 4 }),
  });
  if (!patched.ok) throw new Error(`PATCH answered ${patched.status}`);
  // The panel shows running against the cap and the rate used against the limit.
  await page.waitForSelector(`${row} td:nth-child(4):text-matches("/ 4$")`, { timeout: 15000 });
  // (An hour's window: every run since the test began stays counted in it.)
  const rateCell = `${row} td:nth-child(5)`;
  await page.waitForSelector(`${rateCell}:text-matches("^[0-9]+ / 1000/h$")`, { timeout: 15000 });
  const usedBefore = Number((await page.textContent(rateCell)).split(' / ')[0]);
  await page.click(`${row} button[data-action="pause"]`);
  await page.waitForSelector(`${row} .badge.paused`, { timeout: 10000 });
  const held = await signed(comment('held_1', 'Is the blue one back?', { name: 'Ava' }));
  await page.waitForSelector(`#logs tr[data-id="${held}"][data-status="pending"]`, { timeout: 10000 });
  // The panel's next refresh counts it; the log is still pending then (a worker would
  // have answered it within milliseconds, had the pause not held it).
  await page.waitForSelector(`${row} td:nth-child(3):text-is("1")`, { timeout: 15000 });
  if ((await admin(`/api/webhook-logs/${held}`)).status !== 'pending') throw new Error('a paused integration ran its event');
  await page.click(`${row} button[data-action="resume"]`);
  await page.waitForSelector(`${row} .badge.active`, { timeout: 10000 });
  await page.waitForSelector(`#logs tr[data-id="${held}"][data-status="processed"]`, { timeout: 15000 });
  // Its run counts against the limit.
  await page.waitForFunction(([sel, before]) => Number(document.querySelector(sel).textContent.split(' / ')[0]) > before,
    [rateCell, usedBefore], { timeout: 15000 });

  step('search: the box narrows the list to the logs containing the text');
  const ship = (await admin('/api/webhook-logs?q=canada')).items.map((l) => l.id);
  if (ship.length !== 1) throw new Error(`the API finds ${ship.length} logs for "canada"`);
  await page.fill('#f-q', 'CANADA');
  await page.waitForFunction((id) => {
    const rows = [...document.querySelectorAll('#logs tbody tr')];
    return rows.length === 1 && rows[0].dataset.id === String(id);
  }, ship[0], { timeout: 10000 });

  step('act on the filter: delete everything matching, after being shown how many');
  await page.click('#bulk-delete');
  await page.waitForSelector('#bulk-text:text("Delete 1 log matching these filters?")');
  await page.click('#bulk-go');
  await page.waitForSelector('#toast:text("1 log deleted")');
  await page.waitForSelector('#empty:not([hidden])');
  if ((await admin('/api/webhook-logs?q=canada')).total !== 0) throw new Error('the matching log is still there');
  if ((await admin('/api/webhook-logs?q=jacket')).total !== 1) throw new Error('a log not matching was deleted');
  await page.fill('#f-q', '');
  await page.waitForSelector(`#logs tr[data-id="${deadId}"]`, { timeout: 10000 });

  step('retry matching: the count shown is what the filter can retry (processed logs: none)');
  await page.selectOption('#f-status', 'processed');
  await page.click('#bulk-retry');
  await page.waitForSelector('#bulk-text:text("No log matching these filters can be retried.")');
  await page.click('#bulk-cancel');
  await page.selectOption('#f-status', '');

  step('the conversation view: a thread of two comments, each with its reply');
  const first = await signed(comment('thread_a', 'Which sizes do you have?', { name: 'Mia' }));
  const second = await signed(comment('thread_b', 'And in blue?', { name: 'Mia', parent: 'thread_a' }));
  await page.waitForSelector(`#logs tr[data-id="${second}"][data-status="processed"]`, { timeout: 15000 });
  await page.click(`#logs tr[data-id="${second}"]`);
  await page.waitForSelector('#detail-conversation:not([hidden])');
  await page.click('#detail-conversation');
  await page.waitForSelector('#conversation:not([hidden]) #conversation-events li');
  const order = await page.$$eval('#conversation-events li', (lis) => lis.map((li) => Number(li.dataset.id)));
  if (JSON.stringify(order) !== JSON.stringify([first, second])) throw new Error(`conversation order ${order}`);
  const replies = await page.$$eval('#conversation-events li .conv-reply', (r) => r.length);
  if (replies !== 2) throw new Error(`${replies} replies shown in the conversation`);

  step('shadow replay: old and new replies side by side; the logs keep theirs');
  await page.fill('#replay-template', 'Shadow: {message}');
  await page.fill('#replay-limit', '5');
  await page.click('#replay-start');
  await page.waitForSelector('#replay-panel[data-done="true"]', { timeout: 20000 });
  const pairs = await page.$$eval('#replay-items tbody tr', (trs) => trs.map((tr) => [Number(tr.dataset.log), tr.querySelector('.old').textContent, tr.querySelector('.new').textContent]));
  const shadowed = pairs.find(([, , n]) => n === 'Shadow: And in blue?');
  if (!shadowed || shadowed[1] === shadowed[2]) throw new Error(`no side-by-side pair for the thread's reply: ${JSON.stringify(pairs)}`);
  const kept = await admin(`/api/webhook-logs/${shadowed[0]}`);
  if (kept.reply_text !== shadowed[1]) throw new Error(`the replay changed the log's reply: ${kept.reply_text}`);

  await page.click(`#logs tr[data-id="${deadId}"]`);
  await page.waitForSelector('#detail-reply:not([hidden])');
  await page.waitForSelector('#chart svg polyline');
  await page.screenshot({ path: shot, fullPage: true });
  step(`screenshot: ${shot}`);

  step('the read-only token: everything shows, nothing that changes anything does');
  await page.click('#logout');
  await page.fill('#login-token', process.env.HOOKQ_READONLY);
  await page.click('#login-submit');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForSelector('body.readonly');
  await page.waitForSelector('#role:text("read-only")');
  await page.waitForSelector(`#logs tr[data-id="${deadId}"]`, { timeout: 10000 });
  await page.waitForSelector(`${row} td:nth-child(3)`, { timeout: 10000 });
  for (const sel of ['#retry-dead', '.bulk', '#replay-form', `${row} button[data-action]`]) {
    if (await page.isVisible(sel)) throw new Error(`${sel} is shown to the read-only token`);
  }
  await page.click(`#logs tr[data-id="${deadId}"]`);
  await page.waitForSelector(`#detail[data-id="${deadId}"]:not([hidden])`);
  if (await page.isVisible('#detail-retry')) throw new Error('retry is shown to the read-only token');
  const refused = await fetch(`${base}/api/webhook-logs/${deadId}/retry`, { method: 'POST', headers: { Authorization: `Bearer ${process.env.HOOKQ_READONLY}` } });
  if (refused.status !== 403) throw new Error(`a read-only retry answered ${refused.status}`);
  // The audit log has the admin's changes and the refused attempt, by role.
  const audit = await admin('/api/audit?limit=500');
  const seen = (role, action, type) => audit.items.some((e) => e.role === role && e.action === action && e.resource_type === type);
  for (const [role, action, type] of [['admin', 'retry', 'webhook-logs'], ['admin', 'pause', 'integrations'], ['admin', 'delete', 'webhook-logs'], ['admin', 'create', 'replays'], ['readonly', 'retry', 'webhook-logs']]) {
    if (!seen(role, action, type)) throw new Error(`audit lacks ${role} ${action} ${type}: ${JSON.stringify(audit.items.slice(0, 5))}`);
  }
  if (problems.length) throw new Error(problems.join('\n'));
  console.log('OK');
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  await page.screenshot({ path: shot.replace(/\.png$/, '-failure.png'), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
