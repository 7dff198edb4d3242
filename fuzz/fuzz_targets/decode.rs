//! The frame decoder on arbitrary bytes: the first byte picks the link type, the rest is
//! the frame. It must return a `Decoded` or a `DecodeError` for every input, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpstate::decode::{self, Decoded, LinkType};

/// Every LINKTYPE_ value `LinkType::from_linktype` accepts.
const LINKTYPES: [i32; 11] = [0, 1, 10, 12, 14, 101, 108, 113, 228, 229, 276];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let linktype = LINKTYPES[usize::from(pick) % LINKTYPES.len()];
    let Some(link) = LinkType::from_linktype(linktype) else {
        return;
    };
    if let Ok(Decoded::Tcp(seg)) = decode::decode(link, frame) {
        // What the engine does next with a segment must not overflow either.
        let _ = seg.seq_len();
        let _ = seg.seq.wrapping_add(seg.seq_len());
        let _ = (seg.src.to_string(), seg.dst.to_string());
    }
});
