//! Reads the server's Prometheus metrics (`GET /metrics` over HTTPS) during a load test.
//!
//! The request is plain HTTP/1.0 over tokio-rustls, so the server answers without chunked
//! encoding and closes the connection: no HTTP client library is needed for one endpoint. The
//! TLS config is the bots' own (pinned or insecure), so the scrape trusts the same server.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest metrics page read; the server's is a few kilobytes.
const MAX_BODY: u64 = 4 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ScrapeError {
    #[error("bad metrics URL {0:?}: expected https://HOST:PORT/PATH")]
    BadUrl(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("the server answered {0:?}")]
    Status(String),
    #[error("the response is not HTTP")]
    Malformed,
}

/// Where the metrics are and how to reach them.
#[derive(Debug, Clone)]
pub struct MetricsTarget {
    /// `host:port` to connect to.
    pub authority: String,
    pub host: String,
    pub path: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// The server's metrics token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl MetricsTarget {
    /// Parses `https://HOST:PORT/PATH` (the port defaults to 443, the path to `/metrics`).
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, ScrapeError> {
        let bad = || ScrapeError::BadUrl(url.to_string());
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let (host, authority) = split_authority(authority).ok_or_else(bad)?;
        Ok(Self {
            authority,
            host,
            path: path.to_string(),
            tls,
            token: None,
        })
    }

    /// The page's URL, as given.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.authority, self.path)
    }

    /// The same target, scraped with the server's metrics token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Fetches and parses the metrics page once.
    pub async fn scrape(&self, timeout: Duration) -> Result<Metrics, ScrapeError> {
        let body = self.get(&self.path, timeout).await?;
        Ok(Metrics::parse(&body))
    }

    /// Fetches another page of the same server (e.g. `/healthz`) and returns its body; any
    /// status but 200 is an error.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<String, ScrapeError> {
        tokio::time::timeout(timeout, self.fetch(path))
            .await
            .map_err(|_| ScrapeError::Timeout)?
    }

    async fn fetch(&self, path: &str) -> Result<String, ScrapeError> {
        let tcp = TcpStream::connect(&self.authority).await?;
        let name = match self.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.host.clone())
                .map_err(|_| ScrapeError::BadUrl(self.host.clone()))?,
        };
        let mut tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let authorization = self
            .token
            .as_ref()
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n{authorization}\r\n",
            self.authority
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // A server that closes without close_notify still delivered the page.
        let read = (&mut tls).take(MAX_BODY).read_to_end(&mut response).await;
        if let Err(err) = read
            && (response.is_empty() || err.kind() != std::io::ErrorKind::UnexpectedEof)
        {
            return Err(err.into());
        }
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or(ScrapeError::Malformed)?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(ScrapeError::Status(status.to_string()));
        }
        Ok(body.to_string())
    }
}

/// Splits `host:port` or `[v6]:port`; returns the bare host and a connectable authority.
fn split_authority(authority: &str) -> Option<(String, String)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        let port = match port.strip_prefix(':') {
            Some(p) => p.parse::<u16>().ok()?,
            None => 443,
        };
        return Some((host.to_string(), format!("[{host}]:{port}")));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (authority, 443),
    };
    (!host.is_empty()).then(|| (host.to_string(), format!("{host}:{port}")))
}

/// One scrape: every sample as `(name, labels, value)`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<(String, String, f64)>,
}

impl Metrics {
    /// Parses the Prometheus text format; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| {
                let (series, rest) = match line.find('}') {
                    Some(end) => (&line[..=end], &line[end + 1..]),
                    None => line.split_once(' ')?,
                };
                let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_string(), labels.to_string(), value))
            })
            .collect();
        Self { samples }
    }

    /// The sum of every series of `name` whose labels contain `label` (`""` matches all).
    pub fn sum(&self, name: &str, label: &str) -> Option<f64> {
        let mut found = false;
        let total = self
            .samples
            .iter()
            .filter(|(n, labels, _)| n == name && labels.contains(label))
            .inspect(|_| found = true)
            .map(|(_, _, v)| v)
            .sum();
        found.then_some(total)
    }
}

/// Where a sample's CPU time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuSource {
    /// `meet_process_cpu_seconds`: the server's CPU time as a float (from
    /// `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`), a microsecond or finer.
    Precise,
    /// `process_cpu_seconds_total`: an integer counter, whole seconds (a server without the
    /// precise gauge). A figure over a 10 s window scatters by ±10% from it alone.
    WholeSeconds,
}

impl CpuSource {
    /// The metric read.
    pub fn metric(self) -> &'static str {
        match self {
            CpuSource::Precise => PRECISE_CPU_METRIC,
            CpuSource::WholeSeconds => COARSE_CPU_METRIC,
        }
    }

    /// The smallest step of the figure, in seconds.
    pub fn resolution_s(self) -> f64 {
        match self {
            CpuSource::Precise => 1e-6,
            CpuSource::WholeSeconds => 1.0,
        }
    }
}

/// The server's CPU time as a float (signaling's `metrics::CPU_SECONDS`).
pub const PRECISE_CPU_METRIC: &str = "meet_process_cpu_seconds";
/// The standard process metric, an integer counter on this server.
pub const COARSE_CPU_METRIC: &str = "process_cpu_seconds_total";

/// The figures a load test follows over time, from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerSample {
    /// The server's CPU time in seconds, from the precise metric when the server has it.
    pub cpu_seconds: Option<f64>,
    /// Which metric `cpu_seconds` came from (the report states it once, not per sample).
    #[serde(skip)]
    pub cpu_source: Option<CpuSource>,
    pub rss_bytes: Option<f64>,
    pub participants: Option<f64>,
    pub subscriptions: Option<f64>,
    pub rtp_in: Option<f64>,
    pub rtp_forwarded: Option<f64>,
    pub dropped: Option<f64>,
    pub nacks: Option<f64>,
    pub open_fds: Option<f64>,
    pub tasks: Option<f64>,
    /// The end-to-end key relay: `e2ee_keys` messages in, `e2ee_key` messages out and their
    /// bytes (servers without these counters leave them `None`).
    pub key_messages_in: Option<f64>,
    pub key_messages_out: Option<f64>,
    pub key_bytes_in: Option<f64>,
    pub key_bytes_out: Option<f64>,
}

impl ServerSample {
    pub fn from_metrics(metrics: &Metrics) -> Self {
        let (cpu_seconds, cpu_source) = match metrics.sum(PRECISE_CPU_METRIC, "") {
            Some(seconds) => (Some(seconds), Some(CpuSource::Precise)),
            None => match metrics.sum(COARSE_CPU_METRIC, "") {
                Some(seconds) => (Some(seconds), Some(CpuSource::WholeSeconds)),
                None => (None, None),
            },
        };
        Self {
            cpu_seconds,
            cpu_source,
            rss_bytes: metrics.sum("process_resident_memory_bytes", ""),
            participants: metrics.sum("meet_participants", ""),
            subscriptions: metrics.sum("meet_subscriptions", ""),
            rtp_in: metrics.sum("meet_rtp_packets_total", "direction=\"in\""),
            rtp_forwarded: metrics.sum("meet_rtp_packets_total", "direction=\"forwarded\""),
            dropped: metrics.sum("meet_dropped_packets_total", ""),
            nacks: metrics.sum("meet_nacks_received_total", ""),
            open_fds: metrics.sum("process_open_fds", ""),
            tasks: metrics.sum("meet_tokio_tasks", ""),
            key_messages_in: metrics.sum("meet_e2ee_key_messages_total", "direction=\"in\""),
            key_messages_out: metrics.sum("meet_e2ee_key_messages_total", "direction=\"out\""),
            key_bytes_in: metrics.sum("meet_e2ee_key_bytes_total", "direction=\"in\""),
            key_bytes_out: metrics.sum("meet_e2ee_key_bytes_total", "direction=\"out\""),
        }
    }

    /// The figures of several nodes taken together: each figure is their sum where every
    /// node has it (a sum over some nodes would pass for all of them), and the CPU source is
    /// the coarser of theirs. `None` for no sample.
    pub fn sum(samples: &[ServerSample]) -> Option<Self> {
        let (first, rest) = samples.split_first()?;
        let add = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        Some(rest.iter().fold(*first, |total, s| Self {
            cpu_seconds: add(total.cpu_seconds, s.cpu_seconds),
            cpu_source: match (total.cpu_source, s.cpu_source) {
                (Some(CpuSource::Precise), Some(CpuSource::Precise)) => Some(CpuSource::Precise),
                (Some(_), Some(_)) => Some(CpuSource::WholeSeconds),
                _ => None,
            },
            rss_bytes: add(total.rss_bytes, s.rss_bytes),
            participants: add(total.participants, s.participants),
            subscriptions: add(total.subscriptions, s.subscriptions),
            rtp_in: add(total.rtp_in, s.rtp_in),
            rtp_forwarded: add(total.rtp_forwarded, s.rtp_forwarded),
            dropped: add(total.dropped, s.dropped),
            nacks: add(total.nacks, s.nacks),
            open_fds: add(total.open_fds, s.open_fds),
            tasks: add(total.tasks, s.tasks),
            key_messages_in: add(total.key_messages_in, s.key_messages_in),
            key_messages_out: add(total.key_messages_out, s.key_messages_out),
            key_bytes_in: add(total.key_bytes_in, s.key_bytes_in),
            key_bytes_out: add(total.key_bytes_out, s.key_bytes_out),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x y\n# TYPE meet_rtp_packets_total counter\n\
                    meet_rtp_packets_total{direction=\"in\"} 10\n\
                    meet_rtp_packets_total{direction=\"forwarded\"} 2000\n\
                    meet_dropped_packets_total{reason=\"a\"} 1\n\
                    meet_dropped_packets_total{reason=\"b\"} 2\n\
                    process_cpu_seconds_total 1.5\nbroken line\n";
        let metrics = Metrics::parse(text);
        let sample = ServerSample::from_metrics(&metrics);
        assert_eq!(sample.rtp_forwarded, Some(2000.0));
        assert_eq!(sample.rtp_in, Some(10.0));
        assert_eq!(sample.dropped, Some(3.0));
        assert_eq!(sample.cpu_seconds, Some(1.5));
        assert_eq!(sample.cpu_source, Some(CpuSource::WholeSeconds));
        assert_eq!(sample.rss_bytes, None);
    }

    /// The server's float CPU gauge wins over the whole-second counter, whatever the order.
    #[test]
    fn prefers_the_precise_cpu_gauge() {
        let text = "# HELP meet_process_cpu_seconds User and system CPU time\n\
                    # TYPE meet_process_cpu_seconds gauge\n\
                    meet_process_cpu_seconds 12.345678\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 12\n";
        let sample = ServerSample::from_metrics(&Metrics::parse(text));
        assert_eq!(sample.cpu_seconds, Some(12.345678));
        assert_eq!(sample.cpu_source, Some(CpuSource::Precise));
        assert_eq!(CpuSource::Precise.metric(), "meet_process_cpu_seconds");
        // Exponent notation, as some exporters write small values.
        let sample = ServerSample::from_metrics(&Metrics::parse("meet_process_cpu_seconds 4.5e-3"));
        assert_eq!(sample.cpu_seconds, Some(0.0045));
        let none = ServerSample::from_metrics(&Metrics::parse("meet_rooms 1"));
        assert_eq!((none.cpu_seconds, none.cpu_source), (None, None));
    }

    /// Several nodes' figures add up; a figure one node lacks is no sum, and one node on the
    /// whole-second counter makes the sum coarse.
    #[test]
    fn nodes_figures_add_up() {
        let a = ServerSample::from_metrics(&Metrics::parse(
            "meet_process_cpu_seconds 1.5\nmeet_participants 3\nprocess_open_fds 10\n",
        ));
        let b = ServerSample::from_metrics(&Metrics::parse(
            "meet_process_cpu_seconds 2.25\nmeet_participants 4\n",
        ));
        let total = ServerSample::sum(&[a, b]).expect("two samples");
        assert_eq!(total.cpu_seconds, Some(3.75));
        assert_eq!(total.cpu_source, Some(CpuSource::Precise));
        assert_eq!(total.participants, Some(7.0));
        assert_eq!(total.open_fds, None);
        let coarse = ServerSample::from_metrics(&Metrics::parse("process_cpu_seconds_total 2\n"));
        let total = ServerSample::sum(&[a, coarse]).expect("two samples");
        assert_eq!(total.cpu_seconds, Some(3.5));
        assert_eq!(total.cpu_source, Some(CpuSource::WholeSeconds));
        assert_eq!(ServerSample::sum(&[a]), Some(a));
        assert_eq!(ServerSample::sum(&[]), None);
    }

    #[test]
    fn parses_urls() {
        let tls = crate::bot::insecure_tls_config();
        let target = MetricsTarget::new("https://127.0.0.1:8443", tls.clone()).expect("url");
        assert_eq!(target.authority, "127.0.0.1:8443");
        assert_eq!(target.path, "/metrics");
        assert_eq!(target.url(), "https://127.0.0.1:8443/metrics");
        let target = MetricsTarget::new("https://[::1]:9/m", tls.clone()).expect("url");
        assert_eq!((target.host.as_str(), target.path.as_str()), ("::1", "/m"));
        assert!(MetricsTarget::new("http://127.0.0.1/", tls.clone()).is_err());
        assert!(MetricsTarget::new("https://:5/", tls).is_err());
    }
}
