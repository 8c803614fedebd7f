//! The load tester against the real server (started in this process) when the server goes
//! away mid-run: the run fails, with the endpoints' lost connections as its first reason,
//! instead of reporting no failures and no loss. Only outcomes are asserted, never timings.

mod common;

use std::sync::{Arc, Mutex};

use loadtest::report::RunErrorKind;
use loadtest::scenario::{self, Live, ProgressFn};
use loadtest::spec::{Scenario, Slo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_mid_run_fails_the_run() {
    let data_dir = common::data_dir("loss");
    let server = common::start_server(&data_dir).await;
    let target = common::target(&server);
    // A long hold: the run ends it early once every endpoint is gone.
    let scenario = Scenario {
        presenters: 1,
        viewers: 3,
        join_rate: 20.0,
        duration_s: 120.0,
        video_kbps: 200,
        video_fps: 15,
        slo: Slo {
            loss_pct: None,
            ..Slo::default()
        },
        ..Scenario::default()
    };

    // The server stops as soon as the hold starts: everyone joined and receives.
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel();
    let hold_tx = Mutex::new(Some(hold_tx));
    let progress: ProgressFn = Arc::new(move |live: &Live| {
        if live.phase == "hold"
            && let Some(tx) = hold_tx.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            let _ = tx.send(());
        }
    });
    let stop = async {
        hold_rx.await.expect("the hold starts");
        server.shutdown().await;
    };
    let (report, ()) = tokio::join!(scenario::run(&scenario, &target, Some(progress)), stop);
    let _ = std::fs::remove_dir_all(&data_dir);
    let report = report.expect("the run completes");

    assert!(!report.passed, "{}", report.summary());
    let first = report.errors.first().expect("an error");
    assert_eq!(
        first.kind,
        RunErrorKind::ConnectionLost,
        "{:?}",
        report.errors
    );
    assert_eq!(first.endpoints, 4, "{:?}", report.errors);
    for endpoint in &report.endpoints {
        assert!(endpoint.joined, "{endpoint:?}");
        assert!(endpoint.connection_lost, "{endpoint:?}");
        assert!(endpoint.error.is_some(), "{endpoint:?}");
    }
    assert_eq!(report.endpoints_failed, 4);

    // The text summary's first line says FAIL and why; the JSON leads with the verdict.
    let summary = report.summary();
    eprintln!("{summary}");
    let first_line = summary.lines().next().unwrap_or_default();
    assert!(
        first_line.starts_with("FAIL: 4 endpoints lost the connection to the server"),
        "{summary}"
    );
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("SLO run errors") && l.ends_with("FAIL")),
        "{summary}"
    );
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["passed"], false);
    assert_eq!(json["errors"][0]["kind"], "connection_lost");
    assert_eq!(json["verdict"].as_str(), Some(first_line));
}
