//! Link layers: find where the IP packet starts in a frame.
//!
//! Written by hand because the stacks seen in real captures (VLAN on VLAN, MPLS, PPPoE,
//! PBB, LLC/SNAP, Linux cooked v2) are wider than any one header crate walks; each step
//! is a few bytes and a bounds check.

use super::DecodeError;

/// The link types tcpstate reads (values from the tcpdump.org LINKTYPE_ registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Null,
    Ethernet,
    Raw,
    Loop,
    LinuxSll,
    LinuxSll2,
    Ipv4,
    Ipv6,
    Fddi,
}

impl LinkType {
    pub fn from_linktype(value: i32) -> Option<LinkType> {
        Some(match value {
            0 => LinkType::Null,
            10 => LinkType::Fddi,
            1 => LinkType::Ethernet,
            // 101 is the registry's value; 12 and 14 are what some BSDs write for raw IP.
            101 | 12 | 14 => LinkType::Raw,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            _ => return None,
        })
    }
}

/// A name for a link type number in messages (errors, the live `listening on` line), as
/// tcpdump's `-L` spells it.
pub fn linktype_name(value: i32) -> String {
    let name = match value {
        0 => "NULL",
        1 => "EN10MB",
        6 => "IEEE802",
        8 => "SLIP",
        9 => "PPP",
        10 => "FDDI",
        50 => "PPP_HDLC",
        51 => "PPP_ETHER",
        104 => "C_HDLC",
        105 => "IEEE802_11",
        113 => "LINUX_SLL",
        127 => "IEEE802_11_RADIOTAP",
        147..=162 => "USER",
        192 => "PPI",
        195 => "IEEE802_15_4",
        201 => "BLUETOOTH_HCI_H4_WITH_PHDR",
        220 => "USB_LINUX_MMAPPED",
        227 => "CAN_SOCKETCAN",
        249 => "USBPCAP",
        253 => "NETLINK",
        101 => "RAW",
        108 => "LOOP",
        228 => "IPV4",
        229 => "IPV6",
        276 => "LINUX_SLL2",
        _ => "unknown",
    };
    format!("{name} ({value})")
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_QINQ_OLD: u16 = 0x9100;
const ETH_MPLS: u16 = 0x8847;
const ETH_MPLS_MC: u16 = 0x8848;
const ETH_PPPOE_SESSION: u16 = 0x8864;
const ETH_PBB: u16 = 0x88e7;

/// Upper bound on stacked tags, so a crafted frame cannot make the walk long.
const MAX_LINK_LAYERS: usize = 16;

/// What the link layer carries.
pub enum LinkPayload<'a> {
    Ip(&'a [u8]),
    /// Not IP (ARP, LLDP, ...): counted, not an error.
    NotIp,
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

pub fn strip_link(link: LinkType, frame: &[u8]) -> Result<LinkPayload<'_>, DecodeError> {
    match link {
        LinkType::Ethernet => ethernet(frame),
        LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => Ok(LinkPayload::Ip(frame)),
        LinkType::Null | LinkType::Loop => {
            let head = frame.get(0..4).ok_or(DecodeError::TruncatedLinkHeader)?;
            // NULL stores the address family in the writer's byte order; accept either.
            let family = if link == LinkType::Loop {
                u32::from_be_bytes([head[0], head[1], head[2], head[3]])
            } else {
                let le = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                if le < 256 {
                    le
                } else {
                    u32::from_be_bytes([head[0], head[1], head[2], head[3]])
                }
            };
            match family {
                // AF_INET everywhere; AF_INET6 is 10 (Linux), 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS).
                2 | 10 | 24 | 28 | 30 => Ok(LinkPayload::Ip(&frame[4..])),
                _ => Ok(LinkPayload::NotIp),
            }
        }
        LinkType::Fddi => {
            // Frame control and two addresses (13 bytes), then LLC; IP rides in SNAP.
            let llc = frame.get(13..).ok_or(DecodeError::TruncatedLinkHeader)?;
            ethertype_payload(llc.len().min(1500) as u16, llc, 0)
        }
        LinkType::LinuxSll => {
            let proto = be16(frame, 14).ok_or(DecodeError::TruncatedLinkHeader)?;
            ethertype_payload(proto, &frame[16..], 0)
        }
        LinkType::LinuxSll2 => {
            if frame.len() < 20 {
                return Err(DecodeError::TruncatedLinkHeader);
            }
            let proto = be16(frame, 0).ok_or(DecodeError::TruncatedLinkHeader)?;
            ethertype_payload(proto, &frame[20..], 0)
        }
    }
}

fn ethernet(frame: &[u8]) -> Result<LinkPayload<'_>, DecodeError> {
    let ethertype = be16(frame, 12).ok_or(DecodeError::TruncatedLinkHeader)?;
    ethertype_payload(ethertype, &frame[14..], 0)
}

fn ethertype_payload(
    ethertype: u16,
    rest: &[u8],
    depth: usize,
) -> Result<LinkPayload<'_>, DecodeError> {
    if depth > MAX_LINK_LAYERS {
        return Err(DecodeError::TooManyLinkLayers);
    }
    match ethertype {
        ETH_IPV4 | ETH_IPV6 => Ok(LinkPayload::Ip(rest)),
        ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD => {
            let inner = be16(rest, 2).ok_or(DecodeError::TruncatedLinkHeader)?;
            ethertype_payload(inner, &rest[4..], depth + 1)
        }
        ETH_MPLS | ETH_MPLS_MC => {
            // Labels until the bottom-of-stack bit; then the first nibble tells IPv4 from IPv6.
            let mut at = 0;
            for _ in 0..MAX_LINK_LAYERS {
                let label = rest
                    .get(at..at + 4)
                    .ok_or(DecodeError::TruncatedLinkHeader)?;
                at += 4;
                if label[2] & 1 == 1 {
                    let inner = &rest[at..];
                    return match inner.first().map(|b| b >> 4) {
                        Some(4) | Some(6) => Ok(LinkPayload::Ip(inner)),
                        Some(0) => {
                            // Pseudowire control word, then an Ethernet frame.
                            let eth = inner.get(4..).ok_or(DecodeError::TruncatedLinkHeader)?;
                            ethernet(eth)
                        }
                        Some(_) => Ok(LinkPayload::NotIp),
                        None => Err(DecodeError::TruncatedLinkHeader),
                    };
                }
            }
            Err(DecodeError::TooManyLinkLayers)
        }
        ETH_PPPOE_SESSION => {
            let ppp_proto = be16(rest, 6).ok_or(DecodeError::TruncatedLinkHeader)?;
            match ppp_proto {
                0x0021 | 0x0057 => Ok(LinkPayload::Ip(&rest[8..])),
                _ => Ok(LinkPayload::NotIp),
            }
        }
        ETH_PBB => {
            // 802.1ah: a 4-byte I-TAG, then a whole customer Ethernet header.
            let inner = rest.get(4..).ok_or(DecodeError::TruncatedLinkHeader)?;
            let inner_type = be16(inner, 12).ok_or(DecodeError::TruncatedLinkHeader)?;
            ethertype_payload(inner_type, &inner[14..], depth + 1)
        }
        len if len <= 1500 => {
            // 802.3 length field: LLC; only SNAP carries an ethertype.
            let llc = rest.get(0..3).ok_or(DecodeError::TruncatedLinkHeader)?;
            if llc == [0xaa, 0xaa, 0x03] {
                let inner = be16(rest, 6).ok_or(DecodeError::TruncatedLinkHeader)?;
                ethertype_payload(inner, &rest[8..], depth + 1)
            } else {
                Ok(LinkPayload::NotIp)
            }
        }
        _ => Ok(LinkPayload::NotIp),
    }
}
