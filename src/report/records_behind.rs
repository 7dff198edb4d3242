//! Records formatted and written on a thread of their own (`conns` of a file): the rows of
//! short connections were a fifth of the engine thread's time, and the second core is free
//! but for the read ahead. Records that end while reading stay in the engine until a batch's
//! worth have, and then go over without a copy; what an eviction ends at once (thousands of
//! records) goes over a batch at a time, so that no batch grows to that size and stays so.

use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;

use super::write_behind::{Behind, Work};
use crate::flow::Connection;
use crate::time::Ts;

/// The thread's output buffer: writes at least this large go straight through it.
pub const OUT_BUFFER: usize = 256 << 10;

/// Makes the rows.
pub trait Rows: Send + 'static {
    /// The rows of `conns`, which ended at `end` (the capture's first packet at `start`).
    fn write(
        &mut self,
        out: &mut dyn Write,
        conns: &[Connection],
        end: Ts,
        start: Option<Ts>,
    ) -> io::Result<()>;
    /// After the last record.
    fn tail(&mut self, out: &mut dyn Write) -> io::Result<()>;
    /// Rows made and held back (to write them in larger pieces), written without the tail:
    /// what a run that stops before its end still puts out, as its `BufWriter` does.
    fn release(&mut self, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }
}

/// Where records wait once they have ended: the engine.
pub trait Ended {
    fn ended_len(&self) -> usize;
    /// The time of the last packet in.
    fn now(&self) -> Ts;
    /// Takes them all into `into`, emptied first.
    fn take_ended_into(&mut self, into: &mut Vec<Connection>);
}

/// Records for the thread, in the order they ended.
pub struct Batch {
    conns: Vec<Connection>,
    /// `(n, end)`: the records before the `n`th, from the previous mark's on, ended at `end`.
    ends: Vec<(usize, Ts)>,
    /// The capture's first packet time.
    start: Option<Ts>,
}

/// Records in a batch: enough for few hand-overs (each wakes the thread), few enough to hold
/// (a batch is about 220 KB).
pub const RECORDS: usize = 1024;

/// Records that ended at once, past which they go over a batch at a time.
const AT_ONCE: usize = 4 * RECORDS;

impl Batch {
    fn new() -> Batch {
        Batch {
            conns: Vec::with_capacity(RECORDS),
            ends: Vec::with_capacity(RECORDS),
            start: None,
        }
    }

    /// The end of the last mark: records past it have none yet.
    fn noted(&self) -> usize {
        self.ends.last().map_or(0, |&(upto, _)| upto)
    }
}

/// The thread's work: rows made and written to `out`.
struct RowsWork<R: Rows, O: Write> {
    rows: R,
    out: BufWriter<O>,
}

impl<R: Rows, O: Write> Drop for RowsWork<R, O> {
    fn drop(&mut self) {
        // Before `out` flushes as it is dropped; errors here have no one to go to.
        let _ = self.rows.release(&mut self.out);
    }
}

impl<R: Rows, O: Write + Send + 'static> Work for RowsWork<R, O> {
    type Batch = Batch;
    fn take(&mut self, batch: &mut Batch) -> io::Result<()> {
        let mut from = 0;
        for &(upto, end) in &batch.ends {
            let conns = batch.conns.get(from..upto).unwrap_or_default();
            self.rows.write(&mut self.out, conns, end, batch.start)?;
            from = upto;
        }
        batch.conns.clear();
        batch.ends.clear();
        Ok(())
    }
    fn end(&mut self) -> io::Result<()> {
        self.rows.tail(&mut self.out)?;
        self.out.flush()
    }
}

/// Records written by `R` into `O` on a thread of their own.
pub struct RecordsBehind<R: Rows, O: Write + Send + 'static> {
    thread: Behind<RowsWork<R, O>>,
    /// The batch being filled.
    filling: Batch,
    /// Marks (as `Batch::ends`) of the records ended and still in the engine.
    waiting: Vec<(usize, Ts)>,
    /// Records in the engine under those marks.
    noted: usize,
    /// What an eviction ended, going over a batch at a time (kept, as the engine keeps its
    /// list: both are as long as the largest eviction).
    overflow: Vec<Connection>,
    /// Handing over failed: the reader went away (broken pipe), or another error.
    failed: Option<io::Error>,
}

impl<R: Rows, O: Write + Send + 'static> RecordsBehind<R, O> {
    /// Starts the thread (an error if none can be started).
    pub fn new(rows: R, out: O) -> io::Result<RecordsBehind<R, O>> {
        let work = RowsWork {
            rows,
            out: BufWriter::with_capacity(OUT_BUFFER, out),
        };
        Ok(RecordsBehind {
            thread: Behind::new("rows", work, Batch::new)?,
            filling: Batch::new(),
            waiting: Vec::with_capacity(RECORDS),
            noted: 0,
            overflow: Vec::new(),
            failed: None,
        })
    }

    /// After a packet: notes the records that ended with it, and hands them over once there
    /// are a batch's worth. A failure stops reading.
    #[inline(always)]
    pub fn after_packet(&mut self, engine: &mut impl Ended, start: Option<Ts>) -> ControlFlow<()> {
        // After most packets none have ended.
        if engine.ended_len() == self.noted {
            return ControlFlow::Continue(());
        }
        self.note(engine, start)
    }

    #[inline(never)]
    fn note(&mut self, engine: &mut impl Ended, start: Option<Ts>) -> ControlFlow<()> {
        let ended = engine.ended_len();
        self.waiting.push((ended, engine.now()));
        self.noted = ended;
        if ended < RECORDS {
            return ControlFlow::Continue(());
        }
        self.take_waiting(engine, start)
    }

    /// Takes what waits in the engine: as the batch itself when it is the batch's size,
    /// else a batch at a time.
    fn take_waiting(&mut self, engine: &mut impl Ended, start: Option<Ts>) -> ControlFlow<()> {
        self.noted = 0;
        if self.filling.conns.is_empty() && engine.ended_len() <= AT_ONCE {
            engine.take_ended_into(&mut self.filling.conns);
            std::mem::swap(&mut self.filling.ends, &mut self.waiting);
            self.waiting.clear();
            return self.hand_over(start);
        }
        let (mut records, marks) = (
            std::mem::take(&mut self.overflow),
            std::mem::take(&mut self.waiting),
        );
        engine.take_ended_into(&mut records);
        let flow = self.pour(&mut records, &marks, start);
        (self.overflow, self.waiting) = (records, marks);
        self.waiting.clear();
        flow
    }

    /// Records taken at `now` (with `--threads`), from `conns` (emptied).
    pub fn taken(
        &mut self,
        conns: &mut Vec<Connection>,
        now: Ts,
        start: Option<Ts>,
    ) -> ControlFlow<()> {
        let marks = [(conns.len(), now)];
        self.pour(conns, &marks, start)
    }

    /// Moves `records` (emptied), marked by `marks`, into batches, handing each over when full.
    fn pour(
        &mut self,
        records: &mut Vec<Connection>,
        marks: &[(usize, Ts)],
        start: Option<Ts>,
    ) -> ControlFlow<()> {
        let mut upcoming = marks.iter().copied().peekable();
        let mut flow = ControlFlow::Continue(());
        for (at, conn) in records.drain(..).enumerate() {
            if flow.is_break() {
                break;
            }
            // The mark this record is under (the last one, should they disagree).
            while let Some(&(upto, _)) = upcoming.peek()
                && upto <= at
            {
                upcoming.next();
            }
            let (upto, end) = upcoming
                .peek()
                .copied()
                .unwrap_or((usize::MAX, Ts::default()));
            flow = self.push(conn, end, at + 1 == upto, start);
        }
        // Records past the last mark (none, if the marks are right) are under its end.
        if let Some(&(_, end)) = marks.last() {
            self.mark_rest(end);
        }
        flow
    }

    /// Adds `conn`, which ended at `end` (the last of those that did if `last_at_end`), and
    /// hands the batch over if that filled it.
    fn push(
        &mut self,
        conn: Connection,
        end: Ts,
        last_at_end: bool,
        start: Option<Ts>,
    ) -> ControlFlow<()> {
        self.filling.conns.push(conn);
        let full = self.filling.conns.len() >= RECORDS;
        if last_at_end || full {
            let n = self.filling.conns.len();
            self.filling.ends.push((n, end));
        }
        if full {
            return self.hand_over(start);
        }
        ControlFlow::Continue(())
    }

    /// Marks the records past the last mark as ended at `end`.
    fn mark_rest(&mut self, end: Ts) {
        let n = self.filling.conns.len();
        if n > self.filling.noted() {
            self.filling.ends.push((n, end));
        }
    }

    /// The input is over: what waits in the engine is taken.
    pub fn at_end(&mut self, engine: &mut impl Ended, start: Option<Ts>) {
        if !self.waiting.is_empty() {
            let _ = self.take_waiting(engine, start);
        }
    }

    /// A record still open at the end (`end` is the capture's).
    pub fn finished(&mut self, conn: Connection, end: Ts, start: Option<Ts>) {
        if self.failed.is_some() {
            return;
        }
        let _ = self.push(conn, end, false, start);
    }

    /// Hands over the rest, waits until every row is written, and says how writing went.
    pub fn finish(mut self, end: Ts, start: Option<Ts>) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.mark_rest(end);
        self.filling.start = start;
        let last = std::mem::replace(&mut self.filling, EMPTY);
        self.thread.finish(last)
    }

    /// Hands the batch being filled to the thread; a failure stops reading.
    fn hand_over(&mut self, start: Option<Ts>) -> ControlFlow<()> {
        if self.failed.is_some() {
            // Nothing more is written: the records are dropped.
            self.filling.conns.clear();
            self.filling.ends.clear();
            return ControlFlow::Break(());
        }
        self.filling.start = start;
        let full = std::mem::replace(&mut self.filling, EMPTY);
        match self.thread.hand_over(full) {
            Ok(next) => {
                self.filling = next;
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.failed = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// A batch with no room, in the place of one handed over.
const EMPTY: Batch = Batch {
    conns: Vec::new(),
    ends: Vec::new(),
    start: None,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Segment;
    use std::sync::{Arc, Mutex};

    /// The engine's part: records ended and not yet taken.
    struct FakeEngine {
        ended: Vec<Connection>,
        now: Ts,
    }

    impl Ended for FakeEngine {
        fn ended_len(&self) -> usize {
            self.ended.len()
        }
        fn now(&self) -> Ts {
            self.now
        }
        fn take_ended_into(&mut self, into: &mut Vec<Connection>) {
            into.clear();
            std::mem::swap(into, &mut self.ended);
        }
    }

    /// A line per record: its id, the end it was written with and the start.
    struct IdRows;

    impl Rows for IdRows {
        fn write(
            &mut self,
            out: &mut dyn Write,
            conns: &[Connection],
            end: Ts,
            start: Option<Ts>,
        ) -> io::Result<()> {
            for c in conns {
                writeln!(out, "{} {} {:?}", c.id, end.0, start.map(|s| s.0))?;
            }
            Ok(())
        }
        fn tail(&mut self, out: &mut dyn Write) -> io::Result<()> {
            writeln!(out, "tail")
        }
    }

    /// `IdRows`' lines, held until the tail or a release.
    #[derive(Default)]
    struct HeldRows(Vec<u8>);

    impl Rows for HeldRows {
        fn write(
            &mut self,
            _out: &mut dyn Write,
            conns: &[Connection],
            end: Ts,
            start: Option<Ts>,
        ) -> io::Result<()> {
            IdRows.write(&mut self.0, conns, end, start)
        }
        fn tail(&mut self, out: &mut dyn Write) -> io::Result<()> {
            self.release(out)?;
            writeln!(out, "tail")
        }
        fn release(&mut self, out: &mut dyn Write) -> io::Result<()> {
            out.write_all(&std::mem::take(&mut self.0))
        }
    }

    /// A writer into shared bytes that fails with a broken pipe once `limit` bytes are in.
    #[derive(Clone)]
    struct Shared {
        bytes: Arc<Mutex<Vec<u8>>>,
        limit: usize,
    }

    impl Write for Shared {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let mut bytes = self.bytes.lock().unwrap();
            if bytes.len() + data.len() > self.limit {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn shared(limit: usize) -> Shared {
        Shared {
            bytes: Arc::new(Mutex::new(Vec::new())),
            limit,
        }
    }

    fn record(id: u64) -> Connection {
        Connection::new(id, &Segment::NONE, Ts(0))
    }

    /// How many records end after each packet: mostly none or one, some runs of a few
    /// hundred, and evictions of thousands.
    fn ended_counts(seed: u32, packets: usize) -> Vec<usize> {
        let mut state = seed;
        (0..packets)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                match (state >> 8) % 1000 {
                    0..=599 => 0,
                    600..=949 => 1,
                    950..=989 => 2 + (state >> 20) as usize % 5,
                    990..=996 => 200 + (state >> 20) as usize % 200,
                    _ => 1000 + (state >> 18) as usize % 5000,
                }
            })
            .collect()
    }

    /// Every record comes out once, in the order it ended, with the time of the packet it
    /// ended at (or the capture's end for those still open), then the tail; whatever the
    /// sizes of what ends at once.
    #[test]
    fn rows_come_out_in_order_with_their_ends() {
        for seed in [1, 7, 42] {
            let out = shared(usize::MAX);
            let mut behind = RecordsBehind::new(IdRows, out.clone()).unwrap();
            let mut engine = FakeEngine {
                ended: Vec::new(),
                now: Ts(0),
            };
            let start = Some(Ts(5));
            let mut want = String::new();
            let mut id = 0;
            for (packet, n) in ended_counts(seed, 20_000).into_iter().enumerate() {
                engine.now = Ts(1000 + packet as i64);
                for _ in 0..n {
                    engine.ended.push(record(id));
                    want += &format!("{id} {} Some(5)\n", engine.now.0);
                    id += 1;
                }
                assert!(behind.after_packet(&mut engine, start).is_continue());
            }
            behind.at_end(&mut engine, start);
            assert!(engine.ended.is_empty());
            let end = Ts(99_999);
            for _ in 0..700 {
                behind.finished(record(id), end, start);
                want += &format!("{id} {} Some(5)\n", end.0);
                id += 1;
            }
            behind.finish(end, start).unwrap();
            want += "tail\n";
            assert!(id > 20_000);
            assert_eq!(
                String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap(),
                want
            );
        }
    }

    /// Records taken in groups (`--threads`) come out the same way.
    #[test]
    fn taken_groups_come_out_in_order() {
        let out = shared(usize::MAX);
        let mut behind = RecordsBehind::new(IdRows, out.clone()).unwrap();
        let mut want = String::new();
        let mut id = 0;
        for (packet, n) in ended_counts(3, 20_000).into_iter().enumerate() {
            let now = Ts(packet as i64);
            let mut group: Vec<Connection> = (id..id + n as u64).map(record).collect();
            for i in id..id + n as u64 {
                want += &format!("{i} {} None\n", now.0);
            }
            id += n as u64;
            assert!(behind.taken(&mut group, now, None).is_continue());
            assert!(group.is_empty());
        }
        behind.finish(Ts(0), None).unwrap();
        want += "tail\n";
        assert_eq!(
            String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap(),
            want
        );
    }

    /// A run that fails before its end (a bad filter, found once the output is set up)
    /// drops the output unfinished: what was handed over is written, rows held back too,
    /// and no tail after it.
    #[test]
    fn dropped_unfinished_writes_no_tail() {
        // Up to `AT_ONCE` go over together; more, a batch at a time, the last one not full.
        for (records, written) in [(0, 0), (3000, 3000), (6000, 5 * RECORDS)] {
            for held in [false, true] {
                let out = shared(usize::MAX);
                let mut engine = FakeEngine {
                    ended: (0..records).map(record).collect(),
                    now: Ts(7),
                };
                if held {
                    let mut behind = RecordsBehind::new(HeldRows::default(), out.clone()).unwrap();
                    assert!(behind.after_packet(&mut engine, None).is_continue());
                } else {
                    let mut behind = RecordsBehind::new(IdRows, out.clone()).unwrap();
                    assert!(behind.after_packet(&mut engine, None).is_continue());
                }
                let text = String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap();
                assert!(!text.contains("tail"), "{text:?}");
                assert_eq!(text.lines().count(), written, "rows held: {held}");
            }
        }
    }

    /// A write that fails on the thread stops reading and comes back from `finish`, with its
    /// kind; what was written before it is whole lines.
    #[test]
    fn a_failed_write_stops_reading_and_comes_back() {
        for limit in [0, 1000, 300_000] {
            let out = shared(limit);
            let mut behind = RecordsBehind::new(IdRows, out.clone()).unwrap();
            let mut engine = FakeEngine {
                ended: Vec::new(),
                now: Ts(0),
            };
            let mut stopped = false;
            for id in 0..200_000 {
                engine.now = Ts(id);
                engine.ended.push(record(id as u64));
                if behind.after_packet(&mut engine, None).is_break() {
                    stopped = true;
                    break;
                }
            }
            assert!(
                stopped,
                "reading went on past a failed write (limit {limit})"
            );
            behind.at_end(&mut engine, None);
            let err = behind.finish(Ts(0), None).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            let bytes = out.bytes.lock().unwrap();
            assert!(bytes.len() <= limit);
        }
    }
}
