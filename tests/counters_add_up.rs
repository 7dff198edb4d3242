//! Nothing lost (issue 6): for any sequence of frames (whole TCP segments, frames cut short,
//! non-IP, IP but not TCP, non-first fragments, garbage, frames on link types tcpstate does not
//! read), with or without a filter and a stop time, every packet is either tracked or counted
//! under exactly one reason in `PacketCounters`.

mod common;

use common::tcp_frame;
use proptest::prelude::*;
use tcpstate::capture::RawPacket;
use tcpstate::capture::filter::PacketFilter;
use tcpstate::flow::{EngineConfig, IdleTimeouts};
use tcpstate::pipeline::{Engine, PacketCounters};
use tcpstate::time::{Dur, Ts};

/// One input frame and the link type it claims.
#[derive(Clone, Debug)]
struct Frame {
    linktype: i32,
    data: Vec<u8>,
    /// Milliseconds from the start; may go backwards.
    ms: i64,
}

fn tcp(port: u16, flags: u8, seq: u32, len: u16) -> Vec<u8> {
    let client = format!("10.0.0.1:{port}");
    if port.is_multiple_of(2) {
        tcp_frame(&client, "10.0.0.2:80", flags, seq, 0, len)
    } else {
        tcp_frame("10.0.0.2:80", &client, flags, seq, 0, len)
    }
}

fn frame() -> impl Strategy<Value = Vec<u8>> {
    let seg = (40000u16..40008, any::<u8>(), any::<u32>(), 0u16..100);
    prop_oneof![
        // A whole TCP segment.
        4 => seg.clone().prop_map(|(p, f, s, l)| tcp(p, f, s, l)),
        // Cut short anywhere (inside Ethernet, IP or TCP headers).
        2 => (seg.clone(), 0usize..54).prop_map(|((p, f, s, l), cut)| {
            let mut v = tcp(p, f, s, l);
            v.truncate(cut);
            v
        }),
        // ARP: not IP.
        1 => seg.clone().prop_map(|(p, f, s, l)| {
            let mut v = tcp(p, f, s, l);
            v[12..14].copy_from_slice(&[0x08, 0x06]);
            v
        }),
        // UDP: IP, not TCP.
        1 => seg.clone().prop_map(|(p, f, s, l)| {
            let mut v = tcp(p, f, s, l);
            v[23] = 17;
            v
        }),
        // A non-first fragment.
        1 => (seg.clone(), 1u16..0x1fff).prop_map(|((p, f, s, l), off)| {
            let mut v = tcp(p, f, s, l);
            v[20..22].copy_from_slice(&off.to_be_bytes());
            v
        }),
        // A damaged header byte.
        2 => (seg, 14usize..54, any::<u8>()).prop_map(|((p, f, s, l), at, b)| {
            let mut v = tcp(p, f, s, l);
            v[at] = b;
            v
        }),
        // Garbage.
        1 => proptest::collection::vec(any::<u8>(), 0..80),
    ]
}

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    proptest::collection::vec(
        (
            prop_oneof![8 => Just(1), 1 => Just(101), 1 => Just(105)],
            frame(),
            -50i64..1000,
        )
            .prop_map(|(linktype, data, ms)| Frame { linktype, data, ms }),
        0..60,
    )
}

fn accounted(c: &PacketCounters) -> u64 {
    c.tcp
        + c.filtered_out
        + c.not_ip
        + c.not_tcp
        + c.ip_fragments
        + c.undecodable_total()
        + c.unsupported_link
        + c.after_stop_time
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_packet_is_tracked_or_counted_once(
        input in frames(),
        filter in prop_oneof![Just(None), Just(Some("tcp port 80")), Just(Some("ip"))],
        stop_ms in proptest::option::of(0i64..1000),
        short_timers in any::<bool>(),
    ) {
        let start = Ts::from_parts(1_767_225_600, 0);
        let at = |ms: i64| start.plus(Dur::from_millis(ms));
        // Short timers make records end (2MSL, idle timeouts) between the packets too.
        let cfg = if short_timers {
            EngineConfig {
                time_wait: Dur::from_millis(100),
                max_conns: None,
                idle: IdleTimeouts {
                    handshake: Dur::from_millis(150),
                    established: Dur::from_millis(300),
                    closing: Dur::from_millis(200),
                },
            }
        } else {
            EngineConfig::default()
        };
        let filter = filter.map(|f| PacketFilter::new(f).expect("valid filter"));
        let mut engine = Engine::new(cfg)
            .with_filter(filter)
            .stop_after(stop_ms.map(at))
            .record_transitions(true);
        for f in &input {
            engine.process(&RawPacket {
                ts: at(f.ms),
                linktype: f.linktype,
                data: &f.data,
                orig_len: f.data.len() as u32,
                ahead: &[],
            });
        }
        let outcome = engine.finish();
        let c = &outcome.packets;
        prop_assert_eq!(c.packets, input.len() as u64);
        prop_assert_eq!(c.packets, accounted(c), "{:?}", c);
        // And the tracked ones are all in connections.
        let in_conns: u64 = outcome
            .connections
            .iter()
            .map(|conn| conn.ends.iter().map(|e| e.packets).sum::<u64>())
            .sum();
        prop_assert_eq!(in_conns, c.tcp);
    }
}
