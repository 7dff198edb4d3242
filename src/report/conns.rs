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

pub fn write_table(
    out: &mut dyn Write,
    rows: &[ConnSummary],
    capture_start: Option<f64>,
) -> io::Result<()> {
    let header = [
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
    let mut table = Table::new(&header);
    let base = capture_start.unwrap_or(0.0);
    for r in rows {
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
        table.row(vec![
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
        ]);
    }
    table.write(out)?;
    if rows.iter().any(|r| {
        r.partial || r.direction_guessed || r.client_state_inferred || r.server_state_inferred
    }) {
        writeln!(out)?;
        writeln!(
            out,
            "~ picked up mid-stream   ? direction guessed from ports   * state inferred from a timeout   + TIME_WAIT still running when the capture ended"
        )?;
    }
    Ok(())
}
