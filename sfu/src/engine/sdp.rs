//! What the engine reads from SDP offers and candidates before str0m does.

use super::*;

/// Whether a client's candidate can pair with the server's one candidate (UDP, one address
/// family). The ICE agent counts every remote candidate it is given: one it can never pair
/// with, such as the TCP or IPv6 candidate a browser may trickle before its UDP IPv4 ones,
/// would make it declare the connection failed ("no possible pairs") before the client's
/// first check arrives.
pub(super) fn pairable(candidate: &Candidate, local: SocketAddr) -> bool {
    candidate.proto() == Protocol::Udp && candidate.addr().is_ipv4() == local.is_ipv4()
}

/// The offer without its SHA-1 (or other weak) DTLS fingerprints, so that the transport is
/// authenticated by a strong one only; `None` when no strong one is left.
pub(super) fn without_weak_fingerprints(sdp: &str) -> Option<std::borrow::Cow<'_, str>> {
    let weak = |line: &str| {
        line.trim()
            .strip_prefix("a=fingerprint:")
            .is_some_and(|value| {
                let algorithm = value.split_whitespace().next().unwrap_or_default();
                !["sha-256", "sha-384", "sha-512"]
                    .iter()
                    .any(|strong| algorithm.eq_ignore_ascii_case(strong))
            })
    };
    let strong = sdp
        .lines()
        .any(|l| l.trim().starts_with("a=fingerprint:") && !weak(l));
    if !strong {
        return None;
    }
    if !sdp.lines().any(weak) {
        return Some(std::borrow::Cow::Borrowed(sdp));
    }
    let mut kept = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n').filter(|l| !weak(l)) {
        kept.push_str(line);
    }
    Some(std::borrow::Cow::Owned(kept))
}

/// The offer without the candidate lines the server cannot pair with (see [`pairable`]).
/// A line str0m cannot read stays, for str0m to judge.
pub(super) fn without_unpairable_candidates(
    sdp: &str,
    local: SocketAddr,
) -> std::borrow::Cow<'_, str> {
    let keep = |line: &str| {
        line.trim()
            .strip_prefix("a=")
            .filter(|l| l.starts_with("candidate:"))
            .and_then(|l| Candidate::from_sdp_string(l).ok())
            .is_none_or(|c| pairable(&c, local))
    };
    if sdp.lines().all(keep) {
        return std::borrow::Cow::Borrowed(sdp);
    }
    let mut kept = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n').filter(|l| keep(l)) {
        kept.push_str(line);
    }
    std::borrow::Cow::Owned(kept)
}

/// The payload parameters negotiated on one m-line.
pub(super) fn media_params(rtc: &Rtc, mid: Mid) -> Vec<PayloadParams> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    let pts = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| pts.contains(&p.pt()))
        .cloned()
        .collect()
}

/// The codec a publication is sent in (its first payload type that is a media codec, not
/// RED, FEC, comfort noise or DTMF), as a WebRTC mime type.
pub(super) fn sent_codec(params: &[PayloadParams]) -> Option<&'static str> {
    params.iter().find_map(|p| codec::mime_type(p.spec().codec))
}

/// The first payload type of the m-line `mid` in an SDP answer: the codec the offerer sends
/// on it.
pub(super) fn first_payload_type(answer: &str, mid: Mid) -> Option<Pt> {
    answer.split("\r\nm=").skip(1).find_map(|section| {
        let in_section = section
            .lines()
            .any(|l| l.strip_prefix("a=mid:").is_some_and(|m| m.trim() == &*mid));
        if !in_section {
            return None;
        }
        let first = section.lines().next()?.split_whitespace().nth(3)?;
        first.parse::<u8>().ok().map(Pt::from)
    })
}

/// Pairs each publisher payload type with the subscriber's payload type for the same codec:
/// the exact same parameters when offered, otherwise the same codec.
pub(super) fn map_payload_types(
    publisher: &[PayloadParams],
    subscriber: &[PayloadParams],
) -> Vec<(Pt, Pt)> {
    publisher
        .iter()
        .filter_map(|p| {
            let spec = p.spec();
            subscriber
                .iter()
                .find(|s| s.spec() == spec)
                .or_else(|| subscriber.iter().find(|s| s.spec().codec == spec.codec))
                .map(|s| (p.pt(), s.pt()))
        })
        .collect()
}

/// The answer with the server's candidate lines in every media section that is not
/// rejected. str0m writes them into the first section only, which bundling clients read; a
/// client that takes the shared transport's candidates from another section (aiortc with
/// `max-bundle`, some hardware encoders) would otherwise have none and never connect.
pub(super) fn with_candidates_in_every_section(answer: String) -> String {
    let is_candidate =
        |line: &str| line.starts_with("a=candidate:") || line.starts_with("a=end-of-candidates");
    let mut candidates: Vec<&str> = Vec::new();
    for line in answer.lines().filter(|l| is_candidate(l)) {
        if !candidates.contains(&line) {
            candidates.push(line);
        }
    }
    let lacking = |section: &str| {
        let rejected = section
            .split_whitespace()
            .nth(1)
            .is_some_and(|port| port == "0");
        !rejected && !section.lines().any(|l| l.starts_with("a=candidate:"))
    };
    let mut sections = answer.split("\r\nm=");
    let Some(session) = sections.next() else {
        return answer;
    };
    let sections: Vec<&str> = sections.collect();
    if candidates.is_empty() || !sections.iter().any(|s| lacking(s)) {
        return answer;
    }
    let mut out = String::with_capacity(answer.len() + sections.len() * 128);
    out.push_str(session);
    for section in sections {
        out.push_str("\r\nm=");
        let body = section.strip_suffix("\r\n").unwrap_or(section);
        out.push_str(body);
        if lacking(section) {
            for line in &candidates {
                out.push_str("\r\n");
                out.push_str(line);
            }
        }
        if section.ends_with("\r\n") {
            out.push_str("\r\n");
        }
    }
    out
}
