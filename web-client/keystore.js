// Sender keys a host's browser keeps for playing encrypted recordings later (docs/e2ee.md):
// IndexedDB `meet-e2ee`, store `keys`, records `{ room, participant, kid, key }` where `key` is
// the non-extractable HKDF base key, stored as a CryptoKey (never as bytes).

import { KeyRing } from './sframe.js';

const DB = 'meet-e2ee';
const STORE = 'keys';

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

let opened = null;

function db() {
  if (!opened) {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => {
      const store = req.result.createObjectStore(STORE, { keyPath: ['room', 'participant', 'kid'] });
      store.createIndex('room', 'room');
    };
    opened = request(req);
    opened.catch(() => {
      opened = null;
    });
  }
  return opened;
}

/** Keeps one sender key; failures (private mode, quota) only cost later playback. */
export async function saveKey(room, participant, kid, key) {
  try {
    const tx = (await db()).transaction(STORE, 'readwrite');
    tx.objectStore(STORE).put({ room: String(room), participant: String(participant), kid, key });
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
    });
  } catch (err) {
    console.warn('could not keep a media key for playback:', err);
  }
}

/** Every sender key kept for a room, as participant id -> KeyRing. */
export async function keyRingsFor(room) {
  const rings = new Map();
  let records = [];
  try {
    const tx = (await db()).transaction(STORE, 'readonly');
    records = await request(tx.objectStore(STORE).index('room').getAll(String(room)));
  } catch (err) {
    console.warn('could not read kept media keys:', err);
  }
  for (const { participant, kid, key } of records) {
    if (!rings.has(participant)) rings.set(participant, new KeyRing());
    await rings.get(participant).set(kid, key);
  }
  return rings;
}
