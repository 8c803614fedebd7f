// SFrame (RFC 9605) with AES_128_GCM_SHA256_128 over WebCrypto, as docs/e2ee.md specifies:
// an encrypted frame is `clear prefix || SFrame header || ciphertext || tag`. Shared by the
// page, its encoded-transform worker, the recording player and the node unit tests.

export const CIPHER_SUITE = 0x0004;
export const TAG_BYTES = 16;
const KEY_BITS = 128;
const SALT_BYTES = 12;
/** How far a receiver ratchets a sender's key forward by itself within one epoch. */
export const MAX_RATCHET_STEPS = 256;
/** Generations of one epoch a ring keeps behind the newest it derived. */
const KEPT_GENERATIONS = 32;
/** KID = epoch × GENERATIONS + generation. */
export const GENERATIONS = 65536;

const encoder = new TextEncoder();
const KEY_LABEL = encoder.encode('SFrame 1.0 Secret key ');
const SALT_LABEL = encoder.encode('SFrame 1.0 Secret salt ');
const RATCHET_INFO = encoder.encode('meet e2ee ratchet');
const EMPTY = new Uint8Array(0);

/**
 * Bytes left readable at the start of a frame, for the SFU (keyframes) and the recorder (Opus
 * durations): VP8's frame tag, 10 bytes on a keyframe (with the picture size) or 3, and Opus's
 * TOC byte. They are authenticated as SFrame metadata.
 */
export function clearPrefixLength(kind, data) {
  if (data.length === 0) return 0;
  const wanted = kind === 'audio' ? 1 : (data[0] & 0x01) === 0 ? 10 : 3;
  return Math.min(wanted, data.length);
}

/** The minimal big-endian bytes of a non-negative safe integer (at least one). */
function minimalBytes(value) {
  const out = [];
  let v = value;
  do {
    out.unshift(v % 256);
    v = Math.floor(v / 256);
  } while (v > 0);
  return out;
}

/** RFC 9605 §4.3: `X KKK Y CCC`, then the KID bytes when X, then the CTR bytes when Y. */
export function encodeHeader(kid, ctr) {
  let config = 0;
  const tail = [];
  if (kid < 8) {
    config |= kid << 4;
  } else {
    const bytes = minimalBytes(kid);
    config |= 0x80 | ((bytes.length - 1) << 4);
    tail.push(...bytes);
  }
  if (ctr < 8) {
    config |= ctr;
  } else {
    const bytes = minimalBytes(ctr);
    config |= 0x08 | (bytes.length - 1);
    tail.push(...bytes);
  }
  return Uint8Array.from([config, ...tail]);
}

function readBigEndian(bytes, at, length) {
  let v = 0;
  for (let i = 0; i < length; i += 1) v = v * 256 + bytes[at + i];
  return v;
}

/** Parses the header at `offset`: `{ kid, ctr, length }`, or null when truncated or too wide. */
export function parseHeader(bytes, offset = 0) {
  if (offset >= bytes.length) return null;
  const config = bytes[offset];
  let at = offset + 1;
  let kid = (config >> 4) & 0x07;
  if (config & 0x80) {
    const n = kid + 1;
    // Beyond 6 bytes a value is no longer a safe integer: no sender of ours makes such a KID.
    if (n > 6 || at + n > bytes.length) return null;
    kid = readBigEndian(bytes, at, n);
    at += n;
  }
  let ctr = config & 0x07;
  if (config & 0x08) {
    const n = ctr + 1;
    if (n > 6 || at + n > bytes.length) return null;
    ctr = readBigEndian(bytes, at, n);
    at += n;
  }
  return { kid, ctr, length: at - offset };
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function be(value, width) {
  const out = new Uint8Array(width);
  let v = value;
  for (let i = width - 1; i >= 0 && v > 0; i -= 1) {
    out[i] = v % 256;
    v = Math.floor(v / 256);
  }
  return out;
}

/** A 16-byte base key as a non-extractable HKDF key (it only ever derives). */
export function importBaseKey(raw) {
  return crypto.subtle.importKey('raw', raw, 'HKDF', false, ['deriveBits']);
}

function hkdfBits(baseKey, info, bits) {
  return crypto.subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: EMPTY, info }, baseKey, bits);
}

/** RFC 9605 §4.4.2: the AES key and salt of one KID. */
export async function deriveFrameKey(baseKey, kid) {
  const suffix = concat(be(kid, 8), be(CIPHER_SUITE, 2));
  const [keyBits, saltBits] = await Promise.all([
    hkdfBits(baseKey, concat(KEY_LABEL, suffix), KEY_BITS),
    hkdfBits(baseKey, concat(SALT_LABEL, suffix), SALT_BYTES * 8),
  ]);
  const key = await crypto.subtle.importKey('raw', keyBits, 'AES-GCM', false, ['encrypt', 'decrypt']);
  return { kid, key, salt: new Uint8Array(saltBits) };
}

/** The next generation's raw base key: a newcomer given it cannot compute this one. */
export async function ratchet(baseKey) {
  return new Uint8Array(await hkdfBits(baseKey, RATCHET_INFO, KEY_BITS));
}

function nonce(salt, ctr) {
  const out = be(ctr, SALT_BYTES);
  for (let i = 0; i < SALT_BYTES; i += 1) out[i] ^= salt[i];
  return out;
}

/** Encrypts one frame with `frameKey` (from `deriveFrameKey`) under counter `ctr`. */
export function seal(frameKey, ctr, kind, data) {
  const prefixLength = clearPrefixLength(kind, data);
  return sealParts(frameKey, ctr, data.subarray(0, prefixLength), data.subarray(prefixLength));
}

/** `metadata || header || AEAD(payload)`, the metadata authenticated but left in clear. */
export async function sealParts(frameKey, ctr, metadata, payload) {
  const header = encodeHeader(frameKey.kid, ctr);
  const sealed = await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv: nonce(frameKey.salt, ctr), additionalData: concat(header, metadata), tagLength: TAG_BYTES * 8 },
    frameKey.key,
    payload,
  );
  return concat(metadata, header, new Uint8Array(sealed));
}

/** Where the SFrame header of an encrypted frame starts and what it says, or null. */
export function frameHeader(kind, data) {
  const prefixLength = clearPrefixLength(kind, data);
  const header = parseHeader(data, prefixLength);
  if (!header || data.length < prefixLength + header.length + TAG_BYTES) return null;
  return { ...header, prefixLength };
}

/** Decrypts one frame: `prefix || plaintext`, or null when it does not authenticate. */
export async function open(frameKey, kind, data, header = frameHeader(kind, data)) {
  if (!header || header.kid !== frameKey.kid) return null;
  const { prefixLength, length } = header;
  const prefix = data.subarray(0, prefixLength);
  const aad = data.subarray(prefixLength, prefixLength + length);
  try {
    const plain = await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: nonce(frameKey.salt, header.ctr), additionalData: concat(aad, prefix), tagLength: TAG_BYTES * 8 },
      frameKey.key,
      data.subarray(prefixLength + length),
    );
    return concat(prefix, new Uint8Array(plain));
  } catch {
    return null;
  }
}

/**
 * One sender's keys as a receiver holds them: base keys by KID, frame keys derived on first
 * use, and later generations of an epoch ratcheted forward on demand (a join elsewhere in the
 * room moved the sender on). Earlier generations cannot be derived.
 */
export class KeyRing {
  constructor() {
    /** kid -> { base: CryptoKey, frame: Promise<frame key> | null } */
    this.keys = new Map();
  }

  /** Adds (or replaces) a base key, raw bytes or an HKDF `CryptoKey`. */
  async set(kid, base) {
    const key = base instanceof Uint8Array ? await importBaseKey(base) : base;
    this.keys.set(kid, { base: key, frame: null });
    return key;
  }

  has(kid) {
    return this.keys.has(kid);
  }

  /** Forgets every key of epochs before `epoch` (a new epoch has been in use a while). */
  dropBefore(epoch) {
    for (const kid of this.keys.keys()) if (Math.floor(kid / GENERATIONS) < epoch) this.keys.delete(kid);
  }

  /** The frame key for `kid`, deriving forward within its epoch if need be; null if unknown. */
  async frameKey(kid) {
    let entry = this.keys.get(kid);
    if (!entry) {
      const epoch = Math.floor(kid / GENERATIONS);
      let from = -1;
      for (const known of this.keys.keys()) {
        if (Math.floor(known / GENERATIONS) === epoch && known < kid && known > from) from = known;
      }
      if (from < 0 || kid - from > MAX_RATCHET_STEPS) return null;
      let base = this.keys.get(from).base;
      for (let k = from + 1; k <= kid; k += 1) {
        base = await importBaseKey(await ratchet(base));
        if (!this.keys.has(k)) this.keys.set(k, { base, frame: null });
      }
      entry = this.keys.get(kid);
      // Generations far behind are no longer used by the sender (it moved on for newcomers).
      for (const known of [...this.keys.keys()]) {
        if (Math.floor(known / GENERATIONS) === epoch && known < kid - KEPT_GENERATIONS) this.keys.delete(known);
      }
    }
    if (!entry.frame) entry.frame = deriveFrameKey(entry.base, kid);
    return entry.frame;
  }

  /** Decrypts a frame of this sender, or null (no key for it, or it does not authenticate). */
  async open(kind, data) {
    const header = frameHeader(kind, data);
    if (!header) return null;
    const frameKey = await this.frameKey(header.kid);
    return frameKey ? open(frameKey, kind, data, header) : null;
  }
}

export function toBase64Url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function fromBase64Url(text) {
  const b64 = String(text).replace(/-/g, '+').replace(/_/g, '/');
  return Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
}
