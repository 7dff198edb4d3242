//! `tcpstate explain`: a ladder diagram of one connection drawn from its packets. The two
//! endpoints are columns; each packet is an arrow with its flags, relative sequence and
//! acknowledgment numbers and length; each side's state is written beside the arrow that
//! changed it. Long quiet stretches of data in the middle collapse into one line.

use std::io::{self, Write};

use crate::analysis::ConnSummary;
use crate::decode::flags;
use crate::flow::conn::Transition;
use crate::flow::{Connection, Side};
use crate::pipeline::SeenPacket;
use crate::report::packet::{Relative, describe};
use crate::tcp::seq;
use crate::time::Ts;

/// Quiet packets (no state change, no SYN/FIN/RST) shown at each end of a collapsed run.
const KEEP_AT_RUN_EDGES: usize = 3;
/// Runs of quiet packets longer than this collapse.
const COLLAPSE_RUNS_OVER: usize = 8;

const STATE_WIDTH: usize = 12;

/// One line of the diagram before layout.
enum Line {
    Packet {
        ts: Ts,
        from: Side,
        label: String,
        len: u32,
        /// New state of [client, server] after this packet, if it changed.
        states: [Option<&'static str>; 2],
        quiet: bool,
    },
    /// A state change no packet of this connection caused (a timer, a takeover).
    Timer {
        ts: Ts,
        side: Side,
        to: &'static str,
        why: &'static str,
    },
    Collapsed {
        packets: usize,
        bytes: [u64; 2],
        segments: [usize; 2],
        span: f64,
    },
}

pub struct Options {
    /// Show every packet, never collapse.
    pub full: bool,
}

/// Draws connection `conn` from its packets (in input order) and its transitions.
pub fn write_ladder(
    out: &mut dyn Write,
    conn: &Connection,
    summary: &ConnSummary,
    packets: &[SeenPacket],
    transitions: &[Transition],
    opts: &Options,
) -> io::Result<()> {
    let rel = Relative::of(conn);
    let mut lines = Vec::new();
    let mut highest: [Option<u32>; 2] = [None, None];
    // Transitions no packet of this connection caused (timers, a takeover of the 4-tuple)
    // are placed by time between the packets.
    let mut foreign = transitions
        .iter()
        .filter(|t| !caused_by(t, packets))
        .peekable();
    for p in packets {
        while let Some(t) = foreign.next_if(|t| t.ts < p.ts) {
            lines.push(timer_line(t));
        }
        let from = conn.side_of(&p.seg.src);
        let mut states = [None, None];
        for t in transitions.iter().filter(|t| t.packet == p.packet) {
            states[t.side.index()] = Some(t.to.name());
        }
        let seg = &p.seg;
        let end = seg.seq.wrapping_add(seg.seq_len());
        let sent_before = highest[from.index()];
        let retransmission = seg.seq_len() > 0
            && !seg.has(flags::SYN)
            && sent_before.is_some_and(|h| seq::le(end, h));
        if !seg.has(flags::SYN) && sent_before.is_none_or(|h| seq::lt(h, end)) {
            highest[from.index()] = Some(end);
        }
        let mut label = describe(seg, from, &rel);
        if retransmission {
            label.push_str(" (rtx)");
        }
        let quiet = states == [None, None]
            && seg.flags & (flags::SYN | flags::FIN | flags::RST) == 0
            && !retransmission;
        lines.push(Line::Packet {
            ts: p.ts,
            from,
            label,
            len: seg.payload_len,
            states,
            quiet,
        });
    }
    for t in foreign {
        lines.push(timer_line(t));
    }
    if !opts.full {
        lines = collapse(lines);
    }
    write_header(out, summary)?;
    draw(out, conn, &lines)?;
    write_footer(out, summary)
}

/// Was this transition caused by one of this connection's own packets?
fn caused_by(t: &Transition, packets: &[SeenPacket]) -> bool {
    t.packet != 0
        && packets
            .binary_search_by_key(&t.packet, |p| p.packet)
            .is_ok()
}

fn timer_line(t: &Transition) -> Line {
    use crate::tcp::machine::Event;
    let why = match t.event {
        Event::TimeWaitExpired => "TIME_WAIT ran out (2MSL)",
        Event::HandshakeGaveUp => "retries stopped: gave up, inferred",
        Event::Superseded => "a new connection took over the 4-tuple",
        _ => "",
    };
    Line::Timer {
        ts: t.ts,
        side: t.side,
        to: t.to.name(),
        why,
    }
}

/// Replaces long runs of quiet packets by their first and last few and a count.
fn collapse(lines: Vec<Line>) -> Vec<Line> {
    let mut outl = Vec::with_capacity(lines.len());
    let mut run: Vec<Line> = Vec::new();
    let flush = |run: &mut Vec<Line>, outl: &mut Vec<Line>| {
        if run.len() <= COLLAPSE_RUNS_OVER {
            outl.append(run);
            return;
        }
        let tail = run.split_off(run.len() - KEEP_AT_RUN_EDGES);
        let middle = run.split_off(KEEP_AT_RUN_EDGES);
        outl.append(run);
        let mut bytes = [0u64; 2];
        let mut segments = [0usize; 2];
        let (mut first, mut last) = (None, None);
        for l in &middle {
            if let Line::Packet { ts, from, len, .. } = l {
                bytes[from.index()] += u64::from(*len);
                segments[from.index()] += 1;
                first.get_or_insert(*ts);
                last = Some(*ts);
            }
        }
        let span = match (first, last) {
            (Some(a), Some(b)) => b.since(a).as_secs_f64(),
            _ => 0.0,
        };
        outl.push(Line::Collapsed {
            packets: middle.len(),
            bytes,
            segments,
            span,
        });
        outl.extend(tail);
    };
    for l in lines {
        let quiet = matches!(l, Line::Packet { quiet: true, .. });
        if quiet {
            run.push(l);
        } else {
            flush(&mut run, &mut outl);
            outl.push(l);
        }
    }
    flush(&mut run, &mut outl);
    outl
}

fn write_header(out: &mut dyn Write, s: &ConnSummary) -> io::Result<()> {
    writeln!(
        out,
        "connection {}: client {} -> server {}{}{}",
        s.id,
        s.client,
        s.server,
        if s.partial {
            " (picked up mid-stream)"
        } else {
            ""
        },
        if s.direction_guessed {
            " (direction guessed from ports)"
        } else {
            ""
        }
    )?;
    let mut facts = vec![match s.handshake_time {
        Some(t) => format!("handshake completed in {}", ms(t)),
        None => format!("handshake {}", s.handshake.replace('_', " ")),
    }];
    if s.syn_retransmits > 0 {
        facts.push(format!("{} SYN retransmissions", s.syn_retransmits));
    }
    if s.synack_retransmits > 0 {
        facts.push(format!("{} SYN-ACK retransmissions", s.synack_retransmits));
    }
    match s.first_closer {
        Some("simultaneous") => facts.push("both closed at once (FINs crossed)".into()),
        Some(who) => facts.push(format!("{who} closed first")),
        None => {}
    }
    if let (Some(by), Some(st)) = (s.reset_by, s.reset_sender_state) {
        facts.push(format!("{by} reset in {st}"));
    }
    writeln!(out, "{}", facts.join("; "))?;
    writeln!(out)
}

fn write_footer(out: &mut dyn Write, s: &ConnSummary) -> io::Result<()> {
    let mark = |inferred: bool| if inferred { " (inferred)" } else { "" };
    writeln!(
        out,
        "at the end: client {}{}, server {}{}; {} packets client->server, {} server->client",
        s.client_state,
        mark(s.client_state_inferred),
        s.server_state,
        mark(s.server_state_inferred),
        s.client_packets,
        s.server_packets
    )
}

fn ms(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.3} ms", secs * 1000.0)
    } else {
        format!("{secs:.3} s")
    }
}

fn draw(out: &mut dyn Write, conn: &Connection, lines: &[Line]) -> io::Result<()> {
    let label_width = lines
        .iter()
        .map(|l| match l {
            Line::Packet { label, .. } => label.chars().count(),
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    // The arrow: "|-- label ---->|": two dashes each side at least.
    let arrow_width = (label_width + 8).max(40);
    let t0 = conn.start;
    let client = conn.end(Side::Client);
    let server = conn.end(Side::Server);
    let initial = |side: Side| match (side, conn.partial) {
        (_, true) => "(mid-stream)",
        (Side::Client, false) => "CLOSED",
        (Side::Server, false) => "LISTEN",
    };
    // The server's column starts after the time, the client's state and the arrow.
    let server_column = 10 + 2 + STATE_WIDTH + 1 + arrow_width + 1;
    let head = format!("{:>10}  client {}", "TIME", client.addr);
    writeln!(
        out,
        "{head:<w$}server {}",
        server.addr,
        w = server_column.max(head.len() + 2)
    )?;
    writeln!(
        out,
        "{:>10}  {:<sw$} {:<aw$} {}",
        "",
        initial(Side::Client),
        "",
        initial(Side::Server),
        sw = STATE_WIDTH,
        aw = arrow_width,
    )?;
    for l in lines {
        let text = match l {
            Line::Packet {
                ts,
                from,
                label,
                states,
                ..
            } => {
                let arrow = arrow(label, *from, arrow_width);
                format!(
                    "{:>10.6}  {:<sw$} {arrow} {}",
                    ts.since(t0).as_secs_f64(),
                    states[0].unwrap_or(""),
                    states[1].unwrap_or(""),
                    sw = STATE_WIDTH
                )
            }
            Line::Timer { ts, side, to, why } => {
                let note = format!("({why})");
                let (left, right) = match side {
                    Side::Client => (*to, ""),
                    Side::Server => ("", *to),
                };
                format!(
                    "{:>10.6}  {:<sw$} {:^aw$} {}",
                    ts.since(t0).as_secs_f64(),
                    left,
                    note,
                    right,
                    sw = STATE_WIDTH,
                    aw = arrow_width
                )
            }
            Line::Collapsed {
                packets,
                bytes,
                segments,
                span,
            } => {
                let note = format!(
                    "... {packets} packets over {span:.3} s: {} segments {} bytes ->, {} segments {} bytes <- ...",
                    segments[0], bytes[0], segments[1], bytes[1]
                );
                format!("{:>10}  {:<sw$} {note}", "", "", sw = STATE_WIDTH)
            }
        };
        writeln!(out, "{}", text.trim_end())?;
    }
    writeln!(out)
}

/// `|-- S seq 0 len 0 ------->|` or `|<------- S. seq 0 ack 1 len 0 --|`, `width` wide.
fn arrow(label: &str, from: Side, width: usize) -> String {
    let dashes = "-".repeat(width.saturating_sub(label.chars().count() + 7));
    match from {
        Side::Client => format!("|-- {label} {dashes}>|"),
        Side::Server => format!("|<{dashes} {label} --|"),
    }
}
