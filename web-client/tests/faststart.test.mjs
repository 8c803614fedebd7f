// Fast start in real headless Chromium against the real server binary: a page that joins
// shortly after the publisher's last keyframe is started by the server from the packets since
// that keyframe (replayed with compressed timestamps, then live), and Chromium decodes that
// stream as it is. A page that applied the server's answer only after the replay arrived has
// dropped it and asks for a keyframe; the server answers that from its cache too.
//
// Chromium sends keyframes only when asked, so a first page joins (and, if the publisher's
// last keyframe is too old for the cache, gets one through the throttle); the page that joins
// right after finds that keyframe's GOP in the cache. Either page is started only once it has
// proved that it holds its SRTP keys, from what the cache holds then: on a loaded machine its
// handshake may take a second or more, and a keyframe that comes meanwhile (asked for by this
// page or by another one whose tile changed) is replayed with the rest, not sent ahead of the
// keys. The server's counters are a snapshot its media workers refresh periodically, so they
// are waited for, not read once.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  api, closeAll, errorsOf, join, launchBrowser, openPage, probe, startServer, waitFor, waitUntilReceives,
} from './harness.mjs';

const RED = [255, 0, 0];
const GREEN = [0, 255, 0];
const BLUE = [0, 0, 255];
const TEST_TIMEOUT = 90_000;

/** One counter from the server's Prometheus page. */
async function counter(server, name) {
  const text = String((await api(server, 'GET', '/../metrics', { token: server.metricsToken })).body);
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/** A page's inbound video numbers (it receives one video, the publisher's). */
async function inboundVideo(page) {
  return page.evaluate(async () => {
    const pc = window.meetTest.pc();
    if (!pc) return null;
    let found = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && (s.packetsReceived ?? 0) > 0) {
        found = {
          framesDecoded: s.framesDecoded ?? 0,
          keyFramesDecoded: s.keyFramesDecoded ?? 0,
          pliCount: s.pliCount ?? 0,
          firCount: s.firCount ?? 0,
          packetsReceived: s.packetsReceived,
          packetsLost: s.packetsLost,
          nackCount: s.nackCount,
          framesDropped: s.framesDropped,
          framesReceived: s.framesReceived,
          jitterBufferDelay: s.jitterBufferDelay,
          freezeCount: s.freezeCount,
        };
      }
    });
    return found;
  });
}

/** A page in the lobby of `room`, camera off, ready to join with one click. */
async function ready(browser, server, room, name, colour) {
  const query = new URLSearchParams({ room, synthetic: '1', color: colour.join(','), tone: '550', gain: '0.01' });
  const p = await openPage(browser, `${server.url}?${query}`, { label: name });
  await waitFor(() => p.page.evaluate(() => window.meetTest.localTracks().includes('camera')), { message: `${name}'s preview` });
  await p.page.click('#lobby-cam');
  await p.page.locator('#lobby-cam.off').waitFor();
  await p.page.fill('#name-input', name);
  return { ...p, name, colour };
}

describe('fast start in Chromium', () => {
  let server;
  let browser;

  before(async () => {
    // As in simulcast.test.mjs: the layer follows the tile, not this machine's CPU queueing.
    [server, browser] = await Promise.all([startServer({ bandwidthEstimation: false }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('a page joining mid-GOP is started from the cached keyframe, and a keyframe it asks for comes from the cache too', { timeout: TEST_TIMEOUT }, async () => {
    const room = 'fast-start';
    const publisher = await join(browser, server, { room, name: 'Publisher', colour: RED, tone: 660 });
    const pages = [publisher];
    try {
      // Someone already watches, so the publisher sends its layers before the others come.
      const first = await join(browser, server, { room, name: 'First', colour: RED, tone: 440, camera: false, params: { gain: '0.01' } });
      pages.push(first);
      await waitUntilReceives(first, [publisher]);
      const publisherId = (await probe(publisher)).me;
      const trigger = await ready(browser, server, room, 'Trigger', GREEN);
      const late = await ready(browser, server, room, 'Late', BLUE);
      pages.push(trigger, late);
      const before = await counter(server, 'meet_fast_starts_total');
      const answeredBefore = await counter(server, 'meet_keyframe_requests_from_cache_total');
      await trigger.page.click('#join-button');
      await waitFor(async () => (await trigger.page.evaluate((id) => window.meetTest.receivedVideo(id), publisherId))?.framesDecoded > 0, {
        message: 'the trigger page decodes the publisher', interval: 50,
      });
      await late.page.click('#join-button');
      await waitUntilReceives(late, [publisher]);
      await waitUntilReceives(trigger, [publisher]);
      // Whether the trigger found a usable cache depends on how long ago the publisher's last
      // keyframe was; the late page, a moment after the trigger's keyframe, does.
      await waitFor(async () => (await counter(server, 'meet_fast_starts_total')) > before, {
        message: 'a fast start', timeout: 5_000,
      });
      let asked = 0;
      for (const p of [trigger, late]) {
        const video = await waitFor(async () => {
          const v = await inboundVideo(p.page);
          return v?.framesDecoded >= 10 ? v : null;
        }, { message: `${p.name} to decode ten frames` });
        assert.ok(video.keyFramesDecoded >= 1, `${p.name}: ${JSON.stringify(video)}`);
        asked += video.pliCount + video.firCount;
        console.log(`${p.name}: ${JSON.stringify(video)}`);
      }
      // Replayed or live, each stream decoded from a keyframe. A page asks for one only when
      // it applied the server's answer after the replay had arrived (and dropped it); the
      // server then answered from its cache, not by asking the publisher.
      let answered = 0;
      await waitFor(async () => {
        answered = (await counter(server, 'meet_keyframe_requests_from_cache_total')) - answeredBefore;
        return answered >= asked;
      }, { message: 'the metrics to count the requests answered', timeout: 5_000 }).catch(() => {});
      assert.ok(asked <= answered, `${asked} keyframe requests, ${answered} answered from the cache`);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
