//! `tcpstate events`: every state transition in time order, with the packet that caused it.

use std::io::{self, Write};

use serde::Serialize;

use crate::decode::{Segment, SockAddr};
use crate::flow::Connection;
use crate::flow::conn::Side;
use crate::flow::conn::Transition;
use crate::report::line::{SpacedLine, push_addr, push_fixed};
use crate::report::packet::{Relative, flag_letters, flag_letters_in};
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
    transitions
        .iter()
        .filter_map(|t| Some(event_row(t, record_of(conns, t.conn_id)?)))
}

/// The record numbered `id` in `conns` (in id order). Ids are mostly consecutive, so its
/// place is tried first: a binary search over records this large misses the cache at
/// nearly every step, and there is one per transition.
pub fn record_of(conns: &[Connection], id: u64) -> Option<&Connection> {
    let first = conns.first()?.id;
    let guess = usize::try_from(id.wrapping_sub(first)).unwrap_or(usize::MAX);
    match conns.get(guess) {
        Some(c) if c.id == id => Some(c),
        _ => {
            let idx = conns.binary_search_by_key(&id, |c| c.id).ok()?;
            Some(&conns[idx])
        }
    }
}

/// What a transition's row needs of its connection: the two addresses, and the numbers
/// each side's sequence numbers count from (as of the record's end).
#[derive(Clone, Copy, Debug)]
pub struct ConnFacts {
    pub client: SockAddr,
    pub server: SockAddr,
    pub rel: Relative,
}

impl ConnFacts {
    pub fn of(conn: &Connection) -> ConnFacts {
        ConnFacts {
            client: conn.end(Side::Client).addr,
            server: conn.end(Side::Server).addr,
            rel: Relative::of(conn),
        }
    }

    pub fn addr(&self, side: Side) -> SockAddr {
        match side {
            Side::Client => self.client,
            Side::Server => self.server,
        }
    }

    /// The side that sends from `addr` (as `Connection::side_of`).
    pub fn side_of(&self, addr: SockAddr) -> Side {
        if self.client == addr {
            Side::Client
        } else {
            Side::Server
        }
    }

    /// The sender of a transition's packet, with its relative sequence and ack numbers.
    pub fn cause(&self, t: &Transition) -> Option<(Side, Segment, u32, Option<u32>)> {
        t.cause.map(|seg| {
            let from = self.side_of(seg.src);
            let (seq, ack) = self.rel.numbers(&seg, from);
            (from, seg, seq, ack)
        })
    }
}

/// The row of one transition of `conn`.
pub fn event_row(t: &Transition, conn: &Connection) -> EventRow {
    event_row_of(t, &ConnFacts::of(conn))
}

/// The row of one transition of the connection `facts` describe.
pub fn event_row_of(t: &Transition, facts: &ConnFacts) -> EventRow {
    let cause = facts.cause(t);
    EventRow {
        time: secs(t.ts),
        conn: t.conn_id,
        endpoint: facts.addr(t.side).to_string(),
        peer: facts.addr(t.side.other()).to_string(),
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

/// A table with times relative to `start` (the first packet), like tcpdump's `-ttttt`, built
/// cell by cell: what the line writers below must reproduce (tests/events_writers.rs).
pub fn write_text(out: &mut dyn Write, rows: &[EventRow], start: Option<Ts>) -> io::Result<()> {
    let t0 = start.map_or(0.0, secs);
    let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(cells(r, t0)) {
            *w = (*w).max(cell.chars().count());
        }
    }
    write_table_line(out, &header, &widths)?;
    for r in rows {
        write_table_line(out, &cells(r, t0), &widths)?;
    }
    Ok(())
}

/// `write_text` of the rows of `transitions` (those whose record is in `conns`, which is
/// in id order), each line written straight from the transition and its record: the same
/// text without an `EventRow`'s strings or a `format!` per cell. Two passes over the
/// transitions: the first sizes the columns.
pub fn write_text_transitions(
    out: &mut dyn Write,
    transitions: &[Transition],
    conns: &[Connection],
    start: Option<Ts>,
) -> io::Result<()> {
    let t0 = start.map_or(0.0, secs);
    let rows = || {
        transitions
            .iter()
            .filter_map(|t| Some((t, record_of(conns, t.conn_id)?)))
    };
    let mut widths = TextWidths::default();
    let mut line = Vec::with_capacity(256);
    for (t, conn) in rows() {
        widths.add(t, &ConnFacts::of(conn), t0, &mut line);
    }
    widths.write_header(out)?;
    for (t, conn) in rows() {
        line.clear();
        widths.push_line(&mut line, t, &ConnFacts::of(conn), t0);
        out.write_all(&line)?;
    }
    Ok(())
}

/// The width of each column of the text table: the header's, or its widest cell (a cell
/// is far shorter than 255 bytes: 8 bytes a connection while `events` reads).
#[derive(Clone, Copy, Debug)]
pub struct TextWidths([u8; 8]);

impl Default for TextWidths {
    fn default() -> Self {
        TextWidths(HEADER.map(|h| h.len() as u8))
    }
}

impl TextWidths {
    /// Widens the columns to fit the row of `t` (times relative to `t0`), made in `scratch`.
    /// The last column is never padded: its cell (the packet and its segment, most of the
    /// line's digits) is left out.
    pub fn add(&mut self, t: &Transition, facts: &ConnFacts, t0: f64, scratch: &mut Vec<u8>) {
        scratch.clear();
        let lens = push_event_line(scratch, t, facts, t0, &[0; 7], false);
        for (w, len) in self.0.iter_mut().zip(&lens[..7]) {
            *w = (*w).max(u8::try_from(*len).unwrap_or(u8::MAX));
        }
    }

    /// The widths that fit the rows of both.
    pub fn merge(&mut self, other: &TextWidths) {
        for (w, o) in self.0.iter_mut().zip(other.0) {
            *w = (*w).max(o);
        }
    }

    pub fn write_header(&self, out: &mut dyn Write) -> io::Result<()> {
        let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        write_table_line(out, &header, &self.widths())
    }

    fn widths(&self) -> [usize; 8] {
        self.0.map(usize::from)
    }

    /// The line of `t` in a table of these widths, into `line`.
    pub fn push_line(&self, line: &mut Vec<u8>, t: &Transition, facts: &ConnFacts, t0: f64) {
        push_event_line(line, t, facts, t0, &self.widths()[..7], true);
    }
}

/// One line of `write_text` into `line`, its first seven columns `widths` wide; returns the
/// length of each cell. The line `write_table_line(cells(event_row(t, conn), t0))` makes;
/// without its last cell unless `last_cell`.
fn push_event_line(
    line: &mut Vec<u8>,
    t: &Transition,
    facts: &ConnFacts,
    t0: f64,
    widths: &[usize],
    last_cell: bool,
) -> [usize; 8] {
    let room = widths.iter().sum::<usize>() + 2 * widths.len() + 128;
    let mut line = SpacedLine::new(line, room);
    let mut lens = [0; 8];
    let mut column = 0;
    let mut cell_start = line.at;
    let mut next = |line: &mut SpacedLine<'_>, cell_start: &mut usize| {
        lens[column] = line.at - *cell_start;
        let w = widths.get(column).copied().unwrap_or(0);
        *cell_start = line.at.max(*cell_start + w) + 2;
        line.pad_to(*cell_start);
        column += 1;
    };
    line.byte(b'+');
    push_fixed(&mut line, secs(t.ts) - t0, 6);
    next(&mut line, &mut cell_start);
    line.uint(t.conn_id);
    next(&mut line, &mut cell_start);
    push_addr(&mut line, facts.addr(t.side));
    next(&mut line, &mut cell_start);
    for name in [t.side.name(), t.from.name(), t.to.name(), t.event.name()] {
        line.put(name.as_bytes());
        next(&mut line, &mut cell_start);
    }
    if !last_cell {
        line.finish();
        return lens;
    }
    match (t.packet, facts.cause(t)) {
        (0, _) => line.put(b"(timer)"),
        (n, None) => {
            line.byte(b'#');
            line.uint(n);
        }
        (n, Some((from, seg, seq, ack))) => {
            line.byte(b'#');
            line.uint(n);
            line.byte(b' ');
            line.put(from.name().as_bytes());
            line.byte(b'>');
            line.put(from.other().name().as_bytes());
            line.put(b" [");
            let (letters, len) = flag_letters_in(seg.flags);
            line.put(&letters[..len]);
            line.put(b"] seq ");
            line.uint(u64::from(seq));
            if let Some(a) = ack {
                line.put(b" ack ");
                line.uint(u64::from(a));
            }
            line.put(b" len ");
            line.uint(u64::from(seg.payload_len));
        }
    }
    let last = line.at - cell_start;
    line.byte(b'\n');
    line.finish();
    lens[7] = last;
    lens
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
