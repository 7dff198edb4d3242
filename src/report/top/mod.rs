//! `tcpstate top`: a live, full-screen table of the connections being followed, like top.
//!
//! Three parts, so the capture thread never waits for the terminal:
//! - [`model`]: [`TopModel`] turns the engine's connections into a [`TopFrame`] snapshot;
//!   [`TopFeed`] does that from an [`Engine`](crate::pipeline::Engine) and offers the frame
//!   on a `sync_channel(1)` with `try_send`, dropping display updates, never packets.
//! - [`view`]: [`TopView`] (sort, filter, scroll, pause; keys) draws a frame with ratatui.
//! - [`term`]: [`run_terminal`] owns the terminal on the display thread.

pub mod model;
pub mod term;
pub mod view;

pub use model::{
    CaptureDrops, HandshakeFailures, StateCounts, TopConfig, TopFeed, TopFrame, TopModel, TopRow,
    TopStats,
};
pub use term::{run_terminal, run_terminal_with};
pub use view::{Action, Filter, SortKey, TopScreen, TopView};
