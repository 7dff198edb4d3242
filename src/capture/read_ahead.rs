//! A file read on a thread of its own, a few chunks ahead of its reader: the kernel's copy
//! of the next chunk (a sixth of `conns`' time on short connections, in `read` itself)
//! overlaps the work on this one, on another core. The reader sees a plain `Read`: the same
//! bytes, in the same order, then the same end or error.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread;
use std::time::Duration;

/// Bytes the thread asks for at once: few hand-overs, each of which wakes the thread (a few
/// microseconds of the reader's time on this machine: with 256 KiB chunks, 5% of `conns`' on
/// short connections), and few chunks in flight (each of them memory: 4 MB more at the peak
/// than with 256 KiB).
const CHUNK: usize = 1 << 20;

/// Room kept in front of each chunk's bytes, where a reader that walks the chunks in place
/// puts the unfinished record the chunk before ended with (`next_chunk`).
pub const HEADROOM: usize = 64 << 10;

/// Chunks read and not yet taken: enough to ride out an uneven pace, few enough that memory
/// stays a few MiB.
const AHEAD: usize = 2;

/// The kernel's copy of a file into memory is four times slower (AMD EPYC here: 0.26 s
/// against 0.06 s for short.pcap) when the destination is not at a multiple of 64 bytes from
/// the source's place in the file, as a `Vec`'s 16-byte-aligned bytes are not; reads are at
/// multiples of `CHUNK` into a file read from its start, so each chunk's bytes start at a
/// 64-byte boundary (standard input left at another offset reads correctly, only slower).
const ALIGN: usize = 64;

/// Bytes of a chunk: its headroom, room to align, its `CHUNK`.
const CHUNK_LEN: usize = HEADROOM + ALIGN + CHUNK;

/// Where a chunk's bytes start: past `HEADROOM`, at a multiple of `ALIGN` in memory.
fn data_start(chunk: &[u8]) -> usize {
    let pad = chunk.as_ptr().wrapping_add(HEADROOM).align_offset(ALIGN);
    HEADROOM + pad.min(ALIGN)
}

/// What the thread sends: a chunk and how many bytes were read into it from `data_start`
/// (none at the end of the input), or the error that ended it. Chunks keep their full
/// length, so that refilling one never writes zeros over it first.
type Chunk = io::Result<(Vec<u8>, usize)>;

pub struct ReadAhead {
    chunks: Receiver<Chunk>,
    /// Emptied chunks go back to the thread to be filled again.
    spent: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    /// `current[at..filled]` is what is left to give.
    at: usize,
    filled: usize,
    /// The end or an error was handed over: nothing more comes.
    over: bool,
}

impl ReadAhead {
    /// Starts reading `input` on a new thread (an error if none can be started: the caller
    /// then reads a second handle of its file directly).
    pub fn new(input: impl Read + Send + 'static) -> io::Result<ReadAhead> {
        let (chunk_tx, chunks) = sync_channel::<Chunk>(AHEAD);
        let (spent, spent_rx) = sync_channel::<Vec<u8>>(AHEAD + 2);
        thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || fill(input, &chunk_tx, &spent_rx))?;
        Ok(ReadAhead::waiting_on(chunks, spent))
    }

    /// A reader of the chunks the thread sends on `chunks`, giving them back on `spent`.
    fn waiting_on(chunks: Receiver<Chunk>, spent: SyncSender<Vec<u8>>) -> ReadAhead {
        ReadAhead {
            chunks,
            spent,
            current: Vec::new(),
            at: 0,
            filled: 0,
            over: false,
        }
    }
}

/// The thread: fills chunks until the end, an error, or the reader is gone.
fn fill(mut input: impl Read, chunks: &SyncSender<Chunk>, spent: &Receiver<Vec<u8>>) {
    // Chunks made: past the few that can be in use at once (one walked, `AHEAD` sent, one
    // filling), the thread waits for one back rather than make (and zero) another.
    let mut made = 0;
    loop {
        let mut chunk = match spent.try_recv() {
            Ok(chunk) => chunk,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) if made < AHEAD + 2 => Vec::new(),
            // Never stuck on one that will not come back, though.
            Err(TryRecvError::Empty) => match spent.recv_timeout(Duration::from_millis(20)) {
                Ok(chunk) => chunk,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => Vec::new(),
            },
        };
        if chunk.len() != CHUNK_LEN {
            chunk = vec![0; CHUNK_LEN];
            made += 1;
        }
        let start = data_start(&chunk);
        let read = loop {
            match input.read(&mut chunk[start..start + CHUNK]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let (message, last) = match read {
            Ok(n) => (Ok((chunk, n)), n == 0),
            Err(e) => (Err(e), true),
        };
        // A send fails only when the reader is gone: then so is the need to read on.
        if chunks.send(message).is_err() || last {
            return;
        }
    }
}

impl ReadAhead {
    /// The next chunk whole, for a reader that walks it in place: the chunk and where its
    /// bytes are, `chunk[start..filled]` (what `read` has not given of the current chunk
    /// first); `None` at the end. `start` is at least `HEADROOM` past what `read` took.
    pub fn next_chunk(&mut self) -> io::Result<Option<(Vec<u8>, usize, usize)>> {
        if self.at < self.filled {
            let (at, filled) = (self.at, self.filled);
            (self.at, self.filled) = (0, 0);
            return Ok(Some((std::mem::take(&mut self.current), at, filled)));
        }
        if self.over {
            return Ok(None);
        }
        let spent = std::mem::take(&mut self.current);
        self.give_back(spent);
        (self.at, self.filled) = (0, 0);
        self.receive()
    }

    /// A chunk `next_chunk` gave, walked: the thread fills it again.
    pub fn give_back(&mut self, chunk: Vec<u8>) {
        if chunk.capacity() == 0 {
            return;
        }
        // Full (the thread has chunks enough) or gone: either way this one is dropped.
        let _ = self.spent.try_send(chunk);
    }

    /// The thread's next chunk (`None` at the end), or its error.
    fn receive(&mut self) -> io::Result<Option<(Vec<u8>, usize, usize)>> {
        match self.chunks.recv() {
            Ok(Ok((_, 0))) => {
                self.over = true;
                Ok(None)
            }
            Ok(Ok((chunk, n))) => {
                let start = data_start(&chunk);
                Ok(Some((chunk, start, start + n)))
            }
            Ok(Err(e)) => {
                self.over = true;
                Err(e)
            }
            // The thread ended without saying why (it panicked): not a clean end.
            Err(_) => {
                self.over = true;
                Err(io::Error::other("the read-ahead thread stopped"))
            }
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.filled {
            if self.over || out.is_empty() {
                return Ok(0);
            }
            let spent = std::mem::take(&mut self.current);
            self.give_back(spent);
            (self.at, self.filled) = (0, 0);
            if let Some((chunk, start, filled)) = self.receive()? {
                (self.current, self.at, self.filled) = (chunk, start, filled);
            }
        }
        let n = out.len().min(self.filled - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives its bytes in pieces of the sizes listed (cycling), then an error if one is set.
    struct Pieces {
        bytes: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
        fail: Option<io::ErrorKind>,
        interrupt_every: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.turn += 1;
            if self.interrupt_every > 0 && self.turn.is_multiple_of(self.interrupt_every) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.at == self.bytes.len() {
                return match self.fail {
                    Some(kind) => Err(kind.into()),
                    None => Ok(0),
                };
            }
            let size = self.sizes[self.turn % self.sizes.len()].max(1);
            let n = size.min(buf.len()).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Everything read through `ReadAhead` with reads of `take` bytes at most, and how it ended.
    fn read_all(input: Pieces, take: usize) -> (Vec<u8>, io::Result<()>) {
        let Ok(mut ahead) = ReadAhead::new(input) else {
            panic!("no thread");
        };
        let mut got = Vec::new();
        let mut buf = vec![0u8; take];
        loop {
            match ahead.read(&mut buf) {
                Ok(0) => {
                    // The end stays the end.
                    assert_eq!(ahead.read(&mut buf).ok(), Some(0));
                    return (got, Ok(()));
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => panic!("interrupt passed on"),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    #[test]
    fn same_bytes_then_the_same_end() {
        use proptest::prelude::*;
        crate::seeded_runner(200)
            .run(
                &(
                    // Empty, short, about a chunk, several chunks.
                    prop_oneof![0usize..5000, CHUNK - 10..CHUNK + 10, 2 * CHUNK..3 * CHUNK],
                    // Pieces as a pipe gives them; tiny ones only for short inputs (each is a
                    // hand-over between threads).
                    proptest::collection::vec(
                        prop_oneof![1usize..100, 4096usize..70_000, Just(CHUNK + 5)],
                        1..5,
                    ),
                    prop_oneof![1usize..100, 4096usize..70_000, Just(CHUNK), Just(3 * CHUNK)],
                    proptest::option::of(Just(io::ErrorKind::BrokenPipe)),
                    // Every second or third read interrupted, or none.
                    prop_oneof![Just(0usize), 2usize..4],
                ),
                |(len, mut sizes, take, fail, interrupt_every)| {
                    if len > 5000 {
                        sizes.iter_mut().for_each(|s| *s = (*s).max(4096));
                    }
                    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
                    let input = Pieces {
                        bytes: bytes.clone(),
                        at: 0,
                        sizes,
                        turn: 0,
                        fail,
                        interrupt_every,
                    };
                    let (got, end) = read_all(input, take);
                    prop_assert!(got == bytes, "{} bytes read of {}", got.len(), bytes.len());
                    prop_assert_eq!(end.err().map(|e| e.kind()), fail);
                    Ok(())
                },
            )
            .unwrap();
    }

    /// Chunks walked in place hold the input's bytes from a 64-byte boundary in memory, as
    /// the file was read into them, with at least `HEADROOM` in front.
    #[test]
    fn chunks_start_at_64_byte_boundaries() {
        let bytes: Vec<u8> = (0..3 * CHUNK + 123)
            .map(|i| (i * 13 + i / 509) as u8)
            .collect();
        let input = Pieces {
            bytes: bytes.clone(),
            at: 0,
            sizes: vec![CHUNK],
            turn: 0,
            fail: None,
            interrupt_every: 0,
        };
        let Ok(mut ahead) = ReadAhead::new(input) else {
            panic!("no thread");
        };
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some((chunk, start, filled)) = ahead.next_chunk().ok().flatten() {
            assert!(start >= HEADROOM && filled - start <= CHUNK && filled <= chunk.len());
            let addr = chunk[start..].as_ptr() as usize;
            assert_eq!(addr % ALIGN, 0, "chunk {chunks}'s bytes at {addr:#x}");
            got.extend_from_slice(&chunk[start..filled]);
            chunks += 1;
            ahead.give_back(chunk);
        }
        assert_eq!(chunks, 4);
        assert!(got == bytes, "{} bytes read of {}", got.len(), bytes.len());
    }

    /// A reader that stops early (it dropped the `ReadAhead`) stops the thread: it does not
    /// read the rest of an endless input.
    #[test]
    fn dropping_the_reader_stops_the_thread() {
        struct Endless(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(buf.len())
            }
        }
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let Ok(mut ahead) = ReadAhead::new(Endless(std::sync::Arc::clone(&reads))) else {
            panic!("no thread");
        };
        let mut buf = [0u8; 10];
        assert_eq!(ahead.read(&mut buf).ok(), Some(10));
        drop(ahead);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let after_drop = reads.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), after_drop);
        assert!(after_drop <= AHEAD + 3, "{after_drop} chunks read");
    }
}
