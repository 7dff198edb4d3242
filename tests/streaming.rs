//! Records written while reading: `conns --format json|csv` streams each connection when it
//! ends, `states --interval` prints counts per state as packet time passes, idle timeouts
//! end records, and `tcpstate -r/-i` without a command picks one.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{capture, json_lines, opened_and_closed, pcap_bytes, rec_at, tcp_frame, tcpstate};
use serde_json::Value;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

/// A whole connection from `client` to 10.0.0.2:80 starting at `ms`: handshake, client
/// closes first, server closes; the client ends in TIME_WAIT.
fn closed_connection(client: &str, ms: u64) -> Vec<common::Rec> {
    let s = "10.0.0.2:80";
    vec![
        rec_at(ms, tcp_frame(client, s, SYN, 100, 0, 0)),
        rec_at(ms + 1, tcp_frame(s, client, SYN | ACK, 300, 101, 0)),
        rec_at(ms + 2, tcp_frame(client, s, ACK, 101, 301, 0)),
        rec_at(ms + 3, tcp_frame(client, s, FIN | ACK, 101, 301, 0)),
        rec_at(ms + 4, tcp_frame(s, client, FIN | ACK, 301, 102, 0)),
        rec_at(ms + 5, tcp_frame(client, s, ACK, 102, 302, 0)),
    ]
}

#[test]
fn conns_json_writes_each_record_when_it_ends_and_the_rest_by_id() {
    // Connection 1 closes at once; 2 stays open; 3 starts 5 s later, when (with a 1 s
    // TIME_WAIT) 1 has been over for 2MSL and has ended. 1 is written first, then 2 and 3.
    let (c2, s) = ("10.0.0.1:40002", "10.0.0.2:80");
    let mut recs = closed_connection("10.0.0.1:40001", 0);
    recs.extend([
        rec_at(10, tcp_frame(c2, s, SYN, 7, 0, 0)),
        rec_at(11, tcp_frame(s, c2, SYN | ACK, 70, 8, 0)),
        rec_at(12, tcp_frame(c2, s, ACK, 8, 71, 0)),
    ]);
    recs.extend(closed_connection("10.0.0.1:40003", 5_000));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("three.pcap");
    std::fs::write(&path, pcap_bytes(&recs)).expect("write");
    let path = path.to_str().expect("utf-8");
    let run = tcpstate(&[
        "conns",
        "--format",
        "json",
        "--time-wait",
        "1",
        "-q",
        "-r",
        path,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = json_lines(&run.stdout);
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(rows[0]["client_state"], "CLOSED", "its TIME_WAIT ran out");
    assert_eq!(rows[0]["client_time_wait_end"], "expired");
    assert_eq!(rows[1]["client_state"], "ESTABLISHED");
    assert_eq!(rows[2]["client_state"], "TIME_WAIT");

    // The same records as the text table, whatever the order.
    let csv = tcpstate(&[
        "conns",
        "--format",
        "csv",
        "--time-wait",
        "1",
        "-q",
        "-r",
        path,
    ]);
    let mut lines = csv.stdout.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("id,client,server"))
    );
    assert_eq!(lines.count(), 3, "one header row, then one row each");
}

#[test]
fn json_rows_equal_the_text_table_on_every_capture() {
    for name in [
        "mixed",
        "tw_reuse",
        "time_wait_expiry",
        "fin_wait2_orphan_timeout",
    ] {
        let path = capture(name);
        let json = tcpstate(&["conns", "--format", "json", "-q", "-r", &path]);
        let text = tcpstate(&["conns", "-q", "-r", &path]);
        assert_eq!(json.code, 0);
        let mut from_json: Vec<(u64, String, String)> = json_lines(&json.stdout)
            .iter()
            .map(|r| {
                (
                    r["id"].as_u64().unwrap(),
                    r["client_state"].as_str().unwrap().to_string(),
                    r["server_state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        from_json.sort();
        let from_text: Vec<(u64, String, String)> = text
            .stdout
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let id = f[0].trim_end_matches(['~', '?']).parse().unwrap();
                let strip = |s: &str| s.trim_end_matches('*').to_string();
                (id, strip(f[5]), strip(f[6]))
            })
            .collect();
        assert_eq!(from_json, from_text, "{name}");
    }
}

#[test]
fn records_from_a_pipe_come_out_before_the_input_ends() {
    // Standard input is read as it arrives and each record is flushed when it ends: a
    // monitor piping a capture in sees connection 1 as soon as packet time has passed its
    // end, while the input is still open.
    let mut first = closed_connection("10.0.0.1:40001", 0);
    first.push(rec_at(
        5_000,
        tcp_frame("10.0.0.1:40002", "10.0.0.2:80", SYN, 7, 0, 0),
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcpstate"))
        .args([
            "conns",
            "--format",
            "json",
            "--time-wait",
            "1",
            "-q",
            "-r",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tcpstate");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&pcap_bytes(&first)).expect("write");
    stdin.flush().expect("flush");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    drop(stdin);
    let _ = child.wait();
    let line = line.expect("a record before the input ended");
    let row: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(row["id"], 1);
    assert_eq!(row["client"], "10.0.0.1:40001");
}

/// Counts per state from `states --format json` rows (sockets, no listeners).
/// The `counts` of one `states --interval --format json` line.
fn counts_of_line(line: &Value) -> BTreeMap<String, u64> {
    line["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

fn counts_of_states(rows: &[Value]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in rows {
        let state = r["state"].as_str().unwrap();
        if state != "LISTEN" {
            *counts.entry(state.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn interval_counts_equal_states_at_each_moment() {
    // Every line of `states --interval` must equal what `states --at` that moment lists.
    for (name, every) in [("mixed", "1s"), ("time_wait_expiry", "10s")] {
        let path = capture(name);
        let run = tcpstate(&[
            "states",
            "--interval",
            every,
            "--format",
            "json",
            "-q",
            "-r",
            &path,
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let lines = json_lines(&run.stdout);
        assert!(lines.len() >= 3, "{name}: {} lines", lines.len());
        for line in &lines {
            let time = line["time"].as_f64().unwrap();
            let at = format!("{time:.6}");
            let states = tcpstate(&["states", "--at", &at, "--format", "json", "-q", "-r", &path]);
            let want = counts_of_states(&json_lines(&states.stdout));
            let got = counts_of_line(line);
            assert_eq!(got, want, "{name} at {at}");
            assert_eq!(line["sockets"].as_u64(), Some(want.values().sum::<u64>()));
        }
    }
}

/// A quiet stretch of more than a million intervals (2,000 s at 1 ms) writes only the lines
/// where the counts change: the first, the one after the TIME_WAIT (100 s here) runs out, and
/// the last before the next packet. Each still equals `states --at` at its moment, also where
/// a packet falls on a boundary (every packet here, at 1 ms).
#[test]
fn interval_lines_across_a_long_quiet_stretch() {
    let (c, s) = ("10.0.0.1:40000", "10.0.0.2:80");
    let mut recs = opened_and_closed(c, s, (100, 500), [0, 1, 2, 100, 200, 300]);
    recs.push(rec_at(
        2_000_000,
        tcp_frame("10.0.0.1:40001", s, 0x02, 700, 0, 0),
    ));
    let dir = std::env::temp_dir().join(format!("tcpstate-quiet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("quiet.pcap");
    std::fs::write(&path, pcap_bytes(&recs)).unwrap();
    let path = path.display().to_string();
    let run = tcpstate(&[
        "states",
        "--interval",
        "1ms",
        "--time-wait",
        "100",
        "--format",
        "json",
        "-r",
        &path,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("interval lines not written"),
        "{}",
        run.stderr
    );
    let lines = json_lines(&run.stdout);
    assert!((300..400).contains(&lines.len()), "{} lines", lines.len());
    let time_waits: Vec<u64> = lines
        .iter()
        .map(|l| l["counts"]["TIME_WAIT"].as_u64().unwrap_or(0))
        .collect();
    // TIME_WAIT from 0.2 s, over at 100.2 s, long before the next packet.
    assert!(
        time_waits.contains(&1) && time_waits.last() == Some(&0),
        "{time_waits:?}"
    );
    for line in lines.iter().step_by(37).chain(lines.iter().rev().take(4)) {
        let at = format!("{:.6}", line["time"].as_f64().unwrap());
        let states = tcpstate(&[
            "states",
            "--at",
            &at,
            "--time-wait",
            "100",
            "--format",
            "json",
            "-q",
            "-r",
            &path,
        ]);
        let want = counts_of_states(&json_lines(&states.stdout));
        let got = counts_of_line(line);
        assert_eq!(got, want, "at {at}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn interval_lines_follow_a_time_wait_to_its_end() {
    // time_wait_expiry: connection 1's client TIME_WAIT lasts 60 s, then connection 2 is
    // made and closed. With 10 s intervals the lines show that TIME_WAIT, every 10 s.
    let path = capture("time_wait_expiry");
    let run = tcpstate(&["states", "--interval", "10s", "-q", "-r", &path]);
    assert_eq!(run.code, 0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{}", run.stdout);
    for l in &lines {
        assert!(l.contains("  sockets 1  TIME_WAIT 1"), "{l}");
        // RFC 3339 with milliseconds, UTC.
        assert_eq!(l.as_bytes()[10], b'T');
        assert!(l.split_whitespace().next().unwrap().ends_with('Z'));
    }
    let csv = tcpstate(&[
        "states",
        "--interval",
        "20s",
        "--format",
        "csv",
        "-q",
        "-r",
        &path,
    ]);
    let mut rows = csv.stdout.lines();
    assert_eq!(
        rows.next(),
        Some(
            "time,sockets,connections,ESTABLISHED,SYN_SENT,SYN_RECV,FIN_WAIT1,FIN_WAIT2,TIME_WAIT,CLOSED,CLOSE_WAIT,LAST_ACK,LISTEN,CLOSING"
        )
    );
    assert_eq!(rows.count(), 4);
    let bad = tcpstate(&["states", "--interval", "soon", "-r", &path]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("--interval 'soon'"), "{}", bad.stderr);
}

#[test]
fn idle_timeouts_end_silent_connections_and_are_counted() {
    // keepalive: an ESTABLISHED connection silent for about a second between probes. With a
    // 0.5 s timeout it is cut each time: records marked expired, and pickups after them.
    let path = capture("keepalive");
    let run = tcpstate(&[
        "conns",
        "--format",
        "json",
        "--idle-timeout",
        "established=0.5",
        "-r",
        &path,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = json_lines(&run.stdout);
    let expired = rows.iter().filter(|r| r["expired"] == true).count();
    assert!(expired >= 1, "{rows:?}");
    assert!(run.stderr.contains(&format!(
        "{expired}  connections no longer tracked after an idle timeout"
    )));
    let default = tcpstate(&["conns", "--format", "json", "-q", "-r", &path]);
    let rows = json_lines(&default.stdout);
    assert_eq!(rows.len(), 1, "the default timeouts keep it whole");
    assert_eq!(rows[0]["expired"], false);

    for bad in ["established", "idle=3", "handshake=-1", "closing=x"] {
        let run = tcpstate(&["conns", "--idle-timeout", bad, "-r", &path]);
        assert_eq!(run.code, 2, "{bad}");
        assert!(run.stderr.contains("--idle-timeout"), "{}", run.stderr);
    }
}

#[test]
fn max_conns_zero_is_no_limit() {
    let path = capture("mixed");
    let limited = tcpstate(&["summary", "--max-conns", "50", "-r", &path]);
    assert!(
        limited.stderr.contains("connections evicted"),
        "{}",
        limited.stderr
    );
    let unlimited = tcpstate(&["summary", "--max-conns", "0", "-r", &path]);
    assert!(
        !unlimited.stderr.contains("evicted"),
        "{}",
        unlimited.stderr
    );
}

#[test]
fn without_a_command_a_file_gets_conns() {
    let path = capture("close_wait_leak");
    let bare = tcpstate(&["-r", &path, "-q"]);
    let conns = tcpstate(&["conns", "-r", &path, "-q"]);
    assert_eq!(bare.code, 0, "{}", bare.stderr);
    assert_eq!(bare.stdout, conns.stdout);
    // Not a terminal: -i streams JSON records (here it fails at once: no such interface).
    let live = tcpstate(&["-i", "no-such-interface0"]);
    assert_eq!(live.code, 1, "{}", live.stderr);
    assert!(
        live.stderr.contains("no-such-interface0"),
        "{}",
        live.stderr
    );
}

#[test]
fn events_from_a_pipe_are_the_events_of_the_file() {
    // From a pipe each transition is written when found; from the file, all at the end in
    // time order. The same transitions either way.
    for name in ["mixed", "time_wait_expiry", "synack_exhausted"] {
        let path = capture(name);
        let bytes = std::fs::read(&path).expect("read");
        let file = tcpstate(&["events", "--format", "json", "-q", "-r", &path]);
        let piped = common::tcpstate_with_stdin(
            &["events", "--format", "json", "-q", "-r", "-"],
            Some(&bytes),
        );
        assert_eq!(piped.code, 0, "{}", piped.stderr);
        let key = |r: &Value| {
            (
                r["conn"].as_u64().unwrap(),
                r["time"].as_f64().unwrap().to_bits(),
                r.to_string(),
            )
        };
        let mut a: Vec<_> = json_lines(&file.stdout).iter().map(key).collect();
        let mut b: Vec<_> = json_lines(&piped.stdout).iter().map(key).collect();
        assert!(!a.is_empty());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}");
    }
}
