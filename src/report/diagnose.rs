//! Text and CSV forms of `diagnose` findings and of the `summary` tables.

use std::io::{self, Write};

use serde::Serialize;

use crate::analysis::findings::Finding;
use crate::analysis::stats::Distribution;
use crate::analysis::summary::Summary;

/// Times in text are offsets from the capture start; JSON and CSV keep epoch seconds.
fn offset(t: Option<f64>, start: f64) -> String {
    match t {
        Some(t) => format!("+{:.3}s", t - start),
        None => "-".into(),
    }
}

pub fn write_findings_text(
    out: &mut dyn Write,
    findings: &[Finding],
    capture_start: Option<f64>,
) -> io::Result<()> {
    if findings.is_empty() {
        return writeln!(out, "no findings: every connection behaved as expected");
    }
    let start = capture_start.unwrap_or(0.0);
    for (i, f) in findings.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "{:<8}  {}  {}",
            f.severity.name().to_uppercase(),
            f.kind,
            f.summary
        )?;
        let ev = &f.evidence;
        if ev.connections_total > 0 {
            let ids: Vec<String> = ev.connections.iter().map(u64::to_string).collect();
            let more = ev.connections_total.saturating_sub(ev.connections.len());
            let more = if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            };
            writeln!(
                out,
                "  evidence: connections {}{more}; from {} to {}",
                ids.join(" "),
                offset(ev.first, start),
                offset(ev.last, start)
            )?;
            if !ev.endpoints.is_empty() {
                writeln!(out, "  endpoints: {}", ev.endpoints.join(" "))?;
            }
        }
        if !f.details.is_empty() {
            writeln!(out, "  details: {}", details_words(f))?;
        }
        writeln!(out, "  cause: {}", f.cause)?;
        writeln!(out, "  check: {}", f.check)?;
    }
    Ok(())
}

/// `key=value` pairs; nested objects (distributions) flattened as key.min=...
fn details_words(f: &Finding) -> String {
    let mut words = Vec::new();
    for (k, v) in &f.details {
        match v {
            serde_json::Value::Object(m) => {
                for (k2, v2) in m {
                    if !v2.is_null() {
                        words.push(format!("{k}.{k2}={v2}"));
                    }
                }
            }
            serde_json::Value::String(s) => words.push(format!("{k}={s}")),
            other => words.push(format!("{k}={other}")),
        }
    }
    words.join(" ")
}

/// One CSV row per finding: evidence lists joined by spaces, details as `key=value` pairs.
#[derive(Serialize)]
struct FindingRow<'a> {
    severity: &'static str,
    kind: &'static str,
    service: Option<&'a str>,
    count: u64,
    summary: &'a str,
    connections: String,
    connections_total: usize,
    endpoints: String,
    first: Option<f64>,
    last: Option<f64>,
    details: String,
    cause: &'a str,
    check: &'a str,
}

pub fn write_findings_csv(out: &mut dyn Write, findings: &[Finding]) -> io::Result<()> {
    let rows: Vec<FindingRow> = findings
        .iter()
        .map(|f| FindingRow {
            severity: f.severity.name(),
            kind: f.kind,
            service: f.service.as_deref(),
            count: f.count,
            summary: &f.summary,
            connections: f
                .evidence
                .connections
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            connections_total: f.evidence.connections_total,
            endpoints: f.evidence.endpoints.join(" "),
            first: f.evidence.first,
            last: f.evidence.last,
            details: details_words(f),
            cause: &f.cause,
            check: &f.check,
        })
        .collect();
    super::write_csv(out, &rows)
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(s) => format!("{:.3}", s * 1000.0),
        None => "-".into(),
    }
}

pub fn write_summary_text(out: &mut dyn Write, s: &Summary) -> io::Result<()> {
    writeln!(
        out,
        "connections: {} ({} picked up mid-stream)",
        s.connections, s.partial
    )?;
    let h = &s.handshakes;
    writeln!(out)?;
    writeln!(out, "handshake outcome")?;
    for (k, v) in [
        ("completed", h.completed),
        ("refused", h.refused),
        ("unanswered", h.unanswered),
        ("not_completed", h.not_completed),
        ("not_seen", h.not_seen),
    ] {
        writeln!(out, "  {k:<24} {v}")?;
    }
    let k = &s.closes;
    writeln!(out)?;
    writeln!(out, "how connections ended")?;
    for (name, v) in [
        ("closed_by_originator", k.closed_by_originator),
        ("closed_by_responder", k.closed_by_responder),
        ("closed_simultaneously", k.closed_simultaneously),
        ("half_closed", k.half_closed),
        ("reset", k.reset),
        ("still_open", k.still_open),
        ("never_opened", k.never_opened),
    ] {
        writeln!(out, "  {name:<24} {v}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<28} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "durations (ms)", "count", "min", "median", "p95", "p99", "max"
    )?;
    let row = |out: &mut dyn Write, name: &str, d: &Distribution| {
        writeln!(
            out,
            "{name:<28} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            d.count,
            ms(d.min),
            ms(d.median),
            ms(d.p95),
            ms(d.p99),
            ms(d.max)
        )
    };
    row(out, "handshake (SYN to ACK)", &s.handshake_time)?;
    row(out, "  SYN to SYN-ACK", &s.syn_to_synack)?;
    row(out, "  SYN-ACK to ACK", &s.synack_to_ack)?;
    row(out, "half-close (FIN to FIN)", &s.half_close_duration)?;
    row(out, "TIME_WAIT", &s.time_wait_duration)?;
    writeln!(out)?;
    writeln!(
        out,
        "half-closes still open at the end: {}",
        s.half_close_open_at_end
    )?;
    writeln!(
        out,
        "TIME_WAIT: {} expired, {} reused by a new connection, {} reset; {} cut short by the end of the capture (not in the distribution)",
        s.time_wait_expired, s.time_wait_reused, s.time_wait_reset, s.time_wait_cut_short
    )
}
