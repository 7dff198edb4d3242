//! `cargo bench`: the decoder, the flow table / engine and the whole pipeline on committed
//! captures, throughput in packets. The big end-to-end comparison is `benches/compare.py`.
//!
//!     cargo bench --bench engine [-- FILTER]

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcpstate::capture::{ContainerCounters, RawPacket, file};
use tcpstate::decode::{self, Decoded, LinkType};
use tcpstate::flow::EngineConfig;
use tcpstate::pipeline::Engine;
use tcpstate::time::Ts;

const CAPTURES: [&str; 2] = ["mixed.pcap", "bulk_download.pcap"];

/// One record, copied out of the file once, before timing.
struct Frame {
    ts: Ts,
    linktype: i32,
    data: Vec<u8>,
    orig_len: u32,
}

impl Frame {
    fn raw(&self) -> RawPacket<'_> {
        RawPacket {
            ts: self.ts,
            linktype: self.linktype,
            data: &self.data,
            orig_len: self.orig_len,
            ahead: &[],
        }
    }
}

fn file_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/pcaps/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn frames(name: &str, bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut counters = ContainerCounters::default();
    let _: ControlFlow<()> = file::read_from(name, bytes, &mut counters, &mut |p| {
        out.push(Frame {
            ts: p.ts,
            linktype: p.linktype,
            data: p.data.to_vec(),
            orig_len: p.orig_len,
        });
        ControlFlow::Continue(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    out
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for name in CAPTURES {
        let frames = frames(name, &file_bytes(name));
        group.throughput(Throughput::Elements(frames.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut tcp = 0u64;
                for f in &frames {
                    let link = LinkType::from_linktype(f.linktype).expect("known link type");
                    if let Ok(Decoded::Tcp(seg)) = decode::decode(link, black_box(&f.data)) {
                        tcp += u64::from(seg.seq_len());
                    }
                }
                tcp
            })
        });
    }
    group.finish();
}

/// The flow table and state machines: `Engine::process` over preloaded packets, then
/// `finish` (timers to the end, records out), as `tcpstate conns` runs it.
fn bench_engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    for name in CAPTURES {
        let frames = frames(name, &file_bytes(name));
        group.throughput(Throughput::Elements(frames.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut engine = Engine::new(EngineConfig::default());
                for f in &frames {
                    engine.process(&f.raw());
                }
                engine.finish().connections.len()
            })
        });
    }
    group.finish();
}

/// From the file's bytes in memory: `capture::file::read_from` + engine + finish.
fn bench_pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    for name in CAPTURES {
        let bytes = file_bytes(name);
        let packets = frames(name, &bytes).len();
        group.throughput(Throughput::Elements(packets as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut engine = Engine::new(EngineConfig::default());
                let mut counters = ContainerCounters::default();
                let _: ControlFlow<()> =
                    file::read_from(name, black_box(&bytes[..]), &mut counters, &mut |p| {
                        engine.process(p);
                        ControlFlow::Continue(())
                    })
                    .expect("committed capture reads");
                engine.finish().connections.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_engine, bench_pipeline);
criterion_main!(benches);
