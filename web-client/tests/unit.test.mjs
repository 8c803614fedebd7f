// Checks of the web client that need no browser: the string tables, that no user-facing text
// hides outside them, the connection-quality rules and the simulcast bookkeeping.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { STRINGS, detectLanguage } from '../i18n.js';
import { classify, combine } from '../quality.js';
import { MAX_VIDEO_SIZES, cameraLayers, deviceSize, layerActivity, sizeReports } from '../simulcast.js';

const client = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const read = (name) => fs.readFileSync(path.join(client, name), 'utf8');
const scripts = fs.readdirSync(client).filter((f) => f.endsWith('.js') && f !== 'i18n.js');
const pages = fs.readdirSync(client).filter((f) => f.endsWith('.html'));

test('English and Vietnamese have the same keys, none empty, with the same placeholders', () => {
  const en = Object.keys(STRINGS.en).sort();
  assert.deepEqual(Object.keys(STRINGS.vi).sort(), en);
  const placeholders = (s) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();
  for (const key of en) {
    for (const lang of ['en', 'vi']) assert.ok(STRINGS[lang][key].trim(), `${lang} ${key} is empty`);
    assert.deepEqual(placeholders(STRINGS.vi[key]), placeholders(STRINGS.en[key]), key);
  }
});

test('every key the page and scripts use exists', () => {
  const used = new Set();
  for (const page of pages) {
    for (const m of read(page).matchAll(/data-i18n(?:-title|-placeholder)?="([^"]+)"/g)) used.add(m[1]);
  }
  for (const file of scripts) {
    for (const m of read(file).matchAll(/['`]((?:app|lang|lobby|call|toolbar|tile|quality|error|role|roster|waiting|org|rec|e2ee)\.[A-Za-z]+)['`]/g)) {
      used.add(m[1]);
    }
  }
  // Built as `quality.${level}` in app.js.
  for (const level of ['good', 'fair', 'poor', 'unknown']) used.add(`quality.${level}`);
  for (const key of used) assert.ok(key in STRINGS.en, `${key} is used but not defined`);
  for (const key of Object.keys(STRINGS.en)) assert.ok(used.has(key), `${key} is defined but never used`);
  assert.ok(used.size > 40, 'the scan found the keys');
});

test('the pages hold no text of their own: all of it comes from i18n.js', () => {
  assert.deepEqual(pages.sort(), ['index.html', 'organizer.html']);
  for (const page of pages) {
    const html = read(page)
      .replace(/<!--[\s\S]*?-->/g, '')
      .replace(/<(svg|script|style)\b[\s\S]*?<\/\1>/g, '')
      .replace(/<[^>]+>/g, '');
    assert.equal(html.trim(), '', page);
  }
  // Nor do the scripts put literal words on screen.
  for (const file of scripts.filter((f) => f !== 'testhooks.js')) {
    const source = read(file);
    assert.doesNotMatch(source, /\.(textContent|innerText|title|placeholder)\s*=\s*['"`][A-Za-z]/, file);
    assert.doesNotMatch(source, /new Option\(\s*['"`]/, file);
  }
});

test('recording strings exist in both languages for the meeting page and the organizer pages', () => {
  // The indicator and the notices are what tell people they are being recorded: they must
  // never fall back to a key or to the other language.
  const keys = [
    'rec.indicator', 'rec.indicatorTitle', 'rec.start', 'rec.stop', 'rec.startedToast',
    'rec.stoppedToast', 'rec.failedToast', 'rec.heading', 'rec.statusRecording',
    'rec.statusCompleted', 'rec.statusInterrupted', 'rec.statusFailed', 'rec.play',
    'rec.download', 'rec.delete', 'rec.confirmDelete',
  ];
  for (const key of keys) {
    for (const lang of ['en', 'vi']) assert.ok(STRINGS[lang][key]?.trim(), `${lang} ${key}`);
  }
  assert.notEqual(STRINGS.vi['rec.indicator'], STRINGS.en['rec.indicator']);
  assert.match(STRINGS.en['rec.failedToast'], /\{error\}/);
  // Every status the API names has a label in organizer.js.
  const organizer = read('organizer.js');
  for (const status of ['recording', 'completed', 'interrupted', 'failed']) {
    assert.match(organizer, new RegExp(`${status}: 'rec\\.status`), status);
  }
  assert.match(read('index.html'), /id="rec-indicator"[^>]*data-i18n="rec\.indicator"/);
});

test('the language follows a saved choice, then the browser, then English', () => {
  assert.equal(detectLanguage(null, ['vi-VN', 'en-US']), 'vi');
  assert.equal(detectLanguage(null, ['fr-FR', 'vi']), 'vi');
  assert.equal(detectLanguage(null, ['de-DE']), 'en');
  assert.equal(detectLanguage('en', ['vi-VN']), 'en');
  assert.equal(detectLanguage('xx', ['vi-VN']), 'vi');
  assert.equal(detectLanguage(null, []), 'en');
});

test('connection quality: loss, jitter and round trip map to good, fair and poor', () => {
  assert.equal(classify({}), 'unknown');
  assert.equal(classify({ lossPercent: 0, jitterMs: 5, rttMs: 20 }), 'good');
  assert.equal(classify({ lossPercent: 3, jitterMs: 5, rttMs: 20 }), 'fair');
  assert.equal(classify({ lossPercent: 0, jitterMs: 40, rttMs: 20 }), 'fair');
  assert.equal(classify({ lossPercent: 0, jitterMs: 5, rttMs: 300 }), 'fair');
  assert.equal(classify({ lossPercent: 10, jitterMs: 5, rttMs: 20 }), 'poor');
  assert.equal(classify({ lossPercent: null, jitterMs: null, rttMs: 700 }), 'poor');
  assert.equal(classify({ lossPercent: 1, jitterMs: 100, rttMs: 20 }), 'poor');
});

test('quality combines only streams that carried packets, weighting loss by packets', () => {
  const audio = { kind: 'audio', intervalPackets: 100, lossPercent: 10, jitterMs: 12 };
  const video = { kind: 'video', intervalPackets: 300, lossPercent: 0, jitterMs: 40 };
  const mutedMic = { kind: 'audio', intervalPackets: 0, lossPercent: null, jitterMs: 90 };
  const m = combine([audio, video, mutedMic], 25);
  assert.equal(m.lossPercent, 2.5);
  assert.equal(m.jitterMs, 12);
  assert.equal(m.rttMs, 25);
  assert.deepEqual(combine([mutedMic], null), { lossPercent: null, jitterMs: null, rttMs: null });
});

test('a camera gets three simulcast layers, lowest first, fewer when it is small', () => {
  const big = cameraLayers({ width: 1280, height: 720 });
  assert.deepEqual(big.layers, [
    { rid: 'q', width: 320, height: 180 },
    { rid: 'h', width: 640, height: 360 },
    { rid: 'f', width: 1280, height: 720 },
  ]);
  assert.deepEqual(big.encodings.map((e) => [e.rid, e.scaleResolutionDownBy]), [['q', 4], ['h', 2], ['f', 1]]);
  assert.ok(big.encodings.every((e, i) => e.maxFramerate > 0 && (i === 0 || e.maxBitrate > big.encodings[i - 1].maxBitrate)));
  assert.deepEqual(cameraLayers({ width: 960, height: 540 }).layers.map((l) => l.width), [240, 480, 960]);
  // Chromium sends two layers of a 640×360 camera: the two larger ones, so that its full size
  // is among them.
  assert.deepEqual(cameraLayers({ width: 640, height: 360 }).layers, [
    { rid: 'h', width: 320, height: 180 },
    { rid: 'f', width: 640, height: 360 },
  ]);
  // Too small for simulcast, or of unknown size: one plain encoding, nothing declared.
  for (const settings of [{ width: 320, height: 180 }, {}, undefined]) {
    const single = cameraLayers(settings);
    assert.deepEqual(single.layers, []);
    assert.equal(single.encodings.length, 1);
    assert.equal(single.encodings[0].rid, undefined);
  }
});

test('simulcast_layers pauses the layers nobody receives, never all of them', () => {
  assert.deepEqual(layerActivity([true, false, false], 3), [true, false, false]);
  assert.deepEqual(layerActivity([true, true, true], 3), [true, true, true]);
  // Unmentioned layers keep sending; an all-paused wish keeps the lowest.
  assert.deepEqual(layerActivity([true], 3), [true, true, true]);
  assert.deepEqual(layerActivity([false, false, false], 3), [true, false, false]);
  assert.deepEqual(layerActivity([false, true, false, true], 3), [false, true, false]);
  assert.deepEqual(layerActivity(null, 2), [true, true]);
});

test('video sizes are device pixels, 0 × 0 when hidden', () => {
  assert.deepEqual(deviceSize({ width: 320.4, height: 180.2 }, 2, true), { width: 641, height: 360 });
  assert.deepEqual(deviceSize({ width: 320, height: 180 }, 1, false), { width: 0, height: 0 });
  assert.deepEqual(deviceSize({ width: 0, height: 0 }, 1, true), { width: 0, height: 0 });
  assert.deepEqual(deviceSize({ width: 100, height: 0.2 }, 1, true), { width: 0, height: 0 });
});

test('video_sizes carries only changed sizes of offered subscriptions, in batches of 128', () => {
  const size = (width, height) => ({ width, height });
  const current = new Map([[1, size(640, 360)], [2, size(0, 0)], [3, size(100, 56)]]);
  const eligible = new Set([1, 2]);
  // Nothing sent yet: everything offered, the not-yet-offered publication 3 waits.
  assert.deepEqual(sizeReports(current, new Map(), eligible), [[
    { publication_id: 1, width: 640, height: 360 },
    { publication_id: 2, width: 0, height: 0 },
  ]]);
  // Up to date: nothing to send.
  const sent = new Map([[1, size(640, 360)], [2, size(0, 0)]]);
  assert.deepEqual(sizeReports(current, sent, eligible), []);
  // One tile shrank and another appeared in an offer: only those two.
  current.set(1, size(200, 112));
  eligible.add(3);
  assert.deepEqual(sizeReports(current, sent, eligible), [[
    { publication_id: 1, width: 200, height: 112 },
    { publication_id: 3, width: 100, height: 56 },
  ]]);
  // A large room is split so that no message exceeds the server's limit.
  const many = new Map(Array.from({ length: 300 }, (_, i) => [i, size(320, 180)]));
  const batches = sizeReports(many, new Map(), new Set(many.keys()));
  assert.deepEqual(batches.map((b) => b.length), [MAX_VIDEO_SIZES, MAX_VIDEO_SIZES, 300 - 2 * MAX_VIDEO_SIZES]);
});
