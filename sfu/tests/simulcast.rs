//! Simulcast, bandwidth adaptation and active speaker in virtual time: a publisher sends
//! three layers, subscribers sit behind simulated bottlenecks, and the engine picks what each
//! receives. No sockets; seconds of media run in milliseconds.

mod sim;

use std::time::Duration;

use endpoint::media::{frame_tag, split_tag};
use protocol::{MediaKind, ParticipantId, PublicationId, RoomId};
use sfu::codec::{VideoCodec, is_keyframe};
use sfu::recording::RecordedMedia;
use sfu::{SfuCommand, SfuEvent};
use sim::{Link, Sim};

/// Frame sizes at 15 fps for about 150 kbps, 500 kbps and 1.2 Mbps, lowest first.
const LAYER_FRAME_BYTES: [usize; 3] = [1_250, 4_150, 10_000];

fn simulcast_publisher(sim: &mut Sim) -> usize {
    sim.join("r", |c| {
        c.simulcast_frame_bytes = LAYER_FRAME_BYTES.to_vec();
        c.keyframe_interval = None;
    })
}

fn viewer(sim: &mut Sim) -> usize {
    sim.join("r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    })
}

/// Loss on a downlink's bottleneck between two snapshots, as a fraction.
fn queue_loss(before: sim::DownlinkCount, after: sim::DownlinkCount) -> f64 {
    let dropped = after.queue_drops - before.queue_drops;
    let delivered = after.delivered - before.delivered;
    dropped as f64 / (dropped + delivered).max(1) as f64
}

#[test]
fn a_subscriber_limited_to_300_kbps_gets_the_low_layer_then_the_top_when_the_limit_lifts() {
    let mut sim = Sim::new();
    let publisher = simulcast_publisher(&mut sim);
    let limited = viewer(&mut sim);
    let free = viewer(&mut sim);
    sim.set_link(
        limited,
        Link {
            delay: Duration::from_millis(20),
            rate_down: Some(300_000),
            ..Link::default()
        },
    );
    let video = sim.publication(publisher, MediaKind::Video).id;
    // The estimator starts above the link's rate and must find it.
    sim.run_for(Duration::from_secs(10));
    let snapshot = sim.endpoints[limited].downlink;
    let frames_before = sim.endpoints[limited].endpoint.stats()[&video].video_frames;
    sim.run_for(Duration::from_secs(10));
    let stats = &sim.endpoints[limited].endpoint.stats()[&video];
    assert_eq!(
        stats.video_layer,
        Some(0),
        "the limited subscriber is on the low layer"
    );
    assert!(
        stats.video_frames - frames_before >= 140,
        "the low layer plays: {} frames in 10 s",
        stats.video_frames - frames_before
    );
    let loss = queue_loss(snapshot, sim.endpoints[limited].downlink);
    eprintln!(
        "loss at the 300 kbps bottleneck once adapted: {:.3}%",
        loss * 100.0
    );
    assert!(
        loss < 0.01,
        "loss at the bottleneck once adapted: {:.2}%",
        loss * 100.0
    );
    // The unconstrained subscriber meanwhile gets the top layer.
    assert_eq!(
        sim.endpoints[free].endpoint.stats()[&video].video_layer,
        Some(2)
    );

    // The link recovers: probing finds the room and the subscriber climbs back.
    sim.set_link(
        limited,
        Link {
            delay: Duration::from_millis(20),
            ..Link::default()
        },
    );
    let took = sim.run_until(Duration::from_secs(30), |sim| {
        sim.endpoints[limited].endpoint.stats()[&video].video_layer == Some(2)
    });
    eprintln!("back on the top layer after {took:?}");
    assert!(took.is_some(), "back on the top layer once the limit lifts");
    let stats = &sim.endpoints[limited].endpoint.stats()[&video];
    assert_eq!(
        stats.video_tag,
        Some(sim.endpoints[publisher].endpoint.config().video_tag)
    );
    assert!(sim.engine.stats().layer_switches >= 2);
    assert!(sim.endpoints.iter().all(|e| e.errors.is_empty()));
}

#[test]
fn tile_sizes_pick_the_layer_hidden_tiles_get_nothing_and_unwatched_layers_pause() {
    let mut sim = Sim::new();
    let publisher = simulcast_publisher(&mut sim);
    let a = viewer(&mut sim);
    // `publication_added` says the codec and the layers the publisher declared.
    let announced = sim.publication(publisher, MediaKind::Video);
    assert_eq!(announced.codec.as_deref(), Some("video/VP8"));
    let layers: Vec<(&str, u32, u32)> = announced
        .layers
        .iter()
        .map(|l| (l.rid.as_str(), l.width, l.height))
        .collect();
    assert_eq!(layers, [("q", 320, 180), ("h", 640, 360), ("f", 1280, 720)]);
    let video = announced.id;
    sim.set_video_sizes(a, &[(video, 300, 170)]);
    sim.run_for(Duration::from_secs(4));
    assert_eq!(
        sim.endpoints[a].endpoint.stats()[&video].video_layer,
        Some(0)
    );
    // Nobody needs the upper layers: the publisher was told to pause them, and did.
    let told = last_layers_event(&sim);
    assert_eq!(told, Some(vec![true, false, false]));
    let sent = sim.endpoints[publisher].endpoint.layer_frames();
    sim.run_for(Duration::from_secs(1));
    let later = sim.endpoints[publisher].endpoint.layer_frames();
    assert!(later[0] > sent[0]);
    assert_eq!(later[1..], sent[1..], "paused layers send nothing");

    // The tile grows: the upper layers resume and the subscriber switches up on a keyframe.
    sim.set_video_sizes(a, &[(video, 1280, 720)]);
    let took = sim.run_until(Duration::from_secs(15), |sim| {
        sim.endpoints[a].endpoint.stats()[&video].video_layer == Some(2)
    });
    eprintln!("switched up to the top layer after {took:?}");
    assert!(took.is_some(), "the subscriber reaches the top layer");
    let told = last_layers_event(&sim).expect("layers told");
    assert!(told[0] && told[2], "{told:?}");
    let stats = &sim.endpoints[a].endpoint.stats()[&video];
    assert_eq!(
        stats.discontinuities, 0,
        "switching never breaks the stream"
    );

    // The tile is hidden: nothing flows to it, and the upper layers pause again.
    sim.set_video_sizes(a, &[(video, 0, 0)]);
    sim.run_for(Duration::from_secs(1));
    let frames = sim.endpoints[a].endpoint.stats()[&video].video_frames;
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        sim.endpoints[a].endpoint.stats()[&video].video_frames,
        frames
    );
    assert_eq!(last_layers_event(&sim), Some(vec![true, false, false]));

    // Shown again, small: it restarts on a keyframe of the low layer.
    sim.set_video_sizes(a, &[(video, 320, 180)]);
    sim.run_for(Duration::from_secs(2));
    let stats = &sim.endpoints[a].endpoint.stats()[&video];
    assert!(stats.video_frames > frames + 15);
    assert_eq!(stats.video_layer, Some(0));
    assert_eq!(stats.discontinuities, 0);
}

fn last_layers_event(sim: &Sim) -> Option<Vec<bool>> {
    sim.events.iter().rev().find_map(|e| match e {
        SfuEvent::SimulcastLayers { active, .. } => Some(active.clone()),
        _ => None,
    })
}

#[test]
fn a_burst_of_a_thousand_viewers_asks_the_presenter_for_at_most_one_keyframe_a_second() {
    let burst = 1000;
    let mut sim = Sim::with_config(|c| c.max_participants_per_room = burst + 1);
    let presenter = sim.join("r", |c| {
        c.publish_audio = false;
        c.keyframe_interval = None;
        c.video_fps = 10;
    });
    sim.run_for(Duration::from_millis(500));
    let before = sim.endpoints[presenter]
        .endpoint
        .sent()
        .keyframe_requests_received;
    let start = sim.now;
    // A thousand joins in one second of virtual time.
    for _ in 0..100 {
        for _ in 0..burst / 100 {
            viewer(&mut sim);
        }
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(3));
    let requests = sim.endpoints[presenter]
        .endpoint
        .sent()
        .keyframe_requests_received
        - before;
    let elapsed = sim.now.duration_since(start).as_secs_f64();
    let stats = sim.engine.stats();
    eprintln!(
        "{requests} keyframe requests reached the presenter in {elapsed:.1} s; {} of {burst} \
         viewers fast-started ({} throttled requests)",
        stats.fast_starts, stats.keyframe_requests_throttled
    );
    assert!(
        requests <= elapsed.ceil() as u64,
        "{requests} keyframe requests reached the presenter in {elapsed:.1} s"
    );
    let video = sim.publication(presenter, MediaKind::Video).id;
    let watching = sim.endpoints[1..]
        .iter()
        .filter(|e| {
            e.endpoint
                .stats()
                .get(&video)
                .is_some_and(|s| s.keyframes >= 1)
        })
        .count();
    assert_eq!(watching, burst, "every viewer started on a keyframe");
}

#[test]
fn the_loudest_voice_is_the_active_speaker_and_only_the_loudest_are_forwarded() {
    let mut sim = Sim::with_config(|c| c.max_audio_streams = Some(3));
    let levels = [-10, -20, -30, -40, -100];
    let speakers: Vec<usize> = levels
        .iter()
        .map(|level| {
            sim.join("r", |c| {
                c.publish_video = false;
                c.audio_level = *level;
            })
        })
        .collect();
    let listener = viewer(&mut sim);
    sim.run_for(Duration::from_secs(3));
    let participant = |sim: &Sim, i: usize| sim.endpoints[i].participant;
    assert_eq!(active_speaker(&sim), Some(participant(&sim, speakers[0])));

    let audio: Vec<_> = speakers
        .iter()
        .map(|&i| sim.publication(i, MediaKind::Audio).id)
        .collect();
    let counts = |sim: &Sim| -> Vec<u64> {
        audio
            .iter()
            .map(|p| sim.endpoints[listener].endpoint.stats()[p].frames)
            .collect()
    };
    let before = counts(&sim);
    sim.run_for(Duration::from_secs(2));
    let after = counts(&sim);
    let flowing: Vec<bool> = before.iter().zip(&after).map(|(b, a)| a > b).collect();
    assert_eq!(
        flowing,
        [true, true, true, false, false],
        "the three loudest only"
    );

    // The quietest starts shouting and the loudest stops: the spotlight and the forwarded set
    // follow, and the newly forwarded stream arrives without a gap.
    sim.endpoints[speakers[4]].endpoint.set_audio_level(-3);
    sim.endpoints[speakers[0]].endpoint.set_audio_level(-127);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(active_speaker(&sim), Some(participant(&sim, speakers[4])));
    let before = counts(&sim);
    sim.run_for(Duration::from_secs(2));
    let after = counts(&sim);
    let flowing: Vec<bool> = before.iter().zip(&after).map(|(b, a)| a > b).collect();
    assert_eq!(flowing, [false, true, true, false, true]);
    let stats = &sim.endpoints[listener].endpoint.stats()[&audio[4]];
    assert_eq!(stats.discontinuities, 0);
    let heard = sim.endpoints[listener]
        .endpoint
        .dominant_frequency(audio[4])
        .expect("audio to analyse");
    let sent = sim.endpoints[speakers[4]].endpoint.config().tone_hz;
    assert!(
        (heard - sent).abs() <= 10.0,
        "heard {heard} Hz, sent {sent} Hz"
    );
}

fn active_speaker(sim: &Sim) -> Option<ParticipantId> {
    sim.events.iter().rev().find_map(|e| match e {
        SfuEvent::ActiveSpeaker { participant, .. } => Some(*participant),
        _ => None,
    })?
}

/// Records room "r" for `duration` and returns the layers of the video packets recorded for
/// `video` (each frame fits one packet, so each carries its tag), and whether the first one
/// was a keyframe.
fn record(sim: &mut Sim, video: PublicationId, duration: Duration) -> (Vec<u8>, bool) {
    let room = RoomId("r".into());
    let now = sim.now;
    sim.engine.handle_command(
        now,
        SfuCommand::StartRecording {
            room: room.clone(),
            recording_id: "rec".into(),
            e2ee: false,
        },
    );
    let mut packets = Vec::new();
    let end = sim.now + duration;
    while sim.now < end {
        sim.run_for(Duration::from_millis(100));
        while let Some(media) = sim.engine.poll_recorded() {
            if let RecordedMedia::Packet {
                publication,
                payload,
                ..
            } = media
                && publication == video
            {
                packets.push(payload);
            }
        }
    }
    let now = sim.now;
    sim.engine
        .handle_command(now, SfuCommand::StopRecording { room });
    let layers = packets
        .iter()
        .map(|p| frame_tag(p).map_or(u8::MAX, |t| split_tag(t).1))
        .collect();
    let starts_on_keyframe = packets
        .first()
        .is_some_and(|p| is_keyframe(VideoCodec::Vp8, p));
    (layers, starts_on_keyframe)
}

#[test]
fn a_recording_resumes_and_keeps_the_top_layer_even_when_nobody_watches_it() {
    let mut sim = Sim::new();
    let publisher = sim.join("r", |c| {
        c.simulcast_frame_bytes = vec![300, 600, 900];
        c.keyframe_interval = None;
    });
    let a = viewer(&mut sim);
    let video = sim.publication(publisher, MediaKind::Video).id;
    sim.set_video_sizes(a, &[(video, 160, 90)]);
    sim.run_for(Duration::from_secs(3));
    let paused = sim.endpoints[publisher].endpoint.layer_frames();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.endpoints[publisher].endpoint.layer_frames()[2],
        paused[2],
        "nobody watches the top layer: paused"
    );

    let (layers, starts_on_keyframe) = record(&mut sim, video, Duration::from_secs(4));
    assert!(
        layers.len() >= 30,
        "{} video packets recorded",
        layers.len()
    );
    assert!(layers.iter().all(|l| *l == 2), "top layer only: {layers:?}");
    assert!(starts_on_keyframe);
    // The viewer kept its thumbnail layer meanwhile.
    assert_eq!(
        sim.endpoints[a].endpoint.stats()[&video].video_layer,
        Some(0)
    );
}

#[test]
fn a_recording_settles_for_the_highest_layer_that_arrives() {
    let mut sim = Sim::new();
    let publisher = sim.join("r", |c| {
        c.simulcast_frame_bytes = vec![300, 600, 900];
        c.keyframe_interval = None;
    });
    viewer(&mut sim);
    let video = sim.publication(publisher, MediaKind::Video).id;
    sim.run_for(Duration::from_secs(1));
    // Its uplink cannot carry the top layer: it sends the two others whatever it is told.
    sim.endpoints[publisher]
        .endpoint
        .set_active_layers(&[true, true, false]);
    sim.endpoints[publisher].ignore_layer_requests = true;
    sim.run_for(Duration::from_secs(2));

    let (layers, starts_on_keyframe) = record(&mut sim, video, Duration::from_secs(6));
    assert!(
        layers.len() >= 30,
        "{} video packets recorded",
        layers.len()
    );
    assert!(
        layers.iter().all(|l| *l == 1),
        "the middle layer only: {layers:?}"
    );
    assert!(starts_on_keyframe);
}

#[test]
fn a_subscriber_with_room_for_every_video_gets_them_all_once_its_estimate_has_probed_up() {
    // Two publishers and a viewer on a clean link: the estimate starts low, and must be asked
    // to grow to what both videos, the audio and the share kept aside need, or the video of
    // whoever is not the speaker stays paused for good.
    let mut sim = Sim::new();
    let first = sim.join("r", |_| {});
    let second = sim.join("r", |_| {});
    let viewer = viewer(&mut sim);
    sim.run_for(Duration::from_secs(12));
    let frames = |sim: &Sim, sender: usize| {
        let video = sim.publication(sender, MediaKind::Video).id;
        sim.endpoints[viewer].endpoint.stats()[&video].video_frames
    };
    let before = (frames(&sim, first), frames(&sim, second));
    sim.run_for(Duration::from_secs(2));
    let after = (frames(&sim, first), frames(&sim, second));
    assert!(
        after.0 > before.0 + 10,
        "the first video flows: {before:?} → {after:?}"
    );
    assert!(
        after.1 > before.1 + 10,
        "the second video flows: {before:?} → {after:?}"
    );
}

#[test]
fn a_subscriber_of_two_middle_sized_tiles_gets_both_on_their_layer() {
    // Two speakers' videos shown at 640×360 each, with their voices: the estimate must be
    // probed up to both middle layers plus the audio and the share kept aside, not to the two
    // layers' bitrate alone, or one video stays on a lower layer or paused.
    let mut sim = Sim::new();
    let first = simulcast_publisher(&mut sim);
    let second = simulcast_publisher(&mut sim);
    let viewer = viewer(&mut sim);
    // Room for both middle layers and the voices, with the estimate's share kept aside, but
    // not for much more: the estimate cannot overshoot far.
    sim.set_link(
        viewer,
        Link {
            rate_down: Some(1_500_000),
            ..Link::default()
        },
    );
    sim.run_for(Duration::from_secs(1));
    let videos = [first, second].map(|p| sim.publication(p, MediaKind::Video).id);
    sim.set_video_sizes(viewer, &[(videos[0], 640, 360), (videos[1], 640, 360)]);
    // Past the first estimates' swings, both stay on the middle layer and flow.
    sim.run_for(Duration::from_secs(15));
    let frames = |sim: &Sim| {
        let stats = sim.endpoints[viewer].endpoint.stats();
        videos.map(|v| (stats[&v].video_layer, stats[&v].video_frames))
    };
    let mut before = frames(&sim);
    for _ in 0..10 {
        sim.run_for(Duration::from_millis(500));
        let after = frames(&sim);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(a.0, Some(1), "both videos on the middle layer: {after:?}");
            assert!(a.1 > b.1 + 3, "both videos flow: {before:?} → {after:?}");
        }
        before = after;
    }
}
