// The attendance board at the start of a national meeting, in headless Chromium against the
// real server: a directory of 3 provinces and 345 communes, a meeting inviting all of them,
// and 300 bots joining with the sites' invitation links, unevenly (150, 100 and 50 communes of
// the three provinces, some communes absent in each). The API's per-province counts must be
// exactly those, and the organizer's board, open while the bots arrive, must show them with
// the provinces missing most first and the absent sites first; when 30 bots of one province
// leave, both follow.
//
// The bots are signaling clients (the `ws` package): each opens the server's WebSocket and
// joins with its site's token, as a browser or a load-test bot does, and stays until it
// leaves. They send no media: a site is present once the server has admitted it, so media
// would only cost this 2-core test its time.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import {
  api, apiLogin, closeAll, errorsOf, launchBrowser, openPage, serverFeatures, signInOrganizer, startServer, waitFor,
} from './harness.mjs';

const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
/** Each province's communes, and how many of them join. The province's own site stays away. */
const PROVINCES = [
  { code: 'HN', name: 'Thành phố Hà Nội', communes: 160, joining: 150 },
  { code: 'HP', name: 'Thành phố Hải Phòng', communes: 130, joining: 100 },
  { code: 'CB', name: 'Tỉnh Cao Bằng', communes: 55, joining: 50 },
];
const BOTS = PROVINCES.reduce((n, p) => n + p.joining, 0);
/** Bots of Cao Bằng that leave once everyone is in. */
const LEAVING = 30;
/** Bots joining at once (each a TLS handshake and a join on a 2-core machine). */
const JOINS_AT_ONCE = 20;

/**
 * The directory. Commune codes are handed out in turn across the provinces (X0001 to HN, X0002
 * to HP, …), so that no range of codes is one province's: only the directory's parents say
 * which province a commune counts under.
 */
function directory() {
  const lines = ['code,name,kind,parent_code'];
  const communes = new Map(PROVINCES.map((p) => [p.code, []]));
  for (const p of PROVINCES) lines.push(`${p.code},${p.name},province,`);
  let n = 0;
  for (let i = 0; i < Math.max(...PROVINCES.map((p) => p.communes)); i++) {
    for (const p of PROVINCES.filter((x) => i < x.communes)) {
      n++;
      const code = `X${String(n).padStart(4, '0')}`;
      lines.push(`${code},Xã ${n},commune,${p.code}`);
      communes.get(p.code).push(code);
    }
  }
  return { csv: `${lines.join('\n')}\n`, communes };
}

/** A fixed shuffle (mulberry32), so that the absent communes are spread, and the same each run. */
function shuffled(items, seed) {
  let s = seed >>> 0;
  const random = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/**
 * One bot: opens `/ws` (no Origin, as a non-browser client) and joins with `token`. Resolves
 * once the server answers `joined`; anything else first (the lobby, an error, a close) fails.
 */
function joinBot(server, token, name) {
  const url = new URL('/ws', server.url.replace(/^https:/, 'wss:'));
  const ws = new WebSocket(url, { rejectUnauthorized: false });
  return new Promise((resolve, reject) => {
    const fail = (why) => {
      ws.terminate();
      reject(new Error(`bot ${name}: ${why}`));
    };
    ws.once('open', () => ws.send(JSON.stringify({ type: 'join', protocol_version: 2, token })));
    ws.on('message', function first(data) {
      const message = JSON.parse(String(data));
      if (message.type === 'pong' || message.type === 'room_counts') return;
      ws.off('message', first);
      if (message.type !== 'joined') fail(`answered ${String(data).slice(0, 200)}`);
      else resolve({ name, ws, closed: new Promise((done) => ws.once('close', done)) });
    });
    // Kept after the join too: an error event without a listener would end the test process.
    ws.on('error', (err) => fail(err.message));
    ws.once('close', (code) => fail(`closed (${code}) before joining`));
  });
}

/** Joins every bot, `JOINS_AT_ONCE` at a time. */
async function joinAll(server, invitations) {
  const bots = [];
  let next = 0;
  const worker = async () => {
    while (next < invitations.length) {
      const invitation = invitations[next++];
      bots.push(await joinBot(server, invitation.join_path.split('#join=')[1], invitation.site_code));
    }
  };
  await Promise.all(Array.from({ length: JOINS_AT_ONCE }, worker));
  return bots;
}

/** The board as drawn now, read in one go (it is redrawn every 2 s). */
const readBoard = (page) => page.evaluate(() => ({
  summary: document.querySelector('#attendance-summary')?.textContent ?? null,
  provinces: [...document.querySelectorAll('#attendance tr.province-row')].map((r) => ({
    code: r.dataset.provinceCode,
    cells: [...r.cells].slice(0, 4).map((c) => c.textContent),
    missing: r.querySelector('.missing-list').textContent,
  })),
  sites: [...document.querySelectorAll('#attendance tr.attendance-site')].map((r) => ({
    code: r.dataset.siteCode, present: r.classList.contains('present'),
  })),
}));

const features = serverFeatures();
const skip = !features.adminCli && 'needs a meet-server with accounts and meetings';
if (skip && process.env.CI) throw new Error(`attendance scale test: ${skip}`);

describe(`the attendance board with ${BOTS} bots from ${PROVINCES.length} provinces`, { skip }, () => {
  let server;
  let browser;
  const bots = [];

  before(async () => {
    // Every bot connects from 127.0.0.1: more than the default 256 connections per address.
    [server, browser] = await Promise.all([
      startServer({ openRooms: false, admin: ADMIN, extraArgs: ['--max-connections-per-ip', '0'] }),
      launchBrowser(),
    ]);
  }, { timeout: 60_000 });

  after(async () => {
    for (const bot of bots) bot.ws.terminate();
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('per-province present and absent counts in the API and on the board, the missing first', { timeout: 120_000 }, async () => {
    const token = await apiLogin(server, ADMIN);
    const { csv, communes } = directory();
    const imported = await api(server, 'POST', '/api/sites/import', { token, csv });
    assert.ok([200, 201].includes(imported.status), JSON.stringify(imported.body));
    const sites = (await api(server, 'GET', '/api/sites', { token })).body;
    assert.equal(sites.length, PROVINCES.length + PROVINCES.reduce((n, p) => n + p.communes, 0));

    // Open from a minute ago, admitted as the meeting's time says: the bots go straight in.
    const start = Date.now() - 60_000;
    const created = await api(server, 'POST', '/api/meetings', {
      token,
      json: {
        title: 'Hội nghị trực tuyến', starts_at: start, ends_at: start + 3_600_000, admission: 'scheduled',
        invitations: sites.map((s) => ({ role: 'viewer', site_id: s.id })),
      },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body).slice(0, 500));
    const meetingId = created.body.id;
    const invitationOf = new Map(created.body.invitations.filter((i) => i.site_code).map((i) => [i.site_code, i]));

    // Who joins: a spread-out share of each province's communes; the rest, and every
    // province's own site, stay away.
    const joining = new Map(PROVINCES.map((p, i) => [p.code, shuffled(communes.get(p.code), i + 1).slice(0, p.joining)]));
    const nameOf = new Map(sites.map((s) => [s.code, s.name]));
    // What the API must say when the communes in `present` (by province) are in the room: the
    // provinces missing most first, then by code (the server compares codes by their bytes,
    // as `<` does on these ASCII codes).
    const expected = (present) => PROVINCES.map((p) => {
      const here = new Set(present.get(p.code));
      const missing = [p.code, ...communes.get(p.code)].filter((c) => !here.has(c)).sort();
      return { code: p.code, invited: p.communes + 1, present: here.size, absent: p.communes + 1 - here.size, missing };
    }).sort((a, b) => b.absent - a.absent || (a.code < b.code ? -1 : 1));

    const pages = [];
    try {
      // The organizer's meeting page is open before anyone arrives, as at a meeting's start.
      const org = await openPage(browser, `${server.url}organizer.html`, { label: 'organizer', waitForJoinButton: false });
      pages.push(org);
      await signInOrganizer(org.page, ADMIN, meetingId);
      await org.page.locator('#attendance-summary').waitFor();

      const started = performance.now();
      bots.push(...await joinAll(server, [...joining.values()].flat().map((code) => invitationOf.get(code))));
      const joinedMs = Math.round(performance.now() - started);
      assert.equal(bots.length, BOTS);

      // The API, once the server has recorded every arrival: exactly these counts per
      // province, the most missing first, and the absent sites named.
      const check = async (present, total) => {
        const attendance = await waitFor(async () => {
          const res = await api(server, 'GET', `/api/meetings/${meetingId}/attendance`, { token });
          return res.body.sites?.filter((s) => s.present).length === total && res.body;
        }, { message: `${total} sites present in the API` });
        assert.deepEqual(attendance.provinces.map((p) => ({
          code: p.code, invited: p.invited, present: p.present, absent: p.absent, missing: p.missing.map((m) => m.code),
        })), expected(present));
        assert.deepEqual(attendance.provinces.map((p) => p.name), expected(present).map((e) => nameOf.get(e.code)));

        // The board, within its refresh: one row per province in the same order with the same
        // counts, the first missing sites by name, and the absent sites at the top of the list.
        const want = expected(present);
        const absentCodes = new Set(want.flatMap((p) => p.missing));
        const board = await waitFor(async () => {
          const b = await readBoard(org.page);
          return b.summary?.startsWith(`${total} of ${sites.length}`) && b;
        }, { message: `the board to show ${total} present` });
        assert.deepEqual(board.provinces.map((p) => ({ code: p.code, cells: p.cells })), want.map((p) => ({
          code: p.code, cells: [nameOf.get(p.code), String(p.present), String(p.absent), String(p.invited)],
        })));
        for (const [i, p] of want.entries()) {
          const names = p.missing.slice(0, 8).map((c) => nameOf.get(c)).join(', ');
          assert.ok(board.provinces[i].missing.startsWith(names), `${p.code} missing: ${board.provinces[i].missing}`);
        }
        const absentShown = board.sites.slice(0, absentCodes.size);
        assert.ok(absentShown.every((s) => !s.present && absentCodes.has(s.code)), 'the absent sites come first');
        assert.ok(board.sites.slice(absentCodes.size).every((s) => s.present), 'then the present ones');
        return board;
      };
      await check(joining, BOTS);
      const shownMs = Math.round(performance.now() - started);

      // Thirty sites of Cao Bằng leave: it becomes the province missing most.
      const leaving = new Set(joining.get('CB').slice(0, LEAVING));
      const gone = bots.filter((b) => leaving.has(b.name));
      for (const bot of gone) bot.ws.send(JSON.stringify({ type: 'leave' }));
      await Promise.all(gone.map((b) => b.closed));
      const staying = new Map(joining);
      staying.set('CB', joining.get('CB').filter((c) => !leaving.has(c)));
      const board = await check(staying, BOTS - LEAVING);
      assert.equal(board.provinces[0].code, 'CB');

      process.stderr.write(`attendance scale: ${BOTS} bots joined in ${joinedMs} ms, `
        + `the board showed them ${shownMs} ms after the first join\n`);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
