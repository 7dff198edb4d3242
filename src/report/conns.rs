//! `tcpstate conns`: one row per connection.

use std::io::{self, Write};

use crate::analysis::ConnSummary;
use crate::report::Table;

fn opt_secs(v: Option<f64>) -> String {
    match v {
        Some(s) if s < 1.0 => format!("{:.3}ms", s * 1000.0),
        Some(s) => format!("{s:.3}s"),
        None => "-".into(),
    }
}

/// How the connection ended, in a few words: "client FIN", "server RST in ESTABLISHED".
fn close_words(r: &ConnSummary) -> String {
    let mut parts = Vec::new();
    if let Some(who) = r.first_closer {
        parts.push(match who {
            "simultaneous" => "both FIN (crossed)".to_string(),
            w => format!("{w} FIN first"),
        });
    }
    if let (Some(by), Some(st)) = (r.reset_by, r.reset_sender_state) {
        if r.handshake == "refused" {
            parts.push(format!("{by} RST (refused)"));
        } else {
            parts.push(format!("{by} RST in {st}"));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
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
fn cells(r: &ConnSummary, base: f64) -> Vec<String> {
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
        r.client.clone(),
        r.server.clone(),
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
        table.row(cells(r, base));
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
            held: Vec::new(),
            widths: None,
            marks: false,
        }
    }

    /// Adds a row; `capture_start` is the capture's first packet time.
    pub fn row(
        &mut self,
        out: &mut dyn Write,
        r: &ConnSummary,
        capture_start: Option<f64>,
    ) -> io::Result<()> {
        let base = *self.base.get_or_insert(capture_start.unwrap_or(0.0));
        self.marks |= has_marks(r);
        let row = cells(r, base);
        match &self.widths {
            Some(widths) => super::write_table_line(out, &row, widths),
            None => {
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
            table.row(&mut out, r, Some(1_700_000_000.0)).unwrap();
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
}
