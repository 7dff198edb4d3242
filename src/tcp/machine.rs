//! The transition table: (state, event) → next state, one commented arm per rule.
//!
//! Events are what an endpoint did or had done to it, already judged valid by the caller
//! (sequence checks live in `seq` and in the flow's segment handling). The table is a pure
//! function; a pair it does not list leaves the state unchanged and is counted by the
//! caller as "not explained".

use super::TcpState::{self, *};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The endpoint sent a SYN without ACK (an active open).
    SentSyn,
    /// The endpoint sent a SYN-ACK (it answered a SYN).
    SentSynAck,
    /// The endpoint sent a FIN (its application closed or shut down writing).
    SentFin,
    /// The endpoint sent a FIN whose ACK does not cover the FIN it had been sent:
    /// the two FINs crossed, so it was still ESTABLISHED when it closed.
    SentFinCrossed,
    /// The endpoint sent a RST that its peer accepted: its socket is gone.
    SentRst,
    /// It sent payload (a request socket in SYN_RECV cannot: it must have been accepted).
    SentData,
    /// A SYN without ACK reached it (seen by an endpoint that had sent its own SYN).
    RecvSyn,
    /// A SYN-ACK acknowledging its SYN reached it.
    RecvSynAck,
    /// An ACK covering its SYN reached it (the handshake's third segment, or data carrying it).
    RecvAckOfSyn,
    /// An ACK covering its FIN reached it.
    RecvAckOfFin,
    /// A FIN reached it.
    RecvFin,
    /// An acceptable RST reached it.
    RecvRst,
    /// Packet time passed 2MSL after entering TIME_WAIT.
    TimeWaitExpired,
    /// A new connection took the 4-tuple over: this socket is gone (a server's TIME_WAIT
    /// accepting a new SYN, or a client that abandoned an attempt and reconnected).
    Superseded,
    /// Its SYN (or SYN-ACK) retransmissions stopped long enough ago that its kernel has given up.
    HandshakeGaveUp,
    /// It retransmitted its SYN-ACK after an ACK was seen: that ACK never reached it.
    ResentSynAck,
}

impl Event {
    /// snake_case name for reports.
    pub fn name(self) -> &'static str {
        use Event::*;
        match self {
            SentSyn => "sent_syn",
            SentSynAck => "sent_syn_ack",
            SentFin => "sent_fin",
            SentFinCrossed => "sent_fin_crossed",
            SentRst => "sent_rst",
            SentData => "sent_data",
            RecvSyn => "recv_syn",
            RecvSynAck => "recv_syn_ack",
            RecvAckOfSyn => "recv_ack_of_syn",
            RecvAckOfFin => "recv_ack_of_fin",
            RecvFin => "recv_fin",
            RecvRst => "recv_rst",
            TimeWaitExpired => "time_wait_expired",
            Superseded => "superseded",
            HandshakeGaveUp => "handshake_gave_up",
            ResentSynAck => "resent_syn_ack",
        }
    }
}

/// The next state, or `None` when the event does not move this state.
pub fn next_state(state: TcpState, event: Event) -> Option<TcpState> {
    use Event::*;
    Some(match (state, event) {
        // An active open: connect() sends the SYN.
        (Closed, SentSyn) => SynSent,
        // A retransmitted SYN: still waiting for an answer.
        (SynSent, SentSyn) => SynSent,
        // The responder sends a SYN of its own: a simultaneous open (it never got the first SYN).
        (Listen, SentSyn) => SynSent,
        // Its SYN retransmitted while the peer's SYN is in: simultaneous open, crossing.
        (SynRecv, SentSyn) => SynRecv,
        // A retransmitted SYN-ACK, or the peer's SYN retransmitted during a simultaneous open.
        (SynRecv, SentSynAck | RecvSyn) => SynRecv,
        // A retransmitted SYN-ACK reaching a client that is already open: it answers with an ACK.
        (Established, RecvSynAck) => Established,
        // A listener answered the SYN: the request socket is SYN_RECV.
        (Listen | Closed, SentSynAck) => SynRecv,
        // Simultaneous open: our SYN is out and the peer's SYN arrives.
        (SynSent, RecvSyn) => SynRecv,
        // Simultaneous open, seen from the answer rather than the SYN.
        (SynSent, SentSynAck) => SynRecv,
        // Simultaneous open: its SYN-ACK crossed the peer's, which already opened it.
        (Established, SentSynAck) => Established,
        // The client side of the handshake: the SYN-ACK covers our SYN.
        (SynSent, RecvSynAck) => Established,
        // Simultaneous open completes when the peer's SYN-ACK covers our SYN.
        (SynRecv, RecvSynAck) => Established,
        // The server side: the third segment (or data carrying the ACK) covers our SYN-ACK.
        (SynRecv, RecvAckOfSyn) => Established,
        // Data from a side we thought was still in the handshake: its ACK arrived unseen.
        (SynRecv, SentData) => Established,
        // A SYN-ACK retransmitted after we took an ACK as delivered: it never arrived.
        (Established, ResentSynAck) => SynRecv,
        // Active close.
        (Established | SynRecv, SentFin) => FinWait1,
        // Passive close: the application closes after reading the peer's FIN.
        (CloseWait, SentFin) => LastAck,
        // Crossed FINs: we closed before the peer's FIN arrived, then it arrived.
        (CloseWait | Established, SentFinCrossed) => Closing,
        // A FIN arrives on an open connection.
        (Established | SynRecv, RecvFin) => CloseWait,
        // Our FIN is acknowledged, the peer has not closed yet.
        (FinWait1, RecvAckOfFin) => FinWait2,
        // Simultaneous close: the peer's FIN arrives before the ACK of ours.
        (FinWait1, RecvFin) => Closing,
        // The peer closes after acknowledging our FIN.
        (FinWait2, RecvFin) => TimeWait,
        // Simultaneous close, our FIN acknowledged.
        (Closing, RecvAckOfFin) => TimeWait,
        // Passive close done: the last ACK arrived.
        (LastAck, RecvAckOfFin) => Closed,
        // 2MSL passed.
        (TimeWait, TimeWaitExpired) => Closed,
        // A new connection on the same 4-tuple replaces whatever socket was left.
        (_, Superseded) if state.has_socket() => Closed,
        // The kernel stopped retrying its SYN or SYN-ACK.
        (SynSent | SynRecv, HandshakeGaveUp) => Closed,
        // An acceptable RST closes any socket, TIME_WAIT included (Linux's tcp_rfc1337=0).
        (
            SynSent | SynRecv | Established | FinWait1 | FinWait2 | CloseWait | Closing | LastAck
            | TimeWait,
            RecvRst,
        ) => Closed,
        // The sender of an accepted RST has no socket left (or never had one: a refusal).
        (_, SentRst) if state != Closed => Closed,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::Event::*;
    use super::*;

    #[test]
    fn textbook_client_lifecycle() {
        let mut s = Closed;
        for (ev, want) in [
            (SentSyn, SynSent),
            (RecvSynAck, Established),
            (SentFin, FinWait1),
            (RecvAckOfFin, FinWait2),
            (RecvFin, TimeWait),
            (TimeWaitExpired, Closed),
        ] {
            s = next_state(s, ev).unwrap_or(s);
            assert_eq!(s, want, "after {ev:?}");
        }
    }

    #[test]
    fn textbook_server_lifecycle() {
        let mut s = Listen;
        for (ev, want) in [
            (SentSynAck, SynRecv),
            (RecvAckOfSyn, Established),
            (RecvFin, CloseWait),
            (SentFin, LastAck),
            (RecvAckOfFin, Closed),
        ] {
            s = next_state(s, ev).unwrap_or(s);
            assert_eq!(s, want, "after {ev:?}");
        }
    }

    #[test]
    fn only_time_or_reset_leaves_time_wait() {
        for ev in [
            SentSyn,
            SentSynAck,
            SentFin,
            SentFinCrossed,
            SentData,
            RecvSyn,
            RecvSynAck,
            RecvAckOfSyn,
            RecvAckOfFin,
            RecvFin,
            HandshakeGaveUp,
            ResentSynAck,
        ] {
            assert_eq!(next_state(TimeWait, ev), None, "{ev:?} moved TIME_WAIT");
        }
        assert_eq!(next_state(TimeWait, TimeWaitExpired), Some(Closed));
        assert_eq!(next_state(TimeWait, RecvRst), Some(Closed));
        assert_eq!(next_state(TimeWait, Superseded), Some(Closed));
        assert_eq!(next_state(Closed, Superseded), None);
    }

    #[test]
    fn simultaneous_close_goes_through_closing() {
        assert_eq!(next_state(FinWait1, RecvFin), Some(Closing));
        assert_eq!(next_state(Closing, RecvAckOfFin), Some(TimeWait));
        assert_eq!(next_state(CloseWait, SentFinCrossed), Some(Closing));
    }
}
