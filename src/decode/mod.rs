//! Frame → TCP segment. Only the headers the engine needs are read; payload is never copied.

pub mod link;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::LaxIpSlice;

pub use link::{LinkType, linktype_name};

/// TCP flag bits as they sit in byte 13 of the header.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// A SYN without ACK or RST: what opens a connection.
    pub fn opens(bits: u8) -> bool {
        bits & (SYN | ACK | RST) == SYN
    }
}

/// An address and port, printed as `ss` prints them: `10.0.0.1:80`, `[::1]:80`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

impl std::str::FromStr for SockAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<std::net::SocketAddr>()
            .map(|a| SockAddr {
                ip: a.ip(),
                port: a.port(),
            })
            .map_err(|_| format!("'{s}' is not an address:port"))
    }
}

/// The TCP facts of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SockAddr,
    pub dst: SockAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Window scale option (only meaningful on SYN segments).
    pub wscale: Option<u8>,
    /// Payload length from the IP length fields, so a snap-length cut does not shrink it.
    pub payload_len: u32,
}

impl Segment {
    /// A placeholder for the decoder to write over.
    pub const NONE: Segment = Segment {
        src: SockAddr {
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
        },
        dst: SockAddr {
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
        },
        seq: 0,
        ack: 0,
        flags: 0,
        window: 0,
        wscale: None,
        payload_len: 0,
    };

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    /// Sequence space the segment occupies: payload plus one for SYN and one for FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload_len + self.has(flags::SYN) as u32 + self.has(flags::FIN) as u32
    }
}

/// Why a frame carried no usable TCP segment. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecodeError {
    TruncatedLinkHeader,
    TooManyLinkLayers,
    TruncatedIpHeader,
    BadIpVersion,
    BadIpv4HeaderLength,
    BadIpv6ExtensionHeaders,
    TruncatedTcpHeader,
    BadTcpDataOffset,
    TcpHeaderBeyondIpPayload,
}

impl DecodeError {
    pub const ALL: [DecodeError; 9] = [
        DecodeError::TruncatedLinkHeader,
        DecodeError::TooManyLinkLayers,
        DecodeError::TruncatedIpHeader,
        DecodeError::BadIpVersion,
        DecodeError::BadIpv4HeaderLength,
        DecodeError::BadIpv6ExtensionHeaders,
        DecodeError::TruncatedTcpHeader,
        DecodeError::BadTcpDataOffset,
        DecodeError::TcpHeaderBeyondIpPayload,
    ];
    pub fn key(self) -> &'static str {
        match self {
            DecodeError::TruncatedLinkHeader => "truncated_link_header",
            DecodeError::TooManyLinkLayers => "too_many_link_layers",
            DecodeError::TruncatedIpHeader => "truncated_ip_header",
            DecodeError::BadIpVersion => "bad_ip_version",
            DecodeError::BadIpv4HeaderLength => "bad_ipv4_header_length",
            DecodeError::BadIpv6ExtensionHeaders => "bad_ipv6_extension_headers",
            DecodeError::TruncatedTcpHeader => "truncated_tcp_header",
            DecodeError::BadTcpDataOffset => "bad_tcp_data_offset",
            DecodeError::TcpHeaderBeyondIpPayload => "tcp_header_beyond_ip_length",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// What a frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Tcp(Segment),
    /// IP but another transport (UDP, ICMP, ...).
    NotTcp,
    /// Not IP at all (ARP, LLDP, ...).
    NotIp,
    /// A non-first IP fragment: no TCP header to read.
    Fragment,
}

/// `Decoded` without the segment, which the decoder writes to the caller's place: the
/// answer of the hot path is a byte, not a 60-byte value copied out through each layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    NotTcp,
    NotIp,
    Fragment,
}

const TCP: u8 = 6;

/// An IP length field that disagrees with the frame. The segment is still used (the
/// disagreement has innocent causes) but the packet is counted, since its payload length
/// may be wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LengthDoubt {
    #[default]
    None,
    /// IPv4 total length below the header length (and not 0, which segmentation offload
    /// leaves): the captured length was used instead.
    Ipv4TotalBelowHeader,
    /// The IP length field claims more bytes than the frame holds although the snap length
    /// did not cut it: the length field was used.
    IpLengthBeyondFrame,
}

/// The addresses of a SYN without ACK or RST, read at fixed offsets: a look ahead that only
/// prefetches (`FlowTable::look_ahead`), so nothing is checked beyond what the offsets need,
/// and an IPv4 or IPv6 header with options or extension headers before TCP is passed over.
#[inline]
pub fn syn_ahead(linktype: i32, frame: &[u8]) -> Option<(SockAddr, SockAddr)> {
    const ETHERNET: i32 = 1;
    // Ethernet with IPv4 without options: nearly every frame of a capture on an interface,
    // and most are not SYNs, which the protocol and flags bytes at fixed places tell.
    if linktype == ETHERNET
        && let Some(head) = frame.first_chunk::<{ 14 + 20 + 14 }>()
        && head[12..15] == [8, 0, 0x45]
        && (head[23] != TCP || !flags::opens(head[47]))
    {
        return None;
    }
    let ip = if linktype == ETHERNET && frame.get(12..14) == Some(&[8, 0]) {
        frame.get(14..)?
    } else {
        match link::strip_link(LinkType::from_linktype(linktype)?, frame) {
            Ok(link::LinkPayload::Ip(ip)) => ip,
            _ => return None,
        }
    };
    let port = |tcp: &[u8; 14], at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    match ip.first()? >> 4 {
        4 => {
            let h = ip.first_chunk::<20>()?;
            let tcp = ip.get(usize::from(h[0] & 0xf) * 4..)?.first_chunk::<14>()?;
            if h[9] != TCP || !flags::opens(tcp[13]) {
                return None;
            }
            let v4 = |at: usize| IpAddr::V4(Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]));
            Some((
                SockAddr {
                    ip: v4(12),
                    port: port(tcp, 0),
                },
                SockAddr {
                    ip: v4(16),
                    port: port(tcp, 2),
                },
            ))
        }
        6 => {
            let h = ip.first_chunk::<40>()?;
            let tcp = ip.get(40..)?.first_chunk::<14>()?;
            if h[6] != TCP || !flags::opens(tcp[13]) {
                return None;
            }
            let v6 = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&h[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            Some((
                SockAddr {
                    ip: v6(8),
                    port: port(tcp, 0),
                },
                SockAddr {
                    ip: v6(24),
                    port: port(tcp, 2),
                },
            ))
        }
        _ => None,
    }
}

pub fn decode(link: LinkType, frame: &[u8]) -> Result<Decoded, DecodeError> {
    decode_checked(link, frame, true).0
}

/// Decodes a frame and says whether its IP length fields disagree with it. `cut`: the snap
/// length shortened the frame, so a longer IP length is expected.
pub fn decode_checked(
    link: LinkType,
    frame: &[u8],
    cut: bool,
) -> (Result<Decoded, DecodeError>, LengthDoubt) {
    let mut seg = Segment::NONE;
    let (kind, doubt) = decode_into(link, frame, cut, &mut seg);
    (kind.map(|k| k.with(seg)), doubt)
}

impl Kind {
    fn with(self, seg: Segment) -> Decoded {
        match self {
            Kind::Tcp => Decoded::Tcp(seg),
            Kind::NotTcp => Decoded::NotTcp,
            Kind::NotIp => Decoded::NotIp,
            Kind::Fragment => Decoded::Fragment,
        }
    }
}

/// `decode_checked`, the segment written to `seg` (untouched unless the kind is `Tcp`).
pub fn decode_into(
    link: LinkType,
    frame: &[u8],
    cut: bool,
    seg: &mut Segment,
) -> (Result<Kind, DecodeError>, LengthDoubt) {
    match link::strip_link(link, frame) {
        Ok(link::LinkPayload::Ip(ip)) => decode_ip_into(ip, cut, seg),
        Ok(link::LinkPayload::NotIp) => (Ok(Kind::NotIp), LengthDoubt::None),
        Err(e) => (Err(e), LengthDoubt::None),
    }
}

/// The IP packet of an Ethernet frame whose ethertype is IPv4 or IPv6, untagged: nearly
/// every frame captured on an interface, found without `strip_link`'s walk (which gives
/// the same bytes for these frames).
#[inline(always)]
pub fn ethernet_ip(linktype: i32, frame: &[u8]) -> Option<&[u8]> {
    const ETHERNET: i32 = 1;
    match frame.get(12..14) {
        Some([0x08, 0x00] | [0x86, 0xdd]) if linktype == ETHERNET => frame.get(14..),
        _ => None,
    }
}

pub fn decode_ip(ip: &[u8]) -> Result<Decoded, DecodeError> {
    let mut seg = Segment::NONE;
    let (kind, _) = decode_ip_into(ip, true, &mut seg);
    kind.map(|k| k.with(seg))
}

/// `decode_into` from the IP header on.
#[inline(always)]
pub fn decode_ip_into(
    ip: &[u8],
    cut: bool,
    seg: &mut Segment,
) -> (Result<Kind, DecodeError>, LengthDoubt) {
    let mut doubt = LengthDoubt::None;
    let result = match plain_ip_tcp(ip, cut, &mut doubt, seg) {
        Some(kind) => kind,
        None => decode_ip_general(ip, cut, &mut doubt, seg),
    };
    if result != Ok(Kind::Tcp) {
        doubt = LengthDoubt::None;
    }
    (result, doubt)
}

/// The common case by hand, at fixed offsets: IPv4 without an authentication header, or
/// IPv6 with TCP as the first next header. `None` for anything else, which
/// `decode_ip_general` (etherparse) handles. Gives exactly what that path gives for the
/// packets it takes (the decoder tests and fuzzing compare the two).
#[inline(always)]
fn plain_ip_tcp(
    ip: &[u8],
    cut: bool,
    doubt: &mut LengthDoubt,
    seg: &mut Segment,
) -> Option<Result<Kind, DecodeError>> {
    const AUTH: u8 = 51;
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 && ip[9] != AUTH => {
            let h = ip.first_chunk::<20>()?;
            let be16 = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
            let addr4 = |at: usize| Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]);
            let header_len = usize::from(h[0] & 0xf) * 4;
            if header_len < 20 {
                return Some(Err(DecodeError::BadIpv4HeaderLength));
            }
            if ip.len() < header_len {
                return Some(Err(DecodeError::TruncatedIpHeader));
            }
            if be16(6) & 0x1fff != 0 {
                return Some(Ok(Kind::Fragment));
            }
            if h[9] != TCP {
                return Some(Ok(Kind::NotTcp));
            }
            let total = usize::from(be16(2));
            // As etherparse's lax slicing: the total length bounds the payload when it is
            // plausible, else the capture does.
            let payload_end = if total < header_len || ip.len() < total {
                ip.len()
            } else {
                total
            };
            let from_header =
                (total >= header_len && total != 0).then(|| (total - header_len) as u32);
            if total != 0 && total < header_len {
                *doubt = LengthDoubt::Ipv4TotalBelowHeader;
            } else if !cut && total > ip.len() {
                *doubt = LengthDoubt::IpLengthBeyondFrame;
            }
            Some(tcp_segment(
                IpAddr::V4(addr4(12)),
                IpAddr::V4(addr4(16)),
                from_header,
                &ip[header_len..payload_end],
                seg,
            ))
        }
        Some(6) if ip.len() >= 40 && ip[6] == TCP => {
            let h = ip.first_chunk::<40>()?;
            let addr6 = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[at..at + 16]);
                Ipv6Addr::from(b)
            };
            let declared = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let payload_end = if declared == 0 || ip.len() - 40 < declared {
                ip.len()
            } else {
                40 + declared
            };
            if !cut && declared + 40 > ip.len() {
                *doubt = LengthDoubt::IpLengthBeyondFrame;
            }
            Some(tcp_segment(
                IpAddr::V6(addr6(8)),
                IpAddr::V6(addr6(24)),
                (declared != 0).then_some(declared as u32),
                &ip[40..payload_end],
                seg,
            ))
        }
        _ => None,
    }
}

/// Any IP packet, through etherparse's lax slicing (extension headers, AH, odd lengths).
/// Out of line: the hot path stays small.
#[inline(never)]
fn decode_ip_general(
    ip: &[u8],
    cut: bool,
    doubt: &mut LengthDoubt,
    seg: &mut Segment,
) -> Result<Kind, DecodeError> {
    use etherparse::err::ip::{HeaderError, LaxHeaderSliceError};
    let (sliced, ext_error) = LaxIpSlice::from_slice(ip).map_err(|e| match e {
        LaxHeaderSliceError::Len(_) => DecodeError::TruncatedIpHeader,
        LaxHeaderSliceError::Content(HeaderError::UnsupportedIpVersion { .. }) => {
            DecodeError::BadIpVersion
        }
        LaxHeaderSliceError::Content(HeaderError::Ipv4HeaderLengthSmallerThanHeader { .. }) => {
            DecodeError::BadIpv4HeaderLength
        }
    })?;
    let (src_ip, dst_ip, ip_payload_len): (IpAddr, IpAddr, Option<u32>) = match &sliced {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            if h.fragments_offset().value() != 0 {
                return Ok(Kind::Fragment);
            }
            let header_len = u32::from(h.ihl()) * 4;
            let total = u32::from(h.total_len());
            // total_len 0 is what segmentation offload leaves; then only the capture tells.
            let from_header = (total >= header_len && total != 0).then(|| total - header_len);
            if total != 0 && total < header_len {
                *doubt = LengthDoubt::Ipv4TotalBelowHeader;
            } else if !cut && total as usize > ip.len() {
                *doubt = LengthDoubt::IpLengthBeyondFrame;
            }
            (
                IpAddr::V4(Ipv4Addr::from(h.source())),
                IpAddr::V4(Ipv4Addr::from(h.destination())),
                from_header,
            )
        }
        LaxIpSlice::Ipv6(v6) => {
            if ext_error.is_some() {
                return Err(DecodeError::BadIpv6ExtensionHeaders);
            }
            if v6.is_payload_fragmented() {
                return Ok(Kind::Fragment);
            }
            let h = v6.header();
            let declared = u32::from(h.payload_length());
            let ext_len = v6.extensions().slice().len() as u32;
            let from_header = (declared != 0 && declared >= ext_len).then(|| declared - ext_len);
            if !cut && declared as usize + 40 > ip.len() {
                *doubt = LengthDoubt::IpLengthBeyondFrame;
            }
            (
                IpAddr::V6(Ipv6Addr::from(h.source())),
                IpAddr::V6(Ipv6Addr::from(h.destination())),
                from_header,
            )
        }
    };
    let payload = sliced.payload();
    if payload.ip_number.0 != TCP {
        return Ok(Kind::NotTcp);
    }
    tcp_segment(src_ip, dst_ip, ip_payload_len, payload.payload, seg)
}

/// The TCP facts from the bytes after the IP header(s). `ip_payload_len`: the TCP length
/// the IP header declares, when it declares one.
#[inline(always)]
fn tcp_segment(
    src_ip: IpAddr,
    dst_ip: IpAddr,
    ip_payload_len: Option<u32>,
    tcp_bytes: &[u8],
    seg: &mut Segment,
) -> Result<Kind, DecodeError> {
    // The fixed 20 bytes as an array: constant offsets, no bounds check per field.
    let Some(h) = tcp_bytes.first_chunk::<20>() else {
        return Err(DecodeError::TruncatedTcpHeader);
    };
    let data_offset = h[12] >> 4;
    if data_offset < 5 {
        return Err(DecodeError::BadTcpDataOffset);
    }
    let header_len = u32::from(data_offset) * 4;
    let ip_payload_len = ip_payload_len.unwrap_or(tcp_bytes.len() as u32);
    if ip_payload_len < header_len {
        return Err(DecodeError::TcpHeaderBeyondIpPayload);
    }
    let flags = h[13];
    // The fixed 20 bytes are enough; options are read as far as the snap length kept them
    // (a 68-byte snap length cuts every SYN's options).
    let options_end = (header_len as usize).min(tcp_bytes.len());
    let wscale = if flags & flags::SYN != 0 {
        window_scale(&tcp_bytes[20..options_end])
    } else {
        None
    };
    // Fixed-offset fields of the 20-byte header (RFC 9293 section 3.1). etherparse's
    // TcpHeaderSlice insists on the whole options area, which a snap length may have cut.
    *seg = Segment {
        src: SockAddr {
            ip: src_ip,
            port: u16::from_be_bytes([h[0], h[1]]),
        },
        dst: SockAddr {
            ip: dst_ip,
            port: u16::from_be_bytes([h[2], h[3]]),
        },
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        flags,
        window: u16::from_be_bytes([h[14], h[15]]),
        wscale,
        payload_len: ip_payload_len - header_len,
    };
    Ok(Kind::Tcp)
}

/// The window-scale shift from a TCP options area, if the option is there and whole.
fn window_scale(options: &[u8]) -> Option<u8> {
    // Linux's SYN and SYN-ACK with timestamps: MSS, SACK permitted, timestamps, NOP, window
    // scale, at fixed places. Found without the walk below (a sixth of the decoding of short
    // connections was that walk), and read as the walk would read them.
    if let Some(o) = options.first_chunk::<20>()
        && o[..2] == [2, 4]
        && o[4..8] == [4, 2, 8, 10]
        && o[16..19] == [1, 3, 3]
    {
        return Some(o[19]);
    }
    window_scale_walked(options)
}

/// `window_scale` by walking the options one by one.
fn window_scale_walked(mut options: &[u8]) -> Option<u8> {
    while let Some(&kind) = options.first() {
        match kind {
            0 => return None,
            1 => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1)?);
                if len < 2 || len > options.len() {
                    return None;
                }
                if kind == 3 && len == 3 {
                    return Some(options[2]);
                }
                options = &options[len..];
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame built with etherparse.
    fn frame(payload: &[u8], syn: bool) -> Vec<u8> {
        let mut b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1000, 512);
        if syn {
            b = b.syn();
        }
        let b = b.ack(77);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn ethernet_ipv4_tcp() {
        let f = frame(b"hello", false);
        let Decoded::Tcp(s) = decode(LinkType::Ethernet, &f).unwrap() else {
            panic!("not tcp")
        };
        assert_eq!(s.src.to_string(), "10.0.0.1:40000");
        assert_eq!(s.dst.to_string(), "10.0.0.2:80");
        assert_eq!((s.seq, s.ack, s.payload_len), (1000, 77, 5));
        assert!(s.has(flags::ACK) && !s.has(flags::SYN));
    }

    #[test]
    fn snaplen_cut_keeps_payload_length() {
        let f = frame(&[0u8; 1000], false);
        let Decoded::Tcp(s) = decode(LinkType::Ethernet, &f[..14 + 20 + 20 + 10]).unwrap() else {
            panic!("not tcp")
        };
        assert_eq!(s.payload_len, 1000);
    }

    #[test]
    fn cut_inside_tcp_header_is_an_error() {
        let f = frame(b"", true);
        assert_eq!(
            decode(LinkType::Ethernet, &f[..14 + 20 + 10]),
            Err(DecodeError::TruncatedTcpHeader)
        );
    }

    #[test]
    fn vlan_stack_is_walked() {
        let f = frame(b"x", false);
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7]);
        tagged.extend_from_slice(&f[12..]);
        assert!(matches!(
            decode(LinkType::Ethernet, &tagged),
            Ok(Decoded::Tcp(_))
        ));
    }

    #[test]
    fn bad_data_offset_and_ihl() {
        let mut f = frame(b"", false);
        f[14 + 20 + 12] = 0x40; // data offset 4
        assert_eq!(
            decode(LinkType::Ethernet, &f),
            Err(DecodeError::BadTcpDataOffset)
        );
        let mut g = frame(b"", false);
        g[14] = 0x44; // ihl 4
        assert_eq!(
            decode(LinkType::Ethernet, &g),
            Err(DecodeError::BadIpv4HeaderLength)
        );
    }

    /// The hand-written fast path agrees with etherparse's general path on every packet it
    /// takes: well-formed IPv4/IPv6 TCP, then with bytes of the IP and TCP headers changed
    /// and the packet cut anywhere.
    #[test]
    fn fast_path_equals_general_path() {
        use proptest::prelude::*;
        fn ip_packet(v6: bool, payload: &[u8]) -> Vec<u8> {
            let b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6]);
            let b = if v6 {
                b.ipv6([0x20; 16], [0x30; 16], 64)
            } else {
                b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            };
            let b = b.tcp(40000, 80, 1000, 512).syn().ack(7);
            let mut out = Vec::new();
            b.write(&mut out, payload).unwrap();
            out.split_off(14)
        }
        let mut runner = crate::seeded_runner(20_000);
        let strategy = (
            any::<bool>(),
            0usize..60,
            proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            0usize..140,
            any::<bool>(),
            0usize..8,
        );
        let taken = std::cell::Cell::new(0);
        runner
            .run(&strategy, |(v6, payload, edits, cut_at, cut, padding)| {
                let mut ip = ip_packet(v6, &vec![0xab; payload]);
                // Ethernet pads short frames: bytes beyond the IP length.
                ip.extend(std::iter::repeat_n(0u8, padding));
                for (at, byte) in edits {
                    if let Some(b) = ip.get_mut(at) {
                        *b = byte;
                    }
                }
                ip.truncate(cut_at.max(1));
                let (mut fast_doubt, mut fast_seg) = (LengthDoubt::None, Segment::NONE);
                if let Some(fast) = plain_ip_tcp(&ip, cut, &mut fast_doubt, &mut fast_seg) {
                    taken.set(taken.get() + 1);
                    let (mut doubt, mut seg) = (LengthDoubt::None, Segment::NONE);
                    let general = decode_ip_general(&ip, cut, &mut doubt, &mut seg);
                    // Doubts count only for TCP segments (`decode_ip_into` drops the rest).
                    if fast == Ok(Kind::Tcp) {
                        prop_assert_eq!(fast_doubt, doubt);
                        prop_assert_eq!(fast_seg, seg);
                    }
                    prop_assert_eq!(fast, general);
                }
                Ok(())
            })
            .unwrap();
        assert!(
            taken.get() > 100,
            "the fast path took only {} cases",
            taken.get()
        );
    }

    /// The window scale found at Linux's fixed places is what the walk finds: on Linux's
    /// options, with bytes changed, cut anywhere, or grown.
    #[test]
    fn window_scale_at_fixed_places_equals_the_walk() {
        use proptest::prelude::*;
        // MSS 65495, SACK permitted, timestamps, NOP, window scale 7: a Linux SYN on loopback.
        const LINUX: [u8; 20] = [
            2, 4, 0xff, 0xd7, 4, 2, 8, 10, 0, 1, 2, 3, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(window_scale(&LINUX), Some(7));
        let strategy = (
            proptest::collection::vec((0usize..24, any::<u8>()), 0..3),
            proptest::option::of(0usize..26),
            proptest::collection::vec(any::<u8>(), 0..6),
        );
        let fixed = std::cell::Cell::new(0);
        crate::seeded_runner(20_000)
            .run(&strategy, |(edits, cut, tail)| {
                let mut options = LINUX.to_vec();
                options.extend(tail);
                for (at, byte) in edits {
                    if let Some(b) = options.get_mut(at) {
                        *b = byte;
                    }
                }
                if let Some(at) = cut {
                    options.truncate(at);
                }
                if options.len() >= 20 && options[16..19] == [1, 3, 3] {
                    fixed.set(fixed.get() + 1);
                }
                prop_assert_eq!(window_scale(&options), window_scale_walked(&options));
                Ok(())
            })
            .unwrap();
        assert!(
            fixed.get() > 1000,
            "only {} cases at the fixed places",
            fixed.get()
        );
    }

    /// The look ahead's SYN test agrees with the decoder: on any frame the decoder reads as a
    /// TCP segment it names that segment's addresses or nothing, and it names them for every
    /// SYN without ACK or RST whose IP header leads straight to TCP (IPv4 with or without
    /// options, IPv6 without extension headers), over Ethernet and raw IP.
    #[test]
    fn syn_ahead_agrees_with_the_decoder() {
        use proptest::prelude::*;
        fn ip_packet(v6: bool, options: bool, flag_bits: u8) -> Vec<u8> {
            let b = etherparse::PacketBuilder::ip(if v6 {
                etherparse::IpHeaders::Ipv6(
                    etherparse::Ipv6Header {
                        source: [0x20; 16],
                        destination: [0x30; 16],
                        hop_limit: 64,
                        ..Default::default()
                    },
                    Default::default(),
                )
            } else {
                let mut h = etherparse::Ipv4Header::new(
                    0,
                    64,
                    etherparse::IpNumber::TCP,
                    [10, 0, 0, 1],
                    [10, 0, 0, 2],
                )
                .unwrap();
                if options {
                    h.options = [1, 1, 1, 1][..].try_into().unwrap();
                }
                etherparse::IpHeaders::Ipv4(h, Default::default())
            });
            let mut out = Vec::new();
            b.tcp(40000, 80, 1000, 512).write(&mut out, &[]).unwrap();
            // The flags byte: 13 bytes into the TCP header, which ends the packet.
            let at = out.len() - 20 + 13;
            out[at] = flag_bits;
            out
        }
        let strategy = (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<u8>(),
            proptest::collection::vec((0usize..100, any::<u8>()), 0..3),
            0usize..120,
        );
        let named = std::cell::Cell::new(0);
        crate::seeded_runner(20_000)
            .run(
                &strategy,
                |(ethernet, v6, options, flag_bits, edits, cut_at)| {
                    let ip = ip_packet(v6, options, flag_bits);
                    let (linktype, link, mut frame) = if ethernet {
                        let ethertype: [u8; 2] = if v6 { [0x86, 0xdd] } else { [8, 0] };
                        let mut f = [[1u8; 6], [2u8; 6]].concat();
                        f.extend(ethertype);
                        (1, LinkType::Ethernet, f)
                    } else {
                        (101, LinkType::Raw, Vec::new())
                    };
                    frame.extend(ip);
                    for (at, byte) in edits {
                        if let Some(b) = frame.get_mut(at) {
                            *b = byte;
                        }
                    }
                    frame.truncate(cut_at.max(1));
                    let Ok(Decoded::Tcp(seg)) = decode(link, &frame) else {
                        return Ok(());
                    };
                    let syn_only = flags::opens(seg.flags);
                    let got = syn_ahead(linktype, &frame);
                    if let Some(addrs) = got {
                        prop_assert!(syn_only);
                        prop_assert_eq!(addrs, (seg.src, seg.dst));
                        named.set(named.get() + 1);
                    }
                    let ip = &frame[if ethernet { 14 } else { 0 }..];
                    let straight_to_tcp = match ip[0] >> 4 {
                        4 => ip[9] == TCP,
                        _ => ip.get(6) == Some(&TCP),
                    };
                    if syn_only && straight_to_tcp {
                        prop_assert!(got.is_some());
                    }
                    Ok(())
                },
            )
            .unwrap();
        assert!(named.get() > 500, "only {} SYNs named", named.get());
    }

    #[test]
    fn ss_style_addresses() {
        let v6 = SockAddr {
            ip: "::1".parse().unwrap(),
            port: 80,
        };
        assert_eq!(v6.to_string(), "[::1]:80");
        assert_eq!("[::1]:80".parse::<SockAddr>().unwrap(), v6);
    }
}
