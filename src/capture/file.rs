//! Reading pcap and pcapng files: classic pcap by hand, pcapng with `pcap-parser` (its plain
//! Enhanced Packet Blocks by hand). Records are borrowed from one growing buffer, so a file is
//! read with large sequential reads and no copy per packet.

use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{PcapBlockOwned, PcapError};

use super::read_ahead::ReadAhead;
use super::{CaptureError, CaptureErrorKind, ContainerCounters, PacketFn, RawPacket};
use crate::decode::LinkType;
use crate::time::Ts;

const BUFFER_BYTES: usize = 1 << 20;
const HEAD_BYTES: usize = 256 << 10;
/// No record may be larger than this: pcapng blocks of a few MiB exist, gigabytes do not.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Interface facts from a pcapng Interface Description Block.
#[derive(Clone, Copy)]
struct Interface {
    linktype: i32,
    /// Timestamp units per second.
    units_per_sec: u64,
    offset_secs: i64,
}

impl Interface {
    /// The time of a packet block's timestamp (`ts_high`, `ts_low`) on this interface.
    fn time(&self, ts_high: u32, ts_low: u32) -> Ts {
        let raw = (u64::from(ts_high) << 32) | u64::from(ts_low);
        let units = self.units_per_sec.max(1);
        let secs = (raw / units) as i64 + self.offset_secs;
        let nanos = (u128::from(raw % units) * 1_000_000_000 / u128::from(units)) as i64;
        Ts::from_parts(secs, nanos)
    }
}

/// An Enhanced Packet Block read by hand (`plain_epb`).
struct PlainEpb<'a> {
    /// The block's length, to consume.
    len: usize,
    ts: Ts,
    linktype: i32,
    data: &'a [u8],
    orig_len: u32,
}

/// The block at the start of `data` if it is an Enhanced Packet Block with no options,
/// whole (its trailing length where its length says), of a described interface: what
/// pcap-parser reads from such a block, without its per-block parsing. `None` for any other
/// block, which pcap-parser then reads (or rejects).
fn plain_epb<'a>(
    data: &'a [u8],
    big_endian: bool,
    interfaces: &[Interface],
) -> Option<PlainEpb<'a>> {
    let (len, iface, frame) = plain_epb_parts(data, big_endian, interfaces)?;
    let u32_at = |at| ng_u32(data, at, big_endian);
    Some(PlainEpb {
        len,
        ts: iface.time(u32_at(12)?, u32_at(16)?),
        linktype: iface.linktype,
        data: frame,
        orig_len: u32_at(24)?,
    })
}

/// `plain_epb`'s checks, and what the look ahead needs: the block's length, its interface
/// and its frame.
fn plain_epb_parts<'a, 'i>(
    data: &'a [u8],
    big_endian: bool,
    interfaces: &'i [Interface],
) -> Option<(usize, &'i Interface, &'a [u8])> {
    const EPB: u32 = 6;
    let u32_at = |at| ng_u32(data, at, big_endian);
    if u32_at(0)? != EPB {
        return None;
    }
    let len = u32_at(4)? as usize;
    let caplen = u32_at(20)? as usize;
    // Header (28 bytes), the data padded to 4, no options, the trailing length.
    if len != 28 + caplen.checked_next_multiple_of(4)? + 4 || u32_at(len - 4)? as usize != len {
        return None;
    }
    let iface = interfaces.get(u32_at(8)? as usize)?;
    Some((len, iface, data.get(28..28 + caplen)?))
}

fn ng_u32(data: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let b = *data.get(at..at + 4)?.first_chunk::<4>()?;
    Some(if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

/// The look-ahead cursor of `read_parsed` once `len` bytes are consumed: it moves back by
/// them, or starts again at the next block if it had not passed them.
fn after_consuming(len: usize, ahead_at: usize, ahead_n: usize) -> (usize, usize) {
    if ahead_at >= len && ahead_n > 0 {
        (ahead_at - len, ahead_n - 1)
    } else {
        (0, 0)
    }
}

/// Reads the named files in order as one capture (`-` is standard input), handing every
/// packet to `on_packet`. Stops at the first fault, after everything before it was handed over.
pub fn read_files(
    paths: &[String],
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<(), CaptureError> {
    for path in paths {
        let err = |kind| CaptureError {
            source: path.clone(),
            kind,
        };
        let input = if path == "-" {
            // Redirected from a file: read ahead as a file is.
            match stdin_file().map(ReadAhead::new) {
                Some(Ok(ahead)) => Input::Ahead(ahead),
                _ => Input::Plain(Box::new(std::io::stdin())),
            }
        } else {
            let file = File::open(path).map_err(|e| err(CaptureErrorKind::Open(e.to_string())))?;
            // Read on a thread of its own a chunk ahead; directly if it cannot be.
            match file.try_clone().and_then(ReadAhead::new) {
                Ok(ahead) => Input::Ahead(ahead),
                Err(_) => Input::Plain(Box::new(file)),
            }
        };
        let display = if path == "-" {
            "<stdin>".to_string()
        } else {
            path.clone()
        };
        if read_one(&display, input, counters, on_packet)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// Standard input as a `File` if it is a regular file (`-r - < x.pcap`), not a pipe, FIFO
/// or terminal.
fn stdin_file() -> Option<File> {
    use std::os::fd::AsFd;
    let file = File::from(std::io::stdin().as_fd().try_clone_to_owned().ok()?);
    file.metadata().ok()?.is_file().then_some(file)
}

/// Whether standard input is a regular file: then it is read as a named file is, and what
/// is written need not be flushed record by record.
pub fn stdin_is_a_file() -> bool {
    stdin_file().is_some()
}

/// Reads one capture (pcap or pcapng) from any reader, e.g. a byte slice; `source` names it
/// in errors. What [`read_files`] does for each file, for callers that hold the bytes (the
/// fuzz targets, tests). `Break` means `on_packet` asked to stop.
pub fn read_from<'r>(
    source: &str,
    input: impl Read + Send + 'r,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<ControlFlow<()>, CaptureError> {
    read_one(source, Input::Plain(Box::new(input)), counters, on_packet)
}

/// `read_from`, with `input` read on a thread of its own as `read_files` reads a file: each
/// `read` of `input` becomes a chunk the classic reader walks where it lies, so a reader
/// that gives a few bytes at a time puts a chunk's end inside every part of a record (the
/// reader fuzz target holds this to `read_from`).
pub fn read_ahead_from(
    source: &str,
    input: impl Read + Send + 'static,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<ControlFlow<()>, CaptureError> {
    let input = ReadAhead::new(input).map_err(|e| CaptureError {
        source: source.to_string(),
        kind: CaptureErrorKind::Read(e.to_string()),
    })?;
    read_one(source, Input::Ahead(input), counters, on_packet)
}

/// Where a capture's bytes come from: any reader (into the classic reader's own buffer), or
/// a file read ahead on a thread of its own, whose chunks the classic reader walks where
/// they lie.
pub(crate) enum Input<'r> {
    Plain(Box<dyn Read + Send + 'r>),
    Ahead(ReadAhead),
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Input::Plain(input) => input.read(buf),
            Input::Ahead(input) => input.read(buf),
        }
    }
}

impl<'r> Input<'r> {
    fn into_boxed(self) -> Box<dyn Read + Send + 'r> {
        match self {
            Input::Plain(input) => input,
            Input::Ahead(input) => Box::new(input),
        }
    }
}

/// How many bytes the first block of a capture takes, as far as `head` tells: the 24-byte
/// pcap header, or a pcapng section header's own length (at least 28).
fn first_block_len(head: &[u8]) -> usize {
    const PCAPNG: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
    if head.len() < 4 {
        return 28;
    }
    if head[0..4] != PCAPNG {
        return 24;
    }
    if head.len() < 12 {
        return 28;
    }
    let len = [head[4], head[5], head[6], head[7]];
    let declared = if head[8..12] == [0x1a, 0x2b, 0x3c, 0x4d] {
        u32::from_be_bytes(len)
    } else {
        u32::from_le_bytes(len)
    };
    (declared as usize).max(28)
}

fn read_one<'r>(
    source: &str,
    mut input: Input<'r>,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<ControlFlow<()>, CaptureError> {
    let head = read_head(source, &mut input)?;
    if head[0..4] == PCAPNG_MAGIC {
        read_parsed(source, head, input.into_boxed(), counters, on_packet, true)
    } else {
        read_classic(source, head, input, counters, on_packet)
    }
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads the first block of a capture (the pcap header, a pcapng section header), after
/// checking it is one: a known magic and whole header. The result is at least 24 bytes.
fn read_head(source: &str, input: &mut dyn Read) -> Result<Vec<u8>, CaptureError> {
    let err = |kind| CaptureError {
        source: source.to_string(),
        kind,
    };
    // Peek enough to tell a capture from anything else, with a message that shows what it is.
    // The whole first block must be in the first read pcap-parser makes, so peek generously.
    // Read only as far as the first block (a pipe may not have more yet: waiting for
    // HEAD_BYTES would hold back every record of a slow stream).
    let mut head = Vec::with_capacity(HEAD_BYTES);
    let mut chunk = [0u8; 4096];
    while head.len() < first_block_len(&head).min(HEAD_BYTES) {
        let want = (first_block_len(&head).min(HEAD_BYTES) - head.len()).min(chunk.len());
        match input.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(CaptureErrorKind::Read(e.to_string()))),
        }
    }
    if head.is_empty() {
        return Err(err(CaptureErrorKind::Empty));
    }
    let magic = head.get(0..4).map(|m| [m[0], m[1], m[2], m[3]]);
    let known = matches!(
        magic,
        Some([0x0a, 0x0d, 0x0d, 0x0a])
            | Some([0xd4, 0xc3, 0xb2, 0xa1])
            | Some([0xa1, 0xb2, 0xc3, 0xd4])
            | Some([0x4d, 0x3c, 0xb2, 0xa1])
            | Some([0xa1, 0xb2, 0x3c, 0x4d])
    );
    if !known {
        return Err(err(CaptureErrorKind::NotACapture {
            first_bytes: head.into_iter().take(8).collect(),
        }));
    }
    let header_len = if magic == Some([0x0a, 0x0d, 0x0d, 0x0a]) {
        28
    } else {
        24
    };
    if head.len() < header_len {
        return Err(err(CaptureErrorKind::Truncated {
            offset: 0,
            packets: 0,
        }));
    }
    Ok(head)
}

/// Reads a capture with `pcap-parser`, from its first block `head` on: every pcapng file (and
/// in tests, classic pcap too, to check [`read_classic`] against it). `hand_epb`: plain
/// Enhanced Packet Blocks are read by hand (`plain_epb`; tests check it against without).
fn read_parsed<'r>(
    source: &str,
    head: Vec<u8>,
    input: Box<dyn Read + Send + 'r>,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
    hand_epb: bool,
) -> Result<ControlFlow<()>, CaptureError> {
    let err = |kind| CaptureError {
        source: source.to_string(),
        kind,
    };
    let chained: Box<dyn Read + Send + 'r> = Box::new(std::io::Cursor::new(head).chain(input));
    let mut reader = pcap_parser::create_reader(BUFFER_BYTES, chained).map_err(|e| match e {
        PcapError::HeaderNotRecognized => err(CaptureErrorKind::NotACapture {
            first_bytes: Vec::new(),
        }),
        PcapError::Incomplete(_) | PcapError::UnexpectedEof | PcapError::Eof => {
            err(CaptureErrorKind::Truncated {
                offset: 0,
                packets: 0,
            })
        }
        other => err(CaptureErrorKind::Corrupt {
            offset: 0,
            packets: 0,
            why: format!("{other:?}"),
        }),
    })?;

    let mut packets: u64 = 0;
    let mut legacy: Option<(i32, bool, u32)> = None; // linktype, nanosecond, snaplen
    let mut legacy_big_endian = false;
    // Byte order of the current pcapng section, once its header block has been read.
    let mut ng_big_endian: Option<bool> = None;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut capacity = BUFFER_BYTES;
    // The look-ahead cursor of `walk_records`, over blocks: `ahead_n` blocks past the one at
    // the start of `reader.data()` (counting it), at `ahead_at` bytes into it.
    let mut ahead_at = 0usize;
    let mut ahead_n = 0usize;
    loop {
        let offset = reader.consumed() as u64;
        // An absurd record length is corrupt whatever follows it: say so before pcap-parser
        // grows its buffer or reads on to the end of the file looking for the record.
        if let Some(big_endian) = legacy.map(|_| legacy_big_endian)
            && let Some(len) = reader.data().get(8..12)
        {
            let len = [len[0], len[1], len[2], len[3]];
            let caplen = if big_endian {
                u32::from_be_bytes(len)
            } else {
                u32::from_le_bytes(len)
            };
            if caplen as usize > MAX_RECORD_BYTES {
                return Err(err(CaptureErrorKind::RecordTooLarge { offset, packets }));
            }
        }
        // Every pcapng block is at least 12 bytes (type, length, trailing length). pcap-parser
        // (0.17) checks that only against each block type's own header size, which is smaller
        // for some types (a Process Information Block of length 10 made it compute 10 - 12:
        // a panic in a debug build, and in release a wrapped length that read on to the end
        // of the file). Found by the `pipeline` fuzz target.
        if let Some(len) = ng_block_len(reader.data(), ng_big_endian)
            && len < 12
        {
            return Err(err(CaptureErrorKind::Corrupt {
                offset,
                packets,
                why: format!("block length {len} is below the 12-byte minimum"),
            }));
        }
        // The common block by hand: an Enhanced Packet Block without options, whole in the
        // buffer, of an interface the section described. Anything else goes to pcap-parser,
        // whose checks stay the reference.
        if hand_epb
            && let Some(big_endian) = ng_big_endian
            && let Some(epb) = plain_epb(reader.data(), big_endian, &interfaces)
        {
            let data = reader.data();
            let mut ahead: &[u8] = &[];
            while ahead_n <= LOOK_AHEAD {
                let Some(block) = data.get(ahead_at..) else {
                    break;
                };
                let Some(len) = ng_block_len(block, Some(big_endian))
                    .filter(|&len| len >= 12 && len <= block.len())
                else {
                    break;
                };
                if ahead_n == LOOK_AHEAD
                    && let Some((_, iface, frame)) = plain_epb_parts(block, big_endian, &interfaces)
                    && iface.linktype == epb.linktype
                {
                    ahead = frame;
                }
                ahead_at += len;
                ahead_n += 1;
            }
            packets += 1;
            let flow = on_packet(&RawPacket {
                ts: epb.ts,
                linktype: epb.linktype,
                data: epb.data,
                orig_len: epb.orig_len,
                ahead,
            });
            let len = epb.len;
            reader.consume(len);
            (ahead_at, ahead_n) = after_consuming(len, ahead_at, ahead_n);
            if flow.is_break() {
                return Ok(ControlFlow::Break(()));
            }
            continue;
        }
        let whole_ng_block_buffered = ng_block_buffered(reader.data(), ng_big_endian);
        match reader.next() {
            Ok((len, block)) => {
                let mut flow = ControlFlow::Continue(());
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        let linktype = h.network.0;
                        if LinkType::from_linktype(linktype).is_none() {
                            return Err(err(CaptureErrorKind::UnsupportedLinkType { linktype }));
                        }
                        legacy = Some((linktype, h.is_nanosecond_precision(), h.snaplen));
                        legacy_big_endian = h.is_bigendian();
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let (linktype, nanos, snaplen) = legacy.unwrap_or((1, false, 0));
                        if snaplen != 0 && b.caplen > snaplen.max(262_144) {
                            counters.caplen_over_snaplen += 1;
                        }
                        let frac = if nanos {
                            i64::from(b.ts_usec)
                        } else {
                            i64::from(b.ts_usec) * 1000
                        };
                        packets += 1;
                        flow = on_packet(&RawPacket {
                            ts: Ts::from_parts(i64::from(b.ts_sec), frac),
                            linktype,
                            data: b.data,
                            orig_len: b.origlen,
                            ahead: &[],
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(shb)) => {
                        ng_big_endian = Some(shb.big_endian());
                        interfaces.clear();
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        // An interface of another link type is an error only in a classic
                        // pcap; in pcapng its packets are counted and named in the report.
                        let linktype = idb.linktype.0;
                        if LinkType::from_linktype(linktype).is_none()
                            && !counters.unsupported_linktypes.contains(&linktype)
                        {
                            counters.unsupported_linktypes.push(linktype);
                        }
                        let units_per_sec = idb.ts_resolution().ok_or_else(|| {
                            err(CaptureErrorKind::Corrupt {
                                offset,
                                packets,
                                why: format!("invalid timestamp resolution {}", idb.if_tsresol),
                            })
                        })?;
                        interfaces.push(Interface {
                            linktype,
                            units_per_sec,
                            offset_secs: idb.ts_offset(),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        match interfaces.get(epb.if_id as usize) {
                            Some(iface) => {
                                packets += 1;
                                flow = on_packet(&RawPacket {
                                    ts: iface.time(epb.ts_high, epb.ts_low),
                                    linktype: iface.linktype,
                                    data: epb.packet_data(),
                                    orig_len: epb.origlen,
                                    ahead: &[],
                                });
                            }
                            None => counters.unknown_interface += 1,
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => match interfaces.first() {
                        // No timestamp in a Simple Packet Block: the engine keeps its clock.
                        Some(iface) => {
                            packets += 1;
                            flow = on_packet(&RawPacket {
                                ts: Ts::UNKNOWN,
                                linktype: iface.linktype,
                                data: spb.packet_data(),
                                orig_len: spb.origlen,
                                ahead: &[],
                            });
                        }
                        None => counters.unknown_interface += 1,
                    },
                    PcapBlockOwned::NG(_) => counters.skipped_blocks += 1,
                }
                reader.consume(len);
                (ahead_at, ahead_n) = after_consuming(len, ahead_at, ahead_n);
                if flow.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Err(PcapError::Eof) => return Ok(ControlFlow::Continue(())),
            Err(PcapError::Incomplete(_) | PcapError::BufferTooSmall)
                if whole_ng_block_buffered =>
            {
                // pcap-parser asks for more data when a field inside a pcapng block (an
                // EPB's captured length) points past the block's end, although the whole
                // block is in the buffer: reading on would only grow the buffer up to
                // MAX_RECORD_BYTES and then blame the end of the file. The block is corrupt.
                return Err(err(CaptureErrorKind::Corrupt {
                    offset,
                    packets,
                    why: "a length inside the block (captured length or option) runs past the block's end".into(),
                }));
            }
            Err(PcapError::Incomplete(_)) => {
                reader
                    .refill()
                    .map_err(|e| err(CaptureErrorKind::Read(format!("{e:?}"))))?;
            }
            Err(PcapError::BufferTooSmall) => {
                if capacity >= MAX_RECORD_BYTES {
                    return Err(err(CaptureErrorKind::RecordTooLarge { offset, packets }));
                }
                capacity *= 4;
                reader.grow(capacity);
                reader
                    .refill()
                    .map_err(|e| err(CaptureErrorKind::Read(format!("{e:?}"))))?;
            }
            Err(PcapError::UnexpectedEof) => {
                return Err(err(CaptureErrorKind::Truncated { offset, packets }));
            }
            Err(PcapError::ReadError) => {
                return Err(err(CaptureErrorKind::Read("I/O error".into())));
            }
            Err(e) => {
                let why = match e {
                    PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
                        format!("unparsable block ({})", kind.description())
                    }
                    other => format!("{other:?}"),
                };
                return Err(err(CaptureErrorKind::Corrupt {
                    offset,
                    packets,
                    why,
                }));
            }
        }
    }
}

/// Bytes read at once from a classic pcap: few system calls (1 to 4 MiB read equally fast,
/// 16 MiB is slower, as the buffer no longer stays in cache), and 1 MiB keeps the peak
/// memory 3 MiB lower than 4 MiB would.
const CLASSIC_BUFFER_BYTES: usize = 1 << 20;

/// How many records ahead of the one handed over the reader shows (`RawPacket::ahead`):
/// far enough that a prefetch started there has arrived (a packet takes ~150 ns, a load from
/// memory ~100 ns), near enough that what it fetched is still in the cache.
pub const LOOK_AHEAD: usize = 16;

/// Reads a classic pcap from its 24-byte header `head` on, walking records straight over one
/// buffer: no per-packet allocation or copy. Accepts and rejects what `pcap-parser` (0.17)
/// did, with the same errors and offsets: it ignores the version, zone and sigfigs fields,
/// takes the whole 32-bit link type field and does not compare the captured length with the
/// original one.
fn read_classic<'r>(
    source: &str,
    head: Vec<u8>,
    input: Input<'r>,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<ControlFlow<()>, CaptureError> {
    let err = |kind| CaptureError {
        source: source.to_string(),
        kind,
    };
    let Some((header, first_bytes)) = head.split_first_chunk::<24>() else {
        return Err(err(CaptureErrorKind::Truncated {
            offset: 0,
            packets: 0,
        }));
    };
    let big_endian = matches!(
        header[0..4],
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d]
    );
    let nanos = matches!(
        header[0..4],
        [0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d]
    );
    let u32_at = |at: usize| {
        let v = [header[at], header[at + 1], header[at + 2], header[at + 3]];
        if big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let snaplen = u32_at(16);
    let linktype = u32_at(20) as i32;
    if LinkType::from_linktype(linktype).is_none() {
        return Err(err(CaptureErrorKind::UnsupportedLinkType { linktype }));
    }
    let file = Classic {
        linktype,
        nanos_per_unit: if nanos { 1 } else { 1000 },
        // Over snaplen, and over what any pcap writer would snap to.
        caplen_limit: if snaplen == 0 {
            u32::MAX
        } else {
            snaplen.max(262_144)
        },
    };
    // One copy of the record loop per byte order: no test of the order per field.
    let walk = if big_endian {
        walk_records::<true>
    } else {
        walk_records::<false>
    };
    walk(&file, first_bytes, input, counters, on_packet).map_err(err)
}

/// What the record loop needs from a classic pcap's header.
struct Classic {
    linktype: i32,
    nanos_per_unit: i64,
    caplen_limit: u32,
}

/// The record loop of [`read_classic`]: `first_bytes` are those read past the header.
fn walk_records<const BIG_ENDIAN: bool>(
    file: &Classic,
    first_bytes: &[u8],
    mut input: Input<'_>,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<ControlFlow<()>, CaptureErrorKind> {
    let u32_at = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if BIG_ENDIAN {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let mut buf = vec![0u8; CLASSIC_BUFFER_BYTES.max(first_bytes.len())];
    buf[..first_bytes.len()].copy_from_slice(first_bytes);
    // buf[at..end] is read and not yet handed over; it starts at byte `offset` of the file.
    let mut at = 0;
    let mut end = first_bytes.len();
    let mut offset: u64 = 24;
    // Bytes of the input read so far (the header and `first_bytes` before this loop).
    let mut read_so_far = 24 + first_bytes.len();
    let mut packets: u64 = 0;
    let mut at_eof = false;
    // A second cursor, `ahead_n` records past `at` (counting the one there), shows each
    // packet the frame LOOK_AHEAD records later while the buffer holds it.
    let mut ahead_at = at;
    let mut ahead_n = 0usize;
    loop {
        // Hand over every whole record read so far: a pipe's records go out as they come.
        loop {
            let mut ahead: &[u8] = &[];
            while ahead_n <= LOOK_AHEAD {
                let rest = &buf[ahead_at..end];
                if rest.len() < 16 {
                    break;
                }
                // A length past the buffer (a partial or corrupt record) stops the cursor;
                // the main one says what it is when it gets there.
                let len = 16 + u32_at(rest, 8) as usize;
                let Some(frame) = rest.get(16..len) else {
                    break;
                };
                // The cursor steps over record number `ahead_n` counted from the one handed
                // over next (0): it is shown only that far ahead.
                if ahead_n == LOOK_AHEAD {
                    ahead = frame;
                }
                ahead_at += len;
                ahead_n += 1;
            }
            let rest = &buf[at..end];
            // The length is checked as soon as its 12 bytes are in, as pcap-parser's caller did.
            if rest.len() < 12 {
                break;
            }
            let caplen = u32_at(rest, 8);
            // Corrupt whatever follows: say so before reading on to find the record's end.
            if caplen as usize > MAX_RECORD_BYTES {
                return Err(CaptureErrorKind::RecordTooLarge { offset, packets });
            }
            let len = 16 + caplen as usize;
            let Some((head, data)) = rest.get(..len).and_then(|r| r.split_first_chunk::<16>())
            else {
                break;
            };
            if caplen > file.caplen_limit {
                counters.caplen_over_snaplen += 1;
            }
            let frac = i64::from(u32_at(head, 4)) * file.nanos_per_unit;
            packets += 1;
            let flow = on_packet(&RawPacket {
                ts: Ts::from_parts(i64::from(u32_at(head, 0)), frac),
                linktype: file.linktype,
                data,
                orig_len: u32_at(head, 12),
                ahead,
            });
            if flow.is_break() {
                return Ok(ControlFlow::Break(()));
            }
            at += len;
            ahead_n = ahead_n.saturating_sub(1);
            offset += len as u64;
        }
        if let Input::Ahead(ahead) = &mut input {
            // The next chunk is walked where it lies, the unfinished record put in front of
            // its bytes: no copy of every byte from a chunk into `buf`.
            let Some((mut chunk, start, filled)) = ahead
                .next_chunk()
                .map_err(|_| CaptureErrorKind::Read("ReadError".into()))?
            else {
                if at == end {
                    return Ok(ControlFlow::Continue(()));
                }
                return Err(CaptureErrorKind::Truncated { offset, packets });
            };
            let unfinished = end - at;
            if unfinished <= start {
                chunk[start - unfinished..start].copy_from_slice(&buf[at..end]);
                ahead.give_back(std::mem::replace(&mut buf, chunk));
                ahead_at = ahead_at - at + start - unfinished;
                (at, end) = (start - unfinished, filled);
            } else {
                // A record longer than the room in front: it gathers in `buf` (which grows
                // as a `Vec` does) up to the size the buffer below may grow to.
                if unfinished >= MAX_RECORD_BYTES {
                    return Err(CaptureErrorKind::RecordTooLarge { offset, packets });
                }
                buf.truncate(end);
                buf.drain(..at);
                buf.extend_from_slice(&chunk[start..filled]);
                ahead.give_back(chunk);
                ahead_at -= at;
                (at, end) = (0, buf.len());
                // As the buffer below: a record it cannot hold fails once it would fill it.
                if end >= MAX_RECORD_BYTES && 16 + u32_at(&buf, 8) as usize > MAX_RECORD_BYTES {
                    return Err(CaptureErrorKind::RecordTooLarge { offset, packets });
                }
            }
            continue;
        }
        if at_eof {
            if at == end {
                return Ok(ControlFlow::Continue(()));
            }
            return Err(CaptureErrorKind::Truncated { offset, packets });
        }
        // Move the partial record to the front, or just past it so that the read lands at
        // a multiple of 64 bytes from its place in the input: the kernel copies into such a
        // place four times faster (see `read_ahead::ALIGN`).
        let unfinished = end - at;
        let shift = read_so_far
            .wrapping_sub(buf.as_ptr() as usize + unfinished)
            .rem_euclid(64);
        let shift = if shift + unfinished < buf.len() {
            shift
        } else {
            0
        };
        buf.copy_within(at..end, shift);
        ahead_at = ahead_at - at + shift;
        (at, end) = (shift, shift + unfinished);
        if end == buf.len() {
            // It fills the buffer: grow as its bytes come, not by its length field, which
            // may claim 64 MiB in a file of a few bytes.
            if buf.len() >= MAX_RECORD_BYTES {
                // Within 16 bytes of the limit: it does not fit.
                return Err(CaptureErrorKind::RecordTooLarge { offset, packets });
            }
            buf.resize((buf.len() * 2).min(MAX_RECORD_BYTES), 0);
        }
        loop {
            match input.read(&mut buf[end..]) {
                Ok(0) => at_eof = true,
                Ok(n) => {
                    end += n;
                    read_so_far = read_so_far.wrapping_add(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // pcap-parser's message, kept.
                Err(_) => return Err(CaptureErrorKind::Read("ReadError".into())),
            }
            break;
        }
    }
}

/// The leading length of the next pcapng block in `data`, once a section's byte order is
/// known and the 8-byte block start is buffered. Not for a Section Header Block, whose byte
/// order is its own (pcap-parser checks its length).
fn ng_block_len(data: &[u8], big_endian: Option<bool>) -> Option<usize> {
    if data.get(0..4)? == [0x0a, 0x0d, 0x0d, 0x0a] {
        return None;
    }
    Some(ng_u32(data, 4, big_endian?)? as usize)
}

/// Is the whole of the next pcapng block (by its leading length) already in `data`? Then a
/// parser asking for more means a length inside the block is wrong.
fn ng_block_buffered(data: &[u8], big_endian: Option<bool>) -> bool {
    ng_block_len(data, big_endian).is_some_and(|len| len >= 12 && data.len() >= len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// One handed-over packet, owned: (ts, linktype, data, orig_len).
    type Got = (Ts, i32, Vec<u8>, u32);

    #[derive(Debug, PartialEq)]
    struct Outcome {
        packets: Vec<Got>,
        counters: ContainerCounters,
        result: Result<ControlFlow<()>, CaptureError>,
    }

    fn run(input: Input<'_>, stop_after: Option<usize>, legacy: bool) -> Outcome {
        let mut packets = Vec::new();
        let mut counters = ContainerCounters::default();
        let mut on_packet = |p: &RawPacket<'_>| {
            packets.push((p.ts, p.linktype, p.data.to_vec(), p.orig_len));
            if stop_after.is_some_and(|n| packets.len() >= n) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let result = if legacy {
            // The code before the fast path: pcap-parser for classic pcap too.
            let mut input = input.into_boxed();
            read_head("t", &mut input).and_then(|head| {
                read_parsed("t", head, input, &mut counters, &mut on_packet, false)
            })
        } else {
            read_one("t", input, &mut counters, &mut on_packet)
        };
        Outcome {
            packets,
            counters,
            result,
        }
    }

    fn new_reader(bytes: &[u8]) -> Outcome {
        run(plain(bytes), None, false)
    }

    fn plain<'a>(bytes: impl Read + Send + 'a) -> Input<'a> {
        Input::Plain(Box::new(bytes))
    }

    /// `bytes` read ahead on a thread, given to it in pieces of 1 to `most` bytes (each piece
    /// a chunk of its own, so records straddle chunks).
    fn ahead(bytes: &[u8], most: usize) -> Input<'static> {
        struct OwnedPieces {
            bytes: Vec<u8>,
            at: usize,
            state: u32,
            most: usize,
        }
        impl Read for OwnedPieces {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let n = (1 + (self.state >> 8) as usize % self.most)
                    .min(buf.len())
                    .min(self.bytes.len() - self.at);
                buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
                self.at += n;
                Ok(n)
            }
        }
        let pieces = OwnedPieces {
            bytes: bytes.to_vec(),
            at: 0,
            state: 11,
            most,
        };
        Input::Ahead(ReadAhead::new(pieces).expect("a thread"))
    }

    /// The new reader gives what pcap-parser gives on `bytes`, ending in `want`.
    fn fails_as_parser_does(bytes: &[u8], want: CaptureErrorKind) {
        let out = new_reader(bytes);
        assert_eq!(out, run(plain(bytes), None, true));
        assert_eq!(out, run(ahead(bytes, 100_000), None, false), "read ahead");
        assert_eq!(out.result.map_err(|e| e.kind), Err(want));
    }

    /// A reader that hands out 1 to 7 bytes per call, so every record straddles refills.
    struct Trickle<'a> {
        bytes: &'a [u8],
        state: u32,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let n = (1 + (self.state >> 16) as usize % 7)
                .min(buf.len())
                .min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    fn trickle(bytes: &[u8]) -> Input<'_> {
        plain(Trickle { bytes, state: 7 })
    }

    /// Reads `bytes` with the new reader and with pcap-parser, whole and trickled: all four
    /// must agree. Returns the outcome.
    fn same_as_pcap_parser(bytes: &[u8], what: &str) -> Outcome {
        let new = new_reader(bytes);
        assert_eq!(new, run(plain(bytes), None, true), "{what}: vs pcap-parser");
        assert_eq!(new, run(trickle(bytes), None, false), "{what}: trickled");
        assert_eq!(
            new,
            run(ahead(bytes, 300), None, false),
            "{what}: read ahead"
        );
        assert_eq!(
            new,
            run(trickle(bytes), None, true),
            "{what}: pcap-parser trickled"
        );
        new
    }

    struct Rec {
        sec: u32,
        frac: u32,
        data: Vec<u8>,
        orig_len: u32,
    }

    fn rec(sec: u32, frac: u32, data: Vec<u8>) -> Rec {
        let orig_len = data.len() as u32 + 10;
        Rec {
            sec,
            frac,
            data,
            orig_len,
        }
    }

    fn pcap(big: bool, nanos: bool, snaplen: u32, linktype: u32, recs: &[Rec]) -> Vec<u8> {
        let u32b = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        let mut out = Vec::new();
        out.extend(u32b(magic));
        out.extend(if big { [0, 2, 0, 4] } else { [2, 0, 4, 0] });
        out.extend([0; 8]);
        out.extend(u32b(snaplen));
        out.extend(u32b(linktype));
        for r in recs {
            out.extend(u32b(r.sec));
            out.extend(u32b(r.frac));
            out.extend(u32b(r.data.len() as u32));
            out.extend(u32b(r.orig_len));
            out.extend(&r.data);
        }
        out
    }

    fn some_recs() -> Vec<Rec> {
        (0..20u8)
            .map(|i| {
                rec(
                    1_700_000_000 + u32::from(i),
                    999_999 - u32::from(i),
                    vec![i; 60 + usize::from(i) * 7],
                )
            })
            .collect()
    }

    fn offset_of(recs: &[Rec], n: usize) -> u64 {
        24 + recs[..n]
            .iter()
            .map(|r| 16 + r.data.len() as u64)
            .sum::<u64>()
    }

    #[test]
    fn records_split_across_refills() {
        let recs = some_recs();
        let bytes = pcap(false, false, 65535, 1, &recs);
        let out = same_as_pcap_parser(&bytes, "trickled");
        assert_eq!(out.result, Ok(ControlFlow::Continue(())));
        assert_eq!(out.packets.len(), recs.len());
        for (got, r) in out.packets.iter().zip(&recs) {
            let ts = Ts::from_parts(i64::from(r.sec), i64::from(r.frac) * 1000);
            assert_eq!(got, &(ts, 1, r.data.clone(), r.orig_len));
        }
    }

    /// Each packet is shown the frame LOOK_AHEAD records later, or nothing: never another,
    /// across refills of the buffer and with input trickling in; and nearly every packet of
    /// a file read in large pieces is shown one.
    #[test]
    fn packets_are_shown_the_frame_ahead() {
        // 40,000 records (about 5 MiB).
        let (frames, bytes) = numbered_pcap(40_000);
        frames_ahead_are_right(&bytes, &frames);
    }

    /// Read from a reader (a pipe, standard input), each refill lands at a multiple of 64
    /// bytes in memory from its place in the input, once the header is read; the packets are
    /// those of the file.
    #[test]
    fn refills_land_at_64_bytes_from_their_place_in_the_input() {
        struct Watched<'a> {
            bytes: &'a [u8],
            at: usize,
            reads: usize,
            misplaced: Vec<(usize, usize)>,
        }
        impl Read for Watched<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.reads += 1;
                // The first read is the header's, into a buffer of its own.
                if self.reads > 1
                    && !(buf.as_ptr() as usize)
                        .wrapping_sub(self.at)
                        .is_multiple_of(64)
                {
                    self.misplaced.push((self.at, buf.as_ptr() as usize % 64));
                }
                // Pieces of odd sizes, as a pipe gives them.
                let n = buf.len().min(99_991).min(self.bytes.len() - self.at);
                buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
                self.at += n;
                Ok(n)
            }
        }
        let (frames, bytes) = numbered_pcap(40_000);
        let mut watched = Watched {
            bytes: &bytes,
            at: 0,
            reads: 0,
            misplaced: Vec::new(),
        };
        let got = run(plain(&mut watched), None, false);
        assert_eq!(got, new_reader(&bytes));
        assert_eq!(got.packets.len(), frames.len());
        assert!(watched.reads > 20, "{} reads", watched.reads);
        assert!(watched.misplaced.is_empty(), "{:?}", watched.misplaced);
    }

    /// `n` frames of 20-219 bytes, each starting with its number.
    fn numbered_frames(n: u32) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut data = i.to_le_bytes().to_vec();
                data.resize(20 + (i as usize * 37) % 200, (i % 251) as u8);
                data
            })
            .collect()
    }

    /// `numbered_frames(n)` and a classic pcap of them (Ethernet, microseconds).
    fn numbered_pcap(n: u32) -> (Vec<Vec<u8>>, Vec<u8>) {
        let frames = numbered_frames(n);
        let recs: Vec<Rec> = frames
            .iter()
            .enumerate()
            .map(|(i, data)| rec(i as u32, 0, data.clone()))
            .collect();
        let bytes = pcap(false, false, 65535, 1, &recs);
        (frames, bytes)
    }

    /// Reads `bytes` (whose packets are `frames`, numbered) whole and trickled: each packet
    /// is shown the frame LOOK_AHEAD later or none, and read whole, all but a few are shown.
    fn frames_ahead_are_right(bytes: &[u8], frames: &[Vec<u8>]) {
        let number = |frame: &[u8]| u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        for (input, what) in [
            (plain(bytes), "whole"),
            (trickle(bytes), "trickled"),
            (ahead(bytes, usize::MAX / 2), "read ahead whole"),
            (ahead(bytes, 300), "read ahead in pieces"),
        ] {
            let (mut shown, mut seen) = (0, 0u32);
            let mut on_packet = |p: &RawPacket<'_>| {
                assert_eq!(number(p.data), seen, "{what}");
                if !p.ahead.is_empty() {
                    let want = &frames[seen as usize + LOOK_AHEAD];
                    assert_eq!(p.ahead, &want[..], "{what}: packet {seen}");
                    shown += 1;
                }
                seen += 1;
                ControlFlow::Continue(())
            };
            let mut counters = ContainerCounters::default();
            let result = read_one("t", input, &mut counters, &mut on_packet);
            assert_eq!(result, Ok(ControlFlow::Continue(())), "{what}");
            assert_eq!(seen as usize, frames.len(), "{what}");
            if what.ends_with("whole") {
                // All but the last LOOK_AHEAD and a few at each refill's end.
                assert!(shown > frames.len() * 39 / 40, "{what}: {shown} shown");
            }
        }
    }

    /// One block of `pcapng_of`: (kind 0-6, a number, a flag).
    type NgBlock = (u8, u16, bool);

    /// A pcapng from random blocks: a section header (little-endian unless `big`), then
    /// interface descriptions (with and without a timestamp resolution), Enhanced Packet
    /// Blocks (with and without options, odd lengths, a wrong trailing length, an interface
    /// not described), Simple Packet Blocks, unknown blocks and new sections in either order.
    fn pcapng_of(big: bool, blocks: &[NgBlock]) -> Vec<u8> {
        fn block(out: &mut Vec<u8>, big: bool, kind: u32, body: &[u8], trailer_off: u32) {
            let u32b = |v: u32| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let len = 12 + body.len() as u32;
            out.extend(u32b(kind));
            out.extend(u32b(len));
            out.extend(body);
            out.extend(u32b(len + trailer_off));
        }
        fn shb(out: &mut Vec<u8>, big: bool) {
            let mut body = Vec::new();
            body.extend(if big {
                0x1a2b_3c4d_u32.to_be_bytes()
            } else {
                0x1a2b_3c4d_u32.to_le_bytes()
            });
            body.extend(if big { [0, 1, 0, 0] } else { [1, 0, 0, 0] });
            body.extend([0xff; 8]);
            block(out, big, 0x0a0d_0d0a, &body, 0);
        }
        let mut out = Vec::new();
        let mut big = big;
        shb(&mut out, big);
        for (n, &(kind, number, flag)) in blocks.iter().enumerate() {
            let u16b = |v: u16| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let u32b = |v: u32| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let mut body = Vec::new();
            match kind {
                0 => {
                    body.extend(u16b(1));
                    body.extend(u16b(0));
                    body.extend(u32b(65535));
                    if flag {
                        // if_tsresol: 10^-(number % 10) seconds.
                        body.extend(u16b(9));
                        body.extend(u16b(1));
                        body.extend([(number % 10) as u8, 0, 0, 0]);
                        body.extend([0; 4]);
                    }
                    block(&mut out, big, 1, &body, 0);
                }
                1..=3 => {
                    let caplen = u32::from(number % 90);
                    body.extend(u32b(u32::from(number % 3)));
                    body.extend(u32b(n as u32));
                    body.extend(u32b(1000 * n as u32));
                    body.extend(u32b(caplen));
                    body.extend(u32b(caplen + 7));
                    body.extend((0..caplen).map(|i| (i as u8) ^ kind));
                    body.resize(body.len().next_multiple_of(4), 0);
                    if flag && kind == 2 {
                        // epb_flags, then the end of options.
                        body.extend(u16b(2));
                        body.extend(u16b(4));
                        body.extend(u32b(1));
                        body.extend([0; 4]);
                    }
                    let trailer_off = u32::from(flag && kind == 3) * 4;
                    block(&mut out, big, 6, &body, trailer_off);
                }
                4 => {
                    let caplen = u32::from(number % 40);
                    body.extend(u32b(caplen));
                    body.extend((0..caplen).map(|i| i as u8));
                    body.resize(body.len().next_multiple_of(4), 0);
                    block(&mut out, big, 3, &body, 0);
                }
                5 => block(&mut out, big, 0xbad, &[1, 2, 3, 4], 0),
                _ => {
                    big = flag;
                    shb(&mut out, big);
                }
            }
        }
        out
    }

    /// Enhanced Packet Blocks read by hand give what pcap-parser gives, whole, trickled and
    /// cut anywhere: every packet, counter and error.
    #[test]
    fn hand_read_packet_blocks_are_what_pcap_parser_reads() {
        use proptest::prelude::*;
        let block = (0u8..7, any::<u16>(), any::<bool>());
        let strategy = (
            any::<bool>(),
            proptest::collection::vec(block, 0..40),
            any::<u16>(),
        );
        crate::seeded_runner(400)
            .run(&strategy, |(big, blocks, cut)| {
                let bytes = pcapng_of(big, &blocks);
                same_as_pcap_parser(&bytes, "whole");
                let cut = bytes.len() * usize::from(cut) / 65536;
                same_as_pcap_parser(&bytes[..cut.max(1)], "cut");
                Ok(())
            })
            .unwrap();
        // The generator makes blocks of every kind the hand reader takes and passes over.
        let plain = pcapng_of(false, &[(0, 0, false), (1, 3, false), (1, 6, false)]);
        let out = new_reader(&plain);
        assert_eq!(out.packets.len(), 2);
        assert_eq!(out.result, Ok(ControlFlow::Continue(())));
    }

    /// In pcapng too, each packet is shown the frame LOOK_AHEAD blocks later or nothing.
    #[test]
    fn pcapng_packets_are_shown_the_frame_ahead() {
        // A section, an interface, then 20,000 packets (about 3 MiB: the reader's buffer is
        // refilled).
        let mut bytes = pcapng_of(false, &[(0, 0, false)]);
        let frames = numbered_frames(20_000);
        for data in &frames {
            let padded = data.len().next_multiple_of(4);
            let len = (32 + padded) as u32;
            for v in [6, len, 0, 0, 0, data.len() as u32, data.len() as u32] {
                bytes.extend(v.to_le_bytes());
            }
            bytes.extend(data);
            bytes.resize(bytes.len() + padded - data.len(), 0);
            bytes.extend(len.to_le_bytes());
        }
        frames_ahead_are_right(&bytes, &frames);
    }

    #[test]
    fn record_larger_than_the_buffer() {
        let big = (0..CLASSIC_BUFFER_BYTES * 2 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>();
        let recs = vec![
            rec(1, 2, vec![1; 100]),
            rec(3, 4, big),
            rec(5, 6, vec![2; 100]),
        ];
        let bytes = pcap(false, false, 0, 1, &recs);
        let out = new_reader(&bytes);
        assert_eq!(out, run(plain(&bytes[..]), None, true));
        // Read ahead: the big record gathers over chunks, whole or in pieces.
        assert_eq!(out, run(ahead(&bytes, 1 << 20), None, false));
        assert_eq!(out, run(ahead(&bytes, 50_000), None, false));
        assert_eq!(out.result, Ok(ControlFlow::Continue(())));
        let data: Vec<&Vec<u8>> = out.packets.iter().map(|p| &p.2).collect();
        assert_eq!(data, recs.iter().map(|r| &r.data).collect::<Vec<_>>());
        // Cut inside the big record: the same offset as pcap-parser gives.
        let cut = &bytes[..bytes.len() - 200];
        let truncated = CaptureErrorKind::Truncated {
            offset: offset_of(&recs, 1),
            packets: 1,
        };
        fails_as_parser_does(cut, truncated);
    }

    #[test]
    fn byte_orders_and_precisions() {
        let recs = some_recs();
        for big in [false, true] {
            for nanos in [false, true] {
                let bytes = pcap(big, nanos, 65535, 113, &recs);
                let out = same_as_pcap_parser(&bytes, &format!("big {big} nanos {nanos}"));
                assert_eq!(out.result, Ok(ControlFlow::Continue(())));
                let want: Vec<Got> = recs
                    .iter()
                    .map(|r| {
                        let frac = i64::from(r.frac) * if nanos { 1 } else { 1000 };
                        let ts = Ts::from_parts(i64::from(r.sec), frac);
                        (ts, 113, r.data.clone(), r.orig_len)
                    })
                    .collect();
                assert_eq!(out.packets, want, "big {big} nanos {nanos}");
            }
        }
    }

    #[test]
    fn cut_inside_a_record_header_or_its_data() {
        let recs = some_recs();
        let bytes = pcap(false, false, 65535, 1, &recs);
        let at = offset_of(&recs, 7) as usize;
        // 0 bytes of record 7 is a clean end; 1..16 inside its header (below and above the 12
        // bytes that hold the length), then inside its data.
        for cut in [1, 5, 11, 12, 13, 15, 16, 17, 16 + recs[7].data.len() - 1] {
            let out = same_as_pcap_parser(&bytes[..at + cut], &format!("cut {cut}"));
            assert_eq!(out.packets.len(), 7);
            assert_eq!(
                out.result.map_err(|e| e.kind),
                Err(CaptureErrorKind::Truncated {
                    offset: at as u64,
                    packets: 7
                }),
                "cut {cut}"
            );
        }
        let out = same_as_pcap_parser(&bytes[..at], "cut at a record boundary");
        assert_eq!(out.packets.len(), 7);
        assert_eq!(out.result, Ok(ControlFlow::Continue(())));
        // Inside the file header.
        for cut in [1, 3, 4, 23] {
            let out = same_as_pcap_parser(&bytes[..cut], &format!("header cut {cut}"));
            assert!(out.result.is_err(), "header cut {cut}");
        }
    }

    #[test]
    fn zero_length_record() {
        let recs = vec![rec(1, 0, vec![]), rec(2, 0, vec![7; 40]), rec(3, 0, vec![])];
        let out = same_as_pcap_parser(&pcap(false, false, 65535, 1, &recs), "zero caplen");
        assert_eq!(out.result, Ok(ControlFlow::Continue(())));
        let data: Vec<&[u8]> = out.packets.iter().map(|p| &p.2[..]).collect();
        assert_eq!(data, [&[][..], &[7; 40][..], &[][..]]);
    }

    #[test]
    fn absurd_length_is_too_large_before_reading_on() {
        let recs = some_recs();
        let mut bytes = pcap(false, false, 65535, 1, &recs[..3]);
        let at = bytes.len() as u64;
        bytes.extend(1u32.to_le_bytes());
        bytes.extend(0u32.to_le_bytes());
        bytes.extend((MAX_RECORD_BYTES as u32 + 1).to_le_bytes());
        // Nothing after the length: still too large, not truncated.
        for cut in [bytes.len(), bytes.len() + 4] {
            let mut b = bytes.clone();
            b.resize(cut, 0);
            let out = same_as_pcap_parser(&b, "absurd length");
            assert_eq!(
                out.result.map_err(|e| e.kind),
                Err(CaptureErrorKind::RecordTooLarge {
                    offset: at,
                    packets: 3
                })
            );
        }
    }

    #[test]
    fn record_at_the_size_limit() {
        // A whole record of 16 + MAX_RECORD_BYTES bytes does not fit the largest buffer.
        let recs = vec![rec(1, 0, vec![1; 10]), rec(2, 0, vec![0; MAX_RECORD_BYTES])];
        let bytes = pcap(false, false, 0, 1, &recs);
        let too_large = CaptureErrorKind::RecordTooLarge {
            offset: offset_of(&recs, 1),
            packets: 1,
        };
        fails_as_parser_does(&bytes, too_large);
    }

    #[test]
    fn caplen_over_snaplen_is_counted() {
        let recs = vec![
            rec(1, 0, vec![0; 300_000]),
            rec(2, 0, vec![0; 200]),
            rec(3, 0, vec![0; 262_145]),
        ];
        // Over a snaplen of 100 only past 262144; never with snaplen 0.
        for (snaplen, over) in [(100, 2), (0, 0), (270_000, 1)] {
            let out = same_as_pcap_parser(&pcap(false, false, snaplen, 1, &recs), "snaplen");
            assert_eq!(out.counters.caplen_over_snaplen, over, "snaplen {snaplen}");
        }
    }

    #[test]
    fn link_types() {
        let recs = some_recs();
        // The whole 32-bit field, as pcap-parser read it: upper bits (FCS length) included.
        for linktype in [105u32, 0x0400_0001] {
            let out = same_as_pcap_parser(&pcap(true, false, 0, linktype, &recs), "link type");
            assert_eq!(
                out.result.map_err(|e| e.kind),
                Err(CaptureErrorKind::UnsupportedLinkType {
                    linktype: linktype as i32
                })
            );
            assert!(out.packets.is_empty());
        }
    }

    #[test]
    fn break_stops_at_once() {
        let recs = some_recs();
        let bytes = pcap(false, false, 0, 1, &recs);
        for legacy in [false, true] {
            let out = run(plain(&bytes[..]), Some(3), legacy);
            assert_eq!(out.packets.len(), 3);
            assert_eq!(out.result, Ok(ControlFlow::Break(())));
        }
    }

    /// Hands out one piece per read call and counts the calls.
    struct Pieces {
        pieces: Vec<Vec<u8>>,
        reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.pieces.is_empty() {
                return Ok(0);
            }
            let piece = self.pieces.remove(0);
            assert!(piece.len() <= buf.len());
            buf[..piece.len()].copy_from_slice(&piece);
            Ok(piece.len())
        }
    }

    #[test]
    fn records_go_out_after_the_read_that_completes_them() {
        // As from a pipe: the header, then each record in its own read (two records, then a
        // half, then its other half).
        let recs = some_recs();
        let bytes = pcap(false, false, 0, 1, &recs[..4]);
        let o = |n| offset_of(&recs, n) as usize;
        let half = o(2) + 10;
        let pieces = [0, 24, o(2), half, o(3), o(4)]
            .windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect();
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let input = Pieces {
            pieces,
            reads: reads.clone(),
        };
        let mut seen = Vec::new();
        let flow = read_from("t", input, &mut ContainerCounters::default(), &mut |_| {
            seen.push(reads.load(std::sync::atomic::Ordering::SeqCst));
            ControlFlow::Continue(())
        });
        assert_eq!(flow, Ok(ControlFlow::Continue(())));
        // Read 1 is the header; records 0 and 1 come with read 2, record 2 with read 4.
        assert_eq!(seen, [2, 2, 4, 5]);
    }

    /// Moves up to `most` bytes from the front of `from` into `buf`.
    fn give(from: &mut &[u8], buf: &mut [u8], most: usize) -> usize {
        let n = from.len().min(buf.len()).min(most);
        buf[..n].copy_from_slice(&from[..n]);
        *from = &from[n..];
        n
    }

    struct Failing<'a>(&'a [u8], std::io::ErrorKind);

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(self.1.into());
            }
            Ok(give(&mut self.0, buf, 100))
        }
    }

    #[test]
    fn read_error_after_some_records() {
        let recs = some_recs();
        let bytes = pcap(false, false, 0, 1, &recs);
        let cut = &bytes[..offset_of(&recs, 5) as usize + 20];
        let kind = std::io::ErrorKind::Other;
        let out = run(plain(Failing(cut, kind)), None, false);
        assert_eq!(out, run(plain(Failing(cut, kind)), None, true));
        assert_eq!(out.packets.len(), 5);
        assert_eq!(
            out.result.map_err(|e| e.kind),
            Err(CaptureErrorKind::Read("ReadError".into()))
        );
    }

    /// Fails with `Interrupted` on every other call (a signal during `read`).
    struct Interrupting<'a>(&'a [u8], bool);

    impl Read for Interrupting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            Ok(give(&mut self.0, buf, 50))
        }
    }

    #[test]
    fn interrupted_reads_are_retried() {
        // pcap-parser gave up ("ReadError") on an interrupted read past the header.
        let recs = some_recs();
        let bytes = pcap(false, false, 0, 1, &recs);
        let out = run(plain(Interrupting(&bytes, false)), None, false);
        assert_eq!(out, new_reader(&bytes));
    }

    fn committed_pcaps() -> Vec<PathBuf> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut paths = Vec::new();
        for dir in ["pcaps", "tests/hostile"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("capture directory") {
                let path = entry.expect("directory entry").path();
                if path.extension().is_some_and(|e| e == "pcap") {
                    paths.push(path);
                }
            }
        }
        paths.sort();
        assert!(paths.len() > 30, "{paths:?}");
        paths
    }

    /// `bytes` (a little-endian µs pcap) rewritten in another byte order or precision.
    fn converted(bytes: &[u8], big: bool, nanos: bool) -> Vec<u8> {
        let le = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let put = |out: &mut Vec<u8>, v: u32| {
            out.extend(if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        assert_eq!(bytes[0..4], [0xd4, 0xc3, 0xb2, 0xa1]);
        let mut out = Vec::new();
        put(&mut out, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
        for at in [4, 6] {
            let v = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
            out.extend(if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            });
        }
        for at in (8..24).step_by(4) {
            put(&mut out, le(at));
        }
        let mut at = 24;
        while at + 16 <= bytes.len() {
            let caplen = le(at + 8) as usize;
            let frac = le(at + 4);
            put(&mut out, le(at));
            put(&mut out, if nanos { frac.wrapping_mul(1000) } else { frac });
            put(&mut out, le(at + 8));
            put(&mut out, le(at + 12));
            let data = &bytes[at + 16..(at + 16 + caplen).min(bytes.len())];
            out.extend(data);
            at += 16 + caplen;
        }
        out
    }

    #[test]
    fn every_committed_pcap_reads_as_pcap_parser_read_it() {
        for path in committed_pcaps() {
            let bytes = std::fs::read(&path).expect("read capture");
            let name = path.display().to_string();
            let out = same_as_pcap_parser(&bytes, &name);
            assert!(!out.packets.is_empty(), "{name}");
            for (big, nanos) in [(true, false), (false, true), (true, true)] {
                let other = converted(&bytes, big, nanos);
                let what = format!("{name} big {big} nanos {nanos}");
                let out2 = same_as_pcap_parser(&other, &what);
                assert_eq!(out2.result, out.result, "{what}");
                assert_eq!(out2.packets.len(), out.packets.len(), "{what}");
            }
        }
    }

    /// Byte offsets of the records of a whole capture read as `out`.
    fn record_offsets(out: &Outcome) -> Vec<u64> {
        let mut at = 24;
        let mut offsets = vec![at];
        for p in &out.packets {
            at += 16 + p.2.len() as u64;
            offsets.push(at);
        }
        offsets
    }

    #[test]
    fn every_cut_of_the_committed_pcaps() {
        for path in committed_pcaps() {
            let bytes = std::fs::read(&path).expect("read capture");
            let name = path.display().to_string();
            let whole = new_reader(&bytes);
            let offsets = record_offsets(&whole);
            assert_eq!(offsets.last(), Some(&(bytes.len() as u64)), "{name}");
            // Every cut of the small files, a spread of cuts in the large one: the records
            // before the cut, then a clean end or a truncation at the cut record's offset.
            let step = (bytes.len() / 4000).max(1);
            for cut in (24..bytes.len()).step_by(step) {
                let out = new_reader(&bytes[..cut]);
                let n = offsets.partition_point(|&o| o <= cut as u64) - 1;
                assert_eq!(out.packets, whole.packets[..n], "{name} cut at {cut}");
                let want = if offsets[n] == cut as u64 {
                    Ok(ControlFlow::Continue(()))
                } else {
                    Err(CaptureErrorKind::Truncated {
                        offset: offsets[n],
                        packets: n as u64,
                    })
                };
                assert_eq!(out.result.map_err(|e| e.kind), want, "{name} cut at {cut}");
            }
        }
    }

    #[test]
    fn cuts_read_as_pcap_parser_read_them() {
        // pcap-parser is slow to start in a debug build (it fills its buffer byte by byte):
        // a few files, cuts around the first records and the last.
        for name in ["refused.pcap", "keepalive.pcap", "ipv6.pcap"] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("pcaps")
                .join(name);
            let bytes = std::fs::read(&path).expect("read capture");
            let offsets = record_offsets(&new_reader(&bytes));
            let mut cuts: Vec<usize> = (0..30).collect();
            for &o in offsets.iter().take(3).chain(offsets.iter().rev().take(2)) {
                for d in [1, 11, 12, 16, 17, 40] {
                    cuts.push(o as usize + d);
                }
            }
            for cut in cuts.into_iter().filter(|&c| c <= bytes.len()) {
                let b = &bytes[..cut];
                assert_eq!(
                    new_reader(b),
                    run(plain(b), None, true),
                    "{name} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn corrupt_lengths_read_as_pcap_parser_read_them() {
        let bytes =
            std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pcaps/refused.pcap"))
                .expect("read capture");
        let offsets = record_offsets(&new_reader(&bytes));
        for &at in &offsets[..offsets.len() - 1] {
            let at = at as usize;
            for value in [0, 1, 13, 1000, 4 << 20, MAX_RECORD_BYTES as u32, u32::MAX] {
                // The captured length, then the original length (which nothing checks).
                for field in [8, 12] {
                    let mut b = bytes.clone();
                    b[at + field..at + field + 4].copy_from_slice(&value.to_le_bytes());
                    let what = format!("record at {at}, field {field} = {value}");
                    assert_eq!(new_reader(&b), run(plain(&b[..]), None, true), "{what}");
                }
            }
        }
    }
}
