// An end-to-end encrypted recording on the organizer pages, in real headless Chromium against
// the real server binary (docs/e2ee.md, "Recording").
//
// As in recordings.test.mjs the recorder is not needed: the test writes what it leaves behind
// in an encrypted meeting (no mix; each publication's frames as received, SFrame-encrypted, in
// the recorder's WebM and Ogg layout; a manifest saying `"e2ee": true`) and the row (sqlite3).
// The browser that holds the sender's key (put into IndexedDB as the meeting page keeps it)
// decrypts and plays: the video shows red and the audio plays the 440 Hz tone. A browser
// without the key, or with a wrong one, says it cannot play the recording and plays nothing.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { mapOggPackets } from '../containers.js';
import {
  apiLogin, api, closeAll, signInOrganizer, errorsOf, launchBrowser, openPage, sameColour, serverFeatures, startServer, waitFor,
} from './harness.mjs';
import {
  colourWebm, encryptedRecorderFile, ffmpegMissing, frameKeyFor, framesOf, toneOgg,
} from './e2ee-fixtures.mjs';

const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
const has = (tool) => spawnSync(tool, ['-version'], { stdio: 'ignore' }).status === 0;
const features = serverFeatures();
const missing = (!features.recordings && 'needs a meet-server with recordings (--recordings-dir)')
  || (!has('sqlite3') && 'needs the sqlite3 CLI to write the rows')
  || ffmpegMissing();
// CI installs every tool (.ci/run): there a missing one is a failure, not a reason to skip.
if (missing && process.env.CI) throw new Error(`encrypted recordings test: ${missing}`);

const SENDER = 7;
const BASE_KEY = Uint8Array.from({ length: 16 }, (_, i) => 0x51 * (i + 1) & 0xff);
const WRONG_KEY = Uint8Array.from({ length: 16 }, (_, i) => i);
// Epoch 2, generation 5.
const KID = 2 * 65536 + 5;
const NO_KEYS = 'This recording is end-to-end encrypted. Only the browser of a host who attended can play it.';

/** The recording directory an encrypted meeting leaves: one tampered audio frame, two fillers. */
async function writeEncryptedRecording(dir, { meetingId, recordingId }) {
  fs.mkdirSync(dir, { recursive: true });
  const frameKey = await frameKeyFor(BASE_KEY, KID);
  // One counter for all of the sender's streams, as a sender keeps it.
  const counter = { next: 0 };
  const video = await encryptedRecorderFile(colourWebm({ colour: 'red', seconds: 3, gop: 15 }), 'video', frameKey, counter);
  const clean = await encryptedRecorderFile(toneOgg({ hz: 440, seconds: 4 }), 'audio', frameKey, counter, { fillers: [20, 21] });
  // The 31st packet was changed on the way (its tag no longer matches): it must not play.
  const audio = await mapOggPackets(clean, async (packet, index) => {
    if (index !== 30) return packet;
    const tampered = Uint8Array.from(packet);
    tampered[tampered.length - 1] ^= 0x01;
    return tampered;
  });
  fs.writeFileSync(path.join(dir, 'track-4.ogg'), audio);
  fs.writeFileSync(path.join(dir, 'track-5.webm'), video);
  const manifest = {
    recording_id: recordingId,
    room: meetingId,
    started_at_unix_ms: Date.now() - 60_000,
    status: 'completed',
    duration_ms: 4000,
    e2ee: true,
    tracks: [
      { track: 4, participant_id: SENDER, participant: 'Lào Cai', kind: 'audio', source: 'microphone', codec: 'opus', clock_rate: 48000, added_offset_ms: 0, file: 'track-4.ogg', start_offset_ms: 0, end_offset_ms: 4000, warning: null },
      { track: 5, participant_id: SENDER, participant: 'Lào Cai', kind: 'video', source: 'camera', codec: 'vp8', clock_rate: 90000, added_offset_ms: 0, file: 'track-5.webm', start_offset_ms: 500, end_offset_ms: 3500, warning: null },
    ],
    mix: null,
  };
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
  const count = async (bytes) => (await framesOf(bytes)).filter((f) => f.data.length > 1).length;
  return { audioFrames: await count(audio), videoFrames: await count(video) };
}

function insertRow(dataDir, { id, meetingId, startedAt, endedAt }) {
  const result = spawnSync('sqlite3', [path.join(dataDir, 'meet.db'),
    `INSERT INTO recordings (id, meeting_id, started_at, ended_at, status, error, bytes) VALUES ('${id}', '${meetingId}', ${startedAt}, ${endedAt}, 'completed', NULL, 54321);`], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`sqlite3 failed:\n${result.stderr}`);
}

/** Signs in on the organizer page and opens the meeting's detail, where its recordings are. */
async function openRecordings(browser, server, meetingId, label, requests = null) {
  const org = await openPage(browser, `${server.url}organizer.html`, { label, waitForJoinButton: false });
  if (requests) org.page.on('request', (r) => requests.push(new URL(r.url()).pathname));
  await signInOrganizer(org.page, ADMIN, meetingId);
  return org;
}

/** Keeps a sender key as the meeting page does (keystore.js), in this page's browser. */
const keepKey = (page, room, key) => page.evaluate(async ({ room: r, participant, kid, raw }) => {
  const { saveKey } = await import('/keystore.js');
  const { importBaseKey } = await import('/sframe.js');
  await saveKey(r, participant, kid, await importBaseKey(Uint8Array.from(raw)));
}, { room, participant: String(SENDER), kid: KID, raw: [...key] });

describe('end-to-end encrypted recordings on the organizer pages', { skip: missing }, () => {
  let server;
  let browser;

  before(async () => {
    [server, browser] = await Promise.all([startServer({ openRooms: false, admin: ADMIN }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('the browser with the key decrypts and plays; others say they cannot and play nothing', { timeout: 150_000 }, async () => {
    const pages = [];
    try {
      const token = await apiLogin(server, ADMIN);
      const start = Date.now() + 3_600_000;
      const created = await api(server, 'POST', '/api/meetings', {
        token, json: { title: 'Encrypted council', starts_at: start, ends_at: start + 3_600_000 },
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const meetingId = created.body.id;
      const id = crypto.randomBytes(16).toString('hex');
      const written = await writeEncryptedRecording(path.join(server.dataDir, 'recordings', id), { meetingId, recordingId: id });
      const now = Date.now();
      insertRow(server.dataDir, { id, meetingId, startedAt: now - 120_000, endedAt: now - 60_000 });

      // ---- the host's browser, which kept the sender's key ----
      const host = await openRecordings(browser, server, meetingId, 'host');
      pages.push(host);
      const hp = host.page;
      await hp.locator(`tr.recording[data-recording-id="${id}"]`).waitFor();
      const files = await hp.locator(`select[data-files="${id}"] option`).evaluateAll((os) => os.map((o) => o.value));
      assert.deepEqual(files, ['manifest.json', 'track-4.ogg', 'track-5.webm'], 'no mix');
      assert.equal(await hp.locator(`button[data-play="${id}"]`).count(), 1, 'playable without a mix');
      await keepKey(hp, meetingId, BASE_KEY);

      await hp.click(`button[data-play="${id}"]`);
      const decrypted = await waitFor(() => hp.evaluate(() => document.getElementById('player').meetPlayer?.decrypted), {
        message: 'the files to be decrypted', timeout: 60_000,
      });
      assert.deepEqual(decrypted.map(({ file, failed, skipped, error }) => ({ file, failed, skipped, error })), [
        { file: 'track-4.ogg', failed: 1, skipped: 0, error: null },
        { file: 'track-5.webm', failed: 0, skipped: 0, error: null },
      ]);
      // Every frame but the recorder's two fillers; 3 s of video at 15 frames a second.
      assert.equal(written.videoFrames, 45);
      assert.deepEqual(decrypted.map((d) => d.frames), [written.audioFrames, written.videoFrames]);
      const notes = await hp.locator('#player .note').allTextContents();
      assert.ok(notes.includes('This recording is end-to-end encrypted: it was decrypted in this browser, with the keys kept here.'), notes.join(' | '));
      assert.ok(notes.includes('Frames that could not be decrypted and were skipped: 1.'), notes.join(' | '));

      // The audio track is the clock; the video follows half a second later.
      const state = () => hp.evaluate(() => {
        const { clock, videos, audios } = document.getElementById('player').meetPlayer;
        const [v] = videos;
        let colour = null;
        if (!v.box.hidden && v.video.videoWidth) {
          const canvas = document.createElement('canvas');
          canvas.width = 1;
          canvas.height = 1;
          const g = canvas.getContext('2d', { willReadFrequently: true });
          const w = v.video.videoWidth;
          const h = v.video.videoHeight;
          g.drawImage(v.video, w / 2 - 2, h / 2 - 2, 4, 4, 0, 0, 1, 1);
          colour = [...g.getImageData(0, 0, 1, 1).data.slice(0, 3)];
        }
        return {
          clock: clock.tagName, time: clock.currentTime, paused: clock.paused, error: clock.error?.code ?? null,
          followers: audios.length, video: { shown: !v.box.hidden, time: v.video.currentTime, error: v.video.error?.code ?? null, colour },
          src: [clock.src, v.video.src],
        };
      });
      const ready = await state();
      assert.equal(ready.clock, 'AUDIO');
      assert.equal(ready.followers, 0, 'the only audio track is the clock');
      assert.ok(ready.src.every((s) => s.startsWith('blob:')), 'the player plays what this browser decrypted');

      // The tone, heard through the clock element as it plays.
      await hp.evaluate(() => {
        const { clock } = document.getElementById('player').meetPlayer;
        const context = new AudioContext();
        const analyser = context.createAnalyser();
        analyser.fftSize = 4096;
        context.createMediaStreamSource(clock.captureStream()).connect(analyser);
        window.toneOf = () => {
          const bins = new Float32Array(analyser.frequencyBinCount);
          analyser.getFloatFrequencyData(bins);
          let best = 0;
          for (let i = 1; i < bins.length; i += 1) if (bins[i] > bins[best]) best = i;
          return { hz: (best * context.sampleRate) / analyser.fftSize, db: bins[best] };
        };
        return clock.play();
      });
      const playing = await waitFor(async () => {
        const s = await state();
        const tone = await hp.evaluate(() => window.toneOf());
        return s.time > 1 && s.time < 3.2 && s.video.shown && sameColour(s.video.colour, [255, 0, 0])
          && tone.db > -60 && Math.abs(tone.hz - 440) <= 20 ? { ...s, tone } : null;
      }, { message: 'the decrypted audio to play the tone and the video to show red', interval: 100 });
      assert.equal(playing.paused, false);
      assert.equal(playing.error, null);
      assert.equal(playing.video.error, null);
      assert.ok(Math.abs(playing.video.time - (playing.time - 0.5)) < 0.6, `video at ${playing.video.time} for audio at ${playing.time}`);

      // ---- another browser: no keys, so nothing is fetched and nothing plays ----
      const requests = [];
      const other = await openRecordings(browser, server, meetingId, 'other', requests);
      pages.push(other);
      const op = other.page;
      await op.click(`button[data-play="${id}"]`);
      await waitFor(async () => (await op.locator('#player .rec-warning').allTextContents()).includes(NO_KEYS), {
        message: 'the player to say it cannot decrypt',
      });
      assert.equal(await op.locator('#player audio, #player video').count(), 0, 'nothing plays');
      assert.deepEqual(requests.filter((p) => /track-\d+\./.test(p)), [], 'no track file is even fetched');

      // ---- the same browser with a wrong key: every frame fails, and it says the same ----
      await keepKey(op, meetingId, WRONG_KEY);
      await op.click('#player-close');
      await op.click(`button[data-play="${id}"]`);
      const failed = await waitFor(() => op.evaluate(() => document.getElementById('player').meetPlayer?.decrypted), {
        message: 'the files to be tried', timeout: 60_000,
      });
      assert.deepEqual(failed.map((d) => d.error), ['undecryptable', 'undecryptable']);
      assert.deepEqual(await op.locator('#player .rec-warning').allTextContents(), [NO_KEYS]);
      assert.equal(await op.locator('#player audio, #player video').count(), 0, 'nothing plays');

      await hp.click('#player-close');
      assert.equal(await hp.locator('#player').isHidden(), true);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
