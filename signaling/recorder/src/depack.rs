//! Video depacketization without decoding: frames are assembled from RTP packets by timestamp
//! and marker, and only payload descriptors and frame headers are read.

use std::collections::VecDeque;

use rtp_payload::vp8::Descriptor as Vp8Descriptor;

/// A frame that was not completed after this many newer frames started is given up.
const MAX_PENDING_FRAMES: usize = 8;

/// Which video payload format a track uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VideoFormat {
    Vp8,
    Vp9,
    Av1,
}

/// A complete frame, ready for the container.
#[derive(Debug)]
pub(crate) struct Frame {
    /// RTP timestamp, extended to 64 bits relative to the track's first packet.
    pub(crate) ts: i64,
    pub(crate) at_ms: u64,
    pub(crate) keyframe: bool,
    pub(crate) data: Vec<u8>,
    /// Frames were lost between the previous complete frame and this one, so the decoder's
    /// references are broken until the next keyframe.
    pub(crate) after_loss: bool,
    /// Dimensions read from a keyframe header, when the codec carries them.
    pub(crate) size: Option<(u16, u16)>,
    /// AV1: the sequence header OBU, for the track's CodecPrivate.
    pub(crate) sequence_header: Option<Vec<u8>>,
}

struct Packet {
    seq: u16,
    marker: bool,
    payload: Vec<u8>,
}

struct Pending {
    ts: i64,
    at_ms: u64,
    packets: Vec<Packet>,
}

/// Collects one track's packets into frames.
pub(crate) struct Assembler {
    format: VideoFormat,
    pending: VecDeque<Pending>,
    last_emitted: Option<i64>,
    /// The sequence number of the last packet of the last frame written (or of padding after
    /// it): a frame that does not follow it means a whole frame was lost in between.
    last_seq: Option<u16>,
    lost: bool,
    /// The highest RTP timestamp seen, extended, and its 32-bit form.
    last_ts: Option<(i64, u32)>,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("format", &self.format)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Assembler {
    pub(crate) fn new(format: VideoFormat) -> Self {
        Self {
            format,
            pending: VecDeque::new(),
            last_emitted: None,
            last_seq: None,
            lost: false,
            last_ts: None,
        }
    }

    fn extend_ts(&mut self, ts: u32) -> i64 {
        match self.last_ts {
            None => {
                self.last_ts = Some((0, ts));
                0
            }
            Some((ext, raw)) => {
                let value = ext + i64::from(ts.wrapping_sub(raw) as i32);
                if value > ext {
                    self.last_ts = Some((value, ts));
                }
                value
            }
        }
    }

    /// Adds one packet; returns the frame it completed, if any.
    pub(crate) fn push(
        &mut self,
        seq: u16,
        rtp_ts: u32,
        marker: bool,
        payload: &[u8],
        at_ms: u64,
    ) -> Option<Frame> {
        if payload.is_empty() {
            // Padding (bandwidth probing) takes sequence numbers but carries no frame.
            if self
                .last_seq
                .is_some_and(|last| seq == last.wrapping_add(1))
            {
                self.last_seq = Some(seq);
            }
            return None;
        }
        let ts = self.extend_ts(rtp_ts);
        if self.last_emitted.is_some_and(|last| ts <= last) {
            // A late packet of a frame already written or given up.
            return None;
        }
        if self.format == VideoFormat::Vp9 && vp9_descriptor(payload).is_some_and(|d| d.sid > 0) {
            // Only the base spatial layer is recorded: combining layers would need a VP9
            // superframe, and the base layer decodes on its own.
            return None;
        }
        let index = match self.pending.iter().position(|p| p.ts == ts) {
            Some(i) => i,
            None => {
                if self.pending.len() >= MAX_PENDING_FRAMES {
                    self.pending.pop_front();
                    self.lost = true;
                }
                self.pending.push_back(Pending {
                    ts,
                    at_ms,
                    packets: Vec::with_capacity(4),
                });
                self.pending.len() - 1
            }
        };
        let frame = &mut self.pending[index];
        if frame.packets.iter().any(|p| p.seq == seq) {
            return None;
        }
        frame.packets.push(Packet {
            seq,
            marker,
            payload: payload.to_vec(),
        });
        if !self.complete(index) {
            return None;
        }
        let done = self.pending.remove(index)?;
        // Older frames still waiting can no longer be written in order.
        let before = self.pending.len();
        self.pending.retain(|p| p.ts > done.ts);
        if self.pending.len() != before {
            self.lost = true;
        }
        self.last_emitted = Some(done.ts);
        let (first_seq, last_seq) = match (done.packets.first(), done.packets.last()) {
            (Some(first), Some(last)) => (first.seq, last.seq),
            _ => return None,
        };
        if self
            .last_seq
            .is_some_and(|last| first_seq != last.wrapping_add(1))
        {
            self.lost = true;
        }
        self.last_seq = Some(last_seq);
        let after_loss = std::mem::take(&mut self.lost);
        let mut frame = match self.format {
            VideoFormat::Vp8 => build_vp8(&done.packets),
            VideoFormat::Vp9 => build_vp9(&done.packets),
            VideoFormat::Av1 => build_av1(&done.packets),
        };
        match &mut frame {
            Some(frame) => {
                frame.ts = done.ts;
                frame.at_ms = done.at_ms;
                frame.after_loss = after_loss;
            }
            // A frame that does not parse counts as lost.
            None => self.lost = true,
        }
        frame
    }

    /// Whether the frame at `index` has every packet from its start to its end.
    fn complete(&mut self, index: usize) -> bool {
        let format = self.format;
        let frame = &mut self.pending[index];
        let base = frame.packets[0].seq;
        frame
            .packets
            .sort_unstable_by_key(|p| p.seq.wrapping_sub(base) as i16);
        let (Some(first), Some(last)) = (frame.packets.first(), frame.packets.last()) else {
            return false;
        };
        let starts = match format {
            VideoFormat::Vp8 => {
                Vp8Descriptor::parse(&first.payload).is_some_and(|d| d.starts_frame)
            }
            VideoFormat::Vp9 => vp9_descriptor(&first.payload).is_some_and(|d| d.start),
            // The first packet of a temporal unit does not continue an earlier OBU.
            VideoFormat::Av1 => first.payload.first().is_some_and(|b| b & 0x80 == 0),
        };
        let ends = match format {
            VideoFormat::Vp9 => last.marker || vp9_descriptor(&last.payload).is_some_and(|d| d.end),
            _ => last.marker,
        };
        starts
            && ends
            && frame
                .packets
                .windows(2)
                .all(|w| w[1].seq == w[0].seq.wrapping_add(1))
    }
}

fn frame(data: Vec<u8>, keyframe: bool) -> Frame {
    Frame {
        ts: 0,
        at_ms: 0,
        keyframe,
        data,
        after_loss: false,
        size: None,
        sequence_header: None,
    }
}

fn build_vp8(packets: &[Packet]) -> Option<Frame> {
    let mut data = Vec::with_capacity(packets.iter().map(|p| p.payload.len()).sum());
    for packet in packets {
        let descriptor = Vp8Descriptor::parse(&packet.payload)?;
        data.extend_from_slice(descriptor.data(&packet.payload));
    }
    // RFC 6386 section 9.1: bit 0 of the frame tag is 0 for a keyframe, which then carries a
    // start code and the 14-bit dimensions.
    let keyframe = data.first()? & 0x01 == 0;
    let mut out = frame(data, keyframe);
    if keyframe && out.data.get(3..6) == Some(&[0x9d, 0x01, 0x2a]) && out.data.len() >= 10 {
        let width = u16::from_le_bytes([out.data[6], out.data[7]]) & 0x3fff;
        let height = u16::from_le_bytes([out.data[8], out.data[9]]) & 0x3fff;
        out.size = Some((width, height));
    }
    Some(out)
}

struct Vp9Descriptor {
    start: bool,
    end: bool,
    inter: bool,
    sid: u8,
    len: usize,
    size: Option<(u16, u16)>,
}

/// RFC 9628 section 4.2.
fn vp9_descriptor(payload: &[u8]) -> Option<Vp9Descriptor> {
    let first = *payload.first()?;
    let (i, p, l, f, b, e, v) = (
        first & 0x80 != 0,
        first & 0x40 != 0,
        first & 0x20 != 0,
        first & 0x10 != 0,
        first & 0x08 != 0,
        first & 0x04 != 0,
        first & 0x02 != 0,
    );
    let mut len = 1;
    if i {
        len += if *payload.get(len)? & 0x80 != 0 { 2 } else { 1 };
    }
    let mut sid = 0;
    if l {
        sid = (*payload.get(len)? >> 1) & 0x07;
        len += if f { 1 } else { 2 };
    }
    if f && p {
        // Up to three reference indices, each with a "more follow" bit.
        for _ in 0..3 {
            let diff = *payload.get(len)?;
            len += 1;
            if diff & 0x01 == 0 {
                break;
            }
        }
    }
    let mut size = None;
    if v {
        let ss = *payload.get(len)?;
        len += 1;
        let layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            let dims = payload.get(len..len + 4 * layers)?;
            size = Some((
                u16::from_be_bytes([dims[0], dims[1]]),
                u16::from_be_bytes([dims[2], dims[3]]),
            ));
            len += 4 * layers;
        }
        if ss & 0x08 != 0 {
            let groups = *payload.get(len)?;
            len += 1;
            for _ in 0..groups {
                let g = *payload.get(len)?;
                len += 1 + usize::from((g >> 2) & 0x03);
            }
        }
    }
    (payload.len() > len).then_some(Vp9Descriptor {
        start: b,
        end: e,
        inter: p,
        sid,
        len,
        size,
    })
}

fn build_vp9(packets: &[Packet]) -> Option<Frame> {
    let mut data = Vec::with_capacity(packets.iter().map(|p| p.payload.len()).sum());
    let mut keyframe = false;
    let mut size = None;
    for (i, packet) in packets.iter().enumerate() {
        let descriptor = vp9_descriptor(&packet.payload)?;
        if i == 0 {
            keyframe = !descriptor.inter && descriptor.start;
        }
        size = size.or(descriptor.size);
        data.extend_from_slice(&packet.payload[descriptor.len..]);
    }
    if keyframe && size.is_none() {
        size = vp9_keyframe_size(&data);
    }
    let mut out = frame(data, keyframe);
    out.size = size;
    Some(out)
}

/// Reads bits most significant first.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut value = 0;
        for _ in 0..n {
            value = (value << 1) | self.bit()?;
        }
        Some(value)
    }
}

/// The frame size from a VP9 keyframe's uncompressed header (VP9 bitstream spec 6.2).
fn vp9_keyframe_size(data: &[u8]) -> Option<(u16, u16)> {
    let mut r = Bits { data, pos: 0 };
    if r.bits(2)? != 2 {
        return None;
    }
    let profile = r.bit()? | (r.bit()? << 1);
    if profile == 3 {
        r.bit()?;
    }
    // show_existing_frame, then frame_type (0 is a keyframe).
    if r.bit()? != 0 || r.bit()? != 0 {
        return None;
    }
    // show_frame, error_resilient_mode, then the sync code.
    r.bits(2)?;
    if r.bits(24)? != 0x49_8342 {
        return None;
    }
    if profile >= 2 {
        r.bit()?;
    }
    let color_space = r.bits(3)?;
    if color_space != 7 {
        r.bit()?;
        if profile == 1 || profile == 3 {
            r.bits(3)?;
        }
    } else if profile == 1 || profile == 3 {
        r.bit()?;
    }
    let width = r.bits(16)? + 1;
    let height = r.bits(16)? + 1;
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?))
}

fn read_leb128(data: &[u8], pos: &mut usize) -> Option<usize> {
    let mut value = 0usize;
    for i in 0..8 {
        let byte = *data.get(*pos)?;
        *pos += 1;
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_TILE_LIST: u8 = 8;
const OBU_PADDING: u8 = 15;

/// The AV1 RTP payload (aggregation header and OBU elements) back into a temporal unit of
/// OBUs that each carry their size, as Matroska's AV1 mapping wants.
fn build_av1(packets: &[Packet]) -> Option<Frame> {
    let mut obus: Vec<Vec<u8>> = Vec::new();
    let mut fragment: Option<Vec<u8>> = None;
    for packet in packets {
        let p = &packet.payload;
        let aggregation = *p.first()?;
        let continues = aggregation & 0x80 != 0;
        let will_continue = aggregation & 0x40 != 0;
        let count = usize::from((aggregation >> 4) & 0x03);
        let mut pos = 1;
        let mut index = 0;
        while pos < p.len() {
            let last = count != 0 && index + 1 == count;
            let size = if last {
                p.len() - pos
            } else {
                read_leb128(p, &mut pos)?
            };
            let element = p.get(pos..pos.checked_add(size)?)?;
            pos += size;
            if index == 0 && continues {
                fragment.as_mut()?.extend_from_slice(element);
            } else {
                obus.extend(fragment.take());
                fragment = Some(element.to_vec());
            }
            index += 1;
        }
        if !will_continue {
            obus.extend(fragment.take());
        }
    }
    obus.extend(fragment.take());

    let mut data = Vec::with_capacity(obus.iter().map(|o| o.len() + 4).sum());
    let mut sequence_header = None;
    for obu in &obus {
        let header = *obu.first()?;
        let kind = (header >> 3) & 0x0f;
        let header_len = if header & 0x04 != 0 { 2 } else { 1 };
        let mut pos = header_len;
        let body = if header & 0x02 != 0 {
            let size = read_leb128(obu, &mut pos)?;
            obu.get(pos..pos.checked_add(size)?)?
        } else {
            obu.get(pos..)?
        };
        if matches!(kind, OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING) {
            continue;
        }
        let start = data.len();
        data.push(header | 0x02);
        data.extend_from_slice(obu.get(1..header_len)?);
        write_leb128(&mut data, body.len());
        data.extend_from_slice(body);
        if kind == OBU_SEQUENCE_HEADER && sequence_header.is_none() {
            sequence_header = Some(data[start..].to_vec());
        }
    }
    // Encoders send the sequence header with every keyframe, and a decoder can start only there.
    let keyframe = sequence_header.is_some();
    let mut out = frame(data, keyframe);
    if let Some(header) = &sequence_header {
        out.size = av1_sequence_size(header);
    }
    out.sequence_header = sequence_header;
    Some(out)
}

/// Skips a sequence header OBU's own header (with its size field).
fn av1_obu_body(obu: &[u8]) -> Option<&[u8]> {
    let header = *obu.first()?;
    let mut pos = if header & 0x04 != 0 { 2 } else { 1 };
    if header & 0x02 != 0 {
        read_leb128(obu, &mut pos)?;
    }
    obu.get(pos..)
}

/// Profile and first operating point's level from a sequence header OBU (AV1 spec 5.5.1).
fn av1_profile_level(obu: &[u8]) -> Option<(u8, u8)> {
    let mut r = Bits {
        data: av1_obu_body(obu)?,
        pos: 0,
    };
    let profile = r.bits(3)?;
    r.bit()?;
    let reduced = r.bit()?;
    let level = if reduced == 1 {
        r.bits(5)?
    } else {
        if r.bit()? == 1 {
            // Timing information: not parsed, the level is then reported as 0.
            return Some((profile as u8, 0));
        }
        r.bit()?;
        r.bits(5)?;
        r.bits(12)?;
        r.bits(5)?
    };
    Some((profile as u8, level as u8))
}

/// The maximum frame size from a sequence header OBU, when it has no timing information.
fn av1_sequence_size(obu: &[u8]) -> Option<(u16, u16)> {
    let mut r = Bits {
        data: av1_obu_body(obu)?,
        pos: 0,
    };
    r.bits(3)?;
    r.bit()?;
    if r.bit()? == 1 {
        r.bits(5)?;
    } else {
        if r.bit()? == 1 {
            return None;
        }
        let initial_display_delay = r.bit()?;
        let points = r.bits(5)? + 1;
        for _ in 0..points {
            r.bits(12)?;
            if r.bits(5)? > 7 {
                r.bit()?;
            }
            if initial_display_delay == 1 && r.bit()? == 1 {
                r.bits(4)?;
            }
        }
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let width = r.bits(width_bits)? + 1;
    let height = r.bits(height_bits)? + 1;
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?))
}

/// The `av1C` record (AV1-ISOBMFF section 2.3) Matroska's V_AV1 CodecPrivate holds, with the
/// sequence header as its configuration OBU. Colour fields default to 8-bit 4:2:0; decoders
/// take the real values from the sequence header.
pub(crate) fn av1_codec_private(sequence_header: &[u8]) -> Vec<u8> {
    let (profile, level) = av1_profile_level(sequence_header).unwrap_or((0, 0));
    let subsampling = if profile == 0 { 0x0c } else { 0 };
    let mut out = vec![0x81, (profile << 5) | (level & 0x1f), subsampling, 0];
    out.extend_from_slice(sequence_header);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp8_packet(start: bool, body: &[u8]) -> Vec<u8> {
        // X set, with a 15-bit picture id.
        let mut p = vec![0x80 | if start { 0x10 } else { 0 }, 0x80, 0x80 | 0x12, 0x34];
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn vp8_frame_from_reordered_packets() {
        let key = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 7, 7,
        ];
        let mut a = Assembler::new(VideoFormat::Vp8);
        assert!(
            a.push(11, 3000, true, &vp8_packet(false, &[9, 9]), 0)
                .is_none()
        );
        let frame = a
            .push(10, 3000, false, &vp8_packet(true, &key), 0)
            .expect("complete");
        assert!(frame.keyframe);
        assert_eq!(frame.size, Some((320, 240)));
        assert_eq!(frame.data.len(), key.len() + 2);
        // A duplicate of a written frame is ignored.
        assert!(
            a.push(11, 3000, true, &vp8_packet(false, &[9, 9]), 0)
                .is_none()
        );
    }

    #[test]
    fn incomplete_frame_is_dropped_and_flags_loss() {
        let mut a = Assembler::new(VideoFormat::Vp8);
        // Frame at 3000 misses its last packet; frame at 6000 completes.
        assert!(
            a.push(1, 3000, false, &vp8_packet(true, &[1, 0]), 0)
                .is_none()
        );
        let frame = a
            .push(3, 6000, true, &vp8_packet(true, &[1, 0]), 33)
            .expect("complete");
        assert!(frame.after_loss);
        assert!(!frame.keyframe);
        assert_eq!(frame.ts, 3000);
    }

    #[test]
    fn padding_between_frames_is_not_a_loss() {
        let mut a = Assembler::new(VideoFormat::Vp8);
        assert!(
            a.push(1, 3000, true, &vp8_packet(true, &[0, 0]), 0)
                .is_some()
        );
        assert!(a.push(2, 3000, false, &[], 0).is_none());
        let frame = a
            .push(3, 6000, true, &vp8_packet(true, &[1, 0]), 33)
            .expect("complete");
        assert!(!frame.after_loss);
        // A frame lost with all its packets shows as a gap in sequence numbers.
        let frame = a
            .push(5, 12000, true, &vp8_packet(true, &[1, 0]), 99)
            .expect("complete");
        assert!(frame.after_loss);
    }

    #[test]
    fn vp9_keyframe_with_scalability_structure() {
        // I, B, E, V; no P: a keyframe. SS: one layer with resolution, no groups.
        let p = [
            0x8e, 0x05, 0x10, 0x02, 0x80, 0x01, 0x68, 0x82, 0x49, 0x83, 0x42,
        ];
        let mut a = Assembler::new(VideoFormat::Vp9);
        let frame = a.push(1, 0, true, &p, 0).expect("complete");
        assert!(frame.keyframe);
        assert_eq!(frame.size, Some((640, 360)));
        assert_eq!(frame.data, [0x82, 0x49, 0x83, 0x42]);
    }

    #[test]
    fn av1_fragments_are_joined_and_sized() {
        // A sequence header (reduced still picture header off, no timing info) and a frame
        // OBU split over two packets.
        let seq = [0x08, 0x00, 0x00, 0x00, 0x42, 0xab, 0xbf, 0xc3, 0x70];
        let mut first = vec![0x20 | 0x40 | 0x08];
        write_leb128(&mut first, seq.len());
        first.extend_from_slice(&seq);
        first.extend_from_slice(&[0x30, 1, 2]);
        let second = [0x80 | 0x10, 3, 4];
        let mut a = Assembler::new(VideoFormat::Av1);
        assert!(a.push(1, 0, false, &first, 0).is_none());
        let frame = a.push(2, 0, true, &second, 0).expect("complete");
        assert!(frame.keyframe);
        let header = frame.sequence_header.expect("sequence header");
        assert_eq!(header[0], 0x0a);
        assert_eq!(&frame.data[header.len()..], &[0x32, 4, 1, 2, 3, 4]);
        assert!(av1_codec_private(&header).starts_with(&[0x81]));
    }
}
