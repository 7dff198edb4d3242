//! Sequence-number arithmetic (RFC 1982 style, modulo 2^32) and the acceptability checks
//! that decide whether a receiver would take a segment. Kept apart from the state table:
//! the table says what a valid event does, this module says whether the event is valid.

/// a < b in sequence space.
pub fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// a <= b in sequence space.
pub fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// The later of two sequence numbers.
pub fn max(a: u32, b: u32) -> u32 {
    if lt(a, b) { b } else { a }
}

/// How a receiver treats a RST (RFC 5961 section 3, which Linux implements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RstVerdict {
    /// Sequence number exactly where the receiver expects the next byte: the connection is reset.
    Accepted,
    /// In the window but not exact: Linux answers with a challenge ACK and keeps the connection.
    InWindowNotExact,
    /// Outside the window: silently dropped.
    OutOfWindow,
}

/// Judges a RST carrying `seq` against a receiver that expects `rcv_nxt` next and advertised
/// `window` bytes. `rcv_nxt_minus_one_ok` covers Linux's tcp_reset_check: after a FIN has
/// been received, a RST one below rcv_nxt is still taken.
pub fn judge_rst(seq: u32, rcv_nxt: u32, window: u32, rcv_nxt_minus_one_ok: bool) -> RstVerdict {
    if seq == rcv_nxt || (rcv_nxt_minus_one_ok && seq == rcv_nxt.wrapping_sub(1)) {
        RstVerdict::Accepted
    } else if le(rcv_nxt, seq) && lt(seq, rcv_nxt.wrapping_add(window.max(1))) {
        RstVerdict::InWindowNotExact
    } else {
        RstVerdict::OutOfWindow
    }
}

/// A keepalive or zero-window probe: at most one byte, one below the next sequence number.
/// It carries no new data and changes no state.
pub fn is_probe(seq: u32, payload_len: u32, snd_nxt: u32) -> bool {
    payload_len <= 1 && seq == snd_nxt.wrapping_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_order() {
        assert!(lt(u32::MAX - 5, 3));
        assert!(!lt(3, u32::MAX - 5));
        assert!(le(7, 7));
        assert_eq!(max(u32::MAX, 2), 2);
    }

    #[test]
    fn rst_judgement_follows_rfc5961() {
        assert_eq!(judge_rst(100, 100, 1000, false), RstVerdict::Accepted);
        assert_eq!(
            judge_rst(150, 100, 1000, false),
            RstVerdict::InWindowNotExact
        );
        assert_eq!(judge_rst(5000, 100, 1000, false), RstVerdict::OutOfWindow);
        assert_eq!(judge_rst(99, 100, 1000, false), RstVerdict::OutOfWindow);
        assert_eq!(judge_rst(99, 100, 1000, true), RstVerdict::Accepted);
    }

    #[test]
    fn probes_are_one_below_snd_nxt() {
        assert!(is_probe(99, 0, 100));
        assert!(is_probe(99, 1, 100));
        assert!(!is_probe(100, 0, 100));
        assert!(!is_probe(99, 2, 100));
    }
}
