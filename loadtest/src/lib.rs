//! Simulated participants for the SFU: a sans-IO WebRTC client endpoint ([`endpoint`]), a tokio
//! bot that drives one over real sockets and the signaling WebSocket ([`bot`]), and the
//! identifiable synthetic media they send ([`media`]).

pub mod bot;
pub mod endpoint;
pub mod media;
