// Connection quality from WebRTC statistics: packet loss, jitter and round-trip time are
// turned into good / fair / poor per participant.

/** Thresholds, in the units `classify` takes. Either "fair" limit makes it fair, any "poor"
 *  limit makes it poor. */
export const LIMITS = {
  fair: { lossPercent: 2, jitterMs: 30, rttMs: 250 },
  poor: { lossPercent: 8, jitterMs: 80, rttMs: 600 },
};

/**
 * Classifies one measurement. Missing values (null/undefined) are ignored; with nothing
 * measured the answer is "unknown".
 */
export function classify({ lossPercent, jitterMs, rttMs }) {
  const values = { lossPercent, jitterMs, rttMs };
  const known = Object.entries(values).filter(([, v]) => typeof v === 'number' && Number.isFinite(v));
  if (known.length === 0) return 'unknown';
  if (known.some(([k, v]) => v >= LIMITS.poor[k])) return 'poor';
  if (known.some(([k, v]) => v >= LIMITS.fair[k])) return 'fair';
  return 'good';
}

/**
 * Follows one peer connection's statistics between calls of `sample`, so that loss is
 * measured over the last interval rather than since the start.
 */
export class StatsSampler {
  constructor() {
    this.previous = new Map(); // inbound-rtp id -> { packetsReceived, packetsLost }
  }

  /**
   * Reads `pc.getStats()` once. Returns `{ rttMs, inbound: Map<mid, {...}>, outboundLossPercent }`
   * where each inbound entry has the interval's loss, the jitter and the decoder counters.
   */
  async sample(pc) {
    const report = await pc.getStats();
    let rttMs = null;
    let outboundLoss = null;
    const inbound = new Map();
    const seen = new Set();
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        if (typeof s.currentRoundTripTime === 'number') rttMs = s.currentRoundTripTime * 1000;
      } else if (s.type === 'remote-inbound-rtp') {
        if (typeof s.fractionLost === 'number') {
          outboundLoss = Math.max(outboundLoss ?? 0, s.fractionLost * 100);
        }
        if (rttMs === null && typeof s.roundTripTime === 'number') rttMs = s.roundTripTime * 1000;
      } else if (s.type === 'inbound-rtp' && s.mid !== undefined) {
        seen.add(s.id);
        const before = this.previous.get(s.id) || { packetsReceived: 0, packetsLost: 0 };
        const received = (s.packetsReceived || 0) - before.packetsReceived;
        const lost = Math.max(0, (s.packetsLost || 0) - before.packetsLost);
        this.previous.set(s.id, { packetsReceived: s.packetsReceived || 0, packetsLost: s.packetsLost || 0 });
        inbound.set(String(s.mid), {
          kind: s.kind,
          intervalPackets: received + lost,
          lossPercent: received + lost > 0 ? (100 * lost) / (received + lost) : null,
          jitterMs: typeof s.jitter === 'number' ? s.jitter * 1000 : null,
          packetsReceived: s.packetsReceived || 0,
          packetsLost: s.packetsLost || 0,
          bytesReceived: s.bytesReceived || 0,
          framesDecoded: s.framesDecoded,
          framesPerSecond: s.framesPerSecond,
          frameWidth: s.frameWidth,
          frameHeight: s.frameHeight,
          audioLevel: s.audioLevel,
        });
      }
    });
    for (const id of this.previous.keys()) if (!seen.has(id)) this.previous.delete(id);
    return { rttMs, inbound, outboundLossPercent: outboundLoss };
  }
}

/**
 * One participant's measurement from the streams received from them (only streams that
 * carried packets in the interval count, so a muted microphone does not look like loss).
 */
export function combine(streams, rttMs) {
  let lost = 0;
  let total = 0;
  let jitterMs = null;
  for (const s of streams) {
    if (!s || !s.intervalPackets) continue;
    total += s.intervalPackets;
    lost += (s.lossPercent * s.intervalPackets) / 100;
    // Audio jitter is the one people notice; video jitter is in frame-sized steps.
    if (s.kind === 'audio' && s.jitterMs !== null) jitterMs = Math.max(jitterMs ?? 0, s.jitterMs);
  }
  return {
    lossPercent: total > 0 ? (100 * lost) / total : null,
    jitterMs,
    rttMs,
  };
}
