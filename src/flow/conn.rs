//! One TCP connection: two endpoint state machines driven by the segments each side sent.
//!
//! A segment from S to R is applied in this order: RST (nothing else in it counts), then
//! what S's sending says about S (SYN, SYN-ACK, FIN), then what R receives (the ACK of its
//! SYN or FIN, the FIN). Receiving is taken to happen when the capture saw the packet, which
//! is exact on the host that captured and close to it elsewhere; where a later packet
//! proves otherwise (a FIN that did not acknowledge the crossing FIN, a SYN-ACK sent again
//! after its ACK) the state is corrected by an explicit event, never silently.

use crate::decode::{Segment, SockAddr, flags};
use crate::tcp::TcpState::{self, *};
use crate::tcp::machine::{Event, next_state};
use crate::tcp::seq::{self, RstVerdict};
use crate::time::{Dur, OptTs, Ts};

/// Which end of the connection: the client sent the first SYN (or is guessed to have).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// Settings the state machine's timers and inferences use.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// 2MSL: how long TIME_WAIT lasts (Linux: 60 s, fixed).
    pub time_wait: Dur,
    /// At most this many connections tracked at once; the least recently active are evicted
    /// to make room (`--max-conns`). `None`: no limit.
    pub max_conns: Option<usize>,
    /// How long a connection may stay silent, by state, before tracking stops.
    pub idle: IdleTimeouts,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            time_wait: Dur::from_millis(60_000),
            max_conns: None,
            idle: IdleTimeouts::default(),
        }
    }
}

/// Silence after which a connection that is not over stops being tracked: its record ends
/// with its states as they were (marked expired), and a later packet on its 4-tuple starts
/// a connection picked up mid-stream. A connection is timed by its most open endpoint.
/// Connections that are over (both sides CLOSED or in TIME_WAIT) end 2MSL after their last
/// packet, the same rule that decides when a packet on their 4-tuple is a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// SYN_SENT, SYN_RECV: an unanswered or unfinished handshake. Linux gives up a SYN after
    /// about 127 s (6 retries) and a SYN-ACK after about 63 s; this is the backstop.
    pub handshake: Dur,
    /// ESTABLISHED, CLOSE_WAIT, FIN_WAIT2: states an application can hold for ever (an idle
    /// connection without keepalive, a CLOSE_WAIT leak), so the longest.
    pub established: Dur,
    /// FIN_WAIT1, CLOSING, LAST_ACK: a FIN is in flight and the kernel retransmits it;
    /// Linux gives up within minutes (tcp_retries2, tcp_orphan_retries).
    pub closing: Dur,
}

impl Default for IdleTimeouts {
    fn default() -> Self {
        IdleTimeouts {
            handshake: Dur::from_millis(180_000),
            established: Dur::from_millis(24 * 3600 * 1000),
            closing: Dur::from_millis(600_000),
        }
    }
}

impl IdleTimeouts {
    /// How long an endpoint in `state` may stay silent; `None` for states that end 2MSL
    /// after the last packet (CLOSED, TIME_WAIT, LISTEN).
    pub fn for_state(&self, state: TcpState) -> Option<Dur> {
        match state {
            SynSent | SynRecv => Some(self.handshake),
            Established | CloseWait | FinWait2 => Some(self.established),
            FinWait1 | Closing | LastAck => Some(self.closing),
            Closed | Listen | TimeWait => None,
        }
    }
}

/// How a TIME_WAIT ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeWaitEnd {
    /// 2MSL passed.
    Expired,
    /// A new SYN took the 4-tuple over.
    Reused,
    /// An in-sequence RST killed it (Linux's TIME_WAIT assassination).
    Reset,
    /// The capture ended first: the duration is a lower bound.
    CaptureEnded,
}

impl TimeWaitEnd {
    pub fn name(self) -> &'static str {
        match self {
            TimeWaitEnd::Expired => "expired",
            TimeWaitEnd::Reused => "reused",
            TimeWaitEnd::Reset => "reset",
            TimeWaitEnd::CaptureEnded => "capture_ended",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWait {
    pub start: Ts,
    pub end: Option<(Ts, TimeWaitEnd)>,
}

/// Where an endpoint's TIME_WAIT (`Connection::time_wait`) is kept. A connection has one
/// place for it in line, taken by the first side to enter TIME_WAIT (most connections have
/// one at most); the other side's, after a simultaneous close, is in the rare part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeWaitAt {
    None,
    /// In the connection's place, with how it ended (its time there too), if it has.
    InLine(Option<TimeWaitEnd>),
    Rare,
}

/// One recorded state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub ts: Ts,
    pub conn_id: u64,
    pub side: Side,
    pub from: TcpState,
    pub to: TcpState,
    pub event: Event,
    /// Number of the packet (1-based, over all input) that caused it; 0 for timers.
    pub packet: u64,
    /// That packet's TCP facts (filled in by the pipeline when transitions are recorded).
    pub cause: Option<Segment>,
    /// The connection's 4-tuple, to find its record while it is live.
    pub key: crate::flow::FlowKey,
}

/// The times of a connection's FINs, earliest first (without a `Vec`: it is asked for once
/// a row).
#[derive(Clone, Copy, Debug)]
pub struct FinTimes {
    times: [Ts; 2],
    len: usize,
}

impl FinTimes {
    pub fn as_slice(&self) -> &[Ts] {
        &self.times[..self.len]
    }
    pub fn first(&self) -> Option<&Ts> {
        self.as_slice().first()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What is known of one endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SockAddr,
    pub state: TcpState,
    pub state_since: Ts,
    /// Which of the sequence numbers and options below are known (`KNOWN_*` bits): they are
    /// plain numbers plus this byte, where `Option<u32>` takes 8 bytes each.
    known: u8,
    /// Whether it sent a SYN, a SYN-ACK, and where the time of the first is kept (`SENT_*`
    /// and `FIRST_SYN_*` bits; see `Connection::syn_first`).
    syn_sent: u8,
    /// Its window-scale option (see `wscale()`).
    wscale: u8,
    /// Last window it advertised, unscaled.
    pub window: u16,
    /// Initial sequence number, from its SYN or SYN-ACK (see `isn()`); until that is known,
    /// the first sequence number seen from it (see `seq_base()`). The first sequence number
    /// is only taken while the ISN is unknown, and is only wanted then.
    isn_or_first: u32,
    /// One past the highest sequence number it has sent (see `snd_nxt()`).
    snd_nxt: u32,
    /// Sequence number its FIN occupies (see `fin_seq()`).
    fin_seq: u32,
    pub fin_time: OptTs,
    pub packets: u64,
    /// Payload bytes it sent, counted by sequence space so retransmissions count once.
    pub bytes: u64,
    /// Its TIME_WAIT, if it entered one: see `Connection::time_wait`.
    time_wait: TimeWaitAt,
    /// Its state changed by an inference (a timeout no packet shows), not by a packet.
    pub inferred: bool,
}

/// `Endpoint::known` bits.
const KNOWN_ISN: u8 = 1;
const KNOWN_FIRST_SEQ: u8 = 2;
const KNOWN_SND_NXT: u8 = 4;
const KNOWN_FIN_SEQ: u8 = 8;
const KNOWN_WSCALE: u8 = 16;

/// `Endpoint::syn_sent` bits. The time of an endpoint's first SYN or SYN-ACK is most often
/// the connection's start (the client's SYN) or its `synack_first` (the server's SYN-ACK):
/// then a bit says so, and only other times are kept, in the rare part. Its counts and later
/// sends, if it sent more than one, are out of line too (`SynResends`).
const SENT_SYN: u8 = 1;
const SENT_SYNACK: u8 = 2;
const FIRST_SYN_AT_START: u8 = 4;
const FIRST_SYN_AT_SYNACK: u8 = 8;

/// The SYN and SYN-ACK sends of an endpoint that sent more than one (a retransmission, or a
/// SYN then a SYN-ACK in a simultaneous open): out of line, since most send one at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynResends {
    pub syn_count: u32,
    pub synack_count: u32,
    /// The last send, and the one before it.
    pub last: Ts,
    pub prev: Ts,
    /// Times of its sends, the first included (at most `SYN_TIMES_KEPT`): the retransmission
    /// spacing diagnoses read.
    pub times: Vec<Ts>,
}

impl Endpoint {
    fn new(addr: SockAddr, state: TcpState, ts: Ts) -> Endpoint {
        Endpoint {
            addr,
            state,
            state_since: ts,
            known: 0,
            wscale: 0,
            window: 0,
            isn_or_first: 0,
            snd_nxt: 0,
            fin_seq: 0,
            fin_time: OptTs::NONE,
            syn_sent: 0,
            packets: 0,
            bytes: 0,
            time_wait: TimeWaitAt::None,
            inferred: false,
        }
    }

    fn knows(&self, bit: u8) -> bool {
        self.known & bit != 0
    }

    /// Initial sequence number, from its SYN or SYN-ACK.
    pub fn isn(&self) -> Option<u32> {
        self.knows(KNOWN_ISN).then_some(self.isn_or_first)
    }

    fn set_isn(&mut self, isn: u32) {
        self.isn_or_first = isn;
        self.known |= KNOWN_ISN;
    }

    /// The number its sequence numbers count from: the ISN, or when its SYN was not seen the
    /// first sequence number seen from it (as tcpdump and Wireshark make them relative).
    pub fn seq_base(&self) -> Option<u32> {
        self.knows(KNOWN_ISN | KNOWN_FIRST_SEQ)
            .then_some(self.isn_or_first)
    }

    /// One past the highest sequence number it has sent (SYN and FIN count one each).
    pub fn snd_nxt(&self) -> Option<u32> {
        self.knows(KNOWN_SND_NXT).then_some(self.snd_nxt)
    }

    fn set_snd_nxt(&mut self, n: u32) {
        self.snd_nxt = n;
        self.known |= KNOWN_SND_NXT;
    }

    /// Sequence number its FIN occupies.
    pub fn fin_seq(&self) -> Option<u32> {
        self.knows(KNOWN_FIN_SEQ).then_some(self.fin_seq)
    }

    /// The first sequence number seen from it, wanted only while its ISN is unknown.
    fn set_first_seq(&mut self, first: u32) {
        if !self.knows(KNOWN_ISN) {
            self.isn_or_first = first;
        }
        self.known |= KNOWN_FIRST_SEQ;
    }

    fn set_fin_seq(&mut self, f: u32) {
        self.fin_seq = f;
        self.known |= KNOWN_FIN_SEQ;
    }

    /// Its window-scale option, from its SYN or SYN-ACK.
    pub fn wscale(&self) -> Option<u8> {
        self.knows(KNOWN_WSCALE).then_some(self.wscale)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetInfo {
    pub by: Side,
    pub ts: Ts,
    /// State of the resetting side just before it reset.
    pub sender_state: TcpState,
    /// State of the side that received the reset.
    pub receiver_state: TcpState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// SYN, SYN-ACK and the ACK completing it were all seen.
    Completed,
    /// The SYN was answered by a RST.
    Refused,
    /// No SYN-ACK or RST ever answered the SYN.
    Unanswered,
    /// A SYN-ACK was sent but the handshake never completed.
    NotCompleted,
    /// No SYN seen: the capture started mid-connection.
    NotSeen,
}

impl Handshake {
    pub fn name(self) -> &'static str {
        match self {
            Handshake::Completed => "completed",
            Handshake::Refused => "refused",
            Handshake::Unanswered => "unanswered",
            Handshake::NotCompleted => "not_completed",
            Handshake::NotSeen => "not_seen",
        }
    }
}

/// Counters of segments the model could not use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnAnomalies {
    pub rst_out_of_window: u32,
    pub rst_in_window_not_exact: u32,
    /// Segments the state table had no rule for in the endpoint's state.
    pub unexplained: u32,
    /// Segments seen after both sides had closed (late retransmissions, stray ACKs).
    pub after_close: u32,
}

#[derive(Clone, Debug)]
pub struct Connection {
    pub id: u64,
    /// [client, server]
    pub ends: [Endpoint; 2],
    /// The capture did not see its first SYN.
    pub partial: bool,
    /// Which side is the client was guessed (no SYN or SYN-ACK to tell).
    pub direction_guessed: bool,
    pub start: Ts,
    pub last: Ts,
    pub synack_first: OptTs,
    pub handshake_done: OptTs,
    pub refused: bool,
    pub crossed_fins: bool,
    /// Both sides sent a bare SYN.
    pub simultaneous_open: bool,
    /// The server resent its SYN-ACK after an ACK was seen: ACKs from the client have been
    /// lost on the way (dropped after the capture point), so a bare ACK no longer proves delivery.
    pub handshake_ack_disproven: bool,
    /// What few connections have (a reset, oddities, an early end): out of line, so the
    /// record every connection carries stays small.
    rare: Option<Box<Rare>>,
    /// `superseded_at()` is `time_wait_end`: as most often, a new connection took over the
    /// 4-tuple from a side in TIME_WAIT, which ended then. Other times are in the rare part.
    superseded_at_time_wait_end: bool,
    /// Start and end of the TIME_WAIT kept in line (see `TimeWaitAt`).
    time_wait_start: Ts,
    time_wait_end: Ts,
    /// One socket connected to itself: the same address:port at both ends.
    pub self_connected: bool,
}

/// The part of a connection record few connections need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rare {
    /// The first accepted reset.
    pub reset: Option<ResetInfo>,
    pub anomalies: ConnAnomalies,
    /// Tracking stopped here to make room (`--max-conns`): its states are as of this time.
    pub evicted_at: OptTs,
    /// Tracking stopped here after an idle timeout: its states are as of this time.
    pub expired_at: OptTs,
    /// Ended because a new connection took over its 4-tuple, when not at the end of the
    /// TIME_WAIT kept in line (`Connection::superseded_at`).
    pub superseded_at: OptTs,
    /// First SYN or SYN-ACK time of a side, when not one the record holds anyway
    /// (`FIRST_SYN_AT_*`), [client, server].
    pub syn_first: [OptTs; 2],
    /// FIN retransmissions, [client, server].
    pub fin_retransmits: [u32; 2],
    /// SYN and SYN-ACK sends of a side that sent more than one, [client, server].
    pub syn_resends: [Option<Box<SynResends>>; 2],
    /// The TIME_WAIT of a side whose peer's holds the place in line (`TimeWaitAt::Rare`).
    pub time_wait: Option<TimeWait>,
}

const NOTHING_RARE: Rare = Rare {
    reset: None,
    anomalies: ConnAnomalies {
        rst_out_of_window: 0,
        rst_in_window_not_exact: 0,
        unexplained: 0,
        after_close: 0,
    },
    evicted_at: OptTs::NONE,
    expired_at: OptTs::NONE,
    superseded_at: OptTs::NONE,
    syn_first: [OptTs::NONE, OptTs::NONE],
    fin_retransmits: [0, 0],
    syn_resends: [None, None],
    time_wait: None,
};

/// A place to send transitions when someone wants them (`events`); `None` costs nothing.
pub type TransitionSink<'a> = Option<&'a mut Vec<Transition>>;

impl Connection {
    /// A connection whose first packet is `seg`. Direction: the sender of a SYN is the client,
    /// the sender of a SYN-ACK the server; otherwise guessed from the ports.
    pub fn new(id: u64, seg: &Segment, ts: Ts) -> Connection {
        let syn = seg.has(flags::SYN);
        let ack = seg.has(flags::ACK);
        let (client, server, partial, guessed) = if syn && !ack {
            (seg.src, seg.dst, false, false)
        } else if syn && ack {
            (seg.dst, seg.src, true, false)
        } else if sender_looks_like_server(seg.src.port, seg.dst.port) {
            (seg.dst, seg.src, true, true)
        } else {
            (seg.src, seg.dst, true, true)
        };
        let (client_state, server_state) = if syn && !ack {
            (Closed, Listen)
        } else if syn {
            // The client's SYN was missed: it is waiting for this SYN-ACK.
            (SynSent, Listen)
        } else {
            // Picked up mid-stream: both open until packets say otherwise.
            (Established, Established)
        };
        Connection {
            id,
            ends: [
                Endpoint::new(client, client_state, ts),
                Endpoint::new(server, server_state, ts),
            ],
            partial,
            direction_guessed: guessed,
            start: ts,
            last: ts,
            synack_first: OptTs::NONE,
            handshake_done: OptTs::NONE,
            refused: false,
            crossed_fins: false,
            simultaneous_open: false,
            handshake_ack_disproven: false,
            rare: None,
            superseded_at_time_wait_end: false,
            time_wait_start: Ts(0),
            time_wait_end: Ts(0),
            self_connected: seg.src == seg.dst,
        }
    }

    fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NOTHING_RARE)
    }

    /// The rare part, made when first needed.
    pub fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The first accepted reset, who sent it and in what states.
    pub fn reset(&self) -> Option<ResetInfo> {
        self.rare().reset
    }

    /// Segments the model could not use.
    pub fn anomalies(&self) -> ConnAnomalies {
        self.rare().anomalies
    }

    /// When tracking stopped to make room (`--max-conns`); its states are as of then.
    pub fn evicted_at(&self) -> OptTs {
        self.rare().evicted_at
    }

    /// When tracking stopped after an idle timeout; its states are as of then.
    pub fn expired_at(&self) -> OptTs {
        self.rare().expired_at
    }

    /// When `side` first sent a SYN or SYN-ACK.
    pub fn syn_first(&self, side: Side) -> OptTs {
        let sent = self.ends[side.index()].syn_sent;
        if sent & FIRST_SYN_AT_START != 0 {
            self.start.into()
        } else if sent & FIRST_SYN_AT_SYNACK != 0 {
            self.synack_first
        } else {
            self.rare().syn_first[side.index()]
        }
    }

    /// Sets `syn_first`: a bit if it is a time the record holds anyway (neither `start` nor
    /// `synack_first` changes once set), else in the rare part.
    fn set_syn_first(&mut self, side: Side, ts: Ts) {
        let i = side.index();
        self.ends[i].syn_sent &= !(FIRST_SYN_AT_START | FIRST_SYN_AT_SYNACK);
        if ts == self.start {
            self.ends[i].syn_sent |= FIRST_SYN_AT_START;
        } else if self.synack_first.get() == Some(ts) {
            self.ends[i].syn_sent |= FIRST_SYN_AT_SYNACK;
        } else {
            self.rare_mut().syn_first[i] = ts.into();
        }
    }

    fn syn_resends(&self, side: Side) -> Option<&SynResends> {
        self.rare().syn_resends[side.index()].as_deref()
    }

    /// Bare SYNs `side` sent.
    pub fn syn_count(&self, side: Side) -> u32 {
        match self.syn_resends(side) {
            Some(r) => r.syn_count,
            None => u32::from(self.ends[side.index()].syn_sent & SENT_SYN != 0),
        }
    }

    /// SYN-ACKs `side` sent.
    pub fn synack_count(&self, side: Side) -> u32 {
        match self.syn_resends(side) {
            Some(r) => r.synack_count,
            None => u32::from(self.ends[side.index()].syn_sent & SENT_SYNACK != 0),
        }
    }

    /// Retransmissions of `side`'s bare SYN.
    pub fn syn_retransmits(&self, side: Side) -> u32 {
        self.syn_count(side).saturating_sub(1)
    }

    /// Retransmissions of `side`'s SYN-ACK.
    pub fn synack_retransmits(&self, side: Side) -> u32 {
        self.synack_count(side).saturating_sub(1)
    }

    /// Times of `side`'s SYN (or SYN-ACK) sends, once it sent more than one (at most
    /// `SYN_TIMES_KEPT`).
    pub fn syn_times(&self, side: Side) -> &[Ts] {
        self.syn_resends(side).map_or(&[], |r| r.times.as_slice())
    }

    /// `side`'s last SYN or SYN-ACK send, and the one before it.
    fn syn_last_two(&self, side: Side) -> (Option<Ts>, Option<Ts>) {
        match self.syn_resends(side) {
            // Read as `OptTs`, as `syn_first` is (`Ts::UNKNOWN`'s value is none).
            Some(r) => (OptTs::from(r.last).get(), OptTs::from(r.prev).get()),
            None => (self.syn_first(side).get(), None),
        }
    }

    /// When it ended because a new connection took over its 4-tuple.
    pub fn superseded_at(&self) -> OptTs {
        if self.superseded_at_time_wait_end {
            self.time_wait_end.into()
        } else {
            self.rare().superseded_at
        }
    }

    /// `side`'s TIME_WAIT, if it entered one (the last, if more than one).
    pub fn time_wait(&self, side: Side) -> Option<TimeWait> {
        match self.ends[side.index()].time_wait {
            TimeWaitAt::None => None,
            TimeWaitAt::InLine(why) => Some(TimeWait {
                start: self.time_wait_start,
                end: why.map(|why| (self.time_wait_end, why)),
            }),
            TimeWaitAt::Rare => self.rare().time_wait,
        }
    }

    fn set_time_wait(&mut self, side: Side, tw: TimeWait) {
        let i = side.index();
        let in_line = match self.ends[i].time_wait {
            TimeWaitAt::InLine(_) => true,
            TimeWaitAt::Rare => false,
            TimeWaitAt::None => !matches!(self.ends[1 - i].time_wait, TimeWaitAt::InLine(_)),
        };
        if in_line {
            self.time_wait_start = tw.start;
            if let Some((end, _)) = tw.end {
                if self.superseded_at_time_wait_end && end != self.time_wait_end {
                    self.superseded_at_time_wait_end = false;
                    self.rare_mut().superseded_at = self.time_wait_end.into();
                }
                self.time_wait_end = end;
            }
            self.ends[i].time_wait = TimeWaitAt::InLine(tw.end.map(|(_, why)| why));
        } else {
            self.rare_mut().time_wait = Some(tw);
            self.ends[i].time_wait = TimeWaitAt::Rare;
        }
    }

    /// Retransmissions of `side`'s FIN.
    pub fn fin_retransmits(&self, side: Side) -> u32 {
        self.rare().fin_retransmits[side.index()]
    }

    /// Its 4-tuple, as the flow table files it.
    pub fn key(&self) -> crate::flow::FlowKey {
        crate::flow::FlowKey::new(self.ends[0].addr, self.ends[1].addr)
    }

    pub fn side_of(&self, addr: &SockAddr) -> Side {
        if self.ends[0].addr == *addr {
            Side::Client
        } else {
            Side::Server
        }
    }

    pub fn end(&self, side: Side) -> &Endpoint {
        &self.ends[side.index()]
    }

    /// Both sides are done with the 4-tuple, as far as packets show.
    pub fn is_over(&self) -> bool {
        self.ends
            .iter()
            .all(|e| matches!(e.state, Closed | TimeWait | Listen))
    }

    pub fn handshake(&self) -> Handshake {
        if self.handshake_done.is_some() {
            Handshake::Completed
        } else if self.refused {
            Handshake::Refused
        } else if self.synack_first.is_some() {
            Handshake::NotCompleted
        } else if self.syn_first(Side::Client).is_some() {
            Handshake::Unanswered
        } else {
            Handshake::NotSeen
        }
    }

    /// An attempt that never got further than SYN / SYN-ACK: no data, FIN or RST. Under a
    /// SYN flood these are what fills the table.
    pub fn is_half_open_attempt(&self) -> bool {
        self.handshake_done.is_none()
            && self.reset().is_none()
            && self.ends.iter().all(|e| {
                matches!(e.state, SynSent | SynRecv | Listen | Closed) && e.fin_time.is_none()
            })
    }

    /// The times of the FINs seen (none, one or both), earliest first.
    pub fn fin_times(&self) -> FinTimes {
        let mut fins = FinTimes {
            times: [Ts::default(); 2],
            len: 0,
        };
        for t in self.ends.iter().filter_map(|e| e.fin_time.get()) {
            fins.times[fins.len] = t;
            fins.len += 1;
        }
        fins.times[..fins.len].sort();
        fins
    }

    /// When tracking of this connection ends if no packet comes before: 2MSL after its last
    /// packet once it is over, else the idle timeout of its most open endpoint.
    pub fn idle_deadline(&self, cfg: &EngineConfig) -> Ts {
        let [a, b] = [self.ends[0].state, self.ends[1].state];
        let longest = match (cfg.idle.for_state(a), cfg.idle.for_state(b)) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        // A side with a timeout is not CLOSED, TIME_WAIT or LISTEN: the connection is not over.
        self.last.plus(longest.unwrap_or(cfg.time_wait))
    }

    /// The side whose FIN came first, if any.
    pub fn first_closer(&self) -> Option<Side> {
        match (self.ends[0].fin_time.get(), self.ends[1].fin_time.get()) {
            (Some(c), Some(s)) => Some(if s < c { Side::Server } else { Side::Client }),
            (Some(_), None) => Some(Side::Client),
            (None, Some(_)) => Some(Side::Server),
            (None, None) => None,
        }
    }

    /// The single choke point for state changes: records the time, TIME_WAIT bookkeeping
    /// and the transition.
    fn set_state(
        &mut self,
        side: Side,
        event: Event,
        ts: Ts,
        packet: u64,
        sink: &mut TransitionSink<'_>,
    ) -> bool {
        let from = self.ends[side.index()].state;
        let Some(to) = next_state(from, event) else {
            return false;
        };
        if from == to {
            return true;
        }
        if from == TimeWait
            && let Some(mut tw) = self.time_wait(side)
        {
            let why = match event {
                Event::TimeWaitExpired => TimeWaitEnd::Expired,
                Event::Superseded => TimeWaitEnd::Reused,
                _ => TimeWaitEnd::Reset,
            };
            tw.end = Some((ts, why));
            self.set_time_wait(side, tw);
        }
        if to == TimeWait {
            self.set_time_wait(
                side,
                TimeWait {
                    start: ts,
                    end: None,
                },
            );
        }
        let end = &mut self.ends[side.index()];
        end.state = to;
        end.state_since = ts;
        end.inferred = matches!(event, Event::HandshakeGaveUp);
        // The handshake is complete when both sides have been open at once.
        if to == Established
            && self.handshake_done.is_none()
            && self.ends[side.other().index()].state == Established
        {
            self.handshake_done = ts.into();
        }
        if let Some(sink) = sink.as_deref_mut() {
            sink.push(Transition {
                ts,
                conn_id: self.id,
                side,
                from,
                to,
                event,
                packet,
                cause: None,
                key: self.key(),
            });
        }
        true
    }

    /// Applies `event`, counting it as unexplained when the table has no rule for it.
    fn apply(
        &mut self,
        side: Side,
        event: Event,
        ts: Ts,
        packet: u64,
        sink: &mut TransitionSink<'_>,
    ) {
        if !self.set_state(side, event, ts, packet, sink) {
            self.rare_mut().anomalies.unexplained += 1;
        }
    }

    /// Runs the timers up to `now`: TIME_WAIT expiry and handshake give-up.
    pub fn advance_time(&mut self, now: Ts, cfg: &EngineConfig, sink: &mut TransitionSink<'_>) {
        // Most packets find no timer running (this runs for every packet).
        if !self
            .ends
            .iter()
            .any(|e| matches!(e.state, TimeWait | SynSent | SynRecv))
        {
            return;
        }
        for &side in self.timed_sides() {
            if let Some((event, at)) = self.running_timer(side, cfg)
                && now >= at
            {
                self.set_state(side, event, at, 0, sink);
            }
        }
        if self.self_connected {
            self.mirror_self();
        }
    }

    /// The sides whose timers run now, and when each runs out (what `state_at` changes at).
    pub fn timers<'a>(&'a self, cfg: &'a EngineConfig) -> impl Iterator<Item = (Side, Ts)> + 'a {
        self.timed_sides()
            .iter()
            .filter_map(move |&side| self.running_timer(side, cfg).map(|(_, at)| (side, at)))
    }

    /// The ends whose timers run: both, or for a socket connected to itself its one socket
    /// (the server end mirrors it).
    fn timed_sides(&self) -> &'static [Side] {
        if self.self_connected {
            &[Side::Client]
        } else {
            &[Side::Client, Side::Server]
        }
    }

    /// The timer `side` runs in its state, if any, and when it runs out: TIME_WAIT's 2MSL,
    /// or the handshake give-up after the last SYN (or SYN-ACK) retransmission.
    fn running_timer(&self, side: Side, cfg: &EngineConfig) -> Option<(Event, Ts)> {
        let end = &self.ends[side.index()];
        match end.state {
            TimeWait => {
                let start = self.time_wait(side).map_or(end.state_since, |tw| tw.start);
                Some((Event::TimeWaitExpired, start.plus(cfg.time_wait)))
            }
            SynSent | SynRecv => self
                .handshake_give_up_time(side)
                .map(|at| (Event::HandshakeGaveUp, at)),
            _ => None,
        }
    }

    /// The state `side` would be in at `now` (not before its last packet) if no packet came
    /// meanwhile: the timers of `advance_time` applied without changing the record.
    pub fn state_at(&self, side: Side, now: Ts, cfg: &EngineConfig) -> TcpState {
        let side = if self.self_connected {
            Side::Client
        } else {
            side
        };
        match self.running_timer(side, cfg) {
            // Both timers end in CLOSED.
            Some((_, at)) if now >= at => Closed,
            _ => self.ends[side.index()].state,
        }
    }

    /// Ends the record at the end of the capture: timers run to `now`, open TIME_WAITs are
    /// marked as cut short.
    pub fn finish(&mut self, now: Ts, cfg: &EngineConfig, sink: &mut TransitionSink<'_>) {
        self.advance_time(now, cfg, sink);
        for side in [Side::Client, Side::Server] {
            if let Some(mut tw) = self.time_wait(side)
                && tw.end.is_none()
            {
                tw.end = Some((now, TimeWaitEnd::CaptureEnded));
                self.set_time_wait(side, tw);
            }
        }
    }

    /// A new connection took the 4-tuple over at `ts`: sockets still in TIME_WAIT end there.
    pub fn supersede(
        &mut self,
        ts: Ts,
        packet: u64,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) {
        self.advance_time(ts, cfg, sink);
        for side in [Side::Client, Side::Server] {
            self.set_state(side, Event::Superseded, ts, packet, sink);
        }
        if self.time_wait_end == ts {
            self.superseded_at_time_wait_end = true;
        } else {
            self.superseded_at_time_wait_end = false;
            self.rare_mut().superseded_at = ts.into();
        }
    }

    /// Feeds one segment sent by `from`.
    pub fn on_segment(
        &mut self,
        seg: &Segment,
        from: Side,
        ts: Ts,
        packet: u64,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) {
        self.advance_time(ts, cfg, sink);
        if self.is_over() && self.ends.iter().any(|e| e.packets > 0) && !seg.has(flags::SYN) {
            self.rare_mut().anomalies.after_close += 1;
        }
        self.last = ts;
        let s = from.index();
        let r = from.other().index();
        self.ends[s].packets += 1;
        if self.self_connected {
            self.on_self_segment(seg, ts, packet, sink);
            return;
        }

        if seg.has(flags::RST) {
            self.on_rst(seg, from, ts, packet, sink);
            return;
        }

        let syn = seg.has(flags::SYN);
        let ack = seg.has(flags::ACK);
        if syn && !ack {
            self.on_syn(seg, from, ts, packet, sink);
        } else if syn {
            self.on_synack(seg, from, ts, packet, sink);
        }

        // What the receiver learns from the ACK field: its SYN or FIN arrived.
        if ack {
            let r_end = &self.ends[r];
            // After a lost handshake ACK was proven, only data or a FIN proves delivery.
            let bare = seg.payload_len == 0 && !seg.has(flags::FIN);
            let trusted = !(bare && self.handshake_ack_disproven);
            let acks_syn = !syn
                && trusted
                && r_end.state == SynRecv
                && r_end
                    .isn()
                    .is_some_and(|isn| seq::le(isn.wrapping_add(1), seg.ack));
            if acks_syn {
                self.apply(from.other(), Event::RecvAckOfSyn, ts, packet, sink);
            }
            let r_end = &self.ends[r];
            let acks_fin = r_end
                .fin_seq()
                .is_some_and(|f| seq::le(f.wrapping_add(1), seg.ack));
            if acks_fin && matches!(r_end.state, FinWait1 | Closing | LastAck) {
                self.apply(from.other(), Event::RecvAckOfFin, ts, packet, sink);
            }
        }

        if !syn && seg.payload_len > 0 && self.ends[s].state == SynRecv {
            self.apply(from, Event::SentData, ts, packet, sink);
        }

        self.note_sent_sequence(from, seg);

        if seg.has(flags::FIN) {
            self.on_fin(seg, from, ts, packet, sink);
        }
    }

    /// Sequence bookkeeping for the sender: its window, next sequence number and bytes sent
    /// (retransmissions and keepalive probes count once).
    fn note_sent_sequence(&mut self, from: Side, seg: &Segment) {
        let syn = seg.has(flags::SYN);
        self.ends[from.index()].window = seg.window;
        if !syn {
            let end = &mut self.ends[from.index()];
            let probe = !seg.has(flags::FIN)
                && end
                    .snd_nxt()
                    .is_some_and(|n| seq::is_probe(seg.seq, seg.payload_len, n));
            if !probe {
                let seg_end = seg.seq.wrapping_add(seg.seq_len());
                match end.snd_nxt() {
                    Some(n) => {
                        if seq::lt(n, seg_end) {
                            let fin = seg.has(flags::FIN) as u32;
                            let new_bytes = seg_end.wrapping_sub(n).saturating_sub(fin);
                            end.bytes += u64::from(new_bytes.min(seg.payload_len));
                            end.set_snd_nxt(seg_end);
                        }
                    }
                    None => {
                        end.set_first_seq(seg.seq);
                        end.bytes += u64::from(seg.payload_len);
                        end.set_snd_nxt(seg_end);
                    }
                }
            }
        }
    }

    /// A socket connected to itself (the same address:port at both ends: Linux allows it, a
    /// simultaneous open with itself). Each segment it sends it also receives at once, and
    /// there is one socket: its state is the client end's, mirrored in the server end so
    /// that both ends read alike; reports list it once.
    fn on_self_segment(
        &mut self,
        seg: &Segment,
        ts: Ts,
        packet: u64,
        sink: &mut TransitionSink<'_>,
    ) {
        let me = Side::Client;
        if seg.has(flags::RST) {
            if self.ends[0].state.has_socket() {
                let sender_state = self.ends[0].state;
                self.apply(me, Event::SentRst, ts, packet, sink);
                self.rare_mut().reset = Some(ResetInfo {
                    by: me,
                    ts,
                    sender_state,
                    receiver_state: sender_state,
                });
            }
            self.mirror_self();
            return;
        }
        let syn = seg.has(flags::SYN);
        let ack = seg.has(flags::ACK);
        if syn && !ack {
            if self.ends[0].isn() != Some(seg.seq) || self.ends[0].state == Closed {
                self.note_syn_send(me, seg, ts);
            }
            // Its own SYN reaches it in SYN_SENT: SYN_RECV, as in a simultaneous open.
            self.apply(me, Event::SentSyn, ts, packet, sink);
            self.apply(me, Event::RecvSyn, ts, packet, sink);
        } else if syn {
            if self.synack_first.is_none() {
                self.synack_first = ts.into();
            }
            // It answers its own SYN, and that SYN-ACK acknowledges its SYN: ESTABLISHED.
            self.apply(me, Event::SentSynAck, ts, packet, sink);
            self.apply(me, Event::RecvSynAck, ts, packet, sink);
        }
        if !syn && seg.payload_len > 0 && self.ends[0].state == SynRecv {
            self.apply(me, Event::SentData, ts, packet, sink);
        }
        self.note_sent_sequence(me, seg);
        if seg.has(flags::FIN) {
            let fin_seq = seg.seq.wrapping_add(seg.payload_len);
            match self.ends[0].fin_seq() {
                Some(known) if known == fin_seq => self.rare_mut().fin_retransmits[0] += 1,
                Some(_) => self.rare_mut().anomalies.unexplained += 1,
                None => {
                    self.ends[0].set_fin_seq(fin_seq);
                    self.ends[0].fin_time = ts.into();
                    // It closes (FIN_WAIT1) and its own FIN arrives before the ACK of it: CLOSING.
                    self.apply(me, Event::SentFin, ts, packet, sink);
                    self.apply(me, Event::RecvFin, ts, packet, sink);
                }
            }
        } else if ack
            && self.ends[0].state == Closing
            && self.ends[0]
                .fin_seq()
                .is_some_and(|f| seq::le(f.wrapping_add(1), seg.ack))
        {
            self.apply(me, Event::RecvAckOfFin, ts, packet, sink);
        }
        if self.ends[0].state == Established && self.handshake_done.is_none() {
            self.handshake_done = ts.into();
        }
        self.mirror_self();
    }

    /// The server end of a self-connected socket reads as its client end.
    /// (Its TIME_WAIT, packets and bytes stay with the client end, so they count once.)
    fn mirror_self(&mut self) {
        let one = &self.ends[0];
        let (state, since, inferred) = (one.state, one.state_since, one.inferred);
        let other = &mut self.ends[1];
        other.state = state;
        other.state_since = since;
        other.inferred = inferred;
    }

    fn on_syn(
        &mut self,
        seg: &Segment,
        from: Side,
        ts: Ts,
        packet: u64,
        sink: &mut TransitionSink<'_>,
    ) {
        self.note_syn_send(from, seg, ts);
        if from == Side::Server {
            self.simultaneous_open = true;
        }
        self.apply(from, Event::SentSyn, ts, packet, sink);
        // Simultaneous open: the receiver had sent its own SYN.
        if self.ends[from.other().index()].state == SynSent {
            self.apply(from.other(), Event::RecvSyn, ts, packet, sink);
        }
    }

    fn on_synack(
        &mut self,
        seg: &Segment,
        from: Side,
        ts: Ts,
        packet: u64,
        sink: &mut TransitionSink<'_>,
    ) {
        let s = from.index();
        let r = from.other().index();
        let acceptable = self.ends[r]
            .isn()
            .is_none_or(|isn| isn.wrapping_add(1) == seg.ack);
        if !acceptable {
            self.rare_mut().anomalies.unexplained += 1;
            return;
        }
        let resent_after_ack = !self.simultaneous_open
            && self.ends[s].isn() == Some(seg.seq)
            && self.ends[s].state == Established
            && self.ends[s].snd_nxt() == Some(seg.seq.wrapping_add(1));
        // Before the send is noted: the server's first SYN-ACK time is kept once, here.
        if from == Side::Server && self.synack_first.is_none() {
            self.synack_first = ts.into();
        }
        self.note_syn_send(from, seg, ts);
        if resent_after_ack {
            // The ACK we took as delivered never reached this side.
            self.set_state(from, Event::ResentSynAck, ts, packet, sink);
            self.handshake_ack_disproven = true;
            self.handshake_done = OptTs::NONE;
        } else {
            self.set_state(from, Event::SentSynAck, ts, packet, sink);
        }
        if self.ends[r].isn().is_none() {
            // The SYN was missed: its sequence number is one below what this SYN-ACK acknowledges.
            self.ends[r].set_isn(seg.ack.wrapping_sub(1));
            self.ends[r].set_snd_nxt(seg.ack);
        }
        self.set_state(from.other(), Event::RecvSynAck, ts, packet, sink);
        if from == Side::Client {
            // A SYN-ACK from the client side can only be a simultaneous open.
            self.direction_guessed = false;
        }
    }

    fn on_fin(
        &mut self,
        seg: &Segment,
        from: Side,
        ts: Ts,
        packet: u64,
        sink: &mut TransitionSink<'_>,
    ) {
        let s = from.index();
        let r = from.other().index();
        let fin_seq = seg
            .seq
            .wrapping_add(seg.payload_len)
            .wrapping_add(seg.has(flags::SYN) as u32);
        if let Some(known) = self.ends[s].fin_seq() {
            if known == fin_seq {
                self.rare_mut().fin_retransmits[s] += 1;
                // A retransmitted FIN reaching TIME_WAIT restarts its 2MSL timer.
                if self.ends[r].state == TimeWait {
                    self.ends[r].state_since = ts;
                    if let Some(mut tw) = self.time_wait(from.other()) {
                        tw.start = ts;
                        self.set_time_wait(from.other(), tw);
                    }
                }
            } else {
                self.rare_mut().anomalies.unexplained += 1;
            }
            return;
        }
        self.ends[s].set_fin_seq(fin_seq);
        self.ends[s].fin_time = ts.into();
        // The FIN's ACK tells whether the sender had already received the peer's FIN.
        let peer_fin = self.ends[r].fin_seq();
        let crossed = peer_fin
            .is_some_and(|pf| !(seg.has(flags::ACK) && seq::le(pf.wrapping_add(1), seg.ack)))
            && self.ends[s].state == CloseWait;
        if crossed {
            self.crossed_fins = true;
            self.apply(from, Event::SentFinCrossed, ts, packet, sink);
        } else {
            self.apply(from, Event::SentFin, ts, packet, sink);
        }
        if self.ends[r].state == FinWait1
            && !self.ends[r]
                .fin_seq()
                .is_some_and(|f| seg.has(flags::ACK) && seq::le(f.wrapping_add(1), seg.ack))
        {
            self.crossed_fins = true;
        }
        self.apply(from.other(), Event::RecvFin, ts, packet, sink);
    }

    fn on_rst(
        &mut self,
        seg: &Segment,
        from: Side,
        ts: Ts,
        packet: u64,
        sink: &mut TransitionSink<'_>,
    ) {
        let r = from.other().index();
        let s = from.index();
        let r_end = &self.ends[r];
        let verdict = match r_end.state {
            // RFC 793: in SYN_SENT a RST is acceptable only if it acknowledges the SYN.
            SynSent => {
                let ok = seg.has(flags::ACK)
                    && r_end
                        .isn()
                        .is_some_and(|isn| isn.wrapping_add(1) == seg.ack);
                if ok {
                    RstVerdict::Accepted
                } else {
                    RstVerdict::OutOfWindow
                }
            }
            // Nothing to protect: a socket already gone, or a listener that never answered.
            Closed | Listen => RstVerdict::Accepted,
            state => match self.ends[s].snd_nxt() {
                Some(rcv_nxt) => {
                    let scale = match (r_end.wscale(), self.ends[s].wscale()) {
                        (Some(ws), Some(_)) => u32::from(ws.min(14)),
                        _ => 0,
                    };
                    let window = u32::from(r_end.window) << scale;
                    let minus_one_ok = matches!(state, CloseWait | LastAck | Closing | TimeWait);
                    seq::judge_rst(seg.seq, rcv_nxt, window, minus_one_ok)
                }
                // Picked up mid-stream with nothing from the sender yet: no way to judge.
                None => RstVerdict::Accepted,
            },
        };
        match verdict {
            RstVerdict::Accepted => {
                // A responder that never answered had no socket: RFC 793's CLOSED sends the RST.
                let sender_state = match self.ends[s].state {
                    Listen => Closed,
                    st => st,
                };
                let info = ResetInfo {
                    by: from,
                    ts,
                    sender_state,
                    receiver_state: self.ends[r].state,
                };
                if self.reset().is_none() {
                    self.rare_mut().reset = Some(info);
                }
                if from == Side::Server
                    && self.synack_first.is_none()
                    && self.syn_first(Side::Client).is_some()
                {
                    self.refused = true;
                }
                self.set_state(from, Event::SentRst, ts, packet, sink);
                self.set_state(from.other(), Event::RecvRst, ts, packet, sink);
            }
            RstVerdict::InWindowNotExact => self.rare_mut().anomalies.rst_in_window_not_exact += 1,
            RstVerdict::OutOfWindow => self.rare_mut().anomalies.rst_out_of_window += 1,
        }
    }

    fn note_syn_send(&mut self, side: Side, seg: &Segment, ts: Ts) {
        let end = &mut self.ends[side.index()];
        // What was sent before this one (what `syn_count` and `synack_count` say until the
        // few connections that send more than one get their `SynResends`).
        let sent_bits = end.syn_sent;
        end.set_isn(seg.seq);
        let after = seg.seq.wrapping_add(1);
        end.set_snd_nxt(end.snd_nxt().map_or(after, |n| seq::max(n, after)));
        if let Some(ws) = seg.wscale {
            end.wscale = ws;
            end.known |= KNOWN_WSCALE;
        }
        let sent_before = end.syn_sent & (SENT_SYN | SENT_SYNACK) != 0;
        let synack = seg.has(flags::ACK);
        end.syn_sent |= if synack { SENT_SYNACK } else { SENT_SYN };
        let first = match self.syn_first(side).get() {
            Some(first) => first,
            None => {
                self.set_syn_first(side, ts);
                ts
            }
        };
        if !sent_before {
            return;
        }
        // A second send or later: allocate only for the few connections that send more than one.
        let r = self.rare_mut().syn_resends[side.index()].get_or_insert_with(|| {
            Box::new(SynResends {
                syn_count: u32::from(sent_bits & SENT_SYN != 0),
                synack_count: u32::from(sent_bits & SENT_SYNACK != 0),
                last: first,
                prev: first,
                times: vec![first],
            })
        });
        if synack {
            r.synack_count += 1;
        } else {
            r.syn_count += 1;
        }
        if r.times.len() < SYN_TIMES_KEPT {
            r.times.push(ts);
        }
        r.prev = r.last;
        r.last = ts;
    }

    /// When `side`, sending SYNs (or SYN-ACKs), has given up, judged from its retransmission
    /// spacing. The next retry would come at most twice the last gap later (exponential
    /// backoff; Linux's first retries are 1 s apart, then double); a margin covers timer
    /// slack. A single SYN is taken to have a 1 s retry timer (Linux's initial RTO). A lone
    /// SYN-ACK proves nothing: its ACK may simply not be in the capture.
    fn handshake_give_up_time(&self, side: Side) -> Option<Ts> {
        let (last, prev) = self.syn_last_two(side);
        let last = last?;
        let gap = match prev {
            Some(prev) => last.since(prev),
            None if self.ends[side.index()].state == SynSent => Dur::from_millis(1000),
            None => return None,
        };
        let wait = Dur(gap.0.saturating_mul(2));
        let margin = Dur(wait.0 / 10 + Dur::from_millis(200).0);
        Some(last.plus(wait).plus(margin))
    }
}

/// How many SYN send times an endpoint keeps (Linux's default tcp_syn_retries is 6: 7 sends).
pub const SYN_TIMES_KEPT: usize = 16;

/// A port guess for a connection seen without its handshake: the side on a well-known port,
/// or on the lower port when only the other is in the ephemeral range, is the server.
fn sender_looks_like_server(src_port: u16, dst_port: u16) -> bool {
    const EPHEMERAL: u16 = 32768;
    match (src_port < 1024, dst_port < 1024) {
        (true, false) => true,
        (false, true) => false,
        _ => src_port < dst_port && dst_port >= EPHEMERAL,
    }
}
