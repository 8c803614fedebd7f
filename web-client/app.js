// The page: lobby (join form, preview, devices) and the call (tile grid, toolbar, banners).
// State lives in LocalMedia and Meeting; this file renders it. Texts come from i18n.js only.

import { LANGUAGES, initLanguage, language, setLanguage, t } from './i18n.js';
import { LocalMedia, setTrackSource } from './media.js';
import { JoinError, Meeting, refusalKey } from './meeting.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const local = new LocalMedia();

/** What the test hooks may look at. */
const app = { meeting: null, local };

// Test hooks (synthetic media, diagnostics) load only when the URL asks for them.
const testing = params.has('test') || params.has('synthetic');
const overrides = testing ? (await import('./testhooks.js')).install(params, { setTrackSource, app }) : {};

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

$('join-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (app.meeting) return;
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
  lobbyMessage = null;
  const button = $('join-button');
  joining = true;
  button.dataset.i18n = 'lobby.joining';
  render();

  const meeting = new Meeting({
    room,
    name,
    local,
    url: overrides.signalingUrl || `wss://${location.host}/ws`,
    protocolVersion: overrides.protocolVersion,
    reconnectWindowMs: overrides.reconnectWindowMs,
  });
  app.meeting = meeting;
  meeting.addEventListener('change', scheduleRender);
  meeting.addEventListener('state', () => onMeetingState(meeting));
  meeting.addEventListener('notice', (ev) => toast(t(ev.detail.key, ev.detail.vars)));
  try {
    await meeting.join();
    const url = new URL(location.href);
    url.searchParams.set('room', room);
    history.replaceState(null, '', url);
  } catch (err) {
    app.meeting = null;
    if (err instanceof JoinError) {
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
});

function onMeetingState(meeting) {
  if (meeting !== app.meeting) return;
  if (meeting.state === 'ended' || meeting.state === 'left') {
    app.meeting = null;
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
window.addEventListener('pagehide', () => app.meeting?.leave());

/** Tile elements by key: 'self', 'p<participant>', 's<publication>' (screens). */
const tiles = new Map();

function clearTiles() {
  for (const el of tiles.values()) el.remove();
  tiles.clear();
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
      video: cam && !cam.muted ? m.remoteTracks.get(cam.id) : null,
      audio: mic ? m.remoteTracks.get(mic.id) : null,
      micOff: !mic || mic.muted,
      quality: m.quality.get(p.id),
    });
    for (const screen of pubs.filter((x) => x.source === 'screen')) {
      specs.push({
        key: `s${screen.id}`,
        participant: p.id,
        source: 'screen',
        name: p.name,
        label: t('call.screenOf', { name: p.name }),
        video: m.remoteTracks.get(screen.id) || null,
        stage: true,
      });
    }
  }
  specs.push({
    key: 'self',
    participant: m.me,
    self: true,
    source: 'camera',
    name: m.name,
    label: t('call.you', { name: m.name }),
    video: local.camOn ? local.camera : null,
    micOff: !(local.micOn && local.microphone),
    quality: m.quality.get('self'),
  });
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
  const video = el.querySelector('video');
  setTrack(video, spec.video);
  const showVideo = !!spec.video && spec.video.readyState === 'live' && (spec.self || !spec.video.muted);
  el.classList.toggle('no-video', !showVideo);
  const audio = el.querySelector('audio');
  setTrack(audio, spec.audio || null);
  if (speakerId && audio.sinkId !== speakerId) audio.setSinkId?.(speakerId).catch(() => {});
  el.querySelector('.name').textContent = spec.label;
  const avatar = el.querySelector('.avatar span');
  avatar.textContent = initials(spec.name);
  avatar.style.setProperty('--avatar', avatarColour(spec.name));
  el.dataset.mic = spec.micOff ? 'off' : 'on';
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
  $('room-label').textContent = m.room;
  $('count-label').textContent = t('call.count', { count: m.participants.size + 1 });
  $('banner').hidden = m.state !== 'reconnecting';

  const specs = tileSpecs(m);
  const wanted = new Set(specs.map((s) => s.key));
  for (const [key, el] of tiles) {
    if (!wanted.has(key)) {
      el.remove();
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
    }
    renderTile(el, spec);
    const parent = spec.stage ? stage : grid;
    parent.append(el); // keeps order; moving an element to where it is does nothing visible
  }
  $('layout').classList.toggle('presenting', specs.some((s) => s.stage));
  layoutGrid();
  $('alone').hidden = m.participants.size > 0 || m.state !== 'joined';

  const micOn = local.micOn && !!local.microphone;
  const camOn = local.camOn && !!local.camera;
  toggleButton($('mic-button'), micOn, 'i-mic', 'i-mic-off', 'toolbar.micMute', 'toolbar.micUnmute');
  toggleButton($('cam-button'), camOn, 'i-cam', 'i-cam-off', 'toolbar.camOff', 'toolbar.camOn');
  const share = $('share-button');
  share.hidden = !local.canShareScreen();
  share.classList.toggle('active', !!local.screen);
  const shareLabel = t(local.screen ? 'toolbar.stopShare' : 'toolbar.share');
  share.title = shareLabel;
  share.setAttribute('aria-label', shareLabel);
  share.setAttribute('aria-pressed', String(!!local.screen));
}

const GAP = 10;

/** Sizes the grid's 16:9 tiles: the column count that makes them largest wins. */
function layoutGrid() {
  const grid = $('grid');
  const n = grid.children.length;
  const width = grid.clientWidth;
  const height = grid.clientHeight;
  if (!n || !width || !height) return;
  let best = { w: 0, h: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    let w = (width - GAP * (cols - 1)) / cols;
    let h = (height - GAP * (rows - 1)) / rows;
    if (w / h > 16 / 9) w = (h * 16) / 9;
    else h = (w * 9) / 16;
    if (w > best.w) best = { w, h };
  }
  grid.style.setProperty('--tile-w', `${Math.floor(best.w)}px`);
  grid.style.setProperty('--tile-h', `${Math.floor(best.h)}px`);
}
new ResizeObserver(layoutGrid).observe($('grid'));

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
}

function render() {
  const inCall = !!app.meeting && app.meeting.state !== 'connecting';
  $('lobby').hidden = inCall;
  $('call').hidden = !inCall;
  document.body.dataset.view = inCall ? 'call' : 'lobby';
  renderLobby();
  renderCall();
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

function toast(text) {
  const el = document.createElement('div');
  el.className = 'toast';
  el.textContent = text;
  $('toasts').append(el);
  setTimeout(() => el.remove(), 4000);
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
} else {
  render();
  startPreview();
}
