//! `--threads N`: one run spread over N workers, with results identical to one thread.
//!
//! The reader (the calling thread) reads and decodes every packet, keeps the clock and the
//! sweep schedule, and hands each TCP segment to the worker that owns its 4-tuple (by a
//! symmetric hash, so both directions meet). Each worker keeps its own flow table. Packets
//! go out in numbered batches; when every worker has done a batch, its results are merged:
//! - Connections are numbered in the order they opened. Workers number each by the packet
//!   that opened it (a packet opens at most one), which sorts the same way; the merge
//!   renumbers them 1, 2, 3... as one table would.
//! - Records end in the order one table ends them: by the packet at which they end; at one
//!   packet, a sweep's first (in (deadline, id) order, across workers), then those the
//!   packet itself ended (all on the worker that owns its 4-tuple).
//! - Sweeps happen at the same packets as on one thread: the schedule is a function of the
//!   segments' times, which the reader sees, and it tells every worker.
//! - The most connections tracked at once is counted over the merged openings and endings.
//!
//! One difference: `--max-conns` applies to each worker's table (the limit divided by N), so
//! when a capture reaches it, which connections are evicted can differ from one thread.

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use hashbrown::HashMap;

use super::{Admitted, AnomalyTotals, Front, Outcome};
use crate::capture::RawPacket;
use crate::decode::{SockAddr, flags};
use crate::flow::{
    Connection, EngineConfig, EvictedAttempts, FlowCounters, FlowTable, SweepSchedule,
};
use crate::time::Ts;

/// Segments a batch holds (over all workers): large enough that handing batches over costs
/// little, small enough that the merged output follows the input closely.
const BATCH_SEGMENTS: usize = 8192;
/// Batches queued for a worker, and results queued for the merge: bounds the memory in flight.
const BATCHES_IN_FLIGHT: usize = 4;
/// Records a worker hands over at a time when the run finishes.
const FINISH_CHUNK: usize = 1024;

/// What a worker is told to do with one packet.
enum Item {
    /// Sweep the table: a sweep is due at this packet, whose segment went to another worker.
    Sweep { ts: Ts, packet: u64 },
    /// A segment of one of its 4-tuples, after a sweep if one is due at this packet.
    Segment {
        admitted: Admitted,
        sweep_first: bool,
    },
}

enum ToWorker {
    /// A batch's items for this worker; `first` is the capture's first packet time.
    Batch { items: Vec<Item>, first: Option<Ts> },
    /// The input is over: end every record at `end` (none if no packet came).
    Finish { end: Option<Ts>, first: Option<Ts> },
}

/// Where a record's end falls in the run: the packet, then 0 for a sweep's ends (ordered by
/// deadline and id) or 1 for those the packet itself caused (in the order they happened).
type EndKey = (u64, u8, i64, u64);

struct Ended {
    key: EndKey,
    /// The clock when it ended (the time of that packet): reports of it are as of then.
    now: Ts,
    conn: Connection,
}

/// A worker's results for one batch.
#[derive(Default)]
struct BatchDone {
    /// The capture's first packet time, passed on from the reader.
    first: Option<Ts>,
    /// Packets that opened a connection, in order.
    opened: Vec<u64>,
    ended: Vec<Ended>,
    /// Half-open attempts evicted without a record: (packet at which, worker id).
    dropped: Vec<(u64, u64)>,
}

/// What a worker has when its table is done.
struct WorkerTotals {
    counters: FlowCounters,
    flood: HashMap<SockAddr, EvictedAttempts>,
}

enum FromWorker {
    Batch(BatchDone),
    /// The input is over (passed on from the reader); the finished records follow.
    Finishing {
        end: Option<Ts>,
        first: Option<Ts>,
    },
    /// Records still held at the finish, in id order (a chunk of them).
    Finished(Vec<Connection>),
    Done(Box<WorkerTotals>),
}

/// What the merged results go to.
pub trait MergedSink {
    /// Records that ended at one packet (superseded, over for 2MSL, expired, evicted), in
    /// order; `now` is that packet's time, `first` the capture's first.
    /// `conns` is emptied after the call; a sink may take them.
    fn ended(&mut self, conns: &mut Vec<Connection>, now: Ts, first: Option<Ts>)
    -> ControlFlow<()>;
    /// The input is over; the report's clock stops at `end` (`--at`, or the last packet);
    /// `first` is the capture's first packet time.
    fn at_end(&mut self, end: Option<Ts>, first: Option<Ts>);
    /// The records still held at the end, one at a time in id order. What it returns is
    /// kept in `Outcome::connections`.
    fn finished(&mut self, conn: Connection) -> Option<Connection>;
}

/// The merge's running state.
#[derive(Default)]
struct Merge {
    /// Worker numbers (the opening packet) of the connections open now, to their real ids.
    ids: HashMap<u64, u64>,
    next_id: u64,
    live: u64,
    peak_live: u64,
    anomalies: AnomalyTotals,
    /// The records ended at one packet, handed to the sink together (reused).
    group: Vec<Connection>,
}

/// The reading side of a sharded run: admits each packet and hands its segment to a worker.
pub struct Reader {
    cfg: EngineConfig,
    pub front: Front,
    sweeps: SweepSchedule,
    to_workers: Vec<SyncSender<ToWorker>>,
    /// Emptied lists coming back from the workers, to fill again.
    spare: Receiver<Vec<Item>>,
    /// The batch being filled, one list per worker.
    filling: Vec<Vec<Item>>,
    filled: usize,
    /// Set by the merge when the sink asked to stop (the reader of the output went away).
    stop: Arc<AtomicBool>,
}

impl Reader {
    /// One packet in.
    pub fn process(&mut self, pkt: &RawPacket<'_>) -> ControlFlow<()> {
        let Some(admitted) = self.front.admit_owned(pkt) else {
            return ControlFlow::Continue(());
        };
        let sweep = self.sweeps.due(admitted.ts, &self.cfg);
        let owner = owner(admitted.seg.src, admitted.seg.dst, self.filling.len());
        if sweep {
            for (i, list) in self.filling.iter_mut().enumerate() {
                if i != owner {
                    list.push(Item::Sweep {
                        ts: admitted.ts,
                        packet: admitted.packet,
                    });
                }
            }
        }
        if let Some(list) = self.filling.get_mut(owner) {
            list.push(Item::Segment {
                admitted,
                sweep_first: sweep,
            });
        }
        self.filled += 1;
        if self.filled >= BATCH_SEGMENTS {
            self.send_batch();
            if self.stop.load(Ordering::Relaxed) {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Hands the batch being filled to the workers (every worker gets every batch, empty or
    /// not, so the merge takes them in step).
    fn send_batch(&mut self) {
        let first = self.front.first_time();
        for (to, list) in self.to_workers.iter().zip(self.filling.iter_mut()) {
            let next = self.spare.try_recv().unwrap_or_default();
            let items = std::mem::replace(list, next);
            // A worker that is gone has panicked; the merge reports it.
            let _ = to.send(ToWorker::Batch { items, first });
        }
        self.filled = 0;
    }

    /// The input is over: the last batch goes out, and the workers end their records.
    fn finish(&mut self) {
        if self.filled > 0 {
            self.send_batch();
        }
        let (end, first) = (self.front.end_time(), self.front.first_time());
        for to in std::mem::take(&mut self.to_workers) {
            let _ = to.send(ToWorker::Finish { end, first });
        }
    }
}

/// Runs `read` (which feeds every packet to the `Reader`) with `threads` workers and a merge
/// thread that hands the merged records to `sink`. Returns what `read` returned and the
/// outcome, as `Engine::finish_each` gives it.
pub fn run<R>(
    cfg: EngineConfig,
    front: Front,
    threads: usize,
    sink: &mut (dyn MergedSink + Send),
    read: impl FnOnce(&mut Reader) -> R,
) -> Result<(R, Outcome), String> {
    let threads = threads.max(2);
    let mut worker_cfg = cfg;
    worker_cfg.max_conns = cfg.max_conns.map(|max| max.div_ceil(threads));
    thread::scope(|scope| {
        let (spare_to, spare) = mpsc::channel();
        let mut to_workers = Vec::new();
        let mut from_workers = Vec::new();
        for i in 0..threads {
            let (to, inbox) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
            let (outbox, from) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
            let spare_to = spare_to.clone();
            thread::Builder::new()
                .name(format!("tcpstate-shard-{i}"))
                .spawn_scoped(scope, move || work(worker_cfg, inbox, outbox, spare_to))
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
            to_workers.push(to);
            from_workers.push(from);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let merge_stop = stop.clone();
        let merging = thread::Builder::new()
            .name("tcpstate-merge".into())
            .spawn_scoped(scope, move || merge_all(&from_workers, sink, &merge_stop))
            .map_err(|e| format!("cannot start the merge thread: {e}"))?;
        let mut reader = Reader {
            cfg,
            front,
            sweeps: SweepSchedule::default(),
            to_workers,
            spare,
            filling: (0..threads).map(|_| Vec::new()).collect(),
            filled: 0,
            stop,
        };
        let result = read(&mut reader);
        reader.finish();
        let merged = merging
            .join()
            .map_err(|_| "the merge thread failed".to_string())??;
        let mut evicted_attempts: Vec<_> = merged.flood.into_iter().collect();
        evicted_attempts.sort_by_key(|(k, _)| *k);
        let outcome = Outcome {
            connections: merged.kept,
            packets: reader.front.counters.clone(),
            flows: merged.flows,
            first_ts: reader.front.first_time(),
            end_ts: reader.front.end_time(),
            transitions: Vec::new(),
            watched: Vec::new(),
            evicted_attempts,
            anomalies: merged.merge.anomalies,
        };
        Ok((result, outcome))
    })
}

/// What the merge thread ends with.
struct Merged {
    merge: Merge,
    flows: FlowCounters,
    flood: HashMap<SockAddr, EvictedAttempts>,
    /// What the sink kept of the records handed over at the finish.
    kept: Vec<Connection>,
}

/// The merge thread: batch by batch, then the records each worker holds at the finish.
fn merge_all(
    from: &[Receiver<FromWorker>],
    sink: &mut (dyn MergedSink + Send),
    stop: &AtomicBool,
) -> Result<Merged, String> {
    let mut merge = Merge {
        next_id: 1,
        ..Merge::default()
    };
    let recv = |i: usize| from[i].recv().map_err(|_| worker_failed(i));
    // Batches, until the workers say the input is over (all at the same point).
    let (end, first) = loop {
        let mut done = Vec::with_capacity(from.len());
        let mut over = None;
        for i in 0..from.len() {
            match recv(i)? {
                FromWorker::Batch(d) => done.push(d),
                FromWorker::Finishing { end, first } => over = Some((end, first)),
                _ => return Err(worker_failed(i)),
            }
        }
        if let Some(over) = over {
            break over;
        }
        if merge.batch(done, sink).is_break() {
            stop.store(true, Ordering::Relaxed);
        }
    };
    sink.at_end(end, first);
    // Each worker's remaining records come in id (opening packet) order: merged by id.
    let mut heads: Vec<std::vec::IntoIter<Connection>> =
        from.iter().map(|_| Vec::new().into_iter()).collect();
    let mut totals: Vec<Option<Box<WorkerTotals>>> = from.iter().map(|_| None).collect();
    let mut kept = Vec::new();
    loop {
        for (i, head) in heads.iter_mut().enumerate() {
            while head.len() == 0 && totals[i].is_none() {
                match recv(i)? {
                    FromWorker::Finished(chunk) => *head = chunk.into_iter(),
                    FromWorker::Done(t) => totals[i] = Some(t),
                    _ => return Err(worker_failed(i)),
                }
            }
        }
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_slice().first().map(|c| (c.id, i)))
            .min();
        let Some(mut conn) = next.and_then(|(_, i)| heads[i].next()) else {
            break;
        };
        conn.id = merge.real_id(conn.id);
        merge.anomalies.add(&conn);
        if let Some(conn) = sink.finished(conn) {
            kept.push(conn);
        }
    }
    let mut flows = FlowCounters::default();
    let mut flood: HashMap<SockAddr, EvictedAttempts> = HashMap::new();
    for (i, t) in totals.into_iter().enumerate() {
        let t = t.ok_or_else(|| worker_failed(i))?;
        add_counters(&mut flows, &t.counters);
        for (server, a) in t.flood {
            flood
                .entry(server)
                .and_modify(|m| {
                    m.count += a.count;
                    m.syns += a.syns;
                    m.first = m.first.min(a.first);
                    m.last = m.last.max(a.last);
                })
                .or_insert(a);
        }
    }
    flows.peak_live = merge.peak_live;
    // Every number handed out was taken back: by a record written, or an attempt dropped.
    debug_assert!(merge.ids.is_empty(), "{} ids left", merge.ids.len());
    Ok(Merged {
        merge,
        flows,
        flood,
        kept,
    })
}

/// Which of `workers` owns a 4-tuple: the same for both directions, since the ends are
/// combined by XOR. A fixed mix rather than a keyed hash: it only spreads the work of a file,
/// so a capture made to pile its tuples on one worker makes the run slower, never wrong.
fn owner(a: SockAddr, b: SockAddr, workers: usize) -> usize {
    fn fold(s: SockAddr) -> u64 {
        let ip = match s.ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let x = u128::from(v6);
                (x as u64) ^ ((x >> 64) as u64)
            }
        };
        // The port in the low 16 bits, the address above it.
        ip.rotate_left(16) ^ u64::from(s.port)
    }
    let mixed = (fold(a) ^ fold(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    ((mixed * workers as u64) >> 32) as usize
}

fn worker_failed(i: usize) -> String {
    format!("worker thread {i} stopped unexpectedly")
}

/// Sums what workers counted; `peak_live` is the merge's.
fn add_counters(sum: &mut FlowCounters, c: &FlowCounters) {
    let FlowCounters {
        connections,
        midstream_pickups,
        tuple_reuses,
        time_wait_reuses,
        evicted,
        evicted_half_open,
        expired_idle,
        peak_live: _,
    } = *c;
    sum.connections += connections;
    sum.midstream_pickups += midstream_pickups;
    sum.tuple_reuses += tuple_reuses;
    sum.time_wait_reuses += time_wait_reuses;
    sum.evicted += evicted;
    sum.evicted_half_open += evicted_half_open;
    sum.expired_idle += expired_idle;
}

impl Merge {
    /// The real id of the connection a worker numbered `worker_id` (its opening packet).
    fn real_id(&mut self, worker_id: u64) -> u64 {
        self.ids.remove(&worker_id).unwrap_or(worker_id)
    }

    fn batch(
        &mut self,
        done: Vec<BatchDone>,
        sink: &mut (dyn MergedSink + Send),
    ) -> ControlFlow<()> {
        let first = done.iter().find_map(|d| d.first);
        // Openings first (an ending in this batch may be of a connection opened in it), in
        // packet order across workers: that is the order one table numbers them in.
        let mut opened: Vec<u64> = done.iter().flat_map(|d| d.opened.iter().copied()).collect();
        opened.sort_unstable();
        for &packet in &opened {
            self.ids.insert(packet, self.next_id);
            self.next_id += 1;
        }
        // Connections tracked at once, as one table counts them: at each packet the ends
        // come first, then the opening.
        let mut changes: Vec<(u64, bool)> = opened.iter().map(|&p| (p, true)).collect();
        for d in &done {
            changes.extend(d.ended.iter().map(|e| (e.key.0, false)));
            changes.extend(d.dropped.iter().map(|&(p, _)| (p, false)));
        }
        changes.sort_unstable();
        for (_, opens) in changes {
            if opens {
                self.live += 1;
                self.peak_live = self.peak_live.max(self.live);
            } else {
                self.live = self.live.saturating_sub(1);
            }
        }
        // Attempts dropped without a record never come back: their numbers are forgotten now.
        for d in &done {
            for (_, id) in &d.dropped {
                self.ids.remove(id);
            }
        }
        // Each worker's ends are in order already: merged by key, each record moved once.
        let mut lists: Vec<std::vec::IntoIter<Ended>> =
            done.into_iter().map(|d| d.ended.into_iter()).collect();
        debug_assert!(
            lists
                .iter()
                .all(|l| l.as_slice().is_sorted_by_key(|e| e.key))
        );
        let mut flow = ControlFlow::Continue(());
        let mut group = std::mem::take(&mut self.group);
        let mut group_at: Option<(u64, Ts)> = None;
        loop {
            let next = lists
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.as_slice().first().map(|e| (e.key, i)))
                .min();
            let Some(Ended { key, now, mut conn }) = next.and_then(|(_, i)| lists[i].next()) else {
                break;
            };
            // Once the sink asked to stop, nothing more is handed to it.
            if let Some((packet, at)) = group_at
                && packet != key.0
                && !group.is_empty()
            {
                flow = sink.ended(&mut group, at, first);
                group.clear();
            }
            group_at = Some((key.0, now));
            conn.id = self.real_id(conn.id);
            self.anomalies.add(&conn);
            if flow.is_continue() {
                group.push(conn);
            }
        }
        if let Some((_, at)) = group_at
            && !group.is_empty()
            && flow.is_continue()
        {
            flow = sink.ended(&mut group, at, first);
        }
        group.clear();
        self.group = group;
        flow
    }
}

/// A worker: its own flow table, fed batch by batch.
fn work(
    cfg: EngineConfig,
    inbox: Receiver<ToWorker>,
    outbox: SyncSender<FromWorker>,
    spare: Sender<Vec<Item>>,
) {
    let mut table = FlowTable::for_shard();
    while let Ok(msg) = inbox.recv() {
        match msg {
            ToWorker::Batch { mut items, first } => {
                let mut done = BatchDone {
                    first,
                    ..BatchDone::default()
                };
                for at in 0..items.len() {
                    table.look_ahead(items.get(at + LOOK_AHEAD).and_then(opening_syn));
                    match items[at] {
                        Item::Sweep { ts, packet } => {
                            sweep(&mut table, ts, packet, &cfg, &mut done)
                        }
                        Item::Segment {
                            admitted,
                            sweep_first,
                        } => {
                            if sweep_first {
                                sweep(&mut table, admitted.ts, admitted.packet, &cfg, &mut done);
                            }
                            apply(&mut table, &admitted, &cfg, &mut done);
                        }
                    }
                }
                items.clear();
                let _ = spare.send(items);
                if outbox.send(FromWorker::Batch(done)).is_err() {
                    return;
                }
            }
            ToWorker::Finish { end, first } => {
                let _ = outbox.send(FromWorker::Finishing { end, first });
                let counters = table.counters;
                let flood = std::mem::take(&mut table.flood);
                let mut chunk = Vec::with_capacity(FINISH_CHUNK);
                if let Some(end) = end {
                    table.finish_each(end, &cfg, &mut None, |conn| {
                        chunk.push(conn);
                        if chunk.len() >= FINISH_CHUNK {
                            let full =
                                std::mem::replace(&mut chunk, Vec::with_capacity(FINISH_CHUNK));
                            let _ = outbox.send(FromWorker::Finished(full));
                        }
                    });
                }
                if !chunk.is_empty() {
                    let _ = outbox.send(FromWorker::Finished(chunk));
                }
                let flood = flood.into_iter().collect();
                let _ = outbox.send(FromWorker::Done(Box::new(WorkerTotals { counters, flood })));
                return;
            }
        }
    }
}

/// How many items ahead a worker shows its table (`FlowTable::look_ahead`).
const LOOK_AHEAD: usize = 16;

/// The addresses of an item that is a SYN without ACK or RST.
fn opening_syn(item: &Item) -> Option<(SockAddr, SockAddr)> {
    match item {
        Item::Segment { admitted, .. } => {
            let seg = &admitted.seg;
            flags::opens(seg.flags).then_some((seg.src, seg.dst))
        }
        Item::Sweep { .. } => None,
    }
}

/// One segment into the table: what it opened, ended or dropped is noted for the merge.
fn apply(table: &mut FlowTable, admitted: &Admitted, cfg: &EngineConfig, done: &mut BatchDone) {
    let Admitted { seg, ts, packet } = *admitted;
    let opened = table.counters.connections;
    table.apply(&seg, ts, packet, cfg, &mut None);
    if table.counters.connections > opened {
        done.opened.push(packet);
    }
    let dropped = table.take_dropped_ids();
    done.dropped
        .extend(dropped.into_iter().map(|id| (packet, id)));
    if table.has_ended() {
        let ended = table.take_ended().into_iter().enumerate();
        done.ended.extend(ended.map(|(i, conn)| Ended {
            key: (packet, 1, 0, i as u64),
            now: ts,
            conn,
        }));
    }
}

/// A sweep due at `packet`: its ends are keyed by deadline and id, to merge with the other
/// workers' ends of the same sweep.
fn sweep(table: &mut FlowTable, ts: Ts, packet: u64, cfg: &EngineConfig, done: &mut BatchDone) {
    for (deadline, conn) in table.sweep(ts, cfg, &mut None) {
        done.ended.push(Ended {
            key: (packet, 0, deadline.0, conn.id),
            now: ts,
            conn,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: IpAddr, port: u16) -> SockAddr {
        SockAddr { ip, port }
    }

    #[test]
    fn both_directions_have_one_owner_and_tuples_spread_over_the_workers() {
        let server = addr(IpAddr::from([127, 0, 0, 1]), 80);
        let v6_server = addr("::1".parse().expect("address"), 443);
        for workers in [2, 3, 4, 8] {
            let mut load = vec![0usize; workers];
            for port in 32_768..42_768u16 {
                let client = addr(IpAddr::from([127, 0, 0, 1]), port);
                let v6_client = addr("fe80::1".parse().expect("address"), port);
                for (a, b) in [(client, server), (v6_client, v6_server)] {
                    let owner = owner(a, b, workers);
                    assert_eq!(owner, super::owner(b, a, workers));
                    load[owner] += 1;
                }
            }
            // 20,000 tuples: each worker within a fifth of its fair share.
            let fair = 20_000 / workers;
            for n in &load {
                assert!(n.abs_diff(fair) < fair / 5, "{workers} workers: {load:?}");
            }
        }
    }
}
