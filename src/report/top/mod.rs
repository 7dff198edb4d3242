//! `tcpstate top`: a live, full-screen table of the connections being followed, like top.
//!
//! [`model`]: [`TopModel`] turns the engine's connections into a [`TopFrame`] snapshot;
//! [`TopFeed`] does that from an [`Engine`](crate::pipeline::Engine) and offers the frame on a
//! `sync_channel(1)` with `try_send`, dropping display updates, never packets.

pub mod model;

pub use model::{
    CaptureDrops, HandshakeFailures, StateCounts, TopConfig, TopFeed, TopFrame, TopModel,
    TopRow, TopStats,
};
