//! How one packet is written in events and ladder diagrams: tcpdump's flag letters and
//! sequence numbers relative to each side's initial sequence number.

use crate::decode::{Segment, flags};
use crate::flow::{Connection, Side};

/// tcpdump's flag letters: `S` SYN, `F` FIN, `R` RST, `P` PSH, `U` URG, `E` ECE, `W` CWR,
/// `.` ACK. A SYN-ACK is `S.`.
pub fn flag_letters(f: u8) -> String {
    let (letters, len) = flag_letters_in(f);
    String::from_utf8_lossy(&letters[..len]).into_owned()
}

/// The text of `flag_letters` in a stack buffer: the bytes and how many are used.
pub fn flag_letters_in(f: u8) -> ([u8; 8], usize) {
    let mut letters = [0u8; 8];
    let mut len = 0;
    for (bit, letter) in [
        (flags::SYN, b'S'),
        (flags::FIN, b'F'),
        (flags::RST, b'R'),
        (flags::PSH, b'P'),
        (flags::URG, b'U'),
        (flags::ECE, b'E'),
        (flags::CWR, b'W'),
        (flags::ACK, b'.'),
    ] {
        if f & bit != 0 {
            letters[len] = letter;
            len += 1;
        }
    }
    if len == 0 {
        letters[..4].copy_from_slice(b"none");
        len = 4;
    }
    (letters, len)
}

/// Sequence and acknowledgment numbers made relative, as tcpdump and Wireshark show them:
/// each side's initial sequence number (or, when its SYN was missed, the first one seen) is 0.
#[derive(Clone, Copy, Debug)]
pub struct Relative {
    base: [Option<u32>; 2],
}

impl Relative {
    pub fn of(conn: &Connection) -> Relative {
        let base = |side: Side| conn.end(side).seq_base();
        Relative {
            base: [base(Side::Client), base(Side::Server)],
        }
    }

    /// (seq, ack) of a segment sent by `from`; a number without a base stays absolute.
    pub fn numbers(&self, seg: &Segment, from: Side) -> (u32, Option<u32>) {
        let rel = |n: u32, side: Side| match self.base[side.index()] {
            Some(b) => n.wrapping_sub(b),
            None => n,
        };
        let seq = rel(seg.seq, from);
        let ack = seg.has(flags::ACK).then(|| rel(seg.ack, from.other()));
        (seq, ack)
    }
}

/// `S. seq 0 ack 1 len 0` style.
pub fn describe(seg: &Segment, from: Side, rel: &Relative) -> String {
    let (seq, ack) = rel.numbers(seg, from);
    let mut s = format!("{} seq {seq}", flag_letters(seg.flags));
    if let Some(a) = ack {
        s.push_str(&format!(" ack {a}"));
    }
    s.push_str(&format!(" len {}", seg.payload_len));
    s
}
