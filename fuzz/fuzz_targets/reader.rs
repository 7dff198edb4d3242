//! The capture reader's two ways in give the same packets and the same end: the bytes read
//! into the reader's own buffer (`read_from`, as standard input is read) and read ahead on
//! a thread (`read_ahead_from`, as files are read), whose chunks end wherever the fuzzer's
//! piece sizes put them: in the file header, a record's header, its data. Each frame shown
//! ahead (`RawPacket::ahead`) is one of the next few packets'. The input's first byte says
//! how many piece sizes follow it; the rest is the capture.
#![no_main]

use std::io::{self, Read};
use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use tcpstate::capture::file::{self, LOOK_AHEAD};
use tcpstate::capture::{ContainerCounters, RawPacket};
use tcpstate::time::Ts;

/// A reader that gives the bytes in pieces of the sizes given, in turn.
struct Pieces {
    bytes: Vec<u8>,
    at: usize,
    sizes: Vec<u8>,
    turn: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = usize::from(self.sizes[self.turn % self.sizes.len()]) + 1;
        self.turn += 1;
        let n = size.min(buf.len()).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A packet as handed over, with the frame shown ahead of it.
#[derive(Debug, PartialEq)]
struct Seen {
    ts: Ts,
    linktype: i32,
    data: Vec<u8>,
    orig_len: u32,
    ahead: Vec<u8>,
}

type ReadFn = dyn FnOnce(
    &mut ContainerCounters,
    &mut dyn FnMut(&RawPacket<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, tcpstate::capture::CaptureError>;

fn run(
    read: Box<ReadFn>,
) -> (
    Vec<Seen>,
    ContainerCounters,
    Result<ControlFlow<()>, String>,
) {
    let mut seen = Vec::new();
    let mut counters = ContainerCounters::default();
    let end = read(&mut counters, &mut |p| {
        seen.push(Seen {
            ts: p.ts,
            linktype: p.linktype,
            data: p.data.to_vec(),
            orig_len: p.orig_len,
            ahead: p.ahead.to_vec(),
        });
        ControlFlow::Continue(())
    });
    (seen, counters, end.map_err(|e| e.to_string()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16) + 1;
    if rest.len() < count {
        return;
    }
    let (sizes, capture) = rest.split_at(count);
    let plain_bytes = capture.to_vec();
    let (plain, plain_counters, plain_end) = run(Box::new(move |counters, on_packet| {
        file::read_from("fuzz", &plain_bytes[..], counters, on_packet)
    }));
    let pieces = Pieces {
        bytes: capture.to_vec(),
        at: 0,
        sizes: sizes.to_vec(),
        turn: 0,
    };
    let (ahead, ahead_counters, ahead_end) = run(Box::new(move |counters, on_packet| {
        file::read_ahead_from("fuzz", pieces, counters, on_packet)
    }));
    assert_eq!(plain_end, ahead_end);
    assert_eq!(plain_counters, ahead_counters);
    assert_eq!(plain.len(), ahead.len());
    for (i, (p, a)) in plain.iter().zip(&ahead).enumerate() {
        // The frame shown ahead depends on what the buffer holds; the packets do not.
        assert_eq!(
            (p.ts, p.linktype, &p.data, p.orig_len),
            (a.ts, a.linktype, &a.data, a.orig_len),
            "packet {i}"
        );
    }
    for seen in [&plain, &ahead] {
        for (i, p) in seen.iter().enumerate() {
            let next = &seen[i + 1..seen.len().min(i + 1 + LOOK_AHEAD)];
            if !p.ahead.is_empty() && next.len() == LOOK_AHEAD {
                assert!(
                    next.iter().any(|n| n.data == p.ahead),
                    "packet {i}: the frame shown ahead is not one of the next packets'"
                );
            }
        }
    }
});
