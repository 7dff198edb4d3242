//! `events` writes its text and JSON lines straight from the transitions and records; these
//! must be the lines the row-based writers make (cells through `write_table_line`, rows
//! through serde_json), on every committed capture. From a file it reads twice and streams;
//! from a pipe it holds every transition: both must write the same.

mod common;

use std::path::PathBuf;

use common::{
    opened_and_closed, pcap_bytes, pcaps_dir, rec_at, tcp_frame, tcpstate, tcpstate_with_stdin,
};
use tcpstate::capture::ContainerCounters;
use tcpstate::capture::file::read_files;
use tcpstate::flow::EngineConfig;
use tcpstate::pipeline::Engine;
use tcpstate::report::{self, events, json};
use tcpstate::tcp::machine::Event;

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

/// A file is read twice and streamed, a pipe (here `/dev/stdin`) read once with every
/// transition held to the end: the same rows, in every format, on every committed capture.
#[test]
fn streamed_from_a_file_as_held_from_a_pipe() {
    let mut compared = 0;
    for path in captures() {
        let bytes = std::fs::read(&path).expect("read capture");
        let file = path.display().to_string();
        for format in ["text", "json", "csv"] {
            // Looking for what can be written after every packet: a transition found late
            // (a timer run at a record's next packet or at a sweep) must still go out in order.
            let streamed = tcpstate(&[
                "events",
                "-q",
                "--write-every",
                "1",
                "--format",
                format,
                "-r",
                &file,
            ]);
            let held = tcpstate_with_stdin(
                &["events", "-q", "--format", format, "-r", "/dev/stdin"],
                Some(&bytes),
            );
            assert_eq!(streamed.stdout, held.stdout, "{format} of {file}");
            assert_eq!(streamed.code, held.code, "{format} of {file}");
            compared += usize::from(!streamed.stdout.is_empty());
        }
    }
    assert!(compared >= 60, "only {compared} non-empty outputs");
}

/// A timer found late: connection A's TIME_WAIT (1 s here) runs out at 1.2 s, but nothing
/// looks at A until the sweep after its record's deadline (2.1 s), by when connection B has
/// opened (1.05 s) and closed. A's expiry must still be written before B's later rows.
#[test]
fn a_timer_found_late_is_written_in_time_order() {
    let (a, b, s) = ("10.0.0.1:40000", "10.0.0.1:40001", "10.0.0.2:80");
    // A's client closes first: its TIME_WAIT starts at 200 ms. B's SYN comes with the second
    // sweep (one a second from the first packet), before A's deadline; the third, at 2.1 s,
    // ends A and only then runs its timer.
    let mut recs = opened_and_closed(a, s, (100, 500), [0, 1, 2, 100, 200, 300]);
    recs.extend(opened_and_closed(
        b,
        s,
        (700, 900),
        [1050, 1051, 1052, 1500, 1600, 1700],
    ));
    recs.push(rec_at(2100, tcp_frame(b, s, 0x10, 702, 902, 0)));
    let dir = std::env::temp_dir().join(format!("tcpstate-late-timer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("late.pcap");
    std::fs::write(&path, pcap_bytes(&recs)).unwrap();
    let file = path.display().to_string();
    let args = |more: &[&'static str]| {
        let mut v = vec!["events", "-q", "--time-wait", "1", "--format", "json"];
        v.extend_from_slice(more);
        v
    };
    let mut streamed_args = args(&["--write-every", "1", "-r"]);
    streamed_args.push(&file);
    let streamed = tcpstate(&streamed_args);
    let bytes = std::fs::read(&path).unwrap();
    let held = tcpstate_with_stdin(&args(&["-r", "/dev/stdin"]), Some(&bytes));
    std::fs::remove_dir_all(&dir).ok();
    let times: Vec<f64> = common::json_lines(&streamed.stdout)
        .iter()
        .map(|row| row["time"].as_f64().expect("a time"))
        .collect();
    let expiry = common::json_lines(&streamed.stdout)
        .iter()
        .position(|row| row["event"] == "time_wait_expired")
        .expect("A's TIME_WAIT runs out in the capture");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "{}",
        streamed.stdout
    );
    assert!(
        expiry < times.len() - 1,
        "rows after the expiry: {}",
        streamed.stdout
    );
    assert_eq!(streamed.stdout, held.stdout);
}

/// Attempts evicted under `--max-conns` have no record and are not reported: streamed from a
/// file, the rows around them must still all be written (CSV rows after the last reported
/// transition of a look used to be lost when the look ended on an evicted attempt's).
#[test]
fn rows_around_evicted_attempts_are_all_written() {
    let server = "10.0.0.2:80";
    let mut recs = Vec::new();
    for i in 0..40u64 {
        // An unanswered SYN, then a whole connection, from ports of their own.
        let lone = format!("10.0.0.1:{}", 20000 + i);
        recs.push(rec_at(i * 10, tcp_frame(&lone, server, 0x02, 1000, 0, 0)));
        let client = format!("10.0.0.1:{}", 30000 + i);
        let t = i * 10 + 1;
        recs.extend(opened_and_closed(
            &client,
            server,
            (5000, 9000),
            [t, t + 1, t + 2, t + 3, t + 4, t + 5],
        ));
    }
    recs.sort_by_key(|r| r.nanos());
    let dir = std::env::temp_dir().join(format!("tcpstate-evicted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("evicted.pcap");
    std::fs::write(&path, pcap_bytes(&recs)).unwrap();
    let file = path.display().to_string();
    let bytes = std::fs::read(&path).unwrap();
    for format in ["text", "json", "csv"] {
        let base = ["events", "-q", "--max-conns", "4", "--format", format];
        let held = tcpstate_with_stdin(&[&base[..], &["-r", "/dev/stdin"]].concat(), Some(&bytes));
        assert_eq!(held.code, 0, "{}", held.stderr);
        // Every whole connection's opening is reported.
        let opened = held.stdout.matches("sent_syn_ack").count();
        assert!(
            opened >= 40,
            "{format}: {opened} openings in {}",
            held.stdout
        );
        for every in ["1", "3", "65536"] {
            let streamed = tcpstate(&[&base[..], &["--write-every", every, "-r", &file]].concat());
            assert_eq!(
                streamed.stdout, held.stdout,
                "{format}, a look every {every}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A timer run out but not run yet (nothing looks at its record until its next packet, its
/// idle end or the end of input) no longer holds back what can be written: its transition is
/// handed over ahead, once, and is the one the engine makes when the timer runs.
#[test]
fn an_overdue_timer_is_taken_ahead_once() {
    let server = "10.0.0.2:80";
    // An unanswered SYN at 0: with no retransmission by 2.4 s its sender has given up.
    let mut recs = vec![rec_at(
        0,
        tcp_frame("10.0.0.1:20000", server, 0x02, 7, 0, 0),
    )];
    // Another connection goes on to 5 s.
    recs.extend(opened_and_closed(
        "10.0.0.1:30000",
        server,
        (100, 200),
        [100, 101, 102, 4000, 4100, 5000],
    ));
    let bytes = pcap_bytes(&recs);
    let mut engine = Engine::new(EngineConfig::default()).record_transitions(true);
    let read = tcpstate::capture::file::read_from(
        "synthetic",
        &bytes[..],
        &mut ContainerCounters::default(),
        &mut |pkt| {
            engine.process(pkt);
            std::ops::ControlFlow::Continue(())
        },
    );
    assert!(read.is_ok());
    let found = engine.take_transitions();
    assert!(found.iter().all(|t| t.event != Event::HandshakeGaveUp));
    let mut ahead = Vec::new();
    let mark = engine.transition_watermark_ahead(|_| 0, |t| ahead.push(t));
    assert_eq!(
        mark,
        engine.now(),
        "the overdue give-up no longer holds it back"
    );
    assert_eq!(ahead.len(), 1, "{ahead:?}");
    let gave_up = ahead[0];
    assert_eq!(gave_up.event, Event::HandshakeGaveUp);
    assert_eq!(gave_up.ts.0 - recs[0].nanos() as i64, 2_400_000_000);
    // Taken already: not handed over again.
    let side_bit = 1 << gave_up.side.index();
    let mut again = Vec::new();
    engine.transition_watermark_ahead(
        |id| if id == gave_up.conn_id { side_bit } else { 0 },
        |t| again.push(t),
    );
    assert!(again.is_empty(), "{again:?}");
    // When the timer runs (here at the end), the engine makes the same transition.
    let outcome = engine.finish();
    assert_eq!(
        outcome
            .transitions
            .iter()
            .filter(|t| t.event == Event::HandshakeGaveUp)
            .collect::<Vec<_>>(),
        vec![&gave_up]
    );
}
