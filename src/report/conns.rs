//! `tcpstate conns`: one row per connection.

use std::io::{self, Write};

use crate::analysis::ConnSummary;
use crate::decode::SockAddr;
use crate::report::Table;
use crate::report::line::{SpacedLine, push_addr, push_fixed};

fn opt_secs(v: Option<f64>) -> String {
    match v {
        Some(s) if s < 1.0 => format!("{:.3}ms", s * 1000.0),
        Some(s) => format!("{s:.3}s"),
        None => "-".into(),
    }
}

/// How the connection ended, in a few words: "client FIN", "server RST in ESTABLISHED".
fn close_words(r: &ConnSummary) -> String {
    let mut text = Vec::new();
    let mut line = SpacedLine::new(&mut text, 0);
    push_close_words(&mut line, r);
    line.finish();
    String::from_utf8(text).unwrap_or_default()
}

/// `close_words` written into `line`.
fn push_close_words(line: &mut SpacedLine<'_>, r: &ConnSummary) {
    let start = line.at;
    if let Some(who) = r.first_closer {
        match who {
            "simultaneous" => line.put(b"both FIN (crossed)"),
            w => {
                line.put(w.as_bytes());
                line.put(b" FIN first");
            }
        }
    }
    if let (Some(by), Some(st)) = (r.reset_by, r.reset_sender_state) {
        if line.at > start {
            line.put(b", ");
        }
        line.put(by.as_bytes());
        if r.handshake == "refused" {
            line.put(b" RST (refused)");
        } else {
            line.put(b" RST in ");
            line.put(st.as_bytes());
        }
    }
    if line.at == start {
        line.byte(b'-');
    }
}

fn time_wait_words(r: &ConnSummary) -> String {
    let one = |side: &str, d: Option<f64>, why: Option<&str>| {
        d.map(|d| {
            let mark = if why == Some("capture_ended") {
                "+"
            } else {
                ""
            };
            format!("{side} {d:.1}s{mark}")
        })
    };
    let v: Vec<String> = [
        one(
            "client",
            r.client_time_wait_duration,
            r.client_time_wait_end,
        ),
        one(
            "server",
            r.server_time_wait_duration,
            r.server_time_wait_end,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

const HEADER: [&str; 13] = [
    "ID",
    "CLIENT",
    "SERVER",
    "START",
    "DURATION",
    "CLIENT_STATE",
    "SERVER_STATE",
    "HANDSHAKE",
    "HS_TIME",
    "CLOSE",
    "TIME_WAIT",
    "PKTS_C/S",
    "BYTES_C/S",
];

const LEGEND: &str = "~ picked up mid-stream   ? direction guessed from ports   * state inferred from a timeout   + TIME_WAIT still running when the capture ended";

/// The cells of one row; `base`: the capture's first packet time (START is relative to it).
fn cells(r: &ConnSummary, client: String, server: String, base: f64) -> Vec<String> {
    let mut flags = String::new();
    if r.partial {
        flags.push('~');
    }
    if r.direction_guessed {
        flags.push('?');
    }
    let state = |s: &str, inferred: bool| {
        if inferred {
            format!("{s}*")
        } else {
            s.to_string()
        }
    };
    vec![
        format!("{}{flags}", r.id),
        client,
        server,
        format!("+{:.3}", (r.start - base).max(0.0)),
        format!("{:.3}", r.duration),
        state(r.client_state, r.client_state_inferred),
        state(r.server_state, r.server_state_inferred),
        if r.syn_retransmits > 0 {
            format!("{} ({} SYN rtx)", r.handshake, r.syn_retransmits)
        } else {
            r.handshake.to_string()
        },
        opt_secs(r.handshake_time),
        close_words(r),
        time_wait_words(r),
        format!("{}/{}", r.client_packets, r.server_packets),
        format!("{}/{}", r.client_bytes, r.server_bytes),
    ]
}

/// Whether a row uses a mark the legend explains.
fn has_marks(r: &ConnSummary) -> bool {
    r.partial || r.direction_guessed || r.client_state_inferred || r.server_state_inferred
}

pub fn write_table(
    out: &mut dyn Write,
    rows: &[ConnSummary],
    capture_start: Option<f64>,
) -> io::Result<()> {
    let mut table = Table::new(&HEADER);
    let base = capture_start.unwrap_or(0.0);
    for r in rows {
        table.row(cells(r, r.client.clone(), r.server.clone(), base));
    }
    table.write(out)?;
    if rows.iter().any(has_marks) {
        writeln!(out)?;
        writeln!(out, "{LEGEND}")?;
    }
    Ok(())
}

/// The table written as rows come, in bounded memory. Up to `HOLD` rows are held: if the
/// input ends first, the table is exactly `write_table`'s (rows in id order, columns sized
/// to fit). Past that, the columns are sized from the rows held (with room for the widest
/// IPv4 addresses and longer ids), those rows are written, and every later row is written
/// as it comes: as records end, then the rest in id order, as `--format json` streams.
pub struct TableStream {
    base: Option<f64>,
    /// The line being built (streamed rows).
    line: Vec<u8>,
    held: Vec<(u64, Vec<String>)>,
    /// Set once rows are written as they come.
    widths: Option<Vec<usize>>,
    marks: bool,
}

impl TableStream {
    pub const HOLD: usize = 1000;

    pub fn new() -> TableStream {
        TableStream {
            base: None,
            line: Vec::new(),
            held: Vec::new(),
            widths: None,
            marks: false,
        }
    }

    /// Adds a row: `r` from `summarize_without_addrs`, with its addresses apart;
    /// `capture_start` is the capture's first packet time.
    pub fn row(
        &mut self,
        out: &mut dyn Write,
        r: &ConnSummary,
        (client, server): (SockAddr, SockAddr),
        capture_start: Option<f64>,
    ) -> io::Result<()> {
        let base = *self.base.get_or_insert(capture_start.unwrap_or(0.0));
        self.marks |= has_marks(r);
        match &self.widths {
            Some(widths) => {
                self.line.clear();
                push_line(&mut self.line, r, client, server, base, widths);
                out.write_all(&self.line)
            }
            None => {
                let row = cells(r, client.to_string(), server.to_string(), base);
                self.held.push((r.id, row));
                if self.held.len() > Self::HOLD {
                    self.start_streaming(out)?;
                }
                Ok(())
            }
        }
    }

    fn start_streaming(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        let held = std::mem::take(&mut self.held);
        let mut rows = vec![header];
        rows.extend(held.into_iter().map(|(_, row)| row));
        // Room for what later rows are likely to hold: ids of 8 digits, the longest IPv4
        // address:port, starts past 10,000 s, handshake times in seconds.
        const AT_LEAST: [usize; 13] = [9, 21, 21, 11, 9, 12, 12, 9, 9, 26, 16, 11, 0];
        let widths: Vec<usize> = super::column_widths(&rows)
            .into_iter()
            .zip(AT_LEAST)
            .map(|(w, least)| w.max(least))
            .collect();
        for row in &rows {
            super::write_table_line(out, row, &widths)?;
        }
        self.widths = Some(widths);
        Ok(())
    }

    /// Writes what is held (the whole table, if it never started streaming) and the legend.
    pub fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if self.widths.is_none() {
            let mut held = std::mem::take(&mut self.held);
            held.sort_by_key(|(id, _)| *id);
            let mut table = Table::new(&HEADER);
            for (_, row) in held {
                table.row(row);
            }
            table.write(out)?;
        }
        if self.marks {
            writeln!(out)?;
            writeln!(out, "{LEGEND}")?;
        }
        Ok(())
    }
}

impl Default for TableStream {
    fn default() -> Self {
        TableStream::new()
    }
}

/// Bytes made ready for a streamed line besides its columns' widths: more than any row's
/// cells usually overflow their columns by.
const LINE_SLACK: usize = 160;

/// One streamed table line into `line`: the text `write_table_line(cells(r, base), widths)`
/// makes, with `r`'s addresses given apart (`summarize_without_addrs` leaves them empty).
fn push_line(
    line: &mut Vec<u8>,
    r: &ConnSummary,
    client: SockAddr,
    server: SockAddr,
    base: f64,
    widths: &[usize],
) {
    let room = widths.iter().sum::<usize>() + 2 * widths.len() + LINE_SLACK;
    let mut line = SpacedLine::new(line, room);
    let mut column = 0;
    let mut cell_start = line.at;
    // Pads the cell just written to its column's width plus the two-space gap.
    let mut next = |line: &mut SpacedLine<'_>, cell_start: &mut usize| {
        let w = widths.get(column).copied().unwrap_or(0);
        *cell_start = line.at.max(*cell_start + w) + 2;
        line.pad_to(*cell_start);
        column += 1;
    };
    line.uint(r.id);
    if r.partial {
        line.byte(b'~');
    }
    if r.direction_guessed {
        line.byte(b'?');
    }
    next(&mut line, &mut cell_start);
    push_addr(&mut line, client);
    next(&mut line, &mut cell_start);
    push_addr(&mut line, server);
    next(&mut line, &mut cell_start);
    line.byte(b'+');
    push_fixed(&mut line, (r.start - base).max(0.0), 3);
    next(&mut line, &mut cell_start);
    push_fixed(&mut line, r.duration, 3);
    next(&mut line, &mut cell_start);
    for (state, inferred) in [
        (r.client_state, r.client_state_inferred),
        (r.server_state, r.server_state_inferred),
    ] {
        line.put(state.as_bytes());
        if inferred {
            line.byte(b'*');
        }
        next(&mut line, &mut cell_start);
    }
    line.put(r.handshake.as_bytes());
    if r.syn_retransmits > 0 {
        line.put(b" (");
        line.uint(u64::from(r.syn_retransmits));
        line.put(b" SYN rtx)");
    }
    next(&mut line, &mut cell_start);
    match r.handshake_time {
        Some(s) if s < 1.0 => {
            push_fixed(&mut line, s * 1000.0, 3);
            line.put(b"ms");
        }
        Some(s) => {
            push_fixed(&mut line, s, 3);
            line.byte(b's');
        }
        None => line.byte(b'-'),
    }
    next(&mut line, &mut cell_start);
    push_close_words(&mut line, r);
    next(&mut line, &mut cell_start);
    let mut any_time_wait = false;
    for (side, d, why) in [
        (
            "client",
            r.client_time_wait_duration,
            r.client_time_wait_end,
        ),
        (
            "server",
            r.server_time_wait_duration,
            r.server_time_wait_end,
        ),
    ] {
        let Some(d) = d else { continue };
        if any_time_wait {
            line.byte(b' ');
        }
        any_time_wait = true;
        line.put(side.as_bytes());
        line.byte(b' ');
        push_fixed(&mut line, d, 1);
        line.byte(b's');
        if why == Some("capture_ended") {
            line.byte(b'+');
        }
    }
    if !any_time_wait {
        line.byte(b'-');
    }
    next(&mut line, &mut cell_start);
    line.uint(r.client_packets);
    line.byte(b'/');
    line.uint(r.server_packets);
    next(&mut line, &mut cell_start);
    // The last column is not padded.
    line.uint(r.client_bytes);
    line.byte(b'/');
    line.uint(r.server_bytes);
    line.byte(b'\n');
    line.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::summarize;
    use crate::decode::{Segment, SockAddr, flags};
    use crate::flow::Connection;
    use crate::time::Ts;

    /// `n` rows with different ids, addresses and times, in a scrambled order.
    fn rows(n: u64) -> Vec<ConnSummary> {
        let mut ids: Vec<u64> = (1..=n).collect();
        ids.sort_by_key(|id| (id * 7919) % n);
        ids.into_iter()
            .map(|id| {
                let seg = Segment {
                    src: SockAddr {
                        ip: format!("10.0.{}.{}", id / 250, id % 250).parse().unwrap(),
                        port: 1024 + id as u16,
                    },
                    dst: "192.168.1.1:443".parse().unwrap(),
                    seq: 1,
                    ack: 0,
                    flags: if id % 3 == 0 { flags::ACK } else { flags::SYN },
                    window: 100,
                    wscale: None,
                    payload_len: 0,
                };
                let ts = Ts(1_700_000_000_000_000_000 + id as i64 * 1_000_000);
                summarize(&Connection::new(id, &seg, ts), ts)
            })
            .collect()
    }

    fn streamed(rows: &[ConnSummary]) -> String {
        let mut out = Vec::new();
        let mut table = TableStream::new();
        for r in rows {
            let addrs = (r.client.parse().unwrap(), r.server.parse().unwrap());
            table
                .row(&mut out, r, addrs, Some(1_700_000_000.0))
                .unwrap();
        }
        table.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn whole(rows: &[ConnSummary]) -> String {
        let mut sorted = rows.to_vec();
        sorted.sort_by_key(|r| r.id);
        let mut out = Vec::new();
        write_table(&mut out, &sorted, Some(1_700_000_000.0)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn few_rows_make_the_same_table() {
        let rows = rows(TableStream::HOLD as u64);
        assert_eq!(streamed(&rows), whole(&rows));
    }

    /// Past `HOLD` rows every row is still there with the same cells (columns may be wider,
    /// order is the order they came), and the legend still follows.
    #[test]
    fn many_rows_stream_with_the_same_cells() {
        let rows = rows(2500);
        let (streamed, whole) = (streamed(&rows), whole(&rows));
        assert_ne!(streamed, whole);
        let cells = |text: &str| {
            let mut lines: Vec<Vec<String>> = text
                .lines()
                .map(|l| l.split_whitespace().map(str::to_string).collect())
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(cells(&streamed), cells(&whole));
        assert!(streamed.starts_with("ID "));
        assert!(streamed.trim_end().ends_with("when the capture ended"));
        let order: Vec<u64> = streamed
            .lines()
            .skip(1)
            .take(rows.len())
            .map(|l| l.split(['~', '?', ' ']).next().unwrap().parse().unwrap())
            .collect();
        let came: Vec<u64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(order, came);
    }

    /// A streamed line is the line `write_table_line` makes from the row's cells, to the
    /// byte, for all kinds of rows and column widths.
    #[test]
    fn streamed_line_equals_table_line() {
        let mut rows = rows(300);
        for (i, r) in rows.iter_mut().enumerate() {
            if i % 4 == 1 {
                r.client = "[2001:db8::1]:40000".into();
            }
            if i % 5 == 2 {
                r.syn_retransmits = 3;
                r.client_state_inferred = true;
            }
            if i % 3 == 1 {
                r.handshake_time = Some(i as f64 * 0.0123);
                r.client_time_wait_duration = Some(i as f64 * 0.25);
                r.client_time_wait_end = Some("capture_ended");
                r.server_time_wait_duration = Some(60.0);
                r.server_time_wait_end = Some("expired");
                r.first_closer = Some("client");
                r.client_bytes = 1 << 40;
            }
            if i % 7 == 3 {
                // Longer than the room a line is given: it grows as it is written.
                r.client = "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535".into();
                r.server = "[2001:db8:1234:5678:9abc:def0:1234:5679]:65535".into();
                r.reset_by = Some("server");
                r.reset_sender_state = Some("ESTABLISHED");
                r.first_closer = Some("simultaneous");
                r.syn_retransmits = u32::MAX;
                (r.client_packets, r.server_packets) = (u64::MAX, u64::MAX);
                (r.client_bytes, r.server_bytes) = (u64::MAX, 0);
            }
            r.duration = i as f64 * 1.0005;
        }
        for widths in [
            vec![0; 13],
            vec![12; 13],
            vec![3, 30, 9, 1, 50, 0, 0, 7, 2, 40, 5, 6, 8],
        ] {
            for r in &rows {
                let base = 1_699_999_990.5;
                let client: SockAddr = r.client.parse().unwrap();
                let server: SockAddr = r.server.parse().unwrap();
                let mut fast = Vec::new();
                push_line(&mut fast, r, client, server, base, &widths);
                let mut slow = Vec::new();
                let row = cells(r, client.to_string(), server.to_string(), base);
                crate::report::write_table_line(&mut slow, &row, &widths).unwrap();
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    String::from_utf8(slow).unwrap()
                );
            }
        }
    }
}
