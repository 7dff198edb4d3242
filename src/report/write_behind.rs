//! Output made and written on a thread of their own, so that the work overlaps the engine's
//! on another core. `Behind` is the thread: it is handed batches of work (`Work`) and gives
//! each back emptied, to be filled again. Two kinds of work go to it:
//! - bytes (`WriteBehind`): rows formatted on the engine's thread, handed over in 256 KiB
//!   chunks, and copied into the kernel there (`write`; for a file a copy into the page cache
//!   as long as the formatting);
//! - whole records (`conns` of a file: `cli`'s rows), formatted there too: the rows of short
//!   connections were a fifth of the engine thread's time; or added up there (`summary` and
//!   `diagnose` of a file, whose builder comes back at the end).
//!
//! The mirror of `capture::read_ahead`.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{self, JoinHandle};

/// What a `Behind` thread does with each batch, and once they are over.
pub trait Work: Send + 'static {
    type Batch: Send + 'static;
    /// Does the batch's work and empties it, keeping its allocations for the next.
    fn take(&mut self, batch: &mut Self::Batch) -> io::Result<()>;
    /// After the last batch, when the work was finished (`Behind::finish`): not after a
    /// failed batch, nor when the `Behind` was dropped unfinished (a run that failed before
    /// its end, whose output has no end to write).
    fn end(&mut self) -> io::Result<()>;
}

/// Batches waiting for the thread: the engine waits rather than let a slow reader of the
/// output (a pipe to a pager) make the queue grow.
const QUEUED: usize = 2;
/// Batches (one filling, those queued, one at work, one on its way back), all made at the
/// start and none freed before the end: made later, a batch could come from the top of the
/// heap (once freed blocks have raised glibc's mmap threshold) and keep the heap from
/// shrinking under it, which cost some runs on the SYN flood 27 MB more at the peak.
pub const BATCHES: usize = QUEUED + 3;

/// A thread doing `Work` on batches handed to it, in order.
pub struct Behind<W: Work> {
    /// To the thread; `None` once it is told the work is over.
    /// `None` says the work is finished.
    full: Option<SyncSender<Option<W::Batch>>>,
    /// Batches the thread has emptied (and the spare ones), to fill again.
    spent: Receiver<W::Batch>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl<W: Work> Behind<W> {
    /// Starts the thread `name` doing `work`, with `BATCHES - 1` spare batches from
    /// `make` (the caller makes the one it fills first); an error if no thread can be
    /// started.
    pub fn new(name: &str, work: W, make: impl Fn() -> W::Batch) -> io::Result<Behind<W>> {
        let (full, to_do) = sync_channel::<Option<W::Batch>>(QUEUED);
        let (done, spent) = sync_channel::<W::Batch>(BATCHES);
        for _ in 1..BATCHES {
            // Room for every batch: cannot fail.
            let _ = done.try_send(make());
        }
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            let mut work = work;
            for message in to_do {
                let Some(mut batch) = message else {
                    return work.end();
                };
                // A failure ends the thread: the engine's next hand-over fails and
                // takes this error from `join`.
                work.take(&mut batch)?;
                // Room for every batch made: never full, never dropped here.
                let _ = done.try_send(batch);
            }
            Ok(())
        })?;
        Ok(Behind {
            full: Some(full),
            spent,
            thread: Some(thread),
        })
    }

    /// Hands `batch` to the thread; an emptied one back, to fill next (once the thread has
    /// one: it gives back each it takes, or ends, and then this says why).
    pub fn hand_over(&mut self, batch: W::Batch) -> io::Result<W::Batch> {
        match &self.full {
            Some(full) if full.send(Some(batch)).is_ok() => {}
            // The thread has ended: work failed (or the output was already finished).
            _ => return Err(self.end()),
        }
        self.spent.recv().map_err(|_| self.end())
    }

    /// Tells the thread the work is over and waits for it; its error, if it had one.
    fn join(&mut self) -> io::Result<()> {
        self.full = None;
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(res)) => res,
            Some(Err(_)) => Err(io::Error::other("the output thread panicked")),
        }
    }

    /// The error that ended the thread.
    fn end(&mut self) -> io::Error {
        match self.join() {
            Err(e) => e,
            Ok(()) => io::Error::other("output already finished"),
        }
    }

    /// Hands over the last `batch`, says the work is finished, and waits until the thread
    /// has done all of it.
    pub fn finish(&mut self, batch: W::Batch) -> io::Result<()> {
        let handed = match &self.full {
            Some(full) if full.send(Some(batch)).is_ok() && full.send(None).is_ok() => Ok(()),
            _ => Err(self.end()),
        };
        let joined = self.join();
        handed.and(joined)
    }
}

impl<W: Work> Drop for Behind<W> {
    fn drop(&mut self) {
        // Errors here have no one to go to.
        let _ = self.join();
    }
}

/// Bytes handed over at a time.
const CHUNK: usize = 256 << 10;

/// Copies chunks of bytes into `out`.
struct Copy<O>(O);

impl<O: Write + Send + 'static> Work for Copy<O> {
    type Batch = Vec<u8>;
    fn take(&mut self, chunk: &mut Vec<u8>) -> io::Result<()> {
        self.0.write_all(chunk)?;
        chunk.clear();
        Ok(())
    }
    fn end(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A writer whose bytes are written to its output on a thread of their own.
pub struct WriteBehind {
    /// The chunk being filled.
    buf: Vec<u8>,
    thread: Behind<Copy<Box<dyn Write + Send>>>,
}

impl WriteBehind {
    /// Starts the thread that writes to `out` (an error if none can be started: the caller
    /// then writes directly).
    pub fn new(out: impl Write + Send + 'static) -> io::Result<WriteBehind> {
        let out: Box<dyn Write + Send> = Box::new(out);
        let make = || Vec::with_capacity(CHUNK);
        Ok(WriteBehind {
            thread: Behind::new("write-behind", Copy(out), make)?,
            buf: make(),
        })
    }

    /// Hands the chunk being filled to the thread.
    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.buf = self.thread.hand_over(chunk)?;
        Ok(())
    }

    /// Writes what is left and waits until the thread has written everything.
    pub fn finish(&mut self) -> io::Result<()> {
        self.thread.finish(std::mem::take(&mut self.buf))
    }
}

impl Write for WriteBehind {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        // Handed over before it would outgrow its chunk (a grown chunk is a new allocation
        // and a freed one); only a single write larger than a chunk grows one.
        if !self.buf.is_empty() && self.buf.len() + data.len() > CHUNK {
            self.hand_over()?;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Hands over what is buffered; it reaches the output soon after, not by the return
    /// (`finish` waits for it).
    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // As a `BufWriter` flushes when dropped; errors here have no one to go to.
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into shared bytes that fails (with `kind`) once `limit` bytes are in.
    #[derive(Clone)]
    struct Shared {
        bytes: Arc<Mutex<Vec<u8>>>,
        limit: usize,
        kind: io::ErrorKind,
    }

    impl Write for Shared {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let mut bytes = self.bytes.lock().unwrap();
            if bytes.len() + data.len() > self.limit {
                return Err(io::Error::from(self.kind));
            }
            bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn shared(limit: usize, kind: io::ErrorKind) -> Shared {
        Shared {
            bytes: Arc::new(Mutex::new(Vec::new())),
            limit,
            kind,
        }
    }

    /// Every byte arrives, in order, whatever the sizes of the writes (some larger than a
    /// chunk), and all of it by the return of `finish`.
    #[test]
    fn every_byte_arrives_in_order() {
        let out = shared(usize::MAX, io::ErrorKind::Other);
        let mut w = WriteBehind::new(out.clone()).unwrap();
        let mut want = Vec::new();
        let mut state = 7u32;
        for i in 0..3000u32 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = if i % 500 == 0 {
                CHUNK + 3
            } else {
                (state >> 8) as usize % 700
            };
            let piece: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            w.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
            if i % 977 == 0 {
                w.flush().unwrap();
            }
        }
        w.finish().unwrap();
        assert!(want.len() > 3 * CHUNK);
        assert_eq!(*out.bytes.lock().unwrap(), want);
    }

    /// A write that fails on the thread comes back, with its kind, from a later write or
    /// from `finish`; the bytes before it were written.
    #[test]
    fn a_failed_write_comes_back() {
        for (limit, total) in [(0, 10), (CHUNK / 2, 5 * CHUNK), (3 * CHUNK, 3 * CHUNK + 1)] {
            let out = shared(limit, io::ErrorKind::BrokenPipe);
            let mut w = WriteBehind::new(out.clone()).unwrap();
            let mut failed = None;
            for _ in 0..total / 100 + 1 {
                if let Err(e) = w.write_all(&[b'x'; 100]) {
                    failed = Some(e);
                    break;
                }
            }
            let err = failed.or_else(|| w.finish().err());
            assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
            assert!(out.bytes.lock().unwrap().len() <= limit);
        }
    }
}
