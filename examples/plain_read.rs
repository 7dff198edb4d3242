//! The plain-read floor of issue 5: read a classic pcap with large sequential reads, walk
//! every record header and locate the TCP header (Ethernet with VLAN tags, Linux cooked v1/v2,
//! raw IP, BSD loopback → IPv4/IPv6 → TCP), no libpcap, no per-packet allocation. It sums
//! the ports, sequence numbers and flags so the work cannot be optimised away.
//!
//!     cargo run --release --example plain_read -- FILE.pcap
//!
//! Prints `records tcp checksum`. Nothing else (pcapng, corrupt files) is handled beyond a
//! one-line error: this is a yardstick, not a reader.

use std::fs::File;
use std::io::Read;
use std::process::ExitCode;

mod locate_tcp;
use locate_tcp::tcp_header;

const CHUNK: usize = 4 << 20;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: plain_read FILE.pcap");
        return ExitCode::from(2);
    };
    match run(&path) {
        Ok((records, tcp, sum)) => {
            println!("{records} {tcp} {sum}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plain_read: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &str) -> Result<(u64, u64, u64), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut have = fill(&mut file, &mut buf, 0)?;
    if have < 24 {
        return Err("shorter than a pcap header".into());
    }
    let big = match buf[0..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        _ => return Err("not a classic pcap".into()),
    };
    let u32_at = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let linktype = u32_at(&buf, 20) & 0xffff;
    let (mut records, mut tcp, mut sum) = (0u64, 0u64, 0u64);
    let mut at = 24;
    loop {
        if have - at < 16 || have - at < 16 + u32_at(&buf, at + 8) as usize {
            // Move the partial record to the front (growing the buffer for a record larger
            // than it) and read on.
            buf.copy_within(at..have, 0);
            have -= at;
            at = 0;
            if have >= 16 {
                let need = 16 + u32_at(&buf, 8) as usize;
                if need > buf.len() {
                    buf.resize(need.next_power_of_two(), 0);
                }
            }
            let before = have;
            have = fill(&mut file, &mut buf, have)?;
            if have == before {
                return if have == 0 {
                    Ok((records, tcp, sum))
                } else {
                    Err("ends inside a record".into())
                };
            }
            continue;
        }
        let caplen = u32_at(&buf, at + 8) as usize;
        let frame = &buf[at + 16..at + 16 + caplen];
        records += 1;
        if let Some(h) = tcp_header(linktype, frame) {
            tcp += 1;
            let ports = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            sum = sum.wrapping_add(u64::from(ports ^ seq) + u64::from(h[13]));
        }
        at += 16 + caplen;
    }
}

/// Reads until `buf` is full or the file ends; returns how many bytes `buf` holds.
fn fill(file: &mut File, buf: &mut [u8], mut have: usize) -> Result<usize, String> {
    while have < buf.len() {
        match file.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(have)
}
