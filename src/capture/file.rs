//! Reading pcap and pcapng files with `pcap-parser`: records are borrowed from one
//! growing buffer, so a file is read with large sequential reads and no copy per packet.

use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{PcapBlockOwned, PcapError};

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
        let input: Box<dyn Read + Send> = if path == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(path).map_err(|e| err(CaptureErrorKind::Open(e.to_string())))?)
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

/// Reads one capture (pcap or pcapng) from any reader, e.g. a byte slice; `source` names it
/// in errors. What [`read_files`] does for each file, for callers that hold the bytes (the
/// fuzz targets, tests). `Break` means `on_packet` asked to stop.
pub fn read_from<'r>(
    source: &str,
    input: impl Read + Send + 'r,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<ControlFlow<()>, CaptureError> {
    read_one(source, Box::new(input), counters, on_packet)
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
    mut input: Box<dyn Read + Send + 'r>,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
) -> Result<ControlFlow<()>, CaptureError> {
    let head = read_head(source, &mut input)?;
    read_parsed(source, head, input, counters, on_packet)
}

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

/// Reads a capture with `pcap-parser`, from its first block `head` on.
fn read_parsed<'r>(
    source: &str,
    head: Vec<u8>,
    input: Box<dyn Read + Send + 'r>,
    counters: &mut ContainerCounters,
    on_packet: &mut PacketFn<'_>,
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
                                let raw = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                let units = iface.units_per_sec.max(1);
                                let secs = (raw / units) as i64 + iface.offset_secs;
                                let nanos = (u128::from(raw % units) * 1_000_000_000
                                    / u128::from(units))
                                    as i64;
                                packets += 1;
                                flow = on_packet(&RawPacket {
                                    ts: Ts::from_parts(secs, nanos),
                                    linktype: iface.linktype,
                                    data: epb.packet_data(),
                                    orig_len: epb.origlen,
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
                            });
                        }
                        None => counters.unknown_interface += 1,
                    },
                    PcapBlockOwned::NG(_) => counters.skipped_blocks += 1,
                }
                reader.consume(len);
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

/// The leading length of the next pcapng block in `data`, once a section's byte order is
/// known and the 8-byte block start is buffered. Not for a Section Header Block, whose byte
/// order is its own (pcap-parser checks its length).
fn ng_block_len(data: &[u8], big_endian: Option<bool>) -> Option<usize> {
    let (Some(big), Some(head)) = (big_endian, data.get(0..8)) else {
        return None;
    };
    if head[0..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        return None;
    }
    let len = [head[4], head[5], head[6], head[7]];
    let len = if big {
        u32::from_be_bytes(len)
    } else {
        u32::from_le_bytes(len)
    };
    Some(len as usize)
}

/// Is the whole of the next pcapng block (by its leading length) already in `data`? Then a
/// parser asking for more means a length inside the block is wrong.
fn ng_block_buffered(data: &[u8], big_endian: Option<bool>) -> bool {
    ng_block_len(data, big_endian).is_some_and(|len| len >= 12 && data.len() >= len)
}
