//! The libpcap floor of issue 5: the same walk as `plain_read` (every record, locate the TCP
//! header, sum a few fields), but with records from libpcap's `pcap_next_ex` through the
//! `pcap` crate (`Capture::from_file` + `next_packet`).
//!
//!     cargo run --release --example pcap_read -- FILE.pcap
//!
//! Prints `records tcp checksum`.

use std::process::ExitCode;

mod locate_tcp;
use locate_tcp::tcp_header;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: pcap_read FILE");
        return ExitCode::from(2);
    };
    let mut cap = match pcap::Capture::from_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pcap_read: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let linktype = cap.get_datalink().0 as u32;
    let (mut records, mut tcp, mut sum) = (0u64, 0u64, 0u64);
    loop {
        match cap.next_packet() {
            Ok(p) => {
                records += 1;
                if let Some(h) = tcp_header(linktype, p.data) {
                    tcp += 1;
                    let ports = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                    let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                    sum = sum.wrapping_add(u64::from(ports ^ seq) + u64::from(h[13]));
                }
            }
            Err(pcap::Error::NoMorePackets) => break,
            Err(e) => {
                eprintln!("pcap_read: {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{records} {tcp} {sum}");
    ExitCode::SUCCESS
}
