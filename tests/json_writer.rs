//! The hand-written `conns` JSON writer (issue 5), which writes each line straight from the
//! connection record, writes the bytes serde_json writes for the record's summary, for every
//! capture in `pcaps/`.

mod common;

use std::ops::ControlFlow;

use tcpstate::analysis::{ConnSummary, summarize};
use tcpstate::capture::ContainerCounters;
use tcpstate::capture::file::read_from;
use tcpstate::flow::EngineConfig;
use tcpstate::pipeline::{Engine, Outcome};
use tcpstate::report::json::write_records_json_lines;

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
        let mut direct = Vec::new();
        write_records_json_lines(&mut direct, &outcome.connections, end).expect("to a Vec");
        assert_eq!(
            String::from_utf8(direct).expect("UTF-8"),
            want,
            "{}",
            path.display()
        );
    }
    assert!(rows_seen > 20);
}
