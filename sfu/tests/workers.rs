//! One room across several media workers, in virtual time: each participant's transport is
//! on one worker (placed by the test), publications are mirrored to the workers whose
//! participants subscribe to them, and everyone still receives everyone.

mod sim;

use std::time::Duration;

use protocol::MediaKind;
use sim::{Link, Sim, assert_receives};

#[test]
fn a_meeting_spread_over_three_workers_hears_and_sees_everyone() {
    // Every microphone is forwarded (by default only the five loudest are).
    let mut sim = Sim::with_workers(3, |c| c.max_audio_streams = None);
    // Two participants per worker, all publishing.
    let everyone: Vec<usize> = (0..6).map(|i| sim.join_on(i % 3, "r", |_| {})).collect();
    sim.run_for(Duration::from_secs(4));
    for &receiver in &everyone {
        for &sender in &everyone {
            if receiver != sender {
                assert_receives(&sim, receiver, sender);
                let video = sim.publication(sender, MediaKind::Video).id;
                let stats = &sim.endpoints[receiver].endpoint.stats()[&video];
                assert_eq!(stats.discontinuities, 0, "{receiver} from {sender}");
            }
        }
        assert!(
            sim.endpoints[receiver].errors.is_empty(),
            "{:?}",
            sim.endpoints[receiver].errors
        );
    }
    // Each packet crosses to another worker once per worker, not once per subscriber there:
    // with two subscribers per worker, packets relayed are about half the packets forwarded
    // to other workers' subscribers.
    let stats = sim.total_stats();
    assert!(stats.rtp_relayed_out > 0);
    assert_eq!(stats.rtp_relayed_out, stats.rtp_relayed_in);
    // Every publication has one owner: the census counts it once.
    let publications: usize = (0..3).map(|w| sim.worker(w).census().2).sum();
    assert_eq!(publications, 12);
}

#[test]
fn viewers_on_other_workers_get_the_broadcast_and_the_presenter_one_keyframe_a_second() {
    let mut sim = Sim::with_workers(4, |_| {});
    let presenter = sim.join_on(2, "r", |c| {
        c.keyframe_interval = None;
    });
    sim.run_for(Duration::from_secs(1));
    // A burst of viewers on every worker, all asking for a keyframe as they start.
    let viewers: Vec<usize> = (0..40)
        .map(|i| {
            sim.join_on(i % 4, "r", |c| {
                c.publish_audio = false;
                c.publish_video = false;
            })
        })
        .collect();
    sim.run_for(Duration::from_secs(4));
    for &viewer in &viewers {
        let video = sim.publication(presenter, MediaKind::Video).id;
        let stats = &sim.endpoints[viewer].endpoint.stats()[&video];
        assert!(stats.video_frames >= 10, "viewer {viewer}: {stats:?}");
        assert_eq!(stats.discontinuities, 0, "viewer {viewer}");
    }
    // The presenter's worker alone asks the presenter, through its throttle.
    let requests = sim.endpoints[presenter]
        .endpoint
        .sent()
        .keyframe_requests_received;
    assert!(
        requests <= 6,
        "the presenter was asked for {requests} keyframes in 5 s"
    );
}

#[test]
fn a_subscriber_on_another_worker_switches_layers_without_a_break() {
    let mut sim = Sim::with_workers(2, |_| {});
    let publisher = sim.join_on(0, "r", |c| {
        // About 150 kbit/s, 500 kbit/s and 1.2 Mbit/s at 15 fps, lowest first.
        c.simulcast_frame_bytes = vec![1_250, 4_150, 10_000];
        c.keyframe_interval = None;
    });
    let limited = sim.join_on(1, "r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    sim.set_link(
        limited,
        Link {
            rate_down: Some(300_000),
            ..Link::default()
        },
    );
    sim.run_for(Duration::from_secs(8));
    let video = sim.publication(publisher, MediaKind::Video).id;
    assert_eq!(
        sim.endpoints[limited].endpoint.stats()[&video].video_layer,
        Some(0),
        "a thin link gets the low layer"
    );
    sim.set_link(limited, Link::default());
    let took = sim.run_until(Duration::from_secs(30), |sim| {
        sim.endpoints[limited].endpoint.stats()[&video].video_layer == Some(2)
    });
    assert!(took.is_some(), "the subscriber reaches the top layer");
    let stats = &sim.endpoints[limited].endpoint.stats()[&video];
    assert_eq!(
        stats.discontinuities, 0,
        "switching never breaks the stream"
    );
    assert!(sim.total_stats().layer_switches >= 1);
}

#[test]
fn the_loudest_voices_are_chosen_across_workers() {
    let mut sim = Sim::with_workers(3, |c| c.max_audio_streams = Some(2));
    // Four microphones on three workers; the loud ones on workers 1 and 2.
    let voice = |level: i8| {
        move |c: &mut endpoint::EndpointConfig| {
            c.publish_video = false;
            c.audio_level = level;
        }
    };
    let loud_a = sim.join_on(1, "r", voice(-10));
    let loud_b = sim.join_on(2, "r", voice(-20));
    let quiet_a = sim.join_on(0, "r", voice(-60));
    let quiet_b = sim.join_on(2, "r", voice(-100));
    let listener = sim.join_on(0, "r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    sim.run_for(Duration::from_secs(4));
    let frames = |sim: &Sim, sender: usize| {
        let audio = sim.publication(sender, MediaKind::Audio).id;
        sim.endpoints[listener]
            .endpoint
            .stats()
            .get(&audio)
            .map_or(0, |s| s.frames)
    };
    let before = [loud_a, loud_b, quiet_a, quiet_b].map(|s| frames(&sim, s));
    sim.run_for(Duration::from_secs(2));
    let after = [loud_a, loud_b, quiet_a, quiet_b].map(|s| frames(&sim, s));
    assert!(
        after[0] > before[0] + 50 && after[1] > before[1] + 50,
        "{before:?} {after:?}"
    );
    assert_eq!(after[2], before[2], "a quiet voice is not forwarded");
    assert_eq!(after[3], before[3], "a quiet voice is not forwarded");
    // The coordinator announced a loud participant as the speaker.
    let speaker = sim.events.iter().rev().find_map(|e| match e {
        sfu::SfuEvent::ActiveSpeaker { participant, .. } => Some(*participant),
        _ => None,
    });
    assert_eq!(speaker, Some(Some(sim.endpoints[loud_a].participant)));
}

#[test]
fn a_mirror_stops_receiving_when_its_last_subscriber_leaves() {
    let mut sim = Sim::with_workers(2, |_| {});
    let publisher = sim.join_on(0, "r", |_| {});
    let viewer = sim.join_on(1, "r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    sim.run_for(Duration::from_secs(2));
    assert_receives(&sim, viewer, publisher);
    sim.leave(viewer);
    sim.run_for(Duration::from_millis(500));
    let relayed = sim.total_stats().rtp_relayed_out;
    sim.run_for(Duration::from_secs(2));
    // Only the publisher's audio still crosses: the coordinator (worker 0) is its owner here,
    // so nothing at all.
    assert_eq!(sim.total_stats().rtp_relayed_out, relayed);
}

#[test]
fn a_late_viewer_on_another_worker_starts_from_that_workers_cache() {
    let mut sim = Sim::with_workers(3, |_| {});
    // A keyframe a second keeps the caches within their age bound (2 s).
    let presenter = sim.join_on(1, "r", |c| {
        c.keyframe_interval = Some(Duration::from_secs(1));
    });
    let first = sim.join_on(2, "r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    sim.run_for(Duration::from_secs(3));
    let asked = sim.endpoints[presenter]
        .endpoint
        .sent()
        .keyframe_requests_received;
    // A second viewer on the same mirror: its worker's cache holds the GOP already.
    let late = sim.join_on(2, "r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    let video = sim.publication(presenter, MediaKind::Video).id;
    let took = sim.run_until(Duration::from_secs(3), |sim| {
        sim.endpoints[late]
            .endpoint
            .stats()
            .get(&video)
            .is_some_and(|s| s.keyframes >= 1 && s.video_frames >= 5)
    });
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(600)),
        "{took:?}"
    );
    assert!(sim.worker(2).stats().fast_starts >= 1);
    assert_eq!(
        sim.endpoints[presenter]
            .endpoint
            .sent()
            .keyframe_requests_received,
        asked,
        "the late viewer cost the presenter no keyframe"
    );
    assert_receives(&sim, first, presenter);
}

#[test]
fn the_coordinator_records_a_publication_owned_by_another_worker() {
    use sfu::SfuCommand;
    use sfu::recording::RecordedMedia;
    let mut sim = Sim::with_workers(2, |_| {});
    let presenter = sim.join_on(1, "r", |_| {});
    sim.run_for(Duration::from_secs(1));
    let now = sim.now;
    sim.worker(0).handle_command(
        now,
        SfuCommand::StartRecording {
            room: protocol::RoomId("r".into()),
            recording_id: "rec".into(),
            e2ee: false,
        },
    );
    let (audio, video) = (
        sim.publication(presenter, MediaKind::Audio).id,
        sim.publication(presenter, MediaKind::Video).id,
    );
    let mut tracks = Vec::new();
    let mut packets = [0u32; 2];
    let mut first_video_keyframe = None;
    for _ in 0..30 {
        sim.run_for(Duration::from_millis(100));
        while let Some(media) = sim.worker(0).poll_recorded() {
            match media {
                RecordedMedia::Track { publication, .. } => tracks.push(publication),
                RecordedMedia::Packet {
                    publication,
                    payload,
                    ..
                } => {
                    if publication == audio {
                        packets[0] += 1;
                    } else if publication == video {
                        packets[1] += 1;
                        first_video_keyframe.get_or_insert_with(|| {
                            sfu::codec::is_keyframe(sfu::codec::VideoCodec::Vp8, &payload)
                        });
                    }
                }
                _ => {}
            }
        }
    }
    tracks.sort();
    let mut expected = vec![audio, video];
    expected.sort();
    assert_eq!(tracks, expected);
    assert!(packets[0] > 100 && packets[1] > 30, "{packets:?}");
    assert_eq!(
        first_video_keyframe,
        Some(true),
        "the file starts on a keyframe"
    );
    // The owner records nothing itself.
    assert!(sim.worker(1).poll_recorded().is_none());
}
