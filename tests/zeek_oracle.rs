//! The proof for `tcpstate::zeek`: every trace of the Zeek oracle (`shared/oracles/zeek`,
//! beside the checkout) is run through `tcpstate conns --format zeek` with the checksum setting Zeek used for
//! it, the resulting conn.logs are scored by the oracle's own `compare.py`, and the scores
//! must stay at or above the targets, over the whole folder and with `llc.pcap` (1333 rows
//! of one kind, which would dominate the totals) left out.
//!
//! Set `ZEEK_ORACLE_OUT=<dir>` to keep the generated logs and compare.py's verbose report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CONN_STATE_TARGET: f64 = 98.0;
const HISTORY_TARGET: f64 = 90.0;
const LEFT_OUT: &str = "llc.pcap";

fn oracle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/oracles/zeek")
}

/// `(trace, ignore_checksums)` for every line of index.tsv.
fn traces(dir: &Path) -> Vec<(String, bool)> {
    let index = std::fs::read_to_string(dir.join("index.tsv")).expect("read index.tsv");
    let mut lines = index.lines();
    let header: Vec<&str> = lines.next().expect("index header").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("index.tsv has no column {name}"))
    };
    let (trace, ignore) = (col("trace"), col("ignore_checksums"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[trace].to_string(), f[ignore] == "T")
        })
        .collect()
}

/// The conn.log `tcpstate conns --format zeek` writes for a trace (`-C` as Zeek ran it). A
/// capture that ends in a torn record still yields everything before it (exit status 1).
fn conn_log(path: &Path, ignore_checksums: bool) -> String {
    let trace = path.to_string_lossy();
    let mut args = vec!["conns", "--format", "zeek", "-q", "-r", &trace];
    if ignore_checksums {
        args.push("-C");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tcpstate"))
        .args(&args)
        .output()
        .expect("run tcpstate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{trace}: {stderr}");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{trace}: status {:?}: {stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Field -> matched percentage, from compare.py's TOTAL section.
fn scores(report: &str) -> HashMap<String, (f64, String)> {
    let mut out = HashMap::new();
    for line in report.lines() {
        // "conn_state: 1460/1477 matched (98.8%; 1460/1470 of found rows)"
        let Some((field, rest)) = line.split_once(": ") else {
            continue;
        };
        if field.contains(' ') || !rest.contains(" matched (") {
            continue;
        }
        let pct = rest
            .split_once('(')
            .and_then(|(_, p)| p.split_once('%'))
            .and_then(|(p, _)| p.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("unparsable score line: {line}"));
        out.insert(field.to_string(), (pct, rest.to_string()));
    }
    out
}

fn compare(dir: &Path, logs: &Path, only: Option<&str>, verbose: bool) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(dir.join("compare.py"))
        .arg("--dir")
        .arg(dir)
        .arg(logs);
    if let Some(only) = only {
        cmd.arg("--only").arg(only);
    }
    if verbose {
        cmd.arg("-v");
    }
    let out = cmd.output().expect("run python3 compare.py");
    assert!(
        out.status.success(),
        "compare.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn zeek_oracle_scores() {
    let dir = oracle_dir();
    assert!(
        dir.join("index.tsv").exists(),
        "Zeek oracle not found at {} (expected shared/oracles/zeek beside the checkout)",
        dir.display()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let keep = std::env::var_os("ZEEK_ORACLE_OUT").map(PathBuf::from);
    let logs = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&logs).expect("log dir");

    let list = traces(&dir);
    assert!(!list.is_empty(), "index.tsv lists no traces");
    for (trace, ignore) in &list {
        let log = conn_log(&dir.join("traces").join(trace), *ignore);
        std::fs::write(logs.join(format!("{trace}.conn.log")), log).expect("write conn.log");
    }

    let all = compare(&dir, &logs, None, false);
    let rest: Vec<&str> = list
        .iter()
        .map(|(t, _)| t.as_str())
        .filter(|t| *t != LEFT_OUT)
        .collect();
    let without = compare(&dir, &logs, Some(&rest.join(",")), false);
    if let Some(k) = &keep {
        std::fs::write(
            k.join("compare-verbose.txt"),
            compare(&dir, &logs, None, true),
        )
        .expect("write report");
    }

    let mut failures = Vec::new();
    for (label, report) in [("all traces", &all), ("without llc.pcap", &without)] {
        let s = scores(report);
        for (field, target) in [
            ("conn_state", CONN_STATE_TARGET),
            ("history", HISTORY_TARGET),
        ] {
            let (pct, line) = s
                .get(field)
                .unwrap_or_else(|| panic!("compare.py reported no {field} score:\n{report}"));
            eprintln!("{label}: {field}: {line}");
            if *pct < target {
                failures.push(format!("{label}: {field} {pct}% < {target}%"));
            }
        }
        for field in [
            "orig_pkts",
            "resp_pkts",
            "orig_bytes",
            "resp_bytes",
            "duration",
        ] {
            if let Some((_, line)) = s.get(field) {
                eprintln!("{label}: {field}: {line}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "scores below target:\n{}\n\nall traces:\n{all}\nwithout {LEFT_OUT}:\n{without}",
        failures.join("\n")
    );
}

/// The kernel captures in pcaps/ through `conns --format zeek -C`: conn_state and history as
/// Zeek's rules define them for what each scenario did (CONN_STATES.md).
#[test]
fn kernel_captures_get_the_zeek_states_their_scenarios_imply() {
    let pcaps = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps");
    for (name, want) in [
        ("close_client_first", vec!["SF/ShADadFf"]),
        ("close_server_first", vec!["SF/ShADadfF"]),
        ("refused", vec!["REJ/Sr"; 3]),
        // A SYN retransmitted more than 5 s after the first starts a new row (attempt timer).
        ("syn_blackhole", vec!["S0/S"; 3]),
        ("linger_abort", vec!["RSTO/ShADadR"]),
        ("close_unread_data", vec!["RSTR/ShADaGr"]),
        (
            "close_wait_leak",
            vec!["S2/ShADadF", "S2/ShADadF", "S2/ShADadF", "SF/ShADadFf"],
        ),
    ] {
        let log = conn_log(&pcaps.join(format!("{name}.pcap")), true);
        let got: Vec<String> = log
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                format!("{}/{}", f[11], f[15])
            })
            .collect();
        assert_eq!(got, want, "{name}");
        assert!(log.starts_with("#separator \\x09\n"), "{name}: header");
        assert!(
            log.trim_end()
                .lines()
                .last()
                .unwrap()
                .starts_with("#close\t")
        );
    }
    // Without -C, loopback checksums are invalid: Zeek records only `C` for such packets.
    let strict = conn_log(&pcaps.join("refused.pcap"), false);
    assert!(
        strict
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.contains("\tCr\t") || l.contains("\tC\t")),
        "{strict}"
    );
}
