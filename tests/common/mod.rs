//! Helpers shared by the integration tests: running the binary, reading and writing small
//! classic pcap files, and building TCP frames.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// Runs the tcpstate binary, feeding `stdin` if given; a panic in it fails the test whatever
/// the caller checks.
pub fn tcpstate_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Run {
    run_tcpstate(args, stdin, None)
}

/// Runs the tcpstate binary on `args`, killing it and failing the test if it has not ended
/// within `limit` (hostile input must not hang it).
pub fn tcpstate_within(args: &[&str], limit: Duration) -> Run {
    run_tcpstate(args, None, Some(limit))
}

fn run_tcpstate(args: &[&str], stdin: Option<&[u8]>, limit: Option<Duration>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcpstate"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcpstate");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let bytes = bytes.to_vec();
        // A writer thread, so a full stdout pipe cannot deadlock against a full stdin pipe.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let out = match limit {
        None => child.wait_with_output().expect("wait for tcpstate"),
        Some(limit) => {
            // Readers on threads so the child never blocks on a full pipe while we poll.
            let drain = |mut r: Box<dyn Read + Send>| {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = r.read_to_end(&mut buf);
                    buf
                })
            };
            let out_t = drain(Box::new(child.stdout.take().expect("stdout pipe")));
            let err_t = drain(Box::new(child.stderr.take().expect("stderr pipe")));
            let deadline = Instant::now() + limit;
            let status = loop {
                if let Some(status) = child.try_wait().expect("poll tcpstate") {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("tcpstate {args:?} did not finish within {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            Output {
                status,
                stdout: out_t.join().expect("stdout reader"),
                stderr: err_t.join().expect("stderr reader"),
            }
        }
    };
    let run = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        // Killed by a signal counts as a failure of every assertion on the status.
        code: out.status.code().unwrap_or(-1),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "tcpstate {args:?} panicked:\n{}",
        run.stderr
    );
    run
}

pub fn tcpstate(args: &[&str]) -> Run {
    tcpstate_with_stdin(args, None)
}

pub fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

pub fn pcaps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps")
}

pub fn capture(name: &str) -> String {
    pcaps_dir()
        .join(format!("{name}.pcap"))
        .to_string_lossy()
        .into_owned()
}

/// One record of a classic pcap file.
#[derive(Clone, Debug)]
pub struct Rec {
    pub sec: u32,
    pub usec: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl Rec {
    pub fn nanos(&self) -> u64 {
        u64::from(self.sec) * 1_000_000_000 + u64::from(self.usec) * 1000
    }
    pub fn micros(&self) -> u64 {
        u64::from(self.sec) * 1_000_000 + u64::from(self.usec)
    }
}

/// Reads a classic little-endian microsecond pcap (what `pcaps/` holds).
pub fn read_pcap(path: &Path) -> Vec<Rec> {
    let d = std::fs::read(path).expect("read pcap");
    let u32le = |at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
    assert_eq!(
        u32le(0),
        0xa1b2_c3d4,
        "expected a little-endian microsecond pcap"
    );
    let mut recs = Vec::new();
    let mut at = 24;
    while at < d.len() {
        let caplen = u32le(at + 8) as usize;
        recs.push(Rec {
            sec: u32le(at),
            usec: u32le(at + 4),
            orig_len: u32le(at + 12),
            data: d[at + 16..at + 16 + caplen].to_vec(),
        });
        at += 16 + caplen;
    }
    recs
}

/// A classic pcap file, Ethernet, microsecond timestamps.
pub fn pcap_bytes(recs: &[Rec]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    for v in [0u32, 0, 262_144, 1] {
        out.extend(v.to_le_bytes());
    }
    for r in recs {
        for v in [r.sec, r.usec, r.data.len() as u32, r.orig_len] {
            out.extend(v.to_le_bytes());
        }
        out.extend(&r.data);
    }
    out
}

/// An Ethernet/IPv4/TCP frame from `src` to `dst` (`a.b.c.d:port`) with `len` zero bytes of
/// payload. Flags as in the TCP header (SYN 0x02, ACK 0x10, ...).
pub fn tcp_frame(src: &str, dst: &str, flags: u8, seq: u32, ack: u32, len: u16) -> Vec<u8> {
    let parse = |s: &str| -> ([u8; 4], u16) {
        let a: std::net::SocketAddrV4 = s.parse().expect("a.b.c.d:port");
        (a.ip().octets(), a.port())
    };
    let (sip, sport) = parse(src);
    let (dip, dport) = parse(dst);
    let total = 40 + len;
    let mut f = vec![0u8; 12];
    f.extend([0x08, 0x00]);
    f.extend([0x45, 0]);
    f.extend(total.to_be_bytes());
    f.extend([0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend(sip);
    f.extend(dip);
    f.extend(sport.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend(seq.to_be_bytes());
    f.extend(ack.to_be_bytes());
    f.extend([5 << 4, flags]);
    f.extend(65000u16.to_be_bytes());
    f.extend([0, 0, 0, 0]);
    f.extend(std::iter::repeat_n(0u8, usize::from(len)));
    f
}

/// A connection from `client` to `server` that opens and closes, the client closing first
/// (its TIME_WAIT starts with the last packet): SYN, SYN-ACK, ACK, FIN, FIN, ACK at the six
/// times `ms`, initial sequence numbers `isn` (client, server).
pub fn opened_and_closed(client: &str, server: &str, isn: (u32, u32), ms: [u64; 6]) -> Vec<Rec> {
    let (c, s) = isn;
    let (syn, ack, fin) = (0x02, 0x10, 0x01);
    let frames = [
        tcp_frame(client, server, syn, c, 0, 0),
        tcp_frame(server, client, syn | ack, s, c + 1, 0),
        tcp_frame(client, server, ack, c + 1, s + 1, 0),
        tcp_frame(client, server, fin | ack, c + 1, s + 1, 0),
        tcp_frame(server, client, fin | ack, s + 1, c + 2, 0),
        tcp_frame(client, server, ack, c + 2, s + 2, 0),
    ];
    ms.into_iter()
        .zip(frames)
        .map(|(t, f)| rec_at(t, f))
        .collect()
}

/// A record at `ms` milliseconds after 2026-01-01 holding `frame`.
pub fn rec_at(ms: u64, frame: Vec<u8>) -> Rec {
    let base = 1_767_225_600u64;
    Rec {
        sec: (base + ms / 1000) as u32,
        usec: ((ms % 1000) * 1000) as u32,
        orig_len: frame.len() as u32,
        data: frame,
    }
}

/// pcapng writer: blocks in one byte order per section.
#[derive(Default)]
pub struct Ng {
    pub out: Vec<u8>,
    pub big: bool,
}

impl Ng {
    pub fn new() -> Ng {
        Ng {
            out: Vec::new(),
            big: false,
        }
    }
    pub fn u16(&self, v: u16) -> [u8; 2] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    pub fn u32(&self, v: u32) -> [u8; 4] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    pub fn block(&mut self, kind: u32, body: &[u8]) {
        let mut body = body.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let total = 12 + body.len() as u32;
        let (k, t) = (self.u32(kind), self.u32(total));
        self.out.extend(k);
        self.out.extend(t);
        self.out.extend(body);
        self.out.extend(t);
    }
    /// Starts a section in the given byte order.
    pub fn shb(&mut self, big: bool) -> &mut Ng {
        self.big = big;
        let mut body = Vec::new();
        body.extend(self.u32(0x1a2b_3c4d));
        body.extend(self.u16(1));
        body.extend(self.u16(0));
        body.extend(if big {
            (-1i64).to_be_bytes()
        } else {
            (-1i64).to_le_bytes()
        });
        self.block(0x0a0d_0d0a, &body);
        self
    }
    /// An interface; `tsresol` is the if_tsresol option byte (none: the default, microseconds).
    pub fn idb(&mut self, linktype: u16, tsresol: Option<u8>) -> &mut Ng {
        let mut body = Vec::new();
        body.extend(self.u16(linktype));
        body.extend(self.u16(0));
        body.extend(self.u32(262_144));
        if let Some(r) = tsresol {
            body.extend(self.u16(9));
            body.extend(self.u16(1));
            body.extend([r, 0, 0, 0]);
            body.extend(self.u16(0)); // opt_endofopt
            body.extend(self.u16(0));
        }
        self.block(1, &body);
        self
    }
    /// An Enhanced Packet Block; the timestamp is in the interface's units.
    pub fn epb(&mut self, iface: u32, ts: u64, orig_len: u32, data: &[u8]) -> &mut Ng {
        let mut body = Vec::new();
        body.extend(self.u32(iface));
        body.extend(self.u32((ts >> 32) as u32));
        body.extend(self.u32(ts as u32));
        body.extend(self.u32(data.len() as u32));
        body.extend(self.u32(orig_len));
        body.extend(data);
        self.block(6, &body);
        self
    }
}

/// Compares `got` with the golden file `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites it.
pub fn assert_golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    if want != got {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  want: {a}\n  got:  {b}", i + 1))
            .collect();
        panic!(
            "{name} differs from the golden file ({} vs {} lines):\n{}\n(UPDATE_GOLDEN=1 rewrites it after review)",
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
}

/// One test per capture in pcaps/, each calling `$check(name)`, and a test that fails when a
/// capture is added without being listed here.
#[macro_export]
macro_rules! test_each_capture {
    ($check:path) => {
        $crate::test_each_capture!(@list $check;
            close_client_first,
            close_server_first,
            half_close,
            close_wait_leak,
            linger_abort,
            close_unread_data,
            refused,
            syn_blackhole,
            lost_final_ack,
            synack_exhausted,
            tw_reuse,
            simultaneous_close,
            simultaneous_open,
            ipv6,
            keepalive,
            time_wait_expiry,
            fin_wait2_orphan_timeout,
            mixed,
            zero_window_close,
            bulk_download,
            self_connect
        );
    };
    (@list $check:path; $($name:ident),* $(,)?) => {
        $( #[test] fn $name() { $check(stringify!($name)); } )*

        #[test]
        fn every_capture_has_a_test() {
            let listed = [$(stringify!($name)),*];
            let mut missing = Vec::new();
            for entry in std::fs::read_dir($crate::common::pcaps_dir()).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "pcap") {
                    let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
                    if !listed.contains(&stem.as_str()) {
                        missing.push(stem);
                    }
                }
            }
            assert!(missing.is_empty(), "captures in pcaps/ without a test: {missing:?}");
            assert!(listed.len() >= 20);
        }
    };
}
