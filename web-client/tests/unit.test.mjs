// Checks of the web client that need no browser: the string tables, that no user-facing text
// hides outside them, and the connection-quality rules.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { STRINGS, detectLanguage } from '../i18n.js';
import { classify, combine } from '../quality.js';

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
    for (const m of read(file).matchAll(/['`]((?:app|lang|lobby|call|toolbar|tile|quality|error|role|roster|waiting|org|rec)\.[A-Za-z]+)['`]/g)) {
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
