//! Harness for the SFrame implementation the load-test bots use (`endpoint::sframe`, the
//! format of docs/e2ee.md).

use endpoint::sframe::{self, BaseKey, Header, MediaFormat, Opener, Sealer, kid, ratchet};

use crate::records::Reader;

/// The keys the opener holds: generation 0 of epochs 0, 1 and 5.
const KEYS: [(u64, BaseKey); 3] = [(0, [1; 16]), (1 << 16, [2; 16]), (5 << 16, [3; 16])];

/// `sframe`: the first byte picks an operation.
///
/// - 0: `Header::decode` of the rest; a header that decodes re-encodes to one that decodes to
///   the same KID and CTR.
/// - 1: `Opener::open` (`format` bit 1: VP8 or Opus) and then `open_with_prefix` (`prefix: u8`)
///   of the rest, with the keys above.
/// - 2: seal then open: `epoch: u8` (of the keys above), `generation: u8` (derived forward by
///   the opener), `prefix: u8`, `flip: u16`, then the plaintext. Opening must give back the
///   plaintext, and flipping any one bit of the sealed frame must make it fail.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let op = r.u8();
    let mut opener = Opener::new();
    for (kid, key) in &KEYS {
        opener.add_key(*kid, key);
    }
    match op % 3 {
        0 => {
            let bytes = r.rest();
            if let Ok((header, len)) = Header::decode(bytes) {
                assert!(len <= bytes.len() && len <= sframe::MAX_HEADER_LEN);
                let mut out = [0; sframe::MAX_HEADER_LEN];
                let n = header.encode(&mut out);
                let (again, m) = Header::decode(&out[..n]).expect("an encoded header decodes");
                assert_eq!((again, m), (header, n));
            }
        }
        1 => {
            let format = if op & 2 == 0 {
                MediaFormat::Vp8
            } else {
                MediaFormat::Opus
            };
            let prefix = usize::from(r.u8());
            let frame = r.rest();
            let mut buf = frame.to_vec();
            if let Ok(opened) = opener.open(format, &mut buf) {
                assert!(opened.len <= frame.len());
            }
            let mut buf = frame.to_vec();
            if let Ok(opened) = opener.open_with_prefix(prefix, &mut buf) {
                assert!(opened.len <= frame.len());
            }
        }
        _ => {
            let (epoch_kid, base) = KEYS[usize::from(r.u8()) % KEYS.len()];
            let generation = r.u8();
            let prefix = usize::from(r.u8() % 40);
            let flip = usize::from(r.u16());
            let plain = r.rest().to_vec();
            let mut key = base;
            for _ in 0..generation {
                key = ratchet(&key);
            }
            let (epoch, _) = sframe::split_kid(epoch_kid);
            let kid = kid(epoch as u32, u16::from(generation));
            let mut sealer = Sealer::new(&key, kid).expect("a sealer");
            let mut frame = plain.clone();
            if sealer.seal(prefix, &mut frame).is_err() {
                assert!(prefix.min(plain.len()) > sframe::MAX_CLEAR_PREFIX);
                return;
            }
            let sealed = frame.clone();
            let prefix = prefix.min(plain.len());
            let opened = opener
                .open_with_prefix(prefix, &mut frame)
                .expect("a sealed frame opens");
            assert_eq!(
                &frame[..opened.len],
                &plain[..],
                "the frame came back changed"
            );
            assert_eq!(opened.header.kid, kid);
            let mut tampered = sealed;
            let bit = flip % (8 * tampered.len());
            tampered[bit / 8] ^= 1 << (bit % 8);
            assert!(
                opener.open_with_prefix(prefix, &mut tampered).is_err(),
                "a frame with bit {bit} flipped still opens"
            );
        }
    }
}

/// Seeds: real sealed frames (VP8 keyframe, delta, Opus), headers, round trips.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut video = endpoint::media::VideoSource::new(5, 300);
    let mut sealer = Sealer::new(&KEYS[0].1, KEYS[0].0).expect("a sealer");
    for (name, keyframe) in [("vp8_key", true), ("vp8_delta", false)] {
        let mut frame = video.next_frame(keyframe);
        let prefix = MediaFormat::Vp8.clear_prefix_len(&frame);
        sealer.seal(prefix, &mut frame).expect("sealed");
        let mut input = vec![1, prefix as u8];
        input.extend_from_slice(&frame);
        seeds.push((format!("open_{name}"), input));
    }
    let mut opus = vec![0x78, 1, 2, 3, 4, 5, 6];
    sealer.seal(1, &mut opus).expect("sealed");
    let mut input = vec![3, 1];
    input.extend_from_slice(&opus);
    seeds.push(("open_opus".to_owned(), input));
    seeds.push(("header_short".to_owned(), vec![0, 0x12]));
    seeds.push((
        "header_long".to_owned(),
        vec![0, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8],
    ));
    let mut input = vec![2, 2, 7, 10, 0, 99];
    input.extend_from_slice(&video.next_frame(true));
    seeds.push(("seal_open_ratchet".to_owned(), input));
    seeds
}
