//! VP8 picture ids and TL0PICIDX kept continuous for each subscriber.
//!
//! The VP8 payload descriptor (RFC 7741 §4.2) numbers frames (PictureID, 7 or 15 bits) and
//! base-layer frames (TL0PICIDX, 8 bits); a receiver's frame assembler (libwebrtc's reference
//! finder) uses them to tell a lost frame from a reordered one. Each simulcast layer is its
//! own encoder with its own numbering, so a subscriber moved from one layer to another, or
//! started from the GOP cache, would see them jump. Like sequence numbers and timestamps
//! ([`crate::forwarder`]), they are re-based at every source change so that each subscriber
//! sees one continuous count.
//!
//! The payload is shared by every subscriber; a subscriber whose numbering differs from the
//! source gets a copy with the few descriptor bytes changed. Subscribers with the same
//! numbering share one copy per packet ([`Patches`]), so a layer's subscribers usually cost
//! one copy between them, not one each.

use std::sync::Arc;

/// Where a packet's descriptor holds the two counters, and their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// Byte offset, whether it is the 15-bit form, and the value.
    picture_id: Option<(usize, bool, u16)>,
    tl0: Option<(usize, u8)>,
}

impl Fields {
    /// Reads a VP8 payload descriptor; `None` when it has neither counter (or is truncated).
    pub fn read(payload: &[u8]) -> Option<Self> {
        let descriptor = rtp_payload::vp8::Descriptor::parse(payload)?;
        let picture_id = descriptor
            .picture_id
            .map(|id| (id.offset, id.long, id.value));
        let tl0 = descriptor.tl0;
        (picture_id.is_some() || tl0.is_some()).then_some(Self { picture_id, tl0 })
    }
}

/// The counters one subscriber's packet carries once rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Numbers {
    picture_id: Option<u16>,
    tl0: Option<u8>,
}

/// One subscription's numbering: the offsets from the current source's counters, and the
/// last values sent.
#[derive(Debug, Default)]
pub struct PictureIds {
    picture_id_offset: u16,
    tl0_offset: u8,
    last_picture_id: Option<u16>,
    last_tl0: Option<u8>,
    /// The source changed: the next packet re-bases both counters.
    rebase: bool,
}

const PICTURE_ID_MOD: u16 = 1 << 15;

impl PictureIds {
    /// The next packet comes from another source (a layer switch, a replay from the cache):
    /// it re-bases the counters. That packet starts a keyframe, so its numbers follow the
    /// last ones sent by one.
    pub fn reset_source(&mut self) {
        self.rebase = true;
    }

    /// The numbers this subscriber's copy of a packet carries, and whether they differ from
    /// the source's (so the payload needs a patched copy).
    pub fn rewrite(&mut self, fields: Fields) -> (Numbers, bool) {
        if self.rebase {
            self.rebase = false;
            if let (Some(last), Some((_, _, source))) = (self.last_picture_id, fields.picture_id) {
                self.picture_id_offset = last
                    .wrapping_add(1)
                    .wrapping_sub(source)
                    .rem_euclid(PICTURE_ID_MOD);
            }
            if let (Some(last), Some((_, source))) = (self.last_tl0, fields.tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(source);
            }
        }
        let picture_id = fields.picture_id.map(|(_, long, source)| {
            let modulus = if long { PICTURE_ID_MOD } else { 1 << 7 };
            source.wrapping_add(self.picture_id_offset) % modulus
        });
        let tl0 = fields
            .tl0
            .map(|(_, source)| source.wrapping_add(self.tl0_offset));
        // The newest values sent are what the next re-base continues from; a late packet of
        // an earlier frame (a reordering, a retransmission) does not move them back.
        if let Some(id) = picture_id
            && self
                .last_picture_id
                .is_none_or(|last| id.wrapping_sub(last) % PICTURE_ID_MOD < PICTURE_ID_MOD / 2)
        {
            self.last_picture_id = Some(id);
        }
        if let Some(value) = tl0
            && self
                .last_tl0
                .is_none_or(|last| value.wrapping_sub(last) < 128)
        {
            self.last_tl0 = Some(value);
        }
        let changed =
            picture_id != fields.picture_id.map(|(_, _, v)| v) || tl0 != fields.tl0.map(|(_, v)| v);
        (Numbers { picture_id, tl0 }, changed)
    }
}

/// `payload` with its counters set to `numbers`.
pub fn patched(payload: &[u8], fields: Fields, numbers: Numbers) -> Arc<[u8]> {
    let mut copy = payload.to_vec();
    if let (Some((at, long, _)), Some(id)) = (fields.picture_id, numbers.picture_id) {
        if long {
            let [high, low] = id.to_be_bytes();
            copy[at] = 0x80 | (high & 0x7f);
            copy[at + 1] = low;
        } else {
            copy[at] = (id & 0x7f) as u8;
        }
    }
    if let (Some((at, _)), Some(tl0)) = (fields.tl0, numbers.tl0) {
        copy[at] = tl0;
    }
    copy.into()
}

/// The patched copies of one packet made so far, shared by the subscribers whose numbers
/// match. Cleared for every packet; its storage is reused.
#[derive(Debug, Default)]
pub struct Patches {
    copies: Vec<(Numbers, Arc<[u8]>)>,
}

impl Patches {
    pub fn clear(&mut self) {
        self.copies.clear();
    }

    /// The payload carrying `numbers`: one made earlier for this packet, or a new copy.
    pub fn get(&mut self, payload: &[u8], fields: Fields, numbers: Numbers) -> Arc<[u8]> {
        if let Some((_, copy)) = self.copies.iter().find(|(n, _)| *n == numbers) {
            return copy.clone();
        }
        let copy = patched(payload, fields, numbers);
        self.copies.push((numbers, copy.clone()));
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with a 15-bit picture id and a TL0PICIDX, then a frame byte.
    fn packet(picture_id: u16, tl0: u8) -> Vec<u8> {
        let [high, low] = picture_id.to_be_bytes();
        vec![0x90, 0xc0, 0x80 | high, low, tl0, 0x9d]
    }

    fn numbers(payload: &[u8]) -> (u16, u8) {
        let fields = Fields::read(payload).expect("fields");
        (
            fields.picture_id.expect("picture id").2,
            fields.tl0.expect("tl0").1,
        )
    }

    #[test]
    fn reads_both_forms_and_refuses_truncated_descriptors() {
        let long = Fields::read(&packet(0x1234, 7)).expect("long");
        assert_eq!(long.picture_id, Some((2, true, 0x1234)));
        assert_eq!(long.tl0, Some((4, 7)));
        let short = Fields::read(&[0x90, 0x80, 0x05, 0x9d]).expect("short");
        assert_eq!(short.picture_id, Some((2, false, 5)));
        assert_eq!(short.tl0, None);
        assert_eq!(Fields::read(&[0x10, 0x9d]), None, "no extension");
        assert_eq!(Fields::read(&[0x90, 0xc0, 0x80]), None, "truncated");
        assert_eq!(Fields::read(&[]), None);
    }

    #[test]
    fn numbering_stays_continuous_across_a_switch() {
        let mut ids = PictureIds::default();
        let mut patches = Patches::default();
        // Layer 0: picture ids 100, 101; unchanged.
        for (pid, tl0) in [(100, 10), (101, 11)] {
            let payload = packet(pid, tl0);
            let fields = Fields::read(&payload).expect("fields");
            let (n, changed) = ids.rewrite(fields);
            assert!(!changed);
            assert_eq!((n.picture_id, n.tl0), (Some(pid), Some(tl0)));
        }
        // Switch to layer 2, whose encoder is at 32,760 (about to wrap) and TL0 250.
        ids.reset_source();
        let mut seen = Vec::new();
        for (pid, tl0) in [(32_760, 250), (32_767, 251), (0, 252)] {
            let payload = packet(pid, tl0);
            let fields = Fields::read(&payload).expect("fields");
            let (n, changed) = ids.rewrite(fields);
            assert!(changed);
            patches.clear();
            seen.push(numbers(&patches.get(&payload, fields, n)));
        }
        // The first frame follows the last one sent; later ones keep the source's distance.
        assert_eq!(seen, [(102, 12), (109, 13), (110, 14)]);
    }

    #[test]
    fn subscribers_with_the_same_numbers_share_one_copy() {
        let payload = packet(500, 3);
        let fields = Fields::read(&payload).expect("fields");
        let numbers = Numbers {
            picture_id: Some(7),
            tl0: Some(1),
        };
        let mut patches = Patches::default();
        let a = patches.get(&payload, fields, numbers);
        let b = patches.get(&payload, fields, numbers);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&a[5..], &payload[5..], "the frame is untouched");
    }
}
