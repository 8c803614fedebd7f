//! The load tester: a tokio bot that drives one endpoint ([`endpoint`], the `meet-endpoint`
//! crate) over real sockets and the signaling WebSocket ([`bot`]); what a run is ([`spec`])
//! and how it is carried out ([`scenario`]); the loopback floor it measures the server
//! against ([`floor`]), the server metrics it scrapes ([`metrics_scrape`]), how fast the
//! end-to-end keys moved ([`rekey`]) and the reports it writes ([`report`]).

pub mod bot;
pub mod floor;
pub mod metrics_scrape;
pub mod rekey;
pub mod report;
pub mod scenario;
pub mod spec;
