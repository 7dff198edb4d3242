//! Reports: what the user reads. Text for people, JSON lines for programs.

pub mod conns;
pub mod diagnose;
pub mod events;
pub mod explain;
pub mod json;
pub mod line;
pub mod packet;
pub mod records_behind;
pub mod states;
pub mod top;
pub mod write_behind;

use std::io::{self, Write};

use serde::Serialize;

use crate::capture::ContainerCounters;
use crate::capture::live::LiveStats;
use crate::decode::DecodeError;
use crate::pipeline::Outcome;

/// The counts of everything not tracked or doubtful, one line each, only those not zero.
pub fn write_counters(
    out: &mut dyn Write,
    o: &Outcome,
    container: &ContainerCounters,
) -> io::Result<()> {
    let p = &o.packets;
    let f = &o.flows;
    let mut lines: Vec<(String, u64)> = vec![
        ("packets read".into(), p.packets),
        ("tcp packets tracked".into(), p.tcp),
        ("connections".into(), f.connections),
        ("connections tracked at once, at most".into(), f.peak_live),
    ];
    let mut doubtful: Vec<(String, u64)> = vec![
        ("filtered out by the expression".into(), p.filtered_out),
        ("not IP".into(), p.not_ip),
        ("IP but not TCP".into(), p.not_tcp),
        ("non-first IP fragments skipped".into(), p.ip_fragments),
        (
            format!(
                "on an unsupported link type{}",
                if container.unsupported_linktypes.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> = container
                        .unsupported_linktypes
                        .iter()
                        .map(|l| crate::decode::linktype_name(*l))
                        .collect();
                    format!(" ({})", names.join(", "))
                }
            ),
            p.unsupported_link,
        ),
        (
            "timestamp earlier than the packet before".into(),
            p.time_went_backwards,
        ),
        (
            "tracked, but IPv4 total length below the header length (capture length used)".into(),
            p.ipv4_total_below_header,
        ),
        (
            "tracked, but IP length beyond an uncut frame (length field used)".into(),
            p.ip_length_beyond_frame,
        ),
        (
            "after the --at time (not applied)".into(),
            p.after_stop_time,
        ),
        (
            "connections picked up mid-stream".into(),
            f.midstream_pickups,
        ),
        ("4-tuples reused by a new connection".into(), f.tuple_reuses),
        (
            "  of them while one side was in TIME_WAIT".into(),
            f.time_wait_reuses,
        ),
        (
            "connections evicted to stay within --max-conns".into(),
            f.evicted,
        ),
        (
            "  of them half-open attempts dropped (counted per server)".into(),
            f.evicted_half_open,
        ),
        (
            "connections no longer tracked after an idle timeout".into(),
            f.expired_idle,
        ),
        (
            "records longer than the snap length".into(),
            container.caplen_over_snaplen,
        ),
        (
            "pcapng packets on an undeclared interface".into(),
            container.unknown_interface,
        ),
        (
            "pcapng blocks without packets skipped".into(),
            container.skipped_blocks,
        ),
    ];
    for e in DecodeError::ALL {
        doubtful.push((
            format!("undecodable: {}", e.key()),
            p.undecodable[e.index()],
        ));
    }
    let a = &o.anomalies;
    let (oow, inw, unexplained, late) = (
        a.rst_out_of_window,
        a.rst_in_window_not_exact,
        a.unexplained,
        a.after_close,
    );
    doubtful.push(("RSTs out of window (ignored)".into(), oow));
    doubtful.push((
        "RSTs in window but not exact (challenge ACK, ignored)".into(),
        inw,
    ));
    doubtful.push((
        "segments the state machine had no rule for".into(),
        unexplained,
    ));
    doubtful.push(("segments after both sides closed".into(), late));
    lines.extend(doubtful.into_iter().filter(|(_, n)| *n > 0));
    for (what, n) in lines {
        writeln!(out, "tcpstate: {n:>10}  {what}")?;
    }
    Ok(())
}

/// The counters as one JSON object, for programs.
pub fn counters_json(o: &Outcome, container: &ContainerCounters) -> serde_json::Value {
    let p = &o.packets;
    let f = &o.flows;
    let mut undecodable = serde_json::Map::new();
    for e in DecodeError::ALL {
        undecodable.insert(e.key().into(), p.undecodable[e.index()].into());
    }
    serde_json::json!({
        "type": "counters",
        "packets": p.packets,
        "tcp_packets": p.tcp,
        "connections": f.connections,
        "peak_live_connections": f.peak_live,
        "filtered_out": p.filtered_out,
        "not_ip": p.not_ip,
        "not_tcp": p.not_tcp,
        "ip_fragments": p.ip_fragments,
        "unsupported_link": p.unsupported_link,
        "time_went_backwards": p.time_went_backwards,
        "after_stop_time": p.after_stop_time,
        "ipv4_total_below_header": p.ipv4_total_below_header,
        "ip_length_beyond_frame": p.ip_length_beyond_frame,
        "midstream_pickups": f.midstream_pickups,
        "evicted": f.evicted,
        "evicted_half_open": f.evicted_half_open,
        "expired_idle": f.expired_idle,
        "tuple_reuses": f.tuple_reuses,
        "time_wait_reuses": f.time_wait_reuses,
        "caplen_over_snaplen": container.caplen_over_snaplen,
        "pcapng_unknown_interface": container.unknown_interface,
        "pcapng_skipped_blocks": container.skipped_blocks,
        "undecodable": undecodable,
        "rst_out_of_window": o.anomalies.rst_out_of_window,
        "rst_in_window_not_exact": o.anomalies.rst_in_window_not_exact,
        "unexplained_segments": o.anomalies.unexplained,
        "packets_after_close": o.anomalies.after_close,
    })
}

pub use crate::time::epoch_secs as secs;

/// One JSON object per line.
pub fn write_json_lines<T: Serialize>(out: &mut dyn Write, rows: &[T]) -> io::Result<()> {
    for r in rows {
        // io::Error::from keeps a broken pipe a broken pipe.
        serde_json::to_writer(&mut *out, r).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A header row from the field names, then one row per record; unset values are empty
/// cells, numbers raw.
pub fn write_csv<T: Serialize>(out: &mut dyn Write, rows: &[T]) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    for r in rows {
        w.serialize(r).map_err(csv_to_io)?;
    }
    w.flush()
}

/// CSV rows written one at a time, as `write_csv` writes them all: a header row from the
/// first row's field names.
pub struct CsvRows<'a> {
    writer: csv::Writer<&'a mut dyn Write>,
}

impl<'a> CsvRows<'a> {
    pub fn new(out: &'a mut dyn Write) -> CsvRows<'a> {
        CsvRows {
            writer: csv::Writer::from_writer(out),
        }
    }

    pub fn row<T: Serialize>(&mut self, row: &T) -> io::Result<()> {
        self.writer.serialize(row).map_err(csv_to_io)
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// CSV rows written in batches as they come: the header row only with the first batch.
pub fn write_csv_rows<T: Serialize>(
    out: &mut dyn Write,
    rows: &[T],
    header: bool,
) -> io::Result<()> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(header)
        .from_writer(out);
    for r in rows {
        w.serialize(r).map_err(csv_to_io)?;
    }
    w.flush()
}

fn csv_to_io(e: csv::Error) -> io::Error {
    match e.into_kind() {
        // Keep a broken pipe a broken pipe, so `| head` ends quietly.
        csv::ErrorKind::Io(io) => io,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let widths = column_widths(&self.rows);
        for row in &self.rows {
            write_table_line(out, row, &widths)?;
        }
        Ok(())
    }
}

/// `a.b.c.d:port` as `SockAddr`'s Display writes it, built in a 21-byte stack buffer and
/// added in one copy: an address is written twice a row, and a push or a division per digit
/// cost more than the rest of the row's numbers.
pub fn push_ipv4_sock(out: &mut Vec<u8>, ip: std::net::Ipv4Addr, port: u16) {
    let (text, len) = ipv4_sock_text(ip, port);
    line::push_first(out, &text, len);
}

/// The text of `push_ipv4_sock` in a stack buffer: the bytes and how many of them are used.
pub fn ipv4_sock_text(ip: std::net::Ipv4Addr, port: u16) -> ([u8; 21], usize) {
    let mut text = [0u8; 21];
    let mut at = 0;
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[at] = b'.';
            at += 1;
        }
        // All three bytes are copied; those past the octet's length are overwritten next.
        let (len, digits) = OCTET_TEXT[usize::from(o)];
        text[at..at + 3].copy_from_slice(&digits);
        at += usize::from(len);
    }
    text[at] = b':';
    at += 1;
    let port = u64::from(port);
    let len = if port < 10 {
        1
    } else {
        port.ilog10() as usize + 1
    };
    line::write_digits(&mut text[at..at + len], port);
    (text, at + len)
}

/// The decimal text of every byte value: its length and its digits.
static OCTET_TEXT: [(u8, [u8; 3]); 256] = {
    let mut table = [(0u8, [0u8; 3]); 256];
    let mut v = 0;
    while v < 256 {
        let (h, t, o) = ((v / 100) as u8, (v / 10 % 10) as u8, (v % 10) as u8);
        table[v] = if v >= 100 {
            (3, [b'0' + h, b'0' + t, b'0' + o])
        } else if v >= 10 {
            (2, [b'0' + t, b'0' + o, 0])
        } else {
            (1, [b'0' + o, 0, 0])
        };
        v += 1;
    }
    table
};

/// The width of each column: its widest cell, in characters.
pub fn column_widths(rows: &[Vec<String>]) -> Vec<usize> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// One line of a table: cells padded to `widths` (a wider cell pushes the rest right), two
/// spaces apart, the last not padded.
pub fn write_table_line(out: &mut dyn Write, row: &[String], widths: &[usize]) -> io::Result<()> {
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        if i + 1 == row.len() {
            line.push_str(cell);
        } else {
            let w = widths.get(i).copied().unwrap_or(0);
            line.push_str(cell);
            let pad = w.saturating_sub(cell.chars().count()) + 2;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    writeln!(out, "{}", line.trim_end())
}

/// libpcap's counts after a live capture, always shown (as tcpdump does): zero drops is news too.
pub fn write_live_counters(out: &mut dyn Write, stats: &LiveStats) -> io::Result<()> {
    for (n, what) in [
        (
            stats.received,
            "packets received by the kernel filter (libpcap)",
        ),
        (
            stats.dropped_by_kernel,
            "packets dropped by the kernel (buffer full)",
        ),
        (
            stats.dropped_by_interface,
            "packets dropped by the interface",
        ),
    ] {
        writeln!(out, "tcpstate: {n:>10}  {what}")?;
    }
    Ok(())
}

/// Random connection records for the writers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::decode::{Segment, SockAddr, flags};
    use crate::flow::{Connection, EngineConfig, FlowTable};
    use crate::time::Ts;
    use proptest::prelude::*;

    /// Exchanges for `random_records`: 1 to 39 steps (sender, receiver, flags, sequence
    /// choice, payload choice, gap before it).
    pub fn random_steps() -> impl Strategy<Value = Vec<(u8, u8, u8, u8, u16, i64)>> {
        let step = (
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            random_gap(),
        );
        proptest::collection::vec(step, 1..40)
    }

    /// Gaps between packets: any up to 3 s, whole milliseconds and tenths of seconds with
    /// ties of the places shown (0.5 ms, 50 ms) and a few microseconds either side of them,
    /// and days.
    pub fn random_gap() -> impl Strategy<Value = i64> {
        prop_oneof![
            0i64..3_000_000_000,
            (0i64..2000, -6i64..=6).prop_map(|(ms, us)| ms * 1_000_000 + 500_000 + us * 1000),
            (0i64..200, -6i64..=6).prop_map(|(t, us)| t * 100_000_000 + 50_000_000 + us * 1000),
            (0i64..5, 0i64..1_000_000_000).prop_map(|(d, ns)| d * 86_400_000_000_000 + ns),
        ]
    }

    /// Records of random exchanges between a few addresses (IPv4 and IPv6, some wider than
    /// any column), at times near the ties of the places shown: handshakes, closes, resets,
    /// retransmissions, TIME_WAITs ended by time, by a new SYN or by the capture's end.
    pub fn random_records(
        steps: &[(u8, u8, u8, u8, u16, i64)],
        first: i64,
    ) -> (Vec<Connection>, Ts) {
        // Both ends of a segment are of one family, as in an IP header.
        let addrs: [SockAddr; 4] = [
            "10.0.0.1:40000".parse().unwrap(),
            "192.168.100.200:80".parse().unwrap(),
            "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535"
                .parse()
                .unwrap(),
            "[::1]:443".parse().unwrap(),
        ];
        let family = |pick: u8, of: u8| usize::from(of % 2 * 2 + pick % 2);
        let cfg = EngineConfig::default();
        let mut table = FlowTable::new();
        let mut now = first;
        let mut next_seq = [1000u32, 5000, 9000, 13000];
        for (n, &(from, to, flag_pick, seq_pick, len, gap)) in steps.iter().enumerate() {
            let (src, dst) = (addrs[family(from, to / 2)], addrs[family(to, to / 2)]);
            const FLAGS: [u8; 8] = [
                flags::SYN,
                flags::SYN | flags::ACK,
                flags::ACK,
                flags::ACK | flags::PSH,
                flags::FIN | flags::ACK,
                flags::RST,
                flags::RST | flags::ACK,
                flags::ACK,
            ];
            let (from_at, to_at) = (family(from, to / 2), family(to, to / 2));
            let flags = FLAGS[usize::from(flag_pick % 8)];
            // Mostly the sequence and acknowledgment numbers a real peer would use (each
            // address's next one), sometimes one off or far off.
            let near = |next: u32, pick: u8| match pick % 8 {
                0..5 => next,
                5 => next.wrapping_sub(1),
                6 => next.wrapping_add(1),
                _ => next.wrapping_add(70_000),
            };
            let seq = near(next_seq[from_at], seq_pick);
            let ack = near(next_seq[to_at], seq_pick / 8);
            let payload_len = u32::from(len % 3) * 100;
            let seg = Segment {
                src,
                dst,
                seq,
                ack,
                flags,
                window: 1000,
                wscale: None,
                payload_len,
            };
            if seq == next_seq[from_at] {
                next_seq[from_at] = seq.wrapping_add(seg.seq_len());
            }
            now += gap;
            table.on_segment(&seg, Ts(now), n as u64 + 1, &cfg, &mut None);
        }
        let end = Ts(now + steps.first().map_or(0, |s| s.5));
        (table.finish(end, &cfg, &mut None), end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::SockAddr;
    use proptest::prelude::*;

    /// The hand-built IPv4 text is `SockAddr`'s Display, edges and all.
    #[test]
    fn ipv4_text_matches_display() {
        let check = |ip: u32, port: u16| {
            let ip = std::net::Ipv4Addr::from(ip);
            let mut out = b"x".to_vec();
            push_ipv4_sock(&mut out, ip, port);
            let want = SockAddr {
                ip: ip.into(),
                port,
            };
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{want}"));
        };
        for (ip, port) in [
            (0, 0),
            (u32::MAX, u16::MAX),
            (0x0a00_0001, 80),
            (0x6409_630a, 9),
        ] {
            check(ip, port);
        }
        crate::seeded_runner(20_000)
            .run(&(any::<u32>(), any::<u16>()), |(ip, port)| {
                check(ip, port);
                Ok(())
            })
            .unwrap();
    }
}
