// The WebM and Ogg rewriters the recording player decrypts with (web-client/containers.js).
// Files made by ffmpeg and by hand (in the recorder's layout, and with what ffmpeg does not
// write: lacing, BlockGroups, CRC-32 elements, packets across pages) must come back byte for
// byte under the identity map, which checks the parsing, the size fields and both checksums;
// and with changed frames they must read again, here and in ffprobe, with the new frames.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ContainerError, mapOggPackets, mapWebmFrames, oggCrc } from '../containers.js';
import {
  colourWebm, ffmpegMissing, framesOf, oggPage, probePackets, recorderOgg, recorderWebm, toneOgg,
} from './e2ee-fixtures.mjs';

const skipFfmpeg = ffmpegMissing();
if (skipFfmpeg) console.log(`# skipping the ffmpeg round trips: ${skipFfmpeg}`);

const identity = (collect) => async (...args) => {
  collect?.push(args);
  return args[args.length === 3 ? 1 : 0];
};
/**
 * A recognisable change: the frame's bytes after the first reversed, and cut to two thirds (at
 * least 1 byte). The first byte stays: Opus's TOC says how long a packet plays, which ffprobe
 * reads to time the packets.
 */
const shrink = (frame) => Uint8Array.from([frame[0], ...Uint8Array.from(frame.subarray(1)).reverse()])
  .subarray(0, Math.max(1, Math.ceil((frame.length * 2) / 3)));
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

// ---- EBML built by hand ----------------------------------------------------------------------

function vint(value, length) {
  const out = [];
  let v = value;
  for (let i = 0; i < length; i += 1) {
    out.unshift(v % 256);
    v = Math.floor(v / 256);
  }
  out[0] |= 0x80 >> (length - 1);
  return out;
}
const minimalLength = (v) => {
  let l = 1;
  while (v >= 2 ** (7 * l) - 1) l += 1;
  return l;
};
const ids = (id) => {
  const out = [];
  for (let v = id; v > 0; v = Math.floor(v / 256)) out.unshift(v % 256);
  return out;
};
const el = (id, data, sizeLength = minimalLength(data.length)) => [...ids(id), ...vint(data.length, sizeLength), ...data];

/** Reference CRC-32 (bit by bit, reflected 0xEDB88320) to check the table-driven one against. */
function crc32(bytes) {
  let crc = 0xffffffff;
  for (const b of bytes) {
    crc ^= b;
    for (let k = 0; k < 8; k += 1) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}
const crcElement = (data) => {
  const c = crc32(data);
  return [0xbf, 0x84, c & 0xff, (c >>> 8) & 0xff, (c >>> 16) & 0xff, c >>> 24];
};

const EBML_HEAD = el(0x1a45dfa3, el(0x4282, [...Buffer.from('webm')]));
const simpleBlock = (track, time, flags, ...frames) => el(0xa3, [...vint(track, 1), time >> 8, time & 0xff, flags, ...frames.flat()]);

/** Reads a WebM file's Cluster children back, independently of containers.js's writer. */
function clusterChildren(bytes) {
  const read = (pos) => {
    const idLength = Math.clz32(bytes[pos]) - 23;
    let id = 0;
    for (let i = 0; i < idLength; i += 1) id = id * 256 + bytes[pos + i];
    const sizeLength = Math.clz32(bytes[pos + idLength]) - 23;
    let size = bytes[pos + idLength] & (0xff >> sizeLength);
    let unknown = size === 0xff >> sizeLength;
    for (let i = 1; i < sizeLength; i += 1) {
      unknown &&= bytes[pos + idLength + i] === 0xff;
      size = size * 256 + bytes[pos + idLength + i];
    }
    return { id, data: pos + idLength + sizeLength, size: unknown ? null : size, sizeLength };
  };
  const found = [];
  const walk = (start, end) => {
    for (let pos = start; pos < end;) {
      const h = read(pos);
      if (h.id === 0x18538067 || h.id === 0x1f43b675) {
        found.push({ id: h.id, size: h.size, sizeLength: h.sizeLength });
        walk(h.data, h.size === null ? end : h.data + h.size);
        // Unknown sizes nest to the end of the data here, which is fine for these files.
        if (h.size === null) return;
        pos = h.data + h.size;
      } else {
        found.push({ id: h.id, size: h.size, bytes: bytes.subarray(h.data, h.data + h.size) });
        pos = h.data + h.size;
      }
    }
  };
  walk(0, bytes.length);
  return found;
}

describe('WebM', () => {
  test('the recorder\'s layout: identity is byte-identical, changed frames keep unknown sizes unknown', async () => {
    const frames = [
      { ms: 0, keyframe: true, data: Uint8Array.from({ length: 300 }, (_, i) => i & 0xff) },
      { ms: 33, keyframe: false, data: Uint8Array.of(1, 2, 3, 4, 5, 6) },
      { ms: 1100, keyframe: true, data: Uint8Array.from({ length: 40 }, (_, i) => 255 - i) },
    ];
    const file = recorderWebm(frames);
    const seen = [];
    const copy = await mapWebmFrames(file, identity(seen));
    assert.ok(same(copy, file), 'identity gives the same bytes');
    assert.deepEqual(seen.map(([track, f, key]) => [track, [...f], key]), frames.map((f) => [1, [...f.data], f.keyframe]));

    const changed = await mapWebmFrames(file, async (track, f) => shrink(f));
    assert.deepEqual((await framesOf(changed)).map((f) => [...f.data]), frames.map((f) => [...shrink(f.data)]));
    const layout = clusterChildren(changed);
    assert.deepEqual(layout.filter((e) => e.id === 0x18538067 || e.id === 0x1f43b675).map((e) => e.size), [null, null, null],
      'the Segment and both Clusters are still of unknown size');
    // Info (with the Duration) and Tracks are copied as they were.
    const infoAndTracks = (bytes) => clusterChildren(bytes).filter((e) => e.id === 0x1549a966 || e.id === 0x1654ae6b).map((e) => [...e.bytes]);
    assert.equal(infoAndTracks(changed).length, 2);
    assert.deepEqual(infoAndTracks(changed), infoAndTracks(file));
  });

  test('known sizes are re-sized keeping their width, blocks may be dropped, CRC-32 recomputed', async () => {
    const blocks = [
      simpleBlock(1, 0, 0x80, [10, 11, 12, 13, 14, 15]),
      simpleBlock(2, 0, 0x80, [20, 21, 22]),
      simpleBlock(1, 40, 0x00, [30, 31, 32, 33]),
    ];
    const clusterData = [...el(0xe7, [0]), ...blocks.flat()];
    // An 8-byte size on the Cluster, as muxers that patch sizes later write them.
    const cluster = el(0x1f43b675, [...crcElement(clusterData), ...clusterData], 8);
    const file = Uint8Array.from([...EBML_HEAD, ...el(0x18538067, cluster, 8)]);
    assert.ok(same(await mapWebmFrames(file, identity()), file), 'identity, CRC-32 included');

    // Track 2's frames dropped, track 1's cut to two bytes.
    const changed = await mapWebmFrames(file, async (track, f) => (track === 2 ? null : f.subarray(0, 2)));
    const layout = clusterChildren(changed);
    const segment = layout.find((e) => e.id === 0x18538067);
    const clusterEntry = layout.find((e) => e.id === 0x1f43b675);
    assert.equal(segment.sizeLength, 8, 'the Segment keeps its 8-byte size field');
    assert.equal(clusterEntry.sizeLength, 8);
    const newBlocks = [simpleBlock(1, 0, 0x80, [10, 11]), simpleBlock(1, 40, 0x00, [30, 31])];
    const newData = [...el(0xe7, [0]), ...newBlocks.flat()];
    assert.equal(clusterEntry.size, 6 + newData.length, 'the Cluster is re-sized');
    assert.equal(segment.size, changed.length - EBML_HEAD.length - 12);
    const crc = layout.find((e) => e.id === 0xbf);
    assert.deepEqual([...crc.bytes], crcElement(newData).slice(2), 'the CRC-32 covers the new children');
  });

  test('BlockGroups: a Block is a keyframe unless it references another; laced frames map one by one', async () => {
    const block = (time, ...frames) => el(0xa1, [0x81, 0, time, 0, ...frames.flat()]);
    const groupKey = el(0xa0, [...block(0, [1, 2, 3])]);
    const groupDelta = el(0xa0, [...block(10, [4, 5, 6]), ...el(0xfb, [0xf6])]);
    // Xiph lacing: 3 frames of 300, 2 and 4 bytes.
    const big = Array.from({ length: 300 }, (_, i) => i & 0x7f);
    const xiph = el(0xa3, [0x81, 0, 20, 0x80 | 0x02, 2, 255, 45, 2, ...big, 7, 7, 8, 8, 8, 8]);
    // EBML lacing: 3 frames of 5, 3 and 4 bytes (first size 5, then the difference -2).
    const ebml = el(0xa3, [0x81, 0, 30, 0x06, 2, 0x85, 0xbd, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]);
    // Fixed lacing: 2 frames of 3 bytes.
    const fixed = el(0xa3, [0x81, 0, 40, 0x04, 1, 9, 9, 9, 6, 6, 6]);
    const cluster = el(0x1f43b675, [...el(0xe7, [0]), ...groupKey, ...groupDelta, ...xiph, ...ebml, ...fixed]);
    const file = Uint8Array.from([...EBML_HEAD, ...el(0x18538067, cluster)]);

    const seen = [];
    assert.ok(same(await mapWebmFrames(file, identity(seen)), file));
    assert.deepEqual(seen.map(([, f, key]) => [f.length, key]), [
      [3, true], [3, false], [300, true], [2, true], [4, true], [5, false], [3, false], [4, false], [3, false], [3, false],
    ]);

    // Every laced frame gets its index as one byte appended; the fixed lace thus stays fixed,
    // and the first frame of each lace is dropped.
    let n = 0;
    const changed = await mapWebmFrames(file, async (track, f) => {
      n += 1;
      if ([3, 6, 9].includes(n)) return null;
      return Uint8Array.from([...f, n]);
    });
    const back = await framesOf(changed);
    assert.deepEqual(back.map((f) => f.data.length), [4, 4, 3, 5, 4, 5, 4]);
    assert.deepEqual(back.map((f) => f.data[f.data.length - 1]), [1, 2, 4, 5, 7, 8, 10]);
    assert.deepEqual(back.map((f) => f.keyframe), [true, false, true, true, false, false, false]);
    // Fixed lacing holds only frames of one length: others go out EBML-laced.
    const unequal = await mapWebmFrames(file, async (track, f) => (f[0] === 9 ? f.subarray(0, 1) : f[0] === 6 ? f.subarray(0, 2) : f));
    assert.deepEqual((await framesOf(unequal)).slice(-2).map((f) => [...f.data]), [[9], [6, 6]]);
    // Dropping the Block drops its group.
    const noGroups = await mapWebmFrames(file, async (track, f, key) => (f.length === 3 && (f[0] === 1 || f[0] === 4) ? null : f));
    assert.equal(clusterChildren(noGroups).filter((e) => e.id === 0xa0).length, 0);
  });

  test('damaged files are refused with a ContainerError', async () => {
    const file = recorderWebm([{ ms: 0, keyframe: true, data: Uint8Array.of(1, 2, 3, 4) }]);
    await assert.rejects(mapWebmFrames(file.subarray(0, file.length - 2), identity()), ContainerError, 'a block cut short');
    await assert.rejects(mapWebmFrames(Uint8Array.of(0x4f, 0x67, 0x67, 0x53, 0, 0), identity()), ContainerError, 'not EBML');
    await assert.rejects(mapWebmFrames(Uint8Array.from(EBML_HEAD), identity()), ContainerError, 'no Segment');
    await assert.rejects(mapWebmFrames(Uint8Array.of(0x1a, 0x45, 0xdf, 0xa3, 0x00), identity()), ContainerError, 'a size of nine bytes');
    await assert.rejects(mapWebmFrames(file, async () => 'not bytes'), TypeError);
  });

  test('ffmpeg\'s WebM round-trips: identity byte for byte, shrunk frames in ffprobe', { skip: skipFfmpeg }, async () => {
    const file = colourWebm({ seconds: 2, gop: 5 });
    const probed = probePackets(file);
    const seen = [];
    const copy = await mapWebmFrames(file, identity(seen));
    assert.ok(same(copy, file), 'identity gives the same bytes (SeekHead and Cues kept)');
    assert.deepEqual(seen.map(([, f]) => f.length), probed.map((p) => p.size), 'every frame ffprobe sees, and no more');
    assert.deepEqual(seen.map(([, , key]) => key), probed.map((_, i) => i % 5 === 0));

    const changed = await mapWebmFrames(file, async (track, f) => shrink(f));
    const reprobed = probePackets(changed);
    assert.deepEqual(reprobed.map((p) => p.size), seen.map(([, f]) => shrink(f).length));
    assert.deepEqual(reprobed.map((p) => p.pts), probed.map((p) => p.pts), 'timestamps kept');
    assert.deepEqual((await framesOf(changed)).map((f) => [...f.data]), seen.map(([, f]) => [...shrink(f)]));
    // The Cues pointed at the old Cluster positions: they are gone, not wrong.
    assert.equal(Buffer.from(changed).indexOf(Buffer.from([0x1c, 0x53, 0xbb, 0x6b])), -1);
    assert.notEqual(Buffer.from(file).indexOf(Buffer.from([0x1c, 0x53, 0xbb, 0x6b])), -1);
  });
});

// ---- Ogg -----------------------------------------------------------------------------------

const OPUS_HEAD = Buffer.concat([Buffer.from('OpusHead'), Buffer.from([1, 1, 0, 0, 0x80, 0xbb, 0, 0, 0, 0, 0])]);
const OPUS_TAGS = Buffer.concat([Buffer.from('OpusTags'), Buffer.from([0, 0, 0, 0, 0, 0, 0, 0])]);

/** The pages of an Ogg file, read independently: `{ flags, granule, serial, sequence, lacing, crcOk }`. */
function pagesOf(bytes) {
  const pages = [];
  const b = Buffer.from(bytes);
  for (let pos = 0; pos < b.length;) {
    assert.equal(b.toString('latin1', pos, pos + 4), 'OggS');
    const count = b[pos + 26];
    const lacing = [...b.subarray(pos + 27, pos + 27 + count)];
    const end = pos + 27 + count + lacing.reduce((n, l) => n + l, 0);
    const page = Buffer.from(b.subarray(pos, end));
    const crc = page.readUInt32LE(22);
    page.writeUInt32LE(0, 22);
    pages.push({
      flags: b[pos + 5], granule: b.readBigInt64LE(pos + 6), serial: b.readUInt32LE(pos + 14),
      sequence: b.readUInt32LE(pos + 18), lacing, crcOk: crc === oggCrc(page),
    });
    pos = end;
  }
  return pages;
}

describe('Ogg', () => {
  test('the page checksum is Ogg\'s CRC-32 (0x04c11db7, not reflected, from 0)', () => {
    // CRC-32/CKSUM's check value without its final inversion.
    assert.equal(oggCrc(Buffer.from('123456789')), (0x765e7680 ^ 0xffffffff) >>> 0);
    assert.equal(oggCrc(new Uint8Array(0)), 0);
  });

  test('the recorder\'s layout: identity byte-identical, headers and fillers seen as they are', async () => {
    const packets = [0xfc, 0xfc, 0xf8, 0xfc].map((toc, i) => ({ data: Uint8Array.of(toc, ...new Array(30 + i).fill(i)), granule: (i + 1) * 960 }));
    packets.splice(2, 0, { data: Uint8Array.of(0xfc), granule: 3 * 960 });
    const file = recorderOgg(packets.map((p, i) => ({ ...p, granule: (i + 1) * 960 })));
    const seen = [];
    assert.ok(same(await mapOggPackets(file, identity(seen)), file));
    assert.deepEqual(seen.map(([p, i]) => [p.length, i]), [[31, 0], [32, 1], [1, 2], [33, 3], [34, 4]], 'headers are not mapped');

    const changed = await mapOggPackets(file, async (p, i) => (i === 1 ? null : shrink(p)));
    const back = await framesOf(changed);
    assert.deepEqual(back.map((f) => [...f.data]), [0, 2, 3, 4].map((i) => [...shrink(seen[i][0])]));
    const pages = pagesOf(changed);
    assert.ok(pages.every((p) => p.crcOk));
    assert.deepEqual(pages.map((p) => p.flags), pagesOf(file).map((p) => p.flags));
    assert.deepEqual(pages.map((p) => p.granule), pagesOf(file).map((p) => p.granule));
  });

  test('packets across pages keep their pages; a page left empty goes and later pages are renumbered', async () => {
    const serial = 77;
    const big = Uint8Array.from({ length: 600 }, (_, i) => (i * 7) & 0xff);
    const small = Uint8Array.of(0xfc, 1, 2, 3);
    // Page 2: a small packet, then 255 bytes of the big one; page 3: 255 more; page 4: the
    // last 90 and another small one.
    const pages = [
      oggPage({ serial, sequence: 0, granule: 0, flags: 2, packets: [OPUS_HEAD] }),
      oggPage({ serial, sequence: 1, granule: 0, packets: [OPUS_TAGS] }),
      oggPage({ serial, sequence: 2, granule: 960, packets: [small, big.subarray(0, 255)], lacingOverride: [4, 255] }),
      oggPage({ serial, sequence: 3, granule: -1, flags: 1, packets: [big.subarray(255, 510)], lacingOverride: [255] }),
      oggPage({ serial, sequence: 4, granule: 2880, flags: 1 | 4, packets: [big.subarray(510), small], lacingOverride: [90, 4] }),
    ];
    const file = Buffer.concat(pages);
    const seen = [];
    assert.ok(same(await mapOggPackets(file, identity(seen)), file));
    assert.deepEqual(seen.map(([p]) => p.length), [4, 600, 4]);
    assert.ok(same(seen[1][0], big), 'reassembled across three pages');

    // Shrunk to 300 bytes, the big packet fills page 2's 255 and ends on page 4 as before:
    // page 3 holds nothing any more and goes.
    const changed = await mapOggPackets(file, async (p) => (p.length === 600 ? p.subarray(0, 300) : p));
    const out = pagesOf(changed);
    assert.deepEqual(out.map((p) => p.sequence), [0, 1, 2, 3]);
    assert.deepEqual(out.map((p) => p.granule), [0n, 0n, 960n, 2880n]);
    assert.deepEqual(out.map((p) => p.flags), [2, 0, 0, 1 | 4]);
    assert.deepEqual(out[2].lacing, [4, 255]);
    assert.deepEqual(out[3].lacing, [45, 4]);
    assert.ok(out.every((p) => p.crcOk));
    assert.deepEqual((await framesOf(changed)).map((f) => f.data.length), [4, 300, 4]);

    // Shrunk below 255 bytes it cannot start on page 2: it lies whole on page 4, which is then
    // no continuation.
    const tiny = await mapOggPackets(file, async (p) => (p.length === 600 ? p.subarray(0, 10) : p));
    const tinyPages = pagesOf(tiny);
    assert.deepEqual(tinyPages.map((p) => [p.sequence, p.flags, p.lacing]), [[0, 2, [19]], [1, 0, [16]], [2, 0, [4]], [3, 4, [10, 4]]]);
    assert.deepEqual((await framesOf(tiny)).map((f) => f.data.length), [4, 10, 4]);

    // Grown past what a page's 255 lacing values hold: refused, not mis-paged.
    await assert.rejects(mapOggPackets(file, async (p) => new Uint8Array(70000)), ContainerError);
  });

  test('damaged and foreign files are refused with a ContainerError', async () => {
    const file = recorderOgg([{ data: Uint8Array.of(0xfc, 1, 2), granule: 960 }]);
    await assert.rejects(mapOggPackets(file.subarray(0, file.length - 1), identity()), ContainerError, 'cut short');
    await assert.rejects(mapOggPackets(Buffer.concat([file, Buffer.from('junk')]), identity()), ContainerError, 'trailing junk');
    const vorbis = Buffer.concat([
      oggPage({ serial: 1, sequence: 0, granule: 0, flags: 2, packets: [Buffer.from('\x01vorbis-not-opus')] }),
      oggPage({ serial: 1, sequence: 1, granule: 0, packets: [Buffer.from('\x03vorbis')] }),
    ]);
    await assert.rejects(mapOggPackets(vorbis, identity()), ContainerError, 'not Opus');
    const orphan = Buffer.concat([file.subarray(0, file.length), oggPage({ serial: 4, sequence: 9, granule: 1920, flags: 1, packets: [Uint8Array.of(1)] })]);
    await assert.rejects(mapOggPackets(orphan, identity()), ContainerError, 'a continuation of nothing');
  });

  test('ffmpeg\'s Ogg Opus round-trips: identity byte for byte, shrunk packets in ffprobe', { skip: skipFfmpeg }, async () => {
    const file = toneOgg({ seconds: 4 });
    const probed = probePackets(file);
    const seen = [];
    assert.ok(same(await mapOggPackets(file, identity(seen)), file));
    assert.deepEqual(seen.map(([p]) => p.length), probed.map((p) => p.size));

    const changed = await mapOggPackets(file, async (p) => shrink(p));
    const reprobed = probePackets(changed);
    assert.deepEqual(reprobed.map((p) => p.size), seen.map(([p]) => shrink(p).length));
    assert.deepEqual(reprobed.map((p) => p.pts), probed.map((p) => p.pts), 'granule positions kept');
    assert.ok(pagesOf(changed).every((p) => p.crcOk));
    assert.deepEqual(pagesOf(changed).map((p) => [p.flags, p.granule, p.sequence]), pagesOf(file).map((p) => [p.flags, p.granule, p.sequence]));
  });
});
