//! One run over several servers (`--url` given more than once): the endpoints are spread over
//! them in turn, and each server's metrics are scraped and reported on their own and summed.
//! Two independent servers in this process stand for two nodes: with no cluster between them,
//! each holds its own room, so a meeting (everyone publishes) gives each node's endpoints
//! someone to receive. Only outcomes are asserted, never timings.

mod common;

use loadtest::report::Role;
use loadtest::scenario;
use loadtest::spec::{Kind, Scenario, Slo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_spread_over_the_nodes_and_each_node_is_scraped() {
    let (dir_a, dir_b) = (common::data_dir("node-a"), common::data_dir("node-b"));
    let a = common::start_server(&dir_a).await;
    let b = common::start_server(&dir_b).await;
    let target = common::target_of(&[&a, &b]);
    let scenario = Scenario {
        kind: Kind::Meeting,
        participants: 4,
        join_rate: 20.0,
        duration_s: 3.0,
        video_kbps: 200,
        video_fps: 15,
        measure_floor: false,
        slo: Slo {
            loss_pct: None,
            ..Slo::default()
        },
        ..Scenario::default()
    };
    let report = scenario::run(&scenario, &target, None).await;
    let (url_a, url_b) = (a.ws_url(), b.ws_url());
    a.shutdown().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
    let report = report.expect("the run completes");
    eprintln!("{}", report.summary());

    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // Every endpoint received its node's other member.
    assert_eq!(report.endpoints.len(), 4);
    for endpoint in &report.endpoints {
        assert_eq!(endpoint.role, Role::Member);
        assert!(endpoint.packets_received > 0, "{endpoint:?}");
    }
    // Two endpoints went to each node, in turn, and each node held two participants.
    let sent_to = |url: &str| report.endpoints.iter().filter(|e| e.url == url).count();
    assert_eq!((sent_to(&url_a), sent_to(&url_b)), (2, 2));
    assert_eq!(report.nodes.len(), 2);
    for (node, url) in report.nodes.iter().zip([&url_a, &url_b]) {
        assert_eq!(&node.url, url);
        assert_eq!(node.endpoints, 2, "{node:?}");
        assert_eq!(node.participants_peak, Some(2.0), "{node:?}");
        assert!(node.metrics_url.is_some(), "{node:?}");
        // Each node's own figures over the hold: it forwarded its members' media.
        assert!(node.server.cpu_cores.is_some(), "{node:?}");
        assert!(
            node.server.forwarded_packets_per_s.is_some_and(|n| n > 0.0),
            "{node:?}"
        );
    }
    // The run's server figures are both nodes' together: four participants at most.
    let most = report
        .server_timeline
        .iter()
        .filter_map(|(_, s)| s.participants)
        .reduce(f64::max);
    assert_eq!(most, Some(4.0), "{:?}", report.server_timeline);
    assert!(
        report
            .server
            .forwarded_packets_per_s
            .is_some_and(|n| n > 0.0)
    );
    let summary = report.summary();
    assert!(
        summary.contains("servers over the hold (2 nodes together)"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("node {url_a}: 2 endpoints sent")),
        "{summary}"
    );
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["nodes"][1]["url"], url_b.as_str());
    let first = report.endpoints.iter().find(|e| e.name == "member-0");
    assert_eq!(first.map(|e| e.url.as_str()), Some(url_a.as_str()));
}
