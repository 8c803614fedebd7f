//! Codecs over the real server, with offers written by hand as a third-party client writes
//! them (no media flows: publications and subscriptions are decided at the offer).
//! `publication_added` names the codec a publication is sent in, and a receive m-line that
//! does not offer it is refused with `codec_unsupported` naming the codec and the publication,
//! after its answer; a new m-line offering the codec is accepted. (An m-line keeps the codecs of
//! its first negotiation: str0m ignores payload types added to it later, as RFC 8829 lets it.)

mod common;

use common::{RawClient, Received};
use protocol::{ErrorCode, PublicationInfo, ServerMessage};

const FINGERPRINT: &str = "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";

/// A codec of an offer: payload type, rtpmap, fmtp.
type Codec = (u8, &'static str, &'static str);

/// An offer of one video m-line (mid 0) in `direction` with `codecs`.
fn video_offer(direction: &str, codecs: &[Codec]) -> String {
    video_offer_of(&[(direction, codecs)])
}

/// An offer of one bundled video m-line per section (mids 0, 1, …), each in its direction with
/// its codecs.
fn video_offer_of(sections: &[(&str, &[Codec])]) -> String {
    let mids: Vec<String> = (0..sections.len()).map(|m| m.to_string()).collect();
    let mut sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n{FINGERPRINT}\r\n",
        mids.join(" ")
    );
    for (mid, (direction, codecs)) in sections.iter().enumerate() {
        let pts: Vec<String> = codecs.iter().map(|(pt, _, _)| pt.to_string()).collect();
        sdp.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\n\
             a=rtcp-mux\r\na={direction}\r\n",
            pts.join(" ")
        ));
        for (pt, rtpmap, fmtp) in codecs.iter() {
            sdp.push_str(&format!("a=rtpmap:{pt} {rtpmap}\r\n"));
            if !fmtp.is_empty() {
                sdp.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
            }
        }
    }
    sdp
}

const H264: Codec = (
    102,
    "H264/90000",
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
);
const VP8: Codec = (96, "VP8/90000", "");

/// The next message that is not about presence, counts or pongs.
async fn next_relevant(client: &mut RawClient) -> ServerMessage {
    loop {
        match client.next().await {
            Received::Message(
                ServerMessage::Pong
                | ServerMessage::RoomCounts { .. }
                | ServerMessage::ParticipantJoined { .. }
                | ServerMessage::ParticipantUpdated { .. },
            ) => continue,
            Received::Message(message) => return message,
            Received::Closed(code) => panic!("closed ({code:?})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_publication_subscribed_from_a_vp8_only_m_line_gets_codec_unsupported() {
    let t = common::start("codecs", |_| {}).await;
    let mut publisher = t.raw().await;
    publisher.join("r", "encoder").await;
    let offer = serde_json::json!({
        "type": "offer",
        "sdp": video_offer("sendonly", &[H264]),
        "publish": [{"mid": "0", "source": "camera"}],
        "subscribe": [],
    });
    publisher.send_text(offer.to_string()).await;
    let publication: PublicationInfo = loop {
        match next_relevant(&mut publisher).await {
            ServerMessage::Answer { .. } => continue,
            ServerMessage::PublicationAdded { publication } => break publication,
            other => panic!("expected the answer and publication_added, got {other:?}"),
        }
    };
    assert_eq!(publication.codec.as_deref(), Some("video/H264"));
    assert!(publication.layers.is_empty());

    let mut viewer = t.raw().await;
    viewer.join("r", "vp8-only").await;
    let subscribe = serde_json::json!([{"mid": "0", "publication_id": publication.id}]);
    let offer = serde_json::json!({
        "type": "offer",
        "sdp": video_offer("recvonly", &[VP8]),
        "publish": [],
        "subscribe": subscribe,
    });
    viewer.send_text(offer.to_string()).await;
    assert!(
        matches!(
            next_relevant(&mut viewer).await,
            ServerMessage::Answer { .. }
        ),
        "the offer itself is answered"
    );
    match next_relevant(&mut viewer).await {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::CodecUnsupported);
            assert!(
                message.starts_with(&format!(
                    "publication {} is sent in video/H264,",
                    publication.id
                )),
                "{message}"
            );
        }
        other => panic!("expected codec_unsupported, got {other:?}"),
    }

    // A new m-line offering H.264 is accepted: answered, and no error before the pong. (The
    // first m-line keeps the codecs of its first answer.)
    let offer = serde_json::json!({
        "type": "offer",
        "sdp": video_offer_of(&[("recvonly", &[VP8]), ("recvonly", &[VP8, H264])]),
        "publish": [],
        "subscribe": [{"mid": "1", "publication_id": publication.id}],
    });
    viewer.send_text(offer.to_string()).await;
    assert!(matches!(
        next_relevant(&mut viewer).await,
        ServerMessage::Answer { .. }
    ));
    viewer.send_text("{\"type\":\"ping\"}").await;
    loop {
        match viewer.next().await {
            Received::Message(ServerMessage::Pong) => break,
            Received::Message(ServerMessage::Error { code, message }) => {
                panic!("refused again: {code:?} {message}")
            }
            Received::Message(_) => continue,
            Received::Closed(code) => panic!("closed ({code:?})"),
        }
    }
}
