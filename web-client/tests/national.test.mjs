// The organizer's pages at the size of the national meeting, in headless Chromium against the
// real server: a directory of 1 central site, 63 provinces and 3,320 communes (3,384 sites).
// The organizer selects every province and all the communes of two provinces as groups of the
// site tree, sets a group's role, schedules, exports the links as CSV, opens the printable
// links and the meeting's page; then schedules a meeting of all 3,384 sites and opens its
// page. Timings are printed (no timing assertions: speed is measured, not asserted).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  api, apiLogin, closeAll, errorsOf, launchBrowser, openPage, serverFeatures, signInOrganizer, startServer, waitFor,
} from './harness.mjs';

const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
const PROVINCES = 63;
const COMMUNES = 3320;

/** The directory: P01…P63, communes spread over them (52 or 53 each), and the centre. */
function directoryCsv() {
  const lines = ['code,name,kind,parent_code', 'TW,Trung ương,central,'];
  for (let p = 1; p <= PROVINCES; p++) lines.push(`P${String(p).padStart(2, '0')},Tỉnh ${String(p).padStart(2, '0')},province,`);
  for (let c = 0; c < COMMUNES; c++) {
    const p = (c % PROVINCES) + 1;
    lines.push(`X${String(c + 1).padStart(4, '0')},Xã ${c + 1},commune,P${String(p).padStart(2, '0')}`);
  }
  return `${lines.join('\n')}\n`;
}
const communesOf = (p) => Math.floor(COMMUNES / PROVINCES) + (p <= COMMUNES % PROVINCES ? 1 : 0);

/** Parses RFC 4180 CSV (quoted cells, doubled quotes). */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(cell);
      cell = '';
    } else if (c === '\n') {
      row.push(cell.replace(/\r$/, ''));
      rows.push(row);
      row = [];
      cell = '';
    } else cell += c;
  }
  return rows;
}

const features = serverFeatures();
const skip = !features.adminCli && 'needs a meet-server with accounts and meetings';
if (skip && process.env.CI) throw new Error(`national test: ${skip}`);

describe('organizer pages at national scale (3,384 sites)', { skip }, () => {
  let server;
  let browser;

  before(async () => {
    [server, browser] = await Promise.all([startServer({ openRooms: false, admin: ADMIN }), launchBrowser()]);
    const token = await apiLogin(server, ADMIN);
    const imported = await api(server, 'POST', '/api/sites/import', { token, csv: directoryCsv() });
    assert.ok([200, 201].includes(imported.status), JSON.stringify(imported.body));
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('groups of the site tree, a group role, scheduling, the links as CSV and on paper, the meeting page', { timeout: 240_000 }, async () => {
    const pages = [];
    const timings = {};
    const timed = async (name, fn) => {
      const start = performance.now();
      const result = await fn();
      timings[name] = Math.round(performance.now() - start);
      return result;
    };
    try {
      const org = await openPage(browser, `${server.url}organizer.html`, { label: 'organizer', waitForJoinButton: false });
      pages.push(org);
      const op = org.page;
      await signInOrganizer(op, ADMIN);
      await op.locator('#new-meeting').waitFor();

      await timed('open the scheduling form', async () => {
        await op.click('#new-meeting');
        await op.locator('#site-tree details[data-group="P63"]').waitFor();
      });
      // The checkbox and its label sit on one line.
      const box = await op.locator('#meeting-confidential').boundingBox();
      const label = await op.locator('label.checkbox:has(#meeting-confidential) span').boundingBox();
      assert.ok(Math.abs(box.y + box.height / 2 - (label.y + label.height / 2)) < 8 && label.x > box.x, 'checkbox beside its label');

      await op.fill('#meeting-title', 'Hội nghị toàn quốc');
      // Every site at once, then none: the count follows.
      await timed('select all 3,384 sites', async () => {
        await op.click('#pick-all');
        await waitFor(async () => (await op.textContent('#chosen-count')).includes('3384'), { message: 'all sites chosen' });
      });
      await op.click('#pick-none');
      await waitFor(async () => (await op.textContent('#chosen-count')).includes('0'), { message: 'none chosen' });

      // Every province, and all the communes of P01 and P02 (group checkboxes).
      await op.click('#pick-provinces');
      await op.check('#site-tree input[data-group="P01"]');
      await op.check('#site-tree input[data-group="P02"]');
      const expected = PROVINCES + communesOf(1) + communesOf(2);
      await waitFor(async () => (await op.textContent('#chosen-count')).includes(String(expected)), { message: `${expected} sites chosen` });
      // P03 is partly chosen (its own site only): its group box says so.
      assert.equal(await op.evaluate(() => document.querySelector('#site-tree input[data-group="P03"]').indeterminate), true);
      // P02's sites attend as viewers: the group's role.
      await op.selectOption('#site-tree select[data-group-role="P02"]', 'viewer');
      // Opened, P02 lists its communes, each with the group's role.
      await op.click('#site-tree details[data-group="P02"] > summary .group-tally');
      await op.locator('#site-tree details[data-group="P02"] li[data-site-code="X0002"]').waitFor();
      assert.equal(await op.inputValue('#site-tree details[data-group="P02"] li[data-site-code="X0002"] select'), 'viewer');
      // The search finds a commune by name among 3,384.
      await op.fill('#site-search', 'Xã 3319');
      await waitFor(async () => (await op.locator('#site-picker li[data-site-code]').count()) === 1, { message: 'the search to find one commune' });
      await op.fill('#site-search', '');

      const created = await timed('schedule (submit → the meeting page)', async () => {
        const [response] = await Promise.all([
          op.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/meetings'),
          op.click('#meeting-submit'),
        ]);
        assert.equal(response.status(), 201, await response.text());
        await op.locator('#invitations-shown').waitFor();
        return response.json();
      });
      const sites = created.invitations.filter((i) => i.site_id);
      assert.equal(sites.length, expected);
      assert.ok(sites.filter((i) => i.role === 'viewer').length === communesOf(2) + 1, 'P02 and its communes are viewers');

      // The links as CSV: one row per invitation, each a join link of this server.
      const [download] = await Promise.all([op.waitForEvent('download'), op.click('#export-links')]);
      const rows = parseCsv(fs.readFileSync(await download.path(), 'utf8'));
      assert.deepEqual(rows[0], ['code', 'name', 'role', 'province', 'link']);
      assert.equal(rows.length - 1, created.invitations.length);
      const origin = new URL(server.url).origin;
      assert.ok(rows.slice(1).every((r) => r[4].startsWith(`${origin}/#join=`)), 'every row has a join link');
      const x0002 = rows.find((r) => r[0] === 'X0002');
      assert.deepEqual([x0002[2], x0002[3]], ['viewer', 'Tỉnh 02']);

      // Printable: one section per province (and the people), every link on paper.
      await timed('open the printable links', async () => {
        await op.click('#print-links-button');
        await op.locator('#print-links .print-row').first().waitFor();
      });
      assert.equal(await op.locator('#print-links .print-row').count(), created.invitations.length);
      await op.click('button:has-text("Back")');

      // The meeting's page, opened afresh: the first rows, the count, a filter.
      await timed('open the meeting page', async () => {
        await op.reload();
        await op.locator(`.meeting-row[data-meeting-id="${created.id}"]`).click();
        await op.locator('#invitations-shown').waitFor();
      });
      assert.match(await op.textContent('#invitations-shown'), new RegExp(`of ${created.invitations.length}`));
      await op.fill('#invitation-filter', 'Tỉnh 02');
      await waitFor(async () => (await op.locator('tr.invitation').count()) === communesOf(2) + 1, { message: 'the filter to show P02' });

      // The national meeting: every site, through the API as the form sends it.
      const token = await apiLogin(server, ADMIN);
      const directory = (await api(server, 'GET', '/api/sites', { token })).body;
      const start = Date.now() + 3_600_000;
      const national = await timed('save a meeting of all 3,384 sites (API)', async () => api(server, 'POST', '/api/meetings', {
        token,
        json: {
          title: 'Toàn quốc', starts_at: start, ends_at: start + 3_600_000, admission: 'host',
          invitations: directory.map((s) => ({ role: 'participant', site_id: s.id })),
        },
      }));
      assert.equal(national.status, 201, JSON.stringify(national.body).slice(0, 500));
      await timed('open the page of the 3,384-site meeting', async () => {
        await op.click('#org-nav button[data-view="meetings"]');
        await op.locator(`.meeting-row[data-meeting-id="${national.body.id}"]`).click();
        await waitFor(async () => (await op.textContent('#invitations-shown') ?? '').includes('3385'), { message: 'the national meeting page' });
      });
      process.stderr.write(`national-scale organizer timings (ms): ${JSON.stringify(timings)}\n`);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
