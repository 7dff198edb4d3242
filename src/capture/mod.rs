//! Capture sources: files (pcap, pcapng, standard input) and live interfaces.
//! A source hands each record to a callback, borrowed, never copied.

pub mod file;
pub mod filter;
pub mod live;
pub mod read_ahead;

use std::fmt;
use std::ops::ControlFlow;

use crate::time::Ts;

/// One captured frame as the source read it.
#[derive(Clone, Copy, Debug)]
pub struct RawPacket<'a> {
    pub ts: Ts,
    /// LINKTYPE_ value of the interface it was captured on.
    pub linktype: i32,
    pub data: &'a [u8],
    /// Length on the wire; larger than `data.len()` when the snap length cut the frame.
    pub orig_len: u32,
    /// The frame of a packet some records later in the same input and link type, when the
    /// reader already holds it (else empty): the flow table fetches that packet's record
    /// into the cache while this one is processed (see `FlowTable::look_ahead`).
    pub ahead: &'a [u8],
}

/// A fault that stops reading. Whatever was read before it has been processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    pub source: String,
    pub kind: CaptureErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureErrorKind {
    Open(String),
    Empty,
    NotACapture {
        first_bytes: Vec<u8>,
    },
    Truncated {
        offset: u64,
        packets: u64,
    },
    Corrupt {
        offset: u64,
        packets: u64,
        why: String,
    },
    RecordTooLarge {
        offset: u64,
        packets: u64,
    },
    UnsupportedLinkType {
        linktype: i32,
    },
    Read(String),
    Live(String),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = &self.source;
        match &self.kind {
            CaptureErrorKind::Open(e) => write!(f, "{src}: cannot open: {e}"),
            CaptureErrorKind::Empty => write!(f, "{src}: empty file, not a capture"),
            CaptureErrorKind::NotACapture { first_bytes } => {
                let hex: Vec<String> = first_bytes.iter().map(|b| format!("{b:02x}")).collect();
                write!(
                    f,
                    "{src}: not a pcap or pcapng file (starts with {})",
                    hex.join(" ")
                )
            }
            CaptureErrorKind::Truncated { offset, packets } => write!(
                f,
                "{src}: file ends in the middle of a record at byte offset {offset} (after packet {packets}); the packets before it were used"
            ),
            CaptureErrorKind::Corrupt {
                offset,
                packets,
                why,
            } => write!(
                f,
                "{src}: corrupt record at byte offset {offset} (after packet {packets}): {why}; the packets before it were used"
            ),
            CaptureErrorKind::RecordTooLarge { offset, packets } => write!(
                f,
                "{src}: record at byte offset {offset} (after packet {packets}) claims more than {} bytes: corrupt length field; the packets before it were used",
                file::MAX_RECORD_BYTES
            ),
            CaptureErrorKind::UnsupportedLinkType { linktype } => write!(
                f,
                "{src}: unsupported link type {}; tcpstate reads Ethernet, Linux cooked (SLL, SLL2), raw IP, BSD loopback and FDDI",
                crate::decode::linktype_name(*linktype)
            ),
            CaptureErrorKind::Read(e) => write!(f, "{src}: read error: {e}"),
            CaptureErrorKind::Live(e) => write!(f, "{src}: {e}"),
        }
    }
}

impl std::error::Error for CaptureError {}

/// Counted oddities in the capture container itself (not in the packets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerCounters {
    /// Link types of pcapng interfaces tcpstate cannot decode (their packets are counted).
    pub unsupported_linktypes: Vec<i32>,
    /// Records whose captured length exceeds the file's snap length.
    pub caplen_over_snaplen: u64,
    /// pcapng packets naming an interface the section never described.
    pub unknown_interface: u64,
    /// pcapng blocks of types that carry no packets here (statistics, name resolution, unknown).
    pub skipped_blocks: u64,
}

pub type PacketFn<'f> = dyn FnMut(&RawPacket<'_>) -> ControlFlow<()> + 'f;
