// Recording files as the server's recorder writes them in an end-to-end encrypted meeting, for
// the container, playback and organizer tests: media made with ffmpeg, its frames taken out,
// SFrame-encrypted with web-client/sframe.js, and written back in the recorder's own layout
// (signaling/recorder/src/webm.rs and oggopus.rs): a WebM with a Segment and Clusters of
// unknown size holding SimpleBlocks of track 1 and a Duration in Info, and an Ogg Opus stream
// with its two header pages, pages ended every 200 ms, and one-byte filler packets in gaps.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { mapOggPackets, mapWebmFrames, oggCrc } from '../containers.js';
import { deriveFrameKey, importBaseKey, seal } from '../sframe.js';

const has = (tool) => spawnSync(tool, ['-version'], { stdio: 'ignore' }).status === 0;

/** Why ffmpeg-made files cannot be tested here, or false. Under CI a missing tool fails. */
export function ffmpegMissing() {
  const missing = !(has('ffmpeg') && has('ffprobe')) && 'needs ffmpeg and ffprobe to make and read media files';
  if (missing && process.env.CI) throw new Error(missing);
  return missing;
}

export function run(tool, args) {
  const result = spawnSync(tool, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (result.status !== 0) throw new Error(`${tool} ${args.join(' ')} failed:\n${result.stderr}`);
  return result.stdout;
}

const QUIET = ['-hide_banner', '-loglevel', 'error', '-y'];

/** Makes a file with ffmpeg in a fresh temporary directory and returns its bytes. */
export function ffmpegFile(name, args) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meet-e2ee-fixture-'));
  const file = path.join(dir, name);
  try {
    run('ffmpeg', [...QUIET, ...args, file]);
    return new Uint8Array(fs.readFileSync(file));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A solid-colour VP8 WebM (`colour` as ffmpeg names it), a keyframe every `gop` frames. */
export const colourWebm = ({ colour = 'red', seconds = 2, rate = 15, gop = 5, size = '160x90' } = {}) => ffmpegFile('video.webm', [
  '-f', 'lavfi', '-i', `color=c=${colour}:s=${size}:d=${seconds}:r=${rate}`, '-c:v', 'libvpx', '-b:v', '200k', '-g', String(gop),
]);

/** A sine tone as Ogg Opus, 20 ms packets. */
export const toneOgg = ({ hz = 440, seconds = 4 } = {}) => ffmpegFile('audio.ogg', [
  '-f', 'lavfi', '-i', `sine=frequency=${hz}:duration=${seconds}`, '-c:a', 'libopus', '-b:a', '48k', '-frame_duration', '20',
]);

/** ffprobe's packets of a file: `[{ size, pts }]` (it reads the bytes from stdin). */
export function probePackets(bytes) {
  const result = spawnSync('ffprobe', ['-v', 'error', '-show_entries', 'packet=size,pts_time', '-of', 'json', '-i', 'pipe:0'], {
    input: bytes, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024,
  });
  if (result.status !== 0) throw new Error(`ffprobe failed:\n${result.stderr}`);
  return JSON.parse(result.stdout).packets.map((p) => ({ size: Number(p.size), pts: Number(p.pts_time) }));
}

/** Every frame of a WebM file (`{ track, data, keyframe }`) or packet of an Ogg Opus file. */
export async function framesOf(bytes) {
  const frames = [];
  if (bytes[0] === 0x4f) {
    await mapOggPackets(bytes, (data) => {
      frames.push({ data: Uint8Array.from(data) });
      return data;
    });
  } else {
    await mapWebmFrames(bytes, (track, data, keyframe) => {
      frames.push({ track, data: Uint8Array.from(data), keyframe });
      return data;
    });
  }
  return frames;
}

// ---- the recorder's layout ------------------------------------------------------------------

function vint(size) {
  let length = 1;
  while (length < 8 && size >= 2 ** (7 * length) - 1) length += 1;
  const out = [];
  let v = size;
  for (let i = 0; i < length; i += 1) {
    out.unshift(v % 256);
    v = Math.floor(v / 256);
  }
  out[0] |= 0x80 >> (length - 1);
  return out;
}

function idBytes(id) {
  const out = [];
  for (let v = id; v > 0; v = Math.floor(v / 256)) out.unshift(v % 256);
  return out;
}

const element = (id, data) => [...idBytes(id), ...vint(data.length), ...data];
const uintElement = (id, value) => {
  const bytes = [];
  for (let v = value; v > 0 || !bytes.length; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return element(id, bytes);
};
const UNKNOWN = [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

/**
 * A WebM file laid out as webm.rs writes it: frames `[{ ms, keyframe, data }]`, a new unknown-
 * size Cluster on a keyframe a second on or after five seconds, and the Duration in the place
 * the header reserved for it.
 */
export function recorderWebm(frames, { width = 160, height = 90 } = {}) {
  const out = [];
  out.push(...element(0x1a45dfa3, [
    ...uintElement(0x4286, 1), ...uintElement(0x42f7, 1), ...uintElement(0x42f2, 4), ...uintElement(0x42f3, 8),
    ...element(0x4282, [...Buffer.from('webm')]), ...uintElement(0x4287, 4), ...uintElement(0x4285, 2),
  ]));
  out.push(...idBytes(0x18538067), ...UNKNOWN);
  const last = frames.length ? frames[frames.length - 1].ms : 0;
  const step = frames.length > 1 ? last - frames[frames.length - 2].ms : 0;
  const duration = Buffer.alloc(8);
  duration.writeDoubleBE(last + step);
  out.push(...element(0x1549a966, [
    ...uintElement(0x2ad7b1, 1_000_000), ...element(0x4d80, [...Buffer.from('meet-recorder')]),
    ...element(0x5741, [...Buffer.from('meet-recorder')]), ...element(0x4489, [...duration]),
  ]));
  const video = [...uintElement(0xb0, width), ...uintElement(0xba, height)];
  const entry = [
    ...uintElement(0xd7, 1), ...uintElement(0x73c5, 1), ...uintElement(0x83, 1), ...uintElement(0x9c, 0),
    ...element(0x86, [...Buffer.from('V_VP8')]), ...element(0xe0, video),
  ];
  out.push(...element(0x1654ae6b, element(0xae, entry)));
  let clusterStart = null;
  const parts = [Uint8Array.from(out)];
  for (const { ms, keyframe, data } of frames) {
    const head = [];
    if (clusterStart === null || ms - clusterStart >= 5000 || (keyframe && ms - clusterStart >= 1000)) {
      head.push(...idBytes(0x1f43b675), ...UNKNOWN, ...uintElement(0xe7, ms));
      clusterStart = ms;
    }
    const relative = ms - clusterStart;
    head.push(0xa3, ...vint(4 + data.length), 0x81, (relative >> 8) & 0xff, relative & 0xff, keyframe ? 0x80 : 0);
    parts.push(Uint8Array.from(head), data);
  }
  return Buffer.concat(parts);
}


/** One Ogg page holding whole packets. */
export function oggPage({ serial, sequence, granule, flags = 0, packets, lacingOverride = null }) {
  const lacing = lacingOverride || packets.flatMap((p) => [...new Array(Math.floor(p.length / 255)).fill(255), p.length % 255]);
  const body = Buffer.concat(packets.map((p) => Buffer.from(p)));
  const page = Buffer.alloc(27 + lacing.length + body.length);
  page.write('OggS', 0, 'latin1');
  page[5] = flags;
  page.writeBigUInt64LE(BigInt.asUintN(64, BigInt(granule)), 6);
  page.writeUInt32LE(serial, 14);
  page.writeUInt32LE(sequence, 18);
  page[26] = lacing.length;
  Buffer.from(lacing).copy(page, 27);
  body.copy(page, 27 + lacing.length);
  page.writeUInt32LE(oggCrc(page), 22);
  return page;
}

/**
 * An Ogg Opus file laid out as oggopus.rs writes it: OpusHead and OpusTags on pages of their
 * own, then packets `[{ data, granule }]` (granule: where the packet's last sample is), a page
 * ended once 200 ms (9600 granules) have passed, the last page marked end of stream.
 */
export function recorderOgg(packets, { serial = 4, channels = 1 } = {}) {
  const head = Buffer.alloc(19);
  head.write('OpusHead', 0, 'latin1');
  head[8] = 1;
  head[9] = channels;
  head.writeUInt32LE(48000, 12);
  const vendor = Buffer.from('meet-recorder');
  const tags = Buffer.concat([Buffer.from('OpusTags'), Buffer.from(Uint32Array.of(vendor.length).buffer), vendor, Buffer.alloc(4)]);
  const pages = [
    oggPage({ serial, sequence: 0, granule: 0, flags: 0x02, packets: [head] }),
    oggPage({ serial, sequence: 1, granule: 0, packets: [tags] }),
  ];
  let pending = [];
  let pageStart = 0;
  packets.forEach(({ data, granule }, i) => {
    pending.push(data);
    const lastOne = i === packets.length - 1;
    if (lastOne || granule - pageStart >= 9600) {
      pages.push(oggPage({ serial, sequence: pages.length, granule, flags: lastOne ? 0x04 : 0, packets: pending }));
      pending = [];
      pageStart = granule;
    }
  });
  return Buffer.concat(pages);
}

// ---- encryption ----------------------------------------------------------------------------

/** A sender's frame key for `kid` from its 16-byte base key, as sframe.js derives it. */
export async function frameKeyFor(baseKey, kid) {
  return deriveFrameKey(await importBaseKey(baseKey), kid);
}

/**
 * Encrypts one frame as a sender does, under the next value of `counter` (`{ next }`, shared
 * by all of a sender's streams as docs/e2ee.md says).
 */
export async function encryptFrame(frameKey, counter, kind, data) {
  const ctr = counter.next;
  counter.next += 1;
  return seal(frameKey, ctr, kind, data);
}

/**
 * The recorder's files of one encrypted publication made from an ffmpeg file: its frames in
 * the recorder's layout, each encrypted. For audio, `fillers` lists packet indexes replaced by
 * the recorder's one-byte gap fillers (the TOC alone, code 0), never encrypted.
 */
export async function encryptedRecorderFile(bytes, kind, frameKey, counter, { fillers = [], rate = 15 } = {}) {
  const frames = await framesOf(bytes);
  if (kind === 'video') {
    const out = [];
    for (const [i, f] of frames.entries()) {
      out.push({ ms: Math.round((i * 1000) / rate), keyframe: f.keyframe, data: await encryptFrame(frameKey, counter, kind, f.data) });
    }
    return recorderWebm(out);
  }
  const out = [];
  for (const [i, f] of frames.entries()) {
    const data = fillers.includes(i) ? Uint8Array.of(f.data[0] & 0xfc) : await encryptFrame(frameKey, counter, kind, f.data);
    out.push({ data, granule: (i + 1) * 960 });
  }
  return recorderOgg(out);
}
