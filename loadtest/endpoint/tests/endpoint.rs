//! The load tester's endpoint against the product's media engine (`sfu::Engine`), in virtual
//! time through the SFU's own simulation harness: no sockets, no sleeping. Seconds of media
//! run in milliseconds, so the counts below (packets a second, wake-ups a second) are exact
//! properties of the endpoint, not measurements of the machine running the test.

#[path = "../../../sfu/tests/sim/mod.rs"]
mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use endpoint::sframe;
use endpoint::{E2eeConfig, Endpoint, EndpointConfig, EndpointError};
use protocol::{ClientMessage, MediaKind, ParticipantId, PublicationId, RoomId, TrackSource};
use sfu::{SfuCommand, SfuEvent};
use sim::{Link, Sim};

/// The publication of `kind` that endpoint `index` publishes.
fn publication(sim: &Sim, index: usize, kind: MediaKind) -> PublicationId {
    sim.publications_of(index)
        .into_iter()
        .find(|p| p.kind == kind)
        .expect("the endpoint publishes this kind")
        .id
}

fn offer_command(participant: ParticipantId, offer: ClientMessage) -> SfuCommand {
    let ClientMessage::Offer {
        sdp,
        publish,
        subscribe,
    } = offer
    else {
        panic!("expected an offer, got {offer:?}");
    };
    SfuCommand::Offer {
        participant,
        sdp,
        publish,
        subscribe,
    }
}

/// Gives the engine an offer the test took from one of the sim's endpoints (to look at it);
/// the sim applies the answer on its next step.
fn hand_over(sim: &mut Sim, index: usize, offer: ClientMessage) {
    let participant = sim.endpoints[index].participant;
    sim.engine
        .handle_command(sim.now, offer_command(participant, offer));
}

/// A participant whose endpoint the test negotiates by hand, outside the sim.
fn add_participant(sim: &mut Sim, participant: ParticipantId) {
    sim.engine.handle_command(
        sim.now,
        SfuCommand::AddParticipant {
            participant,
            room: RoomId("r".into()),
        },
    );
}

/// Sends a hand-negotiated participant's offer to the engine, as signaling would, and returns
/// the answer or the refusal. Other events are kept in `sim.events`.
fn exchange(
    sim: &mut Sim,
    participant: ParticipantId,
    offer: ClientMessage,
) -> Result<String, String> {
    sim.engine
        .handle_command(sim.now, offer_command(participant, offer));
    let mut result = None;
    while let Some(event) = sim.engine.poll_event() {
        match event {
            SfuEvent::Answer {
                participant: p,
                sdp,
            } if p == participant => result = Some(Ok(sdp)),
            SfuEvent::Refused {
                participant: p,
                message,
                ..
            } if p == participant => result = Some(Err(message)),
            other => sim.events.push(other),
        }
    }
    result.expect("the engine answers or refuses every offer")
}

/// Publications the engine announced for `participant`.
fn announced(sim: &Sim, participant: ParticipantId) -> usize {
    sim.events
        .iter()
        .filter(
            |e| matches!(e, SfuEvent::PublicationAdded { participant: p, .. } if *p == participant),
        )
        .count()
}

fn assert_no_errors(sim: &Sim) {
    for (i, e) in sim.endpoints.iter().enumerate() {
        assert!(e.errors.is_empty(), "endpoint {i}: {:?}", e.errors);
    }
}

/// Two endpoints that publish audio and video and receive each other.
fn two_way() -> Sim {
    let mut sim = Sim::new();
    sim.join("r", |c| {
        c.tone_hz = 440.0;
        c.video_tag = 0xA;
    });
    sim.join("r", |c| {
        c.tone_hz = 880.0;
        c.video_tag = 0xB;
    });
    sim
}

#[test]
fn two_endpoints_hear_and_see_each_other() {
    let mut sim = two_way();
    sim.run_for(Duration::from_secs(2));
    assert_no_errors(&sim);

    for (me, other, hz, tag) in [(0, 1, 880.0, 0xB), (1, 0, 440.0, 0xA)] {
        let endpoint = &sim.endpoints[me].endpoint;
        assert!(endpoint.is_connected());
        assert!(endpoint.connected_at().is_some());

        let audio = publication(&sim, other, MediaKind::Audio);
        let stats = &endpoint.stats()[&audio];
        assert_eq!(stats.participant_id, sim.endpoints[other].participant);
        assert!(stats.subscribed && stats.mid.is_some(), "{stats:?}");
        assert!(stats.audio_frames_decoded >= 80, "{stats:?}");
        assert_eq!(stats.audio_decode_errors, 0);
        let heard = endpoint.dominant_frequency(audio).expect("enough audio");
        assert!((heard - hz).abs() <= 10.0, "heard {heard} Hz, want {hz}");

        let video = publication(&sim, other, MediaKind::Video);
        let stats = &endpoint.stats()[&video];
        assert_eq!(stats.video_tag, Some(tag));
        assert!(stats.video_frames >= 25, "{stats:?}");
        assert!(stats.keyframes >= 1);
        assert_eq!(
            stats.first_keyframe_at, stats.first_media_at,
            "video starts with a keyframe"
        );
        assert_eq!(stats.untagged_frames, 0);
        assert_eq!(stats.tag_changes, 0);
        assert!(stats.rtp_packets >= stats.frames);

        let sent = endpoint.sent();
        // 50 Opus packets and 15 frames a (virtual) second from connection, give or take
        // the edges.
        assert!((90..=101).contains(&sent.audio_packets), "{sent:?}");
        assert!((27..=31).contains(&sent.video_frames), "{sent:?}");
        assert_eq!(sent.write_errors, 0);
    }
}

#[test]
fn offers_are_serialised_and_list_the_whole_session() {
    let mut sim = Sim::new();
    let publisher = sim.join("r", |_| {});
    let others = sim.publications_of(publisher);
    assert_eq!(others.len(), 2);

    let me = ParticipantId(1_000);
    add_participant(&mut sim, me);
    let config = EndpointConfig::new(SocketAddr::from(([127, 0, 2, 1], 50_000)));
    let mut endpoint = Endpoint::new(sim.now, config).expect("endpoint");
    let first = endpoint.create_offer().expect("the first offer publishes");

    // A change while the offer is in flight waits for the answer.
    endpoint.subscribe(others[0].clone());
    assert!(endpoint.has_pending_changes());
    assert!(endpoint.create_offer().is_none());

    let answer = exchange(&mut sim, me, first).expect("the engine accepts the offer");
    endpoint.handle_answer(sim.now, &answer).expect("answer");
    assert!(matches!(
        endpoint.handle_answer(sim.now, &answer),
        Err(EndpointError::UnexpectedAnswer)
    ));
    assert_eq!(announced(&sim, me), 2, "audio and video published");

    endpoint.subscribe(others[1].clone());
    let Some(ClientMessage::Offer {
        sdp,
        publish,
        subscribe,
    }) = endpoint.create_offer()
    else {
        panic!("the queued subscriptions are offered");
    };
    assert_eq!(publish.len(), 2, "publications are listed again");
    assert_eq!(publish[0].source, TrackSource::Microphone);
    assert_eq!(publish[1].source, TrackSource::Camera);
    let ids: Vec<_> = subscribe.iter().map(|s| s.publication_id).collect();
    assert_eq!(ids, vec![others[0].id, others[1].id]);
    assert_eq!(sdp.matches("a=recvonly").count(), 2);
    assert!(endpoint.create_offer().is_none());

    let offer = ClientMessage::Offer {
        sdp,
        publish,
        subscribe,
    };
    let answer = exchange(&mut sim, me, offer).expect("the engine accepts the offer");
    endpoint.handle_answer(sim.now, &answer).expect("answer");
    assert!(!endpoint.has_pending_changes());
    assert_eq!(announced(&sim, me), 2, "listing them again adds nothing");
    let (_, participants, publications, subscriptions) = sim.engine.census();
    assert_eq!((participants, publications, subscriptions), (2, 4, 2));
}

#[test]
fn a_refused_offer_is_offered_again_and_accepted() {
    let mut sim = Sim::new();
    let me = ParticipantId(1_000);
    let config = EndpointConfig::new(SocketAddr::from(([127, 0, 2, 1], 50_000)));
    let mut endpoint = Endpoint::new(sim.now, config).expect("endpoint");

    // The engine refuses an offer from a participant it has no transport for.
    let offer = endpoint.create_offer().expect("an offer");
    exchange(&mut sim, me, offer).expect_err("no transport yet");
    endpoint.offer_refused();
    assert!(!endpoint.offer_in_flight());
    assert!(endpoint.has_pending_changes());

    add_participant(&mut sim, me);
    let offer = endpoint.create_offer().expect("offered again");
    let answer = exchange(&mut sim, me, offer).expect("accepted this time");
    endpoint.handle_answer(sim.now, &answer).expect("answer");
    assert!(!endpoint.has_pending_changes());
    assert_eq!(announced(&sim, me), 2);
}

#[test]
fn unsubscribing_stops_the_media() {
    let mut sim = two_way();
    sim.run_for(Duration::from_secs(1));
    let video = publication(&sim, 0, MediaKind::Video);
    let audio = publication(&sim, 0, MediaKind::Audio);
    assert!(sim.endpoints[1].endpoint.stats()[&video].video_frames > 0);
    assert_eq!(sim.engine.census().3, 4);

    let endpoint = &mut sim.endpoints[1].endpoint;
    endpoint.unsubscribe(video);
    let offer = endpoint.create_offer().expect("the stop is offered");
    let ClientMessage::Offer { sdp, subscribe, .. } = &offer else {
        panic!("an offer");
    };
    assert!(subscribe.iter().all(|s| s.publication_id != video));
    assert!(subscribe.iter().any(|s| s.publication_id == audio));
    assert!(sdp.contains("m=video 0 "), "the stopped m-line has port 0");
    hand_over(&mut sim, 1, offer);

    sim.run_for(Duration::from_millis(100));
    assert!(!sim.endpoints[1].endpoint.offer_in_flight(), "answered");
    assert_eq!(
        sim.engine.census().3,
        3,
        "the engine dropped the subscription"
    );
    let frames = sim.endpoints[1].endpoint.stats()[&video].video_frames;
    let audio_frames = sim.endpoints[1].endpoint.stats()[&audio].frames;
    sim.run_for(Duration::from_secs(1));
    let endpoint = &sim.endpoints[1].endpoint;
    let stats = &endpoint.stats()[&video];
    assert_eq!(stats.video_frames, frames, "no video after unsubscribing");
    assert!(!stats.subscribed);
    assert!(endpoint.stats()[&audio].frames > audio_frames + 40);
    assert_eq!(endpoint.subscriptions().count(), 1);
    assert_no_errors(&sim);
}

#[test]
fn keyframe_requests_reach_the_publisher() {
    // Without fast start: with it, the SFU answers from its cache when it can.
    let mut sim = Sim::with_config(|c| c.fast_start = false);
    let publisher = sim.join("r", |c| c.keyframe_interval = None);
    let viewer = sim.join("r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    // Long enough for the engine's keyframe throttle to let the next request through.
    sim.run_for(Duration::from_secs(2));
    let video = publication(&sim, publisher, MediaKind::Video);
    let before = sim.endpoints[viewer].endpoint.stats()[&video].keyframes;
    assert!(before >= 1);
    let received = sim.endpoints[publisher]
        .endpoint
        .sent()
        .keyframe_requests_received;

    assert!(
        sim.endpoints[viewer]
            .endpoint
            .request_keyframe(video)
            .expect("request")
    );
    sim.run_for(Duration::from_millis(500));
    let sent = sim.endpoints[publisher].endpoint.sent();
    assert!(sent.keyframe_requests_received > received, "{sent:?}");
    let stats = &sim.endpoints[viewer].endpoint.stats()[&video];
    assert_eq!(stats.keyframes, before + 1);
    assert_eq!(stats.keyframe_requests_sent, 1);
    assert_no_errors(&sim);
}

/// A publisher that sends keyframes only when asked, and a viewer that joins 1.2 s in (its
/// GOP well within the SFU's cache): the publisher's keyframes before the late joiner, and
/// after it had a second.
fn late_subscriber(fast_start: bool) -> (u64, u64) {
    let mut sim = Sim::with_config(|c| c.fast_start = fast_start);
    let publisher = sim.join("r", |c| {
        c.keyframe_interval = None;
        c.video_tag = 9;
    });
    sim.join("r", |_| {});
    sim.run_for(Duration::from_millis(600));
    let keyframes = sim.endpoints[publisher].endpoint.sent().keyframes;
    sim.run_for(Duration::from_millis(600));
    assert_eq!(
        sim.endpoints[publisher].endpoint.sent().keyframes,
        keyframes,
        "no periodic keyframes"
    );

    let late = sim.join("r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    sim.run_for(Duration::from_secs(1));
    let video = publication(&sim, publisher, MediaKind::Video);
    let stats = &sim.endpoints[late].endpoint.stats()[&video];
    assert!(
        stats.first_keyframe_at.is_some(),
        "the late joiner got a keyframe: {stats:?}"
    );
    assert!(stats.video_frames >= 5, "{stats:?}");
    assert_eq!(stats.video_tag, Some(9));
    assert_no_errors(&sim);
    (
        keyframes,
        sim.endpoints[publisher].endpoint.sent().keyframes,
    )
}

#[test]
fn a_late_subscriber_gets_a_keyframe_the_publisher_is_asked_for() {
    let (before, after) = late_subscriber(false);
    assert!(after > before, "{before} → {after}");
}

#[test]
fn with_fast_start_a_late_subscriber_starts_from_the_cached_keyframe() {
    // The SFU replays the packets since the last keyframe: the publisher is not asked for
    // another.
    let (before, after) = late_subscriber(true);
    assert_eq!(after, before);
}

#[test]
fn garbage_datagrams_are_ignored() {
    let mut sim = two_way();
    sim.run_for(Duration::from_millis(500));
    let audio = publication(&sim, 1, MediaKind::Audio);
    let frames = sim.endpoints[0].endpoint.stats()[&audio].frames;
    let now = sim.now;
    let endpoint = &mut sim.endpoints[0].endpoint;
    let local = endpoint.local_addr();
    let stranger = SocketAddr::from(([127, 0, 0, 9], 9));
    for garbage in [&[][..], &[0xff; 40], &[0x80; 60]] {
        endpoint
            .handle_datagram(now, stranger, local, garbage)
            .expect("garbage is ignored, not an error");
    }
    assert!(endpoint.ignored().0 >= 1);
    assert!(endpoint.is_alive());
    sim.run_for(Duration::from_millis(500));
    assert!(sim.endpoints[0].endpoint.is_connected());
    assert!(sim.endpoints[0].endpoint.stats()[&audio].frames > frames + 20);
    assert_no_errors(&sim);
}

#[test]
fn a_partition_is_noticed_without_spinning() {
    let mut sim = two_way();
    sim.run_for(Duration::from_secs(1));
    let sent = sim.endpoints[0].endpoint.sent().audio_packets;
    sim.set_link(
        0,
        Link {
            loss_up: 1.0,
            loss_down: 1.0,
            delay: Duration::ZERO,
            ..Link::default()
        },
    );

    // Step the world from one of the endpoint's wake-ups to the next for a virtual minute.
    // Media timers (50 + 15 a second) dominate; an endpoint that keeps asking to be woken at
    // once would need orders of magnitude more steps.
    let limit = 60 * 200;
    let start = sim.now;
    let end = start + Duration::from_secs(60);
    let mut wakeups = 0;
    while sim.now < end {
        assert!(
            wakeups < limit,
            "{wakeups} wake-ups in the first {:?}: the endpoint spins",
            sim.now - start
        );
        let next = sim.endpoints[0].endpoint.poll_timeout();
        let wait = next.saturating_duration_since(sim.now);
        sim.run_for(wait.max(Duration::from_micros(1)));
        wakeups += 1;
    }

    let endpoint = &sim.endpoints[0].endpoint;
    assert!(
        endpoint.ice_disconnected_at().is_some(),
        "{:?}",
        endpoint.ice_state()
    );
    assert!(!endpoint.is_connected());
    assert!(
        endpoint.sent().audio_packets < sent + 60 * 50,
        "nothing is written while disconnected"
    );
    let participant = sim.endpoints[0].participant;
    assert!(
        sim.events.iter().any(
            |e| matches!(e, SfuEvent::MediaDisconnected { participant: p } if *p == participant)
        ),
        "the engine noticed too"
    );
}

#[test]
fn close_ends_the_endpoint() {
    let mut sim = two_way();
    sim.run_for(Duration::from_millis(500));
    let publication = publication(&sim, 1, MediaKind::Audio);
    let now = sim.now;
    let endpoint = &mut sim.endpoints[0].endpoint;
    endpoint.unsubscribe(publication);
    endpoint.close(now).expect("close");
    assert!(!endpoint.has_pending_changes());
    assert!(endpoint.create_offer().is_none(), "no offer after close");
    sim.run_for(Duration::from_millis(500));
    let endpoint = &sim.endpoints[0].endpoint;
    assert!(!endpoint.is_alive());
    assert!(endpoint.poll_timeout() > sim.now);
    assert_no_errors(&sim);
}

/// End-to-end encryption through the real engine: the SFU forwards sealed frames (it finds
/// keyframes and switches layers by the clear VP8 prefix), key holders decrypt and decode
/// every genuine frame, nothing else decodes anything, and corrupted frames are dropped.
#[test]
fn encrypted_media_is_decoded_by_key_holders_only() {
    const KEY: sframe::BaseKey = *b"a 16-byte secret";
    const TAMPER_EVERY: u64 = 4;
    let kid = sframe::kid(7, 0);
    // Every frame is counted once: with fast start the SFU may answer the key holder's
    // keyframe requests (after a tampered frame) by replaying the GOP, tampered frames again.
    let mut sim = Sim::with_config(|c| c.fast_start = false);
    let receive_only = |c: &mut EndpointConfig| {
        c.publish_audio = false;
        c.publish_video = false;
    };
    // Publishes with generation 0 of the key and corrupts every fourth frame it seals.
    let tamperer = sim.join("r", |c| {
        c.e2ee = Some(E2eeConfig {
            tamper_every: TAMPER_EVERY,
            ..E2eeConfig::with_key(kid, KEY)
        });
    });
    // Publishes three simulcast layers with generation 1, which holders of generation 0
    // derive forward; it holds no generation 0, and cannot go back to it.
    let ratcheted = sim.join("r", |c| {
        c.e2ee = Some(E2eeConfig::with_key(kid + 1, sframe::ratchet(&KEY)));
        c.simulcast_frame_bytes = vec![300, 800, 2_000];
    });
    let keyed = sim.join("r", |c| {
        receive_only(c);
        c.e2ee = Some(E2eeConfig::with_key(kid, KEY));
    });
    let keyless = sim.join("r", |c| {
        receive_only(c);
        c.e2ee = Some(E2eeConfig::keyless());
    });
    // Not in E2EE mode: it sees the frames as the SFU does.
    let outsider = sim.join("r", receive_only);
    sim.run_for(Duration::from_secs(3));
    assert_no_errors(&sim);

    let stats = |me: usize, other: usize, kind: MediaKind| {
        sim.endpoints[me].endpoint.stats()[&publication(&sim, other, kind)].clone()
    };
    let kinds = [MediaKind::Audio, MediaKind::Video];

    // The tamperer sealed everything it sent and corrupted exactly every fourth frame.
    let sent = sim.endpoints[tamperer].endpoint.sent().clone();
    assert_eq!(sent.write_errors, 0);
    assert_eq!(sent.frames_sealed, sent.audio_packets + sent.video_frames);
    assert_eq!(sent.frames_tampered, sent.frames_sealed / TAMPER_EVERY);
    assert!(sent.frames_tampered > 0, "{sent:?}");

    // The key holder: every frame either decrypted and was decoded, or failed and was not.
    // Only the tamperer's corrupted frames failed.
    let mut failures = 0;
    for kind in kinds {
        let from_tamperer = stats(keyed, tamperer, kind);
        assert_eq!(
            from_tamperer.frames_decrypted + from_tamperer.decrypt_failures,
            from_tamperer.frames,
            "{from_tamperer:?}"
        );
        assert!(from_tamperer.frames_decrypted > 0, "{from_tamperer:?}");
        failures += from_tamperer.decrypt_failures;
        let decoded = match kind {
            MediaKind::Audio => from_tamperer.audio_frames_decoded,
            MediaKind::Video => from_tamperer.video_frames,
        };
        assert_eq!(decoded, from_tamperer.frames_decrypted, "{from_tamperer:?}");

        let from_ratcheted = stats(keyed, ratcheted, kind);
        assert_eq!(from_ratcheted.decrypt_failures, 0, "{from_ratcheted:?}");
        assert_eq!(from_ratcheted.frames_decrypted, from_ratcheted.frames);
        assert!(from_ratcheted.frames > 0, "{from_ratcheted:?}");
    }
    assert!(
        failures > 0 && failures <= sent.frames_tampered,
        "{failures} failures, {} tampered",
        sent.frames_tampered
    );
    let keyed_endpoint = &sim.endpoints[keyed].endpoint;
    for (other, hz, tag) in [(tamperer, 300.0, 1000), (ratcheted, 400.0, 1001)] {
        let heard = keyed_endpoint
            .dominant_frequency(publication(&sim, other, MediaKind::Audio))
            .expect("enough audio");
        assert!((heard - hz).abs() <= 10.0, "heard {heard} Hz, want {hz}");
        let video = stats(keyed, other, MediaKind::Video);
        assert_eq!(video.video_tag, Some(tag), "{video:?}");
        assert_eq!((video.untagged_frames, video.tag_changes), (0, 0));
        assert_eq!(
            video.first_keyframe_at, video.first_media_at,
            "the SFU starts the video on a keyframe it found in the clear prefix"
        );
    }
    let top = stats(keyed, ratcheted, MediaKind::Video);
    assert_eq!(top.video_layer, Some(2), "{top:?}");

    // Without the key, or with only a later generation, packets arrive and nothing decodes.
    for (me, other) in [
        (keyless, tamperer),
        (keyless, ratcheted),
        (ratcheted, tamperer),
    ] {
        for kind in kinds {
            let s = stats(me, other, kind);
            assert!(s.rtp_packets > 0 && s.frames > 0, "{s:?}");
            assert_eq!(s.frames_decrypted, 0, "{s:?}");
            assert_eq!(s.decrypt_failures, s.frames, "{s:?}");
            assert_eq!(s.audio_frames_decoded + s.video_frames + s.keyframes, 0);
        }
    }
    // The tamperer, holding generation 0, derives the later generation forward.
    for kind in kinds {
        let s = stats(tamperer, ratcheted, kind);
        assert_eq!((s.frames_decrypted, s.decrypt_failures), (s.frames, 0));
    }

    // What the SFU forwards is ciphertext past the clear prefix: no tag is readable, yet the
    // keyframes are found.
    for other in [tamperer, ratcheted] {
        let s = stats(outsider, other, MediaKind::Video);
        assert!(s.video_frames > 0, "{s:?}");
        assert_eq!(s.untagged_frames, s.video_frames, "{s:?}");
        assert_eq!(s.video_tag, None);
        assert!(s.keyframes > 0, "{s:?}");
        assert_eq!((s.frames_decrypted, s.decrypt_failures), (0, 0));
    }
}
