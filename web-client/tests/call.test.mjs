// The web client in real headless Chromium against the real server binary.
//
// Each participant sends identifiable media (a solid colour and a sine tone, see
// web-client/testhooks.js); receivers read the centre pixel of each remote tile's video and
// the dominant frequency of its audio. Every test also asserts that no page logged a
// console error or threw.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  api, apiLogin, artifacts, closeAll, errorsOf, hears, join, launchBrowser, openLink, openPage, probe,
  sameColour, serverFeatures, silent, startServer, waitFor, waitUntilReceives,
} from './harness.mjs';

const RED = [255, 0, 0];
const GREEN = [0, 255, 0];
const BLUE = [0, 0, 255];
const TEST_TIMEOUT = 90_000;
const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };

describe('web client in Chromium', () => {
  let server;
  let browser;

  before(async () => {
    // Protocol 2 servers: an administrator, to schedule meetings where screen sharing is allowed.
    const admin = serverFeatures().adminCli ? ADMIN : null;
    [server, browser] = await Promise.all([startServer({ admin }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('three participants each see the other two colours and hear the other two tones', { timeout: TEST_TIMEOUT }, async () => {
    const room = 'three-way';
    const alice = await join(browser, server, { room, name: 'Alice', colour: RED, tone: 660 });
    const bob = await join(browser, server, { room, name: 'Bob', colour: GREEN, tone: 440 });
    const carol = await join(browser, server, { room, name: 'Nguyễn Thị Cúc', colour: BLUE, tone: 880 });
    const all = [alice, bob, carol];
    try {
      await Promise.all(all.map((me) => waitUntilReceives(me, all.filter((p) => p !== me))));

      // Every remote tile gets a measured connection-quality level, from getStats counters
      // that show decoded video and received audio.
      for (const me of all) {
        await waitFor(async () => (await probe(me)).remotes.every((r) => ['good', 'fair', 'poor'].includes(r.quality)
          && r.videoStats?.framesDecoded > 0 && r.audioStats?.packetsReceived > 0), {
          message: `${me.name}'s quality indicators and receive statistics`,
        });
      }

      fs.mkdirSync(artifacts, { recursive: true });
      await alice.page.screenshot({ path: path.join(artifacts, 'three-way-call.png') });
      assert.deepEqual(errorsOf(all), []);
    } finally {
      await closeAll(all);
    }
  });

  test('muting a microphone silences its tone at the receivers and shows the mute icon; leaving removes the tile', { timeout: TEST_TIMEOUT }, async () => {
    const room = 'mute-and-leave';
    const alice = await join(browser, server, { room, name: 'Alice', colour: RED, tone: 660 });
    const bob = await join(browser, server, { room, name: 'Bob', colour: GREEN, tone: 440 });
    const carol = await join(browser, server, { room, name: 'Carol', colour: BLUE, tone: 880 });
    const all = [alice, bob, carol];
    try {
      await Promise.all(all.map((me) => waitUntilReceives(me, all.filter((p) => p !== me))));

      const aliceId = (await probe(alice)).me;
      await alice.page.click('#mic-button');
      await alice.page.locator('#mic-button.off').waitFor();
      for (const receiver of [bob, carol]) {
        await waitFor(async () => {
          const { remotes } = await probe(receiver);
          const a = remotes.find((r) => r.name === 'Alice');
          const other = remotes.find((r) => r.name !== 'Alice');
          // Alice is silent and marked muted, while the third participant is still heard.
          return a.micMuted && a.micIcon && silent(a.tone, 660) && hears(other.tone, other.name === 'Bob' ? 440 : 880);
        }, { message: `${receiver.name} to hear Alice muted` });
        await receiver.page.locator(`.tile[data-key="p${aliceId}"] .mic-off`).filter({ visible: true }).waitFor();
      }

      await alice.page.click('#mic-button');
      await waitFor(async () => {
        const a = (await probe(bob)).remotes.find((r) => r.name === 'Alice');
        return !a.micMuted && !a.micIcon && hears(a.tone, 660);
      }, { message: 'Bob to hear Alice again after unmute' });

      const carolId = (await probe(carol)).me;
      await carol.page.click('#leave-button');
      await carol.page.locator('#lobby-message[data-key="lobby.left"]').waitFor();
      for (const receiver of [alice, bob]) {
        await waitFor(async () => {
          const { remotes } = await probe(receiver);
          const tiles = await receiver.page.locator(`.tile[data-participant-id="${carolId}"]`).count();
          return remotes.length === 1 && tiles === 0;
        }, { message: `${receiver.name} to drop Carol's tile` });
      }
      assert.deepEqual(errorsOf(all), []);
    } finally {
      await closeAll(all);
    }
  });

  test('a page without camera/microphone permission joins receive-only and still sees and hears the others', { timeout: TEST_TIMEOUT }, async () => {
    const denied = await launchBrowser({ fakeUi: false });
    const room = 'receive-only';
    const alice = await join(browser, server, { room, name: 'Alice', colour: RED, tone: 660 });
    const bob = await join(browser, server, { room, name: 'Bob', colour: GREEN, tone: 440 });
    let viewer;
    try {
      viewer = await openPage(denied, `${server.url}?test=1&room=${room}`, { label: 'Viewer' });
      // The preview asked for the camera and microphone and was refused: say so, offer to watch.
      await viewer.page.locator('#lobby-message[data-key="error.permissionDenied"]').waitFor();
      await viewer.page.locator('#receive-only').filter({ visible: true }).waitFor();
      await viewer.page.fill('#name-input', 'Viewer');
      await viewer.page.click('#join-button');
      viewer.name = 'Viewer';
      await waitUntilReceives(viewer, [alice, bob]);

      const sent = await viewer.page.evaluate(() => window.meetTest.sent);
      const offers = sent.filter((m) => m.type === 'offer');
      assert.ok(offers.length > 0 && offers.every((o) => o.publish.length === 0), 'receive-only offers publish nothing');
      const candidates = sent.filter((m) => m.type === 'candidate' && m.candidate).map((m) => m.candidate);
      assert.ok(candidates.length > 0, 'trickles candidates');
      assert.ok(candidates.every((c) => c.includes('.local')), `only mDNS host candidates without permission: ${candidates}`);

      // The others see the viewer as a participant without media, microphone marked off.
      for (const sender of [alice, bob]) {
        await waitFor(async () => {
          const v = (await probe(sender)).remotes.find((r) => r.name === 'Viewer');
          return v && v.tileName === 'Viewer' && v.micIcon;
        }, { message: `${sender.name} to show the viewer's tile` });
      }
      assert.deepEqual(errorsOf([alice, bob, viewer]), []);
    } finally {
      await closeAll([alice, bob, ...(viewer ? [viewer] : [])]);
      await denied.close();
    }
  });

  test('a shared screen arrives as its own tile and goes away when sharing stops', { timeout: TEST_TIMEOUT }, async () => {
    let alice;
    let bob;
    if (server.legacy) {
      // Protocol 1: everyone may present.
      const room = 'screen-share';
      alice = await join(browser, server, { room, name: 'Alice', colour: RED, tone: 660, params: { screen: '255,255,0' } });
      bob = await join(browser, server, { room, name: 'Bob', colour: GREEN, tone: 440 });
    } else {
      // Protocol 2: only hosts and presenters present. A meeting whose host is Alice.
      const token = await apiLogin(server, ADMIN);
      const start = Date.now() + 60 * 60_000;
      const created = await api(server, 'POST', '/api/meetings', {
        token,
        json: { title: 'Screen share', starts_at: start, ends_at: start + 3_600_000, admission: 'host', invitations: [{ role: 'participant', name: 'Bob' }] },
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const hostLink = created.body.invitations.find((i) => i.role === 'host').join_path;
      const bobLink = created.body.invitations.find((i) => i.name === 'Bob').join_path;
      alice = await openLink(browser, server, hostLink, { name: 'Admin', colour: RED, tone: 660, params: { screen: '255,255,0' } });
      await waitFor(() => alice.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'the host joins' });
      await alice.page.evaluate(() => window.meetTest.host.openRoom());
      await waitFor(() => alice.page.evaluate(() => window.meetTest.roomState()?.open), { message: 'the room opens' });
      bob = await openLink(browser, server, bobLink, { name: 'Bob', colour: GREEN, tone: 440 });
      await waitFor(() => bob.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'Bob joins' });
    }
    const presenter = alice.name;
    try {
      await waitUntilReceives(bob, [alice]);
      await alice.page.click('#share-button');
      await waitFor(async () => {
        const a = (await probe(bob)).remotes.find((r) => r.name === presenter);
        // The camera keeps its colour; the screen is a second, yellow tile.
        return sameColour(a.screenColour, [255, 255, 0]) && sameColour(a.colour, RED);
      }, { message: `Bob to see ${presenter}'s screen` });
      assert.equal(await bob.page.locator('#stage .tile[data-source="screen"]').count(), 1);
      const offer = (await alice.page.evaluate(() => window.meetTest.sent)).filter((m) => m.type === 'offer').at(-1);
      assert.deepEqual(offer.publish.map((p) => p.source).sort(), ['camera', 'microphone', 'screen']);
      if (!server.legacy) {
        // A participant has no screen-share button.
        assert.equal(await bob.page.locator('#share-button').isVisible(), false);
      }

      await alice.page.click('#share-button');
      await waitFor(async () => (await bob.page.locator('.tile[data-source="screen"]').count()) === 0, {
        message: `${presenter}'s screen tile to go away`,
      });
      assert.deepEqual(errorsOf([alice, bob]), []);
    } finally {
      await closeAll([alice, bob]);
    }
  });

  test('after a dropped connection the page shows "Reconnecting…" and rejoins by itself', { timeout: TEST_TIMEOUT }, async () => {
    const room = 'blip';
    const alice = await join(browser, server, { room, name: 'Alice', colour: RED, tone: 660 });
    const bob = await join(browser, server, { room, name: 'Bob', colour: GREEN, tone: 440 });
    try {
      await waitUntilReceives(alice, [bob]);
      const joins = () => alice.page.evaluate(() => window.meetTest.sent.filter((m) => m.type === 'join'));
      assert.equal((await joins()).length, 1);
      await alice.page.evaluate(() => window.meetTest.dropConnection());
      await waitFor(async () => (await probe(alice)).state === 'joined' && (await joins()).length === 2, {
        message: 'Alice to rejoin',
      });
      if (!server.legacy) {
        // The rejoin presents the secret from `joined`, to take over the earlier session.
        const [, again] = await joins();
        assert.ok(typeof again.resume === 'string' && again.resume.length > 0, `resume: ${JSON.stringify(again)}`);
      }
      // The banner was shown while away (however briefly), and is gone now.
      const shown = await alice.page.evaluate(() => window.meetTest.bannerShown);
      assert.ok(shown.length > 0 && shown[0].startsWith('Reconnecting…'), `banner: ${shown}`);
      await alice.page.locator('#banner').waitFor({ state: 'hidden' });
      await waitUntilReceives(alice, [bob]);
      await waitUntilReceives(bob, [alice]);
      assert.equal((await probe(bob)).remotes.length, 1, 'Bob sees the rejoined Alice once');
      assert.deepEqual(errorsOf([alice, bob]), []);
    } finally {
      await closeAll([alice, bob]);
    }
  });

  test('clear messages: protocol version mismatch, server unreachable, connection lost', { timeout: TEST_TIMEOUT }, async () => {
    const pages = [];
    try {
      const mismatch = await openPage(browser, `${server.url}?test=1&protocol=99`, { label: 'mismatch' });
      pages.push(mismatch);
      await mismatch.page.fill('#room-input', 'r');
      await mismatch.page.fill('#name-input', 'Old client');
      await mismatch.page.click('#join-button');
      await mismatch.page.locator('#lobby-message[data-key="error.versionMismatch"]').waitFor();

      // A server that went away after its page loaded: the socket cannot open. Chromium logs
      // that failure itself, which is the one console error expected here (with the favicon,
      // if it was still being fetched).
      const gone = await startServer();
      const gonePort = new URL(gone.url).port;
      let unreachable;
      try {
        unreachable = await openPage(browser, `${gone.url}?test=1`, {
          label: 'unreachable',
          expectedErrors: [
            new RegExp(`WebSocket connection to 'wss://127\\.0\\.0\\.1:${gonePort}/ws' failed`),
            /^Failed to load resource: net::ERR_CONNECTION_(REFUSED|CLOSED|RESET)$/,
          ],
        });
        pages.push(unreachable);
      } finally {
        await gone.stop('SIGKILL');
      }
      await unreachable.page.fill('#room-input', 'r');
      await unreachable.page.fill('#name-input', 'Someone');
      await unreachable.page.click('#join-button');
      await unreachable.page.locator('#lobby-message[data-key="error.unreachable"]').waitFor();
      // Messages follow the language switch.
      await unreachable.page.selectOption('#lang-select', 'vi');
      await waitFor(async () => (await unreachable.page.textContent('#lobby-message')).includes('Không kết nối được'), {
        message: 'the Vietnamese message',
      });

      // A server that goes away for good: "Reconnecting…", then a clear message.
      const doomed = await startServer();
      let lost;
      try {
        const port = new URL(doomed.url).port;
        lost = await openPage(browser, `${doomed.url}?test=1&reconnect_s=2`, {
          label: 'lost',
          // Once the server is killed, reconnecting (and any late request, e.g. the favicon)
          // is refused; a request in flight at the moment of the kill is cut instead.
          expectedErrors: [
            new RegExp(`WebSocket connection to 'wss://127\\.0\\.0\\.1:${port}/ws' failed`),
            /^Failed to load resource: net::ERR_CONNECTION_(REFUSED|CLOSED|RESET)$/,
          ],
        });
        pages.push(lost);
        await lost.page.fill('#room-input', 'r');
        await lost.page.fill('#name-input', 'Someone');
        await lost.page.click('#join-button');
        await waitFor(() => lost.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'join' });
      } finally {
        await doomed.stop('SIGKILL');
      }
      await lost.page.locator('#lobby-message[data-key="error.connectionLost"]').waitFor();
      const shown = await lost.page.evaluate(() => window.meetTest.bannerShown);
      assert.ok(shown.length > 0 && shown[0].startsWith('Reconnecting…'), `banner: ${shown}`);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
