//! `--threads N` gives what one thread gives, byte for byte: standard output, the counters
//! on standard error and the exit status, for every committed capture and for a generated
//! one with tens of thousands of packets (many batches, sweeps ending records mid-run, tuples
//! reused, handshakes left unanswered, resets, times going backwards).

mod common;

use std::path::{Path, PathBuf};

use common::{Rec, pcap_bytes, rec_at, tcp_frame, tcpstate};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The commands `--threads` runs, each with the flags that change what they report.
const COMMANDS: &[&[&str]] = &[
    &["conns"],
    &["conns", "--format", "json"],
    &["conns", "--format", "csv"],
    &["states", "--all"],
    &["states", "--format", "json", "--at", "+0.05"],
    &["diagnose", "--format", "json"],
    &["summary", "--format", "json"],
];

/// Runs `args` on one thread and on `threads`, and fails on any difference.
fn assert_same_as_one_thread(args: &[&str], threads: &str) {
    let one = tcpstate(args);
    let mut sharded_args = args.to_vec();
    sharded_args.extend(["--threads", threads]);
    let many = tcpstate(&sharded_args);
    assert_eq!(
        one.code, many.code,
        "exit status of {args:?} --threads {threads}"
    );
    assert!(
        one.stdout == many.stdout,
        "standard output of {args:?} --threads {threads} differs:\n--- one thread\n{}\n--- {threads} threads\n{}",
        one.stdout,
        many.stdout
    );
    assert_eq!(one.stderr, many.stderr, "standard error of {args:?}");
}

fn committed_captures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["pcaps", "tests/hostile"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("capture folder") {
            let path = entry.expect("entry").path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "pcap" || ext == "pcapng" {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_committed_capture_gives_the_same_on_two_and_three_threads() {
    let captures = committed_captures();
    assert!(
        captures.len() > 20,
        "found only {} captures",
        captures.len()
    );
    for path in &captures {
        let path = path.to_str().expect("utf-8 path");
        for command in COMMANDS {
            let mut args = command.to_vec();
            args.extend(["-r", path]);
            assert_same_as_one_thread(&args, "2");
        }
        assert_same_as_one_thread(&["conns", "--format", "json", "-r", path], "3");
    }
}

/// A small deterministic generator (64-bit LCG), so the capture is the same in every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Connections of every kind, interleaved in time: 40 s of traffic to four servers from
/// 300 client address:ports, each used again every second or so (so tuples are reused,
/// some while the client holds them in TIME_WAIT).
fn busy_capture() -> Vec<Rec> {
    let mut rng = Lcg(0x5eed);
    let servers = [
        "10.0.0.2:80",
        "10.0.0.3:443",
        "10.0.0.4:22",
        "10.0.0.5:8080",
    ];
    let mut timed: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    let mut order = 0u64;
    let mut push = |ms: u64, frame: Vec<u8>| {
        order += 1;
        timed.push((ms, order, frame));
    };
    for n in 0..12_000u64 {
        let client = format!("10.1.0.{}:{}", 1 + n % 20, 30_000 + n % 300);
        let server = servers[rng.below(4) as usize];
        let t = n * 40_000 / 12_000 + rng.below(50);
        let isn = rng.next() as u32;
        let sisn = rng.next() as u32;
        let (c, s) = (client.as_str(), server);
        push(t, tcp_frame(c, s, SYN, isn, 0, 0));
        match rng.below(10) {
            // Unanswered: the handshake timeout (3 s here) ends it.
            0 => push(t + 1000, tcp_frame(c, s, SYN, isn, 0, 0)),
            // Refused.
            1 => push(t + 1, tcp_frame(s, c, RST | ACK, 0, isn.wrapping_add(1), 0)),
            kind => {
                push(
                    t + 1,
                    tcp_frame(s, c, SYN | ACK, sisn, isn.wrapping_add(1), 0),
                );
                push(
                    t + 2,
                    tcp_frame(c, s, ACK, isn.wrapping_add(1), sisn.wrapping_add(1), 0),
                );
                let len = rng.below(1400) as u16;
                push(
                    t + 3,
                    tcp_frame(c, s, ACK, isn.wrapping_add(1), sisn.wrapping_add(1), len),
                );
                let (c1, s1) = (isn.wrapping_add(1 + u32::from(len)), sisn.wrapping_add(1));
                match kind {
                    // Left open (the established timeout, 10 s here, ends some).
                    2 | 3 => {}
                    // Reset by the server.
                    4 => push(t + 5, tcp_frame(s, c, RST, s1, 0, 0)),
                    // Closed by the client first, or by the server.
                    5..=7 => {
                        push(t + 6, tcp_frame(c, s, FIN | ACK, c1, s1, 0));
                        push(t + 7, tcp_frame(s, c, FIN | ACK, s1, c1.wrapping_add(1), 0));
                        push(
                            t + 8,
                            tcp_frame(c, s, ACK, c1.wrapping_add(1), s1.wrapping_add(1), 0),
                        );
                    }
                    _ => {
                        push(t + 6, tcp_frame(s, c, FIN | ACK, s1, c1, 0));
                        push(t + 7, tcp_frame(c, s, FIN | ACK, c1, s1.wrapping_add(1), 0));
                        push(
                            t + 8,
                            tcp_frame(s, c, ACK, s1.wrapping_add(1), c1.wrapping_add(1), 0),
                        );
                    }
                }
            }
        }
    }
    timed.sort_by_key(|(ms, order, _)| (*ms, *order));
    let mut recs: Vec<Rec> = timed
        .into_iter()
        .map(|(ms, _, frame)| rec_at(ms, frame))
        .collect();
    // A few packets whose time goes backwards.
    for i in (1_000..recs.len()).step_by(9_973) {
        recs[i].sec -= 1;
    }
    recs
}

/// `busy_capture` written to a file in a temporary folder (removed when the folder is
/// dropped); returns both.
fn busy_capture_file() -> (tempfile::TempDir, String) {
    let recs = busy_capture();
    assert!(recs.len() > 60_000, "only {} packets", recs.len());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("busy.pcap");
    std::fs::write(&path, pcap_bytes(&recs)).expect("write");
    let path = path.to_str().expect("utf-8").to_string();
    (dir, path)
}

#[test]
fn a_busy_capture_gives_the_same_on_two_and_four_threads() {
    let (_dir, path) = busy_capture_file();
    let path = path.as_str();
    let timers = [
        "--time-wait",
        "2",
        "--idle-timeout",
        "handshake=3",
        "--idle-timeout",
        "established=10",
    ];
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.extend(timers);
        args.extend(["-r", path]);
        assert_same_as_one_thread(&args, "2");
    }
    let mut args = vec!["conns", "--format", "json", "-r", path];
    args.extend(timers);
    assert_same_as_one_thread(&args, "4");
    // The run ends records mid-capture (what the merge must order), reuses tuples and has
    // connections of every outcome: otherwise this test would prove little.
    let one = tcpstate(&args);
    let rows = common::json_lines(&one.stdout);
    assert!(rows.len() > 9_000, "{} rows\n{}", rows.len(), one.stderr);
    let ids: Vec<u64> = rows.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert!(
        ids.windows(2).any(|w| w[0] > w[1]),
        "records should end out of id order"
    );
    for needle in [
        "4-tuples reused by a new connection",
        "no longer tracked after an idle timeout",
        "timestamp earlier than the packet before",
    ] {
        assert!(
            one.stderr.contains(needle),
            "counters lack '{needle}':\n{}",
            one.stderr
        );
    }
}

#[test]
fn under_max_conns_every_record_is_written_once_and_dropped_attempts_are_counted() {
    // The limit is per worker, so the evictions differ from one thread's: what must hold is
    // that every connection is either written once or counted as a dropped attempt, with ids
    // 1..=N each used once. (Debug builds also check that the merge forgot every number.)
    let (_dir, path) = busy_capture_file();
    let path = path.as_str();
    let run = tcpstate(&[
        "conns",
        "--format",
        "json",
        "--max-conns",
        "200",
        "--threads",
        "2",
        "-r",
        path,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let counter = |name: &str| -> u64 {
        run.stderr
            .lines()
            .find(|l| l.trim_end().ends_with(name))
            .and_then(|l| l.trim_start_matches("tcpstate:").split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter '{name}' in\n{}", run.stderr))
    };
    let connections = counter("connections");
    let dropped = counter("of them half-open attempts dropped (counted per server)");
    assert!(dropped > 0, "{}", run.stderr);
    let rows = common::json_lines(&run.stdout);
    let mut ids: Vec<u64> = rows.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids.len() as u64, connections - dropped, "{}", run.stderr);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "an id written twice");
    assert!(ids.iter().all(|&id| (1..=connections).contains(&id)));
}

#[test]
fn threads_is_refused_where_it_cannot_apply() {
    let path = common::capture("mixed");
    for (args, says) in [
        (vec!["events", "--threads", "2", "-r", &path], "events"),
        (
            vec!["explain", "1", "--threads", "2", "-r", &path],
            "explain",
        ),
        (
            vec!["states", "--interval", "1", "--threads", "2", "-r", &path],
            "states --interval",
        ),
        (
            vec!["conns", "--format", "zeek", "--threads", "2", "-r", &path],
            "conns --format zeek",
        ),
        (vec!["conns", "--threads", "2", "-r", "-"], "standard input"),
        (vec!["conns", "--threads", "0", "-r", &path], "threads"),
    ] {
        let run = tcpstate(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    // One thread is the default, and asking for it is no error anywhere.
    let run = tcpstate(&["events", "--threads", "1", "-q", "-r", &path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}
