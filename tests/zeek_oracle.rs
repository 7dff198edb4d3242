//! The proof for `tcpstate::zeek`: every trace of the Zeek oracle (`shared/oracles/zeek`,
//! beside the checkout) is run through the tracker with the checksum setting Zeek used for
//! it, the resulting conn.logs are scored by the oracle's own `compare.py`, and the scores
//! must stay at or above the targets, over the whole folder and with `llc.pcap` (1333 rows
//! of one kind, which would dominate the totals) left out.
//!
//! Set `ZEEK_ORACLE_OUT=<dir>` to keep the generated logs and compare.py's verbose report.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;

use tcpstate::capture::ContainerCounters;
use tcpstate::capture::file::read_files;
use tcpstate::zeek::{ZeekConfig, ZeekTracker, write_conn_log};

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

fn run_trace(path: &Path, ignore_checksums: bool) -> Vec<tcpstate::zeek::ZeekConn> {
    let cfg = ZeekConfig {
        ignore_checksums,
        ..ZeekConfig::default()
    };
    let mut tracker = ZeekTracker::new(cfg);
    let mut counters = ContainerCounters::default();
    // A capture that ends in a torn record still yields everything before it, as Zeek does.
    let _ = read_files(
        &[path.to_string_lossy().into_owned()],
        &mut counters,
        &mut |pkt| {
            tracker.process(pkt);
            ControlFlow::Continue(())
        },
    );
    tracker.finish()
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
        let rows = run_trace(&dir.join("traces").join(trace), *ignore);
        let mut file =
            std::fs::File::create(logs.join(format!("{trace}.conn.log"))).expect("create conn.log");
        write_conn_log(&mut file, &rows, 0.0).expect("write conn.log");
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
