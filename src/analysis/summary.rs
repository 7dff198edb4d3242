//! `summary`: connections counted by handshake outcome and by how they ended, and the
//! distributions of handshake, half-close and TIME_WAIT durations.

use serde::Serialize;

use crate::analysis::stats::Distribution;
use crate::flow::conn::{Handshake, TimeWaitEnd};
use crate::flow::{Connection, Side};
use crate::time::duration_secs as secs;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HandshakeCounts {
    pub completed: u64,
    pub refused: u64,
    pub unanswered: u64,
    pub not_completed: u64,
    /// Picked up mid-stream: the handshake is not in the capture.
    pub not_seen: u64,
}

/// How each connection ended (every connection counts once).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CloseCounts {
    /// Both FINs, the originator's (client's) first.
    pub closed_by_originator: u64,
    /// Both FINs, the responder's (server's) first.
    pub closed_by_responder: u64,
    /// Both FINs, crossed.
    pub closed_simultaneously: u64,
    /// One FIN only, no RST: one direction still open when the capture ended.
    pub half_closed: u64,
    /// Ended by an accepted RST (refusals not included).
    pub reset: u64,
    /// Opened and never closed in the capture (no FIN, no RST).
    pub still_open: u64,
    /// Never opened: refused, unanswered or not completed, without any FIN or RST after.
    pub never_opened: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub connections: u64,
    /// Connections whose start was not captured (also counted in the tables above).
    pub partial: u64,
    pub handshakes: HandshakeCounts,
    pub closes: CloseCounts,
    /// First SYN to the ACK completing the handshake (tshark's initial_rtt), seconds.
    pub handshake_time: Distribution,
    pub syn_to_synack: Distribution,
    pub synack_to_ack: Distribution,
    /// First FIN to the second FIN, for connections where both came.
    pub half_close_duration: Distribution,
    /// Half-closes still open when the capture ended (not in the distribution).
    pub half_close_open_at_end: u64,
    /// TIME_WAITs that ended in the capture (expired, reused, reset).
    pub time_wait_duration: Distribution,
    /// TIME_WAITs the end of the capture cut short (not in the distribution).
    pub time_wait_cut_short: u64,
    pub time_wait_expired: u64,
    pub time_wait_reused: u64,
    pub time_wait_reset: u64,
}

pub fn summarize_all(conns: &[Connection]) -> Summary {
    let mut builder = SummaryBuilder::default();
    for c in conns {
        builder.add(c);
    }
    builder.finish()
}

/// A summary added up one connection at a time, in any order: a run can count each record
/// as it ends and keep only the durations (a few floats a connection, not the record).
#[derive(Default)]
pub struct SummaryBuilder {
    connections: u64,
    partial: u64,
    handshakes: HandshakeCounts,
    closes: CloseCounts,
    handshake_time: Vec<f64>,
    syn_to_synack: Vec<f64>,
    synack_to_ack: Vec<f64>,
    half_close: Vec<f64>,
    half_close_open_at_end: u64,
    time_wait: Vec<f64>,
    time_wait_cut_short: u64,
    time_wait_expired: u64,
    time_wait_reused: u64,
    time_wait_reset: u64,
}

impl SummaryBuilder {
    pub fn add(&mut self, c: &Connection) {
        let (h, k) = (&mut self.handshakes, &mut self.closes);
        self.connections += 1;
        self.partial += u64::from(c.partial);
        let handshake = c.handshake();
        match handshake {
            Handshake::Completed => h.completed += 1,
            Handshake::Refused => h.refused += 1,
            Handshake::Unanswered => h.unanswered += 1,
            Handshake::NotCompleted => h.not_completed += 1,
            Handshake::NotSeen => h.not_seen += 1,
        }
        let syn = c.syn_first(Side::Client).get();
        if handshake == Handshake::Completed
            && let (Some(s), Some(done)) = (syn, c.handshake_done.get())
        {
            self.handshake_time.push(secs(done.since(s)));
            if let Some(sa) = c.synack_first.get() {
                self.syn_to_synack.push(secs(sa.since(s)));
                self.synack_to_ack.push(secs(done.since(sa)));
            }
        }
        let fins = c.fin_times();
        match fins.as_slice() {
            [a, b] => self.half_close.push(secs(b.since(*a))),
            [_] if c.reset().is_none() => self.half_close_open_at_end += 1,
            _ => {}
        }
        let refused = handshake == Handshake::Refused;
        if c.reset().is_some() && !refused {
            k.reset += 1;
        } else if fins.len() == 2 {
            if c.crossed_fins {
                k.closed_simultaneously += 1;
            } else if c.first_closer() == Some(Side::Server) {
                k.closed_by_responder += 1;
            } else {
                k.closed_by_originator += 1;
            }
        } else if fins.len() == 1 {
            k.half_closed += 1;
        } else if matches!(handshake, Handshake::Completed | Handshake::NotSeen) {
            k.still_open += 1;
        } else {
            k.never_opened += 1;
        }
        for side in [Side::Client, Side::Server] {
            if let Some(t) = c.time_wait(side) {
                match t.end {
                    Some((end, why)) if why != TimeWaitEnd::CaptureEnded => {
                        self.time_wait.push(secs(end.since(t.start)));
                        match why {
                            TimeWaitEnd::Expired => self.time_wait_expired += 1,
                            TimeWaitEnd::Reused => self.time_wait_reused += 1,
                            _ => self.time_wait_reset += 1,
                        }
                    }
                    _ => self.time_wait_cut_short += 1,
                }
            }
        }
    }

    pub fn finish(self) -> Summary {
        Summary {
            connections: self.connections,
            partial: self.partial,
            handshakes: self.handshakes,
            closes: self.closes,
            handshake_time: Distribution::of(self.handshake_time),
            syn_to_synack: Distribution::of(self.syn_to_synack),
            synack_to_ack: Distribution::of(self.synack_to_ack),
            half_close_duration: Distribution::of(self.half_close),
            half_close_open_at_end: self.half_close_open_at_end,
            time_wait_duration: Distribution::of(self.time_wait),
            time_wait_cut_short: self.time_wait_cut_short,
            time_wait_expired: self.time_wait_expired,
            time_wait_reused: self.time_wait_reused,
            time_wait_reset: self.time_wait_reset,
        }
    }
}
