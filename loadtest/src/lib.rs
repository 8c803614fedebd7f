//! Simulated participants for the SFU: a sans-IO WebRTC client endpoint ([`endpoint`]), a tokio
//! bot that drives one over real sockets and the signaling WebSocket ([`bot`]), and the
//! identifiable synthetic media they send ([`media`]); the load tester's runs: what one is
//! ([`spec`]) and how it is carried out ([`scenario`]), the loopback floor it measures the
//! server against ([`floor`]), the server metrics it scrapes ([`metrics_scrape`]), the reports
//! it writes ([`report`]), the passive datagram measurements its bots take ([`wire`]) and the
//! SFrame end-to-end media encryption they can apply ([`sframe`]).

pub mod bot;
pub mod endpoint;
pub mod floor;
pub mod media;
pub mod metrics_scrape;
pub mod report;
pub mod scenario;
pub mod sframe;
pub mod spec;
pub mod wire;
