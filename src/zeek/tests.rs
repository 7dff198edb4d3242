//! Whole-tracker tests on synthetic packets: one test per rule of `CONN_STATES.md` that is
//! easy to get wrong (flips, repeated letters, timers, reuse, checksums, sizes).

use super::*;
use crate::capture::RawPacket;
use crate::time::Ts;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 2];

/// A scripted capture: packets at given microsecond times.
struct Sim {
    tracker: ZeekTracker,
}

#[derive(Clone, Copy)]
struct P<'a> {
    t: i64,
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    seq: u32,
    ack: Option<u32>,
    flags: &'a str,
    len: usize,
    window: u16,
}

fn p<'a>(
    t: i64,
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    flags: &'a str,
    seq: u32,
    ack: Option<u32>,
    len: usize,
) -> P<'a> {
    P {
        t,
        from,
        to,
        seq,
        ack,
        flags,
        len,
        window: 8192,
    }
}

fn frame(p: &P<'_>) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(p.from.0, p.to.0, 64)
        .tcp(p.from.1, p.to.1, p.seq, p.window);
    for f in p.flags.chars() {
        b = match f {
            'S' => b.syn(),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => b,
        };
    }
    if let Some(a) = p.ack {
        b = b.ack(a);
    }
    let mut out = Vec::new();
    b.write(&mut out, &vec![b'x'; p.len]).unwrap();
    out
}

impl Sim {
    fn new(ignore_checksums: bool) -> Sim {
        Sim {
            tracker: ZeekTracker::new(ZeekConfig {
                ignore_checksums,
                ..ZeekConfig::default()
            }),
        }
    }

    fn feed_frame(&mut self, t: i64, f: &[u8]) {
        self.tracker.process(&RawPacket {
            ts: Ts(t * 1000),
            linktype: 1,
            data: f,
            orig_len: f.len() as u32,
            ahead: &[],
        });
    }

    fn feed(&mut self, pkts: &[P<'_>]) {
        for p in pkts {
            let f = frame(p);
            self.feed_frame(p.t, &f);
        }
    }

    fn rows(self) -> Vec<ZeekConn> {
        let mut rows = self.tracker.finish();
        rows.sort_by_key(|r| r.ts_us);
        rows
    }
}

fn run(pkts: &[P<'_>]) -> Vec<ZeekConn> {
    let mut sim = Sim::new(true);
    sim.feed(pkts);
    sim.rows()
}

const S: i64 = 1_000_000;

/// A complete, clean connection: handshake, request, response, FIN both ways.
fn clean(c: ([u8; 4], u16), s: ([u8; 4], u16)) -> Vec<P<'static>> {
    vec![
        p(0, c, s, "S", 100, None, 0),
        p(10, s, c, "S", 500, Some(101), 0),
        p(20, c, s, "", 101, Some(501), 0),
        p(30, c, s, "P", 101, Some(501), 10),
        p(40, s, c, "P", 501, Some(111), 20),
        p(50, c, s, "F", 111, Some(521), 0),
        p(60, s, c, "F", 521, Some(112), 0),
        p(70, c, s, "", 112, Some(522), 0),
    ]
}

#[test]
fn clean_connection_is_sf() {
    let rows = run(&clean((CLIENT, 40000), (SERVER, 80)));
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.conn_state, ConnState::SF);
    // The server's data packet carries its ACK: `d`, no `a`.
    assert_eq!(r.history, "ShADdFf");
    assert_eq!((r.orig_bytes, r.resp_bytes), (10, 20));
    assert_eq!((r.orig_pkts, r.resp_pkts), (5, 3));
    // The last ACK came after both sides had reported their close: not in the duration.
    assert_eq!(r.duration_us, 60);
    assert_eq!(r.orig_ip_bytes, 4 * 40 + 50);
}

#[test]
fn syn_ack_first_from_server_port_flips_at_creation() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let rows = run(&[
        p(0, s, c, "S", 500, Some(101), 0),
        p(10, c, s, "", 101, Some(501), 0),
    ]);
    assert_eq!(rows[0].history, "^hA");
    assert_eq!(rows[0].orig.port, 40000);
    assert_eq!(rows[0].conn_state, ConnState::S1);
}

#[test]
fn syn_ack_then_ack_from_same_host_flips_on_history_h() {
    // Neither port is a likely server port: no flip at creation; the H rule flips.
    let (a, b) = ((CLIENT, 1433), (SERVER, 2745));
    let rows = run(&[
        p(0, a, b, "S", 500, Some(101), 0),
        p(10, a, b, "", 501, Some(101), 0),
        p(20, a, b, "F", 501, Some(101), 0),
    ]);
    let r = &rows[0];
    assert_eq!(r.history, "^haf");
    assert_eq!((r.orig.port, r.resp.port), (2745, 1433));
    assert_eq!((r.orig_pkts, r.resp_pkts), (0, 3));
}

#[test]
fn syn_after_syn_ack_reverses_roles() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 7777));
    let rows = run(&[
        p(0, s, c, "S", 500, Some(101), 0),
        p(10, c, s, "S", 100, None, 0),
        p(20, c, s, "", 101, Some(501), 0),
    ]);
    let r = &rows[0];
    assert_eq!(r.history, "Hs^A");
    assert_eq!(r.orig.port, 40000);
    assert_eq!(r.conn_state, ConnState::S1);
    assert_eq!((r.orig_pkts, r.resp_pkts), (2, 1));
}

#[test]
fn both_ports_likely_servers_flip_towards_lower_port_only_without_syn() {
    let rows = run(&[p(0, (CLIENT, 80), (SERVER, 8080), "", 1, Some(1), 5)]);
    assert_eq!(rows[0].orig.port, 8080);
    assert_eq!(rows[0].history, "^d");
    let rows = run(&[p(0, (CLIENT, 8080), (SERVER, 80), "", 1, Some(1), 5)]);
    assert_eq!(rows[0].orig.port, 8080);
    assert_eq!(rows[0].history, "D");
}

#[test]
fn retransmitted_syn_is_one_letter_and_rsts_with_new_seq_repeat() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let rows = run(&[
        p(0, c, s, "S", 100, None, 0),
        p(S, c, s, "S", 100, None, 0),
        p(2 * S, s, c, "R", 0, Some(101), 0),
        p(2 * S + 1, s, c, "R", 0, Some(101), 0),
    ]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].history, "Sr");
    assert_eq!(rows[0].conn_state, ConnState::REJ);
    let rows = run(&[
        p(0, c, s, "", 100, Some(7), 0),
        p(10, c, s, "R", 100, None, 0),
        p(20, c, s, "R", 200, None, 0),
        p(30, c, s, "R", 300, None, 0),
    ]);
    assert_eq!(rows[0].history, "ARRR");
}

#[test]
fn retransmission_letters_are_log_scaled() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut pk = vec![
        p(0, c, s, "S", 100, None, 0),
        p(10, s, c, "S", 500, Some(101), 0),
        p(20, c, s, "", 101, Some(501), 0),
        p(30, c, s, "P", 101, Some(501), 10),
    ];
    for i in 0..12 {
        pk.push(p(40 + i, c, s, "P", 101, Some(501), 10));
    }
    let rows = run(&pk);
    // 12 retransmissions: letters at the 1st and the 10th.
    assert_eq!(rows[0].history, "ShADTT");
    assert_eq!(rows[0].orig_bytes, 10);
    assert_eq!(rows[0].orig_pkts, 15);
}

#[test]
fn zero_window_letter() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut pk = clean(c, s);
    let mut zw = p(45, c, s, "", 111, Some(521), 0);
    zw.window = 0;
    pk.insert(5, zw);
    let rows = run(&pk);
    assert_eq!(rows[0].history, "ShADdWFf");
}

#[test]
fn bad_checksum_leaves_c_and_counts_nothing() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut f = frame(&p(5, c, s, "S", 100, None, 0));
    let n = f.len();
    f[n - 20 + 16] ^= 0x55; // TCP checksum
    let mut sim = Sim::new(false);
    sim.feed_frame(5, &f);
    let rows = sim.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].history, "C");
    assert_eq!(rows[0].conn_state, ConnState::OTH);
    assert_eq!((rows[0].orig_pkts, rows[0].resp_pkts), (0, 0));
    assert_eq!(rows[0].ts_us, 5);
    // With checksums ignored the same packet is an ordinary SYN.
    let mut sim = Sim::new(true);
    sim.feed_frame(5, &f);
    assert_eq!(sim.rows()[0].conn_state, ConnState::S0);
}

#[test]
fn unanswered_syn_retransmitted_after_five_seconds_starts_a_new_row() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let rows = run(&[
        p(0, c, s, "S", 100, None, 0),
        p(3 * S, c, s, "S", 100, None, 0),
        p(9 * S, c, s, "S", 100, None, 0),
    ]);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.conn_state == ConnState::S0));
    assert_eq!((rows[0].orig_pkts, rows[1].orig_pkts), (2, 1));
    assert_eq!(rows[1].ts_us, 9 * S);
}

#[test]
fn rst_every_minute_gives_one_row_each() {
    let (c, s) = ((CLIENT, 2035), (SERVER, 80));
    let pk: Vec<P<'_>> = (0..5)
        .map(|i| p(i * 60 * S, c, s, "R", 1000, None, 0))
        .collect();
    let rows = run(&pk);
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.history == "R"
        && r.conn_state == ConnState::OTH
        && r.orig_pkts == 1
        && r.duration_us == 0));
}

#[test]
fn silence_beyond_the_inactivity_timeout_splits_the_connection() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut pk = clean(c, s);
    pk.truncate(5); // established, data exchanged, no FIN
    pk.push(p(400 * S, c, s, "P", 111, Some(521), 10));
    let rows = run(&pk);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].conn_state, ConnState::S1);
    assert_eq!(rows[1].conn_state, ConnState::OTH);
    assert_eq!(rows[1].history, "D");
    // On an interactive port (ssh) the timeout is an hour: no split.
    let mut pk = clean(c, (SERVER, 22));
    pk.truncate(5);
    pk.push(p(400 * S, c, (SERVER, 22), "P", 111, Some(521), 10));
    assert_eq!(run(&pk).len(), 1);
}

#[test]
fn new_syn_after_close_is_a_new_connection() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut pk = clean(c, s);
    pk.push(p(80, c, s, "S", 100, None, 0));
    let rows = run(&pk);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].conn_state, ConnState::SF);
    assert_eq!(rows[1].conn_state, ConnState::S0);
}

#[test]
fn responder_rst_before_handshake_is_rej_even_with_data_later() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 6649));
    let rows = run(&[
        p(0, c, s, "S", 100, None, 0),
        p(10, s, c, "R", 0, Some(101), 0),
        p(20, s, c, "S", 500, Some(101), 0),
        p(30, c, s, "P", 101, Some(501), 50),
    ]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].conn_state, ConnState::REJ);
}

#[test]
fn syn_then_ack_then_rst_is_rstos0() {
    let (c, s) = ((CLIENT, 13131), (SERVER, 31313));
    let rows = run(&[
        p(0, c, s, "S", 100, None, 0),
        p(10, s, c, "", 0, Some(101), 0),
        p(20, c, s, "R", 101, None, 0),
    ]);
    assert_eq!(rows[0].history, "SaR");
    assert_eq!(rows[0].conn_state, ConnState::RSTOS0);
}

#[test]
fn acked_but_unseen_data_is_a_gap() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut pk = clean(c, s);
    // The client's 10 bytes are lost; the server acknowledges them anyway.
    pk.remove(3);
    let rows = run(&pk);
    // The letter belongs to the side whose data is missing.
    assert_eq!(rows[0].history, "ShAdGFf");
    assert_eq!(rows[0].missed_bytes, 10);
    assert_eq!(rows[0].orig_bytes, 10);
}

#[test]
fn midstream_one_sided_fin_is_sh() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 5555));
    let rows = run(&[
        p(0, c, s, "P", 1000, Some(9000), 100),
        p(10, c, s, "P", 1100, Some(9000), 100),
        p(20, c, s, "F", 1200, Some(9000), 0),
    ]);
    let r = &rows[0];
    assert_eq!(r.history, "DF");
    assert_eq!(r.conn_state, ConnState::SH);
    assert_eq!(r.orig_bytes, 200);
    assert_eq!(r.missed_bytes, 0);
}

#[test]
fn truncated_options_create_an_empty_row() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut f = frame(&p(0, c, s, "S", 100, None, 0));
    let tcp = f.len() - 20;
    f[tcp + 12] = 0xf0; // data offset 60 bytes, beyond the packet
    let mut sim = Sim::new(true);
    sim.feed_frame(0, &f);
    let rows = sim.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].history, "");
    assert_eq!(rows[0].orig_pkts, 0);
    // Fewer than 20 TCP bytes: no connection at all.
    let mut sim = Sim::new(true);
    let mut g = frame(&p(0, c, s, "S", 100, None, 0));
    g.truncate(g.len() - 1);
    sim.feed_frame(0, &g);
    assert!(sim.rows().is_empty());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed = 0x2545_f491_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = frame(&p(0, (CLIENT, 1), (SERVER, 2), "S", 1, None, 30));
    let mut sim = Sim::new(false);
    for i in 0..20_000i64 {
        let mut f = base.clone();
        let flips = (next() % 6) as usize;
        for _ in 0..flips {
            let at = (next() as usize) % f.len();
            f[at] = next() as u8;
        }
        let cut = (next() as usize) % (f.len() + 1);
        if next() % 3 == 0 {
            f.truncate(cut);
        }
        sim.feed_frame(i * 997_331, &f);
    }
    let _ = sim.rows();
}

/// Varied traffic on a few 4-tuples over half an hour: handshakes, data, FINs, RSTs,
/// retransmitted SYNs and silences past the inactivity timeout, so timers of every kind are
/// set, cancelled and fired.
fn varied_traffic() -> Vec<P<'static>> {
    let mut seed = 0x9e37_79b9_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let flags = ["S", "S", "", "P", "F", "R", "SA"];
    let mut t = 0i64;
    let mut pkts = Vec::new();
    for _ in 0..3000 {
        t += match next() % 10 {
            0 => 400 * S,
            1..=3 => 6 * S,
            _ => (next() % 500_000) as i64,
        } / 8;
        let port = 1000 + (next() % 12) as u16;
        let (from, to) = if next() % 2 == 0 {
            ((CLIENT, port), (SERVER, 80))
        } else {
            ((SERVER, 80), (CLIENT, port))
        };
        let f = flags[(next() % flags.len() as u64) as usize];
        let seq = (next() % 4) as u32 * 1000;
        let ack = (next() % 2 == 0).then_some(seq + 500);
        pkts.push(p(t, from, to, f, seq, ack, (next() % 3) as usize * 10));
    }
    pkts
}

#[test]
fn clearing_stale_timers_changes_no_row() {
    let pkts = varied_traffic();
    let mut usual = Sim::new(true);
    usual.feed(&pkts);
    let mut clearing = Sim {
        tracker: ZeekTracker::new(ZeekConfig {
            ignore_checksums: true,
            ..ZeekConfig::default()
        })
        .clear_stale_timers_from(0),
    };
    clearing.feed(&pkts);
    let rows = usual.rows();
    assert!(rows.len() > 100, "{} rows", rows.len());
    assert_eq!(clearing.rows(), rows);
}

#[test]
fn over_max_conns_the_least_recent_are_logged_early() {
    // 40 unanswered SYNs from distinct ports within 40 ms: all open at once.
    let syns: Vec<P<'_>> = (0..40u16)
        .map(|i| {
            p(
                i64::from(i) * 1000,
                (CLIENT, 2000 + i),
                (SERVER, 80),
                "S",
                7,
                None,
                0,
            )
        })
        .collect();
    let mut limited = Sim {
        tracker: ZeekTracker::new(ZeekConfig {
            ignore_checksums: true,
            max_conns: Some(8),
            ..ZeekConfig::default()
        }),
    };
    limited.feed(&syns);
    assert_eq!(limited.tracker.open_connections(), 8);
    assert_eq!(limited.tracker.evicted(), 32);
    // The first 32 went out first, oldest first, as they stood: as an unlimited run logs them.
    let early: Vec<i64> = limited
        .tracker
        .take_finished()
        .iter()
        .map(|r| r.ts_us)
        .collect();
    assert_eq!(early, (0..32).map(|i| i * 1000).collect::<Vec<_>>());
    let mut unlimited = Sim::new(true);
    unlimited.feed(&syns);
    assert_eq!(unlimited.tracker.evicted(), 0);
    let all = unlimited.rows();
    let mut limited_all = Sim::new(true);
    limited_all.tracker = ZeekTracker::new(ZeekConfig {
        ignore_checksums: true,
        max_conns: Some(8),
        ..ZeekConfig::default()
    });
    limited_all.feed(&syns);
    assert_eq!(limited_all.rows(), all);
}
