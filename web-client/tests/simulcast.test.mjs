// Simulcast and the active speaker in real headless Chromium against the real server binary.
//
// The synthetic camera is 960×540, so a publisher sends three VP8 layers: 240×135, 480×270
// and 960×540 (Chromium sends only two of a smaller camera). A receiver's getStats
// (inbound-rtp frameWidth) tells which layer it gets; the publisher's getParameters and
// outbound-rtp tell which layers it still sends. Loudness is in the sent audio itself (the
// synthetic tone's gain), because Chromium computes the RFC 6464 level that the server
// compares from the audio it sends.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  closeAll, errorsOf, join, launchBrowser, probe, sameColour, startServer, waitFor, waitUntilReceives,
} from './harness.mjs';

const RED = [255, 0, 0];
const GREEN = [0, 255, 0];
const TEST_TIMEOUT = 120_000;
// Layer switches wait for a keyframe, and keyframe requests reach a publisher at most once a
// second: generous deadlines, never fixed sleeps.
const SWITCH = { timeout: 40_000 };
const SILENT = '0';
const QUIET = '0.01';
const LOUD = 0.5;

describe('simulcast and active speaker in Chromium', () => {
  let server;
  let browser;

  before(async () => {
    // Bandwidth adaptation is proved in virtual time (sfu/tests/simulcast.rs). Here the
    // machine runs three encoding and decoding Chromium pages on two cores, and the SFU's
    // delay-based estimator reads that CPU queueing as congestion: it would pick the layer for
    // the CPU, not for the tile. Without it, the layer follows the tile alone.
    [server, browser] = await Promise.all([
      startServer({ bandwidthEstimation: false }),
      launchBrowser(),
    ]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('a receiver gets the layer that fills its tile; the publisher pauses layers nobody receives', { timeout: TEST_TIMEOUT }, async () => {
    const room = 'simulcast';
    const publisher = await join(browser, server, { room, name: 'Publisher', colour: RED, tone: 660 });
    // The viewer shows no camera and hardly speaks, so its layout stays the plain grid.
    const viewer = await join(browser, server, { room, name: 'Viewer', colour: GREEN, tone: 440, camera: false, params: { gain: QUIET } });
    const all = [publisher, viewer];
    try {
      const publisherId = (await probe(publisher)).me;
      const offers = (await publisher.page.evaluate(() => window.meetTest.sent)).filter((m) => m.type === 'offer');
      assert.deepEqual(offers.at(-1).publish.find((p) => p.source === 'camera').layers, [
        { rid: 'q', width: 240, height: 135 },
        { rid: 'h', width: 480, height: 270 },
        { rid: 'f', width: 960, height: 540 },
      ]);
      await waitUntilReceives(viewer, [publisher]);

      // Each wait says, when it times out, what the two pages last measured.
      let last = null;
      const explained = (err) => {
        err.message += `\nlast seen: ${JSON.stringify(last)}`;
        throw err;
      };
      // A layer is received when frames of its width keep being decoded: two polls in a row
      // (a server that mixed layers would pass a single look by chance).
      const receives = (width, message) => {
        let streak = 0;
        return waitFor(async () => {
          const before = last;
          last = await viewer.page.evaluate((id) => window.meetTest.receivedVideo(id), publisherId);
          const steady = last?.frameWidth === width && before?.frameWidth === width && last.framesDecoded > before.framesDecoded;
          streak = steady ? streak + 1 : 0;
          return streak >= 2;
        }, { ...SWITCH, message }).catch(explained);
      };
      const sends = (wanted, message) => waitFor(async () => {
        last = await publisher.page.evaluate(async () => ({
          told: window.meetTest.simulcastLayers(),
          layers: await window.meetTest.sentLayers(),
        }));
        return wanted(last);
      }, { ...SWITCH, message }).catch(explained);
      // The server wants the layers someone receives (and always the lowest), so with one
      // viewer on the top layer the middle one may rest.
      const topSent = ({ told, layers }) => told?.[0] === true && told?.[2] === true
        && layers.length === 3 && layers[0].active && layers[2].active && layers[2].framesEncoded > 0;

      // The tile is about 620×350: only the top layer fills it, and the top layer is sent.
      await receives(960, 'the viewer to receive the 960×540 layer in its large tile');
      await sends(topSent, 'the publisher to send its top layer');

      // A thumbnail of 100×56: the lowest layer fills it. Nobody needs the others now, so the
      // server says so and the publisher pauses them.
      await viewer.page.evaluate((id) => window.meetTest.resizeTile(id, 100, 56), publisherId);
      await waitFor(async () => (await viewer.page.evaluate(() => window.meetTest.sent))
        .some((m) => m.type === 'video_sizes' && m.sizes.some((s) => s.width === 100 && s.height === 56)), {
        message: 'the viewer to report the thumbnail size',
      });
      await receives(240, 'the viewer to switch to the 240×135 layer');
      await sends(({ told, layers: [q, , f] }) => told?.[0] === true && told?.[2] === false && q.active && !f.active,
        'simulcast_layers to tell the publisher that nobody receives the top layer, and the publisher to pause it');

      // A tile that is not displayed is reported as 0 × 0 (the server then sends it nothing).
      const display = (value) => viewer.page.evaluate(([id, v]) => {
        document.querySelector(`.tile[data-key="p${id}"]`).style.display = v;
      }, [publisherId, value]);
      await display('none');
      await waitFor(async () => (await viewer.page.evaluate(() => window.meetTest.sent))
        .filter((m) => m.type === 'video_sizes').at(-1).sizes.some((x) => x.width === 0 && x.height === 0), {
        message: 'the viewer to report its hidden tile as 0 × 0',
      });

      // Shown and large again: the top layer comes back, at both ends.
      await display('');
      await viewer.page.evaluate((id) => window.meetTest.resizeTile(id, null, null), publisherId);
      await receives(960, 'the viewer to switch back to the 960×540 layer');
      await sends(topSent, 'the publisher to resume its top layer');
      const seen = (await probe(viewer)).remotes.find((r) => r.id === publisherId);
      assert.ok(sameColour(seen.colour, RED), `the viewer still sees red: ${seen.colour}`);

      // A rejoin is a new session for the server: the page reports its sizes again.
      await viewer.page.evaluate(() => window.meetTest.dropConnection());
      await waitFor(async () => {
        const sent = await viewer.page.evaluate(() => window.meetTest.sent);
        const rejoin = sent.findLastIndex((m) => m.type === 'join');
        return rejoin > 0 && sent.slice(rejoin).some((m) => m.type === 'video_sizes' && m.sizes.some((x) => x.width > 300));
      }, { message: 'the viewer to report its tile size again after rejoining' });
      await receives(960, 'the rejoined viewer to receive the 960×540 layer');
      assert.deepEqual(errorsOf(all), []);
    } finally {
      await closeAll(all);
    }
  });

  /**
   * Waits until each of `pages` names `speaker` as the active speaker and outlines its tile,
   * which is also the large one (at least 1.5 times as wide as any other) except on the
   * speaker's own page.
   */
  const speakerOn = async (pages, speaker) => {
    for (const p of pages) {
      let state = null;
      await waitFor(async () => {
        state = await p.page.evaluate(() => ({
          active: window.meetTest.activeSpeaker(),
          speaking: window.meetTest.speakingTiles(),
          featured: window.meetTest.featuredTile(),
          widths: [...document.querySelectorAll('#grid .tile')]
            .map((el) => [Number(el.dataset.participantId), el.getBoundingClientRect().width]),
        }));
        const outlined = state.active === speaker.id && state.speaking.length === 1 && state.speaking[0] === speaker.id;
        if (p === speaker) return outlined && state.featured === null;
        const large = state.widths.find(([id]) => id === speaker.id)?.[1] ?? 0;
        return outlined && state.featured === speaker.id
          && state.widths.every(([id, width]) => id === speaker.id || large > 1.5 * width);
      }, { ...SWITCH, message: `${p.name} to show ${speaker.name} (${speaker.id}) as the active speaker` }).catch((err) => {
        err.message += `\nlast seen: ${JSON.stringify(state)}`;
        throw err;
      });
    }
  };

  /** Up to three participants without cameras (the test listens), their tones silent at first. */
  const speakers = async (room, count) => {
    const people = [];
    for (const [name, tone] of [['Ana', 440], ['Bình', 550], ['Chi', 660]].slice(0, count)) {
      const p = await join(browser, server, { room, name, colour: RED, tone, camera: false, params: { gain: SILENT } });
      p.id = (await probe(p)).me;
      people.push(p);
    }
    return people;
  };
  const setGain = (p, gain) => p.page.evaluate((g) => window.meetTest.setToneGain(g), gain);

  test('the loudest participant is the active speaker everywhere, highlighted and shown large', { timeout: TEST_TIMEOUT }, async () => {
    const people = await speakers('speaker', 3);
    try {
      const [ana, binh, chi] = people;
      await setGain(ana, LOUD);
      await Promise.all([binh, chi].map((p) => setGain(p, Number(QUIET))));
      await speakerOn(people, ana);
      await setGain(ana, Number(QUIET));
      await setGain(binh, LOUD);
      await speakerOn(people, binh);
      assert.deepEqual(errorsOf(people), []);
    } finally {
      await closeAll(people);
    }
  });

  test('someone who joins while a participant speaks is told who it is', { timeout: TEST_TIMEOUT }, async () => {
    const people = await speakers('late-joiner', 2);
    let late;
    try {
      const [ana] = people;
      await setGain(ana, LOUD);
      await speakerOn(people, ana);
      late = await join(browser, server, { room: 'late-joiner', name: 'Đức', colour: RED, tone: 770, camera: false, params: { gain: SILENT } });
      await speakerOn([late], ana);
      assert.deepEqual(errorsOf([...people, late]), []);
    } finally {
      await closeAll([...people, ...(late ? [late] : [])]);
    }
  });
});
