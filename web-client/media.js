// The local camera, microphone and screen: acquisition, device lists and failures named by
// i18n keys. A different source of tracks (synthetic media for tests) can be plugged in with
// `setTrackSource`.

const CAMERA = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24, max: 30 } };
const MICROPHONE = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

/** Where tracks come from: the browser's devices. */
const deviceSource = {
  async userMedia({ audio, video }) {
    return navigator.mediaDevices.getUserMedia({
      audio: audio ? { ...MICROPHONE, ...(audio.deviceId ? { deviceId: { exact: audio.deviceId } } : {}) } : false,
      video: video ? { ...CAMERA, ...(video.deviceId ? { deviceId: { exact: video.deviceId } } : {}) } : false,
    });
  },
  async displayMedia() {
    return navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 10, max: 15 } }, audio: false });
  },
  canShareScreen() {
    return !!(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  },
  async devices() {
    if (!navigator.mediaDevices?.enumerateDevices) return [];
    return navigator.mediaDevices.enumerateDevices();
  },
};

let source = deviceSource;

/** Replaces the browser's devices (tests inject identifiable synthetic media). */
export function setTrackSource(replacement) {
  source = { ...deviceSource, ...replacement };
}

/** Maps a getUserMedia failure to an i18n key. */
export function errorKey(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'error.permissionDenied';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'error.noDevices';
    case 'NotReadableError':
    case 'AbortError':
      return 'error.deviceBusy';
    default:
      return 'error.noDevices';
  }
}

/**
 * The participant's own tracks. `microphone` and `camera` are null when unavailable or
 * turned off before joining; `micOn` / `camOn` are the user's choices.
 */
export class LocalMedia {
  constructor() {
    this.microphone = null;
    this.camera = null;
    this.screen = null;
    this.micOn = true;
    this.camOn = true;
    this.micId = '';
    this.camId = '';
  }

  canShareScreen() {
    return source.canShareScreen();
  }

  /**
   * Gets the microphone (kept even while muted, so unmuting is instant) and, when wanted, the
   * camera. Returns an i18n error key when something could not be had, else null. Partial
   * success keeps what works.
   */
  async acquire() {
    const wantAudio = !this.microphone;
    const wantVideo = this.camOn && !this.camera;
    if (!wantAudio && !wantVideo) return null;
    if (!source.userMedia || (!navigator.mediaDevices && source === deviceSource)) return 'error.noDevices';
    try {
      this.adopt(await source.userMedia({
        audio: wantAudio && { deviceId: this.micId },
        video: wantVideo && { deviceId: this.camId },
      }));
      return null;
    } catch (err) {
      const key = errorKey(err);
      if (key === 'error.permissionDenied' || !(wantAudio && wantVideo)) return key;
    }
    // One of the two is missing or busy: take the other alone.
    let failure = null;
    for (const kind of ['audio', 'video']) {
      try {
        this.adopt(await source.userMedia({
          audio: kind === 'audio' && { deviceId: this.micId },
          video: kind === 'video' && { deviceId: this.camId },
        }));
      } catch (err) {
        failure = failure || errorKey(err);
      }
    }
    return failure;
  }

  adopt(stream) {
    for (const track of stream.getTracks()) {
      if (track.kind === 'audio') {
        this.microphone?.stop();
        this.microphone = track;
        track.enabled = this.micOn;
      } else {
        this.camera?.stop();
        this.camera = track;
        track.contentHint = 'motion';
      }
    }
  }

  /** Switches to another device, keeping the user's on/off choices. */
  async useDevices({ micId, camId }) {
    if (micId !== undefined && micId !== this.micId) {
      this.micId = micId;
      this.microphone?.stop();
      this.microphone = null;
    }
    if (camId !== undefined && camId !== this.camId) {
      this.camId = camId;
      this.camera?.stop();
      this.camera = null;
    }
    return this.acquire();
  }

  setMicOn(on) {
    this.micOn = on;
    if (this.microphone) this.microphone.enabled = on;
  }

  /** Turning the camera off releases it (its light goes out); on acquires it again. */
  async setCamOn(on) {
    this.camOn = on;
    if (!on) {
      this.camera?.stop();
      this.camera = null;
      return null;
    }
    return this.acquire();
  }

  async startScreen() {
    const stream = await source.displayMedia();
    const [track] = stream.getVideoTracks();
    track.contentHint = 'detail';
    this.screen = track;
    return track;
  }

  stopScreen() {
    this.screen?.stop();
    this.screen = null;
  }

  async devices() {
    const all = await source.devices();
    return {
      microphones: all.filter((d) => d.kind === 'audioinput'),
      cameras: all.filter((d) => d.kind === 'videoinput'),
      speakers: all.filter((d) => d.kind === 'audiooutput'),
    };
  }

  stopAll() {
    this.microphone?.stop();
    this.camera?.stop();
    this.screen?.stop();
    this.microphone = this.camera = this.screen = null;
  }
}
