//! The input format of `rtp_connected`: what a connected, authenticated participant sends.
//!
//! An input is a sequence of [`crate::records`] (the first [`MAX_RECORDS`]); the record's kind
//! (modulo 6) says what it is:
//!
//! | kind | body | what happens |
//! |------|------|--------------|
//! | [`RTP`] | `patch: u8`, plaintext RTP packet | patched (below), SRTP-protected with the client's keys, sent from the client's address |
//! | [`RTCP`] | `patch: u8`, plaintext (compound) RTCP | patched (below), SRTCP-protected, sent |
//! | [`ADVANCE`] | `ms: u8` | virtual time moves on by `ms` milliseconds (timers, pacing, keyframe throttles, reports), at most [`MAX_ADVANCE`] per input |
//! | [`RAW`] | bytes | sent from the client's address as they are (unauthenticated SRTP, DTLS, STUN) |
//! | [`CONTROL`] | `op: u8`, arguments | what signaling would do: video sizes, mute, keyframe requests, recording |
//! | [`STR0M`] | `stream: u8`, `pt: u8`, `seq: u16`, `ts: u32`, `marker: u8`, payload (at most [`MAX_STR0M_PAYLOAD`] bytes) | written by the client's own str0m stream (its header extensions: mid, rid, TWCC, ...) |
//!
//! The patch byte keeps numbers that change from run to run (SSRCs, mids) out of the corpus.
//! For RTP, bits `0..=2` replace the SSRC with one the client's offer declared: 1 audio, 2 to 4
//! the video's simulcast layers `q`, `h`, `f`, 5 to 7 their RTX streams (0: keep); bit 3
//! forces version 2; bits `4..=5` replace the payload type with Opus, VP8 or VP8's RTX (0:
//! keep); bit 6 writes the actual mid into a `sdes:mid` extension element of the same length
//! (3 bytes). For RTCP, bit 0 sets every sender SSRC to the client's receiving SSRC, bit 1 sets
//! the media SSRC of every feedback packet (and of FIR entries and report blocks) to the
//! `(patch >> 4)`-th SSRC the server sends the client, bit 3 forces version 2.
//! Payload types, header extension ids and rids are the same in every run.

use std::time::Duration;

use protocol::VideoSize;
use sfu::SfuCommand;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};

use crate::records::{Reader, Records};
use crate::world::{CLIENT_ID, PEER_ID, World};

pub const RTP: u8 = 0;
pub const RTCP: u8 = 1;
pub const ADVANCE: u8 = 2;
pub const RAW: u8 = 3;
pub const CONTROL: u8 = 4;
pub const STR0M: u8 = 5;
const KINDS: u8 = 6;

/// Applies the RTP patch byte (see the module documentation).
pub fn patch_rtp(world: &World, patch: u8, packet: &mut [u8]) {
    if packet.len() < 12 {
        return;
    }
    let n = &world.negotiated;
    let ssrc = match patch & 0x07 {
        0 => None,
        1 => n.audio_ssrc,
        k @ 2..=4 => n.video_ssrcs.get(usize::from(k - 2)).copied(),
        k => n.rtx_ssrcs.get(usize::from(k - 5)).copied(),
    };
    if let Some(ssrc) = ssrc {
        packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
    if patch & 0x08 != 0 {
        packet[0] = (packet[0] & 0x3f) | 0x80;
    }
    let pt = match (patch >> 4) & 0x03 {
        1 => Some(n.opus_pt),
        2 => Some(n.vp8_pt),
        3 => Some(n.rtx_pt),
        _ => None,
    };
    if let Some(pt) = pt {
        packet[1] = (packet[1] & 0x80) | (pt & 0x7f);
    }
    if patch & 0x40 != 0 {
        let mid = if patch & 0x07 == 1 {
            &n.audio_mid
        } else {
            &n.video_mid
        };
        if let Some(id) = n.ext_id("sdes:mid") {
            set_one_byte_ext(packet, id, mid.as_bytes());
        }
    }
}

/// Overwrites the value of extension `id` in a one-byte-header extension block (RFC 8285),
/// when the value there has the same length.
fn set_one_byte_ext(packet: &mut [u8], id: u8, value: &[u8]) {
    if packet[0] & 0x10 == 0 {
        return;
    }
    let start = 12 + 4 * usize::from(packet[0] & 0x0f);
    let Some(head) = packet.get(start..start + 4) else {
        return;
    };
    if head[..2] != [0xbe, 0xde] {
        return;
    }
    let end =
        (start + 4 + 4 * usize::from(u16::from_be_bytes([head[2], head[3]]))).min(packet.len());
    let mut at = start + 4;
    while at < end {
        let byte = packet[at];
        if byte == 0 {
            at += 1;
            continue;
        }
        let (elem_id, len) = (byte >> 4, usize::from(byte & 0x0f) + 1);
        if elem_id == 15 {
            return;
        }
        if elem_id == id && len == value.len() && at + 1 + len <= end {
            packet[at + 1..at + 1 + len].copy_from_slice(value);
        }
        at += 1 + len;
    }
}

/// Applies the RTCP patch byte to every packet of a compound (see the module documentation).
pub fn patch_rtcp(world: &World, patch: u8, packet: &mut [u8]) {
    let sender = world.negotiated.receiver_ssrc;
    let servers = &world.client.server_ssrcs;
    let media = (!servers.is_empty()).then(|| servers[usize::from(patch >> 4) % servers.len()]);
    let mut at = 0;
    while at + 8 <= packet.len() {
        let words = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        let end = (at + 4 * (words + 1)).min(packet.len());
        let pt = packet[at + 1];
        let count = usize::from(packet[at] & 0x1f);
        if patch & 0x08 != 0 {
            packet[at] = (packet[at] & 0x3f) | 0x80;
        }
        if patch & 0x01 != 0
            && let Some(ssrc) = sender
        {
            packet[at + 4..at + 8].copy_from_slice(&ssrc.to_be_bytes());
        }
        if patch & 0x02 != 0
            && let Some(ssrc) = media
        {
            let ssrc = ssrc.to_be_bytes();
            match pt {
                // Feedback: the media source, and for FIR (PSFB 4) each entry's SSRC.
                205 | 206 => {
                    if at + 12 <= end {
                        packet[at + 8..at + 12].copy_from_slice(&ssrc);
                    }
                    if pt == 206 && count == 4 {
                        let mut entry = at + 12;
                        while entry + 8 <= end {
                            packet[entry..entry + 4].copy_from_slice(&ssrc);
                            entry += 8;
                        }
                    }
                }
                // Report blocks of SR (after 20 bytes of sender info) and RR.
                200 | 201 => {
                    let mut block = at + if pt == 200 { 28 } else { 8 };
                    for _ in 0..count {
                        if block + 24 > end {
                            break;
                        }
                        packet[block..block + 4].copy_from_slice(&ssrc);
                        block += 24;
                    }
                }
                _ => {}
            }
        }
        at += 4 * (words + 1);
    }
}

/// The longest payload a [`STR0M`] record writes.
pub const MAX_STR0M_PAYLOAD: usize = 1_100;

/// Records of one input that are acted on; the rest is ignored.
pub const MAX_RECORDS: usize = 1_000;
/// Virtual time one input may let pass. The peer sends media all along (about 80 packets a
/// second, each forwarded to the client), so this bounds an input's cost.
pub const MAX_ADVANCE: Duration = Duration::from_secs(5);

/// Feeds one input to the world.
pub fn run_input(world: &mut World, data: &[u8]) {
    let mut advanced = Duration::ZERO;
    for (kind, body) in Records::new(data).take(MAX_RECORDS) {
        match kind % KINDS {
            RTP => {
                let Some((&patch, plain)) = body.split_first() else {
                    continue;
                };
                let mut packet = plain.to_vec();
                patch_rtp(world, patch, &mut packet);
                world.send_rtp(&packet);
            }
            RTCP => {
                let Some((&patch, plain)) = body.split_first() else {
                    continue;
                };
                let mut packet = plain.to_vec();
                patch_rtcp(world, patch, &mut packet);
                world.send_rtcp(&packet);
            }
            ADVANCE => {
                let ms = body.first().copied().unwrap_or(20);
                let by = Duration::from_millis(u64::from(ms)).min(MAX_ADVANCE - advanced);
                advanced += by;
                world.run_for(by);
            }
            RAW => world.send_raw(body),
            CONTROL => control(world, body),
            _ => str0m_write(world, body),
        }
    }
    if world.transport_failed.is_some() {
        world.check_contained();
    }
}

fn control(world: &mut World, body: &[u8]) {
    let mut r = Reader::new(body);
    let op = r.u8();
    let video = world.client_publications.get(1).copied();
    let audio = world.client_publications.first().copied();
    match op % 6 {
        0 => {
            let (width, height) = (u32::from(r.u16()), u32::from(r.u16()));
            if let Some(publication_id) = video {
                world.command(SfuCommand::SetVideoSizes {
                    participant: PEER_ID,
                    sizes: vec![VideoSize {
                        publication_id,
                        width,
                        height,
                    }],
                });
            }
        }
        1 => {
            let publication = if r.bool() { video } else { audio };
            let muted = r.bool();
            if let Some(publication) = publication {
                world.command(SfuCommand::SetMuted {
                    participant: CLIENT_ID,
                    publication,
                    muted,
                });
            }
        }
        2 => {
            if let Some(publication) = video {
                let _ = world.peer.request_keyframe(publication);
                world.pump();
            }
        }
        3 => world.command(SfuCommand::StartRecording {
            room: protocol::RoomId("fuzz".into()),
            recording_id: "fuzz".into(),
            e2ee: r.bool(),
        }),
        4 => world.command(SfuCommand::StopRecording {
            room: protocol::RoomId("fuzz".into()),
        }),
        _ => {
            let allowed = r.bool();
            world.command(SfuCommand::SetPublishing {
                participant: CLIENT_ID,
                allowed,
            });
        }
    }
}

/// Writes a packet through the client's own str0m stream (RTP mode): str0m builds the header
/// and its extensions and protects it.
fn str0m_write(world: &mut World, body: &[u8]) {
    let mut r = Reader::new(body);
    let stream = r.u8();
    let pt_sel = r.u8();
    let seq = r.u16();
    let ts = r.u32();
    let marker = r.bool();
    // A client packetizes to its MTU; str0m does not check what it is given (a payload
    // longer than its send buffer panics in str0m's sender, which is the fuzzer's client
    // here, not the engine).
    let payload = r.rest();
    let payload = payload[..payload.len().min(MAX_STR0M_PAYLOAD)].to_vec();
    let n = &world.negotiated;
    let (mid, rid, pt) = match stream % 4 {
        0 => (n.audio_mid.as_str(), None, n.opus_pt),
        layer => (
            n.video_mid.as_str(),
            Some(["q", "h", "f"][usize::from(layer - 1)]),
            n.vp8_pt,
        ),
    };
    let pt = match pt_sel % 4 {
        0 => pt,
        1 => n.rtx_pt,
        _ => pt_sel & 0x7f,
    };
    let mid = Mid::from(mid);
    let rid = rid.map(Rid::from);
    let now = world.now;
    let mut api = world.client.rtc.direct_api();
    if let Some(tx) = api.stream_tx_by_mid(mid, rid) {
        // Audio level and orientation as a browser sends them; str0m adds mid, rid, TWCC and
        // the other negotiated extensions itself.
        let ext_vals = ExtensionValues {
            audio_level: Some(-(i8::try_from(seq % 128).unwrap_or(0))),
            voice_activity: Some(marker),
            ..Default::default()
        };
        tx.write_rtp(
            RtpWrite::new(Pt::from(pt), SeqNo::from(u64::from(seq)), ts, now, payload)
                .marker(marker)
                .ext_vals(ext_vals)
                .nackable(true),
        );
    }
    world.client.drain_now(now);
    world.pump();
}

/// A plaintext RTP packet with one-byte-header extensions (RFC 8285).
pub fn rtp_packet(
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    exts: &[(u8, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0x80, (u8::from(marker) << 7) | (pt & 0x7f)];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    if !exts.is_empty() {
        p[0] |= 0x10;
        let mut block = Vec::new();
        for (id, value) in exts {
            block.push((id << 4) | (value.len() as u8 - 1));
            block.extend_from_slice(value);
        }
        while !block.len().is_multiple_of(4) {
            block.push(0);
        }
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&block);
    }
    p.extend_from_slice(payload);
    p
}

/// One RTCP packet: version 2, `count` in the low bits of the first byte.
pub fn rtcp_packet(count: u8, pt: u8, sender: u32, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80 | (count & 0x1f), pt, 0, 0];
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(body);
    while !p.len().is_multiple_of(4) {
        p.push(0);
    }
    let words = (p.len() / 4 - 1) as u16;
    p[2..4].copy_from_slice(&words.to_be_bytes());
    p
}

/// A receiver report block about `ssrc`.
fn report_block(ssrc: u32, lost: u8, highest: u32) -> Vec<u8> {
    let mut b = ssrc.to_be_bytes().to_vec();
    b.extend_from_slice(&[lost, 0, 0, 3]);
    b.extend_from_slice(&highest.to_be_bytes());
    b.extend_from_slice(&20u32.to_be_bytes()); // jitter
    b.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // last SR
    b.extend_from_slice(&0x0000_8000u32.to_be_bytes()); // delay since last SR
    b
}

/// Splits a VP8 frame into RTP payloads with the one-byte payload descriptor (S bit on the
/// first), at most `mtu` bytes of frame each.
pub fn vp8_payloads(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    frame
        .chunks(mtu)
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = vec![if i == 0 { 0x10 } else { 0x00 }];
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

struct SeedWriter {
    out: Vec<u8>,
}

impl SeedWriter {
    fn new() -> Self {
        Self { out: Vec::new() }
    }

    fn rtp(&mut self, patch: u8, packet: &[u8]) {
        let mut body = vec![patch];
        body.extend_from_slice(packet);
        crate::records::encode(&mut self.out, RTP, &body);
    }

    fn rtcp(&mut self, patch: u8, packet: &[u8]) {
        let mut body = vec![patch];
        body.extend_from_slice(packet);
        crate::records::encode(&mut self.out, RTCP, &body);
    }

    fn advance(&mut self, ms: u8) {
        crate::records::encode(&mut self.out, ADVANCE, &[ms]);
    }

    fn control(&mut self, args: &[u8]) {
        crate::records::encode(&mut self.out, CONTROL, args);
    }

    fn str0m(&mut self, stream: u8, pt_sel: u8, seq: u16, ts: u32, marker: bool, payload: &[u8]) {
        let mut body = vec![stream, pt_sel];
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend_from_slice(&ts.to_be_bytes());
        body.push(u8::from(marker));
        body.extend_from_slice(payload);
        crate::records::encode(&mut self.out, STR0M, &body);
    }
}

/// Patch bytes of the seeds: SSRC choice, version 2, payload type, mid.
const AUDIO: u8 = 1 | 0x08 | 0x10 | 0x40;
const fn video(layer: u8) -> u8 {
    (2 + layer) | 0x08 | 0x20 | 0x40
}
const fn rtx(layer: u8) -> u8 {
    (5 + layer) | 0x08 | 0x30 | 0x40
}
/// RTCP: sender is the client, media is the `n`-th server SSRC.
const fn feedback(n: u8) -> u8 {
    0x01 | 0x02 | 0x08 | (n << 4)
}

/// Seeds: what a real client sends once connected. Payload types, extension ids and rids are
/// read from a live negotiation; SSRCs and mids are placeholders the patch byte replaces.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let world = World::new().expect("the harness connects");
    eprintln!("rtp_connected: {:?}", world.srtp);
    let n = world.negotiated.clone();
    let level = n.ext_id("ssrc-audio-level").unwrap_or(1);
    let mid = n.ext_id("sdes:mid").unwrap_or(4);
    let rid = n.ext_id("sdes:rtp-stream-id").unwrap_or(10);
    let rrid = n.ext_id("repaired-rtp-stream-id").unwrap_or(11);
    let twcc = n.ext_id("transport-wide-cc-extensions-01").unwrap_or(3);
    let rids: [&[u8]; 3] = [b"q", b"h", b"f"];
    let mut seeds = Vec::new();

    // Audio: real Opus packets of a tone, 20 ms apart, with level, mid and TWCC extensions.
    let mut w = SeedWriter::new();
    let mut tone = endpoint::media::ToneSource::new(440.0).expect("opus encoder");
    for i in 0..25u16 {
        let opus = tone.next_packet().expect("an opus packet");
        let seq = 1000u16.wrapping_add(i);
        let exts: [(u8, &[u8]); 3] = [
            (level, &[0x80 | 30]),
            (mid, b"MID"),
            (twcc, &seq.to_be_bytes()),
        ];
        let packet = rtp_packet(
            n.opus_pt,
            i == 0,
            seq,
            48_000 + 960 * u32::from(i),
            0,
            &exts,
            &opus,
        );
        w.rtp(AUDIO, &packet);
        w.advance(20);
    }
    seeds.push(("audio_opus".to_owned(), w.out));

    // Video, one layer: a VP8 keyframe then delta frames, several packets each.
    let video_frames = |layer: u8, frames: u32, seq0: u16, w: &mut SeedWriter| {
        let mut source = endpoint::media::VideoSource::new(0xf00 + u64::from(layer), 500);
        let mut seq = seq0;
        for f in 0..frames {
            let frame = source.next_frame(f == 0);
            let payloads = vp8_payloads(&frame, 300);
            let count = payloads.len();
            for (i, payload) in payloads.iter().enumerate() {
                let tseq = seq.to_be_bytes();
                let exts: [(u8, &[u8]); 3] = [
                    (mid, b"MID"),
                    (rid, rids[usize::from(layer)]),
                    (twcc, &tseq),
                ];
                let packet = rtp_packet(
                    n.vp8_pt,
                    i + 1 == count,
                    seq,
                    90_000 + 6_000 * f,
                    0,
                    &exts,
                    payload,
                );
                w.rtp(video(layer), &packet);
                seq = seq.wrapping_add(1);
            }
            w.advance(66);
        }
    };
    let mut w = SeedWriter::new();
    video_frames(0, 6, 65_530, &mut w);
    seeds.push(("video_vp8_wrapping".to_owned(), w.out));

    // Simulcast: all three layers, then the subscriber's tile grows and shrinks, so the
    // engine switches layers on keyframes.
    let mut w = SeedWriter::new();
    for layer in 0..3 {
        video_frames(layer, 2, 100 * u16::from(layer), &mut w);
    }
    w.control(&[0, 0x05, 0x00, 0x02, 0xd0]); // 1280 x 720
    for layer in 0..3 {
        video_frames(layer, 2, 100 * u16::from(layer) + 50, &mut w);
    }
    w.control(&[0, 0, 0, 0, 0]); // hidden
    w.advance(200);
    w.control(&[0, 0x01, 0x40, 0x00, 0xb4]); // 320 x 180
    video_frames(0, 3, 80, &mut w);
    seeds.push(("simulcast_switch".to_owned(), w.out));

    // A lost packet, its NACK-triggered retransmission on RTX (original sequence number
    // first), and padding probes on RTX.
    let mut w = SeedWriter::new();
    let frame = endpoint::media::VideoSource::new(7, 2_000).next_frame(true);
    let payloads = vp8_payloads(&frame, 600);
    for (i, payload) in payloads.iter().enumerate() {
        let seq = 500 + i as u16;
        if i == 1 {
            continue;
        }
        let exts: [(u8, &[u8]); 2] = [(mid, b"MID"), (rid, b"q")];
        w.rtp(
            video(0),
            &rtp_packet(
                n.vp8_pt,
                i + 1 == payloads.len(),
                seq,
                7_000,
                0,
                &exts,
                payload,
            ),
        );
    }
    w.advance(30);
    let mut rtx_payload = 501u16.to_be_bytes().to_vec();
    rtx_payload.extend_from_slice(&payloads[1]);
    let exts: [(u8, &[u8]); 2] = [(mid, b"MID"), (rrid, b"q")];
    w.rtp(
        rtx(0),
        &rtp_packet(n.rtx_pt, false, 20, 7_000, 0, &exts, &rtx_payload),
    );
    let mut padding = rtp_packet(n.rtx_pt, false, 21, 7_000, 0, &exts, &[0; 200]);
    padding[0] |= 0x20;
    if let Some(last) = padding.last_mut() {
        *last = 200;
    }
    w.rtp(rtx(0), &padding);
    seeds.push(("rtx_and_padding".to_owned(), w.out));

    // Keyframes of other codecs on their (stable) payload types, and a VP8 keyframe with the
    // extended descriptor (picture id, TL0PICIDX, TID/KEYIDX).
    let mut w = SeedWriter::new();
    let vp8_ext = [
        0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0,
        0x00,
    ];
    let exts: [(u8, &[u8]); 2] = [(mid, b"MID"), (rid, b"q")];
    w.rtp(
        video(0),
        &rtp_packet(n.vp8_pt, true, 10, 1_000, 0, &exts, &vp8_ext),
    );
    let vp9 = [
        0x8a, 0x81, 0x01, 0x00, 0x82, 0x49, 0x83, 0x42, 0x00, 0x13, 0xf0,
    ];
    w.rtp(
        video(0) & !0x30,
        &rtp_packet(98, true, 11, 2_000, 0, &exts, &vp9),
    );
    let av1 = [
        0x18, 0x0b, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xff, 0xbc, 0xf5, 0x84, 0x88,
    ];
    w.rtp(
        video(0) & !0x30,
        &rtp_packet(45, true, 12, 3_000, 0, &exts, &av1),
    );
    let h264 = [
        0x18, 0x00, 0x04, 0x67, 0x42, 0x00, 0x1f, 0x00, 0x02, 0x65, 0x88,
    ];
    w.rtp(
        video(0) & !0x30,
        &rtp_packet(127, true, 13, 4_000, 0, &exts, &h264),
    );
    seeds.push(("other_codecs".to_owned(), w.out));

    // Feedback as a subscriber: receiver reports, PLI, FIR, NACK, REMB, TWCC, SDES, and a
    // sender report for the client's own audio.
    let mut w = SeedWriter::new();
    for server in 0..3u8 {
        let rr = rtcp_packet(1, 201, 0, &report_block(0, 5, 1_000));
        let sdes_body = [&1u32.to_be_bytes()[..], &[1, 4], b"fuzz", &[0, 0]].concat();
        let mut compound = rr;
        compound.extend_from_slice(&rtcp_packet(1, 202, 0, &sdes_body[4..]));
        w.rtcp(feedback(server), &compound);
        w.rtcp(
            feedback(server),
            &rtcp_packet(1, 206, 0, &0u32.to_be_bytes()),
        ); // PLI
        let fir = [&0u32.to_be_bytes()[..], &0u32.to_be_bytes(), &[7, 0, 0, 0]].concat();
        w.rtcp(feedback(server), &rtcp_packet(4, 206, 0, &fir));
        let nack = [
            &0u32.to_be_bytes()[..],
            &100u16.to_be_bytes(),
            &0x0005u16.to_be_bytes(),
        ]
        .concat();
        w.rtcp(feedback(server), &rtcp_packet(1, 205, 0, &nack));
        let twcc_body = [
            &0u32.to_be_bytes()[..],
            &1u16.to_be_bytes(), // base sequence number
            &3u16.to_be_bytes(), // packet status count
            &[0, 0, 1, 0],       // reference time, feedback packet count
            &[0x20, 0x03],       // run of 3 "small delta"
            &[4, 4, 4],
        ]
        .concat();
        w.rtcp(feedback(server), &rtcp_packet(15, 205, 0, &twcc_body));
        w.advance(50);
    }
    let remb = [
        &0u32.to_be_bytes()[..],
        b"REMB",
        &[1, 0x03, 0xd0, 0x90],
        &0u32.to_be_bytes(),
    ]
    .concat();
    w.rtcp(feedback(0), &rtcp_packet(15, 206, 0, &remb));
    let sender_info = [
        &[0xe0, 0, 0, 0, 0, 0, 0, 0][..],
        &48_000u32.to_be_bytes(),
        &10u32.to_be_bytes(),
        &1_000u32.to_be_bytes(),
    ]
    .concat();
    w.rtcp(
        0x08,
        &[rtcp_packet(0, 200, n.audio_ssrc.unwrap_or(1), &sender_info)].concat(),
    );
    seeds.push(("rtcp_feedback".to_owned(), w.out));

    // Regression: congestion feedback whose first chunk is a run of length zero, then a
    // two-bit vector with a large delta. str0m 0.25 reads the run forever and finds the large
    // delta where it expects a small one: a panic, which must end this participant's
    // transport only (the harness checks it: `World::check_contained`).
    let mut w = SeedWriter::new();
    w.advance(100);
    let twcc_body = [
        &0u32.to_be_bytes()[..],
        &0u16.to_be_bytes(), // base sequence number
        &7u16.to_be_bytes(), // packet status count
        &[0, 0, 1, 0],       // reference time, feedback packet count
        &[0x20, 0x00],       // run of 0 "small delta"
        &[0xe0, 0x00],       // two-bit vector: "large delta", then six "not received"
        &[0x00, 0x04],       // the large delta
    ]
    .concat();
    w.rtcp(feedback(0), &rtcp_packet(15, 205, 0, &twcc_body));
    w.advance(100);
    seeds.push(("regression-twcc-zero-length-run".to_owned(), w.out));

    // A goodbye for the client's audio, then more audio.
    let mut w = SeedWriter::new();
    w.rtcp(0x08, &rtcp_packet(1, 203, n.audio_ssrc.unwrap_or(1), &[]));
    w.advance(100);
    let exts: [(u8, &[u8]); 1] = [(mid, b"MID")];
    w.rtp(
        AUDIO,
        &rtp_packet(n.opus_pt, false, 3, 960, 0, &exts, &[0x78, 1, 2, 3]),
    );
    seeds.push(("rtcp_bye".to_owned(), w.out));

    // The client's own str0m writing audio and each layer's video (its extensions).
    let mut w = SeedWriter::new();
    let mut source = endpoint::media::VideoSource::new(3, 400);
    for i in 0..4u16 {
        w.str0m(
            0,
            0,
            2_000 + i,
            960 * u32::from(i),
            false,
            &[0x78, 0x01, 0x02],
        );
        let frame = source.next_frame(i == 0);
        for layer in 1..=3 {
            for (j, payload) in vp8_payloads(&frame, 1_000).iter().enumerate() {
                w.str0m(
                    layer,
                    0,
                    300 * u16::from(layer) + 2 * i + j as u16,
                    3_000 * u32::from(i),
                    j == 0,
                    payload,
                );
            }
        }
        w.advance(33);
    }
    seeds.push(("str0m_streams".to_owned(), w.out));

    // Signaling's side: mute, unmute, keyframe requests, recording, publishing withdrawn.
    let mut w = SeedWriter::new();
    video_frames(0, 2, 40, &mut w);
    w.control(&[1, 1, 1]);
    video_frames(0, 1, 42, &mut w);
    w.control(&[1, 1, 0]);
    w.control(&[2]);
    w.control(&[3, 0]);
    video_frames(0, 3, 43, &mut w);
    w.advance(250);
    w.control(&[4]);
    w.control(&[5, 0]);
    video_frames(0, 1, 50, &mut w);
    w.control(&[5, 1]);
    seeds.push(("signaling_controls".to_owned(), w.out));

    // Unprotected datagrams from the bound address: SRTP without a valid tag, a DTLS
    // record, a STUN binding request without integrity.
    let mut w = SeedWriter::new();
    let exts: [(u8, &[u8]); 1] = [(mid, b"MID")];
    crate::records::encode(
        &mut w.out,
        RAW,
        &rtp_packet(n.opus_pt, false, 1, 2, 3, &exts, &[0; 26]),
    );
    crate::records::encode(
        &mut w.out,
        RAW,
        &[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0x15],
    );
    crate::records::encode(
        &mut w.out,
        RAW,
        &crate::stun::Stun::new(crate::stun::BINDING_REQUEST, [7; 12]).finish(
            None,
            true,
            world.client.rtc_hmac(),
        ),
    );
    seeds.push(("raw_datagrams".to_owned(), w.out));

    // What each seed reaches, on a fresh world: shown when the seeds are written, to check
    // that the patched packets authenticate and get where they are meant to.
    for (name, data) in &seeds {
        let mut world = World::new().expect("the harness connects");
        let before = world.engine.stats().clone();
        run_input(&mut world, data);
        let after = world.engine.stats();
        eprintln!(
            "{name}: rtp_in +{} forwarded +{} unknown_ssrc +{} malformed +{} keyframe_requests +{} nacks +{} switches +{} held +{} other_layer +{}",
            after.rtp_in - before.rtp_in,
            after.rtp_forwarded - before.rtp_forwarded,
            after.dropped_unknown_ssrc - before.dropped_unknown_ssrc,
            after.dropped_malformed - before.dropped_malformed,
            after.keyframe_requests_received - before.keyframe_requests_received,
            after.nacks_received - before.nacks_received,
            after.layer_switches - before.layer_switches,
            after.held_awaiting_keyframe - before.held_awaiting_keyframe,
            after.dropped_other_layer - before.dropped_other_layer,
        );
    }
    seeds
}
