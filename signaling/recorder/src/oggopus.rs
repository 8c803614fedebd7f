//! Ogg/Opus files (RFC 7845): writing, and finalizing a file that was cut short.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::Path;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::storage::Sink;

/// Opus granule positions always count 48 kHz samples, whatever the input rate.
pub(crate) const OPUS_RATE: u64 = 48_000;

/// A page is ended at least this often (200 ms of audio), so that at most this much audio
/// sits in the page buffer, unwritten, when the caller flushes.
const PAGE_GRANULES: u64 = 9_600;

/// One Ogg/Opus logical stream in its own file.
pub(crate) struct OggOpusWriter {
    pages: PacketWriter<'static, BufWriter<Box<dyn Sink>>>,
    serial: u32,
    page_start: u64,
    /// The last packet is held back so that `finish` can mark it as the end of the stream.
    held: Option<(Vec<u8>, u64)>,
}

impl std::fmt::Debug for OggOpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl OggOpusWriter {
    /// Writes the identification and comment headers, each on its own page as RFC 7845 asks.
    pub(crate) fn new(
        sink: Box<dyn Sink>,
        serial: u32,
        channels: u8,
        pre_skip: u16,
    ) -> io::Result<Self> {
        let mut pages = PacketWriter::new(BufWriter::with_capacity(16 * 1024, sink));
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1);
        head.push(channels);
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        pages.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)?;
        let vendor = b"meet-recorder";
        let mut tags = Vec::with_capacity(8 + 4 + vendor.len() + 4);
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        pages.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)?;
        Ok(Self {
            pages,
            serial,
            page_start: 0,
            held: None,
        })
    }

    /// Adds one Opus packet whose last sample has granule position `granule_end`.
    pub(crate) fn write(&mut self, packet: Vec<u8>, granule_end: u64) -> io::Result<()> {
        if let Some((previous, granule)) = self.held.replace((packet, granule_end)) {
            let end = if granule.saturating_sub(self.page_start) >= PAGE_GRANULES {
                self.page_start = granule;
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.pages
                .write_packet(previous, self.serial, end, granule)?;
        }
        Ok(())
    }

    /// Hands buffered pages to the OS and, when `durable`, to the disk.
    pub(crate) fn flush(&mut self, durable: bool) -> io::Result<()> {
        io::Write::flush(self.pages.inner_mut())?;
        if durable {
            self.pages.inner_mut().get_mut().sync()?;
        }
        Ok(())
    }

    /// Writes the held packet as the end of the stream and flushes everything to disk.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if let Some((packet, granule)) = self.held.take() {
            self.pages
                .write_packet(packet, self.serial, PacketWriteEndInfo::EndStream, granule)?;
        }
        self.flush(true)
    }
}

/// The longest an Opus packet can be, in 48 kHz samples (120 ms, RFC 6716 section 3.2.5).
pub(crate) const MAX_PACKET_SAMPLES: u64 = 5_760;

/// Samples (at 48 kHz) in one frame of a packet with this TOC byte (RFC 6716 section 3.1).
fn frame_samples(toc: u8) -> u64 {
    let config = toc >> 3;
    // Frame sizes in units of 2.5 ms (120 samples).
    let units: u64 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    units * 120
}

/// Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 section 3.1), or
/// `None` for a malformed packet.
pub(crate) fn packet_samples(packet: &[u8]) -> Option<u64> {
    let toc = *packet.first()?;
    let frames: u64 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    let samples = frame_samples(toc) * frames;
    // RFC 6716 caps a packet at 120 ms.
    (frames > 0 && samples <= MAX_PACKET_SAMPLES).then_some(samples)
}

/// Samples (at 48 kHz) in an end-to-end encrypted Opus packet, whose TOC byte alone is in the
/// clear (docs/e2ee.md), and whether that count is exact. A code 3 packet keeps its frame count
/// in its second byte, which is ciphertext here and must not be read as a count: it is counted
/// as one frame, the least it can hold, and reported inexact. `None` for an empty packet.
pub(crate) fn encrypted_packet_samples(packet: &[u8]) -> Option<(u64, bool)> {
    let toc = *packet.first()?;
    Some(match toc & 0x03 {
        0 => (frame_samples(toc), true),
        1 | 2 => (frame_samples(toc) * 2, true),
        _ => (frame_samples(toc), false),
    })
}

/// What a finalized Ogg/Opus file holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OggInfo {
    pub(crate) duration_ms: u64,
    /// Both header pages are complete, so a player can open the file.
    pub(crate) playable: bool,
}

/// Cuts a partly written page off the end of `path` (a crash mid-write leaves one) and
/// reports the duration up to the last complete page.
pub(crate) fn finalize_ogg(path: &Path) -> io::Result<OggInfo> {
    let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(&file);
    let mut pos = 0u64;
    let mut last_granule = 0u64;
    let mut pre_skip = 0u64;
    let mut pages = 0u64;
    let mut header = [0u8; 27];
    let mut lacing = [0u8; 255];
    loop {
        if pos + 27 > len {
            break;
        }
        reader.seek(SeekFrom::Start(pos))?;
        reader.read_exact(&mut header)?;
        if &header[..4] != b"OggS" {
            break;
        }
        let segments = usize::from(header[26]);
        if pos + 27 + segments as u64 > len {
            break;
        }
        reader.read_exact(&mut lacing[..segments])?;
        let body: u64 = lacing[..segments].iter().map(|&l| u64::from(l)).sum();
        let end = pos + 27 + segments as u64 + body;
        if end > len {
            break;
        }
        if pos == 0 && body >= 12 {
            let mut head = [0u8; 12];
            reader.read_exact(&mut head)?;
            if &head[..8] == b"OpusHead" {
                pre_skip = u64::from(u16::from_le_bytes([head[10], head[11]]));
            }
        }
        let mut granule_bytes = [0u8; 8];
        granule_bytes.copy_from_slice(&header[6..14]);
        let granule = u64::from_le_bytes(granule_bytes);
        // All ones means no packet ends on this page.
        if granule != u64::MAX {
            last_granule = granule;
        }
        pos = end;
        pages += 1;
    }
    drop(reader);
    if pos < len {
        file.set_len(pos)?;
        file.sync_all()?;
    }
    Ok(OggInfo {
        // A damaged or forged granule position may be near 2^64: saturate, never overflow.
        duration_ms: last_granule.saturating_sub(pre_skip).saturating_mul(1000) / OPUS_RATE,
        playable: pages >= 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_durations() {
        // CELT 20 ms, one frame.
        assert_eq!(packet_samples(&[0xfc, 1, 2]), Some(960));
        // SILK 20 ms, two frames.
        assert_eq!(packet_samples(&[(1 << 3) | 1]), Some(1920));
        // Code 3 with three 10 ms CELT frames.
        assert_eq!(packet_samples(&[(30 << 3) | 3, 3]), Some(1440));
        assert_eq!(packet_samples(&[]), None);
        assert_eq!(packet_samples(&[(31 << 3) | 3, 0]), None);
    }

    #[test]
    fn encrypted_packets_are_counted_from_the_toc_alone() {
        // The byte after the TOC is ciphertext: a zero there must not make the packet
        // malformed, nor any other value a frame count.
        for second in [0u8, 3, 0x3f, 0xff] {
            assert_eq!(
                encrypted_packet_samples(&[(30 << 3) | 3, second, 1, 2]),
                Some((480, false))
            );
            assert_eq!(encrypted_packet_samples(&[0xfc, second]), Some((960, true)));
            assert_eq!(
                encrypted_packet_samples(&[(1 << 3) | 1, second]),
                Some((1920, true))
            );
        }
        assert_eq!(encrypted_packet_samples(&[]), None);
    }
}
