// End-to-end encryption of a meeting, the page's half (docs/e2ee.md): the device key pair, our
// sender key (ratcheted when someone new asks for it, replaced when someone leaves), wrapping it
// for each recipient, unwrapping the keys others send us, and the encoded-transform worker
// that seals and opens every frame. The server relays the wrapped keys and cannot open them.

import {
  deriveWrapKey, parseBlob, requestBlob, unwrapKey, wrapKey,
} from './keywrap.js';
import { saveKey } from './keystore.js';
import {
  GENERATIONS, deriveFrameKey, importBaseKey, ratchet, toBase64Url,
} from './sframe.js';

// The timing below is the design docs/e2ee.md chose for meetings of thousands ("At the size of
// the national meeting"); the load-test bots use the same (loadtest/endpoint/src/keys.rs,
// KeyPolicy::BROWSER).

/** How long a new epoch's key travels to receivers before we encrypt with it. */
export const REKEY_DELAY_MS = 1000;
/** Least time between two departure rekeys: departures meanwhile share the next new key. */
export const REKEY_INTERVAL_MS = 2000;
/** How long after a departure its new key is made, so that a burst of departures makes one. */
const REKEY_AFTER_DEPARTURE_MS = 100;
/** Requests arriving less than this after an answer wait, and are answered together. */
const ANSWER_WINDOW_MS = 100;
/** How long receivers keep an epoch after a newer one arrived (frames still in flight). */
const OLD_EPOCH_MS = 10_000;
/** The server relays at most this many keys per message, and splits them. */
const KEYS_PER_MESSAGE = 256;
/** A sender that has not answered is asked again this long after, this many times at most. */
const REQUEST_RETRY_MS = 3000;
const MAX_REQUESTS = 10;
/** Rekeys whose wrap time the page keeps for its test hook. */
const REKEY_RECORDS = 64;

/** How this browser can transform encoded frames: 'script', 'legacy' or null (it cannot). */
export function transformSupport(prefer = null) {
  const script = typeof RTCRtpScriptTransform === 'function';
  const legacy = typeof RTCRtpSender !== 'undefined' && 'createEncodedStreams' in RTCRtpSender.prototype;
  if (prefer === 'legacy' && legacy) return 'legacy';
  if (script) return 'script';
  return legacy ? 'legacy' : null;
}

/**
 * The safety code people compare aloud: 4 groups of 4 digits from the room and the public keys
 * of the hosts and presenters present, the people everyone sees. A server that substituted one
 * of those keys for someone gives that person a different code.
 */
export async function safetyCode(room, entries) {
  const lines = entries
    .filter((e) => e.key && (e.role === 'host' || e.role === 'presenter'))
    .map((e) => `${e.id}:${e.key}`)
    .sort();
  if (lines.length === 0) return null;
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(`meet e2ee safety|${room}|${lines.join('\n')}`)));
  const groups = [];
  for (let i = 0; i < 4; i += 1) groups.push(String(((digest[2 * i] << 8) | digest[2 * i + 1]) % 10000).padStart(4, '0'));
  return groups.join(' ');
}

export class E2ee {
  /**
   * @param {object} o
   * @param {(keys: {participant_id: any, blob: string}[]) => void} o.send  sends one `e2ee_keys`
   * @param {(participant: any) => string | null} o.publicKeyOf  a visible participant's key
   * @param {string | null} [o.prefer]  'legacy' forces createEncodedStreams (tests)
   * @param {boolean} [o.keyless]  announce no key and ask nobody (tests: a receiver without keys)
   * @param {boolean} [o.diagnose]  receivers note each audio frame's RTP position (tests)
   */
  constructor(o) {
    this.sendKeys = o.send;
    this.publicKeyOf = o.publicKeyOf;
    this.mode = transformSupport(o.prefer);
    this.keyless = !!o.keyless;
    this.diagnose = !!o.diagnose;
    this.room = '';
    this.me = null;
    this.host = false;
    this.publicKey = null;
    this.privateKey = null;
    this.worker = null;
    this.nextTransformId = 1;
    this.replies = new Map();
    this.nextReply = 1;
    /** Our sender key: { epoch, generation, raw } (raw bytes: we wrap them for recipients). */
    this.current = null;
    /** A new epoch on its way to receivers, not yet used: { kid, raw, useAt }. */
    this.pending = null;
    /** participant id -> { pub: string, wrap: CryptoKey } of those we gave our key */
    this.recipients = new Map();
    /** public key text -> Promise<CryptoKey> (ECDH-derived wrapping keys, one per recipient) */
    this.wraps = new Map();
    /** participant id -> { timer, tries, answered } of those asked for their key this session */
    this.asked = new Map();
    /** Requests for our key waiting for the next answer: [{ from, pub }]. */
    this.requests = [];
    this.answerTimer = null;
    this.lastAnswerAt = -Infinity;
    this.rekeyTimer = null;
    this.lastRekeyAt = -Infinity;
    /** The latest rekeys: { recipients, ms } (ms: making and wrapping the key, on this page). */
    this.rekeys = [];
    /** One key operation at a time: a ratchet must not interleave with a rekey. */
    this.queue = Promise.resolve();
  }

  get supported() {
    return this.mode !== null;
  }

  /** Makes the device key pair; the private half never leaves WebCrypto. */
  async init() {
    const pair = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
    this.privateKey = pair.privateKey;
    this.publicKey = toBase64Url(new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey)));
  }

  /** The key to announce at join (none for a keyless test receiver). */
  announced() {
    return this.keyless ? null : this.publicKey;
  }

  /** A (re)joined session: who we are now; everyone is asked for their key again. */
  newSession({ room, me, host }) {
    this.room = String(room);
    this.me = me;
    this.host = !!host;
    for (const { timer } of this.asked.values()) clearTimeout(timer);
    this.asked = new Map();
    if (!this.worker) this.worker = this.startWorker();
  }

  startWorker() {
    const worker = new Worker(new URL('./e2ee-worker.js', import.meta.url), { type: 'module' });
    if (this.diagnose) worker.postMessage({ type: 'diagnose-on' });
    worker.onmessage = (event) => {
      const done = this.replies.get(event.data?.reply);
      if (done) {
        this.replies.delete(event.data.reply);
        done(event.data);
      }
    };
    return worker;
  }

  ask(message, transfer = []) {
    const reply = this.nextReply++;
    return new Promise((resolve) => {
      this.replies.set(reply, resolve);
      this.worker.postMessage({ ...message, reply }, transfer);
    });
  }

  serial(fn) {
    const run = this.queue.then(fn);
    this.queue = run.catch((err) => console.warn('end-to-end key handling failed:', err));
    return run;
  }

  // ---- frames --------------------------------------------------------------------------

  attach(endpoint, role, kind) {
    const id = this.nextTransformId++;
    if (this.mode === 'script') {
      endpoint.transform = new RTCRtpScriptTransform(this.worker, { role, kind, id });
    } else {
      const { readable, writable } = endpoint.createEncodedStreams();
      this.worker.postMessage({ type: 'streams', readable, writable, role, kind, id }, [readable, writable]);
    }
    return id;
  }

  /** Seals everything this sender sends; until our key exists, its frames are not sent. */
  attachSender(sender, kind) {
    this.attach(sender, 'send', kind);
    this.serial(() => this.ensureKey());
  }

  /** Opens what this receiver gets; returns its id for `bind`. */
  attachReceiver(receiver, kind) {
    return this.attach(receiver, 'recv', kind);
  }

  /** The receiver `id` now carries a publication of `participant`. */
  bind(id, participant) {
    this.worker.postMessage({ type: 'bind', id, participant: String(participant) });
  }

  // ---- our sender key --------------------------------------------------------------------

  kidOf(key) {
    return key.epoch * GENERATIONS + key.generation;
  }

  async ensureKey() {
    if (this.current) return;
    await this.use({ epoch: 0, generation: 0, raw: crypto.getRandomValues(new Uint8Array(16)) });
  }

  /** Starts encrypting with `key` and, on a host's page, keeps it for playback. */
  async use(key) {
    this.current = key;
    const kid = this.kidOf(key);
    const base = await importBaseKey(key.raw);
    this.worker.postMessage({ type: 'sending', key: await deriveFrameKey(base, kid) });
    if (this.host) saveKey(this.room, this.me, kid, base);
  }

  async wrapKeyFor(pub) {
    if (!this.wraps.has(pub)) {
      this.wraps.set(pub, deriveWrapKey(this.privateKey, pub));
      this.wraps.get(pub).catch(() => this.wraps.delete(pub));
    }
    return this.wraps.get(pub);
  }

  async wrapFor(recipient, wrap, kid, raw) {
    return { participant_id: recipient, blob: await wrapKey(wrap, { room: this.room, from: this.me, to: recipient, kid, raw }) };
  }

  flush(keys) {
    for (let i = 0; i < keys.length; i += KEYS_PER_MESSAGE) this.sendKeys(keys.slice(i, i + KEYS_PER_MESSAGE));
  }

  /**
   * Someone asks for our key. Requests close together are answered together, at most one
   * answer per ANSWER_WINDOW_MS: a join storm of a thousand costs a few messages a second.
   */
  onRequest(from, pub) {
    this.requests.push({ from, pub });
    if (this.answerTimer) return;
    const wait = Math.max(0, this.lastAnswerAt + ANSWER_WINDOW_MS - performance.now());
    this.answerTimer = setTimeout(() => {
      this.answerTimer = null;
      this.serial(() => this.answer());
    }, wait);
  }

  /**
   * Answers the requests waiting. Newcomers get the next generation (one step for all of
   * them), which everyone who holds this one derives by themselves, so a newcomer cannot read
   * what was sent before it came.
   */
  async answer() {
    const requests = this.requests;
    this.requests = [];
    if (requests.length === 0) return;
    this.lastAnswerAt = performance.now();
    await this.ensureKey();
    // A participant we can see is wrapped to with the key the roster shows for them. A key
    // that is not a P-256 point is not answered.
    const derived = await Promise.all(requests.map(({ from, pub }) => {
      const key = this.publicKeyOf(from) || pub;
      return this.wrapKeyFor(key).then((wrap) => ({ from, key, wrap }), () => null);
    }));
    const answered = new Map();
    let newcomer = false;
    for (const { from, key, wrap } of derived.filter(Boolean)) {
      const known = this.recipients.get(from);
      this.recipients.set(from, { pub: key, wrap });
      newcomer ||= !known || known.pub !== key;
      // A recipient that changed keys leaves no wrap key behind.
      if (known && known.pub !== key && ![...this.recipients.values()].some((r) => r.pub === known.pub)) this.wraps.delete(known.pub);
      answered.set(from, wrap);
    }
    if (newcomer) {
      const { epoch, generation, raw } = this.current;
      if (generation + 1 < GENERATIONS) {
        await this.use({ epoch, generation: generation + 1, raw: await ratchet(await importBaseKey(raw)) });
      } else {
        await this.use({ epoch: epoch + 1, generation: 0, raw: crypto.getRandomValues(new Uint8Array(16)) });
      }
    }
    const { current, pending } = this;
    const keys = await Promise.all([...answered].flatMap(([to, wrap]) => {
      const out = [this.wrapFor(to, wrap, this.kidOf(current), current.raw)];
      if (pending) out.push(this.wrapFor(to, wrap, pending.kid, pending.raw));
      return out;
    }));
    this.flush(keys);
  }

  /**
   * Someone who held our key left: a fresh key in the next epoch goes to everyone who
   * remains and is used once it had time to arrive. The departed never receives it.
   * Departures close together make one new key, at most one per REKEY_INTERVAL_MS.
   */
  rekeySoon() {
    if (this.rekeyTimer || !this.current) return;
    // A key on its way is put in use before the next is made: replacing it first would
    // postpone its use, and departures every second would postpone it for ever.
    const now = performance.now();
    const wait = Math.max(REKEY_AFTER_DEPARTURE_MS, this.lastRekeyAt + REKEY_INTERVAL_MS - now, (this.pending?.useAt ?? 0) - now);
    this.rekeyTimer = setTimeout(() => {
      this.rekeyTimer = null;
      this.serial(() => this.rekey());
    }, wait);
  }

  async rekey() {
    const started = performance.now();
    this.lastRekeyAt = started;
    if (this.pending && started >= this.pending.useAt) {
      const due = this.pending;
      this.pending = null;
      await this.use({ epoch: Math.floor(due.kid / GENERATIONS), generation: 0, raw: due.raw });
    }
    const epoch = (this.pending ? Math.floor(this.pending.kid / GENERATIONS) : this.current.epoch) + 1;
    const next = { epoch, generation: 0, raw: crypto.getRandomValues(new Uint8Array(16)) };
    const kid = this.kidOf(next);
    this.pending = { kid, raw: next.raw, useAt: started + REKEY_DELAY_MS };
    // Every wrap at once: WebCrypto queues them, and none waits for the one before.
    const keys = await Promise.all([...this.recipients].map(([to, { wrap }]) => this.wrapFor(to, wrap, kid, next.raw)));
    this.flush(keys);
    this.rekeys = [...this.rekeys, { recipients: keys.length, ms: performance.now() - started }].slice(-REKEY_RECORDS);
    this.pending.useAt = performance.now() + REKEY_DELAY_MS;
    setTimeout(() => this.serial(async () => {
      if (this.pending?.kid !== kid) return;
      this.pending = null;
      await this.use(next);
    }), REKEY_DELAY_MS);
  }

  // ---- keys of others --------------------------------------------------------------------

  /**
   * Asks a participant we see for their key, once per session, and again every
   * REQUEST_RETRY_MS while no key came (the server may have refused the answer to them).
   */
  want(participant, publicKey) {
    if (this.keyless || !publicKey || participant === this.me || this.asked.has(participant)) return;
    const ask = { timer: null, tries: 0, answered: false };
    this.asked.set(participant, ask);
    const request = () => {
      if (ask.answered || this.asked.get(participant) !== ask || ask.tries >= MAX_REQUESTS) return;
      ask.tries += 1;
      this.flush([{ participant_id: participant, blob: requestBlob(this.publicKey) }]);
      ask.timer = setTimeout(request, REQUEST_RETRY_MS);
    };
    request();
  }

  /** An `e2ee_key` from the server: a request for our key, or a sender's key for us. */
  onBlob(from, blob) {
    const m = parseBlob(blob);
    if (m?.t === 'req') this.serial(() => this.onRequest(from, m.pub));
    else if (m?.t === 'key') this.serial(() => this.onKey(from, m));
  }

  async onKey(from, m) {
    const pub = this.publicKeyOf(from);
    if (!pub || this.keyless) return;
    let raw;
    try {
      raw = await unwrapKey(await this.wrapKeyFor(pub), { room: this.room, from, to: this.me }, m);
    } catch {
      console.warn('a media key that does not open was ignored');
      return;
    }
    const asked = this.asked.get(from);
    if (asked) {
      asked.answered = true;
      clearTimeout(asked.timer);
    }
    const base = await importBaseKey(raw);
    const participant = String(from);
    this.worker.postMessage({ type: 'key', participant, kid: m.kid, base });
    if (this.host) saveKey(this.room, participant, m.kid, base);
    const epoch = Math.floor(m.kid / GENERATIONS);
    setTimeout(() => this.worker?.postMessage({ type: 'drop-before', participant, epoch }), OLD_EPOCH_MS);
  }

  /**
   * A participant left: forget their keys, and replace ours if they had it. The server says
   * so for those we cannot see too (viewers who asked for our key).
   */
  onLeft(participant) {
    this.worker?.postMessage({ type: 'forget', participant: String(participant) });
    clearTimeout(this.asked.get(participant)?.timer);
    this.asked.delete(participant);
    this.requests = this.requests.filter((r) => r.from !== participant);
    // After any answer in progress, which may have just given them our key.
    this.serial(() => {
      const held = this.recipients.get(participant);
      if (!held) return;
      this.recipients.delete(participant);
      if (![...this.recipients.values()].some((r) => r.pub === held.pub)) this.wraps.delete(held.pub);
      this.rekeySoon();
    });
  }

  // ---- what the page and tests read ------------------------------------------------------

  /** Per transform: { role, kind, frames, failed, unsent, kid }. */
  async counts() {
    if (!this.worker) return {};
    return (await this.ask({ type: 'stats' })).counts;
  }

  currentKid() {
    return this.current ? this.kidOf(this.current) : null;
  }

  /** The latest departure rekeys: how many each was wrapped for, and how long it took. */
  rekeyTimes() {
    return this.rekeys;
  }

  capture() {
    this.worker?.postMessage({ type: 'capture-on' });
  }

  async captured(participant, kind) {
    return (await this.ask({ type: 'capture', participant: String(participant), kind })).frame;
  }

  async tryOpen(participant, kind, data) {
    return (await this.ask({ type: 'try', participant: String(participant), kind, data })).ok;
  }

  tamper(frames) {
    this.worker?.postMessage({ type: 'tamper', frames });
  }
}
