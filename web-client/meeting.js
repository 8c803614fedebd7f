// Being in a meeting: joining, the room as the server describes it, moderation, and coming
// back by itself after a network blip. `Meeting` is what the page uses; it wires together the
// parts of one connection attempt (a session `s`): the signaling socket (socket.js), the peer
// connection and its offers (negotiator.js), and what we know of the room's people (roster.js).
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

import { E2ee } from './e2ee.js';
import { Negotiator } from './negotiator.js';
import { Roster } from './roster.js';
import { JoinError, SignalingSocket, redirectTarget } from './socket.js';

export { JoinError };

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

const STATS_MS = 2000;
const MAX_MEDIA_FAILURES = 3; // sessions in a row whose media never connected
const RECONNECT_WINDOW_MS = 60000;
/** Failed attempts to reach this node before a page in a cluster moves to another node. */
const NODE_FAILOVER_ATTEMPTS = 2;

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
    /** The participants, their publications and what we receive of them (read through the fields defined at the bottom). */
    this.roster = new Roster(() => this.changed());
    /** publication id -> { width, height } in device pixels at which the page shows it (0 × 0: hidden) */
    this.videoSizes = new Map();
    /** Our publication id -> the `active` list of the last `simulcast_layers` about it. */
    this.simulcastLayers = new Map();
    /** Whether the meeting is end-to-end encrypted (the server says so at join). */
    this.encrypted = false;
    /** Our end-to-end keys and frame transforms (kept across reconnections). */
    this.e2ee = null;
    this.e2eeOptions = o.e2ee || {};

    this.s = null; // the current session: { socket, negotiator, … } (see `attempt`)
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
    try {
      this.s?.socket.send({ type: 'leave' });
    } catch {
      // The socket is going anyway.
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

  /** Brings the sending m-lines in line with the local tracks and what our role allows. */
  syncSenders() {
    const s = this.s;
    if (!s || !s.negotiator || s.disposed) return;
    for (const source of ['microphone', 'camera', 'screen']) {
      const allowed = this.canPublish() && (source !== 'screen' || this.canShareScreen());
      if (s.negotiator.sync(source, allowed ? this.local[source] : null, allowed)) this.roster.ownPubs.delete(source);
    }
  }

  sendMuted(source, muted) {
    const id = this.roster.ownPubs.get(source);
    if (id !== undefined && this.s) this.send(this.s, { type: 'set_muted', publication_id: id, muted });
  }

  /**
   * The page tells where it shows each received video: publication id -> { width, height }
   * in device pixels (0 × 0 when hidden). Changes go to the server in one batched message.
   */
  setVideoSizes(sizes) {
    this.videoSizes = sizes;
    this.s?.negotiator?.reportSizesSoon();
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
    this.roster.handRaised = !!raised;
    this.request({ type: 'raise_hand', raised: this.roster.handRaised });
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
    if (!this.canRaiseHand()) this.roster.handRaised = false;
    if (!this.canShareScreen()) this.local.stopScreen();
    if (!this.canPublish()) {
      // The server already ended our publications.
      this.local.stopAll();
      this.roster.ownPubs = new Map();
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
    const source = this.roster.ownSource(publicationId);
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
      socket: new SignalingSocket(),
      negotiator: null, // once in the room
      fatal: null, // a fatal error code the server sent before closing
      lastRequest: null, // the type of the last request the server may refuse (see `send`)
      deadWhy: null, // why the session was lost while still entering the room
      recordingBefore: null, // see `onRecordingState`
      disposed: false,
    };
    this.s = s;
    await s.socket.open(this.url);

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
        publicKeyOf: (id) => this.roster.participants.get(id)?.e2eeKey || null,
      });
      if (e2ee.supported) {
        await e2ee.init();
        this.e2ee = e2ee;
      }
    }
    const announced = this.e2ee?.announced();
    if (announced && this.protocolVersion >= 2) join.e2ee_key = announced;
    // In a cluster: the node that sent this page here carries its media (the one near it).
    const media = new URLSearchParams(location.search).get('media');
    if (media) join.media = media;
    const joined = await s.socket.join(join, (lobby) => {
      this.me = lobby.participant_id;
      if (lobby.room) this.room = lobby.room;
      if (lobby.title) this.title = lobby.title;
      this.lobby = { title: lobby.title || '', startsAt: lobby.starts_at ?? null, reason: lobby.reason || 'not_open' };
      this.setState('lobby');
      this.changed();
    });

    // In the room. Handlers go in before anything awaits, so no message is missed.
    s.socket.listen((m) => this.onMessage(s, m), () => this.lost(s, 'socket'));
    this.me = joined.participant_id;
    this.lobby = null;
    if (joined.room) this.room = joined.room;
    if (joined.title) this.title = joined.title;
    // A server without roles (protocol 1) says nothing: everything is allowed, as before.
    this.role = joined.role ?? (this.protocolVersion >= 2 ? this.role : null);
    if (joined.room_state) this.roomState = { open: !!joined.room_state.open, locked: !!joined.room_state.locked };
    if (joined.counts) this.roster.counts = joined.counts;
    if (joined.resume) this.resume = joined.resume;
    this.encrypted = !!joined.e2ee;
    if (this.encrypted && !this.e2ee) {
      s.socket.close();
      throw new JoinError('refused', 'e2ee_unsupported', 'this browser cannot encrypt media end to end');
    }
    if (this.encrypted) this.e2ee.newSession({ room: this.room, me: this.me, host: this.isHost() });
    if (!this.canRaiseHand()) this.roster.handRaised = false;
    else if (this.roster.handRaised) this.send(s, { type: 'raise_hand', raised: true });
    // A recording that still runs is announced again right after `joined`; one that stopped
    // while we were away is not, so forget it now. The announcement of the same recording
    // then passes without a second notice.
    s.recordingBefore = this.recording.active ? this.recording.recordingId : null;
    this.recording = { active: false, recordingId: null, startedAt: null, error: null };
    this.roster.reset();
    this.simulcastLayers = new Map();

    s.negotiator = new Negotiator({
      send: (message) => this.send(s, message),
      after: (ms, fn) => s.socket.after(ms, fn),
      onFailed: () => this.lost(s, 'media'),
      onConnected: () => {
        this.mediaFailures = 0;
      },
      videoSizes: () => this.videoSizes,
      protocolVersion: this.protocolVersion,
      e2ee: this.encrypted ? this.e2ee : null,
    });
    if (!this.canPublish()) this.local.stopAll();
    if (!this.canShareScreen()) this.local.stopScreen();
    for (const source of ['microphone', 'camera', 'screen']) {
      const track = this.local[source];
      if (track) s.negotiator.publish(source, track);
    }
    for (const p of joined.participants) {
      this.addParticipant(p);
      for (const pub of p.publications) this.subscribe(s, pub);
    }
    if (this.encrypted) this.updateSafetyCode();
    s.socket.keepAlive(() => this.lost(s, 'socket'));
    this.changed();
    s.negotiator.negotiate();
  }

  send(s, message) {
    // Which request a `forbidden` answers (those are the ones the server may refuse so).
    const refusable = message.type === 'offer' || HOST_OR_HAND.includes(message.type);
    if (s.socket.send(message) && refusable) s.lastRequest = message.type;
  }

  /** Ends a session: its socket, its timers and its peer connection. */
  dispose(s) {
    if (s.disposed) return;
    s.disposed = true;
    s.socket.dispose();
    s.negotiator?.close();
  }

  // ---- what the server says ------------------------------------------------------------------

  onMessage(s, m) {
    switch (m.type) {
      case 'answer':
        s.negotiator.onAnswer(m.sdp);
        break;
      case 'participant_updated': {
        if (m.participant.id === this.me) {
          // About ourselves (hosts see everyone): our hand and role as the server has them.
          if ('hand_raised' in m.participant) this.roster.handRaised = !!m.participant.hand_raised;
          this.changed();
          break;
        }
        const known = this.roster.participants.has(m.participant.id);
        this.addParticipant(m.participant);
        if (known) for (const id of this.roster.dropEndedPublications(m.participant)) this.unsubscribe(s, id);
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
        this.roster.counts = { present: m.present, viewers: m.viewers, lobby: m.lobby, hands_raised: m.hands_raised };
        this.changed();
        break;
      case 'lobby_changed':
        for (const w of this.roster.setWaiting(m.waiting)) this.notice('call.waitingToast', { name: w.name });
        this.changed();
        break;
      case 'participant_joined':
        if (m.participant.id === this.me) break;
        this.addParticipant(m.participant);
        for (const pub of m.participant.publications) this.subscribe(s, pub);
        this.notice('call.joinedToast', { name: m.participant.name });
        this.changed();
        break;
      case 'participant_left': {
        this.e2ee?.onLeft(m.participant_id);
        const p = this.roster.participants.get(m.participant_id);
        if (!p) break;
        for (const id of p.pubs.keys()) this.unsubscribe(s, id);
        this.roster.removeParticipant(m.participant_id);
        if (this.encrypted) this.updateSafetyCode();
        this.notice('call.leftToast', { name: p.name });
        this.changed();
        break;
      }
      case 'publication_added': {
        const pub = m.publication;
        if (pub.participant_id === this.me) {
          this.roster.ownPubs.set(pub.source, pub.id);
          // Mute state chosen before the server knew the publication.
          if (pub.source === 'microphone' && !this.local.micOn) this.sendMuted('microphone', true);
          if (pub.source === 'camera' && !(this.local.camOn && this.local.camera)) this.sendMuted('camera', true);
        } else {
          const p = this.addParticipant({ id: pub.participant_id, name: '', publications: [] });
          p.pubs.set(pub.id, pub);
          this.wantKey(p);
          this.subscribe(s, pub);
        }
        this.changed();
        break;
      }
      case 'publication_removed':
        if (m.participant_id === this.me) {
          this.roster.forgetOwn(m.publication_id);
        } else {
          this.roster.participants.get(m.participant_id)?.pubs.delete(m.publication_id);
          this.unsubscribe(s, m.publication_id);
        }
        this.changed();
        break;
      case 'mute_changed': {
        if (m.participant_id === this.me) {
          if (m.muted) this.onOwnMuted(m.publication_id);
          break;
        }
        const pub = this.roster.participants.get(m.participant_id)?.pubs.get(m.publication_id);
        if (pub) pub.muted = m.muted;
        this.changed();
        break;
      }
      case 'recording_state':
        this.onRecordingState(s, m);
        break;
      case 'active_speaker':
        this.roster.activeSpeaker = m.participant_id ?? null;
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
      case 'nodes':
        // A cluster's nodes: where to go if this one stops answering (see `reconnect`).
        this.nodes = Array.isArray(m.urls) ? m.urls.filter((u) => typeof u === 'string') : [];
        break;
      case 'media_connected':
      case 'pong':
      case 'joined':
      default:
        break;
    }
  }

  /** Takes in what the server says about a participant, and asks for their key. */
  addParticipant(info) {
    const before = this.roster.participants.get(info.id)?.role;
    const p = this.roster.addParticipant(info);
    this.wantKey(p);
    // The safety code covers hosts and presenters only: a viewer's arrival (thousands of them
    // at a national meeting, each recomputing it over everyone) does not change it.
    const counted = (role) => role === 'host' || role === 'presenter';
    if (this.encrypted && ('role' in info || info.e2ee_key) && (counted(p.role) || counted(before))) {
      this.updateSafetyCode();
    }
    return p;
  }

  /**
   * Asks a participant for their key once they publish: someone who sends nothing (a viewer,
   * of whom a host sees thousands) is neither asked nor made to answer.
   */
  wantKey(p) {
    if (this.encrypted && p.e2eeKey && p.pubs.size > 0) this.e2ee.want(p.id, p.e2eeKey);
  }

  /** Receives another participant's publication. */
  subscribe(s, pub) {
    if (pub.participant_id === this.me) return;
    const track = s.negotiator.subscribe(pub);
    if (track) this.roster.remoteTracks.set(pub.id, track);
  }

  unsubscribe(s, publicationId) {
    if (s.negotiator.unsubscribe(publicationId)) this.roster.dropTrack(publicationId);
  }

  /** Recomputes the safety code from the hosts' and presenters' keys (ours included). */
  updateSafetyCode() {
    this.roster.updateSafetyCode(this.room, { id: this.me, role: this.role, key: this.e2ee.announced() });
  }

  /** The server says which layers of one of our publications anyone receives. */
  onSimulcastLayers(s, m) {
    const id = m.publication_id;
    const source = this.roster.ownSource(id);
    if (!source || !s.negotiator.layered(source) || !Array.isArray(m.active)) return;
    this.simulcastLayers.set(id, m.active);
    s.negotiator.setLayers(source, () => this.roster.ownPubs.get(source) === id && this.simulcastLayers.get(id));
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
    if (['media_unavailable', 'message_too_large', 'server_stopping', ...TERMINAL].includes(m.code)) {
      // The server closes the socket after these: remember why (`server_stopping`: the banner
      // says the server restarts).
      s.fatal = m.code;
    }
    if (m.code === 'forbidden' || m.code === 'not_admitted' || m.code === 'unknown_participant') {
      this.notice(refusalKey(m.code), { code: m.code });
    }
    if (m.code === 'codec_unsupported') this.onCodecUnsupported(m.message);
    // A refused offer (e.g. sent just before a host made us a viewer): roll it back.
    const offerRefused = s.lastRequest === 'offer' && m.code === 'forbidden';
    if (offerRefused || ['bad_sdp', 'bad_message', 'media_unavailable'].includes(m.code)) s.negotiator.rollback();
  }

  /**
   * A publication is sent in a codec this browser did not offer to receive, so the server
   * cannot send it: say whose video stays dark and why. The message starts "publication <id> is sent in <codec>"
   * (docs/protocol.md); the name comes from the roster.
   */
  onCodecUnsupported(message) {
    const found = /^publication (\d+) is sent in (\S+?),/.exec(message || '');
    const id = found ? Number(found[1]) : null;
    const owner = [...this.roster.participants.values()].find((p) => p.pubs.has(id));
    const codec = (found && found[2]) || owner?.pubs.get(id)?.codec || '?';
    this.notice('call.codecUnsupported', { name: owner ? owner.name : '?', codec });
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
    if (why === 'media' && !s.negotiator?.connected) this.mediaFailures += 1;
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
    this.roster.dropMedia();
    this.changed();
    const deadline = Date.now() + this.reconnectWindowMs;
    let delay = 300;
    let unreachable = 0;
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
        // A server that is stopping refuses joins until its listener closes: try again (it
        // comes back after a restart, or another node of a cluster takes the room).
        if (err instanceof JoinError && err.kind === 'refused' && err.code !== 'server_stopping') {
          this.finish('ended', { key: refusalKey(err.code), vars: { code: err.code } });
          return;
        }
        unreachable += 1;
        if (unreachable >= NODE_FAILOVER_ATTEMPTS && this.moveToAnotherNode()) return;
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

  /**
   * In a cluster, when this node no longer answers: the page moves to the next node the server
   * listed (`nodes`), where the same link joins the same meeting (the room moves to a node that
   * lives once the dead one's lease ends). Returns whether it is moving.
   */
  moveToAnotherNode() {
    const others = (this.nodes || []).filter((url) => {
      try {
        return new URL(url).origin !== location.origin;
      } catch {
        return false;
      }
    });
    if (others.length === 0) return false;
    // The link's token (or the open room's name) goes along: the page took it out of its address.
    const next = others[Math.floor(Math.random() * others.length)];
    const target = redirectTarget(next, this.token ? { token: this.token } : { room: this.room });
    if (!target) return false;
    console.info(`this node does not answer; moving to ${new URL(target).origin}`);
    location.replace(target);
    return true;
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
    if (!s || s.disposed || !s.negotiator || this.state !== 'joined') return;
    let sample;
    try {
      sample = await s.negotiator.sample();
    } catch {
      return;
    }
    if (s !== this.s || s.disposed) return;
    this.roster.measure(sample, s.negotiator.connected);
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

// The page reads the roster as the meeting's own fields (`meeting.participants` and so on).
for (const field of ['participants', 'remoteTracks', 'quality', 'activeSpeaker', 'waiting', 'counts', 'handRaised', 'safetyCode']) {
  Object.defineProperty(Meeting.prototype, field, {
    get() {
      return this.roster[field];
    },
  });
}
