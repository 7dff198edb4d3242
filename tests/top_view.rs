//! The live `top` view: the model fed by the real engine over committed captures, drawn
//! with ratatui's TestBackend, and the drawn text checked against what `states` and `conns`
//! report for the same capture and against the kernel's truth files.

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::mpsc::sync_channel;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use serde_json::Value;

use common::{capture, json_lines, pcaps_dir, tcpstate};
use tcpstate::capture::ContainerCounters;
use tcpstate::capture::file::read_files;
use tcpstate::flow::EngineConfig;
use tcpstate::pipeline::Engine;
use tcpstate::report::top::{
    Action, CaptureDrops, SortKey, TopConfig, TopFeed, TopFrame, TopModel, TopScreen, TopStats,
    TopView,
};
use tcpstate::tcp::TcpState;
use tcpstate::time::{Dur, Ts};

/// One model update from the engine's state, as the producer makes it.
fn update(model: &mut TopModel, engine: &mut Engine, now: Ts, drops: CaptureDrops) -> TopFrame {
    let ended = engine.take_ended();
    let stats = TopStats::from_engine(engine, drops);
    model.update(engine.connections(), &ended, now, &stats)
}

/// Replays a committed capture through the engine, updating the model every `tick` of
/// packet time (and after the last packet); returns every frame and the engine.
fn replay(name: &str, tick: Dur) -> (Vec<TopFrame>, TopModel, Engine) {
    let mut engine = Engine::new(EngineConfig::default());
    let mut model = TopModel::new(TopConfig {
        title: name.to_string(),
        ..TopConfig::default()
    });
    let mut frames = Vec::new();
    let mut next: Option<Ts> = None;
    read_files(
        &[capture(name)],
        &mut ContainerCounters::default(),
        &mut |pkt| {
            engine.process(pkt);
            let now = engine.now().expect("a packet sets the clock");
            let due = *next.get_or_insert(now);
            if now >= due {
                frames.push(update(
                    &mut model,
                    &mut engine,
                    now,
                    CaptureDrops::default(),
                ));
                next = Some(now.plus(tick));
            }
            ControlFlow::Continue(())
        },
    )
    .expect("read capture");
    let end = engine.now().expect("capture has packets");
    frames.push(update(
        &mut model,
        &mut engine,
        end,
        CaptureDrops::default(),
    ));
    (frames, model, engine)
}

fn last(frames: &[TopFrame]) -> &TopFrame {
    frames.last().expect("at least one frame")
}

/// The screen as text, one string per line.
fn draw(screen: &TopScreen, w: u16, h: u16) -> Vec<String> {
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    term.draw(|f| screen.draw(f)).expect("draw");
    let buf = term.backend().buffer();
    (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
        .collect()
}

fn screen_with(frame: TopFrame) -> TopScreen {
    let mut s = TopScreen::new(TopView::new());
    s.on_frame(frame);
    s
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn type_filter(screen: &mut TopScreen, text: &str) {
    assert_eq!(screen.on_key(key('/')), Action::Redraw);
    for c in text.chars() {
        screen.on_key(key(c));
    }
    assert_eq!(screen.on_key(code(KeyCode::Enter)), Action::Redraw);
}

/// The table's body rows: lines after the `ID ...` header, up to the status line.
fn table_rows(lines: &[String]) -> Vec<String> {
    let head = lines
        .iter()
        .position(|l| l.trim_start().starts_with("ID "))
        .expect("table header on screen");
    lines[head + 1..]
        .iter()
        .take_while(|l| !l.starts_with("sort ") && !l.starts_with(" PAUSED"))
        .filter(|l| !l.trim().is_empty())
        .cloned()
        .collect()
}

fn row_id(line: &str) -> u64 {
    line.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no id at the start of {line:?}"))
}

/// Count per state of `tcpstate states --format json -r CAPTURE` (listener rows apart).
fn states_command(name: &str) -> BTreeMap<String, u64> {
    let run = tcpstate(&["states", "--format", "json", "-r", &capture(name)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut counts = BTreeMap::new();
    for row in json_lines(&run.stdout) {
        if row["conn"] != 0 {
            *counts
                .entry(row["state"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Count per state of the sockets `ss` listed at the end of the capture (the truth file).
fn truth_counts(name: &str) -> BTreeMap<String, u64> {
    let path = pcaps_dir().join(format!("{name}.truth.json"));
    let truth: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("truth file")).expect("json");
    let mut counts = BTreeMap::new();
    for s in truth["snapshot"]["sockets"].as_array().expect("sockets") {
        *counts
            .entry(s["state"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// The frame's counts of the states a socket exists in (what `states` and `ss` list).
fn socket_counts(f: &TopFrame) -> BTreeMap<String, u64> {
    f.states
        .iter()
        .filter(|(s, n)| s.has_socket() && *n > 0)
        .map(|(s, n)| (s.name().to_string(), n))
        .collect()
}

fn conns_command(name: &str) -> Vec<Value> {
    let run = tcpstate(&["conns", "--format", "json", "-r", &capture(name)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    json_lines(&run.stdout)
}

#[test]
fn header_counts_match_states_and_the_kernel() {
    for name in ["close_wait_leak", "mixed"] {
        let (frames, _, _) = replay(name, Dur::from_millis(100));
        let f = last(&frames);
        let ours = socket_counts(f);
        assert_eq!(ours, states_command(name), "{name}: against `states`");
        assert_eq!(ours, truth_counts(name), "{name}: against ss at the end");
    }
}

#[test]
fn header_shows_counts_in_netstat_order_close_wait_leak() {
    let (frames, _, _) = replay("close_wait_leak", Dur::from_millis(100));
    let f = last(&frames);
    // The server side of the connection that closed normally is CLOSED beside the
    // client's TIME_WAIT; no other endpoint is closed.
    assert_eq!(f.states.get(TcpState::Closed), 1);
    assert_eq!(f.open, 4);
    assert_eq!(f.stats.connections, 4);
    assert_eq!(f.stats.packets, 37);
    let lines = draw(&screen_with(f.clone()), 200, 20);
    assert!(
        lines[0].starts_with("tcpstate top: close_wait_leak"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("open 4  just closed 0"), "{}", lines[0]);
    assert!(lines[0].contains("packets 37 (tcp 37)"), "{}", lines[0]);
    assert_eq!(
        lines[1].trim_end(),
        "ESTABLISHED 0  SYN_SENT 0  SYN_RECV 0  FIN_WAIT1 0  FIN_WAIT2 3  TIME_WAIT 1  \
         CLOSED 1  CLOSE_WAIT 3  LAST_ACK 0  LISTEN 0  CLOSING 0"
    );
    assert!(
        lines[2].starts_with(
            "handshake failures 0 (refused 0, unanswered 0, not completed 0)  resets 0"
        ),
        "{}",
        lines[2]
    );
}

#[test]
fn mixed_counts_failures_and_resets_as_summary_does() {
    let (frames, _, _) = replay("mixed", Dur::from_millis(100));
    let f = last(&frames);
    // summary: 25 refused (port 5118), 28 SO_LINGER aborts; 203 TIME_WAITs face a CLOSED peer.
    assert_eq!(f.failures.refused, 25);
    assert_eq!(f.failures.total(), 25);
    assert_eq!(f.resets, 28);
    assert_eq!(f.states.get(TcpState::Closed), 203);
    assert_eq!(f.states.get(TcpState::Established), 0);
    assert_eq!(f.open, 203 + 44);
    assert_eq!(f.stats.connections, 300);
    // ~300 connections over ~5 s of capture.
    let mid = &frames[frames.len() / 2];
    assert!(
        (20.0..200.0).contains(&mid.conn_rate),
        "rate {}",
        mid.conn_rate
    );
    let lines = draw(&screen_with(f.clone()), 200, 30);
    assert!(
        lines[2].starts_with(
            "handshake failures 25 (refused 25, unanswered 0, not completed 0)  resets 28"
        ),
        "{}",
        lines[2]
    );
}

#[test]
fn rows_show_each_connection_as_conns_reports_it() {
    let (frames, _, _) = replay("close_wait_leak", Dur::from_millis(100));
    let lines = draw(&screen_with(last(&frames).clone()), 160, 20);
    let rows = table_rows(&lines);
    let conns = conns_command("close_wait_leak");
    assert_eq!(rows.len(), conns.len());
    for c in &conns {
        let id = c["id"].as_u64().expect("id");
        let line = rows
            .iter()
            .find(|l| row_id(l) == id)
            .unwrap_or_else(|| panic!("no row for connection {id}: {rows:#?}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        // ID CLIENT SERVER CLIENT-STATE dur SERVER-STATE dur AGE IDLE PKTS BYTES
        assert_eq!(words[1], c["client"].as_str().unwrap_or_default(), "{line}");
        assert_eq!(words[2], c["server"].as_str().unwrap_or_default(), "{line}");
        assert_eq!(
            words[3],
            c["client_state"].as_str().unwrap_or_default(),
            "{line}"
        );
        assert_eq!(
            words[5],
            c["server_state"].as_str().unwrap_or_default(),
            "{line}"
        );
        let pkts =
            c["client_packets"].as_u64().unwrap_or(0) + c["server_packets"].as_u64().unwrap_or(0);
        let bytes =
            c["client_bytes"].as_u64().unwrap_or(0) + c["server_bytes"].as_u64().unwrap_or(0);
        assert_eq!(words[9], pkts.to_string(), "{line}");
        assert_eq!(words[10], bytes.to_string(), "{line}");
    }
    // Connection 1: the client closed 2.05 s before the end and waits in FIN_WAIT2; the
    // server has sat in CLOSE_WAIT since the client's FIN.
    let one = rows.iter().find(|l| row_id(l) == 1).expect("row 1");
    assert!(
        one.contains("127.0.0.1:59186")
            && one.contains("FIN_WAIT2 2.0s")
            && one.contains("CLOSE_WAIT 2.0s"),
        "{one}"
    );
}

#[test]
fn sort_key_changes_the_order() {
    let (frames, _, _) = replay("mixed", Dur::from_millis(100));
    let f = last(&frames).clone();
    // Every connection: 247 open and the 53 reset or refused within the last 5 s, closed.
    assert_eq!((f.open, f.lingering), (247, 53));
    let on_screen: Vec<u64> = f.rows.iter().map(|r| r.id).collect();
    let conns = conns_command("mixed");
    let mut screen = screen_with(f);
    let ids = |s: &TopScreen| -> Vec<u64> {
        table_rows(&draw(s, 160, 40))
            .iter()
            .map(|l| row_id(l))
            .collect()
    };
    // Age, oldest first: id order (ids are given in start order). 40 lines: 3 of header,
    // the table's header, 34 rows, status and help.
    let by_age = ids(&screen);
    assert_eq!(by_age.len(), 34);
    assert!(by_age.windows(2).all(|w| w[0] < w[1]), "{by_age:?}");
    assert!(draw(&screen, 160, 40)[38].starts_with("sort age (oldest first)"));

    screen.on_key(key('r'));
    let newest = ids(&screen);
    assert!(newest.windows(2).all(|w| w[0] > w[1]), "{newest:?}");
    assert_eq!(newest[0], 300);
    screen.on_key(key('r'));

    // s steps age -> idle -> packets.
    screen.on_key(key('s'));
    assert_eq!(screen.view.sort, SortKey::Idle);
    screen.on_key(key('s'));
    assert_eq!(screen.view.sort, SortKey::Packets);
    let lines = draw(&screen, 160, 40);
    assert!(
        lines[38].starts_with("sort packets (most first)"),
        "{}",
        lines[38]
    );
    let by_packets: Vec<u64> = table_rows(&lines).iter().map(|l| row_id(l)).collect();
    // Expected from `conns`: the connections on screen by packets, most first, ties by id.
    let mut expect: Vec<(u64, u64)> = conns
        .iter()
        .filter(|c| on_screen.contains(&c["id"].as_u64().unwrap_or(0)))
        .map(|c| {
            let p = c["client_packets"].as_u64().unwrap_or(0)
                + c["server_packets"].as_u64().unwrap_or(0);
            (p, c["id"].as_u64().unwrap_or(0))
        })
        .collect();
    expect.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let expect: Vec<u64> = expect
        .into_iter()
        .map(|(_, id)| id)
        .take(by_packets.len())
        .collect();
    assert_eq!(by_packets, expect);
    assert_ne!(by_packets, by_age[..by_packets.len()].to_vec());

    // state: CLOSE_WAIT/FIN_WAIT2 pairs (FIN_WAIT2 ranks 4th) before TIME_WAIT/CLOSED (6th).
    screen.on_key(key('s'));
    screen.on_key(key('s'));
    assert_eq!(screen.view.sort, SortKey::State);
    // Then both CLOSED: the resets and refusals, lingering.
    let rows = table_rows(&draw(&screen, 160, 400));
    assert_eq!(rows.len(), 300);
    assert!(
        rows[..44]
            .iter()
            .all(|l| l.contains("FIN_WAIT2") && l.contains("CLOSE_WAIT"))
    );
    assert!(
        rows[44..247]
            .iter()
            .all(|l| l.contains("TIME_WAIT") && l.contains("CLOSED"))
    );
    assert!(
        rows[247..]
            .iter()
            .all(|l| l.matches("CLOSED").count() == 2 && l.contains("closed"))
    );
}

#[test]
fn filter_shows_only_matching_rows() {
    let (frames, _, _) = replay("mixed", Dur::from_millis(100));
    let mut screen = screen_with(last(&frames).clone());
    type_filter(&mut screen, "CLOSE_WAIT");
    let lines = draw(&screen, 160, 60);
    let rows = table_rows(&lines);
    assert_eq!(rows.len(), 44);
    assert!(
        rows.iter()
            .all(|l| l.contains("FIN_WAIT2") && l.contains("CLOSE_WAIT"))
    );
    assert!(
        lines[58]
            .starts_with("sort age (oldest first)  filter CLOSE_WAIT  rows 1-44 of 44 (of 300)"),
        "{}",
        lines[58]
    );

    // A port: only the connection from that client port.
    let (frames, _, _) = replay("close_wait_leak", Dur::from_millis(100));
    let mut screen = screen_with(last(&frames).clone());
    type_filter(&mut screen, "port 59188");
    let rows = table_rows(&draw(&screen, 160, 20));
    assert_eq!(rows.len(), 1);
    assert_eq!(row_id(&rows[0]), 2);
    assert!(rows[0].contains("127.0.0.1:59188"));

    // The server's port matches all four; a state and a port together must both match.
    // The prompt opens with the filter in force, to edit.
    screen.on_key(key('/'));
    for _ in 0.."port 59188".len() {
        screen.on_key(code(KeyCode::Backspace));
    }
    for c in ":5004 time-wait".chars() {
        screen.on_key(key(c));
    }
    screen.on_key(code(KeyCode::Enter));
    let rows = table_rows(&draw(&screen, 160, 20));
    assert_eq!(rows.iter().map(|l| row_id(l)).collect::<Vec<_>>(), vec![4]);

    // A bad term keeps the prompt open with the reason and the old filter in force.
    screen.on_key(key('/'));
    for c in " bogus".chars() {
        screen.on_key(key(c));
    }
    screen.on_key(code(KeyCode::Enter));
    assert!(screen.view.prompt_open());
    let lines = draw(&screen, 160, 20);
    assert!(
        lines[18].contains("'bogus': expected a state"),
        "{}",
        lines[18]
    );
    assert!(
        lines[19].starts_with("filter> :5004 time-wait bogus"),
        "{}",
        lines[19]
    );
    assert_eq!(table_rows(&lines).len(), 1);
    // Esc leaves the prompt; c clears the filter.
    assert_eq!(screen.on_key(code(KeyCode::Esc)), Action::Redraw);
    assert!(!screen.view.prompt_open());
    screen.on_key(key('c'));
    assert_eq!(table_rows(&draw(&screen, 160, 20)).len(), 4);
}

#[test]
fn pause_freezes_the_screen_until_resumed() {
    let (frames, _, _) = replay("close_wait_leak", Dur(0));
    // An early frame: only the first connection, still ESTABLISHED on both sides.
    let early = frames
        .iter()
        .find(|f| f.states.get(TcpState::Established) == 2)
        .expect("a frame with one established connection")
        .clone();
    let mut screen = screen_with(early);
    assert_eq!(screen.on_key(key('p')), Action::Redraw);
    assert!(
        !screen.on_frame(last(&frames).clone()),
        "no redraw while paused"
    );
    let lines = draw(&screen, 160, 20);
    assert!(lines[0].contains("[paused]"), "{}", lines[0]);
    assert!(lines[1].starts_with("ESTABLISHED 2"), "{}", lines[1]);
    assert!(lines[18].starts_with(" PAUSED "), "{}", lines[18]);
    assert_eq!(table_rows(&lines).len(), 1);
    // Space resumes and shows the newest frame that arrived meanwhile.
    assert_eq!(screen.on_key(key(' ')), Action::Redraw);
    let lines = draw(&screen, 160, 20);
    assert!(!lines[0].contains("[paused]"));
    assert!(lines[1].starts_with("ESTABLISHED 0"), "{}", lines[1]);
    assert_eq!(table_rows(&lines).len(), 4);
}

#[test]
fn closed_connection_lingers_marked_then_goes() {
    // refused: three SYNs 0.2 s apart, each answered by RST: both sides CLOSED at once.
    let mut engine = Engine::new(EngineConfig::default());
    let mut model = TopModel::new(TopConfig::default());
    let mut first_end: Option<Ts> = None;
    read_files(
        &[capture("refused")],
        &mut ContainerCounters::default(),
        &mut |pkt| {
            engine.process(pkt);
            let now = engine.now().expect("clock");
            let f = update(&mut model, &mut engine, now, CaptureDrops::default());
            if first_end.is_none() && f.lingering == 1 {
                first_end = Some(now);
            }
            ControlFlow::Continue(())
        },
    )
    .expect("read");
    let t0 = first_end.expect("the first refusal ends a connection");
    let at = |model: &mut TopModel, engine: &mut Engine, ms: i64| {
        update(
            model,
            engine,
            t0.plus(Dur::from_millis(ms)),
            CaptureDrops::default(),
        )
    };
    let f = at(&mut model, &mut engine, 4_900);
    assert_eq!(f.lingering, 3);
    assert_eq!(f.open, 0);
    assert_eq!(f.failures.refused, 3);
    assert_eq!(
        f.states.iter().map(|(_, n)| n).sum::<u64>(),
        0,
        "closed rows are not counted"
    );
    let rows = table_rows(&draw(&screen_with(f), 160, 20));
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|l| l.contains("closed, refused") && l.contains("CLOSED")),
        "{rows:?}"
    );

    // 5 s after it ended the first goes; the others ended 0.2 and 0.4 s later.
    let f = at(&mut model, &mut engine, 5_000);
    assert_eq!(f.rows.iter().map(|r| r.id).collect::<Vec<_>>().len(), 2);
    assert!(f.rows.iter().all(|r| r.id != 1));
    let f = at(&mut model, &mut engine, 5_500);
    assert!(f.rows.is_empty());
    let lines = draw(&screen_with(f), 160, 20);
    assert!(table_rows(&lines).is_empty());
    assert!(lines[0].contains("open 0  just closed 0"), "{}", lines[0]);
    // Counted once, whatever the number of updates.
    assert_eq!(at(&mut model, &mut engine, 6_000).failures.refused, 3);
}

#[test]
fn superseded_record_lingers_beside_its_successor() {
    // tw_reuse: connection 1 ends when the client reconnects from the same port; the
    // engine hands its record over as ended and connection 2 takes the 4-tuple.
    let (frames, mut model, mut engine) = replay("tw_reuse", Dur::from_millis(1));
    let f = last(&frames);
    let one = f
        .rows
        .iter()
        .find(|r| r.id == 1)
        .expect("connection 1 lingers");
    let ended = one.ended.expect("marked closed");
    assert!(f.rows.iter().any(|r| r.id == 2 && r.ended.is_none()));
    let rows = table_rows(&draw(&screen_with(f.clone()), 160, 20));
    let line = rows.iter().find(|l| row_id(l) == 1).expect("row 1");
    assert!(
        line.ends_with("closed") || line.trim_end().ends_with("closed"),
        "{line}"
    );
    assert!(line.contains("127.0.0.1:47296"));
    assert_eq!(
        f.states.get(TcpState::Established),
        2,
        "only connection 2 counts"
    );

    let gone = ended.plus(Dur::from_millis(5_000));
    let f = update(&mut model, &mut engine, gone, CaptureDrops::default());
    assert_eq!(f.rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn narrow_and_tiny_terminals_draw_what_fits() {
    let (frames, _, _) = replay("close_wait_leak", Dur::from_millis(100));
    let mut f = last(&frames).clone();
    f.stats.drops = CaptureDrops {
        kernel: 5,
        interface: 2,
    };
    let screen = screen_with(f);
    let lines = draw(&screen, 60, 10);
    assert!(
        lines[0].starts_with("tcpstate top: close_wait_leak"),
        "{}",
        lines[0]
    );
    // The state counts wrap at the width instead of being cut.
    assert!(
        lines[1].starts_with("ESTABLISHED 0  SYN_SENT 0  SYN_RECV 0"),
        "{}",
        lines[1]
    );
    assert!(
        lines.iter().any(|l| l.contains("CLOSE_WAIT 3")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("DROPPED 7 packets")),
        "{lines:#?}"
    );
    // Columns drop out to fit: the ID and both states stay.
    let head = lines
        .iter()
        .find(|l| l.starts_with("ID "))
        .expect("table header");
    assert!(
        head.contains("CLIENT STATE") && head.contains("SERVER STATE"),
        "{head}"
    );
    assert!(!head.contains("IDLE"), "{head}");
    assert!(lines[9].starts_with("q quit"), "{}", lines[9]);
    for (w, h) in [
        (0, 0),
        (1, 1),
        (5, 3),
        (20, 4),
        (60, 10),
        (61, 2),
        (300, 1),
        (1, 100),
    ] {
        draw(&screen, w, h);
    }
}

#[test]
fn drops_are_highlighted_with_a_warning() {
    let (frames, _, _) = replay("close_wait_leak", Dur::from_millis(100));
    let mut f = last(&frames).clone();
    let clean = draw(&screen_with(f.clone()), 120, 20);
    assert!(!clean.iter().any(|l| l.contains("DROPPED")));
    f.stats.drops = CaptureDrops {
        kernel: 1200,
        interface: 34,
    };
    let screen = screen_with(f);
    let mut term = Terminal::new(TestBackend::new(120, 20)).expect("terminal");
    term.draw(|fr| screen.draw(fr)).expect("draw");
    let buf = term.backend().buffer();
    let y = (0..20u16)
        .find(|&y| buf[(0, y)].symbol() == "D")
        .expect("a line starting DROPPED");
    let line: String = (0..120).map(|x| buf[(x, y)].symbol()).collect();
    assert!(
        line.starts_with("DROPPED 1234 packets (kernel 1200, interface 34): states may be wrong"),
        "{line}"
    );
    // Right under the counts, in white on red.
    assert!(y <= 4, "line {y}");
    assert_eq!(buf[(0, y)].bg, Color::Red);
    assert_eq!(buf[(0, y)].fg, Color::White);
}

#[test]
fn scrolling_moves_through_the_rows_and_stops_at_the_ends() {
    let (frames, _, _) = replay("mixed", Dur::from_millis(100));
    let mut screen = screen_with(last(&frames).clone());
    // 20 lines: 3 header lines, the table header, 14 rows, status and help.
    let first = |s: &TopScreen| row_id(&table_rows(&draw(s, 160, 20))[0]);
    let top = first(&screen);
    screen.on_key(code(KeyCode::Down));
    assert!(first(&screen) > top);
    screen.on_key(code(KeyCode::Up));
    screen.on_key(code(KeyCode::Up));
    assert_eq!(first(&screen), top);
    screen.on_key(code(KeyCode::End));
    let lines = draw(&screen, 160, 20);
    assert!(lines[18].contains("rows 287-300 of 300"), "{}", lines[18]);
    for _ in 0..5 {
        screen.on_key(code(KeyCode::PageDown));
    }
    assert!(draw(&screen, 160, 20)[18].contains("rows 287-300 of 300"));
    screen.on_key(code(KeyCode::PageUp));
    assert!(draw(&screen, 160, 20)[18].contains("rows 273-286 of 300"));
    screen.on_key(code(KeyCode::Home));
    assert!(draw(&screen, 160, 20)[18].contains("rows 1-14 of 300"));
}

#[test]
fn quit_keys() {
    let mut view = TopView::new();
    assert_eq!(view.handle_key(key('q')), Action::Quit);
    assert_eq!(view.handle_key(code(KeyCode::Esc)), Action::Quit);
    assert_eq!(
        view.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
    // Typing a filter, q is a letter, but Ctrl-C still quits.
    view.handle_key(key('/'));
    assert_eq!(view.handle_key(key('q')), Action::Redraw);
    assert_eq!(
        view.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
    assert_eq!(view.handle_key(code(KeyCode::F(5))), Action::None);
}

#[test]
fn connection_rate_spans_the_window() {
    let mut model = TopModel::new(TopConfig::default());
    let none: Vec<tcpstate::flow::Connection> = Vec::new();
    let mut at = |ms: i64, conns: u64| {
        let stats = TopStats {
            connections: conns,
            ..TopStats::default()
        };
        model
            .update(none.iter(), &[], Ts(0).plus(Dur::from_millis(ms)), &stats)
            .conn_rate
    };
    assert_eq!(at(0, 0), 0.0);
    assert_eq!(at(500, 10), 20.0);
    assert_eq!(at(1_000, 20), 20.0);
    // From the newest sample at least 1 s old (t = 1.0 s, 20 connections).
    assert_eq!(at(2_000, 50), 30.0);
    assert_eq!(at(2_000, 50), 30.0, "no packet time passed: same base");
}

#[test]
fn feed_drops_frames_not_packets_and_notices_the_screen_leaving() {
    let (tx, rx) = sync_channel(1);
    let mut feed = TopFeed::new(TopModel::new(TopConfig::default()), tx);
    let mut engine = Engine::new(EngineConfig::default());
    read_files(
        &[capture("close_wait_leak")],
        &mut ContainerCounters::default(),
        &mut |pkt| {
            engine.process(pkt);
            ControlFlow::Continue(())
        },
    )
    .expect("read");
    assert!(feed.tick(&mut engine, CaptureDrops::default()));
    assert!(feed.tick(
        &mut engine,
        CaptureDrops {
            kernel: 3,
            interface: 0
        }
    ));
    assert_eq!(feed.frames_dropped, 1);
    let f = rx.try_recv().expect("the first frame");
    assert_eq!(f.states.get(TcpState::CloseWait), 3);
    assert_eq!(f.stats.drops.kernel, 0);
    assert!(rx.try_recv().is_err(), "the second was dropped, not queued");
    // A wall clock later than the last packet moves ages; TIME_WAIT runs out after 60 s.
    let later = engine.now().expect("clock").plus(Dur::from_millis(61_000));
    assert!(feed.tick_at(&mut engine, later, CaptureDrops::default()));
    let f = rx.try_recv().expect("a frame");
    assert_eq!(f.states.get(TcpState::TimeWait), 0);
    assert_eq!(f.open, 3);
    drop(rx);
    assert!(!feed.tick(&mut engine, CaptureDrops::default()));
}

/// A file gets one frame, at its end: its records are taken in as they end (counted, and
/// kept as rows only while they linger), not all held for that frame and shown as if they
/// had just closed.
#[test]
fn a_file_takes_in_records_as_they_end() {
    // Ten connections open and close in the first second; their TIME_WAITs run out at about
    // 61 s, while an eleventh goes on to 200 s.
    let server = "10.0.0.2:80";
    let mut recs = Vec::new();
    for i in 0..10u64 {
        let client = format!("10.0.0.1:{}", 40000 + i);
        let t = i * 50;
        recs.extend(common::opened_and_closed(
            &client,
            server,
            (1000, 2000),
            [t, t + 1, t + 2, t + 3, t + 4, t + 5],
        ));
    }
    let long = "10.0.0.1:50000";
    recs.push(common::rec_at(
        900,
        common::tcp_frame(long, server, 0x02, 5, 0, 0),
    ));
    recs.push(common::rec_at(
        901,
        common::tcp_frame(server, long, 0x12, 9, 6, 0),
    ));
    for s in 1..=20u64 {
        let ack = common::tcp_frame(long, server, 0x10, 6, 10, 0);
        recs.push(common::rec_at(900 + s * 10_000, ack));
    }
    let bytes = common::pcap_bytes(&recs);
    let frame_of = |as_they_end: bool| {
        let mut engine = Engine::new(EngineConfig::default());
        let mut model = TopModel::new(TopConfig::default());
        let _: ControlFlow<()> = tcpstate::capture::file::read_from(
            "synthetic",
            &bytes[..],
            &mut ContainerCounters::default(),
            &mut |pkt| {
                engine.process(pkt);
                if as_they_end {
                    let ended = engine.take_ended();
                    model.take_in_ended(&ended, engine.now().expect("clock"));
                }
                ControlFlow::Continue(())
            },
        )
        .expect("read capture");
        let end = engine.now().expect("packets");
        update(&mut model, &mut engine, end, CaptureDrops::default())
    };
    let (taken, held) = (frame_of(true), frame_of(false));
    assert_eq!(held.lingering, 10, "the ten closed ones, as if just closed");
    assert_eq!(taken.lingering, 0);
    assert_eq!(taken.open, 1);
    let linger = TopConfig::default().linger;
    assert_eq!(taken.failures, held.failures);
    assert_eq!(taken.resets, held.resets);
    assert_eq!((taken.open, &taken.states), (held.open, &held.states));
    assert!(
        taken
            .rows
            .iter()
            .filter_map(|r| r.ended)
            .all(|at| taken.now < at.plus(linger)),
        "a row past its linger"
    );
}
