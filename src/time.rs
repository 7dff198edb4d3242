//! Packet time. Every timer in the engine runs on these timestamps, never on the wall clock.

use std::fmt;

/// Nanoseconds since the Unix epoch, as read from a capture record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub i64);

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

impl Ts {
    /// For records that carry no timestamp (pcapng Simple Packet Blocks): the engine keeps its clock.
    pub const UNKNOWN: Ts = Ts(i64::MIN);

    pub fn from_secs_f64(secs: f64) -> Ts {
        Ts((secs * NANOS_PER_SEC as f64).round() as i64)
    }
    pub fn from_parts(secs: i64, nanos: i64) -> Ts {
        Ts(secs.saturating_mul(NANOS_PER_SEC).saturating_add(nanos))
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }
    pub fn plus(self, d: Dur) -> Ts {
        Ts(self.0.saturating_add(d.0))
    }
    pub fn since(self, earlier: Ts) -> Dur {
        Dur(self.0.saturating_sub(earlier.0))
    }
}

/// An optional packet time in 8 bytes, where `Option<Ts>` takes 16: connection records
/// hold a dozen of them. `Ts::UNKNOWN`'s value stands for none (the engine never stores
/// that time: it keeps its clock instead).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OptTs(i64);

impl OptTs {
    pub const NONE: OptTs = OptTs(i64::MIN);

    pub fn get(self) -> Option<Ts> {
        (self != OptTs::NONE).then_some(Ts(self.0))
    }
    pub fn is_some(self) -> bool {
        self != OptTs::NONE
    }
    pub fn is_none(self) -> bool {
        self == OptTs::NONE
    }
    /// The time, set to `ts` first if there is none.
    pub fn get_or_set(&mut self, ts: Ts) -> Ts {
        if self.is_none() {
            *self = ts.into();
        }
        Ts(self.0)
    }
}

impl Default for OptTs {
    fn default() -> Self {
        OptTs::NONE
    }
}

impl From<Ts> for OptTs {
    fn from(ts: Ts) -> Self {
        OptTs(ts.0)
    }
}

impl From<Option<Ts>> for OptTs {
    fn from(ts: Option<Ts>) -> Self {
        ts.map_or(OptTs::NONE, OptTs::from)
    }
}

impl fmt::Debug for OptTs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// A span of packet time in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub i64);

impl Dur {
    pub fn from_secs_f64(secs: f64) -> Dur {
        Dur((secs * NANOS_PER_SEC as f64).round() as i64)
    }
    pub fn from_millis(ms: i64) -> Dur {
        Dur(ms * 1_000_000)
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }
}

impl fmt::Display for Ts {
    /// Epoch seconds with microsecond precision, as tcpdump -tt prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(NANOS_PER_SEC);
        let micros = self.0.rem_euclid(NANOS_PER_SEC) / 1000;
        write!(f, "{secs}.{micros:06}")
    }
}

impl fmt::Display for Dur {
    /// Seconds with millisecond precision below a minute, as a person reads a duration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_secs_f64();
        if s.abs() < 1.0 {
            write!(f, "{:.3}ms", s * 1000.0)
        } else {
            write!(f, "{s:.3}s")
        }
    }
}

/// Parses a time given on the command line: RFC 3339, epoch seconds, or `+SECS`
/// relative to `capture_start`.
/// Epoch seconds rounded to the microsecond captures record (no `.30000000001` noise).
pub fn epoch_secs(ts: Ts) -> f64 {
    round_half_away(ts.0 as f64 / 1e3) / 1e6
}

/// Seconds rounded to the microsecond, for durations in reports.
pub fn duration_secs(d: Dur) -> f64 {
    round_half_away(d.0 as f64 / 1e3) / 1e6
}

/// `v.round()`, bit for bit, without the library call baseline x86-64 makes of it (it
/// has no rounding instruction before SSE4.1): the rounding was a row's largest single cost.
#[inline]
pub fn round_half_away(v: f64) -> f64 {
    // From 2^52 on every float is whole; NaN is not in the range either.
    if v.is_nan() || v.abs() >= 4_503_599_627_370_496.0 {
        return v.round();
    }
    let whole = v as i64 as f64;
    // Exact: v and its whole part are within 1 of each other and share the float's grid.
    let frac = v - whole;
    let r = if frac >= 0.5 {
        whole + 1.0
    } else if frac <= -0.5 {
        whole - 1.0
    } else {
        whole
    };
    // A zero keeps v's sign, as round's does.
    r.copysign(v)
}

pub fn parse_time_arg(arg: &str, capture_start: Option<Ts>) -> Result<Ts, String> {
    let arg = arg.trim();
    if let Some(rel) = arg.strip_prefix('+') {
        let nanos = decimal_nanos(rel)
            .or_else(|| rel.parse::<f64>().ok().map(|s| Dur::from_secs_f64(s).0))
            .ok_or_else(|| format!("invalid relative time '{arg}': expected +SECONDS"))?;
        let start = capture_start.ok_or("the capture has no packets to be relative to")?;
        return Ok(start.plus(Dur(nanos)));
    }
    if let Some(nanos) = decimal_nanos(arg) {
        return Ok(Ts(nanos));
    }
    if let Ok(secs) = arg.parse::<f64>()
        && secs.is_finite()
    {
        return Ok(Ts::from_secs_f64(secs));
    }
    parse_rfc3339(arg).ok_or_else(|| {
        format!("invalid time '{arg}': expected RFC 3339 (2024-05-01T12:00:00Z), epoch seconds, or +SECONDS from the capture start")
    })
}

/// Seconds written as a plain decimal (`1795268282.646533`, `-2`, `30.5`), to the nanosecond
/// exactly: through an `f64`, an epoch time is only good to a few hundred nanoseconds, so a
/// time copied from a report could miss the packet it names. Digits past the ninth decimal
/// are dropped; `None` for anything else (exponents go through `f64`).
fn decimal_nanos(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos: i64 = 0;
    for b in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + i64::from(b - b'0');
    }
    let total = whole.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)?;
    Some(if negative { -total } else { total })
}

/// A small RFC 3339 parser (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`), enough for `--at`.
fn parse_rfc3339(s: &str) -> Option<Ts> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse().ok()?;
    }
    let offset_secs = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 => {
            let sign = match &tz[0..1] {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let h: i64 = tz.get(1..3)?.parse().ok()?;
            let m: i64 = tz.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86400 + hour * 3600 + min * 60 + sec - offset_secs;
    Some(Ts::from_parts(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
/// Epoch seconds as RFC 3339 UTC with milliseconds: `2026-11-21T14:00:10.000Z`.
pub fn rfc3339(epoch: f64) -> String {
    let millis = (epoch * 1000.0).round() as i64;
    let (days, ms_of_day) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_half_away_is_round() {
        use proptest::prelude::*;
        for v in [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            1e300,
            -1e300,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1_700_000_000_123_456.5,
            -0.3,
        ] {
            assert_eq!(round_half_away(v).to_bits(), v.round().to_bits(), "{v:e}");
        }
        assert!(round_half_away(f64::NAN).is_nan());
        let mut runner = crate::seeded_runner(100_000);
        runner
            .run(&(any::<f64>(), any::<i64>()), |(v, nanos)| {
                prop_assert_eq!(round_half_away(v).to_bits(), v.round().to_bits());
                let v = nanos as f64 / 1e3;
                prop_assert_eq!(round_half_away(v).to_bits(), v.round().to_bits());
                Ok(())
            })
            .unwrap();
    }

    use super::*;

    #[test]
    fn rfc3339_formats_what_it_parses() {
        for text in [
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T23:59:59.999Z",
            "2026-11-21T14:00:10.250Z",
            "2106-02-07T06:28:16.000Z",
        ] {
            let ts = parse_time_arg(text, None).expect("parses");
            assert_eq!(rfc3339(epoch_secs(ts)), text);
        }
    }

    #[test]
    fn rfc3339_and_epoch_agree() {
        let a = parse_time_arg("2024-05-01T12:00:00.5Z", None).unwrap();
        let b = parse_time_arg("1714564800.5", None).unwrap();
        assert_eq!(a, b);
        let c = parse_time_arg("2024-05-01T14:00:00.5+02:00", None).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn relative_to_capture_start() {
        // Epoch seconds to the nanosecond (an f64 would be ~250 ns off here).
        assert_eq!(
            parse_time_arg("1767235600.001", None).unwrap(),
            Ts(1_767_235_600_001_000_000)
        );
        assert_eq!(
            parse_time_arg("1795268282.646533", None).unwrap(),
            Ts(1_795_268_282_646_533_000)
        );
        assert_eq!(parse_time_arg("-1.5", None).unwrap(), Ts(-1_500_000_000));
        assert_eq!(parse_time_arg(".5", None).unwrap(), Ts(500_000_000));
        assert_eq!(
            parse_time_arg("1.0000000019", None).unwrap(),
            Ts(1_000_000_001)
        );
        assert_eq!(
            parse_time_arg("1.7e9", None).unwrap(),
            Ts(1_700_000_000_000_000_000)
        );
        assert!(parse_time_arg(".", None).is_err());
        assert!(parse_time_arg("1.2.3", None).is_err());
        let t = parse_time_arg("+1.25", Some(Ts(10 * NANOS_PER_SEC))).unwrap();
        assert_eq!(t, Ts(11_250_000_000));
        assert!(parse_time_arg("+x", Some(Ts(0))).is_err());
        assert!(parse_time_arg("+1", None).is_err());
    }

    #[test]
    fn display_is_epoch_micros() {
        assert_eq!(Ts(1_500_000_001_000).to_string(), "1500.000001");
    }
}
