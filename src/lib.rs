//! tcpstate: netstat for a capture. Follows every TCP connection in packet captures and
//! reconstructs the state each side's kernel was in, and why.
//!
//! Pipeline: [`capture`] (files, live) → [`decode`] (link/IP/TCP headers) → [`flow`]
//! (4-tuple table, connection records) → [`tcp`] (per-endpoint state machine) →
//! [`analysis`] (handshake, close, TIME_WAIT facts) → [`report`] (text and JSON).

pub mod analysis;
pub mod capture;
pub mod cli;
pub mod decode;
pub mod flow;
pub mod pipeline;
pub mod report;
pub mod tcp;
pub mod time;
pub mod zeek;

/// A proptest runner with a fixed seed, for the property tests that hold a fast path to the
/// general code it bypasses: the same cases on every run.
#[cfg(test)]
pub(crate) fn seeded_runner(cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    TestRunner::new_with_rng(
        Config {
            cases,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}
