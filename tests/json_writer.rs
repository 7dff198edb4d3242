//! The hand-written `conns` JSON writer (issue 5) writes the same bytes as serde_json, for
//! the rows of every capture in `pcaps/`, with every optional field both set and unset.

mod common;

use std::ops::ControlFlow;

use tcpstate::analysis::{ConnSummary, summarize};
use tcpstate::capture::ContainerCounters;
use tcpstate::capture::file::read_from;
use tcpstate::flow::EngineConfig;
use tcpstate::pipeline::{Engine, Outcome};
use tcpstate::report::json::{write_conn_json_lines, write_records_json_lines};

fn run(path: &std::path::Path) -> Outcome {
    let mut engine = Engine::new(EngineConfig::default());
    let file = std::fs::File::open(path).expect("capture opens");
    let mut counters = ContainerCounters::default();
    let _ = read_from(
        &path.display().to_string(),
        std::io::BufReader::new(file),
        &mut counters,
        &mut |p| {
            engine.process(p);
            ControlFlow::Continue(())
        },
    )
    .expect("capture reads");
    engine.finish()
}

fn serde(rows: &[ConnSummary]) -> String {
    rows.iter()
        .map(|r| serde_json::to_string(r).expect("serializes") + "\n")
        .collect()
}

fn ours(rows: &[ConnSummary]) -> String {
    let mut out = Vec::new();
    write_conn_json_lines(&mut out, rows).expect("writing to a Vec");
    String::from_utf8(out).expect("UTF-8")
}

/// Every `Option` set (to `v` or a name) or, with `None`, unset.
fn options(mut r: ConnSummary, v: Option<f64>) -> ConnSummary {
    let name = v.map(|_| "CLOSE_WAIT");
    for f in [
        &mut r.syn_to_synack,
        &mut r.synack_to_ack,
        &mut r.handshake_time,
        &mut r.first_fin_time,
        &mut r.half_close_duration,
        &mut r.reset_time,
        &mut r.client_time_wait_start,
        &mut r.client_time_wait_duration,
        &mut r.server_time_wait_start,
        &mut r.server_time_wait_duration,
    ] {
        *f = f.or(v).filter(|_| v.is_some());
    }
    for f in [
        &mut r.first_closer,
        &mut r.reset_by,
        &mut r.reset_sender_state,
        &mut r.reset_receiver_state,
        &mut r.client_time_wait_end,
        &mut r.server_time_wait_end,
    ] {
        *f = f.or(name).filter(|_| name.is_some());
    }
    r
}

#[test]
fn every_capture_matches_serde_json() {
    let mut paths: Vec<_> = std::fs::read_dir(common::pcaps_dir())
        .expect("pcaps/ lists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 20, "captures found: {}", paths.len());
    let mut rows_seen = 0;
    for path in &paths {
        let outcome = run(path);
        let end = outcome.end_ts.unwrap_or_default();
        let rows: Vec<_> = outcome
            .connections
            .iter()
            .map(|c| summarize(c, end))
            .collect();
        assert!(!rows.is_empty(), "{}", path.display());
        rows_seen += rows.len();
        let want = serde(&rows);
        assert_eq!(ours(&rows), want, "{}", path.display());

        // Straight from the records, addresses formatted into the buffer: the same bytes.
        let mut direct = Vec::new();
        write_records_json_lines(&mut direct, &outcome.connections, end).expect("to a Vec");
        assert_eq!(
            String::from_utf8(direct).expect("UTF-8"),
            want,
            "{}",
            path.display()
        );

        for v in [
            None,
            Some(0.0),
            Some(1e-7),
            Some(123456789.123456),
            Some(1e21),
        ] {
            let varied: Vec<_> = rows.iter().map(|r| options(r.clone(), v)).collect();
            assert_eq!(ours(&varied), serde(&varied), "{} {v:?}", path.display());
        }
    }
    assert!(rows_seen > 20);
}
