// Who is in the room as far as this client knows: the participants and their publications,
// the ids the server gave our own publications, what we receive from each (tracks, statistics,
// quality), who speaks, who waits in the lobby, the room's counts, our raised hand and the
// safety code. The meeting changes it as the server's messages come in and decides what to
// receive; the roster keeps the entries consistent with each other.

import { safetyCode } from './e2ee.js';
import { classify, combine } from './quality.js';

export class Roster {
  /** @param {() => void} changed  called when the roster changes by itself (a safety code came) */
  constructor(changed) {
    this.changed = changed;
    this.reset();
    /** { present, viewers, lobby, hands_raised } from the last `joined` / `room_counts`, or null. */
    this.counts = null;
    /** Whether our own hand is up; kept across reconnections. */
    this.handRaised = false;
    /** The safety code of an encrypted meeting, for people to compare aloud. */
    this.safetyCode = null;
    this.safetyRun = null;
  }

  /** A new session (a join or a rejoin): the server tells everyone and everything again. */
  reset() {
    /** Hosts: who waits in the lobby, [{ participant_id, name, site }]. */
    this.waiting = [];
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
    /** The participant the server hears loudest, or null. */
    this.activeSpeaker = null;
  }

  /** The connection is lost: the names stay on screen, the dead tracks go. */
  dropMedia() {
    this.remoteTracks = new Map();
    this.streamStats = new Map();
    this.quality = new Map();
    // Our publications ended with the lost session; the next session's are announced anew. A
    // mute toggled meanwhile must not name an old publication (the server refuses it).
    this.ownPubs = new Map();
  }

  /** Takes in what the server says about a participant; returns their entry. */
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
    return p;
  }

  /**
   * Forgets the publications of a known participant that `info.publications` (their complete
   * list, when given) no longer names; returns the ids forgotten.
   */
  dropEndedPublications(info) {
    const p = this.participants.get(info.id);
    if (!p || !Array.isArray(info.publications)) return [];
    const now = new Set(info.publications.map((pub) => pub.id));
    const ended = [...p.pubs.keys()].filter((id) => !now.has(id));
    for (const id of ended) p.pubs.delete(id);
    return ended;
  }

  removeParticipant(participantId) {
    this.participants.delete(participantId);
    this.quality.delete(participantId);
    if (this.activeSpeaker === participantId) this.activeSpeaker = null;
  }

  /** A publication we no longer receive. */
  dropTrack(publicationId) {
    this.remoteTracks.delete(publicationId);
    this.streamStats.delete(publicationId);
  }

  /** The source of one of our publications, or undefined. */
  ownSource(publicationId) {
    return [...this.ownPubs].find(([, id]) => id === publicationId)?.[0];
  }

  forgetOwn(publicationId) {
    for (const [source, id] of this.ownPubs) if (id === publicationId) this.ownPubs.delete(source);
  }

  /** A host's lobby list; returns those who were not waiting before. */
  setWaiting(waiting) {
    const before = new Set(this.waiting.map((w) => w.participant_id));
    this.waiting = Array.isArray(waiting) ? waiting : [];
    return this.waiting.filter((w) => !before.has(w.participant_id));
  }

  /**
   * Takes in one interval's statistics (see `Negotiator.sample`): the numbers of each stream
   * received, each participant's quality from their streams, and ours from what we send.
   */
  measure({ inbound, rttMs, outboundLossPercent }, connected) {
    const byParticipant = new Map();
    for (const [publicationId, stats] of inbound) {
      this.streamStats.set(publicationId, stats);
      for (const p of this.participants.values()) {
        if (p.pubs.has(publicationId)) {
          if (!byParticipant.has(p.id)) byParticipant.set(p.id, []);
          byParticipant.get(p.id).push(stats);
        }
      }
    }
    for (const p of this.participants.values()) {
      const measured = combine(byParticipant.get(p.id) || [], rttMs);
      this.quality.set(p.id, { level: classify(measured), ...measured });
    }
    const own = { lossPercent: outboundLossPercent, jitterMs: null, rttMs };
    this.quality.set('self', { level: connected ? classify(own) : 'unknown', ...own });
  }

  /**
   * Recomputes the safety code from the hosts' and presenters' keys, ours (`self`: { id, role,
   * key }) included. Only the latest computation counts, whichever finishes last.
   */
  updateSafetyCode(room, self) {
    const entries = [...this.participants.values()].map((p) => ({ id: p.id, role: p.role, key: p.e2eeKey }));
    entries.push(self);
    const run = safetyCode(room, entries).then((code) => {
      if (run !== this.safetyRun || code === this.safetyCode) return;
      this.safetyCode = code;
      this.changed();
    });
    this.safetyRun = run;
  }
}
