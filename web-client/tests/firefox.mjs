// Firefox ESR (Debian's `firefox-esr`) for the browser tests: started headless by
// puppeteer-core over WebDriver BiDi (no browser download), and wrapped in the small part of
// Playwright's API that the tests and harness.mjs use (contexts, pages, `fill`, `click`,
// `locator(…).waitFor()`, `evaluate`), so that `join`, `openLink` and `waitUntilReceives` drive
// Firefox pages as they drive Chromium's.
//
// Firefox gathers ICE candidates differently from Chromium, in two ways that matter on a
// closed test network:
// - A page that has not been granted the camera or microphone (the synthetic sources ask for
//   neither) gets only the address of the default route, never loopback.
// - Without a default route it gathers nothing at all.
// So Firefox tests run in a network namespace of their own where the default route is
// loopback itself (`inLoopbackNamespace`): every candidate is then 127.0.0.1, and nothing can
// leave the machine.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import puppeteer from 'puppeteer-core';

export const FIREFOX = process.env.FIREFOX_BIN || '/usr/bin/firefox-esr';

/**
 * The preferences of a test Firefox: fake devices without prompts, loopback and raw host
 * candidates, autoplay, and a mock audio device. Without a sound card Firefox's AudioContext
 * stays `suspended` (so the synthetic tone is never made and received audio never analysed);
 * the mock device runs it, at 48 kHz like WebRTC's audio, so that no resampling sits between
 * the tone and the encoder.
 */
const PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
  'media.autoplay.block-webaudio': false,
  'media.cubeb.force_mock_context': true,
  'media.cubeb.force_sample_rate': 48000,
  // A closed network: no update, telemetry or remote-settings traffic.
  'app.update.enabled': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.enabled': false,
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
};

/** True where this process has no network interface but loopback (see the top of the file). */
export function loopbackOnly() {
  return Object.values(os.networkInterfaces()).flat().every((address) => address.internal);
}

/**
 * Runs the test file `file` again inside a new network namespace whose only interface is
 * loopback and whose default route goes through it (needs `unshare` and `ip`, and the
 * privilege to create namespaces). Resolves to `{ status, output }` of that run.
 */
export function inLoopbackNamespace(file) {
  const script = 'ip link set lo up && ip route add default dev lo src 127.0.0.1 && exec "$0" --test --test-reporter=spec "$1"';
  const run = spawnSync('unshare', ['--net', 'sh', '-c', script, process.execPath, file], {
    encoding: 'utf8',
    // Without NODE_TEST_CONTEXT: under `node --test` it would make the inner run report to this
    // process's runner in its binary protocol instead of running the file.
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_TEST_CONTEXT')), NO_COLOR: '1' },
    maxBuffer: 64 * 1024 * 1024,
  });
  return { status: run.error ? run.error.message : run.status ?? run.signal, output: `${run.stdout ?? ''}${run.stderr ?? ''}` };
}

/** Headless Firefox ESR, as a Playwright-like browser (`newContext`, `close`). */
export async function launchFirefox() {
  if (!fs.existsSync(FIREFOX)) throw new Error(`no Firefox at ${FIREFOX}: install Debian's firefox-esr (.ci/deps does)`);
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    acceptInsecureCerts: true, // the server's certificate is self-signed: tests only
    extraPrefsFirefox: PREFS,
  });
  return {
    name: 'firefox',
    version: () => browser.version(),
    async newContext() {
      const context = await browser.createBrowserContext();
      return {
        async newPage() {
          const page = await context.newPage();
          await page.setViewport({ width: 1280, height: 720 });
          return wrapPage(page);
        },
        close: () => context.close(),
      };
    },
    close: () => browser.close(),
  };
}

/** The Playwright page methods the tests use, on a puppeteer page. */
function wrapPage(page) {
  const locator = (selector, { visible = false } = {}) => ({
    async waitFor({ timeout = 30_000, state = visible ? 'visible' : 'attached' } = {}) {
      await page.waitForSelector(selector, { timeout, visible: state === 'visible', hidden: state === 'hidden' });
    },
    filter: ({ visible: v = false } = {}) => locator(selector, { visible: v }),
    count: async () => (await page.$$(selector)).length,
    isVisible: async () => !!(await page.$(selector))?.isVisible(),
    click: () => page.click(selector),
  });
  return {
    on: (event, handler) => page.on(event, handler),
    goto: (url) => page.goto(url),
    evaluate: (fn, arg) => page.evaluate(fn, arg),
    waitForFunction: (fn, arg, { timeout = 30_000 } = {}) => page.waitForFunction(fn, { timeout }, arg),
    fill: (selector, value) => page.locator(selector).fill(value),
    click: (selector) => page.click(selector),
    locator,
    screenshot: (options) => page.screenshot(options),
  };
}
