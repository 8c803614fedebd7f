// The live attendance of a meeting on the organizer's page, at national scale. At the start of
// a national meeting the question is "which communes of which province are still missing":
// the board answers it with present/absent counts per province (the provinces missing most
// first), then the invited sites with the absent ones first, then the people who joined.
// One filter narrows all three; long tables show their first rows and say how many more.

import { el, formatTime } from './dom.js';

/** Rows of a long table drawn at once (the board is redrawn every refresh). */
const FIRST_ROWS = 100;

const QUALITY_KEYS = { good: 'quality.good', fair: 'quality.fair', poor: 'quality.poor' };
const LEAVE_KEYS = { left: 'org.leaveLeft', timed_out: 'org.leaveTimedOut', removed: 'org.leaveRemoved' };

/**
 * @param {object} a  GET /api/meetings/{id}/attendance
 * @param {string} query  the filter (code, name or province; empty: everything)
 * @param {object} ui  `t`, `roleKeys`, `table(headKeys, rows, className)`
 */
export function attendanceBoard(a, query, { t, roleKeys, table }) {
  const q = query.trim().toLowerCase();
  const matches = (...texts) => !q || texts.some((v) => v && String(v).toLowerCase().includes(q));
  const quality = (level) => el('span', { className: 'quality-dot', dataset: { level: level || 'unknown' }, title: t(QUALITY_KEYS[level] || 'quality.unknown') });
  const capped = (rows, id) => [rows.slice(0, FIRST_ROWS), rows.length > FIRST_ROWS
    ? el('p', { className: 'note', id, text: t('org.moreRows', { n: rows.length - FIRST_ROWS }) })
    : null];

  // Provinces whose name or code matches, or that hold a matching missing site.
  const provinces = (a.provinces ?? []).filter((p) => matches(p.name, p.code) || p.missing.some((m) => matches(m.name, m.code)));
  const provinceRows = provinces.map((p) => el('tr', {
    className: `province-row${p.absent ? ' missing' : ''}`,
    dataset: { provinceCode: p.code ?? '', present: String(p.present), absent: String(p.absent), invited: String(p.invited) },
  },
  el('td', { text: p.name ?? t('org.groupCentral') }),
  el('td', { className: 'num', text: String(p.present) }),
  el('td', { className: 'num', text: String(p.absent) }),
  el('td', { className: 'num', text: String(p.invited) }),
  el('td', { className: 'note missing-list', text: p.missing.slice(0, 8).map((m) => m.name).join(', ') + (p.missing.length > 8 ? ` … (+${p.missing.length - 8})` : '') })));

  // Absent sites first: they are the ones to call.
  const sites = a.sites.filter((s) => matches(s.code, s.name, s.province)).sort((x, y) => Number(x.present) - Number(y.present));
  const siteRows = sites.map((s) => el('tr', { className: `attendance-site ${s.present ? 'present' : 'absent'}`, dataset: { siteCode: s.code } },
    el('td', { text: s.code }),
    el('td', { text: s.name }),
    el('td', { text: t(s.present ? 'org.present' : 'org.absent') }),
    el('td', { text: formatTime(s.first_joined_at) }),
    el('td', { text: formatTime(s.last_left_at) }),
    el('td', {}, quality(s.quality))));
  const people = a.rows.filter((r) => matches(r.name));
  const rows = people.map((r) => el('tr', { className: 'attendance-row', dataset: { participantId: String(r.participant_id) } },
    el('td', { text: r.name }),
    el('td', { text: t(roleKeys[r.role] || 'role.participant') }),
    el('td', { text: formatTime(r.joined_at) }),
    el('td', { text: r.left_at ? formatTime(r.left_at) : t('org.stillHere') }),
    el('td', { text: r.leave_reason ? t(LEAVE_KEYS[r.leave_reason] || 'org.leaveLeft') : '' }),
    el('td', {}, quality(r.quality))));

  const present = a.sites.filter((s) => s.present).length;
  const [firstSites, moreSites] = capped(siteRows, 'attendance-sites-more');
  const [firstRows, moreRows] = capped(rows, 'attendance-rows-more');
  return el('div', {},
    el('p', { className: 'note', id: 'attendance-summary', text: t('org.sitesPresent', { present, invited: a.sites.length }) }),
    provinceRows.length
      ? table(['org.colProvince', 'org.colPresentCount', 'org.colAbsentCount', 'org.colInvited', 'org.colMissing'], provinceRows, 'attendance-provinces')
      : null,
    firstSites.length
      ? table(['org.colCode', 'org.colSite', 'org.colPresent', 'org.colFirstJoined', 'org.colLastLeft', 'org.colQuality'], firstSites, 'attendance-sites')
      : null,
    moreSites,
    firstRows.length
      ? table(['org.colName', 'org.colRole', 'org.colJoined', 'org.colLeft', 'org.colReason', 'org.colQuality'], firstRows, 'attendance-rows')
      : el('p', { className: 'note', text: t('org.nobodyYet') }),
    moreRows);
}
