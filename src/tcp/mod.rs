//! The per-endpoint TCP state machine: RFC 793's eleven states, named as netstat names them.

pub mod machine;
pub mod seq;

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Closed,
    Listen,
    SynSent,
    SynRecv,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl TcpState {
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Closed,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// netstat's spelling, which the JSON output uses too.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Closed => "CLOSED",
            TcpState::Listen => "LISTEN",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::Closing => "CLOSING",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
        }
    }

    pub fn from_name(s: &str) -> Option<TcpState> {
        let norm = s.trim().to_ascii_uppercase().replace('-', "_");
        let norm = match norm.as_str() {
            "ESTAB" => "ESTABLISHED",
            "FIN_WAIT_1" => "FIN_WAIT1",
            "FIN_WAIT_2" => "FIN_WAIT2",
            "UNCONN" => "CLOSED",
            other => other,
        }
        .to_string();
        TcpState::ALL.into_iter().find(|st| st.name() == norm)
    }

    /// A socket the kernel would list for this 4-tuple (`ss -tan` shows it).
    pub fn has_socket(self) -> bool {
        !matches!(self, TcpState::Closed | TcpState::Listen)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}
