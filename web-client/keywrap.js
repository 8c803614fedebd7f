// The key messages of an end-to-end encrypted meeting (docs/e2ee.md, "Keys"): a sender's base
// key wrapped for one recipient with a key both derive from their device keys (ECDH P-256,
// then HKDF), and the request a receiver sends for it. Kept apart from the page's key handling
// (e2ee.js) so that node checks the exact bytes against the vector the load-test bots check
// too (web-client/tests/keywrap.test.mjs, loadtest/endpoint/src/keys.rs).

import { fromBase64Url, toBase64Url } from './sframe.js';

const WRAP_INFO = new TextEncoder().encode('meet e2ee wrap v1');
const EMPTY = new Uint8Array(0);

/**
 * The AES-128-GCM key that wraps media keys between our device key and another's public key
 * (base64url of the uncompressed point). Both ends derive the same one.
 */
export async function deriveWrapKey(privateKey, publicKeyText) {
  const publicKey = await crypto.subtle.importKey('raw', fromBase64Url(publicKeyText), { name: 'ECDH', namedCurve: 'P-256' }, false, []);
  const shared = await crypto.subtle.deriveBits({ name: 'ECDH', public: publicKey }, privateKey, 256);
  const ikm = await crypto.subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: EMPTY, info: WRAP_INFO },
    ikm,
    { name: 'AES-GCM', length: 128 },
    false,
    ['encrypt', 'decrypt'],
  );
}

/** What a wrapped key is bound to: its room, sender, recipient and KID. */
export function wrapAad(room, from, to, kid) {
  return new TextEncoder().encode(`meet e2ee key|${room}|${from}|${to}|${kid}`);
}

/**
 * The blob that carries `raw` (a 16-byte base key) under `kid` from `from` to `to`. `iv` is
 * drawn at random unless given (the test vector fixes it).
 */
export async function wrapKey(wrap, { room, from, to, kid, raw, iv = crypto.getRandomValues(new Uint8Array(12)) }) {
  const ct = await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: wrapAad(room, from, to, kid) }, wrap, raw);
  return JSON.stringify({ v: 1, t: 'key', kid, iv: toBase64Url(iv), ct: toBase64Url(new Uint8Array(ct)) });
}

/** The base key a `key` blob (parsed) carries, or an exception when it does not open. */
export async function unwrapKey(wrap, { room, from, to }, m) {
  const raw = await crypto.subtle.decrypt(
    { name: 'AES-GCM', iv: fromBase64Url(m.iv), additionalData: wrapAad(room, from, to, m.kid) },
    wrap,
    fromBase64Url(m.ct),
  );
  return new Uint8Array(raw);
}

/** A receiver's request for a sender's key, carrying the receiver's public key. */
export function requestBlob(publicKeyText) {
  return JSON.stringify({ v: 1, t: 'req', pub: publicKeyText });
}

/** A blob from another participant: `{ t: 'req', pub }` or `{ t: 'key', kid, iv, ct }`, or null. */
export function parseBlob(blob) {
  let m;
  try {
    m = JSON.parse(blob);
  } catch {
    return null;
  }
  if (!m || m.v !== 1) return null;
  if (m.t === 'req' && typeof m.pub === 'string' && m.pub.length <= 256) return m;
  if (m.t === 'key' && Number.isSafeInteger(m.kid) && m.kid >= 0 && typeof m.iv === 'string' && typeof m.ct === 'string') return m;
  return null;
}
