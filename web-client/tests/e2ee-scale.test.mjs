// The real web client as the presenter of an end-to-end encrypted meeting, the load tester's
// bots as its receiving sites (docs/e2ee.md, "At the size of the national meeting"): the bots
// ask the page for its key, the page wraps it for each of them, they open the page's audio
// with it, and as they keep leaving and being replaced the page makes new keys for those who
// remain. This is the exchange between a browser and the bots, both ways, and it prints what a
// rekey costs the presenter's page (its wrap time per rekey, in Chromium) and whether the page
// kept sending its video meanwhile.
//
// Needs a release `loadtest` (`cargo build --release -p loadtest`; `LOADTEST_BIN` overrides
// the path) beside the server; skipped without one. `MEET_E2EE_SCALE_VIEWERS` (default 100),
// `MEET_E2EE_SCALE_CHURN` (departures a second, default 2) and `MEET_E2EE_SCALE_MEDIA_EVERY`
// (only every Nth bot receives media, the others only take keys; default 1) size it. The page
// is a presenter, who does not see the viewers, as in the national meeting; with
// `MEET_E2EE_SCALE_AS_HOST` it is the host, whose page also lists every viewer.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  api, apiLogin, launchBrowser, openLink, repoRoot, serverFeatures, startServer, waitFor,
} from './harness.mjs';

const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };
const VIEWERS = Number(process.env.MEET_E2EE_SCALE_VIEWERS) || 100;
const CHURN = Number(process.env.MEET_E2EE_SCALE_CHURN) || 2;
const MEDIA_EVERY = Number(process.env.MEET_E2EE_SCALE_MEDIA_EVERY) || 1;
const AS_HOST = !!process.env.MEET_E2EE_SCALE_AS_HOST;
const HOLD_S = 20;
const LOADTEST = process.env.LOADTEST_BIN || path.join(repoRoot, 'target', 'release', 'loadtest');

const features = serverFeatures();
const skip = (!features.adminCli && 'needs a meet-server with accounts and meetings')
  || (!fs.existsSync(LOADTEST) && `needs a release loadtest at ${LOADTEST} (cargo build --release -p loadtest)`);

const hook = (p, fn, ...args) => p.page.evaluate(fn, ...args);
const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
};

/** Runs the load tester to its end; resolves to its exit status and output. */
function loadtest(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(LOADTEST, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => { output += chunk; });
    child.stderr.on('data', (chunk) => { output += chunk; });
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, output }));
  });
}

describe('a browser presenter and bot receivers exchange end-to-end keys at scale', { skip }, () => {
  let server;
  let browser;
  let work;

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'meet-e2ee-scale-'));
    // Every bot connects from 127.0.0.1: no per-address limit on a server under load test,
    // and room for the national meeting's size.
    [server, browser] = await Promise.all([
      startServer({ admin: ADMIN, extraArgs: ['--max-connections-per-ip', '0', '--max-participants-per-room', '6000'] }),
      launchBrowser({ fakeFps: 30 }),
    ]);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test(`the page's key reaches ${VIEWERS} bots, and its rekeys at ${CHURN} departures a second are timed`, { timeout: 400_000 }, async () => {
    const token = await apiLogin(server, ADMIN);
    // A host opens the room; a scheduled meeting whose time has come is open to everyone.
    const start = AS_HOST ? Date.now() + 60 * 60_000 : Date.now() - 60_000;
    // Each bot uses its invitation once: the replacements need theirs too.
    const invitations = VIEWERS + Math.ceil(CHURN * HOLD_S) + 10;
    const created = await api(server, 'POST', '/api/meetings', {
      token,
      json: {
        title: 'National briefing',
        starts_at: start,
        ends_at: start + 3_600_000,
        admission: AS_HOST ? 'host' : 'scheduled',
        confidential: true,
        invitations: [
          { role: 'presenter', name: 'Presenter' },
          ...Array.from({ length: invitations }, (_, i) => ({ role: 'viewer', name: `Site ${i}` })),
        ],
      },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.e2ee, true);
    const hostLink = created.body.invitations.find((i) => i.role === (AS_HOST ? 'host' : 'presenter')).join_path;
    const links = created.body.invitations.filter((i) => i.role === 'viewer').map((i) => i.join_path);
    const tokens = path.join(work, 'links.txt');
    fs.writeFileSync(tokens, `${links.join('\n')}\n`);

    // Chromium's fake camera (made to run at 30 frames a second) and microphone, as a real
    // presenter's.
    const host = await openLink(browser, server, hostLink, { name: 'Admin' });
    await waitFor(() => hook(host, () => window.meetTest.state() === 'joined'), { message: 'the page joins' });
    if (AS_HOST) await hook(host, () => window.meetTest.host.openRoom());
    await waitFor(async () => (await hook(host, () => window.meetTest.sentLayers())).some((l) => l.framesEncoded > 0), {
      message: 'the page sends video',
    });

    const topFrames = async () => Math.max(0, ...(await hook(host, () => window.meetTest.sentLayers())).map((l) => l.framesEncoded ?? 0));
    // The page alone first, for comparison: five seconds of sending (not a timing check).
    const aloneFrom = await topFrames();
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const aloneFps = ((await topFrames()) - aloneFrom) / 5;
    const framesBefore = await topFrames();
    const startedAt = Date.now();
    const url = new URL(server.url);
    const report = path.join(work, 'report.json');
    const run = await loadtest([
      'churn', '--presenters', '0', '--viewers', String(VIEWERS), '--light-viewers', '--e2ee',
      '--churn-rate', String(CHURN), '--duration', String(HOLD_S), '--join-rate', '50', '--media-every', String(MEDIA_EVERY),
      '--url', `wss://${url.host}/ws`, '--ca-cert', path.join(server.dataDir, 'tls', 'cert.pem'),
      '--metrics-token-file', path.join(server.dataDir, 'metrics-token'), '--tokens', tokens,
      '--measure-floor', 'false', '--slo-loss', '100', '--quiet', '--json', report,
    ]);
    const seconds = (Date.now() - startedAt) / 1000;
    const fps = ((await topFrames()) - framesBefore) / seconds;
    const rekeys = await hook(host, () => window.meetTest.e2eeRekeys());
    const result = JSON.parse(fs.readFileSync(report, 'utf8'));

    // The rekeys while the room was full (the last ones follow the bots leaving at the end).
    const full = rekeys.filter((r) => r.recipients >= VIEWERS / 2);
    const ms = full.map((r) => r.ms);
    const lines = [
      `browser ${AS_HOST ? 'host' : 'presenter'}, ${VIEWERS} bot viewers (every ${MEDIA_EVERY} with media), ${CHURN} departures/s for ${HOLD_S} s:`,
      `  the page's rekeys: ${rekeys.length}, ${full.length} for ${Math.min(...full.map((r) => r.recipients))}–${Math.max(...full.map((r) => r.recipients))} recipients, `
        + `make and wrap ms p50 ${quantile(ms, 0.5)?.toFixed(1)} p95 ${quantile(ms, 0.95)?.toFixed(1)} max ${Math.max(...ms).toFixed(1)}`,
      `  the page's top video layer: ${fps.toFixed(1)} frames/s encoded over the ${seconds.toFixed(0)} s of the run (${aloneFps.toFixed(1)} alone before it)`,
      `  bots: join → first key p50 ${result.keys?.first_key_ms?.p50?.toFixed(0)} p95 ${result.keys?.first_key_ms?.p95?.toFixed(0)} ms, `
        + `join → first decrypted frame p50 ${result.keys?.first_decrypt_ms?.p50?.toFixed(0)} p95 ${result.keys?.first_decrypt_ms?.p95?.toFixed(0)} ms, `
        + `${result.frames_decrypted_total} frames decrypted, ${result.keys?.frames_lost_to_rekey} lost to a rekey, ${result.keys?.keys_refused} keys refused`,
      `  server over the hold: ${result.server.key_messages_in_per_s?.toFixed(1)} e2ee_keys in/s, ${result.server.key_messages_out_per_s?.toFixed(1)} e2ee_key out/s `
        + `(${result.server.key_bytes_out_per_s?.toFixed(0)} B/s), ${result.server.cpu_cores?.toFixed(2)} cores`,
    ];
    const askedAgain = result.endpoints.filter((e) => e.key_requests_sent > 1).length;
    lines.push(`  bots that asked again (no key within 3 s): ${askedAgain}`);
    console.log(lines.join('\n'));
    if (process.env.MEET_E2EE_SCALE_VERBOSE) console.log(run.output);

    // Outcomes only: every bot decrypted the page's frames with a key the page wrapped for
    // it, and every departure made the page replace its key for those who remain.
    assert.equal(result.endpoints_failed, 0, `${result.verdict}\n${run.output}`);
    for (const e of result.endpoints.filter((x) => x.role === 'viewer')) {
      assert.ok(e.keys_received > 0 && (e.frames_decrypted > 0 || !e.receives_media), JSON.stringify(e));
      assert.equal(e.keys_refused, 0, JSON.stringify(e));
    }
    assert.ok(full.length > 0, `the page made new keys for those who remained: ${JSON.stringify(rekeys)}`);
  });
});
