//! A Zeek-compatible `conn.log` for TCP: an independent re-implementation of the rules the
//! Zeek network monitor applies to TCP packets when it writes `conn.log` (connection
//! orientation and flips, per-endpoint states, history letters, `conn_state`, byte counts from
//! sequence numbers, timers that split and end connections on packet time).
//!
//! This engine is separate from tcpstate's own kernel-state machine ([`crate::tcp`]): Zeek's
//! model differs (it flips roles on heuristics, ends connections after inactivity, starts a new
//! row on a reused 4-tuple, drops packets with bad checksums), so reformatting tcpstate's
//! [`crate::flow`] records would not give Zeek's rows. The rules are those restated in
//! `shared/oracles/zeek/CONN_STATES.md`; the section numbers in comments refer to it.
//!
//! ```no_run
//! use tcpstate::zeek::{ZeekConfig, ZeekTracker, write_conn_log};
//! let mut tracker = ZeekTracker::new(ZeekConfig::default());
//! # let packets: Vec<tcpstate::capture::RawPacket<'_>> = Vec::new();
//! for pkt in &packets {
//!     tracker.process(pkt);
//! }
//! let rows = tracker.finish();
//! write_conn_log(&mut std::io::stdout(), &rows, 0.0).unwrap();
//! ```
//!
//! Only TCP is tracked, as a plain `zeek -r` would (all default scripts loaded). Not
//! reproduced: application-layer analysis (the `service` column, the `X` history letter, the
//! one-hour inactivity timeout an SSH or FTP analyzer sets when it recognises its protocol on
//! a non-standard port), `tunnel_parents` (tunnels are opened, but the tunnel connections
//! themselves are not logged), and tunnels beyond IP-in-IP, GRE (also over UDP 4754), VXLAN,
//! Geneve, GTP-U, Teredo and AYIYA. `zeek -b` runs with fewer likely server ports: set
//! [`ZeekConfig::likely_server_ports`] to match such a run.

mod conn;
mod decode;
mod frag;
mod log;
mod tracker;

#[cfg(test)]
mod tests;

pub use conn::ConnState;
pub use log::{
    ConnLogWriter, format_zeek_time, write_close, write_conn_log, write_header, write_row,
};
pub use tracker::ZeekTracker;

use crate::decode::SockAddr;

/// Zeek's default `likely_server_ports` for TCP: the server ports of every protocol script
/// loaded by a plain `zeek -r` (section 3.2). Used to orient connections whose first packet is
/// not a pure SYN.
pub const DEFAULT_LIKELY_SERVER_PORTS: &[u16] = &[
    21, 22, 25, 53, 79, 80, 81, 88, 135, 139, 143, 389, 443, 445, 465, 502, 514, 563, 585, 587,
    614, 631, 636, 989, 990, 992, 993, 995, 1080, 1434, 1883, 2811, 3128, 3268, 3306, 3389, 5222,
    5223, 5269, 5432, 6379, 6666, 6667, 6668, 6669, 8000, 8080, 8888, 20000,
];

/// How the tracker runs.
#[derive(Clone, Debug)]
pub struct ZeekConfig {
    /// Do not verify IPv4 header and TCP checksums (`zeek -C`). Captures taken on the sending
    /// host (checksum offload, Linux loopback) have invalid TCP checksums; with checking on,
    /// such packets only leave a `C`/`c` history letter.
    pub ignore_checksums: bool,
    /// Ports that make a connection's first non-SYN packet be read as coming from the server.
    pub likely_server_ports: Vec<u16>,
    /// At most this many connections open at once (Zeek has no such limit): when full, the
    /// least recently active eighth is logged as it stands and removed, so that millions of
    /// distinct 4-tuples cannot take all memory. `None`: no limit, as Zeek.
    pub max_conns: Option<usize>,
}

impl Default for ZeekConfig {
    /// Zeek's defaults: checksums verified, default `likely_server_ports`, no connection limit.
    fn default() -> Self {
        ZeekConfig {
            ignore_checksums: false,
            likely_server_ports: DEFAULT_LIKELY_SERVER_PORTS.to_vec(),
            max_conns: None,
        }
    }
}

/// One `conn.log` row (a TCP connection as Zeek logs it when the connection is removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZeekConn {
    /// Zeek-style connection id (`C` + base62), deterministic per tracker run.
    pub uid: String,
    /// Timestamp of the packet that created the connection, microseconds since the epoch.
    pub ts_us: i64,
    /// Originator, as finally oriented.
    pub orig: SockAddr,
    /// Responder, as finally oriented.
    pub resp: SockAddr,
    /// `last_time - start_time` in microseconds; logged (with the byte counts) only if > 0.
    pub duration_us: i64,
    /// Originator payload bytes derived from sequence numbers.
    pub orig_bytes: u64,
    /// Responder payload bytes derived from sequence numbers.
    pub resp_bytes: u64,
    pub conn_state: ConnState,
    /// Bytes in content gaps (acknowledged but never seen).
    pub missed_bytes: u64,
    /// History letters; empty is logged as unset.
    pub history: String,
    pub orig_pkts: u64,
    pub orig_ip_bytes: u64,
    pub resp_pkts: u64,
    pub resp_ip_bytes: u64,
    /// The connection was seen inside a tunnel (Zeek would name the tunnel in
    /// `tunnel_parents`; this tracker does not log tunnel connections, so it only marks it).
    pub tunneled: bool,
}
