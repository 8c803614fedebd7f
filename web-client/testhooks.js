// Test hooks. Loaded only when the page's URL has `?test=1` or `?synthetic=1`, and served only
// by a server started with `--test-hooks`; nothing here runs for people using the client.
//
// URL parameters:
//   synthetic=1       camera = canvas painted one solid colour, microphone = a sine tone,
//                     screen share = canvas of another colour (no devices, no permission)
//   color=R,G,B       camera colour (default 255,0,0)
//   tone=HZ           microphone tone (default 440)
//   gain=G            the tone's amplitude, 0 to 1 (default 0.3); `meetTest.setToneGain` changes it
//   screen=R,G,B      screen-share colour (default 255,255,0)
//   protocol=N        join with this protocol version (to provoke `version_mismatch`)
//   reconnect_s=N     give up reconnecting after N seconds
//   e2ee=keyless      in an encrypted meeting, announce no key and ask nobody for theirs
//   e2ee=legacy       transform frames with createEncodedStreams, not RTCRtpScriptTransform
//
// `window.meetTest` (see the bottom) reads what each remote tile shows and plays: the centre
// pixel of its video, the dominant frequency of its audio, and its receive statistics; and
// the protocol v2 state (role, lobby, room state, counts, roster) with the host's actions;
// and simulcast and the active speaker: the frame size received per participant, the layers
// sent and paused, tile resizing, the tone's loudness.

export function install(params, { setTrackSource, app }) {
  const overrides = {};
  if (params.has('protocol')) overrides.protocolVersion = Number(params.get('protocol'));
  if (params.has('reconnect_s')) overrides.reconnectWindowMs = 1000 * Number(params.get('reconnect_s'));
  if (params.get('synthetic') === '1') setTrackSource(syntheticSource(params));
  // Test pages' E2EE receivers note each audio frame's RTP position (failure diagnostics).
  overrides.e2ee = { diagnose: true };
  if (params.get('e2ee') === 'keyless') overrides.e2ee.keyless = true;
  if (params.get('e2ee') === 'legacy') overrides.e2ee.prefer = 'legacy';

  // mid -> direction of each m-line of an SDP (offers keep this instead of their SDP).
  const directions = (sdp) => Object.fromEntries(String(sdp).split(/\r?\nm=/).slice(1).map((section) => [
    /\r?\na=mid:(\S+)/.exec(section)?.[1],
    /\r?\na=(sendrecv|sendonly|recvonly|inactive)/.exec(section)?.[1],
  ]));

  // Every message the page sends, for assertions about candidates and offers.
  const sent = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function recordingSend(data) {
    try {
      const m = JSON.parse(data);
      sent.push(m.type === 'offer' ? { type: 'offer', publish: m.publish, subscribe: m.subscribe, directions: directions(m.sdp) } : m);
    } catch {
      sent.push({ type: '?' });
    }
    return send.call(this, data);
  };

  // Every time the "Reconnecting…" banner appears (it may be up only briefly).
  const bannerShown = [];
  const banner = document.getElementById('banner');
  new MutationObserver(() => {
    if (!banner.hidden) bannerShown.push(banner.innerText.trim());
  }).observe(banner, { attributes: true, attributeFilter: ['hidden'] });

  let lastMeeting = null;
  const lastE2ee = () => {
    lastMeeting = app.meeting || lastMeeting;
    return lastMeeting?.e2ee ?? null;
  };

  window.meetTest = {
    sent,
    bannerShown,
    /** 'lobby', or the meeting's state. */
    state: () => app.meeting?.state ?? 'lobby',
    /** The lobby's current message key, if any. */
    lobbyMessage: () => {
      const box = document.getElementById('lobby-message');
      return box.hidden ? null : box.dataset.key;
    },
    /** What this page receives from everyone else. */
    probe: () => probe(app),
    /** The current RTCPeerConnection (for getStats and SDP when a test fails). */
    pc: () => app.meeting?.s?.negotiator?.pc ?? null,
    /** Drops the signaling socket as a network blip would. */
    dropConnection: () => app.meeting?.s?.socket.ws?.close(),

    // ---- protocol v2 ----
    /** Our role ('host' | 'presenter' | 'participant' | 'viewer'), or null. */
    role: () => app.meeting?.role ?? null,
    /** While waiting to be admitted: { title, startsAt, reason }; else null. */
    lobby: () => (app.meeting?.state === 'lobby' ? { ...app.meeting.lobby } : null),
    /** The meeting's title as the server gave it. */
    title: () => app.meeting?.title ?? null,
    /** { open, locked } */
    roomState: () => (app.meeting ? { ...app.meeting.roomState } : null),
    /** { present, viewers, lobby, hands_raised } from the last `joined` / `room_counts`. */
    counts: () => (app.meeting?.counts ? { ...app.meeting.counts } : null),
    /** Ourselves first, then everyone this client sees: { id, self, name, role, site, hand, micMuted, camMuted, quality }. */
    roster: () => app.rosterEntries?.() ?? [],
    /** Hosts: who waits in the lobby, [{ participant_id, name, site }]. */
    waiting: () => (app.meeting ? app.meeting.waiting.map((w) => ({ ...w })) : []),
    /** Whether our hand is up. */
    handRaised: () => !!app.meeting?.handRaised,
    raiseHand: (raised = true) => app.meeting?.raiseHand(raised),
    /** Host actions, sent as they are (the server decides whether they are allowed). */
    host: {
      admit: (id) => app.meeting?.admit(id),
      admitAll: () => app.meeting?.admitAll(),
      openRoom: () => app.meeting?.openRoom(),
      lockRoom: (locked = true) => app.meeting?.lockRoom(locked),
      setRole: (id, role) => app.meeting?.setRole(id, role),
      mute: (id, kind) => app.meeting?.muteParticipant(id, kind),
      remove: (id) => app.meeting?.removeParticipant(id),
      startRecording: () => app.meeting?.startRecording(),
      stopRecording: () => app.meeting?.stopRecording(),
    },
    /** { active, recordingId, startedAt, error } from the last `recording_state`. */
    recording: () => (app.meeting ? { ...app.meeting.recording } : null),
    /** Whether the red REC indicator is on screen. */
    recIndicator: () => !document.getElementById('rec-indicator').hidden,
    /** The local tracks that exist now (a viewer has none). */
    localTracks: () => ['microphone', 'camera', 'screen'].filter((source) => !!app.local[source]),

    // ---- simulcast and the active speaker ----
    /** The participant id of the last `active_speaker`, or null. */
    activeSpeaker: () => app.meeting?.activeSpeaker ?? null,
    /** Participant ids of the tiles outlined as speaking. */
    speakingTiles: () => [...document.querySelectorAll('.tile.speaking')].map((el) => Number(el.dataset.participantId)),
    /** The participant id of the tile shown large (the speaker view), or null. */
    featuredTile: () => {
      const el = document.querySelector('.tile.featured');
      return el ? Number(el.dataset.participantId) : null;
    },
    /** Sets the synthetic tone's amplitude (0 to 1) now: loudness in the sent audio itself. */
    setToneGain,
    /** Fresh inbound-rtp numbers of a participant's camera: { frameWidth, frameHeight, framesDecoded }. */
    receivedVideo: (participantId) => receivedVideo(app, participantId),
    /** Our camera's encodings and what each sends: [{ rid, active, frameWidth, frameHeight, framesEncoded }]. */
    sentLayers: () => sentLayers(app),
    /** The `active` list of the last `simulcast_layers` about our camera, or null. */
    simulcastLayers: () => {
      const id = app.meeting?.roster.ownPubs.get('camera');
      return app.meeting?.simulcastLayers.get(id) ?? null;
    },
    /** Gives a participant's camera tile a fixed size in CSS pixels; null gives it back to the grid. */
    resizeTile: (participantId, width, height) => {
      const tile = document.querySelector(`.tile[data-key="p${participantId}"]`);
      if (!tile) return false;
      tile.style.width = width === null ? '' : `${width}px`;
      tile.style.height = height === null ? '' : `${height}px`;
      return true;
    },

    // ---- end-to-end encryption ----
    // These read the meeting last seen, so that a page that left still answers with its keys.
    /** { encrypted, indicator, safetyCode, kid, mode } */
    encryption: () => {
      const m = app.meeting;
      return {
        encrypted: !!m?.encrypted,
        indicator: !document.getElementById('e2ee-indicator').hidden,
        safetyCode: m?.safetyCode ?? null,
        shownCode: document.getElementById('safety-code').textContent,
        kid: m?.e2ee?.currentKid() ?? null,
        mode: m?.e2ee?.mode ?? null,
      };
    },
    /** Per frame transform: [{ role, kind, frames, failed, unsent, kid }]. */
    e2eeCounts: async () => Object.values((await lastE2ee()?.counts()) || {}),
    /** Starts keeping the last encrypted frame received from each participant. */
    e2eeCapture: () => lastE2ee()?.capture(),
    /** The last encrypted frame from a participant: { data: base64, kid }, or null. */
    e2eeCaptured: async (participantId, kind) => {
      const frame = await lastE2ee()?.captured(participantId, kind);
      if (!frame) return null;
      let text = '';
      for (const byte of frame.data) text += String.fromCharCode(byte);
      return { data: btoa(text), kid: frame.kid };
    },
    /** Whether this page's keys for a participant open an encrypted frame (base64). */
    e2eeTryOpen: (participantId, kind, base64) => lastE2ee().tryOpen(
      participantId, kind, Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)),
    ),
    /** Corrupts the next `frames` frames this page sends, after sealing. */
    e2eeTamper: (frames) => lastE2ee()?.tamper(frames),
    // The latest departure rekeys of this page: { recipients, ms } (making and wrapping).
    e2eeRekeys: () => lastE2ee()?.rekeyTimes() ?? [],
  };
  return overrides;
}

/** The synthetic tone's amplitude, and the gain nodes of the tones playing now. */
const toneGain = { value: 0.3, nodes: new Set() };

function setToneGain(value) {
  toneGain.value = value;
  for (const node of toneGain.nodes) node.gain.value = value;
}

function parseColour(text, fallback) {
  const parts = String(text || fallback).split(',').map(Number);
  return parts.length === 3 && parts.every((n) => n >= 0 && n <= 255) ? parts : fallback.split(',').map(Number);
}

function syntheticSource(params) {
  const colour = parseColour(params.get('color'), '255,0,0');
  const screenColour = parseColour(params.get('screen'), '255,255,0');
  const tone = Number(params.get('tone') || 440);
  if (params.has('gain')) toneGain.value = Number(params.get('gain'));
  let audio = null;

  const toneTrack = () => {
    audio ||= new AudioContext();
    const oscillator = audio.createOscillator();
    oscillator.frequency.value = tone;
    const gain = audio.createGain();
    gain.gain.value = toneGain.value;
    toneGain.nodes.add(gain);
    const out = audio.createMediaStreamDestination();
    oscillator.connect(gain).connect(out);
    oscillator.start();
    const [track] = out.stream.getAudioTracks();
    const stop = track.stop.bind(track);
    track.stop = () => {
      oscillator.stop();
      toneGain.nodes.delete(gain);
      stop();
    };
    return track;
  };

  const colourTrack = ([r, g, b], width, height) => {
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const g2d = canvas.getContext('2d');
    const paint = () => {
      g2d.fillStyle = `rgb(${r},${g},${b})`;
      g2d.fillRect(0, 0, width, height);
    };
    paint();
    const [track] = canvas.captureStream(15).getVideoTracks();
    const timer = setInterval(paint, 66); // a canvas stream emits frames only when painted
    const stop = track.stop.bind(track);
    track.stop = () => {
      clearInterval(timer);
      stop();
    };
    return track;
  };

  return {
    async userMedia({ audio: wantAudio, video: wantVideo }) {
      const tracks = [];
      if (wantAudio) tracks.push(toneTrack());
      // Large enough for three simulcast layers (240×135, 480×270, 960×540): Chromium sends
      // only two below 960×540.
      if (wantVideo) tracks.push(colourTrack(colour, 960, 540));
      return new MediaStream(tracks);
    },
    async displayMedia() {
      return new MediaStream([colourTrack(screenColour, 640, 360)]);
    },
    canShareScreen: () => true,
    async devices() {
      return [
        { kind: 'audioinput', deviceId: 'synthetic-tone', label: `tone ${tone} Hz` },
        { kind: 'videoinput', deviceId: 'synthetic-colour', label: `colour ${colour.join(',')}` },
      ];
    },
  };
}

// ---- receiving-side diagnostics ----------------------------------------------------------------

let listener = null;
const analysers = new WeakMap(); // MediaStreamTrack -> AnalyserNode
const pixel = document.createElement('canvas');
pixel.width = pixel.height = 1;
const pixelContext = pixel.getContext('2d', { willReadFrequently: true });

/** The centre pixel of a playing video, [r, g, b], or null before the first frame. */
function centreColour(video) {
  if (!video || video.videoWidth === 0 || video.readyState < 2) return null;
  const w = video.videoWidth;
  const h = video.videoHeight;
  pixelContext.drawImage(video, w / 2 - 2, h / 2 - 2, 4, 4, 0, 0, 1, 1);
  return [...pixelContext.getImageData(0, 0, 1, 1).data.slice(0, 3)];
}

/**
 * The strongest frequency between 100 Hz and 4 kHz of a remote audio track, with its level
 * in dB. Chromium feeds a remote track to WebAudio only while it also plays in a media
 * element: the tile's <audio> does that.
 */
function dominantTone(track) {
  if (!track || track.readyState !== 'live') return null;
  listener ||= new AudioContext();
  let analyser = analysers.get(track);
  if (!analyser) {
    analyser = listener.createAnalyser();
    analyser.fftSize = 8192;
    analyser.smoothingTimeConstant = 0;
    listener.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    const silent = listener.createGain();
    silent.gain.value = 0;
    analyser.connect(silent).connect(listener.destination);
    analysers.set(track, analyser);
  }
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  const hzPerBin = listener.sampleRate / analyser.fftSize;
  let best = -Infinity;
  let at = 0;
  for (let i = Math.ceil(100 / hzPerBin); i < Math.min(bins.length, 4000 / hzPerBin); i++) {
    if (bins[i] > best) {
      best = bins[i];
      at = i;
    }
  }
  return { hz: Math.round(at * hzPerBin), db: Number.isFinite(best) ? Math.round(best) : -999 };
}

function probe(app) {
  const m = app.meeting;
  if (!m) return { state: 'lobby', me: null, remotes: [] };
  const remotes = [];
  for (const p of m.participants.values()) {
    const pubs = [...p.pubs.values()];
    const cam = pubs.find((x) => x.source === 'camera');
    const mic = pubs.find((x) => x.source === 'microphone');
    const screen = pubs.find((x) => x.source === 'screen');
    const tile = document.querySelector(`.tile[data-key="p${p.id}"]`);
    const screenTile = screen ? document.querySelector(`.tile[data-key="s${screen.id}"]`) : null;
    const audioTrack = tile?.querySelector('audio')?.srcObject?.getAudioTracks()[0];
    remotes.push({
      id: p.id,
      name: p.name,
      tileName: tile?.querySelector('.name')?.textContent ?? null,
      micMuted: mic ? mic.muted : null,
      camMuted: cam ? cam.muted : null,
      micIcon: tile ? tile.dataset.mic === 'off' : null,
      quality: tile?.querySelector('.quality')?.dataset.level ?? null,
      colour: centreColour(tile?.querySelector('video')),
      tone: dominantTone(audioTrack),
      screenColour: centreColour(screenTile?.querySelector('video')),
      videoStats: cam ? m.roster.streamStats.get(cam.id) ?? null : null,
      audioStats: mic ? m.roster.streamStats.get(mic.id) ?? null : null,
    });
  }
  return { state: m.state, me: m.me, remotes };
}

// ---- simulcast -------------------------------------------------------------------------------

async function receivedVideo(app, participantId) {
  const m = app.meeting;
  const cam = [...(m?.participants.get(participantId)?.pubs.values() ?? [])].find((x) => x.source === 'camera');
  const transceiver = cam && m.s?.negotiator?.receiving.get(cam.id);
  if (!transceiver) return null;
  let found = null;
  (await transceiver.receiver.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp') {
      found = { frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0, framesDecoded: s.framesDecoded ?? 0 };
    }
  });
  return found;
}

async function sentLayers(app) {
  const sender = app.meeting?.s?.negotiator?.sending.camera?.sender;
  if (!sender) return [];
  const outbound = new Map();
  (await sender.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp') outbound.set(s.rid ?? '', s);
  });
  return sender.getParameters().encodings.map((e) => {
    const stats = outbound.get(e.rid ?? '') || {};
    return {
      rid: e.rid ?? null,
      active: e.active,
      frameWidth: stats.frameWidth ?? 0,
      frameHeight: stats.frameHeight ?? 0,
      framesEncoded: stats.framesEncoded ?? 0,
    };
  });
}
