// Simulcast: the camera is sent in up to three sizes (layers) and the server forwards to each
// receiver the smallest layer that fills the tile it shows, so a thumbnail costs a thumbnail's
// bandwidth. This file holds the parts that need no browser: which layers a camera track gets,
// which of them to pause when the server says nobody watches them, and which tile sizes still
// need reporting (docs/protocol.md: `layers`, `simulcast_layers`, `video_sizes`).

/** The camera's encodings, lowest quality first as the protocol orders them. */
const CAMERA_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_200_000 },
];

/**
 * How many layers a camera of at least this many pixels gets. Chromium sends no more layers
 * than its own simulcast table allows for the input size (3 from 960×540, 2 from 480×270),
 * and it drops the highest encodings, not the smallest: a 640×360 camera with three
 * encodings would send 160×90 and 320×180 only. So a smaller camera drops the smallest layers
 * itself, and its full size is still sent.
 */
const LAYER_COUNTS = [
  { pixels: 960 * 540, count: 3 },
  { pixels: 480 * 270, count: 2 },
];

const MAX_FRAMERATE = 24;

/** A camera too small for two layers is sent as before: one encoding, no rid. */
const SINGLE = { maxBitrate: 600_000, maxFramerate: MAX_FRAMERATE };

/** Most entries in one `video_sizes` message (the server refuses more). */
export const MAX_VIDEO_SIZES = 128;

/**
 * The send encodings for a camera of `width × height` and the `layers` to declare for them in
 * the offer. A small camera drops the smallest layers; fewer than two left means no simulcast.
 */
export function cameraLayers({ width, height } = {}) {
  const pixels = width > 0 && height > 0 ? width * height : 0;
  const count = LAYER_COUNTS.find((c) => pixels >= c.pixels)?.count ?? 1;
  if (count < 2) return { encodings: [{ ...SINGLE }], layers: [] };
  const fitting = CAMERA_LAYERS.slice(CAMERA_LAYERS.length - count);
  return {
    encodings: fitting.map((l) => ({ ...l, maxFramerate: MAX_FRAMERATE })),
    layers: declaredLayers(fitting, { width, height }),
  };
}

/** What the offer declares for these encodings of a track of `width × height`. */
export function declaredLayers(encodings, { width, height }) {
  return encodings.filter((e) => e.rid).map((e) => {
    const scale = e.scaleResolutionDownBy || 1;
    return { rid: e.rid, width: Math.floor(width / scale), height: Math.floor(height / scale) };
  });
}

/**
 * Which of `count` encodings to keep sending, from the server's `simulcast_layers.active`. A
 * layer it does not mention keeps sending, and the lowest never stops when all would: a
 * sender with every encoding paused would need a renegotiation to come back.
 */
export function layerActivity(active, count) {
  const result = Array.from({ length: count }, (_, i) => !(Array.isArray(active) && active[i] === false));
  if (count > 0 && !result.includes(true)) result[0] = true;
  return result;
}

/** A video element's size in device pixels, or 0 × 0 when nobody can see it. */
export function deviceSize(rect, devicePixelRatio, visible) {
  const width = visible && rect ? Math.round(rect.width * devicePixelRatio) : 0;
  const height = visible && rect ? Math.round(rect.height * devicePixelRatio) : 0;
  return width > 0 && height > 0 ? { width, height } : { width: 0, height: 0 };
}

/**
 * The `video_sizes` messages that bring the server up to date: every publication in `eligible`
 * (subscribed, and already in a sent offer) whose size in `current` differs from `sent`, in
 * batches of at most MAX_VIDEO_SIZES. Empty when nothing changed.
 */
export function sizeReports(current, sent, eligible) {
  const changed = [];
  for (const [publicationId, size] of current) {
    if (!eligible.has(publicationId)) continue;
    const before = sent.get(publicationId);
    if (before && before.width === size.width && before.height === size.height) continue;
    changed.push({ publication_id: publicationId, width: size.width, height: size.height });
  }
  const batches = [];
  for (let i = 0; i < changed.length; i += MAX_VIDEO_SIZES) batches.push(changed.slice(i, i + MAX_VIDEO_SIZES));
  return batches;
}
