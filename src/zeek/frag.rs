//! IP fragment reassembly: fragments are held until their datagram is complete, then the
//! rebuilt datagram is processed at the time of the fragment that completed it (section 1).

use std::collections::{BTreeMap, HashMap};

use super::decode::{FragKey, Fragment};

/// Pending datagrams beyond this many are dropped (oldest first) so memory stays bounded.
const MAX_PENDING: usize = 10_000;
/// Largest datagram rebuilt (IPv4 and IPv6 without jumbograms cannot exceed it).
const MAX_DATAGRAM: usize = 65_535 + 40;

#[derive(Default)]
struct Pending {
    /// Unfragmentable part, from the fragment at offset 0.
    header: Option<(Vec<u8>, usize)>,
    proto: u8,
    ipv4: bool,
    /// Offset -> data; the first fragment to cover a byte wins.
    blocks: BTreeMap<usize, Vec<u8>>,
    /// Payload length, known once the last fragment arrived.
    end: Option<usize>,
    /// Insertion order, for eviction.
    order: u64,
}

#[derive(Default)]
pub(crate) struct Reassembler {
    pending: HashMap<FragKey, Pending>,
    counter: u64,
}

impl Reassembler {
    /// Adds a fragment; returns the rebuilt datagram once every byte of it is there.
    pub fn add(&mut self, f: &Fragment<'_>) -> Option<Vec<u8>> {
        if f.offset.saturating_add(f.data.len()) > MAX_DATAGRAM {
            return None;
        }
        if !self.pending.contains_key(&f.key)
            && self.pending.len() >= MAX_PENDING
            && let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.order)
                .map(|(k, _)| *k)
        {
            self.pending.remove(&oldest);
        }
        self.counter += 1;
        let order = self.counter;
        let p = self.pending.entry(f.key).or_insert_with(|| Pending {
            order,
            ..Pending::default()
        });
        p.proto = f.proto;
        p.ipv4 = f.ipv4;
        if f.offset == 0 && p.header.is_none() {
            p.header = Some((f.header.to_vec(), f.next_hdr_at));
        }
        if !f.more {
            p.end = Some(f.offset + f.data.len());
        }
        if !f.data.is_empty() {
            p.blocks.entry(f.offset).or_insert_with(|| f.data.to_vec());
        }
        let end = p.end?;
        p.header.as_ref()?;
        // Complete when the blocks cover 0..end without a hole.
        let mut covered = 0usize;
        for (&off, data) in &p.blocks {
            if off > covered {
                return None;
            }
            covered = covered.max(off + data.len());
        }
        if covered < end {
            return None;
        }
        let p = self.pending.remove(&f.key)?;
        let (mut header, next_at) = p.header?;
        let mut payload = vec![0u8; end];
        // Later blocks never overwrite bytes an earlier-offset block already supplied.
        let mut filled = 0usize;
        for (off, data) in &p.blocks {
            let start = (*off).max(filled);
            let stop = (off + data.len()).min(end);
            if start < stop {
                payload[start..stop].copy_from_slice(&data[start - off..stop - off]);
                filled = stop;
            }
        }
        if p.ipv4 {
            let total = header.len() + end;
            if total > 65_535 || header.len() < 20 {
                return None;
            }
            header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            header[6] = 0;
            header[7] = 0;
        } else {
            let plen = header.len().checked_sub(40)? + end;
            if plen > 65_535 || next_at >= header.len() {
                return None;
            }
            header[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
            header[next_at] = p.proto;
        }
        header.extend_from_slice(&payload);
        Some(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn frag<'a>(header: &'a [u8], offset: usize, more: bool, data: &'a [u8]) -> Fragment<'a> {
        Fragment {
            key: FragKey {
                src: IpAddr::V4(Ipv4Addr::LOCALHOST),
                dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
                id: 7,
                proto: 6,
            },
            offset,
            more,
            header,
            next_hdr_at: 9,
            proto: 6,
            data,
            ipv4: true,
            tunneled: false,
        }
    }

    #[test]
    fn out_of_order_fragments_rebuild() {
        let hdr = [0x45u8; 20];
        let mut r = Reassembler::default();
        assert!(r.add(&frag(&hdr, 8, false, b"89ab")).is_none());
        let whole = r.add(&frag(&hdr, 0, true, b"01234567")).expect("complete");
        assert_eq!(&whole[20..], b"0123456789ab");
        assert_eq!(u16::from_be_bytes([whole[2], whole[3]]), 32);
    }

    #[test]
    fn hole_waits() {
        let hdr = [0x45u8; 20];
        let mut r = Reassembler::default();
        assert!(r.add(&frag(&hdr, 0, true, b"01234567")).is_none());
        assert!(r.add(&frag(&hdr, 16, false, b"x")).is_none());
        assert!(r.add(&frag(&hdr, 8, true, b"89abcdef")).is_some());
    }
}
