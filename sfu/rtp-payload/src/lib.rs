//! RTP payload formats as the SFU, the recorder and the test endpoint read them: without
//! decoding anything, from the few clear bytes at the start of a payload (which stay clear
//! under end-to-end encryption). A leaf crate with no dependencies, so that each of them
//! parses a descriptor the same way.

pub mod vp8;
