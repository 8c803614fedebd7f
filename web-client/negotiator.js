// The media side of one connection attempt: the RTCPeerConnection, one sendonly m-line per
// local source and one recvonly m-line per publication received, and the offers that keep the
// server's view of them current.
//
// The client always offers, one offer at a time (docs/protocol.md); each offer lists every
// sendonly m-line in `publish` and every receiving m-line in `subscribe`. The negotiator
// reaches the server only through the `send` it is given, and tells the meeting through its
// callbacks; which publications to send and receive is the meeting's decision.

import { StatsSampler } from './quality.js';
import { cameraLayers, declaredLayers, layerActivity, sizeReports } from './simulcast.js';

const MEDIA_TIMEOUT_MS = 15000; // an offer sent but no media connection after this long
const DISCONNECTED_GRACE_MS = 4000; // ICE 'disconnected' tolerated this long
const SIZES_BATCH_MS = 250; // tile size changes within this long go out as one `video_sizes`

/** Single-layer encodings; the camera's simulcast ones come from `cameraLayers`. */
const SEND_ENCODINGS = {
  microphone: [{}],
  camera: [{ maxBitrate: 600_000, maxFramerate: 24 }],
  screen: [{ maxBitrate: 1_200_000, maxFramerate: 15 }],
};

const SIMULCAST_PROTOCOL = 2;

export class Negotiator {
  /**
   * @param {object} o
   * @param {(message: object) => void} o.send  to the server: `offer`, `candidate`, `video_sizes`
   * @param {(ms: number, fn: () => void) => () => void} o.after  a timer that ends with the
   *   connection attempt; returns its cancel
   * @param {() => void} o.onFailed     the media connection failed, or never came up
   * @param {() => void} o.onConnected  the media connection is up
   * @param {() => Map} o.videoSizes    where the page shows each received video, now
   * @param {number} o.protocolVersion
   * @param {import('./e2ee.js').E2ee|null} o.e2ee  our frame transforms, in an encrypted meeting
   */
  constructor(o) {
    this.send = o.send;
    this.after = o.after;
    this.onFailed = o.onFailed;
    this.onConnected = o.onConnected;
    this.videoSizes = o.videoSizes;
    /** Whether the server knows `layers`, `video_sizes` and `simulcast_layers`. */
    this.simulcast = o.protocolVersion >= SIMULCAST_PROTOCOL;
    this.e2ee = o.e2ee;

    this.sending = {}; // source -> sending transceiver
    this.receiving = new Map(); // publication id -> receiving transceiver
    this.free = { audio: [], video: [] }; // receiving transceivers no longer bound
    this.held = new Set(); // receiving transceivers left out of an offer once (see negotiate)
    this.negotiating = false;
    this.again = false;
    this.offered = false;
    this.queued = []; // candidates waiting for the first offer
    this.endSent = false;
    this.connected = false;
    this.cancelGrace = null;
    this.closed = false;
    this.sampler = new StatsSampler();
    this.layers = {}; // source -> the simulcast layers declared in offers ([] for one layer)
    this.encodingUpdate = Promise.resolve(); // setParameters calls, one after the other
    this.offeredSubs = new Set(); // publication ids of receiving m-lines in the last sent offer
    this.sentSizes = new Map(); // publication id -> the size last reported in this session
    this.sizesQueued = false;
    this.decryptors = new Map(); // receiving transceiver -> its decrypting transform's id

    const config = { bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
    // The legacy transform needs this for the whole connection; every m-line is then piped.
    if (this.e2ee?.mode === 'legacy') config.encodedInsertableStreams = true;
    this.pc = new RTCPeerConnection(config);
    this.pc.onicecandidate = (event) => this.onCandidate(event.candidate);
    this.pc.onconnectionstatechange = () => this.onConnectionState();
  }

  /** Ends the peer connection; nothing of this negotiator runs afterwards. */
  close() {
    this.closed = true;
    this.pc.onicecandidate = this.pc.onconnectionstatechange = null;
    this.pc.close();
  }

  // ---- sending ---------------------------------------------------------------------------

  /**
   * Brings the sending m-line of `source` in line with its local track: a new track is
   * published, a stopped screen share unpublished; a camera turned off stays published
   * without a track (and muted), so turning it on again needs no renegotiation. A source our
   * role does not `allow` is unpublished. Returns whether it unpublished the source.
   */
  sync(source, track, allowed) {
    const tr = this.sending[source];
    const live = !!tr && tr.direction === 'sendonly';
    if (allowed && track) {
      if (!live) this.publish(source, track);
      else if (tr.sender.track !== track) replace(tr, track);
    } else if (live && (!allowed || source === 'screen')) {
      this.unpublish(source);
      return true;
    } else if (live) {
      replace(tr, null);
    }
    return false;
  }

  /** Sends a track on a sendonly m-line, reusing this source's previous one. */
  publish(source, track) {
    let tr = this.sending[source];
    if (tr) {
      replace(tr, track);
      tr.direction = 'sendonly';
    } else if (source === 'camera' && this.simulcast) {
      const { encodings, layers } = cameraLayers(track.getSettings());
      tr = this.pc.addTransceiver(track, { direction: 'sendonly', sendEncodings: encodings });
      this.layers.camera = layers;
      if (layers.length > 1 || this.e2ee) preferVp8(tr);
      this.sending[source] = tr;
      if (this.e2ee) this.e2ee.attachSender(tr.sender, 'video');
    } else {
      tr = this.pc.addTransceiver(track, { direction: 'sendonly', sendEncodings: SEND_ENCODINGS[source] });
      this.sending[source] = tr;
      // Encrypted frames keep only VP8's header bytes readable (docs/e2ee.md).
      if (this.e2ee && track.kind === 'video') preferVp8(tr);
      if (this.e2ee) this.e2ee.attachSender(tr.sender, track.kind);
    }
    this.negotiate();
  }

  unpublish(source) {
    const tr = this.sending[source];
    if (!tr) return;
    replace(tr, null);
    tr.direction = 'inactive';
    this.negotiate();
  }

  /** Whether `source` is sent in simulcast layers (only those can be paused one by one). */
  layered(source) {
    return !!this.sending[source] && !!this.layers[source]?.length;
  }

  /**
   * Pauses the layers of `source` that nobody receives, so that the encoder and the uplink do
   * not spend on video nobody watches. `wanted()` gives the `active` list to apply when the
   * change is made, or nothing once it no longer applies (the source was published anew).
   */
  setLayers(source, wanted) {
    // One setParameters at a time (a second one during the first is refused); each applies
    // the latest wish, so a burst of messages ends in the last one's state.
    this.encodingUpdate = this.encodingUpdate.then(() => this.applyLayers(source, wanted));
  }

  async applyLayers(source, wanted) {
    const wish = this.closed ? null : wanted();
    if (!wish) return;
    const sender = this.sending[source].sender;
    const params = sender.getParameters();
    const active = layerActivity(wish, params.encodings.length);
    if (params.encodings.every((e, i) => e.active === active[i])) return;
    params.encodings.forEach((e, i) => {
      e.active = active[i];
    });
    try {
      await sender.setParameters(params);
    } catch (err) {
      if (!this.closed) console.warn('could not pause or resume simulcast layers:', err);
    }
  }

  /** The simulcast layers to declare for a sending m-line, sized from its current track. */
  layersOf(source) {
    const declared = this.layers[source];
    const settings = this.sending[source].sender.track?.getSettings();
    if (declared?.length && settings?.width && settings?.height) {
      this.layers[source] = declaredLayers(this.sending[source].sender.getParameters().encodings, settings);
    }
    return this.layers[source] || [];
  }

  // ---- receiving -------------------------------------------------------------------------

  /** Receives a publication on a recvonly m-line; returns its track, or null when already received. */
  subscribe(pub) {
    if (this.receiving.has(pub.id)) return null;
    let tr = this.free[pub.kind].pop();
    if (tr) {
      tr.direction = 'recvonly';
    } else {
      tr = this.pc.addTransceiver(pub.kind, { direction: 'recvonly' });
      if (this.e2ee) this.decryptors.set(tr, this.e2ee.attachReceiver(tr.receiver, pub.kind));
    }
    // Frames of this publication open only with its owner's keys.
    if (this.e2ee) this.e2ee.bind(this.decryptors.get(tr), pub.participant_id);
    this.receiving.set(pub.id, tr);
    this.negotiate();
    return tr.receiver.track;
  }

  /** Stops receiving a publication; returns whether it was received. */
  unsubscribe(publicationId) {
    const tr = this.receiving.get(publicationId);
    if (!tr) return false;
    this.receiving.delete(publicationId);
    this.sentSizes.delete(publicationId);
    // In an encrypted meeting the m-line stays recvonly, idle (the next offer no longer names
    // it in `subscribe`, so the server sends nothing on it). Made inactive and then active
    // again, it gets a rebuilt receive stream in Chromium, and now and then that stream never
    // got what the receiver's transform had decrypted: the next sender on it was seen but
    // heard as silence (see `negotiate` for the other way to reach the same state).
    if (!this.e2ee) tr.direction = 'inactive';
    this.held.delete(tr);
    this.free[tr.receiver.track.kind].push(tr);
    this.negotiate();
    return true;
  }

  /**
   * Tells the server the sizes at which the page shows what we receive, once changes have
   * settled a moment, and only for subscriptions it has heard of.
   */
  reportSizesSoon() {
    if (this.closed || this.sizesQueued || !this.simulcast) return;
    if (sizeReports(this.videoSizes(), this.sentSizes, this.offeredSubs).length === 0) return;
    this.sizesQueued = true;
    // A plain timer (not `after`): this runs on every resize and must not pile up cancels.
    setTimeout(() => {
      this.sizesQueued = false;
      if (this.closed) return;
      for (const sizes of sizeReports(this.videoSizes(), this.sentSizes, this.offeredSubs)) {
        this.send({ type: 'video_sizes', sizes });
        for (const { publication_id: id, width, height } of sizes) this.sentSizes.set(id, { width, height });
      }
    }, SIZES_BATCH_MS);
  }

  /** This interval's statistics: `StatsSampler.sample`'s, with `inbound` by publication id. */
  async sample() {
    const sample = await this.sampler.sample(this.pc);
    const inbound = new Map();
    for (const [publicationId, tr] of this.receiving) {
      const stats = tr.mid !== null ? sample.inbound.get(tr.mid) : undefined;
      if (stats) inbound.set(publicationId, stats);
    }
    return { ...sample, inbound };
  }

  // ---- offers and answers ----------------------------------------------------------------

  /** Offers the complete current set of m-lines; at most one offer is in flight. */
  async negotiate() {
    if (this.closed) return;
    if (this.negotiating) {
      this.again = true;
      return;
    }
    // An offer without m-lines carries no fingerprint: wait for something to send or receive.
    if (this.pc.getTransceivers().length === 0) return;
    this.negotiating = true;
    this.again = false;
    try {
      await this.pc.setLocalDescription();
      if (this.closed) return;
      const publish = [];
      for (const [source, tr] of Object.entries(this.sending)) {
        if (tr.mid === null || tr.direction !== 'sendonly') continue;
        const layers = this.layersOf(source);
        publish.push(layers.length ? { mid: tr.mid, source, layers } : { mid: tr.mid, source });
      }
      const subscribe = [];
      for (const [publicationId, tr] of this.receiving) {
        if (tr.mid === null) continue;
        // In an encrypted meeting a receiving m-line is named in `subscribe`, and so gets
        // media, only once an answer has made it active here (its SSRC is then known). Media
        // that arrived before the answer made Chromium start an unsignaled receive stream and
        // rebuild it when the answer came, and now and then the rebuilt stream never got what
        // the receiver's transform had decrypted: the frames were opened, the decoder got
        // none, and the sender was seen but heard as silence (about one run in ten of
        // e2ee.test.mjs). Holding it costs one more offer; a transceiver is held at most once.
        if (this.e2ee && tr.currentDirection !== 'recvonly' && !this.held.has(tr)) {
          this.held.add(tr);
          this.again = true;
          continue;
        }
        this.held.delete(tr);
        subscribe.push({ mid: tr.mid, publication_id: publicationId });
      }
      this.send({ type: 'offer', sdp: this.pc.localDescription.sdp, publish, subscribe });
      // Sizes are reported only for subscriptions the server has heard of.
      this.offeredSubs = new Set(subscribe.map((x) => x.publication_id));
      this.reportSizesSoon();
      if (!this.offered) {
        this.offered = true;
        for (const candidate of this.queued) this.send({ type: 'candidate', candidate });
        this.queued = [];
        this.after(MEDIA_TIMEOUT_MS, () => {
          if (!this.connected) this.onFailed();
        });
      }
    } catch (err) {
      if (this.closed) return;
      console.warn('could not create an offer:', err);
      this.negotiating = false;
      this.onFailed();
    }
  }

  async onAnswer(sdp) {
    if (!this.negotiating) return;
    try {
      await this.pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (err) {
      if (this.closed) return;
      console.warn('could not apply the answer:', err);
      this.onFailed();
      return;
    }
    if (this.closed) return;
    this.negotiating = false;
    if (this.again) this.negotiate();
  }

  /** The server refused the offer in flight: roll it back, and offer again if more changed since. */
  rollback() {
    if (!this.negotiating) return;
    this.negotiating = false;
    this.pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
    if (this.again) this.negotiate();
  }

  onCandidate(candidate) {
    if (this.closed) return;
    // null (or an empty candidate) ends gathering: say so once.
    const line = candidate && candidate.candidate ? candidate.candidate : '';
    if (!line) {
      if (this.endSent) return;
      this.endSent = true;
    }
    if (this.offered) this.send({ type: 'candidate', candidate: line });
    else this.queued.push(line);
  }

  onConnectionState() {
    if (this.closed) return;
    const state = this.pc.connectionState;
    if (state === 'connected') {
      this.connected = true;
      this.onConnected();
      this.cancelGrace?.();
      this.cancelGrace = null;
    } else if (state === 'failed') {
      this.onFailed();
    } else if (state === 'disconnected' && !this.cancelGrace) {
      this.cancelGrace = this.after(DISCONNECTED_GRACE_MS, () => {
        this.cancelGrace = null;
        if (this.pc.connectionState !== 'connected') this.onFailed();
      });
    }
  }
}

/**
 * Puts VP8 first for a simulcast camera: the server switches a receiver between layers at
 * keyframes it recognizes, and VP8 simulcast needs no `scalabilityMode`.
 */
function preferVp8(transceiver) {
  const codecs = RTCRtpReceiver.getCapabilities?.('video')?.codecs;
  if (!codecs || !transceiver.setCodecPreferences) return;
  const vp8 = codecs.filter((c) => c.mimeType.toLowerCase() === 'video/vp8');
  try {
    transceiver.setCodecPreferences([...vp8, ...codecs.filter((c) => !vp8.includes(c))]);
  } catch (err) {
    console.warn('could not prefer VP8:', err);
  }
}

function replace(transceiver, track) {
  transceiver.sender.replaceTrack(track).catch((err) => console.warn('replacing a track failed:', err));
}
