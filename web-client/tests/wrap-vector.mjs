// The wrapped-key test vector (docs/e2ee.md, "Keys"), computed with the browser's own code
// (web-client/keywrap.js over node's WebCrypto) from fixed device keys, base key and IV.
// `node web-client/tests/wrap-vector.mjs` prints it; the committed copy,
// loadtest/endpoint/tests/data/e2ee-wrap-vector.json, is what the load-test bots' Rust
// implementation (loadtest/endpoint/src/keys.rs) and web-client/tests/keywrap.test.mjs check,
// so that the two implementations agree byte for byte.

import { createECDH } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { deriveWrapKey, requestBlob, wrapKey } from '../keywrap.js';
import { toBase64Url } from '../sframe.js';

const fromHex = (text) => Uint8Array.from(Buffer.from(text, 'hex'));

export const INPUTS = {
  room: 'national-briefing',
  sender: 4211,
  recipient: 77,
  // Epoch 3, generation 2.
  kid: 3 * 65536 + 2,
  sender_private: '0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20',
  recipient_private: '2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40',
  base_key: '000102030405060708090a0b0c0d0e0f',
  iv: 'a0a1a2a3a4a5a6a7a8a9aaab',
};

/** A P-256 private key (32 bytes, hex) as a WebCrypto ECDH key, and its public key (base64url). */
export async function deviceKey(privateHex) {
  const ecdh = createECDH('prime256v1');
  ecdh.setPrivateKey(Buffer.from(privateHex, 'hex'));
  const point = ecdh.getPublicKey();
  const b64 = (bytes) => Buffer.from(bytes).toString('base64url');
  const jwk = {
    kty: 'EC', crv: 'P-256', d: b64(Buffer.from(privateHex, 'hex')), x: b64(point.subarray(1, 33)), y: b64(point.subarray(33)), ext: true,
  };
  const privateKey = await crypto.subtle.importKey('jwk', jwk, { name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
  return { privateKey, publicKey: toBase64Url(new Uint8Array(point)) };
}

export async function computeVector() {
  const sender = await deviceKey(INPUTS.sender_private);
  const recipient = await deviceKey(INPUTS.recipient_private);
  const wrap = await deriveWrapKey(sender.privateKey, recipient.publicKey);
  const blob = await wrapKey(wrap, {
    room: INPUTS.room, from: INPUTS.sender, to: INPUTS.recipient, kid: INPUTS.kid, raw: fromHex(INPUTS.base_key), iv: fromHex(INPUTS.iv),
  });
  return {
    ...INPUTS,
    sender_public: sender.publicKey,
    recipient_public: recipient.publicKey,
    request_blob: requestBlob(recipient.publicKey),
    key_blob: blob,
  };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify(await computeVector(), null, 2));
}
