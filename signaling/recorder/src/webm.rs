//! The small subset of Matroska/WebM the recorder needs, written by hand: an EBML header, a
//! Segment of unknown size, Info, one video track and Clusters of unknown size holding
//! SimpleBlocks. Unknown sizes are what make a file cut short by a crash playable as far as it
//! got: nothing written earlier has to be patched once the data is known.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::storage::Sink;

const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TRACKS: u32 = 0x1654_AE6B;
const CLUSTER: u32 = 0x1F43_B675;
const TIMESTAMP: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const VOID: u32 = 0xEC;
const DURATION: u32 = 0x4489;

/// An element size of all ones: "unknown", the element ends where its parent's next child
/// starts.
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// A new cluster starts on a keyframe after this long, so players can seek to it.
const CLUSTER_MIN_MS: u64 = 1_000;
/// A new cluster starts after this long in any case; block timestamps are 16-bit offsets.
const CLUSTER_MAX_MS: u64 = 5_000;

fn put_id(buf: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take(3).take_while(|&&b| b == 0).count();
    buf.extend_from_slice(&bytes[skip..]);
}

fn put_size(buf: &mut Vec<u8>, size: u64) {
    // The shortest length whose all-ones value (reserved for "unknown") is still above size.
    let len = (1..8u32)
        .find(|&l| size < (1u64 << (7 * l)) - 1)
        .unwrap_or(8);
    let marked = size | (1u64 << (7 * len));
    buf.extend_from_slice(&marked.to_be_bytes()[8 - len as usize..]);
}

fn put_uint(buf: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take(7).take_while(|&&b| b == 0).count();
    put_id(buf, id);
    put_size(buf, (8 - skip) as u64);
    buf.extend_from_slice(&bytes[skip..]);
}

fn put_bytes(buf: &mut Vec<u8>, id: u32, data: &[u8]) {
    put_id(buf, id);
    put_size(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// What the track header says about the video.
#[derive(Debug, Clone)]
pub(crate) struct VideoTrackHeader {
    pub(crate) codec_id: &'static str,
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) codec_private: Option<Vec<u8>>,
}

/// The EBML header, the start of the Segment, Info (with room for the Duration that
/// finalizing fills in) and Tracks.
fn file_header(track: &VideoTrackHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ebml = Vec::new();
    put_uint(&mut ebml, 0x4286, 1);
    put_uint(&mut ebml, 0x42F7, 1);
    put_uint(&mut ebml, 0x42F2, 4);
    put_uint(&mut ebml, 0x42F3, 8);
    put_bytes(&mut ebml, 0x4282, b"webm");
    put_uint(&mut ebml, 0x4287, 4);
    put_uint(&mut ebml, 0x4285, 2);
    put_bytes(&mut out, EBML, &ebml);

    put_id(&mut out, SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE);

    let mut info = Vec::new();
    put_uint(&mut info, 0x2A_D7B1, 1_000_000);
    put_bytes(&mut info, 0x4D80, b"meet-recorder");
    put_bytes(&mut info, 0x5741, b"meet-recorder");
    // Eleven bytes, exactly the size of a Duration element with an 8-byte float.
    put_bytes(&mut info, VOID, &[0; 9]);
    put_bytes(&mut out, INFO, &info);

    let mut video = Vec::new();
    put_uint(&mut video, 0xB0, u64::from(track.width));
    put_uint(&mut video, 0xBA, u64::from(track.height));
    let mut entry = Vec::new();
    put_uint(&mut entry, 0xD7, 1);
    put_uint(&mut entry, 0x73C5, 1);
    put_uint(&mut entry, 0x83, 1);
    put_uint(&mut entry, 0x9C, 0);
    put_bytes(&mut entry, 0x86, track.codec_id.as_bytes());
    if let Some(private) = &track.codec_private {
        put_bytes(&mut entry, 0x63A2, private);
    }
    put_bytes(&mut entry, 0xE0, &video);
    let mut tracks = Vec::new();
    put_bytes(&mut tracks, 0xAE, &entry);
    put_bytes(&mut out, TRACKS, &tracks);
    out
}

/// A WebM file with one video track, written as frames arrive.
pub(crate) struct WebmWriter {
    out: BufWriter<Box<dyn Sink>>,
    cluster_start: Option<u64>,
    last_ms: u64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for WebmWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebmWriter")
            .field("last_ms", &self.last_ms)
            .finish_non_exhaustive()
    }
}

impl WebmWriter {
    pub(crate) fn new(sink: Box<dyn Sink>, track: &VideoTrackHeader) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(64 * 1024, sink);
        out.write_all(&file_header(track))?;
        Ok(Self {
            out,
            cluster_start: None,
            last_ms: 0,
            scratch: Vec::with_capacity(32),
        })
    }

    /// Adds one frame at `ms` (milliseconds from the track's first frame).
    pub(crate) fn write_frame(&mut self, ms: u64, keyframe: bool, data: &[u8]) -> io::Result<()> {
        // Matroska wants blocks in non-decreasing time.
        let ms = ms.max(self.last_ms);
        self.last_ms = ms;
        self.scratch.clear();
        let start = match self.cluster_start {
            Some(start)
                if ms - start < CLUSTER_MAX_MS && !(keyframe && ms - start >= CLUSTER_MIN_MS) =>
            {
                start
            }
            _ => {
                put_id(&mut self.scratch, CLUSTER);
                self.scratch.extend_from_slice(&UNKNOWN_SIZE);
                put_uint(&mut self.scratch, TIMESTAMP, ms);
                self.cluster_start = Some(ms);
                ms
            }
        };
        put_id(&mut self.scratch, SIMPLE_BLOCK);
        put_size(&mut self.scratch, 4 + data.len() as u64);
        // Track number 1 as a one-byte vint.
        self.scratch.push(0x81);
        let relative = i16::try_from(ms - start).unwrap_or(i16::MAX);
        self.scratch.extend_from_slice(&relative.to_be_bytes());
        self.scratch.push(if keyframe { 0x80 } else { 0 });
        self.out.write_all(&self.scratch)?;
        self.out.write_all(data)
    }

    pub(crate) fn last_ms(&self) -> u64 {
        self.last_ms
    }

    pub(crate) fn flush(&mut self, durable: bool) -> io::Result<()> {
        self.out.flush()?;
        if durable {
            self.out.get_mut().sync()?;
        }
        Ok(())
    }
}

/// What a finalized WebM file holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WebmInfo {
    pub(crate) duration_ms: u64,
    /// The track header is complete, so a player can open the file.
    pub(crate) playable: bool,
}

struct Reader<'a> {
    inner: BufReader<&'a fs::File>,
    len: u64,
}

impl Reader<'_> {
    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// An element ID and size at `pos`, and where its data starts; `None` when the bytes there
    /// are not a whole element header. A size of `None` is unknown.
    fn header(&mut self, pos: u64) -> io::Result<Option<(u32, Option<u64>, u64)>> {
        if pos >= self.len {
            return Ok(None);
        }
        self.inner.seek(SeekFrom::Start(pos))?;
        let Some(header) = self.read_header()? else {
            return Ok(None);
        };
        let (id, size, header_len) = header;
        if pos + header_len > self.len {
            return Ok(None);
        }
        Ok(Some((id, size, pos + header_len)))
    }

    fn read_header(&mut self) -> io::Result<Option<(u32, Option<u64>, u64)>> {
        let mut read = || -> io::Result<Option<(u32, Option<u64>, u64)>> {
            let first = self.byte()?;
            let id_len = first.leading_zeros() + 1;
            if id_len > 4 {
                return Ok(None);
            }
            let mut id = u32::from(first);
            for _ in 1..id_len {
                id = (id << 8) | u32::from(self.byte()?);
            }
            let first = self.byte()?;
            let size_len = first.leading_zeros() + 1;
            if size_len > 8 {
                return Ok(None);
            }
            let mut size = u64::from(first) & (0xFF >> size_len);
            let mut all_ones = size == (0xFF >> size_len);
            for _ in 1..size_len {
                let b = self.byte()?;
                all_ones &= b == 0xFF;
                size = (size << 8) | u64::from(b);
            }
            Ok(Some((
                id,
                (!all_ones).then_some(size),
                u64::from(id_len + size_len),
            )))
        };
        match read() {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            other => other,
        }
    }

    fn uint(&mut self, pos: u64, size: u64) -> io::Result<u64> {
        self.inner.seek(SeekFrom::Start(pos))?;
        let mut value = 0u64;
        for _ in 0..size.min(8) {
            value = (value << 8) | u64::from(self.byte()?);
        }
        Ok(value)
    }
}

/// Cuts a partly written element off the end of `path`, writes the Duration into the space
/// the header reserved for it, and reports the duration and size.
pub(crate) fn finalize_webm(path: &Path) -> io::Result<WebmInfo> {
    let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut r = Reader {
        inner: BufReader::new(&file),
        len,
    };
    let mut valid_end = 0u64;
    let mut duration_at = None;
    let mut last_block: Option<u64> = None;
    let mut frame_ms = 0u64;
    let mut playable = false;
    'parse: {
        let Some((EBML, Some(size), data)) = r.header(0)? else {
            break 'parse;
        };
        let seg_pos = data + size;
        let Some((SEGMENT, seg_size, mut pos)) = r.header(seg_pos)? else {
            break 'parse;
        };
        let seg_end = seg_size.map_or(len, |s| (pos + s).min(len));
        valid_end = pos;
        let mut cluster_ts = 0u64;
        while let Some((id, size, data)) = r.header(pos)? {
            if data > seg_end {
                break;
            }
            match (id, size) {
                (CLUSTER, _) => {
                    // The children follow directly; an unknown-size cluster ends where the
                    // next cluster begins.
                    cluster_ts = 0;
                    pos = data;
                    valid_end = pos;
                    continue;
                }
                (_, None) => break,
                (_, Some(size)) if data + size > seg_end => break,
                (TIMESTAMP, Some(size)) => cluster_ts = r.uint(data, size)?,
                (SIMPLE_BLOCK | BLOCK_GROUP, Some(size)) if size >= 4 => {
                    let block_data = if id == BLOCK_GROUP {
                        // The Block is the group's first child in what this crate writes; for
                        // other files a group only counts as present.
                        match r.header(data)? {
                            Some((0xA1, Some(_), inner)) => Some(inner),
                            _ => None,
                        }
                    } else {
                        Some(data)
                    };
                    if let Some(block) = block_data {
                        r.inner.seek(SeekFrom::Start(block))?;
                        let track = r.byte()?;
                        let skip = track.leading_zeros();
                        for _ in 0..skip {
                            r.byte()?;
                        }
                        let relative = i16::from_be_bytes([r.byte()?, r.byte()?]);
                        let ms = cluster_ts.saturating_add_signed(i64::from(relative));
                        if let Some(previous) = last_block
                            && ms > previous
                        {
                            frame_ms = ms - previous;
                        }
                        last_block = Some(ms);
                    }
                }
                (TRACKS, Some(_)) => playable = true,
                (INFO, Some(size)) => {
                    let mut child = data;
                    while child < data + size {
                        let Some((child_id, Some(child_size), child_data)) = r.header(child)?
                        else {
                            break;
                        };
                        if (child_id == VOID && child_size == 9)
                            || (child_id == DURATION && child_size == 8)
                        {
                            duration_at = Some(child);
                        }
                        child = child_data + child_size;
                    }
                }
                _ => {}
            }
            pos = data + size.unwrap_or(0);
            valid_end = pos;
        }
    }
    drop(r);
    let duration_ms = last_block.map_or(0, |ms| ms + frame_ms);
    let mut file = file;
    if valid_end < len {
        file.set_len(valid_end)?;
    }
    if let Some(at) = duration_at
        && valid_end > at
    {
        let mut element = Vec::with_capacity(11);
        put_id(&mut element, DURATION);
        put_size(&mut element, 8);
        element.extend_from_slice(&(duration_ms as f64).to_be_bytes());
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&element)?;
    }
    file.sync_all()?;
    Ok(WebmInfo {
        duration_ms,
        playable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_minimal_vints() {
        let mut buf = Vec::new();
        put_size(&mut buf, 5);
        assert_eq!(buf, [0x85]);
        buf.clear();
        put_size(&mut buf, 127);
        assert_eq!(buf, [0x40, 0x7F]);
        buf.clear();
        put_id(&mut buf, CLUSTER);
        assert_eq!(buf, [0x1F, 0x43, 0xB6, 0x75]);
        buf.clear();
        put_uint(&mut buf, TIMESTAMP, 0);
        assert_eq!(buf, [0xE7, 0x81, 0x00]);
    }
}
