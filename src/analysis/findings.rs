//! `diagnose`: named findings about handshakes, resets, closes and TIME_WAIT, each with
//! evidence (connection ids, endpoints, first and last time), the likely cause in one
//! sentence and what to check next. Rules read the tracked connection records only.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::analysis::stats::Distribution;
use crate::decode::SockAddr;
use crate::flow::conn::{Handshake, TimeWaitEnd};
use crate::flow::{Connection, Side};
use crate::pipeline::Outcome;
use crate::tcp::TcpState;
use crate::time::{Dur, Ts, duration_secs as secs, epoch_secs};

/// Linux's default `net.ipv4.ip_local_port_range`.
pub const LINUX_EPHEMERAL_PORTS: (u16, u16) = (32768, 60999);

#[derive(Clone, Copy, Debug)]
pub struct DiagnoseConfig {
    /// A CLOSE_WAIT or FIN_WAIT2 older than this at the end of the capture is reported.
    pub stuck_after: Dur,
    /// Clients' ephemeral port range, to judge TIME_WAIT port pressure.
    pub port_range: (u16, u16),
    /// Report a host's TIME_WAIT peak from this many sockets.
    pub many_time_wait: usize,
    /// Handshakes slower than this are reported even without a retransmission.
    pub slow_handshake: Dur,
    /// Report a SYN flood from this many half-open attempts on one server.
    pub syn_flood: u64,
}

impl Default for DiagnoseConfig {
    fn default() -> Self {
        DiagnoseConfig {
            stuck_after: Dur::from_millis(1000),
            port_range: LINUX_EPHEMERAL_PORTS,
            many_time_wait: 1000,
            slow_handshake: Dur::from_millis(1000),
            syn_flood: 1000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// How many connection ids and endpoints a finding lists (the totals are always given).
const EVIDENCE_IDS: usize = 20;
const EVIDENCE_ENDPOINTS: usize = 10;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// The first connection ids (at most 20); `connections_total` counts them all.
    pub connections: Vec<u64>,
    pub connections_total: usize,
    /// Endpoints involved (at most 10), as `ss` writes them.
    pub endpoints: Vec<String>,
    /// Epoch seconds of the first and last occurrence.
    pub first: Option<f64>,
    pub last: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: &'static str,
    /// The address:port (or host) the finding is about, if it is about one.
    pub service: Option<String>,
    /// What happened, in one line.
    pub summary: String,
    /// How many times: connections, endpoints or packets, as `summary` says.
    pub count: u64,
    pub evidence: Evidence,
    /// Measurements specific to the kind (retransmission spacing, distributions, ...).
    pub details: Map<String, Value>,
    /// The likely cause, in one sentence.
    pub cause: String,
    /// What to check next.
    pub check: String,
}

/// Collects connection ids, endpoints and times for one finding.
#[derive(Default)]
struct EvidenceBuilder {
    ids: Vec<u64>,
    total: usize,
    endpoints: Vec<String>,
    first: Option<Ts>,
    last: Option<Ts>,
}

impl EvidenceBuilder {
    fn add(&mut self, id: u64, endpoint: SockAddr, from: Ts, to: Ts) {
        self.total += 1;
        if self.ids.len() < EVIDENCE_IDS && !self.ids.contains(&id) {
            self.ids.push(id);
        }
        let ep = endpoint.to_string();
        if self.endpoints.len() < EVIDENCE_ENDPOINTS && !self.endpoints.contains(&ep) {
            self.endpoints.push(ep);
        }
        self.first = Some(self.first.map_or(from, |f| f.min(from)));
        self.last = Some(self.last.map_or(to, |l| l.max(to)));
    }

    fn build(self) -> Evidence {
        Evidence {
            connections: self.ids,
            connections_total: self.total,
            endpoints: self.endpoints,
            first: self.first.map(epoch_secs),
            last: self.last.map(epoch_secs),
        }
    }
}

fn server_of(c: &Connection) -> String {
    c.end(Side::Server).addr.to_string()
}

/// Groups connections by a key, keeping the order keys sort in.
fn group_by<'a, K: Ord>(
    conns: impl Iterator<Item = &'a Connection>,
    key: impl Fn(&Connection) -> K,
) -> BTreeMap<K, Vec<&'a Connection>> {
    let mut groups: BTreeMap<K, Vec<&Connection>> = BTreeMap::new();
    for c in conns {
        groups.entry(key(c)).or_default().push(c);
    }
    groups
}

fn details(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Every finding the connections support, most severe first, then most frequent.
pub fn diagnose(outcome: &Outcome, cfg: &DiagnoseConfig) -> Vec<Finding> {
    let conns = &outcome.connections;
    let end = outcome.end_ts.unwrap_or_default();
    let mut all = Vec::new();
    syn_flood(outcome, cfg, &mut all);
    unanswered_syns(conns, &mut all);
    refused(conns, &mut all);
    incomplete_handshakes(conns, &mut all);
    resets(conns, &mut all);
    ignored_resets(conns, &mut all);
    stuck_close_wait(conns, end, cfg, &mut all);
    held_fin_wait2(conns, end, cfg, &mut all);
    time_wait(conns, end, cfg, &mut all);
    slow_handshakes(conns, cfg, &mut all);
    oddities(outcome, &mut all);
    all.sort_by(|a, b| {
        (a.severity, std::cmp::Reverse(a.count), a.kind, &a.service).cmp(&(
            b.severity,
            std::cmp::Reverse(b.count),
            b.kind,
            &b.service,
        ))
    });
    all
}

/// Many half-open attempts on one server: tracked ones plus those evicted under `--max-conns`.
fn syn_flood(outcome: &Outcome, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let mut per: BTreeMap<SockAddr, (EvidenceBuilder, u64, u64, u64)> = BTreeMap::new();
    for c in outcome.connections.iter().filter(|c| {
        c.is_half_open_attempt()
            && matches!(
                c.handshake(),
                Handshake::Unanswered | Handshake::NotCompleted
            )
    }) {
        let g = per.entry(c.end(Side::Server).addr).or_default();
        g.0.add(c.id, c.end(Side::Client).addr, c.start, c.last);
        g.1 += 1;
        g.2 += u64::from(c.syn_count(Side::Client).max(1));
    }
    for (server, a) in &outcome.evicted_attempts {
        let g = per.entry(*server).or_default();
        g.1 += a.count;
        g.2 += a.syns;
        g.3 += a.count;
        g.0.first = Some(g.0.first.map_or(a.first, |f| f.min(a.first)));
        g.0.last = Some(g.0.last.map_or(a.last, |l| l.max(a.last)));
    }
    for (server, (ev, attempts, syns, evicted)) in per {
        if attempts < cfg.syn_flood && evicted == 0 {
            continue;
        }
        let (first, last) = (ev.first, ev.last);
        let span = match (first, last) {
            (Some(a), Some(b)) => b.since(a).as_secs_f64(),
            _ => 0.0,
        };
        let rate = if span > 0.0 {
            attempts as f64 / span
        } else {
            attempts as f64
        };
        out.push(Finding {
            severity: Severity::Critical,
            kind: "syn_flood",
            service: Some(server.to_string()),
            summary: format!(
                "{attempts} half-open connection attempts to {server} ({syns} SYNs, about {rate:.0}/s); {evicted} of them evicted untracked under --max-conns"
            ),
            count: attempts,
            evidence: ev.build(),
            details: details(json!({
                "attempts": attempts,
                "syns": syns,
                "evicted_untracked": evicted,
                "attempts_per_second": (rate * 10.0).round() / 10.0,
                "threshold": cfg.syn_flood,
            })),
            cause: format!(
                "Far more connection attempts to {server} than completed handshakes: a SYN flood (often from spoofed sources), a scan, or clients retrying against an overloaded listener."
            ),
            check: "On the server: `nstat -az TcpExtSyncookiesSent TcpExtListenDrops TcpExtListenOverflows`, net.ipv4.tcp_syncookies=1, net.ipv4.tcp_max_syn_backlog and the listen backlog; look at how many distinct sources send them.".into(),
        });
    }
}

fn unanswered_syns(conns: &[Connection], out: &mut Vec<Finding>) {
    let hit = conns
        .iter()
        .filter(|c| c.handshake() == Handshake::Unanswered);
    for (service, group) in group_by(hit, server_of) {
        let mut ev = EvidenceBuilder::default();
        let (mut syns, mut gave_up, mut trying) = (0u64, 0u64, 0u64);
        let mut longest: &[Ts] = &[];
        for c in &group {
            let client = c.end(Side::Client);
            ev.add(c.id, client.addr, c.start, c.last);
            syns += u64::from(c.syn_count(Side::Client));
            if c.syn_times(Side::Client).len() > longest.len() {
                longest = c.syn_times(Side::Client);
            }
            match client.state {
                TcpState::SynSent => trying += 1,
                _ => gave_up += 1,
            }
        }
        let spacing: Vec<f64> = longest
            .windows(2)
            .map(|w| (w[1].since(w[0]).as_secs_f64() * 10.0).round() / 10.0)
            .collect();
        let n = group.len() as u64;
        out.push(Finding {
            severity: Severity::Critical,
            kind: "unanswered_syn",
            service: Some(service.clone()),
            summary: format!(
                "{n} connection attempt(s) to {service} got no answer: {syns} SYNs, {} retransmissions",
                syns.saturating_sub(n)
            ),
            count: n,
            evidence: ev.build(),
            details: details(json!({
                "syns": syns,
                "syn_retransmissions": syns.saturating_sub(n),
                "retransmission_spacing_s": spacing,
                "clients_gave_up": gave_up,
                "clients_still_trying_at_end": trying,
            })),
            cause: "Nothing answered the SYNs (no SYN-ACK, no RST): the host is down or unreachable, a firewall drops them silently, or the listener's accept queue is full (Linux then drops SYNs without a word).".into(),
            check: format!(
                "Is anything listening on {service} (`ss -ltn` there)? Does a firewall drop rather than reject? On the server, `nstat -az TcpExtListenOverflows TcpExtListenDrops`; capture on the server to see whether the SYNs arrive at all."
            ),
        });
    }
}

fn refused(conns: &[Connection], out: &mut Vec<Finding>) {
    let hit = conns.iter().filter(|c| c.handshake() == Handshake::Refused);
    for (service, group) in group_by(hit, server_of) {
        let mut ev = EvidenceBuilder::default();
        let mut clients: Vec<SockAddr> = Vec::new();
        for c in &group {
            let client = c.end(Side::Client).addr;
            ev.add(c.id, client, c.start, c.last);
            if !clients.iter().any(|a| a.ip == client.ip) {
                clients.push(client);
            }
        }
        let n = group.len() as u64;
        out.push(Finding {
            severity: Severity::Critical,
            kind: "refused",
            service: Some(service.clone()),
            summary: format!("{n} connection attempt(s) to {service} were refused (SYN answered by RST)"),
            count: n,
            evidence: ev.build(),
            details: details(json!({ "client_hosts": clients.len() })),
            cause: "The host answered the SYN with a RST: no socket listens on that port (the service is down, restarting, or bound to another address), or a firewall rejects with a TCP reset.".into(),
            check: format!(
                "On the server, `ss -ltn` for {service}: is the service running and bound to that address? Look for `REJECT --reject-with tcp-reset` rules and for service restarts at the times listed."
            ),
        });
    }
}

fn incomplete_handshakes(conns: &[Connection], out: &mut Vec<Finding>) {
    let hit = conns
        .iter()
        .filter(|c| c.handshake() == Handshake::NotCompleted);
    for (service, group) in group_by(hit, server_of) {
        let mut ev = EvidenceBuilder::default();
        let (mut synack_rtx, mut ack_lost, mut client_open) = (0u64, 0u64, 0u64);
        for c in &group {
            ev.add(c.id, c.end(Side::Client).addr, c.start, c.last);
            synack_rtx += u64::from(c.synack_retransmits(Side::Server));
            ack_lost += u64::from(c.handshake_ack_disproven);
            client_open += u64::from(c.end(Side::Client).state == TcpState::Established);
        }
        let n = group.len() as u64;
        out.push(Finding {
            severity: Severity::Warning,
            kind: "handshake_incomplete",
            service: Some(service.clone()),
            summary: format!(
                "{n} handshake(s) with {service} never completed: SYN-ACK sent, the final ACK never arrived ({synack_rtx} SYN-ACK retransmissions)"
            ),
            count: n,
            evidence: ev.build(),
            details: details(json!({
                "synack_retransmissions": synack_rtx,
                "acks_seen_but_lost": ack_lost,
                "clients_established": client_open,
            })),
            cause: "The server answered but did not get the client's ACK: it was lost or dropped between the capture point and the server (a stateful firewall, asymmetric routing), or the client gave up; the server retries its SYN-ACK tcp_synack_retries times and then forgets the connection while the client may believe it is open.".into(),
            check: "Compare captures on both hosts to find where the ACK disappears; check firewalls and conntrack between them; many of these from many sources suggest a SYN flood (`nstat -az TcpExtSyncookiesSent`).".into(),
        });
    }
    let synack_only = conns
        .iter()
        .filter(|c| c.partial && c.synack_first.is_some() && c.syn_first(Side::Client).is_none());
    for (service, group) in group_by(synack_only, server_of) {
        let mut ev = EvidenceBuilder::default();
        for c in &group {
            ev.add(c.id, c.end(Side::Server).addr, c.start, c.last);
        }
        let n = group.len() as u64;
        out.push(Finding {
            severity: Severity::Info,
            kind: "synack_without_syn",
            service: Some(service.clone()),
            summary: format!("{n} connection(s) with {service} start with a SYN-ACK whose SYN is not in the capture"),
            count: n,
            evidence: ev.build(),
            details: Map::new(),
            cause: "The capture started between the SYN and the SYN-ACK, or the SYNs take a path the capture does not see (asymmetric routing, a capture filter, another interface).".into(),
            check: "Capture on an interface that sees both directions, and start the capture before the clients connect.".into(),
        });
    }
}

/// When in the connection's life a reset came.
fn reset_phase(c: &Connection, sender: TcpState, receiver: TcpState) -> &'static str {
    use TcpState::*;
    let closing = |s: TcpState| {
        matches!(
            s,
            FinWait1 | FinWait2 | CloseWait | Closing | LastAck | TimeWait
        )
    };
    if c.handshake_done.is_none() && !c.partial {
        "handshake"
    } else if closing(sender) || closing(receiver) {
        "close"
    } else {
        "data"
    }
}

fn resets(conns: &[Connection], out: &mut Vec<Finding>) {
    let hit = conns
        .iter()
        .filter(|c| c.reset().is_some() && c.handshake() != Handshake::Refused);
    let groups = group_by(hit, |c| {
        let r = c.reset().map(|r| (r.by, r.sender_state, r.receiver_state));
        let (by, st, rst) = r.unwrap_or((Side::Client, TcpState::Closed, TcpState::Closed));
        (server_of(c), by.name(), reset_phase(c, st, rst), st.name())
    });
    for ((service, by, phase, state), group) in groups {
        let mut ev = EvidenceBuilder::default();
        for c in &group {
            if let Some(r) = c.reset() {
                ev.add(c.id, c.end(r.by).addr, r.ts, r.ts);
            }
        }
        let n = group.len() as u64;
        let cause = match phase {
            "handshake" => format!(
                "The {by} aborted before the handshake completed: the other end had a half-open connection it no longer knew (a server that dropped it after its SYN-ACK retries answers the client's data with RST), or the application gave up."
            ),
            "close" => format!(
                "The {by} reset during the close: close() with unread received data sends RST instead of FIN, or late data reached a socket already gone (an orphaned FIN_WAIT2 freed after tcp_fin_timeout)."
            ),
            _ => format!(
                "The {by} aborted an open connection: its application closed with unread data or with SO_LINGER 0, the process exited or crashed, or the host had lost the socket and answered data with RST."
            ),
        };
        out.push(Finding {
            severity: Severity::Warning,
            kind: "reset",
            service: Some(service.clone()),
            summary: format!(
                "the {by} reset {n} connection(s) with {service} during the {phase}, from {state}"
            ),
            count: n,
            evidence: ev.build(),
            details: details(json!({ "reset_by": by, "phase": phase, "sender_state": state })),
            cause,
            check: format!(
                "`tcpstate explain -r FILE {}` shows the packets before the RST; on the {by}, `nstat -az TcpExtTCPAbortOnData TcpExtTCPAbortOnClose TcpExtTCPAbortOnLinger` tells which abort it was.",
                group[0].id
            ),
        });
    }
}

fn ignored_resets(conns: &[Connection], out: &mut Vec<Finding>) {
    let mut ev = EvidenceBuilder::default();
    let (mut oow, mut inexact) = (0u64, 0u64);
    for c in conns {
        let a = c.anomalies();
        if a.rst_out_of_window + a.rst_in_window_not_exact > 0 {
            oow += u64::from(a.rst_out_of_window);
            inexact += u64::from(a.rst_in_window_not_exact);
            ev.add(c.id, c.end(Side::Server).addr, c.start, c.last);
        }
    }
    if oow + inexact == 0 {
        return;
    }
    out.push(Finding {
        severity: Severity::Warning,
        kind: "reset_out_of_window",
        service: None,
        summary: format!(
            "{} RST(s) with a sequence number the receiver does not accept: {oow} outside the window, {inexact} inside but not exact",
            oow + inexact
        ),
        count: oow + inexact,
        evidence: ev.build(),
        details: details(json!({ "out_of_window": oow, "in_window_not_exact": inexact })),
        cause: "Linux accepts only a RST at exactly the next expected sequence number (RFC 5961): these were ignored or answered with a challenge ACK; they come from stale connections, middleboxes, or blind injection attempts.".into(),
        check: "Compare the TTL and IP ID of these RSTs with the peer's other packets: a different TTL points to a device in the path forging them.".into(),
    });
}

/// A side in CLOSE_WAIT at the end, and since when.
fn stuck_close_wait(conns: &[Connection], end: Ts, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    // Group by who is not closing: a server's address:port, or a client host of a service.
    let mut groups: BTreeMap<String, (Side, EvidenceBuilder, Vec<f64>)> = BTreeMap::new();
    for c in conns {
        for side in [Side::Client, Side::Server] {
            let e = c.end(side);
            if e.state != TcpState::CloseWait || end.since(e.state_since) < cfg.stuck_after {
                continue;
            }
            let key = match side {
                Side::Server => e.addr.to_string(),
                Side::Client => format!("{} (clients of {})", e.addr.ip, server_of(c)),
            };
            let g = groups
                .entry(key)
                .or_insert_with(|| (side, EvidenceBuilder::default(), Vec::new()));
            // The peers tell the connections apart (the service is in the key).
            g.1.add(c.id, c.end(side.other()).addr, e.state_since, end);
            g.2.push(secs(end.since(e.state_since)));
        }
    }
    for (service, (side, ev, ages)) in groups {
        let n = ages.len() as u64;
        let oldest = ages.iter().copied().fold(0.0, f64::max);
        let host = match side {
            Side::Server => service.clone(),
            Side::Client => service.split(' ').next().unwrap_or("").to_string(),
        };
        out.push(Finding {
            severity: Severity::Critical,
            kind: "close_wait",
            service: Some(service.clone()),
            summary: format!(
                "{n} socket(s) of {service} sit in CLOSE_WAIT: the peer closed, this side has not called close() (oldest {oldest:.1} s)"
            ),
            count: n,
            evidence: ev.build(),
            details: details(json!({ "role": side.name(), "oldest_s": oldest, "threshold_s": secs(cfg.stuck_after) })),
            cause: format!(
                "The application on {host} received the peer's FIN (read returned 0) but never closed these sockets: a connection leak, typically a missing close() on an error path or a pool that never releases."
            ),
            check: format!(
                "On {host}: `ss -tanp state close-wait` names the process; watch its file descriptors grow (`ls /proc/PID/fd | wc -l`); review where the code closes sockets (finally/defer/with)."
            ),
        });
    }
}

/// FIN_WAIT2 at the end: this side closed, the peer acknowledged but holds its side open.
fn held_fin_wait2(conns: &[Connection], end: Ts, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let mut groups: BTreeMap<String, (EvidenceBuilder, u64, u64)> = BTreeMap::new();
    for c in conns {
        for side in [Side::Client, Side::Server] {
            let e = c.end(side);
            if e.state != TcpState::FinWait2 || end.since(e.state_since) < cfg.stuck_after {
                continue;
            }
            let peer = c.end(side.other());
            let g = groups
                .entry(peer.addr.to_string())
                .or_insert_with(|| (EvidenceBuilder::default(), 0, 0));
            g.0.add(c.id, e.addr, e.state_since, end);
            g.1 += 1;
            g.2 += u64::from(peer.state == TcpState::CloseWait);
        }
    }
    for (holder, (ev, n, peers_close_wait)) in groups {
        let explained = peers_close_wait == n;
        out.push(Finding {
            severity: if explained { Severity::Info } else { Severity::Warning },
            kind: "fin_wait2",
            service: Some(holder.clone()),
            summary: format!(
                "{n} socket(s) wait in FIN_WAIT2 for {holder} to close ({peers_close_wait} of whose sockets are in CLOSE_WAIT)"
            ),
            count: n,
            evidence: ev.build(),
            details: details(json!({ "peers_in_close_wait": peers_close_wait, "threshold_s": secs(cfg.stuck_after) })),
            cause: format!(
                "These sides closed and {holder} acknowledged their FIN but has not closed its own side: it is still sending, or has leaked the socket (see close_wait). Linux frees an orphaned FIN_WAIT2 after tcp_fin_timeout (60 s); one reached by shutdown() waits indefinitely."
            ),
            check: format!("Why {holder} does not close: see the close_wait finding for it, or `ss -tanp` on that host."),
        });
    }
}

/// One endpoint's stay in TIME_WAIT.
struct TimeWaitStay {
    conn: u64,
    addr: SockAddr,
    server: SockAddr,
    is_client: bool,
    start: Ts,
    end: Ts,
    why: TimeWaitEnd,
}

fn time_wait(conns: &[Connection], end: Ts, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let mut stays = Vec::new();
    for c in conns {
        for side in [Side::Client, Side::Server] {
            let e = c.end(side);
            if let Some(tw) = c.time_wait(side) {
                let (until, why) = tw.end.unwrap_or((end, TimeWaitEnd::CaptureEnded));
                stays.push(TimeWaitStay {
                    conn: c.id,
                    addr: e.addr,
                    server: c.end(Side::Server).addr,
                    is_client: side == Side::Client,
                    start: tw.start,
                    end: until,
                    why,
                });
            }
        }
    }
    server_closes_first(conns, &stays, out);
    time_wait_peaks(&stays, cfg, out);
    time_wait_ports(&stays, cfg, out);
    time_wait_reuse(&stays, out);
}

const TIME_WAIT_FACTS: &str = "TIME_WAIT stays with the side that closed first for 2MSL (60 s on Linux, fixed) so that late segments of the old connection cannot corrupt a new one on the same 4-tuple; it is normal and not a leak. Never use tcp_tw_recycle (it broke clients behind NAT and was removed in Linux 4.12).";

fn server_closes_first(conns: &[Connection], stays: &[TimeWaitStay], out: &mut Vec<Finding>) {
    let closed = conns
        .iter()
        .filter(|c| c.first_closer().is_some() && !c.crossed_fins);
    for (service, group) in group_by(closed, server_of) {
        let by_server = group
            .iter()
            .filter(|c| c.first_closer() == Some(Side::Server))
            .count() as u64;
        let by_client = group.len() as u64 - by_server;
        if by_server == 0 || by_server < by_client {
            continue;
        }
        let mut ev = EvidenceBuilder::default();
        for c in group
            .iter()
            .filter(|c| c.first_closer() == Some(Side::Server))
        {
            let fin = c.end(Side::Server).fin_time.get().unwrap_or(c.start);
            ev.add(c.id, c.end(Side::Server).addr, fin, fin);
        }
        let server_tw = stays
            .iter()
            .filter(|s| !s.is_client && s.server.to_string() == service)
            .count();
        out.push(Finding {
            severity: Severity::Info,
            kind: "server_closes_first",
            service: Some(service.clone()),
            summary: format!(
                "{service} closes first on {by_server} of {} closed connection(s): TIME_WAIT accumulates on the server ({server_tw} server socket(s) entered it)",
                by_server + by_client
            ),
            count: by_server,
            evidence: ev.build(),
            details: details(json!({
                "server_closed_first": by_server,
                "client_closed_first": by_client,
                "server_time_wait_sockets": server_tw,
            })),
            cause: format!(
                "The server closes before its clients do (HTTP/1.0 style, or keep-alive timeouts), so the TIME_WAIT of each connection is kept by the server. {TIME_WAIT_FACTS}"
            ),
            check: "Usually harmless on a server (TIME_WAIT there costs a little memory and no ports). If the count grows very large: let clients close first, or reuse connections with keep-alive so fewer are opened.".into(),
        });
    }
}

/// The highest number of sockets in TIME_WAIT at once among `stays`, and when.
fn peak<'a>(stays: impl Iterator<Item = &'a TimeWaitStay>) -> (usize, Ts) {
    let mut edges: Vec<(Ts, i32)> = Vec::new();
    for s in stays {
        edges.push((s.start, 1));
        edges.push((s.end, -1));
    }
    // Ends before starts at the same instant: a reused port is not counted twice.
    edges.sort();
    let (mut now, mut best, mut at) = (0i64, 0i64, Ts::default());
    for (t, d) in edges {
        now += i64::from(d);
        if now > best {
            best = now;
            at = t;
        }
    }
    (best.max(0) as usize, at)
}

fn time_wait_peaks(stays: &[TimeWaitStay], cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let mut hosts: BTreeMap<std::net::IpAddr, Vec<&TimeWaitStay>> = BTreeMap::new();
    for s in stays {
        hosts.entry(s.addr.ip).or_default().push(s);
    }
    for (host, list) in hosts {
        let (most, at) = peak(list.iter().copied());
        if most < cfg.many_time_wait {
            continue;
        }
        let mut ev = EvidenceBuilder::default();
        for s in list.iter().filter(|s| s.start <= at && at < s.end.max(at)) {
            ev.add(s.conn, s.addr, s.start, s.end);
        }
        let cut = list
            .iter()
            .filter(|s| s.why == TimeWaitEnd::CaptureEnded)
            .count();
        out.push(Finding {
            severity: Severity::Info,
            kind: "time_wait_peak",
            service: Some(host.to_string()),
            summary: format!(
                "{host} held {most} sockets in TIME_WAIT at once ({} in all; {cut} still in TIME_WAIT when the capture ended)",
                list.len()
            ),
            count: most as u64,
            evidence: ev.build(),
            details: details(json!({
                "peak": most,
                "peak_time": epoch_secs(at),
                "time_wait_sockets": list.len(),
                "cut_short_by_capture_end": cut,
            })),
            cause: format!("Many short connections closed by {host} first. {TIME_WAIT_FACTS}"),
            check: "Only a problem when it exhausts client ports (see time_wait_ports) or memory: reuse connections (keep-alive, pooling), spread clients over more addresses, or widen ip_local_port_range.".into(),
        });
    }
}

fn time_wait_ports(stays: &[TimeWaitStay], cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let (lo, hi) = cfg.port_range;
    let range = usize::from(hi.saturating_sub(lo)) + 1;
    let mut triples: BTreeMap<(std::net::IpAddr, SockAddr), Vec<&TimeWaitStay>> = BTreeMap::new();
    for s in stays.iter().filter(|s| s.is_client) {
        triples.entry((s.addr.ip, s.server)).or_default().push(s);
    }
    for ((client, server), list) in triples {
        let (most, at) = peak(list.iter().copied());
        let share = most as f64 / range as f64;
        if share < 0.10 {
            continue;
        }
        let mut ev = EvidenceBuilder::default();
        for s in list.iter().filter(|s| s.start <= at && at < s.end.max(at)) {
            ev.add(s.conn, s.addr, s.start, s.end);
        }
        out.push(Finding {
            severity: if share >= 0.5 { Severity::Critical } else { Severity::Warning },
            kind: "time_wait_ports",
            service: Some(server.to_string()),
            summary: format!(
                "client {client} held {most} ports in TIME_WAIT towards {server} at once: {:.0}% of its {range} ephemeral ports ({lo}-{hi})",
                share * 100.0
            ),
            count: most as u64,
            evidence: ev.build(),
            details: details(json!({
                "client": client.to_string(),
                "peak": most,
                "peak_time": epoch_secs(at),
                "ephemeral_ports": range,
                "share": (share * 1000.0).round() / 1000.0,
            })),
            cause: format!(
                "The client opens and closes connections to {server} faster than TIME_WAIT frees ports; each (client address, server address, server port) triple has only the ephemeral range to choose from, so connect() will fail with EADDRNOTAVAIL once it is used up. {TIME_WAIT_FACTS}"
            ),
            check: "Reuse connections (keep-alive, pooling); let the server close first; widen net.ipv4.ip_local_port_range; tcp_tw_reuse=1 lets outgoing connections take over TIME_WAIT ports safely (with TCP timestamps).".into(),
        });
    }
}

fn time_wait_reuse(stays: &[TimeWaitStay], out: &mut Vec<Finding>) {
    let mut groups: BTreeMap<SockAddr, (EvidenceBuilder, Vec<f64>)> = BTreeMap::new();
    for s in stays.iter().filter(|s| s.why == TimeWaitEnd::Reused) {
        let g = groups.entry(s.server).or_default();
        g.0.add(s.conn, s.addr, s.start, s.end);
        g.1.push(secs(s.end.since(s.start)));
    }
    for (server, (ev, ages)) in groups {
        let n = ages.len() as u64;
        let d = Distribution::of(ages);
        out.push(Finding {
            severity: Severity::Info,
            kind: "time_wait_reuse",
            service: Some(server.to_string()),
            summary: format!(
                "{n} 4-tuple(s) with {server} were reused by a new connection while one side was still in TIME_WAIT (after {:.3} s at the earliest)",
                d.min.unwrap_or(0.0)
            ),
            count: n,
            evidence: ev.build(),
            details: details(json!({ "time_in_time_wait_s": d })),
            cause: "A new SYN arrived on a 4-tuple still in TIME_WAIT: Linux lets a server's TIME_WAIT accept it when its sequence number or timestamp is newer, and clients with tcp_tw_reuse (default: loopback only) take TIME_WAIT ports after 1 s; frequent reuse means clients cycle through their ports quickly.".into(),
            check: "If new connections fail or stall on reused tuples, check that TCP timestamps are on at both ends (`net.ipv4.tcp_timestamps`) and the time_wait_ports finding.".into(),
        });
    }
}

fn slow_handshakes(conns: &[Connection], cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let done = conns
        .iter()
        .filter(|c| c.handshake() == Handshake::Completed);
    for (service, group) in group_by(done, server_of) {
        let mut times = Vec::new();
        let mut ev = EvidenceBuilder::default();
        let (mut syn_rtx, mut synack_rtx, mut slow) = (0u64, 0u64, 0u64);
        for c in &group {
            let (Some(syn), Some(est)) = (c.syn_first(Side::Client).get(), c.handshake_done.get())
            else {
                continue;
            };
            let t = est.since(syn);
            times.push(secs(t));
            let rtx = c.syn_retransmits(Side::Client) > 0 || c.synack_retransmits(Side::Server) > 0;
            syn_rtx += u64::from(c.syn_retransmits(Side::Client) > 0);
            synack_rtx += u64::from(c.synack_retransmits(Side::Server) > 0);
            if rtx || t >= cfg.slow_handshake {
                slow += 1;
                ev.add(c.id, c.end(Side::Client).addr, syn, est);
            }
        }
        if slow == 0 {
            continue;
        }
        let d = Distribution::of(times);
        out.push(Finding {
            severity: Severity::Warning,
            kind: "slow_handshake",
            service: Some(service.clone()),
            summary: format!(
                "{slow} of {} handshake(s) with {service} were slow (median {:.3} s, max {:.3} s); {syn_rtx} needed a SYN retransmission, {synack_rtx} a SYN-ACK retransmission",
                d.count,
                d.median.unwrap_or(0.0),
                d.max.unwrap_or(0.0)
            ),
            count: slow,
            evidence: ev.build(),
            details: details(json!({
                "handshake_time_s": d,
                "with_syn_retransmission": syn_rtx,
                "with_synack_retransmission": synack_rtx,
                "threshold_s": secs(cfg.slow_handshake),
            })),
            cause: "A lost SYN or SYN-ACK costs the initial retransmission timeout: 1 s for the first loss, 3 s in all after a second (Linux 6.5+ retries 1 s apart at first); without a loss, a slow handshake means a slow network path or an overloaded accept queue.".into(),
            check: format!(
                "Look for packet loss between the clients and {service} (interface drops, `nstat -az TcpExtListenDrops` on the server, queue overflows); compare the SYN-to-SYN-ACK and SYN-ACK-to-ACK times in `tcpstate summary`."
            ),
        });
    }
}

/// Rarer events and the counters of packets the engine could not use.
fn oddities(outcome: &Outcome, out: &mut Vec<Finding>) {
    let conns = &outcome.connections;
    let mut simple = |kind: &'static str,
                      pick: &dyn Fn(&Connection) -> bool,
                      summary: &dyn Fn(u64) -> String,
                      cause: &str,
                      check: &str| {
        let mut ev = EvidenceBuilder::default();
        for c in conns.iter().filter(|c| pick(c)) {
            ev.add(c.id, c.end(Side::Server).addr, c.start, c.last);
        }
        if ev.total == 0 {
            return;
        }
        let n = ev.total as u64;
        out.push(Finding {
            severity: Severity::Info,
            kind,
            service: None,
            summary: summary(n),
            count: n,
            evidence: ev.build(),
            details: Map::new(),
            cause: cause.into(),
            check: check.into(),
        });
    };
    simple(
        "simultaneous_open",
        &|c| c.simultaneous_open,
        &|n| format!("{n} connection(s) opened simultaneously (both sides sent a SYN)"),
        "Two sockets connected to each other at the same moment (peer-to-peer hole punching, or a client bound to a fixed port reconnecting to a peer doing the same); rare in client/server traffic.",
        "`tcpstate explain` one of them to see the crossed SYNs.",
    );
    simple(
        "simultaneous_close",
        &|c| c.crossed_fins,
        &|n| {
            format!(
                "{n} connection(s) closed simultaneously (the FINs crossed; both sides went through CLOSING)"
            )
        },
        "Both applications closed at about the same time; both sides then keep a TIME_WAIT.",
        "Nothing to fix; it explains TIME_WAIT on both hosts.",
    );
    simple(
        "midstream",
        &|c| c.partial,
        &|n| {
            format!("{n} connection(s) were picked up mid-stream (their SYN is not in the capture)")
        },
        "The capture started after these connections opened; their handshake facts are unknown and their direction may be guessed from the ports.",
        "Start the capture before the connections of interest open.",
    );
    let p = &outcome.packets;
    let unexplained: u64 = conns
        .iter()
        .map(|c| u64::from(c.anomalies().unexplained))
        .sum();
    let counters = [
        ("undecodable", p.undecodable_total()),
        ("timestamps_backwards", p.time_went_backwards),
        ("unsupported_link_type", p.unsupported_link),
        ("ip_fragments_skipped", p.ip_fragments),
        ("segments_without_rule", unexplained),
    ];
    let nonzero: Vec<_> = counters.iter().filter(|(_, n)| *n > 0).collect();
    if !nonzero.is_empty() {
        let total: u64 = nonzero.iter().map(|(_, n)| n).sum();
        let mut det = Map::new();
        for (k, n) in &nonzero {
            det.insert((*k).into(), (*n).into());
        }
        let words: Vec<String> = nonzero
            .iter()
            .map(|(k, n)| format!("{n} {}", k.replace('_', " ")))
            .collect();
        out.push(Finding {
            severity: Severity::Info,
            kind: "capture_problems",
            service: None,
            summary: format!("{total} packet(s) could not be used fully: {}", words.join(", ")),
            count: total,
            evidence: EvidenceBuilder::default().build(),
            details: det,
            cause: "Truncated or malformed frames, clock steps in the capture, link types or fragments tcpstate does not follow, or segments that fit no state (loss before the capture point, or a middlebox).".into(),
            check: "The per-reason counts are printed on standard error after every command; capture with a snap length of at least 128 bytes and on one interface.".into(),
        });
    }
}
