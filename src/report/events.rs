//! `tcpstate events`: every state transition in time order, with the packet that caused it.

use std::io::{self, Write};

use serde::Serialize;

use crate::flow::Connection;
use crate::flow::conn::Transition;
use crate::report::packet::{Relative, flag_letters};
use crate::report::{secs, write_table_line};
use crate::time::Ts;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventRow {
    /// Epoch seconds.
    pub time: f64,
    pub conn: u64,
    /// The endpoint whose state changed, and its peer.
    pub endpoint: String,
    pub peer: String,
    /// "client" or "server".
    pub role: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub event: &'static str,
    /// True when no packet caused it: a timer ran out (TIME_WAIT expiry, handshake give-up).
    pub timer: bool,
    /// The causing packet: its number in the input (1-based), who sent it, flags, relative
    /// sequence and acknowledgment numbers, payload length.
    pub packet: Option<u64>,
    pub packet_from: Option<&'static str>,
    pub flags: Option<String>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub len: Option<u32>,
}

pub fn event_rows(transitions: &[Transition], conns: &[Connection]) -> Vec<EventRow> {
    event_rows_iter(transitions, conns).collect()
}

/// The rows of `event_rows`, made one at a time (a long capture has millions).
pub fn event_rows_iter<'a>(
    transitions: &'a [Transition],
    conns: &'a [Connection],
) -> impl Iterator<Item = EventRow> + 'a {
    transitions.iter().filter_map(|t| {
        // Connections are in id order.
        let idx = conns.binary_search_by_key(&t.conn_id, |c| c.id).ok()?;
        Some(event_row(t, &conns[idx]))
    })
}

/// The row of one transition of `conn`.
pub fn event_row(t: &Transition, conn: &Connection) -> EventRow {
    let me = conn.end(t.side);
    let peer = conn.end(t.side.other());
    let rel = Relative::of(conn);
    let cause = t.cause.map(|seg| {
        let from = conn.side_of(seg.src);
        let (seq, ack) = rel.numbers(&seg, from);
        (from, seg, seq, ack)
    });
    EventRow {
        time: secs(t.ts),
        conn: t.conn_id,
        endpoint: me.addr.to_string(),
        peer: peer.addr.to_string(),
        role: t.side.name(),
        from: t.from.name(),
        to: t.to.name(),
        event: t.event.name(),
        timer: t.packet == 0,
        packet: (t.packet != 0).then_some(t.packet),
        packet_from: cause.map(|c| c.0.name()),
        flags: cause.map(|c| flag_letters(c.1.flags)),
        seq: cause.map(|c| c.2),
        ack: cause.and_then(|c| c.3),
        len: cause.map(|c| c.1.payload_len),
    }
}

const HEADER: [&str; 8] = [
    "TIME", "CONN", "ENDPOINT", "ROLE", "FROM", "TO", "EVENT", "PACKET",
];

/// A row's cells, the time relative to `t0` (the first packet).
fn cells(r: &EventRow, t0: f64) -> Vec<String> {
    let packet = match (r.packet, &r.flags) {
        (Some(n), Some(f)) => {
            let mut s = format!(
                "#{n} {}>{} [{f}] seq {}",
                r.packet_from.unwrap_or("?"),
                if r.packet_from == Some("client") {
                    "server"
                } else {
                    "client"
                },
                r.seq.unwrap_or(0)
            );
            if let Some(a) = r.ack {
                s.push_str(&format!(" ack {a}"));
            }
            s.push_str(&format!(" len {}", r.len.unwrap_or(0)));
            s
        }
        (Some(n), None) => format!("#{n}"),
        _ => "(timer)".to_string(),
    };
    vec![
        format!("+{:.6}", r.time - t0),
        r.conn.to_string(),
        r.endpoint.clone(),
        r.role.to_string(),
        r.from.to_string(),
        r.to.to_string(),
        r.event.to_string(),
        packet,
    ]
}

/// A table with times relative to `start` (the first packet), like tcpdump's `-ttttt`.
pub fn write_text(out: &mut dyn Write, rows: &[EventRow], start: Option<Ts>) -> io::Result<()> {
    write_text_rows(out, || rows.iter().cloned(), start)
}

/// `write_text` over rows that `rows` makes afresh each time it is called: once to size the
/// columns, once to write. No row is kept, where a table of every cell would hold
/// gigabytes for a long capture.
pub fn write_text_rows<I: Iterator<Item = EventRow>>(
    out: &mut dyn Write,
    rows: impl Fn() -> I,
    start: Option<Ts>,
) -> io::Result<()> {
    let t0 = start.map_or(0.0, secs);
    let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows() {
        for (w, cell) in widths.iter_mut().zip(cells(&r, t0)) {
            *w = (*w).max(cell.chars().count());
        }
    }
    write_table_line(out, &header, &widths)?;
    for r in rows() {
        write_table_line(out, &cells(&r, t0), &widths)?;
    }
    Ok(())
}

/// As `write_text`, for rows written as they come: fixed column widths (wide enough for
/// IPv4 endpoints), the header only with the first batch.
pub fn write_lines(
    out: &mut dyn Write,
    rows: &[EventRow],
    start: Option<Ts>,
    header: bool,
) -> io::Result<()> {
    const WIDTHS: [usize; 7] = [12, 6, 21, 6, 11, 11, 17];
    let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
        for (cell, w) in cells.iter().zip(WIDTHS) {
            write!(out, "{cell:<w$}  ")?;
        }
        writeln!(out, "{}", cells.get(7).map_or("", String::as_str))
    };
    if header {
        let names: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        line(out, &names)?;
    }
    let t0 = start.map_or(0.0, secs);
    for r in rows {
        line(out, &cells(r, t0))?;
    }
    Ok(())
}
