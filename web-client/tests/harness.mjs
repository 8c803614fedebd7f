// Shared pieces of the browser tests: the real server binary, headless Chromium with the
// flags from shared/guide/browser-testing.md, pages that join with synthetic media, and
// polling helpers (no fixed sleeps: every wait is for a condition).

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
export const artifacts = path.join(here, 'artifacts');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/**
 * How long a server may take to print its "server started" line (it takes ~0.3 s, on a loaded
 * machine too): past that the test fails rather than waiting for its own timeout.
 * `MEET_TEST_SERVER_START_MS` overrides it.
 */
const SERVER_START_MS = Number(process.env.MEET_TEST_SERVER_START_MS) || 10_000;

/** How long `meet-server --help` and `meet-server admin create` may take (both take ~0.2 s). */
const SERVER_COMMAND_MS = 10_000;

const isExecutable = (file) => {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
};

/**
 * The server binary under test: `MEET_SERVER_BIN` (a path) when set, else
 * `$CARGO_TARGET_DIR/debug/meet-server`, else this checkout's `target/debug/meet-server`.
 * Where there is none the tests fail at once, saying what to build or set: the harness does
 * not build it (a build inside a test run takes minutes, and would race other builds of the
 * same target directory). A `MEET_SERVER_BIN` naming nothing executable is an error too,
 * rather than a fall back on some other binary.
 */
let serverBin = null;
export function serverBinary() {
  if (serverBin) return serverBin;
  const build = 'cargo build -p signaling --bin meet-server';
  const explicit = process.env.MEET_SERVER_BIN;
  if (explicit) {
    const bin = path.resolve(explicit);
    if (!isExecutable(bin)) {
      throw new Error(`MEET_SERVER_BIN=${explicit}: no executable file there. Set it to a meet-server binary `
        + `(\`${build}\` makes target/debug/meet-server), or unset it to use the cargo target directory`);
    }
    serverBin = bin;
    return bin;
  }
  const tried = [];
  if (process.env.CARGO_TARGET_DIR) tried.push(path.join(path.resolve(process.env.CARGO_TARGET_DIR), 'debug', 'meet-server'));
  tried.push(path.join(repoRoot, 'target', 'debug', 'meet-server'));
  serverBin = tried.find(isExecutable) ?? null;
  if (!serverBin) {
    throw new Error(`no meet-server binary (looked for ${tried.join(', ')}): build it with \`${build}\``
      + ' (it goes to $CARGO_TARGET_DIR when that is set), or set MEET_SERVER_BIN to the binary');
  }
  return serverBin;
}

/**
 * The environment of the server processes: this process's, less every `MEET_…` variable.
 * Each server option is also a `MEET_…` variable, and one left in a developer's shell
 * (`MEET_CONFIG`, `MEET_DATABASE_URL`, `MEET_LOG_FORMAT=json`, which hides the line the
 * harness waits for) must not change the server a test starts.
 */
function serverEnv(extra = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('MEET_')));
  return { ...env, NO_COLOR: '1', ...extra };
}

/**
 * How child processes are started so that they die with this one, even when it is killed
 * (SIGKILL leaves no chance to clean up): through `setpriv --pdeathsig KILL`, which execs the
 * program with the parent-death signal set. Without setpriv, the exit handlers below still
 * kill them when this process exits normally or on SIGINT/SIGTERM/SIGHUP.
 */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find(isExecutable) ?? null;
const dyingWithUs = (program, args) => (SETPRIV ? [SETPRIV, ['--pdeathsig', 'KILL', '--', program, ...args]] : [program, args]);

/**
 * Chromium through `setpriv` (see above): Playwright takes one executable, so a two-line
 * script, written once per process into a temporary directory removed on exit.
 */
let chromiumLauncher = null;
function chromiumExecutable() {
  if (!SETPRIV) return CHROMIUM;
  if (chromiumLauncher) return chromiumLauncher;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meet-browser-launcher-'));
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const quote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;
  chromiumLauncher = path.join(dir, 'chromium');
  fs.writeFileSync(chromiumLauncher, `#!/bin/sh\nexec ${quote(SETPRIV)} --pdeathsig KILL -- ${quote(CHROMIUM)} "$@"\n`, { mode: 0o755 });
  return chromiumLauncher;
}

/**
 * Every server and browser this process started and has not stopped, and the browser launches
 * under way. A test whose setup fails half-way (the server does not start while the browser
 * launch beside it succeeds) leaves the browser to nobody: the hook below closes whatever is
 * left when the file's tests end, so that the process exits instead of waiting on it.
 */
const servers = new Set();
const browsers = new Set();
const launches = new Set();

after(async () => {
  await Promise.allSettled([...launches]);
  await Promise.allSettled([...browsers].map((b) => b.close()));
  await Promise.allSettled([...servers].map((s) => s.stop('SIGKILL')));
});

/** Kills a process started with `detached: true` and everything it started (its process group). */
function killGroup(child) {
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

/**
 * What this server binary supports, from its `--help`: `openRooms` (the `--open-rooms` flag of
 * protocol 2) and `adminCli` (the `admin create` subcommand). A binary without `--open-rooms`
 * predates protocol 2: pages then join with `?protocol=1` (see `openPage`). A binary whose
 * `--help` fails is no meet-server: the tests fail at once.
 */
let features = null;
export function serverFeatures() {
  if (features) return features;
  const bin = serverBinary();
  const help = spawnSync(bin, ['--help'], {
    encoding: 'utf8', env: serverEnv(), timeout: SERVER_COMMAND_MS, killSignal: 'SIGKILL',
  });
  const text = `${help.stdout || ''}${help.stderr || ''}`;
  if (help.error || help.status !== 0) {
    const why = help.error ? help.error.message : `exit status ${help.status ?? help.signal}`;
    throw new Error(`\`${bin} --help\` failed (${why}): not a meet-server binary? `
      + `Set MEET_SERVER_BIN to one, or build target/debug/meet-server.\n${text}`);
  }
  features = {
    openRooms: text.includes('--open-rooms'),
    adminCli: /^\s+admin\b/m.test(text),
    recordings: text.includes('--recordings-dir'),
    testHooks: text.includes('--test-hooks'),
    mediaWorkers: text.includes('--media-workers'),
  };
  return features;
}

/** Origins of servers that speak protocol 1 (pages opened there get `protocol=1`). */
const legacyOrigins = new Set();

/**
 * Runs one `meet-server` command to its end (at most `SERVER_COMMAND_MS`, then it and whatever
 * it started are killed); resolves to `{ status, output }`.
 */
function runServerCommand(args, env) {
  const [program, argv] = dyingWithUs(serverBinary(), args);
  const child = spawn(program, argv, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: serverEnv(env) });
  let output = '';
  child.stdout.on('data', (chunk) => { output += chunk; });
  child.stderr.on('data', (chunk) => { output += chunk; });
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      killGroup(child);
      resolve({ status: `no end within ${SERVER_COMMAND_MS} ms`, output });
    }, SERVER_COMMAND_MS);
    const done = (status) => {
      clearTimeout(timer);
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({ status, output });
    };
    child.once('error', (err) => done(err.message));
    // `close`, not `exit`: all its output has been read then.
    child.once('close', (code, signal) => done(signal ?? code));
  });
}

/**
 * Creates an administrator account in `dataDir` before the server starts, with the CLI:
 * `meet-server admin create --username … --display-name … --role admin --password-env …`.
 */
export async function createAdmin(dataDir, { username = 'admin', displayName = 'Admin', password }, { databaseUrl = null } = {}) {
  const { status, output } = await runServerCommand([
    'admin', 'create',
    '--username', username,
    '--display-name', displayName,
    '--role', 'admin',
    '--password-env', 'MEET_ADMIN_PASSWORD',
    '--data-dir', dataDir,
    ...(databaseUrl ? ['--database-url', databaseUrl] : []),
  ], { MEET_ADMIN_PASSWORD: password });
  if (status !== 0) throw new Error(`admin create failed (${status}):\n${output}`);
  return { username, displayName, password };
}

/**
 * Starts `meet-server` on loopback with an ephemeral HTTPS port (read back from its log) and
 * an ephemeral UDP port, serving this checkout's web-client/.
 *
 * `openRooms` (default true): pass `--open-rooms`, so that tokenless joins (room + name) work,
 * where the binary knows the flag. `admin: { username, displayName, password }` creates that
 * administrator first (needs the `admin create` CLI). `bandwidthEstimation: false` passes
 * `--no-bandwidth-estimation`: each video then gets the layer its tile asks for.
 * `fastStart: false` passes `--no-fast-start`: a new video subscription then waits for the
 * publisher's next keyframe instead of starting from the packets since its last one.
 * `databaseUrl`: `--database-url` (for `admin` too) instead of the data directory's own
 * database, e.g. one SQLite file that the nodes of a cluster share. `extraArgs` go last on the
 * command line; `env` adds to the server's environment (which has no `MEET_…` variables).
 */
export async function startServer({
  openRooms = true, admin = null, bandwidthEstimation = true, fastStart = true, testHooks: wantHooks = true, extraArgs = [],
  databaseUrl = null, env = {},
} = {}) {
  const { openRooms: knowsOpenRooms, testHooks, mediaWorkers } = serverFeatures();
  const bin = serverBinary();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'meet-browser-test-'));
  const createdAdmin = admin ? await createAdmin(dataDir, admin, { databaseUrl }).catch((err) => {
    fs.rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }) : null;
  const [program, args] = dyingWithUs(bin, [
    '--http-addr', '127.0.0.1:0',
    '--media-addr', '127.0.0.1:0',
    '--data-dir', dataDir,
    ...(databaseUrl ? ['--database-url', databaseUrl] : []),
    // Absolute: the server's default is `web-client` relative to its working directory.
    '--web-client-dir', path.join(repoRoot, 'web-client'),
    ...(openRooms && knowsOpenRooms ? ['--open-rooms'] : []),
    // The pages' test hooks (synthetic media, introspection) exist only in test mode.
    ...(testHooks && wantHooks ? ['--test-hooks'] : []),
    // Two media workers whatever the machine: the pages' participants are spread over them
    // and the rooms mirrored between them, as on a production server.
    ...(mediaWorkers ? ['--media-workers', '2'] : []),
    ...(bandwidthEstimation ? [] : ['--no-bandwidth-estimation']),
    ...(fastStart ? [] : ['--no-fast-start']),
    ...extraArgs,
  ]);
  // In its own process group, so that a kill reaches whatever it started too (a wrapper
  // script's children would otherwise keep its output pipes, and this process, alive).
  const child = spawn(program, args, {
    cwd: repoRoot,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: serverEnv({ RUST_LOG: process.env.MEET_TEST_LOG || 'warn,signaling=info', ...env }),
  });
  // Never leave a server behind, whatever happens to this process.
  const killOnExit = () => killGroup(child);
  process.once('exit', killOnExit);
  const exited = new Promise((resolve) => {
    child.once('exit', resolve);
    // A failed spawn (not executable after all) emits `error` and may never emit `exit`.
    child.once('error', resolve);
  });
  let cleaned = false;
  const cleanUp = () => {
    if (cleaned) return;
    cleaned = true;
    servers.delete(handle);
    process.removeListener('exit', killOnExit);
    child.stdout.destroy();
    child.stderr.destroy();
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  let log = '';
  const handle = {
    url: null,
    /** A protocol-1 server (no roles, tokens or organizer API). */
    legacy: !knowsOpenRooms,
    admin: createdAdmin,
    /** The server's data directory (its database and `recordings/`). */
    dataDir,
    /** The bearer token of its `/metrics` (kept in the data directory). */
    metricsToken: null,
    log: () => log,
    /**
     * Stops it with `signal` (SIGKILL after 5 s), and removes its data directory. Resolves to
     * how it ended: `{ code, signal }` (`code` 0: it stopped by itself).
     */
    async stop(signal = 'SIGINT') {
      if (child.exitCode === null && child.signalCode === null) {
        if (signal === 'SIGKILL') killGroup(child);
        else child.kill(signal);
        const timer = setTimeout(() => killGroup(child), 5000);
        await exited;
        clearTimeout(timer);
      }
      cleanUp();
      return { code: child.exitCode, signal: child.signalCode };
    },
  };
  servers.add(handle);
  try {
    handle.url = await new Promise((resolve, reject) => {
      const fail = (why) => reject(new Error(`meet-server did not start (${bin}): ${why}\n${log}`));
      const timer = setTimeout(() => fail(`no "server started" line within ${SERVER_START_MS} ms`), SERVER_START_MS);
      let started = false;
      // These listeners keep the whole log; the address is looked for only until it is found.
      const onData = (chunk) => {
        log += chunk;
        if (started) return;
        const match = /server started http_addr=(127\.0\.0\.1:\d+)/.exec(log.replace(/\x1b\[[0-9;]*m/g, ''));
        if (match) {
          started = true;
          clearTimeout(timer);
          resolve(`https://${match[1]}/`);
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.once('error', (err) => {
        clearTimeout(timer);
        fail(err.message);
      });
      child.once('exit', (code, signal) => {
        if (started) return;
        clearTimeout(timer);
        // Its last words (why it stopped) may still be in the pipes: read them first, unless
        // something it started keeps them open.
        const closed = new Promise((resolve) => child.once('close', resolve));
        Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 500))])
          .then(() => fail(`it exited (${signal ?? `status ${code}`})`));
      });
    });
  } catch (err) {
    await handle.stop('SIGKILL');
    throw err;
  }
  // For diagnosis: the server's whole log, written when the test process ends.
  const keepLog = process.env.MEET_TEST_SERVER_LOG;
  if (keepLog) process.once('exit', () => fs.writeFileSync(`${keepLog}.${child.pid}`, log));
  if (handle.legacy) legacyOrigins.add(new URL(handle.url).origin);
  try {
    handle.metricsToken = fs.readFileSync(path.join(dataDir, 'metrics-token'), 'utf8').trim();
  } catch {
    // A server without metrics.
  }
  return handle;
}

/** A TCP port on loopback that the kernel just handed out and took back (free, most likely). */
function freePort() {
  return new Promise((resolve, reject) => {
    const listener = net.createServer();
    listener.once('error', reject);
    listener.listen(0, '127.0.0.1', () => {
      const { port } = listener.address();
      listener.close(() => resolve(port));
    });
  });
}

/**
 * Starts Debian's `nats-server -js` (JetStream, which a cluster of meet-servers needs) on a
 * free loopback port with its storage in a temporary directory, and waits until it accepts
 * connections. `NATS_SERVER_BIN` overrides the binary. The handle's `url` is `nats://…`;
 * `stop()` kills it and removes its directory (and the hook above does, if the test does not).
 */
export async function startNats() {
  const bin = process.env.NATS_SERVER_BIN || ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find(isExecutable);
  if (!bin || !isExecutable(bin)) {
    throw new Error('nats-server is not installed: `apt-get install nats-server` (.ci/deps does), or set NATS_SERVER_BIN');
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meet-nats-'));
  const port = await freePort();
  const [program, args] = dyingWithUs(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir]);
  const child = spawn(program, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (chunk) => { log += chunk; });
  child.stderr.on('data', (chunk) => { log += chunk; });
  const killOnExit = () => killGroup(child);
  process.once('exit', killOnExit);
  const exited = new Promise((resolve) => {
    child.once('exit', resolve);
    child.once('error', resolve);
  });
  const handle = {
    url: `nats://127.0.0.1:${port}`,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        killGroup(child);
        await exited;
      }
      servers.delete(handle);
      process.removeListener('exit', killOnExit);
      child.stdout.destroy();
      child.stderr.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  servers.add(handle);
  const listening = () => new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
  try {
    await waitFor(async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`it exited (${child.signalCode ?? `status ${child.exitCode}`})`);
      return listening();
    }, { timeout: SERVER_START_MS, interval: 50, message: `nats-server on port ${port}` });
  } catch (err) {
    await handle.stop();
    err.message += `\n${log}`;
    throw err;
  }
  return handle;
}

/**
 * Headless Chromium as browser-testing.md says. `fakeUi: false` leaves out
 * --use-fake-ui-for-media-stream, so camera and microphone requests are denied.
 * Playwright gives every launch a fresh temporary --user-data-dir.
 */
export async function launchBrowser({ fakeUi = true, fakeFps = null } = {}) {
  const args = [
    '--headless=new', '--no-sandbox', '--disable-gpu',
    // `fakeFps`: the fake camera's frame rate (Chromium's default is 20).
    fakeFps ? `--use-fake-device-for-media-stream=fps=${fakeFps}` : '--use-fake-device-for-media-stream',
    ...(fakeUi ? ['--use-fake-ui-for-media-stream'] : []),
    '--autoplay-policy=no-user-gesture-required',
    '--allow-loopback-in-peer-connection',
    '--ignore-certificate-errors', // the server's certificate is self-signed: tests only
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--no-first-run', '--disable-quic', '--disable-default-apps', '--disable-extensions',
  ];
  const launch = chromium.launch({ executablePath: chromiumExecutable(), ignoreDefaultArgs: ['--headless'], args })
    .then((browser) => {
      browsers.add(browser);
      browser.once('disconnected', () => browsers.delete(browser));
      return browser;
    });
  launches.add(launch);
  try {
    return await launch;
  } finally {
    launches.delete(launch);
  }
}

/**
 * A page in its own browser context (own storage, like another computer), with every
 * console error and page error collected. `expectedErrors` are patterns of console errors
 * the test provokes on purpose.
 */
export async function openPage(browser, url, { expectedErrors = [], label = '', waitForJoinButton = true } = {}) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (message) => {
    if (process.env.MEET_TEST_CONSOLE) process.stderr.write(`${new Date().toISOString()} [${label}] ${message.type()}: ${message.text()}\n`);
    if (message.type() !== 'error') return;
    const text = message.text();
    if (expectedErrors.some((pattern) => pattern.test(text))) return;
    const where = message.location()?.url;
    errors.push(`${label} console: ${text}${where ? ` (${where})` : ''}`);
  });
  page.on('pageerror', (error) => errors.push(`${label} page error: ${error.message}`));
  await page.goto(withProtocol(url));
  if (waitForJoinButton) {
    // The join button is enabled once the client's script has started.
    await page.locator('#join-button:not([disabled])').waitFor({ timeout: 15_000 });
  }
  return { page, context, errors, label };
}

/** On a protocol-1 server, the client is told to speak protocol 1 (unless the test chose). */
function withProtocol(url) {
  const u = new URL(url);
  if (legacyOrigins.has(u.origin) && !u.searchParams.has('protocol') && u.pathname.endsWith('/')) {
    u.searchParams.set('protocol', '1');
  }
  return u.toString();
}

/**
 * Opens a join link (`join_path` from the API, `/#join=<token>`), with synthetic media when
 * `colour` is given. The page joins by itself; it is not waited for (it may wait in the lobby).
 */
export async function openLink(browser, server, joinPath, { name, colour, tone, params = {}, expectedErrors = [] } = {}) {
  const query = new URLSearchParams(params);
  if (colour) {
    query.set('synthetic', '1');
    query.set('color', colour.join(','));
    query.set('tone', String(tone));
  } else if (!query.has('synthetic')) {
    query.set('test', '1');
  }
  const hash = joinPath.slice(joinPath.indexOf('#'));
  const p = await openPage(browser, `${server.url}?${query}${hash}`, { label: name, expectedErrors, waitForJoinButton: false });
  await p.page.waitForFunction(() => !!window.meetTest, null, { timeout: 15_000 });
  return { ...p, name, colour, tone };
}

/**
 * One REST request to the server's API (self-signed certificate accepted). Resolves to
 * `{ status, body }` (body parsed as JSON when it is JSON).
 */
export function api(server, method, apiPath, { token, json, csv } = {}) {
  const url = new URL(apiPath.replace(/^\/?(api\/)?/, '/api/'), server.url);
  const headers = {};
  let payload;
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  } else if (csv !== undefined) {
    headers['Content-Type'] = 'text/csv';
    payload = csv;
  }
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, headers, rejectUnauthorized: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => {
        let body = text;
        try {
          body = text ? JSON.parse(text) : null;
        } catch {
          // Not JSON (the CSV export).
        }
        resolve({ status: res.statusCode, body });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * Signs `page` (on organizer.html) in as `account`; with `meetingId`, then opens that meeting's
 * page, where its recordings are.
 */
export async function signInOrganizer(page, account, meetingId = null) {
  await page.fill('#login-username', account.username);
  await page.fill('#login-password', account.password);
  await page.click('#login-button');
  if (meetingId) await page.locator(`.meeting-row[data-meeting-id="${meetingId}"]`).click();
}

/** Signs in through the API; returns the bearer token. */
export async function apiLogin(server, { username, password }) {
  const res = await api(server, 'POST', '/api/login', { json: { username, password } });
  if (res.status !== 200) throw new Error(`login failed: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.token;
}

/**
 * Opens the client with synthetic media (one colour, one tone) and joins `room` as `name`.
 * `camera: false` turns the camera off in the lobby first (the page then publishes only its
 * microphone, which saves encoder time where a test does not look at its video).
 */
export async function join(browser, server, { room, name, colour, tone, params = {}, camera = true }) {
  const query = new URLSearchParams({ room, ...params });
  if (colour) {
    query.set('synthetic', '1');
    query.set('color', colour.join(','));
    query.set('tone', String(tone));
  } else {
    query.set('test', '1');
  }
  const p = await openPage(browser, `${server.url}?${query}`, { label: name });
  if (!camera) {
    // The preview's camera must be there before the button can turn it off.
    await waitFor(() => p.page.evaluate(() => window.meetTest.localTracks().includes('camera')), { message: `${name}'s preview` });
    await p.page.click('#lobby-cam');
    await p.page.locator('#lobby-cam.off').waitFor();
  }
  await p.page.fill('#name-input', name);
  await p.page.click('#join-button');
  await waitFor(() => p.page.evaluate(() => window.meetTest.state() === 'joined'), {
    message: `${name} joins ${room}`,
  });
  return { ...p, name, colour, tone };
}

/** Polls `check` (sync or async) until it returns a truthy value; returns that value. */
export async function waitFor(check, { timeout = 25_000, interval = 200, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out waiting for ${message}; last: ${detail}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

export const probe = (p) => p.page.evaluate(() => window.meetTest.probe());

/** Within 48 per channel: colours survive VP8 and YUV conversion approximately. */
export function sameColour(seen, expected, tolerance = 48) {
  return Array.isArray(seen) && seen.every((v, i) => Math.abs(v - expected[i]) <= tolerance);
}

/** The tone is audible (above -60 dB) and within ±20 Hz. */
export function hears(tone, expectedHz) {
  return !!tone && tone.db > -60 && Math.abs(tone.hz - expectedHz) <= 20;
}

/** No tone near `hz` stands out above the silence floor. */
export function silent(tone, hz) {
  return !tone || tone.db < -80 || Math.abs(tone.hz - hz) > 20;
}

/**
 * Waits until `receiver` sees and hears each of `senders` (by name), returning its probe.
 */
export async function waitUntilReceives(receiver, senders) {
  return waitFor(async () => {
    const result = await probe(receiver);
    const ok = senders.every((s) => {
      const remote = result.remotes.find((r) => r.name === s.name);
      return remote && remote.tileName === s.name
        && sameColour(remote.colour, s.colour) && hears(remote.tone, s.tone);
    });
    return ok ? result : null;
  }, { message: `${receiver.name} to see and hear ${senders.map((s) => s.name).join(', ')}` })
    .catch(async (err) => {
      const result = await probe(receiver).catch(() => null);
      err.message += `\nprobe: ${JSON.stringify(result?.remotes?.map((r) => ({
        name: r.name, colour: r.colour, tone: r.tone, video: r.videoStats?.framesDecoded,
      })))}`;
      // Where the sound stops when it does: the tile's player, the decoder's output, and the
      // frames the page decrypted.
      const audio = await receiver.page.evaluate(audioDiagnostics).catch((e) => String(e));
      err.message += `\naudio: ${JSON.stringify(audio)}`;
      for (const sender of senders.filter((x) => x.page)) {
        const sent = await sender.page.evaluate(sentAudioDiagnostics).catch((e) => String(e));
        err.message += `\n${sender.name} sends: ${JSON.stringify(sent)}`;
      }
      throw err;
    });
}

/** Runs in the page: each tile's audio player, the inbound audio streams, E2EE counts. */
async function audioDiagnostics() {
  const players = [...document.querySelectorAll('.tile')].map((tile) => {
    const a = tile.querySelector('audio');
    const track = a?.srcObject?.getAudioTracks()[0];
    return {
      tile: tile.dataset.key,
      paused: a?.paused,
      readyState: a?.readyState,
      track: track ? { id: track.id, muted: track.muted, state: track.readyState } : null,
    };
  });
  const inbound = [];
  const pc = window.meetTest.pc();
  const stats = await pc?.getStats();
  stats?.forEach((r) => {
    if (r.type !== 'inbound-rtp' || r.kind !== 'audio') return;
    const codec = r.codecId ? stats.get(r.codecId) : null;
    inbound.push({
      mid: r.mid,
      ssrc: r.ssrc,
      codec: codec ? `${codec.payloadType} ${codec.mimeType} ${codec.sdpFmtpLine ?? ''}` : null,
      track: r.trackIdentifier,
      packets: r.packetsReceived,
      samples: r.totalSamplesReceived,
      concealed: r.concealedSamples,
      level: r.audioLevel,
      discarded: r.packetsDiscarded,
      lost: r.packetsLost,
      emitted: r.jitterBufferEmittedCount,
      bufferMs: r.jitterBufferEmittedCount ? Math.round((1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount) : null,
      targetMs: r.jitterBufferEmittedCount ? Math.round((1000 * r.jitterBufferTargetDelay) / r.jitterBufferEmittedCount) : null,
      lastPacketAgoMs: r.lastPacketReceivedTimestamp ? Math.round(r.timestamp - r.lastPacketReceivedTimestamp) : null,
      silentConcealed: r.silentConcealedSamples,
      concealmentEvents: r.concealmentEvents,
      inserted: r.insertedSamplesForDeceleration,
      removed: r.removedSamplesForAcceleration,
      energy: r.totalAudioEnergy,
      fec: r.fecPacketsReceived,
    });
  });
  const e2ee = window.meetTest.encryption?.()?.encrypted ? await window.meetTest.e2eeCounts() : null;
  return { players, inbound, e2ee: e2ee?.filter((c) => c.kind === 'audio') ?? null };
}

/** Runs in a sending page: its microphone track and what its encoder is given and sends. */
async function sentAudioDiagnostics() {
  const pc = window.meetTest.pc();
  const out = { tracks: [], sources: [], outbound: [] };
  for (const sender of pc?.getSenders() ?? []) {
    const t = sender.track;
    if (t?.kind === 'audio') out.tracks.push({ id: t.id, enabled: t.enabled, muted: t.muted, state: t.readyState });
  }
  (await pc?.getStats())?.forEach((r) => {
    if (r.type === 'media-source' && r.kind === 'audio') out.sources.push({ level: r.audioLevel, energy: r.totalAudioEnergy });
    if (r.type === 'outbound-rtp' && r.kind === 'audio') out.outbound.push({ mid: r.mid, packets: r.packetsSent, bytes: r.bytesSent });
  });
  return out;
}

export async function closeAll(pages) {
  await Promise.all(pages.map((p) => p.context.close().catch(() => {})));
}

/** Every console error and page error of these pages. */
export const errorsOf = (pages) => pages.flatMap((p) => p.errors);
