// The scheduling form's choice of sites at national scale: a tree of the directory (the central
// site, then each province with its communes) with one-click groups (every site, every
// province, every commune, a province with its communes), a role per group and per site, a
// search, and the count. A national meeting invites ~3,400 sites: nobody ticks them one by one.
//
// Only what is on screen is built: a province's communes are drawn when it is opened, and a
// search shows its first matches. The choice itself is a Map (site id -> role) that the form
// reads when it submits.

import { el } from './dom.js';

/** Most search matches drawn at once; the count says how many more there are. */
const MAX_MATCHES = 200;

/**
 * @param {Array<{id, code, name, kind, parent_id}>} sites  the directory
 * @param {object} ui
 * @param {(key: string, vars?: object) => string} ui.t  texts
 * @param {(value: string, props?: object) => HTMLSelectElement} ui.roleSelect  an invitee role picker
 * @param {Record<string, string>} ui.kindKeys  site kind -> text key
 * @returns {{ element: HTMLElement, chosen: Map<string, string> }}
 */
export function sitePicker(sites, { t, roleSelect, kindKeys }) {
  const chosen = new Map();
  const byId = new Map(sites.map((s) => [s.id, s]));
  // Each province with its communes; sites whose parent is not a province of the directory
  // form a group of their own, as does the central level.
  const provinces = sites.filter((s) => s.kind === 'province').sort(byName);
  const members = new Map(provinces.map((p) => [p.id, [p]]));
  const central = [];
  const others = [];
  for (const s of sites) {
    if (s.kind === 'province') continue;
    if (s.kind === 'central') central.push(s);
    else if (members.has(s.parent_id)) members.get(s.parent_id).push(s);
    else others.push(s);
  }
  const groups = [
    ...(central.length ? [{ key: 'central', label: t('org.groupCentral'), sites: central.sort(byName) }] : []),
    ...provinces.map((p) => ({ key: p.code, label: `${p.name} (${p.code})`, sites: members.get(p.id) })),
    ...(others.length ? [{ key: 'others', label: t('org.groupOthers'), sites: others.sort(byName) }] : []),
  ];

  const defaultRole = roleSelect('participant', { id: 'pick-role', title: t('org.pickRoleHelp') });
  const count = el('span', { className: 'note', id: 'chosen-count', attrs: { 'aria-live': 'polite' } });
  const search = el('input', { id: 'site-search', type: 'search', placeholder: t('org.searchSites') });
  const matches = el('ul', { className: 'site-picker', id: 'site-picker' });
  const more = el('p', { className: 'note', id: 'site-more', hidden: true });
  const tree = el('div', { className: 'site-tree', id: 'site-tree' });

  // The redraws of every drawn row and group, to show the choice after a change: those of the
  // tree stay, those of the search results go with the results.
  const refreshers = new Set();
  const searchRefreshers = new Set();
  const refresh = () => {
    for (const redraw of refreshers) redraw();
    for (const redraw of searchRefreshers) redraw();
    count.textContent = t('org.chosenCount', { n: chosen.size });
  };
  const choose = (list, on, role = defaultRole.value) => {
    for (const s of list) {
      if (on) chosen.set(s.id, chosen.get(s.id) ?? role);
      else chosen.delete(s.id);
    }
    refresh();
  };

  /** One site: its checkbox, name, code and kind, and its role. */
  const siteRow = (s, registry = refreshers) => {
    const box = el('input', { type: 'checkbox', dataset: { siteId: s.id, siteCode: s.code } });
    const role = roleSelect('participant', { dataset: { siteRole: s.code }, attrs: { 'aria-label': t('org.colRole') } });
    const parent = byId.get(s.parent_id);
    const where = [s.code, t(kindKeys[s.kind] || 'org.kindCommune'), parent && s.kind === 'commune' ? parent.name : null];
    const row = el('li', { className: 'site-row-choice', dataset: { siteCode: s.code } },
      el('label', { className: 'site-choice' }, box,
        el('span', { className: 'site-name', text: s.name }),
        el('span', { className: 'note', text: where.filter(Boolean).join(' · ') })),
      role);
    const redraw = () => {
      box.checked = chosen.has(s.id);
      role.disabled = !box.checked;
      if (box.checked) role.value = chosen.get(s.id);
    };
    box.addEventListener('change', () => choose([s], box.checked));
    role.addEventListener('change', () => {
      if (chosen.has(s.id)) chosen.set(s.id, role.value);
    });
    redraw();
    registry.add(redraw);
    return row;
  };

  /** One group (a province with its communes): all, some or none chosen; opened on demand. */
  const groupNode = (g) => {
    const box = el('input', { type: 'checkbox', dataset: { group: g.key }, attrs: { 'aria-label': g.label } });
    const role = roleSelect('participant', { dataset: { groupRole: g.key }, title: t('org.groupRoleHelp'), attrs: { 'aria-label': t('org.colRole') } });
    const tally = el('span', { className: 'note group-tally' });
    const list = el('ul', { className: 'site-picker nested' });
    const node = el('details', { className: 'site-group', dataset: { group: g.key } },
      el('summary', {},
        el('label', { className: 'site-choice', on: { click: (e) => e.stopPropagation() } }, box, el('span', { className: 'site-name', text: g.label })),
        tally, role),
      list);
    const redraw = () => {
      const n = g.sites.reduce((sum, s) => sum + (chosen.has(s.id) ? 1 : 0), 0);
      box.checked = n === g.sites.length;
      box.indeterminate = n > 0 && n < g.sites.length;
      tally.textContent = t('org.groupTally', { n, total: g.sites.length });
    };
    box.addEventListener('change', () => choose(g.sites, box.checked, role.value));
    // The group's role goes to every chosen site of the group, and to those chosen next.
    role.addEventListener('change', () => {
      for (const s of g.sites) if (chosen.has(s.id)) chosen.set(s.id, role.value);
      refresh();
    });
    node.addEventListener('toggle', () => {
      if (node.open && !list.childElementCount) list.append(...g.sites.map((s) => siteRow(s)));
    });
    redraw();
    refreshers.add(redraw);
    return node;
  };

  const drawMatches = () => {
    const q = search.value.trim().toLowerCase();
    tree.hidden = !!q;
    matches.hidden = !q;
    searchRefreshers.clear();
    matches.replaceChildren();
    more.hidden = true;
    if (!q) return;
    const found = sites.filter((s) => s.code.toLowerCase().includes(q) || s.name.toLowerCase().includes(q));
    matches.append(...found.slice(0, MAX_MATCHES).map((s) => siteRow(s, searchRefreshers)));
    if (!found.length) matches.append(el('li', { className: 'note', text: t('org.noSites') }));
    if (found.length > MAX_MATCHES) {
      more.hidden = false;
      more.textContent = t('org.moreMatches', { n: found.length - MAX_MATCHES });
    }
  };
  search.addEventListener('input', drawMatches);

  const ofKind = (kind) => sites.filter((s) => s.kind === kind);
  const quick = (id, key, fn) => el('button', { type: 'button', className: 'secondary small', id, text: t(key), on: { click: fn } });
  tree.append(...groups.map(groupNode));
  if (!sites.length) tree.append(el('p', { className: 'note', text: t('org.noSites') }));
  matches.hidden = true;
  refresh();

  const element = el('fieldset', { className: 'invitees', id: 'site-chooser' },
    el('legend', { text: t('org.inviteSites') }),
    el('div', { className: 'row wrap' },
      quick('pick-all', 'org.pickAll', () => choose(sites, true)),
      quick('pick-provinces', 'org.pickProvinces', () => choose(ofKind('province'), true)),
      quick('pick-communes', 'org.pickCommunes', () => choose(ofKind('commune'), true)),
      quick('pick-none', 'org.pickNone', () => choose(sites, false)),
      el('label', { className: 'inline-field' }, el('span', { text: t('org.pickRole') }), defaultRole)),
    el('div', { className: 'row' }, search, count),
    matches, more, tree);
  return { element, chosen };
}

function byName(a, b) {
  return a.name.localeCompare(b.name) || a.code.localeCompare(b.code);
}
