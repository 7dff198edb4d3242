//! tcpstate's handshake time against tshark's `tcp.analysis.initial_rtt`, on the same
//! connections, for every capture in `pcaps/`.
//!
//! What tshark computes (epan/dissectors/packet-tcp.c, `ts_mru_syn` / `ts_first_rtt`): each
//! pure SYN (SYN without ACK) stores its time as the conversation's *most recent* SYN. The first
//! later segment with ACK set and SYN clear, from either side and whatever else it carries
//! (data, FIN, RST), sets `initial_rtt` to its own time minus that SYN's time, once per tshark
//! stream. A reused 4-tuple starts a new tshark stream.
//!
//! What tcpstate computes: `handshake_time` runs from the client's *first* SYN to the segment
//! after which both ends are ESTABLISHED, and is null unless the handshake completed.
//!
//! For an ordinary handshake the two are the same number. Where they differ, tshark's value
//! falls in one of these categories. The test recognises each one from the packets and
//! checks it exactly:
//!
//! - `Same`: the handshake completed, and the last SYN before tshark's ACK is the first SYN.
//!   tcpstate's `handshake_time` must equal `initial_rtt`.
//! - `SynRetransmitted`: the handshake completed after the client retransmitted its SYN.
//!   tshark measures from the last SYN; tcpstate measures from the first. tcpstate's value must
//!   be `initial_rtt + (last SYN - first SYN)`, and `syn_retransmits` must count the extra
//!   SYNs.
//! - `SimultaneousOpen`: both ends sent a SYN, and each answered the other's with a SYN-ACK
//!   from SYN-RECEIVED. An end in SYN-RECEIVED becomes ESTABLISHED on the ACK of its SYN, which
//!   the other end's SYN-ACK carries (RFC 793 section 3.4 figure 8; Linux
//!   `tcp_rcv_state_process`, case `TCP_SYN_RECV`). The handshake is therefore complete at the
//!   second SYN-ACK. tshark waits for the first segment without SYN, which is a pure ACK after
//!   that SYN-ACK, and measures from the last SYN of either end. tcpstate's value must be
//!   `second SYN-ACK - first SYN`. The client's extra SYNs must also be counted in
//!   `syn_retransmits`.
//! - `Refused`: the server answered the SYN with RST,ACK. tshark takes that as the "ACK"; there
//!   was no handshake, so tcpstate says `refused` with no handshake time. tcpstate's
//!   `reset_time` must be that RST's time and `reset_by` must be the server. Together with
//!   `start` = the first SYN, this gives tshark's number.
//! - `AckDisproven`: the client's handshake ACK is in the capture, but the server then
//!   retransmitted its SYN-ACK, which shows the ACK never arrived. tshark still takes the ACK.
//!   tcpstate says `not_completed` with no handshake time, and `synack_retransmits` ≥ 1. The
//!   kernel agrees: `synack_exhausted.truth.json` says `not_completed`.
//!
//! Every check also requires that:
//! - tshark's value is exactly what that rule gives on the packets, so the test's model of
//!   tshark is right;
//! - the matched tcpstate connection starts at the stream's first SYN;
//! - every tshark stream with an `initial_rtt` has exactly one tcpstate counterpart, and every
//!   connection tcpstate says `completed` or `refused` has a tshark counterpart;
//! - per the truth file, every kernel-`completed` connection is compared in one of the first
//!   three categories, every `refused` one is `Refused`, and every `unanswered` one has no
//!   tshark value.
//!
//! Tolerance: tcpstate rounds durations to the nearest microsecond. tshark prints nanoseconds,
//! and the test parses its times as integer nanoseconds. Both read times from the same capture
//! records. These captures have microsecond timestamps, so the values must be exactly equal. A
//! nanosecond capture could differ by tcpstate's rounding, which is at most 0.5 µs. That
//! half-microsecond is the only slack allowed.

mod common;

use common::pcaps_dir;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const SYN: u16 = 0x02;
const RST: u16 = 0x04;
const ACK: u16 = 0x10;

/// tcpstate rounds to the microsecond: at most half of one apart, in nanoseconds.
const ROUNDING_NS: i64 = 500;

/// Decimal seconds as printed by tshark ("1795267010.617062000", "0.000058000") in nanoseconds.
fn parse_ns(s: &str) -> i64 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(
        frac.len() <= 9 && frac.bytes().all(|b| b.is_ascii_digit()),
        "unexpected time format from tshark: {s:?}"
    );
    let int: i64 = int
        .parse()
        .unwrap_or_else(|_| panic!("unexpected time format from tshark: {s:?}"));
    let frac: i64 = format!("{frac:0<9}").parse().unwrap();
    int * 1_000_000_000 + frac
}

/// Seconds as tcpstate prints them (a JSON float with microsecond precision) in nanoseconds,
/// to the microsecond.
fn secs_ns(v: &Value) -> Option<i64> {
    v.as_f64().map(|s| (s * 1e6).round() as i64 * 1000)
}

fn fmt_ns(ns: i64) -> String {
    format!(
        "{}.{:09}",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    )
}

#[derive(Debug)]
struct Pkt {
    frame: u64,
    src: SocketAddr,
    dst: SocketAddr,
    flags: u16,
    ns: i64,
    initial_rtt: Option<i64>,
}

impl Pkt {
    fn pure_syn(&self) -> bool {
        self.flags & (SYN | ACK) == SYN
    }
    fn synack(&self) -> bool {
        self.flags & (SYN | ACK) == SYN | ACK
    }
    /// What tshark takes as the end of its initial RTT: ACK set, SYN clear.
    fn ack_no_syn(&self) -> bool {
        self.flags & (SYN | ACK) == ACK
    }
    fn describe(&self) -> String {
        format!(
            "frame {} {} {} -> {} flags {:#05x}",
            self.frame,
            fmt_ns(self.ns),
            self.src,
            self.dst,
            self.flags
        )
    }
}

/// tshark's TCP packets, grouped by `tcp.stream`.
fn tshark_streams(pcap: &str) -> BTreeMap<u64, Vec<Pkt>> {
    let fields = [
        "frame.number",
        "tcp.stream",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "tcp.flags",
        "frame.time_epoch",
        "tcp.analysis.initial_rtt",
    ];
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r", pcap, "-o", "tcp.analyze_sequence_numbers:TRUE"])
        .args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "tshark is not installed (not found on PATH). This test compares tcpstate with \
             tshark; install it with `.ci/install-deps` (CI runs it before `cargo test`)."
        ),
        Err(e) => panic!("could not run tshark: {e}"),
    };
    assert!(
        out.status.success(),
        "tshark failed on {pcap}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut streams: BTreeMap<u64, Vec<Pkt>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout)
        .expect("tshark output")
        .lines()
    {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), fields.len(), "tshark line: {line:?}");
        if f[1].is_empty() {
            continue; // not TCP
        }
        let ip = |v4: &str, v6: &str| -> IpAddr {
            let s = if v4.is_empty() { v6 } else { v4 };
            s.parse()
                .unwrap_or_else(|_| panic!("address {s:?} in tshark line {line:?}"))
        };
        let port = |s: &str| -> u16 { s.parse().expect("port") };
        let pkt = Pkt {
            frame: f[0].parse().expect("frame number"),
            src: SocketAddr::new(ip(f[2], f[3]), port(f[4])),
            dst: SocketAddr::new(ip(f[5], f[6]), port(f[7])),
            flags: u16::from_str_radix(f[8].trim_start_matches("0x"), 16).expect("tcp.flags"),
            ns: parse_ns(f[9]),
            initial_rtt: (!f[10].is_empty()).then(|| parse_ns(f[10])),
        };
        streams
            .entry(f[1].parse().expect("tcp.stream"))
            .or_default()
            .push(pkt);
    }
    streams
}

#[derive(Debug)]
struct Conn {
    id: u64,
    client: SocketAddr,
    server: SocketAddr,
    start: i64,
    end: i64,
    handshake: String,
    handshake_time: Option<i64>,
    syn_retransmits: u64,
    synack_retransmits: u64,
    reset_by: Option<String>,
    reset_time: Option<i64>,
}

fn tcpstate_conns(pcap: &str) -> Vec<Conn> {
    let out = Command::new(env!("CARGO_BIN_EXE_tcpstate"))
        .args(["conns", "--format", "json", "-q", "-r", pcap])
        .output()
        .expect("run tcpstate");
    assert!(
        out.status.success(),
        "tcpstate conns failed on {pcap}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = |v: &Value| -> SocketAddr { v.as_str().unwrap().parse().expect("ss-style address") };
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            Conn {
                id: v["id"].as_u64().unwrap(),
                client: addr(&v["client"]),
                server: addr(&v["server"]),
                start: secs_ns(&v["start"]).unwrap(),
                end: secs_ns(&v["end"]).unwrap(),
                handshake: v["handshake"].as_str().unwrap().to_string(),
                handshake_time: secs_ns(&v["handshake_time"]),
                syn_retransmits: v["syn_retransmits"].as_u64().unwrap(),
                synack_retransmits: v["synack_retransmits"].as_u64().unwrap(),
                reset_by: v["reset_by"].as_str().map(str::to_string),
                reset_time: secs_ns(&v["reset_time"]),
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Category {
    Same,
    SynRetransmitted,
    SimultaneousOpen,
    Refused,
    AckDisproven,
}

impl Category {
    fn completed(self) -> bool {
        matches!(
            self,
            Category::Same | Category::SynRetransmitted | Category::SimultaneousOpen
        )
    }
}

fn close(a: i64, b: i64) -> bool {
    (a - b).abs() <= ROUNDING_NS
}

/// Compares one tshark stream that has an `initial_rtt` with its tcpstate connection.
/// Returns the connection's index and its category, or pushes problems.
fn check_stream(
    stream: u64,
    pkts: &[Pkt],
    conns: &[Conn],
    problems: &mut Vec<String>,
    max_diff: &mut i64,
) -> Option<(usize, Category)> {
    let mut fail = |msg: String| problems.push(format!("tshark stream {stream}: {msg}"));

    // tshark's value, the same on every packet that shows it.
    let values: HashSet<i64> = pkts.iter().filter_map(|p| p.initial_rtt).collect();
    let value = *values.iter().next().unwrap();
    if values.len() != 1 {
        fail(format!("several initial_rtt values: {values:?}"));
        return None;
    }

    // tshark's rule, replayed on the packets.
    let Some(first_syn) = pkts.iter().position(Pkt::pure_syn) else {
        fail("initial_rtt without a SYN".into());
        return None;
    };
    let Some(trigger) = (first_syn..pkts.len()).find(|&i| pkts[i].ack_no_syn()) else {
        fail("initial_rtt without an ACK after the SYN".into());
        return None;
    };
    let mru_syn = (0..trigger).rev().find(|&i| pkts[i].pure_syn()).unwrap();
    let (syn, last_syn, t) = (&pkts[first_syn], &pkts[mru_syn], &pkts[trigger]);
    if value != t.ns - last_syn.ns {
        fail(format!(
            "tshark's initial_rtt {} is not (first non-SYN ACK) - (most recent SYN) = {} ({} ; {}): \
             the test's model of tshark is wrong",
            fmt_ns(value),
            fmt_ns(t.ns - last_syn.ns),
            t.describe(),
            last_syn.describe()
        ));
        return None;
    }
    if let Some(early) = pkts[..trigger].iter().find(|p| p.initial_rtt.is_some()) {
        fail(format!(
            "initial_rtt shown before its ACK, on {}",
            early.describe()
        ));
        return None;
    }
    let (client, server) = (syn.src, syn.dst);

    // The tcpstate connection: same client and server, the latest to start at or before the
    // first SYN (a reused 4-tuple has one connection per use), still going at that SYN.
    let Some(ci) = (0..conns.len())
        .filter(|&i| {
            let c = &conns[i];
            c.client == client && c.server == server && c.start <= syn.ns + ROUNDING_NS
        })
        .max_by_key(|&i| (conns[i].start, conns[i].id))
    else {
        fail(format!(
            "no tcpstate connection {client} -> {server} started by {} (tshark initial_rtt {})",
            syn.describe(),
            fmt_ns(value)
        ));
        return None;
    };
    let c = &conns[ci];
    let mut fail = |msg: String| {
        problems.push(format!(
            "tshark stream {stream} / tcpstate connection {} ({} -> {}): {msg}",
            c.id, c.client, c.server
        ))
    };
    if !close(c.start, syn.ns) || c.end + ROUNDING_NS < syn.ns {
        fail(format!(
            "tcpstate's connection runs {}..{}, but tshark's stream starts with the SYN {}",
            fmt_ns(c.start),
            fmt_ns(c.end),
            syn.describe()
        ));
        return None;
    }

    if c.handshake == "completed" {
        let client_syns = pkts
            .iter()
            .filter(|p| p.pure_syn() && p.src == client)
            .count() as u64;
        if c.syn_retransmits != client_syns - 1 {
            fail(format!(
                "syn_retransmits {} but the client sent {client_syns} SYNs",
                c.syn_retransmits
            ));
        }
    }
    let from_server_syn = pkts[..trigger]
        .iter()
        .any(|p| p.pure_syn() && p.src == server);
    let (category, expected) = match c.handshake.as_str() {
        "completed" if from_server_syn => {
            // Simultaneous open: complete at the first SYN-ACK of the end that sent one last.
            let first_synack = |from: SocketAddr| {
                pkts[..trigger]
                    .iter()
                    .find(|p| p.synack() && p.src == from)
                    .map(|p| p.ns)
            };
            match (first_synack(client), first_synack(server)) {
                (Some(a), Some(b)) => (Category::SimultaneousOpen, a.max(b) - syn.ns),
                _ => {
                    fail(format!(
                        "both ends sent a SYN but not both a SYN-ACK before {}",
                        t.describe()
                    ));
                    return None;
                }
            }
        }
        "completed" => {
            let category = if mru_syn == first_syn {
                Category::Same
            } else {
                Category::SynRetransmitted
            };
            (category, t.ns - syn.ns)
        }
        "refused" => {
            if t.flags & RST == 0 || t.src != server {
                fail(format!(
                    "refused, but tshark's ACK is not a RST from the server: {}",
                    t.describe()
                ));
            }
            if c.reset_by.as_deref() != Some("server")
                || c.reset_time.is_none_or(|r| !close(r, t.ns))
            {
                fail(format!(
                    "refused: reset_by {:?} at {:?}, but the RST is {}",
                    c.reset_by,
                    c.reset_time.map(fmt_ns),
                    t.describe()
                ));
            }
            if c.handshake_time.is_some() {
                fail("refused, yet a handshake_time".into());
            }
            return Some((ci, Category::Refused));
        }
        "not_completed" => {
            // The ACK answered a SYN-ACK, and the server sent that SYN-ACK again afterwards.
            let synack_from_server = |p: &Pkt| p.synack() && p.src == server;
            let answered = pkts[..trigger].iter().any(synack_from_server);
            let resent = pkts[trigger..].iter().any(synack_from_server);
            match (answered, resent) {
                (true, true) if t.src == client && c.synack_retransmits >= 1 => {}
                _ => fail(format!(
                    "tshark has initial_rtt {} (ACK {}) but tcpstate says the handshake did not \
                     complete, and no later SYN-ACK from the server disproves that ACK \
                     (synack_retransmits {})",
                    fmt_ns(value),
                    t.describe(),
                    c.synack_retransmits
                )),
            }
            if c.handshake_time.is_some() {
                fail("not_completed, yet a handshake_time".into());
            }
            return Some((ci, Category::AckDisproven));
        }
        other => {
            fail(format!(
                "tshark has initial_rtt {} (SYN {}, ACK {}) but tcpstate's handshake is {other}",
                fmt_ns(value),
                syn.describe(),
                t.describe()
            ));
            return None;
        }
    };
    match c.handshake_time {
        Some(ht) => {
            *max_diff = (*max_diff).max((ht - expected).abs());
            if !close(ht, expected) {
                fail(format!(
                    "{category:?}: tcpstate handshake_time {} but the packets give {} \
                     (tshark initial_rtt {}; first SYN {}; last SYN {}; tshark's ACK {})",
                    fmt_ns(ht),
                    fmt_ns(expected),
                    fmt_ns(value),
                    syn.describe(),
                    last_syn.describe(),
                    t.describe()
                ));
            }
        }
        None => fail(format!(
            "completed but no handshake_time (tshark initial_rtt {})",
            fmt_ns(value)
        )),
    }
    Some((ci, category))
}

/// The outcome of comparing one capture: which tcpstate connection each tshark stream with
/// an `initial_rtt` matched, in which category, and every disagreement.
struct Comparison {
    /// tcpstate connection index -> (tshark stream, category).
    matched: HashMap<usize, (u64, Category)>,
    problems: Vec<String>,
    /// Largest |tcpstate - expected| over the compared handshake times, in nanoseconds.
    max_diff: i64,
}

impl Comparison {
    fn counts(&self) -> BTreeMap<Category, usize> {
        let mut counts = BTreeMap::new();
        for (_, cat) in self.matched.values() {
            *counts.entry(*cat).or_default() += 1;
        }
        counts
    }
    /// Handshake times compared number to number (the completed categories).
    fn compared(&self) -> usize {
        self.matched.values().filter(|m| m.1.completed()).count()
    }
}

fn compare(streams: &BTreeMap<u64, Vec<Pkt>>, conns: &[Conn]) -> Comparison {
    let mut problems: Vec<String> = Vec::new();
    let mut max_diff = 0;

    // tshark -> tcpstate.
    let mut matched: HashMap<usize, (u64, Category)> = HashMap::new();
    for (&stream, pkts) in streams {
        if pkts.iter().all(|p| p.initial_rtt.is_none()) {
            continue;
        }
        if let Some((ci, cat)) = check_stream(stream, pkts, conns, &mut problems, &mut max_diff)
            && let Some((other, _)) = matched.insert(ci, (stream, cat))
        {
            problems.push(format!(
                "tcpstate connection {} matched by tshark streams {other} and {stream}",
                conns[ci].id
            ));
        }
    }

    // tcpstate -> tshark.
    for (ci, c) in conns.iter().enumerate() {
        if matches!(c.handshake.as_str(), "completed" | "refused") && !matched.contains_key(&ci) {
            problems.push(format!(
                "tcpstate connection {} ({} -> {}, handshake {}, handshake_time {:?}) has no \
                 tshark stream with an initial_rtt",
                c.id,
                c.client,
                c.server,
                c.handshake,
                c.handshake_time.map(fmt_ns)
            ));
        }
    }
    Comparison {
        matched,
        problems,
        max_diff,
    }
}

fn check_capture(name: &str) {
    let dir = pcaps_dir();
    let pcap = dir.join(format!("{name}.pcap"));
    let pcap = pcap.to_str().unwrap();
    let truth: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.truth.json"))).expect("truth file"),
    )
    .expect("truth json");

    let streams = tshark_streams(pcap);
    let conns = tcpstate_conns(pcap);
    let mut cmp = compare(&streams, &conns);

    // Coverage against the kernel's truth: the k-th use of a 4-tuple in the truth file is the
    // k-th tcpstate connection on it.
    let mut by_tuple: HashMap<(SocketAddr, SocketAddr), Vec<usize>> = HashMap::new();
    let mut order: Vec<usize> = (0..conns.len()).collect();
    order.sort_by_key(|&i| (conns[i].start, conns[i].id));
    for i in order {
        by_tuple
            .entry((conns[i].client, conns[i].server))
            .or_default()
            .push(i);
    }
    let mut seen: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let truth_conns = truth["connections"].as_array().expect("truth connections");
    for t in truth_conns {
        let addr = |k: &str| -> SocketAddr { t[k].as_str().unwrap().parse().unwrap() };
        let key = (addr("client"), addr("server"));
        let k = seen.entry(key).or_default();
        let Some(&ci) = by_tuple.get(&key).and_then(|v| v.get(*k)) else {
            cmp.problems.push(format!(
                "truth connection {key:?} (use {k}) not in tcpstate's output"
            ));
            continue;
        };
        *k += 1;
        let handshake = t["handshake"].as_str().unwrap();
        let cat = cmp.matched.get(&ci).map(|m| m.1);
        let ok = match handshake {
            "completed" => cat.is_some_and(Category::completed),
            "refused" => cat == Some(Category::Refused),
            "not_completed" => matches!(cat, None | Some(Category::AckDisproven)),
            "unanswered" => cat.is_none(),
            _ => false,
        };
        if !ok {
            cmp.problems.push(format!(
                "truth: {} -> {} handshake {handshake}, but the comparison with tshark put \
                 tcpstate connection {} in {cat:?}",
                key.0, key.1, conns[ci].id
            ));
        }
    }

    let (counts, compared) = (cmp.counts(), cmp.compared());
    let truth_completed = truth_conns
        .iter()
        .filter(|t| t["handshake"] == "completed")
        .count();
    eprintln!(
        "{name}: {} tshark streams with initial_rtt, {} tcpstate connections; handshake times \
         compared: {compared} (truth: {truth_completed} completed); by category {counts:?}; \
         largest difference {} ns",
        cmp.matched.len(),
        conns.len(),
        cmp.max_diff
    );
    if compared != truth_completed {
        cmp.problems.push(format!(
            "{compared} handshake times compared, the kernel completed {truth_completed}"
        ));
    }
    assert!(
        cmp.problems.is_empty(),
        "{name}: {} problems:\n  {}",
        cmp.problems.len(),
        cmp.problems.join("\n  ")
    );
}

test_each_capture!(check_capture);

/// mixed.pcap has 300 connections; all 275 completed handshakes must be compared. This is
/// checked above against the truth file; this test pins the size so the comparison cannot
/// quietly shrink with the truth file.
#[test]
fn mixed_compares_hundreds() {
    let dir = pcaps_dir();
    let pcap = dir.join("mixed.pcap");
    let streams = tshark_streams(pcap.to_str().unwrap());
    let with_rtt = streams
        .values()
        .filter(|p| p.iter().any(|p| p.initial_rtt.is_some()))
        .count();
    assert!(
        with_rtt >= 290,
        "only {with_rtt} tshark streams with initial_rtt in mixed.pcap"
    );
    let completed = tcpstate_conns(pcap.to_str().unwrap())
        .iter()
        .filter(|c| c.handshake_time.is_some())
        .count();
    assert!(
        completed >= 270,
        "only {completed} tcpstate handshake times in mixed.pcap"
    );
}

/// Writes a classic pcap (EN10MB, microsecond timestamps) of IPv4 TCP segments without payload
/// between 127.0.0.1 ports: (µs since the first packet, source port, destination port, flags,
/// seq, ack).
fn write_pcap(path: &Path, segs: &[(u64, u16, u16, u16, u32, u32)]) {
    const BASE_SECS: u64 = 1_700_000_000;
    let mut out: Vec<u8> = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // EN10MB
    for &(us, sport, dport, flags, seq, ack) in segs {
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        let sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&dport.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.extend_from_slice(&[5 << 4, flags as u8]);
        tcp.extend_from_slice(&65495u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&tcp);
        out.extend_from_slice(&((BASE_SECS + us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).unwrap();
}

/// No capture in pcaps/ has a completed handshake after a retransmitted SYN, so this built one
/// exercises `SynRetransmitted`: tshark measures 35 µs from the second SYN, and tcpstate
/// measures 1.000035 s from the first.
#[test]
fn retransmitted_syn_is_measured_from_the_first_syn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syn_retransmitted.pcap");
    write_pcap(
        &path,
        &[
            (0, 40000, 5000, SYN, 1000, 0),
            (1_000_000, 40000, 5000, SYN, 1000, 0),
            (1_000_020, 5000, 40000, SYN | ACK, 7000, 1001),
            (1_000_035, 40000, 5000, ACK, 1001, 7001),
        ],
    );
    let path = path.to_str().unwrap();
    let streams = tshark_streams(path);
    let conns = tcpstate_conns(path);
    let tshark: Vec<i64> = streams[&0].iter().filter_map(|p| p.initial_rtt).collect();
    assert_eq!(tshark, [35_000], "tshark's initial_rtt from the last SYN");
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].handshake_time, Some(1_000_035_000));
    let cmp = compare(&streams, &conns);
    assert!(cmp.problems.is_empty(), "{:?}", cmp.problems);
    assert_eq!(
        cmp.counts(),
        BTreeMap::from([(Category::SynRetransmitted, 1)])
    );
}

/// The comparison can fail: one microsecond off, a missing connection on either side, or a
/// handshake outcome outside the documented categories is reported.
#[test]
fn comparison_catches_disagreements() {
    let mixed = pcaps_dir().join("mixed.pcap");
    let mixed = mixed.to_str().unwrap();
    let streams = tshark_streams(mixed);
    let conns = tcpstate_conns(mixed);
    assert!(compare(&streams, &conns).problems.is_empty());

    // Every handshake time one microsecond long: every compared connection is reported.
    let mut off = tcpstate_conns(mixed);
    for c in &mut off {
        c.handshake_time = c.handshake_time.map(|t| t + 1000);
    }
    let cmp = compare(&streams, &off);
    assert_eq!(cmp.problems.len(), 275, "{:?}", &cmp.problems[..3]);
    assert!(cmp.problems.iter().all(|p| p.contains("handshake_time")));

    // A completed handshake tcpstate called not completed, without a SYN-ACK retransmission.
    let mut wrong = tcpstate_conns(mixed);
    let i = wrong
        .iter()
        .position(|c| c.handshake == "completed")
        .unwrap();
    wrong[i].handshake = "not_completed".into();
    wrong[i].handshake_time = None;
    let cmp = compare(&streams, &wrong);
    assert_eq!(cmp.problems.len(), 1, "{:?}", cmp.problems);

    // A refused connection called unanswered.
    let mut wrong = tcpstate_conns(mixed);
    let i = wrong.iter().position(|c| c.handshake == "refused").unwrap();
    wrong[i].handshake = "unanswered".into();
    assert_eq!(compare(&streams, &wrong).problems.len(), 1);

    // The special categories hold their connections to exact values too.
    let open = pcaps_dir().join("simultaneous_open.pcap");
    let open = open.to_str().unwrap();
    let mut off = tcpstate_conns(open);
    off[0].handshake_time = off[0].handshake_time.map(|t| t + 1000);
    let cmp = compare(&tshark_streams(open), &off);
    assert_eq!(cmp.problems.len(), 1, "{:?}", cmp.problems);
    assert!(cmp.problems[0].contains("SimultaneousOpen"));
    let exhausted = pcaps_dir().join("synack_exhausted.pcap");
    let exhausted = exhausted.to_str().unwrap();
    let mut unproven = tcpstate_conns(exhausted);
    unproven[0].synack_retransmits = 0;
    let cmp = compare(&tshark_streams(exhausted), &unproven);
    assert_eq!(cmp.problems.len(), 1, "{:?}", cmp.problems);
    let refused = pcaps_dir().join("refused.pcap");
    let refused = refused.to_str().unwrap();
    let mut late = tcpstate_conns(refused);
    late[0].reset_time = late[0].reset_time.map(|t| t + 1000);
    let cmp = compare(&tshark_streams(refused), &late);
    assert_eq!(cmp.problems.len(), 1, "{:?}", cmp.problems);

    // A reused 4-tuple: without tcpstate's second connection, tshark's second stream finds
    // only the first one, which did not start at its SYN; without tshark's second stream,
    // tcpstate's second connection has no counterpart.
    let reuse = pcaps_dir().join("tw_reuse.pcap");
    let reuse = reuse.to_str().unwrap();
    let streams = tshark_streams(reuse);
    let conns = tcpstate_conns(reuse);
    assert!(compare(&streams, &conns).problems.is_empty());
    let mut first_only = tcpstate_conns(reuse);
    first_only.pop();
    let cmp = compare(&streams, &first_only);
    assert_eq!(cmp.problems.len(), 1, "{:?}", cmp.problems);
    let mut one_stream = tshark_streams(reuse);
    one_stream.remove(&1);
    let cmp = compare(&one_stream, &conns);
    assert_eq!(cmp.problems.len(), 1, "{:?}", cmp.problems);
    assert!(cmp.problems[0].contains("no tshark stream"));
}
