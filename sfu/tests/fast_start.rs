//! Fast start in virtual time: a viewer joining mid-GOP starts at once on the keyframe the
//! server kept, instead of waiting for the publisher's next one; the replayed packets run
//! into the live ones without a break; and where the cache cannot serve (a GOP longer than its
//! budget) the viewer waits for a requested keyframe, as before.

mod sim;

use std::time::Duration;

use protocol::MediaKind;
use sfu::SfuEvent;
use sim::{Link, RtpSeen, Sim};

/// 15 fps of 3 kB frames: three packets a frame, so that replays cut frames too. With a
/// microphone, whose packets make a viewer report back, proving it holds its SRTP keys.
fn publisher(sim: &mut Sim) -> usize {
    sim.join("r", |c| {
        c.video_fps = 15;
        c.video_frame_bytes = 3_000;
        // A keyframe when it starts and when asked, never on its own.
        c.keyframe_interval = None;
    })
}

fn viewer(sim: &mut Sim) -> usize {
    let index = sim.join("r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    });
    sim.endpoints[index].rtp_log = Some(Vec::new());
    index
}

fn requests_received(sim: &Sim, publisher: usize) -> u64 {
    sim.endpoints[publisher]
        .endpoint
        .sent()
        .keyframe_requests_received
}

/// The VP8 payload type the SFU's answer gave endpoint `index`.
fn vp8_pt(sim: &Sim, index: usize) -> u8 {
    let participant = sim.endpoints[index].participant;
    sim.events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::Answer {
                participant: p,
                sdp,
            } if *p == participant => Some(sdp),
            _ => None,
        })
        .flat_map(|sdp| sdp.lines())
        .find_map(|line| {
            let (pt, codec) = line.strip_prefix("a=rtpmap:")?.split_once(' ')?;
            codec.starts_with("VP8/").then(|| pt.parse().ok())?
        })
        .expect("VP8 negotiated")
}

/// The video packets (not retransmissions, not padding) endpoint `index` received.
fn video_packets(sim: &Sim, index: usize) -> Vec<RtpSeen> {
    let pt = vp8_pt(sim, index);
    let log = sim.endpoints[index].rtp_log.as_deref().unwrap_or_default();
    let media = log.iter().filter(|p| p.pt == pt && !p.padding);
    let ssrc = media.clone().next().map(|p| p.ssrc);
    media.filter(|p| Some(p.ssrc) == ssrc).copied().collect()
}

/// Runs until each of `viewers` shows its first video frame (at most a second), and returns
/// the layer each started on.
fn run_until_started(sim: &mut Sim, viewers: &[usize], video: protocol::PublicationId) -> Vec<u8> {
    let started = |sim: &Sim| {
        viewers.iter().all(|&v| {
            sim.endpoints[v]
                .endpoint
                .stats()
                .get(&video)
                .is_some_and(|s| s.first_keyframe_at.is_some())
        })
    };
    let limit = sim.now + Duration::from_secs(1);
    while !started(sim) {
        assert!(sim.now < limit, "no first frame within a second");
        sim.run_for(Duration::from_millis(5));
    }
    viewers
        .iter()
        .map(|&v| {
            sim.endpoints[v].endpoint.stats()[&video]
                .video_layer
                .unwrap_or(u8::MAX)
        })
        .collect()
}

/// How long after its transport connected each viewer got its first keyframe.
fn waits(sim: &Sim, viewers: &[usize], video: protocol::PublicationId) -> Vec<Duration> {
    viewers
        .iter()
        .map(|&v| {
            let e = &sim.endpoints[v].endpoint;
            let connected = e.connected_at().expect("connected");
            let keyframe = e.stats()[&video].first_keyframe_at.expect("got a keyframe");
            keyframe.saturating_duration_since(connected)
        })
        .collect()
}

#[test]
fn a_viewer_joining_mid_gop_starts_at_once_and_the_replay_runs_into_live_media() {
    let mut sim = Sim::new();
    let publisher = publisher(&mut sim);
    // Well into the GOP started by the publisher's first keyframe.
    sim.run_for(Duration::from_millis(1_200));
    let sent_keyframes = sim.endpoints[publisher].endpoint.sent().keyframes;
    assert_eq!(sent_keyframes, 1);
    let v = viewer(&mut sim);
    sim.run_for(Duration::from_secs(1));
    let video = sim.publication(publisher, MediaKind::Video).id;

    // No keyframe was asked for, none was sent: the viewer started on the cached one.
    assert_eq!(requests_received(&sim, publisher), 0);
    assert_eq!(
        sim.endpoints[publisher].endpoint.sent().keyframes,
        sent_keyframes
    );
    let engine = sim.engine.stats();
    assert_eq!(engine.fast_starts, 1);
    assert_eq!(engine.keyframe_requests_sent, 0);
    let stats = &sim.endpoints[v].endpoint.stats()[&video];
    assert_eq!(stats.keyframes, 1);
    assert_eq!(
        stats.first_media_at, stats.first_keyframe_at,
        "the first frame shown is the keyframe"
    );
    assert_eq!(stats.discontinuities, 0);
    assert_eq!(stats.untagged_frames, 0);
    // 1.2 s of GOP replayed, then a second of live frames.
    assert!(
        stats.video_frames >= 18 + 14,
        "{} frames",
        stats.video_frames
    );
    // The replay waits for the viewer to prove it holds its SRTP keys, by sending a report
    // on the audio it receives: no video reached it before that.
    let wait = waits(&sim, &[v], video)[0];
    eprintln!("first keyframe {wait:?} after the viewer's transport connected");
    assert!(wait <= Duration::from_millis(60), "waited {wait:?}");
    let keyed = sim.endpoints[v]
        .first_protected_sent
        .expect("the viewer reported");
    assert!(video_packets(&sim, v)[0].at >= keyed);

    // On the wire: one contiguous sequence through the replay and on into live packets.
    let packets = video_packets(&sim, v);
    let replayed = engine.fast_start_packets as usize;
    assert!(replayed >= 18 * 3, "{replayed} packets replayed");
    assert!(
        packets.len() >= replayed + 10 * 3,
        "{} packets",
        packets.len()
    );
    for pair in packets.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq.wrapping_add(1),
            "contiguous: {pair:?}"
        );
    }
    // Replayed frames are one tick apart; from the last of them on, frames keep the source's
    // spacing (15 fps: 6000 ticks), and time never goes back.
    for (i, pair) in packets.windows(2).enumerate() {
        let step = pair[1].timestamp.wrapping_sub(pair[0].timestamp);
        if i + 1 < replayed {
            assert!(step <= 1, "replayed step {step} at {i}");
        } else {
            assert!(step == 0 || step == 6_000, "live step {step} at {i}");
        }
    }
    let replayed_frames = packets[..replayed]
        .windows(2)
        .filter(|p| p[0].timestamp != p[1].timestamp)
        .count()
        + 1;
    assert!(replayed_frames >= 18, "{replayed_frames} frames replayed");
    assert!(sim.endpoints.iter().all(|e| e.errors.is_empty()));
}

#[test]
fn a_viewer_with_nothing_to_report_is_fast_started_a_moment_later() {
    // No microphone: the viewer receives nothing before its video, so it sends no report that
    // would prove it holds its keys. The server waits a quarter of a second for one, then
    // replays anyway with the next packet, rather than asking the publisher for a keyframe.
    let mut sim = Sim::new();
    let publisher = sim.join("r", |c| {
        c.publish_audio = false;
        c.video_fps = 15;
        c.keyframe_interval = None;
    });
    sim.run_for(Duration::from_millis(600));
    let v = viewer(&mut sim);
    sim.run_for(Duration::from_secs(1));
    let video = sim.publication(publisher, MediaKind::Video).id;
    assert_eq!(requests_received(&sim, publisher), 0);
    assert_eq!(sim.engine.stats().fast_starts, 1);
    let wait = waits(&sim, &[v], video)[0];
    eprintln!("first keyframe {wait:?} after the viewer's transport connected");
    assert!(wait >= Duration::from_millis(250), "waited {wait:?}");
    assert!(wait <= Duration::from_millis(250 + 70), "waited {wait:?}");
    let stats = &sim.endpoints[v].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    assert_eq!(stats.discontinuities, 0);
}

#[test]
fn a_keyframe_request_right_after_a_fast_start_is_answered_from_the_cache_once() {
    // A viewer whose decoder lost the start (a browser that applied the answer after the
    // replay arrived drops it) asks for a keyframe: the SFU replays the cache once more
    // without asking the publisher. Any later request goes to the publisher: a replay is a
    // burst, and a receiver asking after losses is most often behind a congested link.
    let mut sim = Sim::new();
    let publisher = publisher(&mut sim);
    sim.run_for(Duration::from_millis(400));
    let v = viewer(&mut sim);
    sim.run_for(Duration::from_millis(600));
    let video = sim.publication(publisher, MediaKind::Video).id;
    let keyframes = sim.endpoints[v].endpoint.stats()[&video].keyframes;
    assert_eq!(keyframes, 1);
    assert!(
        sim.endpoints[v]
            .endpoint
            .request_keyframe(video)
            .expect("request")
    );
    sim.run_for(Duration::from_millis(200));
    assert_eq!(requests_received(&sim, publisher), 0);
    assert_eq!(sim.engine.stats().keyframe_requests_from_cache, 1);
    let stats = &sim.endpoints[v].endpoint.stats()[&video];
    assert_eq!(stats.keyframes, keyframes + 1, "the cached keyframe again");
    assert_eq!(stats.discontinuities, 0);
    assert_eq!(stats.untagged_frames, 0);

    assert!(
        sim.endpoints[v]
            .endpoint
            .request_keyframe(video)
            .expect("request")
    );
    sim.run_for(Duration::from_millis(200));
    assert_eq!(requests_received(&sim, publisher), 1);
    assert_eq!(sim.engine.stats().keyframe_requests_from_cache, 1);
    // On the wire the stream stayed one contiguous sequence through both restarts.
    for pair in video_packets(&sim, v).windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq.wrapping_add(1),
            "contiguous: {pair:?}"
        );
        assert!(
            pair[1].timestamp.wrapping_sub(pair[0].timestamp) < 1 << 31,
            "{pair:?}"
        );
    }
    assert!(sim.endpoints.iter().all(|e| e.errors.is_empty()));
}

/// Twenty viewers join over a second, while the publisher sends no keyframe of its own.
/// Returns how long each waited after connecting, and the keyframe requests the publisher got.
fn storm(fast_start: bool) -> (Vec<Duration>, u64, u64) {
    let mut sim = Sim::with_config(|c| c.fast_start = fast_start);
    // 1 kB frames: the GOP stays within the cache's 64 KiB for the two seconds it is kept.
    let publisher = sim.join("r", |c| {
        c.video_fps = 15;
        c.keyframe_interval = None;
    });
    sim.run_for(Duration::from_millis(500));
    let before = requests_received(&sim, publisher);
    let viewers: Vec<usize> = (0..20)
        .map(|_| {
            let v = viewer(&mut sim);
            sim.run_for(Duration::from_millis(50));
            v
        })
        .collect();
    sim.run_for(Duration::from_secs(2));
    let video = sim.publication(publisher, MediaKind::Video).id;
    for &v in &viewers {
        let stats = &sim.endpoints[v].endpoint.stats()[&video];
        assert_eq!(stats.first_media_at, stats.first_keyframe_at);
        assert_eq!(stats.discontinuities, 0);
    }
    let mut waits = waits(&sim, &viewers, video);
    waits.sort();
    (
        waits,
        requests_received(&sim, publisher) - before,
        sim.engine.stats().fast_starts,
    )
}

#[test]
fn in_a_join_storm_every_viewer_starts_at_once_and_the_publisher_is_asked_nothing() {
    let (fast, fast_requests, fast_starts) = storm(true);
    let (slow, slow_requests, slow_starts) = storm(false);
    eprintln!("fast start: waits {fast:?}, {fast_requests} keyframe requests");
    eprintln!("without: waits {slow:?}, {slow_requests} keyframe requests");
    assert_eq!(fast_starts, 20);
    assert_eq!(fast_requests, 0);
    assert_eq!(slow_starts, 0);
    let worst = |w: &[Duration]| w.last().copied().unwrap_or_default();
    assert!(worst(&fast) <= Duration::from_millis(60), "{fast:?}");
    // Without the cache, viewers that join within a second of a keyframe request wait for
    // the throttle to let the next one through.
    assert!(worst(&slow) >= Duration::from_millis(300), "{slow:?}");
    assert!(slow_requests >= 1);
}

#[test]
fn a_gop_longer_than_the_cache_falls_back_to_a_keyframe_request() {
    // 45 packets a second against a 64-packet budget: the GOP outgrows it in 1.4 s.
    let mut sim = Sim::with_config(|c| c.fast_start_max_packets = 64);
    let publisher = publisher(&mut sim);
    sim.run_for(Duration::from_millis(1_700));
    let late = viewer(&mut sim);
    sim.run_for(Duration::from_secs(1));
    let video = sim.publication(publisher, MediaKind::Video).id;
    assert_eq!(sim.engine.stats().fast_starts, 0);
    assert_eq!(
        requests_received(&sim, publisher),
        1,
        "one keyframe asked for"
    );
    let stats = &sim.endpoints[late].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    assert!(stats.video_frames >= 10);

    // The requested keyframe refilled the cache: the next viewer starts from it, unasked.
    // (The throttle also sends, a second after the first, the request it held back while the
    // late viewer kept asking; wait for that to pass.)
    sim.run_for(Duration::from_millis(500));
    let before = requests_received(&sim, publisher);
    let next = viewer(&mut sim);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.engine.stats().fast_starts, 1);
    assert_eq!(requests_received(&sim, publisher), before);
    let stats = &sim.endpoints[next].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    assert_eq!(stats.discontinuities, 0);

    // A GOP older than the age limit (2 s) is not replayed either, however few its packets.
    let mut sim = Sim::new();
    let publisher = sim.join("r", |c| {
        c.publish_audio = false;
        c.keyframe_interval = None;
    });
    sim.run_for(Duration::from_millis(2_500));
    let late = viewer(&mut sim);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.engine.stats().fast_starts, 0);
    assert_eq!(requests_received(&sim, publisher), 1);
    let video = sim.publication(publisher, MediaKind::Video).id;
    let stats = &sim.endpoints[late].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
}

#[test]
fn a_new_simulcast_viewer_starts_on_the_lowest_layer_then_gets_its_tile_s_layer() {
    let mut sim = Sim::new();
    let publisher = small_simulcast_publisher(&mut sim);
    let video = sim.publication(publisher, MediaKind::Video).id;
    // Someone watches the middle layer, so the publisher sends the two lower ones.
    let first = viewer(&mut sim);
    sim.set_video_sizes(first, &[(video, 640, 360)]);
    sim.run_for(Duration::from_millis(1_500));
    assert_eq!(
        sim.endpoints[first].endpoint.stats()[&video].video_layer,
        Some(1)
    );
    let before = requests_received(&sim, publisher);
    let starts = sim.engine.stats().fast_starts;
    let small = viewer(&mut sim);
    sim.set_video_sizes(small, &[(video, 320, 180)]);
    let middle = viewer(&mut sim);
    sim.set_video_sizes(middle, &[(video, 640, 360)]);
    // Their links are unknown yet: both start at once on the lowest layer's GOP.
    assert_eq!(run_until_started(&mut sim, &[small, middle], video), [0, 0]);
    assert_eq!(sim.engine.stats().fast_starts, starts + 2);
    for v in [small, middle] {
        let stats = &sim.endpoints[v].endpoint.stats()[&video];
        assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    }
    // Then each gets the layer its tile asks for: the middle one on a keyframe of that layer,
    // asked for through the throttle.
    let took = sim.run_until(Duration::from_secs(3), |sim| {
        sim.endpoints[middle].endpoint.stats()[&video].video_layer == Some(1)
    });
    assert!(took.is_some(), "the middle viewer moves up");
    // One request round: the middle layer, and the lowest when its cache is getting old.
    assert!(requests_received(&sim, publisher) <= before + 2);
    for (v, layer, changes) in [(small, 0, 0), (middle, 1, 1)] {
        let stats = &sim.endpoints[v].endpoint.stats()[&video];
        assert_eq!(stats.video_layer, Some(layer));
        assert_eq!(stats.layer_changes, changes);
        assert_eq!(stats.discontinuities, 0);
    }
}

#[test]
fn without_bandwidth_estimation_a_viewer_starts_on_its_tile_s_layer() {
    let mut sim = Sim::with_config(|c| c.bandwidth_estimation = false);
    let publisher = sim.join("r", |c| {
        c.publish_audio = false;
        c.simulcast_frame_bytes = vec![300, 600, 900];
        c.keyframe_interval = None;
    });
    let video = sim.publication(publisher, MediaKind::Video).id;
    let first = viewer(&mut sim);
    sim.set_video_sizes(first, &[(video, 640, 360)]);
    sim.run_for(Duration::from_millis(1_000));
    let before = requests_received(&sim, publisher);
    let late = viewer(&mut sim);
    sim.set_video_sizes(late, &[(video, 640, 360)]);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.engine.stats().fast_starts, 2);
    assert_eq!(requests_received(&sim, publisher), before);
    let stats = &sim.endpoints[late].endpoint.stats()[&video];
    assert_eq!(stats.video_layer, Some(1));
    assert_eq!(stats.layer_changes, 0);
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    assert_eq!(stats.discontinuities, 0);
}

#[test]
fn a_layer_whose_gop_outgrew_the_cache_starts_on_a_lower_layer_then_moves_up() {
    // Keyframes every second on every layer. Against a 9 kB budget the top layer's GOP (4 kB
    // frames) outgrows the cache within a fifth of a second; the middle one's (400 B) never.
    // Without bandwidth estimation, so that a new viewer aims at its tile's layer at once.
    let mut sim = Sim::with_config(|c| {
        c.fast_start_max_bytes = 9_000;
        c.bandwidth_estimation = false;
    });
    let publisher = sim.join("r", |c| {
        c.publish_audio = false;
        c.simulcast_frame_bytes = vec![200, 400, 4_000];
        c.keyframe_interval = Some(Duration::from_secs(1));
    });
    let video = sim.publication(publisher, MediaKind::Video).id;
    // Someone watches each upper layer, so the publisher sends all three.
    let first = viewer(&mut sim);
    sim.set_video_sizes(first, &[(video, 1280, 720)]);
    let second = viewer(&mut sim);
    sim.set_video_sizes(second, &[(video, 640, 360)]);
    let settled = sim.run_until(Duration::from_secs(5), |sim| {
        let layer = |v: usize| sim.endpoints[v].endpoint.stats()[&video].video_layer;
        layer(first) == Some(2) && layer(second) == Some(1)
    });
    assert!(settled.is_some(), "the upper layers are watched");
    // A third of a second after a keyframe: the top layer's cache is over budget.
    let sent = sim.endpoints[publisher].endpoint.sent().keyframes;
    sim.run_until(Duration::from_secs(2), |sim| {
        sim.endpoints[publisher].endpoint.sent().keyframes > sent
    })
    .expect("a periodic keyframe");
    sim.run_for(Duration::from_millis(300));
    let before = requests_received(&sim, publisher);
    let starts = sim.engine.stats().fast_starts;
    let late = viewer(&mut sim);
    sim.set_video_sizes(late, &[(video, 1280, 720)]);

    // At once: the middle layer's GOP, from its keyframe.
    assert_eq!(run_until_started(&mut sim, &[late], video), [1]);
    assert_eq!(sim.engine.stats().fast_starts, starts + 1);
    let stats = &sim.endpoints[late].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    // Then the top layer, on the keyframe asked for it through the throttle (or the next
    // periodic one, whichever comes first).
    let took = sim.run_until(Duration::from_secs(3), |sim| {
        sim.endpoints[late].endpoint.stats()[&video].video_layer == Some(2)
    });
    assert!(took.is_some(), "the late viewer reaches the top layer");
    assert!(requests_received(&sim, publisher) <= before + 1);
    let stats = &sim.endpoints[late].endpoint.stats()[&video];
    assert_eq!(stats.layer_changes, 1);
    assert_eq!(stats.discontinuities, 0);
}

/// Three small layers, keyframes only when asked, no microphone.
fn small_simulcast_publisher(sim: &mut Sim) -> usize {
    sim.join("r", |c| {
        c.publish_audio = false;
        c.simulcast_frame_bytes = vec![300, 600, 900];
        c.keyframe_interval = None;
    })
}

/// Runs until the publisher has sent no keyframe for longer than the caches keep one.
fn run_until_caches_expire(sim: &mut Sim, publisher: usize) {
    let started = sim.now;
    let mut keyframes = sim.endpoints[publisher].endpoint.sent().keyframes;
    let mut quiet_since = sim.now;
    while sim.now.duration_since(quiet_since) <= Duration::from_millis(2_500) {
        assert!(sim.now.duration_since(started) < Duration::from_secs(20));
        sim.run_for(Duration::from_millis(100));
        let sent = sim.endpoints[publisher].endpoint.sent().keyframes;
        if sent != keyframes {
            keyframes = sent;
            quiet_since = sim.now;
        }
    }
}

#[test]
fn a_joiner_without_a_usable_cache_also_refills_the_lowest_layer_s_for_the_next() {
    let mut sim = Sim::new();
    let publisher = small_simulcast_publisher(&mut sim);
    let video = sim.publication(publisher, MediaKind::Video).id;
    let first = viewer(&mut sim);
    sim.set_video_sizes(first, &[(video, 1280, 720)]);
    run_until_caches_expire(&mut sim, publisher);
    let asked = requests_received(&sim, publisher);
    let a = viewer(&mut sim);
    sim.run_for(Duration::from_millis(300));
    // Nothing to start from: one request round for the layer it wants and the lowest. It
    // starts on whichever keyframe comes first (the lowest's, from the refilled cache).
    let round = requests_received(&sim, publisher) - asked;
    assert_eq!(round, 2, "the lowest layer's keyframe is asked for too");
    let stats = &sim.endpoints[a].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);

    // The next joiner, within the throttle's second, starts from the lowest layer's cache
    // without another request.
    let starts = sim.engine.stats().fast_starts;
    let asked = requests_received(&sim, publisher);
    let b = viewer(&mut sim);
    assert_eq!(run_until_started(&mut sim, &[b], video), [0]);
    assert_eq!(sim.engine.stats().fast_starts, starts + 1);
    assert_eq!(requests_received(&sim, publisher), asked);
    let stats = &sim.endpoints[b].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
}

#[test]
fn any_keyframe_request_round_also_refreshes_the_lowest_layer_s_stale_cache() {
    let mut sim = Sim::new();
    let publisher = small_simulcast_publisher(&mut sim);
    let video = sim.publication(publisher, MediaKind::Video).id;
    let top = viewer(&mut sim);
    sim.set_video_sizes(top, &[(video, 1280, 720)]);
    let middle = viewer(&mut sim);
    sim.set_video_sizes(middle, &[(video, 640, 360)]);
    // With both upper layers watched.
    run_until_caches_expire(&mut sim, publisher);
    let layer = |sim: &Sim, v: usize| sim.endpoints[v].endpoint.stats()[&video].video_layer;
    assert_eq!((layer(&sim, top), layer(&sim, middle)), (Some(2), Some(1)));

    // A tile shrinks: its switch asks for the middle layer's keyframe, and the same round
    // for the lowest layer's.
    let asked = requests_received(&sim, publisher);
    sim.set_video_sizes(top, &[(video, 640, 360)]);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(layer(&sim, top), Some(1));
    assert_eq!(requests_received(&sim, publisher), asked + 2);

    // So a joiner right after starts at once, without another round.
    let starts = sim.engine.stats().fast_starts;
    let late = viewer(&mut sim);
    assert_eq!(run_until_started(&mut sim, &[late], video), [0]);
    assert_eq!(sim.engine.stats().fast_starts, starts + 1);
    assert_eq!(requests_received(&sim, publisher), asked + 2);
    let stats = &sim.endpoints[late].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
}

// A keyframe that arrives during a viewer's handshake, and a handshake that outlasts the
// cache: the two causes of the browser fast-start test's flake under load (issue 19).

/// A receive-only viewer behind a link with `delay` each way: its handshake takes several
/// round trips, while the publisher answers a keyframe request at once.
fn slow_viewer(sim: &mut Sim, delay: Duration) -> usize {
    let index = sim.join_with(
        "r",
        |c| {
            c.publish_audio = false;
            c.publish_video = false;
        },
        Link {
            delay,
            ..Link::default()
        },
        Vec::new(),
    );
    sim.endpoints[index].rtp_log = Some(Vec::new());
    index
}

/// Runs in steps of 5 ms until `done` holds (at most `limit`); returns the time it took.
fn run_until(sim: &mut Sim, limit: Duration, done: impl Fn(&Sim) -> bool) -> Option<Duration> {
    let start = sim.now;
    while !done(sim) {
        if sim.now.duration_since(start) >= limit {
            return None;
        }
        sim.run_for(Duration::from_millis(5));
    }
    Some(sim.now.duration_since(start))
}

/// The first video packet endpoint `index` received, if any.
fn first_video_at(sim: &Sim, index: usize) -> Option<std::time::Instant> {
    sim.endpoints[index]
        .rtp_log
        .as_deref()?
        .iter()
        .find(|p| !p.padding && p.pt != 111)
        .map(|p| p.at)
}

#[test]
fn a_keyframe_that_comes_during_a_viewer_s_handshake_is_replayed_once_it_has_its_keys() {
    let mut sim = Sim::new();
    let publisher = publisher(&mut sim);
    // No cache left: the viewer's subscription asks for a keyframe, which comes back long
    // before the viewer's handshake (100 ms each way) is done.
    sim.run_for(Duration::from_millis(2_600));
    let asked = requests_received(&sim, publisher);
    let v = slow_viewer(&mut sim, Duration::from_millis(100));
    sim.run_for(Duration::from_secs(3));
    let video = sim.publication(publisher, MediaKind::Video).id;
    assert!(requests_received(&sim, publisher) > asked);
    // It was started from the cache (that keyframe's GOP), not by the keyframe sent ahead of
    // its keys...
    assert_eq!(sim.engine.stats().fast_starts, 1);
    // ...and nothing of the video reached it before it proved it holds its keys.
    let keyed = sim.endpoints[v]
        .first_protected_sent
        .expect("the viewer reported");
    let first = first_video_at(&sim, v).expect("video");
    assert!(
        first >= keyed,
        "video {:?} before the keys {:?}",
        first,
        keyed
    );
    let stats = &sim.endpoints[v].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    assert_eq!(stats.discontinuities, 0);
    assert!(sim.endpoints.iter().all(|e| e.errors.is_empty()));
}

#[test]
fn a_handshake_longer_than_the_cache_keeps_it_fresh_and_starts_from_it() {
    let mut sim = Sim::new();
    // 1 kB frames: the GOP stays within the cache's 64 KiB for the two seconds it is kept.
    let publisher = sim.join("r", |c| {
        c.video_fps = 15;
        c.keyframe_interval = None;
    });
    run_until(&mut sim, Duration::from_secs(1), |sim| {
        sim.endpoints[publisher].endpoint.sent().keyframes > 0
    })
    .expect("the publisher's first keyframe");
    // 300 ms into that GOP a viewer joins whose handshake (400 ms each way) outlasts the
    // cache's two seconds.
    sim.run_for(Duration::from_millis(300));
    let v = slow_viewer(&mut sim, Duration::from_millis(400));
    // The next keyframe is asked for while the cache still serves, not once it aged out.
    let asked = run_until(&mut sim, Duration::from_secs(3), |sim| {
        requests_received(sim, publisher) > 0
    })
    .expect("a keyframe request")
        + Duration::from_millis(300);
    assert!(
        asked < Duration::from_millis(1_900),
        "asked {asked:?} after the keyframe"
    );
    sim.run_for(Duration::from_secs(4));
    let video = sim.publication(publisher, MediaKind::Video).id;
    assert_eq!(requests_received(&sim, publisher), 1);
    assert_eq!(sim.engine.stats().fast_starts, 1);
    let keyed = sim.endpoints[v]
        .first_protected_sent
        .expect("the viewer reported");
    assert!(first_video_at(&sim, v).expect("video") >= keyed);
    let stats = &sim.endpoints[v].endpoint.stats()[&video];
    assert_eq!(stats.first_media_at, stats.first_keyframe_at);
    assert_eq!(stats.discontinuities, 0);
    assert!(sim.endpoints.iter().all(|e| e.errors.is_empty()));
}
