// The page: lobby (join form, preview, devices), the waiting room (before a host admits us),
// and the call (tile grid, toolbar, banners, roster panel with the host's controls).
// State lives in LocalMedia and Meeting; this file renders it. Texts come from i18n.js only.
//
// A join link `https://HOST/#join=<token>` enters that meeting at once; the token is taken
// out of the address bar (so screenshots and copied URLs do not carry it) and kept in memory
// for reconnections. Without a token the room + name form joins open rooms (development).

import { $, el, formatTime, toast } from './dom.js';
import { LANGUAGES, initLanguage, language, setLanguage, t } from './i18n.js';
import { LocalMedia, setTrackSource } from './media.js';
import { JoinError, Meeting, refusalKey, tokenClaims } from './meeting.js';
import { deviceSize } from './simulcast.js';

const params = new URLSearchParams(location.search);
const local = new LocalMedia();

/** What the test hooks may look at. */
const app = { meeting: null, local };

// Test hooks (synthetic media, diagnostics) load only when the URL asks for them, and exist
// only on a server started in test mode: anywhere else the import fails and the page runs as
// it would without them.
const testing = params.has('test') || params.has('synthetic');
let overrides = {};
if (testing) {
  try {
    overrides = (await import('./testhooks.js')).install(params, { setTrackSource, app });
  } catch {
    console.warn('test hooks are not served here; running without them');
  }
}

// The join link's token, read once and removed from the address bar.
const invite = (() => {
  const match = /(?:^#|&)join=([^&]+)/.exec(location.hash);
  if (!match) return null;
  history.replaceState(null, '', location.pathname + location.search);
  let token;
  try {
    token = decodeURIComponent(match[1]);
  } catch {
    token = match[1];
  }
  return { token, claims: tokenClaims(token) || {} };
})();

const ROLE_KEYS = {
  host: 'role.host',
  presenter: 'role.presenter',
  participant: 'role.participant',
  viewer: 'role.viewer',
};
const QUALITY_KEYS = { good: 'quality.good', fair: 'quality.fair', poor: 'quality.poor' };

const MAX_NAME = 64;
const NAME_KEY = 'meet.name';

/** The lobby's message: `{ key, vars, kind }` (kept as a key so a language switch redraws it). */
let lobbyMessage = null;
let previewTried = false;
let joining = false;
let speakerId = '';

// ---- language ------------------------------------------------------------------------------

initLanguage(params.get('lang'));
for (const { code, label } of LANGUAGES) $('lang-select').append(new Option(label, code));
$('lang-select').value = language();
$('lang-select').addEventListener('change', (e) => {
  setLanguage(e.target.value);
  render();
});

// ---- lobby -----------------------------------------------------------------------------------

function supported() {
  return !!(window.RTCPeerConnection && window.WebSocket && window.isSecureContext);
}

async function startPreview() {
  const error = await local.acquire();
  previewTried = true;
  if (error) lobbyMessage = { key: error };
  await fillDevices();
  render();
}

async function fillDevices() {
  let devices;
  try {
    devices = await local.devices();
  } catch {
    devices = { microphones: [], cameras: [], speakers: [] };
  }
  const fill = (select, list, current) => {
    select.replaceChildren();
    if (list.length === 0) {
      select.append(new Option(t('lobby.noDevice'), ''));
      select.disabled = true;
      return;
    }
    select.disabled = false;
    list.forEach((d, i) => select.append(new Option(d.label || `${t('lobby.defaultDevice')} ${i + 1}`, d.deviceId)));
    const active = current || list[0].deviceId;
    select.value = list.some((d) => d.deviceId === active) ? active : list[0].deviceId;
  };
  const activeMic = local.microphone?.getSettings?.().deviceId || local.micId;
  const activeCam = local.camera?.getSettings?.().deviceId || local.camId;
  fill($('mic-select'), devices.microphones, activeMic);
  fill($('cam-select'), devices.cameras, activeCam);
  const canPickSpeaker = 'setSinkId' in HTMLMediaElement.prototype && devices.speakers.length > 0;
  $('speaker-field').hidden = !canPickSpeaker;
  if (canPickSpeaker) fill($('speaker-select'), devices.speakers, speakerId);
}

$('mic-select').addEventListener('change', async (e) => {
  setLobbyError(await local.useDevices({ micId: e.target.value }));
});
$('cam-select').addEventListener('change', async (e) => {
  setLobbyError(await local.useDevices({ camId: e.target.value }));
});
$('speaker-select').addEventListener('change', (e) => {
  speakerId = e.target.value;
  for (const audio of document.querySelectorAll('.tile audio')) audio.setSinkId?.(speakerId).catch(() => {});
});

function setLobbyError(key) {
  lobbyMessage = key ? { key } : null;
  render();
}

$('lobby-mic').addEventListener('click', async () => {
  if (local.micOn && local.microphone) {
    local.setMicOn(false);
  } else {
    local.setMicOn(true);
    setLobbyError(await local.acquire());
  }
  render();
});
$('lobby-cam').addEventListener('click', async () => {
  const on = !(local.camOn && local.camera);
  setLobbyError(await local.setCamOn(on));
});

const validName = (s) => s.length > 0 && [...s].length <= MAX_NAME && !/\p{Cc}/u.test(s);

$('join-form').addEventListener('submit', (e) => {
  e.preventDefault();
  startJoin();
});

async function startJoin() {
  if (app.meeting || joining) return;
  let target;
  if (invite) {
    target = { token: invite.token };
  } else {
    const room = $('room-input').value.trim();
    const name = $('name-input').value.trim();
    if (!validName(room) || !validName(name)) {
      lobbyMessage = { key: 'lobby.invalid' };
      render();
      return;
    }
    try {
      localStorage.setItem(NAME_KEY, name);
    } catch {
      // Not remembered.
    }
    target = { room, name };
  }
  lobbyMessage = null;
  const button = $('join-button');
  joining = true;
  button.dataset.i18n = 'lobby.joining';
  render();

  const meeting = new Meeting({
    ...target,
    local,
    url: `wss://${location.host}/ws`,
    protocolVersion: overrides.protocolVersion,
    reconnectWindowMs: overrides.reconnectWindowMs,
    e2ee: overrides.e2ee,
  });
  app.meeting = meeting;
  meeting.addEventListener('change', scheduleRender);
  meeting.addEventListener('state', () => onMeetingState(meeting));
  meeting.addEventListener('notice', (ev) => toast(t(ev.detail.key, ev.detail.vars)));
  try {
    await meeting.join();
    if (!invite) {
      const url = new URL(location.href);
      url.searchParams.set('room', target.room);
      history.replaceState(null, '', url);
    }
  } catch (err) {
    if (app.meeting === meeting) app.meeting = null;
    if (meeting.state === 'left') {
      lobbyMessage = { key: 'lobby.left', kind: 'info' };
    } else if (err instanceof JoinError) {
      lobbyMessage = err.kind === 'refused'
        ? { key: refusalKey(err.code), vars: { code: err.code } }
        : { key: 'error.unreachable' };
    } else {
      console.error('joining failed:', err);
      lobbyMessage = { key: 'error.unreachable' };
    }
  } finally {
    joining = false;
    button.dataset.i18n = 'lobby.join';
    render();
  }
}

function onMeetingState(meeting) {
  if (meeting !== app.meeting) return;
  if (meeting.state === 'ended' || meeting.state === 'left') {
    app.meeting = null;
    rosterOpen = false;
    lobbyMessage = meeting.state === 'left'
      ? { key: 'lobby.left', kind: 'info' }
      : meeting.endReason;
    clearTiles();
  }
  render();
}

// ---- call ------------------------------------------------------------------------------------

$('mic-button').addEventListener('click', async () => {
  const m = app.meeting;
  if (!m) return;
  const on = !(local.micOn && local.microphone);
  const error = await m.setMicOn(on);
  if (error) toast(t(error));
});
$('cam-button').addEventListener('click', async () => {
  const m = app.meeting;
  if (!m) return;
  const error = await m.setCamOn(!(local.camOn && local.camera));
  if (error) toast(t(error));
});
$('share-button').addEventListener('click', async () => {
  const m = app.meeting;
  if (!m) return;
  if (local.screen) {
    m.stopScreen();
  } else {
    const error = await m.startScreen();
    if (error) toast(t(error));
  }
});
$('leave-button').addEventListener('click', () => app.meeting?.leave());
$('record-button').addEventListener('click', () => {
  const m = app.meeting;
  if (!m) return;
  if (m.recording.active) m.stopRecording();
  else m.startRecording();
});
$('waiting-leave').addEventListener('click', () => app.meeting?.leave());
$('hand-button').addEventListener('click', () => {
  const m = app.meeting;
  if (m) m.raiseHand(!m.handRaised);
});
$('roster-button').addEventListener('click', () => {
  rosterOpen = !rosterOpen;
  render();
});
$('roster-close').addEventListener('click', () => {
  rosterOpen = false;
  render();
});
window.addEventListener('pagehide', () => app.meeting?.leave());

/** Tile elements by key: 'self', 'p<participant>', 's<publication>' (screens). */
const tiles = new Map();

function clearTiles() {
  for (const el of tiles.values()) removeTile(el);
  tiles.clear();
}

function removeTile(el) {
  const video = el.querySelector('video');
  resizes.unobserve(video);
  intersections.unobserve(video);
  el.remove();
}

function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] || '?').slice(0, 2);
  return letters.toUpperCase();
}

function avatarColour(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h} 45% 42%)`;
}

/** What each tile should show, from the meeting's state. */
function tileSpecs(m) {
  const specs = [];
  for (const p of m.participants.values()) {
    const pubs = [...p.pubs.values()];
    const cam = pubs.find((x) => x.source === 'camera');
    const mic = pubs.find((x) => x.source === 'microphone');
    specs.push({
      key: `p${p.id}`,
      participant: p.id,
      source: 'camera',
      name: p.name,
      label: p.name,
      videoPublication: cam ? cam.id : null,
      speaking: p.id === m.activeSpeaker,
      video: cam && !cam.muted ? m.remoteTracks.get(cam.id) : null,
      audio: mic ? m.remoteTracks.get(mic.id) : null,
      micOff: !mic || mic.muted,
      hand: p.hand,
      quality: m.quality.get(p.id),
    });
    for (const screen of pubs.filter((x) => x.source === 'screen')) {
      specs.push({
        key: `s${screen.id}`,
        participant: p.id,
        source: 'screen',
        name: p.name,
        label: t('call.screenOf', { name: p.name }),
        videoPublication: screen.id,
        video: m.remoteTracks.get(screen.id) || null,
        stage: true,
      });
    }
  }
  // A viewer sends nothing: no tile of its own.
  if (m.canPublish()) {
    specs.push({
      key: 'self',
      participant: m.me,
      self: true,
      source: 'camera',
      name: m.name,
      label: t('call.you', { name: m.name }),
      speaking: m.me === m.activeSpeaker,
      video: local.camOn ? local.camera : null,
      micOff: !(local.micOn && local.microphone),
      hand: m.handRaised,
      quality: m.quality.get('self'),
    });
  }
  if (local.screen) {
    specs.push({
      key: 'self-screen',
      participant: m.me,
      self: true,
      source: 'screen',
      name: m.name,
      label: t('call.screenOf', { name: t('call.you', { name: m.name }) }),
      video: local.screen,
      stage: true,
    });
  }
  // Someone else speaking gets a large tile, unless a shared screen takes the stage.
  const presenting = specs.some((s) => s.stage);
  for (const spec of specs) spec.featured = !!spec.speaking && !spec.self && !presenting;
  return specs;
}

const watchedTracks = new WeakSet();

function setTrack(el, track) {
  if (el._track === track) return;
  el._track = track;
  el.srcObject = track ? new MediaStream([track]) : null;
  if (track && !watchedTracks.has(track)) {
    // A remote track is muted while no media arrives: show the avatar then.
    watchedTracks.add(track);
    track.addEventListener('mute', scheduleRender);
    track.addEventListener('unmute', scheduleRender);
  }
}

function renderTile(el, spec) {
  el.dataset.participantId = String(spec.participant);
  el.dataset.source = spec.source;
  el.dataset.key = spec.key;
  el.classList.toggle('self', !!spec.self && spec.source === 'camera');
  el.classList.toggle('speaking', !!spec.speaking);
  el.classList.toggle('featured', !!spec.featured);
  el._videoPublication = spec.videoPublication ?? null;
  const video = el.querySelector('video');
  setTrack(video, spec.video);
  const showVideo = !!spec.video && spec.video.readyState === 'live' && (spec.self || !spec.video.muted);
  el.classList.toggle('no-video', !showVideo);
  const audio = el.querySelector('audio');
  setTrack(audio, spec.audio || null);
  if (speakerId && audio.sinkId !== speakerId) audio.setSinkId?.(speakerId).catch(() => {});
  el.querySelector('.name').textContent = spec.label;
  const label = el.querySelector('.label');
  if (spec.speaking) label.title = t('tile.speaking');
  else label.removeAttribute('title');
  const avatar = el.querySelector('.avatar span');
  avatar.textContent = initials(spec.name);
  avatar.style.setProperty('--avatar', avatarColour(spec.name));
  el.dataset.mic = spec.micOff ? 'off' : 'on';
  el.dataset.hand = spec.hand ? 'up' : 'down';
  el.querySelector('.hand').setAttribute('aria-label', t('tile.handRaised'));
  const quality = el.querySelector('.quality');
  quality.hidden = spec.source === 'screen';
  const q = spec.quality || { level: 'unknown' };
  quality.dataset.level = q.level;
  const fmt = (v, digits = 0) => (typeof v === 'number' ? v.toFixed(digits) : '–');
  const detail = q.level === 'unknown' ? '' : ` — ${t('quality.detail', {
    loss: fmt(q.lossPercent, 1), jitter: fmt(q.jitterMs), rtt: fmt(q.rttMs),
  })}`;
  quality.title = t(`quality.${q.level}`) + detail;
  quality.setAttribute('aria-label', quality.title);
  const micIcon = el.querySelector('.mic-off');
  micIcon.setAttribute('aria-label', t('tile.micOff'));
}

function renderCall() {
  const m = app.meeting;
  $('meeting-info').hidden = !m;
  if (!m) return;
  $('room-label').textContent = m.title || m.room;
  const roleLabel = $('role-label');
  roleLabel.hidden = !m.role;
  if (m.role) roleLabel.textContent = t(ROLE_KEYS[m.role] || 'role.participant');
  $('count-label').textContent = t('call.count', { count: number(m.counts?.present ?? m.participants.size + 1) });
  $('banner').hidden = m.state !== 'reconnecting';
  // A server that is restarting says so: the wait is its, not the network's.
  const detail = $('banner').querySelector('[data-i18n^="call.reconnecting"]:not(strong)');
  const detailKey = m.reconnectReason === 'server_stopping' ? 'call.reconnectingRestart' : 'call.reconnectingDetail';
  if (detail && detail.dataset.i18n !== detailKey) {
    detail.dataset.i18n = detailKey;
    detail.textContent = t(detailKey);
  }

  const specs = tileSpecs(m);
  const wanted = new Set(specs.map((s) => s.key));
  for (const [key, el] of tiles) {
    if (!wanted.has(key)) {
      removeTile(el);
      tiles.delete(key);
    }
  }
  const template = $('tile-template').content.firstElementChild;
  const grid = $('grid');
  const stage = $('stage');
  for (const spec of specs) {
    let el = tiles.get(spec.key);
    if (!el) {
      el = template.cloneNode(true);
      tiles.set(spec.key, el);
      watchVideo(el.querySelector('video'));
    }
    renderTile(el, spec);
    const parent = spec.stage ? stage : grid;
    parent.append(el); // keeps order; moving an element to where it is does nothing visible
  }
  $('layout').classList.toggle('presenting', specs.some((s) => s.stage));
  grid.classList.toggle('speaker-view', specs.some((s) => s.featured));
  layoutGrid();
  measureVideos();
  const alone = $('alone');
  alone.hidden = m.participants.size > 0 || m.state !== 'joined';
  alone.textContent = t(m.canPublish() ? 'call.alone' : 'call.aloneViewer');

  const micOn = local.micOn && !!local.microphone;
  const camOn = local.camOn && !!local.camera;
  toggleButton($('mic-button'), micOn, 'i-mic', 'i-mic-off', 'toolbar.micMute', 'toolbar.micUnmute');
  toggleButton($('cam-button'), camOn, 'i-cam', 'i-cam-off', 'toolbar.camOff', 'toolbar.camOn');
  $('mic-button').hidden = !m.canPublish();
  $('cam-button').hidden = !m.canPublish();
  const hand = $('hand-button');
  hand.hidden = !m.canRaiseHand();
  hand.classList.toggle('active', m.handRaised);
  hand.setAttribute('aria-pressed', String(m.handRaised));
  const handLabel = t(m.handRaised ? 'toolbar.lowerHand' : 'toolbar.raiseHand');
  hand.title = handLabel;
  hand.setAttribute('aria-label', handLabel);
  renderRecording(m);
  renderEncryption(m);
  const rosterButton = $('roster-button');
  rosterButton.classList.toggle('active', rosterOpen);
  rosterButton.setAttribute('aria-pressed', String(rosterOpen));
  const waitingCount = m.isHost() ? m.waiting.length : 0;
  rosterButton.dataset.badge = waitingCount ? String(waitingCount) : '';
  const share = $('share-button');
  share.hidden = !local.canShareScreen() || !m.canShareScreen();
  share.classList.toggle('active', !!local.screen);
  const shareLabel = t(local.screen ? 'toolbar.stopShare' : 'toolbar.share');
  share.title = shareLabel;
  share.setAttribute('aria-label', shareLabel);
  share.setAttribute('aria-pressed', String(!!local.screen));
  renderRoster(m);
}

/** That the meeting is end-to-end encrypted, and the safety code to compare aloud. */
function renderEncryption(m) {
  $('e2ee-indicator').hidden = !m.encrypted;
  $('safety-code').textContent = m.encrypted && m.safetyCode ? t('e2ee.safetyCode', { code: m.safetyCode }) : '';
}

/** The REC indicator for everyone; the record button for hosts. */
function renderRecording(m) {
  const active = m.recording.active;
  $('rec-indicator').hidden = !active;
  const record = $('record-button');
  record.hidden = !m.isHost();
  record.classList.toggle('active', active);
  record.setAttribute('aria-pressed', String(active));
  record.querySelector('use').setAttribute('href', active ? '#i-record-stop' : '#i-record');
  const label = t(active ? 'rec.stop' : 'rec.start');
  record.title = label;
  record.setAttribute('aria-label', label);
}

const GAP = 10;

/**
 * Sizes the grid's 16:9 tiles: the column count that makes them largest wins. In the speaker
 * view the featured tile takes 2 × 2 cells, so there are three cells more than tiles.
 */
function layoutGrid() {
  const grid = $('grid');
  const n = grid.children.length;
  const width = grid.clientWidth;
  const height = grid.clientHeight;
  if (!n || !width || !height) return;
  const featured = grid.classList.contains('speaker-view');
  const cells = featured ? n + 3 : n;
  const least = featured ? 2 : 1;
  let best = { w: 0, h: 0, cols: 1 };
  for (let cols = least; cols <= cells; cols++) {
    const rows = Math.max(least, Math.ceil(cells / cols));
    let w = (width - GAP * (cols - 1)) / cols;
    let h = (height - GAP * (rows - 1)) / rows;
    if (w / h > 16 / 9) w = (h * 16) / 9;
    else h = (w * 9) / 16;
    if (w > best.w) best = { w, h, cols };
  }
  grid.style.setProperty('--tile-w', `${Math.floor(best.w)}px`);
  grid.style.setProperty('--tile-h', `${Math.floor(best.h)}px`);
  grid.style.setProperty('--cols', String(best.cols));
}
new ResizeObserver(layoutGrid).observe($('grid'));

// ---- the sizes at which received videos are shown ----------------------------------------
// The server sends each received video in the smallest simulcast layer that fills its tile,
// and nothing for a tile nobody sees, so the page reports every remote video's size in
// device pixels whenever it may have changed (resize, scroll, hidden tab, new tile).

const onScreen = new WeakMap(); // <video> -> whether it intersects the viewport
const resizes = new ResizeObserver(measureVideos);
const intersections = new IntersectionObserver((entries) => {
  for (const entry of entries) onScreen.set(entry.target, entry.isIntersecting);
  measureVideos();
});
document.addEventListener('visibilitychange', measureVideos);

function watchVideo(video) {
  resizes.observe(video);
  intersections.observe(video);
}

function measureVideos() {
  const m = app.meeting;
  if (!m) return;
  const pageVisible = document.visibilityState === 'visible';
  const sizes = new Map();
  for (const el of tiles.values()) {
    if (el._videoPublication === null || el._videoPublication === undefined) continue;
    const video = el.querySelector('video');
    // Before its first intersection report a new tile counts as seen: it is in the grid.
    const visible = pageVisible && el.isConnected && onScreen.get(video) !== false;
    sizes.set(el._videoPublication, deviceSize(video.getBoundingClientRect(), window.devicePixelRatio || 1, visible));
  }
  m.setVideoSizes(sizes);
}

function toggleButton(button, on, iconOn, iconOff, labelOn, labelOff) {
  button.classList.toggle('off', !on);
  button.querySelector('use').setAttribute('href', `#${on ? iconOn : iconOff}`);
  const label = t(on ? labelOn : labelOff);
  button.title = label;
  button.setAttribute('aria-label', label);
  button.setAttribute('aria-pressed', String(!on));
}

function renderLobby() {
  const preview = $('preview');
  const camera = local.camOn ? local.camera : null;
  if (preview._track !== camera) {
    preview._track = camera;
    preview.srcObject = camera ? new MediaStream([camera]) : null;
  }
  $('preview-off').hidden = !!camera;
  const micOn = local.micOn && !!local.microphone;
  toggleButton($('lobby-mic'), micOn, 'i-mic', 'i-mic-off', 'toolbar.micMute', 'toolbar.micUnmute');
  toggleButton($('lobby-cam'), !!camera, 'i-cam', 'i-cam-off', 'toolbar.camOff', 'toolbar.camOn');
  $('receive-only').hidden = !previewTried || !!(local.microphone || local.camera);
  const box = $('lobby-message');
  box.hidden = !lobbyMessage;
  if (lobbyMessage) {
    box.textContent = t(lobbyMessage.key, lobbyMessage.vars);
    box.dataset.key = lobbyMessage.key;
    box.classList.toggle('info', lobbyMessage.kind === 'info');
  }
  const button = $('join-button');
  button.textContent = t(button.dataset.i18n);
  button.disabled = joining || !supported();
  $('open-fields').hidden = !!invite;
  $('invite-info').hidden = !invite;
  if (invite) {
    const role = invite.claims.role;
    $('invite-name').textContent = t('lobby.invitedAs', { name: invite.claims.name || '?' });
    $('invite-role').textContent = role ? t('lobby.invitedRole', { role: t(ROLE_KEYS[role] || 'role.participant') }) : '';
  }
  // Viewers only watch: no camera or microphone is asked for.
  $('preview-card').hidden = isViewerLink();
}

function isViewerLink() {
  return !!invite && invite.claims.role === 'viewer';
}

const number = (n) => new Intl.NumberFormat(language()).format(n ?? 0);

function renderWaiting() {
  const m = app.meeting;
  if (!m || m.state !== 'lobby' || !m.lobby) return;
  $('waiting-title').textContent = m.lobby.title || m.title || m.room;
  const start = $('waiting-start');
  start.hidden = typeof m.lobby.startsAt !== 'number';
  if (!start.hidden) {
    start.textContent = t('waiting.startsAt', { time: formatTime(m.lobby.startsAt, 'full') });
    start.dataset.startsAt = String(m.lobby.startsAt);
  }
  const reason = $('waiting-reason');
  reason.dataset.reason = m.lobby.reason;
  reason.textContent = t(m.lobby.reason === 'locked' ? 'waiting.locked' : 'waiting.notOpen');
}

// ---- roster panel ------------------------------------------------------------------------

let rosterOpen = false;

/** What the roster lists: ourselves first, then everyone this client sees. */
function rosterEntries(m) {
  const entries = [{
    id: m.me,
    self: true,
    name: m.name,
    role: m.role,
    site: null,
    hand: m.handRaised,
    micMuted: !(local.micOn && local.microphone),
    camMuted: !(local.camOn && local.camera),
    quality: m.quality.get('self')?.level ?? null,
  }];
  for (const p of m.participants.values()) {
    const pubs = [...p.pubs.values()];
    const mic = pubs.find((x) => x.source === 'microphone');
    const cam = pubs.find((x) => x.source === 'camera');
    const measured = m.quality.get(p.id)?.level;
    entries.push({
      id: p.id,
      self: false,
      name: p.name,
      role: p.role,
      site: p.site,
      hand: p.hand,
      micMuted: !mic || !!mic.muted,
      camMuted: !cam || !!cam.muted,
      quality: p.serverQuality ?? (measured && measured !== 'unknown' ? measured : null),
    });
  }
  return entries;
}
app.rosterEntries = () => (app.meeting ? rosterEntries(app.meeting) : []);

function icon(id, className, label) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', className);
  if (label) {
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', label);
    const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
    title.textContent = label;
    svg.append(title);
  }
  const use = document.createElementNS('http://www.w3.org/2000/svg', 'use');
  use.setAttribute('href', `#${id}`);
  svg.append(use);
  return svg;
}

function actionButton(action, id, key, extra = {}) {
  return el('button', { type: 'button', className: `chip${extra.danger ? ' danger' : ''}`, dataset: { action, id: String(id) }, text: t(key) });
}

function personRow(entry, host) {
  const meta = [entry.role ? t(ROLE_KEYS[entry.role] || 'role.participant') : null, entry.site].filter(Boolean).join(' · ');
  const status = el('span', { className: 'status' },
    entry.hand ? icon('i-hand', 'hand-icon', t('tile.handRaised')) : null,
    entry.micMuted ? icon('i-mic-off', 'off-icon', t('tile.micOff')) : null,
    entry.camMuted ? icon('i-cam-off', 'off-icon', t('tile.camOff')) : null,
    el('span', {
      className: 'quality-dot',
      dataset: { level: entry.quality || 'unknown' },
      title: t(QUALITY_KEYS[entry.quality] || 'quality.unknown'),
    }));
  const li = el('li', { className: 'person', dataset: { participantId: String(entry.id), role: entry.role || '', hand: entry.hand ? 'up' : 'down' } },
    el('div', { className: 'person-main' },
      el('div', { className: 'who' },
        el('span', { className: 'person-name', text: entry.self ? t('call.you', { name: entry.name }) : entry.name }),
        meta ? el('span', { className: 'person-meta', text: meta }) : null),
      status));
  if (host && !entry.self) {
    const actions = el('div', { className: 'person-actions' });
    if (entry.role !== 'presenter') actions.append(actionButton('presenter', entry.id, 'roster.makePresenter'));
    if (entry.role !== 'participant') actions.append(actionButton('participant', entry.id, 'roster.makeParticipant'));
    if (entry.role !== 'viewer') actions.append(actionButton('viewer', entry.id, 'roster.makeViewer'));
    if (!entry.micMuted) actions.append(actionButton('mute-audio', entry.id, 'roster.muteMic'));
    if (!entry.camMuted) actions.append(actionButton('mute-video', entry.id, 'roster.muteCam'));
    actions.append(actionButton('remove', entry.id, 'roster.remove', { danger: true }));
    li.append(actions);
  }
  return li;
}

/** Replaces a list's rows only where what they show changed (keeps buttons under the mouse). */
function syncList(list, items, key, build) {
  const lang = language();
  const existing = new Map([...list.children].map((li) => [li.dataset.key, li]));
  const wanted = [];
  for (const item of items) {
    const k = key(item);
    const signature = `${lang}|${JSON.stringify(item)}`;
    let li = existing.get(k);
    if (!li || li.dataset.signature !== signature) {
      const fresh = build(item);
      fresh.dataset.key = k;
      fresh.dataset.signature = signature;
      if (li) li.replaceWith(fresh);
      li = fresh;
    }
    existing.delete(k);
    wanted.push(li);
  }
  for (const li of existing.values()) li.remove();
  wanted.forEach((li, i) => {
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
}

function renderRoster(m) {
  const panel = $('roster');
  panel.hidden = !rosterOpen;
  if (!rosterOpen) return;
  const host = m.isHost();
  const c = m.counts;
  const parts = c
    ? [
      t('roster.countPresent', { n: number(c.present) }),
      c.viewers ? t('roster.countViewers', { n: number(c.viewers) }) : null,
      c.lobby ? t('roster.countLobby', { n: number(c.lobby) }) : null,
      c.hands_raised ? t('roster.countHands', { n: number(c.hands_raised) }) : null,
    ]
    : [t('roster.countPresent', { n: number(m.participants.size + 1) })];
  $('roster-counts').textContent = parts.filter(Boolean).join(' · ');

  $('host-controls').hidden = !host;
  if (host) {
    $('open-room-button').hidden = m.roomState.open;
    const lock = $('lock-room-button');
    lock.textContent = t(m.roomState.locked ? 'roster.unlockRoom' : 'roster.lockRoom');
    lock.classList.toggle('active', m.roomState.locked);
    $('room-status').textContent = t(!m.roomState.open ? 'roster.roomNotOpen' : m.roomState.locked ? 'roster.roomLocked' : 'roster.roomOpen');
  }
  $('lobby-section').hidden = !host || m.waiting.length === 0;
  if (host) {
    syncList($('lobby-list'), m.waiting, (w) => `w${w.participant_id}`, (w) => el('li', { className: 'person', dataset: { participantId: String(w.participant_id) } },
      el('div', { className: 'person-main' },
        el('div', { className: 'who' },
          el('span', { className: 'person-name', text: w.name }),
          w.site ? el('span', { className: 'person-meta', text: w.site }) : null),
        el('span', { className: 'person-actions' }, actionButton('admit', w.participant_id, 'roster.admit')))));
  }
  syncList($('people-list'), rosterEntries(m), (e) => `p${e.id}`, (e) => personRow(e, host));
}

function onRosterAction(event) {
  const button = event.target.closest('button[data-action]');
  const m = app.meeting;
  if (!button || !m) return;
  const id = Number(button.dataset.id);
  switch (button.dataset.action) {
    case 'admit':
      m.admit(id);
      break;
    case 'presenter':
    case 'participant':
    case 'viewer':
      m.setRole(id, button.dataset.action);
      break;
    case 'mute-audio':
      m.muteParticipant(id, 'audio');
      break;
    case 'mute-video':
      m.muteParticipant(id, 'video');
      break;
    case 'remove': {
      const name = m.participants.get(id)?.name ?? '';
      if (window.confirm(t('roster.confirmRemove', { name }))) m.removeParticipant(id);
      break;
    }
    default:
      break;
  }
}
$('people-list').addEventListener('click', onRosterAction);
$('lobby-list').addEventListener('click', onRosterAction);
$('admit-all-button').addEventListener('click', () => app.meeting?.admitAll());
$('open-room-button').addEventListener('click', () => app.meeting?.openRoom());
$('lock-room-button').addEventListener('click', () => {
  const m = app.meeting;
  if (m) m.lockRoom(!m.roomState.locked);
});

function render() {
  const state = app.meeting?.state;
  const waiting = state === 'lobby';
  const inCall = !!app.meeting && state !== 'connecting' && !waiting;
  $('lobby').hidden = inCall || waiting;
  $('waiting').hidden = !waiting;
  $('call').hidden = !inCall;
  document.body.dataset.view = inCall ? 'call' : waiting ? 'waiting' : 'lobby';
  renderLobby();
  renderWaiting();
  if (inCall) renderCall();
  else $('meeting-info').hidden = true;
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 0);
}

// ---- start -----------------------------------------------------------------------------------

$('room-input').value = params.get('room') || '';
try {
  $('name-input').value = localStorage.getItem(NAME_KEY) || '';
} catch {
  // No saved name.
}
if (!supported()) {
  lobbyMessage = { key: 'error.unsupported' };
  render();
} else if (invite) {
  // A join link: straight into the meeting (after the camera and microphone are ready, so
  // they are published from the first offer; a viewer needs neither).
  render();
  if (!isViewerLink()) await startPreview();
  startJoin();
} else {
  render();
  startPreview();
}
