// Two meet-server nodes of one cluster (ARCHITECTURE.md, "The cluster"), coordinated by a real
// nats-server and sharing one SQLite database, with the web client in headless Chromium.
//
// A meeting's room is held by the node where its first participant joined. A page that opens
// the same meeting's link on the other node is answered `redirect` (docs/protocol.md) and moves
// to the holder, where the two see each other's colour and hear each other's tone (synthetic
// media, as in call.test.mjs); the node it first reached carries none of their media. When the
// holder stops (SIGTERM), the room goes with it: its pages move to the other node and meet
// there again, and a link opened afresh on that node joins them.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  api, apiLogin, closeAll, errorsOf, launchBrowser, openLink, startNats, startServer, waitFor, waitUntilReceives,
} from './harness.mjs';

const RED = [255, 0, 0];
const GREEN = [0, 255, 0];
const BLUE = [0, 0, 255];
const ADMIN = { username: 'admin', displayName: 'Admin', password: 'correct horse battery staple' };

/** A value from a node's Prometheus page (`/metrics`), labels written out in `name`, or null. */
async function metric(server, name) {
  const text = String((await api(server, 'GET', '/../metrics', { token: server.metricsToken })).body);
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ').at(-1)) : null;
}

const origin = (url) => new URL(url).origin;

/** Where `p`'s page is now and its meeting's state (null while it navigates). */
const where = async (p) => ({
  origin: origin(p.page.url()),
  state: await p.page.evaluate(() => window.meetTest?.state()).catch(() => null),
});

describe('a cluster of two nodes', () => {
  let shared;
  let nats;
  let a;
  let b;
  let browser;

  before(async () => {
    shared = fs.mkdtempSync(path.join(os.tmpdir(), 'meet-cluster-test-'));
    const secretFile = path.join(shared, 'cluster-secret');
    fs.writeFileSync(secretFile, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    const databaseUrl = `sqlite://${path.join(shared, 'meet.db')}`;
    const node = (id) => ({
      openRooms: false, // join links only, as in production
      databaseUrl,
      // The security log too, where a node says whom it redirected.
      env: { RUST_LOG: `${process.env.MEET_TEST_LOG || 'warn,signaling=info'},security=info` },
      extraArgs: ['--cluster', nats.url, '--cluster-secret-file', secretFile, '--node-id', id],
    });
    [nats, browser] = await Promise.all([startNats(), launchBrowser()]);
    // One after the other: the first creates the shared database (and the administrator).
    a = await startServer({ ...node('node-a'), admin: ADMIN });
    b = await startServer(node('node-b'));
    await waitFor(async () => (await metric(a, 'meet_cluster_nodes')) === 2 && (await metric(b, 'meet_cluster_nodes')) === 2, {
      timeout: 10_000, message: 'node-a and node-b to see each other',
    });
  }, { timeout: 30_000 });

  after(async () => {
    await browser?.close().catch(() => {});
    await Promise.allSettled([a, b].filter(Boolean).map((s) => s.stop('SIGKILL')));
    await nats?.stop();
    if (shared) fs.rmSync(shared, { recursive: true, force: true });
  }, { timeout: 20_000 });

  test('a page opened on the other node is redirected to the holder; when the holder stops, the room and its pages move', { timeout: 60_000 }, async () => {
    assert.notEqual(origin(a.url), origin(b.url));
    // A meeting open since a minute ago: its participants go straight in.
    const token = await apiLogin(a, ADMIN);
    const start = Date.now() - 60_000;
    const created = await api(a, 'POST', '/api/meetings', {
      token,
      json: {
        title: 'Cluster', starts_at: start, ends_at: start + 3_600_000, admission: 'scheduled',
        invitations: ['Alice', 'Bob', 'Carol'].map((name) => ({ role: 'participant', name })),
      },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const link = (name) => created.body.invitations.find((i) => i.name === name).join_path;

    // Every page's console, kept across its navigations (what it did when its node stopped).
    const consoleOf = new Map();
    const open = async (server, name, colour, tone) => {
      // A page on A that tries to rejoin A once A has stopped: Chromium logs the refusal.
      const aRefused = new RegExp(`WebSocket connection to 'wss://${new URL(a.url).host}/ws' failed`);
      const p = await openLink(browser, server, link(name), { name, colour, tone, expectedErrors: [aRefused] });
      const lines = [];
      consoleOf.set(p, lines);
      p.page.on('console', (m) => lines.push(m.text()));
      return p;
    };
    const joinedAt = (p, server, what) => waitFor(async () => {
      const w = await where(p);
      return w.origin === origin(server.url) && w.state === 'joined' ? w : null;
    }, { message: what, timeout: 15_000 }).catch(async (err) => {
      err.message += `\nnode A ${a.url}, node B ${b.url}; ${p.name}'s page: ${JSON.stringify(await where(p))}, lobby message: ${
        await p.page.locator('#lobby-message').getAttribute('data-key', { timeout: 1000 }).catch(() => null)}, console: ${
        JSON.stringify(consoleOf.get(p)?.slice(-10))}`;
      throw err;
    });

    // Alice opens her link on node A, which then holds the room.
    let alice;
    let bob;
    let carol;
    try {
      alice = await open(a, 'Alice', RED, 660);
      await joinedAt(alice, a, 'Alice joins on node A');
      // Bob opens his on node B: the link verifies there (the same secret, the same database),
      // B answers `redirect`, and the page moves to A with the link and joins there.
      bob = await open(b, 'Bob', GREEN, 440);
      await joinedAt(bob, a, 'Bob to be redirected from node B to node A and join there');
      // B sent it there (its security log says so) ...
      const redirected = b.log().split('\n').filter((l) => l.includes('event="redirected"'));
      assert.equal(redirected.length, 1, b.log());
      assert.ok(redirected[0].includes(`url=${origin(a.url)}`), redirected[0]);
      assert.equal(origin(alice.page.url()), origin(a.url), 'Alice stayed on node A');
      // The token is out of the address bar again on A.
      assert.ok(!bob.page.url().includes('join='), bob.page.url());

      await Promise.all([waitUntilReceives(alice, [bob]), waitUntilReceives(bob, [alice])]);
      // ... saying that B sent it, so that Bob's media stays on B, near him: the meeting is A's
      // (one roster, Bob's socket on A), each node carries one transport, and the media
      // crosses between A and B over their link.
      assert.equal(new URL(bob.page.url()).searchParams.get('media'), 'node-b', bob.page.url());
      assert.equal(await metric(a, 'meet_participants'), 1);
      assert.equal(await metric(b, 'meet_participants'), 1);
      assert.ok(await metric(b, 'meet_links_packets_total{direction="in"}') > 0, 'media crossed to B');
      assert.ok(await metric(a, 'meet_links_packets_total{direction="in"}') > 0, 'media crossed to A');
      assert.deepEqual(errorsOf([alice, bob]), []);

      // A stops (SIGTERM): it ends by itself, deleting its lease and its room record on the way.
      const ended = await a.stop('SIGTERM');
      assert.deepEqual(ended, { code: 0, signal: null }, `node-a's end: ${JSON.stringify(ended)}`);
      // Both pages were told `server_stopping`, tried to rejoin A (a join A refused while it
      // stopped is tried again, not the end), then moved to B, the other node the cluster
      // named, with their links: the room is B's now and they meet there.
      await Promise.all([
        joinedAt(alice, b, "Alice's page to move from the stopped node A to node B and rejoin there"),
        joinedAt(bob, b, "Bob's page to move from the stopped node A to node B and rejoin there"),
      ]);
      for (const p of [alice, bob]) {
        const lines = consoleOf.get(p);
        assert.ok(lines.some((l) => /connection lost \(socket, server said server_stopping\)/.test(l)), `${p.name}: ${JSON.stringify(lines)}`);
        assert.ok(lines.includes(`this node does not answer; moving to ${origin(b.url)}`), `${p.name}: ${JSON.stringify(lines)}`);
      }
      await Promise.all([waitUntilReceives(alice, [bob]), waitUntilReceives(bob, [alice])]);

      // A page opened afresh on B joins there too, without a redirect, and the three meet.
      carol = await open(b, 'Carol', BLUE, 880);
      await joinedAt(carol, b, 'Carol joins on node B');
      const all = [alice, bob, carol];
      await Promise.all(all.map((me) => waitUntilReceives(me, all.filter((p) => p !== me))));
      // Bob's transport that B carried for A ended when A left the cluster: three remain.
      await waitFor(async () => (await metric(b, 'meet_participants')) === 3, {
        message: "B to carry the three pages' transports only",
        timeout: 10_000,
      });
      assert.equal(await metric(b, 'meet_cluster_nodes'), 1);
      assert.deepEqual(errorsOf(all), []);
    } finally {
      await closeAll([alice, bob, carol].filter(Boolean));
    }
  });
});
