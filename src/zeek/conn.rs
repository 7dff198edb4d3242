//! One TCP connection as Zeek models it: two endpoints with their state machines and
//! sequence bookkeeping, the history string, content-gap detection, close reporting and the
//! timers the connection asks for. Section numbers refer to `CONN_STATES.md`.
//!
//! Sequence arithmetic deliberately mirrors Zeek's mix of 32-bit sequence numbers, 64-bit
//! relative positions and wrap counters (including its wrapping on odd inputs), because the
//! logged byte counts and the history letters depend on it.

use std::collections::BTreeMap;
use std::fmt;

use super::decode::{TcpSeg, transport_checksum_ok};
use crate::decode::SockAddr;

/// Microseconds, the resolution of Zeek's packet timestamps.
pub(crate) const SEC: i64 = 1_000_000;
/// `tcp_attempt_delay`, `tcp_SYN_timeout`, `tcp_connection_linger`, `tcp_close_delay`.
const FIVE_SECS: i64 = 5 * SEC;
/// `tcp_session_timer`.
const SESSION_TIMER: i64 = 6 * SEC;
/// `udp_inactivity_timeout`: what a new TCP connection starts with.
pub(crate) const INITIAL_INACTIVITY: i64 = 60 * SEC;
/// `tcp_inactivity_timeout`.
const TCP_INACTIVITY: i64 = 300 * SEC;
/// `port_inactivity_timeouts` of `base/protocols/conn/inactivity.zeek`.
const INTERACTIVE_INACTIVITY: i64 = 3600 * SEC;
const INTERACTIVE_PORTS: [u16; 4] = [21, 22, 23, 513];

const TOO_LARGE_SEQ_DELTA: i32 = 1_048_576;
const MAX_INITIAL_WINDOW: u64 = 16_384;
const MAX_ABOVE_HOLE_WITHOUT_ACKS: u64 = 16_384;
const EXCESSIVE_DATA_WITHOUT_ACKS: u64 = 10 * 1024 * 1024;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

// Seen-bits for once-only history letters; the responder's are shifted by 16.
const HIST_SYN: u32 = 0x1;
const HIST_FIN: u32 = 0x2;
const HIST_RST: u32 = 0x4;
const HIST_FIN_RST: u32 = 0x8;
const HIST_DATA: u32 = 0x10;
const HIST_ACK: u32 = 0x20;
const HIST_MULTI_FLAG: u32 = 0x40;

const FIRST_ORIG: u8 = 1;
const FIRST_RESP: u8 = 2;

/// Endpoint states (section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EpState {
    Inactive,
    SynSent,
    SynAckSent,
    Partial,
    Established,
    Closed,
    Reset,
}

fn is_handshake(s: EpState) -> bool {
    matches!(
        s,
        EpState::Inactive | EpState::SynSent | EpState::SynAckSent
    )
}

fn is_quiet(s: EpState) -> bool {
    matches!(s, EpState::Inactive | EpState::Partial)
}

fn seq_delta(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

fn full_seq(seq: u32, wraps: u32) -> u64 {
    (u64::from(wraps) << 32) + u64::from(seq)
}

/// Zeek's `conn_state` column (section 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    S0,
    S1,
    SF,
    REJ,
    S2,
    S3,
    RSTO,
    RSTR,
    RSTOS0,
    RSTRH,
    SH,
    SHR,
    OTH,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::S0 => "S0",
            ConnState::S1 => "S1",
            ConnState::SF => "SF",
            ConnState::REJ => "REJ",
            ConnState::S2 => "S2",
            ConnState::S3 => "S3",
            ConnState::RSTO => "RSTO",
            ConnState::RSTR => "RSTR",
            ConnState::RSTOS0 => "RSTOS0",
            ConnState::RSTRH => "RSTRH",
            ConnState::SH => "SH",
            ConnState::SHR => "SHR",
            ConnState::OTH => "OTH",
        }
    }
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `RSTOS0` history pattern `^?S[^HAFGIQ]*R.*`: after an optional `^` the history starts
/// with `S`, and the first of the upper-case letters H A F G I Q R after it is an `R`.
pub(crate) fn rstos0_history(history: &str) -> bool {
    let h = history.strip_prefix('^').unwrap_or(history);
    let Some(rest) = h.strip_prefix('S') else {
        return false;
    };
    rest.chars().find(|c| "HAFGIQR".contains(*c)) == Some('R')
}

/// The `conn_state` table of section 8, first match wins.
pub(crate) fn derive_conn_state(
    os: EpState,
    rs: EpState,
    orig_size: u64,
    resp_size: u64,
    history: &str,
) -> ConnState {
    use EpState::*;
    if rs == Reset {
        if matches!(os, SynSent | SynAckSent) || (os == Reset && orig_size == 0 && resp_size == 0) {
            ConnState::REJ
        } else if is_quiet(os) {
            ConnState::RSTRH
        } else {
            ConnState::RSTR
        }
    } else if os == Reset {
        if is_quiet(rs) {
            if rstos0_history(history) {
                ConnState::RSTOS0
            } else {
                ConnState::OTH
            }
        } else {
            ConnState::RSTO
        }
    } else if os == Closed && rs == Closed {
        ConnState::SF
    } else if os == Closed {
        if is_quiet(rs) {
            ConnState::SH
        } else {
            ConnState::S2
        }
    } else if rs == Closed {
        if is_quiet(os) {
            ConnState::SHR
        } else {
            ConnState::S3
        }
    } else if os == SynSent && rs == Inactive {
        ConnState::S0
    } else if os == Established && rs == Established {
        ConnState::S1
    } else {
        ConnState::OTH
    }
}

/// A letter recorded at the 1st, 10th, 100th... event of its kind (section 5.4).
#[derive(Clone, Copy, Debug)]
struct Scaled {
    count: u32,
    threshold: u32,
}

impl Default for Scaled {
    fn default() -> Self {
        Scaled {
            count: 0,
            threshold: 1,
        }
    }
}

impl Scaled {
    fn hit(&mut self) -> bool {
        self.count = self.count.wrapping_add(1);
        if self.count != self.threshold {
            return false;
        }
        match self.threshold.checked_mul(10) {
            Some(t) => self.threshold = t,
            None => self.count = 0,
        }
        true
    }
}

/// Content bookkeeping of one direction, in relative sequence numbers (1 = first data octet).
/// Only ranges are kept, never payload bytes.
#[derive(Clone, Debug)]
struct Reassembly {
    /// Next octet to deliver.
    last_reassem: u64,
    /// Below this everything is acknowledged and forgotten.
    trim: u64,
    /// Non-overlapping ranges `start -> end` seen but not yet acknowledged.
    blocks: BTreeMap<u64, u64>,
    /// Total length of `blocks`.
    buffered: u64,
    skip: bool,
    did_eof: bool,
}

impl Default for Reassembly {
    fn default() -> Self {
        Reassembly {
            last_reassem: 1,
            trim: 1,
            blocks: BTreeMap::new(),
            buffered: 0,
            skip: false,
            did_eof: false,
        }
    }
}

impl Reassembly {
    /// Adds `[seq, upper)`, keeping only what no block holds yet.
    fn insert(&mut self, mut seq: u64, upper: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .blocks
            .range(..upper)
            .rev()
            .take_while(|(_, e)| **e > seq)
            .map(|(s, e)| (*s, *e))
            .collect();
        let mut pieces = Vec::new();
        for (s, e) in overlapping.into_iter().rev() {
            if s > seq {
                pieces.push((seq, s));
            }
            seq = seq.max(e);
        }
        if seq < upper {
            pieces.push((seq, upper));
        }
        for (s, e) in pieces {
            self.blocks.insert(s, e);
            self.buffered += e - s;
        }
    }

    /// Forgets the blocks that end at or below `seq`.
    fn trim_front(&mut self, seq: u64) {
        while let Some((&s, &e)) = self.blocks.iter().next() {
            if e > seq {
                break;
            }
            self.blocks.remove(&s);
            self.buffered -= e - s;
        }
    }

    fn clear(&mut self) {
        self.blocks.clear();
        self.buffered = 0;
    }

    /// Moves `last_reassem` over every block that continues it.
    fn deliver(&mut self) {
        // Blocks never overlap: only the last one starting at or before `last_reassem` can
        // reach past it.
        if let Some((_, &e)) = self.blocks.range(..=self.last_reassem).next_back()
            && e > self.last_reassem
        {
            self.last_reassem = e;
        }
        while let Some((&s, &e)) = self.blocks.range(self.last_reassem..).next() {
            if s != self.last_reassem {
                break;
            }
            self.last_reassem = e;
        }
    }

    fn undelivered_bytes(&self) -> u64 {
        self.blocks
            .values()
            .next_back()
            .map_or(0, |&e| e.saturating_sub(self.last_reassem))
    }
}

/// One side of a connection (`TCP_Endpoint`).
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub state: EpState,
    pub prev_state: EpState,
    start_seq: i64,
    last_seq: u32,
    ack_seq: u32,
    seq_wraps: u32,
    ack_wraps: u32,
    fin_cnt: u32,
    rst_cnt: u32,
    fin_seq: u64,
    pub did_close: bool,
    hist_last_syn: u64,
    hist_last_fin: u64,
    hist_last_rst: u64,
    chk: Scaled,
    rxmt: Scaled,
    win0: Scaled,
    gap: Scaled,
    reasm: Reassembly,
    /// Connection-size counters of this endpoint (section 7.1).
    pub pkts: u64,
    pub ip_bytes: u64,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            state: EpState::Inactive,
            prev_state: EpState::Inactive,
            start_seq: 0,
            last_seq: 0,
            ack_seq: 0,
            seq_wraps: 0,
            ack_wraps: 0,
            fin_cnt: 0,
            rst_cnt: 0,
            fin_seq: 0,
            did_close: false,
            hist_last_syn: 0,
            hist_last_fin: 0,
            hist_last_rst: 0,
            chk: Scaled::default(),
            rxmt: Scaled::default(),
            win0: Scaled::default(),
            gap: Scaled::default(),
            reasm: Reassembly::default(),
            pkts: 0,
            ip_bytes: 0,
        }
    }
}

impl Endpoint {
    fn start32(&self) -> u32 {
        self.start_seq as u32
    }

    fn init_seqs(&mut self, start: u32, last: u32) {
        self.start_seq = i64::from(start);
        self.ack_seq = start;
        self.last_seq = last;
    }

    fn update_last(&mut self, seq: u32) {
        if seq < self.last_seq {
            self.seq_wraps = self.seq_wraps.wrapping_add(1);
        }
        self.last_seq = seq;
    }

    fn update_ack(&mut self, seq: u32) {
        if seq < self.ack_seq {
            self.ack_wraps = self.ack_wraps.wrapping_add(1);
        }
        self.ack_seq = seq;
    }

    fn ack64(&self) -> u64 {
        full_seq(self.ack_seq, self.ack_wraps)
    }

    fn last64(&self) -> u64 {
        full_seq(self.last_seq, self.seq_wraps)
    }

    fn no_data_acked(&self) -> bool {
        let ack = self.ack64();
        let start = self.start_seq as u64;
        ack == start || ack == start.wrapping_add(1)
    }

    /// Position of `cur` relative to the endpoint's start (`get_relative_seq`), and whether it
    /// lies before the start.
    fn relative(&self, cur: u32, last: u32, mut wraps: u32) -> (u64, bool) {
        let delta = seq_delta(cur, last);
        if delta < 0 {
            if wraps != 0 && cur > last {
                wraps -= 1;
            }
        } else if delta > 0 && cur < last {
            wraps = wraps.wrapping_add(1);
        }
        if wraps == 0 {
            let d = seq_delta(cur, self.start32());
            return (i64::from(d) as u64, d < 0);
        }
        (
            full_seq(cur, wraps).wrapping_sub(self.start_seq as u64),
            false,
        )
    }
}

/// A timer a connection asks for (section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    Attempt,
    Expire,
    Delete,
    Inactivity,
}

/// What a connection wants from the tracker after handling a packet or a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerRequest {
    pub kind: TimerKind,
    pub at: i64,
    /// Generation the timer belongs to; a cancelled generation never fires.
    pub generation: u32,
}

/// A live connection.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub orig: SockAddr,
    pub resp: SockAddr,
    /// `[originator, responder]`; a flip swaps them.
    pub ep: [Endpoint; 2],
    hist_seen: u32,
    pub history: String,
    pub start_time: i64,
    pub last_time: i64,
    is_active: bool,
    is_partial: bool,
    first_packet_seen: u8,
    close_deferred: bool,
    deferred_gen_event: bool,
    pub missed_bytes: u64,
    inactivity_timeout: i64,
    pub tunneled: bool,
    /// Generation of attempt/expire/delete timers (cancelled together).
    pub analyzer_generation: u32,
    /// Generation of the inactivity timer.
    pub inactivity_generation: u32,
    /// Timers requested since the tracker last looked.
    pub requests: Vec<TimerRequest>,
    established_event: bool,
}

/// Flags of a creating packet that decide the flip at creation (section 3.2).
pub(crate) fn flip_at_creation(flags: u8, sport: u16, dport: u16, lsp: &[u16]) -> bool {
    if flags & SYN != 0 && flags & ACK == 0 {
        return false;
    }
    if !lsp.contains(&sport) {
        return false;
    }
    if lsp.contains(&dport) {
        flags & SYN == 0 && sport < dport
    } else {
        true
    }
}

impl Conn {
    /// A connection created by a packet from `src` to `dst` at `ts` (section 3).
    pub fn new(
        src: SockAddr,
        dst: SockAddr,
        flip: bool,
        ts: i64,
        network_time: i64,
        tunneled: bool,
    ) -> Conn {
        let mut c = Conn {
            orig: src,
            resp: dst,
            ep: [Endpoint::default(), Endpoint::default()],
            hist_seen: 0,
            history: String::new(),
            start_time: ts,
            last_time: ts,
            is_active: true,
            is_partial: false,
            first_packet_seen: 0,
            close_deferred: false,
            deferred_gen_event: false,
            missed_bytes: 0,
            inactivity_timeout: 0,
            tunneled,
            analyzer_generation: 0,
            inactivity_generation: 0,
            requests: Vec::new(),
            established_event: false,
        };
        if flip {
            c.flip_roles();
        }
        c.add_timer(TimerKind::Expire, network_time.saturating_add(FIVE_SECS));
        c.set_inactivity_timeout(INITIAL_INACTIVITY);
        c
    }

    fn add_timer(&mut self, kind: TimerKind, at: i64) {
        let generation = match kind {
            TimerKind::Inactivity => self.inactivity_generation,
            _ => self.analyzer_generation,
        };
        self.requests.push(TimerRequest {
            kind,
            at,
            generation,
        });
    }

    fn cancel_analyzer_timers(&mut self) {
        self.analyzer_generation = self.analyzer_generation.wrapping_add(1);
    }

    fn set_inactivity_timeout(&mut self, timeout: i64) {
        if timeout == self.inactivity_timeout {
            return;
        }
        self.inactivity_generation = self.inactivity_generation.wrapping_add(1);
        if timeout > 0 {
            self.add_timer(
                TimerKind::Inactivity,
                self.last_time.saturating_add(timeout),
            );
        }
        self.inactivity_timeout = timeout;
    }

    /// Swaps originator and responder (section 4.2): addresses, endpoints with everything
    /// they carry, counters; appends `^`; the seen-bits stay with the positions.
    fn flip_roles(&mut self) {
        std::mem::swap(&mut self.orig, &mut self.resp);
        self.ep.swap(0, 1);
        let f = self.first_packet_seen;
        self.first_packet_seen = (if f & FIRST_ORIG != 0 { FIRST_RESP } else { 0 })
            | (if f & FIRST_RESP != 0 { FIRST_ORIG } else { 0 });
        self.is_partial = false;
        self.history.push('^');
    }

    fn letter(i: usize, code: char) -> char {
        if i == 0 {
            code
        } else {
            code.to_ascii_lowercase()
        }
    }

    /// Records `code` for endpoint `i` unless its once-only bit is set; true if it was set.
    fn check_history(&mut self, i: usize, mask: u32, code: char) -> bool {
        let mask = if i == 0 { mask } else { mask << 16 };
        if self.hist_seen & mask == 0 {
            self.hist_seen |= mask;
            self.history.push(Self::letter(i, code));
            false
        } else {
            true
        }
    }

    /// `A`/`D`: a connection that so far is one SYN-ACK from the originator is flipped first
    /// (section 4.2, rule 1).
    fn check_history_data_or_ack(&mut self, i: &mut usize, mask: u32, code: char) {
        if self.history == "H" {
            self.flip_roles();
            *i = 1 - *i;
            self.history = "^h".to_string();
        }
        self.check_history(*i, mask, code);
    }

    fn scaled_letter(&mut self, i: usize, code: char, which: fn(&mut Endpoint) -> &mut Scaled) {
        if which(&mut self.ep[i]).hit() {
            self.history.push(Self::letter(i, code));
        }
    }

    fn set_state(&mut self, i: usize, new: EpState) {
        let old = self.ep[i].state;
        if new == old {
            return;
        }
        if !is_handshake(new) && is_handshake(old) && is_handshake(self.ep[1 - i].state) {
            self.set_inactivity_timeout(TCP_INACTIVITY);
        }
        self.ep[i].prev_state = old;
        self.ep[i].state = new;
    }

    /// Payload size of endpoint `i` from its sequence numbers (section 7.2).
    pub fn size(&self, i: usize) -> u64 {
        let e = &self.ep[i];
        let peer = &self.ep[1 - i];
        if e.prev_state == EpState::SynSent
            && e.state == EpState::Reset
            && peer.state == EpState::Inactive
            && !e.no_data_acked()
        {
            return 0;
        }
        let (last, ack) = (e.last64(), e.ack64());
        let mut size = last.max(ack).wrapping_sub(e.start_seq as u64);
        // The SYN octet, then the FIN octet, are not payload.
        size = size.saturating_sub(1);
        if e.fin_cnt > 0 && size != 0 {
            size -= 1;
        }
        size
    }

    pub fn conn_state(&self) -> ConnState {
        derive_conn_state(
            self.ep[0].state,
            self.ep[1].state,
            self.size(0),
            self.size(1),
            &self.history,
        )
    }

    /// Reuse test for a packet of this 4-tuple (section 6.1).
    pub fn is_reuse(&self, tcp: &[u8]) -> bool {
        let (Some(&off), Some(&flags)) = (tcp.get(12), tcp.get(13)) else {
            return false;
        };
        if off >> 4 < 5 || flags & SYN == 0 {
            return false;
        }
        let mut compared = 0;
        if flags & ACK != 0 {
            if self.ep[0].state != EpState::Inactive {
                return false;
            }
            compared = 1;
        }
        if !(self.ep[0].did_close || self.ep[1].did_close) {
            let base = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            if base == self.ep[compared].start32() {
                return false;
            }
            if flags & ACK == 0
                && self.ep[compared].state == EpState::SynAckSent
                && self.ep[1].state == EpState::Inactive
                && base == self.ep[1].start32()
            {
                return false;
            }
        }
        true
    }

    /// Handles one TCP packet of this connection (section 1 step 4 and the steps a-l).
    pub fn deliver(
        &mut self,
        seg: &TcpSeg<'_>,
        is_orig: bool,
        ts: i64,
        ignore_checksums: bool,
        lsp: &[u16],
    ) {
        let tcp = seg.tcp;
        let hdr_len = usize::from(tcp[12] >> 4) * 4;
        if hdr_len < 20 || hdr_len > seg.seg_len || hdr_len > tcp.len() {
            return;
        }
        let len = seg.seg_len - hdr_len;
        let remaining = tcp.len() - hdr_len;
        let mut ei = if is_orig { 0 } else { 1 };
        if !ignore_checksums
            && remaining >= len
            && !transport_checksum_ok(seg.src, seg.dst, 6, &tcp[..seg.seg_len])
        {
            self.scaled_letter(ei, 'C', |e| &mut e.chk);
            return;
        }
        let flags = tcp[13];
        let (syn, fin, rst, ack) = (
            flags & SYN != 0,
            flags & FIN != 0,
            flags & RST != 0,
            flags & ACK != 0,
        );
        self.set_partial_status(syn, ack, ei == 0);
        let base_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let ack_seq = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        let window = u16::from_be_bytes([tcp[14], tcp[15]]);
        // Sequence space of the segment; a RST's payload is not part of the stream.
        let len32 = len as u32;
        let seg_space = if rst { 0 } else { len32 } + u32::from(syn) + u32::from(fin);
        let seq_one_past = base_seq.wrapping_add(seg_space);

        self.init_endpoint(ei, syn, base_seq, seq_one_past);
        let e = &self.ep[ei];
        let (rel_seq, seq_underflow) = e.relative(base_seq, e.last_seq, e.seq_wraps);

        self.update_history(&mut ei, syn, fin, rst, ack, rel_seq, len32);
        // Zero window (W/w), unless with or after a RST or after the peer's FIN.
        if window == 0
            && !rst
            && self.ep[1 - ei].state != EpState::Closed
            && self.ep[ei].state != EpState::Reset
        {
            self.scaled_letter(ei, 'W', |e| &mut e.win0);
        }
        if !(self.ep[0].did_close && self.ep[1].did_close) {
            self.last_time = ts;
        }
        if fin {
            let e = &mut self.ep[ei];
            e.fin_cnt = e.fin_cnt.saturating_add(1);
            e.fin_seq = rel_seq.wrapping_add(u64::from(seg_space));
        }
        if rst {
            let e = &mut self.ep[ei];
            e.rst_cnt = e.rst_cnt.saturating_add(1);
        }

        let mut rel_ack = 0u64;
        if ack {
            let pi = 1 - ei;
            if self.ep[pi].state == EpState::Inactive {
                rel_ack = 1;
                let p = &mut self.ep[pi];
                let start = ack_seq.wrapping_sub(1);
                p.init_seqs(start, start);
            } else {
                let p = &self.ep[pi];
                let (r, underflow) = p.relative(ack_seq, p.ack_seq, p.ack_wraps);
                if !underflow {
                    rel_ack = r;
                    if !rst {
                        let p = &mut self.ep[pi];
                        let d = seq_delta(ack_seq, p.ack_seq);
                        if !(ack_seq == 0 && d > TOO_LARGE_SEQ_DELTA) && d > 0 {
                            p.update_ack(ack_seq);
                        }
                    }
                }
            }
        }

        let delta_last = self.update_last_seq(ei, seq_one_past, syn, fin, rst, len32);
        let (do_close, gen_event) = self.update_state_machine(
            &mut ei, ts, base_seq, len32, delta_last, is_orig, syn, fin, rst, ack,
        );
        if ack {
            self.ack_received(1 - ei, rel_ack);
        }
        // The first-packet bits follow the role the packet had when it arrived.
        if is_orig {
            self.first_packet_seen |= FIRST_ORIG;
        } else {
            self.first_packet_seen |= FIRST_RESP;
        }
        let rel_data_seq = if syn {
            rel_seq.wrapping_add(1)
        } else {
            rel_seq
        };
        if len > 0 && remaining >= len && !rst && !seq_underflow {
            self.data_sent(ei, rel_data_seq, u64::from(len32));
        }
        self.check_eof(ei);
        if do_close {
            self.connection_closed(ei, gen_event);
        }
        let e = &mut self.ep[ei];
        e.pkts += 1;
        e.ip_bytes += seg.ip_bytes;
        if std::mem::take(&mut self.established_event) {
            self.on_established(lsp);
        }
    }

    /// `inactivity.zeek`, run after the packet that established the connection: interactive
    /// services get an hour of inactivity. A half-established connection (originator never
    /// seen) uses the originator's port if only that one is a likely server port.
    fn on_established(&mut self, lsp: &[u16]) {
        let mut port = self.resp.port;
        if self.ep[0].state == EpState::Inactive
            && !lsp.contains(&port)
            && lsp.contains(&self.orig.port)
        {
            port = self.orig.port;
        }
        if INTERACTIVE_PORTS.contains(&port) {
            self.set_inactivity_timeout(INTERACTIVE_INACTIVITY);
        }
    }

    fn set_partial_status(&mut self, syn: bool, ack: bool, as_orig: bool) {
        if as_orig {
            if self.first_packet_seen & FIRST_ORIG == 0 {
                self.is_partial = !syn || ack;
            }
        } else if self.first_packet_seen & FIRST_RESP == 0 && !self.is_partial {
            self.is_partial = !syn;
        }
    }

    fn init_endpoint(&mut self, i: usize, syn: bool, first: u32, last: u32) {
        let e = &mut self.ep[i];
        match e.state {
            EpState::Inactive => {
                if syn {
                    e.init_seqs(first, last);
                } else {
                    // As though a SYN had been seen; the first packet is not a duplicate.
                    e.init_seqs(first.wrapping_sub(1), first);
                }
            }
            EpState::SynSent | EpState::SynAckSent => {
                if syn && first != e.start32() {
                    e.init_seqs(first, last);
                }
            }
            EpState::Established | EpState::Partial => {
                if syn {
                    e.init_seqs(first, last);
                }
            }
            EpState::Reset => {
                if syn && e.prev_state == EpState::Inactive {
                    e.init_seqs(first, last);
                }
            }
            EpState::Closed => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn update_history(
        &mut self,
        ei: &mut usize,
        syn: bool,
        fin: bool,
        rst: bool,
        ack: bool,
        rel_seq: u64,
        len: u32,
    ) {
        let bits = u8::from(syn) + u8::from(fin) + u8::from(rst);
        let i = *ei;
        if bits > 1 {
            if fin && rst {
                self.check_history(i, HIST_FIN_RST, 'I');
            } else {
                self.check_history(i, HIST_MULTI_FLAG, 'Q');
            }
        } else if bits == 1 {
            if syn {
                let code = if ack { 'H' } else { 'S' };
                if self.check_history(i, HIST_SYN, code) && rel_seq != self.ep[i].hist_last_syn {
                    self.history.push(Self::letter(i, code));
                }
                self.ep[i].hist_last_syn = rel_seq;
            }
            if fin {
                let at = rel_seq.wrapping_add(u64::from(len));
                if self.check_history(i, HIST_FIN, 'F') && at != self.ep[i].hist_last_fin {
                    self.history.push(Self::letter(i, 'F'));
                }
                self.ep[i].hist_last_fin = at;
            }
            if rst {
                if self.check_history(i, HIST_RST, 'R') && rel_seq != self.ep[i].hist_last_rst {
                    self.history.push(Self::letter(i, 'R'));
                }
                self.ep[i].hist_last_rst = rel_seq;
            }
        } else if len > 0 {
            self.check_history_data_or_ack(ei, HIST_DATA, 'D');
        } else if ack {
            self.check_history_data_or_ack(ei, HIST_ACK, 'A');
        }
    }

    /// Advances the endpoint's highest sequence or notes a retransmission (`T`/`t`).
    fn update_last_seq(
        &mut self,
        i: usize,
        last: u32,
        syn: bool,
        fin: bool,
        rst: bool,
        len: u32,
    ) -> i32 {
        let e = &mut self.ep[i];
        let delta = seq_delta(last, e.last_seq);
        if (syn || rst) && !(-TOO_LARGE_SEQ_DELTA..=TOO_LARGE_SEQ_DELTA).contains(&delta) {
            // Absurd jump on a SYN or RST: ignored.
        } else if fin && e.last_seq == e.start32().wrapping_add(1) {
            e.update_last(last);
        } else if e.state == EpState::Reset {
            // Nothing after a RST is trusted.
        } else if delta > 0 {
            e.update_last(last);
        } else if len > 0 {
            self.scaled_letter(i, 'T', |e| &mut e.rxmt);
        }
        delta
    }

    #[allow(clippy::too_many_arguments)]
    fn update_state_machine(
        &mut self,
        ei: &mut usize,
        ts: i64,
        base_seq: u32,
        len: u32,
        _delta_last: i32,
        is_orig: bool,
        syn: bool,
        fin: bool,
        rst: bool,
        ack: bool,
    ) -> (bool, bool) {
        let mut do_close = false;
        let mut gen_event = false;
        let i = *ei;
        match self.ep[i].state {
            EpState::Inactive => {
                if syn {
                    if is_orig {
                        self.set_state(
                            i,
                            if ack {
                                EpState::SynAckSent
                            } else {
                                EpState::SynSent
                            },
                        );
                        self.add_timer(TimerKind::Attempt, ts.saturating_add(FIVE_SECS));
                    } else {
                        if !ack
                            && self.ep[1 - *ei].state == EpState::SynAckSent
                            && base_seq == self.ep[*ei].start32()
                        {
                            // A SYN-ACK and its SYN seen in reverse order.
                            self.is_partial = false;
                            self.flip_roles();
                            *ei = 1 - *ei;
                            self.set_state(1 - *ei, EpState::Established);
                            self.first_packet_seen |= FIRST_ORIG;
                        }
                        let (e, p) = (*ei, 1 - *ei);
                        if self.ep[p].state == EpState::SynSent {
                            self.set_state(p, EpState::Established);
                        }
                        self.set_state(e, EpState::Established);
                        if self.ep[p].state != EpState::Partial {
                            self.established_event = true;
                        }
                    }
                }
                let (e, p) = (*ei, 1 - *ei);
                if fin {
                    self.set_state(e, EpState::Closed);
                    do_close = true;
                    gen_event = true;
                }
                if rst {
                    self.set_state(e, EpState::Reset);
                    let is_reject = if is_orig {
                        self.ep[p].state == EpState::Established
                    } else {
                        matches!(self.ep[p].state, EpState::SynSent | EpState::SynAckSent)
                    };
                    do_close = true;
                    gen_event = !is_reject;
                }
                if self.ep[e].state == EpState::Inactive {
                    if !is_orig && len == 0 && self.ep[0].state == EpState::SynSent {
                        // An early ACK of the SYN does not make the responder active.
                    } else if ack && self.ep[p].state == EpState::Established {
                        self.set_state(e, EpState::Established);
                        self.is_partial = false;
                        self.first_packet_seen |= if is_orig { FIRST_ORIG } else { FIRST_RESP };
                    } else {
                        self.set_state(e, EpState::Partial);
                    }
                }
            }
            EpState::SynSent | EpState::SynAckSent => {
                if fin {
                    self.set_state(i, EpState::Closed);
                    do_close = true;
                    gen_event = true;
                }
                if rst {
                    self.set_state(i, EpState::Reset);
                    self.is_active = false;
                    do_close = true;
                }
            }
            EpState::Established | EpState::Partial => {
                let p = 1 - i;
                if syn
                    && self.ep[i].state == EpState::Partial
                    && self.ep[p].state == EpState::Inactive
                    && !ack
                {
                    self.set_state(i, EpState::SynSent);
                }
                if fin && !rst {
                    self.set_state(i, EpState::Closed);
                    if self.ep[p].state == EpState::Reset
                        && self.ep[p].prev_state == EpState::Closed
                    {
                        // FIN then RST from the peer was a normal close after all.
                        self.set_state(p, EpState::Closed);
                    }
                    do_close = true;
                    gen_event = true;
                }
                if rst {
                    self.set_state(i, EpState::Reset);
                    do_close = true;
                    if self.ep[p].state != EpState::Reset
                        || self.ep[p].prev_state != EpState::Established
                    {
                        self.is_active = false;
                    }
                }
            }
            EpState::Closed => {
                if rst && self.ep[1 - i].state != EpState::Closed {
                    self.set_state(i, EpState::Reset);
                    if !self.ep[i].did_close {
                        do_close = true;
                    }
                }
            }
            EpState::Reset => {}
        }
        (do_close, gen_event)
    }

    // ----- content bookkeeping (section 5.4 `G`, 6.2, 7.4) -----

    fn is_clean(e: &Endpoint) -> bool {
        e.state == EpState::Established
            || (e.state == EpState::Closed && e.prev_state == EpState::Established)
    }

    fn gap(&mut self, i: usize, len: u64) {
        if Self::is_clean(&self.ep[i]) && Self::is_clean(&self.ep[1 - i]) {
            self.scaled_letter(i, 'G', |e| &mut e.gap);
            self.missed_bytes = self.missed_bytes.saturating_add(len);
        }
    }

    fn data_sent(&mut self, i: usize, seq: u64, len: u64) {
        if self.ep[i].reasm.skip || len == 0 {
            return;
        }
        let upper = seq.saturating_add(len);
        let r = &mut self.ep[i].reasm;
        if upper > r.trim {
            r.insert(seq.max(r.trim), upper);
            self.block_inserted(i);
        }
        let e = &mut self.ep[i];
        if (e.no_data_acked() && e.reasm.undelivered_bytes() > MAX_ABOVE_HOLE_WITHOUT_ACKS)
            || e.reasm.buffered > EXCESSIVE_DATA_WITHOUT_ACKS
        {
            e.reasm.clear();
            e.reasm.skip = true;
        }
    }

    fn block_inserted(&mut self, i: usize) {
        let before = self.ep[i].reasm.last_reassem;
        self.ep[i].reasm.deliver();
        if self.ep[i].reasm.last_reassem == before {
            // The new data does not continue the stream (above a hole, or old).
            return;
        }
        if self.ep[i].no_data_acked() && self.size(i) > MAX_INITIAL_WINDOW {
            // Sending much without any ACK: the peer's ACKs are presumably not in the capture.
            let to = self.ep[i].reasm.last_reassem;
            self.trim_to_seq(i, to);
        }
    }

    fn trim_to_seq(&mut self, i: usize, seq: u64) {
        if seq > self.ep[i].reasm.last_reassem {
            self.undelivered(i, seq);
        }
        let r = &mut self.ep[i].reasm;
        r.trim_front(seq);
        let first_continues = r.blocks.keys().next() == Some(&r.last_reassem);
        if first_continues {
            self.block_inserted(i);
        }
        let r = &mut self.ep[i].reasm;
        if seq > r.trim {
            r.trim = seq;
        }
    }

    /// The peer acknowledged up to `up_to` although it was never delivered: content gaps.
    fn undelivered(&mut self, i: usize, up_to: u64) {
        if up_to <= 2 && self.is_partial {
            // The faked SYN octet (or a keep-alive) of a partial connection.
            return;
        }
        if !self.ep[i].reasm.skip {
            loop {
                let r = &self.ep[i].reasm;
                let next = r
                    .blocks
                    .range(r.last_reassem..up_to.max(r.last_reassem))
                    .next()
                    .map(|(&s, _)| s);
                let Some(s) = next else { break };
                let gap_len = s - self.ep[i].reasm.last_reassem;
                self.gap(i, gap_len);
                self.ep[i].reasm.last_reassem = s;
                self.block_inserted(i);
            }
            let last = self.ep[i].reasm.last_reassem;
            if up_to > last {
                self.gap(i, up_to - last);
            }
        }
        let r = &mut self.ep[i].reasm;
        if up_to > r.last_reassem {
            r.last_reassem = up_to;
        }
    }

    /// The peer acknowledged endpoint `i`'s data up to `seq` (relative).
    fn ack_received(&mut self, i: usize, seq: u64) {
        let e = &self.ep[i];
        let mut seq = seq;
        if e.fin_cnt > 0 && seq >= e.fin_seq {
            seq = e.fin_seq.wrapping_sub(1);
        }
        if seq <= e.reasm.trim {
            return;
        }
        self.trim_to_seq(i, seq);
        self.check_eof(i);
    }

    /// Whether endpoint `i` still has data to deliver before its close can be reported.
    fn data_pending(&self, i: usize) -> bool {
        let e = &self.ep[i];
        if e.reasm.skip {
            return false;
        }
        let delivered = (e.start_seq as u64).wrapping_add(e.reasm.last_reassem);
        let last = e.last64();
        if last < delivered {
            return false;
        }
        if delivered != last.wrapping_sub(1) && delivered != last {
            return true;
        }
        e.state != EpState::Reset && !self.ep[1 - i].reasm.blocks.is_empty()
    }

    fn check_eof(&mut self, i: usize) {
        let e = &self.ep[i];
        if !e.reasm.did_eof
            && (e.fin_cnt > 0 || matches!(e.state, EpState::Closed | EpState::Reset))
            && !self.data_pending(i)
        {
            self.ep[i].reasm.did_eof = true;
            if self.close_deferred {
                let g = self.deferred_gen_event;
                self.connection_closed(i, g);
                self.close_deferred = false;
            }
        }
    }

    /// Endpoint `i` closed (FIN or RST changed its state): report it (section 6.2).
    fn connection_closed(&mut self, i: usize, gen_event: bool) {
        if self.data_pending(i) {
            self.close_deferred = true;
            if !self.deferred_gen_event {
                self.deferred_gen_event = gen_event;
            }
            return;
        }
        self.close_deferred = false;
        if self.ep[i].did_close {
            return;
        }
        self.ep[i].did_close = true;
        let (e, p) = (&self.ep[i], &self.ep[1 - i]);
        let complete = e.state == EpState::Reset || p.did_close || p.state == EpState::Inactive;
        if complete {
            if e.prev_state != EpState::Inactive || p.state != EpState::Inactive {
                let mut g = gen_event;
                if self.deferred_gen_event {
                    g = true;
                    self.deferred_gen_event = false;
                }
                if g {
                    self.is_active = false;
                }
            }
            self.cancel_analyzer_timers();
            self.add_timer(TimerKind::Delete, self.last_time.saturating_add(FIVE_SECS));
        } else if e.prev_state != EpState::Inactive {
            self.add_timer(
                TimerKind::Expire,
                self.last_time.saturating_add(SESSION_TIMER),
            );
        }
    }

    /// A timer of this connection fired at network time `now`; true if the connection ends.
    pub fn fire(&mut self, kind: TimerKind, now: i64) -> bool {
        let (o, r) = (self.ep[0].state, self.ep[1].state);
        match kind {
            TimerKind::Attempt => {
                if self.is_active
                    && matches!(o, EpState::SynSent | EpState::SynAckSent)
                    && r == EpState::Inactive
                {
                    self.is_active = false;
                    return true;
                }
                false
            }
            TimerKind::Expire => {
                if !self.is_active {
                    return false;
                }
                if self.last_time.saturating_add(FIVE_SECS) < now {
                    let (oc, rc) = (self.ep[0].did_close, self.ep[1].did_close);
                    if (oc || rc)
                        && ((oc && rc)
                            || o == EpState::Reset
                            || r == EpState::Reset
                            || o == EpState::Inactive
                            || r == EpState::Inactive)
                    {
                        self.is_active = false;
                        return true;
                    }
                    if o == EpState::Inactive && r == EpState::Inactive {
                        return true;
                    }
                }
                self.add_timer(TimerKind::Expire, now.saturating_add(SESSION_TIMER));
                false
            }
            TimerKind::Delete => true,
            TimerKind::Inactivity => {
                if self.inactivity_timeout <= 0 {
                    return false;
                }
                let deadline = self.last_time.saturating_add(self.inactivity_timeout);
                if deadline <= now {
                    return true;
                }
                self.add_timer(TimerKind::Inactivity, deadline);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_state_table() {
        use EpState::*;
        let s = |o, r, os, rs, h| derive_conn_state(o, r, os, rs, h).as_str();
        assert_eq!(s(SynSent, Reset, 0, 0, "Sr"), "REJ");
        assert_eq!(s(Reset, Reset, 0, 0, "ShR"), "REJ");
        assert_eq!(s(Reset, Reset, 5, 0, "ShADR"), "RSTR");
        assert_eq!(s(Partial, Reset, 0, 0, "Dr"), "RSTRH");
        assert_eq!(s(Inactive, Reset, 0, 0, "r"), "RSTRH");
        assert_eq!(s(Established, Reset, 3, 3, "ShADadr"), "RSTR");
        assert_eq!(s(Reset, Inactive, 0, 0, "SaR"), "RSTOS0");
        assert_eq!(s(Reset, Partial, 0, 0, "SdtR"), "RSTOS0");
        assert_eq!(s(Reset, Inactive, 0, 0, "SaFR"), "OTH");
        assert_eq!(s(Reset, Inactive, 0, 0, "SAR"), "OTH");
        assert_eq!(s(Reset, Inactive, 0, 0, "SDR"), "RSTOS0");
        assert_eq!(s(Reset, Inactive, 0, 0, "R"), "OTH");
        assert_eq!(s(Reset, Inactive, 0, 0, "^SR"), "RSTOS0");
        assert_eq!(s(Reset, Established, 1, 1, "ShADR"), "RSTO");
        assert_eq!(s(Closed, Closed, 1, 1, "ShADFf"), "SF");
        assert_eq!(s(Closed, Inactive, 1, 0, "DF"), "SH");
        assert_eq!(s(Closed, Partial, 1, 0, "DdF"), "SH");
        assert_eq!(s(Closed, Established, 1, 0, "ShAF"), "S2");
        assert_eq!(s(Partial, Closed, 1, 0, "^hdaf"), "SHR");
        assert_eq!(s(Established, Closed, 1, 0, "ShAf"), "S3");
        assert_eq!(s(SynSent, Inactive, 0, 0, "S"), "S0");
        assert_eq!(s(Established, Established, 0, 0, "ShA"), "S1");
        assert_eq!(s(Partial, Partial, 0, 0, "Dd"), "OTH");
        assert_eq!(s(SynAckSent, Inactive, 0, 0, "H"), "OTH");
    }

    #[test]
    fn rstos0_pattern() {
        assert!(rstos0_history("SR"));
        assert!(rstos0_history("Sr^R"));
        assert!(rstos0_history("SdatR"));
        assert!(!rstos0_history("SaHR"));
        assert!(!rstos0_history("^^SR"));
        assert!(!rstos0_history("hSR"));
        assert!(!rstos0_history("S"));
    }

    #[test]
    fn scaled_letters_at_powers_of_ten() {
        let mut s = Scaled::default();
        let hits: Vec<u32> = (1..=1000).filter(|_| s.hit()).collect::<Vec<_>>();
        assert_eq!(hits.len(), 4);
        let mut s = Scaled::default();
        let at: Vec<u32> = (1..=1000u32).filter(|_| s.hit()).collect();
        assert_eq!(at, vec![1, 10, 100, 1000]);
    }

    #[test]
    fn creation_flip_heuristic() {
        let lsp = super::super::DEFAULT_LIKELY_SERVER_PORTS;
        const SYNACK: u8 = SYN | ACK;
        // Pure SYN: never.
        assert!(!flip_at_creation(SYN, 80, 40000, lsp));
        // Server port as source, client port as destination.
        assert!(flip_at_creation(ACK, 80, 40000, lsp));
        assert!(flip_at_creation(SYNACK, 443, 40000, lsp));
        // Neither port known: keep.
        assert!(!flip_at_creation(ACK, 40001, 40000, lsp));
        // Destination known only: keep.
        assert!(!flip_at_creation(ACK, 40000, 80, lsp));
        // Both known: only without SYN, and only towards the higher port.
        assert!(flip_at_creation(ACK, 80, 8080, lsp));
        assert!(!flip_at_creation(ACK, 8080, 80, lsp));
        assert!(!flip_at_creation(SYNACK, 80, 8080, lsp));
    }

    #[test]
    fn reassembly_ranges() {
        let mut r = Reassembly::default();
        r.insert(5, 10);
        r.deliver();
        assert_eq!(r.last_reassem, 1);
        r.insert(1, 7);
        assert_eq!(
            r.blocks.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
            vec![(1, 5), (5, 10)]
        );
        r.deliver();
        assert_eq!(r.last_reassem, 10);
        r.insert(8, 20);
        r.deliver();
        assert_eq!(r.last_reassem, 20);
    }
}
