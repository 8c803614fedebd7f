// Small DOM and formatting helpers shared by the meeting page (app.js) and the organizer pages
// (organizer.js), so that both build elements, show notices and write dates the same way.

import { language } from './i18n.js';

export const $ = (id) => document.getElementById(id);

/**
 * Builds an element. Props: `text` (its text), `dataset`, `on` (event listeners by type),
 * `attrs` (attributes), anything else is set as a property; null and undefined props are
 * skipped. Children may be nodes, strings or arrays of them; null, undefined and false are
 * skipped.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'text') node.textContent = v;
    else if (k === 'on') for (const [type, fn] of Object.entries(v)) node.addEventListener(type, fn);
    else if (k === 'attrs') for (const [name, value] of Object.entries(v)) node.setAttribute(name, value);
    else node[k] = v;
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/**
 * A date and time in the page's language: an RFC 3339 string, as the REST API writes times, or
 * milliseconds since the epoch, as the signaling protocol does; '–' when there is none.
 */
export function formatTime(time, dateStyle = 'medium') {
  const ms = typeof time === 'string' ? Date.parse(time) : time;
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '–';
  return new Intl.DateTimeFormat(language(), { dateStyle, timeStyle: 'short' }).format(new Date(ms));
}

/** How long a notice stays on screen. */
const TOAST_MS = 4000;

/** A short notice in the page's `#toasts` region (announced politely to screen readers). */
export function toast(text) {
  const node = el('div', { className: 'toast', text });
  $('toasts').append(node);
  setTimeout(() => node.remove(), TOAST_MS);
}
