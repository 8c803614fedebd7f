// The web client in Firefox ESR (Debian's firefox-esr), beside Chromium, against the real
// server binary: pages of both browsers in one meeting each see the others' colour and hear
// their tone; mute, leave, screen sharing, simulcast and end-to-end encryption work from a
// Firefox page. No page may log a console error.
//
// Firefox needs a network namespace whose default route is loopback (see firefox.mjs): where
// this process has other interfaces, the file runs itself again inside such a namespace
// (once), and each test here reports its result from that run.

import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { inLoopbackNamespace, launchFirefox, loopbackOnly } from './firefox.mjs';
import {
  api, apiLogin, closeAll, errorsOf, hears, join, launchBrowser, openLink, probe, sameColour, silent, startServer,
  waitFor, waitUntilReceives,
} from './harness.mjs';

const RED = [255, 0, 0];
const GREEN = [0, 255, 0];
const BLUE = [0, 0, 255];
const YELLOW = [255, 255, 0];
const TEST_TIMEOUT = 120_000;
const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };

const hook = (p, fn, arg) => p.page.evaluate(fn, arg);
const joined = (p) => waitFor(() => hook(p, () => window.meetTest.state() === 'joined'), { message: `${p.name} joins` });

/** A meeting scheduled through the API; returns each invitee's join path by name and the host's. */
async function schedule(server, { title, confidential = false, invitees }) {
  const token = await apiLogin(server, ADMIN);
  const start = Date.now() + 60 * 60_000;
  const created = await api(server, 'POST', '/api/meetings', {
    token,
    json: {
      title,
      starts_at: start,
      ends_at: start + 3_600_000,
      admission: 'host',
      confidential,
      invitations: invitees.map((name) => ({ role: 'participant', name })),
    },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const links = Object.fromEntries(created.body.invitations.map((i) => [i.role === 'host' ? 'host' : i.name, i.join_path]));
  return { links, e2ee: created.body.e2ee };
}

/** The host (a Firefox page, `name`) joins and opens the room. */
async function hostJoins(firefox, server, link, media) {
  const host = await openLink(firefox, server, link, media);
  await joined(host);
  await hook(host, () => window.meetTest.host.openRoom());
  await waitFor(() => hook(host, () => window.meetTest.roomState()?.open), { message: 'the room opens' });
  return host;
}

// Here (where Firefox can run), each test runs; elsewhere the whole file runs once in a
// loopback-only namespace, and each test reports its result from that run.
const here = loopbackOnly() || !!process.env.MEET_FIREFOX_ANY_NETWORK;
let nested = null;
function firefoxTest(name, fn) {
  if (here) {
    test(name, { timeout: TEST_TIMEOUT }, fn);
    return;
  }
  test(name, () => {
    nested ||= inLoopbackNamespace(fileURLToPath(import.meta.url));
    const passed = nested.output.split('\n').some((line) => line.trim().startsWith(`✔ ${name} (`));
    assert.ok(passed, `failed in the loopback-only namespace (exit ${nested.status}):\n${nested.output}`);
  });
}

describe('web client in Firefox ESR', () => {
  let server;
  let chromium;
  let firefox;

  before(async () => {
    if (!here) return;
    // Without bandwidth estimation, as in simulcast.test.mjs: two browsers encoding and
    // decoding three simulcast layers each on two cores queue packets on the CPU, which the
    // SFU's delay-based estimator reads as congestion; it would then hold receivers on the
    // lowest layer and switch as the load comes and goes (each switch waits for a keyframe).
    // The layer then follows the tile alone; adaptation is proved in virtual time.
    [server, chromium, firefox] = await Promise.all([
      startServer({ admin: ADMIN, bandwidthEstimation: false }), launchBrowser(), launchFirefox(),
    ]);
    process.stderr.write(`Firefox ${await firefox.version()}\n`);
  }, { timeout: 60_000 });

  after(async () => {
    await firefox?.close();
    await chromium?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  firefoxTest('two Firefox pages and a Chromium page each see the other two colours and hear the other two tones', async () => {
    const room = 'mixed-browsers';
    const alice = await join(chromium, server, { room, name: 'Alice', colour: RED, tone: 660 });
    const bob = await join(firefox, server, { room, name: 'Bob', colour: GREEN, tone: 440 });
    const carol = await join(firefox, server, { room, name: 'Carol', colour: BLUE, tone: 880 });
    const all = [alice, bob, carol];
    try {
      await Promise.all(all.map((me) => waitUntilReceives(me, all.filter((p) => p !== me))));
      // Each Firefox page measures every remote tile's quality from its receive statistics.
      for (const me of [bob, carol]) {
        await waitFor(async () => (await probe(me)).remotes.every((r) => ['good', 'fair', 'poor'].includes(r.quality)
          && r.videoStats?.framesDecoded > 0 && r.audioStats?.packetsReceived > 0), {
          message: `${me.name}'s quality indicators and receive statistics`,
        });
      }
      assert.deepEqual(errorsOf(all), []);
    } finally {
      await closeAll(all);
    }
  });

  firefoxTest('muting in Firefox silences its tone at the receivers and shows the icon; leaving removes its tile', async () => {
    const room = 'firefox-mute';
    const alice = await join(chromium, server, { room, name: 'Alice', colour: RED, tone: 660 });
    const bob = await join(firefox, server, { room, name: 'Bob', colour: GREEN, tone: 440 });
    const all = [alice, bob];
    try {
      await Promise.all([waitUntilReceives(alice, [bob]), waitUntilReceives(bob, [alice])]);
      const bobId = (await probe(bob)).me;
      await bob.page.click('#mic-button');
      await bob.page.locator('#mic-button.off').waitFor();
      await waitFor(async () => {
        const b = (await probe(alice)).remotes.find((r) => r.name === 'Bob');
        return b.micMuted && b.micIcon && silent(b.tone, 440) && sameColour(b.colour, GREEN);
      }, { message: 'Alice to hear Bob muted while still seeing him' });
      await alice.page.locator(`.tile[data-key="p${bobId}"] .mic-off`).filter({ visible: true }).waitFor();

      await bob.page.click('#mic-button');
      await waitFor(async () => {
        const b = (await probe(alice)).remotes.find((r) => r.name === 'Bob');
        return !b.micMuted && hears(b.tone, 440);
      }, { message: 'Alice to hear Bob again after unmute' });

      await bob.page.click('#leave-button');
      await bob.page.locator('#lobby-message[data-key="lobby.left"]').waitFor();
      await waitFor(async () => (await probe(alice)).remotes.length === 0
        && (await alice.page.locator(`.tile[data-participant-id="${bobId}"]`).count()) === 0, {
        message: "Alice to drop Bob's tile",
      });
      assert.deepEqual(errorsOf(all), []);
    } finally {
      await closeAll(all);
    }
  });

  firefoxTest('a Firefox host shares its screen: a second tile at the receivers, gone when sharing stops', async () => {
    const { links } = await schedule(server, { title: 'Screen from Firefox', invitees: ['Bob'] });
    const pages = [];
    try {
      const host = await hostJoins(firefox, server, links.host, { name: 'Admin', colour: RED, tone: 660, params: { screen: YELLOW.join(',') } });
      pages.push(host);
      const bob = await openLink(chromium, server, links.Bob, { name: 'Bob', colour: GREEN, tone: 440 });
      pages.push(bob);
      await joined(bob);
      await waitUntilReceives(bob, [host]);
      await host.page.click('#share-button');
      await waitFor(async () => {
        const h = (await probe(bob)).remotes.find((r) => r.name === 'Admin');
        return sameColour(h.screenColour, YELLOW) && sameColour(h.colour, RED);
      }, { message: "Bob to see the Firefox host's screen beside its camera" });
      await host.page.click('#share-button');
      await waitFor(async () => (await bob.page.locator('.tile[data-source="screen"]').count()) === 0, {
        message: 'the screen tile to go away',
      });
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });

  firefoxTest('a Firefox publisher sends three simulcast layers; a Chromium viewer gets the one its tile needs', async () => {
    const room = 'firefox-simulcast';
    const publisher = await join(firefox, server, { room, name: 'Publisher', colour: RED, tone: 660 });
    const viewer = await join(chromium, server, { room, name: 'Viewer', colour: GREEN, tone: 440, camera: false, params: { gain: '0.01' } });
    const all = [publisher, viewer];
    try {
      const offers = (await hook(publisher, () => window.meetTest.sent)).filter((m) => m.type === 'offer');
      assert.deepEqual(offers.at(-1).publish.find((p) => p.source === 'camera').layers.map((l) => l.rid), ['q', 'h', 'f']);
      await waitUntilReceives(viewer, [publisher]);
      const publisherId = (await probe(publisher)).me;
      let last = null;
      const width = async () => {
        last = await hook(viewer, (id) => window.meetTest.receivedVideo(id), publisherId);
        return last?.frameWidth;
      };
      // Layer switches wait for a keyframe: generous deadlines.
      await waitFor(async () => (await width()) === 960, { timeout: 40_000, message: 'the viewer to receive the 960×540 layer' }).catch(async (err) => {
        err.message += `\nreceived: ${JSON.stringify(last)}\nsent: ${JSON.stringify(await hook(publisher, async () => ({ told: window.meetTest.simulcastLayers(), layers: await window.meetTest.sentLayers() })))}`;
        throw err;
      });
      await hook(viewer, (id) => window.meetTest.resizeTile(id, 100, 56), publisherId);
      await waitFor(async () => (await width()) === 240, { timeout: 40_000, message: 'the viewer to switch to the 240×135 layer' });
      const still = await probe(viewer);
      assert.ok(sameColour(still.remotes[0].colour, RED), `the low layer shows the publisher's colour: ${still.remotes[0].colour}`);
      assert.deepEqual(errorsOf(all), []);
    } finally {
      await closeAll(all);
    }
  });

  firefoxTest('an end-to-end encrypted meeting: a Firefox page and a Chromium page see and hear each other through sealed frames', async () => {
    const { links, e2ee } = await schedule(server, { title: 'Confidential, Firefox', confidential: true, invitees: ['Bob'] });
    assert.equal(e2ee, true);
    const pages = [];
    try {
      const host = await hostJoins(firefox, server, links.host, { name: 'Admin', colour: RED, tone: 660 });
      pages.push(host);
      const bob = await openLink(chromium, server, links.Bob, { name: 'Bob', colour: GREEN, tone: 440 });
      pages.push(bob);
      await joined(bob);
      await Promise.all([waitUntilReceives(host, [bob]), waitUntilReceives(bob, [host])]);
      const [h, b] = await Promise.all(pages.map((p) => hook(p, () => window.meetTest.encryption())));
      assert.equal(h.encrypted, true);
      assert.equal(h.mode, 'script', 'Firefox uses RTCRtpScriptTransform');
      assert.equal(h.safetyCode, b.safetyCode, 'both pages show the same safety code');
      for (const p of pages) {
        const sent = (await hook(p, () => window.meetTest.e2eeCounts())).filter((c) => c.role === 'send');
        assert.ok(sent.length >= 2 && sent.every((c) => c.frames > 0), `${p.name} seals what it sends: ${JSON.stringify(sent)}`);
      }
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
