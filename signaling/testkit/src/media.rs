//! The synthetic media this client publishes: a tone as 20 ms Opus packets and tagged VP8
//! frames, both from `endpoint::media`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use endpoint::media::{ToneSource, VideoSource};
use rtc::media::Sample;
use tokio::sync::watch;
use webrtc::media_stream::Track as _;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::rtp_transceiver::RtpSender;

use crate::peer::is_keyframe_request;
use crate::state::Shared;

/// Opus packet duration.
const AUDIO_PACKET: Duration = Duration::from_millis(20);
/// Video frame rate.
const VIDEO_FPS: u32 = 15;
/// A keyframe at least this often, whether or not anyone asked.
const KEYFRAME_INTERVAL_FRAMES: u64 = 2 * VIDEO_FPS as u64;
/// Size of each synthetic VP8 frame: a little over one MTU, so frames span two packets.
pub const VIDEO_FRAME_BYTES: usize = 1_500;

/// Waits until the peer connection is connected, then returns the payload type the sender
/// negotiated (`fallback_pt` if it cannot tell) and the track's SSRC. `None` when the
/// connection ended first or the track has no SSRC (reported as a client error).
async fn sending_parameters(
    track: &TrackLocalStaticSample,
    sender: &Arc<dyn RtpSender>,
    connected: &mut watch::Receiver<bool>,
    fallback_pt: u8,
    shared: &Shared,
    kind: &str,
) -> Option<(u8, u32)> {
    connected.wait_for(|c| *c).await.ok()?;
    let pt = sender
        .get_parameters()
        .await
        .ok()
        .and_then(|p| p.rtp_parameters.codecs.first().map(|c| c.payload_type))
        .unwrap_or(fallback_pt);
    let Some(ssrc) = track.ssrcs().await.first().copied() else {
        shared.client_error(format!("{kind} track has no SSRC"));
        return None;
    };
    Some((pt, ssrc))
}

/// Sends one Opus packet of the tone every 20 ms, from the moment the connection is up.
pub(crate) async fn send_audio(
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    mut connected: watch::Receiver<bool>,
    tone_hz: f32,
    shared: Arc<Shared>,
) {
    let opus = crate::peer::OPUS_PT;
    let Some((pt, ssrc)) =
        sending_parameters(&track, &sender, &mut connected, opus, &shared, "audio").await
    else {
        return;
    };
    let mut source = match ToneSource::new(tone_hz) {
        Ok(source) => source,
        Err(err) => {
            shared.client_error(format!("opus encoder: {err}"));
            return;
        }
    };
    let mut ticker = tokio::time::interval(AUDIO_PACKET);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        ticker.tick().await;
        let packet = match source.next_packet() {
            Ok(packet) => packet,
            Err(err) => {
                shared.client_error(format!("opus encode: {err}"));
                return;
            }
        };
        let sample = Sample {
            data: Bytes::from(packet),
            duration: AUDIO_PACKET,
            ..Sample::new(Instant::now())
        };
        let result = track.sample_writer(ssrc, pt).write_sample(&sample).await;
        let mut state = shared.lock();
        match result {
            Ok(()) => state.sent.audio_packets += 1,
            Err(_) => state.sent.write_errors += 1,
        }
    }
}

/// Sends tagged VP8 frames at 15 fps: a keyframe first, every two seconds, and as soon as
/// possible after a PLI or FIR arrives.
pub(crate) async fn send_video(
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    mut connected: watch::Receiver<bool>,
    tag: u64,
    shared: Arc<Shared>,
) {
    let vp8 = crate::peer::VP8_PT;
    let Some((pt, ssrc)) =
        sending_parameters(&track, &sender, &mut connected, vp8, &shared, "video").await
    else {
        return;
    };
    let mut source = VideoSource::new(tag, VIDEO_FRAME_BYTES);
    let frame_duration = Duration::from_secs(1) / VIDEO_FPS;
    let mut ticker = tokio::time::interval(frame_duration);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut frames_since_keyframe: Option<u64> = None;
    let mut keyframe_requested = false;
    let mut feedback_open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            event = track.poll(), if feedback_open => {
                match event {
                    Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                        let requests = packets
                            .iter()
                            .filter(|p| is_keyframe_request(p.as_ref()))
                            .count() as u64;
                        if requests > 0 {
                            shared.lock().sent.keyframe_requests += requests;
                            keyframe_requested = true;
                        }
                    }
                    Some(_) => {}
                    None => feedback_open = false,
                }
                continue;
            }
        }
        let keyframe = keyframe_requested
            || frames_since_keyframe.is_none_or(|n| n + 1 >= KEYFRAME_INTERVAL_FRAMES);
        let frame = source.next_frame(keyframe);
        if keyframe {
            keyframe_requested = false;
            frames_since_keyframe = Some(0);
        } else {
            frames_since_keyframe = frames_since_keyframe.map(|n| n + 1);
        }
        let sample = Sample {
            data: Bytes::from(frame),
            duration: frame_duration,
            ..Sample::new(Instant::now())
        };
        let result = track.sample_writer(ssrc, pt).write_sample(&sample).await;
        let mut state = shared.lock();
        match result {
            Ok(()) => {
                state.sent.video_frames += 1;
                if keyframe {
                    state.sent.video_keyframes += 1;
                }
            }
            Err(_) => state.sent.write_errors += 1,
        }
    }
}
