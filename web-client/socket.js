// The signaling socket of one connection attempt: the WebSocket to the server, JSON both ways,
// the join handshake, the application ping that tells a dead socket from a quiet one, and the
// timers that must stop when the attempt is given up. It knows nothing about WebRTC: what the
// messages mean once in the room is the meeting's business (docs/protocol.md).
//
// A reconnection is a new attempt with a new socket. `dispose` ends this one for good; after it
// none of its callbacks runs again.

const PING_MS = 5000; // application ping; the server answers `pong`
const SILENCE_MS = 16000; // nothing heard from the server for this long: the socket is dead
const OPEN_TIMEOUT_MS = 8000;
const JOIN_TIMEOUT_MS = 8000;

/** A failed attempt to enter the room. `kind`: 'unreachable' (no socket) or 'refused'. */
export class JoinError extends Error {
  constructor(kind, code = null, detail = '') {
    super(`${kind}${code ? `: ${code}` : ''}${detail ? ` (${detail})` : ''}`);
    this.kind = kind;
    this.code = code;
  }
}

/**
 * This page's path, query and fragment on the node at `url` (an https origin), or null, with
 * what `request` (the `join` redirected) needs there that the page may have taken out of its
 * address: a join link's token goes back into the fragment (app.js removes it from the address
 * bar at start), an open room's name into `room`, and the node that should carry the media
 * (`media`, from the redirect) into `media`.
 */
export function redirectTarget(url, request = {}, media = null) {
  let origin;
  try {
    origin = new URL(url);
  } catch {
    return null;
  }
  if (origin.protocol !== 'https:') return null;
  const target = new URL(location.pathname + location.search + location.hash, origin.origin);
  if (request.token) target.hash = `join=${encodeURIComponent(request.token)}`;
  else if (request.room) target.searchParams.set('room', request.room);
  if (media) target.searchParams.set('media', media);
  return target.href;
}

export class SignalingSocket {
  constructor() {
    this.ws = null;
    this.lastHeard = Date.now();
    this.timers = new Set();
    this.disposed = false;
    /** Ends a `join` that still waits for its answer (see `dispose`). */
    this.rejectJoin = null;
  }

  /** Opens the socket; rejects with an 'unreachable' JoinError when it closes or takes too long. */
  open(url) {
    const ws = new WebSocket(url);
    this.ws = ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new JoinError('unreachable', null, 'timeout'));
        ws.close();
      }, OPEN_TIMEOUT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      ws.onclose = () => {
        clearTimeout(timer);
        reject(new JoinError('unreachable'));
      };
    });
  }

  /**
   * Sends `join` and resolves with the server's `joined`. Each `lobby` (a host has not let us
   * in yet) goes to `onLobby`. Rejects with a JoinError: 'refused' with the server's error
   * code, else 'unreachable' (no answer in time, the socket closed, the attempt disposed).
   */
  join(request, onLobby) {
    const ws = this.ws;
    ws.send(JSON.stringify(request));
    return new Promise((resolve, reject) => {
      let timer = setTimeout(() => {
        reject(new JoinError('unreachable', null, 'no answer to join'));
        ws.close();
      }, JOIN_TIMEOUT_MS);
      let lobbyPing = null;
      const done = () => {
        clearTimeout(timer);
        clearInterval(lobbyPing);
        this.rejectJoin = null;
      };
      // Leaving (or giving up) while waiting ends the wait.
      this.rejectJoin = (err) => {
        done();
        reject(err);
      };
      ws.onmessage = (event) => {
        const message = parse(event.data);
        if (!message) return;
        this.lastHeard = Date.now();
        if (message.type === 'joined') {
          done();
          resolve(message);
        } else if (message.type === 'lobby') {
          // Waiting for a host (or the start time): no deadline, but keep the socket alive.
          clearTimeout(timer);
          timer = null;
          if (!lobbyPing) {
            lobbyPing = setInterval(() => this.ping(() => ws.close()), PING_MS); // dead: onclose rejects
          }
          onLobby(message);
        } else if (message.type === 'error') {
          done();
          reject(new JoinError('refused', message.code, message.message));
          ws.close();
        } else if (message.type === 'redirect') {
          // Another node of the cluster holds the meeting: the page moves there, where the
          // same link (path, query and fragment) joins it.
          done();
          const target = redirectTarget(message.url, request, message.media || null);
          if (target) {
            // The server closes this socket: the page is leaving, not unreachable.
            ws.onclose = null;
            location.replace(target);
          } else {
            reject(new JoinError('refused', 'bad_redirect', `a redirect to ${message.url}`));
          }
        }
      };
      ws.onclose = () => {
        done();
        reject(new JoinError('unreachable', null, 'closed before joined'));
      };
    });
  }

  /**
   * In the room: each message goes to `onMessage`, and the socket closing (not a `dispose`) to
   * `onClose`. Called before anything awaits after `joined`, so that no message is missed.
   */
  listen(onMessage, onClose) {
    this.ws.onmessage = (event) => {
      const message = parse(event.data);
      if (!message || this.disposed) return;
      this.lastHeard = Date.now();
      onMessage(message);
    };
    this.ws.onclose = onClose;
  }

  /** Pings every few seconds; once the server has been silent too long, calls `onSilent` instead. */
  keepAlive(onSilent) {
    this.every(PING_MS, () => this.ping(onSilent));
  }

  ping(onSilent) {
    if (Date.now() - this.lastHeard > SILENCE_MS) onSilent();
    else this.send({ type: 'ping' });
  }

  /** Sends a message while the socket is open; returns whether it went out. */
  send(message) {
    if (this.disposed || this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Closes the socket; unlike `dispose`, this leaves its close handler to run. */
  close() {
    this.ws.close();
  }

  /** A repeating timer that ends with the attempt. */
  every(ms, fn) {
    const id = setInterval(fn, ms);
    this.timers.add(() => clearInterval(id));
  }

  /** A timer that ends with the attempt; returns its cancel. */
  after(ms, fn) {
    const id = setTimeout(fn, ms);
    const cancel = () => clearTimeout(id);
    this.timers.add(cancel);
    return cancel;
  }

  /** Gives the attempt up: a waiting `join` rejects, the timers stop, the socket closes silently. */
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.rejectJoin?.(new JoinError('unreachable', null, 'closed'));
    for (const cancel of this.timers) cancel();
    this.timers.clear();
    if (this.ws) {
      this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
      if (this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    }
  }
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    console.warn('ignoring an unparsable server message');
    return null;
  }
}
