// Recordings on the organizer pages, in real headless Chromium against the real server binary.
//
// The recorder is not needed: the test writes what it would leave behind (a directory with a
// manifest, the mixed audio and two video tracks, made with ffmpeg) and the rows (with the
// sqlite3 CLI), then lists them, plays one (the videos follow the audio by their offsets),
// downloads a file with a ticket and deletes a recording.
//
// In the meeting, only the host has the Record button. What happens when it is pressed depends
// on whether this server records yet: either everyone sees "● REC" and a notice until the host
// stops, or the host is told the server refused, and the meeting goes on unharmed.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  api, apiLogin, closeAll, signInOrganizer, errorsOf, launchBrowser, openLink, openPage, serverFeatures, startServer, waitFor,
} from './harness.mjs';

const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
const has = (tool) => spawnSync(tool, ['-version'], { stdio: 'ignore' }).status === 0
  || spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;

const features = serverFeatures();
const missing = (!features.recordings && 'needs a meet-server with recordings (--recordings-dir)')
  || (!has('ffmpeg') && 'needs ffmpeg to make the recording files')
  || (!has('sqlite3') && 'needs the sqlite3 CLI to write the rows');
// CI installs every tool (.ci/run): there a missing one is a failure, not a reason to skip.
if (missing && process.env.CI) throw new Error(`recordings test: ${missing}`);
const skip = missing;

function run(tool, args) {
  const result = spawnSync(tool, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${tool} ${args.join(' ')} failed:\n${result.stderr}`);
}

/** Four seconds of a 440 Hz tone as Ogg Opus, and solid-colour VP8 videos. */
function writeRecording(dir, { meetingId, recordingId }) {
  fs.mkdirSync(dir, { recursive: true });
  const quiet = ['-hide_banner', '-loglevel', 'error', '-y'];
  run('ffmpeg', [...quiet, '-f', 'lavfi', '-i', 'sine=frequency=440:duration=4', '-c:a', 'libopus', path.join(dir, 'mix.ogg')]);
  // Red joins one second in and leaves at three; blue is there throughout.
  run('ffmpeg', [...quiet, '-f', 'lavfi', '-i', 'color=c=red:s=160x90:d=2:r=15', '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'track-2.webm')]);
  run('ffmpeg', [...quiet, '-f', 'lavfi', '-i', 'color=c=blue:s=160x90:d=4:r=15', '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'track-3.webm')]);
  const manifest = {
    recording_id: recordingId,
    room: meetingId,
    started_at: Date.now() - 60_000,
    status: 'completed',
    tracks: [
      { track: 2, participant_id: 7, participant: 'Lào Cai', kind: 'video', source: 'camera', codec: 'VP8', file: 'track-2.webm', start_offset_ms: 1000, end_offset_ms: 3000 },
      { track: 3, participant_id: 8, participant: 'Hà Giang', kind: 'video', source: 'camera', codec: 'VP8', file: 'track-3.webm', start_offset_ms: 0, end_offset_ms: 4000 },
    ],
    // As the recorder writes it (an object; the player also reads a bare file name).
    mix: { file: 'mix.ogg', start_offset_ms: 0, end_offset_ms: 4000 },
  };
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
}

function insertRow(dataDir, { id, meetingId, startedAt, endedAt, status, error }) {
  const quote = (v) => (v === null ? 'NULL' : typeof v === 'number' ? String(v) : `'${String(v).replaceAll("'", "''")}'`);
  run('sqlite3', [path.join(dataDir, 'meet.db'),
    `INSERT INTO recordings (id, meeting_id, started_at, ended_at, status, error, bytes) VALUES (${[id, meetingId, startedAt, endedAt, status, error, 12345].map(quote).join(', ')});`]);
}

describe('recordings on the organizer pages', { skip }, () => {
  let server;
  let browser;

  before(async () => {
    [server, browser] = await Promise.all([startServer({ openRooms: false, admin: ADMIN }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('the host records; everyone sees it', { timeout: 120_000 }, async () => {
    const pages = [];
    try {
      const token = await apiLogin(server, ADMIN);
      const start = Date.now() + 3_600_000;
      const created = await api(server, 'POST', '/api/meetings', {
        token,
        json: { title: 'Recorded', starts_at: start, ends_at: start + 3_600_000, admission: 'host', invitations: [{ role: 'participant', name: 'Bob' }] },
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const hostLink = created.body.invitations.find((i) => i.role === 'host').join_path;
      const bobLink = created.body.invitations.find((i) => i.name === 'Bob').join_path;
      const host = await openLink(browser, server, hostLink, { name: 'Admin', colour: [255, 0, 0], tone: 660 });
      pages.push(host);
      await waitFor(() => host.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'the host joins' });
      await host.page.evaluate(() => window.meetTest.host.openRoom());
      await waitFor(() => host.page.evaluate(() => window.meetTest.roomState()?.open), { message: 'the room opens' });
      const bob = await openLink(browser, server, bobLink, { name: 'Bob', colour: [0, 255, 0], tone: 440 });
      pages.push(bob);
      await waitFor(() => bob.page.evaluate(() => window.meetTest.state() === 'joined'), { message: 'Bob joins' });

      assert.equal(await host.page.locator('#record-button').isVisible(), true, 'a host may record');
      assert.equal(await bob.page.locator('#record-button').isVisible(), false, 'a participant may not');
      assert.equal(await bob.page.evaluate(() => window.meetTest.recIndicator()), false);
      assert.deepEqual(await bob.page.evaluate(() => window.meetTest.recording()), { active: false, recordingId: null, startedAt: null, error: null });

      const toasts = (p) => p.page.evaluate(() => document.getElementById('toasts').innerText);
      await host.page.click('#record-button');
      const outcome = await waitFor(async () => {
        if ((await host.page.evaluate(() => window.meetTest.recording())).active) return 'recording';
        if ((await toasts(host)).includes('The server refused to record')) return 'refused';
        return null;
      }, { message: 'the recording to start or be refused' });
      assert.ok((await host.page.evaluate(() => window.meetTest.sent)).some((m) => m.type === 'start_recording'));
      if (outcome === 'refused') {
        // This server does not record yet: the meeting is unharmed.
        assert.equal(await host.page.evaluate(() => window.meetTest.state()), 'joined');
        assert.equal(await host.page.evaluate(() => window.meetTest.recIndicator()), false);
        return;
      }
      const recording = await host.page.evaluate(() => window.meetTest.recording());
      assert.match(recording.recordingId, /^[0-9a-f]{32}$/);
      assert.equal(typeof recording.startedAt, 'number');
      await waitFor(() => bob.page.evaluate(() => window.meetTest.recIndicator()), { message: 'Bob to see REC' });
      assert.equal(await bob.page.locator('#rec-indicator').isVisible(), true);
      assert.ok((await toasts(bob)).includes('This meeting is being recorded'));
      await host.page.click('#record-button');
      await waitFor(async () => !(await bob.page.evaluate(() => window.meetTest.recIndicator())), { message: 'REC to go' });
      assert.deepEqual((await bob.page.evaluate(() => window.meetTest.recording())).active, false);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });

  test('list, play in sync, download and delete', { timeout: 120_000 }, async () => {
    const pages = [];
    try {
      const token = await apiLogin(server, ADMIN);
      const start = Date.now() + 3_600_000;
      const created = await api(server, 'POST', '/api/meetings', {
        token, json: { title: 'Recorded council', starts_at: start, ends_at: start + 3_600_000 },
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const meetingId = created.body.id;
      const done = crypto.randomBytes(16).toString('hex');
      const cut = crypto.randomBytes(16).toString('hex');
      writeRecording(path.join(server.dataDir, 'recordings', done), { meetingId, recordingId: done });
      fs.mkdirSync(path.join(server.dataDir, 'recordings', cut));
      fs.copyFileSync(path.join(server.dataDir, 'recordings', done, 'mix.ogg'), path.join(server.dataDir, 'recordings', cut, 'mix.ogg'));
      const now = Date.now();
      insertRow(server.dataDir, { id: done, meetingId, startedAt: now - 120_000, endedAt: now - 60_000, status: 'completed', error: null });
      insertRow(server.dataDir, { id: cut, meetingId, startedAt: now - 30_000, endedAt: now - 20_000, status: 'interrupted', error: 'server restarted' });

      // ---- sign in, open the meeting: both recordings are listed ----
      const org = await openPage(browser, `${server.url}organizer.html`, { label: 'organizer', waitForJoinButton: false });
      pages.push(org);
      const op = org.page;
      await signInOrganizer(op, ADMIN, meetingId);
      await op.locator(`tr.recording[data-recording-id="${done}"]`).waitFor();
      assert.equal(await op.locator('tr.recording').count(), 2);
      assert.equal(await op.locator(`tr.recording[data-recording-id="${cut}"] .rec-status`).textContent(), 'Interrupted');
      assert.equal(await op.locator(`tr.recording[data-recording-id="${cut}"] .rec-status`).getAttribute('title'), 'server restarted');
      assert.equal(await op.locator(`tr.recording[data-recording-id="${done}"] td`).nth(1).textContent(), '0:01:00');
      const files = await op.locator(`select[data-files="${done}"] option`).evaluateAll((os) => os.map((o) => o.value));
      assert.deepEqual(files, ['manifest.json', 'mix.ogg', 'track-2.webm', 'track-3.webm']);

      // ---- play: the audio is the clock, each video follows at its offset ----
      await op.click(`button[data-play="${done}"]`);
      await op.locator('#player audio').waitFor({ state: 'attached' });
      const playerState = () => op.evaluate(() => {
        const { audio, videos } = document.getElementById('player').meetPlayer;
        return {
          audio: audio.currentTime,
          paused: audio.paused,
          videos: videos.map((v) => ({
            file: v.file, shown: !v.box.hidden, time: v.video.currentTime, paused: v.video.paused,
            caption: v.box.querySelector('figcaption').textContent, src: v.video.src,
          })),
        };
      });
      const first = await playerState();
      assert.deepEqual(first.videos.map((v) => v.caption), ['Lào Cai', 'Hà Giang']);
      assert.ok(first.videos.every((v) => v.src.includes('?ticket=')), 'media elements fetch with a ticket');
      await op.evaluate(() => document.getElementById('player').meetPlayer.audio.play());
      const playing = await waitFor(async () => {
        const s = await playerState();
        return s.audio > 1.6 && s.audio < 2.8 ? s : null;
      }, { message: 'the audio to play past 1.6 s', interval: 100 });
      const [red, blue] = playing.videos;
      assert.equal(red.shown, true, 'the red track is inside its span');
      assert.equal(blue.shown, true);
      assert.ok(Math.abs(red.time - (playing.audio - 1)) < 0.6, `red at ${red.time} for audio at ${playing.audio}`);
      assert.ok(Math.abs(blue.time - playing.audio) < 0.6, `blue at ${blue.time} for audio at ${playing.audio}`);

      // Seek before red's start: it is hidden, blue follows the seek.
      await op.evaluate(() => {
        const { audio } = document.getElementById('player').meetPlayer;
        audio.pause();
        audio.currentTime = 0.5;
      });
      const sought = await waitFor(async () => {
        const s = await playerState();
        return Math.abs(s.audio - 0.5) < 0.05 && !s.videos[0].shown && Math.abs(s.videos[1].time - 0.5) < 0.3 ? s : null;
      }, { message: 'the videos to follow a seek' });
      assert.equal(sought.videos[1].paused, true, 'videos pause with the audio');

      // ---- download one file, through a ticket ----
      await op.selectOption(`select[data-files="${done}"]`, 'mix.ogg');
      const [download] = await Promise.all([op.waitForEvent('download'), op.click(`button[data-download="${done}"]`)]);
      assert.equal(download.suggestedFilename(), `recording-${done}-mix.ogg`);
      const bytes = fs.readFileSync(await download.path());
      assert.deepEqual(bytes, fs.readFileSync(path.join(server.dataDir, 'recordings', done, 'mix.ogg')));

      // ---- delete the interrupted one ----
      op.once('dialog', (dialog) => dialog.accept());
      await op.click(`button[data-delete="${cut}"]`);
      await waitFor(async () => (await op.locator('tr.recording').count()) === 1, { message: 'the deleted recording to go' });
      assert.equal(fs.existsSync(path.join(server.dataDir, 'recordings', cut)), false);
      const listed = await api(server, 'GET', `/api/meetings/${meetingId}/recordings`, { token });
      assert.deepEqual(listed.body.map((r) => r.id), [done]);

      await op.click('#player-close');
      assert.equal(await op.locator('#player').isHidden(), true);
      assert.deepEqual(errorsOf(pages), []);
    } finally {
      await closeAll(pages);
    }
  });
});
