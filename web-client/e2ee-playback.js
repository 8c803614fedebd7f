// Decrypts an end-to-end encrypted recording in the browser that holds its keys (docs/e2ee.md,
// "Recording"). The server stored every frame as it arrived, SFrame-encrypted, in the usual
// per-publication files (Opus in Ogg, VP8 in WebM) and could mix nothing; this page decrypts
// each file with its sender's key ring and hands the player ordinary files. No DOM besides Blob,
// so node's unit tests run it too.

import { ContainerError, mapOggPackets, mapWebmFrames } from './containers.js';

/** Frames decrypted at once: WebCrypto works off the main thread, one call at a time is slow. */
const BATCH = 128;

const isOgg = (b) => b.length >= 4 && b[0] === 0x4f && b[1] === 0x67 && b[2] === 0x67 && b[3] === 0x53;
const isWebm = (b) => b.length >= 4 && b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3;

/** Decrypts `frames` with `ring`, BATCH at a time; failures are null. */
async function openAll(ring, kind, frames) {
  const plain = new Array(frames.length).fill(null);
  for (let i = 0; i < frames.length; i += BATCH) {
    const batch = frames.slice(i, i + BATCH).map((f) => ring.open(kind, f).catch(() => null));
    (await Promise.all(batch)).forEach((p, k) => {
      plain[i + k] = p;
    });
  }
  return plain;
}

/**
 * Decrypts one recorded file (Ogg Opus or WebM, told apart by their first bytes) whose frames
 * `ring` (the sender's KeyRing) opens; `codec` is the manifest's (encrypted meetings send VP8).
 * Returns `{ bytes, container: 'ogg' | 'webm', frames, failed, skipped }`: `frames` counts
 * media frames, `failed` those that did not decrypt, and `skipped` video frames left out after
 * a failure until the next keyframe (they would decode from a picture the decoder never had).
 * Throws a ContainerError for a damaged file.
 *
 * A failed frame is never played. In WebM it is dropped; in Ogg it becomes a zero-length Opus
 * frame with its TOC (which the decoder conceals, RFC 6716 §3.2.1): dropping the packet would
 * move every earlier packet of its page, as the page's granule position belongs to its last.
 * Packets of at most one byte are the recorder's gap fillers, never encrypted: kept as they are.
 */
export async function decryptFile(bytes, kind, ring, codec = 'vp8') {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let map;
  let container;
  if (isOgg(data)) {
    map = (fn) => mapOggPackets(data, (packet) => fn(packet, false));
    container = 'ogg';
  } else if (isWebm(data)) {
    map = (fn) => mapWebmFrames(data, (track, frame, keyframe) => fn(frame, keyframe));
    container = 'webm';
  } else {
    throw new ContainerError('neither an Ogg nor a WebM file');
  }
  // First pass: collect the frames, so that they can be decrypted in parallel.
  const frames = [];
  await map((frame) => {
    if (frame.length > 1 || container === 'webm') frames.push(frame);
    return frame;
  });
  const plain = await openAll(ring, kind, frames);
  // Second pass: put the decrypted frames in their places.
  let index = 0;
  let failed = 0;
  let skipped = 0;
  // A video decoder must start at a keyframe, and after a lost frame wait for the next one.
  let waiting = true;
  const out = await map((frame, keyframeFlag) => {
    if (container === 'ogg' && frame.length <= 1) return frame;
    const result = plain[index];
    index += 1;
    if (container === 'ogg') {
      if (result) return result;
      failed += 1;
      return Uint8Array.of(frame[0] & 0xfc);
    }
    if (!result) {
      failed += 1;
      waiting = true;
      return null;
    }
    // VP8's frame tag, now authenticated, says whether this is a keyframe; other codecs have
    // only the container's flag.
    const keyframe = codec === 'vp8' ? (result[0] & 0x01) === 0 : keyframeFlag;
    if (waiting && !keyframe) {
      skipped += 1;
      return null;
    }
    waiting = false;
    return result;
  });
  return { bytes: out, container, frames: frames.length, failed, skipped };
}

/**
 * Decrypts every track of an encrypted recording.
 *
 * - `manifest`: the recording's manifest.json (`e2ee: true`, `room`, `tracks`);
 * - `fetchFile(name)`: resolves to the file's ArrayBuffer (or rejects);
 * - `rings`: `keyRingsFor(manifest.room)` from keystore.js, participant id string -> KeyRing;
 * - `onTrack(done, total)`: optional progress, after each track.
 *
 * Resolves to one entry per track that has a file, in manifest order:
 * `{ track, blob, frames, failed, skipped, error, detail }` where `track` is the manifest's
 * entry, `blob` the decrypted file (null when nothing of it decrypted), and `error` null or
 * `'no-key'` (this browser holds no key of its sender), `'fetch'`, `'damaged'` (not a readable
 * Ogg or WebM file; `detail` says why) or `'undecryptable'` (every frame failed). Never
 * rejects: a bad track is reported in its entry.
 */
export async function decryptRecording(manifest, fetchFile, rings, { onTrack } = {}) {
  const tracks = (Array.isArray(manifest?.tracks) ? manifest.tracks : [])
    .filter((t) => t && typeof t.file === 'string' && t.file && (t.kind === 'audio' || t.kind === 'video'));
  const results = [];
  for (const track of tracks) {
    const entry = { track, blob: null, frames: 0, failed: 0, skipped: 0, error: null, detail: '' };
    results.push(entry);
    const ring = rings?.get(String(track.participant_id));
    if (!ring) {
      entry.error = 'no-key';
    } else {
      let bytes = null;
      try {
        bytes = new Uint8Array(await fetchFile(track.file));
      } catch (err) {
        entry.error = 'fetch';
        entry.detail = String(err?.message || err);
      }
      if (bytes) {
        try {
          const codec = track.kind === 'video' ? String(track.codec || 'vp8').toLowerCase() : 'opus';
          const file = await decryptFile(bytes, track.kind, ring, codec);
          Object.assign(entry, { frames: file.frames, failed: file.failed, skipped: file.skipped });
          if (file.frames > 0 && file.failed === file.frames) {
            entry.error = 'undecryptable';
          } else {
            const type = file.container === 'ogg' ? 'audio/ogg' : `${track.kind}/webm`;
            entry.blob = new Blob([file.bytes], { type });
          }
        } catch (err) {
          entry.error = 'damaged';
          entry.detail = String(err?.message || err);
          // Anything but a ContainerError is a bug here, not a bad file: keep it visible.
          if (!(err instanceof ContainerError)) console.warn('decrypting a recorded file failed:', err);
        }
      }
    }
    onTrack?.(results.length, tracks.length);
  }
  return results;
}
