// Being in a meeting: the signaling socket, the peer connection, the room's roster, and
// coming back by itself after a network blip.
//
// Protocol (docs/protocol.md): the client always offers, one offer at a time; each offer
// lists every sendonly m-line in `publish` and every receiving m-line in `subscribe`.
// A reconnection is a fresh join (new socket, new peer connection); the local tracks stay.
//
// Protocol v2 adds join links (a token instead of room + name), a lobby where a host admits
// people, roles (a viewer only receives; only hosts and presenters share a screen), raised
// hands and host actions. Against a server without roles (`joined` has no `role`) everything
// is allowed, as before.
//
// Events (EventTarget): `state` (this.state changed), `change` (roster, tracks, mute state or
// quality changed: re-render), `notice` ({ detail: { key, vars } } for a passing message).

import { E2ee, safetyCode } from './e2ee.js';
import { StatsSampler, classify, combine } from './quality.js';
import { cameraLayers, declaredLayers, layerActivity, sizeReports } from './simulcast.js';

export const PROTOCOL_VERSION = 2;

export const ROLES = ['host', 'presenter', 'participant', 'viewer'];

const ROLE_NOTICES = {
  host: 'call.nowHost',
  presenter: 'call.nowPresenter',
  participant: 'call.nowParticipant',
  viewer: 'call.nowViewer',
};

const HOST_OR_HAND = ['raise_hand', 'admit', 'admit_all', 'open_room', 'lock_room', 'set_role', 'mute_participant', 'remove_participant', 'start_recording', 'stop_recording'];

/** Errors after which the server closes the socket and will not take this session back. */
const TERMINAL = ['removed', 'room_closed', 'invalid_token', 'already_connected', 'token_required', 'version_mismatch'];

const PING_MS = 5000; // application ping; the server answers `pong`
const SILENCE_MS = 16000; // nothing heard from the server for this long: the socket is dead
const OPEN_TIMEOUT_MS = 8000;
const JOIN_TIMEOUT_MS = 8000;
const MEDIA_TIMEOUT_MS = 15000; // an offer sent but no media connection after this long
const DISCONNECTED_GRACE_MS = 4000; // ICE 'disconnected' tolerated this long
const STATS_MS = 2000;
const MAX_MEDIA_FAILURES = 3; // sessions in a row whose media never connected
const RECONNECT_WINDOW_MS = 60000;
const SIZES_BATCH_MS = 250; // tile size changes within this long go out as one `video_sizes`

/** Single-layer encodings; the camera's simulcast ones come from `cameraLayers`. */
const SEND_ENCODINGS = {
  microphone: [{}],
  camera: [{ maxBitrate: 600_000, maxFramerate: 24 }],
  screen: [{ maxBitrate: 1_200_000, maxFramerate: 15 }],
};

/** The protocol version that knows `layers`, `video_sizes` and `simulcast_layers`. */
const SIMULCAST_PROTOCOL = 2;

/** A failed attempt to enter the room. `kind`: 'unreachable' (no socket) or 'refused'. */
export class JoinError extends Error {
  constructor(kind, code = null, detail = '') {
    super(`${kind}${code ? `: ${code}` : ''}${detail ? ` (${detail})` : ''}`);
    this.kind = kind;
    this.code = code;
  }
}

/** The i18n key explaining a refusal code. */
export function refusalKey(code) {
  switch (code) {
    case 'version_mismatch':
      return 'error.versionMismatch';
    case 'media_unavailable':
      return 'error.roomClosed';
    case 'room_full':
      return 'error.roomFull';
    case 'invalid_name':
      return 'error.invalidName';
    case 'token_required':
      return 'error.tokenRequired';
    case 'invalid_token':
      return 'error.invalidToken';
    case 'already_connected':
      return 'error.alreadyConnected';
    case 'removed':
      return 'error.removed';
    case 'room_closed':
      return 'error.roomClosed';
    case 'forbidden':
      return 'error.forbidden';
    case 'not_admitted':
      return 'error.notAdmitted';
    case 'e2ee_unsupported':
      return 'error.encryptionUnsupported';
    default:
      return 'error.server';
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * What a join link's token says about its holder (`name`, `role`, `room`), read without
 * checking the signature: only for display before the server answers. Null when unreadable.
 */
export function tokenClaims(token) {
  try {
    const part = String(token).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

export class Meeting extends EventTarget {
  /**
   * @param {object} o
   * @param {string} [o.token]     a join link's token (then room and name come from it)
   * @param {string} [o.room]
   * @param {string} [o.name]
   * @param {string} [o.role]      tokenless joins: 'participant' (default) or 'viewer'
   * @param {import('./media.js').LocalMedia} o.local
   * @param {string} o.url          the `wss://…/ws` address
   * @param {number} [o.protocolVersion]
   * @param {number} [o.reconnectWindowMs]
   * @param {object} [o.e2ee]  tests: { prefer: 'legacy' }, { keyless: true }, { diagnose: true }
   */
  constructor(o) {
    super();
    this.token = o.token || null;
    const claims = this.token ? tokenClaims(this.token) : null;
    this.room = o.room ?? claims?.room ?? '';
    this.name = o.name ?? claims?.name ?? '';
    this.askedRole = o.role || null;
    /** Our role: 'host' | 'presenter' | 'participant' | 'viewer', or null (server without roles). */
    this.role = claims?.role ?? o.role ?? null;
    this.title = '';
    /** While waiting to be admitted: { title, startsAt, reason }. */
    this.lobby = null;
    this.roomState = { open: true, locked: false };
    this.counts = null;
    /** Hosts: who waits in the lobby, [{ participant_id, name, site }]. */
    this.waiting = [];
    this.handRaised = false;
    /** Whether the meeting is being recorded, from the last `recording_state`. */
    this.recording = { active: false, recordingId: null, startedAt: null, error: null };
    /** The secret that lets an automatic reconnect take over our earlier session. */
    this.resume = null;
    this.local = o.local;
    this.url = o.url;
    this.protocolVersion = o.protocolVersion ?? PROTOCOL_VERSION;
    this.reconnectWindowMs = o.reconnectWindowMs ?? RECONNECT_WINDOW_MS;

    /** 'connecting' | 'lobby' | 'joined' | 'reconnecting' | 'ended' | 'left' */
    this.state = 'connecting';
    /** Why the meeting ended: an i18n key and its variables. */
    this.endReason = null;
    this.me = null;
    /** participant id -> { id, name, role, site, hand, serverQuality, pubs: Map<publication id, PublicationInfo> } */
    this.participants = new Map();
    /** publication id -> the MediaStreamTrack receiving it */
    this.remoteTracks = new Map();
    /** source -> our own publication id */
    this.ownPubs = new Map();
    /** participant id (or 'self') -> { level, lossPercent, jitterMs, rttMs } */
    this.quality = new Map();
    /** publication id -> latest inbound-rtp numbers */
    this.streamStats = new Map();
    /** publication id -> { width, height } in device pixels at which the page shows it (0 × 0: hidden) */
    this.videoSizes = new Map();
    /** The participant the server hears loudest, or null. */
    this.activeSpeaker = null;
    /** Our publication id -> the `active` list of the last `simulcast_layers` about it. */
    this.simulcastLayers = new Map();
    /** Whether the meeting is end-to-end encrypted (the server says so at join). */
    this.encrypted = false;
    /** Our end-to-end keys and frame transforms (kept across reconnections). */
    this.e2ee = null;
    this.e2eeOptions = o.e2ee || {};
    /** The safety code of an encrypted meeting, for people to compare aloud. */
    this.safetyCode = null;

    this.s = null; // the current session (socket + peer connection)
    this.mediaFailures = 0;
    this.statsTimer = null;
  }

  // ---- public API -----------------------------------------------------------------------

  /** First join: resolves once in the room, rejects with a JoinError. */
  async join() {
    try {
      await this.attempt();
      if (!['connecting', 'lobby'].includes(this.state)) throw new JoinError('unreachable', null, 'left while joining');
    } catch (err) {
      if (this.s) this.dispose(this.s);
      if (this.state !== 'left') this.state = 'ended';
      throw err;
    }
    this.statsTimer = setInterval(() => this.sampleStats(), STATS_MS);
    this.entered();
  }

  /** The room is entered (again); a loss noticed meanwhile is handled now. */
  entered() {
    this.setState('joined');
    const s = this.s;
    if (s.deadWhy) this.lost(s, s.deadWhy);
  }

  /** Says goodbye and releases the connection. */
  leave() {
    if (this.state === 'left' || this.state === 'ended') return;
    const s = this.s;
    if (s && s.ws && s.ws.readyState === WebSocket.OPEN) {
      try {
        s.ws.send(JSON.stringify({ type: 'leave' }));
      } catch {
        // The socket is going anyway.
      }
    }
    this.finish('left', null);
  }

  /** Turns the microphone on or off; returns an i18n error key when it could not start. */
  async setMicOn(on) {
    this.local.setMicOn(on);
    const error = on && !this.local.microphone ? await this.local.acquire() : null;
    this.syncSenders();
    this.sendMuted('microphone', !(this.local.micOn && this.local.microphone));
    this.changed();
    return error;
  }

  /** Turns the camera on or off; returns an i18n error key when it could not start. */
  async setCamOn(on) {
    const error = await this.local.setCamOn(on);
    this.syncSenders();
    this.sendMuted('camera', !(this.local.camOn && this.local.camera));
    this.changed();
    return error;
  }

  /** Starts presenting; returns an i18n error key on failure (none when the user cancels). */
  async startScreen() {
    let track;
    try {
      track = await this.local.startScreen();
    } catch (err) {
      return err && err.name === 'NotAllowedError' ? null : 'error.shareFailed';
    }
    // Ended from the browser's own "stop sharing" bar.
    track.addEventListener('ended', () => this.stopScreen());
    this.syncSenders();
    this.changed();
    return null;
  }

  stopScreen() {
    if (!this.local.screen) return;
    this.local.stopScreen();
    this.syncSenders();
    this.changed();
  }

  /**
   * Brings the sending m-lines in line with the local tracks: a new track is published, a
   * stopped screen share unpublished; a camera turned off stays published without a track
   * (and muted), so turning it on again needs no renegotiation.
   */
  syncSenders() {
    const s = this.s;
    if (!s || !s.pc || s.disposed) return;
    for (const source of ['microphone', 'camera', 'screen']) {
      const allowed = this.canPublish() && (source !== 'screen' || this.canShareScreen());
      const track = allowed ? this.local[source] : null;
      const tr = s.send[source];
      if (!allowed) {
        if (tr && tr.direction === 'sendonly') this.unpublish(s, source);
      } else if (track) {
        if (!tr || tr.direction !== 'sendonly') this.publish(s, source, track);
        else if (tr.sender.track !== track) replace(tr, track);
      } else if (tr && tr.direction === 'sendonly') {
        if (source === 'screen') this.unpublish(s, source);
        else replace(tr, null);
      }
    }
  }

  // ---- roles and host actions ------------------------------------------------------------

  /** Whether this role sends media at all (a server without roles: yes). */
  canPublish() {
    return this.role !== 'viewer';
  }

  canShareScreen() {
    return this.role === null || this.role === 'host' || this.role === 'presenter';
  }

  canRaiseHand() {
    return this.role === 'participant' || this.role === 'viewer';
  }

  isHost() {
    return this.role === 'host';
  }

  request(message) {
    if (this.s && this.state === 'joined') this.send(this.s, message);
  }

  raiseHand(raised) {
    if (!this.canRaiseHand()) return;
    this.handRaised = !!raised;
    this.request({ type: 'raise_hand', raised: this.handRaised });
    this.changed();
  }

  admit(participantId) {
    this.request({ type: 'admit', participant_id: participantId });
  }

  admitAll() {
    this.request({ type: 'admit_all' });
  }

  openRoom() {
    this.request({ type: 'open_room' });
  }

  lockRoom(locked) {
    this.request({ type: 'lock_room', locked: !!locked });
  }

  setRole(participantId, role) {
    this.request({ type: 'set_role', participant_id: participantId, role });
  }

  /** Hosts: start or stop recording the meeting (the server refuses anyone else). */
  startRecording() {
    this.request({ type: 'start_recording' });
  }

  stopRecording() {
    this.request({ type: 'stop_recording' });
  }

  /** `kind`: 'audio' (microphone) or 'video' (camera and screen). */
  muteParticipant(participantId, kind) {
    this.request({ type: 'mute_participant', participant_id: participantId, kind });
  }

  removeParticipant(participantId) {
    this.request({ type: 'remove_participant', participant_id: participantId });
  }

  /** A host changed our role: stop or start sending accordingly. */
  async onRoleChanged(role) {
    const before = this.role;
    this.role = role;
    if (this.encrypted) {
      this.e2ee.host = this.isHost();
      this.updateSafetyCode();
    }
    if (!this.canRaiseHand()) this.handRaised = false;
    if (!this.canShareScreen()) this.local.stopScreen();
    if (!this.canPublish()) {
      // The server already ended our publications.
      this.local.stopAll();
      this.ownPubs = new Map();
      this.syncSenders();
    } else if (before === 'viewer') {
      this.local.micOn = true;
      this.local.camOn = true;
      const error = await this.local.acquire();
      if (error) this.notice(error);
      this.syncSenders();
    } else {
      this.syncSenders();
    }
    this.notice(ROLE_NOTICES[role] || 'call.nowParticipant');
    this.changed();
  }

  /** The server (a host) muted one of our publications. */
  onOwnMuted(publicationId) {
    const source = [...this.ownPubs].find(([, id]) => id === publicationId)?.[0];
    if (source === 'microphone' && this.local.micOn) {
      this.local.setMicOn(false);
      this.notice('call.mutedByHost');
    } else if (source === 'camera' && this.local.camOn) {
      this.local.setCamOn(false);
      this.syncSenders();
      this.notice('call.cameraOffByHost');
    } else if (source === 'screen' && this.local.screen) {
      this.stopScreen();
      this.notice('call.cameraOffByHost');
    }
    this.changed();
  }

  // ---- one session: socket + peer connection ---------------------------------------------

  /** Opens a socket, joins, builds the peer connection and sends the first offer. */
  async attempt() {
    const s = {
      ws: null,
      pc: null,
      send: {}, // source -> sending transceiver
      subs: new Map(), // publication id -> receiving transceiver
      free: { audio: [], video: [] }, // receiving transceivers no longer bound
      held: new Set(), // receiving transceivers left out of an offer once (see negotiate)
      negotiating: false,
      again: false,
      offered: false,
      queued: [], // candidates waiting for the first offer
      endSent: false,
      lastHeard: Date.now(),
      fatal: null, // a fatal error code the server sent before closing
      timers: new Set(),
      disposed: false,
      connected: false,
      sampler: new StatsSampler(),
      layers: {}, // source -> the simulcast layers declared in offers ([] for one layer)
      encodingUpdate: Promise.resolve(), // setParameters calls, one after the other
      offeredSubs: new Set(), // publication ids of receiving m-lines in the last sent offer
      sentSizes: new Map(), // publication id -> the size last reported in this session
      sizesQueued: false,
      decryptors: new Map(), // receiving transceiver -> its decrypting transform's id
    };
    this.s = s;

    const ws = new WebSocket(this.url);
    s.ws = ws;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new JoinError('unreachable', null, 'timeout'));
        ws.close();
      }, OPEN_TIMEOUT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      ws.onclose = () => {
        clearTimeout(timer);
        reject(new JoinError('unreachable'));
      };
    });

    const join = { type: 'join', protocol_version: this.protocolVersion };
    if (this.token) {
      join.token = this.token;
    } else {
      join.room = this.room;
      join.name = this.name;
      if (this.askedRole && this.protocolVersion >= 2) join.role = this.askedRole;
    }
    if (this.resume) join.resume = this.resume;
    if (!this.e2ee) {
      const e2ee = new E2ee({
        ...this.e2eeOptions,
        // Keys go out while (re)entering the room too, not only once joined.
        send: (keys) => this.s && this.send(this.s, { type: 'e2ee_keys', keys }),
        publicKeyOf: (id) => this.participants.get(id)?.e2eeKey || null,
      });
      if (e2ee.supported) {
        await e2ee.init();
        this.e2ee = e2ee;
      }
    }
    const announced = this.e2ee?.announced();
    if (announced && this.protocolVersion >= 2) join.e2ee_key = announced;
    ws.send(JSON.stringify(join));
    const joined = await new Promise((resolve, reject) => {
      let timer = setTimeout(() => {
        reject(new JoinError('unreachable', null, 'no answer to join'));
        ws.close();
      }, JOIN_TIMEOUT_MS);
      let lobbyPing = null;
      const done = () => {
        clearTimeout(timer);
        clearInterval(lobbyPing);
        s.rejectJoin = null;
      };
      // Leaving (or giving up) while waiting ends the wait.
      s.rejectJoin = (err) => {
        done();
        reject(err);
      };
      ws.onmessage = (event) => {
        const message = parse(event.data);
        if (!message) return;
        s.lastHeard = Date.now();
        if (message.type === 'joined') {
          done();
          resolve(message);
        } else if (message.type === 'lobby') {
          // Waiting for a host (or the start time): no deadline, but keep the socket alive.
          clearTimeout(timer);
          timer = null;
          if (!lobbyPing) {
            lobbyPing = setInterval(() => {
              if (Date.now() - s.lastHeard > SILENCE_MS) ws.close(); // dead: onclose rejects
              else this.send(s, { type: 'ping' });
            }, PING_MS);
          }
          this.me = message.participant_id;
          if (message.room) this.room = message.room;
          if (message.title) this.title = message.title;
          this.lobby = { title: message.title || '', startsAt: message.starts_at ?? null, reason: message.reason || 'not_open' };
          this.setState('lobby');
          this.changed();
        } else if (message.type === 'error') {
          done();
          reject(new JoinError('refused', message.code, message.message));
          ws.close();
        }
      };
      ws.onclose = () => {
        done();
        reject(new JoinError('unreachable', null, 'closed before joined'));
      };
    });

    // In the room. Handlers go in before anything awaits, so no message is missed.
    ws.onmessage = (event) => this.onMessage(s, parse(event.data));
    ws.onclose = () => this.lost(s, 'socket');
    this.me = joined.participant_id;
    this.lobby = null;
    if (joined.room) this.room = joined.room;
    if (joined.title) this.title = joined.title;
    // A server without roles (protocol 1) says nothing: everything is allowed, as before.
    this.role = joined.role ?? (this.protocolVersion >= 2 ? this.role : null);
    if (joined.room_state) this.roomState = { open: !!joined.room_state.open, locked: !!joined.room_state.locked };
    if (joined.counts) this.counts = joined.counts;
    if (joined.resume) this.resume = joined.resume;
    this.encrypted = !!joined.e2ee;
    if (this.encrypted && !this.e2ee) {
      ws.close();
      throw new JoinError('refused', 'e2ee_unsupported', 'this browser cannot encrypt media end to end');
    }
    if (this.encrypted) this.e2ee.newSession({ room: this.room, me: this.me, host: this.isHost() });
    if (!this.canRaiseHand()) this.handRaised = false;
    else if (this.handRaised) this.send(s, { type: 'raise_hand', raised: true });
    this.waiting = [];
    // A recording that still runs is announced again right after `joined`; one that stopped
    // while we were away is not, so forget it now. The announcement of the same recording
    // then passes without a second notice.
    s.recordingBefore = this.recording.active ? this.recording.recordingId : null;
    this.recording = { active: false, recordingId: null, startedAt: null, error: null };
    this.participants = new Map();
    this.remoteTracks = new Map();
    this.ownPubs = new Map();
    this.quality = new Map();
    this.streamStats = new Map();
    this.activeSpeaker = null;
    this.simulcastLayers = new Map();

    const config = { bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
    // The legacy transform needs this for the whole connection; every m-line is then piped.
    if (this.encrypted && this.e2ee.mode === 'legacy') config.encodedInsertableStreams = true;
    const pc = new RTCPeerConnection(config);
    s.pc = pc;
    pc.onicecandidate = (event) => this.onCandidate(s, event.candidate);
    pc.onconnectionstatechange = () => this.onConnectionState(s);

    if (!this.canPublish()) this.local.stopAll();
    if (!this.canShareScreen()) this.local.stopScreen();
    for (const source of ['microphone', 'camera', 'screen']) {
      const track = this.local[source];
      if (track) this.publish(s, source, track);
    }
    for (const p of joined.participants) {
      this.addParticipant(p);
      for (const pub of p.publications) this.subscribe(s, pub);
    }
    if (this.encrypted) this.updateSafetyCode();
    this.every(s, PING_MS, () => {
      if (Date.now() - s.lastHeard > SILENCE_MS) {
        this.lost(s, 'socket');
        return;
      }
      this.send(s, { type: 'ping' });
    });
    this.changed();
    this.negotiate(s);
  }

  send(s, message) {
    if (s.disposed || s.ws.readyState !== WebSocket.OPEN) return;
    // Which request a `forbidden` answers (those are the ones the server may refuse so).
    if (message.type === 'offer' || HOST_OR_HAND.includes(message.type)) s.lastRequest = message.type;
    s.ws.send(JSON.stringify(message));
  }

  every(s, ms, fn) {
    const id = setInterval(fn, ms);
    s.timers.add(() => clearInterval(id));
  }

  after(s, ms, fn) {
    const id = setTimeout(fn, ms);
    const cancel = () => clearTimeout(id);
    s.timers.add(cancel);
    return cancel;
  }

  dispose(s) {
    if (s.disposed) return;
    s.disposed = true;
    s.rejectJoin?.(new JoinError('unreachable', null, 'closed'));
    for (const cancel of s.timers) cancel();
    s.timers.clear();
    if (s.ws) {
      s.ws.onclose = s.ws.onmessage = s.ws.onopen = null;
      if (s.ws.readyState <= WebSocket.OPEN) s.ws.close();
    }
    if (s.pc) {
      s.pc.onicecandidate = s.pc.onconnectionstatechange = null;
      s.pc.close();
    }
  }

  onMessage(s, m) {
    if (!m || s.disposed) return;
    s.lastHeard = Date.now();
    switch (m.type) {
      case 'answer':
        this.onAnswer(s, m.sdp);
        break;
      case 'participant_updated': {
        if (m.participant.id === this.me) {
          // About ourselves (hosts see everyone): our hand and role as the server has them.
          if ('hand_raised' in m.participant) this.handRaised = !!m.participant.hand_raised;
          this.changed();
          break;
        }
        const known = this.participants.get(m.participant.id);
        const p = this.addParticipant(m.participant);
        if (known && Array.isArray(m.participant.publications)) {
          const now = new Set(m.participant.publications.map((pub) => pub.id));
          for (const id of [...p.pubs.keys()]) {
            if (!now.has(id)) {
              p.pubs.delete(id);
              this.unsubscribe(s, id);
            }
          }
        }
        for (const pub of m.participant.publications || []) this.subscribe(s, pub);
        this.changed();
        break;
      }
      case 'role_changed':
        this.onRoleChanged(m.role);
        break;
      case 'room_state':
        this.roomState = { open: !!m.open, locked: !!m.locked };
        this.changed();
        break;
      case 'room_counts':
        // Someone we cannot see left (a viewer): they may have held our key.
        if (this.counts && m.present < this.counts.present) this.e2ee?.onUnseenLeft();
        this.counts = { present: m.present, viewers: m.viewers, lobby: m.lobby, hands_raised: m.hands_raised };
        this.changed();
        break;
      case 'lobby_changed': {
        const before = new Set(this.waiting.map((w) => w.participant_id));
        this.waiting = Array.isArray(m.waiting) ? m.waiting : [];
        for (const w of this.waiting) {
          if (!before.has(w.participant_id)) this.notice('call.waitingToast', { name: w.name });
        }
        this.changed();
        break;
      }
      case 'participant_joined':
        if (m.participant.id === this.me) break;
        this.addParticipant(m.participant);
        for (const pub of m.participant.publications) this.subscribe(s, pub);
        this.notice('call.joinedToast', { name: m.participant.name });
        this.changed();
        break;
      case 'participant_left': {
        this.e2ee?.onLeft(m.participant_id);
        const p = this.participants.get(m.participant_id);
        if (!p) break;
        for (const id of p.pubs.keys()) this.unsubscribe(s, id);
        this.participants.delete(m.participant_id);
        this.quality.delete(m.participant_id);
        if (this.encrypted) this.updateSafetyCode();
        if (this.activeSpeaker === m.participant_id) this.activeSpeaker = null;
        this.notice('call.leftToast', { name: p.name });
        this.changed();
        break;
      }
      case 'publication_added': {
        const pub = m.publication;
        if (pub.participant_id === this.me) {
          this.ownPubs.set(pub.source, pub.id);
          // Mute state chosen before the server knew the publication.
          if (pub.source === 'microphone' && !this.local.micOn) this.sendMuted('microphone', true);
          if (pub.source === 'camera' && !(this.local.camOn && this.local.camera)) this.sendMuted('camera', true);
        } else {
          const p = this.addParticipant({ id: pub.participant_id, name: '', publications: [] });
          p.pubs.set(pub.id, pub);
          this.subscribe(s, pub);
        }
        this.changed();
        break;
      }
      case 'publication_removed': {
        if (m.participant_id === this.me) {
          for (const [source, id] of this.ownPubs) if (id === m.publication_id) this.ownPubs.delete(source);
        } else {
          this.participants.get(m.participant_id)?.pubs.delete(m.publication_id);
          this.unsubscribe(s, m.publication_id);
        }
        this.changed();
        break;
      }
      case 'mute_changed': {
        if (m.participant_id === this.me) {
          if (m.muted) this.onOwnMuted(m.publication_id);
          break;
        }
        const pub = this.participants.get(m.participant_id)?.pubs.get(m.publication_id);
        if (pub) pub.muted = m.muted;
        this.changed();
        break;
      }
      case 'recording_state':
        this.onRecordingState(s, m);
        break;
      case 'active_speaker':
        this.activeSpeaker = m.participant_id ?? null;
        this.changed();
        break;
      case 'simulcast_layers':
        this.onSimulcastLayers(s, m);
        break;
      case 'e2ee_key':
        if (this.encrypted) this.e2ee.onBlob(m.from, m.blob);
        break;
      case 'error':
        this.onError(s, m);
        break;
      case 'media_connected':
      case 'pong':
      case 'joined':
      default:
        break;
    }
  }

  /**
   * Everyone is told when a recording starts (arrivals too, while one runs) and stops, so that
   * nobody is recorded without knowing; hosts also learn why a recording stopped by itself.
   */
  onRecordingState(s, m) {
    const resumed = m.active && !!m.recording_id && m.recording_id === s.recordingBefore;
    s.recordingBefore = null;
    const was = this.recording.active || resumed;
    this.recording = {
      active: !!m.active,
      recordingId: m.recording_id ?? null,
      startedAt: m.started_at ?? null,
      error: m.error ?? null,
    };
    if (this.recording.active && !was) this.notice('rec.startedToast');
    if (!this.recording.active && was) this.notice('rec.stoppedToast');
    if (!this.recording.active && m.error && this.isHost()) this.notice('rec.failedToast', { error: m.error });
    this.changed();
  }

  onError(s, m) {
    console.warn('server refused a request:', m.code, m.message);
    // A refused recording request (the disk is full, recording is not available) says so to
    // the host and nothing more: it must not end or poison the session.
    const recordingRequest = s.lastRequest === 'start_recording' || s.lastRequest === 'stop_recording';
    if (recordingRequest && !['forbidden', 'not_admitted', 'message_too_large', ...TERMINAL].includes(m.code)) {
      s.lastRequest = null;
      this.notice('rec.refusedToast', { message: m.message || m.code });
      return;
    }
    if (['media_unavailable', 'message_too_large', ...TERMINAL].includes(m.code)) {
      // The server closes the socket after these: remember why.
      s.fatal = m.code;
    }
    if (m.code === 'forbidden' || m.code === 'not_admitted' || m.code === 'unknown_participant') {
      this.notice(refusalKey(m.code), { code: m.code });
    }
    // A refused offer (e.g. sent just before a host made us a viewer): roll it back.
    const offerRefused = s.lastRequest === 'offer' && m.code === 'forbidden';
    if (s.negotiating && (offerRefused || ['bad_sdp', 'bad_message', 'media_unavailable'].includes(m.code))) {
      s.negotiating = false;
      s.pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      if (s.again) this.negotiate(s);
    }
  }

  addParticipant(info) {
    let p = this.participants.get(info.id);
    if (!p) {
      p = { id: info.id, name: info.name, role: null, site: null, hand: false, serverQuality: null, pubs: new Map() };
      this.participants.set(info.id, p);
    } else if (info.name) {
      p.name = info.name;
    }
    if ('role' in info) p.role = info.role;
    if ('site' in info) p.site = info.site;
    if ('hand_raised' in info) p.hand = !!info.hand_raised;
    if ('quality' in info) p.serverQuality = info.quality;
    if (info.e2ee_key) p.e2eeKey = info.e2ee_key;
    for (const pub of info.publications || []) p.pubs.set(pub.id, pub);
    if (this.encrypted && p.e2eeKey) this.e2ee.want(p.id, p.e2eeKey);
    if (this.encrypted && ('role' in info || info.e2ee_key)) this.updateSafetyCode();
    return p;
  }

  /** Recomputes the safety code from the hosts' and presenters' keys (ours included). */
  updateSafetyCode() {
    const entries = [...this.participants.values()].map((p) => ({ id: p.id, role: p.role, key: p.e2eeKey }));
    entries.push({ id: this.me, role: this.role, key: this.e2ee.announced() });
    const run = safetyCode(this.room, entries).then((code) => {
      if (run !== this.safetyRun || code === this.safetyCode) return;
      this.safetyCode = code;
      this.changed();
    });
    this.safetyRun = run;
  }

  // ---- media negotiation ---------------------------------------------------------------

  /** Sends a track on a sendonly m-line, reusing this source's previous one. */
  publish(s, source, track) {
    let tr = s.send[source];
    if (tr) {
      replace(tr, track);
      tr.direction = 'sendonly';
    } else if (source === 'camera' && this.protocolVersion >= SIMULCAST_PROTOCOL) {
      const { encodings, layers } = cameraLayers(track.getSettings());
      tr = s.pc.addTransceiver(track, { direction: 'sendonly', sendEncodings: encodings });
      s.layers.camera = layers;
      if (layers.length > 1 || this.encrypted) preferVp8(tr);
      s.send[source] = tr;
      if (this.encrypted) this.e2ee.attachSender(tr.sender, 'video');
    } else {
      tr = s.pc.addTransceiver(track, { direction: 'sendonly', sendEncodings: SEND_ENCODINGS[source] });
      s.send[source] = tr;
      // Encrypted frames keep only VP8's header bytes readable (docs/e2ee.md).
      if (this.encrypted && track.kind === 'video') preferVp8(tr);
      if (this.encrypted) this.e2ee.attachSender(tr.sender, track.kind);
    }
    this.negotiate(s);
  }

  /**
   * The server says which layers of one of our publications anyone receives: pause the
   * others, so that the encoder and the uplink do not spend on video nobody watches.
   */
  onSimulcastLayers(s, m) {
    const source = [...this.ownPubs].find(([, id]) => id === m.publication_id)?.[0];
    if (!source || !s.send[source] || !s.layers[source]?.length || !Array.isArray(m.active)) return;
    this.simulcastLayers.set(m.publication_id, m.active);
    // One setParameters at a time (a second one during the first is refused); each applies
    // the latest wish, so a burst of messages ends in the last one's state.
    s.encodingUpdate = s.encodingUpdate.then(() => this.applyLayers(s, source, m.publication_id));
  }

  async applyLayers(s, source, publicationId) {
    if (s.disposed || this.ownPubs.get(source) !== publicationId) return;
    const sender = s.send[source].sender;
    const params = sender.getParameters();
    const active = layerActivity(this.simulcastLayers.get(publicationId), params.encodings.length);
    if (params.encodings.every((e, i) => e.active === active[i])) return;
    params.encodings.forEach((e, i) => {
      e.active = active[i];
    });
    try {
      await sender.setParameters(params);
    } catch (err) {
      if (!s.disposed) console.warn('could not pause or resume simulcast layers:', err);
    }
  }

  /**
   * The page tells where it shows each received video: publication id -> { width, height }
   * in device pixels (0 × 0 when hidden). Changes go to the server in one batched message.
   */
  setVideoSizes(sizes) {
    this.videoSizes = sizes;
    this.reportSizesSoon(this.s);
  }

  reportSizesSoon(s) {
    if (!s || s.disposed || s.sizesQueued || this.protocolVersion < SIMULCAST_PROTOCOL) return;
    if (sizeReports(this.videoSizes, s.sentSizes, s.offeredSubs).length === 0) return;
    s.sizesQueued = true;
    // A plain timer (not `after`): this runs on every resize and must not pile up cancels.
    setTimeout(() => {
      s.sizesQueued = false;
      if (s.disposed) return;
      for (const sizes of sizeReports(this.videoSizes, s.sentSizes, s.offeredSubs)) {
        this.send(s, { type: 'video_sizes', sizes });
        for (const { publication_id: id, width, height } of sizes) s.sentSizes.set(id, { width, height });
      }
    }, SIZES_BATCH_MS);
  }

  unpublish(s, source) {
    const tr = s.send[source];
    if (!tr) return;
    replace(tr, null);
    tr.direction = 'inactive';
    this.ownPubs.delete(source);
    this.negotiate(s);
  }

  /** Receives another participant's publication on a recvonly m-line. */
  subscribe(s, pub) {
    if (pub.participant_id === this.me || s.subs.has(pub.id)) return;
    let tr = s.free[pub.kind].pop();
    if (tr) {
      tr.direction = 'recvonly';
    } else {
      tr = s.pc.addTransceiver(pub.kind, { direction: 'recvonly' });
      if (this.encrypted) s.decryptors.set(tr, this.e2ee.attachReceiver(tr.receiver, pub.kind));
    }
    // Frames of this publication open only with its owner's keys.
    if (this.encrypted) this.e2ee.bind(s.decryptors.get(tr), pub.participant_id);
    s.subs.set(pub.id, tr);
    this.remoteTracks.set(pub.id, tr.receiver.track);
    this.negotiate(s);
  }

  unsubscribe(s, publicationId) {
    const tr = s.subs.get(publicationId);
    if (!tr) return;
    s.subs.delete(publicationId);
    s.sentSizes.delete(publicationId);
    this.remoteTracks.delete(publicationId);
    this.streamStats.delete(publicationId);
    // In an encrypted meeting the m-line stays recvonly, idle (the next offer no longer names
    // it in `subscribe`, so the server sends nothing on it). Made inactive and then active
    // again, it gets a rebuilt receive stream in Chromium, and now and then that stream never
    // got what the receiver's transform had decrypted: the next sender on it was seen but
    // heard as silence (see `negotiate` for the other way to reach the same state).
    if (!this.encrypted) tr.direction = 'inactive';
    s.held.delete(tr);
    s.free[tr.receiver.track.kind].push(tr);
    this.negotiate(s);
  }

  /** Offers the complete current set of m-lines; at most one offer is in flight. */
  async negotiate(s) {
    if (s.disposed) return;
    if (s.negotiating) {
      s.again = true;
      return;
    }
    // An offer without m-lines carries no fingerprint: wait for something to send or receive.
    if (s.pc.getTransceivers().length === 0) return;
    s.negotiating = true;
    s.again = false;
    try {
      await s.pc.setLocalDescription();
      if (s.disposed) return;
      const publish = [];
      for (const [source, tr] of Object.entries(s.send)) {
        if (tr.mid === null || tr.direction !== 'sendonly') continue;
        const layers = this.layersOf(s, source);
        publish.push(layers.length ? { mid: tr.mid, source, layers } : { mid: tr.mid, source });
      }
      const subscribe = [];
      for (const [publicationId, tr] of s.subs) {
        if (tr.mid === null) continue;
        // In an encrypted meeting a receiving m-line is named in `subscribe`, and so gets
        // media, only once an answer has made it active here (its SSRC is then known). Media
        // that arrived before the answer made Chromium start an unsignaled receive stream and
        // rebuild it when the answer came, and now and then the rebuilt stream never got what
        // the receiver's transform had decrypted: the frames were opened, the decoder got
        // none, and the sender was seen but heard as silence (about one run in ten of
        // e2ee.test.mjs). Holding it costs one more offer; a transceiver is held at most once.
        if (this.encrypted && tr.currentDirection !== 'recvonly' && !s.held.has(tr)) {
          s.held.add(tr);
          s.again = true;
          continue;
        }
        s.held.delete(tr);
        subscribe.push({ mid: tr.mid, publication_id: publicationId });
      }
      this.send(s, { type: 'offer', sdp: s.pc.localDescription.sdp, publish, subscribe });
      // Sizes are reported only for subscriptions the server has heard of.
      s.offeredSubs = new Set(subscribe.map((x) => x.publication_id));
      this.reportSizesSoon(s);
      if (!s.offered) {
        s.offered = true;
        for (const candidate of s.queued) this.send(s, { type: 'candidate', candidate });
        s.queued = [];
        this.after(s, MEDIA_TIMEOUT_MS, () => {
          if (!s.connected) this.lost(s, 'media');
        });
      }
    } catch (err) {
      if (s.disposed) return;
      console.warn('could not create an offer:', err);
      s.negotiating = false;
      this.lost(s, 'media');
    }
  }

  async onAnswer(s, sdp) {
    if (!s.negotiating) return;
    try {
      await s.pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (err) {
      if (s.disposed) return;
      console.warn('could not apply the answer:', err);
      this.lost(s, 'media');
      return;
    }
    if (s.disposed) return;
    s.negotiating = false;
    if (s.again) this.negotiate(s);
  }

  onCandidate(s, candidate) {
    if (s.disposed) return;
    // null (or an empty candidate) ends gathering: say so once.
    const line = candidate && candidate.candidate ? candidate.candidate : '';
    if (!line) {
      if (s.endSent) return;
      s.endSent = true;
    }
    if (s.offered) this.send(s, { type: 'candidate', candidate: line });
    else s.queued.push(line);
  }

  onConnectionState(s) {
    if (s.disposed) return;
    const state = s.pc.connectionState;
    if (state === 'connected') {
      s.connected = true;
      this.mediaFailures = 0;
      s.cancelGrace?.();
      s.cancelGrace = null;
    } else if (state === 'failed') {
      this.lost(s, 'media');
    } else if (state === 'disconnected' && !s.cancelGrace) {
      s.cancelGrace = this.after(s, DISCONNECTED_GRACE_MS, () => {
        s.cancelGrace = null;
        if (s.pc.connectionState !== 'connected') this.lost(s, 'media');
      });
    }
  }

  /** The simulcast layers to declare for a sending m-line, sized from its current track. */
  layersOf(s, source) {
    const declared = s.layers[source];
    const settings = s.send[source].sender.track?.getSettings();
    if (declared?.length && settings?.width && settings?.height) {
      s.layers[source] = declaredLayers(s.send[source].sender.getParameters().encodings, settings);
    }
    return s.layers[source] || [];
  }

  sendMuted(source, muted) {
    const id = this.ownPubs.get(source);
    if (id !== undefined && this.s) this.send(this.s, { type: 'set_muted', publication_id: id, muted });
  }

  // ---- losing the connection and coming back ---------------------------------------------

  /** The session is gone (socket closed or silent, media failed): rejoin. */
  lost(s, why) {
    if (s !== this.s || s.disposed) return;
    if (this.state !== 'joined') {
      // Still entering the room: handled once it is entered (see `entered`).
      s.deadWhy = s.deadWhy || why;
      return;
    }
    const fatal = s.fatal;
    if (why === 'media' && !s.connected) this.mediaFailures += 1;
    this.dispose(s);
    console.info(`connection lost (${why}${fatal ? `, server said ${fatal}` : ''}); rejoining`);
    if (TERMINAL.includes(fatal)) {
      this.finish('ended', { key: refusalKey(fatal), vars: { code: fatal } });
      return;
    }
    if (this.mediaFailures >= MAX_MEDIA_FAILURES) {
      this.finish('ended', { key: 'error.mediaFailed' });
      return;
    }
    this.reconnect(fatal);
  }

  async reconnect(fatal) {
    /** Why the server ended the session we are restoring (`server_stopping`: a restart). */
    this.reconnectReason = fatal || null;
    this.setState('reconnecting');
    // Keep names on screen, drop the dead tracks.
    this.remoteTracks = new Map();
    this.streamStats = new Map();
    this.quality = new Map();
    this.changed();
    const deadline = Date.now() + this.reconnectWindowMs;
    let delay = 300;
    for (;;) {
      if (this.state !== 'reconnecting') return;
      try {
        await this.attempt();
        if (!['reconnecting', 'lobby'].includes(this.state)) {
          this.dispose(this.s);
          return;
        }
        this.entered();
        return;
      } catch (err) {
        if (this.s) this.dispose(this.s);
        if (this.state === 'lobby') this.setState('reconnecting');
        if (this.state !== 'reconnecting') return;
        if (err instanceof JoinError && err.kind === 'refused') {
          this.finish('ended', { key: refusalKey(err.code), vars: { code: err.code } });
          return;
        }
        if (Date.now() + delay > deadline) {
          // The server said it ended our session and will not take us back: the room is closed.
          this.finish('ended', { key: fatal === 'media_unavailable' ? 'error.roomClosed' : 'error.connectionLost' });
          return;
        }
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 4000);
    }
  }

  finish(state, reason) {
    clearInterval(this.statsTimer);
    if (this.s) this.dispose(this.s);
    this.endReason = reason;
    this.local.stopScreen();
    this.setState(state);
  }

  // ---- statistics --------------------------------------------------------------------------

  async sampleStats() {
    const s = this.s;
    if (!s || s.disposed || !s.pc || this.state !== 'joined') return;
    let sample;
    try {
      sample = await s.sampler.sample(s.pc);
    } catch {
      return;
    }
    if (s !== this.s || s.disposed) return;
    const byParticipant = new Map();
    for (const [publicationId, tr] of s.subs) {
      const stats = tr.mid !== null ? sample.inbound.get(tr.mid) : undefined;
      if (!stats) continue;
      this.streamStats.set(publicationId, stats);
      for (const p of this.participants.values()) {
        if (p.pubs.has(publicationId)) {
          if (!byParticipant.has(p.id)) byParticipant.set(p.id, []);
          byParticipant.get(p.id).push(stats);
        }
      }
    }
    for (const p of this.participants.values()) {
      const measured = combine(byParticipant.get(p.id) || [], sample.rttMs);
      this.quality.set(p.id, { level: classify(measured), ...measured });
    }
    const own = { lossPercent: sample.outboundLossPercent, jitterMs: null, rttMs: sample.rttMs };
    this.quality.set('self', { level: s.connected ? classify(own) : 'unknown', ...own });
    this.changed();
  }

  // ---- events ----------------------------------------------------------------------------

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new Event('state'));
  }

  changed() {
    this.dispatchEvent(new Event('change'));
  }

  notice(key, vars) {
    this.dispatchEvent(new CustomEvent('notice', { detail: { key, vars } }));
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

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    console.warn('ignoring an unparsable server message');
    return null;
  }
}
