// Browser tests of the mmls web app against two real nodes on 127.0.0.1,
// in Debian's headless Chromium driven by playwright-core (which never
// downloads a browser here: executablePath is given).
//
//   MMLS_BIN=../target/release/mmls node run.mjs
//
// Env: MMLS_BIN (the mmls binary), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOT_DIR (write PNGs of the main views there), TEST_TIMEOUT_MS
// (default 180000). Exits 0 only if every check held.

import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = resolve(process.env.MMLS_BIN || join(here, '..', 'target', 'release', 'mmls'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOT_DIR ? resolve(process.env.SCREENSHOT_DIR) : null;
const TIMEOUT = Number(process.env.TEST_TIMEOUT_MS || 180000);
const CHROME_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-quic', '--disable-component-update', '--disable-sync'];

const root = mkdtempSync(join(tmpdir(), 'mmls-web-'));
const procs = [];
const contexts = [];
let failures = 0;
let n = 0;

function mmls(dir, ...args) {
  return execFileSync(BIN, ['--data-dir', dir, ...args], { encoding: 'utf8', timeout: 30000 });
}

function ok(name) { n += 1; console.log(`ok ${n} - ${name}`); }

async function check(name, f) {
  try {
    await f();
    ok(name);
  } catch (e) {
    n += 1;
    failures += 1;
    console.log(`not ok ${n} - ${name}\n  ${String(e && e.stack ? e.stack : e).split('\n').join('\n  ')}`);
  }
}

function assert(cond, msg) { if (!cond) throw new Error('assertion failed: ' + msg); }

/** Starts `mmls run` on a data dir; resolves with its printed addresses. */
function startNode(name, peer, extra = []) {
  const dir = join(root, name);
  mmls(dir, 'init', '--name', name);
  const args = ['--data-dir', dir, 'run', '--listen', '/ip4/127.0.0.1/tcp/0', '--no-mdns', '--api', '127.0.0.1:0'];
  if (peer) args.push('--peer', peer);
  args.push(...extra);
  const p = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(p);
  let out = '';
  let err = '';
  p.stderr.on('data', d => { err = (err + d).slice(-20000); });
  return new Promise((resolveP, reject) => {
    const t = setTimeout(() => reject(new Error(`${name} did not start: ${out}\n${err}`)), 30000);
    p.on('exit', code => reject(new Error(`${name} exited ${code}: ${err}`)));
    p.stdout.on('data', d => {
      out += d;
      const listen = out.match(/listening on (\S+)/);
      const web = out.match(/web app: (\S+)/);
      const api = out.match(/local API on (\S+)/);
      if (listen && web && api && out.includes('press Ctrl-C')) {
        clearTimeout(t);
        const member = JSON.parse(mmls(dir, 'id', '--json')).member;
        resolveP({ name, dir, listen: listen[1], login: web[1], base: api[1], member, proc: p });
      }
    });
  });
}

async function browserFor(name) {
  const profile = join(root, 'chromium-' + name);
  mkdirSync(profile);
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: CHROME_ARGS,
    viewport: { width: 1100, height: 760 },
  });
  contexts.push(ctx);
  const page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(30000);
  page.on('pageerror', e => console.log(`# ${name} page error: ${e.message}`));
  return { ctx, page };
}

async function cleanup() {
  for (const c of contexts) { try { await c.close(); } catch (_) { /* gone */ } }
  for (const p of procs) { if (p.exitCode === null) p.kill('SIGTERM'); }
  await new Promise(r => setTimeout(r, 1500));
  for (const p of procs) { if (p.exitCode === null) p.kill('SIGKILL'); }
  rmSync(root, { recursive: true, force: true });
}

const watchdog = setTimeout(async () => {
  console.log(`not ok - the whole run took longer than ${TIMEOUT} ms`);
  await cleanup();
  process.exit(1);
}, TIMEOUT);

async function main() {
  const alice = await startNode('alice');
  // Bob's node prefers ChaCha20 (0x0003): in a universe accepting 1 and 3
  // the two send groups are in different suites.
  const bob = await startNode('bob', alice.listen, ['--suites', '3,1']);
  ok('two nodes run on 127.0.0.1');

  await check('no session cookie: no page and no data (401)', async () => {
    for (const path of ['/', '/assets/app.js', '/v1/universes', '/v1/id']) {
      const r = await fetch(alice.base + path);
      assert(r.status === 401, `${path} gave ${r.status}`);
      const body = await r.text();
      assert(!body.includes(alice.member), `${path} leaks the member id`);
    }
    const bad = await fetch(alice.base + '/login?token=00' + 'ab'.repeat(31));
    assert(bad.status === 401, 'a wrong login token is refused');
  });

  const A = await browserFor('alice');
  const B = await browserFor('bob');

  await check('the browser without a cookie gets the 401 page, not the app', async () => {
    const r = await A.page.goto(alice.base + '/');
    assert(r.status() === 401, 'status ' + r.status());
    assert((await A.page.textContent('body')).includes('mmls open'), 'tells how to log in');
  });

  await check('login with the one-time link sets an HttpOnly SameSite=Strict cookie', async () => {
    await A.page.goto(alice.login);
    await A.page.waitForSelector('h1:text("Universes")');
    const cookies = await A.ctx.cookies(alice.base);
    const c = cookies.find(x => x.name.startsWith('mmls_session_'));
    assert(c && c.httpOnly && c.sameSite === 'Strict', JSON.stringify(cookies));
    assert(await A.page.evaluate(() => document.cookie) === '', 'the cookie is invisible to scripts');
    const csp = (await (await A.page.request.get(alice.base + '/')).headers())['content-security-policy'];
    assert(csp && csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'), 'CSP ' + csp);
  });

  await check('a login link works only once', async () => {
    const r = await fetch(alice.login);
    assert(r.status === 401, 'second use gave ' + r.status);
  });

  let uid = null;
  await check('create a universe from the page', async () => {
    await A.page.fill('#new-name', 'field-team');
    await A.page.fill('#new-members', bob.member);
    await A.page.fill('#new-suites', '1, 0x0003');
    await A.page.click('#create');
    await A.page.waitForURL(/#\/u\/[0-9a-f]{64}$/, { timeout: 40000 });
    uid = A.page.url().split('/u/')[1];
    await A.page.waitForSelector('#universe-name:text("field-team")');
  });

  const evil = 'hello bob <script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">';
  await check('send from the page: the own message shows, marked as ours', async () => {
    await A.page.fill('#text', evil);
    await A.page.click('#send');
    const mine = A.page.locator('#messages li.mine .text').last();
    await mine.waitFor();
    assert(await mine.textContent() === evil, 'own text shown verbatim');
  });

  await check('the message arrives in the other node\'s page, script shown as text', async () => {
    await B.page.goto(bob.login);
    await B.page.waitForSelector('h1:text("Universes")');
    // The list is live (no reload): the universe shows up once bob's node
    // has processed the Welcome.
    await B.page.locator(`a[href="#/u/${uid}"]`).waitFor({ timeout: 40000 });
    await B.page.click(`a[href="#/u/${uid}"]`);
    const theirs = B.page.locator('#messages li:not(.mine)').first();
    await theirs.waitFor({ timeout: 40000 });
    assert(await theirs.locator('.text').textContent() === evil, 'text verbatim');
    assert(await theirs.locator('.who').textContent() === 'alice', 'sender shown by its announced name');
    assert(await B.page.locator('#messages script, #messages img').count() === 0, 'no element from the text');
    assert(await B.page.evaluate(() => window.__pwned) === undefined, 'the script did not run');
  });

  await check('the sender sees "received by 1 of 1"', async () => {
    await A.page.locator('#messages li.mine .receipt:text("received by 1 of 1")').waitFor({ timeout: 40000 });
  });

  let bobUser = null;
  await check('a reply appears live in the sender\'s page (event stream, no reload)', async () => {
    // Bob's node becomes a device of a user first (`mmls device link`):
    // his reply is then attributed to that user.
    bobUser = JSON.parse(mmls(bob.dir, 'device', 'link', '--json')).user;
    assert(/^u:/.test(bobUser), 'a user id: ' + bobUser);
    await B.page.fill('#text', 'hi alice, got it');
    await B.page.press('#text', 'Enter');
    await B.page.locator('#messages li.mine .text:text("hi alice, got it")').waitFor();
    await A.page.locator('#messages li:not(.mine) .text:text("hi alice, got it")').waitFor({ timeout: 20000 });
    const order = await A.page.locator('#messages li').evaluateAll(ls => ls.map(l => l.dataset.mine));
    assert(JSON.stringify(order) === '["1","0"]', 'own then theirs, in order: ' + order);
    if (SHOTS) { mkdirSync(SHOTS, { recursive: true }); await A.page.screenshot({ path: join(SHOTS, 'web-conversation.png') }); }
  });

  await check('a linked device\'s text names its user and the device', async () => {
    const theirs = A.page.locator('#messages li:not(.mine)').last();
    const user = theirs.locator('.user');
    await user.waitFor({ timeout: 10000 });
    assert(await user.getAttribute('data-user') === bobUser, 'the user: ' + await user.getAttribute('data-user'));
    const label = await user.textContent();
    assert(label.startsWith(bobUser.slice(0, 8)) && label.includes('device'), 'label: ' + label);
    assert(await theirs.locator('.who').textContent() === 'bob', 'the device by its name');
  });

  await check('members view: names, link, epochs', async () => {
    await A.page.click('#tab-members');
    const row = A.page.locator(`#members tr[data-member="${bob.member}"]`);
    await row.waitFor();
    await row.locator('.name:text("bob")').waitFor();
    await row.locator('.badge:text("connected")').waitFor({ timeout: 15000 });
    assert(await row.locator('.user').getAttribute('data-user') === bobUser, 'bob\'s row names his user');
    if (SHOTS) await A.page.screenshot({ path: join(SHOTS, 'web-members.png') });
  });

  await check('a local nickname overrides the announced name', async () => {
    const row = A.page.locator(`#members tr[data-member="${bob.member}"]`);
    await row.locator('input').fill('Bobby (field)');
    await row.locator('button:text("Save")').click();
    await row.locator('.name:text("Bobby (field)")').waitFor();
    const contacts = JSON.parse(mmls(alice.dir, 'contact', 'list', '--json'));
    assert(contacts.some(c => c.member === bob.member && c.nickname === 'Bobby (field)' && c.announced === 'bob'), JSON.stringify(contacts));
  });

  await check('health view: groups, epochs, peers', async () => {
    await A.page.click('#tab-health');
    await A.page.locator('#health [data-stat="members connected"] .v:text("1 of 1")').waitFor({ timeout: 15000 });
    assert(await A.page.locator('#groups tbody tr').count() === 2, 'two send groups');
    assert(await A.page.locator('#health [data-stat="accepted suites"] .v').textContent() === '0x0001, 0x0003', 'accepted suites as created');
    const suites = (await A.page.locator('#groups td[data-col="suite"]').allTextContents()).sort();
    assert(JSON.stringify(suites) === '["0x0001","0x0003"]', 'each owner\'s suite (bob prefers 3): ' + suites);
    assert(await A.page.locator('#health [data-stat="equivocations"] .v').textContent() === '0', 'no equivocation');
    const keyUpdates = await A.page.locator('#groups td[data-col="key-update"]').allTextContents();
    assert(keyUpdates.length === 2 && keyUpdates.some(t => /now|ago/.test(t)), 'last key update per group: ' + keyUpdates.join(', '));
    assert(!(await A.page.textContent('#view')).includes('null'), 'no stray null in the page');
    // The link to bob, as the link policy sees it: up, with a round trip.
    await A.page.locator('#links td[data-col="health"] .badge').filter({ hasText: /^(good|slow|saturated)$/ }).first().waitFor({ timeout: 15000 });
    assert(await A.page.locator('#links tbody tr').count() >= 1, 'a link row per peer');
    if (SHOTS) {
      await A.page.evaluate(() => { document.getElementById('toast').hidden = true; });
      await A.page.screenshot({ path: join(SHOTS, 'web-health.png') });
    }
  });

  await check('CSRF: a state-changing request without the app header is refused', async () => {
    const status = await A.page.evaluate(async id => {
      const r = await fetch('/v1/universes/' + id + '/messages', { method: 'POST', body: '{"text":"forged"}' });
      return r.status;
    }, uid);
    assert(status === 403, 'status ' + status);
  });

  await check('the CLI shows own messages and names too', async () => {
    const out = mmls(alice.dir, 'read', uid);
    assert(/\byou\b/.test(out) && out.includes('Bobby (field)') && out.includes('received by 1 of 1'), out);
  });

  await check('log out ends the session', async () => {
    await A.page.click('#logout');
    await A.page.waitForSelector('h1:text("Not logged in")');
    const r = await A.page.request.get(alice.base + '/v1/id');
    assert(r.status() === 401, 'status ' + r.status());
  });
}

try {
  await main();
} catch (e) {
  failures += 1;
  console.log('not ok - ' + (e && e.stack ? e.stack : e));
}
clearTimeout(watchdog);
await cleanup();
console.log(failures ? `FAILED: ${failures} check(s)` : `all ${n} checks passed`);
process.exit(failures ? 1 : 0);
