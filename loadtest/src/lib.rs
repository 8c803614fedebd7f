//! Simulated participants for the SFU: a sans-IO WebRTC client endpoint ([`endpoint`]), a tokio
//! bot that drives one over real sockets and the signaling WebSocket ([`bot`]), and the
//! identifiable synthetic media they send ([`media`]), and a minimal reference forwarder to
//! test them against ([`reference_sfu`]).

pub mod bot;
pub mod endpoint;
pub mod media;
pub mod reference_sfu;
