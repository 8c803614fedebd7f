// Sites sign in and join with one click, in headless Chromium against the real server. An
// administrator imports the accounts of two communes' meeting rooms by CSV; one activates its
// account from its activation link (remembered on this device), sees the meeting that invites
// its site under "My meetings", and joins it with one click: the host sees and hears it. The
// other site's account does not see that meeting and cannot join it; once the invitation is
// revoked, the meeting leaves the first site's list.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  api, apiLogin, closeAll, errorsOf, launchBrowser, openLink, openPage, probe, serverFeatures, startServer, waitFor,
} from './harness.mjs';

const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
const SITES_CSV = 'code,name,kind,parent_code\nHN,Thành phố Hà Nội,province,\nBD,Phường Ba Đình,commune,HN\nLC,Xã Lũng Cú,commune,HN\n';
const ACCOUNTS_CSV = 'username,display_name,role,site_code\nbd-room,Phòng họp Ba Đình,site_operator,BD\nlc-room,Phòng họp Lũng Cú,site_operator,LC\n';
const RED = [255, 0, 0];

/** Rows of a simple CSV (no quoted commas in what this test reads). */
const csvRows = (text) => text.trim().split(/\r?\n/).map((line) => line.split(','));

const features = serverFeatures();
const skip = !features.adminCli && 'needs a meet-server with accounts and meetings';
if (skip && process.env.CI) throw new Error(`site accounts test: ${skip}`);

describe('site accounts', { skip }, () => {
  let server;
  let browser;

  before(async () => {
    [server, browser] = await Promise.all([startServer({ openRooms: false, admin: ADMIN }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('a site activates its account, sees its meeting and joins with one click; another site cannot', { timeout: 150_000 }, async () => {
    const token = await apiLogin(server, ADMIN);
    const sites = await api(server, 'POST', '/api/sites/import', { token, csv: SITES_CSV });
    assert.ok([200, 201].includes(sites.status), JSON.stringify(sites.body));
    const imported = await api(server, 'POST', '/api/accounts/import', { token, csv: ACCOUNTS_CSV });
    assert.ok([200, 201].includes(imported.status), JSON.stringify(imported.body));
    const [head, ...rows] = csvRows(imported.body);
    const column = (name) => head.indexOf(name);
    const activation = (username) => rows.find((r) => r[column('username')] === username)[column('activation_link')];
    assert.ok(activation('bd-room').includes('#activate='), imported.body);

    const directory = (await api(server, 'GET', '/api/sites', { token })).body;
    const bd = directory.find((s) => s.code === 'BD');
    const start = Date.now() + 10 * 60_000;
    const created = await api(server, 'POST', '/api/meetings', {
      token,
      json: {
        title: 'Giao ban', starts_at: start, ends_at: start + 3_600_000, admission: 'host',
        invitations: [{ role: 'participant', site_id: bd.id }],
      },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const meetingId = created.body.id;
    const hostPath = created.body.invitations.find((i) => i.role === 'host').join_path;
    const siteInvitation = created.body.invitations.find((i) => i.site_id === bd.id);

    const pages = [];
    try {
      // The host is in the room, and opens it.
      const host = await openLink(browser, server, hostPath, { name: 'Admin', colour: RED, tone: 660 });
      pages.push(host);
      await waitFor(() => host.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'the host joins' });
      await host.page.evaluate(() => window.meetTest.host.openRoom());

      // The meeting room of Ba Đình activates its account, remembered on this device.
      const site = await openPage(browser, new URL(activation('bd-room'), server.url).toString(), { label: 'Ba Đình', waitForJoinButton: false });
      pages.push(site);
      await site.page.locator('#activate-form').waitFor();
      await site.page.fill('#activate-password', 'a long enough passphrase');
      await site.page.fill('#activate-password2', 'a long enough passphrase');
      await site.page.click('#activate-button');
      const row = site.page.locator(`.my-meeting[data-meeting-id="${meetingId}"]`);
      await row.waitFor();
      assert.equal(await site.page.evaluate(() => !!localStorage.getItem('meet.orgToken')), true, 'remembered on this device');
      // Remembered: a fresh page of the same browser context is still signed in.
      await site.page.reload();
      await row.waitFor();

      // One click, and the host sees the site's camera and hears it.
      await row.locator('.join-meeting').click();
      await site.page.waitForURL((url) => url.hash.startsWith('#join='));
      await waitFor(async () => {
        const remote = (await probe(host)).remotes.find((r) => r.name === 'Phường Ba Đình');
        return remote?.videoStats?.framesDecoded > 0 && remote?.audioStats?.packetsReceived > 0;
      }, { message: 'the host to see and hear Ba Đình' });

      // The other commune's account sees no such meeting and cannot join it.
      const other = await api(server, 'POST', '/api/activate', { json: { token: new URL(activation('lc-room'), server.url).hash.split('=')[1], password: 'another long passphrase' } });
      assert.equal(other.status, 200, JSON.stringify(other.body));
      const lc = other.body.token;
      const lcMine = (await api(server, 'GET', '/api/my/meetings', { token: lc })).body;
      assert.equal([...lcMine.now, ...lcMine.upcoming, ...lcMine.past].some((m) => m.meeting_id === meetingId), false);
      assert.equal((await api(server, 'POST', `/api/my/meetings/${meetingId}/join`, { token: lc })).status, 404);

      // Revoked, the invitation takes the meeting off Ba Đình's list.
      const revoked = await api(server, 'DELETE', `/api/meetings/${meetingId}/invitations/${siteInvitation.id}`, { token });
      assert.ok([200, 204].includes(revoked.status), JSON.stringify(revoked.body));
      // A new tab of the same browser: still signed in (remembered), the meeting gone.
      const again = await site.context.newPage();
      await again.goto(`${server.url}organizer.html`);
      await again.locator('#my-meetings').waitFor();
      assert.equal(await again.locator(`.my-meeting[data-meeting-id="${meetingId}"]`).count(), 0);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
