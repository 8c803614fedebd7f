// What a page may do on a production server: no test hooks, and a Content-Security-Policy
// that keeps scripts, styles and connections to this server. A link such as
// `https://HOST/?test=1&ws=wss://OTHER/ws#join=TOKEN` once made the page send its join token
// to OTHER through the test hooks.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { closeAll, errorsOf, launchBrowser, openPage, startServer } from './harness.mjs';

describe('a production server in Chromium', () => {
  let server;
  let browser;

  before(async () => {
    [server, browser] = await Promise.all([startServer({ testHooks: false }), launchBrowser()]);
  }, { timeout: 60_000 });

  after(async () => {
    await browser?.close();
    await server?.stop();
  }, { timeout: 30_000 });

  test('asking for the test hooks gets none, and no page can connect elsewhere', { timeout: 60_000 }, async () => {
    const pages = [];
    try {
      // The page asks for the hooks; the server does not serve them (a 404 in the console,
      // and the page's own warning), and the page still works.
      const p = await openPage(browser, `${server.url}?test=1&synthetic=1&ws=${encodeURIComponent('wss://127.0.0.1:9/ws')}#join=SECRET`, {
        label: 'production',
        expectedErrors: [/Failed to load resource: the server responded with a status of 404/, /Failed to fetch dynamically imported module/],
      });
      pages.push(p);
      assert.equal(await p.page.evaluate(() => typeof window.meetTest), 'undefined');
      const hooks = await p.page.evaluate(async () => (await fetch('/testhooks.js')).status);
      assert.equal(hooks, 404);

      // A script (an injected one, say) that tries to reach another host is stopped by the
      // policy before any byte leaves.
      const blocked = await p.page.evaluate(() => new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', (e) => resolve(e.effectiveDirective), { once: true });
        try {
          const ws = new WebSocket('wss://127.0.0.1:9/ws');
          ws.onopen = () => resolve('opened');
        } catch (err) {
          resolve(`threw ${err.name}`);
        }
        setTimeout(() => resolve('no violation reported'), 5000);
      }));
      assert.ok(blocked === 'connect-src' || blocked === 'threw SecurityError', blocked);
      const inline = await p.page.evaluate(() => new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', (e) => resolve(e.effectiveDirective), { once: true });
        const script = document.createElement('script');
        script.textContent = 'window.injected = true';
        document.body.append(script);
        setTimeout(() => resolve(window.injected ? 'ran' : 'no violation reported'), 2000);
      }));
      assert.equal(inline, 'script-src-elem');
      assert.deepEqual(errorsOf(pages).filter((e) => !/Content Security Policy|Refused to/.test(e)), []);
    } finally {
      await closeAll(pages);
    }
  });
});
