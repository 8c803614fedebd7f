//! One room across the servers of a cluster, in virtual time: each server's gateway mirrors
//! the room's publications from the others over links (see `sfu::relay`), so that each packet
//! crosses to a server once whatever the number of its viewers there, and what only the owner
//! can do (keyframes, layers) goes back up the chain.

mod sim;

use std::time::Duration;

use protocol::MediaKind;
use sim::nodes::{Nodes, link};
use sim::{Sim, assert_receives_from};

/// A viewer: subscribes to everything, publishes nothing.
fn viewer(sim: &mut Sim, worker: usize) -> usize {
    sim.join_on(worker, "r", |c| {
        c.publish_audio = false;
        c.publish_video = false;
    })
}

#[test]
fn a_room_across_three_servers_reaches_everyone_and_each_packet_crosses_once_per_server() {
    let mut nodes = Nodes::new(3, 1, |c| c.max_audio_streams = None);
    nodes.link_star("r", 0);
    // The presenter on the origin, a site that speaks on server 1, three viewers on each edge.
    let presenter = nodes.servers[0].join("r", |_| {});
    let speaker = nodes.servers[1].join("r", |_| {});
    let viewers: Vec<(usize, usize)> = (1..3)
        .flat_map(|s| (0..3).map(move |_| s))
        .map(|s| (s, viewer(&mut nodes.servers[s], 0)))
        .collect();
    nodes.run_for(Duration::from_secs(5));

    for &(s, v) in &viewers {
        assert_receives_from(&nodes.servers[s], v, &nodes.servers[0], presenter);
        assert_receives_from(&nodes.servers[s], v, &nodes.servers[1], speaker);
    }
    // The speaker's media goes edge → origin → the other edge, and back to the presenter.
    assert_receives_from(&nodes.servers[0], presenter, &nodes.servers[1], speaker);
    assert_receives_from(&nodes.servers[1], speaker, &nodes.servers[0], presenter);
    for (s, server) in nodes.servers.iter().enumerate() {
        for e in &server.endpoints {
            assert!(e.errors.is_empty(), "server {s}: {:?}", e.errors);
        }
    }

    // Each packet crossed to an edge once: what an edge took in over its link it forwarded
    // to each of its viewers (three each for the presenter, who sends the most).
    for s in 1..3 {
        let crossed = nodes.packets[&(0, s)];
        let stats = nodes.servers[s].total_stats();
        assert_eq!(crossed, stats.rtp_relayed_in, "server {s}");
        assert!(
            stats.rtp_forwarded > 2 * crossed,
            "server {s}: {} packets crossed, {} forwarded",
            crossed,
            stats.rtp_forwarded
        );
    }
    // Edges link only to the origin: nothing crossed between them directly.
    assert!(!nodes.packets.contains_key(&(1, 2)) && !nodes.packets.contains_key(&(2, 1)));
    // Each publication is owned once, by its publisher's server.
    let owned: usize = nodes
        .servers
        .iter_mut()
        .map(|s| s.worker(0).census().2)
        .sum();
    assert_eq!(owned, 4);
}

#[test]
fn a_room_across_servers_of_several_workers_goes_through_each_gateway() {
    // Each far viewer receives two videos: the bandwidth estimator, which starts low, would
    // pause the one of who is not the active speaker until it probed its way up.
    let mut nodes = Nodes::new(2, 3, |c| {
        c.max_audio_streams = None;
        c.bandwidth_estimation = false;
    });
    nodes.link_star("r", 0);
    // Publishers on workers that are not the gateway, on both servers.
    let presenter = nodes.servers[0].join_on(2, "r", |_| {});
    let speaker = nodes.servers[1].join_on(1, "r", |_| {});
    let far: Vec<usize> = (0..3).map(|w| viewer(&mut nodes.servers[1], w)).collect();
    let near: Vec<usize> = (0..3).map(|w| viewer(&mut nodes.servers[0], w)).collect();
    nodes.run_for(Duration::from_secs(5));

    for &v in &far {
        assert_receives_from(&nodes.servers[1], v, &nodes.servers[0], presenter);
        assert_receives_from(&nodes.servers[1], v, &nodes.servers[1], speaker);
    }
    for &v in &near {
        assert_receives_from(&nodes.servers[0], v, &nodes.servers[0], presenter);
        assert_receives_from(&nodes.servers[0], v, &nodes.servers[1], speaker);
    }
    assert_receives_from(&nodes.servers[0], presenter, &nodes.servers[1], speaker);
    assert_receives_from(&nodes.servers[1], speaker, &nodes.servers[0], presenter);
    // A burst of late viewers on the far server each wait for a keyframe: their requests go
    // up the chain to the presenter's worker, whose throttle asks about once a second.
    let before = nodes.servers[0].endpoints[presenter]
        .endpoint
        .sent()
        .keyframe_requests_received;
    let late: Vec<usize> = (0..12)
        .map(|i| viewer(&mut nodes.servers[1], i % 3))
        .collect();
    nodes.run_for(Duration::from_secs(4));
    for &v in &late {
        let video = nodes.servers[0].publication(presenter, MediaKind::Video).id;
        let stats = &nodes.servers[1].endpoints[v].endpoint.stats()[&video];
        assert!(stats.video_frames >= 10, "late viewer {v}: {stats:?}");
    }
    let asked = nodes.servers[0].endpoints[presenter]
        .endpoint
        .sent()
        .keyframe_requests_received
        - before;
    assert!(
        asked <= 5,
        "the presenter was asked for {asked} keyframes in 4 s"
    );
}

#[test]
fn a_link_brings_nothing_into_a_room_it_does_not_share_and_unlinking_ends_its_mirrors() {
    let mut nodes = Nodes::new(2, 1, |_| {});
    // Only room "r" spans the two servers.
    nodes.link_star("r", 0);
    let presenter = nodes.servers[0].join("r", |_| {});
    let remote = viewer(&mut nodes.servers[1], 0);
    nodes.run_for(Duration::from_secs(3));
    assert_receives_from(&nodes.servers[1], remote, &nodes.servers[0], presenter);

    // A publication announced over the link for another room is refused and counted.
    let video = nodes.servers[0].publication(presenter, MediaKind::Video).id;
    let before = nodes.servers[1].worker(0).mirrored();
    let dropped = nodes.servers[1].total_stats().dropped_unknown_source;
    let mut forged = sfu::engine::MirrorInfo {
        id: protocol::PublicationId(video.0 + 1_000),
        owner: protocol::ParticipantId(77),
        room: protocol::RoomId("other".into()),
        mid: str0m::media::Mid::from("9"),
        kind: MediaKind::Video,
        source: protocol::TrackSource::Camera,
        layers: Vec::new(),
        params: Vec::new(),
        muted: false,
    };
    nodes.servers[1].relay_from_link(
        link(0),
        sfu::engine::Relay::Publication(Box::new(forged.clone())),
    );
    assert_eq!(nodes.servers[1].worker(0).mirrored(), before);
    assert_eq!(
        nodes.servers[1].total_stats().dropped_unknown_source,
        dropped + 1
    );
    // And over a link the room does not span (server 1 has no link 5).
    forged.room = protocol::RoomId("r".into());
    nodes.servers[1].relay_from_link(link(5), sfu::engine::Relay::Publication(Box::new(forged)));
    assert_eq!(
        nodes.servers[1].total_stats().dropped_unknown_source,
        dropped + 2
    );

    // The room stops spanning the servers: the edge's mirrors end, and nothing crosses.
    nodes.servers[1].set_room_links("r", &[]);
    nodes.servers[0].set_room_links("r", &[]);
    nodes.run_for(Duration::from_millis(200));
    let crossed = nodes.packets[&(0, 1)];
    let frames = nodes.servers[1].endpoints[remote].endpoint.stats()[&video].video_frames;
    nodes.run_for(Duration::from_secs(1));
    assert_eq!(nodes.packets[&(0, 1)], crossed);
    assert_eq!(
        nodes.servers[1].endpoints[remote].endpoint.stats()[&video].video_frames,
        frames
    );
}

#[test]
fn what_a_link_loses_on_the_way_is_said_again() {
    let mut nodes = Nodes::new(2, 1, |_| {});
    // A third of the announcements, wants and keyframe requests are lost (UDP).
    nodes.control_loss = 0.3;
    nodes.link_star("r", 0);
    let presenter = nodes.servers[0].join("r", |_| {});
    let remote = viewer(&mut nodes.servers[1], 0);
    nodes.run_for(Duration::from_secs(6));
    assert!(nodes.control_lost > 0);
    assert_receives_from(&nodes.servers[1], remote, &nodes.servers[0], presenter);

    // The link goes silent while the presenter leaves: the end of its publications is lost,
    // and the far server's mirrors end on their own once no longer announced.
    assert_eq!(nodes.servers[1].worker(0).mirrored(), 2);
    nodes.down.push(0);
    nodes.servers[0].leave(presenter);
    nodes.run_for(Duration::from_secs(2));
    assert_eq!(nodes.servers[1].worker(0).mirrored(), 2, "not yet");
    nodes.down.clear();
    nodes.run_for(Duration::from_secs(4));
    assert_eq!(nodes.servers[1].worker(0).mirrored(), 0);
}
