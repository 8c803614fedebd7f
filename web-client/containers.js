// Rewrites the frames inside the two containers the recorder writes, leaving everything else as
// it was: WebM (Matroska's EBML) for video and Ogg (RFC 3533, with Opus per RFC 7845) for audio.
// The recording player uses it to decrypt end-to-end encrypted recordings in the browser
// (docs/e2ee.md): the server stored each frame as it arrived, so only the frame payloads change
// and the files' timing stays the recorder's. No DOM: node's unit tests run it too.
//
// Malformed input throws a ContainerError, which callers report; it never yields a half-parsed
// file. Callbacks run one frame at a time, in file order, so that a caller may keep state.

/** A file that is not the container it should be, or is cut short. */
export class ContainerError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ContainerError';
  }
}

function concat(parts, length = parts.reduce((n, p) => n + p.length, 0)) {
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function checkResult(result) {
  if (result !== null && !(result instanceof Uint8Array)) {
    throw new TypeError('a frame callback must return a Uint8Array or null');
  }
  return result;
}

// ---- EBML / WebM ---------------------------------------------------------------------------

const EBML_HEADER = 0x1a45dfa3;
const SEGMENT = 0x18538067;
const CLUSTER = 0x1f43b675;
const SEEK_HEAD = 0x114d9b74;
const CUES = 0x1c53bb6b;
const SIMPLE_BLOCK = 0xa3;
const BLOCK_GROUP = 0xa0;
const BLOCK = 0xa1;
const REFERENCE_BLOCK = 0xfb;
const CRC32 = 0xbf;
const POSITION = 0xa7;
const PREV_SIZE = 0xab;

/** Children of a Segment: one of them, or a new file, ends a Cluster of unknown size. */
const LEVEL_ONE = new Set([
  SEEK_HEAD, 0x1549a966 /* Info */, 0x1654ae6b /* Tracks */, CLUSTER, CUES, 0x1043a770 /* Chapters */,
  0x1254c367 /* Tags */, 0x1941a469 /* Attachments */, EBML_HEADER, SEGMENT,
]);

/**
 * The element header at `pos`: its ID (marker bits kept, as IDs are written), where its data
 * starts, and its size (null when unknown, all value bits set). Throws on malformed or
 * truncated headers.
 */
function readElementHeader(bytes, pos, end) {
  if (pos >= end) throw new ContainerError(`WebM: element header past the end at ${pos}`);
  const first = bytes[pos];
  const idLength = first === 0 ? 9 : Math.clz32(first) - 23;
  if (idLength > 4) throw new ContainerError(`WebM: invalid element ID at ${pos}`);
  const sizeAt = pos + idLength;
  if (sizeAt >= end) throw new ContainerError(`WebM: element header cut short at ${pos}`);
  let id = 0;
  for (let i = 0; i < idLength; i += 1) id = id * 256 + bytes[pos + i];
  const sizeFirst = bytes[sizeAt];
  const sizeLength = sizeFirst === 0 ? 9 : Math.clz32(sizeFirst) - 23;
  if (sizeLength > 8) throw new ContainerError(`WebM: invalid element size at ${sizeAt}`);
  if (sizeAt + sizeLength > end) throw new ContainerError(`WebM: element header cut short at ${pos}`);
  let size = sizeFirst & (0xff >> sizeLength);
  let allOnes = size === 0xff >> sizeLength;
  for (let i = 1; i < sizeLength; i += 1) {
    const b = bytes[sizeAt + i];
    allOnes &&= b === 0xff;
    size = size * 256 + b;
  }
  if (!allOnes && size > Number.MAX_SAFE_INTEGER) throw new ContainerError(`WebM: element too large at ${pos}`);
  return { id, dataStart: sizeAt + sizeLength, size: allOnes ? null : size, sizeLength, headerStart: pos };
}

/** The shortest length of a vint holding `value` (all ones stays reserved for "unknown"). */
function vintLength(value) {
  let length = 1;
  while (length < 8 && value >= 2 ** (7 * length) - 1) length += 1;
  return length;
}

function encodeVint(value, length) {
  const out = new Uint8Array(length);
  let v = value;
  for (let i = length - 1; i >= 0; i -= 1) {
    out[i] = v % 256;
    v = Math.floor(v / 256);
  }
  out[0] |= 0x80 >> (length - 1);
  return out;
}

/**
 * A known size, kept at the width the file used when it still fits (so an unchanged element is
 * byte for byte the same, and a shrinking one keeps its header's length), else the shortest.
 */
function sizeField(size, originalLength) {
  const length = size < 2 ** (7 * originalLength) - 1 ? originalLength : vintLength(size);
  return encodeVint(size, length);
}

let ieeeTable = null;

/** CRC-32 as EBML's CRC-32 element holds it (ISO 3309, reflected 0xEDB88320), over chunks. */
function ebmlCrc(chunks) {
  if (!ieeeTable) {
    ieeeTable = new Uint32Array(256);
    for (let n = 0; n < 256; n += 1) {
      let c = n;
      for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      ieeeTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i += 1) crc = ieeeTable[(crc ^ chunk[i]) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/*
 * The file is parsed into a small tree of the parts that can change, and written out again:
 *
 * - `raw`: copied as it was (the EBML header, Info, Tracks, Timestamps, Voids, ...);
 * - `positional`: SeekHead, Cues and a Cluster's Position and PrevSize hold byte offsets into
 *   the Segment. They are copied while every element keeps its length; once a changed frame
 *   moves the Clusters they would point into the middle of other elements, and they are left
 *   out rather than recomputed, because recomputing them can change the length of the very
 *   elements they locate (a SeekHead sits before the Clusters). Both are optional: players
 *   find Clusters by reading on, as they do in the recorder's own files, which never have them;
 * - `crc`: an EBML CRC-32 element, recomputed over its parent's following children;
 * - `block`: a SimpleBlock or Block, rebuilt from its header and the mapped frames;
 * - `master`: Segment, Cluster, BlockGroup. An unknown size stays unknown (the recorder writes
 *   the Segment and its Clusters so, and they end where the next element of their parent
 *   begins, whatever their length). A known size is re-computed when the children change:
 *   Matroska allows an unknown size only on Segments and Clusters, so re-sizing is the one
 *   answer that works for every master, and doing it everywhere keeps one rule.
 */

function rawNode(bytes, start, end, positional = false) {
  return { type: positional ? 'positional' : 'raw', bytes: bytes.subarray(start, end) };
}

/** Lengths of the frames in a block, from its lacing (Matroska §10.3). */
function lacedSizes(bytes, at, end, lacing) {
  if (lacing === 0) return { sizes: [end - at], dataStart: at };
  if (at >= end) throw new ContainerError('WebM: laced block cut short');
  const count = bytes[at] + 1;
  let pos = at + 1;
  const sizes = [];
  if (lacing === 1) {
    for (let i = 0; i < count - 1; i += 1) {
      let size = 0;
      let b;
      do {
        if (pos >= end) throw new ContainerError('WebM: Xiph lacing cut short');
        b = bytes[pos];
        pos += 1;
        size += b;
      } while (b === 255);
      sizes.push(size);
    }
  } else if (lacing === 3) {
    let previous = 0;
    for (let i = 0; i < count - 1; i += 1) {
      if (pos >= end) throw new ContainerError('WebM: EBML lacing cut short');
      const length = bytes[pos] === 0 ? 9 : Math.clz32(bytes[pos]) - 23;
      if (length > 8 || pos + length > end) throw new ContainerError('WebM: invalid EBML lacing');
      let value = bytes[pos] & (0xff >> length);
      for (let k = 1; k < length; k += 1) value = value * 256 + bytes[pos + k];
      pos += length;
      // The first size is unsigned; the others are differences, biased to be unsigned.
      previous = i === 0 ? value : previous + value - (2 ** (7 * length - 1) - 1);
      if (previous < 0) throw new ContainerError('WebM: invalid EBML lacing');
      sizes.push(previous);
    }
  } else {
    const total = end - pos;
    if (total % count !== 0) throw new ContainerError('WebM: fixed lacing does not divide the block');
    return { sizes: new Array(count).fill(total / count), dataStart: pos };
  }
  const laced = sizes.reduce((n, s) => n + s, 0);
  if (pos + laced > end) throw new ContainerError('WebM: laced frames overrun their block');
  sizes.push(end - pos - laced);
  return { sizes, dataStart: pos };
}

/** The lacing header for `frames` in `lacing` (1 Xiph, 2 fixed, 3 EBML), shortest encodings. */
function lacingHeader(frames, lacing) {
  const out = [frames.length - 1];
  if (lacing === 1) {
    for (const f of frames.slice(0, -1)) {
      let n = f.length;
      while (n >= 255) {
        out.push(255);
        n -= 255;
      }
      out.push(n);
    }
  } else if (lacing === 3) {
    frames.slice(0, -1).forEach((f, i) => {
      if (i === 0) {
        out.push(...encodeVint(f.length, vintLength(f.length)));
        return;
      }
      const diff = f.length - frames[i - 1].length;
      let length = 1;
      while (Math.abs(diff) > 2 ** (7 * length - 1) - 2 && length < 8) length += 1;
      out.push(...encodeVint(diff + 2 ** (7 * length - 1) - 1, length));
    });
  }
  return Uint8Array.from(out);
}

/** Parses a SimpleBlock or Block at [start, end) and maps its frames; null when all are dropped. */
async function blockNode(bytes, header, end, keyframeOf, mapFrame) {
  const { dataStart } = header;
  const first = bytes[dataStart];
  const trackLength = first === 0 || dataStart >= end ? 9 : Math.clz32(first) - 23;
  if (trackLength > 8 || dataStart + trackLength + 3 > end) throw new ContainerError(`WebM: block cut short at ${header.headerStart}`);
  let track = first & (0xff >> trackLength);
  for (let i = 1; i < trackLength; i += 1) track = track * 256 + bytes[dataStart + i];
  const flagsAt = dataStart + trackLength + 2;
  const flags = bytes[flagsAt];
  const lacing = (flags >> 1) & 0x03;
  const { sizes, dataStart: framesAt } = lacedSizes(bytes, flagsAt + 1, end, lacing);
  const keyframe = keyframeOf(flags);
  const frames = [];
  let at = framesAt;
  for (const size of sizes) {
    const mapped = checkResult(await mapFrame(track, bytes.subarray(at, at + size), keyframe));
    at += size;
    if (mapped) frames.push(mapped);
  }
  if (!frames.length) return null;
  let newFlags = flags;
  // Fixed lacing needs frames of one length: other lengths go out EBML-laced.
  if (lacing === 2 && frames.some((f) => f.length !== frames[0].length)) newFlags = (flags & ~0x06) | 0x06;
  const newLacing = (newFlags >> 1) & 0x03;
  return {
    type: 'block',
    head: bytes.subarray(header.headerStart, header.dataStart - header.sizeLength),
    sizeLength: header.sizeLength,
    prefix: Uint8Array.from([...bytes.subarray(dataStart, flagsAt), newFlags]),
    lacing: newLacing === 0 ? new Uint8Array(0) : lacingHeader(frames, newLacing),
    frames,
  };
}

/**
 * Parses the children of the master element whose data starts at `start`: up to `end` for a
 * known size, or up to the first element that cannot be its child for an unknown one.
 * Returns the children and where they ended.
 */
async function parseChildren(bytes, id, start, end, unknown, mapFrame) {
  const children = [];
  let pos = start;
  let crcFirst = false;
  // A BlockGroup's Block is a keyframe unless the group references another frame.
  let groupHasReference = false;
  if (id === BLOCK_GROUP) {
    for (let p = start; p < end;) {
      const h = readElementHeader(bytes, p, end);
      if (h.size === null || h.dataStart + h.size > end) break;
      if (h.id === REFERENCE_BLOCK) groupHasReference = true;
      p = h.dataStart + h.size;
    }
  }
  let dropped = false;
  while (pos < end) {
    const h = readElementHeader(bytes, pos, end);
    if (unknown && (id === SEGMENT ? h.id === EBML_HEADER || h.id === SEGMENT : LEVEL_ONE.has(h.id))) break;
    if (h.size === null) {
      if (!(id === SEGMENT && h.id === CLUSTER)) {
        throw new ContainerError(`WebM: element 0x${h.id.toString(16)} of unknown size at ${pos}`);
      }
      const cluster = await parseChildren(bytes, CLUSTER, h.dataStart, end, true, mapFrame);
      children.push({
        type: 'master', head: bytes.subarray(pos, h.dataStart), unknown: true, sizeLength: h.sizeLength,
        originalLength: cluster.end - pos, ...cluster,
      });
      pos = cluster.end;
      continue;
    }
    const childEnd = h.dataStart + h.size;
    if (childEnd > end) throw new ContainerError(`WebM: element 0x${h.id.toString(16)} at ${pos} is cut short`);
    if (h.id === CRC32 && pos === start && h.size === 4) {
      crcFirst = true;
      children.push({ type: 'crc', head: bytes.subarray(pos, h.dataStart) });
    } else if ((id === SEGMENT && (h.id === SEEK_HEAD || h.id === CUES)) || (id === CLUSTER && (h.id === POSITION || h.id === PREV_SIZE))) {
      children.push(rawNode(bytes, pos, childEnd, true));
    } else if ((id === SEGMENT && h.id === CLUSTER) || (id === CLUSTER && h.id === BLOCK_GROUP)) {
      const inner = await parseChildren(bytes, h.id, h.dataStart, childEnd, false, mapFrame);
      if (h.id === BLOCK_GROUP && !inner.children.some((c) => c.type === 'block')) {
        // A group whose Block was dropped goes with it.
        dropped = true;
      } else {
        children.push({
          type: 'master', head: bytes.subarray(pos, h.dataStart - h.sizeLength), unknown: false,
          sizeLength: h.sizeLength, originalLength: childEnd - pos, ...inner,
        });
      }
    } else if ((id === CLUSTER && h.id === SIMPLE_BLOCK) || (id === BLOCK_GROUP && h.id === BLOCK)) {
      const keyframeOf = h.id === SIMPLE_BLOCK ? (flags) => (flags & 0x80) !== 0 : () => !groupHasReference;
      const block = await blockNode(bytes, h, childEnd, keyframeOf, mapFrame);
      if (block) children.push({ ...block, originalLength: childEnd - pos });
      else dropped = true;
    } else {
      children.push(rawNode(bytes, pos, childEnd));
    }
    pos = childEnd;
  }
  return { children, end: pos, crc: crcFirst, dropped };
}

/** Length of a node as written; `drop` leaves positional elements out. */
function nodeLength(node, drop) {
  switch (node.type) {
    case 'raw':
      return node.bytes.length;
    case 'positional':
      return drop ? 0 : node.bytes.length;
    case 'crc':
      return node.head.length + 4;
    case 'block': {
      node.content = node.prefix.length + node.lacing.length + node.frames.reduce((n, f) => n + f.length, 0);
      node.sizeBytes = sizeField(node.content, node.sizeLength);
      return node.head.length + node.sizeBytes.length + node.content;
    }
    default: {
      node.content = node.children.reduce((n, c) => n + nodeLength(c, drop), 0);
      node.sizeBytes = node.unknown ? null : sizeField(node.content, node.sizeLength);
      return node.head.length + (node.unknown ? 0 : node.sizeBytes.length) + node.content;
    }
  }
}

/** Appends a node's bytes to `out` (after nodeLength has sized it with the same `drop`). */
function writeNode(node, drop, out) {
  switch (node.type) {
    case 'raw':
      out.push(node.bytes);
      return;
    case 'positional':
      if (!drop) out.push(node.bytes);
      return;
    case 'block':
      out.push(node.head, node.sizeBytes, node.prefix, node.lacing, ...node.frames);
      return;
    case 'master': {
      out.push(node.head);
      if (!node.unknown) out.push(node.sizeBytes);
      const children = [];
      for (const child of node.children) if (child.type !== 'crc') writeNode(child, drop, children);
      if (node.crc) {
        const crc = ebmlCrc(children);
        out.push(node.children[0].head, Uint8Array.of(crc & 0xff, (crc >>> 8) & 0xff, (crc >>> 16) & 0xff, crc >>> 24));
      }
      out.push(...children);
      return;
    }
    default:
      throw new Error(`unexpected node ${node.type}`);
  }
}

/** Whether a node, and everything in it, is as long as it was and lost nothing. */
function sameLength(node) {
  if (node.type === 'block') return nodeLength(node, false) === node.originalLength;
  if (node.type !== 'master') return true;
  return !node.dropped && nodeLength(node, false) === node.originalLength && node.children.every(sameLength);
}

/**
 * Rewrites every frame of a WebM file: `mapFrame(trackNumber, frame, keyframe)` returns the new
 * frame bytes, or null to drop the frame (a block, or BlockGroup, left with no frame is
 * dropped). Frames of SimpleBlocks and of Blocks in BlockGroups are mapped, laced ones one by
 * one. Returns the new file; throws a ContainerError when the file is not a WebM file or is
 * cut short.
 */
export async function mapWebmFrames(bytes, mapFrame) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const top = [];
  let pos = 0;
  let segments = 0;
  while (pos < data.length) {
    const h = readElementHeader(data, pos, data.length);
    if (pos === 0 && h.id !== EBML_HEADER) throw new ContainerError('WebM: no EBML header');
    if (h.id === SEGMENT) {
      const end = h.size === null ? data.length : h.dataStart + h.size;
      if (end > data.length) throw new ContainerError('WebM: the Segment is cut short');
      const inner = await parseChildren(data, SEGMENT, h.dataStart, end, h.size === null, mapFrame);
      top.push({
        type: 'master', head: data.subarray(pos, h.dataStart - (h.size === null ? 0 : h.sizeLength)),
        unknown: h.size === null, sizeLength: h.sizeLength, originalLength: inner.end - pos, ...inner,
      });
      segments += 1;
      pos = inner.end;
    } else {
      if (h.size === null) throw new ContainerError(`WebM: element 0x${h.id.toString(16)} of unknown size at ${pos}`);
      const end = h.dataStart + h.size;
      if (end > data.length) throw new ContainerError(`WebM: element at ${pos} is cut short`);
      top.push(rawNode(data, pos, end));
      pos = end;
    }
  }
  if (!segments) throw new ContainerError('WebM: no Segment');
  // Positions hold only if every element of every Segment kept its place and length.
  const unmoved = top.every(sameLength);
  const drop = !unmoved;
  const length = top.reduce((n, node) => n + nodeLength(node, drop), 0);
  const out = [];
  for (const node of top) writeNode(node, drop, out);
  return concat(out, length);
}

// ---- Ogg -----------------------------------------------------------------------------------

const OGG_CONTINUED = 0x01;
const OGG_BOS = 0x02;
const OGG_EOS = 0x04;

let oggTable = null;

/** Ogg's page checksum: CRC-32 with polynomial 0x04c11db7, not reflected, starting at 0. */
export function oggCrc(bytes) {
  if (!oggTable) {
    oggTable = new Uint32Array(256);
    for (let n = 0; n < 256; n += 1) {
      let c = n << 24;
      for (let k = 0; k < 8; k += 1) c = c & 0x80000000 ? (c << 1) ^ 0x04c11db7 : c << 1;
      oggTable[n] = c >>> 0;
    }
  }
  let crc = 0;
  for (let i = 0; i < bytes.length; i += 1) crc = (oggTable[((crc >>> 24) ^ bytes[i]) & 0xff] ^ (crc << 8)) >>> 0;
  return crc;
}

/** Every page of the file, with the pieces of packets it carries. */
function parseOggPages(data) {
  const pages = [];
  const streams = new Map();
  let pos = 0;
  while (pos < data.length) {
    if (pos + 27 > data.length) throw new ContainerError(`Ogg: page header cut short at ${pos}`);
    if (data[pos] !== 0x4f || data[pos + 1] !== 0x67 || data[pos + 2] !== 0x67 || data[pos + 3] !== 0x53) {
      throw new ContainerError(`Ogg: no page at ${pos}`);
    }
    if (data[pos + 4] !== 0) throw new ContainerError(`Ogg: unknown page version at ${pos}`);
    const view = new DataView(data.buffer, data.byteOffset + pos, 27);
    const flags = data[pos + 5];
    const serial = view.getUint32(14, true);
    const sequence = view.getUint32(18, true);
    const count = data[pos + 26];
    const bodyAt = pos + 27 + count;
    if (bodyAt > data.length) throw new ContainerError(`Ogg: lacing cut short at ${pos}`);
    const lacing = data.subarray(pos + 27, bodyAt);
    const bodyLength = lacing.reduce((n, l) => n + l, 0);
    if (bodyAt + bodyLength > data.length) throw new ContainerError(`Ogg: page body cut short at ${pos}`);
    const page = {
      flags, serial, sequence, granule: data.subarray(pos + 6, pos + 14), pieces: [], hadPieces: count > 0,
    };
    if (!streams.has(serial)) streams.set(serial, { packets: [], open: null, pages: [] });
    const stream = streams.get(serial);
    stream.pages.push(page);
    if (Boolean(flags & OGG_CONTINUED) !== Boolean(stream.open)) {
      throw new ContainerError(`Ogg: page ${sequence} of stream ${serial} does not continue the packet before it`);
    }
    let at = bodyAt;
    let pieceStart = at;
    for (let i = 0; i < count; i += 1) {
      at += lacing[i];
      if (lacing[i] < 255 || i === count - 1) {
        if (!stream.open) {
          stream.open = { chunks: [], pieces: [], complete: false };
          stream.packets.push(stream.open);
        }
        const piece = { packet: stream.open, length: at - pieceStart };
        stream.open.chunks.push(data.subarray(pieceStart, at));
        stream.open.pieces.push(piece);
        page.pieces.push(piece);
        pieceStart = at;
        if (lacing[i] < 255) {
          stream.open.complete = true;
          stream.open = null;
        }
      }
    }
    pages.push(page);
    pos = bodyAt + bodyLength;
  }
  if (!pages.length) throw new ContainerError('Ogg: no pages');
  return { pages, streams };
}

/**
 * Rewrites every audio packet of an Ogg Opus file: `mapPacket(packet, index)` (index 0 is the
 * first packet after the two headers, per logical stream) returns the new packet, or null to
 * drop it. OpusHead and OpusTags pass through. Pages keep their serial, granule position and
 * flags; lacing values and checksums are recomputed. Returns the new file; throws a
 * ContainerError for anything that is not Ogg Opus or is cut short.
 *
 * Each packet goes back on the pages it came from, so granule positions (which belong to the
 * last packet ending on a page) stay true: a packet that spanned pages fills each but its
 * last as before and ends on the same page. A shorter packet may leave a page it spanned
 * empty; such a page (no packet ends on it) is left out and later pages are renumbered. A
 * page that would need more than 255 lacing values (packets grown by hundreds of bytes, which
 * decrypting never does) cannot be split without knowing the granule of each packet, and
 * throws.
 */
export async function mapOggPackets(bytes, mapPacket) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const { pages, streams } = parseOggPages(data);
  for (const [serial, stream] of streams) {
    const head = stream.packets[0];
    if (!head?.complete || stream.packets.length < 2 || !stream.packets[1].complete) {
      throw new ContainerError(`Ogg: stream ${serial} lacks its two header packets`);
    }
    const text = new TextDecoder().decode(concat(head.chunks).subarray(0, 8));
    if (text !== 'OpusHead') throw new ContainerError(`Ogg: stream ${serial} is not Opus`);
    let index = 0;
    for (const [n, packet] of stream.packets.entries()) {
      const original = packet.chunks.length === 1 ? packet.chunks[0] : concat(packet.chunks);
      // An unfinished last packet (the file was cut) is no packet a demuxer returns: as it was.
      const mapped = n < 2 || !packet.complete ? original : checkResult(await mapPacket(original, index++));
      distribute(packet, mapped);
    }
  }

  const out = [];
  const removed = new Map();
  const lastPageOf = new Map();
  for (const page of pages) {
    const stream = streams.get(page.serial);
    const pieces = page.pieces.filter((p) => p.bytes);
    if (page.hadPieces && !pieces.length && !(page.flags & OGG_BOS)) {
      // Nothing of this page is left. Its granule position is of no packet any more, or of
      // one the callback dropped: losing it loses nothing a demuxer needs.
      removed.set(page.serial, (removed.get(page.serial) || 0) + 1);
      if (page.flags & OGG_EOS) {
        const last = lastPageOf.get(page.serial);
        if (last) last.flags |= OGG_EOS;
      }
      continue;
    }
    const lacing = [];
    for (const piece of pieces) {
      const full = Math.floor(piece.bytes.length / 255);
      for (let i = 0; i < full; i += 1) lacing.push(255);
      if (piece.final) lacing.push(piece.bytes.length % 255);
    }
    if (lacing.length > 255) {
      throw new ContainerError(`Ogg: page ${page.sequence} of stream ${page.serial} would need ${lacing.length} lacing values`);
    }
    const continued = pieces.length > 0 && pieces[0].packet.pieces.find((p) => p.bytes) !== pieces[0];
    const flags = (page.flags & ~OGG_CONTINUED) | (continued ? OGG_CONTINUED : 0);
    const entry = {
      flags, page, lacing, pieces, sequence: page.sequence - (removed.get(page.serial) || 0), stream,
    };
    out.push(entry);
    lastPageOf.set(page.serial, entry);
  }
  const written = out.map(({ flags, page, lacing, pieces, sequence }) => {
    const bodyLength = pieces.reduce((n, p) => n + p.bytes.length, 0);
    const bytesOut = new Uint8Array(27 + lacing.length + bodyLength);
    bytesOut.set([0x4f, 0x67, 0x67, 0x53, 0, flags]);
    bytesOut.set(page.granule, 6);
    const view = new DataView(bytesOut.buffer);
    view.setUint32(14, page.serial, true);
    view.setUint32(18, sequence, true);
    bytesOut[26] = lacing.length;
    bytesOut.set(lacing, 27);
    let at = 27 + lacing.length;
    for (const p of pieces) {
      bytesOut.set(p.bytes, at);
      at += p.bytes.length;
    }
    view.setUint32(22, oggCrc(bytesOut), true);
    return bytesOut;
  });
  return concat(written);
}

/**
 * Splits a packet's new bytes over the pieces it had: every piece but the last takes what it
 * held before (a multiple of 255) while enough is left, the last takes the rest. A dropped
 * packet (null) leaves no piece.
 */
function distribute(packet, bytes) {
  const { pieces } = packet;
  if (!bytes) return;
  let at = 0;
  pieces.forEach((piece, i) => {
    const last = i === pieces.length - 1;
    // An unfinished packet has no last piece: each keeps its 255-multiple length.
    const final = last && packet.complete;
    const take = final ? bytes.length - at : Math.min(piece.length, Math.floor((bytes.length - at) / 255) * 255);
    piece.final = final;
    if (take > 0 || final) piece.bytes = bytes.subarray(at, at + take);
    at += take;
  });
  if (!packet.complete && at < bytes.length) throw new Error('an unfinished packet changed');
}
