//! IP layer as Zeek reads it (section 1 step 2): which packets are dropped before any
//! connection is touched, the lengths Zeek counts, fragments, and the tunnels Zeek opens by
//! default. Everything is bounds-checked; nothing here panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::decode::link::{LinkPayload, LinkType, strip_link};

const PROTO_IPIP: u8 = 4;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_IPV6: u8 = 41;
const PROTO_GRE: u8 = 47;

/// Tunnels inside tunnels are followed this deep at most.
const MAX_TUNNEL_DEPTH: u8 = 4;

/// A TCP segment that passed Zeek's IP checks.
#[derive(Debug)]
pub(crate) struct TcpSeg<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP total length as the connection-size analyzer counts it (section 7.1).
    pub ip_bytes: u64,
    /// TCP header plus payload length according to the IP header.
    pub seg_len: usize,
    /// Captured bytes from the TCP header on; shorter than `seg_len` when the snap length cut
    /// the packet, longer with link-layer padding.
    pub tcp: &'a [u8],
    pub tunneled: bool,
}

/// Identifies the datagram a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub proto: u8,
}

/// One IP fragment, whole (an incompletely captured fragment is never reassembled).
#[derive(Debug)]
pub(crate) struct Fragment<'a> {
    pub key: FragKey,
    /// Byte offset of `data` in the reassembled payload.
    pub offset: usize,
    pub more: bool,
    /// Everything before the fragmentable part: the IPv4 header, or the IPv6 fixed header
    /// and the extension headers before the fragment header.
    pub header: &'a [u8],
    /// IPv6: index in `header` of the next-header byte that announced the fragment header.
    pub next_hdr_at: usize,
    /// Protocol of the reassembled payload.
    pub proto: u8,
    pub data: &'a [u8],
    pub ipv4: bool,
    pub tunneled: bool,
}

#[derive(Debug)]
pub(crate) enum IpOut<'a> {
    Tcp(TcpSeg<'a>),
    Frag(Fragment<'a>),
    /// Not TCP, or dropped by the IP checks.
    Skip,
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]))
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *d.get(at)?,
        *d.get(at + 1)?,
        *d.get(at + 2)?,
        *d.get(at + 3)?,
    ]))
}

/// Ones' complement sum of 16-bit big-endian words (odd trailing byte padded with zero).
pub(crate) fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// True if `segment` (a whole TCP or UDP header plus payload) carries a valid checksum for
/// the pseudo-header of `src`, `dst`, `proto`.
pub(crate) fn transport_checksum_ok(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> bool {
    let mut sum = 0u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = ones_sum(sum, &s.octets());
            sum = ones_sum(sum, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = ones_sum(sum, &s.octets());
            sum = ones_sum(sum, &d.octets());
        }
        _ => return false,
    }
    let len = segment.len() as u32;
    sum = ones_sum(sum, &[0, 0, 0, proto]);
    sum = ones_sum(sum, &len.to_be_bytes());
    sum = ones_sum(sum, segment);
    fold(sum) == 0xffff
}

/// Where an encapsulated packet was found.
pub(crate) struct Ctx {
    pub ignore_checksums: bool,
    /// Nesting depth: 0 for the packet itself, 1 inside one tunnel...
    pub depth: u8,
}

/// Frame to IP: the link layers tcpstate's decoder walks. `None` when the frame is not IP.
/// Also returns how many frame bytes the link layers took.
pub(crate) fn link_to_ip(linktype: i32, frame: &[u8]) -> Option<(&[u8], usize)> {
    let link = LinkType::from_linktype(linktype)?;
    match strip_link(link, frame) {
        Ok(LinkPayload::Ip(ip)) => Some((ip, frame.len().saturating_sub(ip.len()))),
        _ => None,
    }
}

/// Applies Zeek's IP checks to the datagram at the start of `ip`. `wire_len` is how many bytes
/// from the IP header on were on the wire (the frame's original length minus link headers).
pub(crate) fn decode_ip<'a>(ip: &'a [u8], wire_len: usize, ctx: &Ctx) -> IpOut<'a> {
    match ip.first().map(|b| b >> 4) {
        Some(4) => decode_v4(ip, wire_len, ctx, false),
        Some(6) => decode_v6(ip, wire_len, ctx),
        _ => IpOut::Skip,
    }
}

/// A datagram the fragment reassembler rebuilt: header checksum and wire length were checked
/// on its fragments.
pub(crate) fn decode_reassembled<'a>(ip: &'a [u8], ctx: &Ctx) -> IpOut<'a> {
    match ip.first().map(|b| b >> 4) {
        Some(4) => decode_v4(ip, ip.len(), ctx, true),
        Some(6) => decode_v6(ip, ip.len(), ctx),
        _ => IpOut::Skip,
    }
}

fn decode_v4<'a>(ip: &'a [u8], wire_len: usize, ctx: &Ctx, reassembled: bool) -> IpOut<'a> {
    if ip.len() < 20 {
        return IpOut::Skip;
    }
    let hdr_len = usize::from(ip[0] & 0x0f) * 4;
    let raw_total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let mut total = raw_total;
    if total == 0 {
        // Segmentation offload zeroes the length; Zeek copes only when checksums are ignored.
        if !ctx.ignore_checksums {
            return IpOut::Skip;
        }
        total = ip.len();
    }
    if wire_len < total || hdr_len > total || hdr_len > ip.len() || hdr_len < 20 {
        return IpOut::Skip;
    }
    if !ctx.ignore_checksums && !reassembled && fold(ones_sum(0, &ip[..hdr_len])) != 0xffff {
        return IpOut::Skip;
    }
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let proto = ip[9];
    let frag_field = u16::from_be_bytes([ip[6], ip[7]]);
    let more = frag_field & 0x2000 != 0;
    let offset = usize::from(frag_field & 0x1fff) * 8;
    if !reassembled && (more || offset != 0) {
        if ip.len() < total {
            // Cannot be reassembled; Zeek keeps only a first fragment, as it is.
            if offset != 0 {
                return IpOut::Skip;
            }
        } else {
            return IpOut::Frag(Fragment {
                key: FragKey {
                    src,
                    dst,
                    id: u32::from(u16::from_be_bytes([ip[4], ip[5]])),
                    proto,
                },
                offset,
                more,
                header: &ip[..hdr_len],
                next_hdr_at: 9,
                proto,
                data: &ip[hdr_len..total],
                ipv4: true,
                tunneled: ctx.depth > 0,
            });
        }
    }
    transport(
        src,
        dst,
        proto,
        &ip[hdr_len..],
        total - hdr_len,
        raw_total as u64,
        ctx,
    )
}

fn decode_v6<'a>(ip: &'a [u8], wire_len: usize, ctx: &Ctx) -> IpOut<'a> {
    if ip.len() < 40 {
        return IpOut::Skip;
    }
    let total = usize::from(u16::from_be_bytes([ip[4], ip[5]])) + 40;
    if wire_len < total {
        return IpOut::Skip;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    let (src, dst) = (
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
    );
    // Walk the extension headers that precede the transport header.
    let mut next = ip[6];
    let mut next_at = 6;
    let mut off = 40;
    for _ in 0..16 {
        match next {
            0 | 43 | 60 | 135 | 51 => {
                let Some(&n) = ip.get(off) else {
                    return IpOut::Skip;
                };
                let Some(&l) = ip.get(off + 1) else {
                    return IpOut::Skip;
                };
                let len = if next == 51 {
                    (usize::from(l) + 2) * 4
                } else {
                    (usize::from(l) + 1) * 8
                };
                if next == 135 {
                    // Mobility header: nothing for TCP follows.
                    return IpOut::Skip;
                }
                next_at = off;
                next = n;
                off += len;
            }
            44 => {
                let (Some(&n), Some(field), Some(id)) =
                    (ip.get(off), be16(ip, off + 2), be32(ip, off + 4))
                else {
                    return IpOut::Skip;
                };
                let offset = usize::from(field >> 3) * 8;
                let more = field & 1 != 0;
                let data_start = off + 8;
                if data_start > total {
                    return IpOut::Skip;
                }
                if offset == 0 && !more {
                    // An atomic fragment: the datagram is whole.
                    next = n;
                    next_at = off;
                    off = data_start;
                    continue;
                }
                if ip.len() < total {
                    if offset != 0 {
                        return IpOut::Skip;
                    }
                    next = n;
                    off = data_start;
                    break;
                }
                return IpOut::Frag(Fragment {
                    key: FragKey {
                        src,
                        dst,
                        id,
                        proto: 0,
                    },
                    offset,
                    more,
                    header: &ip[..off],
                    next_hdr_at: next_at,
                    proto: n,
                    data: &ip[data_start..total],
                    ipv4: false,
                    tunneled: ctx.depth > 0,
                });
            }
            _ => break,
        }
    }
    if off > total || off > ip.len() {
        return IpOut::Skip;
    }
    transport(src, dst, next, &ip[off..], total - off, total as u64, ctx)
}

/// After the IP header: TCP, or a tunnel Zeek decapsulates by default.
fn transport<'a>(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    captured: &'a [u8],
    payload_len: usize,
    ip_bytes: u64,
    ctx: &Ctx,
) -> IpOut<'a> {
    match proto {
        PROTO_TCP => {
            // Fewer than 20 TCP header bytes: dropped before any connection lookup. A zero
            // payload length (offload) is judged on the captured bytes alone.
            if (payload_len != 0 && payload_len < 20) || captured.len() < 20 {
                return IpOut::Skip;
            }
            IpOut::Tcp(TcpSeg {
                src,
                dst,
                ip_bytes,
                seg_len: payload_len,
                tcp: captured,
                tunneled: ctx.depth > 0,
            })
        }
        PROTO_IPIP | PROTO_IPV6 => {
            let inner = &captured[..payload_len.min(captured.len())];
            inner_ip(inner, ctx, Some(if proto == PROTO_IPIP { 4 } else { 6 }))
        }
        PROTO_GRE => gre(&captured[..payload_len.min(captured.len())], ctx),
        PROTO_UDP => udp(src, dst, captured, payload_len, ctx),
        _ => IpOut::Skip,
    }
}

/// Decodes a tunneled IP packet; `version` is the version the outer header announced.
fn inner_ip<'a>(inner: &'a [u8], ctx: &Ctx, version: Option<u8>) -> IpOut<'a> {
    if ctx.depth >= MAX_TUNNEL_DEPTH {
        return IpOut::Skip;
    }
    let v = inner.first().map(|b| b >> 4);
    if version.is_some() && v != version {
        return IpOut::Skip;
    }
    let inner_ctx = Ctx {
        ignore_checksums: ctx.ignore_checksums,
        depth: ctx.depth + 1,
    };
    decode_ip(inner, inner.len(), &inner_ctx)
}

fn inner_ethernet<'a>(frame: &'a [u8], ctx: &Ctx) -> IpOut<'a> {
    match strip_link(LinkType::Ethernet, frame) {
        Ok(LinkPayload::Ip(ip)) => inner_ip(ip, ctx, None),
        _ => IpOut::Skip,
    }
}

/// GRE (RFC 2784/2890, and the enhanced GRE of PPTP carrying PPP).
fn gre<'a>(g: &'a [u8], ctx: &Ctx) -> IpOut<'a> {
    let (Some(flags), Some(proto)) = (be16(g, 0), be16(g, 2)) else {
        return IpOut::Skip;
    };
    let version = flags & 0x7;
    let mut off = 4;
    match version {
        0 => {
            if flags & 0x8000 != 0 || flags & 0x4000 != 0 {
                off += 4; // checksum (+ reserved), present if C or R
            }
            if flags & 0x2000 != 0 {
                off += 4; // key
            }
            if flags & 0x1000 != 0 {
                off += 4; // sequence number
            }
            let Some(payload) = g.get(off..) else {
                return IpOut::Skip;
            };
            match proto {
                0x0800 | 0x86dd => inner_ip(payload, ctx, None),
                0x6558 => inner_ethernet(payload, ctx),
                _ => IpOut::Skip,
            }
        }
        1 => {
            // Enhanced GRE: key always present (payload length + call id), optional seq/ack.
            if proto != 0x880b {
                return IpOut::Skip;
            }
            off += 4;
            if flags & 0x1000 != 0 {
                off += 4;
            }
            if flags & 0x0080 != 0 {
                off += 4;
            }
            let Some(ppp) = g.get(off..) else {
                return IpOut::Skip;
            };
            // PPP, possibly with address/control bytes and a compressed protocol field.
            let ppp = ppp.strip_prefix(&[0xff, 0x03]).unwrap_or(ppp);
            match ppp {
                [0x00, 0x21, rest @ ..] | [0x21, rest @ ..] => inner_ip(rest, ctx, Some(4)),
                [0x00, 0x57, rest @ ..] | [0x57, rest @ ..] => inner_ip(rest, ctx, Some(6)),
                _ => IpOut::Skip,
            }
        }
        _ => IpOut::Skip,
    }
}

const PORT_VXLAN: u16 = 4789;
const PORT_GENEVE: u16 = 6081;
const PORT_TEREDO: u16 = 3544;
const PORT_AYIYA: u16 = 5072;
const PORT_GTP_U: u16 = 2152;
const PORT_GRE_UDP: u16 = 4754;

/// UDP tunnels Zeek recognises on their standard ports.
fn udp<'a>(
    src: IpAddr,
    dst: IpAddr,
    captured: &'a [u8],
    payload_len: usize,
    ctx: &Ctx,
) -> IpOut<'a> {
    if ctx.depth >= MAX_TUNNEL_DEPTH || payload_len < 8 || captured.len() < 8 {
        return IpOut::Skip;
    }
    let (Some(sport), Some(dport)) = (be16(captured, 0), be16(captured, 2)) else {
        return IpOut::Skip;
    };
    let whole = captured.len() >= payload_len;
    let stored = be16(captured, 6).unwrap_or(0);
    // VXLAN is sent with a zero checksum, which is accepted even over IPv6.
    let vxlan_unchecked = dport == PORT_VXLAN
        && stored == 0
        && payload_len > 8 + 8 + 14
        && captured.get(8).is_some_and(|f| f & 0x08 != 0);
    if !ctx.ignore_checksums && whole && !vxlan_unchecked {
        // Optional (zero) over IPv4, mandatory over IPv6; a bad one drops the packet.
        let v4 = matches!(src, IpAddr::V4(_));
        if (stored != 0 || !v4)
            && !transport_checksum_ok(src, dst, PROTO_UDP, &captured[..payload_len])
        {
            return IpOut::Skip;
        }
    }
    let body = &captured[8..payload_len.min(captured.len())];
    let on = |p: u16| sport == p || dport == p;
    if dport == PORT_VXLAN {
        if body.len() < 8 || body[0] & 0x08 == 0 {
            return IpOut::Skip;
        }
        return inner_ethernet(&body[8..], ctx);
    }
    if dport == PORT_GENEVE {
        let (Some(&b0), Some(ptype)) = (body.first(), be16(body, 2)) else {
            return IpOut::Skip;
        };
        let hdr = 8 + usize::from(b0 & 0x3f) * 4;
        let Some(payload) = body.get(hdr..) else {
            return IpOut::Skip;
        };
        return match ptype {
            0x6558 => inner_ethernet(payload, ctx),
            0x0800 | 0x86dd => inner_ip(payload, ctx, None),
            _ => IpOut::Skip,
        };
    }
    if on(PORT_GRE_UDP) {
        return gre(body, ctx);
    }
    if on(PORT_GTP_U) {
        return gtp_u(body, ctx);
    }
    if on(PORT_AYIYA) {
        return ayiya(body, ctx);
    }
    if on(PORT_TEREDO) {
        return teredo(body, ctx);
    }
    // No tunnel registered for the ports: Zeek's protocol detection still recognises Teredo
    // (an IPv6 packet to or from the Teredo prefix 2001:0::/32) and AYIYA on any port.
    if looks_like_teredo(body) {
        return teredo(body, ctx);
    }
    if body.len() >= 3 && body[1] == 0x52 && body[2] == 0x11 {
        return ayiya(body, ctx);
    }
    IpOut::Skip
}

/// Zeek's Teredo detection (its former DPD signature plus the header walk).
fn looks_like_teredo(d: &[u8]) -> bool {
    if d.len() < 40 || (d[0] >> 4 != 6 && (d[0] != 0 || (d[1] != 0 && d[1] != 1))) {
        return false;
    }
    const PREFIX: [u8; 4] = [0x20, 0x01, 0x00, 0x00];
    if d[0] >> 4 == 6 && (d[8..12] == PREFIX || d[24..28] == PREFIX) {
        return true;
    }
    let mut d = d;
    let mut tag = d[1];
    if tag == 1 {
        let skip = 13 + usize::from(d[2]) + usize::from(d[3]);
        match d.get(skip..) {
            Some(rest) if rest.len() >= 40 => d = rest,
            _ => return false,
        }
        tag = d[1];
        if d[0] != 0 {
            return false;
        }
    }
    tag == 0 && d.get(8).is_some_and(|b| b >> 4 == 6) && d.len() >= 48
}

/// A tunneled packet whose length must be exactly what the tunnel carried (Zeek rejects
/// GTP and Teredo payloads whose IP length disagrees).
fn exact_inner_ip<'a>(inner: &'a [u8], ctx: &Ctx, version: Option<u8>) -> IpOut<'a> {
    let total = match inner.first().map(|b| b >> 4) {
        Some(4) => be16(inner, 2).map(usize::from),
        Some(6) => be16(inner, 4).map(|l| usize::from(l) + 40),
        _ => None,
    };
    if total != Some(inner.len()) {
        return IpOut::Skip;
    }
    inner_ip(inner, ctx, version)
}

/// GTPv1-U: a T-PDU (message type 255) carries a user IP packet.
fn gtp_u<'a>(g: &'a [u8], ctx: &Ctx) -> IpOut<'a> {
    let (Some(&flags), Some(&msg)) = (g.first(), g.get(1)) else {
        return IpOut::Skip;
    };
    if flags >> 5 != 1 || flags & 0x10 == 0 || msg != 0xff {
        return IpOut::Skip;
    }
    let mut off = 8;
    if flags & 0x07 != 0 {
        // Sequence number, N-PDU number, next extension header type.
        off += 4;
        if flags & 0x04 != 0 {
            let Some(&mut_next) = g.get(off - 1) else {
                return IpOut::Skip;
            };
            let mut next = mut_next;
            while next != 0 {
                let Some(&units) = g.get(off) else {
                    return IpOut::Skip;
                };
                if units == 0 {
                    return IpOut::Skip;
                }
                off += usize::from(units) * 4;
                let Some(&n) = g.get(off - 1) else {
                    return IpOut::Skip;
                };
                next = n;
            }
        }
    }
    match g.get(off..) {
        Some(payload) => exact_inner_ip(payload, ctx, None),
        None => IpOut::Skip,
    }
}

/// AYIYA (RFC draft "Anything In Anything"): identity and signature lengths are in the header.
fn ayiya<'a>(a: &'a [u8], ctx: &Ctx) -> IpOut<'a> {
    let (Some(&b0), Some(&b1), Some(&b2), Some(&next)) = (a.first(), a.get(1), a.get(2), a.get(3))
    else {
        return IpOut::Skip;
    };
    // Only "forward" (opcode 1) messages carry a packet.
    if b2 & 0x0f != 1 {
        return IpOut::Skip;
    }
    let hdr = 8 + (1usize << (b0 >> 4)) + usize::from(b1 >> 4) * 4;
    let Some(payload) = a.get(hdr..) else {
        return IpOut::Skip;
    };
    match next {
        PROTO_IPIP => inner_ip(payload, ctx, Some(4)),
        PROTO_IPV6 => inner_ip(payload, ctx, Some(6)),
        _ => IpOut::Skip,
    }
}

/// Teredo (RFC 4380): an IPv6 packet, optionally after an authentication and then an origin
/// indication header.
fn teredo<'a>(t: &'a [u8], ctx: &Ctx) -> IpOut<'a> {
    let mut off = 0;
    if be16(t, 0) == Some(0x0001) {
        let (Some(&id_len), Some(&au_len)) = (t.get(2), t.get(3)) else {
            return IpOut::Skip;
        };
        off += 4 + usize::from(id_len) + usize::from(au_len) + 8 + 1;
    }
    if be16(t, off) == Some(0x0000) {
        off += 8;
    }
    match t.get(off..) {
        Some(payload) if payload.len() >= 40 && payload[0] >> 4 == 6 => {
            exact_inner_ip(payload, ctx, Some(6))
        }
        _ => IpOut::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(ignore: bool) -> Ctx {
        Ctx {
            ignore_checksums: ignore,
            depth: 0,
        }
    }

    /// IPv4 + TCP SYN built by etherparse (valid checksums).
    fn v4_syn(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1000, 512)
            .syn();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn valid_v4_tcp() {
        let p = v4_syn(b"ab");
        let IpOut::Tcp(seg) = decode_ip(&p, p.len(), &ctx(false)) else {
            panic!("not tcp")
        };
        assert_eq!(seg.ip_bytes, p.len() as u64);
        assert_eq!(seg.seg_len, 22);
        assert!(transport_checksum_ok(
            seg.src,
            seg.dst,
            6,
            &seg.tcp[..seg.seg_len]
        ));
    }

    #[test]
    fn bad_ip_checksum_dropped_unless_ignored() {
        let mut p = v4_syn(b"");
        p[10] ^= 0xff;
        assert!(matches!(decode_ip(&p, p.len(), &ctx(false)), IpOut::Skip));
        assert!(matches!(decode_ip(&p, p.len(), &ctx(true)), IpOut::Tcp(_)));
    }

    #[test]
    fn zero_total_length_needs_ignore_checksums() {
        let mut p = v4_syn(b"xyz");
        p[2] = 0;
        p[3] = 0;
        assert!(matches!(decode_ip(&p, p.len(), &ctx(false)), IpOut::Skip));
        let IpOut::Tcp(seg) = decode_ip(&p, p.len(), &ctx(true)) else {
            panic!("not tcp")
        };
        assert_eq!(seg.ip_bytes, 0);
        assert_eq!(seg.seg_len, 23);
    }

    #[test]
    fn short_tcp_header_and_wire_length() {
        let p = v4_syn(b"");
        assert!(matches!(
            decode_ip(&p[..30], p.len(), &ctx(true)),
            IpOut::Skip
        ));
        // Wire shorter than the IP total length.
        assert!(matches!(
            decode_ip(&p, p.len() - 1, &ctx(true)),
            IpOut::Skip
        ));
    }

    #[test]
    fn fragments_are_reported() {
        let mut p = v4_syn(b"0123456789abcdef");
        p[6] = 0x20; // MF
        let sum = {
            p[10] = 0;
            p[11] = 0;
            !fold(ones_sum(0, &p[..20]))
        };
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let IpOut::Frag(f) = decode_ip(&p, p.len(), &ctx(false)) else {
            panic!("not a fragment")
        };
        assert!(f.more);
        assert_eq!(f.offset, 0);
        assert_eq!(f.data.len(), p.len() - 20);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            for first in [0x45u8, 0x60, 0x4f] {
                let mut d = data.clone();
                if let Some(b) = d.first_mut() {
                    *b = first;
                }
                let _ = decode_ip(&d, d.len(), &ctx(true));
                let _ = decode_ip(&d, d.len(), &ctx(false));
            }
        }
    }
}
