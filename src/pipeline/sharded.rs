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

use std::ops::ControlFlow;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use hashbrown::{DefaultHashBuilder, HashMap};

use super::{Admitted, AnomalyTotals, Front, Outcome};
use crate::capture::RawPacket;
use crate::decode::SockAddr;
use crate::flow::{
    Connection, EngineConfig, EvictedAttempts, FlowCounters, FlowTable, SweepSchedule, tuple_hash,
};
use crate::time::Ts;

/// Segments a batch holds (over all workers): large enough that handing batches over costs
/// little, small enough that the merged output follows the input closely.
const BATCH_SEGMENTS: usize = 8192;
/// Batches handed out and not yet merged: bounds the memory in flight.
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
    Batch(Vec<Item>),
    /// The input is over: end every record at this time (none if no packet came).
    Finish(Option<Ts>),
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
    /// The batch's emptied list, to reuse.
    items: Vec<Item>,
    /// Packets that opened a connection, in order.
    opened: Vec<u64>,
    ended: Vec<Ended>,
    /// Packets at which a half-open attempt was evicted without a record (one entry each).
    dropped: Vec<u64>,
}

/// What a worker has when its table is done.
struct WorkerTotals {
    counters: FlowCounters,
    flood: HashMap<SockAddr, EvictedAttempts>,
}

enum FromWorker {
    Batch(BatchDone),
    /// Records still held at the finish, in id order (a chunk of them).
    Finished(Vec<Connection>),
    Done(Box<WorkerTotals>),
}

struct Worker {
    to: Sender<ToWorker>,
    from: Receiver<FromWorker>,
    handle: Option<JoinHandle<()>>,
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

/// A run over several workers. Feed it packets with `process`, then `finish`.
pub struct ShardedEngine {
    cfg: EngineConfig,
    pub front: Front,
    sweeps: SweepSchedule,
    hasher: DefaultHashBuilder,
    workers: Vec<Worker>,
    /// The batch being filled, one list per worker.
    filling: Vec<Vec<Item>>,
    filled: usize,
    /// Emptied lists to fill again.
    spare: Vec<Vec<Item>>,
    in_flight: usize,
    merge: Merge,
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
    /// Reused between batches.
    ended: Vec<Ended>,
    group: Vec<Connection>,
}

impl ShardedEngine {
    /// Starts `threads` workers (at least 2: one thread is `Engine`).
    pub fn new(cfg: EngineConfig, front: Front, threads: usize) -> ShardedEngine {
        let threads = threads.max(2);
        let mut worker_cfg = cfg;
        worker_cfg.max_conns = cfg.max_conns.map(|max| max.div_ceil(threads));
        let workers = (0..threads)
            .map(|i| {
                let (to, inbox) = mpsc::channel();
                let (outbox, from) = mpsc::channel();
                let handle = thread::Builder::new()
                    .name(format!("tcpstate-shard-{i}"))
                    .spawn(move || work(worker_cfg, inbox, outbox))
                    .ok();
                Worker { to, from, handle }
            })
            .collect();
        ShardedEngine {
            cfg,
            front,
            sweeps: SweepSchedule::default(),
            hasher: DefaultHashBuilder::default(),
            workers,
            filling: (0..threads).map(|_| Vec::new()).collect(),
            filled: 0,
            spare: Vec::new(),
            in_flight: 0,
            merge: Merge {
                next_id: 1,
                ..Merge::default()
            },
        }
    }

    /// One packet in; merged results that are ready go to `sink`.
    pub fn process(&mut self, pkt: &RawPacket<'_>, sink: &mut dyn MergedSink) -> ControlFlow<()> {
        let Some(admitted) = self.front.admit(pkt) else {
            return ControlFlow::Continue(());
        };
        let sweep = self.sweeps.due(admitted.ts, &self.cfg);
        let n = self.workers.len();
        let owner = tuple_hash(&self.hasher, admitted.seg.src, admitted.seg.dst) as usize % n;
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
            if self.in_flight >= BATCHES_IN_FLIGHT {
                return self.merge_one(sink);
            }
        }
        ControlFlow::Continue(())
    }

    /// Hands the batch being filled to the workers.
    fn send_batch(&mut self) {
        for (worker, list) in self.workers.iter().zip(self.filling.iter_mut()) {
            let next = self.spare.pop().unwrap_or_default();
            let batch = std::mem::replace(list, next);
            // A worker that is gone has panicked; `finish` reports it.
            let _ = worker.to.send(ToWorker::Batch(batch));
        }
        self.filled = 0;
        self.in_flight += 1;
    }

    /// Waits for every worker's results of the oldest batch in flight and merges them.
    fn merge_one(&mut self, sink: &mut dyn MergedSink) -> ControlFlow<()> {
        self.in_flight -= 1;
        let mut done = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            if let Ok(FromWorker::Batch(d)) = worker.from.recv() {
                done.push(d);
            }
        }
        for d in &mut done {
            self.spare.push(std::mem::take(&mut d.items));
        }
        self.merge.batch(done, self.front.first_time(), sink)
    }

    /// Ends the run: every batch is merged, then each worker ends its records at the end
    /// time and they are merged in id order.
    pub fn finish(mut self, sink: &mut dyn MergedSink) -> Result<Outcome, String> {
        if self.filled > 0 {
            self.send_batch();
        }
        let mut flow = ControlFlow::Continue(());
        while self.in_flight > 0 {
            let f = self.merge_one(sink);
            if f.is_break() {
                flow = f;
            }
        }
        let _ = flow;
        let end = self.front.end_time();
        sink.at_end(end, self.front.first_time());
        for worker in &self.workers {
            let _ = worker.to.send(ToWorker::Finish(end));
        }
        // Each worker's remaining records, merged by id (opening packet).
        let mut heads: Vec<std::vec::IntoIter<Connection>> = self
            .workers
            .iter()
            .map(|_| Vec::new().into_iter())
            .collect();
        let mut totals: Vec<Option<Box<WorkerTotals>>> =
            self.workers.iter().map(|_| None).collect();
        let mut connections = Vec::new();
        loop {
            // Refill the empty heads of workers not done.
            for (i, worker) in self.workers.iter().enumerate() {
                while heads[i].len() == 0 && totals[i].is_none() {
                    match worker.from.recv() {
                        Ok(FromWorker::Finished(chunk)) => heads[i] = chunk.into_iter(),
                        Ok(FromWorker::Done(t)) => totals[i] = Some(t),
                        Ok(FromWorker::Batch(_)) => {}
                        Err(_) => return Err(worker_failed(i)),
                    }
                }
            }
            let next = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_slice().first().map(|c| (c.id, i)))
                .min();
            let Some((_, i)) = next else { break };
            let Some(mut conn) = heads[i].next() else {
                break;
            };
            conn.id = self.merge.real_id(conn.id);
            self.merge.anomalies.add(&conn);
            if let Some(kept) = sink.finished(conn) {
                connections.push(kept);
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
        flows.peak_live = self.merge.peak_live;
        for worker in &mut self.workers {
            if let Some(handle) = worker.handle.take()
                && handle.join().is_err()
            {
                return Err("a worker thread failed".into());
            }
        }
        let mut evicted_attempts: Vec<_> = flood.into_iter().collect();
        evicted_attempts.sort_by_key(|(k, _)| *k);
        Ok(Outcome {
            connections,
            packets: self.front.counters.clone(),
            flows,
            first_ts: self.front.first_time(),
            end_ts: end,
            transitions: Vec::new(),
            watched: Vec::new(),
            evicted_attempts,
            anomalies: self.merge.anomalies,
        })
    }
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
        first: Option<Ts>,
        sink: &mut dyn MergedSink,
    ) -> ControlFlow<()> {
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
            changes.extend(d.dropped.iter().map(|&p| (p, false)));
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
        let mut ended = std::mem::take(&mut self.ended);
        for d in done {
            ended.extend(d.ended);
        }
        ended.sort_unstable_by_key(|e| e.key);
        let mut flow = ControlFlow::Continue(());
        let mut group = std::mem::take(&mut self.group);
        let mut group_at: Option<(u64, Ts)> = None;
        for Ended { key, now, mut conn } in ended.drain(..) {
            if let Some((packet, at)) = group_at
                && packet != key.0
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
        self.ended = ended;
        flow
    }
}

/// A worker: its own flow table, fed batch by batch.
fn work(cfg: EngineConfig, inbox: Receiver<ToWorker>, outbox: Sender<FromWorker>) {
    let mut table = FlowTable::for_shard();
    while let Ok(msg) = inbox.recv() {
        match msg {
            ToWorker::Batch(mut items) => {
                let mut done = BatchDone::default();
                for item in items.drain(..) {
                    match item {
                        Item::Sweep { ts, packet } => {
                            sweep(&mut table, ts, packet, &cfg, &mut done)
                        }
                        Item::Segment {
                            admitted,
                            sweep_first,
                        } => {
                            let Admitted { seg, ts, packet } = admitted;
                            if sweep_first {
                                sweep(&mut table, ts, packet, &cfg, &mut done);
                            }
                            let (opened, dropped) =
                                (table.counters.connections, table.counters.evicted_half_open);
                            table.apply(&seg, ts, packet, &cfg, &mut None);
                            if table.counters.connections > opened {
                                done.opened.push(packet);
                            }
                            for _ in dropped..table.counters.evicted_half_open {
                                done.dropped.push(packet);
                            }
                            if table.has_ended() {
                                let ended = table.take_ended().into_iter().enumerate();
                                done.ended.extend(ended.map(|(i, conn)| Ended {
                                    key: (packet, 1, 0, i as u64),
                                    now: ts,
                                    conn,
                                }));
                            }
                        }
                    }
                }
                done.items = items;
                if outbox.send(FromWorker::Batch(done)).is_err() {
                    return;
                }
            }
            ToWorker::Finish(end) => {
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
