//! Golden-output tests: the text forms of `diagnose`, `explain`, `summary` and `events` on
//! the real captures, byte for byte. After a deliberate change, review the new output and
//! rewrite the files with `UPDATE_GOLDEN=1 cargo test --test golden`.

mod common;

use common::{assert_golden, capture, tcpstate};

fn text(args: &[&str]) -> String {
    let run = tcpstate(args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    run.stdout
}

#[test]
fn diagnose_text() {
    for name in [
        "close_wait_leak",
        "syn_blackhole",
        "synack_exhausted",
        "mixed",
    ] {
        let out = text(&["diagnose", "-q", "-r", &capture(name)]);
        assert_golden(&format!("diagnose_{name}.txt"), &out);
    }
}

#[test]
fn explain_text() {
    for (name, conn) in [
        ("close_client_first", "1"),
        ("simultaneous_close", "1"),
        ("simultaneous_open", "1"),
        ("syn_blackhole", "1"),
        ("synack_exhausted", "1"),
        ("lost_final_ack", "1"),
        ("bulk_download", "1"),
    ] {
        let out = text(&["explain", "-q", "-r", &capture(name), conn]);
        assert_golden(&format!("explain_{name}.txt"), &out);
    }
}

#[test]
fn explain_by_four_tuple_draws_every_use_of_it() {
    // tw_reuse: the same 4-tuple carries two connections.
    let conns = text(&["conns", "-q", "--format", "csv", "-r", &capture("tw_reuse")]);
    let first = conns.lines().nth(1).expect("a connection");
    let cells: Vec<&str> = first.split(',').collect();
    let tuple = format!("{}-{}", cells[1], cells[2]);
    let out = text(&["explain", "-q", "-r", &capture("tw_reuse"), &tuple]);
    let headers = out.lines().filter(|l| l.starts_with("connection ")).count();
    assert_eq!(headers, 2, "{out}");
    assert_golden("explain_tw_reuse_tuple.txt", &out);
    // The same with the ends swapped.
    let swapped = format!("{}-{}", cells[2], cells[1]);
    assert_eq!(
        text(&["explain", "-q", "-r", &capture("tw_reuse"), &swapped]),
        out
    );
}

#[test]
fn explain_unknown_connection_is_exit_3() {
    let run = tcpstate(&["explain", "-q", "-r", &capture("close_client_first"), "99"]);
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("no connection 99"), "{}", run.stderr);
    let run = tcpstate(&[
        "explain",
        "-q",
        "-r",
        &capture("close_client_first"),
        "not-a-conn",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn summary_text() {
    for name in ["mixed", "time_wait_expiry"] {
        let out = text(&["summary", "-q", "-r", &capture(name)]);
        assert_golden(&format!("summary_{name}.txt"), &out);
    }
}

#[test]
fn events_text() {
    for name in [
        "close_client_first",
        "simultaneous_close",
        "time_wait_expiry",
    ] {
        let out = text(&["events", "-q", "-r", &capture(name)]);
        assert_golden(&format!("events_{name}.txt"), &out);
    }
}
