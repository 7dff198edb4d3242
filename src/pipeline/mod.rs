//! The pipeline: capture records → decode → flow table → per-endpoint state machines.
//! Every packet ends up either in a connection or in a counter that says why not.

pub mod sharded;

use crate::capture::RawPacket;
use crate::capture::filter::PacketFilter;
use crate::decode::SockAddr;
use crate::decode::{self, DecodeError, Kind, LengthDoubt, LinkType, Segment};
use crate::flow::conn::Side;
use crate::flow::conn::Transition;
use crate::flow::{
    Connection, EngineConfig, EvictedAttempts, FlowCounters, FlowKey, FlowTable, TransitionSink,
};
use crate::time::Ts;

/// What happened to the packets that did not drive a state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub packets: u64,
    pub tcp: u64,
    pub filtered_out: u64,
    pub not_ip: u64,
    pub not_tcp: u64,
    pub ip_fragments: u64,
    pub undecodable: [u64; DecodeError::ALL.len()],
    pub unsupported_link: u64,
    /// Packets whose timestamp was earlier than one before them; timers used the later time.
    pub time_went_backwards: u64,
    /// Packets after the requested `--at` time (not processed).
    pub after_stop_time: u64,
    /// Tracked packets whose IPv4 total length was below the header length (not 0): their
    /// payload length was taken from the capture. (Counted, not skipped.)
    pub ipv4_total_below_header: u64,
    /// Tracked packets whose IP length field claims more than an uncut frame holds: their
    /// payload length was taken from the field. (Counted, not skipped.)
    pub ip_length_beyond_frame: u64,
}

impl PacketCounters {
    pub fn undecodable_total(&self) -> u64 {
        self.undecodable.iter().sum()
    }
}

/// The segments the model could not use, summed over all connections (including those
/// already taken with `take_ended`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnomalyTotals {
    pub rst_out_of_window: u64,
    pub rst_in_window_not_exact: u64,
    pub unexplained: u64,
    pub after_close: u64,
}

impl AnomalyTotals {
    fn add(&mut self, c: &Connection) {
        let a = c.anomalies();
        self.rst_out_of_window += u64::from(a.rst_out_of_window);
        self.rst_in_window_not_exact += u64::from(a.rst_in_window_not_exact);
        self.unexplained += u64::from(a.unexplained);
        self.after_close += u64::from(a.after_close);
    }
}

/// Which connections to keep every packet of (`explain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// The connection with this id (as `conns` numbers them).
    Id(u64),
    /// Every connection on this 4-tuple.
    Tuple(FlowKey),
}

impl Watch {
    /// Whether the connection `conn_id` on `key` is one of those watched.
    pub fn selects(self, conn_id: u64, key: FlowKey) -> bool {
        match self {
            Watch::Id(id) => id == conn_id,
            Watch::Tuple(tuple) => tuple == key,
        }
    }

    /// Whether `conn` is one of the connections watched.
    pub fn selects_record(self, conn: &Connection) -> bool {
        let key = FlowKey::new(conn.end(Side::Client).addr, conn.end(Side::Server).addr);
        self.selects(conn.id, key)
    }
}

/// One packet of a watched connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenPacket {
    /// 1-based number over all input, as in transitions.
    pub packet: u64,
    pub ts: Ts,
    pub conn_id: u64,
    pub seg: Segment,
}

/// What every packet goes through before the flow table: `--at`, the clock, the filter and
/// the decoder. Packets that go no further are counted here, by why.
#[derive(Default)]
pub struct Front {
    filter: Option<PacketFilter>,
    pub counters: PacketCounters,
    first_ts: Option<Ts>,
    clock: Option<Ts>,
    stop_after: Option<Ts>,
}

/// A packet let in: its time on the engine's clock (never earlier than the packet before)
/// and its 1-based number over all input.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    pub ts: Ts,
    pub packet: u64,
}

/// A TCP segment that passed the front, with its `Admission`.
#[derive(Clone, Copy, Debug)]
pub struct Admitted {
    pub seg: Segment,
    pub ts: Ts,
    pub packet: u64,
}

impl Front {
    pub fn new(filter: Option<PacketFilter>, stop_after: Option<Ts>) -> Front {
        Front {
            filter,
            stop_after,
            ..Front::default()
        }
    }

    pub fn set_stop_after(&mut self, at: Ts) {
        self.stop_after = Some(at);
    }

    /// The first packet's time.
    pub fn first_time(&self) -> Option<Ts> {
        self.first_ts
    }

    /// The latest packet time seen (never goes backwards).
    pub fn now(&self) -> Option<Ts> {
        self.clock
    }

    /// Where the report's clock stops: `--at`, or the last packet.
    pub fn end_time(&self) -> Option<Ts> {
        self.stop_after.or(self.clock)
    }

    /// Counts the packet and, if it has a TCP segment the engine should track, writes it to
    /// `seg` and says when it came and its number.
    #[inline(always)]
    pub fn admit(&mut self, pkt: &RawPacket<'_>, seg: &mut Segment) -> Option<Admission> {
        self.counters.packets += 1;
        if let Some(stop) = self.stop_after
            && pkt.ts != Ts::UNKNOWN
            && pkt.ts > stop
        {
            self.counters.after_stop_time += 1;
            return None;
        }
        let ts = match (pkt.ts, self.clock) {
            (t, Some(c)) if t == Ts::UNKNOWN || t < c => {
                if t != Ts::UNKNOWN {
                    self.counters.time_went_backwards += 1;
                }
                c
            }
            (t, None) if t == Ts::UNKNOWN => Ts(0),
            (t, _) => t,
        };
        self.clock = Some(ts);
        self.first_ts.get_or_insert(ts);
        if let Some(f) = self.filter.as_mut()
            && !f.matches(pkt.linktype, pkt.data)
        {
            self.counters.filtered_out += 1;
            return None;
        }
        let cut = (pkt.orig_len as usize) > pkt.data.len();
        let (kind, doubt) = match decode::ethernet_ip(pkt.linktype, pkt.data) {
            Some(ip) => decode::decode_ip_into(ip, cut, seg),
            None => {
                let Some(link) = LinkType::from_linktype(pkt.linktype) else {
                    self.counters.unsupported_link += 1;
                    return None;
                };
                decode::decode_into(link, pkt.data, cut, seg)
            }
        };
        match doubt {
            LengthDoubt::None => {}
            LengthDoubt::Ipv4TotalBelowHeader => self.counters.ipv4_total_below_header += 1,
            LengthDoubt::IpLengthBeyondFrame => self.counters.ip_length_beyond_frame += 1,
        }
        match kind {
            Ok(Kind::Tcp) => {
                self.counters.tcp += 1;
                return Some(Admission {
                    ts,
                    packet: self.counters.packets,
                });
            }
            Ok(Kind::NotTcp) => self.counters.not_tcp += 1,
            Ok(Kind::NotIp) => self.counters.not_ip += 1,
            Ok(Kind::Fragment) => self.counters.ip_fragments += 1,
            Err(e) => self.counters.undecodable[e.index()] += 1,
        }
        None
    }

    /// `admit`, with the segment in the answer (for a caller that sends it on).
    pub fn admit_owned(&mut self, pkt: &RawPacket<'_>) -> Option<Admitted> {
        let mut seg = Segment::NONE;
        let Admission { ts, packet } = self.admit(pkt, &mut seg)?;
        Some(Admitted { seg, ts, packet })
    }
}

pub struct Engine {
    pub cfg: EngineConfig,
    table: FlowTable,
    pub front: Front,
    transitions: Option<Vec<Transition>>,
    watch: Option<Watch>,
    watched: Vec<SeenPacket>,
    /// Anomalies of the records already taken by `take_ended`.
    taken_anomalies: AnomalyTotals,
}

/// Everything a report needs once the input is done.
pub struct Outcome {
    pub connections: Vec<Connection>,
    pub packets: PacketCounters,
    pub flows: FlowCounters,
    pub first_ts: Option<Ts>,
    /// The time the engine's clock stopped at: the last packet, or `--at`.
    pub end_ts: Option<Ts>,
    pub transitions: Vec<Transition>,
    /// Packets of the watched connections, in input order.
    pub watched: Vec<SeenPacket>,
    /// Half-open attempts evicted without a record (`--max-conns`), per server.
    pub evicted_attempts: Vec<(SockAddr, EvictedAttempts)>,
    /// Over every connection of the run, including those taken before the end.
    pub anomalies: AnomalyTotals,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            table: FlowTable::new(),
            front: Front::default(),
            transitions: None,
            watch: None,
            watched: Vec::new(),
            taken_anomalies: AnomalyTotals::default(),
        }
    }

    pub fn watch(mut self, watch: Option<Watch>) -> Engine {
        self.watch = watch;
        self
    }

    pub fn with_filter(mut self, filter: Option<PacketFilter>) -> Engine {
        self.front.filter = filter;
        self
    }

    /// Packets later than `at` are counted but not applied; the report is as of `at`.
    pub fn stop_after(mut self, at: Option<Ts>) -> Engine {
        self.front.stop_after = at;
        self
    }

    pub fn set_stop_after(&mut self, at: Ts) {
        self.front.set_stop_after(at);
    }

    pub fn record_transitions(mut self, on: bool) -> Engine {
        self.transitions = on.then(Vec::new);
        self
    }

    pub fn live_connections(&self) -> usize {
        self.table.len()
    }

    /// The connections being tracked now (their states as of the last packet), in no order.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.table.live()
    }

    /// The engine's clock: the latest packet time seen (never goes backwards).
    pub fn now(&self) -> Option<Ts> {
        self.front.now()
    }

    /// Takes the connection records that have ended since the last call, in the order they
    /// ended; `finish` returns only the rest. Live reports stream these as they happen.
    pub fn take_ended(&mut self) -> Vec<Connection> {
        let ended = self.table.take_ended();
        for c in &ended {
            self.taken_anomalies.add(c);
        }
        ended
    }

    /// `take_ended` into `into` (emptied first), reusing its allocation.
    pub fn take_ended_into(&mut self, into: &mut Vec<Connection>) {
        self.table.take_ended_into(into);
        for c in into.iter() {
            self.taken_anomalies.add(c);
        }
    }

    /// Whether `take_transitions` has any to give (cheap, for a check after every packet).
    pub fn has_transitions(&self) -> bool {
        self.transitions.as_ref().is_some_and(|t| !t.is_empty())
    }

    /// The transitions recorded since the last call (with `record_transitions`), in the
    /// order they were found; `finish` returns only the rest, sorted by time.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        self.transitions
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The live record on a 4-tuple.
    pub fn find(&self, key: FlowKey) -> Option<&Connection> {
        self.table.find(key)
    }

    /// A time no transition found from now on can be earlier than, for a reader that takes
    /// ahead the transitions of timers run out but not run yet: a timer runs at its record's
    /// next packet, when the record ends, or at the end of input, and its transition carries
    /// its own earlier time, so an overdue timer would hold the watermark back until then (on
    /// a SYN flood, the give-up timers of every unanswered attempt: most of the capture).
    /// Each such transition is handed to `ahead`, except for the sides `taken(conn_id)` (a
    /// bit per side, `1 << side.index()`) says were handed over before; the engine still makes
    /// them when the timers run, and the reader drops those it took ahead. Then the
    /// watermark is the clock, or the earliest timer or idle deadline of a live record still
    /// to come (a look at every record).
    pub fn transition_watermark_ahead(
        &self,
        taken: impl Fn(u64) -> u8,
        mut ahead: impl FnMut(Transition),
    ) -> Option<Ts> {
        let now = self.now()?;
        let mut mark = now;
        let mut found = Vec::new();
        for c in self.table.live() {
            mark = mark.min(c.idle_deadline(&self.cfg));
            let mut overdue = 0u8;
            for (side, at) in c.timers(&self.cfg) {
                if at <= now {
                    overdue |= 1 << side.index();
                } else {
                    mark = mark.min(at);
                }
            }
            let taken = if overdue == 0 { 0 } else { taken(c.id) };
            if overdue & !taken == 0 {
                continue;
            }
            // What running the timers now makes, without changing the record.
            c.clone()
                .advance_time(now, &self.cfg, &mut Some(&mut found));
            for t in found.drain(..) {
                if taken & (1 << t.side.index()) == 0 {
                    ahead(t);
                }
            }
        }
        Some(mark)
    }

    /// Whether `take_ended` has records to give (cheap, for a check after every packet).
    pub fn has_ended(&self) -> bool {
        self.table.has_ended()
    }

    /// Counters of the flow table so far.
    pub fn flow_counters(&self) -> FlowCounters {
        self.table.counters
    }

    pub fn process(&mut self, pkt: &RawPacket<'_>) {
        if !pkt.ahead.is_empty() {
            self.table
                .look_ahead(decode::syn_ahead(pkt.linktype, pkt.ahead));
        }
        let mut seg = Segment::NONE;
        let Some(Admission { ts, packet }) = self.front.admit(pkt, &mut seg) else {
            return;
        };
        let recorded = self.transitions.as_ref().map_or(0, Vec::len);
        let mut sink = self.transitions.as_mut();
        let conn_id = self
            .table
            .on_segment(&seg, ts, packet, &self.cfg, &mut sink);
        if let Some(list) = self.transitions.as_mut() {
            for t in &mut list[recorded..] {
                if t.packet == packet {
                    t.cause = Some(seg);
                }
            }
            // Watching some connections, keep only their transitions: the others would be
            // held to the end for nothing.
            if let Some(watch) = self.watch {
                retain_from(list, recorded, |t| watch.selects(t.conn_id, t.key));
            }
        }
        let watched = self
            .watch
            .is_some_and(|w| w.selects(conn_id, FlowKey::new(seg.src, seg.dst)));
        if watched {
            self.watched.push(SeenPacket {
                packet,
                ts,
                conn_id,
                seg,
            });
        }
    }

    /// Records `finish` would hand over: the live ones and those ended but not taken.
    pub fn held_connections(&self) -> usize {
        self.table.held()
    }

    /// The first packet's time.
    pub fn first_time(&self) -> Option<Ts> {
        self.front.first_time()
    }

    /// Where the report's clock stops: `--at`, or the last packet.
    pub fn end_time(&self) -> Option<Ts> {
        self.front.end_time()
    }

    /// Ends the run: timers advance to the end time (`--at`, or the last packet).
    pub fn finish(self) -> Outcome {
        self.finish_with(|table, end, cfg, sink, anomalies| {
            // The table's own list of ended records, sorted in place: no second copy.
            let all = table.finish(end, cfg, sink);
            for c in &all {
                anomalies.add(c);
            }
            all
        })
    }

    /// `finish`, handing the remaining connections to `each` in id order instead of keeping
    /// them (`Outcome::connections` is empty): a report that writes each as it comes never
    /// holds a second copy of the table.
    pub fn finish_each(self, mut each: impl FnMut(Connection)) -> Outcome {
        self.finish_with(|table, end, cfg, sink, anomalies| {
            table.finish_each(end, cfg, sink, |c| {
                anomalies.add(&c);
                each(c);
            });
            Vec::new()
        })
    }

    /// Ends the run; `take` ends the table's records at the end time and returns those to
    /// keep in `Outcome::connections`, adding each record's anomalies up.
    fn finish_with(
        self,
        take: impl FnOnce(
            FlowTable,
            Ts,
            &EngineConfig,
            &mut TransitionSink<'_>,
            &mut AnomalyTotals,
        ) -> Vec<Connection>,
    ) -> Outcome {
        let end = self.end_time();
        let watch = self.watch;
        let mut transitions = self.transitions;
        let mut sink = transitions.as_mut();
        let flows = self.table.counters;
        let mut evicted_attempts: Vec<_> = self.table.flood.iter().map(|(k, v)| (*k, *v)).collect();
        evicted_attempts.sort_by_key(|(k, _)| *k);
        let mut anomalies = self.taken_anomalies;
        let connections = match end {
            Some(end) => take(self.table, end, &self.cfg, &mut sink, &mut anomalies),
            None => Vec::new(),
        };
        let mut transitions = transitions.unwrap_or_default();
        if let Some(watch) = watch {
            transitions.retain(|t| watch.selects(t.conn_id, t.key));
        }
        transitions.sort_by_key(|t| (t.ts, t.packet, t.conn_id));
        Outcome {
            connections,
            packets: self.front.counters,
            flows,
            first_ts: self.front.first_ts,
            end_ts: end,
            transitions,
            watched: self.watched,
            evicted_attempts,
            anomalies,
        }
    }
}

/// Keeps the items of `list[from..]` that `keep` accepts, in their order (`Vec::retain` over
/// a tail).
fn retain_from<T>(list: &mut Vec<T>, from: usize, mut keep: impl FnMut(&T) -> bool) {
    let mut kept = from;
    for i in from..list.len() {
        if keep(&list[i]) {
            list.swap(kept, i);
            kept += 1;
        }
    }
    list.truncate(kept);
}

impl crate::report::records_behind::Ended for Engine {
    fn ended_len(&self) -> usize {
        self.table.ended_len()
    }
    fn now(&self) -> Ts {
        self.now().unwrap_or_default()
    }
    fn take_ended_into(&mut self, into: &mut Vec<Connection>) {
        Engine::take_ended_into(self, into);
    }
}

#[cfg(test)]
mod tests {
    use super::retain_from;

    #[test]
    fn retain_from_keeps_the_head_and_the_order_of_the_tail() {
        for from in 0..=6 {
            let mut list: Vec<u32> = (0..6).collect();
            retain_from(&mut list, from, |n| n % 2 == 0);
            let want: Vec<u32> = (0..6).filter(|&n| n < from as u32 || n % 2 == 0).collect();
            assert_eq!(list, want, "from {from}");
        }
    }
}
