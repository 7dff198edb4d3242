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
    match link::strip_link(link, frame) {
        Ok(link::LinkPayload::Ip(ip)) => decode_ip_checked(ip, cut),
        Ok(link::LinkPayload::NotIp) => (Ok(Decoded::NotIp), LengthDoubt::None),
        Err(e) => (Err(e), LengthDoubt::None),
    }
}

pub fn decode_ip(ip: &[u8]) -> Result<Decoded, DecodeError> {
    decode_ip_checked(ip, true).0
}

fn decode_ip_checked(ip: &[u8], cut: bool) -> (Result<Decoded, DecodeError>, LengthDoubt) {
    let mut doubt = LengthDoubt::None;
    let result = decode_ip_inner(ip, cut, &mut doubt);
    if !matches!(result, Ok(Decoded::Tcp(_))) {
        doubt = LengthDoubt::None;
    }
    (result, doubt)
}

fn decode_ip_inner(ip: &[u8], cut: bool, doubt: &mut LengthDoubt) -> Result<Decoded, DecodeError> {
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
                return Ok(Decoded::Fragment);
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
                return Ok(Decoded::Fragment);
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
        return Ok(Decoded::NotTcp);
    }
    let tcp_bytes = payload.payload;
    if tcp_bytes.len() < 20 {
        return Err(DecodeError::TruncatedTcpHeader);
    }
    let data_offset = tcp_bytes[12] >> 4;
    if data_offset < 5 {
        return Err(DecodeError::BadTcpDataOffset);
    }
    let header_len = u32::from(data_offset) * 4;
    let ip_payload_len = ip_payload_len.unwrap_or(tcp_bytes.len() as u32);
    if ip_payload_len < header_len {
        return Err(DecodeError::TcpHeaderBeyondIpPayload);
    }
    let flags = tcp_bytes[13];
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
    let be16 = |at: usize| u16::from_be_bytes([tcp_bytes[at], tcp_bytes[at + 1]]);
    let be32 = |at: usize| {
        u32::from_be_bytes([
            tcp_bytes[at],
            tcp_bytes[at + 1],
            tcp_bytes[at + 2],
            tcp_bytes[at + 3],
        ])
    };
    Ok(Decoded::Tcp(Segment {
        src: SockAddr {
            ip: src_ip,
            port: be16(0),
        },
        dst: SockAddr {
            ip: dst_ip,
            port: be16(2),
        },
        seq: be32(4),
        ack: be32(8),
        flags,
        window: be16(14),
        wscale,
        payload_len: ip_payload_len - header_len,
    }))
}

/// The window-scale shift from a TCP options area, if the option is there and whole.
fn window_scale(mut options: &[u8]) -> Option<u8> {
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
