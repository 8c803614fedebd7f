// The organizer pages: sign in, meetings (schedule, edit, cancel, invitations and their join
// links, live attendance, CSV export, recordings and their player), and for administrators the site directory (CSV import)
// and accounts. REST API: docs/api.md. Texts come from i18n.js only.
//
// The bearer token lives in sessionStorage (gone when the tab closes), or in localStorage when
// the person asked to be remembered on this device, and goes out only in the Authorization
// header of same-origin requests. A site's account (official, site operator) sees only its own
// meetings (my-meetings.js).

import { $, el, formatTime, toast } from './dom.js';
import { decryptRecording } from './e2ee-playback.js';
import { LANGUAGES, initLanguage, language, setLanguage, t } from './i18n.js';
import { keyRingsFor } from './keystore.js';
import { attendanceBoard } from './attendance-board.js';
import { SITE_ROLES, myMeetings } from './my-meetings.js';
import { invitationList, linksCsv, orderedInvitations, printableLinks } from './invitation-list.js';
import { sitePicker } from './site-picker.js';

const TOKEN_KEY = 'meet.orgToken';
// Attendance is at most this far behind while the meeting's page is open.
const ATTENDANCE_MS = 2000;

const ROLE_KEYS = {
  host: 'role.host',
  presenter: 'role.presenter',
  participant: 'role.participant',
  viewer: 'role.viewer',
};
const INVITEE_ROLES = ['participant', 'presenter', 'host', 'viewer'];
const ADMISSION_KEYS = { host: 'org.admissionHost', scheduled: 'org.admissionScheduled' };
const STATUS_KEYS = { scheduled: 'org.statusScheduled', cancelled: 'org.statusCancelled' };
const KIND_KEYS = { central: 'org.kindCentral', province: 'org.kindProvince', commune: 'org.kindCommune' };
const ACCOUNT_ROLE_KEYS = {
  admin: 'org.accountAdmin', organizer: 'org.accountOrganizer', official: 'org.accountOfficial', site_operator: 'org.accountSiteOperator',
};
const REC_STATUS_KEYS = {
  recording: 'rec.statusRecording',
  completed: 'rec.statusCompleted',
  interrupted: 'rec.statusInterrupted',
  failed: 'rec.statusFailed',
};
/** A video further than this from where the audio says it should be is moved (seconds). */
const MAX_DRIFT_S = 0.3;
const RESYNC_MS = 1000;
const RENEW_MIN_MS = 30_000;
const ERROR_KEYS = {
  unauthorized: 'org.errUnauthorized',
  forbidden: 'org.errForbidden',
  not_found: 'org.errNotFound',
  conflict: 'org.errConflict',
  bad_request: 'org.errBadRequest',
  invalid_csv: 'org.errInvalidCsv',
};

/** Signed-in state: the bearer token and the account. */
let token = null;
let account = null;
/** What the content area shows: { name: 'meetings' | 'new' | 'detail' | 'edit' | 'sites' | 'accounts', id? } */
let view = { name: 'meetings' };
/** Stops the running attendance refresh, if any. */
let stopRefresh = null;
/** Stops the recording player, if one is open. */
let stopPlayer = null;
/** The page's message: { key, vars, detail, kind } (kept as a key so a language switch redraws it). */
let message = null;

class ApiError extends Error {
  constructor(status, code, detail, errors) {
    super(`${status} ${code || ''}: ${detail || ''}`);
    this.status = status;
    this.code = code || 'internal';
    this.detail = detail || '';
    this.errors = errors || [];
  }
}

// ---- REST ----------------------------------------------------------------------------------

async function request(method, path, { json, csv, raw = false } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (csv !== undefined) {
    headers['Content-Type'] = 'text/csv';
    body = csv;
  }
  let res;
  try {
    res = await fetch(`/api${path}`, { method, headers, body });
  } catch {
    throw new ApiError(0, 'unreachable');
  }
  if (!res.ok) {
    let data = {};
    try {
      data = await res.json();
    } catch {
      // No JSON body.
    }
    if (res.status === 401 && path !== '/login') forgetSession();
    throw new ApiError(res.status, data.error, data.message, data.errors);
  }
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

const api = {
  get: (path) => request('GET', path),
  post: (path, json) => request('POST', path, { json }),
  patch: (path, json) => request('PATCH', path, { json }),
  del: (path) => request('DELETE', path),
};

function errorMessage(err) {
  if (!(err instanceof ApiError)) {
    console.error(err);
    return { key: 'org.errServer', vars: { code: 'internal' } };
  }
  if (err.code === 'unreachable') return { key: 'error.unreachable' };
  return { key: ERROR_KEYS[err.code] || 'org.errServer', vars: { code: err.code }, detail: err.detail };
}

function showError(err) {
  message = errorMessage(err);
  renderMessage();
}

function showInfo(key, vars) {
  message = { key, vars, kind: 'info' };
  renderMessage();
}

function renderMessage() {
  const box = $('org-message');
  box.hidden = !message || !token;
  if (!message) return;
  box.replaceChildren(t(message.key, message.vars || {}));
  if (message.detail) box.append(el('span', { className: 'detail', text: message.detail }));
  box.dataset.key = message.key;
  box.classList.toggle('info', message.kind === 'info');
}

// ---- small DOM helpers -----------------------------------------------------------------------

const button = (key, onClick, className = 'secondary', props = {}) => el('button', {
  type: 'button', className, text: t(key), on: { click: onClick }, ...props,
});

function field(labelKey, input) {
  return el('label', { className: 'field' }, el('span', { text: t(labelKey) }), input);
}

function select(options, value, props = {}) {
  const s = el('select', props);
  for (const [v, key] of options) s.append(new Option(t(key), v));
  if (value !== undefined) s.value = value;
  return s;
}

const roleSelect = (value = 'participant', props = {}) => select(INVITEE_ROLES.map((r) => [r, ROLE_KEYS[r]]), value, props);

/** ms epoch -> the value of a datetime-local input (local time). */
function toLocalInput(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A datetime-local value (local time) -> ms epoch, or NaN. */
const fromLocalInput = (value) => (value ? new Date(value).getTime() : NaN);

function table(headKeys, rows, className = '') {
  return el('table', { className: `org-table ${className}` },
    el('thead', {}, el('tr', {}, headKeys.map((k) => el('th', { text: k ? t(k) : '' })))),
    el('tbody', {}, rows));
}

// ---- session ---------------------------------------------------------------------------------

function forgetSession() {
  token = null;
  account = null;
  try {
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Nothing stored.
  }
  stopRefresh?.();
  render();
}

/**
 * Keeps a new session: in sessionStorage (gone with the tab), or in localStorage when the
 * person asked to be remembered on this device (the server then gave a 30-day session).
 */
function startSession(answer, remember) {
  token = answer.token;
  account = answer.account;
  try {
    (remember ? localStorage : sessionStorage).setItem(TOKEN_KEY, token);
  } catch {
    // Signed in for this page only.
  }
  message = null;
  go({ name: homeView() });
}

/** Where an account lands: a site's own meetings, or the meetings it organizes. */
const isSiteAccount = () => SITE_ROLES.includes(account?.role);
const homeView = () => (isSiteAccount() ? 'mine' : 'meetings');

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const username = $('login-username').value.trim();
  const password = $('login-password').value;
  const box = $('login-message');
  if (!username || !password) {
    box.hidden = false;
    box.dataset.key = 'org.loginMissing';
    box.textContent = t('org.loginMissing');
    return;
  }
  $('login-button').disabled = true;
  try {
    const remember = $('login-remember').checked;
    const answer = await request('POST', '/login', { json: { username, password, remember } });
    box.hidden = true;
    $('login-password').value = '';
    startSession(answer, remember);
  } catch (err) {
    const m = err instanceof ApiError && err.status === 401 ? { key: 'org.loginFailed' } : errorMessage(err);
    box.hidden = false;
    box.dataset.key = m.key;
    box.textContent = t(m.key, m.vars || {});
  } finally {
    $('login-button').disabled = false;
  }
});

$('sign-out').addEventListener('click', async () => {
  try {
    await request('POST', '/logout');
  } catch {
    // Signed out here regardless.
  }
  message = null;
  forgetSession();
});

// An imported account's first visit: its activation link (`#activate=<token>`) sets its
// password once.
$('activate-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const password = $('activate-password').value;
  const box = $('activate-message');
  const say = (key, vars = {}) => {
    box.hidden = false;
    box.dataset.key = key;
    box.textContent = t(key, vars);
  };
  if (password.length < 1 || password !== $('activate-password2').value) {
    say('org.passwordsDiffer');
    return;
  }
  $('activate-button').disabled = true;
  try {
    const remember = $('activate-remember').checked;
    const activation = new URLSearchParams(location.hash.slice(1)).get('activate');
    const answer = await request('POST', '/activate', { json: { token: activation, password, remember } });
    history.replaceState(null, '', location.pathname + location.search);
    $('activate-form').hidden = true;
    startSession(answer, remember);
  } catch (err) {
    const m = err instanceof ApiError && err.status === 401 ? { key: 'org.activationUsed' } : errorMessage(err);
    say(m.key, m.vars);
  } finally {
    $('activate-button').disabled = false;
  }
});

for (const navButton of document.querySelectorAll('#org-nav button')) {
  navButton.addEventListener('click', () => go({ name: navButton.dataset.view }));
}

// ---- views -------------------------------------------------------------------------------------

function go(next) {
  stopRefresh?.();
  stopRefresh = null;
  stopPlayer?.();
  view = next;
  message = null;
  render();
}

function render() {
  const signedIn = !!token && !!account;
  const activating = !signedIn && new URLSearchParams(location.hash.slice(1)).has('activate');
  $('login-form').hidden = signedIn || activating;
  $('activate-form').hidden = signedIn || !activating;
  $('org-nav').hidden = !signedIn;
  $('org-user').hidden = !signedIn;
  $('content').hidden = !signedIn;
  renderMessage();
  if (!signedIn) {
    $('content').replaceChildren();
    return;
  }
  $('user-name').textContent = t('org.signedInAs', {
    name: account.display_name, role: t(ACCOUNT_ROLE_KEYS[account.role] || 'org.accountOrganizer'),
  });
  for (const b of document.querySelectorAll('#org-nav button')) {
    // Administrators' views for administrators; a site's account sees only its own meetings.
    b.hidden = ('admin' in b.dataset && account.role !== 'admin') || ('site' in b.dataset) !== isSiteAccount();
    const section = { new: 'meetings', detail: 'meetings', edit: 'meetings', print: 'meetings' }[view.name] || view.name;
    b.classList.toggle('active', b.dataset.view === section);
  }
  document.body.dataset.view = view.name;
  const content = $('content');
  const views = {
    meetings: meetingsView, new: scheduleView, edit: scheduleView, detail: detailView, print: printView, sites: sitesView, accounts: accountsView,
    mine: myMeetingsView,
  };
  // A site's account has its own meetings and nothing else.
  if (isSiteAccount() && view.name !== 'mine') view = { name: 'mine' };
  const current = view;
  content.replaceChildren(el('p', { className: 'note', text: t('org.loading') }));
  (views[view.name] || meetingsView)()
    .then((node) => {
      if (view === current) content.replaceChildren(node);
    })
    .catch((err) => {
      if (view !== current) return;
      content.replaceChildren();
      showError(err);
    });
}

// Meetings list.
async function meetingsView() {
  const meetings = await api.get('/meetings');
  meetings.sort((a, b) => Date.parse(a.starts_at) - Date.parse(b.starts_at));
  const rows = meetings.map((m) => el('tr', {
    className: `clickable meeting-row ${m.status}`,
    dataset: { meetingId: m.id },
    on: { click: () => go({ name: 'detail', id: m.id }) },
  },
  el('td', {},
    el('a', { href: '#', text: m.title, on: { click: (e) => e.preventDefault() } }),
    meetingBadges(m)),
  el('td', { text: formatTime(m.starts_at) }),
  el('td', { text: formatTime(m.ends_at) }),
  el('td', { text: t(ADMISSION_KEYS[m.admission] || 'org.admissionHost') }),
  el('td', { text: t(STATUS_KEYS[m.status] || 'org.statusScheduled') })));
  return el('div', { className: 'org-view' },
    el('div', { className: 'view-head' },
      el('h1', { text: t('org.meetingsHeading') }),
      button('org.newMeeting', () => go({ name: 'new' }), 'primary', { id: 'new-meeting' })),
    meetings.length
      ? table(['org.colTitle', 'org.colStart', 'org.colEnd', 'org.colAdmission', 'org.colStatus'], rows, 'meetings-table')
      : el('p', { className: 'note', text: t('org.noMeetings') }));
}

// A confidential meeting's label, and a lock on one whose media is end-to-end encrypted.
function meetingBadges(meeting) {
  return [
    meeting.confidential ? el('span', { className: 'org-badge confidential-badge', text: t('org.confidentialBadge') }) : null,
    meeting.e2ee ? el('span', { className: 'org-badge encrypted-badge', title: t('org.encryptedTitle'), text: t('org.encryptedBadge') }) : null,
  ];
}

// Schedule a meeting (new) or edit one (view.id).
async function scheduleView() {
  const editing = view.name === 'edit';
  const meeting = editing ? await api.get(`/meetings/${view.id}`) : null;
  const sites = editing ? [] : await api.get('/sites');
  const now = Date.now();
  const defaultStart = Math.ceil((now + 30 * 60_000) / (15 * 60_000)) * 15 * 60_000;

  const title = el('input', { id: 'meeting-title', maxLength: 200, required: true, value: meeting?.title ?? '' });
  const starts = el('input', { id: 'meeting-start', type: 'datetime-local', required: true, value: toLocalInput(meeting?.starts_at ?? defaultStart) });
  const ends = el('input', { id: 'meeting-end', type: 'datetime-local', required: true, value: toLocalInput(meeting?.ends_at ?? defaultStart + 60 * 60_000) });
  const admission = select(Object.entries(ADMISSION_KEYS), meeting?.admission ?? 'host', { id: 'meeting-admission' });
  const autoRecord = el('input', { id: 'meeting-auto-record', type: 'checkbox', checked: meeting?.auto_record ?? false });
  const confidential = el('input', { id: 'meeting-confidential', type: 'checkbox', checked: meeting?.confidential ?? false });
  const encrypted = el('input', { id: 'meeting-e2ee', type: 'checkbox', checked: meeting?.e2ee ?? false });
  // A confidential meeting is end-to-end encrypted unless the organizer unchecks it (as the
  // API does when `e2ee` is left out); unchecking Confidential never turns encryption off.
  confidential.addEventListener('change', () => {
    if (confidential.checked) encrypted.checked = true;
  });

  const form = el('form', { className: 'org-form', id: 'meeting-form', noValidate: true },
    el('h1', { text: t(editing ? 'org.editHeading' : 'org.scheduleHeading') }),
    field('org.fieldTitle', title),
    el('div', { className: 'row' }, field('org.fieldStart', starts), field('org.fieldEnd', ends)),
    field('org.fieldAdmission', admission),
    el('p', { className: 'note', text: t('org.admissionHelp') }),
    el('label', { className: 'field checkbox' }, autoRecord, el('span', { text: t('org.fieldAutoRecord') })),
    el('label', { className: 'field checkbox' }, confidential, el('span', { text: t('org.fieldConfidential') })),
    el('label', { className: 'field checkbox' }, encrypted, el('span', { text: t('org.fieldEncrypted') })),
    el('p', { className: 'note', text: t('org.encryptedHelp') }));

  // Invitees: sites from the directory (a tree with groups, a role each) and named people.
  const picker = editing ? null : sitePicker(sites, { t, roleSelect, kindKeys: KIND_KEYS });
  const chosen = picker?.chosen ?? new Map(); // site id -> role
  const people = [];
  if (!editing) {
    const peopleList = el('div', { className: 'people-inputs', id: 'people-inputs' });
    const addPerson = () => {
      const entry = {
        name: el('input', { maxLength: 64, placeholder: t('org.personName'), className: 'person-name-input' }),
        role: roleSelect('participant'),
      };
      people.push(entry);
      const row = el('div', { className: 'row' }, entry.name, entry.role, button('org.removeRow', () => {
        people.splice(people.indexOf(entry), 1);
        row.remove();
      }, 'secondary small'));
      peopleList.append(row);
      entry.name.focus();
    };
    form.append(
      picker.element,
      el('fieldset', { className: 'invitees' },
        el('legend', { text: t('org.invitePeople') }),
        peopleList,
        button('org.addPerson', addPerson, 'secondary small', { id: 'add-person' })));
  }

  const submit = el('button', { type: 'submit', className: 'primary', id: 'meeting-submit', text: t(editing ? 'org.save' : 'org.schedule') });
  form.append(el('div', { className: 'row actions' },
    submit,
    button('org.back', () => go(editing ? { name: 'detail', id: view.id } : { name: 'meetings' }))));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {
      title: title.value.trim(),
      starts_at: fromLocalInput(starts.value),
      ends_at: fromLocalInput(ends.value),
      admission: admission.value,
      auto_record: autoRecord.checked,
      confidential: confidential.checked,
      e2ee: encrypted.checked,
    };
    if (!body.title) {
      showInfo('org.needTitle');
      return;
    }
    if (!Number.isFinite(body.starts_at) || !Number.isFinite(body.ends_at) || body.ends_at <= body.starts_at) {
      showInfo('org.badTimes');
      return;
    }
    if (!editing) {
      body.invitations = [
        ...[...chosen].map(([siteId, role]) => ({ role, site_id: siteId })),
        ...people.filter((p) => p.name.value.trim()).map((p) => ({ role: p.role.value, name: p.name.value.trim() })),
      ];
    }
    submit.disabled = true;
    try {
      const saved = editing ? await api.patch(`/meetings/${view.id}`, body) : await api.post('/meetings', body);
      go({ name: 'detail', id: saved.id });
      showInfo(editing ? 'org.saved' : 'org.scheduled');
    } catch (err) {
      showError(err);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

// One meeting: its data, invitations with links, attendance.
async function detailView() {
  const id = view.id;
  const [meeting, sites] = await Promise.all([api.get(`/meetings/${id}`), api.get('/sites')]);
  const cancelled = meeting.status === 'cancelled';
  const reload = () => go({ name: 'detail', id });

  const head = el('div', { className: 'view-head' },
    el('div', {},
      el('h1', { text: meeting.title, id: 'meeting-heading' }),
      el('p', { className: 'org-badges', id: 'meeting-badges' }, meetingBadges(meeting)),
      el('p', { className: 'note', id: 'meeting-when', text: t('org.when', { start: formatTime(meeting.starts_at), end: formatTime(meeting.ends_at) }) }),
      el('p', { className: 'note' },
        `${t(ADMISSION_KEYS[meeting.admission] || 'org.admissionHost')} · `,
        el('span', { className: `status ${meeting.status}`, id: 'meeting-status', text: t(STATUS_KEYS[meeting.status] || 'org.statusScheduled') }))),
    el('div', { className: 'row' },
      button('org.back', () => go({ name: 'meetings' })),
      cancelled ? null : button('org.edit', () => go({ name: 'edit', id }), 'secondary', { id: 'edit-meeting' }),
      cancelled ? null : button('org.cancelMeeting', async () => {
        if (!window.confirm(t('org.confirmCancel', { title: meeting.title }))) return;
        try {
          await api.post(`/meetings/${id}/cancel`);
          reload();
          showInfo('org.cancelled');
        } catch (err) {
          showError(err);
        }
      }, 'danger', { id: 'cancel-meeting' })));

  // Invitations, in the directory's order, with their links as CSV and on a printable page.
  const entries = orderedInvitations(meeting, sites, location.origin);
  const revoke = cancelled ? null : async (inv) => {
    if (!window.confirm(t('org.confirmRevoke', { name: inv.name }))) return;
    try {
      await api.del(`/meetings/${id}/invitations/${inv.id}`);
      reload();
    } catch (err) {
      showError(err);
    }
  };
  const invitations = entries.length
    ? invitationList(entries, { t, roleKeys: ROLE_KEYS, button, copy, revoke })
    : el('p', { className: 'note', text: t('org.noInvitations') });
  const linkActions = entries.length ? el('div', { className: 'row' },
    button('org.exportLinks', () => download(linksCsv(entries), `links-${id}.csv`), 'secondary', { id: 'export-links' }),
    button('org.printLinks', () => go({ name: 'print', id }), 'secondary', { id: 'print-links-button' })) : null;

  // Add an invitation: a site from the directory or a named person.
  let addForm = null;
  if (!cancelled) {
    const siteChoice = el('select', { id: 'add-site' });
    siteChoice.append(new Option(t('org.personInstead'), ''));
    for (const s of sites) {
      const label = `${s.name} (${s.code})`;
      siteChoice.append(new Option(label, s.id));
    }
    const name = el('input', { id: 'add-name', maxLength: 64, placeholder: t('org.personName') });
    const role = roleSelect('participant', { id: 'add-role' });
    siteChoice.addEventListener('change', () => {
      name.disabled = !!siteChoice.value;
    });
    addForm = el('form', { className: 'row add-invitation', id: 'add-invitation', noValidate: true },
      siteChoice, name, role, el('button', { type: 'submit', className: 'secondary', text: t('org.invite') }));
    addForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      const invitee = siteChoice.value ? { role: role.value, site_id: siteChoice.value } : { role: role.value, name: name.value.trim() };
      if (!invitee.site_id && !invitee.name) {
        showInfo('org.needInvitee');
        return;
      }
      try {
        await api.post(`/meetings/${id}/invitations`, invitee);
        reload();
        showInfo('org.invited');
      } catch (err) {
        showError(err);
      }
    });
  }

  // Attendance, refreshed while this view is open; the filter narrows it between refreshes.
  const board = el('div', { id: 'attendance' });
  const boardFilter = el('input', { id: 'attendance-filter', type: 'search', placeholder: t('org.filterAttendance') });
  let attendance = null;
  const drawBoard = () => {
    if (attendance) board.replaceChildren(attendanceBoard(attendance, boardFilter.value, { t, roleKeys: ROLE_KEYS, table }));
  };
  boardFilter.addEventListener('input', drawBoard);
  const exportButton = button('org.exportCsv', () => exportCsv(id), 'secondary', { id: 'export-csv' });
  const refresh = async () => {
    try {
      const latest = await api.get(`/meetings/${id}/attendance`);
      if (view.id !== id || view.name !== 'detail') return;
      attendance = latest;
      drawBoard();
    } catch (err) {
      if (view.id === id && view.name === 'detail') showError(err);
    }
  };
  refresh();

  // Recordings: listed once, and again while one is still being written, so that its status
  // and size follow.
  const recordings = el('div', { id: 'recordings' });
  const player = el('div', { id: 'player', className: 'rec-player', hidden: true });
  let running = false;
  const loadRecordings = async () => {
    try {
      const list = await api.get(`/meetings/${id}/recordings`);
      if (view.id !== id || view.name !== 'detail') return;
      running = list.some((r) => r.status === 'recording');
      recordings.replaceChildren(recordingsTable(list, { reload: loadRecordings, player }));
    } catch (err) {
      if (view.id === id && view.name === 'detail') showError(err);
    }
  };
  loadRecordings();

  const timer = setInterval(() => {
    refresh();
    if (running) loadRecordings();
  }, ATTENDANCE_MS);
  stopRefresh = () => clearInterval(timer);

  return el('div', { className: 'org-view' },
    head,
    el('section', { className: 'org-section' },
      el('div', { className: 'view-head' }, el('h2', { text: t('org.invitations', { n: entries.length }) }), linkActions),
      invitations,
      addForm),
    el('section', { className: 'org-section' },
      el('div', { className: 'view-head' }, el('h2', { text: t('org.attendance') }), exportButton),
      el('div', { className: 'row' }, boardFilter),
      board),
    el('section', { className: 'org-section', id: 'recordings-section' },
      el('h2', { text: t('rec.heading') }),
      recordings,
      player));
}

// A site's meetings, each joined with one click.
async function myMeetingsView() {
  const mine = await api.get('/my/meetings');
  const join = async (m) => {
    try {
      const { join_path: path } = await api.post(`/my/meetings/${m.meeting_id}/join`);
      location.assign(path);
    } catch (err) {
      showError(err);
    }
  };
  return myMeetings(mine, { t, roleKeys: ROLE_KEYS, button, join });
}

// The invitations' links, one province per printed sheet.
async function printView() {
  const id = view.id;
  const [meeting, sites] = await Promise.all([api.get(`/meetings/${id}`), api.get('/sites')]);
  const entries = orderedInvitations(meeting, sites, location.origin);
  return el('div', { className: 'org-view' },
    el('div', { className: 'row no-print' },
      button('org.back', () => go({ name: 'detail', id })),
      button('org.print', () => window.print(), 'primary', { id: 'print-now' })),
    printableLinks(meeting, entries, { t, roleKeys: ROLE_KEYS, formatTime }));
}

// ---- recordings --------------------------------------------------------------------------------

function formatDuration(ms) {
  const total = Math.max(0, Math.round(ms / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  return `${Math.floor(total / 3600)}:${pad(Math.floor(total / 60) % 60)}:${pad(total % 60)}`;
}

function formatBytes(bytes) {
  const [unit, size] = bytes >= 1e9 ? ['gigabyte', bytes / 1e9] : bytes >= 1e6 ? ['megabyte', bytes / 1e6] : ['kilobyte', bytes / 1e3];
  return new Intl.NumberFormat(language(), { style: 'unit', unit, maximumFractionDigits: 1 }).format(size);
}

/** A file URL that a media element or a plain link can fetch: the ticket stands in for the bearer header. */
const fileUrl = (recordingId, name, ticket, download = false) =>
  `/api/recordings/${recordingId}/files/${encodeURIComponent(name)}?ticket=${encodeURIComponent(ticket)}${download ? '&download=1' : ''}`;

const newTicket = (recordingId) => api.post(`/recordings/${recordingId}/ticket`);

function recordingsTable(list, { reload, player }) {
  if (!list.length) return el('p', { className: 'note', text: t('rec.none') });
  const rows = list.map((r) => {
    const running = r.status === 'recording';
    const size = r.bytes || r.files.reduce((sum, f) => sum + f.bytes, 0);
    const playable = isPlayable(r);
    const fileChoice = el('select', { className: 'rec-file', dataset: { files: r.id } });
    for (const f of r.files) fileChoice.append(new Option(f.name, f.name));
    const download = async () => {
      if (!fileChoice.value) return;
      try {
        const { ticket } = await newTicket(r.id);
        const a = el('a', { href: fileUrl(r.id, fileChoice.value, ticket, true), download: fileChoice.value });
        document.body.append(a);
        a.click();
        a.remove();
      } catch (err) {
        showError(err);
      }
    };
    const remove = async () => {
      if (!window.confirm(t('rec.confirmDelete'))) return;
      try {
        await api.del(`/recordings/${r.id}`);
        if (player.dataset.recordingId === r.id) stopPlayer?.();
        toast(t('rec.deleted'));
        reload();
      } catch (err) {
        showError(err);
      }
    };
    return el('tr', { className: `recording ${r.status}`, dataset: { recordingId: r.id, status: r.status } },
      el('td', { text: formatTime(r.started_at) }),
      el('td', { text: r.ended_at ? formatDuration(Date.parse(r.ended_at) - Date.parse(r.started_at)) : t('rec.inProgress') }),
      el('td', {},
        el('span', { className: `rec-status ${r.status}`, text: t(REC_STATUS_KEYS[r.status] || 'rec.statusFailed'), title: r.error || '' }),
        // An encrypted recording plays only in a browser that kept its keys.
        r.e2ee ? el('span', { className: 'org-badge encrypted-badge', title: t('org.encryptedTitle'), text: t('org.encryptedBadge') }) : null),
      el('td', { text: formatBytes(size) }),
      el('td', { className: 'row' },
        playable ? button('rec.play', () => openPlayer(player, r), 'secondary small', { dataset: { play: r.id } }) : null,
        r.files.length ? fileChoice : null,
        r.files.length ? button('rec.download', download, 'secondary small', { dataset: { download: r.id } }) : null,
        running ? null : button('rec.delete', remove, 'danger small', { dataset: { delete: r.id } })));
  });
  return table(['rec.colStart', 'rec.colDuration', 'rec.colStatus', 'rec.colSize', ''], rows, 'recordings-table');
}

/**
 * Whether a recording has something to play: the mixed audio, or a manifest and some of its
 * tracks' files (an end-to-end encrypted recording has no mix). Whether it is encrypted, the
 * player learns from the list's `e2ee` where the server gives it, else from the manifest.
 */
function isPlayable(r) {
  if (r.status === 'recording') return false;
  const kinds = new Set(r.files.map((f) => f.kind));
  return kinds.has('mix') || (kinds.has('manifest') && (kinds.has('audio') || kinds.has('video')));
}

/**
 * The mixed audio a manifest names, and where it starts (seconds): the recorder writes
 * `mix: { file, start_offset_ms }`, older manifests a bare file name. Without a manifest the
 * mix is `mix.ogg`; an encrypted recording's manifest has none (`mix` absent or null).
 */
function mixOf(manifest) {
  const mix = manifest ? manifest.mix : 'mix.ogg';
  if (typeof mix === 'string' && mix) return { file: mix, start: 0 };
  if (mix && typeof mix.file === 'string' && mix.file) {
    return { file: mix.file, start: (Number(mix.start_offset_ms) || 0) / 1000 };
  }
  return null;
}

/**
 * What plays: a clock, with the controls, and the tracks that follow it by their offsets
 * (seconds on the recording's timeline). The mixed audio is the clock where there is one, and
 * only the videos follow (the mix holds every voice). Without it, the audio track that starts
 * first is the clock and every other track, audio and video, follows; with no audio at all,
 * the video that starts first. `has(file)`: whether that file can be played. Null when
 * nothing can.
 */
function playPlan(manifest, has, { mix = true } = {}) {
  const spans = (Array.isArray(manifest?.tracks) ? manifest.tracks : [])
    .filter((tr) => tr && (tr.kind === 'audio' || tr.kind === 'video') && typeof tr.file === 'string' && has(tr.file))
    .map((tr) => ({
      file: tr.file,
      kind: tr.kind,
      track: tr.track,
      participant: String(tr.participant || ''),
      start: (Number(tr.start_offset_ms) || 0) / 1000,
      end: typeof tr.end_offset_ms === 'number' ? tr.end_offset_ms / 1000 : null,
    }));
  const mixed = mix ? mixOf(manifest) : null;
  if (mixed && has(mixed.file)) {
    return {
      clock: { ...mixed, kind: 'audio', track: null, participant: '', end: null },
      followers: spans.filter((s) => s.kind === 'video'),
    };
  }
  const audio = spans.filter((s) => s.kind === 'audio');
  const candidates = audio.length ? audio : spans;
  if (!candidates.length) return null;
  const clock = candidates.reduce((first, s) => (s.start < first.start ? s : first));
  return { clock, followers: spans.filter((s) => s !== clock) };
}

/**
 * Plays a recording (see playPlan for what plays): the clock plays with controls, and every
 * other track beside it, placed by its start offset in the manifest. Followers are nudged back
 * whenever they drift more than MAX_DRIFT_S from where the clock says they should be, and
 * videos are hidden outside their span. An end-to-end encrypted recording is first decrypted
 * in this browser, with the keys the meeting page kept (openEncrypted).
 */
async function openPlayer(player, recording) {
  stopPlayer?.();
  // Everything the player holds (timers, media, object URLs) is released through `session`,
  // whether it is closed while playing or while a file is still being fetched or decrypted.
  const session = { closed: false, cleanups: [] };
  const close = () => {
    if (session.closed) return;
    session.closed = true;
    for (const cleanup of session.cleanups.splice(0)) cleanup();
    player.replaceChildren();
    player.hidden = true;
    delete player.dataset.recordingId;
    delete player.meetPlayer;
    if (stopPlayer === close) stopPlayer = null;
  };
  stopPlayer = close;
  player.dataset.recordingId = recording.id;
  const heading = el('div', { className: 'view-head' },
    el('h3', { text: t('rec.playerHeading', { start: formatTime(recording.started_at) }) }),
    button('rec.close', close, 'secondary small', { id: 'player-close' }));

  let ticket;
  let manifest = null;
  try {
    ({ ticket } = await newTicket(recording.id));
    const res = await fetch(fileUrl(recording.id, 'manifest.json', ticket));
    if (res.ok) {
      // A manifest that does not parse is as good as none: it is untrusted input.
      manifest = await res.json().catch(() => null);
      if (!manifest || typeof manifest !== 'object' || Array.isArray(manifest)) manifest = null;
    }
  } catch (err) {
    close();
    showError(err);
    return;
  }
  if (session.closed) return;

  if (recording.e2ee === true || manifest?.e2ee === true) {
    try {
      await openEncrypted(player, recording, manifest, { session, heading, ticket });
    } catch (err) {
      // Bad files are reported per track inside; anything reaching here is a fault of ours,
      // shown rather than left as an unhandled rejection of the Play button.
      close();
      showError(err);
    }
    return;
  }
  const available = new Set(recording.files.map((f) => f.name));
  // Without a usable plan, the mix is tried as before: its element then says what is wrong.
  const plan = playPlan(manifest, (name) => available.has(name))
    || { clock: { file: 'mix.ogg', kind: 'audio', track: null, participant: '', start: 0, end: null }, followers: [] };
  mountPlayer(player, {
    session,
    heading,
    plan,
    notes: manifest ? [] : [el('p', { className: 'note', text: t('rec.noManifest') })],
    srcOf: (file) => fileUrl(recording.id, file, ticket),
    renew: async () => {
      ({ ticket } = await newTicket(recording.id));
    },
  });
}

/**
 * An end-to-end encrypted recording: the server holds only what each sender encrypted, so
 * this browser fetches every track's file, decrypts it with the sender keys its meeting page
 * kept in IndexedDB (keystore.js) and plays the results from memory. Without keys (another
 * browser, or a host who was not there) it says so and plays nothing.
 */
async function openEncrypted(player, recording, manifest, { session, heading, ticket: firstTicket }) {
  const status = el('p', { className: 'note rec-e2ee', text: t('rec.encryptedDecrypting') });
  const progress = el('p', { className: 'note rec-e2ee-progress' });
  player.replaceChildren(heading, status, progress);
  player.hidden = false;
  const refuse = (key) => {
    status.textContent = t(key);
    status.classList.add('rec-warning');
    progress.remove();
  };
  if (!manifest) {
    refuse('rec.encryptedNoManifest');
    return;
  }
  const rings = await keyRingsFor(manifest.room);
  if (session.closed) return;
  if (!rings.size) {
    refuse('rec.encryptedNoKeys');
    return;
  }
  let ticket = firstTicket;
  const fetchFile = async (name) => {
    let res = await fetch(fileUrl(recording.id, name, ticket));
    if (!res.ok) {
      // The ticket lasts ten minutes, and decrypting the files before may have taken longer.
      ({ ticket } = await newTicket(recording.id));
      res = await fetch(fileUrl(recording.id, name, ticket));
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return res.arrayBuffer();
  };
  const results = await decryptRecording(manifest, fetchFile, rings, {
    onTrack: (done, total) => {
      progress.textContent = t('rec.encryptedProgress', { done, total });
    },
  });
  if (session.closed) return;

  const urls = new Map();
  for (const r of results) if (r.blob) urls.set(r.track.file, URL.createObjectURL(r.blob));
  session.cleanups.push(() => {
    for (const url of urls.values()) URL.revokeObjectURL(url);
  });
  const warning = (key, vars) => el('p', { className: 'note rec-warning', text: t(key, vars) });
  const damaged = results.filter((r) => r.error === 'damaged' || r.error === 'fetch')
    .map((r) => warning('rec.encryptedDamaged', { file: r.track.file, detail: r.detail }));
  const unkeyed = [...new Set(results.filter((r) => r.error === 'no-key' || r.error === 'undecryptable')
    .map((r) => String(r.track.participant || r.track.participant_id)))];
  const failed = results.reduce((n, r) => n + r.failed, 0);
  // For tests and diagnostics: what each file gave.
  const decrypted = results.map((r) => ({ file: r.track.file, frames: r.frames, failed: r.failed, skipped: r.skipped, error: r.error }));

  const plan = playPlan(manifest, (name) => urls.has(name), { mix: false });
  if (!plan) {
    if (unkeyed.length || !damaged.length) refuse('rec.encryptedNoKeys');
    else status.remove();
    progress.remove();
    player.append(...damaged);
    player.meetPlayer = { decrypted };
    return;
  }
  const notes = [el('p', { className: 'note rec-e2ee', text: t('rec.encryptedDecrypted') })];
  if (failed) notes.push(warning('rec.encryptedFailedFrames', { count: failed }));
  if (unkeyed.length) notes.push(warning('rec.encryptedNotDecrypted', { names: unkeyed.join(', ') }));
  notes.push(...damaged);
  mountPlayer(player, { session, heading, plan, notes, srcOf: (file) => urls.get(file), renew: null });
  player.meetPlayer.decrypted = decrypted;
}

/**
 * Builds the player for `plan` and keeps its followers with the clock. `srcOf(file)` is the
 * address of a file; `renew` (for ticketed addresses) gets a new ticket when a fetch fails.
 */
function mountPlayer(player, { session, heading, plan, notes, srcOf, renew }) {
  const clockSpan = plan.clock;
  const figure = (media, span, hidden) => el('figure', { className: 'rec-video', hidden, dataset: { track: String(span.track ?? '') } },
    media, el('figcaption', { text: span.participant }));
  const clock = el(clockSpan.kind, { controls: true, preload: 'auto', className: clockSpan.kind === 'audio' ? 'rec-audio' : '' });
  if (clockSpan.kind === 'video') clock.playsInline = true;
  clock.src = srcOf(clockSpan.file);
  const clockBox = clockSpan.kind === 'video' ? figure(clock, clockSpan, false) : null;
  const followers = plan.followers.map((span) => {
    const media = el(span.kind, { preload: 'auto' });
    if (span.kind === 'video') {
      // Videos carry no sound of their own; voices come from the audio tracks.
      media.muted = true;
      media.playsInline = true;
    }
    media.src = srcOf(span.file);
    return {
      file: span.file,
      kind: span.kind,
      media,
      video: span.kind === 'video' ? media : null,
      box: span.kind === 'video' ? figure(media, span, true) : null,
      start: span.start,
      end: span.end,
    };
  });
  const videos = followers.filter((f) => f.kind === 'video');
  const audios = followers.filter((f) => f.kind === 'audio');

  const sync = (force) => {
    const now = clock.currentTime + clockSpan.start;
    for (const f of followers) {
      const local = now - f.start;
      const length = f.end !== null ? f.end - f.start : f.media.duration;
      const inside = local >= 0 && (!Number.isFinite(length) || local <= length);
      if (f.box) f.box.hidden = !inside;
      if (!inside) {
        if (!f.media.paused) f.media.pause();
        continue;
      }
      if (f.media.playbackRate !== clock.playbackRate) f.media.playbackRate = clock.playbackRate;
      if (force || Math.abs(f.media.currentTime - local) > MAX_DRIFT_S) f.media.currentTime = local;
      if (clock.paused) {
        if (!f.media.paused) f.media.pause();
      } else if (f.media.paused) {
        f.media.play().catch(() => {});
      }
    }
  };
  const resync = () => sync(true);
  const follow = () => sync(false);
  // The clock's controls set the volume of every voice.
  const volume = () => {
    for (const a of audios) {
      a.media.volume = clock.volume;
      a.media.muted = clock.muted;
    }
  };
  for (const event of ['play', 'pause', 'seeked', 'ratechange']) clock.addEventListener(event, resync);
  clock.addEventListener('timeupdate', follow);
  clock.addEventListener('volumechange', volume);
  volume();
  const timer = setInterval(follow, RESYNC_MS);

  if (renew) {
    // A ticket lasts ten minutes, and media elements fetch ranges as they go: when a fetch is
    // refused, get a new ticket and carry on from the same place.
    // At most one renewal in RENEW_MIN_MS: a file that fails for another reason (it is gone)
    // must not turn into a loop of tickets.
    let lastRenewal = 0;
    const renewAll = async () => {
      if (Date.now() - lastRenewal < RENEW_MIN_MS) return;
      lastRenewal = Date.now();
      try {
        await renew();
        if (session.closed) return;
        const at = clock.currentTime;
        const playing = !clock.paused;
        clock.src = srcOf(clockSpan.file);
        clock.currentTime = at;
        for (const f of followers) f.media.src = srcOf(f.file);
        if (playing) clock.play().catch(() => {});
        sync(true);
      } catch (err) {
        showError(err);
      }
    };
    clock.addEventListener('error', renewAll);
    for (const f of followers) f.media.addEventListener('error', renewAll);
  }

  player.replaceChildren(
    heading,
    ...notes,
    el('div', { className: 'rec-videos' }, clockBox, videos.map((v) => v.box)),
    clockSpan.kind === 'audio' ? clock : null,
    audios.map((a) => a.media));
  player.hidden = false;
  session.cleanups.push(() => {
    clearInterval(timer);
    for (const media of [clock, ...followers.map((f) => f.media)]) {
      media.pause();
      media.removeAttribute('src');
    }
  });
  // For tests and diagnostics: the player's elements and its sync.
  player.meetPlayer = { audio: clock, clock, videos, audios, sync };
}

async function copy(text, input) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    input?.select();
    document.execCommand?.('copy');
  }
  toast(t('org.copied'));
}

/** Saves `data` (a Blob or a string of CSV) as a file named `name`. */
function download(data, name) {
  const blob = typeof data === 'string' ? new Blob([data], { type: 'text/csv;charset=utf-8' }) : data;
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

async function exportCsv(id) {
  try {
    const res = await request('GET', `/meetings/${id}/attendance.csv`, { raw: true });
    download(await res.blob(), `attendance-${id}.csv`);
  } catch (err) {
    showError(err);
  }
}

// Sites directory (administrators): list and CSV import.
async function sitesView() {
  const sites = await api.get('/sites');
  const admin = account.role === 'admin';
  const rows = sites.map((s) => el('tr', { className: 'site-row', dataset: { siteCode: s.code } },
    el('td', { text: s.code }),
    el('td', { text: s.name }),
    el('td', { text: t(KIND_KEYS[s.kind] || 'org.kindCommune') }),
    el('td', { text: s.parent_code || '' })));
  const file = el('input', { type: 'file', id: 'sites-file', accept: '.csv,text/csv' });
  const importButton = el('button', { type: 'submit', className: 'primary', id: 'sites-import', text: t('org.import') });
  const errors = el('ul', { className: 'csv-errors', id: 'import-errors', hidden: true });
  const form = el('form', { className: 'org-form import-form', noValidate: true },
    el('h2', { text: t('org.importHeading') }),
    el('p', { className: 'note', text: t('org.importHelp') }),
    el('div', { className: 'row' }, file, importButton),
    errors);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const chosen = file.files[0];
    if (!chosen) {
      showInfo('org.chooseFile');
      return;
    }
    importButton.disabled = true;
    errors.hidden = true;
    try {
      const text = await chosen.text();
      const result = await request('POST', '/sites/import', { csv: text });
      go({ name: 'sites' });
      showInfo('org.importDone', { created: result.created, updated: result.updated });
    } catch (err) {
      showError(err);
      if (err instanceof ApiError && err.errors.length) {
        errors.replaceChildren(...err.errors.map((x) => el('li', { dataset: { line: String(x.line) }, text: t('org.csvLine', { line: x.line, message: x.message }) })));
        errors.hidden = false;
      }
    } finally {
      importButton.disabled = false;
    }
  });
  return el('div', { className: 'org-view' },
    el('div', { className: 'view-head' }, el('h1', { text: t('org.sitesHeading') })),
    admin ? form : null,
    sites.length
      ? table(['org.colCode', 'org.colName', 'org.colKind', 'org.colParent'], rows, 'sites-table')
      : el('p', { className: 'note', text: t('org.noSites') }));
}

// Accounts (administrators): one page at a time, searched on the server (a network has
// ~150,000 accounts: the page never holds them all), create, disable.
const ACCOUNTS_PER_PAGE = 50;
/** The pause after a keystroke in the search box before it asks the server. */
const SEARCH_PAUSE_MS = 250;

async function accountsView() {
  const current = view;
  const search = el('input', {
    id: 'account-search', type: 'search', value: current.q ?? '', placeholder: t('org.searchAccounts'), autocomplete: 'off',
    attrs: { 'aria-label': t('org.searchAccounts') },
  });
  const list = el('div', { id: 'accounts-list' });
  const range = el('span', { className: 'note', id: 'accounts-range' });
  const prev = button('org.previousPage', () => reload((current.page ?? 1) - 1), 'secondary small', { id: 'accounts-prev' });
  const next = button('org.nextPage', () => reload((current.page ?? 1) + 1), 'secondary small', { id: 'accounts-next' });
  // Only the answer to the latest request is drawn: answers to earlier searches may come later.
  let latest = 0;
  const load = async (page) => {
    const asked = ++latest;
    const query = new URLSearchParams({ page: String(page), per_page: String(ACCOUNTS_PER_PAGE) });
    if (search.value.trim()) query.set('q', search.value.trim());
    const found = await api.get(`/accounts?${query}`);
    if (asked !== latest || view !== current) return;
    const last = Math.max(1, Math.ceil(found.total / found.per_page));
    // Fewer accounts than before (disabled elsewhere, a narrower search): the last page there is.
    if (!found.accounts.length && page > last) {
      await load(last);
      return;
    }
    // Kept in the view, so that a language switch redraws the same page of the same search.
    current.q = search.value.trim();
    current.page = page;
    list.replaceChildren(found.accounts.length
      ? table(['org.username', 'org.displayName', 'org.colSite', 'org.accountRole', 'org.colStatus', ''], found.accounts.map(accountRow), 'accounts-table')
      : el('p', { className: 'note', id: 'no-accounts', text: t('org.noAccounts') }));
    const from = (page - 1) * found.per_page + 1;
    range.textContent = found.total
      ? t('org.accountsRange', { from, to: from + found.accounts.length - 1, total: found.total })
      : '';
    prev.disabled = page <= 1;
    next.disabled = page >= last;
  };
  const reload = (page) => load(page).catch((err) => {
    if (view === current) showError(err);
  });
  const accountRow = (a) => el('tr', { className: `account-row${a.disabled ? ' disabled' : ''}`, dataset: { username: a.username } },
    el('td', { text: a.username }),
    el('td', { text: a.display_name }),
    el('td', { text: a.site_name ?? '' }),
    el('td', { text: t(ACCOUNT_ROLE_KEYS[a.role] || 'org.accountOrganizer') }),
    el('td', { text: t(a.disabled ? 'org.accountDisabled' : a.pending_activation ? 'org.accountPending' : 'org.accountActive') }),
    el('td', {}, a.id === account.id ? null : button(a.disabled ? 'org.enable' : 'org.disable', async () => {
      try {
        await api.patch(`/accounts/${a.id}`, { disabled: !a.disabled });
        await load(current.page ?? 1);
      } catch (err) {
        showError(err);
      }
    }, 'secondary small')));
  let pause = null;
  search.addEventListener('input', () => {
    clearTimeout(pause);
    pause = setTimeout(() => reload(1), SEARCH_PAUSE_MS);
  });
  const searchForm = el('form', { className: 'row', id: 'account-search-form', noValidate: true, attrs: { role: 'search' } },
    search, prev, range, next);
  searchForm.addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(pause);
    reload(1);
  });
  await load(current.page ?? 1);

  const username = el('input', { id: 'new-username', maxLength: 64, autocomplete: 'off' });
  const displayName = el('input', { id: 'new-display-name', maxLength: 128, autocomplete: 'off' });
  const password = el('input', { id: 'new-password', type: 'password', autocomplete: 'new-password' });
  const role = select(Object.entries(ACCOUNT_ROLE_KEYS), 'organizer', { id: 'new-role' });
  const form = el('form', { className: 'org-form', noValidate: true },
    el('h2', { text: t('org.newAccount') }),
    el('div', { className: 'row' }, field('org.username', username), field('org.displayName', displayName)),
    el('div', { className: 'row' }, field('org.password', password), field('org.accountRole', role)),
    el('button', { type: 'submit', className: 'primary', text: t('org.create') }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { username: username.value.trim(), display_name: displayName.value.trim(), password: password.value, role: role.value };
    if (!body.username || !body.display_name || !body.password) {
      showInfo('org.needAccountFields');
      return;
    }
    try {
      await api.post('/accounts', body);
      go({ name: 'accounts' });
      showInfo('org.accountCreated', { name: body.username });
    } catch (err) {
      showError(err);
    }
  });
  return el('div', { className: 'org-view' },
    el('div', { className: 'view-head' }, el('h1', { text: t('org.accountsHeading') })),
    searchForm,
    list,
    form);
}

// ---- start -----------------------------------------------------------------------------------

initLanguage(new URLSearchParams(location.search).get('lang'));
document.title = t('org.title');
for (const { code, label } of LANGUAGES) $('lang-select').append(new Option(label, code));
$('lang-select').value = language();
$('lang-select').addEventListener('change', (e) => {
  setLanguage(e.target.value);
  document.title = t('org.title');
  $('login-message').hidden = true;
  if (token) go(view);
});

try {
  token = sessionStorage.getItem(TOKEN_KEY) ?? localStorage.getItem(TOKEN_KEY);
} catch {
  token = null;
}
if (token) {
  try {
    account = await api.get('/me');
  } catch {
    token = null;
    account = null;
  }
}
if (account) view = { name: homeView() };
render();
if (!token) $('login-username').focus();
