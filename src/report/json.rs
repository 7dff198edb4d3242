//! A hand-written JSON line writer for `conns` rows.
//!
//! serde_json through `&mut dyn Write` spent about half of a large `conns --format json` run
//! on per-key escaping and ~27 small writes per row. Here keys are constant bytes, each row
//! goes into a reused buffer, and the buffer is written in large chunks. The text is
//! byte-identical to `serde_json::to_string(&row)` (tests below and in `tests/json_writer.rs`
//! hold it to that): same field order, same number formatters (itoa, zmij), same escapes.

use std::io::{self, Write};
use std::net::IpAddr;

use crate::analysis::{first_closer, half_close, handshake_span, record_end, time_wait_span};
use crate::decode::SockAddr;
use crate::flow::Connection;
use crate::flow::conn::{Side, Transition};
use crate::report::events::ConnFacts;
use crate::report::line::{push_first, write_digits};
use crate::report::packet::flag_letters_in;
use crate::time::{Dur, Ts, duration_secs, epoch_secs};

/// Chunk size handed to the writer: at least the 64 KB of the output's `BufWriter`, so a
/// chunk goes straight through instead of being copied again.
const CHUNK: usize = 64 * 1024;

/// The same lines straight from the records: no `ConnSummary` rows kept, and no address
/// `String`s made (the addresses are formatted into the buffer).
pub fn write_records_json_lines(
    out: &mut dyn Write,
    conns: &[Connection],
    end_of_capture: Ts,
) -> io::Result<()> {
    let mut w = RowWriter::with_capacity(conns.len().saturating_mul(800).min(CHUNK + 4096));
    w.record_rows(out, conns, end_of_capture, CHUNK)?;
    w.flush(out)
}

/// One JSON line per transition of `transitions` whose record is in `conns` (in id order):
/// the lines of `write_json_lines` over `event_rows`, without making the rows.
pub fn write_transitions_json_lines(
    out: &mut dyn Write,
    transitions: &[Transition],
    conns: &[Connection],
) -> io::Result<()> {
    let mut w = RowWriter::with_capacity(CHUNK + 4096);
    for t in transitions {
        if let Some(conn) = super::events::record_of(conns, t.conn_id) {
            w.event_row(t, &ConnFacts::of(conn));
            w.flush_if_full(out)?;
        }
    }
    w.flush(out)
}

/// 2^51 µs in nanoseconds (the year 2041): below it `epoch_secs`' float arithmetic is
/// close enough for `RowWriter::epoch` to tell its rounding from the integers.
const EPOCH_NANOS_EXACT: i64 = (1 << 51) * 1000;

/// Builds JSON lines in a reused buffer.
pub struct RowWriter {
    buf: Vec<u8>,
    float: zmij::Buffer,
}

impl Default for RowWriter {
    fn default() -> Self {
        RowWriter::with_capacity(0)
    }
}

impl RowWriter {
    pub fn with_capacity(n: usize) -> RowWriter {
        RowWriter {
            buf: Vec::with_capacity(n),
            float: zmij::Buffer::new(),
        }
    }

    /// The lines built so far, not yet written.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Writes out the lines once a chunk's worth has built up.
    pub fn flush_if_full(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if self.buf.len() >= CHUNK {
            self.flush(out)?;
        }
        Ok(())
    }

    /// The lines of `conns` (`record_row`), written out whenever `limit` bytes have built
    /// up; the rest stays for the next call or `flush`.
    pub fn record_rows(
        &mut self,
        out: &mut dyn Write,
        conns: &[Connection],
        end_of_capture: Ts,
        limit: usize,
    ) -> io::Result<()> {
        for c in conns {
            self.record_row(c, end_of_capture);
            if self.buf.len() >= limit {
                self.flush(out)?;
            }
        }
        Ok(())
    }

    pub fn flush(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if !self.buf.is_empty() {
            out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Appends the line serde_json writes for `summarize(c, end_of_capture)` (keys in the
    /// struct's declaration order), from the record: no summary struct, times written from
    /// their integer nanoseconds.
    pub fn record_row(&mut self, c: &Connection, end_of_capture: Ts) {
        let (client, server) = (c.end(Side::Client), c.end(Side::Server));
        let end = record_end(c);
        let (syn, synack) = (c.syn_first(Side::Client).get(), c.synack_first.get());
        let done = c.handshake_done.get();
        let reset = c.reset();
        self.raw(b"{\"id\":");
        self.uint(c.id);
        self.raw(b",\"client\":");
        self.addr(client.addr);
        self.raw(b",\"server\":");
        self.addr(server.addr);
        self.raw(b",\"direction_guessed\":");
        self.bool(c.direction_guessed);
        self.raw(b",\"partial\":");
        self.bool(c.partial);
        self.raw(b",\"evicted\":");
        self.bool(c.evicted_at().is_some());
        self.raw(b",\"expired\":");
        self.bool(c.expired_at().is_some());
        self.raw(b",\"start\":");
        self.epoch(c.start);
        self.raw(b",\"end\":");
        self.epoch(end);
        self.raw(b",\"duration\":");
        self.span(c.start, end);
        self.raw(b",\"client_state\":");
        self.name(client.state.name());
        self.raw(b",\"server_state\":");
        self.name(server.state.name());
        self.raw(b",\"client_state_inferred\":");
        self.bool(client.inferred);
        self.raw(b",\"server_state_inferred\":");
        self.bool(server.inferred);
        self.raw(b",\"handshake\":");
        self.name(c.handshake().name());
        self.raw(b",\"syn_to_synack\":");
        self.opt_span(syn.zip(synack));
        self.raw(b",\"synack_to_ack\":");
        self.opt_span(synack.zip(done));
        self.raw(b",\"handshake_time\":");
        self.opt_span(handshake_span(c));
        self.raw(b",\"syn_retransmits\":");
        self.uint(c.syn_retransmits(Side::Client));
        self.raw(b",\"synack_retransmits\":");
        self.uint(c.synack_retransmits(Side::Server));
        self.raw(b",\"first_closer\":");
        self.opt_name(first_closer(c));
        self.raw(b",\"first_fin_time\":");
        match c.fin_times().first() {
            Some(t) => self.epoch(*t),
            None => self.raw(b"null"),
        }
        let half = half_close(c, end_of_capture);
        self.raw(b",\"half_close_duration\":");
        self.opt_span(half.map(|(a, b, _)| (a, b)));
        self.raw(b",\"half_close_open_at_end\":");
        self.bool(half.is_some_and(|h| h.2));
        self.raw(b",\"reset_by\":");
        self.opt_name(reset.map(|r| r.by.name()));
        self.raw(b",\"reset_time\":");
        match reset {
            Some(r) => self.epoch(r.ts),
            None => self.raw(b"null"),
        }
        self.raw(b",\"reset_sender_state\":");
        self.opt_name(reset.map(|r| r.sender_state.name()));
        self.raw(b",\"reset_receiver_state\":");
        self.opt_name(reset.map(|r| r.receiver_state.name()));
        for (side, keys) in [
            (
                Side::Client,
                [
                    &b",\"client_time_wait_start\":"[..],
                    b",\"client_time_wait_duration\":",
                    b",\"client_time_wait_end\":",
                ],
            ),
            (
                Side::Server,
                [
                    &b",\"server_time_wait_start\":"[..],
                    b",\"server_time_wait_duration\":",
                    b",\"server_time_wait_end\":",
                ],
            ),
        ] {
            let tw = time_wait_span(c, side, end_of_capture);
            self.raw(keys[0]);
            match tw {
                Some((start, _, _)) => self.epoch(start),
                None => self.raw(b"null"),
            }
            self.raw(keys[1]);
            self.opt_span(tw.map(|(start, until, _)| (start, until)));
            self.raw(keys[2]);
            self.opt_name(tw.map(|(_, _, why)| why.name()));
        }
        self.raw(b",\"client_packets\":");
        self.uint(client.packets);
        self.raw(b",\"server_packets\":");
        self.uint(server.packets);
        self.raw(b",\"client_bytes\":");
        self.uint(client.bytes);
        self.raw(b",\"server_bytes\":");
        self.uint(server.bytes);
        self.raw(b",\"fin_retransmits\":");
        self.uint(c.fin_retransmits(Side::Client) + c.fin_retransmits(Side::Server));
        let anomalies = c.anomalies();
        self.raw(b",\"rst_out_of_window\":");
        self.uint(anomalies.rst_out_of_window);
        self.raw(b",\"rst_in_window_not_exact\":");
        self.uint(anomalies.rst_in_window_not_exact);
        self.raw(b",\"unexplained_segments\":");
        self.uint(anomalies.unexplained);
        self.raw(b",\"packets_after_close\":");
        self.uint(anomalies.after_close);
        self.raw(b"}\n");
    }

    /// `self.f64(epoch_secs(t))` by integer arithmetic, unless `t` lies within 300 ns of a
    /// microsecond's tie: below `EPOCH_NANOS_EXACT` the float path is off the exact value by
    /// less than 260 ns (`t` as a float by up to 128 ns, its division by 1,000 by up to 125).
    fn epoch(&mut self, t: Ts) {
        let rem = t.0.rem_euclid(1000);
        if (0..EPOCH_NANOS_EXACT).contains(&t.0) && (rem - 500).abs() > 300 {
            self.micros((t.0 / 1000 + i64::from(rem > 500)) as u64);
        } else {
            self.f64(epoch_secs(t));
        }
    }

    /// `self.f64(duration_secs(to.since(from)))` by integer arithmetic (exact below 2^50 ns).
    fn span(&mut self, from: Ts, to: Ts) {
        let d = to.since(from);
        if (0..1 << 50).contains(&d.0) {
            self.micros(((d.0 + 500) / 1000) as u64);
        } else {
            self.f64(duration_secs(Dur(d.0)));
        }
    }

    fn opt_span(&mut self, span: Option<(Ts, Ts)>) {
        match span {
            Some((from, to)) => self.span(from, to),
            None => self.raw(b"null"),
        }
    }

    /// A name the code spells (a state, a side): nothing in it to escape.
    fn name(&mut self, s: &'static str) {
        debug_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.buf.push(b'"');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(b'"');
    }

    fn opt_name(&mut self, s: Option<&'static str>) {
        match s {
            Some(s) => self.name(s),
            None => self.raw(b"null"),
        }
    }

    /// Appends the `EventRow` of transition `t` of `conn` as one line, as serde_json writes
    /// that struct, without making the row (its three `String`s).
    pub fn event_row(&mut self, t: &Transition, facts: &ConnFacts) {
        let cause = facts.cause(t);
        self.raw(b"{\"time\":");
        self.f64(super::secs(t.ts));
        self.raw(b",\"conn\":");
        self.uint(t.conn_id);
        self.raw(b",\"endpoint\":");
        self.addr(facts.addr(t.side));
        self.raw(b",\"peer\":");
        self.addr(facts.addr(t.side.other()));
        self.raw(b",\"role\":");
        self.str(t.side.name());
        self.raw(b",\"from\":");
        self.str(t.from.name());
        self.raw(b",\"to\":");
        self.str(t.to.name());
        self.raw(b",\"event\":");
        self.str(t.event.name());
        self.raw(b",\"timer\":");
        self.bool(t.packet == 0);
        self.raw(b",\"packet\":");
        self.opt_uint((t.packet != 0).then_some(t.packet));
        self.raw(b",\"packet_from\":");
        self.opt_str(cause.map(|c| c.0.name()));
        self.raw(b",\"flags\":");
        match cause {
            Some((_, seg, _, _)) => {
                let (letters, len) = flag_letters_in(seg.flags);
                self.buf.push(b'"');
                self.buf.extend_from_slice(&letters[..len]);
                self.buf.push(b'"');
            }
            None => self.raw(b"null"),
        }
        self.raw(b",\"seq\":");
        self.opt_uint(cause.map(|c| c.2));
        self.raw(b",\"ack\":");
        self.opt_uint(cause.and_then(|c| c.3));
        self.raw(b",\"len\":");
        self.opt_uint(cause.map(|c| c.1.payload_len));
        self.raw(b"}\n");
    }

    #[inline]
    fn opt_uint(&mut self, n: Option<impl Into<u64>>) {
        match n {
            Some(n) => self.uint(n),
            None => self.raw(b"null"),
        }
    }

    #[inline]
    fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    #[inline]
    fn uint(&mut self, n: impl Into<u64>) {
        let n = n.into();
        // Counters are mostly single digits.
        if n < 10 {
            self.buf.push(b'0' + n as u8);
            return;
        }
        let len = n.ilog10() as usize + 1;
        let mut text = [0u8; 20];
        write_digits(&mut text[..len], n);
        push_first(&mut self.buf, &text, len);
    }

    #[inline]
    fn bool(&mut self, b: bool) {
        self.raw(if b { b"true" } else { b"false" });
    }

    /// As serde_json: finite values via zmij (`1.0`, `1e21`), NaN and infinities as `null`.
    #[inline]
    fn f64(&mut self, v: f64) {
        if self.whole_micros(v) {
            return;
        }
        if v.is_finite() {
            let s = self.float.format_finite(v);
            self.buf.extend_from_slice(s.as_bytes());
        } else {
            self.raw(b"null");
        }
    }

    /// Writes `v` by integer arithmetic when it is a whole number of microseconds from 1 µs
    /// to 2^33 s (every epoch time, and every duration of a capture with microsecond
    /// timestamps), giving zmij's shortest text: doubles there are closer together than 1 µs,
    /// so the µs decimal with its trailing zeros cut is the shortest that reads back as `v`.
    /// zmij writes it without an exponent from 10 µs up, and as `5e-6` below. Formatting the
    /// float cost more than the rest of a row. False: not written.
    #[inline]
    fn whole_micros(&mut self, v: f64) -> bool {
        if !(0.000001..8_589_934_592.0).contains(&v) {
            return false;
        }
        let micros = crate::time::round_half_away(v * 1e6);
        if micros / 1e6 != v {
            return false;
        }
        self.micros(micros as u64);
        true
    }

    /// `micros` microseconds as seconds, as zmij writes `micros as f64 / 1e6` below 2^33 s:
    /// the shortest decimal that reads back (see `whole_micros`), `5e-6` below 10 µs.
    fn micros(&mut self, micros: u64) {
        if micros >= 8_589_934_592_000_000 {
            return self.f64(micros as f64 / 1e6);
        }
        if micros == 0 {
            return self.raw(b"0.0");
        }
        if micros < 10 {
            // Below 10 µs zmij writes an exponent: 5e-6.
            self.buf
                .extend_from_slice(&[b'0' + micros as u8, b'e', b'-', b'6']);
            return;
        }
        let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
        // The seconds, the point and six digits of fraction in a stack buffer, then the
        // fraction's trailing zeros dropped (one kept after the point): one copy into the
        // line, where pushes and a second integer formatting cost more than the digits.
        let mut text = [0u8; 24];
        // Below 2^33 s: at most 10 digits of seconds.
        let point = if secs < 10 {
            1
        } else {
            secs.ilog10() as usize + 1
        };
        write_digits(&mut text[..point], secs);
        text[point] = b'.';
        write_digits(&mut text[point + 1..point + 7], frac);
        let mut len = point + 7;
        while len > point + 2 && text[len - 1] == b'0' {
            len -= 1;
        }
        push_first(&mut self.buf, &text, len);
    }

    #[inline]
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(s) => self.str(s),
            None => self.raw(b"null"),
        }
    }

    fn str(&mut self, s: &str) {
        self.buf.push(b'"');
        escape_into(&mut self.buf, s.as_bytes());
        self.buf.push(b'"');
    }

    /// A socket address as a JSON string, formatted straight into the buffer (no `String`).
    fn addr(&mut self, a: SockAddr) {
        match a {
            SockAddr {
                ip: IpAddr::V4(ip),
                port,
            } => {
                // The same text as `SockAddr`'s Display, without going through `fmt`.
                self.buf.push(b'"');
                super::push_ipv4_sock(&mut self.buf, ip, port);
                self.buf.push(b'"');
            }
            a => {
                // IPv6 text has rules of its own (zero runs, embedded IPv4): leave it to std.
                // Writing to a Vec cannot fail, and the text needs no escaping.
                self.buf.push(b'"');
                let _ = write!(self.buf, "{a}");
                self.buf.push(b'"');
            }
        }
    }
}

/// JSON string contents as serde_json writes them: `"` and `\` backslashed, the control
/// characters below 0x20 as `\b \t \n \f \r` or `\u00XX`; everything else (DEL and non-ASCII
/// included) as is.
fn escape_into(buf: &mut Vec<u8>, s: &[u8]) {
    // Fast path: state names and addresses never need escaping.
    if !s.iter().any(|&b| needs_escape(b)) {
        buf.extend_from_slice(s);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        buf.extend_from_slice(&s[start..i]);
        start = i + 1;
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0x08 => buf.extend_from_slice(b"\\b"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            0x0c => buf.extend_from_slice(b"\\f"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    buf.extend_from_slice(&s[start..]);
}

#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the integer path writes for `v`, or None where it leaves `v` to zmij.
    fn integer_text(v: f64) -> Option<String> {
        let mut w = RowWriter::default();
        w.whole_micros(v)
            .then(|| String::from_utf8(w.buf).expect("ASCII"))
    }

    /// The integer path gives zmij's text for whole microseconds from 1 µs to 2^33 s (below 10 µs with zmij's exponent): epoch
    /// times as `epoch_secs` makes them from nanoseconds, the ends of the range, round
    /// values, and random doubles (which it must either match or leave alone).
    #[test]
    fn whole_micros_match_zmij() {
        use proptest::prelude::*;
        let zmij_text = |v: f64| zmij::Buffer::new().format_finite(v).to_string();
        for v in [
            1.0,
            1.5,
            1.000001,
            9.999999,
            60.0,
            1_795_273_206.0,
            1_795_273_206.362_23,
            1_795_273_206.000001,
            1_795_273_206.999999,
            8_589_934_591.999999,
            4_294_967_296.5,
            0.5,
            0.999999,
            0.0001,
            0.000123,
            0.010_204,
            0.000099,
            0.00001,
            0.000012,
            0.000001,
            0.000009,
            0.00005,
        ] {
            assert_eq!(integer_text(v), Some(zmij_text(v)), "{v}");
        }
        for v in [
            0.0,
            1e-7,
            0.0000015,
            0.000_010_5,
            8_589_934_592.0,
            1e21,
            -1.5,
            f64::NAN,
            1.0000001,
        ] {
            assert_eq!(integer_text(v), None, "{v}");
        }
        // Every whole number of microseconds up to 0.1 s, where the text changes form.
        for micros in 1..100_000u32 {
            let v = f64::from(micros) / 1e6;
            assert_eq!(integer_text(v), Some(zmij_text(v)), "{v}");
        }
        let mut runner = crate::seeded_runner(50_000);
        runner
            .run(
                &(
                    0i64..8_600_000_000_000_000_000,
                    any::<f64>(),
                    1u64..8_589_934_592_000_000,
                ),
                |(nanos, random, micros)| {
                    let v = micros as f64 / 1e6;
                    if let Some(text) = integer_text(v) {
                        prop_assert_eq!(text, zmij_text(v));
                    }
                    let v = (micros % 1_000_000) as f64 / 1e6;
                    if let Some(text) = integer_text(v) {
                        prop_assert_eq!(text, zmij_text(v));
                    }
                    let v = crate::time::epoch_secs(crate::time::Ts(nanos));
                    match integer_text(v) {
                        Some(text) => prop_assert_eq!(text, zmij_text(v)),
                        // Above 2^31 s (the year 2038) rounding may leave a value to zmij;
                        // below, doubles are fine enough that the integer path takes all.
                        None => prop_assert!(!(1.0..2_147_483_648.0).contains(&v)),
                    }
                    if let Some(text) = integer_text(random) {
                        prop_assert_eq!(text, zmij_text(random));
                    }
                    Ok(())
                },
            )
            .unwrap();
    }

    /// Floats as serde_json writes them: whole microseconds by integers, the rest through
    /// zmij, non-finite values as `null`.
    #[test]
    fn floats_are_written_as_serde_json_writes_them() {
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.5,
            1e-7,
            1e-5,
            0.1,
            1e15,
            1e16,
            1e21,
            1e22,
            123456789.123456,
            1_700_000_000.000_001,
            f64::EPSILON,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::MAX,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut w = RowWriter::default();
            w.f64(f);
            let want = serde_json::to_string(&f).expect("serializes");
            assert_eq!(String::from_utf8_lossy(w.bytes()), want, "{f:e}");
        }
    }

    /// A line written from the record is serde_json's line of its summary, to the byte, for all
    /// kinds of records and times: epochs of today, near where the integer path stops
    /// (2^51 µs) and far past it, microseconds' ties and not.
    #[test]
    fn record_rows_are_their_summaries_rows() {
        use crate::analysis::summarize;
        use crate::report::testing::{random_records, random_steps};
        use proptest::prelude::*;
        let first = prop_oneof![
            1_700_000_000_000_000_000i64..1_800_000_000_000_000_000,
            EPOCH_NANOS_EXACT - 10_000_000_000..EPOCH_NANOS_EXACT + 10_000_000_000,
            Just(8_000_000_000_000_000_000),
            0i64..1_000_000_000,
        ];
        let rows = std::cell::Cell::new(0);
        crate::seeded_runner(3_000)
            .run(&(random_steps(), first), |(steps, first)| {
                let (conns, end) = random_records(&steps, first);
                for c in &conns {
                    let mut fast = RowWriter::default();
                    fast.record_row(c, end);
                    let want =
                        serde_json::to_string(&summarize(c, end)).expect("serializes") + "\n";
                    prop_assert_eq!(String::from_utf8_lossy(fast.bytes()), want);
                    rows.set(rows.get() + 1);
                }
                Ok(())
            })
            .unwrap();
        assert!(rows.get() > 10_000, "{} rows compared", rows.get());
    }

    #[test]
    fn escaper_matches_serde_json_for_every_byte() {
        for b in 0u8..=0x7f {
            let s = format!("a{}b{}", b as char, b as char);
            let mut ours = Vec::new();
            escape_into(&mut ours, s.as_bytes());
            let serde = serde_json::to_string(&s).expect("serializes");
            assert_eq!(format!("\"{}\"", String::from_utf8_lossy(&ours)), serde);
        }
    }

    #[test]
    fn socket_addresses_format_as_display() {
        let addrs = [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.20.200:8080",
            "[::]:0",
            "[::1]:22",
            "[2001:db8::1:0:0:1]:443",
            "[::ffff:192.0.2.1]:80",
            "[fe80::1]:1",
        ];
        for a in addrs {
            let sock: SockAddr = a.parse().expect("test address");
            let mut w = RowWriter::default();
            w.addr(sock);
            let want = serde_json::to_string(&sock.to_string()).expect("serializes");
            assert_eq!(String::from_utf8_lossy(w.bytes()), want, "{a}");
        }
    }
}
