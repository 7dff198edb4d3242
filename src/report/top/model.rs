//! The data side of `top`: turns the engine's live and ended connections into a [`TopFrame`]
//! snapshot. Knows nothing of terminals, so it runs on the capture thread and is tested
//! without one.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{SyncSender, TrySendError};

use crate::decode::SockAddr;
use crate::flow::conn::{Handshake, Side};
use crate::flow::{Connection, EngineConfig};
use crate::pipeline::Engine;
use crate::tcp::TcpState;
use crate::time::{Dur, Ts};

/// Settings of the model.
#[derive(Clone, Debug)]
pub struct TopConfig {
    /// Shown in the title line: the interface or file being watched.
    pub title: String,
    /// How long (packet time) an ended connection stays on screen, marked closed.
    pub linger: Dur,
    /// The connection-rate window: new connections are counted over at least this much
    /// packet time, so the rate does not jump with every redraw.
    pub rate_window: Dur,
    /// The engine's timers (TIME_WAIT length). Live records only run their timers when a
    /// packet arrives, so the model runs them up to `now` on a copy before showing them.
    pub engine: EngineConfig,
}

impl Default for TopConfig {
    fn default() -> Self {
        TopConfig {
            title: String::new(),
            linger: Dur::from_millis(5_000),
            rate_window: Dur::from_millis(1_000),
            engine: EngineConfig::default(),
        }
    }
}

/// What libpcap says it dropped (`pcap_stats`): `ps_drop` and `ps_ifdrop`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureDrops {
    /// Dropped because the capture buffer was full (the reader was too slow).
    pub kernel: u64,
    /// Dropped by the interface or its driver.
    pub interface: u64,
}

impl CaptureDrops {
    pub fn total(&self) -> u64 {
        self.kernel.saturating_add(self.interface)
    }
}

/// Counters from outside the connection records: the engine's and the capture's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopStats {
    /// Packets read (every packet, TCP or not).
    pub packets: u64,
    pub tcp_packets: u64,
    /// Connections seen since the start (the engine's flow counter).
    pub connections: u64,
    /// Connections evicted to stay within `--max-conns`.
    pub evicted: u64,
    pub drops: CaptureDrops,
}

impl TopStats {
    pub fn from_engine(engine: &Engine, drops: CaptureDrops) -> TopStats {
        let flows = engine.flow_counters();
        TopStats {
            packets: engine.front.counters.packets,
            tcp_packets: engine.front.counters.tcp,
            connections: flows.connections,
            evicted: flows.evicted,
            drops,
        }
    }
}

/// Handshakes that failed, counted once per connection when the outcome is final.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeFailures {
    /// The SYN was answered by a RST.
    pub refused: u64,
    /// No answer to the SYN before the client gave up or the record ended.
    pub unanswered: u64,
    /// A SYN-ACK was sent but the handshake never completed.
    pub not_completed: u64,
}

impl HandshakeFailures {
    pub fn total(&self) -> u64 {
        self.refused + self.unanswered + self.not_completed
    }
}

/// One connection on screen.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    pub id: u64,
    pub client: SockAddr,
    pub server: SockAddr,
    /// Client's and server's state (index by `Side::index`), timers run up to the frame time.
    pub states: [TcpState; 2],
    /// When each side entered its state.
    pub since: [Ts; 2],
    pub start: Ts,
    pub last: Ts,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// When the model saw it end (no socket left on either side, or the engine let it go);
    /// the row stays for `TopConfig::linger` after that.
    pub ended: Option<Ts>,
    pub handshake: Handshake,
    /// Who sent the RST that reset it.
    pub reset_by: Option<Side>,
    /// Picked up mid-stream (no SYN seen).
    pub partial: bool,
    /// Evicted to stay within `--max-conns`: its states are as of then.
    pub evicted: bool,
}

impl TopRow {
    fn new(c: &Connection, ended: Option<Ts>) -> TopRow {
        let [cl, sv] = &c.ends;
        TopRow {
            id: c.id,
            client: cl.addr,
            server: sv.addr,
            states: [cl.state, sv.state],
            since: [cl.state_since, sv.state_since],
            start: c.start,
            last: c.last,
            packets: [cl.packets, sv.packets],
            bytes: [cl.bytes, sv.bytes],
            ended,
            handshake: c.handshake(),
            reset_by: c.reset().map(|r| r.by),
            partial: c.partial,
            evicted: c.evicted_at().is_some(),
        }
    }

    /// Time since its first packet (for an ended one too, so the column sorts as it reads).
    pub fn age(&self, now: Ts) -> Dur {
        now.since(self.start)
    }

    pub fn idle(&self, now: Ts) -> Dur {
        now.since(self.last)
    }

    /// How long `side` has been in its current state.
    pub fn in_state(&self, side: Side, now: Ts) -> Dur {
        now.since(self.since[side.index()])
    }

    pub fn total_packets(&self) -> u64 {
        self.packets[0].saturating_add(self.packets[1])
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes[0].saturating_add(self.bytes[1])
    }
}

/// Endpoints per state over every connection still open, in [`TcpState::ALL`] order
/// (netstat's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts(pub [u64; TcpState::ALL.len()]);

impl StateCounts {
    fn slot(state: TcpState) -> usize {
        // ALL holds every state, so the search always finds it.
        TcpState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or_default()
    }
    pub fn get(&self, state: TcpState) -> u64 {
        self.0[Self::slot(state)]
    }
    fn add(&mut self, state: TcpState) {
        self.0[Self::slot(state)] += 1;
    }
    /// (state, count) in netstat's order.
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        TcpState::ALL.into_iter().zip(self.0.iter().copied())
    }
}

/// One snapshot for the screen: plain data, moved over a channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopFrame {
    pub title: String,
    /// The packet time the snapshot is as of.
    pub now: Ts,
    /// Endpoint states of the open connections (ended ones are not counted).
    pub states: StateCounts,
    /// Connections with at least one side holding a socket.
    pub open: u64,
    /// Ended connections still on screen, marked closed.
    pub lingering: u64,
    /// New connections per second of packet time, over the last `rate_window` or more.
    pub conn_rate: f64,
    pub failures: HandshakeFailures,
    /// Connections reset (refusals are counted in `failures` only).
    pub resets: u64,
    pub stats: TopStats,
    /// Every open and lingering connection, in no particular order: the view sorts.
    pub rows: Vec<TopRow>,
}

/// What the model remembers of a connection between updates.
#[derive(Default)]
struct Seen {
    generation: u64,
    ended: Option<Ts>,
    failure_counted: bool,
    reset_counted: bool,
}

/// Follows the engine from update to update: which connections ended when, what has been
/// counted, the connection rate.
pub struct TopModel {
    cfg: TopConfig,
    seen: HashMap<u64, Seen>,
    /// Records the engine let go of, kept for the linger time.
    lingering: Vec<TopRow>,
    generation: u64,
    failures: HandshakeFailures,
    resets: u64,
    /// (time, connections seen) samples covering the rate window.
    rate_samples: VecDeque<(Ts, u64)>,
}

impl TopModel {
    pub fn new(cfg: TopConfig) -> TopModel {
        TopModel {
            cfg,
            seen: HashMap::new(),
            lingering: Vec::new(),
            generation: 0,
            failures: HandshakeFailures::default(),
            resets: 0,
            rate_samples: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &TopConfig {
        &self.cfg
    }

    pub fn set_engine_config(&mut self, engine: EngineConfig) {
        self.cfg.engine = engine;
    }

    /// Counts the records that ended by packet time `now` and keeps the rows of those still
    /// lingering then. `update` does it for the records that ended since the last update; a
    /// file, which gets one update at its end, does it as records end, so that it holds
    /// neither every ended record nor rows of connections long gone.
    pub fn take_in_ended(&mut self, ended: &[Connection], now: Ts) {
        let linger = self.cfg.linger;
        for c in ended {
            let mut seen = self.seen.remove(&c.id).unwrap_or_default();
            count_once(&mut seen, c, true, &mut self.failures, &mut self.resets);
            let at = seen.ended.unwrap_or(now);
            if now < at.plus(linger) {
                self.lingering.push(TopRow::new(c, Some(at)));
            }
        }
        self.lingering
            .retain(|r| r.ended.is_some_and(|at| now < at.plus(linger)));
    }

    /// Takes in the engine's state at packet time `now`: every live connection, the records
    /// that ended since the previous update, and the counters.
    pub fn update<'a>(
        &mut self,
        live: impl Iterator<Item = &'a Connection>,
        ended: &[Connection],
        now: Ts,
        stats: &TopStats,
    ) -> TopFrame {
        self.generation += 1;
        let generation = self.generation;
        let linger = self.cfg.linger;
        let mut states = StateCounts::default();
        let mut rows = Vec::new();
        let mut open = 0u64;
        let mut lingering = 0u64;
        for conn in live {
            let timed = as_of(conn, now, &self.cfg.engine);
            let c: &Connection = timed.as_ref().unwrap_or(conn);
            let seen = self.seen.entry(c.id).or_default();
            seen.generation = generation;
            let has_socket = c.ends.iter().any(|e| e.state.has_socket());
            if has_socket {
                // Not over after all (a late SYN retransmission after a give-up).
                seen.ended = None;
            }
            count_once(seen, c, !has_socket, &mut self.failures, &mut self.resets);
            if has_socket {
                open += 1;
                for e in &c.ends {
                    states.add(e.state);
                }
                rows.push(TopRow::new(c, None));
            } else {
                let at = *seen.ended.get_or_insert(now);
                if now < at.plus(linger) {
                    lingering += 1;
                    rows.push(TopRow::new(c, Some(at)));
                }
            }
        }
        self.take_in_ended(ended, now);
        // Records gone without an ended record (half-open attempts evicted under
        // --max-conns) are forgotten here, so memory follows the engine's table.
        self.seen.retain(|_, s| s.generation == generation);
        lingering += self.lingering.len() as u64;
        rows.extend(self.lingering.iter().cloned());

        TopFrame {
            title: self.cfg.title.clone(),
            now,
            states,
            open,
            lingering,
            conn_rate: self.conn_rate(now, stats.connections),
            failures: self.failures,
            resets: self.resets,
            stats: *stats,
            rows,
        }
    }

    /// New connections per second over at least the rate window (less only at the start).
    fn conn_rate(&mut self, now: Ts, connections: u64) -> f64 {
        let window = self.cfg.rate_window;
        self.rate_samples.push_back((now, connections));
        // Keep exactly one sample at or before the window's start: the base of the rate.
        while self
            .rate_samples
            .get(1)
            .is_some_and(|(t, _)| now.since(*t) >= window)
        {
            self.rate_samples.pop_front();
        }
        match self.rate_samples.front() {
            Some(&(t, n)) if now > t => {
                connections.saturating_sub(n) as f64 / now.since(t).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The connection with its timers run up to `now`, when a timer could have fired since its
/// last packet (TIME_WAIT expiry, handshake give-up); `None` when the record is current.
fn as_of(conn: &Connection, now: Ts, cfg: &EngineConfig) -> Option<Connection> {
    let timed = conn.ends.iter().any(|e| {
        matches!(
            e.state,
            TcpState::TimeWait | TcpState::SynSent | TcpState::SynRecv
        )
    });
    if !timed || now <= conn.last {
        return None;
    }
    let mut copy = conn.clone();
    copy.advance_time(now, cfg, &mut None);
    Some(copy)
}

/// Counts a handshake failure or a reset the first time it is seen; a failure only once it
/// is final (`over`: no socket left, or the engine let the record go).
fn count_once(
    seen: &mut Seen,
    c: &Connection,
    over: bool,
    failures: &mut HandshakeFailures,
    resets: &mut u64,
) {
    if !seen.failure_counted {
        let slot = match c.handshake() {
            Handshake::Refused => Some(&mut failures.refused),
            Handshake::Unanswered if over => Some(&mut failures.unanswered),
            Handshake::NotCompleted if over => Some(&mut failures.not_completed),
            _ => None,
        };
        if let Some(n) = slot {
            *n += 1;
            seen.failure_counted = true;
        }
    }
    if !seen.reset_counted && c.reset().is_some() && !c.refused {
        *resets += 1;
        seen.reset_counted = true;
    }
}

/// The producer's side: updates the model from the engine and offers the frame to the
/// screen without ever waiting for it. Use with `std::sync::mpsc::sync_channel(1)`.
pub struct TopFeed {
    pub model: TopModel,
    tx: SyncSender<TopFrame>,
    /// Frames the screen was too slow to take (dropped, never the packets).
    pub frames_dropped: u64,
}

impl TopFeed {
    pub fn new(model: TopModel, tx: SyncSender<TopFrame>) -> TopFeed {
        TopFeed {
            model,
            tx,
            frames_dropped: 0,
        }
    }

    /// Updates from the engine at its clock (the last packet's time) and sends a frame.
    /// Takes the ended records out of the engine. Returns false once the screen has gone
    /// (the user quit): the caller should stop.
    pub fn tick(&mut self, engine: &mut Engine, drops: CaptureDrops) -> bool {
        let now = engine.now().unwrap_or_default();
        self.tick_at(engine, now, drops)
    }

    /// As [`TopFeed::tick`], at `now` if later than the engine's clock: a live capture
    /// passes the wall clock so ages and timers move while no packets come.
    pub fn tick_at(&mut self, engine: &mut Engine, now: Ts, drops: CaptureDrops) -> bool {
        let now = engine.now().map_or(now, |t| t.max(now));
        self.model.set_engine_config(engine.cfg);
        let ended = engine.take_ended();
        let stats = TopStats::from_engine(engine, drops);
        let frame = self.model.update(engine.connections(), &ended, now, &stats);
        self.send(frame)
    }

    /// Takes in the records that ended with the last packet, without a frame (files).
    pub fn take_in_ended(&mut self, engine: &mut Engine) {
        if engine.has_ended() {
            let ended = engine.take_ended();
            let now = engine.now().unwrap_or_default();
            self.model.take_in_ended(&ended, now);
        }
    }

    /// Offers a frame: dropped if the screen has not taken the previous one yet.
    pub fn send(&mut self, frame: TopFrame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.frames_dropped += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}
