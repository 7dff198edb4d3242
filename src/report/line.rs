//! Table lines written in place: cells padded by moving over spaces already there, and
//! numbers and addresses written where they go, without `fmt` (a long capture has millions
//! of rows).

use crate::decode::SockAddr;

/// A line written in place over a run of spaces: a cell is padded to its column by moving
/// past the spaces already there, and numbers are written digit by digit where they go (the
/// `memset`s of padding and the copies out of `itoa`'s buffer cost more than the digits).
pub struct SpacedLine<'a> {
    buf: &'a mut Vec<u8>,
    /// Where the next byte goes.
    pub at: usize,
}

impl<'a> SpacedLine<'a> {
    /// Writing starts at the end of `buf`, with room for about `room` bytes made up front.
    pub fn new(buf: &'a mut Vec<u8>, room: usize) -> SpacedLine<'a> {
        let at = buf.len();
        buf.resize(at + room, b' ');
        SpacedLine { buf, at }
    }

    /// The next `n` bytes, to overwrite.
    pub fn take(&mut self, n: usize) -> &mut [u8] {
        let end = self.at + n;
        if end > self.buf.len() {
            self.buf.resize(end + 64, b' ');
        }
        let cells = &mut self.buf[self.at..end];
        self.at = end;
        cells
    }

    pub fn put(&mut self, text: &[u8]) {
        self.take(text.len()).copy_from_slice(text);
    }

    pub fn byte(&mut self, b: u8) {
        self.take(1)[0] = b;
    }

    /// Moves to `at` over spaces, if not past it already.
    pub fn pad_to(&mut self, at: usize) {
        if at > self.at {
            self.take(at - self.at);
        }
    }

    #[inline]
    pub fn uint(&mut self, v: u64) {
        // Counters are mostly single digits.
        if v < 10 {
            self.byte(b'0' + v as u8);
            return;
        }
        let len = v.ilog10() as usize + 1;
        write_digits(self.take(len), v);
    }

    /// Ends the line: what follows the last byte written is dropped.
    pub fn finish(self) {
        self.buf.truncate(self.at);
    }
}

/// The last `digits.len()` decimal digits of `v` into `digits`, zeros in front; two at a
/// time.
pub fn write_digits(digits: &mut [u8], mut v: u64) {
    let mut end = digits.len();
    while end >= 2 {
        let pair = (v % 100) as usize * 2;
        digits[end - 2..end].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        v /= 100;
        end -= 2;
    }
    if end == 1 {
        digits[0] = b'0' + (v % 10) as u8;
    }
}

/// Appends `text[..len]` by copying the whole of `text` and dropping the rest: a copy of a
/// fixed size is a few moves, one of a varying length a call to `memcpy` (such calls were a
/// fifth of the JSON rows' time).
#[inline(always)]
pub fn push_first<const N: usize>(buf: &mut Vec<u8>, text: &[u8; N], len: usize) {
    let at = buf.len();
    buf.extend_from_slice(text);
    buf.truncate(at + len);
}

/// "00" to "99".
static DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut n = 0;
    while n < 100 {
        pairs[2 * n] = b'0' + (n / 10) as u8;
        pairs[2 * n + 1] = b'0' + (n % 10) as u8;
        n += 1;
    }
    pairs
};

/// Writes `v` with `places` decimals exactly as `format!("{v:.places$}")` does (the exact
/// binary value rounded half to even), by integer arithmetic for the values a table holds
/// (finite, not negative, below 2^53); others go through `format!`. The float formatting of
/// std cost more than the rest of a streamed row.
pub fn push_fixed(line: &mut SpacedLine<'_>, v: f64, places: u32) {
    let bits = v.to_bits();
    let (exp_bits, frac) = (((bits >> 52) & 0x7ff) as i32, bits & ((1 << 52) - 1));
    // v = mant * 2^exp exactly, mant < 2^53.
    let (mant, exp) = if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), exp_bits - 1075)
    };
    // Up to 6 places, mant * 10^places < 2^73: products and shifts in u128, the divisions
    // in u64 (a u128 division costs more than the rest of the number).
    if places > 6 || v.is_sign_negative() || !v.is_finite() || v >= 9_007_199_254_740_992.0 {
        line.put(format!("{v:.p$}", p = places as usize).as_bytes());
        return;
    }
    let scale = 10u64.pow(places);
    let scaled = u128::from(mant) * u128::from(scale);
    // v < 2^53 with mant >= 2^52 leaves exp <= 0: v * scale is scaled >> -exp, rounded
    // half to even.
    let shift = exp.unsigned_abs();
    let units = if shift == 0 {
        scaled
    } else if shift >= 128 {
        // scaled < 2^73 <= half of 2^shift: rounds to 0.
        0
    } else {
        let q = scaled >> shift;
        let rem = scaled - (q << shift);
        let half = 1u128 << (shift - 1);
        if rem > half || (rem == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    let Ok(units) = u64::try_from(units) else {
        line.put(format!("{v:.p$}", p = places as usize).as_bytes());
        return;
    };
    line.uint(units / scale);
    if places > 0 {
        line.byte(b'.');
        write_digits(line.take(places as usize), units % scale);
    }
}

/// `push_fixed(v(), places)` (`places` 1 or 3) for the seconds `v` a report makes from a
/// time `ns` nanoseconds long (rounded to the microsecond, or a difference of epoch
/// seconds, each off the exact value by less than 2 µs): by integer arithmetic, unless
/// `ns` lies within 5 µs of a tie of the last place shown, where the float's own rounding
/// decides. The float formatting was the largest cost of a row's numbers.
pub fn push_nanos(line: &mut SpacedLine<'_>, ns: i64, places: u32, v: impl FnOnce() -> f64) {
    let unit: i64 = match places {
        1 => 100_000_000,
        3 => 1_000_000,
        _ => return push_fixed(line, v(), places),
    };
    // Past 2^50 ns (13 days) the floats' own error grows toward the margin.
    if !(0..1 << 50).contains(&ns) || (ns % unit - unit / 2).abs() < 5_000 {
        return push_fixed(line, v(), places);
    }
    let units = (ns / unit + i64::from(ns % unit > unit / 2)) as u64;
    let scale = 10u64.pow(places);
    line.uint(units / scale);
    line.byte(b'.');
    write_digits(line.take(places as usize), units % scale);
}

/// An address as `SockAddr`'s Display writes it, IPv4 without going through `fmt`.
pub fn push_addr(line: &mut SpacedLine<'_>, a: SockAddr) {
    match a.ip {
        std::net::IpAddr::V4(ip) => {
            let (text, len) = super::ipv4_sock_text(ip, a.port);
            line.put(&text[..len]);
        }
        _ => line.put(a.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer formatting equals std's `{:.6}`, `{:.3}` and `{:.1}`, ties and all.
    #[test]
    fn fixed_decimals_match_std() {
        use proptest::prelude::*;
        let check = |v: f64, places: u32| {
            let mut text = Vec::new();
            let mut line = SpacedLine::new(&mut text, 0);
            push_fixed(&mut line, v, places);
            line.finish();
            let want = format!("{v:.p$}", p = places as usize);
            assert_eq!(String::from_utf8(text).unwrap(), want, "{v:e} {places}");
        };
        for v in [
            0.0,
            -0.0,
            0.0005,
            0.0015,
            0.0025,
            1.0005,
            2.5,
            0.05,
            0.15,
            0.25,
            0.35,
            999.9995,
            1e-300,
            5e-324,
            1e15,
            9e15,
            1e300,
            // Ties at the sixth place, and past u64 with six places.
            0.0078125,
            1.0234375,
            1.5e13,
            2e13,
            -1.5,
            f64::NAN,
            f64::INFINITY,
            0.012,
            60.0,
        ] {
            check(v, 3);
            check(v, 1);
            check(v, 6);
        }
        let mut runner = crate::seeded_runner(50_000);
        runner
            .run(
                &(any::<f64>(), 0u64..100_000_000, 0u64..1_000_000_000_000),
                |(random, millis_x2, micros)| {
                    check(random.abs(), 3);
                    check(random.abs(), 1);
                    // Exact ties of the last place, and times as reports make them.
                    check(millis_x2 as f64 / 2000.0, 3);
                    check(micros as f64 / 1e6, 3);
                    check(micros as f64 / 1e6, 1);
                    check(micros as f64 / 1e3, 3);
                    check(random.abs(), 6);
                    check(micros as f64 / 1e6, 6);
                    check((2 * micros + 1) as f64 / 128.0, 6);
                    check(micros as f64 / 1e6 + 1.7e9 - 1.7e9, 6);
                    // Relative event times: a difference of two epoch times.
                    check((1.7e9 + micros as f64 / 1e6) - 1.7e9, 6);
                    Ok(())
                },
            )
            .unwrap();
    }
}
