//! The selective forwarding unit.
//!
//! [`engine`] is the sans-IO media core: it takes time as an argument, performs no I/O and is
//! tested in virtual time. [`driver`] is the thin I/O layer that owns the one UDP socket and
//! the clock. Signaling talks to either through [`api`]'s commands and events.

pub mod allocator;
pub mod api;
pub mod codec;
pub mod driver;
pub mod dtls;
pub mod engine;
pub mod forwarder;
pub mod gop;
pub mod links;
pub mod recording;
pub mod relay;
pub mod relay_wire;
pub mod seqguard;
pub mod speaker;
pub mod stats;
pub mod stun;
pub mod vp8;

pub use api::{PublicationAnnouncement, SfuCommand, SfuEvent, TransportFailure};
pub use driver::{SfuConfig, SfuHandle};
pub use engine::{AddressChange, Engine, EngineConfig, ufrag_worker};
pub use stats::EngineStats;
