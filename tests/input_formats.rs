//! Every capture container and link type tcpstate claims to read gives the same connections as
//! the original capture, and bad input ends with a clean message and exit status, never a panic.
//!
//! The originals in `pcaps/` are classic little-endian microsecond pcap on Ethernet. Each test
//! parses one with the small reader below, writes a variant (another container, byte order,
//! timestamp resolution or link layer) into a temporary directory, and compares tcpstate's
//! `conns --format json` rows for the variant with those for the original, field by field.

mod common;

use common::{Ng, Rec, Run, json_lines, pcaps_dir, tcpstate, tcpstate_with_stdin};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use proptest::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Running tcpstate

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `conns --format json -q` over the files (read as one capture); must read everything.
fn conns(files: &[&Path], extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["conns", "--format", "json", "-q"];
    for f in files {
        args.extend(["-r", path_str(f)]);
    }
    args.extend(extra);
    let run = tcpstate(&args);
    assert_eq!(run.code, 0, "tcpstate {args:?} failed: {}", run.stderr);
    json_lines(&run.stdout)
}

fn states(files: &[&Path]) -> Vec<Value> {
    let mut args = vec!["states", "--format", "json", "--all", "-q"];
    for f in files {
        args.extend(["-r", path_str(f)]);
    }
    let run = tcpstate(&args);
    assert_eq!(run.code, 0, "tcpstate {args:?} failed: {}", run.stderr);
    json_lines(&run.stdout)
}

/// Same number of rows and every field of every row equal; names the first difference.
fn assert_same_rows(expected: &[Value], got: &[Value], what: &str) {
    assert!(!expected.is_empty(), "{what}: the reference has no rows");
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        let (Some(eo), Some(go)) = (e.as_object(), g.as_object()) else {
            panic!("{what}: row {i} is not an object: {g}");
        };
        let mut keys: Vec<&String> = eo.keys().chain(go.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            assert_eq!(
                eo.get(k),
                go.get(k),
                "{what}: row {i} field `{k}` differs\nexpected {e}\n     got {g}"
            );
        }
    }
    assert_eq!(expected.len(), got.len(), "{what}: row count differs");
}

// ---------------------------------------------------------------------------------------------
// A tiny pcap model: parse the originals, write variants

const LE_MICRO: u32 = 0xa1b2_c3d4;
const NANO_MAGIC: u32 = 0xa1b2_3c4d;

fn original(name: &str) -> PathBuf {
    pcaps_dir().join(name)
}

/// Reads one of the originals in `pcaps/`.
fn read_pcap(name: &str) -> Vec<Rec> {
    let recs = common::read_pcap(&original(name));
    assert!(!recs.is_empty());
    recs
}

/// A classic pcap file. `big`: every header field big-endian; `nanos`: nanosecond magic.
fn pcap_bytes(linktype: u32, recs: &[Rec], big: bool, nanos: bool) -> Vec<u8> {
    let w = |out: &mut Vec<u8>, v: u32| {
        out.extend(if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        })
    };
    let w16 = |out: &mut Vec<u8>, v: u16| {
        out.extend(if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        })
    };
    let mut out = Vec::new();
    w(&mut out, if nanos { NANO_MAGIC } else { LE_MICRO });
    w16(&mut out, 2);
    w16(&mut out, 4);
    w(&mut out, 0); // thiszone
    w(&mut out, 0); // sigfigs
    w(&mut out, 262_144); // snaplen
    w(&mut out, linktype);
    for r in recs {
        w(&mut out, r.sec);
        w(&mut out, if nanos { r.usec * 1000 } else { r.usec });
        w(&mut out, r.data.len() as u32);
        w(&mut out, r.orig_len);
        out.extend(&r.data);
    }
    out
}

fn pcap(linktype: u32, recs: &[Rec]) -> Vec<u8> {
    pcap_bytes(linktype, recs, false, false)
}

// ---------------------------------------------------------------------------------------------
// Ethernet → other link layers

#[derive(Clone, Copy, Debug)]
enum Link {
    Sll,
    Sll2,
    Raw,
    Ipv4Or6,
    NullLe,
    NullBe,
    Loop,
    Vlan,
    QinQ,
    Mpls,
    Pppoe,
    Fddi,
}

impl Link {
    const ALL: [Link; 12] = [
        Link::Sll,
        Link::Sll2,
        Link::Raw,
        Link::Ipv4Or6,
        Link::NullLe,
        Link::NullBe,
        Link::Loop,
        Link::Vlan,
        Link::QinQ,
        Link::Mpls,
        Link::Pppoe,
        Link::Fddi,
    ];
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// The link type number for a file that holds frames converted with `link` (`v6`: IPv6 file).
fn linktype_of(link: Link, v6: bool) -> u32 {
    match link {
        Link::Sll => 113,
        Link::Sll2 => 276,
        Link::Raw => 101,
        Link::Ipv4Or6 if v6 => 229,
        Link::Ipv4Or6 => 228,
        Link::NullLe | Link::NullBe => 0,
        Link::Loop => 108,
        Link::Vlan | Link::QinQ | Link::Mpls | Link::Pppoe => 1,
        Link::Fddi => 10,
    }
}

/// The same packet under another link layer. `orig_len` grows or shrinks with the header.
fn convert(link: Link, frame: &[u8]) -> Vec<u8> {
    let et = ethertype(frame);
    assert!(
        et == 0x0800 || et == 0x86dd,
        "originals hold only IP over plain Ethernet"
    );
    let v6 = et == 0x86dd;
    let (macs, ip) = (&frame[..12], &frame[14..]);
    let mut out = Vec::new();
    match link {
        Link::Sll => {
            out.extend(0u16.to_be_bytes()); // packet type: to us
            out.extend(772u16.to_be_bytes()); // ARPHRD_LOOPBACK
            out.extend(6u16.to_be_bytes());
            out.extend(&frame[6..12]);
            out.extend([0, 0]);
            out.extend(et.to_be_bytes());
        }
        Link::Sll2 => {
            out.extend(et.to_be_bytes());
            out.extend([0, 0]);
            out.extend(1u32.to_be_bytes()); // interface index
            out.extend(772u16.to_be_bytes());
            out.push(0); // packet type
            out.push(6);
            out.extend(&frame[6..12]);
            out.extend([0, 0]);
        }
        Link::Raw | Link::Ipv4Or6 => {}
        // AF_INET 2; AF_INET6 30 (macOS) in the writer's order, 24 (OpenBSD) for LOOP.
        Link::NullLe => out.extend(if v6 { 30u32 } else { 2 }.to_le_bytes()),
        Link::NullBe => out.extend(if v6 { 28u32 } else { 2 }.to_be_bytes()),
        Link::Loop => out.extend(if v6 { 24u32 } else { 2 }.to_be_bytes()),
        Link::Vlan => {
            out.extend(macs);
            out.extend([0x81, 0x00, 0x00, 0x07]);
            out.extend(et.to_be_bytes());
        }
        Link::QinQ => {
            out.extend(macs);
            out.extend([0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x07]);
            out.extend(et.to_be_bytes());
        }
        Link::Mpls => {
            out.extend(macs);
            out.extend([0x88, 0x47]);
            out.extend([0x00, 0x01, 0x00, 0x40]); // label 16, not bottom of stack
            out.extend([0x00, 0x02, 0x01, 0x40]); // label 32, bottom of stack
        }
        Link::Pppoe => {
            out.extend(macs);
            out.extend([0x88, 0x64]);
            out.extend([0x11, 0x00, 0x12, 0x34]); // version/type, code, session id
            out.extend((ip.len() as u16 + 2).to_be_bytes());
            out.extend(if v6 { [0x00, 0x57] } else { [0x00, 0x21] });
        }
        Link::Fddi => {
            out.push(0x50); // frame control: async LLC
            out.extend(macs);
            out.extend([0xaa, 0xaa, 0x03, 0x00, 0x00, 0x00]); // LLC SNAP
            out.extend(et.to_be_bytes());
        }
    }
    out.extend(ip);
    out
}

fn convert_recs(link: Link, recs: &[Rec]) -> Vec<Rec> {
    recs.iter()
        .map(|r| {
            let data = convert(link, &r.data);
            let orig_len = (r.orig_len as i64 + data.len() as i64 - r.data.len() as i64) as u32;
            Rec {
                data,
                orig_len,
                ..r.clone()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures

const ORIGINALS: [&str; 3] = ["close_client_first.pcap", "mixed.pcap", "ipv6.pcap"];

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("tempdir"))
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, bytes).expect("write variant");
        p
    }
}

/// For each original: its reference rows and records.
fn each_original(mut check: impl FnMut(&str, &[Rec], &[Value])) {
    for name in ORIGINALS {
        let recs = read_pcap(name);
        let reference = conns(&[&original(name)], &[]);
        check(name, &recs, &reference);
    }
}

// ---------------------------------------------------------------------------------------------
// 1–2: classic pcap variants

#[test]
fn nanosecond_pcap_reads_the_same() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        for big in [false, true] {
            let p = dir.write(&format!("ns-{big}-{name}"), &pcap_bytes(1, recs, big, true));
            assert_same_rows(
                reference,
                &conns(&[&p], &[]),
                &format!("{name} as nanosecond pcap (big-endian: {big})"),
            );
        }
    });
}

#[test]
fn big_endian_pcap_reads_the_same() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        let p = dir.write(&format!("be-{name}"), &pcap_bytes(1, recs, true, false));
        assert_same_rows(
            reference,
            &conns(&[&p], &[]),
            &format!("{name} as big-endian pcap"),
        );
    });
}

/// The writer itself round-trips: a rewritten original is byte-identical.
#[test]
fn pcap_writer_reproduces_the_originals() {
    for name in ORIGINALS {
        let bytes = std::fs::read(original(name)).unwrap();
        let mut rewritten = pcap(1, &read_pcap(name));
        // Only the snap length field may differ.
        rewritten[16..20].copy_from_slice(&bytes[16..20]);
        assert!(
            rewritten == bytes,
            "{name}: the test's pcap writer does not round-trip"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3–5: pcapng

#[test]
fn pcapng_microsecond_and_nanosecond_interfaces() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        for tsresol in [None, Some(6), Some(9)] {
            let mut ng = Ng::new();
            ng.shb(false).idb(1, tsresol);
            for (i, r) in recs.iter().enumerate() {
                let ts = if tsresol == Some(9) {
                    r.nanos()
                } else {
                    r.micros()
                };
                ng.epb(0, ts, r.orig_len, &r.data);
                if i == 1 {
                    // A block type tcpstate does not know, between packets: skipped.
                    ng.block(0x0000_0bad, &[1, 2, 3, 4]);
                }
            }
            let p = dir.write(&format!("ng-{tsresol:?}-{name}"), &ng.out);
            assert_same_rows(
                reference,
                &conns(&[&p], &[]),
                &format!("{name} as pcapng, if_tsresol {tsresol:?}"),
            );
        }
    });
}

#[test]
fn pcapng_sections_in_both_byte_orders() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        // Three sections, each restarting its interfaces; packets split among them.
        for orders in [[false, true, false], [true, false, true]] {
            let mut ng = Ng::new();
            let third = recs.len().div_ceil(3);
            for (s, chunk) in recs.chunks(third).enumerate() {
                // Each section numbers its interfaces from 0 again; give the later ones
                // a different resolution so a reader that keeps the old table gets times wrong.
                let nanos = s % 2 == 1;
                ng.shb(orders[s]).idb(1, nanos.then_some(9));
                for r in chunk {
                    ng.epb(
                        0,
                        if nanos { r.nanos() } else { r.micros() },
                        r.orig_len,
                        &r.data,
                    );
                }
            }
            let p = dir.write(&format!("sections-{}-{name}", orders[0]), &ng.out);
            assert_same_rows(
                reference,
                &conns(&[&p], &[]),
                &format!("{name} as pcapng in 3 sections, big-endian {orders:?}"),
            );
        }
    });
}

#[test]
fn pcapng_interfaces_of_different_link_types() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        let mut ng = Ng::new();
        ng.shb(false).idb(1, None).idb(276, Some(9));
        for (i, r) in recs.iter().enumerate() {
            if i % 2 == 0 {
                ng.epb(0, r.micros(), r.orig_len, &r.data);
            } else {
                let sll2 = convert(Link::Sll2, &r.data);
                ng.epb(1, r.nanos(), r.orig_len + 6, &sll2);
            }
        }
        let p = dir.write(&format!("two-links-{name}"), &ng.out);
        assert_same_rows(
            reference,
            &conns(&[&p], &[]),
            &format!("{name} alternating Ethernet / LINUX_SLL2"),
        );
        assert_same_rows(
            &states(&[&original(name)]),
            &states(&[&p]),
            &format!("{name} alternating Ethernet / LINUX_SLL2 (states)"),
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 6: link types

#[test]
fn every_link_type_reads_the_same() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        let v6 = ethertype(&recs[0].data) == 0x86dd;
        for link in Link::ALL {
            let linktype = linktype_of(link, v6);
            let p = dir.write(
                &format!("{link:?}-{name}"),
                &pcap(linktype, &convert_recs(link, recs)),
            );
            assert_same_rows(
                reference,
                &conns(&[&p], &[]),
                &format!("{name} as {link:?} (linktype {linktype})"),
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 7–8: several files, standard input

#[test]
fn rotated_files_are_one_capture() {
    let dir = Dir::new();
    let recs = read_pcap("mixed.pcap");
    let reference = conns(&[&original("mixed.pcap")], &[]);
    // Cut points inside connections: the files split many of them.
    let (a, b) = (recs.len() / 3 + 1, 2 * recs.len() / 3 + 2);
    let parts = [&recs[..a], &recs[a..b], &recs[b..]];
    let paths: Vec<PathBuf> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| dir.write(&format!("rot{i}.pcap"), &pcap(1, part)))
        .collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    assert_same_rows(&reference, &conns(&refs, &[]), "mixed.pcap in 3 files");
    assert_same_rows(
        &states(&[&original("mixed.pcap")]),
        &states(&refs),
        "mixed.pcap in 3 files (states)",
    );

    // The split must matter: the first file alone ends with connections still open.
    let first_only = conns(&refs[..1], &[]);
    assert_ne!(first_only.len(), 0);
    assert!(first_only.len() < reference.len());

    // Mixed containers: pcap, then pcapng (nanoseconds), then big-endian pcap.
    let mut ng = Ng::new();
    ng.shb(true).idb(1, Some(9));
    for r in parts[1] {
        ng.epb(0, r.nanos(), r.orig_len, &r.data);
    }
    let mid = dir.write("rot1.pcapng", &ng.out);
    let last = dir.write("rot2-be.pcap", &pcap_bytes(1, parts[2], true, false));
    assert_same_rows(
        &reference,
        &conns(&[refs[0], &mid, &last], &[]),
        "mixed.pcap in pcap + pcapng + pcap-BE",
    );
}

#[test]
fn standard_input() {
    let recs = read_pcap("mixed.pcap");
    let reference = conns(&[&original("mixed.pcap")], &[]);
    let mut ng = Ng::new();
    ng.shb(false).idb(1, None);
    for r in &recs {
        ng.epb(0, r.micros(), r.orig_len, &r.data);
    }
    let inputs = [
        ("pcap", std::fs::read(original("mixed.pcap")).unwrap()),
        ("pcapng", ng.out),
    ];
    for (what, bytes) in inputs {
        let run = tcpstate_with_stdin(
            &["conns", "-r", "-", "--format", "json", "-q"],
            Some(&bytes),
        );
        assert_eq!(run.code, 0, "{what} on stdin: {}", run.stderr);
        assert_same_rows(
            &reference,
            &json_lines(&run.stdout),
            &format!("{what} on stdin"),
        );
    }
    let run = tcpstate_with_stdin(&["conns", "-r", "-", "-q"], Some(b""));
    assert_eq!(run.code, 1, "empty stdin: {}", run.stderr);
    assert!(
        run.stderr.contains("<stdin>") && run.stderr.contains("empty"),
        "{}",
        run.stderr
    );
}

/// Runs tcpstate with standard input redirected from the file at `path` (as `< path`).
fn tcpstate_with_stdin_file(args: &[&str], path: &Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tcpstate"))
        .args(args)
        .stdin(std::fs::File::open(path).expect("open the capture"))
        .output()
        .expect("run tcpstate");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// Standard input redirected from a file is read as a file is (read ahead, rows written
/// behind, `--threads` allowed): the same bytes out as the file named and as a pipe; `events`
/// still reads it once and writes as it goes, as from a pipe.
#[test]
fn standard_input_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let recs = read_pcap("mixed.pcap");
    let mut ng = Ng::new();
    ng.shb(false).idb(1, None);
    for r in &recs {
        ng.epb(0, r.micros(), r.orig_len, &r.data);
    }
    let ng_path = dir.path().join("mixed.pcapng");
    std::fs::write(&ng_path, &ng.out).unwrap();
    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, b"").unwrap();
    for path in [
        original("mixed.pcap"),
        original("bulk_download.pcap"),
        ng_path,
    ] {
        let bytes = std::fs::read(&path).unwrap();
        let runs: [&[&str]; 5] = [
            &["conns", "-q"],
            &["conns", "-q", "--format", "json"],
            &["conns", "-q", "--threads", "2"],
            &["diagnose", "-q"],
            &["events", "-q"],
        ];
        for args in runs {
            let named = tcpstate(&[args, &["-r", path.to_str().unwrap()]].concat());
            let piped = tcpstate_with_stdin(&[args, &["-r", "-"]].concat(), Some(&bytes));
            let redirected = tcpstate_with_stdin_file(&[args, &["-r", "-"]].concat(), &path);
            let what = format!("{args:?} on {}", path.display());
            assert_eq!(redirected.code, 0, "{what}: {}", redirected.stderr);
            assert!(!redirected.stdout.is_empty(), "{what}: nothing written");
            if args[0] == "events" {
                assert_eq!(redirected.stdout, piped.stdout, "{what}: as from a pipe");
            } else {
                assert_eq!(redirected.stdout, named.stdout, "{what}: as the file named");
                if !args.contains(&"--threads") {
                    assert_eq!(piped.stdout, named.stdout, "{what}: a pipe as the file");
                }
            }
        }
    }
    let run = tcpstate_with_stdin_file(&["conns", "-r", "-", "-q"], &empty);
    assert_eq!(run.code, 1, "empty stdin: {}", run.stderr);
    assert!(
        run.stderr.contains("<stdin>") && run.stderr.contains("empty"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 9: snap length

/// The columns that must survive a snap-length cut (payload length comes from the IP header).
const STATE_COLUMNS: [&str; 9] = [
    "client",
    "server",
    "client_state",
    "server_state",
    "handshake",
    "client_packets",
    "server_packets",
    "client_bytes",
    "server_bytes",
];

fn assert_same_columns(expected: &[Value], got: &[Value], columns: &[&str], what: &str) {
    assert_eq!(expected.len(), got.len(), "{what}: row count differs");
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        for k in columns {
            assert_eq!(
                e.get(k),
                g.get(k),
                "{what}: row {i} field `{k}` differs\nexpected {e}\n     got {g}"
            );
        }
    }
}

fn snapped(recs: &[Rec], cut: impl Fn(&[u8]) -> usize) -> Vec<Rec> {
    recs.iter()
        .map(|r| Rec {
            data: r.data[..cut(&r.data).min(r.data.len())].to_vec(),
            ..r.clone()
        })
        .collect()
}

/// Where the TCP payload starts in an Ethernet frame.
fn tcp_payload_offset(frame: &[u8]) -> usize {
    let (ip_len, proto) = if ethertype(frame) == 0x86dd {
        (40, frame[14 + 6])
    } else {
        (((frame[14] & 15) * 4) as usize, frame[14 + 9])
    };
    assert_eq!(
        proto, 6,
        "originals hold only TCP without extension headers"
    );
    let tcp = 14 + ip_len;
    tcp + (frame[tcp + 12] >> 4) as usize * 4
}

#[test]
fn snap_length_cut_after_the_tcp_header() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        let cut = snapped(recs, tcp_payload_offset);
        assert!(
            cut.iter()
                .zip(recs)
                .any(|(c, r)| c.data.len() < r.data.len()),
            "{name}: nothing was cut"
        );
        let p = dir.write(&format!("snap-hdr-{name}"), &pcap(1, &cut));
        // Only the payload bytes are gone: everything tcpstate reports is unchanged.
        assert_same_rows(
            reference,
            &conns(&[&p], &[]),
            &format!("{name} cut after the TCP header"),
        );
    });
}

#[test]
fn snap_length_66() {
    let dir = Dir::new();
    each_original(|name, recs, reference| {
        if ethertype(&recs[0].data) == 0x86dd {
            return; // 66 bytes does not even hold an IPv6 + TCP header.
        }
        let cut = snapped(recs, |_| 14 + 20 + 20 + 12);
        let p = dir.write(&format!("snap66-{name}"), &pcap(1, &cut));
        assert_same_columns(
            reference,
            &conns(&[&p], &[]),
            &STATE_COLUMNS,
            &format!("{name} cut to 66 bytes"),
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 10: filters

fn port_of(addr: &Value) -> u16 {
    addr.as_str()
        .and_then(|s| s.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("address:port")
}

fn without_id(rows: &[Value]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("id");
            r
        })
        .collect()
}

#[test]
fn bpf_filter_selects_one_port() {
    let mixed = original("mixed.pcap");
    let all = conns(&[&mixed], &[]);
    // The least used server port: a strict, non-empty subset.
    let mut ports: Vec<u16> = all.iter().map(|r| port_of(&r["server"])).collect();
    ports.sort();
    ports.dedup();
    assert!(
        ports.len() > 1,
        "mixed.pcap should use several server ports: {ports:?}"
    );
    let port = *ports
        .iter()
        .min_by_key(|p| all.iter().filter(|r| port_of(&r["server"]) == **p).count())
        .unwrap();
    let expected: Vec<Value> = all
        .iter()
        .filter(|r| port_of(&r["server"]) == port || port_of(&r["client"]) == port)
        .cloned()
        .collect();
    assert!(!expected.is_empty() && expected.len() < all.len());

    let port_s = port.to_string();
    let got = conns(&[&mixed], &["port", &port_s]);
    for r in &got {
        assert!(
            port_of(&r["server"]) == port || port_of(&r["client"]) == port,
            "row not on port {port}: {r}"
        );
    }
    assert_same_rows(
        &without_id(&expected),
        &without_id(&got),
        &format!("mixed.pcap filtered by port {port}"),
    );

    // The same filter on another link type (compiled by libpcap for that link type).
    let dir = Dir::new();
    let sll = dir.write(
        "sll.pcap",
        &pcap(113, &convert_recs(Link::Sll, &read_pcap("mixed.pcap"))),
    );
    assert_same_rows(
        &without_id(&expected),
        &without_id(&conns(&[&sll], &["port", &port_s])),
        "LINUX_SLL filtered",
    );
}

#[test]
fn invalid_filter_is_a_usage_error() {
    let mixed = original("mixed.pcap");
    // Every format: the text table and CSV have a header to write, even with no rows.
    for format in ["json", "text", "csv"] {
        let run = tcpstate(&[
            "conns",
            "-r",
            path_str(&mixed),
            "--format",
            format,
            "-q",
            "port",
            "notaport",
        ]);
        assert_eq!(run.code, 2, "stderr: {}", run.stderr);
        assert!(run.stderr.contains("filter"), "stderr: {}", run.stderr);
        assert!(
            run.stdout.is_empty(),
            "no report for a bad command line ({format}): {}",
            run.stdout
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 11: bad input

/// Runs `conns` on a file expected to fail with status 1; returns (stdout rows, stderr).
fn fails(path: &Path) -> (Vec<Value>, String) {
    let run = tcpstate(&["conns", "-r", path_str(path), "--format", "json", "-q"]);
    assert_eq!(
        run.code,
        1,
        "{}: expected status 1, stderr: {}",
        path.display(),
        run.stderr
    );
    let first = run.stderr.lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("tcpstate: "),
        "message should start with `tcpstate: `: {}",
        run.stderr
    );
    assert!(
        first.contains(path_str(path)),
        "message should name the file: {}",
        run.stderr
    );
    (json_lines(&run.stdout), run.stderr)
}

#[test]
fn empty_file() {
    let dir = Dir::new();
    let (rows, err) = fails(&dir.write("empty.pcap", b""));
    assert!(rows.is_empty());
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn text_file() {
    let dir = Dir::new();
    let (rows, err) = fails(&dir.write("notes.pcap", b"these are not packets\n"));
    assert!(rows.is_empty());
    assert!(err.contains("not a pcap or pcapng"), "{err}");
}

#[test]
fn cut_in_the_global_header() {
    let dir = Dir::new();
    let bytes = std::fs::read(original("close_client_first.pcap")).unwrap();
    for n in [4, 10, 23] {
        let (rows, err) = fails(&dir.write(&format!("head{n}.pcap"), &bytes[..n]));
        assert!(rows.is_empty());
        assert!(
            err.contains("middle of a record") || err.contains("truncated"),
            "cut at {n}: {err}"
        );
    }
    let mut ng = Ng::new();
    ng.shb(false);
    let (rows, err) = fails(&dir.write("shb.pcapng", &ng.out[..20]));
    assert!(rows.is_empty(), "{err}");
}

/// The rows tcpstate gives for the first `n` records alone, written cleanly.
fn rows_of_prefix(dir: &Dir, recs: &[Rec], n: usize) -> Vec<Value> {
    conns(
        &[&dir.write(&format!("prefix{n}.pcap"), &pcap(1, &recs[..n]))],
        &[],
    )
}

fn record_offset(recs: &[Rec], n: usize) -> usize {
    24 + recs[..n].iter().map(|r| 16 + r.data.len()).sum::<usize>()
}

#[test]
fn cut_in_the_middle_of_a_record() {
    let dir = Dir::new();
    let recs = read_pcap("close_client_first.pcap");
    let bytes = std::fs::read(original("close_client_first.pcap")).unwrap();
    let (rows, err) = fails(&dir.write("cut.pcap", &bytes[..bytes.len() - 10]));
    assert!(err.contains("middle of a record"), "{err}");
    let last = recs.len() - 1;
    assert!(
        err.contains(&format!("byte offset {}", record_offset(&recs, last))),
        "wrong offset: {err}"
    );
    // What came before the fault is still reported, exactly as if the file ended there.
    assert_same_rows(
        &rows_of_prefix(&dir, &recs, last),
        &rows,
        "rows before the cut",
    );
    assert_eq!(
        rows[0]["client_packets"].as_u64().unwrap() + rows[0]["server_packets"].as_u64().unwrap(),
        last as u64
    );
}

#[test]
fn absurd_record_length() {
    let dir = Dir::new();
    let recs = read_pcap("close_client_first.pcap");
    let good = 5;
    // pcap: a record header claiming 0xFFFFFF00 bytes, followed by the rest of the file.
    let mut bytes = pcap(1, &recs[..good]);
    bytes.extend(recs[good].sec.to_le_bytes());
    bytes.extend(recs[good].usec.to_le_bytes());
    bytes.extend(0xFFFF_FF00u32.to_le_bytes());
    bytes.extend(0xFFFF_FF00u32.to_le_bytes());
    for r in &recs[good..] {
        bytes.extend(&r.data);
    }
    let (rows, err) = fails(&dir.write("huge.pcap", &bytes));
    assert!(err.contains("claims more than"), "{err}");
    assert!(
        err.contains(&format!("byte offset {}", record_offset(&recs, good))),
        "wrong offset: {err}"
    );
    assert_same_rows(
        &rows_of_prefix(&dir, &recs, good),
        &rows,
        "rows before the huge pcap record",
    );

    // pcapng: an Enhanced Packet Block whose total length is absurd.
    let mut ng = Ng::new();
    ng.shb(false).idb(1, None);
    for r in &recs[..good] {
        ng.epb(0, r.micros(), r.orig_len, &r.data);
    }
    let at = ng.out.len();
    ng.epb(
        0,
        recs[good].micros(),
        recs[good].orig_len,
        &recs[good].data,
    );
    ng.out[at + 4..at + 8].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    let (rows, err) = fails(&dir.write("huge.pcapng", &ng.out));
    assert!(
        err.contains("claims more than")
            || err.contains("middle of a record")
            || err.contains("corrupt"),
        "{err}"
    );
    assert!(
        err.contains(&format!("byte offset {at}")),
        "wrong offset: {err}"
    );
    assert_same_rows(
        &rows_of_prefix(&dir, &recs, good),
        &rows,
        "rows before the huge pcapng block",
    );
}

#[test]
fn unsupported_link_type() {
    let dir = Dir::new();
    let recs = read_pcap("close_client_first.pcap");
    let (rows, err) = fails(&dir.write("wifi.pcap", &pcap(105, &recs)));
    assert!(rows.is_empty());
    assert!(err.contains("IEEE802_11") && err.contains("105"), "{err}");

    // pcapng: an interface of an unsupported type beside a good one is not fatal (as
    // Wireshark reads it): its packets are counted and the type named; the rest is read.
    let mut ng = Ng::new();
    ng.shb(false).idb(1, None).idb(105, None);
    for (i, r) in recs.iter().enumerate() {
        ng.epb(0, r.micros(), r.orig_len, &r.data);
        if i % 3 == 0 {
            ng.epb(1, r.micros(), 24, &[0x08; 24]);
        }
    }
    let junk = recs.len().div_ceil(3);
    let p = dir.write("wifi.pcapng", &ng.out);
    let run = tcpstate(&["conns", "-r", path_str(&p), "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_same_rows(
        &conns(&[&original("close_client_first.pcap")], &[]),
        &json_lines(&run.stdout),
        "pcapng with an IEEE802_11 interface beside Ethernet",
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("unsupported link type"))
        .unwrap_or_else(|| panic!("no unsupported-link counter: {}", run.stderr));
    assert!(line.contains("IEEE802_11 (105)"), "{line}");
    assert_eq!(counter_value(line), junk as u64, "{line}");
}

/// The number in a counter line `tcpstate:      12  what`.
fn counter_value(line: &str) -> u64 {
    line.trim_start_matches("tcpstate:")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a counter line: {line}"))
}

#[test]
fn nonexistent_file() {
    let dir = Dir::new();
    let (rows, err) = fails(&dir.0.path().join("no-such.pcap"));
    assert!(rows.is_empty());
    assert!(err.contains("cannot open"), "{err}");
}

#[test]
fn fault_in_a_later_file_keeps_the_earlier_ones() {
    let dir = Dir::new();
    let recs = read_pcap("close_client_first.pcap");
    let a = dir.write("a.pcap", &pcap(1, &recs[..6]));
    let b = dir.write("b.txt", b"not a capture");
    let c = dir.write("c.pcap", &pcap(1, &recs[6..]));
    let run = tcpstate(&[
        "conns",
        "--format",
        "json",
        "-q",
        "-r",
        path_str(&a),
        "-r",
        path_str(&b),
        "-r",
        path_str(&c),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(path_str(&b)) && run.stderr.contains("not a pcap or pcapng"),
        "{}",
        run.stderr
    );
    assert_same_rows(
        &rows_of_prefix(&dir, &recs, 6),
        &json_lines(&run.stdout),
        "rows of the file before the bad one",
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Any truncation: status 0 exactly at a record boundary, else 1; never a panic; the rows
    /// are those of the whole records before the cut.
    #[test]
    fn any_truncation_is_clean(cut in 0usize..1200) {
        let recs = read_pcap("close_client_first.pcap");
        let bytes = std::fs::read(original("close_client_first.pcap")).unwrap();
        let cut = cut.min(bytes.len());
        let dir = Dir::new();
        let p = dir.write("t.pcap", &bytes[..cut]);
        let run = tcpstate(&["conns", "-r", path_str(&p), "--format", "json", "-q"]);
        let whole = (0..=recs.len()).take_while(|&n| record_offset(&recs, n) <= cut).last();
        let boundary = whole.is_some_and(|n| record_offset(&recs, n) == cut);
        prop_assert_eq!(run.code, if boundary { 0 } else { 1 }, "cut {}: {}", cut, run.stderr);
        let expected = match whole {
            Some(n) if n > 0 => rows_of_prefix(&dir, &recs, n),
            _ => Vec::new(),
        };
        let got = json_lines(&run.stdout);
        prop_assert_eq!(expected, got, "cut {}", cut);
    }

    /// Corrupted bytes anywhere: a clean status (0 or 1), never a panic or a crash.
    #[test]
    fn corrupt_bytes_are_clean(flips in proptest::collection::vec((0usize..256_079, any::<u8>()), 1..8),
                               ng in any::<bool>()) {
        let mut bytes = if ng {
            let mut w = Ng::new();
            w.shb(false).idb(1, None);
            for r in &read_pcap("mixed.pcap") {
                w.epb(0, r.micros(), r.orig_len, &r.data);
            }
            w.out
        } else {
            std::fs::read(original("mixed.pcap")).unwrap()
        };
        let len = bytes.len();
        for (at, v) in flips {
            bytes[at % len] = v;
        }
        let dir = Dir::new();
        let p = dir.write("c.pcap", &bytes);
        let run = tcpstate(&["conns", "-r", path_str(&p), "--format", "json"]);
        prop_assert!(run.code == 0 || run.code == 1, "status {}: {}", run.code, run.stderr);
        let _ = json_lines(&run.stdout);
    }
}

// ---------------------------------------------------------------------------------------------
// 12: broken pipe

/// mixed.pcap `copies` times over, each copy between other addresses (127.k.0.1) and 1000 s
/// later: enough output to overrun any pipe buffer.
fn big_capture_of(dir: &Dir, copies: u8) -> PathBuf {
    let recs = read_pcap("mixed.pcap");
    let mut all = Vec::new();
    for k in 0..copies {
        all.extend(recs.iter().map(|r| {
            let mut data = r.data.clone();
            assert_eq!(ethertype(&data), 0x0800);
            data[14 + 12 + 1] = k; // source 127.k.0.1
            data[14 + 16 + 1] = k; // destination
            Rec {
                sec: r.sec + 1000 * u32::from(k),
                data,
                ..r.clone()
            }
        }));
    }
    dir.write("big.pcap", &pcap(1, &all))
}

fn reader_closes_after_first_line(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcpstate"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcpstate");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "no first line");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    Run {
        stdout: line,
        stderr,
        code: status.code().unwrap_or(-1),
    }
}

fn broken_pipe(format: &str) {
    let dir = Dir::new();
    // Zeek's rows are shorter.
    let big = big_capture_of(&dir, if format == "zeek" { 12 } else { 6 });
    // The copies' addresses are rewritten without fixing the IP checksum: Zeek's rules (the
    // `zeek` format) would drop them.
    let args = ["conns", "-r", path_str(&big), "--format", format, "-C"];
    // The whole report is far larger than a pipe buffer plus tcpstate's own buffer.
    let full = tcpstate(&args);
    assert_eq!(full.code, 0, "{}", full.stderr);
    assert!(
        full.stdout.len() > 256 * 1024,
        "report only {} bytes: the pipe may never break",
        full.stdout.len()
    );

    let run = reader_closes_after_first_line(&args);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(
        !run.stderr.to_lowercase().contains("broken pipe"),
        "{format}: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("writing output"),
        "{format}: {}",
        run.stderr
    );
    assert_eq!(
        run.code, 0,
        "{format}: a reader that goes away is not an error: {}",
        run.stderr
    );
}

#[test]
fn broken_pipe_text() {
    broken_pipe("text");
}

#[test]
fn broken_pipe_json() {
    broken_pipe("json");
}

#[test]
fn broken_pipe_zeek() {
    broken_pipe("zeek");
}

// ---------------------------------------------------------------------------------------------
// 13: time going backwards

#[test]
fn timestamps_going_backwards() {
    let dir = Dir::new();
    let mut recs = read_pcap("mixed.pcap");
    let i = (recs.len() / 2..recs.len() - 1)
        .find(|&i| recs[i].micros() < recs[i + 1].micros())
        .expect("two adjacent records with different times");
    let (a, b) = (
        (recs[i].sec, recs[i].usec),
        (recs[i + 1].sec, recs[i + 1].usec),
    );
    (recs[i].sec, recs[i].usec) = b;
    (recs[i + 1].sec, recs[i + 1].usec) = a;
    let p = dir.write("backwards.pcap", &pcap(1, &recs));
    let run = tcpstate(&["conns", "-r", path_str(&p), "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("timestamp earlier"))
        .unwrap_or_else(|| panic!("no counter: {}", run.stderr));
    assert_eq!(
        counter_value(line),
        1,
        "one packet went back in time: {line}"
    );
    assert_eq!(
        json_lines(&run.stdout).len(),
        conns(&[&original("mixed.pcap")], &[]).len()
    );
}
