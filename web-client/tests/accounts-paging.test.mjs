// The administrator's accounts page pages and searches on the server, in headless Chromium
// against the real server: with 121 accounts (120 imported by CSV and the administrator) it
// shows 50 at a time with the total, steps forward and back, searches by username and by site
// name (a search of more than a page pages too), says when nothing matches, and disabling an
// account keeps the page where it was.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  api, apiLogin, closeAll, errorsOf, launchBrowser, openPage, serverFeatures, signInOrganizer, startServer, waitFor,
} from './harness.mjs';

const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
const SITES_CSV = 'code,name,kind,parent_code\nHN,Thành phố Hà Nội,province,\nBD,Phường Ba Đình,commune,HN\nLC,Xã Lũng Cú,commune,HN\n';
const ACCOUNTS = 120;
/** room-001 … room-080 belong to Ba Đình, room-081 … room-120 to Lũng Cú. */
const BA_DINH = 80;
const username = (n) => `room-${String(n).padStart(3, '0')}`;

function accountsCsv() {
  const lines = ['username,display_name,role,site_code'];
  for (let n = 1; n <= ACCOUNTS; n++) lines.push(`${username(n)},Phòng họp ${n},site_operator,${n <= BA_DINH ? 'BD' : 'LC'}`);
  return `${lines.join('\n')}\n`;
}

/** Usernames from `from` to `to`, both included. */
const usernames = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => username(from + i));

/** What the page shows now, read in one go. */
const shown = (page) => page.evaluate(() => ({
  range: document.querySelector('#accounts-range')?.textContent ?? null,
  rows: [...document.querySelectorAll('#accounts-list tr.account-row')].map((r) => r.dataset.username),
  none: !!document.querySelector('#no-accounts'),
  prev: document.querySelector('#accounts-prev')?.disabled,
  next: document.querySelector('#accounts-next')?.disabled,
}));

const features = serverFeatures();
const skip = !features.adminCli && 'needs a meet-server with accounts';
if (skip && process.env.CI) throw new Error(`accounts paging test: ${skip}`);

describe('the accounts page', { skip }, () => {
  let server;
  let browser;

  before(async () => {
    [server, browser] = await Promise.all([startServer({ openRooms: false, admin: ADMIN }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('pages of 50 with the total, search by username and site, disable in place', { timeout: 90_000 }, async () => {
    const token = await apiLogin(server, ADMIN);
    const sites = await api(server, 'POST', '/api/sites/import', { token, csv: SITES_CSV });
    assert.ok([200, 201].includes(sites.status), JSON.stringify(sites.body));
    const imported = await api(server, 'POST', '/api/accounts/import', { token, csv: accountsCsv() });
    assert.ok([200, 201].includes(imported.status), JSON.stringify(imported.body).slice(0, 500));

    const pages = [];
    try {
      const org = await openPage(browser, `${server.url}organizer.html`, { label: 'admin', waitForJoinButton: false });
      pages.push(org);
      const op = org.page;
      await signInOrganizer(op, ADMIN);
      await op.click('#org-nav button[data-view="accounts"]');

      // Waits until the page shows `range` and returns what it shows then.
      const until = (range, what) => waitFor(async () => {
        const s = await shown(op);
        return s.range === range && s;
      }, { message: `${what}: "${range}"` });
      const expectPage = async (range, rows, { prev, next }, what) => {
        const s = await until(range, what);
        assert.deepEqual(s.rows, rows, what);
        assert.deepEqual([s.prev, s.next], [prev, next], `${what}: previous and next ${prev ? 'off' : 'on'}, ${next ? 'off' : 'on'}`);
      };

      // By username: the administrator, then the rooms; 50 a page, 121 in all.
      await expectPage('1–50 of 121', ['admin', ...usernames(1, 49)], { prev: true, next: false }, 'the first page');
      await op.click('#accounts-next');
      await expectPage('51–100 of 121', usernames(50, 99), { prev: false, next: false }, 'the second page');
      await op.click('#accounts-next');
      await expectPage('101–121 of 121', usernames(100, 120), { prev: false, next: true }, 'the last page');
      await op.click('#accounts-prev');
      await expectPage('51–100 of 121', usernames(50, 99), { prev: false, next: false }, 'back to the second page');

      // Disabling an account reloads the page it is on, not the first.
      await op.click('tr.account-row[data-username="room-077"] button');
      await op.locator('tr.account-row.disabled[data-username="room-077"]').waitFor();
      assert.equal((await shown(op)).range, '51–100 of 121');
      assert.equal(await op.textContent('tr.account-row[data-username="room-077"] td:nth-child(5)'), 'Disabled');
      assert.equal(await op.textContent('tr.account-row[data-username="room-078"] td:nth-child(5)'), 'Awaiting activation');

      // A search goes back to its first page: a part of the username…
      await op.fill('#account-search', 'room-11');
      await expectPage('1–10 of 10', usernames(110, 119), { prev: true, next: true }, 'the search "room-11"');
      // …a site's name, more than a page of it, paged…
      await op.fill('#account-search', 'Ba Đình');
      await expectPage(`1–50 of ${BA_DINH}`, usernames(1, 50), { prev: true, next: false }, 'the search "Ba Đình"');
      await op.click('#accounts-next');
      await expectPage(`51–${BA_DINH} of ${BA_DINH}`, usernames(51, BA_DINH), { prev: false, next: true }, 'its second page');
      assert.equal(await op.textContent('tr.account-row[data-username="room-051"] td:nth-child(3)'), 'Phường Ba Đình');
      // …and nothing.
      await op.fill('#account-search', 'nobody at all');
      await waitFor(async () => (await shown(op)).none, { message: 'no account matches' });
      const nothing = await shown(op);
      assert.deepEqual([nothing.range, nothing.rows, nothing.prev, nothing.next], ['', [], true, true]);

      // Emptied, the search shows everyone again from the first page.
      await op.fill('#account-search', '');
      await expectPage('1–50 of 121', ['admin', ...usernames(1, 49)], { prev: true, next: false }, 'the search emptied');
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
