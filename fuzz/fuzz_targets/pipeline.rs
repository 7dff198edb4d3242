//! The whole pipeline on a capture file given as bytes: container reader (pcap/pcapng),
//! decoder, flow table and state machines, `finish()`, then every report built and written
//! to a sink. Errors from the reader are fine (that is exit status 1); panics are not.
#![no_main]

use std::io;
use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use tcpstate::analysis::{self, findings, summary};
use tcpstate::capture::{ContainerCounters, file};
use tcpstate::flow::{EngineConfig, IdleTimeouts};
use tcpstate::pipeline::{Engine, Watch};
use tcpstate::report::{self, conns, diagnose, events, explain, states};
use tcpstate::time::Dur;

fuzz_target!(|data: &[u8]| {
    let cfg = EngineConfig {
        time_wait: Dur::from_secs_f64(60.0),
        // Small, so that eviction runs on fuzzed inputs too.
        max_conns: Some(8),
        // Short, so that idle expiry runs on fuzzed inputs too.
        idle: IdleTimeouts {
            handshake: Dur::from_millis(1500),
            established: Dur::from_millis(3000),
            closing: Dur::from_millis(2000),
        },
    };
    let mut engine = Engine::new(cfg)
        .record_transitions(true)
        .watch(Some(Watch::Id(1)));
    let mut container = ContainerCounters::default();
    let _ = file::read_from("fuzz", data, &mut container, &mut |pkt| {
        engine.process(pkt);
        ControlFlow::Continue(())
    });
    let outcome = engine.finish();
    let p = &outcome.packets;
    // Nothing lost: every packet is tracked or counted in exactly one reason.
    assert_eq!(
        p.packets,
        p.tcp
            + p.filtered_out
            + p.not_ip
            + p.not_tcp
            + p.ip_fragments
            + p.undecodable_total()
            + p.unsupported_link
            + p.after_stop_time
    );

    let mut out = io::sink();
    let end = outcome.end_ts.unwrap_or_default();
    let rows: Vec<_> = outcome
        .connections
        .iter()
        .map(|c| analysis::summarize(c, end))
        .collect();
    let start = outcome.first_ts.map(report::secs);
    let _ = conns::write_table(&mut out, &rows, start);
    let _ = report::write_csv(&mut out, &rows);
    // The JSON lines `conns` writes from the records are serde_json's lines of their
    // summaries, byte for byte.
    let (mut from_records, mut from_rows) = (Vec::new(), Vec::new());
    let _ = report::json::write_records_json_lines(&mut from_records, &outcome.connections, end);
    let _ = report::write_json_lines(&mut from_rows, &rows);
    assert_eq!(
        String::from_utf8_lossy(&from_records),
        String::from_utf8_lossy(&from_rows)
    );

    let found = findings::diagnose(&outcome, &findings::DiagnoseConfig::default());
    let _ = diagnose::write_findings_text(&mut out, &found, start);
    let _ = diagnose::write_findings_csv(&mut out, &found);
    let _ = report::write_json_lines(&mut out, &found);

    let sum = summary::summarize_all(&outcome.connections);
    let _ = diagnose::write_summary_text(&mut out, &sum);

    let ev = events::event_rows(&outcome.transitions, &outcome.connections);
    let _ = events::write_text(&mut out, &ev, outcome.first_ts);
    let _ = report::write_csv(&mut out, &ev);

    let sel = states::Selection {
        all: true,
        host: None,
    };
    let socks = states::socket_rows(&outcome.connections, &sel);
    let _ = states::write_text(&mut out, &socks);

    let _ = report::write_counters(&mut out, &outcome, &container);
    let _ = report::counters_json(&outcome, &container);

    // The ladder of connection 1 (explain), with its packets and transitions.
    if let Some(conn) = outcome.connections.iter().find(|c| c.id == 1) {
        let summary = analysis::summarize(conn, end);
        let tr: Vec<_> = outcome
            .transitions
            .iter()
            .filter(|t| t.conn_id == conn.id)
            .copied()
            .collect();
        let _ = explain::write_ladder(
            &mut out,
            conn,
            &summary,
            &outcome.watched,
            &tr,
            &explain::Options { full: false },
        );
    }
});
