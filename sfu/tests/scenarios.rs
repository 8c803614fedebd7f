//! Media-core scenarios in virtual time: several simulated endpoints, a lossy link, late
//! joiners and keyframe throttling. No sockets; seconds of media run in milliseconds.

mod sim;

use std::time::Duration;

use protocol::MediaKind;
use sim::{Link, Sim, assert_receives};

#[test]
fn three_endpoints_each_receive_the_other_two() {
    let mut sim = Sim::new();
    for _ in 0..3 {
        sim.join("r", |_| {});
    }
    sim.run_for(Duration::from_secs(3));
    for receiver in 0..3 {
        for sender in 0..3 {
            if receiver != sender {
                assert_receives(&sim, receiver, sender);
            }
        }
        assert!(
            sim.endpoints[receiver].errors.is_empty(),
            "{:?}",
            sim.endpoints[receiver].errors
        );
    }
    let (rooms, participants, publications, subscriptions) = sim.engine.census();
    assert_eq!(
        (rooms, participants, publications, subscriptions),
        (1, 3, 6, 12)
    );
}

#[test]
fn rooms_are_isolated() {
    let mut sim = Sim::new();
    let a = sim.join("a", |_| {});
    let b = sim.join("b", |_| {});
    sim.run_for(Duration::from_secs(2));
    // The simulation offers every publication to everyone; the engine must refuse the
    // cross-room subscriptions and forward nothing.
    for (receiver, sender) in [(a, b), (b, a)] {
        for publication in sim.publications_of(sender) {
            let frames = sim.endpoints[receiver]
                .endpoint
                .stats()
                .get(&publication.id)
                .map_or(0, |s| s.frames);
            assert_eq!(frames, 0, "media crossed rooms");
        }
    }
    assert!(sim.engine.stats().refused_subscriptions >= 4);
}

#[test]
fn loss_on_a_link_is_repaired_by_nack() {
    let mut sim = Sim::new();
    let publisher = sim.join("r", |c| {
        c.video_fps = 30;
        c.video_frame_bytes = 3_000;
    });
    let subscriber = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(1));
    let link = Link {
        loss_up: 0.0,
        loss_down: 0.05,
        delay: Duration::from_millis(20),
        ..Link::default()
    };
    sim.set_link(subscriber, link);
    sim.set_link(
        publisher,
        Link {
            loss_up: 0.05,
            loss_down: 0.0,
            delay: Duration::from_millis(20),
            ..Link::default()
        },
    );
    let video = sim.publication(publisher, MediaKind::Video);
    let sent_before = sim.endpoints[publisher].endpoint.sent().video_frames;
    let received_before = sim.endpoints[subscriber].endpoint.stats()[&video.id].video_frames;
    sim.run_for(Duration::from_secs(5));
    // Let retransmissions of the last frames land.
    sim.set_link(subscriber, Link::default());
    sim.set_link(publisher, Link::default());
    sim.run_for(Duration::from_millis(500));
    let sent = sim.endpoints[publisher].endpoint.sent().video_frames - sent_before;
    let received =
        sim.endpoints[subscriber].endpoint.stats()[&video.id].video_frames - received_before;
    assert!(sim.engine.stats().nacks_received > 0);
    // Each 3 kB frame spans three packets: with 5% loss on both hops and no repair, about a
    // quarter of the frames would be incomplete.
    assert!(
        received as f64 >= sent as f64 * 0.97,
        "received {received} of {sent} frames through 5% loss each way"
    );
}

#[test]
fn late_joiner_gets_a_keyframe_within_one_second() {
    let mut sim = Sim::new();
    // The publisher sends a keyframe only at the start and when asked.
    let publisher = sim.join("r", |c| c.keyframe_interval = None);
    sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(4));
    let late = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(2));
    let video = sim.publication(publisher, MediaKind::Video);
    let stats = &sim.endpoints[late].endpoint.stats()[&video.id];
    let first_keyframe = stats
        .first_keyframe_at
        .expect("the late joiner got a keyframe");
    let answered = sim.endpoints[late].answered_at[0];
    let waited = first_keyframe.duration_since(answered);
    assert!(
        waited <= Duration::from_secs(1),
        "late joiner waited {waited:?} of virtual time for a keyframe"
    );
    // The first frame it shows is that keyframe, never a delta frame.
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
}

#[test]
fn keyframe_requests_reach_the_publisher_at_most_once_per_second() {
    // Without fast start every joiner asks for a keyframe: the throttle's worst case. (With
    // it, this storm asks for none; see `fast_start.rs`.)
    let mut sim = Sim::with_config(|c| c.fast_start = false);
    let publisher = sim.join("r", |c| c.keyframe_interval = None);
    sim.run_for(Duration::from_millis(500));
    // A join storm: every joiner asks for a keyframe as it subscribes.
    for _ in 0..30 {
        sim.join("r", |c| {
            c.publish_audio = false;
            c.publish_video = false;
        });
        sim.run_for(Duration::from_millis(20));
    }
    let before = sim.endpoints[publisher]
        .endpoint
        .sent()
        .keyframe_requests_received;
    let start = sim.now;
    sim.run_for(Duration::from_secs(3));
    let received = sim.endpoints[publisher]
        .endpoint
        .sent()
        .keyframe_requests_received;
    let elapsed = sim.now.duration_since(start).as_secs_f64();
    let storm_window = 0.6 + elapsed;
    let allowed = storm_window.ceil() as u64 + 1;
    assert!(
        received <= allowed,
        "publisher got {received} keyframe requests in {storm_window:.1} s"
    );
    assert!(received - before <= elapsed.ceil() as u64 + 1);
    assert!(sim.engine.stats().keyframe_requests_throttled > 0);
    // Every joiner still got video.
    let video = sim.publication(publisher, MediaKind::Video);
    for e in &sim.endpoints[1..] {
        assert!(e.endpoint.stats()[&video.id].keyframes >= 1);
    }
}

#[test]
fn garbage_datagrams_are_dropped_and_media_keeps_flowing() {
    let mut sim = Sim::new();
    let a = sim.join("r", |_| {});
    let b = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(1));
    let audio = sim.publication(a, MediaKind::Audio);
    let before = sim.endpoints[b].endpoint.stats()[&audio.id].audio_frames_decoded;
    let stranger = "127.0.9.9:5000".parse().expect("address");
    let known = sim.endpoints[a].endpoint.local_addr();
    let stats_before = sim.engine.stats().clone();
    // Random bytes from an unknown address; a truncated STUN header; an oversized datagram.
    sim.inject(stranger, &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    sim.inject(stranger, &[0x00, 0x01, 0x00, 0x50, 0x21, 0x12, 0xa4, 0x42]);
    sim.inject(stranger, &[0x80; 2000]);
    // RTP-looking garbage with a bad version, and with an SSRC the sender never negotiated,
    // from the address of a connected participant.
    sim.inject(known, &[0x40, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    let mut fake_rtp = vec![0x80, 0x60, 0, 1, 0, 0, 0, 1, 0x0b, 0xad, 0xf0, 0x0d];
    fake_rtp.extend_from_slice(&[0u8; 40]);
    sim.inject(known, &fake_rtp);
    // Truncated RTP headers of every length.
    for len in 0..12 {
        sim.inject(known, &fake_rtp[..len]);
    }
    sim.run_for(Duration::from_secs(1));
    let stats = sim.engine.stats();
    let refused = |s: &sfu::EngineStats| s.dropped_unknown_source + s.dropped_malformed;
    assert!(refused(stats) >= refused(&stats_before) + 2);
    assert!(stats.dropped_oversize > stats_before.dropped_oversize);
    assert!(stats.dropped_unknown_ssrc > stats_before.dropped_unknown_ssrc);
    let after = sim.endpoints[b].endpoint.stats()[&audio.id].audio_frames_decoded;
    assert!(
        after >= before + 40,
        "audio kept flowing: {before} -> {after}"
    );
}

#[test]
fn a_departure_removes_its_publications_and_the_rest_continue() {
    let mut sim = Sim::new();
    let a = sim.join("r", |_| {});
    let b = sim.join("r", |_| {});
    let c = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(1));
    sim.leave(c);
    sim.run_for(Duration::from_secs(1));
    let (_, participants, publications, subscriptions) = sim.engine.census();
    assert_eq!((participants, publications, subscriptions), (2, 4, 4));
    let audio = sim.publication(a, MediaKind::Audio);
    let before = sim.endpoints[b].endpoint.stats()[&audio.id].audio_frames_decoded;
    sim.run_for(Duration::from_secs(1));
    let after = sim.endpoints[b].endpoint.stats()[&audio.id].audio_frames_decoded;
    assert!(after >= before + 40);
    assert!(sim.events.iter().any(|e| matches!(
        e,
        sfu::SfuEvent::PublicationRemoved { participant, .. } if *participant == sim.endpoints[c].participant
    )));
}

#[test]
fn h264_passes_through_and_a_late_joiner_starts_on_its_keyframe() {
    let mut sim = Sim::new();
    let publisher = sim.join("r", |c| {
        c.video_codec = endpoint::media::SyntheticCodec::H264;
        c.keyframe_interval = None;
    });
    sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(2));
    let late = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(2));
    let tag = sim.endpoints[publisher].endpoint.config().video_tag;
    let video = sim.publication(publisher, MediaKind::Video);
    for receiver in [1, late] {
        let stats = &sim.endpoints[receiver].endpoint.stats()[&video.id];
        assert!(
            stats.video_frames >= 10,
            "{receiver} got {} H.264 frames",
            stats.video_frames
        );
        assert_eq!(stats.video_tag, Some(tag));
        assert_eq!(stats.untagged_frames, 0);
        // The SFU recognised the H.264 IDR as a keyframe: the late joiner's first frame is one.
        assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    }
}

#[test]
fn a_recorded_room_feeds_the_recording_tap_and_only_that_room() {
    use sfu::SfuCommand;
    use sfu::codec::{VideoCodec, is_keyframe};
    use sfu::recording::{RecordedCodec, RecordedMedia};

    let mut sim = Sim::new();
    sim.join("council", |_| {});
    sim.join("council", |_| {});
    sim.join("elsewhere", |_| {});
    sim.run_for(Duration::from_secs(1));
    let room = protocol::RoomId("council".into());
    let now = sim.now;
    sim.engine.handle_command(
        now,
        SfuCommand::StartRecording {
            room: room.clone(),
            recording_id: "rec1".into(),
            e2ee: true,
        },
    );
    let mut recorded = Vec::new();
    for _ in 0..20 {
        sim.run_for(Duration::from_millis(100));
        while let Some(media) = sim.engine.poll_recorded() {
            recorded.push(media);
        }
    }
    let now = sim.now;
    sim.engine
        .handle_command(now, SfuCommand::StopRecording { room: room.clone() });
    sim.run_for(Duration::from_millis(500));
    while let Some(media) = sim.engine.poll_recorded() {
        recorded.push(media);
    }

    assert!(
        matches!(&recorded[0], RecordedMedia::Started { room: r, recording_id, e2ee: true, .. } if *r == room && recording_id == "rec1"),
        "the recorder learns the recording id and that the media is encrypted"
    );
    assert!(matches!(recorded.last(), Some(RecordedMedia::Stopped { room: r, .. }) if *r == room));
    let council: Vec<_> = [0, 1]
        .iter()
        .flat_map(|i| sim.publications_of(*i))
        .map(|p| p.id)
        .collect();
    let tracks: Vec<_> = recorded
        .iter()
        .filter_map(|m| match m {
            RecordedMedia::Track { publication, .. } => Some(*publication),
            _ => None,
        })
        .collect();
    assert_eq!(tracks.len(), 4, "two participants, audio and video each");
    assert!(tracks.iter().all(|t| council.contains(t)));
    let elsewhere: Vec<_> = sim.publications_of(2).into_iter().map(|p| p.id).collect();
    for publication in &council {
        let packets: Vec<_> = recorded
            .iter()
            .filter_map(|m| match m {
                RecordedMedia::Packet {
                    publication: p,
                    codec,
                    payload,
                    ..
                } if p == publication => Some((*codec, payload.clone())),
                _ => None,
            })
            .collect();
        assert!(
            packets.len() > 20,
            "{publication}: {} packets",
            packets.len()
        );
        if packets[0].0 == RecordedCodec::Vp8 {
            // The publisher was asked for a keyframe when recording started.
            assert!(
                packets
                    .iter()
                    .any(|(_, payload)| is_keyframe(VideoCodec::Vp8, payload)),
                "{publication}: no keyframe recorded"
            );
        }
    }
    assert!(
        !recorded.iter().any(|m| matches!(m, RecordedMedia::Packet { publication, .. } if elsewhere.contains(publication))),
        "another room's media reached the recording"
    );
}

#[test]
fn an_unsubscribe_stops_forwarding_without_a_new_offer() {
    use sfu::SfuCommand;

    let mut sim = Sim::new();
    sim.join("r", |_| {});
    sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(2));
    let sent: Vec<_> = sim.publications_of(0).into_iter().map(|p| p.id).collect();
    let received = |sim: &Sim| -> u64 {
        let stats = sim.endpoints[1].endpoint.stats();
        sent.iter()
            .filter_map(|id| stats.get(id))
            .map(|s| s.rtp_packets)
            .sum()
    };
    assert!(received(&sim) > 50, "media flows before");
    // Endpoint 1 keeps its m-lines and sends no new offer, as a client that ignores a role
    // change would.
    let now = sim.now;
    let participant = sim.endpoints[1].participant;
    sim.engine.handle_command(
        now,
        SfuCommand::Unsubscribe {
            participant,
            publications: sent.clone(),
        },
    );
    sim.run_for(Duration::from_millis(300));
    let after_grace = received(&sim);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(received(&sim), after_grace, "nothing more is forwarded");
    // Endpoint 0 still receives endpoint 1: only that direction stopped.
    let back: Vec<_> = sim.publications_of(1).into_iter().map(|p| p.id).collect();
    let stats = sim.endpoints[0].endpoint.stats();
    let counts: Vec<u64> = back
        .iter()
        .filter_map(|id| stats.get(id))
        .map(|s| s.rtp_packets)
        .collect();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.iter().all(|c| *c > 50), "{counts:?}");
}

#[test]
fn candidates_the_server_cannot_pair_with_do_not_fail_the_connection() {
    // A browser gathers TCP and IPv6 candidates too, and may trickle one of them before its
    // first check reaches the server. The server can pair none of them with its one UDP IPv4
    // candidate; counted as the only candidates, they made the ICE agent declare the
    // connection failed, and the participant was removed as timed out. Here the endpoints
    // give only such candidates, and their checks arrive 300 ms later.
    let mut sim = Sim::new();
    let unpairable = vec![
        "candidate:1 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active".to_string(),
        "candidate:2 1 udp 2122262783 ::1 50000 typ host".to_string(),
    ];
    let slow = Link {
        delay: Duration::from_millis(300),
        ..Link::default()
    };
    let a = sim.join_with("r", |_| {}, slow, unpairable.clone());
    let b = sim.join_with("r", |_| {}, slow, unpairable);
    sim.run_for(Duration::from_secs(6));
    let disconnected: Vec<_> = sim
        .events
        .iter()
        .filter(|e| matches!(e, sfu::SfuEvent::MediaDisconnected { .. }))
        .collect();
    assert!(disconnected.is_empty(), "{disconnected:?}");
    assert_receives(&sim, a, b);
    assert_receives(&sim, b, a);
}

#[test]
fn a_certificate_that_is_not_the_offered_one_fails_the_transport_at_once() {
    let mut sim = Sim::new();
    let honest = sim.join("r", |_| {});
    let impostor = sim.join_impostor("r");
    sim.run_for(Duration::from_secs(2));
    let impostor_id = sim.endpoints[impostor].participant;
    let reasons: Vec<String> = sim
        .events
        .iter()
        .filter_map(|event| match event {
            sfu::SfuEvent::TransportFailed {
                participant,
                failure: sfu::TransportFailure::Dtls { reason },
            } if *participant == impostor_id => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "{:?}", sim.events);
    assert!(reasons[0].contains("a=fingerprint"), "{}", reasons[0]);
    // Reported as a failed handshake, never as a transport that went quiet or connected.
    assert!(!sim.events.iter().any(|event| matches!(
        event,
        sfu::SfuEvent::MediaDisconnected { participant }
            | sfu::SfuEvent::MediaConnected { participant } if *participant == impostor_id
    )));
    assert_eq!(sim.engine.stats().dtls_failures, 1);
    assert_eq!(sim.engine.stats().transport_failures, 0);
    let (_, participants, _, _) = sim.engine.census();
    assert_eq!(participants, 1);
    assert!(sim.events.iter().any(|event| matches!(
        event,
        sfu::SfuEvent::MediaConnected { participant } if *participant == sim.endpoints[honest].participant
    )));
}

/// The offer without its `a=ssrc` and `a=ssrc-group` lines, as a client that announces no
/// SSRC writes it (browsers for simulcast, GStreamer's webrtcbin before its encoder runs).
fn without_ssrc_lines(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .filter(|l| !l.starts_with("a=ssrc:") && !l.starts_with("a=ssrc-group:"))
        .collect()
}

/// [`without_ssrc_lines`], and without the mid header extension either: the server can tell
/// the m-line of the client's media by its payload type only (webrtcbin 1.22's offer).
fn without_ssrc_lines_or_mid_extension(sdp: &str) -> String {
    without_ssrc_lines(sdp)
        .split_inclusive('\n')
        .filter(|l| {
            !(l.starts_with("a=extmap:") && l.contains("urn:ietf:params:rtp-hdrext:sdes:mid"))
        })
        .collect()
}

/// The offer with only `codec` (and its RTX) left in every video section, as a client that
/// decodes or encodes nothing else offers.
fn video_only_in(sdp: &str, codec: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut sections = sdp.split("\r\nm=");
    out.push_str(sections.next().unwrap_or_default());
    for section in sections {
        out.push_str("\r\nm=");
        if !section.starts_with("video") {
            out.push_str(section);
            continue;
        }
        let pt_of = |line: &str, prefix: &str| -> Option<String> {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.split([' ', ':']).next())
                .map(str::to_owned)
        };
        let mut kept: Vec<String> = section
            .lines()
            .filter(|l| {
                l.strip_prefix("a=rtpmap:")
                    .and_then(|r| r.split_whitespace().nth(1))
                    .is_some_and(|name| name.starts_with(&format!("{codec}/")))
            })
            .filter_map(|l| pt_of(l, "a=rtpmap:"))
            .collect();
        let rtx: Vec<String> = section
            .lines()
            .filter(|l| {
                l.strip_prefix("a=fmtp:")
                    .is_some_and(|r| kept.iter().any(|pt| r.contains(&format!("apt={pt}"))))
            })
            .filter_map(|l| pt_of(l, "a=fmtp:"))
            .collect();
        kept.extend(rtx);
        let mut lines = section.split("\r\n");
        let m_line = lines.next().unwrap_or_default();
        let head: Vec<&str> = m_line.split(' ').take(3).collect();
        out.push_str(&head.join(" "));
        for pt in &kept {
            out.push(' ');
            out.push_str(pt);
        }
        for line in lines {
            let pt = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
                .iter()
                .find_map(|prefix| pt_of(line, prefix));
            if pt.is_some_and(|pt| pt != "*" && !kept.contains(&pt)) {
                continue;
            }
            out.push_str("\r\n");
            out.push_str(line);
        }
    }
    out
}

#[test]
fn a_publisher_without_ssrc_lines_is_received_by_its_mid_extension() {
    let mut sim = Sim::new();
    let publisher = sim.join_rewriting("r", |_| {}, without_ssrc_lines);
    let subscriber = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(3));
    assert_receives(&sim, subscriber, publisher);
    assert!(
        sim.endpoints[publisher].errors.is_empty(),
        "{:?}",
        sim.endpoints[publisher].errors
    );
}

#[test]
fn a_publisher_without_ssrc_lines_or_mid_extension_is_received_by_payload_type() {
    let mut sim = Sim::new();
    let publisher = sim.join_rewriting("r", |_| {}, without_ssrc_lines_or_mid_extension);
    let subscriber = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(3));
    assert_receives(&sim, subscriber, publisher);
    assert!(
        sim.endpoints[publisher].errors.is_empty(),
        "{:?}",
        sim.endpoints[publisher].errors
    );
    // A packet forged from the publisher's address on a new SSRC with the video's payload
    // type cannot authenticate, so it does not take the publisher's stream over.
    let video = sim.publication(publisher, MediaKind::Video);
    let frames = sim.endpoints[subscriber].endpoint.stats()[&video.id].video_frames;
    let known = sim.endpoints[publisher].endpoint.local_addr();
    let mut forged = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0x0b, 0xad, 0xf0, 0x0d];
    forged.extend_from_slice(&[0u8; 40]);
    sim.inject(known, &forged);
    sim.run_for(Duration::from_secs(1));
    let after = sim.endpoints[subscriber].endpoint.stats()[&video.id].video_frames;
    assert!(
        after >= frames + 10,
        "video kept flowing: {frames} -> {after}"
    );
}

#[test]
fn media_matching_no_m_line_is_counted_and_its_sender_told_once() {
    let mut sim = Sim::new();
    let publisher = sim.join("r", |_| {});
    sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(1));
    let before = sim.engine.stats().dropped_unknown_ssrc;
    let known = sim.endpoints[publisher].endpoint.local_addr();
    // Payload type 50 is on none of its m-lines, and the SSRC is in no offer.
    let mut stray = vec![0x80, 50, 0, 1, 0, 0, 0, 1, 0x0b, 0xad, 0xf0, 0x0d];
    stray.extend_from_slice(&[0u8; 40]);
    for seq in 1..=3u8 {
        stray[3] = seq;
        sim.inject(known, &stray);
    }
    sim.run_for(Duration::from_millis(200));
    assert!(
        sim.engine.stats().dropped_unknown_ssrc >= before + 3,
        "each stray packet is counted"
    );
    let participant = sim.endpoints[publisher].participant;
    let told: Vec<&String> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            sfu::SfuEvent::Refused {
                participant: p,
                code: protocol::ErrorCode::UnroutableMedia,
                message,
            } if *p == participant => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(told.len(), 1, "told once: {told:?}");
    assert!(told[0].contains("payload type 50"), "{}", told[0]);
    // Its own media still flows.
    let audio = sim.publication(publisher, MediaKind::Audio);
    assert!(sim.endpoints[1].endpoint.stats()[&audio.id].audio_frames_decoded > 0);
}

#[test]
fn publication_added_names_the_codec_sent() {
    let mut sim = Sim::new();
    let vp8 = sim.join("r", |_| {});
    let h264 = sim.join_rewriting(
        "r",
        |c| c.video_codec = endpoint::media::SyntheticCodec::H264,
        |sdp| video_only_in(sdp, "H264"),
    );
    sim.run_for(Duration::from_millis(500));
    let codec = |index, kind| sim.publication(index, kind).codec;
    assert_eq!(codec(vp8, MediaKind::Audio).as_deref(), Some("audio/opus"));
    assert_eq!(codec(vp8, MediaKind::Video).as_deref(), Some("video/VP8"));
    assert_eq!(codec(h264, MediaKind::Video).as_deref(), Some("video/H264"));
}

#[test]
fn an_h264_publication_subscribed_from_a_vp8_only_m_line_is_refused_naming_the_codec() {
    let mut sim = Sim::new();
    let publisher = sim.join_rewriting(
        "r",
        |c| {
            c.video_codec = endpoint::media::SyntheticCodec::H264;
            c.keyframe_interval = None;
        },
        |sdp| video_only_in(sdp, "H264"),
    );
    let vp8_only = sim.join_rewriting("r", |_| {}, |sdp| video_only_in(sdp, "VP8"));
    let both = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(2));
    let video = sim.publication(publisher, MediaKind::Video);
    let refusal = format!("publication {} is sent in video/H264", video.id);
    let errors = &sim.endpoints[vp8_only].errors;
    assert!(
        errors.iter().filter(|e| e.starts_with(&refusal)).count() >= 1,
        "{errors:?}"
    );
    let code_sent = sim.events.iter().any(|e| {
        matches!(e, sfu::SfuEvent::Refused { participant, code: protocol::ErrorCode::CodecUnsupported, .. }
            if *participant == sim.endpoints[vp8_only].participant)
    });
    assert!(code_sent);
    // It still hears the publisher, and a subscriber that offers H.264 sees it.
    let audio = sim.publication(publisher, MediaKind::Audio);
    assert!(sim.endpoints[vp8_only].endpoint.stats()[&audio.id].audio_frames_decoded > 0);
    assert!(sim.endpoints[both].endpoint.stats()[&video.id].video_frames >= 10);
    assert!(
        sim.endpoints[both].errors.is_empty(),
        "{:?}",
        sim.endpoints[both].errors
    );
}

#[test]
fn a_client_that_closes_its_transport_long_after_connecting_is_not_reported_as_gone_quiet() {
    // Its DTLS connection has settled by then (OpenSSL's state let go, see `dtls`): the
    // close_notify must still be recognised, or the departure waits for ICE to time out and is
    // reported as a transport that went quiet.
    let mut sim = Sim::new();
    let leaving = sim.join("r", |_| {});
    let staying = sim.join("r", |_| {});
    sim.run_for(Duration::from_secs(20));
    let now = sim.now;
    sim.endpoints[leaving]
        .endpoint
        .close(now)
        .expect("a clean close");
    sim.run_for(Duration::from_secs(40));
    let id = sim.endpoints[leaving].participant;
    let quiet: Vec<_> = sim
        .events
        .iter()
        .filter(
            |e| matches!(e, sfu::SfuEvent::MediaDisconnected { participant } if *participant == id),
        )
        .collect();
    assert!(quiet.is_empty(), "{quiet:?}");
    assert!(sim.endpoints[staying].errors.is_empty());
}
