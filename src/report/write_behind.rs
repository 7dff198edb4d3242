//! Output written on a thread of its own: the rows are formatted on the engine's thread and
//! handed over in 256 KiB chunks; the thread copies them into the kernel (`write`), which
//! for a file is a copy into the page cache as long as the formatting (JSON rows of a large
//! capture: 400 MB, a third of the run). The mirror of `capture::read_ahead`.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{self, JoinHandle};

/// Bytes handed over at a time.
const CHUNK: usize = 256 << 10;
/// Chunks waiting for the thread: the engine waits rather than let a slow reader of the
/// output (a pipe to a pager) make the queue grow.
const QUEUED: usize = 2;
/// Chunks (one filling, those queued, one being written, one on its way back), all made at
/// the start and none freed before the end: made later, a chunk could come from the top of
/// the heap (once freed blocks have raised glibc's mmap threshold) and keep the heap from
/// shrinking under it, which cost some runs on the SYN flood 27 MB more at the peak.
const MADE: usize = QUEUED + 3;

pub struct WriteBehind {
    /// The chunk being filled.
    buf: Vec<u8>,
    /// To the thread; `None` once it is told the output is over.
    full: Option<SyncSender<Vec<u8>>>,
    /// Chunks the thread has written (and the spare ones), to fill again.
    spent: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl WriteBehind {
    /// Starts the thread that writes to `out` (an error if none can be started: the caller
    /// then writes directly).
    pub fn new(out: impl Write + Send + 'static) -> io::Result<WriteBehind> {
        let (full, to_write) = sync_channel::<Vec<u8>>(QUEUED);
        let (written, spent) = sync_channel::<Vec<u8>>(MADE);
        for _ in 1..MADE {
            // Room for every chunk: cannot fail.
            let _ = written.try_send(Vec::with_capacity(CHUNK));
        }
        let thread = thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || {
                let mut out = out;
                for mut chunk in to_write {
                    // A failure ends the thread: the engine's next hand-over fails and
                    // takes this error from `join`.
                    out.write_all(&chunk)?;
                    chunk.clear();
                    // Room for every chunk made: never full, never dropped here.
                    let _ = written.try_send(chunk);
                }
                out.flush()
            })?;
        Ok(WriteBehind {
            buf: Vec::with_capacity(CHUNK),
            full: Some(full),
            spent,
            thread: Some(thread),
        })
    }

    /// Hands the chunk being filled to the thread.
    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        match &self.full {
            Some(full) if full.send(chunk).is_ok() => {}
            // The thread has ended: a write failed (or the output was already finished).
            _ => return Err(self.end()),
        }
        // The next chunk, once the thread has given one back (it gives back each it writes,
        // or ends, and then the next hand-over says why).
        self.buf = self.spent.recv().unwrap_or_default();
        Ok(())
    }

    /// Tells the thread the output is over and waits for it; its error, if it had one.
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

    /// Writes what is left and waits until the thread has written everything.
    pub fn finish(&mut self) -> io::Result<()> {
        let handed = self.hand_over();
        let joined = self.join();
        handed.and(joined)
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
