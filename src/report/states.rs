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
    let mut listeners = Listeners::default();
    for c in conns {
        listeners.add(c);
    }
    socket_rows_with(&listeners, conns, sel)
}

/// Listeners deduced from SYN-ACKs answering a SYN (not from a simultaneous open): each
/// server address and its first answer.
#[derive(Default)]
pub struct Listeners(BTreeMap<SockAddr, Ts>);

impl Listeners {
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
    for (&l, &since) in &listeners.0 {
        if sel.host.is_none_or(|h| h.keeps(l)) {
            rows.push(SocketRow {
                local: l.to_string(),
                remote: "*:*".into(),
                state: TcpState::Listen.name(),
                conn: 0,
                role: "server",
                since: secs(since),
                inferred: true,
                partial: false,
            });
        }
    }
    for c in conns {
        for &side in socket_sides(c) {
            if !row_of(c, side, sel) {
                continue;
            }
            let me = c.end(side);
            let peer = c.end(side.other());
            rows.push(SocketRow {
                local: me.addr.to_string(),
                remote: peer.addr.to_string(),
                state: me.state.name(),
                conn: c.id,
                role: side.name(),
                since: secs(me.state_since),
                inferred: me.inferred,
                partial: c.partial,
            });
        }
    }
    rows
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
    writeln!(
        out,
        "{:<12} {:<lw$} {:<rw$} CONN",
        "State", "Local Address:Port", "Peer Address:Port"
    )?;
    for r in rows {
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
        )?;
    }
    writeln!(out)?;
    for (state, n) in state_counts(rows) {
        writeln!(out, "{state} {n}")?;
    }
    Ok(())
}

/// Count per state, in the order the states first appear (as awk's for-in roughly does;
/// stable here so output can be compared).
pub fn state_counts(rows: &[SocketRow]) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for r in rows {
        match counts.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.state, 1)),
        }
    }
    counts
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
