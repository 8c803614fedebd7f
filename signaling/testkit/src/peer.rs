//! The webrtc-rs peer connection: codecs, interceptors, settings that keep it on loopback, and
//! the event handler that feeds the session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    CipherSuiteId, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, Registry, SettingEngineBuilder, register_default_interceptors,
};

use crate::dtls::{CertificateKind, DtlsOptions};
use crate::state::Shared;

/// Payload type offered for Opus. Chrome uses the same.
pub(crate) const OPUS_PT: u8 = 111;
/// Payload type offered for VP8.
pub(crate) const VP8_PT: u8 = 96;

/// What the peer connection tells the session.
#[derive(Debug)]
pub(crate) enum PeerEvent {
    /// A local candidate, as the `candidate:` attribute line.
    Candidate(String),
    GatheringComplete,
    State(RTCPeerConnectionState),
}

struct Handler {
    events: mpsc::UnboundedSender<PeerEvent>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.events.send(PeerEvent::Candidate(init.candidate));
            }
            Err(err) => self
                .shared
                .client_error(format!("cannot serialize local candidate: {err}")),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.events.send(PeerEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.events.send(PeerEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // This runs on the connection's driver: reading the track must happen elsewhere.
        self.runtime
            .spawn(read_track(track, Arc::clone(&self.shared)));
    }
}

/// Reads one remote track until it ends. The first event is always `OnOpen`, whose receiver
/// id names the transceiver and so, through the session's map, the publication.
async fn read_track(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let mut transceiver = None;
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnOpen(init) => {
                transceiver = Some(rtc::rtp_transceiver::RTCRtpTransceiverId::from(
                    init.receiver_id,
                ));
            }
            TrackRemoteEvent::OnRtpPacket(packet) => match transceiver {
                Some(id) => shared.record_rtp(id, &packet),
                None => shared.lock().unmapped_packets += 1,
            },
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// Builds a peer connection bound to one UDP socket on 127.0.0.1, with Opus and VP8 only,
/// the default interceptors, mDNS off, PLI/FIR delivered to the application, and the DTLS
/// certificate and cipher suites the options ask for.
pub(crate) async fn build(
    shared: Arc<Shared>,
    dtls: &DtlsOptions,
) -> anyhow::Result<(Arc<dyn PeerConnection>, mpsc::UnboundedReceiver<PeerEvent>)> {
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )
        .context("registering Opus")?;
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8_codec(),
                payload_type: VP8_PT,
            },
            RtpCodecKind::Video,
        )
        .context("registering VP8")?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)
        .context("registering interceptors")?
        // Last in the chain, so that the NACK and report interceptors see all RTCP first.
        .with(Slot::from(14_000), KeyframeRequestForwarder::default());

    // mDNS would bind 0.0.0.0:5353 and join a multicast group: everything stays on loopback.
    let mut settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
    if dtls.cbc_only {
        settings = settings
            .with_dtls_cipher_suites(vec![CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_256_Cbc_Sha]);
    }
    let settings = settings.build();

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let handler = Handler {
        events: events_tx,
        shared,
        runtime: tokio::runtime::Handle::current(),
    };
    let mut builder = PeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(Arc::new(handler))
        // A wildcard would expand to every non-loopback interface; name loopback exactly.
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()]);
    // Without a certificate webrtc-rs generates its own, ECDSA P-256.
    if dtls.certificate == CertificateKind::Rsa {
        let configuration = RTCConfigurationBuilder::new()
            .with_certificates(vec![crate::dtls::rsa_certificate()?])
            .build();
        builder = builder.with_configuration(configuration);
    }
    let pc = builder
        .build()
        .await
        .context("building the webrtc-rs peer connection")?;
    Ok((Arc::new(pc), events_rx))
}

pub(crate) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub(crate) fn vp8_codec() -> RTCRtpCodec {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            feedback("ccm", "fir"),
            feedback("nack", ""),
            feedback("nack", "pli"),
        ],
    }
}

/// A local track that packetizes whole samples, with one fixed random SSRC.
pub(crate) fn local_track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    label: &str,
) -> anyhow::Result<Arc<TrackLocalStaticSample>> {
    let ssrc = rand::random::<u32>().max(1);
    let track = MediaStreamTrack::new(
        "meet-testkit".to_owned(),
        format!("{label}-{ssrc:08x}"),
        label.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    );
    let track = TrackLocalStaticSample::new(Instant::now(), track)
        .with_context(|| format!("creating the {label} track"))?;
    Ok(Arc::new(track))
}

/// Passes inbound keyframe requests (PLI, FIR) on to the application and drops the rest of
/// the inbound RTCP, which the interceptors before it have already consumed.
///
/// webrtc-rs 0.21 delivers inbound RTCP to `TrackLocal::poll` only when an interceptor marks
/// it with [`Attribute::DeliverToApplication`]; on a default chain nothing does, and keyframe
/// requests are silently swallowed. This mirrors the crate's `rtcp-processing` example.
#[derive(Default)]
struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

pub(crate) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|packet| is_keyframe_request(packet.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
