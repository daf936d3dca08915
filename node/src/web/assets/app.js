// The mmls web app: plain DOM, no framework, no HTML from data (every text
// goes through textContent). Talks to the node's /v1 API with the session
// cookie; state-changing requests carry X-Mmls-Request: 1 (CSRF check).
'use strict';

const state = { me: null, route: null, timers: [], source: null, lastConv: '' };

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: { 'X-Mmls-Request': '1' } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    showLoggedOut();
    throw new Error('not logged in');
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const msg = data && data.error ? data.error.message : ('HTTP ' + r.status);
    throw new Error(msg);
  }
  return data;
}

function toast(msg, error) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = error ? 'toast error' : 'toast';
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

function short(id) { return id ? id.slice(-6) : ''; }
function shortHex(id) { return id ? id.slice(0, 8) : ''; }

function who(name, id) {
  return name ? name : short(id);
}

function fmtTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString()
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString();
}

function ago(ms) {
  if (!ms) return 'never (since start)';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 5) return 'now';
  if (s < 90) return s + ' s ago';
  if (s < 5400) return Math.round(s / 60) + ' min ago';
  if (s < 172800) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' days ago';
}

/** MLS ciphersuites by code point (RFC 9420 17.1; the ones a node implements). */
const SUITES = {
  1: 'MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519',
  2: 'MLS_128_DHKEMP256_AES128GCM_SHA256_P256',
  3: 'MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519',
};
function suiteCode(n) { return '0x' + n.toString(16).padStart(4, '0'); }
function suiteCell(n) { return h('span', { class: 'mono', title: SUITES[n] || 'unknown suite', text: suiteCode(n) }); }

function badge(text, kind) { return h('span', { class: 'badge' + (kind ? ' ' + kind : ''), text }); }

function main() { return document.getElementById('main'); }

function every(ms, f) { state.timers.push(setInterval(f, ms)); }

function stopLive() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  if (state.source) { state.source.close(); state.source = null; }
}

function showLoggedOut() {
  stopLive();
  main().replaceChildren(h('div', { class: 'card' },
    h('h1', { text: 'Not logged in' }),
    h('p', {}, 'Run ', h('code', { text: 'mmls open' }), ' and open the link it prints. Each link works once.')));
}

function showError(e) {
  main().replaceChildren(h('div', { class: 'card' }, h('h1', { text: 'Something went wrong' }),
    h('p', { text: String(e && e.message ? e.message : e) }), h('a', { href: '#/', text: 'Back to universes' })));
}

// ----------------------------------------------------------------- routes

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'u' && /^[0-9a-f]{64}$/.test(parts[1] || '')) {
    return { view: parts[2] || 'chat', id: parts[1] };
  }
  return { view: 'home' };
}

async function route() {
  stopLive();
  state.route = parseRoute();
  state.lastConv = '';
  try {
    if (state.route.view === 'home') await homeView();
    else await universeView(state.route.id, state.route.view);
  } catch (e) {
    if (e.message !== 'not logged in') showError(e);
  }
}

// ------------------------------------------------------------------- home

function universeList(universes) {
  return universes.length === 0
    ? h('div', { class: 'empty', text: 'No universe yet. Create one below, or wait to be added by someone.' })
    : h('table', { id: 'universes' },
        h('thead', {}, h('tr', {}, ['Universe', 'Id', 'Members', 'State'].map(t => h('th', { text: t })))),
        h('tbody', {}, universes.map(u => h('tr', {},
          h('td', {}, h('a', { href: '#/u/' + u.id, class: 'universe-link', text: u.name || '(waiting for its definition)' })),
          h('td', { class: 'mono', title: u.id, text: shortHex(u.id) }),
          h('td', { text: String(u.roster.length) }),
          h('td', {}, healthBadges(u))))));
}

async function homeView() {
  const [universes, contacts] = await Promise.all([api('GET', '/v1/universes'), api('GET', '/v1/contacts')]);
  const list = h('div', { id: 'universe-list' }, universeList(universes));
  let last = JSON.stringify(universes);
  every(3000, async () => {
    try {
      const us = await api('GET', '/v1/universes');
      const key = JSON.stringify(us);
      if (key !== last) { last = key; list.replaceChildren(universeList(us)); }
    } catch (_) { /* shown on the next navigation */ }
  });
  const name = h('input', { id: 'new-name', placeholder: 'field-team', maxlength: 256, required: true });
  const members = h('textarea', { id: 'new-members', rows: 3, placeholder: 'member ids (12D3KooW…), one per line' });
  const suites = h('input', { id: 'new-suites', placeholder: '1 (default); e.g. 1,3',
    title: 'Ciphersuite code points the universe accepts, preferred first (1, 2, 3)' });
  const chips = h('div', { class: 'chips' }, contacts.map(c => h('button', {
    type: 'button', class: 'secondary', title: c.member, text: (c.name || short(c.member)) + ' +',
    onclick: () => { members.value = (members.value.trim() + '\n' + c.member).trim(); },
  })));
  const form = h('form', { class: 'card', id: 'create-form' },
    h('h2', { text: 'Create a universe' }),
    h('label', { for: 'new-name', text: 'Name' }), name,
    h('label', { for: 'new-members', text: 'Members' }), members,
    contacts.length ? h('div', { class: 'muted' }, 'Known people: ', chips) : null,
    h('label', { for: 'new-suites', text: 'Ciphersuites (optional)' }), suites,
    h('p', {}, h('button', { type: 'submit', id: 'create', text: 'Create' })));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const ids = members.value.split(/[\s,]+/).map(s => s.trim()).filter(Boolean);
    const btn = document.getElementById('create');
    btn.disabled = true;
    btn.textContent = 'Creating… (waiting for members’ keys)';
    try {
      const body = { name: name.value, members: ids };
      const codes = suites.value.split(/[\s,]+/).filter(Boolean).map(Number);
      if (codes.some(c => !Number.isInteger(c) || c < 1 || c > 0xffff)) throw new Error('ciphersuites: code points such as 1, 3 or 0x0003');
      if (codes.length) body.ciphersuites = codes;
      const r = await api('POST', '/v1/universes', body);
      location.hash = '#/u/' + r.id;
    } catch (e) {
      toast(e.message, true);
      btn.disabled = false;
      btn.textContent = 'Create';
    }
  });
  main().replaceChildren(h('h1', { text: 'Universes' }), list, form);
}

function healthBadges(u) {
  const out = [];
  if (u.removed) out.push(badge('removed', 'bad'));
  if (u.equivocations.length) out.push(badge('equivocation', 'bad'));
  const stale = u.groups.filter(g => g.stale).length;
  if (stale) out.push(badge(stale + ' stale', 'warn'));
  const buffered = u.groups.reduce((a, g) => a + g.buffered, 0);
  if (buffered) out.push(badge(buffered + ' buffered', 'warn'));
  if (!out.length) out.push(badge('ok', 'ok'));
  return out;
}

// --------------------------------------------------------------- universe

async function universeView(id, view) {
  const u = await api('GET', '/v1/universes/' + id);
  const tab = (v, label) => h('a', { href: '#/u/' + id + (v === 'chat' ? '' : '/' + v), class: v === view ? 'active' : '', id: 'tab-' + v, text: label });
  const body = h('div', { id: 'view' });
  main().replaceChildren(
    h('h1', { id: 'universe-name', text: u.name || '(waiting for its definition)' }),
    h('div', { class: 'muted mono', title: u.id, text: 'universe ' + u.id }),
    h('nav', { class: 'tabs' }, tab('chat', 'Conversation'), tab('members', 'Members'), tab('health', 'Health')),
    body);
  if (view === 'members') return membersView(id, body);
  if (view === 'health') return healthView(id, body);
  return chatView(id, body);
}

function receiptText(r) {
  if (!r) return 'sent';
  if (r.of === 0) return 'sent (no other members)';
  return 'received by ' + r.received_by + ' of ' + r.of;
}

function renderConversation(list, entries) {
  const key = JSON.stringify(entries);
  if (key === state.lastConv) return;
  state.lastConv = key;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  if (!entries.length) {
    list.replaceChildren(h('li', { class: 'empty', text: 'No messages yet.' }));
    return;
  }
  list.replaceChildren(...entries.map(m => h('li', {
    class: 'msg' + (m.mine ? ' mine' : ''), 'data-seq': m.seq, 'data-mine': m.mine ? '1' : '0',
  },
    h('div', { class: 'meta' },
      h('span', { class: 'who', title: m.sender, text: m.mine ? 'you' : who(m.sender_name, m.sender) }),
      m.user ? h('span', { class: 'user', title: m.user, 'data-user': m.user,
        text: (m.user.startsWith('u:') ? m.user.slice(0, 8) : m.user) + ' · device ' + short(m.sender) }) : null,
      h('span', { text: fmtTime(m.at) })),
    h('div', { class: 'text', text: m.text }),
    m.mine ? h('div', {
      class: 'receipt' + (m.receipt && m.receipt.of > 0 && m.receipt.received_by === m.receipt.of ? ' all' : ''),
      title: m.receipt ? m.receipt.by.join('\n') : '',
      text: receiptText(m.receipt),
    }) : null)));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

async function chatView(id, body) {
  const list = h('ol', { class: 'messages', id: 'messages' });
  const input = h('textarea', { id: 'text', placeholder: 'Write a message (Enter sends, Shift+Enter for a new line)', maxlength: 60000 });
  const btn = h('button', { type: 'submit', id: 'send', text: 'Send' });
  const form = h('form', { class: 'send', id: 'send-form' }, input, btn);
  body.replaceChildren(h('div', { class: 'card' }, list, form));
  let pending = null;
  const refresh = async () => {
    try { renderConversation(list, await api('GET', '/v1/universes/' + id + '/conversation?limit=500')); }
    catch (e) { if (e.message !== 'not logged in') toast(e.message, true); }
  };
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 150); };
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    btn.disabled = true;
    try {
      await api('POST', '/v1/universes/' + id + '/messages', { text });
      input.value = '';
      await refresh();
    } catch (e) { toast(e.message, true); }
    btn.disabled = false;
    input.focus();
  });
  input.addEventListener('keydown', ev => {
    if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
  });
  await refresh();
  list.scrollTop = list.scrollHeight;
  // Live: every event of this universe triggers a refresh; receipts come
  // from summaries and commits, so they are polled too.
  const src = new EventSource('/v1/universes/' + id + '/stream');
  for (const name of ['message', 'sent', 'member_added', 'member_removed', 'committed', 'rejoined', 'lagged']) {
    src.addEventListener(name, soon);
  }
  state.source = src;
  every(2000, refresh);
  input.focus();
}

async function membersView(id, body) {
  const [u, me] = await Promise.all([api('GET', '/v1/universes/' + id), api('GET', '/v1/id')]);
  const amAdmin = u.admins.includes(me.member);
  const table = h('table', { id: 'members' });
  const render = ms => {
    table.replaceChildren(
      h('thead', {}, h('tr', {}, ['Name', 'Member id', 'Role', 'Link', 'Last seen', 'Epochs', 'State', ''].map(t => h('th', { text: t })))),
      h('tbody', {}, ms.map(m => {
        const nick = h('input', { value: m.nickname || '', placeholder: m.announced || 'nickname', 'aria-label': 'nickname', maxlength: 64 });
        const save = h('button', { type: 'button', class: 'secondary', text: 'Save', onclick: async () => {
          try {
            if (nick.value.trim()) await api('PUT', '/v1/contacts/' + encodeURIComponent(m.member), { name: nick.value });
            else await api('DELETE', '/v1/contacts/' + encodeURIComponent(m.member));
            toast('Saved');
            load();
          } catch (e) { toast(e.message, true); }
        } });
        const remove = amAdmin && !m.me ? h('button', { type: 'button', class: 'danger', text: 'Remove', onclick: async () => {
          if (!confirm('Remove ' + who(m.name, m.member) + ' from this universe?')) return;
          try { await api('DELETE', '/v1/universes/' + id + '/members/' + encodeURIComponent(m.member)); toast('Removed'); load(); }
          catch (e) { toast(e.message, true); }
        } }) : null;
        return h('tr', { 'data-member': m.member },
          h('td', {}, h('div', { class: 'name', text: m.me ? (m.name || 'you') + ' (you)' : who(m.name, m.member) }),
            m.me ? null : h('div', { class: 'row' }, nick, save),
            m.announced && m.nickname ? h('div', { class: 'muted', text: 'calls itself ' + m.announced }) : null,
            m.user ? h('div', { class: 'muted user', title: m.user, 'data-user': m.user,
              text: 'device of ' + (m.user.startsWith('u:') ? m.user.slice(0, 8) : m.user) }) : null),
          h('td', { class: 'mono', title: m.member, text: '…' + m.member.slice(-12) }),
          h('td', {}, m.admin ? badge('admin') : null),
          h('td', {}, m.me ? badge('this node', 'ok') : (m.connected ? badge('connected', 'ok') : badge('not connected'))),
          h('td', { text: m.me ? '' : ago(m.last_seen) }),
          h('td', {}, h('div', { text: 'its group: ' + (m.group_epoch ?? '–') }),
            m.me ? null : h('div', { text: 'acked ours: ' + (m.acked_epoch ?? '–') + (m.epoch_lag != null ? ' (lag ' + m.epoch_lag + ')' : '') })),
          h('td', {}, m.stale ? badge('stale: rejoining', 'warn') : badge('ok', 'ok')),
          h('td', {}, remove));
      })));
  };
  const load = async () => {
    try { render(await api('GET', '/v1/universes/' + id + '/members')); }
    catch (e) { if (e.message !== 'not logged in') toast(e.message, true); }
  };
  const addInput = h('input', { id: 'add-member', placeholder: 'member id (12D3KooW…)' });
  const addForm = h('form', { class: 'card', id: 'add-form' }, h('h2', { text: 'Add a member' }),
    amAdmin ? h('div', { class: 'row' }, addInput, h('button', { type: 'submit', text: 'Add' }))
      : h('p', { class: 'muted', text: 'Only admins add and remove members.' }));
  addForm.addEventListener('submit', async ev => {
    ev.preventDefault();
    try { await api('POST', '/v1/universes/' + id + '/members', { member: addInput.value.trim() }); addInput.value = ''; toast('Added'); load(); }
    catch (e) { toast(e.message, true); }
  });
  body.replaceChildren(table, h('p', { class: 'muted', text: 'Names are labels: announced by each member, or your own nickname. The member id is what identifies someone.' }), addForm);
  await load();
  every(3000, load);
}

/** How each link health shows. */
const LINK_BADGE = { good: 'ok', slow: 'warn', saturated: 'warn', silent: 'bad', down: 'bad' };

/** Bytes in KB or MB, for the link table. */
function kb(n) {
  return n >= 1e6 ? (n / 1e6).toFixed(1) + ' MB' : (n / 1e3).toFixed(1) + ' KB';
}

async function healthView(id, body) {
  const load = async () => {
    let u, ms, peers, st;
    try {
      [u, ms, peers, st] = await Promise.all([api('GET', '/v1/universes/' + id), api('GET', '/v1/universes/' + id + '/members'), api('GET', '/v1/peers'), api('GET', '/v1/status')]);
    } catch (e) { if (e.message !== 'not logged in') toast(e.message, true); return; }
    const names = Object.fromEntries(ms.map(m => [m.member, m.me ? 'you' : who(m.name, m.member)]));
    const others = ms.filter(m => !m.me);
    const connected = others.filter(m => m.connected).length;
    const buffered = u.groups.reduce((a, g) => a + g.buffered, 0);
    const stat = (k, v, kind) => h('div', { class: 'stat', 'data-stat': k }, h('div', { class: 'v' + (kind ? ' ' + kind : ''), text: String(v) }), h('div', { class: 'k', text: k }));
    body.replaceChildren(...[
      h('div', { class: 'grid', id: 'health' },
        stat('members connected', connected + ' of ' + others.length),
        stat('peers connected', peers.length),
        stat('send groups', u.groups.length),
        stat('buffered entries', buffered),
        stat('pending imports', u.pending_imports),
        stat('equivocations', u.equivocations.length),
        stat('accepted suites', (u.ciphersuites || []).map(suiteCode).join(', '))),
      u.removed ? h('p', {}, badge('this node was removed from the universe', 'bad')) : null,
      u.equivocations.length ? h('div', { class: 'card' }, h('h2', { text: 'Equivocations' }),
        h('ul', {}, u.equivocations.map(e => h('li', { text: names[e.owner] || e.owner, title: e.owner }, ' showed two states of its group at epoch ' + e.epoch)))) : null,
      h('h2', { text: 'Send groups' }),
      h('table', { id: 'groups' },
        h('thead', {}, h('tr', {}, ['Owner', 'Suite', 'Epoch', 'Last key update', 'Next seq', 'Buffered', 'State', 'Waiting for', 'Readers', 'Epoch auth'].map(t => h('th', { text: t })))),
        h('tbody', {}, u.groups.map(g => h('tr', {},
          h('td', { title: g.owner, text: names[g.owner] || short(g.owner) }),
          h('td', { 'data-col': 'suite' }, suiteCell(g.ciphersuite)),
          h('td', { text: String(g.epoch) }),
          h('td', { 'data-col': 'key-update', text: g.last_key_update ? ago(g.last_key_update) : 'not seen' }),
          h('td', { text: String(g.next_seq) }),
          h('td', { text: String(g.buffered) }),
          h('td', {}, g.stale ? badge('stale', 'warn') : g.blocked ? badge('blocked', 'warn') : badge('ok', 'ok')),
          h('td', { class: 'mono', text: g.waiting_for || '' }),
          h('td', { text: String(g.members) }),
          h('td', { class: 'mono', text: g.auth }))))),
      h('p', { class: 'muted', text: 'Epoch lag per member (what it acknowledged of your group) is on the Members tab.' }),
      h('h2', { text: 'Links' }),
      h('table', { id: 'links' },
        h('thead', {}, h('tr', {}, ['Peer', 'Health', 'Round trip', 'Rate', 'Queued', 'Closed after silence of', 'In', 'Out'].map(t => h('th', { text: t })))),
        h('tbody', {}, (st.links || []).map(l => h('tr', { 'data-peer': l.peer_id },
          h('td', { title: l.peer_id, text: names[l.peer_id] || short(l.peer_id) }),
          h('td', { 'data-col': 'health' }, badge(l.health, LINK_BADGE[l.health] || 'warn')),
          h('td', { text: l.rtt_ms == null ? '?' : l.rtt_ms + ' ms' }),
          h('td', { text: l.health === 'down' ? '' : kb(l.rate_bytes_per_s) + '/s' }),
          h('td', { text: l.health === 'down' ? 'redial in ' + (l.redial_in_ms / 1000).toFixed(1) + ' s' : (l.queue_ms / 1000).toFixed(1) + ' s' }),
          h('td', { text: l.health === 'down' ? '' : (l.allowance_ms / 1000).toFixed(1) + ' s' }),
          h('td', { text: kb(l.received_bytes) }),
          h('td', { text: kb(l.sent_bytes) }))))),
      h('p', { class: 'muted', text: 'A slow or saturated link is still up: the node waits longer for it, as its round trip and queue explain.' }),
    ].filter(Boolean));
  };
  await load();
  every(3000, load);
}

// ------------------------------------------------------------------ start

async function start() {
  document.getElementById('logout').addEventListener('click', async () => {
    try { await api('POST', '/logout'); } catch (_) { /* logged out anyway */ }
    showLoggedOut();
  });
  try {
    state.me = await api('GET', '/v1/id');
  } catch (e) {
    if (e.message !== 'not logged in') showError(e);
    return;
  }
  document.getElementById('me').textContent = state.me.name + ' · …' + state.me.member.slice(-6);
  document.getElementById('me').title = state.me.member;
  const net = async () => {
    try {
      const p = await api('GET', '/v1/peers');
      document.getElementById('net').textContent = p.length + (p.length === 1 ? ' peer' : ' peers') + ' connected';
    } catch (_) { /* shown by the views */ }
  };
  net();
  setInterval(net, 5000);
  window.addEventListener('hashchange', route);
  route();
}

start();
