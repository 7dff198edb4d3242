//! The connection table: lookup by unordered 4-tuple, creation and reuse (sections 3, 6.1),
//! and timers that fire on packet time (section 6.3).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr};

use hashbrown::HashMap;

use super::conn::{Conn, TimerKind, flip_at_creation};
use super::decode::{Ctx, IpOut, TcpSeg, decode_ip, decode_reassembled, link_to_ip};
use super::frag;
use super::log::uid;
use super::{ZeekConfig, ZeekConn};
use crate::capture::RawPacket;
use crate::decode::SockAddr;
use crate::time::Ts;

/// The connection key: the two socket addresses in a fixed order, nothing else (no VLAN, no
/// tunnel), so both directions and both encapsulations meet.
type Key = (SockAddr, SockAddr);

fn key_of(a: SockAddr, b: SockAddr) -> Key {
    if a <= b { (a, b) } else { (b, a) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: i64,
    /// Insertion order among timers due at the same time.
    order: u64,
    kind: TimerKind,
    generation: u32,
    conn_id: u64,
    key: Key,
}

struct Live {
    id: u64,
    conn: Conn,
}

/// Follows TCP connections the way Zeek does and produces its `conn.log` rows.
pub struct ZeekTracker {
    cfg: ZeekConfig,
    /// Boxed: a connection is over a kilobyte, and the table moves its entries as it grows.
    /// hashbrown's default hasher (foldhash) resists chosen keys, as the flow table's does.
    conns: HashMap<Key, Box<Live>>,
    timers: BinaryHeap<Reverse<Pending>>,
    /// Packet time; never moves backwards.
    network_time: Option<i64>,
    next_id: u64,
    next_order: u64,
    frags: frag::Reassembler,
    finished: Vec<ZeekConn>,
    /// Connections logged early under `max_conns`.
    evicted: u64,
    /// Queued timers past which the stale ones are cleared out.
    compact_at: usize,
    /// The least `compact_at` is set to (tests set 0: a clearing after every packet).
    clear_from: usize,
}

/// Timers queued before stale ones (of a connection gone, or a cancelled generation) are
/// cleared out: they would fire as no-ops, but a flood of short-lived tuples leaves millions.
const TIMERS_KEPT_AT_LEAST: usize = 1 << 16;

impl ZeekTracker {
    pub fn new(cfg: ZeekConfig) -> Self {
        ZeekTracker {
            cfg,
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            network_time: None,
            next_id: 0,
            next_order: 0,
            frags: frag::Reassembler::default(),
            finished: Vec::new(),
            evicted: 0,
            compact_at: TIMERS_KEPT_AT_LEAST,
            clear_from: TIMERS_KEPT_AT_LEAST,
        }
    }

    /// Clears stale timers out once more than `n` are queued, and again each time the queue
    /// has doubled (0: after every packet). For tests: the rows must not change.
    pub fn clear_stale_timers_from(mut self, n: usize) -> Self {
        self.clear_from = n;
        self.compact_at = n;
        self
    }

    /// Handles one captured frame: advances packet time (firing due timers), then decodes the
    /// frame and, if it is TCP that passes Zeek's checks, hands it to its connection.
    pub fn process(&mut self, pkt: &RawPacket<'_>) {
        let ts = if pkt.ts == Ts::UNKNOWN {
            self.network_time.unwrap_or(0)
        } else {
            // Zeek reads timestamps with microsecond precision (truncated).
            pkt.ts.0.div_euclid(1000)
        };
        self.advance(ts);
        let Some((ip, link_len)) = link_to_ip(pkt.linktype, pkt.data) else {
            return;
        };
        let wire = (pkt.orig_len as usize).saturating_sub(link_len);
        let ctx = Ctx {
            ignore_checksums: self.cfg.ignore_checksums,
            depth: 0,
        };
        match decode_ip(ip, wire, &ctx) {
            IpOut::Tcp(seg) => self.handle(&seg, ts),
            IpOut::Frag(f) => {
                if let Some(datagram) = self.frags.add(&f) {
                    let ctx = Ctx {
                        ignore_checksums: self.cfg.ignore_checksums,
                        depth: u8::from(f.tunneled),
                    };
                    if let IpOut::Tcp(seg) = decode_reassembled(&datagram, &ctx) {
                        self.handle(&seg, ts);
                    }
                }
            }
            IpOut::Skip => {}
        }
    }

    /// Whether `take_finished` has rows to give (cheap, for a check after every packet).
    pub fn has_finished(&self) -> bool {
        !self.finished.is_empty()
    }

    /// Rows of connections that ended so far (removed from the table), in removal order.
    /// Calling it hands them over; [`ZeekTracker::finish`] returns the rest.
    pub fn take_finished(&mut self) -> Vec<ZeekConn> {
        std::mem::take(&mut self.finished)
    }

    /// Ends the input: every connection still open is logged as it is. Returns all rows not
    /// yet taken: first those that ended during the capture (removal order), then the open
    /// ones by start time.
    pub fn finish(mut self) -> Vec<ZeekConn> {
        let mut open: Vec<Box<Live>> = self.conns.drain().map(|(_, l)| l).collect();
        open.sort_by_key(|l| (l.conn.start_time, l.id));
        let mut rows = std::mem::take(&mut self.finished);
        rows.extend(open.iter().map(|l| row(l.id, &l.conn)));
        rows
    }

    /// Number of connections currently open.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// Connections logged and removed early because `max_conns` were open.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn advance(&mut self, ts: i64) {
        let now = match self.network_time {
            Some(t) if t >= ts => t,
            _ => ts,
        };
        self.network_time = Some(now);
        while let Some(Reverse(top)) = self.timers.peek() {
            if top.at > now {
                break;
            }
            let t = *top;
            self.timers.pop();
            if !is_current(&self.conns, &t) {
                continue;
            }
            let Some(live) = self.conns.get_mut(&t.key) else {
                continue;
            };
            let ends = live.conn.fire(t.kind, now);
            if ends {
                self.remove(t.key);
            } else {
                self.schedule(t.key);
            }
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(l) = self.conns.remove(&key) {
            self.finished.push(row(l.id, &l.conn));
        }
    }

    /// Queues the timers the connection at `key` asked for.
    fn schedule(&mut self, key: Key) {
        let Some(live) = self.conns.get_mut(&key) else {
            return;
        };
        for r in live.conn.requests.drain(..) {
            self.next_order += 1;
            self.timers.push(Reverse(Pending {
                at: r.at,
                order: self.next_order,
                kind: r.kind,
                generation: r.generation,
                conn_id: live.id,
                key,
            }));
        }
        if self.timers.len() > self.compact_at {
            self.compact_timers();
        }
    }

    /// Drops the queued timers that would fire as no-ops (a stale one stays stale: a key's
    /// next connection has another id, generations only move on). Each timer's place in
    /// the queue is total (time, then queueing order), so the rest fire as before.
    fn compact_timers(&mut self) {
        let conns = &self.conns;
        let mut kept = std::mem::take(&mut self.timers).into_vec();
        kept.retain(|Reverse(t)| is_current(conns, t));
        self.timers = BinaryHeap::from(kept);
        // Not again before the queue has doubled: each pass costs its length.
        self.compact_at = if self.clear_from == 0 {
            0
        } else {
            (2 * self.timers.len())
                .max(4 * self.conns.len())
                .max(self.clear_from)
        };
    }

    /// Under `max_conns`, makes room for one more: the least recently active eighth (by last
    /// packet, then creation) is logged as it stands and removed, oldest first.
    fn make_room(&mut self) {
        let Some(max) = self.cfg.max_conns else {
            return;
        };
        if self.conns.len() < max.max(1) {
            return;
        }
        let mut ages: Vec<(i64, u64)> = self
            .conns
            .values()
            .map(|l| (l.conn.last_time, l.id))
            .collect();
        let batch = (ages.len() / 8).max(1);
        let cutoff = *ages.select_nth_unstable(batch - 1).1;
        let mut gone: Vec<((i64, u64), Key)> = self
            .conns
            .iter()
            .map(|(k, l)| ((l.conn.last_time, l.id), *k))
            .filter(|(age, _)| *age <= cutoff)
            .collect();
        gone.sort_unstable();
        for (_, key) in gone {
            self.remove(key);
            self.evicted += 1;
        }
        self.compact_timers();
    }

    fn handle(&mut self, seg: &TcpSeg<'_>, ts: i64) {
        let tcp = seg.tcp;
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let flags = tcp[13];
        let src = SockAddr {
            ip: seg.src,
            port: sport,
        };
        let dst = SockAddr {
            ip: seg.dst,
            port: dport,
        };
        let key = key_of(src, dst);
        let reuse = match self.conns.get(&key) {
            Some(l) => l.conn.is_reuse(tcp),
            None => true,
        };
        if reuse {
            self.remove(key);
            self.make_room();
            // Never towards the limited broadcast address (section 3.2).
            let broadcast = seg.dst == IpAddr::V4(Ipv4Addr::BROADCAST);
            let flip =
                !broadcast && flip_at_creation(flags, sport, dport, &self.cfg.likely_server_ports);
            let now = self.network_time.unwrap_or(ts);
            let conn = Conn::new(src, dst, flip, ts, now, seg.tunneled);
            let id = self.next_id;
            self.next_id += 1;
            self.conns.insert(key, Box::new(Live { id, conn }));
        }
        let ignore = self.cfg.ignore_checksums;
        let Some(live) = self.conns.get_mut(&key) else {
            return;
        };
        live.conn.tunneled |= seg.tunneled;
        let is_orig = live.conn.orig == src;
        live.conn
            .deliver(seg, is_orig, ts, ignore, &self.cfg.likely_server_ports);
        self.schedule(key);
    }
}

/// Whether a queued timer still belongs to its connection: the one on its key, with its id,
/// in the generation it was set for (a later one cancels it).
fn is_current(conns: &HashMap<Key, Box<Live>>, t: &Pending) -> bool {
    conns.get(&t.key).is_some_and(|live| {
        let current = match t.kind {
            TimerKind::Inactivity => live.conn.inactivity_generation,
            _ => live.conn.analyzer_generation,
        };
        live.id == t.conn_id && current == t.generation
    })
}

fn row(id: u64, c: &Conn) -> ZeekConn {
    ZeekConn {
        uid: uid(id),
        ts_us: c.start_time,
        orig: c.orig,
        resp: c.resp,
        duration_us: c.last_time.saturating_sub(c.start_time),
        orig_bytes: c.size(0),
        resp_bytes: c.size(1),
        conn_state: c.conn_state(),
        missed_bytes: c.missed_bytes,
        history: c.history.clone(),
        orig_pkts: c.ep[0].pkts,
        orig_ip_bytes: c.ep[0].ip_bytes,
        resp_pkts: c.ep[1].pkts,
        resp_ip_bytes: c.ep[1].ip_bytes,
        tunneled: c.tunneled,
    }
}
