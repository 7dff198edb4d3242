//! Zeek's ASCII log format for `conn.log`: tab-separated, `#`-header lines, `-` for unset
//! fields, times and intervals with six decimals. `zeek-cut` reads it.

use std::io::{self, Write};
use std::net::IpAddr;

use super::ZeekConn;

const FIELDS: &[&str] = &[
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
];

const TYPES: &[&str] = &[
    "time",
    "string",
    "addr",
    "port",
    "addr",
    "port",
    "enum",
    "string",
    "interval",
    "count",
    "count",
    "string",
    "bool",
    "bool",
    "count",
    "string",
    "count",
    "count",
    "count",
    "count",
    "set[string]",
];

/// `secs.micros` with six decimals, as Zeek prints `time` and `interval` values.
pub(crate) fn format_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    if secs < 0 && frac != 0 {
        // -0.5 s is div_euclid -1 and 500000; print it the usual way.
        let abs = -(us as i128);
        return format!("-{}.{:06}", abs / 1_000_000, abs % 1_000_000);
    }
    format!("{secs}.{frac:06}")
}

/// A wall-clock time as Zeek writes it in `#open` / `#close`: `YYYY-MM-DD-HH-MM-SS` (UTC).
pub fn format_zeek_time(epoch_secs: f64) -> String {
    let secs = if epoch_secs.is_finite() {
        epoch_secs.floor() as i64
    } else {
        0
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}-{:02}-{:02}-{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn addr(ip: IpAddr) -> String {
    // Rust prints IPv6 compressed and lower-case, like Zeek.
    ip.to_string()
}

/// Writes the `conn.log` header; `open_time` (epoch seconds) goes into `#open`.
pub fn write_header(out: &mut dyn Write, open_time: f64) -> io::Result<()> {
    writeln!(out, "#separator \\x09")?;
    writeln!(out, "#set_separator\t,")?;
    writeln!(out, "#empty_field\t(empty)")?;
    writeln!(out, "#unset_field\t-")?;
    writeln!(out, "#path\tconn")?;
    writeln!(out, "#open\t{}", format_zeek_time(open_time))?;
    writeln!(out, "#fields\t{}", FIELDS.join("\t"))?;
    writeln!(out, "#types\t{}", TYPES.join("\t"))
}

/// Writes one `conn.log` row.
pub fn write_row(out: &mut dyn Write, c: &ZeekConn) -> io::Result<()> {
    let logged_span = c.duration_us > 0;
    let opt = |v: u64| {
        if logged_span {
            v.to_string()
        } else {
            "-".to_string()
        }
    };
    let history = if c.history.is_empty() {
        "-"
    } else {
        &c.history
    };
    writeln!(
        out,
        "{}\t{}\t{}\t{}\t{}\t{}\ttcp\t-\t{}\t{}\t{}\t{}\t-\t-\t{}\t{}\t{}\t{}\t{}\t{}\t-",
        format_micros(c.ts_us),
        c.uid,
        addr(c.orig.ip),
        c.orig.port,
        addr(c.resp.ip),
        c.resp.port,
        if logged_span {
            format_micros(c.duration_us)
        } else {
            "-".to_string()
        },
        opt(c.orig_bytes),
        opt(c.resp_bytes),
        c.conn_state,
        c.missed_bytes,
        history,
        c.orig_pkts,
        c.orig_ip_bytes,
        c.resp_pkts,
        c.resp_ip_bytes,
    )
}

/// Writes `#close` with `close_time` (epoch seconds).
pub fn write_close(out: &mut dyn Write, close_time: f64) -> io::Result<()> {
    writeln!(out, "#close\t{}", format_zeek_time(close_time))
}

/// Writes `conn.log` rows one at a time, so a long capture can stream its output.
pub struct ConnLogWriter<'w> {
    out: &'w mut dyn Write,
}

impl<'w> ConnLogWriter<'w> {
    /// Writes the header; `open_time` (epoch seconds) goes into `#open`.
    pub fn new(out: &'w mut dyn Write, open_time: f64) -> io::Result<Self> {
        write_header(out, open_time)?;
        Ok(ConnLogWriter { out })
    }

    pub fn write_row(&mut self, c: &ZeekConn) -> io::Result<()> {
        write_row(self.out, c)
    }

    /// Writes `#close` with `close_time` (epoch seconds).
    pub fn close(self, close_time: f64) -> io::Result<()> {
        write_close(self.out, close_time)
    }
}

/// Writes a whole `conn.log`: header, `rows`, `#close` (stamped with `open_time` too).
pub fn write_conn_log(out: &mut dyn Write, rows: &[ZeekConn], open_time: f64) -> io::Result<()> {
    let mut w = ConnLogWriter::new(out, open_time)?;
    for r in rows {
        w.write_row(r)?;
    }
    w.close(open_time)
}

/// A Zeek-looking uid (`C` + base62) for the `n`-th connection of a run: deterministic,
/// distinct for distinct `n`.
pub(crate) fn uid(n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // splitmix64 is a bijection on u64, so distinct counters give distinct ids.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut s = String::from("C");
    let mut digits = Vec::with_capacity(11);
    let mut v = z;
    for _ in 0..11 {
        digits.push(DIGITS[(v % 62) as usize]);
        v /= 62;
    }
    s.extend(digits.iter().rev().map(|&d| d as char));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::SockAddr;
    use crate::zeek::ConnState;

    fn row(duration_us: i64, history: &str) -> ZeekConn {
        ZeekConn {
            uid: uid(0),
            ts_us: 1_300_475_168_652_003,
            orig: SockAddr {
                ip: "141.142.220.118".parse().unwrap(),
                port: 35634,
            },
            resp: SockAddr {
                ip: "2001:db8::1".parse().unwrap(),
                port: 80,
            },
            duration_us,
            orig_bytes: 463,
            resp_bytes: 350,
            conn_state: ConnState::OTH,
            missed_bytes: 0,
            history: history.to_string(),
            orig_pkts: 2,
            orig_ip_bytes: 567,
            resp_pkts: 1,
            resp_ip_bytes: 402,
            tunneled: false,
        }
    }

    #[test]
    fn times() {
        assert_eq!(format_micros(1_300_475_168_652_003), "1300475168.652003");
        assert_eq!(format_micros(61_329), "0.061329");
        assert_eq!(format_micros(-500_000), "-0.500000");
        assert_eq!(format_zeek_time(0.0), "1970-01-01-00-00-00");
        assert_eq!(format_zeek_time(1_300_475_168.5), "2011-03-18-19-06-08");
    }

    #[test]
    fn uids_distinct() {
        let a: std::collections::HashSet<String> = (0..1000).map(uid).collect();
        assert_eq!(a.len(), 1000);
        assert!(a.iter().all(|u| u.starts_with('C') && u.len() == 12));
    }

    #[test]
    fn log_layout() {
        let mut out = Vec::new();
        write_conn_log(&mut out, &[row(61_329, "DdA"), row(0, "")], 0.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#separator \\x09");
        let fields: Vec<&str> = lines[6].split('\t').collect();
        let types: Vec<&str> = lines[7].split('\t').collect();
        assert_eq!(fields.len(), types.len());
        let r1: Vec<&str> = lines[8].split('\t').collect();
        assert_eq!(r1.len(), fields.len() - 1);
        assert_eq!(r1[0], "1300475168.652003");
        assert_eq!(r1[4], "2001:db8::1");
        assert_eq!(r1[8], "0.061329");
        assert_eq!(r1[9], "463");
        assert_eq!(r1[15], "DdA");
        let r2: Vec<&str> = lines[9].split('\t').collect();
        assert_eq!((r2[8], r2[9], r2[10], r2[15]), ("-", "-", "-", "-"));
        assert_eq!(r2[16], "2");
        assert!(lines[10].starts_with("#close\t"));
    }
}
