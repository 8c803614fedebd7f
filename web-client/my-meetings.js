// "My meetings": what a signed-in site (its meeting room's operator, or one of its officials)
// sees on the organizer's page. The meetings that invite its site, now, upcoming and past, and a
// Join button: the server issues the join link of the site's invitation on the spot, so no link
// has to travel by mail or chat (links remain for guests).

import { el, formatTime } from './dom.js';

/** Account roles that belong to a site and see only their own meetings. */
export const SITE_ROLES = ['official', 'site_operator'];

/**
 * @param {object} mine  GET /api/my/meetings: `{ now, upcoming, past }`
 * @param {object} ui  `t`, `roleKeys`, `button(key, onClick, className, props)`, `join(meeting)`
 */
const HEADINGS = { now: 'org.myNow', upcoming: 'org.myUpcoming', past: 'org.myPast' };

export function myMeetings(mine, { t, roleKeys, button, join }) {
  const section = (key, list, joinable) => el('section', { className: 'org-section', dataset: { when: key } },
    el('h2', { text: t(HEADINGS[key]) }),
    list.length
      ? el('ul', { className: 'my-meetings' }, ...list.map((m) => el('li', { className: 'my-meeting', dataset: { meetingId: m.meeting_id } },
        el('div', {},
          el('strong', { className: 'my-title', text: m.title }),
          el('p', { className: 'note', text: `${t('org.when', { start: formatTime(m.starts_at), end: formatTime(m.ends_at) })} · ${t(roleKeys[m.role] || 'role.participant')}` })),
        joinable ? button('org.myJoin', () => join(m), 'primary', { className: 'primary join-meeting' }) : null)))
      : el('p', { className: 'note', text: t('org.myNone') }));
  return el('div', { className: 'org-view', id: 'my-meetings' },
    el('h1', { text: t('org.myHeading') }),
    section('now', mine.now, true),
    section('upcoming', mine.upcoming, true),
    section('past', mine.past, false));
}
