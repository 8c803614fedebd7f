//! The real server in the test process, on free loopback ports, and a load-test target aimed
//! at it, for the integration tests that drive whole runs.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use loadtest::bot::tls_config_trusting_pem;
use loadtest::metrics_scrape::MetricsTarget;
use loadtest::scenario::{Node, Target};

/// A fresh data directory under the system's temporary one.
pub fn data_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "meet-loadtest-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ))
}

/// Starts the server with open rooms on 127.0.0.1 and free ports.
pub async fn start_server(data_dir: &std::path::Path) -> signaling::RunningServer {
    signaling::install_crypto_provider();
    let mut config = signaling::Config::new();
    config.http_addr = "127.0.0.1:0".parse().expect("addr");
    config.media_addr = "127.0.0.1:0".parse().expect("addr");
    config.data_dir = data_dir.to_path_buf();
    config.open_rooms = true;
    signaling::start(config).await.expect("server starts")
}

/// A load-test target for `server`: its WebSocket, its pinned certificate and its metrics.
pub fn target(server: &signaling::RunningServer) -> Target {
    target_of(&[server])
}

/// A load-test target whose endpoints are spread over `servers`, each one's metrics scraped
/// and each one's certificate pinned.
pub fn target_of(servers: &[&signaling::RunningServer]) -> Target {
    let mut pem = Vec::new();
    for server in servers {
        pem.extend_from_slice(&server.cert_pem);
        pem.push(b'\n');
    }
    let tls = tls_config_trusting_pem(&pem).expect("pinned certs");
    let nodes = servers
        .iter()
        .map(|server| Node {
            ws_url: server.ws_url(),
            metrics: Some(
                MetricsTarget::new(
                    &format!("https://{}/metrics", server.http_addr),
                    tls.clone(),
                )
                .expect("metrics url")
                .with_token(Some(server.metrics_token.clone())),
            ),
        })
        .collect();
    Target {
        nodes,
        tls,
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        tokens: None,
    }
}
