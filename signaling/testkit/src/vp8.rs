//! Reassembles VP8 frames from RTP packets (RFC 7741), using webrtc-rs's depacketizer for the
//! payload descriptor.

use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::packetizer::Depacketizer;

/// Collects the packets of one frame at a time. A frame with a missing or reordered packet
/// is dropped rather than repaired: on loopback that only happens when something is wrong.
#[derive(Debug, Default)]
pub(crate) struct Vp8Assembler {
    descriptor: Vp8Packet,
    frame: Vec<u8>,
    in_frame: bool,
    timestamp: u32,
    last_sequence: Option<u16>,
}

impl Vp8Assembler {
    /// Adds one packet; returns the frame it completes, if any.
    pub(crate) fn push(&mut self, packet: &rtc::rtp::Packet) -> Option<Vec<u8>> {
        let sequence = packet.header.sequence_number;
        let contiguous = self
            .last_sequence
            .is_none_or(|last| last.wrapping_add(1) == sequence);
        self.last_sequence = Some(sequence);

        let Ok(payload) = self.descriptor.depacketize(&packet.payload) else {
            // Padding or a malformed descriptor: the frame being built cannot be trusted.
            self.in_frame = false;
            return None;
        };
        let starts_frame = self.descriptor.s == 1 && self.descriptor.pid == 0;
        if starts_frame {
            self.frame.clear();
            self.in_frame = true;
            self.timestamp = packet.header.timestamp;
        } else if !contiguous || packet.header.timestamp != self.timestamp {
            self.in_frame = false;
        }
        if !self.in_frame {
            return None;
        }
        self.frame.extend_from_slice(&payload);
        if packet.header.marker {
            self.in_frame = false;
            return Some(std::mem::take(&mut self.frame));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use endpoint::media::{VideoSource, vp8_frame_tag};
    use rtc::rtp::packetizer::Payloader;

    fn packets(frame: &[u8], sequence: &mut u16, timestamp: u32) -> Vec<rtc::rtp::Packet> {
        let mut payloader = rtc::rtp::codec::vp8::Vp8Payloader::default();
        let payloads = payloader
            .payload(500, &Bytes::copy_from_slice(frame))
            .expect("payloadable");
        let count = payloads.len();
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                *sequence = sequence.wrapping_add(1);
                rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        sequence_number: *sequence,
                        timestamp,
                        marker: i + 1 == count,
                        ..Default::default()
                    },
                    payload,
                }
            })
            .collect()
    }

    #[test]
    fn multi_packet_frames_are_reassembled() {
        let mut source = VideoSource::new(77, 1_800);
        let mut assembler = Vp8Assembler::default();
        let mut sequence = u16::MAX - 2;
        let key = source.next_frame(true);
        let delta = source.next_frame(false);

        let key_packets = packets(&key, &mut sequence, 0);
        assert!(key_packets.len() >= 4, "the frame spans several packets");
        let out: Vec<_> = key_packets
            .iter()
            .filter_map(|p| assembler.push(p))
            .collect();
        assert_eq!(out, vec![key]);
        assert_eq!(vp8_frame_tag(&out[0]), Some(77));

        // Losing the middle of a frame drops that frame, and the next one still arrives.
        let mut lossy = packets(&delta, &mut sequence, 6_000);
        lossy.remove(1);
        assert!(lossy.iter().all(|p| assembler.push(p).is_none()));
        let next = source.next_frame(false);
        let out: Vec<_> = packets(&next, &mut sequence, 12_000)
            .iter()
            .filter_map(|p| assembler.push(p))
            .collect();
        assert_eq!(out, vec![next]);
    }
}
