//! Hostile and broken input (issue 6): small captures built here, each with one kind of
//! damage or oddity between the packets of a well-formed connection. For each: the exit
//! status, the error line or the counter that names what happened, and that the well-formed
//! connection around it is still tracked exactly as without the damage. Every run has a time
//! limit (no hangs) and fails on a panic.
//!
//! The files are also kept in `tests/hostile/` as a corpus (fuzz seeds, manual runs); the
//! test checks they are what this file builds (`UPDATE_HOSTILE=1` rewrites them). Crash inputs
//! the fuzzers found are in `tests/hostile/fuzz/` and run here too.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Ng, Rec, Run, json_lines, pcap_bytes, rec_at, tcp_frame, tcpstate, tcpstate_within};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const CLIENT: &str = "10.0.0.1:40000";
const SERVER: &str = "10.0.0.2:80";

/// A whole connection: handshake, 10 bytes of data, client closes first. At the end the
/// client is in TIME_WAIT and the server CLOSED.
fn good_frames() -> Vec<Vec<u8>> {
    let (c, s) = (CLIENT, SERVER);
    vec![
        tcp_frame(c, s, SYN, 100, 0, 0),
        tcp_frame(s, c, SYN | ACK, 300, 101, 0),
        tcp_frame(c, s, ACK, 101, 301, 0),
        tcp_frame(c, s, PSH | ACK, 101, 301, 10),
        tcp_frame(s, c, ACK, 301, 111, 0),
        tcp_frame(c, s, FIN | ACK, 111, 301, 0),
        tcp_frame(s, c, FIN | ACK, 301, 112, 0),
        tcp_frame(c, s, ACK, 112, 302, 0),
    ]
}

/// The good connection's records, 10 ms apart, with `extra` inserted after the data segment
/// (the 4th packet), 1 ms apart from 31 ms on: the good packets' times do not depend on them.
fn around(extra: Vec<Vec<u8>>) -> Vec<Rec> {
    let mut recs: Vec<Rec> = good_frames()
        .into_iter()
        .enumerate()
        .map(|(i, f)| rec_at(10 * i as u64, f))
        .collect();
    let tail = recs.split_off(4);
    recs.extend(
        extra
            .into_iter()
            .enumerate()
            .map(|(i, f)| rec_at(31 + i as u64, f)),
    );
    recs.extend(tail);
    recs
}

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// Writes (with `UPDATE_HOSTILE=1`) or checks the corpus file `name`, returning its path.
fn corpus_file(name: &str, bytes: &[u8]) -> String {
    let path = hostile_dir().join(name);
    if std::env::var_os("UPDATE_HOSTILE").is_some() {
        std::fs::write(&path, bytes).expect("write corpus file");
    } else {
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_HOSTILE=1 writes it)", path.display()));
        assert!(
            on_disk == bytes,
            "{} differs from what the test builds (UPDATE_HOSTILE=1 rewrites it)",
            path.display()
        );
    }
    path.to_string_lossy().into_owned()
}

fn conns(path: &str) -> Run {
    tcpstate_within(&["conns", "-r", path, "--format", "json"], LIMIT)
}

/// The counter line ending in `what`, as a number; 0 when the line is absent (tcpstate
/// prints only counters that are not zero).
fn counter(stderr: &str, what: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.starts_with("tcpstate:") && l.trim_end().ends_with(what))
        .map(|l| {
            l.trim_start_matches("tcpstate:")
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a counter line: {l}"))
        })
        .next()
        .unwrap_or(0)
}

/// The lines of stderr that are not counters (errors).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.starts_with("tcpstate:") || !l.contains("  "))
        .collect()
}

/// The good connection's row, without its id (ids shift when other connections come first).
fn good_row(rows: &[Value]) -> Value {
    let mut row = rows
        .iter()
        .find(|r| r["client"] == CLIENT && r["server"] == SERVER)
        .unwrap_or_else(|| panic!("the well-formed connection is missing: {rows:?}"))
        .clone();
    row.as_object_mut().expect("object").remove("id");
    row
}

/// The good connection as it is read from a clean file.
fn baseline() -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("clean.pcap");
    std::fs::write(&p, pcap_bytes(&around(vec![]))).expect("write");
    let run = conns(p.to_str().expect("utf-8 path"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let row = good_row(&json_lines(&run.stdout));
    assert_eq!(row["client_state"], "TIME_WAIT");
    assert_eq!(row["server_state"], "CLOSED");
    assert_eq!(row["handshake"], "completed");
    assert_eq!(row["first_closer"], "client");
    row
}

/// Asserts the good connection came through unchanged; returns all rows.
fn assert_good_kept(run: &Run, what: &str) -> Vec<Value> {
    let rows = json_lines(&run.stdout);
    assert_eq!(
        good_row(&rows),
        baseline(),
        "{what}: the well-formed connection changed\n{}",
        run.stderr
    );
    rows
}

// ---------------------------------------------------------------------------------------------
// Builders

/// `frame` with `edit` applied (byte offsets: Ethernet 0..14, IPv4 14..34, TCP 34..54).
fn edited(frame: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = frame;
    edit(&mut f);
    f
}

/// An Ethernet/IPv6/TCP frame fd00::1:SPORT -> fd00::2:80 with the extension headers
/// `exts` (next-header numbers, each an 8-byte header holding one PadN option) before TCP.
fn tcp6_frame(sport: u16, flags: u8, seq: u32, exts: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    let next_of = |i: usize| exts.get(i + 1).copied().unwrap_or(6);
    for i in 0..exts.len() {
        chain.extend([next_of(i), 0, 1, 4, 0, 0, 0, 0]);
    }
    let mut tcp = Vec::new();
    tcp.extend(sport.to_be_bytes());
    tcp.extend(80u16.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(0u32.to_be_bytes());
    tcp.extend([5 << 4, flags]);
    tcp.extend(65000u16.to_be_bytes());
    tcp.extend([0, 0, 0, 0]);
    let mut f = vec![0u8; 12];
    f.extend([0x86, 0xdd]);
    f.extend([0x60, 0, 0, 0]);
    f.extend(((chain.len() + tcp.len()) as u16).to_be_bytes());
    f.push(exts.first().copied().unwrap_or(6));
    f.push(64);
    let mut src = [0u8; 16];
    src[0] = 0xfd;
    src[15] = 1;
    let mut dst = src;
    dst[15] = 2;
    f.extend(src);
    f.extend(dst);
    f.extend(chain);
    f.extend(tcp);
    f
}

/// The good connection as pcapng (one Ethernet interface, microseconds), with `extra`
/// raw blocks (already encoded) after the 4th packet.
fn pcapng_around(extra: impl FnOnce(&mut Ng)) -> Vec<u8> {
    let recs = around(vec![]);
    let mut ng = Ng::new();
    ng.shb(false).idb(1, None);
    for (i, r) in recs.iter().enumerate() {
        if i == 4 {
            // Not a closure call in the loop: `extra` runs once.
            break;
        }
        ng.epb(0, r.micros(), r.orig_len, &r.data);
    }
    extra(&mut ng);
    for r in &recs[4..] {
        ng.epb(0, r.micros(), r.orig_len, &r.data);
    }
    ng.out
}

const HOP_BY_HOP: u8 = 0;
const DEST_OPTS: u8 = 60;

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let other = |port: u16| format!("10.0.0.3:{port}");
    vec![
        (
            "pcapng_unknown_blocks.pcapng",
            pcapng_around(|ng| {
                ng.block(0x0000_0bad, b"not a block type pcapng knows");
                ng.block(0x8000_0bad, b"local-use block type");
            }),
        ),
        (
            "pcapng_trailing_length_differs.pcapng",
            pcapng_around(|ng| {
                let f = tcp_frame(&other(1), SERVER, SYN, 1, 0, 0);
                ng.epb(0, 1_767_225_600_031_000, f.len() as u32, &f);
                let n = ng.out.len();
                ng.out[n - 4] ^= 0x40; // trailing total length 64 more than the leading one
            }),
        ),
        (
            "pcapng_block_length_too_small.pcapng",
            pcapng_around(|ng| {
                let f = tcp_frame(&other(2), SERVER, SYN, 1, 0, 0);
                let at = ng.out.len();
                ng.epb(0, 1_767_225_600_031_000, f.len() as u32, &f);
                let small = ng.u32(24); // an EPB needs 32 bytes before its data
                ng.out[at + 4..at + 8].copy_from_slice(&small);
            }),
        ),
        (
            "pcapng_caplen_beyond_block.pcapng",
            pcapng_around(|ng| {
                let f = tcp_frame(&other(3), SERVER, SYN, 1, 0, 0);
                let at = ng.out.len();
                ng.epb(0, 1_767_225_600_031_000, f.len() as u32, &f);
                let big = ng.u32(4000); // captured length beyond the block's end
                ng.out[at + 20..at + 24].copy_from_slice(&big);
            }),
        ),
        (
            "pcapng_block_length_below_12.pcapng",
            pcapng_around(|ng| {
                // A Process Information Block claiming 10 bytes: below any block's 12.
                let (kind, len) = (ng.u32(0x8000_0001), ng.u32(10));
                ng.out.extend(kind);
                ng.out.extend(len);
                ng.out.extend([0; 4]);
            }),
        ),
        ("timestamps_jump_years.pcap", {
            let mut recs = around(vec![tcp_frame(&other(4), SERVER, SYN, 1, 0, 0)]);
            recs[4].sec = u32::MAX; // 2106-02-07
            pcap_bytes(&recs)
        }),
        (
            "timestamp_beyond_2262.pcapng",
            pcapng_around(|ng| {
                let f = tcp_frame(&other(5), SERVER, SYN, 1, 0, 0);
                // 2^63 microseconds: past what nanoseconds in an i64 can hold.
                ng.epb(0, 1 << 63, f.len() as u32, &f);
            }),
        ),
        (
            "tcp_all_flags.pcap",
            pcap_bytes(&around(vec![tcp_frame(&other(6), SERVER, 0xff, 1, 1, 0)])),
        ),
        (
            "tcp_syn_fin.pcap",
            pcap_bytes(&around(vec![tcp_frame(
                &other(7),
                SERVER,
                SYN | FIN,
                1,
                0,
                0,
            )])),
        ),
        (
            "tcp_syn_rst.pcap",
            pcap_bytes(&around(vec![tcp_frame(
                &other(8),
                SERVER,
                SYN | RST,
                1,
                0,
                0,
            )])),
        ),
        (
            "tcp_data_offset_4.pcap",
            pcap_bytes(&around(vec![edited(
                tcp_frame(&other(9), SERVER, SYN, 1, 0, 0),
                |f| f[46] = 4 << 4,
            )])),
        ),
        (
            "tcp_data_offset_beyond_ip.pcap",
            pcap_bytes(&around(vec![edited(
                tcp_frame(&other(10), SERVER, SYN, 1, 0, 0),
                |f| f[46] = 15 << 4, // 60-byte header in a 20-byte IP payload
            )])),
        ),
        (
            "ipv4_ihl_4.pcap",
            pcap_bytes(&around(vec![edited(
                tcp_frame(&other(11), SERVER, SYN, 1, 0, 0),
                |f| f[14] = 0x44,
            )])),
        ),
        (
            "ipv4_total_length_below_header.pcap",
            pcap_bytes(&around(vec![edited(
                tcp_frame(&other(12), SERVER, SYN, 1, 0, 0),
                |f| f[16..18].copy_from_slice(&10u16.to_be_bytes()),
            )])),
        ),
        (
            "ipv4_total_length_beyond_frame.pcap",
            pcap_bytes(&around(vec![edited(
                tcp_frame(&other(13), SERVER, SYN, 1, 0, 0),
                |f| f[16..18].copy_from_slice(&1500u16.to_be_bytes()),
            )])),
        ),
        (
            "ipv6_two_extension_headers.pcap",
            pcap_bytes(&around(vec![tcp6_frame(
                14,
                SYN,
                1,
                &[HOP_BY_HOP, DEST_OPTS],
            )])),
        ),
        (
            "ipv6_long_extension_chain.pcap",
            pcap_bytes(&around(vec![tcp6_frame(15, SYN, 1, &[DEST_OPTS; 300])])),
        ),
        (
            "ipv6_hop_by_hop_not_first.pcap",
            pcap_bytes(&around(vec![tcp6_frame(
                16,
                SYN,
                1,
                &[DEST_OPTS, HOP_BY_HOP, DEST_OPTS],
            )])),
        ),
        (
            "zero_ports.pcap",
            pcap_bytes(&around(vec![
                tcp_frame("10.0.0.4:0", "10.0.0.2:0", SYN, 1, 0, 0),
                tcp_frame("10.0.0.2:0", "10.0.0.4:0", SYN | ACK, 7, 2, 0),
                tcp_frame("10.0.0.4:0", "10.0.0.2:0", ACK, 2, 8, 0),
            ])),
        ),
        (
            "same_address_both_ends.pcap",
            pcap_bytes(&around(vec![
                // A socket connected to itself (Linux allows it: a simultaneous open with
                // itself): the SYN and SYN-ACK are seen once each, as sent and as received.
                tcp_frame("10.0.0.5:7777", "10.0.0.5:7777", SYN, 1, 0, 0),
                tcp_frame("10.0.0.5:7777", "10.0.0.5:7777", SYN | ACK, 1, 2, 0),
                tcp_frame("10.0.0.5:7777", "10.0.0.5:7777", ACK, 2, 2, 0),
            ])),
        ),
    ]
}

fn case_bytes(name: &str) -> Vec<u8> {
    cases()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .1
}

/// Builds the corpus file `name` (checking it against `tests/hostile/`) and runs `conns`.
fn run_case(name: &str) -> Run {
    conns(&corpus_file(name, &case_bytes(name)))
}

/// Exit 0, no error line, `tracked` TCP packets of `read`, and the good connection intact.
fn assert_read_whole(run: &Run, name: &str, read: u64, tracked: u64) -> Vec<Value> {
    assert_eq!(run.code, 0, "{name}: {}", run.stderr);
    assert!(
        error_lines(&run.stderr).is_empty(),
        "{name}: unexpected error: {}",
        run.stderr
    );
    assert_eq!(counter(&run.stderr, "packets read"), read, "{name}");
    assert_eq!(
        counter(&run.stderr, "tcp packets tracked"),
        tracked,
        "{name}"
    );
    assert_good_kept(run, name)
}

/// The row of the connection whose client is `client`.
fn row_of<'a>(rows: &'a [Value], client: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["client"] == client)
        .unwrap_or_else(|| panic!("no connection from {client}: {rows:?}"))
}

// ---------------------------------------------------------------------------------------------
// The container

#[test]
fn pcapng_unknown_block_types_are_counted_and_skipped() {
    let name = "pcapng_unknown_blocks.pcapng";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 8, 8);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        counter(&run.stderr, "pcapng blocks without packets skipped"),
        2
    );
}

/// A corrupt pcapng block stops reading with one error line naming the file, the block's
/// byte offset (the 5th block: SHB 28 + IDB 20 + 4 EPBs of 12+20+56 (data padded) bytes)
/// and the packets before it; those are still reported.
fn assert_corrupt_block(name: &str, why: &str) {
    let run = run_case(name);
    assert_eq!(run.code, 1, "{name}: {}", run.stderr);
    let errors = error_lines(&run.stderr);
    assert_eq!(errors.len(), 1, "{name}: {}", run.stderr);
    let line = errors[0];
    assert!(line.contains(name), "{line}");
    assert!(
        line.contains("at byte offset 408 (after packet 4)"),
        "{name}: {line}"
    );
    assert!(line.contains(why), "{name}: {line}");
    assert!(line.contains("the packets before it were used"), "{line}");
    assert_eq!(counter(&run.stderr, "tcp packets tracked"), 4, "{name}");
    // The connection as far as it got: handshake done, data sent, nobody closed.
    let rows = json_lines(&run.stdout);
    assert_eq!(rows.len(), 1, "{name}");
    let row = row_of(&rows, CLIENT);
    assert_eq!(row["handshake"], "completed");
    assert_eq!(row["client_state"], "ESTABLISHED");
    assert_eq!(row["server_state"], "ESTABLISHED");
    assert_eq!(row["client_bytes"], 10);
}

#[test]
fn pcapng_block_lengths_that_disagree() {
    assert_corrupt_block("pcapng_trailing_length_differs.pcapng", "corrupt record");
}

#[test]
fn pcapng_block_length_too_small_for_its_contents() {
    assert_corrupt_block("pcapng_block_length_too_small.pcapng", "corrupt record");
}

#[test]
fn pcapng_captured_length_beyond_the_block() {
    // pcap-parser alone asks for more data here; tcpstate used to read on and then blame the
    // end of the file ("file ends in the middle of a record").
    assert_corrupt_block(
        "pcapng_caplen_beyond_block.pcapng",
        "corrupt record at byte offset 408 (after packet 4): a length inside the block",
    );
}

#[test]
fn pcapng_block_length_below_12() {
    // pcap-parser 0.17 computed 10 - 12 here: a panic in a debug build (found by the fuzzer).
    assert_corrupt_block(
        "pcapng_block_length_below_12.pcapng",
        "corrupt record at byte offset 408 (after packet 4): block length 10 is below the 12-byte minimum",
    );
}

#[test]
fn fuzz_found_process_information_block_length_10() {
    // The fuzzer's own input: a big-endian section whose second block is that PIB.
    let path = hostile_dir().join("fuzz/pcapng_process_info_block_length_10.pcapng");
    let run = conns(path.to_str().expect("utf-8 path"));
    assert_eq!(run.code, 1, "{}", run.stderr);
    let errors = error_lines(&run.stderr);
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(
            "corrupt record at byte offset 28 (after packet 0): block length 10 is below the 12-byte minimum"
        ),
        "{}",
        errors[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Time

/// A packet years in the future: the clock jumps there and the packets after it, back at
/// their real times, are counted as going backwards and run at the jumped clock. To the
/// clock the good connection has then been silent for years: its record ends at its idle
/// timeout, ESTABLISHED with its handshake, marked expired, and its remaining packets (the
/// close) form a connection picked up mid-stream that ends in `client_state`. No packet is
/// lost: the two records together hold all of the good connection's packets and bytes.
fn assert_time_jump(name: &str, client_state: &str) {
    let run = run_case(name);
    assert_eq!(run.code, 0, "{name}: {}", run.stderr);
    assert!(error_lines(&run.stderr).is_empty(), "{}", run.stderr);
    assert_eq!(counter(&run.stderr, "tcp packets tracked"), 9);
    assert_eq!(
        counter(&run.stderr, "timestamp earlier than the packet before"),
        4,
        "{name}"
    );
    assert_eq!(
        counter(
            &run.stderr,
            "connections no longer tracked after an idle timeout"
        ),
        1,
        "{name}"
    );
    let rows = json_lines(&run.stdout);
    let good: Vec<&Value> = rows.iter().filter(|r| r["client"] == CLIENT).collect();
    assert_eq!(good.len(), 2, "{name}: {rows:?}");
    let want = baseline();
    let (before, after) = (good[0], good[1]);
    assert_eq!(before["expired"], true, "{name}");
    assert_eq!(before["client_state"], "ESTABLISHED", "{name}");
    assert_eq!(before["handshake"], want["handshake"], "{name}");
    assert_eq!(after["partial"], true, "{name}");
    assert_eq!(after["client_state"], client_state, "{name}");
    assert_eq!(after["server_state"], want["server_state"], "{name}");
    assert_eq!(after["first_closer"], want["first_closer"], "{name}");
    for key in ["client_packets", "server_packets", "client_bytes"] {
        let sum = before[key].as_u64().unwrap_or(0) + after[key].as_u64().unwrap_or(0);
        assert_eq!(Some(sum), want[key].as_u64(), "{name}: {key}");
    }
}

#[test]
fn timestamp_jumping_to_2106() {
    assert_time_jump("timestamps_jump_years.pcap", "TIME_WAIT");
}

/// `states --interval` over a clock step of 80 years: a line a second would be 2.5 billion
/// lines; past a million quiet intervals only the lines where the counts change are written,
/// and the rest are counted in a warning.
#[test]
fn interval_lines_over_a_jump_of_years() {
    for name in ["timestamps_jump_years.pcap", "timestamp_beyond_2262.pcapng"] {
        let path = hostile_dir().join(name);
        let run = tcpstate_within(
            &["states", "--interval", "1s", "-r", path.to_str().unwrap()],
            LIMIT,
        );
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let lines = run.stdout.lines().count();
        assert!(
            (2..100).contains(&lines),
            "{name}: {lines} lines\n{}",
            run.stdout
        );
        assert!(
            run.stderr.contains("interval lines not written"),
            "{name}: {}",
            run.stderr
        );
        // The lines before the jump are still written.
        assert!(
            run.stdout.starts_with("2026-01-01T00:00:01"),
            "{name}: {}",
            run.stdout
        );
    }
}

#[test]
fn timestamp_beyond_what_nanoseconds_hold() {
    // 2^63 microseconds: the nanosecond clock saturates at its maximum, where no timer can
    // run any further, so the TIME_WAIT that starts there counts as over at once (CLOSED).
    // Not a true state, but no overflow and nothing lost.
    assert_time_jump("timestamp_beyond_2262.pcapng", "CLOSED");
}

// ---------------------------------------------------------------------------------------------
// TCP flags

#[test]
fn every_tcp_flag_set() {
    // SYN+ACK without a SYN before it: a connection picked up at the SYN-ACK (the receiver is
    // taken as the client); the RST in it is outside any window, counted and ignored.
    let name = "tcp_all_flags.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 9);
    assert_eq!(counter(&run.stderr, "connections picked up mid-stream"), 1);
    assert_eq!(counter(&run.stderr, "RSTs out of window (ignored)"), 1);
    let odd = row_of(&rows, SERVER);
    assert_eq!(odd["server"], "10.0.0.3:6");
    assert_eq!(odd["partial"], true);
    assert_eq!(odd["reset_by"], Value::Null);
}

#[test]
fn syn_with_fin() {
    // The SYN opens; the FIN in the same segment has no rule in SYN_SENT and is counted.
    let name = "tcp_syn_fin.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 9);
    assert_eq!(
        counter(&run.stderr, "segments the state machine had no rule for"),
        2
    );
    let odd = row_of(&rows, "10.0.0.3:7");
    assert_eq!(odd["client_state"], "SYN_SENT");
    assert_eq!(odd["handshake"], "unanswered");
}

#[test]
fn syn_with_rst() {
    // The RST wins: the sender is CLOSED, reset by the client; nothing else is counted.
    let name = "tcp_syn_rst.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 9);
    let odd = row_of(&rows, "10.0.0.3:8");
    assert_eq!(odd["client_state"], "CLOSED");
    assert_eq!(odd["reset_by"], "client");
}

// ---------------------------------------------------------------------------------------------
// Headers

/// One undecodable packet, counted under `reason`; the rest is read as if it were absent.
fn assert_undecodable(name: &str, reason: &str) {
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 8);
    assert_eq!(rows.len(), 1, "{name}");
    assert_eq!(
        counter(&run.stderr, &format!("undecodable: {reason}")),
        1,
        "{name}: {}",
        run.stderr
    );
}

#[test]
fn tcp_data_offset_below_5() {
    assert_undecodable("tcp_data_offset_4.pcap", "bad_tcp_data_offset");
}

#[test]
fn tcp_data_offset_beyond_the_ip_payload() {
    assert_undecodable(
        "tcp_data_offset_beyond_ip.pcap",
        "tcp_header_beyond_ip_length",
    );
}

#[test]
fn ipv4_header_length_below_20() {
    assert_undecodable("ipv4_ihl_4.pcap", "bad_ipv4_header_length");
}

#[test]
fn ipv4_total_length_below_the_header() {
    // Read like a total length of 0 (what segmentation offload leaves): the captured bytes
    // give the lengths, and the segment is tracked, with a counted warning.
    let name = "ipv4_total_length_below_header.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 9);
    assert_eq!(row_of(&rows, "10.0.0.3:12")["client_bytes"], 0);
    assert_eq!(
        counter(
            &run.stderr,
            "tracked, but IPv4 total length below the header length (capture length used)"
        ),
        1
    );
}

#[test]
fn ipv4_total_length_beyond_the_frame() {
    // Read as a frame cut by the snap length would be: the IP header gives the payload length
    // (1500 - 40 = 1460 bytes, of which none were captured), and the segment is tracked.
    let name = "ipv4_total_length_beyond_frame.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 9);
    assert_eq!(row_of(&rows, "10.0.0.3:13")["client_state"], "SYN_SENT");
    // The record says the frame was not cut (its captured length is its length on the wire),
    // so the disagreement is counted.
    assert_eq!(
        counter(
            &run.stderr,
            "tracked, but IP length beyond an uncut frame (length field used)"
        ),
        1
    );
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let name = "ipv6_two_extension_headers.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 9);
    assert_eq!(row_of(&rows, "[fd00::1]:14")["client_state"], "SYN_SENT");
}

#[test]
fn ipv6_long_extension_header_chain() {
    // 300 destination-options headers (2400 bytes): walked to the TCP header in linear
    // time, nothing loops (the chain can only go forward through the frame).
    let name = "ipv6_long_extension_chain.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 9, 9);
    assert_eq!(row_of(&rows, "[fd00::1]:15")["client_state"], "SYN_SENT");
}

#[test]
fn ipv6_hop_by_hop_after_another_extension_header() {
    assert_undecodable(
        "ipv6_hop_by_hop_not_first.pcap",
        "bad_ipv6_extension_headers",
    );
}

// ---------------------------------------------------------------------------------------------
// Addresses

#[test]
fn zero_ports() {
    let name = "zero_ports.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 11, 11);
    let odd = row_of(&rows, "10.0.0.4:0");
    assert_eq!(odd["server"], "10.0.0.2:0");
    assert_eq!(odd["handshake"], "completed");
    assert_eq!(odd["client_state"], "ESTABLISHED");
    assert_eq!(odd["server_state"], "ESTABLISHED");
}

#[test]
fn same_address_and_port_on_both_ends() {
    // A socket connected to itself: one socket, which sends each segment and receives it at
    // once. Linux shows it ESTABLISHED after its SYN and SYN-ACK (see pcaps/self_connect for
    // the real thing); `states` lists it once.
    let name = "same_address_both_ends.pcap";
    let run = run_case(name);
    let rows = assert_read_whole(&run, name, 11, 11);
    let odd = row_of(&rows, "10.0.0.5:7777");
    assert_eq!(odd["server"], "10.0.0.5:7777");
    assert_eq!(odd["client_packets"], 3);
    assert_eq!(odd["server_packets"], 0);
    assert_eq!(odd["client_state"], "ESTABLISHED");
    assert_eq!(odd["server_state"], "ESTABLISHED");
    assert_eq!(odd["handshake"], "completed");
    let path = corpus_file(name, &case_bytes(name));
    let states = tcpstate(&["states", "--format", "json", "-q", "-r", &path]);
    let socket_rows: Vec<Value> = json_lines(&states.stdout)
        .into_iter()
        .filter(|r| r["local"] == "10.0.0.5:7777")
        .collect();
    assert_eq!(socket_rows.len(), 1, "{socket_rows:?}");
    assert_eq!(socket_rows[0]["remote"], "10.0.0.5:7777");
    assert_eq!(socket_rows[0]["state"], "ESTABLISHED");
}

// ---------------------------------------------------------------------------------------------
// Every file, every subcommand: no panic, no hang, the same exit status

#[test]
fn every_subcommand_on_every_hostile_file() {
    let mut files: Vec<(String, i32)> = Vec::new();
    for (name, bytes) in cases() {
        let path = corpus_file(name, &bytes);
        let code = conns(&path).code;
        files.push((path, code));
    }
    for path in fuzz_regressions() {
        files.push((path, -2));
    }
    for (path, code) in &files {
        for args in [
            &["states", "--all"][..],
            &["states", "--interval", "1s"],
            &["diagnose", "--stuck-after", "0"],
            &["summary"],
            &["events"],
            &["explain", "1"],
            &["explain", "2", "--full"],
            &["conns", "--format", "csv"],
        ] {
            let mut all = args.to_vec();
            all.extend(["-r", path.as_str()]);
            let run = tcpstate_within(&all, LIMIT);
            // explain: 3 when there is no such connection.
            let allowed: &[i32] = match *code {
                -2 => &[0, 1, 3],
                c if args[0] == "explain" => &[c, 3],
                _ => std::slice::from_ref(code),
            };
            assert!(
                allowed.contains(&run.code),
                "{all:?}: status {} (conns gave {code})\n{}",
                run.code,
                run.stderr
            );
        }
    }
}

/// Inputs the fuzzers found a bug with (see fuzz/README.md): `tests/hostile/fuzz/*`.
fn fuzz_regressions() -> Vec<String> {
    let dir = hostile_dir().join("fuzz");
    let mut out: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("dir entry").path().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn fuzz_regressions_end_cleanly() {
    for path in fuzz_regressions() {
        let run = conns(&path);
        assert!(
            run.code == 0 || run.code == 1,
            "{path}: status {}\n{}",
            run.code,
            run.stderr
        );
    }
}

#[test]
fn corpus_has_no_stray_files() {
    let built: Vec<&str> = cases().iter().map(|(n, _)| *n).collect();
    for entry in std::fs::read_dir(hostile_dir()).expect("tests/hostile") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(
                built.contains(&name) || name.ends_with(".md"),
                "tests/hostile/{name} is not built by tests/hostile_input.rs"
            );
        }
    }
}
