// The organizer pages and join links in real headless Chromium against the real server binary
// (protocol 2, REST API, `meet-server admin create`), started WITHOUT --open-rooms: only
// invitation links get in.
//
// An administrator signs in on organizer.html, imports sites from CSV (a bad file is refused
// with its bad lines listed), schedules a meeting (the host admits) inviting one site; the
// host opens the creator's link, the site opens its own and waits in the lobby, the host
// admits it from the roster panel and each sees the other's colour. A tampered link and a
// tokenless join are refused with their messages, and the attendance board shows the site.
// Last, confidential meetings: end-to-end encrypted by default (a lock in the list), unless
// the organizer unchecks it, then or later.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  closeAll, errorsOf, launchBrowser, openLink, openPage, probe, serverFeatures, signInOrganizer, startServer, waitFor,
  waitUntilReceives,
} from './harness.mjs';

const RED = [255, 0, 0];
const GREEN = [0, 255, 0];
const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
const SITE = { code: 'HN-BD', name: 'Phường Ba Đình' };
const GOOD_CSV = [
  'code,name,kind,parent_code',
  'HN,Thành phố Hà Nội,province,',
  `${SITE.code},"${SITE.name}",commune,HN`,
  'LC,Lào Cai,province,',
  '',
].join('\n');
// Line 3: unknown kind; line 4: unknown parent.
const BAD_CSV = [
  'code,name,kind,parent_code',
  'OK1,Fine,province,',
  'BAD1,Wrong kind,planet,',
  'BAD2,Orphan,commune,NOWHERE',
  '',
].join('\n');

/** The answer to the next `POST /api/meetings` (scheduling), checked for success. */
async function scheduledResponse(page) {
  const response = await page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/meetings');
  assert.equal(response.status(), 201, await response.text());
  return response;
}

const features = serverFeatures();
const skip = !(features.openRooms && features.adminCli)
  && 'needs a meet-server with protocol 2 (--open-rooms) and `admin create`';
// Under CI the server is built from this checkout: a missing feature is a failure.
if (skip && process.env.CI) throw new Error(`organizer test: ${skip}`);

describe('organizer pages and join links', { skip }, () => {
  let server;
  let browser;

  before(async () => {
    [server, browser] = await Promise.all([startServer({ openRooms: false, admin: ADMIN }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('schedule a meeting, join by link, wait in the lobby, be admitted; bad links refused', { timeout: 150_000 }, async () => {
    const pages = [];
    try {
      // ---- sign in ----
      const org = await openPage(browser, `${server.url}organizer.html`, {
        label: 'organizer',
        waitForJoinButton: false,
        // The refused CSV import answers 422, which Chromium logs.
        expectedErrors: [/status of 422/],
      });
      pages.push(org);
      const op = org.page;
      await signInOrganizer(op, ADMIN);
      await op.locator('#new-meeting').waitFor();
      assert.equal(await op.evaluate(() => !!sessionStorage.getItem('meet.orgToken')), true);

      // ---- sites: a bad file is refused line by line, a good one imported ----
      await op.click('#org-nav button[data-view="sites"]');
      await op.locator('#sites-file').waitFor();
      await op.setInputFiles('#sites-file', { name: 'bad.csv', mimeType: 'text/csv', buffer: Buffer.from(BAD_CSV) });
      await op.click('#sites-import');
      await op.locator('#import-errors li').first().waitFor();
      const badLines = await op.locator('#import-errors li').evaluateAll((items) => items.map((li) => Number(li.dataset.line)));
      assert.deepEqual(badLines.sort(), [3, 4]);
      assert.equal(await op.getAttribute('#org-message', 'data-key'), 'org.errInvalidCsv');
      assert.equal(await op.locator('.site-row').count(), 0, 'nothing imported from a bad file');

      await op.setInputFiles('#sites-file', { name: 'sites.csv', mimeType: 'text/csv', buffer: Buffer.from(GOOD_CSV) });
      await op.click('#sites-import');
      await op.locator(`.site-row[data-site-code="${SITE.code}"]`).waitFor();
      assert.equal(await op.locator('.site-row').count(), 3);
      assert.equal(await op.getAttribute('#org-message', 'data-key'), 'org.importDone');

      // ---- schedule: in an hour, the host admits, the site invited as participant ----
      await op.click('#org-nav button[data-view="meetings"]');
      await op.click('#new-meeting');
      await op.locator('#meeting-form').waitFor();
      const { startValue, endValue, startsAt } = await op.evaluate(() => {
        const pad = (n) => String(n).padStart(2, '0');
        const local = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
        const start = new Date(Date.now() + 60 * 60_000);
        start.setSeconds(0, 0);
        return { startValue: local(start), endValue: local(new Date(start.getTime() + 90 * 60_000)), startsAt: start.getTime() };
      });
      await op.fill('#meeting-title', 'Province council');
      await op.fill('#meeting-start', startValue);
      await op.fill('#meeting-end', endValue);
      await op.selectOption('#meeting-admission', 'host');
      await op.fill('#site-search', 'Ba Đình');
      await waitFor(async () => (await op.locator('#site-picker li[data-site-code]').count()) === 1, { message: 'the search to filter the sites' });
      await op.check(`#site-picker li[data-site-code="${SITE.code}"] input[type="checkbox"]`);
      assert.equal(await op.inputValue(`#site-picker li[data-site-code="${SITE.code}"] select`), 'participant');
      // Not confidential, not end-to-end encrypted: the defaults.
      assert.equal(await op.isChecked('#meeting-confidential'), false);
      assert.equal(await op.isChecked('#meeting-e2ee'), false);
      const [created] = await Promise.all([scheduledResponse(op), op.click('#meeting-submit')]);
      const plain = await created.json();
      assert.equal(plain.confidential, false);
      assert.equal(plain.e2ee, false);

      const hostLinkInput = op.locator('tr.invitation[data-role="host"] input.link');
      await hostLinkInput.waitFor();
      const hostLink = await hostLinkInput.inputValue();
      const siteLink = await op.locator(`tr.invitation[data-site-code="${SITE.code}"] input.link`).inputValue();
      const origin = new URL(server.url).origin;
      assert.ok(hostLink.startsWith(`${origin}/#join=`), hostLink);
      assert.ok(siteLink.startsWith(`${origin}/#join=`), siteLink);
      assert.equal(await op.getAttribute(`tr.invitation[data-site-code="${SITE.code}"]`, 'data-role'), 'participant');

      // ---- the host opens its link: straight into the meeting, token gone from the address bar ----
      const host = await openLink(browser, server, hostLink, { name: ADMIN.displayName, colour: RED, tone: 660 });
      pages.push(host);
      await waitFor(() => host.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'the host to join' });
      assert.equal(await host.page.evaluate(() => window.meetTest.role()), 'host');
      assert.equal(await host.page.evaluate(() => window.meetTest.title()), 'Province council');
      assert.ok(!host.page.url().includes('join='), `token left in the address bar: ${host.page.url()}`);
      assert.equal((await host.page.evaluate(() => window.meetTest.roomState())).open, false);

      // ---- the site opens its link: the lobby, with the start time ----
      const site = await openLink(browser, server, siteLink, { name: SITE.name, colour: GREEN, tone: 440 });
      pages.push(site);
      const lobby = await waitFor(() => site.page.evaluate(() => window.meetTest.lobby()), { message: 'the site to wait in the lobby' });
      assert.equal(lobby.startsAt, startsAt);
      assert.equal(lobby.title, 'Province council');
      await site.page.locator('#waiting').filter({ visible: true }).waitFor();
      const shownStart = await site.page.textContent('#waiting-start');
      const expectedStart = await site.page.evaluate((ms) => new Intl.DateTimeFormat(document.documentElement.lang, {
        dateStyle: 'full', timeStyle: 'short',
      }).format(new Date(ms)), startsAt);
      assert.ok(shownStart.includes(expectedStart), `${shownStart} shows ${expectedStart}`);
      assert.ok(!site.page.url().includes('join='));

      // ---- the host admits it from the roster panel ----
      await host.page.click('#roster-button');
      const admit = host.page.locator('#lobby-list li', { hasText: SITE.name }).locator('button[data-action="admit"]');
      await admit.waitFor();
      await admit.click();
      await waitFor(() => site.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'the site to be admitted' });
      assert.equal(await site.page.evaluate(() => window.meetTest.role()), 'participant');
      // A participant: microphone and camera, no screen share; may raise a hand.
      assert.equal(await site.page.locator('#share-button').isVisible(), false);
      assert.equal(await site.page.locator('#hand-button').isVisible(), true);

      await waitUntilReceives(site, [host]);
      await waitUntilReceives(host, [site]);
      await host.page.locator('#people-list li', { hasText: SITE.name }).waitFor();
      const entry = (await host.page.evaluate(() => window.meetTest.roster())).find((e) => e.name === SITE.name);
      assert.equal(entry.role, 'participant');
      assert.equal((await probe(host)).remotes.length, 1);

      // A raised hand reaches the host's roster.
      await site.page.click('#hand-button');
      await waitFor(async () => (await host.page.evaluate(() => window.meetTest.roster())).some((e) => e.name === SITE.name && e.hand), {
        message: "the site's raised hand on the host's roster",
      });

      // ---- a tampered link is refused ----
      const token = siteLink.split('#join=')[1];
      const at = token.length - 10; // inside the signature
      const tampered = `${token.slice(0, at)}${token[at] === 'A' ? 'B' : 'A'}${token.slice(at + 1)}`;
      const intruder = await openLink(browser, server, `/#join=${tampered}`, { name: 'Intruder' });
      pages.push(intruder);
      await intruder.page.locator('#lobby-message[data-key="error.invalidToken"]').waitFor();

      // ---- without a link, this server (no --open-rooms) asks for one ----
      const tokenless = await openPage(browser, `${server.url}?test=1`, { label: 'tokenless' });
      pages.push(tokenless);
      await tokenless.page.fill('#room-input', 'anything');
      await tokenless.page.fill('#name-input', 'Someone');
      await tokenless.page.click('#join-button');
      await tokenless.page.locator('#lobby-message[data-key="error.tokenRequired"]').waitFor();

      // ---- the organizer's attendance board shows the site present; the CSV downloads ----
      await op.locator(`tr.attendance-site.present[data-site-code="${SITE.code}"]`).waitFor({ timeout: 20_000 });
      const [download] = await Promise.all([op.waitForEvent('download'), op.click('#export-csv')]);
      assert.match(download.suggestedFilename(), /^attendance-.*\.csv$/);
      const csv = fs.readFileSync(await download.path(), 'utf8');
      assert.ok(csv.includes(SITE.code) || csv.includes(SITE.name), csv);

      // ---- a confidential meeting is end-to-end encrypted unless unchecked ----
      const scheduleConfidential = async (title, { uncheckEncryption }) => {
        await op.click('#org-nav button[data-view="meetings"]');
        await op.click('#new-meeting');
        await op.locator('#meeting-form').waitFor();
        await op.fill('#meeting-title', title);
        await op.fill('#meeting-start', startValue);
        await op.fill('#meeting-end', endValue);
        await op.check('#meeting-confidential');
        assert.equal(await op.isChecked('#meeting-e2ee'), true, 'checking Confidential checks end-to-end encryption');
        if (uncheckEncryption) await op.uncheck('#meeting-e2ee');
        const [response] = await Promise.all([scheduledResponse(op), op.click('#meeting-submit')]);
        await op.locator('#meeting-badges').waitFor({ state: 'attached' });
        return response.json();
      };
      const secret = await scheduleConfidential('Security briefing', { uncheckEncryption: false });
      assert.equal(secret.confidential, true);
      assert.equal(secret.e2ee, true);
      await op.locator('#meeting-badges .encrypted-badge').waitFor();
      const open = await scheduleConfidential('Press briefing', { uncheckEncryption: true });
      assert.equal(open.confidential, true);
      assert.equal(open.e2ee, false);
      assert.equal(await op.locator('#meeting-badges .encrypted-badge').count(), 0);
      assert.equal(await op.locator('#meeting-badges .confidential-badge').count(), 1);

      // The list puts a lock on the encrypted meeting only.
      await op.click('#org-nav button[data-view="meetings"]');
      await op.locator(`tr.meeting-row[data-meeting-id="${secret.id}"]`).waitFor();
      const locks = await op.locator('tr.meeting-row').evaluateAll((rows) => Object.fromEntries(
        rows.map((row) => [row.dataset.meetingId, !!row.querySelector('.encrypted-badge')])));
      assert.deepEqual(locks, { [plain.id]: false, [secret.id]: true, [open.id]: false });

      // Editing shows the stored flags; turning encryption off is saved.
      await op.click(`tr.meeting-row[data-meeting-id="${secret.id}"]`);
      await op.click('#edit-meeting');
      await op.locator('#meeting-form').waitFor();
      assert.equal(await op.isChecked('#meeting-confidential'), true);
      assert.equal(await op.isChecked('#meeting-e2ee'), true);
      await op.uncheck('#meeting-e2ee');
      const [patched] = await Promise.all([
        op.waitForResponse((r) => r.request().method() === 'PATCH' && r.url().endsWith(`/api/meetings/${secret.id}`)),
        op.click('#meeting-submit'),
      ]);
      assert.equal(patched.status(), 200);
      const edited = await patched.json();
      assert.equal(edited.confidential, true);
      assert.equal(edited.e2ee, false);

      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
