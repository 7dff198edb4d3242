//! `tcpstate conns`: one row per connection.

use std::io::{self, Write};

use crate::analysis::{
    ConnSummary, first_closer, handshake_span, record_end, summarize_without_addrs, time_wait_span,
};
use crate::flow::Connection;
use crate::flow::conn::{Handshake, Side, TimeWaitEnd};
use crate::report::Table;
use crate::report::line::{SpacedLine, push_addr, push_fixed, push_nanos, write_digits};
use crate::time::{Ts, duration_secs, epoch_secs};

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
    let reset = r.reset_by.zip(r.reset_sender_state);
    push_close_words(&mut line, r.first_closer, reset, r.handshake == "refused");
    line.finish();
    String::from_utf8(text).unwrap_or_default()
}

/// `close_words` written into `line`, from its parts: who sent the first FIN
/// ("simultaneous" for crossed FINs), who reset and in what state, whether that refused the
/// connection.
fn push_close_words(
    line: &mut SpacedLine<'_>,
    first_closer: Option<&str>,
    reset: Option<(&str, &str)>,
    refused: bool,
) {
    let start = line.at;
    match first_closer {
        Some("simultaneous") => line.put(b"both FIN (crossed)"),
        Some(who) => {
            line.put(who.as_bytes());
            line.put(b" FIN first");
        }
        None => {}
    }
    if let Some((by, state)) = reset {
        if line.at > start {
            line.put(b", ");
        }
        line.put(by.as_bytes());
        if refused {
            line.put(b" RST (refused)");
        } else {
            line.put(b" RST in ");
            line.put(state.as_bytes());
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
    /// The capture's first packet time, fixed by the first row (START is relative to it).
    first: Option<Option<Ts>>,
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
            first: None,
            line: Vec::new(),
            held: Vec::new(),
            widths: None,
            marks: false,
        }
    }

    /// Adds the row of record `c`; `end_of_capture` ends a TIME_WAIT still running,
    /// `first` is the capture's first packet time.
    pub fn row(
        &mut self,
        out: &mut dyn Write,
        c: &Connection,
        end_of_capture: Ts,
        first: Option<Ts>,
    ) -> io::Result<()> {
        let first = *self.first.get_or_insert(first);
        let (client, server) = (c.end(Side::Client), c.end(Side::Server));
        self.marks |= c.partial || c.direction_guessed || client.inferred || server.inferred;
        match &self.widths {
            Some(widths) => {
                self.line.clear();
                push_line(&mut self.line, c, end_of_capture, first, widths);
                out.write_all(&self.line)
            }
            None => {
                let base = first.map_or(0.0, Ts::as_secs_f64);
                let r = summarize_without_addrs(c, end_of_capture);
                let row = cells(&r, client.addr.to_string(), server.addr.to_string(), base);
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

/// One streamed table line of record `c` into `line`: the text
/// `write_table_line(cells(summarize(c, end_of_capture), first), widths)` makes, written
/// from the record, with times formatted from its integer nanoseconds.
fn push_line(
    line: &mut Vec<u8>,
    c: &Connection,
    end_of_capture: Ts,
    first: Option<Ts>,
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
    let ends = [c.end(Side::Client), c.end(Side::Server)];
    line.uint(c.id);
    if c.partial {
        line.byte(b'~');
    }
    if c.direction_guessed {
        line.byte(b'?');
    }
    next(&mut line, &mut cell_start);
    for end in ends {
        push_addr(&mut line, end.addr);
        next(&mut line, &mut cell_start);
    }
    line.byte(b'+');
    let base = first.map_or(0.0, Ts::as_secs_f64);
    // START: the record's epoch seconds less the first packet's, as `cells` subtracts them.
    let since_first = first.map_or(i64::MIN, |f| c.start.0.saturating_sub(f.0));
    push_nanos(&mut line, since_first, 3, || {
        (epoch_secs(c.start) - base).max(0.0)
    });
    next(&mut line, &mut cell_start);
    let lasted = record_end(c).since(c.start);
    push_nanos(&mut line, lasted.0, 3, || duration_secs(lasted));
    next(&mut line, &mut cell_start);
    for end in ends {
        line.put(end.state.name().as_bytes());
        if end.inferred {
            line.byte(b'*');
        }
        next(&mut line, &mut cell_start);
    }
    let handshake = c.handshake();
    line.put(handshake.name().as_bytes());
    let syn_retransmits = c.syn_retransmits(Side::Client);
    if syn_retransmits > 0 {
        line.put(b" (");
        line.uint(u64::from(syn_retransmits));
        line.put(b" SYN rtx)");
    }
    next(&mut line, &mut cell_start);
    match handshake_span(c).map(|(syn, done)| done.since(syn)) {
        // Below a second in milliseconds to the microsecond: the microseconds' digits.
        Some(took) if (0..999_999_500).contains(&took.0) => {
            let micros = (took.0 as u64 + 500) / 1000;
            line.uint(micros / 1000);
            line.byte(b'.');
            write_digits(line.take(3), micros % 1000);
            line.put(b"ms");
        }
        Some(took) => {
            let s = duration_secs(took);
            if s < 1.0 {
                push_fixed(&mut line, s * 1000.0, 3);
                line.put(b"ms");
            } else {
                push_nanos(&mut line, took.0, 3, || s);
                line.byte(b's');
            }
        }
        None => line.byte(b'-'),
    }
    next(&mut line, &mut cell_start);
    let reset = c.reset().map(|r| (r.by.name(), r.sender_state.name()));
    push_close_words(
        &mut line,
        first_closer(c),
        reset,
        handshake == Handshake::Refused,
    );
    next(&mut line, &mut cell_start);
    let mut any_time_wait = false;
    for side in [Side::Client, Side::Server] {
        let Some((start, until, why)) = time_wait_span(c, side, end_of_capture) else {
            continue;
        };
        if any_time_wait {
            line.byte(b' ');
        }
        any_time_wait = true;
        line.put(side.name().as_bytes());
        line.byte(b' ');
        let held = until.since(start);
        push_nanos(&mut line, held.0, 1, || duration_secs(held));
        line.byte(b's');
        if why == TimeWaitEnd::CaptureEnded {
            line.byte(b'+');
        }
    }
    if !any_time_wait {
        line.byte(b'-');
    }
    next(&mut line, &mut cell_start);
    line.uint(ends[0].packets);
    line.byte(b'/');
    line.uint(ends[1].packets);
    next(&mut line, &mut cell_start);
    // The last column is not padded.
    line.uint(ends[0].bytes);
    line.byte(b'/');
    line.uint(ends[1].bytes);
    line.byte(b'\n');
    line.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::summarize;
    use crate::decode::{Segment, SockAddr, flags};
    use crate::report::testing::{random_records, random_steps};

    const FIRST: Ts = Ts(1_700_000_000_000_000_000);

    /// `n` records with different ids, addresses and times, in a scrambled order.
    fn records(n: u64) -> Vec<Connection> {
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
                Connection::new(id, &seg, Ts(FIRST.0 + id as i64 * 1_000_000))
            })
            .collect()
    }

    fn streamed(conns: &[Connection], end: Ts) -> String {
        let mut out = Vec::new();
        let mut table = TableStream::new();
        for c in conns {
            table.row(&mut out, c, end, Some(FIRST)).unwrap();
        }
        table.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn whole(conns: &[Connection], end: Ts) -> String {
        let mut rows: Vec<ConnSummary> = conns.iter().map(|c| summarize(c, end)).collect();
        rows.sort_by_key(|r| r.id);
        let mut out = Vec::new();
        write_table(&mut out, &rows, Some(FIRST.as_secs_f64())).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn few_rows_make_the_same_table() {
        let conns = records(TableStream::HOLD as u64);
        let end = Ts(FIRST.0 + 5_000_000_000);
        assert_eq!(streamed(&conns, end), whole(&conns, end));
    }

    /// Past `HOLD` rows every row is still there with the same cells (columns may be wider,
    /// order is the order they came), and the legend still follows.
    #[test]
    fn many_rows_stream_with_the_same_cells() {
        let conns = records(2500);
        let end = Ts(FIRST.0 + 5_000_000_000);
        let (streamed, whole) = (streamed(&conns, end), whole(&conns, end));
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
            .take(conns.len())
            .map(|l| l.split(['~', '?', ' ']).next().unwrap().parse().unwrap())
            .collect();
        let came: Vec<u64> = conns.iter().map(|c| c.id).collect();
        assert_eq!(order, came);
    }

    /// The CLOSE column's words, as the README shows them.
    #[test]
    fn close_words_say_who_closed_and_how() {
        let words = |first: Option<&str>, reset: Option<(&str, &str)>, refused: bool| {
            let mut text = Vec::new();
            let mut line = SpacedLine::new(&mut text, 0);
            push_close_words(&mut line, first, reset, refused);
            line.finish();
            String::from_utf8(text).unwrap()
        };
        assert_eq!(words(None, None, false), "-");
        assert_eq!(words(Some("server"), None, false), "server FIN first");
        assert_eq!(
            words(Some("simultaneous"), None, false),
            "both FIN (crossed)"
        );
        assert_eq!(
            words(None, Some(("server", "SYN_RECV")), true),
            "server RST (refused)"
        );
        assert_eq!(
            words(Some("client"), Some(("server", "CLOSE_WAIT")), false),
            "client FIN first, server RST in CLOSE_WAIT"
        );
    }

    /// A streamed line is the line `write_table_line` makes from the cells of the record's
    /// summary, to the byte, for all kinds of records, times and column widths.
    #[test]
    fn streamed_line_equals_table_line() {
        use proptest::prelude::*;
        let widths = prop_oneof![
            Just(vec![0; 13]),
            Just(vec![12; 13]),
            Just(vec![3, 30, 9, 1, 50, 0, 0, 7, 2, 40, 5, 6, 8]),
        ];
        let mut runner = crate::seeded_runner(3_000);
        let lines = std::cell::Cell::new(0);
        runner
            .run(
                &(
                    random_steps(),
                    -2_000_000i64..3_000_000_000,
                    widths,
                    any::<bool>(),
                ),
                |(steps, start, widths, big_counts)| {
                    let (mut conns, end) = random_records(&steps, FIRST.0 + start);
                    for c in &mut conns {
                        if big_counts {
                            c.ends[0].packets = u64::MAX;
                            c.ends[1].bytes = 1 << 40;
                        }
                        for first in [Some(FIRST), None, Some(c.start)] {
                            let mut fast = Vec::new();
                            push_line(&mut fast, c, end, first, &widths);
                            let r = summarize(c, end);
                            let base = first.map_or(0.0, Ts::as_secs_f64);
                            let row = cells(&r, r.client.clone(), r.server.clone(), base);
                            let mut slow = Vec::new();
                            crate::report::write_table_line(&mut slow, &row, &widths).unwrap();
                            prop_assert_eq!(
                                String::from_utf8(fast).unwrap(),
                                String::from_utf8(slow).unwrap()
                            );
                            lines.set(lines.get() + 1);
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
        assert!(lines.get() > 10_000, "{} lines compared", lines.get());
    }
}
