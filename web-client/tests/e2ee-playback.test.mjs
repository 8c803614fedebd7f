// Decrypting an end-to-end encrypted recording (web-client/e2ee-playback.js) in node: files in
// the recorder's layout, made from ffmpeg media and encrypted with sframe.js as a sender would,
// come back as the original frames with the right key, and as counted failures otherwise.

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { mapOggPackets, mapWebmFrames } from '../containers.js';
import { decryptFile, decryptRecording } from '../e2ee-playback.js';
import { KeyRing, importBaseKey, ratchet } from '../sframe.js';
import {
  colourWebm, encryptedRecorderFile, ffmpegMissing, frameKeyFor, framesOf, probePackets, toneOgg,
} from './e2ee-fixtures.mjs';

const skip = ffmpegMissing();
const BASE_KEY = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const OTHER_KEY = Uint8Array.from({ length: 16 }, (_, i) => i);
// Epoch 3, generation 1: a KID wider than the header's inline 3 bits.
const KID = 3 * 65536 + 1;

const ringWith = async (key, kid = KID) => {
  const ring = new KeyRing();
  await ring.set(kid, key);
  return ring;
};
const dataOf = (frames) => frames.map((f) => [...f.data]);

describe('decrypting a recording', { skip }, () => {
  let ogg;
  let plainVideo;
  let plainAudio;
  let video;
  let audio;

  before(async () => {
    const frameKey = await frameKeyFor(BASE_KEY, KID);
    const counter = { next: 0 };
    const webm = colourWebm({ seconds: 2, gop: 5 });
    ogg = toneOgg({ seconds: 1 });
    plainVideo = await framesOf(webm);
    plainAudio = await framesOf(ogg);
    video = await encryptedRecorderFile(webm, 'video', frameKey, counter);
    audio = await encryptedRecorderFile(ogg, 'audio', frameKey, counter, { fillers: [3, 4] });
  });

  test('the encrypted files hold no plaintext frame, and decrypt back to every frame', async () => {
    const encrypted = await framesOf(video);
    assert.equal(encrypted.length, plainVideo.length);
    for (const [i, f] of encrypted.entries()) {
      // The clear prefix, then no more of the frame in clear.
      const prefix = plainVideo[i].keyframe ? 10 : 3;
      assert.deepEqual([...f.data.subarray(0, prefix)], [...plainVideo[i].data.subarray(0, prefix)]);
      assert.notDeepEqual([...f.data.subarray(prefix, prefix + 8)], [...plainVideo[i].data.subarray(prefix, prefix + 8)]);
    }
    const ring = await ringWith(BASE_KEY);
    const v = await decryptFile(video, 'video', ring);
    assert.deepEqual({ container: v.container, frames: v.frames, failed: v.failed, skipped: v.skipped },
      { container: 'webm', frames: plainVideo.length, failed: 0, skipped: 0 });
    assert.deepEqual(dataOf(await framesOf(v.bytes)), dataOf(plainVideo));
    // ffprobe reads the decrypted file as VP8 of the right frame count.
    assert.equal(probePackets(v.bytes).length, plainVideo.length);

    const a = await decryptFile(audio, 'audio', ring);
    assert.deepEqual({ frames: a.frames, failed: a.failed }, { frames: plainAudio.length - 2, failed: 0 }, 'fillers are no frames');
    const back = await framesOf(a.bytes);
    assert.deepEqual(back.map((f, i) => ([3, 4].includes(i) ? f.data.length : [...f.data])),
      plainAudio.map((f, i) => ([3, 4].includes(i) ? 1 : [...f.data])), 'the fillers stay as they were');
  });

  test('a later generation of the same epoch decrypts from an earlier key, by ratcheting', async () => {
    const earlier = new KeyRing();
    // The ring holds generation 0; the frames are of generation 1 = ratchet(generation 0).
    const gen0 = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
    const gen1 = await ratchet(await importBaseKey(gen0));
    await earlier.set(3 * 65536, gen0);
    const frameKey = await frameKeyFor(gen1, KID);
    const file = await encryptedRecorderFile(ogg, 'audio', frameKey, { next: 5 });
    const a = await decryptFile(file, 'audio', earlier);
    assert.deepEqual({ frames: a.frames, failed: a.failed }, { frames: plainAudio.length, failed: 0 });
  });

  test('a tampered audio frame becomes a concealed empty frame; a tampered video frame waits for a keyframe', async () => {
    const ring = await ringWith(BASE_KEY);
    let n = 0;
    const tamperedAudio = await mapOggPackets(audio, async (p) => {
      n += 1;
      if (n !== 7) return p;
      const t = Uint8Array.from(p);
      t[t.length - 1] ^= 1;
      return t;
    });
    const a = await decryptFile(tamperedAudio, 'audio', ring);
    assert.equal(a.failed, 1);
    const back = await framesOf(a.bytes);
    assert.equal(back.length, plainAudio.length, 'no packet is lost from the timeline');
    assert.deepEqual([...back[6].data], [plainAudio[6].data[0] & 0xfc], 'the failed one is its TOC alone');
    assert.deepEqual([...back[7].data], [...plainAudio[7].data]);

    // Frame 7 (from 0) fails, keyframes are every 5th: 8 and 9 would decode from it: skipped.
    n = 0;
    const tamperedVideo = await mapWebmFrames(video, async (track, f) => {
      n += 1;
      if (n !== 8) return f;
      const t = Uint8Array.from(f);
      t[t.length - 1] ^= 1;
      return t;
    });
    const v = await decryptFile(tamperedVideo, 'video', ring);
    assert.deepEqual({ frames: v.frames, failed: v.failed, skipped: v.skipped }, { frames: plainVideo.length, failed: 1, skipped: 2 });
    const kept = await framesOf(v.bytes);
    assert.deepEqual(dataOf(kept), dataOf(plainVideo.filter((_, i) => i < 7 || i >= 10)));
  });

  test('decryptRecording: per-track blobs and counts; no key, a wrong key, a damaged file and a failed fetch are reported', async () => {
    const manifest = {
      e2ee: true,
      room: 'room-1',
      tracks: [
        { track: 4, participant_id: 7, participant: 'Lào Cai', kind: 'audio', source: 'microphone', codec: 'opus', file: 'track-4.ogg', start_offset_ms: 0 },
        { track: 5, participant_id: 7, participant: 'Lào Cai', kind: 'video', source: 'camera', codec: 'vp8', file: 'track-5.webm', start_offset_ms: 100 },
        { track: 6, participant_id: 8, participant: 'Hà Giang', kind: 'audio', source: 'microphone', codec: 'opus', file: 'track-6.ogg', start_offset_ms: 0 },
        { track: 7, participant_id: 9, participant: 'Sơn La', kind: 'video', source: 'camera', codec: 'vp8', file: 'track-7.webm', start_offset_ms: 0 },
        { track: 8, participant_id: 10, participant: 'Yên Bái', kind: 'video', source: 'camera', codec: 'vp8', file: 'track-8.webm', start_offset_ms: 0 },
        { track: 9, participant_id: 10, participant: 'Yên Bái', kind: 'audio', source: 'microphone', codec: 'opus', file: 'track-9.ogg', start_offset_ms: 0 },
        // A publication that never sent media has no file.
        { track: 10, participant_id: 7, participant: 'Lào Cai', kind: 'audio', source: 'screen', codec: 'opus', file: null },
      ],
    };
    const files = {
      'track-4.ogg': audio,
      'track-5.webm': video,
      'track-6.ogg': audio,
      'track-7.webm': video,
      'track-8.webm': Buffer.concat([video.subarray(0, 200), Buffer.from('this is not a frame')]),
    };
    const fetched = [];
    const fetchFile = async (name) => {
      fetched.push(name);
      if (!files[name]) throw new Error(`404 ${name}`);
      const b = files[name];
      return b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
    };
    const rings = new Map([
      ['7', await ringWith(BASE_KEY)],
      ['9', await ringWith(OTHER_KEY)],
      ['10', await ringWith(BASE_KEY)],
    ]);
    const progress = [];
    const results = await decryptRecording(manifest, fetchFile, rings, { onTrack: (done, total) => progress.push([done, total]) });
    assert.deepEqual(results.map((r) => [r.track.track, r.error]), [
      [4, null], [5, null], [6, 'no-key'], [7, 'undecryptable'], [8, 'damaged'], [9, 'fetch'],
    ]);
    assert.deepEqual(progress.map(([d]) => d), [1, 2, 3, 4, 5, 6]);
    assert.ok(!fetched.includes('track-6.ogg'), 'no file is fetched for a sender without a key');
    const [a, v, , wrong, damaged, missing] = results;
    assert.equal(a.blob.type, 'audio/ogg');
    assert.equal(v.blob.type, 'video/webm');
    assert.deepEqual(dataOf(await framesOf(new Uint8Array(await v.blob.arrayBuffer()))), dataOf(plainVideo));
    assert.deepEqual({ frames: a.frames, failed: a.failed }, { frames: plainAudio.length - 2, failed: 0 });
    assert.deepEqual({ blob: wrong.blob, frames: wrong.frames, failed: wrong.failed }, { blob: null, frames: plainVideo.length, failed: plainVideo.length });
    assert.equal(damaged.blob, null);
    assert.match(damaged.detail, /WebM/);
    assert.match(missing.detail, /404/);
    // Nothing but a manifest without tracks: nothing to do, and no throw.
    assert.deepEqual(await decryptRecording({}, fetchFile, rings), []);
    assert.deepEqual(await decryptRecording(null, fetchFile, null), []);
  });
});
