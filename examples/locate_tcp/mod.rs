//! Shared by the floor programs (`plain_read`, `pcap_read`): find the TCP header in a frame.
//! Ethernet (VLAN tags), Linux cooked v1/v2, raw IP, BSD loopback → IPv4 (non-first
//! fragments skipped) / IPv6 (hop-by-hop, routing, destination options) → TCP.

/// The first 20 bytes of the TCP header, if the frame holds one.
pub fn tcp_header(linktype: u32, f: &[u8]) -> Option<&[u8]> {
    let ip = match linktype {
        1 => {
            let mut at = 12;
            let mut ethertype = be16(f, at)?;
            while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
                at += 4;
                ethertype = be16(f, at)?;
            }
            ip_after(ethertype, f.get(at + 2..)?)?
        }
        113 => ip_after(be16(f, 14)?, f.get(16..)?)?,
        276 => ip_after(be16(f, 0)?, f.get(20..)?)?,
        101 | 12 | 14 | 228 | 229 => f,
        0 | 108 => f.get(4..)?,
        _ => return None,
    };
    let tcp = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let fragment = be16(ip, 6)? & 0x1fff != 0;
            if *ip.get(9)? != 6 || ihl < 20 || fragment {
                return None;
            }
            ip.get(ihl..)?
        }
        6 => {
            let mut next = *ip.get(6)?;
            let mut at = 40;
            // Hop-by-hop, routing and destination options headers.
            while matches!(next, 0 | 43 | 60) {
                next = *ip.get(at)?;
                at += (usize::from(*ip.get(at + 1)?) + 1) * 8;
            }
            if next != 6 {
                return None;
            }
            ip.get(at..)?
        }
        _ => return None,
    };
    tcp.get(..20)
}

fn ip_after(ethertype: u16, rest: &[u8]) -> Option<&[u8]> {
    matches!(ethertype, 0x0800 | 0x86dd).then_some(rest)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}
