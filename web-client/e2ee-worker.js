// The encoded-transform worker of an end-to-end encrypted meeting (docs/e2ee.md). Every frame
// this page sends is sealed here before the packetizer sees it, and every frame it receives is
// opened here before the decoder sees it. A frame that cannot be sealed is not sent; a frame
// that does not authenticate is dropped and counted, never decoded.
//
// Keys come from the page: the sender's current frame key, and a key ring per sending
// participant. A receiving transform is bound to the participant whose publication it carries,
// so a stream the server moved to another participant's slot does not decrypt.

import { KeyRing, frameHeader, seal } from './sframe.js';

/** Our frame key: { kid, key, salt }, or null before the page has made one. */
let sending = null;
/** kid -> next counter; shared by all our streams so that a nonce never repeats. */
const counters = new Map();
/** participant id -> KeyRing */
const rings = new Map();
/** transform id -> participant id (receivers are reused for other publications) */
const bindings = new Map();
/** transform id -> counts (`ms`: time spent sealing or opening the frames counted) */
const counts = new Map();
/** participant id -> the last encrypted frame received from it (test hook) */
const captured = new Map();
/** Whether received frames are kept for `capture` (test hook; off: no copy per frame). */
let capturing = false;
/** Whether opened audio frames note their RTP position (test pages only: a call per frame). */
let diagnosing = false;
/** Frames still to corrupt after sealing (test hook: receivers must refuse them). */
let tamper = 0;

function countsOf(id, role, kind) {
  let c = counts.get(id);
  if (!c) {
    c = { role, kind, frames: 0, failed: 0, unsent: 0, kid: null, ms: 0 };
    counts.set(id, c);
  }
  return c;
}

function ring(participant) {
  let r = rings.get(participant);
  if (!r) {
    r = new KeyRing();
    rings.set(participant, r);
  }
  return r;
}

async function sendFrame(frame, controller, c, kind) {
  const key = sending;
  if (!key) {
    // Never send in clear: until the page has a key, frames are dropped.
    c.unsent += 1;
    return;
  }
  const started = performance.now();
  const ctr = counters.get(key.kid) ?? 0;
  counters.set(key.kid, ctr + 1);
  const sealed = await seal(key, ctr, kind, new Uint8Array(frame.data));
  if (tamper > 0) {
    tamper -= 1;
    sealed[sealed.length - 1] ^= 0x5a;
  }
  frame.data = sealed.buffer;
  c.frames += 1;
  c.ms += performance.now() - started;
  c.kid = key.kid;
  controller.enqueue(frame);
}

async function receiveFrame(frame, controller, c, kind, id) {
  const started = performance.now();
  const participant = bindings.get(id);
  const data = new Uint8Array(frame.data);
  const header = frameHeader(kind, data);
  if (capturing && participant !== undefined) captured.set(`${participant}/${kind}`, { data: data.slice(), kid: header?.kid ?? null });
  const plain = participant === undefined ? null : await ring(participant).open(kind, data);
  if (!plain) {
    c.failed += 1;
    return;
  }
  frame.data = plain.buffer;
  c.frames += 1;
  c.ms += performance.now() - started;
  c.kid = header.kid;
  if (diagnosing && kind === 'audio') noteAudioFrame(c, frame, participant, plain.length);
  controller.enqueue(frame);
}

/**
 * Where the last opened audio frame sits in its RTP stream, and where the stream was when the
 * receiver changed hands (test diagnostics: a receiver reused for another participant must
 * continue a timeline its jitter buffer can play).
 */
function noteAudioFrame(c, frame, participant, bytes) {
  const m = frame.getMetadata?.() ?? {};
  const last = { participant, pt: m.payloadType, ssrc: m.synchronizationSource, seq: m.sequenceNumber, ts: m.rtpTimestamp ?? frame.timestamp, bytes, at: Math.round(performance.now()) };
  if (c.last && c.last.participant !== participant) {
    c.handovers = [...(c.handovers ?? []), { before: c.last, after: last }].slice(-4);
  }
  c.last = last;
}

function pipe({ readable, writable, role, kind, id }) {
  const c = countsOf(id, role, kind);
  const transform = role === 'send'
    ? (frame, controller) => sendFrame(frame, controller, c, kind)
    : (frame, controller) => receiveFrame(frame, controller, c, kind, id);
  readable
    .pipeThrough(new TransformStream({ transform }))
    .pipeTo(writable)
    .catch(() => {
      // The transceiver went away with its peer connection.
    });
}

// The standard way (RTCRtpScriptTransform).
self.onrtctransform = (event) => {
  const t = event.transformer;
  pipe({ readable: t.readable, writable: t.writable, ...t.options });
};

self.onmessage = async (event) => {
  const m = event.data;
  switch (m.type) {
    case 'streams': // the legacy way (createEncodedStreams), streams transferred here
      pipe(m);
      break;
    case 'sending':
      sending = m.key;
      break;
    case 'key':
      await ring(m.participant).set(m.kid, m.base);
      break;
    case 'forget':
      rings.delete(m.participant);
      break;
    case 'drop-before':
      rings.get(m.participant)?.dropBefore(m.epoch);
      break;
    case 'bind':
      bindings.set(m.id, m.participant);
      break;
    case 'tamper':
      tamper += m.frames;
      break;
    case 'stats':
      self.postMessage({ reply: m.reply, counts: Object.fromEntries(counts) });
      break;
    case 'diagnose-on':
      diagnosing = true;
      break;
    case 'capture-on':
      capturing = true;
      break;
    case 'capture': {
      const frame = captured.get(`${m.participant}/${m.kind}`) || null;
      self.postMessage({ reply: m.reply, frame });
      break;
    }
    case 'try': {
      const plain = await ring(m.participant).open(m.kind, m.data);
      self.postMessage({ reply: m.reply, ok: plain !== null });
      break;
    }
    default:
      break;
  }
};
