//! `events` writes its text and JSON lines straight from the transitions and records; these
//! must be the lines the row-based writers make (cells through `write_table_line`, rows
//! through serde_json), on every committed capture.

mod common;

use std::path::PathBuf;

use common::pcaps_dir;
use tcpstate::capture::ContainerCounters;
use tcpstate::capture::file::read_files;
use tcpstate::flow::EngineConfig;
use tcpstate::pipeline::Engine;
use tcpstate::report::{self, events, json};

/// Every capture in `pcaps/` and under `tests/`.
fn captures() -> Vec<PathBuf> {
    let root = pcaps_dir()
        .parent()
        .expect("pcaps/ has a parent")
        .to_path_buf();
    let mut found = Vec::new();
    let mut dirs = vec![root.join("pcaps"), root.join("tests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable folder") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "pcap" || e == "pcapng")
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn direct_lines_equal_the_row_writers() {
    let mut transitions_seen = 0;
    let mut checked = 0;
    for path in captures() {
        let mut engine = Engine::new(EngineConfig::default()).record_transitions(true);
        // Corrupt and cut captures stop early: what was read still counts.
        let _ = read_files(
            &[path.display().to_string()],
            &mut ContainerCounters::default(),
            &mut |pkt| {
                engine.process(pkt);
                std::ops::ControlFlow::Continue(())
            },
        );
        let first = engine.first_time();
        let outcome = engine.finish();
        let (ts, conns) = (&outcome.transitions, &outcome.connections);
        let rows = events::event_rows(ts, conns);
        transitions_seen += rows.len();

        let mut direct = Vec::new();
        events::write_text_transitions(&mut direct, ts, conns, first).unwrap();
        let mut by_rows = Vec::new();
        events::write_text(&mut by_rows, &rows, first).unwrap();
        assert_eq!(
            String::from_utf8(direct).unwrap(),
            String::from_utf8(by_rows).unwrap(),
            "text of {}",
            path.display()
        );

        let mut direct = Vec::new();
        json::write_transitions_json_lines(&mut direct, ts, conns).unwrap();
        let mut by_rows = Vec::new();
        report::write_json_lines(&mut by_rows, &rows).unwrap();
        assert_eq!(
            String::from_utf8(direct).unwrap(),
            String::from_utf8(by_rows).unwrap(),
            "JSON of {}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} captures found");
    assert!(
        transitions_seen > 1000,
        "only {transitions_seen} transitions"
    );
}
