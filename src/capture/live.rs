//! Live capture on an interface with libpcap (the `pcap` crate): the same packets, handed to
//! the same per-packet callback as a file, with libpcap's drop counts on the side.
//!
//! The handle is non-blocking and waited on with `poll`, so a stop request (SIGINT, SIGTERM)
//! is noticed within [`POLL_INTERVAL`] even when no packet arrives, and periodic ticks happen
//! on time whatever the traffic. Immediate mode makes every packet readable as soon as the
//! kernel has it, so the packets seen before a stop are all processed.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pcap::{Active, Capture, ConnectionStatus, Device, Linktype, PacketHeader, Savefile};
use rustix::event::{PollFd, PollFlags, Timespec};

use super::{CaptureError, CaptureErrorKind, PacketFn, RawPacket};
use crate::decode::{LinkType, linktype_name};
use crate::time::Ts;

/// Headers only: 256 bytes hold the link header (VLAN tags, cooked v2), IP with options or
/// extension headers, and the longest TCP header. TCP states need no payload.
pub const DEFAULT_SNAPLEN: u32 = 256;
/// What tcpdump takes `-s 0` to mean, and the largest snap length accepted.
pub const MAX_SNAPLEN: u32 = 262_144;
/// The kernel buffer: large, so a burst is held while the engine catches up instead of dropped.
pub const DEFAULT_BUFFER_BYTES: u32 = 32 << 20;
/// Longest wait for a packet before the stop flag and the tick clock are looked at again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the tick callback runs.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// Packets read in a row before the stop flag and the tick clock are looked at, under load.
const BATCH_PACKETS: usize = 4096;
/// After a stop, the packets already captured are read for at most this long: under heavy
/// traffic the ring never empties, and the stop must not wait for it.
const FINAL_DRAIN_LIMIT: Duration = Duration::from_millis(250);

/// How to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveOptions {
    /// An interface name (`eth0`, `any`), or its number in [`list_interfaces`] as tcpdump takes it.
    pub interface: String,
    /// Bytes kept of each packet; 0 means [`MAX_SNAPLEN`].
    pub snaplen: u32,
    /// Promiscuous mode (as tcpdump, on unless `-p`). Never asked of `any`, which cannot.
    pub promiscuous: bool,
    /// The kernel buffer in bytes.
    pub buffer_bytes: u32,
    /// A tcpdump filter expression, run in the kernel.
    pub filter: Option<String>,
    /// Also write every captured packet to this pcap file.
    pub write_to: Option<PathBuf>,
}

impl LiveOptions {
    /// The defaults for an interface: headers only, promiscuous, a 32 MiB buffer.
    pub fn new(interface: &str) -> LiveOptions {
        LiveOptions {
            interface: interface.to_string(),
            snaplen: DEFAULT_SNAPLEN,
            promiscuous: true,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            filter: None,
            write_to: None,
        }
    }
}

/// Packet counts of a live capture so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Packets handed to the per-packet callback.
    pub captured: u64,
    /// Packets the kernel filter passed (libpcap's `ps_recv`), including those then dropped.
    pub received: u64,
    /// Packets lost because the kernel buffer was full (`ps_drop`): tcpstate did not keep up.
    pub dropped_by_kernel: u64,
    /// Packets the interface or its driver dropped (`ps_ifdrop`).
    pub dropped_by_interface: u64,
}

impl LiveStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_by_kernel + self.dropped_by_interface
    }
}

/// Requests to a running capture: stop, or tick now. Cheap to clone; every clone is the same
/// pair of flags, so another thread or a signal handler can ask.
#[derive(Clone, Debug, Default)]
pub struct LiveControl {
    stop: Arc<AtomicBool>,
    tick: Arc<AtomicBool>,
}

impl LiveControl {
    pub fn new() -> LiveControl {
        LiveControl::default()
    }

    /// SIGINT and SIGTERM ask the capture to stop. A second one ends the process at once
    /// (status 128 + signal), in case stopping itself hangs.
    pub fn stop_on_signals(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for signal in [SIGINT, SIGTERM] {
            // The shutdown must be registered first: it runs before the flag is set, so it
            // fires only from the second signal on.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                128 + signal,
                Arc::clone(&self.stop),
            )?;
            signal_hook::flag::register(signal, Arc::clone(&self.stop))?;
        }
        Ok(())
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The tick callback runs at the next chance (within [`POLL_INTERVAL`]), not only on the
    /// second.
    pub fn request_tick(&self) {
        self.tick.store(true, Ordering::SeqCst);
    }

    fn take_tick_request(&self) -> bool {
        self.tick.swap(false, Ordering::SeqCst)
    }
}

/// An open live capture.
pub struct LiveCapture {
    capture: Capture<Active>,
    savefile: Option<Savefile>,
    write_to: Option<PathBuf>,
    interface: String,
    linktype: i32,
    snaplen: u32,
    stats: LiveStats,
    /// libpcap's own counters at the last reading: they are 32 bits and wrap on a busy link,
    /// so the totals above grow by the differences.
    last_kernel: (u32, u32, u32),
}

/// What one round of reading ended with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Nothing more to read now.
    Empty,
    /// The round's limit was reached with packets still waiting.
    More,
    /// The per-packet callback asked to stop.
    Break,
}

impl LiveCapture {
    /// Opens the interface and starts capturing: from now on the kernel keeps packets for
    /// [`LiveCapture::run`]. The filter is not set yet ([`LiveCapture::set_filter`]).
    pub fn open(opts: &LiveOptions) -> Result<LiveCapture, CaptureError> {
        let interface = resolve_interface(&opts.interface);
        let fail = |message: String| CaptureError {
            source: interface.clone(),
            kind: CaptureErrorKind::Live(message),
        };
        if opts.snaplen > MAX_SNAPLEN {
            return Err(fail(format!(
                "snap length {} is above the maximum {MAX_SNAPLEN}",
                opts.snaplen
            )));
        }
        let snaplen = if opts.snaplen == 0 {
            MAX_SNAPLEN
        } else {
            opts.snaplen
        };
        let is_any = interface == "any";
        let inactive = Capture::from_device(interface.as_str())
            .map_err(|e| open_error(&interface, &e))?
            .snaplen(i32::try_from(snaplen).unwrap_or(i32::MAX))
            // libpcap answers promiscuous mode on `any` with a warning that the crate treats
            // as a failure; `any` cannot be promiscuous anyway (tcpdump says the same).
            .promisc(opts.promiscuous && !is_any)
            .buffer_size(i32::try_from(opts.buffer_bytes).unwrap_or(i32::MAX))
            .timeout(i32::try_from(POLL_INTERVAL.as_millis()).unwrap_or(100))
            .immediate_mode(true);
        let capture = inactive
            .open()
            .map_err(|e| open_error(&interface, &e))?
            .setnonblock()
            .map_err(|e| fail(format!("cannot make the capture non-blocking: {e}")))?;
        let mut live = LiveCapture {
            capture,
            savefile: None,
            write_to: None,
            interface: interface.clone(),
            linktype: 0,
            snaplen,
            stats: LiveStats::default(),
            last_kernel: (0, 0, 0),
        };
        live.linktype = live.choose_linktype(is_any)?;
        if let Some(path) = &opts.write_to {
            let savefile = live.capture.savefile(path).map_err(|e| CaptureError {
                source: path.display().to_string(),
                kind: CaptureErrorKind::Live(format!("cannot write the capture file: {e}")),
            })?;
            live.savefile = Some(savefile);
            live.write_to = Some(path.clone());
        }
        Ok(live)
    }

    /// Cooked v2 on `any` (it names the interface of each packet); otherwise the interface's
    /// default, or the first type it offers that tcpstate decodes.
    fn choose_linktype(&mut self, is_any: bool) -> Result<i32, CaptureError> {
        const LINUX_SLL2: i32 = 276;
        let offered = self.capture.list_datalinks().unwrap_or_default();
        if is_any && offered.contains(&Linktype(LINUX_SLL2)) {
            // If it cannot be set, the default (cooked v1) is read as well.
            let _ = self.capture.set_datalink(Linktype(LINUX_SLL2));
        }
        let current = self.capture.get_datalink().0;
        if LinkType::from_linktype(current).is_some() {
            return Ok(current);
        }
        for Linktype(other) in offered {
            if LinkType::from_linktype(other).is_some()
                && self.capture.set_datalink(Linktype(other)).is_ok()
            {
                return Ok(other);
            }
        }
        Err(CaptureError {
            source: self.interface.clone(),
            kind: CaptureErrorKind::UnsupportedLinkType { linktype: current },
        })
    }

    /// Sets a tcpdump filter expression in the kernel: only matching packets are captured
    /// (and written with `-w`). The error is the libpcap compiler's message.
    pub fn set_filter(&mut self, expression: &str) -> Result<(), String> {
        self.capture
            .filter(expression, true)
            .map_err(|e| format!("invalid filter '{expression}': {e}"))
    }

    /// The counts as of the last tick (packets handed over: up to now), e.g. after a fault.
    pub fn stats(&self) -> LiveStats {
        self.stats
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The LINKTYPE_ value of every packet this capture hands over.
    pub fn linktype(&self) -> i32 {
        self.linktype
    }

    /// tcpdump's first line: `listening on lo, link-type EN10MB (1), snapshot length 256 bytes`.
    pub fn describe(&self) -> String {
        format!(
            "listening on {}, link-type {}, snapshot length {} bytes",
            self.interface,
            linktype_name(self.linktype),
            self.snaplen
        )
    }

    /// Reads packets until a stop is requested (or `on_packet` breaks), handing each to
    /// `on_packet` and, with `-w`, writing it to the file. `on_tick` runs about once per
    /// [`TICK_INTERVAL`] and on [`LiveControl::request_tick`], with the counts so far. On a
    /// stop, the packets the kernel already holds are read first (for up to 250 ms). Returns
    /// the final counts; the `-w` file is complete when this returns, whatever the outcome.
    pub fn run(
        &mut self,
        control: &LiveControl,
        on_packet: &mut PacketFn<'_>,
        on_tick: &mut dyn FnMut(&LiveStats),
    ) -> Result<LiveStats, CaptureError> {
        let result = self.read_until_stopped(control, on_packet, on_tick);
        let flushed = self.flush();
        result.and(flushed)?;
        self.refresh_stats()
    }

    fn read_until_stopped(
        &mut self,
        control: &LiveControl,
        on_packet: &mut PacketFn<'_>,
        on_tick: &mut dyn FnMut(&LiveStats),
    ) -> Result<(), CaptureError> {
        let mut next_tick = Instant::now() + TICK_INTERVAL;
        loop {
            if control.stop_requested() {
                let deadline = Instant::now() + FINAL_DRAIN_LIMIT;
                while self.read_round(on_packet)? == Round::More && Instant::now() < deadline {}
                return Ok(());
            }
            let round = self.read_round(on_packet)?;
            if round == Round::Break {
                return Ok(());
            }
            let now = Instant::now();
            if control.take_tick_request() || now >= next_tick {
                let stats = self.refresh_stats()?;
                // A tick is also when the -w file catches up, so it is never far behind.
                self.flush()?;
                on_tick(&stats);
                next_tick = now + TICK_INTERVAL;
            }
            if round == Round::Empty {
                let wait = POLL_INTERVAL.min(next_tick.saturating_duration_since(now));
                self.wait_for_packets(wait)?;
            }
        }
    }

    /// Reads what is waiting, up to [`BATCH_PACKETS`].
    fn read_round(&mut self, on_packet: &mut PacketFn<'_>) -> Result<Round, CaptureError> {
        let LiveCapture {
            capture,
            savefile,
            linktype,
            stats,
            interface,
            ..
        } = self;
        for _ in 0..BATCH_PACKETS {
            match capture.next_packet() {
                Ok(packet) => {
                    if let Some(file) = savefile.as_mut() {
                        file.write(&packet);
                    }
                    stats.captured += 1;
                    let raw = RawPacket {
                        ts: timestamp(packet.header),
                        linktype: *linktype,
                        data: packet.data,
                        orig_len: packet.header.len,
                        ahead: &[],
                    };
                    if on_packet(&raw).is_break() {
                        return Ok(Round::Break);
                    }
                }
                // Non-blocking: nothing is waiting.
                Err(pcap::Error::TimeoutExpired) => return Ok(Round::Empty),
                Err(e) => {
                    return Err(CaptureError {
                        source: interface.clone(),
                        kind: CaptureErrorKind::Live(format!("capture failed: {e}")),
                    });
                }
            }
        }
        Ok(Round::More)
    }

    /// Waits until packets are readable or `wait` passes. A signal cuts the wait short.
    fn wait_for_packets(&self, wait: Duration) -> Result<(), CaptureError> {
        let timeout = Timespec {
            tv_sec: i64::try_from(wait.as_secs()).unwrap_or(0),
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.capture, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) => Ok(()),
            Err(e) if e == rustix::io::Errno::INTR => Ok(()),
            Err(e) => Err(CaptureError {
                source: self.interface.clone(),
                kind: CaptureErrorKind::Live(format!("waiting for packets: {e}")),
            }),
        }
    }

    fn flush(&mut self) -> Result<(), CaptureError> {
        if let (Some(file), Some(path)) = (self.savefile.as_mut(), &self.write_to) {
            file.flush().map_err(|e| CaptureError {
                source: path.display().to_string(),
                kind: CaptureErrorKind::Live(format!("writing the capture file: {e}")),
            })?;
        }
        Ok(())
    }

    /// Reads libpcap's counters and returns the totals so far.
    fn refresh_stats(&mut self) -> Result<LiveStats, CaptureError> {
        let now = self.capture.stats().map_err(|e| CaptureError {
            source: self.interface.clone(),
            kind: CaptureErrorKind::Live(format!("reading capture statistics: {e}")),
        })?;
        let (received, dropped, if_dropped) = self.last_kernel;
        self.stats.received += u64::from(now.received.wrapping_sub(received));
        self.stats.dropped_by_kernel += u64::from(now.dropped.wrapping_sub(dropped));
        self.stats.dropped_by_interface += u64::from(now.if_dropped.wrapping_sub(if_dropped));
        self.last_kernel = (now.received, now.dropped, now.if_dropped);
        Ok(self.stats)
    }
}

/// Microsecond timestamps (libpcap's default, as tcpdump writes them), so the `-w` file holds
/// exactly the times the engine used.
// time_t and suseconds_t are i64 here but narrower on some 32-bit targets.
#[allow(clippy::useless_conversion)]
fn timestamp(header: &PacketHeader) -> Ts {
    Ts::from_parts(
        i64::from(header.ts.tv_sec),
        i64::from(header.ts.tv_usec).saturating_mul(1000),
    )
}

/// An interface as `-D` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub description: Option<String>,
    /// `Up`, `Running`, `Wireless`, `Loopback`, `Connected`, `Disconnected`.
    pub flags: Vec<&'static str>,
}

/// The interfaces libpcap can capture on, in its order (the numbers `-i` accepts start at 1).
pub fn list_interfaces() -> Result<Vec<InterfaceInfo>, CaptureError> {
    let devices = Device::list().map_err(|e| CaptureError {
        source: "interfaces".into(),
        kind: CaptureErrorKind::Live(format!("cannot list them: {e}")),
    })?;
    Ok(devices
        .into_iter()
        .map(|d| {
            let mut flags = Vec::new();
            let f = &d.flags;
            for (set, name) in [
                (f.is_up(), "Up"),
                (f.is_running(), "Running"),
                (f.is_wireless(), "Wireless"),
                (f.is_loopback(), "Loopback"),
                (
                    f.connection_status == ConnectionStatus::Connected,
                    "Connected",
                ),
                (
                    f.connection_status == ConnectionStatus::Disconnected,
                    "Disconnected",
                ),
            ] {
                if set {
                    flags.push(name);
                }
            }
            InterfaceInfo {
                name: d.name,
                description: d.desc,
                flags,
            }
        })
        .collect())
}

/// As `tcpdump -D` prints them: `1.lo [Up, Running, Loopback]`.
pub fn write_interface_list(out: &mut dyn Write, list: &[InterfaceInfo]) -> io::Result<()> {
    for (i, iface) in list.iter().enumerate() {
        write!(out, "{}.{}", i + 1, iface.name)?;
        if let Some(desc) = &iface.description {
            write!(out, " ({desc})")?;
        }
        if iface.flags.is_empty() {
            writeln!(out, " [none]")?;
        } else {
            writeln!(out, " [{}]", iface.flags.join(", "))?;
        }
    }
    Ok(())
}

/// `-i 2` is the second interface of `-D`, as in tcpdump, unless an interface is named `2`.
fn resolve_interface(name: &str) -> String {
    let Ok(number) = name.parse::<usize>() else {
        return name.to_string();
    };
    let Ok(list) = list_interfaces() else {
        return name.to_string();
    };
    if list.iter().any(|i| i.name == name) {
        return name.to_string();
    }
    number
        .checked_sub(1)
        .and_then(|i| list.get(i))
        .map_or_else(|| name.to_string(), |i| i.name.clone())
}

/// One line that says what to do. The crate keeps only libpcap's message, not its error
/// code, so the cases are told apart by the interface list first (it needs no privilege)
/// and by the message.
fn open_error(interface: &str, e: &pcap::Error) -> CaptureError {
    let text = e.to_string();
    let text = text.strip_prefix("libpcap error: ").unwrap_or(&text);
    let lower = text.to_lowercase();
    let listed = list_interfaces().ok();
    let unknown = listed
        .as_ref()
        .is_some_and(|l| !l.iter().any(|i| i.name == interface));
    let message = if unknown || lower.contains("no such device") {
        let names: Vec<String> = listed
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.name)
            .collect();
        if names.is_empty() {
            "no such interface, and libpcap lists none".to_string()
        } else {
            format!(
                "no such interface; the interfaces are: {} (tcpstate -D)",
                names.join(", ")
            )
        }
    } else if lower.contains("permitted")
        || lower.contains("permission")
        || lower.contains("cap_net_raw")
    {
        format!(
            "capturing needs root, or the capabilities CAP_NET_RAW and CAP_NET_ADMIN; grant them with: sudo setcap cap_net_raw,cap_net_admin=eip $(command -v tcpstate) (libpcap: {text})"
        )
    } else {
        format!("cannot capture: {text}")
    };
    CaptureError {
        source: interface.to_string(),
        kind: CaptureErrorKind::Live(message),
    }
}
