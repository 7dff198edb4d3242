//! Unit tests per state (a fixture reaches the state, one segment goes in, the state comes
//! out) and property tests of the machine's invariants over random segment sequences.

use proptest::prelude::*;
use tcpstate::decode::{Segment, SockAddr, flags::*};
use tcpstate::flow::conn::{Side, TimeWaitEnd, Transition};
use tcpstate::flow::{Connection, EngineConfig, FlowTable};
use tcpstate::tcp::TcpState::{self, *};
use tcpstate::tcp::machine::{Event, next_state};
use tcpstate::time::{Dur, Ts};

const CLIENT: &str = "10.0.0.1:40000";
const SERVER: &str = "10.0.0.2:80";

/// A scripted conversation: each side's next sequence number is tracked so fixtures read
/// like a ladder diagram.
struct Dialog {
    table: FlowTable,
    cfg: EngineConfig,
    now: Ts,
    packet: u64,
    nxt: [u32; 2],
    transitions: Vec<Transition>,
}

impl Dialog {
    fn new() -> Dialog {
        Dialog {
            table: FlowTable::new(),
            cfg: EngineConfig::default(),
            now: Ts(1_000_000_000_000_000_000),
            packet: 0,
            nxt: [1000, 5000],
            transitions: Vec::new(),
        }
    }

    fn addr(side: Side) -> SockAddr {
        (if side == Side::Client { CLIENT } else { SERVER })
            .parse()
            .unwrap()
    }

    /// Sends from `side` with explicit seq/ack, after `ms` milliseconds.
    fn raw(&mut self, side: Side, fl: u8, seq: u32, ack: u32, len: u32, ms: i64) -> &mut Self {
        self.now = self.now.plus(Dur::from_millis(ms));
        self.packet += 1;
        let seg = Segment {
            src: Self::addr(side),
            dst: Self::addr(side.other()),
            seq,
            ack,
            flags: fl,
            window: 1000,
            wscale: None,
            payload_len: len,
        };
        let mut sink = Some(&mut self.transitions);
        self.table
            .on_segment(&seg, self.now, self.packet, &self.cfg, &mut sink);
        self
    }

    /// Sends from `side` at its next sequence number, acknowledging all the peer sent.
    fn send(&mut self, side: Side, fl: u8, len: u32) -> &mut Self {
        let (me, peer) = (side.index(), side.other().index());
        let seq = self.nxt[me];
        let ack = if fl & ACK != 0 { self.nxt[peer] } else { 0 };
        self.nxt[me] = seq.wrapping_add(len + (fl & SYN != 0) as u32 + (fl & FIN != 0) as u32);
        self.raw(side, fl, seq, ack, len, 1)
    }
    fn c(&mut self, fl: u8) -> &mut Self {
        self.send(Side::Client, fl, 0)
    }
    fn s(&mut self, fl: u8) -> &mut Self {
        self.send(Side::Server, fl, 0)
    }

    fn finish(self, extra: Dur) -> (Vec<Connection>, Vec<Transition>) {
        let mut tr = self.transitions;
        let mut sink = Some(&mut tr);
        let conns = self
            .table
            .finish(self.now.plus(extra), &self.cfg, &mut sink);
        (conns, tr)
    }

    fn states(self) -> (TcpState, TcpState) {
        let (conns, _) = self.finish(Dur(0));
        let c = conns.last().expect("a connection");
        (c.end(Side::Client).state, c.end(Side::Server).state)
    }
}

fn established() -> Dialog {
    let mut d = Dialog::new();
    d.c(SYN).s(SYN | ACK).c(ACK);
    d
}

// ---- one fixture per state ----

#[test]
fn closed_client_sends_syn_enters_syn_sent() {
    let mut d = Dialog::new();
    d.c(SYN);
    assert_eq!(d.states(), (SynSent, Listen));
}

#[test]
fn listen_answers_syn_enters_syn_recv() {
    let mut d = Dialog::new();
    d.c(SYN).s(SYN | ACK);
    assert_eq!(d.states(), (Established, SynRecv));
}

#[test]
fn syn_sent_takes_rst_only_if_it_acks_the_syn() {
    let mut d = Dialog::new();
    d.c(SYN).raw(Side::Server, RST, 0, 0, 0, 1);
    assert_eq!(
        d.states(),
        (SynSent, Listen),
        "a RST without ACK is not acceptable in SYN_SENT"
    );
    let mut d = Dialog::new();
    d.c(SYN).raw(Side::Server, RST | ACK, 0, 1001, 0, 1);
    let (conns, _) = d.finish(Dur(0));
    assert_eq!(conns[0].end(Side::Client).state, Closed);
    assert_eq!(conns[0].handshake().name(), "refused");
}

#[test]
fn syn_recv_takes_the_third_ack_into_established() {
    assert_eq!(established().states(), (Established, Established));
}

#[test]
fn established_takes_fin_into_close_wait() {
    let mut d = established();
    d.c(FIN | ACK);
    assert_eq!(d.states(), (FinWait1, CloseWait));
}

#[test]
fn fin_wait1_takes_ack_of_fin_into_fin_wait2() {
    let mut d = established();
    d.c(FIN | ACK).s(ACK);
    assert_eq!(d.states(), (FinWait2, CloseWait));
}

#[test]
fn fin_wait1_ack_short_of_the_fin_changes_nothing() {
    let mut d = established();
    d.c(FIN | ACK).raw(Side::Server, ACK, 5001, 1001, 0, 1);
    assert_eq!(d.states().0, FinWait1);
}

#[test]
fn fin_wait1_takes_fin_ack_straight_into_time_wait() {
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK);
    assert_eq!(d.states(), (TimeWait, LastAck));
}

#[test]
fn fin_wait2_takes_fin_into_time_wait() {
    let mut d = established();
    d.c(FIN | ACK).s(ACK).s(FIN | ACK).c(ACK);
    assert_eq!(d.states(), (TimeWait, Closed));
}

#[test]
fn close_wait_sends_fin_into_last_ack() {
    let mut d = established();
    d.c(FIN | ACK).s(ACK).s(FIN | ACK);
    assert_eq!(d.states(), (TimeWait, LastAck));
}

#[test]
fn crossed_fins_go_through_closing() {
    let mut d = established();
    // Both FINs acknowledge only the data, not the other's FIN: they crossed.
    d.raw(Side::Client, FIN | ACK, 1001, 5001, 0, 1)
        .raw(Side::Server, FIN | ACK, 5001, 1001, 0, 0);
    let (conns, tr) = d.finish(Dur(0));
    assert_eq!(
        (
            conns[0].end(Side::Client).state,
            conns[0].end(Side::Server).state
        ),
        (Closing, Closing)
    );
    assert!(tr.iter().any(|t| t.to == Closing));
    let mut d = established();
    d.raw(Side::Client, FIN | ACK, 1001, 5001, 0, 1)
        .raw(Side::Server, FIN | ACK, 5001, 1001, 0, 0)
        .raw(Side::Client, ACK, 1002, 5002, 0, 1)
        .raw(Side::Server, ACK, 5002, 1002, 0, 0);
    assert_eq!(d.states(), (TimeWait, TimeWait));
}

#[test]
fn last_ack_takes_the_last_ack_into_closed() {
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK).c(ACK);
    assert_eq!(d.states(), (TimeWait, Closed));
}

#[test]
fn time_wait_ends_after_2msl_of_packet_time() {
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK).c(ACK);
    let (conns, _) = d.finish(Dur::from_millis(59_000));
    assert_eq!(conns[0].end(Side::Client).state, TimeWait);
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK).c(ACK);
    let (conns, _) = d.finish(Dur::from_millis(60_001));
    let client = conns[0].end(Side::Client);
    assert_eq!(client.state, Closed);
    let tw = conns[0].time_wait(Side::Client).unwrap();
    assert_eq!(tw.end.unwrap().1, TimeWaitEnd::Expired);
    assert_eq!(tw.end.unwrap().0.since(tw.start), Dur::from_millis(60_000));
}

#[test]
fn retransmitted_fin_restarts_time_wait() {
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK).c(ACK);
    // The server's FIN again, 30 s later: the client's TIME_WAIT starts over.
    d.raw(Side::Server, FIN | ACK, 5001, 1002, 0, 30_000);
    let (conns, _) = d.finish(Dur::from_millis(45_000));
    assert_eq!(
        conns[0].end(Side::Client).state,
        TimeWait,
        "restarted 45 s ago, 60 s not up"
    );
}

#[test]
fn new_syn_takes_over_a_server_time_wait() {
    let mut d = established();
    d.s(FIN | ACK).c(FIN | ACK).s(ACK);
    d.nxt[0] = 90_000;
    d.c(SYN).s(SYN | ACK).c(ACK);
    let (conns, _) = d.finish(Dur(0));
    assert_eq!(conns.len(), 2);
    let tw = conns[0].time_wait(Side::Server).unwrap();
    assert_eq!(tw.end.unwrap().1, TimeWaitEnd::Reused);
    assert_eq!(conns[0].end(Side::Server).state, Closed);
    assert_eq!(
        (
            conns[1].end(Side::Client).state,
            conns[1].end(Side::Server).state
        ),
        (Established, Established)
    );
}

#[test]
fn a_new_attempt_from_the_same_port_closes_the_abandoned_one() {
    let mut d = Dialog::new();
    // An unanswered SYN, then a new socket on the same port with a new ISN.
    d.raw(Side::Client, SYN, 1000, 0, 0, 0)
        .raw(Side::Client, SYN, 777_000, 0, 0, 500);
    let (conns, tr) = d.finish(Dur(0));
    assert_eq!(conns.len(), 2);
    assert_eq!(
        conns[0].end(Side::Client).state,
        Closed,
        "the abandoned socket is gone"
    );
    assert_eq!(conns[1].end(Side::Client).state, SynSent);
    let t = tr
        .iter()
        .find(|t| t.conn_id == conns[0].id && t.to == Closed)
        .unwrap();
    assert_eq!(t.event, Event::Superseded);
}

// ---- idle timeouts and the end of records ----

#[test]
fn an_idle_established_connection_expires_with_its_states() {
    let mut d = established();
    d.cfg.idle.established = Dur::from_millis(10_000);
    let last = d.now;
    // Over 10 s of silence, then the client speaks again: the old record ended at its deadline
    // with both sides still ESTABLISHED, and this packet starts a mid-stream pickup.
    d.c(ACK);
    assert_eq!(d.table.len(), 1);
    let before = d.now;
    d.raw(Side::Client, PSH | ACK, 1001, 5001, 5, 10_001);
    assert_eq!(d.table.counters.expired_idle, 1);
    let ended = d.table.take_ended();
    assert_eq!(ended.len(), 1);
    let old = &ended[0];
    assert_eq!(
        old.expired_at().get(),
        Some(before.plus(Dur::from_millis(10_000)))
    );
    assert!(old.last > last);
    assert_eq!(
        (old.end(Side::Client).state, old.end(Side::Server).state),
        (Established, Established)
    );
    let (conns, _) = d.finish(Dur(0));
    assert_eq!(conns.len(), 1, "only the pickup is left");
    assert!(conns[0].partial);
    assert!(conns[0].expired_at().is_none());
}

#[test]
fn a_packet_at_the_idle_timeout_keeps_the_connection() {
    let mut d = established();
    d.cfg.idle.established = Dur::from_millis(10_000);
    d.raw(Side::Client, PSH | ACK, 1001, 5001, 5, 10_000);
    assert_eq!(d.table.counters.expired_idle, 0);
    assert!(d.table.take_ended().is_empty());
}

#[test]
fn a_closed_connection_ends_2msl_after_its_last_packet() {
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK).c(ACK);
    let last = d.now;
    // Another connection's packets move the clock on; sweeps end the first record once it
    // has been silent for 2MSL, its TIME_WAIT run out, and it is not marked expired.
    let other: SockAddr = "10.0.0.9:50000".parse().unwrap();
    for step in 1..=70 {
        let seg = Segment {
            src: other,
            dst: Dialog::addr(Side::Server),
            seq: 1,
            ack: 0,
            flags: SYN,
            window: 1000,
            wscale: None,
            payload_len: 0,
        };
        let at = last.plus(Dur::from_millis(1000 * step));
        d.table
            .on_segment(&seg, at, 100 + step as u64, &d.cfg, &mut None);
        let ended = d.table.take_ended();
        if at.since(last) <= d.cfg.time_wait {
            assert!(ended.is_empty(), "ended early, at {step} s");
        } else if let Some(conn) = ended.first() {
            assert!(conn.expired_at().is_none());
            assert_eq!(conn.end(Side::Client).state, Closed);
            let tw = conn.time_wait(Side::Client).unwrap();
            assert_eq!(tw.end.unwrap().1, TimeWaitEnd::Expired);
            assert_eq!(d.table.counters.expired_idle, 0);
            // A sweep comes at most 10 s of packet time later.
            assert!(at.since(last) <= d.cfg.time_wait.plus_secs(10), "{step}");
            return;
        }
    }
    panic!("the closed connection never ended");
}

trait PlusSecs {
    fn plus_secs(self, s: i64) -> Dur;
}
impl PlusSecs for Dur {
    fn plus_secs(self, s: i64) -> Dur {
        Dur(self.0 + s * 1_000_000_000)
    }
}

#[test]
fn an_unanswered_syn_gives_up_and_ends() {
    let mut d = Dialog::new();
    d.raw(Side::Client, SYN, 1000, 0, 0, 0);
    assert!(d.table.take_ended().is_empty());
    // The handshake timeout ends the record; a later SYN with the same ISN is not a
    // retransmission of a record long gone but a new attempt.
    d.raw(Side::Client, SYN, 1000, 0, 0, 181_000);
    let ended = d.table.take_ended();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].end(Side::Client).state, Closed, "gave up");
    assert!(ended[0].expired_at().is_none(), "over, so not an expiry");
    assert_eq!(d.table.len(), 1);
}

#[test]
fn state_at_runs_the_timers_without_changing_the_record() {
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK).c(ACK);
    let last = d.now;
    let cfg = d.cfg;
    let conn = d.table.live().next().expect("tracked");
    let tw_start = conn.time_wait(Side::Client).expect("in TIME_WAIT").start;
    let at = |ms| conn.state_at(Side::Client, tw_start.plus(Dur::from_millis(ms)), &cfg);
    assert_eq!(at(0), TimeWait);
    assert_eq!(at(59_999), TimeWait);
    assert_eq!(at(60_000), Closed);
    assert_eq!(
        conn.end(Side::Client).state,
        TimeWait,
        "the record is unchanged"
    );
    assert_eq!(conn.state_at(Side::Server, last, &cfg), Closed);
}

#[test]
fn late_packets_after_close_make_no_phantom_connection() {
    let mut d = established();
    d.c(FIN | ACK).s(FIN | ACK).c(ACK);
    d.raw(Side::Server, FIN | ACK, 5001, 1002, 0, 100)
        .raw(Side::Client, RST, 1002, 0, 0, 1)
        .raw(Side::Client, ACK, 1002, 5002, 0, 1);
    let (conns, _) = d.finish(Dur(0));
    assert_eq!(conns.len(), 1);
}

#[test]
fn exact_rst_closes_both_sides_and_names_the_sender() {
    let mut d = established();
    d.send(Side::Client, ACK | PSH, 100);
    d.raw(Side::Server, RST, 5001, 0, 0, 1);
    let (conns, _) = d.finish(Dur(0));
    let c = &conns[0];
    assert_eq!(
        (c.end(Side::Client).state, c.end(Side::Server).state),
        (Closed, Closed)
    );
    let r = c.reset().unwrap();
    assert_eq!((r.by, r.sender_state), (Side::Server, Established));
}

#[test]
fn out_of_window_and_inexact_rsts_do_not_close() {
    let mut d = established();
    d.raw(Side::Server, RST, 5001 + 1_000_000, 0, 0, 1)
        .raw(Side::Server, RST, 5001 + 10, 0, 0, 1);
    let (conns, _) = d.finish(Dur(0));
    let c = &conns[0];
    assert_eq!(
        (c.end(Side::Client).state, c.end(Side::Server).state),
        (Established, Established)
    );
    assert_eq!(c.anomalies().rst_out_of_window, 1);
    assert_eq!(c.anomalies().rst_in_window_not_exact, 1);
}

#[test]
fn keepalive_probes_are_not_data() {
    let mut d = established();
    d.send(Side::Client, ACK | PSH, 10);
    d.raw(Side::Client, ACK, 1010, 5001, 0, 1000)
        .raw(Side::Client, ACK, 1010, 5001, 1, 1000);
    let (conns, _) = d.finish(Dur(0));
    assert_eq!(conns[0].end(Side::Client).bytes, 10);
    assert_eq!(conns[0].end(Side::Client).state, Established);
}

#[test]
fn retransmitted_syns_are_counted_and_the_client_gives_up() {
    let mut d = Dialog::new();
    d.raw(Side::Client, SYN, 1000, 0, 0, 0)
        .raw(Side::Client, SYN, 1000, 0, 0, 1000)
        .raw(Side::Client, SYN, 1000, 0, 0, 1000);
    let (conns, _) = d.finish(Dur::from_millis(1500));
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].syn_retransmits(Side::Client), 2);
    assert_eq!(
        conns[0].end(Side::Client).state,
        SynSent,
        "next retry could still come"
    );
    let mut d = Dialog::new();
    d.raw(Side::Client, SYN, 1000, 0, 0, 0)
        .raw(Side::Client, SYN, 1000, 0, 0, 1000);
    let (conns, _) = d.finish(Dur::from_millis(5000));
    assert_eq!(conns[0].end(Side::Client).state, Closed);
    assert!(conns[0].end(Side::Client).inferred);
}

#[test]
fn midstream_pickup_is_partial_with_a_guessed_direction() {
    let mut d = Dialog::new();
    d.raw(Side::Server, ACK | PSH, 7000, 3000, 100, 0);
    let (conns, _) = d.finish(Dur(0));
    assert!(conns[0].partial && conns[0].direction_guessed);
    assert_eq!(
        conns[0].end(Side::Server).addr.port,
        80,
        "port 80 is taken as the server"
    );
}

// ---- properties ----

fn segment_strategy() -> impl Strategy<Value = (bool, u8, u32, u32, u32, i64)> {
    (
        any::<bool>(),
        any::<u8>(),
        prop_oneof![0u32..3000, 4000u32..8000, any::<u32>()],
        prop_oneof![0u32..3000, 4000u32..8000, any::<u32>()],
        prop_oneof![Just(0u32), 1u32..1500],
        0i64..70_000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// No panic on any segment sequence, and every recorded transition is one the table allows.
    #[test]
    fn only_legal_transitions(segs in proptest::collection::vec(segment_strategy(), 1..60)) {
        let mut d = established();
        for (from_client, fl, seq, ack, len, ms) in segs {
            let side = if from_client { Side::Client } else { Side::Server };
            d.raw(side, fl, seq, ack, len, ms);
        }
        let (_, transitions) = d.finish(Dur::from_millis(1000));
        for t in &transitions {
            prop_assert_eq!(next_state(t.from, t.event), Some(t.to), "illegal {:?}", t);
        }
    }

    /// Nothing leaves TIME_WAIT but time, a new SYN taking the tuple over, or a reset: an
    /// in-sequence RST received (Linux's TIME_WAIT assassination, tcp_rfc1337=0) or a RST
    /// sent (Linux kills the TIME_WAIT socket that answers with a RST).
    #[test]
    fn time_wait_left_only_by_time_syn_or_exact_rst(segs in proptest::collection::vec(segment_strategy(), 1..40)) {
        let mut d = established();
        d.c(FIN | ACK).s(FIN | ACK).c(ACK);
        for (from_client, fl, seq, ack, len, ms) in segs {
            let side = if from_client { Side::Client } else { Side::Server };
            d.raw(side, fl, seq, ack, len, ms);
        }
        let (_, transitions) = d.finish(Dur(0));
        for t in transitions.iter().filter(|t| t.from == TimeWait) {
            prop_assert!(matches!(t.event, Event::TimeWaitExpired | Event::Superseded | Event::RecvRst | Event::SentRst), "{:?}", t);
        }
    }

    /// A RST outside the receiver's window never closes anything.
    #[test]
    fn out_of_window_rst_never_closes(offset in 70_000u32..(u32::MAX - 70_000), from_client in any::<bool>()) {
        let mut d = established();
        let side = if from_client { Side::Client } else { Side::Server };
        let base = d.nxt[side.index()];
        d.raw(side, RST, base.wrapping_add(offset), 0, 0, 1);
        prop_assert_eq!(d.states(), (Established, Established));
    }
}
