//! The flow table: one live connection record per 4-tuple, and the rules for when a
//! packet on a known 4-tuple starts a new connection instead.

pub mod conn;
mod prefetch;
mod slab;

use std::hash::BuildHasher;
use std::net::IpAddr;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use crate::decode::{Segment, SockAddr, flags};
use crate::tcp::TcpState;
use crate::time::{Dur, Ts};
pub use conn::{Connection, EngineConfig, IdleTimeouts, Side, TransitionSink};

use slab::{Slab, SlotId};

/// A 4-tuple in canonical order (lower address:port first), so both directions meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey(SockAddr, SockAddr);

impl FlowKey {
    pub fn new(a: SockAddr, b: SockAddr) -> FlowKey {
        if a <= b { FlowKey(a, b) } else { FlowKey(b, a) }
    }

    /// The lower address:port, then the higher.
    pub fn ends(&self) -> (SockAddr, SockAddr) {
        (self.0, self.1)
    }
}

/// The same hash for both directions of a 4-tuple, from integers rather than `IpAddr`'s
/// derived ordering and hashing (byte by byte), which cost more than the rest of the lookup.
/// 32 bits of it are kept in the index, so that growing the index never reads the records (`spread` makes the table's hash of them).
fn tuple_hash(hasher: &DefaultHashBuilder, a: SockAddr, b: SockAddr) -> u32 {
    // IPv4 (nearly every capture): each end's address and port in one word, two words to
    // hash instead of five.
    if let (IpAddr::V4(x), IpAddr::V4(y)) = (a.ip, b.ip) {
        let word =
            |ip: std::net::Ipv4Addr, port: u16| (u64::from(u32::from(ip)) << 16) | u64::from(port);
        let (x, y) = (word(x, a.port), word(y, b.port));
        let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
        return (hasher.hash_one((lo, hi)) >> 32) as u32;
    }
    fn bits(s: SockAddr) -> (u128, u16) {
        match s.ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), s.port),
            IpAddr::V6(v6) => (u128::from(v6), s.port),
        }
    }
    let (x, y) = (bits(a), bits(b));
    let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
    let ports = (u32::from(lo.1) << 16) | u32::from(hi.1);
    // Both ends' family: the same either way round, even for a pair no IP header carries
    // (one of each family), which the flow table's public API accepts.
    let v6 = a.ip.is_ipv6() | b.ip.is_ipv6();
    (hasher.hash_one((lo.0, hi.0, ports, v6)) >> 32) as u32
}

/// The index's 64-bit hash from a kept 32-bit one: a multiply by an odd constant spreads
/// it over the top bits hashbrown takes its tags from and the low bits it takes buckets from.
fn spread(short: u32) -> u64 {
    u64::from(short).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Is `conn` the record of the 4-tuple (a, b), in either direction?
#[inline(always)]
fn holds(conn: &Connection, a: &SockAddr, b: &SockAddr) -> bool {
    // Compared where they lie: copying the two 20-byte addresses out cost more.
    let (c, s) = (&conn.ends[0].addr, &conn.ends[1].addr);
    (c == a && s == b) || (c == b && s == a)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub connections: u64,
    /// Connections whose first packet was not a SYN.
    pub midstream_pickups: u64,
    /// New connections on a 4-tuple that already had one.
    pub tuple_reuses: u64,
    /// Reuses that took over a 4-tuple one side still held in TIME_WAIT.
    pub time_wait_reuses: u64,
    /// Connections evicted to stay within `--max-conns` (their records are kept, as of then).
    pub evicted: u64,
    /// Of those, half-open attempts (SYN or SYN-ACK only) dropped without a record to keep
    /// memory bounded under a SYN flood; counted per server in `FlowTable::flood`.
    pub evicted_half_open: u64,
    /// Connections not over whose tracking stopped after an idle timeout (their records are
    /// kept, as of then).
    pub expired_idle: u64,
    /// The most connections tracked at once (what memory follows).
    pub peak_live: u64,
}

/// Half-open attempts evicted without a record, per server address:port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictedAttempts {
    pub count: u64,
    pub syns: u64,
    pub first: Ts,
    pub last: Ts,
}

/// A hint is a slot in its low 24 bits and the top 8 bits of its tuple hash above them, so
/// that most hints of another 4-tuple are passed over without reading a record (in a SYN
/// flood, nearly all). A slot past 24 bits gets no hint, only the index.
const HINT_SLOT: u32 = (1 << 24) - 1;
const NO_SLOT: u32 = u32::MAX;

/// The fewest hints kept (4 KiB); in tests, few enough that 4-tuples share them.
const MIN_HINTS: usize = if cfg!(test) { 4 } else { 1024 };

fn hint(short: u32, slot: SlotId) -> u32 {
    if slot < HINT_SLOT {
        (short & !HINT_SLOT) | slot
    } else {
        NO_SLOT
    }
}

/// Calls of `FlowTable::look_ahead` between fetching a SYN's hint and fetching the record it
/// names: about the time a load from memory takes.
const AHEAD_STAGES: usize = 8;

/// How many servers `FlowTable::flood` follows; attempts to others are only counted.
const FLOOD_SERVERS_KEPT: usize = 4096;

#[derive(Default)]
pub struct FlowTable {
    /// The live records, in chunks that never move: memory follows the connections alive at
    /// once, and growing the index moves no records.
    records: Slab,
    /// Slot of each live record and 32 bits of its tuple's hash (8 bytes a bucket; the key
    /// is the record's own addresses). foldhash with a random seed: fast, and keys an
    /// attacker chooses do not collide at will.
    index: HashTable<(SlotId, u32)>,
    hasher: DefaultHashBuilder,
    /// The slot the last packet went to: a run of packets on one connection (a burst of
    /// data, a request and its answer) finds its record without hashing. Cleared whenever a
    /// record leaves its slot.
    last_slot: Option<SlotId>,
    /// Records that have ended (superseded by a reuse of their 4-tuple, over for 2MSL,
    /// expired or evicted), in the order they ended, until someone takes them.
    ended: Vec<Connection>,
    /// When to look for connections past their idle deadline.
    sweeps: SweepSchedule,
    next_id: u64,
    /// Number each connection by the packet that opened it instead of counting (`--threads`:
    /// a worker's numbers then sort as the whole capture's, and are renumbered when merged).
    ids_from_packets: bool,
    /// With `ids_from_packets`: the ids of half-open attempts dropped without a record since
    /// the last `take_dropped_ids` (the merge forgets their numbers).
    dropped_ids: Vec<u64>,
    pub counters: FlowCounters,
    /// A slot per tuple hash (its low bits), tried before the index: a record's address
    /// that can be fetched ahead (`look_ahead`), where the index's place for a hash is known
    /// only by probing it. Written when a record is placed, never cleared: a slot is taken
    /// only if its record holds the 4-tuple. See `hint`; `NO_SLOT` where none was written.
    hints: Vec<u32>,
    /// Calls of `look_ahead` so far, and the tuple hashes of the SYNs it was shown in the
    /// last `AHEAD_STAGES` calls, by call number (modulo), whose hints are being fetched.
    ahead_calls: usize,
    ahead_syns: [Option<u32>; AHEAD_STAGES],
    ahead_pending: usize,
    /// Evicted half-open attempts per server (at most `FLOOD_SERVERS_KEPT` servers).
    pub flood: HashMap<SockAddr, EvictedAttempts>,
}

impl FlowTable {
    pub fn new() -> FlowTable {
        FlowTable {
            next_id: 1,
            ..Default::default()
        }
    }

    /// A table for one worker of a sharded run: connections are numbered by the packet that
    /// opened them, and sweeps come only from `sweep` (the reader sees every packet's time
    /// and says when they are due).
    pub fn for_shard() -> FlowTable {
        FlowTable {
            ids_from_packets: true,
            ..FlowTable::new()
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.len() == 0
    }

    /// The connections being tracked now, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = &Connection> {
        self.records.iter().map(|(_, c)| c)
    }

    /// The slot the hints name for a tuple hash, if one was written there for a hash with
    /// the same top bits.
    fn hinted(&self, short: u32) -> Option<SlotId> {
        let mask = self.hints.len().wrapping_sub(1);
        let hint = *self.hints.get(short as usize & mask)?;
        (hint != NO_SLOT && hint & !HINT_SLOT == short & !HINT_SLOT).then_some(hint & HINT_SLOT)
    }

    /// The slot of the live record of (a, b), found through the hints alone.
    fn hinted_record(&self, short: u32, a: SockAddr, b: SockAddr) -> Option<SlotId> {
        self.hinted(short)
            .filter(|&s| self.records.try_get(s).is_some_and(|c| holds(c, &a, &b)))
    }

    /// Writes `slot` as the hint for `short`. The hints are between one and two per live
    /// record (4-8 bytes each): as many again would save few lookups for 4-8 more bytes.
    fn set_hint(&mut self, short: u32, slot: SlotId) {
        if self.hints.len() < self.records.len().max(1) {
            let len = (2 * self.records.len()).next_power_of_two().max(MIN_HINTS);
            self.hints = vec![NO_SLOT; len];
            for &(s, h) in self.index.iter() {
                self.hints[h as usize & (len - 1)] = hint(h, s);
            }
        }
        let mask = self.hints.len() - 1;
        self.hints[short as usize & mask] = hint(short, slot);
    }

    /// Called once per packet, before it, with the addresses of the SYN (without ACK or RST)
    /// some packets ahead, if that one is such a SYN: its hint is fetched now and the record
    /// the hint names `AHEAD_STAGES` calls later, so that both are in the cache when the SYN
    /// comes. (A SYN that reuses a 4-tuple finds a record that sat in TIME_WAIT while tens
    /// of megabytes of packets went through the caches.) Nothing here changes what the
    /// table holds or finds.
    #[inline]
    pub fn look_ahead(&mut self, syn: Option<(SockAddr, SockAddr)>) {
        self.ahead_calls = self.ahead_calls.wrapping_add(1);
        // Most packets are not SYNs, and most come with none being fetched.
        if syn.is_some() || self.ahead_pending > 0 {
            self.fetch_ahead(syn);
        }
    }

    fn fetch_ahead(&mut self, syn: Option<(SockAddr, SockAddr)>) {
        // The place of the SYN shown AHEAD_STAGES calls ago, and of this call's.
        let place = &mut self.ahead_syns[self.ahead_calls % AHEAD_STAGES];
        if let Some(short) = place.take() {
            self.ahead_pending -= 1;
            if let Some(slot) = self.hinted(short) {
                self.records.prefetch(slot);
            }
        }
        if let Some((a, b)) = syn {
            let short = tuple_hash(&self.hasher, a, b);
            let mask = self.hints.len().wrapping_sub(1);
            if let Some(hint) = self.hints.get(short as usize & mask) {
                prefetch::lines_of(hint);
                self.ahead_syns[self.ahead_calls % AHEAD_STAGES] = Some(short);
                self.ahead_pending += 1;
            }
        }
    }

    /// The live record on `key`.
    pub fn find(&self, key: FlowKey) -> Option<&Connection> {
        let short = tuple_hash(&self.hasher, key.0, key.1);
        let records = &self.records;
        self.index
            .find(spread(short), |&(slot, s)| {
                s == short && holds(records.get(slot), &key.0, &key.1)
            })
            .map(|&(slot, _)| records.get(slot))
    }

    /// Takes the record in `slot` out of the table.
    fn remove(&mut self, slot: SlotId) -> Connection {
        self.last_slot = None;
        let conn = self.records.remove(slot);
        let short = tuple_hash(&self.hasher, conn.ends[0].addr, conn.ends[1].addr);
        if let Ok(entry) = self.index.find_entry(spread(short), |&(s, _)| s == slot) {
            entry.remove();
        }
        conn
    }

    /// Takes out every record `pick` chooses.
    fn remove_where(&mut self, mut pick: impl FnMut(&Connection) -> bool) -> Vec<Connection> {
        let slots: Vec<SlotId> = self
            .records
            .iter()
            .filter(|(_, c)| pick(c))
            .map(|(slot, _)| slot)
            .collect();
        if slots.len() < self.index.len() / 16 {
            return slots.into_iter().map(|slot| self.remove(slot)).collect();
        }
        // Many at once (an eviction batch is an eighth of the table): their index entries
        // go in one pass over the index, where a lookup each would mostly miss the cache
        // (twice: the group, the entry) in a table of a million records.
        self.last_slot = None;
        let mut gone = vec![0u64; slots.iter().max().map_or(0, |&m| m as usize / 64 + 1)];
        for &slot in &slots {
            gone[slot as usize / 64] |= 1 << (slot % 64);
        }
        let is_gone = |slot: SlotId| {
            gone.get(slot as usize / 64)
                .is_some_and(|w| w & (1 << (slot % 64)) != 0)
        };
        self.index.retain(|&mut (slot, _)| !is_gone(slot));
        slots
            .into_iter()
            .map(|slot| self.records.remove(slot))
            .collect()
    }

    /// Records held: live ones and those ended but not yet taken (what `finish` returns).
    pub fn held(&self) -> usize {
        self.records.len() + self.ended.len()
    }

    /// The ids of half-open attempts evicted without a record since the last call (only
    /// kept for a table made by `for_shard`).
    pub fn take_dropped_ids(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped_ids)
    }

    pub fn has_ended(&self) -> bool {
        !self.ended.is_empty()
    }

    /// How many records `take_ended` has to give.
    pub fn ended_len(&self) -> usize {
        self.ended.len()
    }

    /// Takes the records that have ended since the last call (superseded by a new connection
    /// on their 4-tuple, evicted, or expired), in the order they ended.
    pub fn take_ended(&mut self) -> Vec<Connection> {
        std::mem::take(&mut self.ended)
    }

    /// `take_ended` into `into` (emptied first), whose allocation the table keeps for the
    /// next: no allocation per ended record for a caller that takes them after each packet.
    pub fn take_ended_into(&mut self, into: &mut Vec<Connection>) {
        into.clear();
        std::mem::swap(into, &mut self.ended);
    }

    /// Feeds one segment; returns the id of the connection it was given to.
    pub fn on_segment(
        &mut self,
        seg: &Segment,
        ts: Ts,
        packet: u64,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) -> u64 {
        if self.sweeps.due(ts, cfg) {
            let idle = self.sweep(ts, cfg, sink);
            self.ended.extend(idle.into_iter().map(|(_, c)| c));
        }
        self.apply(seg, ts, packet, cfg, sink)
    }

    /// `on_segment` without the sweep that may be due first.
    #[inline(always)]
    pub fn apply(
        &mut self,
        seg: &Segment,
        ts: Ts,
        packet: u64,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) -> u64 {
        let slot = match self.last_slot {
            Some(slot) if holds(self.records.get(slot), &seg.src, &seg.dst) => slot,
            _ => {
                let short = tuple_hash(&self.hasher, seg.src, seg.dst);
                let slot = match self.hinted_record(short, seg.src, seg.dst) {
                    Some(slot) => slot,
                    None => {
                        let records = &self.records;
                        let Some(&(slot, _)) = self.index.find(spread(short), |&(slot, s)| {
                            s == short && holds(records.get(slot), &seg.src, &seg.dst)
                        }) else {
                            return self.insert_new(short, seg, ts, packet, cfg, sink);
                        };
                        // Another 4-tuple's record took the hint since: this one is back.
                        self.set_hint(short, slot);
                        slot
                    }
                };
                self.last_slot = Some(slot);
                slot
            }
        };
        // A record past its deadline ends now, whether or not a sweep has come by, so that
        // results never depend on when sweeps happen.
        if ts > self.records.get(slot).idle_deadline(cfg) {
            let conn = self.remove(slot);
            let conn = self.end_idle(conn, cfg, sink);
            self.ended.push(conn);
            let short = tuple_hash(&self.hasher, seg.src, seg.dst);
            return self.insert_new(short, seg, ts, packet, cfg, sink);
        }
        let conn = self.records.get_mut(slot);
        let side = conn.side_of(&seg.src);
        if !starts_new_connection(conn, seg, side, ts, cfg) {
            conn.on_segment(seg, side, ts, packet, cfg, sink);
            return conn.id;
        }
        let in_time_wait = conn.ends.iter().any(|e| e.state == TcpState::TimeWait);
        conn.supersede(ts, packet, cfg, sink);
        self.counters.tuple_reuses += 1;
        if in_time_wait {
            self.counters.time_wait_reuses += 1;
        }
        let mut fresh = self.new_record(seg, ts, packet);
        let id = fresh.id;
        fresh.on_segment(seg, fresh.side_of(&seg.src), ts, packet, cfg, sink);
        let old = std::mem::replace(self.records.get_mut(slot), fresh);
        self.ended.push(old);
        id
    }

    /// A new record whose first packet (number `packet`) is `seg`, numbered, counted.
    fn new_record(&mut self, seg: &Segment, ts: Ts, packet: u64) -> Connection {
        let id = if self.ids_from_packets {
            packet
        } else {
            self.next_id
        };
        self.next_id += 1;
        let conn = Connection::new(id, seg, ts);
        self.counters.connections += 1;
        if conn.partial {
            self.counters.midstream_pickups += 1;
        }
        conn
    }

    /// A record for a 4-tuple with none, after making room under `--max-conns`.
    fn insert_new(
        &mut self,
        short: u32,
        seg: &Segment,
        ts: Ts,
        packet: u64,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) -> u64 {
        if let Some(max) = cfg.max_conns
            && self.records.len() >= max.max(1)
        {
            self.evict_least_recent(ts, cfg, sink);
        }
        let mut conn = self.new_record(seg, ts, packet);
        let id = conn.id;
        conn.on_segment(seg, conn.side_of(&seg.src), ts, packet, cfg, sink);
        let slot = self.records.insert(conn);
        self.set_hint(short, slot);
        self.last_slot = Some(slot);
        self.counters.peak_live = self.counters.peak_live.max(self.records.len() as u64);
        self.index
            .insert_unique(spread(short), (slot, short), |&(_, s)| spread(s));
        id
    }

    /// Makes room under `--max-conns`: evicts the eighth of the table that was active least
    /// recently (a batch, so a flood of new tuples costs amortised constant time per packet).
    /// Half-open attempts are dropped and counted per server; other records are kept as of now.
    fn evict_least_recent(&mut self, now: Ts, cfg: &EngineConfig, sink: &mut TransitionSink<'_>) {
        // The batch-th least recent (activity time, id) is the cut-off; only those pairs are
        // copied to find it. The id breaks ties, so the same connections go in every run.
        let mut ages: Vec<(Ts, u64)> = self.live().map(|c| (c.last, c.id)).collect();
        let batch = (ages.len() / 8).max(1);
        if ages.is_empty() {
            return;
        }
        let cutoff = *ages.select_nth_unstable(batch - 1).1;
        let mut evicted = self.remove_where(|c| (c.last, c.id) <= cutoff);
        evicted.sort_by_key(|c| (c.last, c.id));
        for mut conn in evicted {
            conn.advance_time(now, cfg, sink);
            self.counters.evicted += 1;
            if conn.is_half_open_attempt() {
                self.counters.evicted_half_open += 1;
                if self.ids_from_packets {
                    self.dropped_ids.push(conn.id);
                }
                let server = conn.end(Side::Server).addr;
                let kept = self.flood.len() < FLOOD_SERVERS_KEPT;
                let syns = u64::from(conn.syn_count(Side::Client).max(1));
                match self.flood.get_mut(&server) {
                    Some(a) => {
                        a.count += 1;
                        a.syns += syns;
                        a.first = a.first.min(conn.start);
                        a.last = a.last.max(conn.last);
                    }
                    None if kept => {
                        self.flood.insert(
                            server,
                            EvictedAttempts {
                                count: 1,
                                syns,
                                first: conn.start,
                                last: conn.last,
                            },
                        );
                    }
                    None => {}
                }
            } else {
                conn.rare_mut().evicted_at = now.into();
                self.ended.push(conn);
            }
        }
    }

    /// Ends the records past their idle deadline at `now`, in (deadline, id) order: the
    /// table's own order is a random hash order, and every run over the same packets (live or
    /// from the file, on one thread or several) must end them in the same order. Each comes
    /// with its deadline, by which the ends of several shards' sweeps are merged.
    pub fn sweep(
        &mut self,
        now: Ts,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) -> Vec<(Ts, Connection)> {
        let mut idle: Vec<(Ts, Connection)> = self
            .remove_where(|c| now > c.idle_deadline(cfg))
            .into_iter()
            .map(|c| (c.idle_deadline(cfg), c))
            .collect();
        idle.sort_by_key(|(deadline, c)| (*deadline, c.id));
        idle.into_iter()
            .map(|(deadline, conn)| (deadline, self.end_idle(conn, cfg, sink)))
            .collect()
    }

    /// Ends a record that has been silent past its deadline: over ones end normally (their
    /// timers run out), others are marked expired with their states as they were.
    fn end_idle(
        &mut self,
        mut conn: Connection,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) -> Connection {
        let deadline = conn.idle_deadline(cfg);
        conn.advance_time(deadline, cfg, sink);
        if !conn.is_over() {
            conn.rare_mut().expired_at = deadline.into();
            self.counters.expired_idle += 1;
        }
        conn
    }

    /// Ends every record at `now` and returns all connections in id order. The live records
    /// join the list of ended ones, which is sorted where it lies: a second list the size of
    /// the table (twice the records' memory at the peak) is never made.
    pub fn finish(
        mut self,
        now: Ts,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
    ) -> Vec<Connection> {
        let mut all = std::mem::take(&mut self.ended);
        // The index goes first, and the records' chunks one by one as they are emptied.
        self.index = HashTable::new();
        all.reserve_exact(self.records.len());
        for mut conn in std::mem::take(&mut self.records).into_records() {
            // The order records finish in does not matter: a record's transitions are its
            // own, and the transition list is sorted afterwards.
            conn.finish(now, cfg, sink);
            all.push(conn);
        }
        sort_large_by_key(&mut all, |c| c.id);
        all
    }

    /// Ends every record at `now` and hands each to `each` in id order, one at a time, so a
    /// report that writes them as they come holds no second copy of the table.
    pub fn finish_each(
        mut self,
        now: Ts,
        cfg: &EngineConfig,
        sink: &mut TransitionSink<'_>,
        mut each: impl FnMut(Connection),
    ) {
        // Records that ended but were not taken, and the live ones; sorted by id through
        // (id, place) pairs so that each record moves once.
        let mut ended: Vec<Option<Connection>> = std::mem::take(&mut self.ended)
            .into_iter()
            .map(Some)
            .collect();
        self.index = HashTable::new();
        let mut order: Vec<(u64, bool, u32)> = ended
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (c.id, false, i as u32)))
            .chain(self.records.iter().map(|(slot, c)| (c.id, true, slot)))
            .collect();
        order.sort_unstable();
        for (_, live, at) in order {
            let conn = if live {
                self.last_slot = None;
                let mut conn = self.records.remove(at);
                conn.finish(now, cfg, sink);
                Some(conn)
            } else {
                ended.get_mut(at as usize).and_then(Option::take)
            };
            if let Some(conn) = conn {
                each(conn);
            }
        }
    }
}

/// Sorts `v` by `key`, moving each element about once: the order is found on indices, then
/// applied by following its cycles (a comparison sort of the elements themselves would
/// move 200-byte records log n times each).
pub fn sort_large_by_key<T, K: Ord>(v: &mut [T], key: impl Fn(&T) -> K) {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by_key(|&i| key(&v[i]));
    // order[k]: where the element that belongs at k is now. A placed k gets order[k] = k.
    for start in 0..v.len() {
        let mut k = start;
        // The element first at `start` travels along the cycle, swapped into each place
        // whose own element it frees.
        loop {
            let from = order[k];
            order[k] = k;
            if from == start {
                break;
            }
            v.swap(k, from);
            k = from;
        }
    }
}

/// When the flow table looks for connections past their idle deadline: every so often in
/// packet time, a fraction of the shortest timeout so that a record outlives its deadline by
/// little. A function of the packet times alone, so a sharded run's reader can keep it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SweepSchedule {
    next: Option<Ts>,
}

impl SweepSchedule {
    /// Is a sweep due at `now` (a TCP segment's time)? If so, the next one is scheduled.
    pub fn due(&mut self, now: Ts, cfg: &EngineConfig) -> bool {
        let due = *self.next.get_or_insert(now);
        if now < due {
            return false;
        }
        let shortest = [
            cfg.time_wait,
            cfg.idle.handshake,
            cfg.idle.closing,
            cfg.idle.established,
        ]
        .into_iter()
        .min()
        .unwrap_or_default();
        let interval = Dur(shortest.0 / 8).clamp(Dur::from_millis(1000), Dur::from_millis(10_000));
        self.next = Some(now.plus(interval));
        true
    }
}

/// Does this packet open a new connection on a 4-tuple that has a record?
///
/// A SYN with a new initial sequence number does, once the old connection is over (both
/// sides CLOSED or TIME_WAIT: a server's TIME_WAIT accepts a new SYN, and Linux's
/// tcp_tw_reuse lets a client reconnect from a port it holds in TIME_WAIT), or when the
/// sender's earlier attempt is still unanswered (a new socket, so a new connection).
/// Anything else on a closed tuple is a late packet of the old connection, unless it comes
/// after the old connection has been silent for longer than 2MSL: then it is a connection
/// picked up mid-stream.
fn starts_new_connection(
    conn: &Connection,
    seg: &Segment,
    side: Side,
    ts: Ts,
    cfg: &EngineConfig,
) -> bool {
    let sender = conn.end(side);
    if flags::opens(seg.flags) {
        if sender.isn() == Some(seg.seq) {
            return false; // a retransmission
        }
        let over = conn.is_over() || matches!(sender.state, TcpState::TimeWait | TcpState::Closed);
        let earlier_attempt_unanswered =
            sender.state == TcpState::SynSent && conn.synack_first.is_none();
        return over || earlier_attempt_unanswered;
    }
    conn.is_over() && ts.since(conn.last) > cfg.time_wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn syn(client_port: u16) -> Segment {
        Segment {
            src: SockAddr {
                ip: "10.0.0.1".parse().unwrap(),
                port: client_port,
            },
            dst: SockAddr {
                ip: "10.0.0.2".parse().unwrap(),
                port: 80,
            },
            seq: 1000,
            ack: 0,
            flags: flags::SYN,
            window: 1024,
            wscale: None,
            payload_len: 0,
        }
    }

    /// A 4-tuple with one end of each family (no IP header carries one, but the table's API
    /// takes it) hashes alike both ways round: its record leaves the index when it ends, and
    /// a later lookup finds no stale entry (found by the row writers' random records: it
    /// panicked on an empty slot).
    #[test]
    fn mixed_family_tuple_leaves_the_index_with_its_record() {
        let cfg = EngineConfig::default();
        let (v6, v4): (SockAddr, SockAddr) =
            ("[::1]:443".parse().unwrap(), "10.0.0.1:80".parse().unwrap());
        let seg = |src, dst, flags| Segment {
            src,
            dst,
            seq: 1,
            ack: 0,
            flags,
            window: 100,
            wscale: None,
            payload_len: 0,
        };
        let mut table = FlowTable::new();
        // A SYN-ACK first: the record's client is the packet's destination, so the record's
        // ends are the packet's addresses the other way round.
        table.on_segment(
            &seg(v6, v4, flags::SYN | flags::ACK),
            Ts(0),
            1,
            &cfg,
            &mut None,
        );
        // Other tuples take the last slot; a day later the sweep ends the first record, and
        // its tuple comes back by the index.
        table.on_segment(&seg(v4, v4, flags::SYN), Ts(0), 2, &cfg, &mut None);
        let day = Ts(86_400_000_000_001);
        let other: SockAddr = "[2001:db8::1]:443".parse().unwrap();
        table.on_segment(&seg(other, v4, flags::SYN), day, 3, &cfg, &mut None);
        table.on_segment(&seg(v6, v4, flags::SYN), day, 4, &cfg, &mut None);
        let ids: Vec<u64> = table
            .finish(day, &cfg, &mut None)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }

    /// Records taken out a few at a time (an index lookup each) and many at once (one pass
    /// over the index) leave the same table: each record left is found by its 4-tuple, none
    /// taken is, and a new connection on a taken 4-tuple gets a record of its own.
    #[test]
    fn sweeps_of_few_and_of_many_leave_the_index_whole() {
        let cfg = EngineConfig::default();
        let ms = 1_000_000;
        let mut table = FlowTable::new();
        // 320 SYNs, the i-th at i ms: the handshake timeout (180 s) ends them in order.
        for port in 0..320u16 {
            let at = Ts(i64::from(port) * ms);
            table.on_segment(&syn(1000 + port), at, u64::from(port) + 1, &cfg, &mut None);
        }
        let handshake = cfg.idle.handshake.0;
        let check = |table: &FlowTable, gone: u16| {
            for port in 0..320u16 {
                let s = syn(1000 + port);
                let found = table.find(FlowKey::new(s.src, s.dst)).map(|c| c.id);
                let want = (port >= gone).then_some(u64::from(port) + 1);
                assert_eq!(found, want, "port {}", 1000 + port);
            }
            assert_eq!(table.index.len(), usize::from(320 - gone));
        };
        // 10 of 320 (below a sixteenth: a lookup each), then 200 of 310 (at once).
        for (gone, lookups) in [(10u16, true), (210, false)] {
            let before = table.len();
            let now = Ts(i64::from(gone - 1) * ms + handshake + 1);
            let idle = table.sweep(now, &cfg, &mut None);
            assert_eq!(idle.len(), before - table.len());
            assert_eq!(lookups, idle.len() < before / 16, "the path meant");
            check(&table, gone);
        }
        // The first 4-tuple again: a new record, found; the others as they were.
        let again = Ts(200_000 * ms);
        let id = table.on_segment(&syn(1000), again, 999, &cfg, &mut None);
        assert_eq!(id, 321);
        let s = syn(1000);
        assert_eq!(
            table.find(FlowKey::new(s.src, s.dst)).map(|c| c.id),
            Some(321)
        );
    }

    /// The slot the last packet used is never trusted after its record left: a record that
    /// ends (idle, evicted, at the end) while it is the last one used leaves no stale slot.
    #[test]
    fn last_slot_is_dropped_with_its_record() {
        let cfg = EngineConfig {
            max_conns: Some(1),
            idle: IdleTimeouts {
                handshake: Dur::from_millis(1_000),
                ..IdleTimeouts::default()
            },
            ..EngineConfig::default()
        };
        let mut table = FlowTable::new();
        let at = |ms: i64| Ts(ms * 1_000_000);
        let a = table.on_segment(&syn(1), at(0), 1, &cfg, &mut None);
        // Past the handshake's idle deadline: the same tuple starts a new connection.
        let b = table.on_segment(&syn(1), at(5_000), 2, &cfg, &mut None);
        // A new tuple evicts the only record (--max-conns 1), which was the last one used.
        let c = table.on_segment(&syn(2), at(5_001), 3, &cfg, &mut None);
        let d = table.on_segment(&syn(1), at(5_002), 4, &cfg, &mut None);
        let e = table.on_segment(&syn(1), at(5_003), 5, &cfg, &mut None);
        assert_eq!((a, b, c, d), (1, 2, 3, 4));
        // A retransmitted SYN on a live record goes to it, through the last slot.
        assert_eq!(e, 4);
        // 1 ended idle; 2 and 3 were half-open attempts evicted without a record.
        assert_eq!(table.counters.evicted_half_open, 2);
        let ids: Vec<u64> = table
            .finish(at(6_000), &cfg, &mut None)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, [1, 4]);
    }

    /// The hints and the look ahead change nothing: every packet goes to the record the index
    /// holds for its 4-tuple, and a table shown SYNs ahead (any, right or wrong) ends the
    /// same records as one that is not. Few tuples and few hints, so that hints are shared,
    /// overwritten and left naming slots that were emptied or given to another tuple.
    #[test]
    fn hints_and_look_ahead_change_nothing() {
        let cfg = EngineConfig {
            max_conns: Some(6),
            time_wait: Dur::from_millis(50),
            idle: IdleTimeouts {
                handshake: Dur::from_millis(40),
                established: Dur::from_millis(80),
                closing: Dur::from_millis(60),
            },
        };
        let flag_sets = [
            flags::SYN,
            flags::SYN | flags::ACK,
            flags::ACK,
            flags::FIN | flags::ACK,
            flags::RST,
        ];
        let packet = (
            0u16..12,
            any::<bool>(),
            0usize..5,
            0u32..4,
            0i64..15,
            0u16..12,
        );
        crate::seeded_runner(400)
            .run(&proptest::collection::vec(packet, 1..300), |packets| {
                let mut shown = FlowTable::new();
                let mut plain = FlowTable::new();
                let mut now = 0;
                for (n, &(port, reply, f, seq, gap, ahead_port)) in packets.iter().enumerate() {
                    let mut seg = syn(port);
                    if reply {
                        std::mem::swap(&mut seg.src, &mut seg.dst);
                    }
                    seg.flags = flag_sets[f];
                    seg.seq = seq * 1000;
                    seg.ack = seq * 1000 + 1;
                    now += gap;
                    let ahead = syn(ahead_port);
                    shown.look_ahead(Some((ahead.src, ahead.dst)));
                    let ts = Ts(now * 1_000_000);
                    let id = shown.on_segment(&seg, ts, n as u64 + 1, &cfg, &mut None);
                    let want = plain.on_segment(&seg, ts, n as u64 + 1, &cfg, &mut None);
                    prop_assert_eq!(id, want);
                    let held = shown.find(FlowKey::new(seg.src, seg.dst)).map(|c| c.id);
                    prop_assert_eq!(held, Some(id));
                }
                let ids = |t: FlowTable| {
                    let mut ended: Vec<(u64, TcpState, TcpState)> = t
                        .finish(Ts((now + 1) * 1_000_000), &cfg, &mut None)
                        .iter()
                        .map(|c| (c.id, c.ends[0].state, c.ends[1].state))
                        .collect();
                    ended.sort_by_key(|e| e.0);
                    ended
                };
                prop_assert_eq!(shown.counters, plain.counters);
                prop_assert_eq!(ids(shown), ids(plain));
                Ok(())
            })
            .unwrap();
    }

    /// The cycle-following sort gives what a stable sort of the elements gives.
    #[test]
    fn sort_large_matches_sort() {
        crate::seeded_runner(5_000)
            .run(
                &proptest::collection::vec((0u16..50, any::<u32>()), 0..200),
                |v| {
                    let mut want = v.clone();
                    want.sort_by_key(|e| e.0);
                    let mut got = v;
                    sort_large_by_key(&mut got, |e| e.0);
                    prop_assert_eq!(got, want);
                    Ok(())
                },
            )
            .unwrap();
    }
}
