// SFrame as the browser does it (web-client/sframe.js), checked against RFC 9605's own test
// vectors and against tampering. The load-test bots check the same vectors in Rust
// (loadtest/endpoint/src/sframe.rs), so both ends agree on the format.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  KeyRing, clearPrefixLength, deriveFrameKey, encodeHeader, frameHeader, importBaseKey, open, parseHeader,
  ratchet, seal, sealParts,
} from '../sframe.js';

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const fromHex = (text) => Uint8Array.from(Buffer.from(text, 'hex'));
const RFC_BASE = fromHex('000102030405060708090a0b0c0d0e0f');

test('headers encode as RFC 9605 Appendix C.1 shows, and parse back', () => {
  const vectors = [
    [0, 0, '00'], [0, 7, '07'], [7, 0, '70'], [0, 0x100, '090100'], [0xff, 0, '80ff'],
    [0x100, 0x100, '9901000100'], [0x123, 0x4567, '9901234567'], [0xffffffffffff, 1, 'd1ffffffffffff'],
  ];
  for (const [kid, ctr, expected] of vectors) {
    assert.equal(hex(encodeHeader(kid, ctr)), expected, `kid ${kid} ctr ${ctr}`);
    assert.deepEqual(parseHeader(fromHex(`aa${expected}`), 1), { kid, ctr, length: expected.length / 2 });
  }
  assert.equal(parseHeader(fromHex('99012345')), null, 'a truncated header');
  assert.equal(parseHeader(fromHex('f0')), null, 'a KID wider than 6 bytes');
});

test('the RFC 9605 Appendix C.3 vector for AES_128_GCM_SHA256_128', async () => {
  const frameKey = await deriveFrameKey(await importBaseKey(RFC_BASE), 0x123);
  assert.equal(hex(frameKey.salt), '75234edefe07819026751816');
  const metadata = fromHex('4945544620534672616d65205747');
  const plaintext = fromHex('64726166742d696574662d736672616d652d656e63');
  const sealed = await sealParts(frameKey, 0x4567, metadata, plaintext);
  assert.equal(hex(sealed.subarray(metadata.length)),
    '9901234567b7412c2513a1b66dbb48841bbaf17f598751176ad847681a69c6d0b091c07018ce4adb34eb');
  // The derived AES key itself is not extractable; a key imported from the RFC's sframe_key
  // value must give the same ciphertext.
  const rfcKey = await crypto.subtle.importKey('raw', fromHex('d34f547f4ca4f9a7447006fe7fcbf768'), 'AES-GCM', false, ['encrypt', 'decrypt']);
  const again = await sealParts({ ...frameKey, key: rfcKey }, 0x4567, metadata, plaintext);
  assert.equal(hex(again), hex(sealed));
});

test('clear prefixes: VP8 keyframe 10 bytes, VP8 delta 3, Opus 1, capped at the length', () => {
  assert.equal(clearPrefixLength('video', Uint8Array.from([0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])), 10);
  assert.equal(clearPrefixLength('video', Uint8Array.from([0x11, 1, 2, 3, 4])), 3);
  assert.equal(clearPrefixLength('video', Uint8Array.from([0x10, 1])), 2);
  assert.equal(clearPrefixLength('audio', Uint8Array.from([0x78, 1, 2])), 1);
  assert.equal(clearPrefixLength('audio', new Uint8Array(0)), 0);
});

test('a frame round-trips with its prefix in clear, and any changed byte is refused', async () => {
  const frameKey = await deriveFrameKey(await importBaseKey(RFC_BASE), 70000);
  const keyframe = Uint8Array.from({ length: 200 }, (_, i) => (i === 0 ? 0x10 : i % 251));
  const sealed = await seal(frameKey, 9, 'video', keyframe);
  assert.equal(hex(sealed.subarray(0, 10)), hex(keyframe.subarray(0, 10)), 'the VP8 keyframe header stays readable');
  assert.notEqual(hex(sealed.subarray(14, 30)), hex(keyframe.subarray(10, 26)), 'the rest is not');
  assert.equal(sealed.length, keyframe.length + frameHeader('video', sealed).length + 16);
  assert.equal(hex(await open(frameKey, 'video', sealed)), hex(keyframe));
  for (const at of [1, 10, 12, 40, sealed.length - 1]) {
    const tampered = sealed.slice();
    tampered[at] ^= 0x01;
    assert.equal(await open(frameKey, 'video', tampered), null, `byte ${at} changed`);
  }
  const other = await deriveFrameKey(await importBaseKey(fromHex('ff'.repeat(16))), 70000);
  assert.equal(await open(other, 'video', sealed), null, 'another sender key');
  const opus = Uint8Array.from([0x78, 7, 7, 7, 7]);
  assert.equal(hex(await open(frameKey, 'audio', await seal(frameKey, 10, 'audio', opus))), hex(opus));
});

test('a key ring ratchets forward within an epoch, never back, and not across epochs', async () => {
  const epoch = 3 * 65536;
  const bases = [RFC_BASE];
  for (let g = 1; g <= 3; g += 1) bases.push(await ratchet(await importBaseKey(bases[g - 1])));
  const sealedAt = async (g) => seal(await deriveFrameKey(await importBaseKey(bases[g]), epoch + g), 1, 'audio', Uint8Array.from([1, 2, 3]));

  const veteran = new KeyRing();
  await veteran.set(epoch, RFC_BASE);
  assert.equal(hex(await veteran.open('audio', await sealedAt(3))), '010203', 'derives generation 3 from 0');
  assert.equal(hex(await veteran.open('audio', await sealedAt(0))), '010203');

  const newcomer = new KeyRing();
  await newcomer.set(epoch + 2, bases[2]);
  assert.equal(await newcomer.open('audio', await sealedAt(1)), null, 'cannot go back to generation 1');
  assert.equal(hex(await newcomer.open('audio', await sealedAt(3))), '010203');

  const nextEpoch = await seal(await deriveFrameKey(await importBaseKey(bases[1]), 4 * 65536), 0, 'audio', Uint8Array.from([9]));
  assert.equal(await veteran.open('audio', nextEpoch), null, 'a new epoch needs its own key');
  veteran.dropBefore(4);
  assert.equal(veteran.has(epoch), false);
});
