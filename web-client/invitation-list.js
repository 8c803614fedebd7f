// A meeting's invitations on the organizer's page, at national scale: ~3,400 sites. They are
// listed in the directory's order (people first, then the central level, then each province
// followed by its communes), filtered by a search, and only the first rows are drawn until
// the organizer asks for all; the whole list goes out as a CSV of links or a printable page.

import { el } from './dom.js';

/** Rows drawn before "show all": enough to scroll, few enough to open the page at once. */
const FIRST_ROWS = 100;

const KIND_ORDER = { central: 1, province: 2, commune: 2 };

/**
 * The invitations in the order people read them, each with its absolute link (null when
 * revoked) and its province (the site itself for a province, its parent for a commune).
 */
export function orderedInvitations(meeting, sites, origin) {
  const byId = new Map(sites.map((s) => [s.id, s]));
  const entries = meeting.invitations.map((inv) => {
    const site = inv.site_id ? byId.get(inv.site_id) : null;
    const province = site?.kind === 'province' ? site : site?.kind === 'commune' ? byId.get(site.parent_id) : null;
    return {
      inv,
      site,
      province,
      link: inv.join_path ? `${origin}${inv.join_path}` : null,
      // People (no site) first, then the central level, then province by province, the
      // province's own site before its communes.
      key: [site ? KIND_ORDER[site.kind] ?? 3 : 0, province?.name ?? '', site?.kind === 'province' ? 0 : 1, inv.name],
    };
  });
  const compare = (a, b) => {
    for (let i = 0; i < a.key.length; i++) {
      const d = typeof a.key[i] === 'number' ? a.key[i] - b.key[i] : a.key[i].localeCompare(b.key[i]);
      if (d) return d;
    }
    return 0;
  };
  return entries.sort(compare);
}

/** RFC 4180 CSV of the invitations: code, name, role, province, link. */
export function linksCsv(entries) {
  const cell = (v) => {
    const text = String(v ?? '');
    // A cell that a spreadsheet would run as a formula is quoted and prefixed.
    const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
    return /[",\r\n]/.test(safe) || safe !== text ? `"${safe.replace(/"/g, '""')}"` : safe;
  };
  const lines = [['code', 'name', 'role', 'province', 'link'].join(',')];
  for (const { inv, province, link } of entries) {
    lines.push([inv.site_code ?? '', inv.name, inv.role, province?.name ?? '', link ?? ''].map(cell).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}

/**
 * The invitations table with its filter.
 * @param {ReturnType<typeof orderedInvitations>} entries
 * @param {object} ui  `t`, `roleKeys`, `button(key, onClick, className, props)`, `copy(link, input)`,
 *   `revoke(inv)` (null when the meeting is cancelled)
 */
export function invitationList(entries, { t, roleKeys, button, copy, revoke }) {
  const filter = el('input', { id: 'invitation-filter', type: 'search', placeholder: t('org.filterInvitations') });
  const body = el('tbody');
  const more = el('div', { className: 'row', id: 'invitations-more' });
  const row = ({ inv, province, link }) => {
    const linkInput = link ? el('input', { className: 'link', readOnly: true, value: link, on: { focus: (e) => e.target.select() } }) : null;
    return el('tr', { className: `invitation${inv.revoked ? ' revoked' : ''}`, dataset: { invitationId: inv.id, role: inv.role, siteCode: inv.site_code || '' } },
      el('td', { text: inv.name }),
      el('td', { className: 'note', text: province && province.code !== inv.site_code ? province.name : '' }),
      el('td', { text: t(roleKeys[inv.role] || 'role.participant') }),
      el('td', { className: 'link-cell' }, linkInput || el('span', { className: 'note', text: t(inv.revoked ? 'org.revoked' : 'org.noLink') })),
      el('td', { className: 'row' },
        link ? button('org.copy', () => copy(link, linkInput), 'secondary small', { dataset: { copy: inv.id } }) : null,
        !inv.revoked && revoke ? button('org.revoke', () => revoke(inv), 'secondary small', { dataset: { revoke: inv.id } }) : null));
  };
  let all = false;
  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = q
      ? entries.filter(({ inv, province }) => [inv.name, inv.site_code, province?.name].some((v) => v?.toLowerCase().includes(q)))
      : entries;
    const drawn = all ? shown : shown.slice(0, FIRST_ROWS);
    body.replaceChildren(...drawn.map(row));
    more.replaceChildren(
      el('span', { className: 'note', id: 'invitations-shown', text: t('org.invitationsShown', { n: drawn.length, total: shown.length }) }),
      drawn.length < shown.length ? button('org.showAll', () => {
        all = true;
        draw();
      }, 'secondary small', { id: 'show-all-invitations' }) : null);
  };
  filter.addEventListener('input', draw);
  draw();
  const head = el('thead', {}, el('tr', {}, ...['org.colName', 'org.colProvince', 'org.colRole', 'org.colLink', ''].map((k) => el('th', { text: k ? t(k) : '' }))));
  return el('div', {},
    el('div', { className: 'row' }, filter),
    el('table', { className: 'org-table invitations-table' }, head, body),
    more);
}

/** A printable page of the links: one table per province, each on its own sheet. */
export function printableLinks(meeting, entries, { t, roleKeys, formatTime }) {
  const groups = new Map();
  for (const e of entries) {
    const key = e.province?.name ?? (e.site ? t('org.groupCentral') : t('org.invitePeople'));
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(e);
  }
  return el('div', { className: 'print-links', id: 'print-links' },
    ...[...groups].map(([name, list]) => el('section', { className: 'print-group' },
      el('h2', { text: `${meeting.title} · ${name}` }),
      el('p', { className: 'note', text: t('org.when', { start: formatTime(meeting.starts_at), end: formatTime(meeting.ends_at) }) }),
      el('table', { className: 'org-table' },
        el('thead', {}, el('tr', {}, ...['org.colCode', 'org.colName', 'org.colRole', 'org.colLink'].map((k) => el('th', { text: t(k) })))),
        el('tbody', {}, ...list.filter(({ link }) => link).map(({ inv, link }) => el('tr', { className: 'print-row' },
          el('td', { text: inv.site_code ?? '' }),
          el('td', { text: inv.name }),
          el('td', { text: t(roleKeys[inv.role] || 'role.participant') }),
          el('td', { className: 'print-link', text: link }))))))));
}
