//! A run split over two `loadtest` processes (`--shard 1/2` and `--shard 2/2`, one
//! `--start-at`) against the real server in this process, their JSON reports merged by
//! `loadtest merge`: the parts run distinct endpoints in one room, the second part's viewers
//! receive the first part's presenter, and the merged report holds every endpoint with the
//! percentiles of all of them. Only outcomes are asserted, never timings.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loadtest::report::{Distribution, RunReport};
use loadtest::spec::Shard;
use tokio::process::Command;

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");
/// Time for both processes to start and check the server before they begin together: ample
/// on a loaded machine, since a part that reaches the start time late refuses to run.
const START_AHEAD: Duration = Duration::from_secs(8);

fn explain(what: &str, output: &Output) -> String {
    format!(
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn read(path: &Path) -> RunReport {
    let text = std::fs::read_to_string(path).expect("a part's report");
    serde_json::from_str(&text).expect("a report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_run_one_split_broadcast_and_merge() {
    let dir = common::data_dir("split");
    let server = common::start_server(&dir).await;
    let cert = dir.join("pinned.pem");
    std::fs::write(&cert, &server.cert_pem).expect("certificate file");
    let start_at = SystemTime::now()
        .checked_add(START_AHEAD)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .expect("a time");
    let part = |shard: &str| {
        let json = dir.join(format!("part-{}.json", shard.replace('/', "-")));
        let mut command = Command::new(LOADTEST);
        command
            .args(["broadcast", "--quiet", "--url", &server.ws_url()])
            .arg("--ca-cert")
            .arg(&cert)
            .args(["--metrics-token", &server.metrics_token])
            .args(["--room", "split", "--presenters", "1", "--viewers", "4"])
            .args(["--join-rate", "20", "--duration", "3"])
            .args(["--video-kbps", "200", "--video-fps", "15"])
            .args(["--measure-floor", "false", "--slo-loss", "100"])
            .args(["--shard", shard, "--start-at", &start_at.to_string()])
            .arg("--json")
            .arg(&json)
            .kill_on_drop(true);
        (command, json)
    };
    let (mut first, first_json) = part("1/2");
    let (mut second, second_json) = part("2/2");
    let (first, second) = tokio::join!(first.output(), second.output());
    let (first, second) = (first.expect("part 1 runs"), second.expect("part 2 runs"));
    let merged = Command::new(LOADTEST)
        .arg("merge")
        .arg(&second_json)
        .arg(&first_json)
        .output()
        .await
        .expect("merge runs");
    server.shutdown().await;
    assert!(first.status.success(), "{}", explain("part 1/2", &first));
    assert!(second.status.success(), "{}", explain("part 2/2", &second));
    assert!(merged.status.success(), "{}", explain("merge", &merged));
    let parts = [read(&first_json), read(&second_json)];
    let report: RunReport = serde_json::from_slice(&merged.stdout).expect("merged JSON");
    let _ = std::fs::remove_dir_all(&dir);

    // Each part ran its own endpoints, from the start time on: part 1 the presenter and
    // every other viewer, part 2 the rest, which received part 1's presenter.
    let names = |r: &RunReport| -> BTreeSet<String> {
        r.endpoints.iter().map(|e| e.name.clone()).collect()
    };
    let expected =
        |list: &[&str]| -> BTreeSet<String> { list.iter().map(|name| name.to_string()).collect() };
    assert_eq!(
        names(&parts[0]),
        expected(&["presenter-0", "viewer-1", "viewer-3"])
    );
    assert_eq!(names(&parts[1]), expected(&["viewer-2", "viewer-4"]));
    for (part, index) in parts.iter().zip(1..) {
        assert_eq!(part.scenario.shard, Some(Shard { index, count: 2 }));
        assert!(
            part.started_unix_ms >= start_at,
            "part {index} started early"
        );
        assert!(part.passed, "{}", part.summary());
    }
    for viewer in &parts[1].endpoints {
        assert!(viewer.packets_received > 0, "{viewer:?}");
        assert!(viewer.first_keyframe_ms.is_some(), "{viewer:?}");
    }

    // The merged report: every endpoint once, the whole scenario, the percentiles of all of
    // them (what their values give, and the parts' counts added up).
    assert_eq!(report.merged_parts.len(), 2);
    assert_eq!(report.scenario.shard, None);
    assert_eq!(report.scenario.viewers, 4);
    assert_eq!(
        names(&report),
        expected(&[
            "presenter-0",
            "viewer-1",
            "viewer-2",
            "viewer-3",
            "viewer-4"
        ])
    );
    assert_eq!(report.endpoints_total, 5);
    assert_eq!(report.endpoints_failed, 0);
    assert!(report.passed, "{}", report.summary());
    let all = |f: fn(&loadtest::report::EndpointResult) -> Option<f64>| {
        Distribution::of(report.endpoints.iter().filter_map(f))
    };
    assert_same(report.join_ms, all(|e| e.join_ms));
    assert_eq!(report.join_ms.map(|d| d.count), Some(5));
    let viewers = Distribution::of(
        report
            .endpoints
            .iter()
            .filter(|e| e.name.starts_with("viewer"))
            .filter_map(|e| e.first_media_ms),
    );
    assert_same(report.first_media_ms, viewers);
    assert_eq!(report.first_media_ms.map(|d| d.count), Some(4));
    let counts: u64 = parts
        .iter()
        .filter_map(|p| p.first_keyframe_ms.map(|d| d.count))
        .sum();
    assert_eq!(report.first_keyframe_ms.map(|d| d.count), Some(counts));
    // The server's figures come from a part that scraped it.
    assert!(!report.server_timeline.is_empty());
    assert_eq!(report.nodes.len(), 1);
    assert_eq!(report.nodes[0].endpoints, 5);
    let summary = String::from_utf8_lossy(&merged.stderr);
    assert!(summary.contains("merged from parts 1/2, 2/2"), "{summary}");
}

/// Two distributions of the same values: the same count and percentiles (from the same
/// histogram buckets), and means equal but for the rounding of sums taken in another order.
fn assert_same(merged: Option<Distribution>, direct: Option<Distribution>) {
    let (Some(merged), Some(direct)) = (merged, direct) else {
        assert_eq!(merged, direct);
        return;
    };
    assert_eq!(
        (
            merged.count,
            merged.min,
            merged.p50,
            merged.p95,
            merged.p99,
            merged.max
        ),
        (
            direct.count,
            direct.min,
            direct.p50,
            direct.p95,
            direct.p99,
            direct.max
        ),
    );
    assert!(
        (merged.mean - direct.mean).abs() <= 1e-9 * direct.mean.abs().max(1.0),
        "means {} and {}",
        merged.mean,
        direct.mean
    );
}
