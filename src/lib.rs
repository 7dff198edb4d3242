//! tcpstate: netstat for a capture. Follows every TCP connection in packet captures and
//! reconstructs the state each side's kernel was in, and why.
//!
//! Pipeline: [`capture`] (files, live) → [`decode`] (link/IP/TCP headers) → [`flow`]
//! (4-tuple table, connection records) → [`tcp`] (per-endpoint state machine) →
//! [`analysis`] (handshake, close, TIME_WAIT facts) → [`report`] (text and JSON).

pub mod analysis;
pub mod capture;
pub mod cli;
pub mod decode;
pub mod flow;
pub mod pipeline;
pub mod report;
pub mod tcp;
pub mod time;
pub mod zeek;
