//! Per-connection facts derived from the tracked states: handshake, close, reset and
//! TIME_WAIT accounting. Reports and tests read these, never the raw records.

pub mod findings;
pub mod stats;
pub mod summary;

use serde::Serialize;

use crate::flow::Connection;
use crate::flow::conn::{Handshake, Side, TimeWaitEnd};
use crate::time::{Ts, duration_secs, epoch_secs as secs};

fn dur(from: Ts, to: Ts) -> f64 {
    duration_secs(to.since(from))
}

/// Where a record's time ends: when a new connection took its 4-tuple, tracking stopped
/// (`--max-conns`, an idle timeout), or else its last packet.
pub fn record_end(c: &Connection) -> Ts {
    c.superseded_at()
        .get()
        .or(c.evicted_at().get())
        .or(c.expired_at().get())
        .unwrap_or(c.last)
        .max(c.last)
}

/// From the client's first SYN to the handshake's end, if the handshake completed.
pub fn handshake_span(c: &Connection) -> Option<(Ts, Ts)> {
    if c.handshake() != Handshake::Completed {
        return None;
    }
    c.syn_first(Side::Client).get().zip(c.handshake_done.get())
}

/// "client", "server", "simultaneous" (crossed FINs), or none.
pub fn first_closer(c: &Connection) -> Option<&'static str> {
    if c.crossed_fins {
        Some("simultaneous")
    } else {
        c.first_closer().map(Side::name)
    }
}

/// From the first FIN to the second, to the reset, or (still open) to the capture's end.
pub fn half_close(c: &Connection, end_of_capture: Ts) -> Option<(Ts, Ts, bool)> {
    match c.fin_times().as_slice() {
        [a, b] => Some((*a, *b, false)),
        [a] if c.reset().is_none() => Some((*a, end_of_capture.max(*a), true)),
        [a] => Some((*a, c.reset().map_or(*a, |r| r.ts), false)),
        _ => None,
    }
}

/// A side's TIME_WAIT: its start, its end (the capture's end if it was still running) and
/// why it ended.
pub fn time_wait_span(
    c: &Connection,
    side: Side,
    end_of_capture: Ts,
) -> Option<(Ts, Ts, TimeWaitEnd)> {
    c.time_wait(side).map(|tw| {
        let (until, why) = tw
            .end
            .unwrap_or((end_of_capture, TimeWaitEnd::CaptureEnded));
        (tw.start, until, why)
    })
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConnSummary {
    pub id: u64,
    pub client: String,
    pub server: String,
    /// No SYN or SYN-ACK told which side opened: the direction is a guess from the ports.
    pub direction_guessed: bool,
    /// The capture missed the start of the connection.
    pub partial: bool,
    /// Tracking stopped early to stay within `--max-conns`: states are as of `end`.
    pub evicted: bool,
    /// Tracking stopped after an idle timeout (`--idle-timeout`): states are as of `end`.
    pub expired: bool,
    pub start: f64,
    pub end: f64,
    pub duration: f64,
    pub client_state: &'static str,
    pub server_state: &'static str,
    /// A state reached by a timeout inferred from silence rather than shown by a packet.
    pub client_state_inferred: bool,
    pub server_state_inferred: bool,
    pub handshake: &'static str,
    pub syn_to_synack: Option<f64>,
    pub synack_to_ack: Option<f64>,
    pub handshake_time: Option<f64>,
    pub syn_retransmits: u32,
    pub synack_retransmits: u32,
    /// "client", "server", "simultaneous" (crossed FINs), or null.
    pub first_closer: Option<&'static str>,
    pub first_fin_time: Option<f64>,
    /// From the first FIN to the second (or to the end of the capture if it never came).
    pub half_close_duration: Option<f64>,
    pub half_close_open_at_end: bool,
    pub reset_by: Option<&'static str>,
    pub reset_time: Option<f64>,
    pub reset_sender_state: Option<&'static str>,
    pub reset_receiver_state: Option<&'static str>,
    pub client_time_wait_start: Option<f64>,
    pub client_time_wait_duration: Option<f64>,
    pub client_time_wait_end: Option<&'static str>,
    pub server_time_wait_start: Option<f64>,
    pub server_time_wait_duration: Option<f64>,
    pub server_time_wait_end: Option<&'static str>,
    pub client_packets: u64,
    pub server_packets: u64,
    pub client_bytes: u64,
    pub server_bytes: u64,
    pub fin_retransmits: u32,
    pub rst_out_of_window: u32,
    pub rst_in_window_not_exact: u32,
    pub unexplained_segments: u32,
    pub packets_after_close: u32,
}

pub fn summarize(c: &Connection, end_of_capture: Ts) -> ConnSummary {
    ConnSummary {
        client: c.end(Side::Client).addr.to_string(),
        server: c.end(Side::Server).addr.to_string(),
        ..summarize_without_addrs(c, end_of_capture)
    }
}

/// `summarize` with `client` and `server` left empty (no allocation), for writers that
/// format the addresses from the record themselves: two `String`s per row add up.
pub fn summarize_without_addrs(c: &Connection, end_of_capture: Ts) -> ConnSummary {
    let client = c.end(Side::Client);
    let server = c.end(Side::Server);
    let end = record_end(c);
    let syn = c.syn_first(Side::Client).get();
    let synack = c.synack_first.get();
    let done = c.handshake_done.get();
    let fins = c.fin_times();
    let first_closer = first_closer(c);
    let half_close = half_close(c, end_of_capture).map(|(a, b, open)| (dur(a, b), open));
    let tw = |side: Side| {
        time_wait_span(c, side, end_of_capture)
            .map(|(start, until, why)| (secs(start), dur(start, until), why.name()))
    };
    let (ctw, stw) = (tw(Side::Client), tw(Side::Server));
    let handshake = c.handshake();
    ConnSummary {
        id: c.id,
        client: String::new(),
        server: String::new(),
        direction_guessed: c.direction_guessed,
        partial: c.partial,
        evicted: c.evicted_at().is_some(),
        expired: c.expired_at().is_some(),
        start: secs(c.start),
        end: secs(end),
        duration: dur(c.start, end),
        client_state: client.state.name(),
        server_state: server.state.name(),
        client_state_inferred: client.inferred,
        server_state_inferred: server.inferred,
        handshake: handshake.name(),
        syn_to_synack: syn.zip(synack).map(|(a, b)| dur(a, b)),
        synack_to_ack: synack.zip(done).map(|(a, b)| dur(a, b)),
        handshake_time: handshake_span(c).map(|(a, b)| dur(a, b)),
        syn_retransmits: c.syn_retransmits(Side::Client),
        synack_retransmits: c.synack_retransmits(Side::Server),
        first_closer,
        first_fin_time: fins.first().map(|t| secs(*t)),
        half_close_duration: half_close.map(|h| h.0),
        half_close_open_at_end: half_close.is_some_and(|h| h.1),
        reset_by: c.reset().map(|r| r.by.name()),
        reset_time: c.reset().map(|r| secs(r.ts)),
        reset_sender_state: c.reset().map(|r| r.sender_state.name()),
        reset_receiver_state: c.reset().map(|r| r.receiver_state.name()),
        client_time_wait_start: ctw.map(|t| t.0),
        client_time_wait_duration: ctw.map(|t| t.1),
        client_time_wait_end: ctw.map(|t| t.2),
        server_time_wait_start: stw.map(|t| t.0),
        server_time_wait_duration: stw.map(|t| t.1),
        server_time_wait_end: stw.map(|t| t.2),
        client_packets: client.packets,
        server_packets: server.packets,
        client_bytes: client.bytes,
        server_bytes: server.bytes,
        fin_retransmits: c.fin_retransmits(Side::Client) + c.fin_retransmits(Side::Server),
        rst_out_of_window: c.anomalies().rst_out_of_window,
        rst_in_window_not_exact: c.anomalies().rst_in_window_not_exact,
        unexplained_segments: c.anomalies().unexplained,
        packets_after_close: c.anomalies().after_close,
    }
}
