//! Storage for the live connection records: fixed-size chunks that are never reallocated,
//! with freed slots reused first. Memory follows the most records alive at once (rounded
//! up to a chunk), where a growing `Vec` or an inline hash table would hold up to twice
//! that and copy every record on each growth.

use super::Connection;

/// Records per chunk: small next to a busy table, large enough that chunk lookups are rare
/// cache misses.
const CHUNK: usize = 1024;

/// Where a record lives: chunk number and place in it, packed as `chunk * CHUNK + place`.
pub type SlotId = u32;

#[derive(Default)]
pub struct Slab {
    chunks: Vec<Vec<Option<Connection>>>,
    free: Vec<SlotId>,
    len: usize,
}

impl Slab {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, conn: Connection) -> SlotId {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            let place = &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK];
            debug_assert!(place.is_none());
            *place = Some(conn);
            return slot;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk_no = self.chunks.len() - 1;
        let chunk = &mut self.chunks[chunk_no];
        chunk.push(Some(conn));
        // Slot numbers stay below u32::MAX: 4 billion records would need terabytes first.
        (chunk_no * CHUNK + chunk.len() - 1) as SlotId
    }

    /// The record in a slot the table holds. Slots come only from `insert`, so an empty or
    /// missing one is a bug in the flow table, not something input can cause.
    pub fn get(&self, slot: SlotId) -> &Connection {
        self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
            .as_ref()
            .expect("flow table index points at an empty slot")
    }

    /// The place of a slot that may never have been made (a hint's slot).
    fn place(&self, slot: SlotId) -> Option<&Option<Connection>> {
        self.chunks
            .get(slot as usize / CHUNK)?
            .get(slot as usize % CHUNK)
    }

    /// The record in a slot that may be empty or never made.
    pub fn try_get(&self, slot: SlotId) -> Option<&Connection> {
        self.place(slot)?.as_ref()
    }

    /// Starts loading a slot's record into the cache, if the slot was ever made.
    pub fn prefetch(&self, slot: SlotId) {
        if let Some(place) = self.place(slot) {
            super::prefetch::lines_of(place);
        }
    }

    pub fn get_mut(&mut self, slot: SlotId) -> &mut Connection {
        self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
            .as_mut()
            .expect("flow table index points at an empty slot")
    }

    pub fn remove(&mut self, slot: SlotId) -> Connection {
        let conn = self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
            .take()
            .expect("flow table index points at an empty slot");
        self.len -= 1;
        self.free.push(slot);
        conn
    }

    /// Takes every record out, in slot order, giving each chunk back to the allocator once
    /// it is emptied. (glibc keeps such chunks for reuse rather than returning them to the
    /// system, so a table mostly live at the end still peaks at twice its records.)
    pub fn into_records(self) -> impl Iterator<Item = Connection> {
        self.chunks
            .into_iter()
            .flat_map(|chunk| chunk.into_iter().flatten())
    }

    /// Every record with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (SlotId, &Connection)> {
        self.chunks.iter().enumerate().flat_map(|(n, chunk)| {
            chunk
                .iter()
                .enumerate()
                .filter_map(move |(i, c)| c.as_ref().map(|c| ((n * CHUNK + i) as SlotId, c)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Segment, SockAddr};
    use crate::time::Ts;

    fn conn(id: u64) -> Connection {
        let addr = |port| SockAddr {
            ip: "10.0.0.1".parse().unwrap(),
            port,
        };
        let seg = Segment {
            src: addr(1000),
            dst: addr(80),
            seq: 0,
            ack: 0,
            flags: crate::decode::flags::SYN,
            window: 0,
            wscale: None,
            payload_len: 0,
        };
        Connection::new(id, &seg, Ts(0))
    }

    #[test]
    fn slots_are_reused_and_records_stay_put() {
        let mut slab = Slab::default();
        let slots: Vec<SlotId> = (0..(2 * CHUNK + 5) as u64)
            .map(|i| slab.insert(conn(i)))
            .collect();
        assert_eq!(slab.len(), 2 * CHUNK + 5);
        assert_eq!(slab.chunks.len(), 3);
        for (i, &slot) in slots.iter().enumerate() {
            assert_eq!(slab.get(slot).id, i as u64);
        }
        assert_eq!(slab.remove(slots[7]).id, 7);
        assert_eq!(slab.remove(slots[CHUNK + 1]).id, CHUNK as u64 + 1);
        assert_eq!(slab.len(), 2 * CHUNK + 3);
        // Freed slots are filled before a new chunk is made.
        let a = slab.insert(conn(9000));
        let b = slab.insert(conn(9001));
        assert_eq!((a, b), (slots[CHUNK + 1], slots[7]));
        assert_eq!(slab.chunks.len(), 3);
        assert_eq!(slab.get(a).id, 9000);
        slab.get_mut(b).id = 42;
        assert_eq!(slab.iter().count(), 2 * CHUNK + 5);
        assert!(slab.iter().any(|(s, c)| s == b && c.id == 42));
    }

    /// Memory per tracked connection rests on the record's size (benches/README): keep it
    /// from growing unnoticed. (528 bytes before times became `OptTs` and rare facts moved
    /// out of line; 384 before sequence numbers became plain `u32`s with a bitset; 352 before
    /// SYN retransmission bookkeeping moved out of line; 272 before one TIME_WAIT per
    /// connection was kept in line, a second in the rare part; 240 before the first SYN time
    /// became a bit when it is the start or the first SYN-ACK; 224 before the time a reuse
    /// superseded it became a bit when it is the end of the TIME_WAIT kept in line.)
    #[test]
    fn record_stays_small() {
        assert!(
            size_of::<Option<Connection>>() <= 216,
            "{} bytes",
            size_of::<Option<Connection>>()
        );
    }
}
