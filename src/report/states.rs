//! `tcpstate states`: what `ss -tan` would have listed, one line per endpoint socket,
//! then the count per state as `netstat -n | awk '/^tcp/ {++S[$NF]} END {...}'` prints it.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::IpAddr;

use serde::Serialize;

use crate::decode::SockAddr;
use crate::flow::Connection;
use crate::flow::conn::Side;
use crate::report::secs;
use crate::tcp::TcpState;
use crate::time::Ts;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SocketRow {
    pub local: String,
    pub remote: String,
    pub state: &'static str,
    /// Connection id (0 for a listener, which belongs to no one connection).
    pub conn: u64,
    /// "client" or "server" within the connection.
    pub role: &'static str,
    /// Epoch seconds at which it entered this state.
    pub since: f64,
    /// The state rests on an inference (a timeout, a listener deduced from its answers).
    pub inferred: bool,
    pub partial: bool,
}

/// Which sockets to show.
#[derive(Clone, Copy)]
pub struct Selection {
    pub all: bool,
    /// Keep the sockets of this host (an address, or address:port).
    pub host: Option<HostFilter>,
}

#[derive(Clone, Copy, Debug)]
pub enum HostFilter {
    Ip(IpAddr),
    Addr(SockAddr),
}

impl HostFilter {
    pub fn parse(s: &str) -> Result<HostFilter, String> {
        if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            return Ok(HostFilter::Ip(ip));
        }
        s.parse::<SockAddr>().map(HostFilter::Addr).map_err(|_| {
            format!("--host '{s}': expected an address (10.0.0.1, ::1) or address:port")
        })
    }
    pub fn keeps(&self, a: SockAddr) -> bool {
        match self {
            HostFilter::Ip(ip) => a.ip == *ip,
            HostFilter::Addr(x) => a == *x,
        }
    }
}

pub fn socket_rows(conns: &[Connection], sel: &Selection) -> Vec<SocketRow> {
    socket_rows_with(&Listeners::of(conns), conns, sel)
}

/// Listeners deduced from SYN-ACKs answering a SYN (not from a simultaneous open): each
/// server address and its first answer.
#[derive(Default)]
pub struct Listeners(BTreeMap<SockAddr, Ts>);

impl Listeners {
    /// The listeners of all of `conns`.
    pub fn of(conns: &[Connection]) -> Listeners {
        let mut listeners = Listeners::default();
        for c in conns {
            listeners.add(c);
        }
        listeners
    }

    pub fn add(&mut self, c: &Connection) {
        if let Some(first) = c.synack_first.get()
            && !c.direction_guessed
            && !c.simultaneous_open
            && !c.self_connected
        {
            let since = self.0.entry(c.end(Side::Server).addr).or_insert(first);
            *since = (*since).min(first);
        }
    }
}

/// The endpoints of `c` that are a socket of their own (a socket connected to itself is one
/// socket: its client end).
fn socket_sides(c: &Connection) -> &'static [Side] {
    if c.self_connected {
        &[Side::Client]
    } else {
        &[Side::Client, Side::Server]
    }
}

/// Whether `c` gives `socket_rows` a row under `sel` (a record that does not can be dropped
/// once its listener is noted).
pub fn has_rows(c: &Connection, sel: &Selection) -> bool {
    socket_sides(c).iter().any(|&side| row_of(c, side, sel))
}

/// Whether the `side` end of `c` is a row under `sel`.
fn row_of(c: &Connection, side: Side, sel: &Selection) -> bool {
    let me = c.end(side);
    // A LISTEN end has no socket of its own for this 4-tuple: the listener stands for it.
    me.state != TcpState::Listen
        && (sel.all || me.state.has_socket())
        && sel.host.is_none_or(|h| h.keeps(me.addr))
}

/// `socket_rows` with the listeners noted apart: `conns` (in id order) may then be only the
/// records that have rows.
pub fn socket_rows_with(
    listeners: &Listeners,
    conns: &[Connection],
    sel: &Selection,
) -> Vec<SocketRow> {
    let mut rows = Vec::new();
    let _ = for_each_row(listeners, conns, sel, |row| {
        rows.push(row);
        Ok(())
    });
    rows
}

/// The rows of `socket_rows_with`, made one at a time (a capture's rows, held, took 130
/// bytes each on top of their records).
pub fn for_each_row(
    listeners: &Listeners,
    conns: &[Connection],
    sel: &Selection,
    mut each: impl FnMut(SocketRow) -> io::Result<()>,
) -> io::Result<()> {
    for_each_socket(listeners, conns, sel, |s| each(s.row()))
}

/// A row of `socket_rows_with` before its addresses are written out.
struct Socket {
    local: SockAddr,
    /// `None`: a listener's `*:*`.
    remote: Option<SockAddr>,
    state: TcpState,
    conn: u64,
    role: Side,
    since: Ts,
    inferred: bool,
    partial: bool,
}

impl Socket {
    fn row(&self) -> SocketRow {
        SocketRow {
            local: self.local.to_string(),
            remote: self.remote.map_or_else(|| "*:*".into(), |r| r.to_string()),
            state: self.state.name(),
            conn: self.conn,
            role: self.role.name(),
            since: secs(self.since),
            inferred: self.inferred,
            partial: self.partial,
        }
    }
}

fn for_each_socket(
    listeners: &Listeners,
    conns: &[Connection],
    sel: &Selection,
    mut each: impl FnMut(Socket) -> io::Result<()>,
) -> io::Result<()> {
    for (&l, &since) in &listeners.0 {
        if sel.host.is_none_or(|h| h.keeps(l)) {
            each(Socket {
                local: l,
                remote: None,
                state: TcpState::Listen,
                conn: 0,
                role: Side::Server,
                since,
                inferred: true,
                partial: false,
            })?;
        }
    }
    for c in conns {
        for &side in socket_sides(c) {
            if !row_of(c, side, sel) {
                continue;
            }
            let me = c.end(side);
            each(Socket {
                local: me.addr,
                remote: Some(c.end(side.other()).addr),
                state: me.state,
                conn: c.id,
                role: side,
                since: me.state_since,
                inferred: me.inferred,
                partial: c.partial,
            })?;
        }
    }
    Ok(())
}

/// The length of an address as `SockAddr`'s Display writes it.
fn text_len(a: SockAddr) -> usize {
    match a.ip {
        IpAddr::V4(ip) => super::ipv4_sock_text(ip, a.port).1,
        IpAddr::V6(_) => a.to_string().len(),
    }
}

/// The rows of `socket_rows_with` as `write_text` writes them, without holding them: one
/// pass finds the columns' widths, a second writes.
pub fn write_text_of(
    out: &mut dyn Write,
    listeners: &Listeners,
    conns: &[Connection],
    sel: &Selection,
) -> io::Result<()> {
    let (mut lw, mut rw) = (18, 17);
    let mut counts = StateCounts::default();
    for_each_socket(listeners, conns, sel, |s| {
        lw = lw.max(text_len(s.local));
        rw = rw.max(s.remote.map_or(3, text_len));
        counts.add(s.state.name());
        Ok(())
    })?;
    write_header(out, lw, rw)?;
    for_each_row(listeners, conns, sel, |r| write_line(out, &r, lw, rw))?;
    write_counts(out, &counts.0)
}

pub fn write_text(out: &mut dyn Write, rows: &[SocketRow]) -> io::Result<()> {
    let lw = rows
        .iter()
        .map(|r| r.local.len())
        .max()
        .unwrap_or(0)
        .max(18);
    let rw = rows
        .iter()
        .map(|r| r.remote.len())
        .max()
        .unwrap_or(0)
        .max(17);
    write_header(out, lw, rw)?;
    for r in rows {
        write_line(out, r, lw, rw)?;
    }
    write_counts(out, &state_counts(rows))
}

fn write_header(out: &mut dyn Write, lw: usize, rw: usize) -> io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<lw$} {:<rw$} CONN",
        "State", "Local Address:Port", "Peer Address:Port"
    )
}

fn write_line(out: &mut dyn Write, r: &SocketRow, lw: usize, rw: usize) -> io::Result<()> {
    let conn = if r.conn == 0 {
        "-".to_string()
    } else {
        r.conn.to_string()
    };
    let mark = if r.inferred { " (inferred)" } else { "" };
    writeln!(
        out,
        "{:<12} {:<lw$} {:<rw$} {conn}{mark}",
        r.state, r.local, r.remote
    )
}

fn write_counts(out: &mut dyn Write, counts: &[(&'static str, usize)]) -> io::Result<()> {
    writeln!(out)?;
    for (state, n) in counts {
        writeln!(out, "{state} {n}")?;
    }
    Ok(())
}

/// Count per state, in the order the states first appear.
#[derive(Default)]
struct StateCounts(Vec<(&'static str, usize)>);

impl StateCounts {
    fn add(&mut self, state: &'static str) {
        match self.0.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => self.0.push((state, 1)),
        }
    }
}

/// Count per state, in the order the states first appear (as awk's for-in roughly does;
/// stable here so output can be compared).
pub fn state_counts(rows: &[SocketRow]) -> Vec<(&'static str, usize)> {
    let mut counts = StateCounts::default();
    for r in rows {
        counts.add(r.state);
    }
    counts.0
}

/// The sockets of the tracked connections per state at one moment: one line of
/// `states --interval`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IntervalCounts {
    /// Epoch seconds of the moment counted.
    pub time: f64,
    /// Sockets counted (endpoints with a socket: not CLOSED, not LISTEN).
    pub sockets: u64,
    /// Per state, in netstat's order, only states with sockets.
    pub counts: BTreeMap<&'static str, u64>,
    /// Connections tracked at that moment.
    pub connections: u64,
}

/// Counts the sockets of `conns` per state as of `now`, with the timers run to `now`.
pub fn interval_counts<'a>(
    conns: impl Iterator<Item = &'a Connection>,
    now: Ts,
    cfg: &crate::flow::EngineConfig,
) -> IntervalCounts {
    let mut per_state = [0u64; TcpState::ALL.len()];
    let mut connections = 0;
    for c in conns {
        connections += 1;
        let sides: &[Side] = if c.self_connected {
            &[Side::Client]
        } else {
            &[Side::Client, Side::Server]
        };
        for &side in sides {
            let state = c.state_at(side, now, cfg);
            if state.has_socket()
                && let Some(i) = TcpState::ALL.iter().position(|s| *s == state)
            {
                per_state[i] += 1;
            }
        }
    }
    let counts: BTreeMap<&'static str, u64> = TcpState::ALL
        .iter()
        .zip(per_state)
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.name(), n))
        .collect();
    IntervalCounts {
        time: secs(now),
        sockets: per_state.iter().sum(),
        counts,
        connections,
    }
}

/// One line per interval: the time (UTC, as RFC 3339), then `STATE count` pairs in
/// netstat's order, so `awk` and `grep` can read it.
pub fn write_interval_text(out: &mut dyn Write, c: &IntervalCounts) -> io::Result<()> {
    write!(
        out,
        "{}  sockets {}",
        crate::time::rfc3339(c.time),
        c.sockets
    )?;
    for state in TcpState::ALL {
        if let Some(n) = c.counts.get(state.name()) {
            write!(out, "  {} {n}", state.name())?;
        }
    }
    writeln!(out)
}

/// `states --interval --format csv`: time, sockets, connections, then a column per state
/// in netstat's order (all eleven, so every row has the same columns).
pub fn write_interval_csv(out: &mut dyn Write, c: &IntervalCounts, header: bool) -> io::Result<()> {
    if header {
        write!(out, "time,sockets,connections")?;
        for state in TcpState::ALL {
            write!(out, ",{}", state.name())?;
        }
        writeln!(out)?;
    }
    write!(out, "{},{},{}", c.time, c.sockets, c.connections)?;
    for state in TcpState::ALL {
        write!(out, ",{}", c.counts.get(state.name()).copied().unwrap_or(0))?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::file::read_files;
    use crate::pipeline::Engine;

    /// The rows written as they are made are the rows made first and written after, in
    /// every selection, on committed captures with listeners, IPv6, resets and a socket
    /// connected to itself.
    #[test]
    fn rows_written_as_made_are_the_rows_held() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pcaps/");
        let captures = [
            "mixed",
            "ipv6",
            "refused",
            "self_connect",
            "close_wait_leak",
        ];
        for name in captures.into_iter().chain(["long addresses"]) {
            let conns = if name == "long addresses" {
                long_addresses()
            } else {
                let mut engine = Engine::new(Default::default());
                let mut counters = Default::default();
                read_files(&[format!("{dir}{name}.pcap")], &mut counters, &mut |p| {
                    engine.process(p);
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap();
                engine.finish().connections
            };
            let listeners = Listeners::of(&conns);
            let server = conns[0].end(Side::Server).addr;
            for sel in [
                Selection {
                    all: false,
                    host: None,
                },
                Selection {
                    all: true,
                    host: None,
                },
                Selection {
                    all: true,
                    host: Some(HostFilter::Ip(server.ip)),
                },
                Selection {
                    all: false,
                    host: Some(HostFilter::Addr(server)),
                },
            ] {
                let held = socket_rows(&conns, &sel);
                let mut made = Vec::new();
                for_each_row(&listeners, &conns, &sel, |r| {
                    made.push(r);
                    Ok(())
                })
                .unwrap();
                assert_eq!(made, held, "{name}");
                let (mut want, mut got) = (Vec::new(), Vec::new());
                write_text(&mut want, &held).unwrap();
                write_text_of(&mut got, &listeners, &conns, &sel).unwrap();
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(want).unwrap(),
                    "{name}"
                );
                assert!(
                    held.len() > 1 || !sel.all,
                    "{name}: too few rows to compare"
                );
            }
        }
    }

    /// Answered SYNs between addresses wider than the columns' least widths.
    fn long_addresses() -> Vec<Connection> {
        use crate::decode::{Segment, flags};
        use crate::flow::{EngineConfig, FlowTable};
        let cfg = EngineConfig::default();
        let mut table = FlowTable::new();
        let pairs = [
            (
                "[2001:db8:1234:5678:9abc:def0:1234:5678]:40000",
                "10.0.0.1:80",
            ),
            ("192.168.100.200:65535", "[2001:db8::77]:443"),
        ];
        for (n, (client, server)) in pairs.into_iter().enumerate() {
            let (client, server): (SockAddr, SockAddr) =
                (client.parse().unwrap(), server.parse().unwrap());
            let seg = |src, dst, flags, seq, ack| Segment {
                src,
                dst,
                seq,
                ack,
                flags,
                window: 1000,
                wscale: None,
                payload_len: 0,
            };
            let at = Ts(n as i64 * 1_000_000);
            table.on_segment(
                &seg(client, server, flags::SYN, 1, 0),
                at,
                1,
                &cfg,
                &mut None,
            );
            let synack = seg(server, client, flags::SYN | flags::ACK, 9, 2);
            table.on_segment(&synack, at, 2, &cfg, &mut None);
        }
        table.finish(Ts(5_000_000), &cfg, &mut None)
    }
}
