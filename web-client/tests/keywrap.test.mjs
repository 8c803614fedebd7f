// The key messages of docs/e2ee.md as the browser makes them (web-client/keywrap.js), checked
// against the committed test vector that the load-test bots' Rust implementation checks too
// (loadtest/endpoint/tests/data/e2ee-wrap-vector.json): a bot and a browser wrap and unwrap
// each other's keys byte for byte.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { deriveWrapKey, parseBlob, unwrapKey } from '../keywrap.js';
import { computeVector, deviceKey } from './wrap-vector.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const committed = JSON.parse(fs.readFileSync(path.join(here, '..', '..', 'loadtest', 'endpoint', 'tests', 'data', 'e2ee-wrap-vector.json'), 'utf8'));

test('the browser computes the committed wrapped-key vector', async () => {
  assert.deepEqual(await computeVector(), committed);
});

test('the recipient unwraps the vector, and nothing bound to another room, pair or KID opens', async () => {
  const recipient = await deviceKey(committed.recipient_private);
  const wrap = await deriveWrapKey(recipient.privateKey, committed.sender_public);
  const m = parseBlob(committed.key_blob);
  const pair = { room: committed.room, from: committed.sender, to: committed.recipient };
  assert.equal(Buffer.from(await unwrapKey(wrap, pair, m)).toString('hex'), committed.base_key);
  for (const [what, bound, blob] of [
    ['another room', { ...pair, room: 'elsewhere' }, m],
    ['another sender', { ...pair, from: committed.sender + 1 }, m],
    ['another recipient', { ...pair, to: committed.recipient + 1 }, m],
    ['another KID', pair, { ...m, kid: m.kid + 1 }],
  ]) {
    await assert.rejects(unwrapKey(wrap, bound, blob), `${what} must not open`);
  }
});

test('blobs that are not key messages are refused before any crypto', () => {
  for (const bad of ['', 'null', '[]', '{"v":2,"t":"key","kid":1,"iv":"a","ct":"b"}', '{"v":1,"t":"key","kid":-1,"iv":"a","ct":"b"}',
    '{"v":1,"t":"key","kid":1.5,"iv":"a","ct":"b"}', '{"v":1,"t":"req","pub":7}', `{"v":1,"t":"req","pub":"${'a'.repeat(257)}"}`, '{"v":1,"t":"hello"}']) {
    assert.equal(parseBlob(bad), null, bad);
  }
  assert.equal(parseBlob(committed.request_blob).pub, committed.recipient_public);
});
