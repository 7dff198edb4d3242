//! `diagnose`: named findings about handshakes, resets, closes and TIME_WAIT, each with
//! evidence (connection ids, endpoints, first and last time), the likely cause in one
//! sentence and what to check next. Rules read the tracked connection records only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

// foldhash, seeded per run: fast, and safe for the addresses live traffic chooses.
use hashbrown::HashMap;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::analysis::stats::Distribution;
use crate::decode::SockAddr;
use crate::flow::EvictedAttempts;
use crate::flow::conn::{Handshake, TimeWait, TimeWaitEnd};
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

/// Collects connection ids, endpoints and times for one finding, from records added in any
/// order: it keeps what a pass over them in id order would list first (the smallest ids, and
/// the endpoints first met), so a finding does not depend on the order records end in.
#[derive(Default)]
struct EvidenceBuilder {
    /// The smallest distinct ids, ascending.
    ids: Vec<u64>,
    total: usize,
    /// Endpoints with the first (id, place within the record) each was met at. An endpoint
    /// pushed out by ones met earlier can never come back in: the keys here only go down.
    endpoints: Vec<((u64, u8), SockAddr)>,
    first: Option<Ts>,
    last: Option<Ts>,
}

impl EvidenceBuilder {
    fn add(&mut self, id: u64, endpoint: SockAddr, from: Ts, to: Ts) {
        self.add_at(id, 0, endpoint, from, to);
    }

    /// `place`: the order of this endpoint among those one record adds to the same finding.
    fn add_at(&mut self, id: u64, place: u8, endpoint: SockAddr, from: Ts, to: Ts) {
        self.total += 1;
        if let Err(at) = self.ids.binary_search(&id)
            && at < EVIDENCE_IDS
        {
            self.ids.insert(at, id);
            self.ids.truncate(EVIDENCE_IDS);
        }
        let key = (id, place);
        if let Some(known) = self.endpoints.iter_mut().find(|(_, ep)| *ep == endpoint) {
            known.0 = known.0.min(key);
        } else if self.endpoints.len() < EVIDENCE_ENDPOINTS {
            self.endpoints.push((key, endpoint));
        } else if let Some(latest) = self.endpoints.iter_mut().max_by_key(|(k, _)| *k)
            && key < latest.0
        {
            *latest = (key, endpoint);
        }
        self.first = Some(self.first.map_or(from, |f| f.min(from)));
        self.last = Some(self.last.map_or(to, |l| l.max(to)));
    }

    fn build(mut self) -> Evidence {
        self.endpoints.sort_unstable_by_key(|(k, _)| *k);
        Evidence {
            connections: self.ids,
            connections_total: self.total,
            endpoints: self
                .endpoints
                .iter()
                .map(|(_, ep)| ep.to_string())
                .collect(),
            first: self.first.map(epoch_secs),
            last: self.last.map(epoch_secs),
        }
    }
}

fn server_addr(c: &Connection) -> SockAddr {
    c.end(Side::Server).addr
}

fn details(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Every finding the connections support, most severe first, then most frequent.
pub fn diagnose(outcome: &Outcome, cfg: &DiagnoseConfig) -> Vec<Finding> {
    let mut builder = DiagnoseBuilder::new(*cfg);
    for c in &outcome.connections {
        builder.add(c);
    }
    builder.finish(outcome)
}

/// `diagnose` as records end: each record is added and dropped. Kept per connection of the
/// capture is only what a finding still needs at the end: a TIME_WAIT stay (40 bytes; peaks
/// need them all), a handshake time (8 bytes; medians need them all), a side in CLOSE_WAIT
/// or FIN_WAIT2 (whether it is stuck depends on when the capture ends).
pub struct DiagnoseBuilder {
    cfg: DiagnoseConfig,
    floods: BTreeMap<SockAddr, Flood>,
    unanswered: BTreeMap<SockAddr, Unanswered>,
    refused: BTreeMap<SockAddr, (EvidenceBuilder, BTreeSet<IpAddr>)>,
    incomplete: BTreeMap<SockAddr, Incomplete>,
    synack_only: BTreeMap<SockAddr, EvidenceBuilder>,
    resets: BTreeMap<ResetKey, ResetGroup>,
    ignored_resets: (EvidenceBuilder, u64, u64),
    stuck: Vec<StuckSide>,
    stays: Stays,
    closers: BTreeMap<SockAddr, Closers>,
    handshakes: BTreeMap<SockAddr, Handshakes>,
    simultaneous_open: EvidenceBuilder,
    crossed_fins: EvidenceBuilder,
    midstream: EvidenceBuilder,
    unexplained: u64,
}

impl DiagnoseBuilder {
    pub fn new(cfg: DiagnoseConfig) -> DiagnoseBuilder {
        DiagnoseBuilder {
            cfg,
            floods: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            refused: BTreeMap::new(),
            incomplete: BTreeMap::new(),
            synack_only: BTreeMap::new(),
            resets: BTreeMap::new(),
            ignored_resets: Default::default(),
            stuck: Vec::new(),
            stays: Stays::default(),
            closers: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            simultaneous_open: EvidenceBuilder::default(),
            crossed_fins: EvidenceBuilder::default(),
            midstream: EvidenceBuilder::default(),
            unexplained: 0,
        }
    }

    pub fn add(&mut self, c: &Connection) {
        let handshake = c.handshake();
        if c.is_half_open_attempt()
            && matches!(handshake, Handshake::Unanswered | Handshake::NotCompleted)
        {
            let g = self.floods.entry(server_addr(c)).or_default();
            g.ev.add(c.id, c.end(Side::Client).addr, c.start, c.last);
            g.attempts += 1;
            g.syns += u64::from(c.syn_count(Side::Client).max(1));
        }
        match handshake {
            Handshake::Unanswered => self.unanswered.entry(server_addr(c)).or_default().add(c),
            Handshake::Refused => {
                let client = c.end(Side::Client).addr;
                let g = self.refused.entry(server_addr(c)).or_default();
                g.0.add(c.id, client, c.start, c.last);
                g.1.insert(client.ip);
            }
            Handshake::NotCompleted => self.incomplete.entry(server_addr(c)).or_default().add(c),
            Handshake::Completed => {
                let slow = self.cfg.slow_handshake;
                self.handshakes
                    .entry(server_addr(c))
                    .or_default()
                    .add(c, slow);
            }
            _ => {}
        }
        if c.partial && c.synack_first.is_some() && c.syn_first(Side::Client).is_none() {
            let ev = self.synack_only.entry(server_addr(c)).or_default();
            ev.add(c.id, c.end(Side::Server).addr, c.start, c.last);
        }
        if let Some(r) = c.reset()
            && handshake != Handshake::Refused
        {
            let key = (
                server_addr(c),
                r.by.name(),
                reset_phase(c, r.sender_state, r.receiver_state),
                r.sender_state.name(),
            );
            let g = self.resets.entry(key).or_insert_with(|| ResetGroup {
                ev: EvidenceBuilder::default(),
                count: 0,
                first_id: c.id,
            });
            g.ev.add(c.id, c.end(r.by).addr, r.ts, r.ts);
            g.count += 1;
            g.first_id = g.first_id.min(c.id);
        }
        let a = c.anomalies();
        if a.rst_out_of_window + a.rst_in_window_not_exact > 0 {
            let (ev, oow, inexact) = &mut self.ignored_resets;
            *oow += u64::from(a.rst_out_of_window);
            *inexact += u64::from(a.rst_in_window_not_exact);
            ev.add(c.id, c.end(Side::Server).addr, c.start, c.last);
        }
        self.unexplained += u64::from(a.unexplained);
        for side in [Side::Client, Side::Server] {
            let e = c.end(side);
            if matches!(e.state, TcpState::CloseWait | TcpState::FinWait2) {
                let peer = c.end(side.other());
                self.stuck.push(StuckSide {
                    id: c.id,
                    side,
                    state: e.state,
                    since: e.state_since,
                    addr: e.addr,
                    peer: peer.addr,
                    peer_state: peer.state,
                    server: server_addr(c),
                });
            }
            if let Some(tw) = c.time_wait(side) {
                self.stays.add(c, side, tw);
            }
        }
        if let Some(closer) = c.first_closer()
            && !c.crossed_fins
        {
            let g = self.closers.entry(server_addr(c)).or_default();
            if closer == Side::Server {
                let fin = c.end(Side::Server).fin_time.get().unwrap_or(c.start);
                g.ev.add(c.id, c.end(Side::Server).addr, fin, fin);
                g.by_server += 1;
            } else {
                g.by_client += 1;
            }
        }
        let server = c.end(Side::Server).addr;
        for (seen, ev) in [
            (c.simultaneous_open, &mut self.simultaneous_open),
            (c.crossed_fins, &mut self.crossed_fins),
            (c.partial, &mut self.midstream),
        ] {
            if seen {
                ev.add(c.id, server, c.start, c.last);
            }
        }
    }

    /// The findings, most severe first, then most frequent.
    pub fn finish(self, outcome: &Outcome) -> Vec<Finding> {
        let cfg = &self.cfg;
        let end = outcome.end_ts.unwrap_or_default();
        let mut all = Vec::new();
        syn_flood(self.floods, &outcome.evicted_attempts, cfg, &mut all);
        unanswered_syns(self.unanswered, &mut all);
        refused(self.refused, &mut all);
        incomplete_handshakes(self.incomplete, self.synack_only, &mut all);
        resets(self.resets, &mut all);
        ignored_resets(self.ignored_resets, &mut all);
        stuck_close_wait(&self.stuck, end, cfg, &mut all);
        held_fin_wait2(&self.stuck, end, cfg, &mut all);
        let mut stays = self.stays;
        stays.settle(end);
        server_closes_first(self.closers, &stays, &mut all);
        time_wait_peaks(&stays, cfg, &mut all);
        time_wait_ports(&stays, cfg, &mut all);
        time_wait_reuse(&stays, &mut all);
        slow_handshakes(self.handshakes, cfg, &mut all);
        let mut simple =
            |kind: &'static str, ev: EvidenceBuilder, summary: String, cause: &str, check: &str| {
                if ev.total == 0 {
                    return;
                }
                all.push(Finding {
                    severity: Severity::Info,
                    kind,
                    service: None,
                    summary,
                    count: ev.total as u64,
                    evidence: ev.build(),
                    details: Map::new(),
                    cause: cause.into(),
                    check: check.into(),
                });
            };
        let n = self.simultaneous_open.total;
        simple(
            "simultaneous_open",
            self.simultaneous_open,
            format!("{n} connection(s) opened simultaneously (both sides sent a SYN)"),
            "Two sockets connected to each other at the same moment (peer-to-peer hole punching, or a client bound to a fixed port reconnecting to a peer doing the same); rare in client/server traffic.",
            "`tcpstate explain` one of them to see the crossed SYNs.",
        );
        let n = self.crossed_fins.total;
        simple(
            "simultaneous_close",
            self.crossed_fins,
            format!(
                "{n} connection(s) closed simultaneously (the FINs crossed; both sides went through CLOSING)"
            ),
            "Both applications closed at about the same time; both sides then keep a TIME_WAIT.",
            "Nothing to fix; it explains TIME_WAIT on both hosts.",
        );
        let n = self.midstream.total;
        simple(
            "midstream",
            self.midstream,
            format!(
                "{n} connection(s) were picked up mid-stream (their SYN is not in the capture)"
            ),
            "The capture started after these connections opened; their handshake facts are unknown and their direction may be guessed from the ports.",
            "Start the capture before the connections of interest open.",
        );
        capture_problems(outcome, self.unexplained, &mut all);
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
}

#[derive(Default)]
struct Flood {
    ev: EvidenceBuilder,
    attempts: u64,
    syns: u64,
    evicted: u64,
}

/// Many half-open attempts on one server: tracked ones plus those evicted under `--max-conns`.
fn syn_flood(
    mut per: BTreeMap<SockAddr, Flood>,
    evicted_attempts: &[(SockAddr, EvictedAttempts)],
    cfg: &DiagnoseConfig,
    out: &mut Vec<Finding>,
) {
    for (server, a) in evicted_attempts {
        let g = per.entry(*server).or_default();
        g.attempts += a.count;
        g.syns += a.syns;
        g.evicted += a.count;
        g.ev.first = Some(g.ev.first.map_or(a.first, |f| f.min(a.first)));
        g.ev.last = Some(g.ev.last.map_or(a.last, |l| l.max(a.last)));
    }
    for (server, g) in per {
        let Flood {
            ev,
            attempts,
            syns,
            evicted,
        } = g;
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

#[derive(Default)]
struct Unanswered {
    ev: EvidenceBuilder,
    n: u64,
    syns: u64,
    gave_up: u64,
    trying: u64,
    /// The SYN times of the attempt with the most, the smallest id among equals.
    longest: Option<(u64, Vec<Ts>)>,
}

impl Unanswered {
    fn add(&mut self, c: &Connection) {
        let client = c.end(Side::Client);
        self.ev.add(c.id, client.addr, c.start, c.last);
        self.n += 1;
        self.syns += u64::from(c.syn_count(Side::Client));
        let times = c.syn_times(Side::Client);
        let longer = match &self.longest {
            None => !times.is_empty(),
            Some((id, kept)) => {
                times.len() > kept.len() || (times.len() == kept.len() && c.id < *id)
            }
        };
        if longer {
            self.longest = Some((c.id, times.to_vec()));
        }
        match client.state {
            TcpState::SynSent => self.trying += 1,
            _ => self.gave_up += 1,
        }
    }
}

fn unanswered_syns(groups: BTreeMap<SockAddr, Unanswered>, out: &mut Vec<Finding>) {
    for (server, g) in groups {
        let service = server.to_string();
        let (n, syns) = (g.n, g.syns);
        let longest = g.longest.map(|(_, t)| t).unwrap_or_default();
        let spacing: Vec<f64> = longest
            .windows(2)
            .map(|w| (w[1].since(w[0]).as_secs_f64() * 10.0).round() / 10.0)
            .collect();
        out.push(Finding {
            severity: Severity::Critical,
            kind: "unanswered_syn",
            service: Some(service.clone()),
            summary: format!(
                "{n} connection attempt(s) to {service} got no answer: {syns} SYNs, {} retransmissions",
                syns.saturating_sub(n)
            ),
            count: n,
            evidence: g.ev.build(),
            details: details(json!({
                "syns": syns,
                "syn_retransmissions": syns.saturating_sub(n),
                "retransmission_spacing_s": spacing,
                "clients_gave_up": g.gave_up,
                "clients_still_trying_at_end": g.trying,
            })),
            cause: "Nothing answered the SYNs (no SYN-ACK, no RST): the host is down or unreachable, a firewall drops them silently, or the listener's accept queue is full (Linux then drops SYNs without a word).".into(),
            check: format!(
                "Is anything listening on {service} (`ss -ltn` there)? Does a firewall drop rather than reject? On the server, `nstat -az TcpExtListenOverflows TcpExtListenDrops`; capture on the server to see whether the SYNs arrive at all."
            ),
        });
    }
}

fn refused(
    groups: BTreeMap<SockAddr, (EvidenceBuilder, BTreeSet<IpAddr>)>,
    out: &mut Vec<Finding>,
) {
    for (server, (ev, client_hosts)) in groups {
        let service = server.to_string();
        let n = ev.total as u64;
        out.push(Finding {
            severity: Severity::Critical,
            kind: "refused",
            service: Some(service.clone()),
            summary: format!("{n} connection attempt(s) to {service} were refused (SYN answered by RST)"),
            count: n,
            evidence: ev.build(),
            details: details(json!({ "client_hosts": client_hosts.len() })),
            cause: "The host answered the SYN with a RST: no socket listens on that port (the service is down, restarting, or bound to another address), or a firewall rejects with a TCP reset.".into(),
            check: format!(
                "On the server, `ss -ltn` for {service}: is the service running and bound to that address? Look for `REJECT --reject-with tcp-reset` rules and for service restarts at the times listed."
            ),
        });
    }
}

#[derive(Default)]
struct Incomplete {
    ev: EvidenceBuilder,
    synack_rtx: u64,
    ack_lost: u64,
    client_open: u64,
}

impl Incomplete {
    fn add(&mut self, c: &Connection) {
        self.ev.add(c.id, c.end(Side::Client).addr, c.start, c.last);
        self.synack_rtx += u64::from(c.synack_retransmits(Side::Server));
        self.ack_lost += u64::from(c.handshake_ack_disproven);
        self.client_open += u64::from(c.end(Side::Client).state == TcpState::Established);
    }
}

fn incomplete_handshakes(
    groups: BTreeMap<SockAddr, Incomplete>,
    synack_only: BTreeMap<SockAddr, EvidenceBuilder>,
    out: &mut Vec<Finding>,
) {
    for (server, g) in groups {
        let service = server.to_string();
        let n = g.ev.total as u64;
        let synack_rtx = g.synack_rtx;
        out.push(Finding {
            severity: Severity::Warning,
            kind: "handshake_incomplete",
            service: Some(service.clone()),
            summary: format!(
                "{n} handshake(s) with {service} never completed: SYN-ACK sent, the final ACK never arrived ({synack_rtx} SYN-ACK retransmissions)"
            ),
            count: n,
            evidence: g.ev.build(),
            details: details(json!({
                "synack_retransmissions": synack_rtx,
                "acks_seen_but_lost": g.ack_lost,
                "clients_established": g.client_open,
            })),
            cause: "The server answered but did not get the client's ACK: it was lost or dropped between the capture point and the server (a stateful firewall, asymmetric routing), or the client gave up; the server retries its SYN-ACK tcp_synack_retries times and then forgets the connection while the client may believe it is open.".into(),
            check: "Compare captures on both hosts to find where the ACK disappears; check firewalls and conntrack between them; many of these from many sources suggest a SYN flood (`nstat -az TcpExtSyncookiesSent`).".into(),
        });
    }
    for (server, ev) in synack_only {
        let service = server.to_string();
        let n = ev.total as u64;
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

/// Server, who reset, the phase, the sender's state.
type ResetKey = (SockAddr, &'static str, &'static str, &'static str);

struct ResetGroup {
    ev: EvidenceBuilder,
    count: u64,
    first_id: u64,
}

fn resets(groups: BTreeMap<ResetKey, ResetGroup>, out: &mut Vec<Finding>) {
    for ((server, by, phase, state), g) in groups {
        let service = server.to_string();
        let n = g.count;
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
            evidence: g.ev.build(),
            details: details(json!({ "reset_by": by, "phase": phase, "sender_state": state })),
            cause,
            check: format!(
                "`tcpstate explain -r FILE {}` shows the packets before the RST; on the {by}, `nstat -az TcpExtTCPAbortOnData TcpExtTCPAbortOnClose TcpExtTCPAbortOnLinger` tells which abort it was.",
                g.first_id
            ),
        });
    }
}

fn ignored_resets((ev, oow, inexact): (EvidenceBuilder, u64, u64), out: &mut Vec<Finding>) {
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

/// A side in CLOSE_WAIT or FIN_WAIT2 when its record ended: stuck if the capture goes on
/// long enough after it got there.
struct StuckSide {
    id: u64,
    side: Side,
    state: TcpState,
    since: Ts,
    addr: SockAddr,
    peer: SockAddr,
    peer_state: TcpState,
    server: SockAddr,
}

/// A side in CLOSE_WAIT at the end, and since when.
fn stuck_close_wait(stuck: &[StuckSide], end: Ts, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    // Group by who is not closing: a server's address:port, or a client host of a service.
    let mut groups: BTreeMap<String, (Side, EvidenceBuilder, Vec<f64>)> = BTreeMap::new();
    for s in stuck {
        if s.state != TcpState::CloseWait || end.since(s.since) < cfg.stuck_after {
            continue;
        }
        let key = match s.side {
            Side::Server => s.addr.to_string(),
            Side::Client => format!("{} (clients of {})", s.addr.ip, s.server),
        };
        let g = groups
            .entry(key)
            .or_insert_with(|| (s.side, EvidenceBuilder::default(), Vec::new()));
        // The peers tell the connections apart (the service is in the key).
        g.1.add_at(s.id, s.side.index() as u8, s.peer, s.since, end);
        g.2.push(secs(end.since(s.since)));
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
fn held_fin_wait2(stuck: &[StuckSide], end: Ts, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let mut groups: BTreeMap<String, (EvidenceBuilder, u64, u64)> = BTreeMap::new();
    for s in stuck {
        if s.state != TcpState::FinWait2 || end.since(s.since) < cfg.stuck_after {
            continue;
        }
        let g = groups
            .entry(s.peer.to_string())
            .or_insert_with(|| (EvidenceBuilder::default(), 0, 0));
        g.0.add_at(s.id, s.side.index() as u8, s.addr, s.since, end);
        g.1 += 1;
        g.2 += u64::from(s.peer_state == TcpState::CloseWait);
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

/// One endpoint's stay in TIME_WAIT, in 40 bytes: a capture of short connections has one
/// for nearly every connection, so addresses are kept once each (hosts and servers repeat).
struct TimeWaitStay {
    conn: u64,
    start: Ts,
    /// When `why` is `None`, the end of the capture (set by `Stays::settle`).
    end: Ts,
    host: u32,
    server: u32,
    port: u16,
    why: Option<TimeWaitEnd>,
    is_client: bool,
}

impl TimeWaitStay {
    fn why(&self) -> TimeWaitEnd {
        self.why.unwrap_or(TimeWaitEnd::CaptureEnded)
    }
}

#[derive(Default)]
struct Stays {
    list: Vec<TimeWaitStay>,
    hosts: Vec<IpAddr>,
    host_index: HashMap<IpAddr, u32>,
    servers: Vec<SockAddr>,
    server_index: HashMap<SockAddr, u32>,
}

fn intern<K: Copy + Eq + std::hash::Hash>(
    list: &mut Vec<K>,
    index: &mut HashMap<K, u32>,
    key: K,
) -> u32 {
    *index.entry(key).or_insert_with(|| {
        list.push(key);
        (list.len() - 1) as u32
    })
}

impl Stays {
    fn add(&mut self, c: &Connection, side: Side, tw: TimeWait) {
        let addr = c.end(side).addr;
        let host = intern(&mut self.hosts, &mut self.host_index, addr.ip);
        let server = intern(&mut self.servers, &mut self.server_index, server_addr(c));
        let (end, why) = match tw.end {
            Some((t, why)) => (t, Some(why)),
            None => (Ts::default(), None),
        };
        self.list.push(TimeWaitStay {
            conn: c.id,
            start: tw.start,
            end,
            host,
            server,
            port: addr.port,
            why,
            is_client: side == Side::Client,
        });
    }

    /// Stays still open when their record ended last until the capture's `end`.
    fn settle(&mut self, end: Ts) {
        for s in self.list.iter_mut().filter(|s| s.why.is_none()) {
            s.end = end;
        }
    }

    fn host(&self, s: &TimeWaitStay) -> IpAddr {
        self.hosts[s.host as usize]
    }

    fn addr(&self, s: &TimeWaitStay) -> SockAddr {
        SockAddr {
            ip: self.host(s),
            port: s.port,
        }
    }

    fn server(&self, s: &TimeWaitStay) -> SockAddr {
        self.servers[s.server as usize]
    }

    /// The evidence of the stays in TIME_WAIT at `at`.
    fn evidence_at(&self, list: &[&TimeWaitStay], at: Ts) -> EvidenceBuilder {
        let mut ev = EvidenceBuilder::default();
        for s in list.iter().filter(|s| s.start <= at && at < s.end.max(at)) {
            ev.add_at(s.conn, u8::from(!s.is_client), self.addr(s), s.start, s.end);
        }
        ev
    }
}

const TIME_WAIT_FACTS: &str = "TIME_WAIT stays with the side that closed first for 2MSL (60 s on Linux, fixed) so that late segments of the old connection cannot corrupt a new one on the same 4-tuple; it is normal and not a leak. Never use tcp_tw_recycle (it broke clients behind NAT and was removed in Linux 4.12).";

#[derive(Default)]
struct Closers {
    ev: EvidenceBuilder,
    by_server: u64,
    by_client: u64,
}

fn server_closes_first(groups: BTreeMap<SockAddr, Closers>, stays: &Stays, out: &mut Vec<Finding>) {
    for (server, g) in groups {
        let (by_server, by_client) = (g.by_server, g.by_client);
        if by_server == 0 || by_server < by_client {
            continue;
        }
        let service = server.to_string();
        let server_tw = stays
            .list
            .iter()
            .filter(|s| !s.is_client && stays.server(s) == server)
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
            evidence: g.ev.build(),
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
fn peak(stays: &[&TimeWaitStay]) -> (usize, Ts) {
    let mut edges: Vec<(Ts, i32)> = Vec::with_capacity(stays.len() * 2);
    for s in stays {
        edges.push((s.start, 1));
        edges.push((s.end, -1));
    }
    // Ends before starts at the same instant: a reused port is not counted twice.
    edges.sort_unstable();
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

fn time_wait_peaks(stays: &Stays, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let mut hosts: BTreeMap<IpAddr, Vec<&TimeWaitStay>> = BTreeMap::new();
    for s in &stays.list {
        hosts.entry(stays.host(s)).or_default().push(s);
    }
    for (host, list) in hosts {
        let (most, at) = peak(&list);
        if most < cfg.many_time_wait {
            continue;
        }
        let ev = stays.evidence_at(&list, at);
        let cut = list
            .iter()
            .filter(|s| s.why() == TimeWaitEnd::CaptureEnded)
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

fn time_wait_ports(stays: &Stays, cfg: &DiagnoseConfig, out: &mut Vec<Finding>) {
    let (lo, hi) = cfg.port_range;
    let range = usize::from(hi.saturating_sub(lo)) + 1;
    let mut triples: BTreeMap<(IpAddr, SockAddr), Vec<&TimeWaitStay>> = BTreeMap::new();
    for s in stays.list.iter().filter(|s| s.is_client) {
        triples
            .entry((stays.host(s), stays.server(s)))
            .or_default()
            .push(s);
    }
    for ((client, server), list) in triples {
        let (most, at) = peak(&list);
        let share = most as f64 / range as f64;
        if share < 0.10 {
            continue;
        }
        let ev = stays.evidence_at(&list, at);
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

fn time_wait_reuse(stays: &Stays, out: &mut Vec<Finding>) {
    let mut groups: BTreeMap<SockAddr, (EvidenceBuilder, Vec<f64>)> = BTreeMap::new();
    for s in stays.list.iter().filter(|s| s.why() == TimeWaitEnd::Reused) {
        let g = groups.entry(stays.server(s)).or_default();
        g.0.add_at(
            s.conn,
            u8::from(!s.is_client),
            stays.addr(s),
            s.start,
            s.end,
        );
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

/// Completed handshakes with one server: every time (for the median), the slow ones' evidence.
#[derive(Default)]
struct Handshakes {
    times: Vec<f64>,
    ev: EvidenceBuilder,
    syn_rtx: u64,
    synack_rtx: u64,
}

impl Handshakes {
    fn add(&mut self, c: &Connection, slow: Dur) {
        let (Some(syn), Some(est)) = (c.syn_first(Side::Client).get(), c.handshake_done.get())
        else {
            return;
        };
        let t = est.since(syn);
        self.times.push(secs(t));
        let syn_rtx = c.syn_retransmits(Side::Client) > 0;
        let synack_rtx = c.synack_retransmits(Side::Server) > 0;
        self.syn_rtx += u64::from(syn_rtx);
        self.synack_rtx += u64::from(synack_rtx);
        if syn_rtx || synack_rtx || t >= slow {
            self.ev.add(c.id, c.end(Side::Client).addr, syn, est);
        }
    }
}

fn slow_handshakes(
    groups: BTreeMap<SockAddr, Handshakes>,
    cfg: &DiagnoseConfig,
    out: &mut Vec<Finding>,
) {
    for (server, g) in groups {
        let slow = g.ev.total as u64;
        if slow == 0 {
            continue;
        }
        let service = server.to_string();
        let (syn_rtx, synack_rtx) = (g.syn_rtx, g.synack_rtx);
        let d = Distribution::of(g.times);
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
            evidence: g.ev.build(),
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

/// The counters of packets the engine could not use, and segments no rule explained.
fn capture_problems(outcome: &Outcome, unexplained: u64, out: &mut Vec<Finding>) {
    let p = &outcome.packets;
    let counters = [
        ("undecodable", p.undecodable_total()),
        ("timestamps_backwards", p.time_went_backwards),
        ("unsupported_link_type", p.unsupported_link),
        ("ip_fragments_skipped", p.ip_fragments),
        ("segments_without_rule", unexplained),
    ];
    let nonzero: Vec<_> = counters.iter().filter(|(_, n)| *n > 0).collect();
    if nonzero.is_empty() {
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn endpoint(port: u16) -> SockAddr {
        SockAddr {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        }
    }

    proptest! {
        /// Fed in any order, the evidence lists what a pass in (id, place) order lists first:
        /// the first 20 distinct ids and the first 10 distinct endpoints met.
        #[test]
        fn evidence_does_not_depend_on_the_order_records_come_in(
            (adds, order) in proptest::collection::btree_map((0u64..80, 0u8..2), 0u16..30, 0..200)
                .prop_flat_map(|m| {
                    let adds: Vec<((u64, u8), u16)> = m.into_iter().collect();
                    let order: Vec<usize> = (0..adds.len()).collect();
                    (Just(adds), Just(order).prop_shuffle())
                })
        ) {
            let (mut ids, mut endpoints) = (Vec::new(), Vec::new());
            for &((id, _), port) in &adds {
                if ids.len() < EVIDENCE_IDS && !ids.contains(&id) {
                    ids.push(id);
                }
                let ep = endpoint(port).to_string();
                if endpoints.len() < EVIDENCE_ENDPOINTS && !endpoints.contains(&ep) {
                    endpoints.push(ep);
                }
            }
            let mut ev = EvidenceBuilder::default();
            for &i in &order {
                let ((id, place), port) = adds[i];
                let t = Ts(id as i64);
                ev.add_at(id, place, endpoint(port), t, t);
            }
            let built = ev.build();
            prop_assert_eq!(built.connections, ids);
            prop_assert_eq!(built.endpoints, endpoints);
            prop_assert_eq!(built.connections_total, adds.len());
        }
    }
}
