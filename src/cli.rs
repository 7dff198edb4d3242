//! Command-line interface: argument parsing, running a command, exit codes.

use hashbrown::HashMap;
use std::cell::RefCell;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::analysis::findings::{self, DiagnoseConfig};
use crate::analysis::{summarize, summary};
use crate::capture::filter::PacketFilter;
use crate::capture::live::{self, LiveCapture, LiveControl, LiveOptions, LiveStats};
use crate::capture::{ContainerCounters, PacketFn, file};
use crate::decode::SockAddr;
use crate::flow::conn::Transition;
use crate::flow::{Connection, EngineConfig, FlowKey, IdleTimeouts, Side};
use crate::pipeline::sharded::{self, MergedSink};
use crate::pipeline::{Engine, Front, Outcome, Watch};
use crate::report::packet::Relative;
use crate::report::records_behind::{RecordsBehind, Rows};
use crate::report::top::{CaptureDrops, TopConfig, TopFeed, TopModel};
use crate::report::write_behind::WriteBehind;
use crate::report::{self, conns, diagnose, events, explain, states};
use crate::tcp::machine::Event;
use crate::time::{Dur, Ts, parse_time_arg};
use crate::zeek::{self, ZeekConfig, ZeekTracker};

/// Exit statuses, also listed in `--help` and the README.
pub mod exit {
    /// Everything read and reported.
    pub const OK: i32 = 0;
    /// An input could not be read to its end (not a capture, truncated, corrupt, unsupported
    /// link type, cannot open), or live capture could not start or failed (unknown interface,
    /// no privilege): what was read before the fault is still reported.
    pub const INPUT_ERROR: i32 = 1;
    /// Bad command line (unknown option, invalid filter or time).
    pub const USAGE: i32 = 2;
    /// `explain`: the connection asked for is not in the input.
    pub const NOT_FOUND: i32 = 3;
}

/// The default `--max-conns`: about 600 MB of records at most.
pub const DEFAULT_MAX_CONNS: usize = 1_000_000;

const EXIT_CODES_HELP: &str = "Exit status: 0 all input read and reported (live: stopped by Ctrl-C or SIGTERM); 1 an input could not be read to its end, or live capture could not start or failed (what was read before the fault is still reported); 2 bad command line; 3 `explain` found no such connection.";

#[derive(Parser, Debug)]
#[command(
    name = "tcpstate",
    version,
    about = "netstat for a capture: follows every TCP connection in packet captures (or live on an interface) and tells what state each side is in, and why.",
    after_help = EXIT_CODES_HELP,
    arg_required_else_help = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// List the interfaces `-i` can capture on (as `tcpdump -D`), then exit.
    #[arg(short = 'D', long = "list-interfaces")]
    pub list_interfaces: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One row per connection: handshake, who closed or reset, TIME_WAIT, final states.
    Conns(ConnsArgs),
    /// What `ss -tan` would have shown at the end of the capture (or at --at), and the count per state.
    States(StatesArgs),
    /// Every state change of every endpoint in time order, with the packet that caused it.
    Events(EventsArgs),
    /// A ladder diagram of one connection: each packet an arrow, each side's state beside it.
    Explain(ExplainArgs),
    /// Named findings, most severe first: unanswered and refused SYNs, failed handshakes,
    /// resets, CLOSE_WAIT leaks, TIME_WAIT pressure, slow handshakes.
    Diagnose(DiagnoseArgs),
    /// Counts by handshake outcome and by how connections ended; handshake, half-close and
    /// TIME_WAIT duration distributions.
    Summary(SummaryArgs),
    /// A live full-screen view (as top): counts per state, connection rate, failures and
    /// drops, and the connections with each side's state. `tcpstate -i IFACE` on a terminal.
    Top(TopArgs),
}

#[derive(Args, Debug, Clone)]
#[group(skip)]
#[command(group(ArgGroup::new("source").required(true).args(["files", "interface"])))]
pub struct InputArgs {
    /// Capture file (pcap or pcapng); repeat for rotated files, read in order as one capture; `-` is standard input.
    #[arg(short = 'r', long = "read", value_name = "FILE")]
    pub files: Vec<String>,
    /// Capture live on this interface (`any` for all; a number from `tcpstate -D`) until
    /// Ctrl-C or SIGTERM, then report. Needs root or CAP_NET_RAW and CAP_NET_ADMIN.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interface: Option<String>,
    /// Live: don't put the interface into promiscuous mode.
    #[arg(short = 'p', long = "no-promiscuous-mode", conflicts_with = "files")]
    pub no_promiscuous: bool,
    /// Live: bytes kept of each packet [default: 256, headers only; 0 = 262144].
    #[arg(
        short = 's',
        long = "snapshot-length",
        value_name = "BYTES",
        conflicts_with = "files"
    )]
    pub snaplen: Option<u32>,
    /// Live: the kernel capture buffer in KiB [default: 32768].
    #[arg(
        short = 'B',
        long = "buffer-size",
        value_name = "KIB",
        conflicts_with = "files"
    )]
    pub buffer_kib: Option<u32>,
    /// Live: also write every captured packet to this pcap file, to run the same command on
    /// it later with `-r` (the filter applies: only matching packets are captured).
    #[arg(
        short = 'w',
        long = "write",
        value_name = "FILE",
        conflicts_with = "files"
    )]
    pub write_to: Option<PathBuf>,
    /// TIME_WAIT length in seconds (2MSL; Linux: 60).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub time_wait: f64,
    /// Track at most N connections at once (0: no limit): when full, the least recently
    /// active eighth is evicted (counted; half-open attempts are only counted, per server, to
    /// bound memory under a SYN flood). With --format zeek, evicted connections are logged
    /// as they stand.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNS)]
    pub max_conns: usize,
    /// Stop tracking a connection silent for longer than this, by the state of its most open
    /// side: `handshake=SECS` (SYN_SENT, SYN_RECV; default 180), `established=SECS`
    /// (ESTABLISHED, CLOSE_WAIT, FIN_WAIT2; default 86400), `closing=SECS` (FIN_WAIT1,
    /// CLOSING, LAST_ACK; default 600). Repeatable. Closed connections end 2MSL after their
    /// last packet. Timers run on packet time.
    #[arg(long, value_name = "CLASS=SECS")]
    pub idle_timeout: Vec<String>,
    /// Spread the connections over N worker threads (files only; `conns`, `states`,
    /// `diagnose`, `summary`): the same output as one thread. `--max-conns` then applies to
    /// each worker's share (the limit divided by N).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Don't print the packet counters on standard error.
    #[arg(short, long)]
    pub quiet: bool,
    /// A tcpdump filter expression, e.g. `port 443` (live: set in the kernel).
    #[arg(
        value_name = "FILTER",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub filter: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Text,
    /// One JSON object per line.
    Json,
    /// A header row, then one row per record; numbers raw, unset values empty.
    Csv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConnsFormat {
    /// Aligned columns for people.
    Text,
    /// One JSON object per line.
    Json,
    /// A header row, then one row per connection.
    Csv,
    /// A Zeek conn.log (TSV with Zeek's header lines; Zeek's own connection rules).
    Zeek,
}

#[derive(Args, Debug)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value_t = ConnsFormat::Text)]
    pub format: ConnsFormat,
    /// With --format zeek: do not verify checksums (as `zeek -C`). Needed for captures taken
    /// on the sending host (checksum offload, Linux loopback), whose TCP checksums are not valid.
    #[arg(short = 'C', long)]
    pub ignore_checksums: bool,
}

#[derive(Args, Debug)]
pub struct StatesArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Show the states at this time: RFC 3339, epoch seconds, or +SECS from the capture start.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<String>,
    /// Only the sockets of this host (address, or address:port), as if `ss` ran there.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Also list CLOSED endpoints.
    #[arg(long)]
    pub all: bool,
    /// Instead of the sockets at the end, print the count per state every interval of
    /// packet time (live: of the wall clock too): `10s`, `1m`, `500ms`, or seconds.
    #[arg(long, value_name = "DURATION", conflicts_with = "at")]
    pub interval: Option<String>,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub input: InputArgs,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Files: transitions found before looking for those that can be written (tests set
    /// it low to write after every packet).
    #[arg(long, hide = true, value_name = "N", default_value_t = 1 << 16)]
    pub write_every: usize,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The connection: an id from `conns`, or a 4-tuple `ADDR:PORT-ADDR:PORT` (IPv6 as
    /// `[::1]:80`; every connection on it is drawn).
    #[arg(value_name = "CONN")]
    pub conn: String,
    /// Draw every packet; by default long quiet runs of data in the middle collapse.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub input: InputArgs,
}

#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Report CLOSE_WAIT and FIN_WAIT2 sockets older than this many seconds at the end.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub stuck_after: f64,
    /// The clients' ephemeral port range, for TIME_WAIT port pressure (Linux default).
    #[arg(long, value_name = "LO-HI", default_value = "32768-60999")]
    pub port_range: String,
    /// Report a host's TIME_WAIT peak from this many sockets at once.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub many_time_wait: usize,
    /// Report handshakes slower than this many seconds even without a retransmission.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub slow_handshake: f64,
    /// Report a SYN flood from this many half-open attempts on one server.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub syn_flood: u64,
}

#[derive(Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Text, or one JSON object.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn seconds_arg(name: &str, v: f64) -> Result<Dur, Failure> {
    if v.is_finite() && v >= 0.0 {
        Ok(Dur::from_secs_f64(v))
    } else {
        Err(usage(format!("--{name} {v}: expected seconds >= 0")))
    }
}

fn parse_port_range(s: &str) -> Result<(u16, u16), Failure> {
    let bad = || {
        usage(format!(
            "--port-range '{s}': expected LO-HI, e.g. 32768-60999"
        ))
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// `12`, `10.0.0.1:5000-10.0.0.2:80`, `[::1]:5000,[::1]:80` or the two separated by a space.
pub fn parse_conn_selector(s: &str) -> Result<Watch, String> {
    let s = s.trim();
    if let Ok(id) = s.parse::<u64>() {
        return Ok(Watch::Id(id));
    }
    let bad =
        || format!("'{s}': expected a connection id or a 4-tuple like 10.0.0.1:5000-10.0.0.2:80");
    // Split after a port: the separator follows digits and precedes an address.
    let sep = s
        .char_indices()
        .find(|&(i, c)| {
            matches!(c, '-' | ',' | ' ')
                && s[..i].ends_with(|d: char| d.is_ascii_digit())
                && s[..i].contains(':')
        })
        .map(|(i, _)| i)
        .ok_or_else(bad)?;
    let a = s[..sep].trim().parse::<SockAddr>().map_err(|_| bad())?;
    let b = s[sep + 1..].trim().parse::<SockAddr>().map_err(|_| bad())?;
    Ok(Watch::Tuple(FlowKey::new(a, b)))
}

/// An error that ends the run with a status.
pub struct Failure {
    pub status: i32,
    pub message: String,
}

fn usage(message: String) -> Failure {
    Failure {
        status: exit::USAGE,
        message,
    }
}

/// The filter the engine runs on each packet: for files only, since a live capture has its
/// filter set in the kernel.
fn compile_filter(input: &InputArgs) -> Result<Option<PacketFilter>, Failure> {
    if input.filter.is_empty() || input.interface.is_some() {
        Ok(None)
    } else {
        PacketFilter::new(&input.filter.join(" "))
            .map(Some)
            .map_err(usage)
    }
}

/// Where the packets come from.
enum Source<'a> {
    Files(&'a [String]),
    Live(LiveOptions),
}

impl InputArgs {
    /// Whether every input is a regular file (a pipe or FIFO gives its bytes only once).
    fn files_can_be_read_twice(&self) -> bool {
        self.files
            .iter()
            .all(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file()))
    }

    /// Packets arrive over time (a live capture, or a pipe on standard input): output is
    /// flushed record by record. Standard input redirected from a file (`-r - < x.pcap`) is
    /// read as a file is.
    fn streams_in(&self) -> bool {
        self.interface.is_some() || (self.reads_stdin() && !file::stdin_is_a_file())
    }

    fn reads_stdin(&self) -> bool {
        self.files.iter().any(|f| f == "-")
    }

    fn source(&self) -> Source<'_> {
        let Some(interface) = &self.interface else {
            return Source::Files(&self.files);
        };
        let mut opts = LiveOptions::new(interface);
        opts.promiscuous = !self.no_promiscuous;
        if let Some(snaplen) = self.snaplen {
            opts.snaplen = snaplen;
        }
        if let Some(kib) = self.buffer_kib {
            opts.buffer_bytes = kib.saturating_mul(1024);
        }
        opts.filter = (!self.filter.is_empty()).then(|| self.filter.join(" "));
        opts.write_to = self.write_to.clone();
        Source::Live(opts)
    }
}

/// What reading a source leaves besides the packets.
struct SourceEnd {
    container: ContainerCounters,
    /// libpcap's counts, for a live capture.
    live: Option<LiveStats>,
    /// Why reading stopped early, if it did.
    fault: Option<String>,
}

/// Called about once a second during a live capture, with libpcap's counts so far. It may
/// ask reading to stop, and gives the numbers for the status line that only the consumer of
/// the packets knows: connections seen and connections open now.
type OnTick<'a> = dyn FnMut(&LiveStats) -> (ControlFlow<()>, Option<(u64, usize)>) + 'a;

/// Reads every packet of the input (files in order, or a live capture until Ctrl-C or
/// SIGTERM) and hands each to `on_packet`.
fn read_source(
    input: &InputArgs,
    on_packet: &mut PacketFn<'_>,
    on_tick: &mut OnTick<'_>,
) -> Result<SourceEnd, Failure> {
    let mut container = ContainerCounters::default();
    match input.source() {
        Source::Files(files) => {
            let result = file::read_files(files, &mut container, on_packet);
            Ok(SourceEnd {
                container,
                live: None,
                fault: result.err().map(|e| e.to_string()),
            })
        }
        Source::Live(opts) => {
            let (stats, fault) = capture_live(&opts, input.quiet, on_packet, on_tick)?;
            Ok(SourceEnd {
                container,
                live: Some(stats),
                fault,
            })
        }
    }
}

fn input_error(message: String) -> Failure {
    Failure {
        status: exit::INPUT_ERROR,
        message,
    }
}

/// Opens the interface, sets the filter in the kernel and reads until a stop. A fault
/// after the start ends reading like a fault in a file: what was read is still reported.
fn capture_live(
    opts: &LiveOptions,
    quiet: bool,
    on_packet: &mut PacketFn<'_>,
    on_tick: &mut OnTick<'_>,
) -> Result<(LiveStats, Option<String>), Failure> {
    // A typo in the filter is a usage error even without the privilege to capture.
    if let Some(expression) = &opts.filter {
        PacketFilter::new(expression).map_err(usage)?;
    }
    let control = LiveControl::new();
    control
        .stop_on_signals()
        .map_err(|e| input_error(format!("cannot handle SIGINT and SIGTERM: {e}")))?;
    let mut capture = LiveCapture::open(opts).map_err(|e| input_error(e.to_string()))?;
    if let Some(expression) = &opts.filter {
        capture.set_filter(expression).map_err(usage)?;
    }
    if !quiet {
        eprintln!("tcpstate: {}", capture.describe());
    }
    let mut status = StatusLine::new(quiet);
    let ticker = control.clone();
    let result = capture.run(&control, on_packet, &mut |stats| {
        let (flow, numbers) = on_tick(stats);
        if flow.is_break() {
            ticker.request_stop();
        }
        status.update(stats, numbers)
    });
    status.clear();
    Ok(match result {
        Ok(stats) => (stats, None),
        Err(e) => (capture.stats(), Some(e.to_string())),
    })
}

/// While capturing: on a terminal, one status line on stderr rewritten each second; when
/// stderr is not a terminal, a line each time more packets have been dropped.
struct StatusLine {
    quiet: bool,
    terminal: bool,
    shown: bool,
    drops_reported: u64,
}

impl StatusLine {
    fn new(quiet: bool) -> StatusLine {
        StatusLine {
            quiet,
            terminal: io::stderr().is_terminal(),
            shown: false,
            drops_reported: 0,
        }
    }

    fn update(&mut self, stats: &LiveStats, numbers: Option<(u64, usize)>) {
        if self.quiet {
            return;
        }
        let mut err = io::stderr().lock();
        if self.terminal {
            let conns = numbers
                .map(|(seen, open)| format!(", {seen} connections, {open} open"))
                .unwrap_or_default();
            let _ = write!(
                err,
                "\r\x1b[Ktcpstate: {} packets{conns}, {} dropped",
                stats.captured,
                stats.dropped()
            );
            let _ = err.flush();
            self.shown = true;
        } else if stats.dropped() > self.drops_reported {
            let _ = writeln!(
                err,
                "tcpstate: warning: {} packets dropped so far (kernel {}, interface {})",
                stats.dropped(),
                stats.dropped_by_kernel,
                stats.dropped_by_interface
            );
            self.drops_reported = stats.dropped();
        }
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

/// What to keep beyond the connection records.
#[derive(Default)]
struct Keep<'a> {
    /// Report as of this time (`--at`).
    stop_at: Option<&'a str>,
    transitions: bool,
    watch: Option<Watch>,
}

/// What a command does while packets flow, besides tracking them: write records as they
/// end, print counts each interval, feed the top view. Each hook may ask reading to stop
/// (the reader of the output went away, the view was closed).
trait Watcher {
    /// Before a packet at `ts` goes in (interval boundaries are crossed here).
    fn before_packet(&mut self, _engine: &mut Engine, _ts: Ts) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// After each packet.
    fn after_packet(&mut self, _engine: &mut Engine) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// About once a second of wall time during a live capture, packets or not.
    fn on_tick(&mut self, _engine: &mut Engine, _wall: Ts, _stats: &LiveStats) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Once, after the last packet and before the engine finishes.
    fn at_end(&mut self, _engine: &mut Engine) {}
    /// The records still held when the engine finishes, one at a time in id order. A watcher
    /// that writes them returns `None`; what it returns is kept in `Outcome::connections`.
    fn at_finish(&mut self, conn: Connection) -> Option<Connection> {
        Some(conn)
    }

    /// Whether `at_finish` keeps every record (as this default does): the engine then hands
    /// them over in its own list, sorted where it lies, and never copies the table.
    fn keeps_every_record(&self) -> bool {
        true
    }
}

/// Commands that report only at the end.
struct AtTheEnd;
impl Watcher for AtTheEnd {}

/// `explain`: keeps the records of the watched connections only, as they end.
struct KeepWatched {
    watch: Watch,
    ended: Vec<Connection>,
}

impl Watcher for KeepWatched {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if engine.has_ended() {
            let watch = self.watch;
            let ended = engine.take_ended();
            self.ended
                .extend(ended.into_iter().filter(|c| watch.selects_record(c)));
        }
        ControlFlow::Continue(())
    }
    fn at_end(&mut self, engine: &mut Engine) {
        let _ = self.after_packet(engine);
    }
    fn at_finish(&mut self, conn: Connection) -> Option<Connection> {
        self.watch.selects_record(&conn).then_some(conn)
    }
    fn keeps_every_record(&self) -> bool {
        false
    }
}

/// What adds each record up as it ends: `summary` and `diagnose` keep no record.
trait AddRecord {
    fn add(&mut self, conn: &Connection);
}

impl AddRecord for summary::SummaryBuilder {
    fn add(&mut self, conn: &Connection) {
        summary::SummaryBuilder::add(self, conn);
    }
}

impl AddRecord for findings::DiagnoseBuilder {
    fn add(&mut self, conn: &Connection) {
        findings::DiagnoseBuilder::add(self, conn);
    }
}

/// Hands every record to a builder as it ends (on one thread or merged from several), and
/// keeps none. A file read on one thread adds them on a thread of their own (`Adder`):
/// the adding was a tenth of the engine thread's work.
enum AddEach<B: AddRecord + Send + 'static> {
    Here(B),
    Behind {
        records: RecordsBehind<Adder<B>, io::Sink>,
        /// Where the builder comes back once the last record is added.
        back: Arc<Mutex<Option<B>>>,
    },
}

impl<B: AddRecord + Send + 'static> AddEach<B> {
    /// Live capture, a pipe on standard input and `--threads` add here (a live capture's
    /// records come slowly; the threads' merge has its own thread).
    fn new(make: impl Fn() -> B, input: &InputArgs) -> AddEach<B> {
        if input.streams_in() || input.threads > 1 {
            return AddEach::Here(make());
        }
        let back = Arc::new(Mutex::new(None));
        let adder = Adder {
            builder: Some(make()),
            back: Arc::clone(&back),
        };
        match RecordsBehind::new(adder, io::sink()) {
            Ok(records) => AddEach::Behind { records, back },
            // No thread can be started: added here.
            Err(_) => AddEach::Here(make()),
        }
    }

    /// The builder, every record added.
    fn into_builder(self) -> Result<B, Failure> {
        match self {
            AddEach::Here(builder) => Ok(builder),
            AddEach::Behind { records, back } => {
                records
                    .finish(Ts::default(), None)
                    .map_err(|e| input_error(format!("adding up the records: {e}")))?;
                Adder::take_back(&back)
                    .ok_or_else(|| input_error("adding up the records: no result".into()))
            }
        }
    }
}

/// Adds the records handed to it (`Rows` on a `RecordsBehind` thread, writing nothing).
struct Adder<B> {
    builder: Option<B>,
    back: Arc<Mutex<Option<B>>>,
}

impl<B> Adder<B> {
    fn take_back(back: &Mutex<Option<B>>) -> Option<B> {
        back.lock().ok().and_then(|mut b| b.take())
    }
}

impl<B: AddRecord + Send + 'static> Rows for Adder<B> {
    fn write(
        &mut self,
        _out: &mut dyn Write,
        conns: &[Connection],
        _end: Ts,
        _start: Option<Ts>,
    ) -> io::Result<()> {
        if let Some(builder) = &mut self.builder {
            for c in conns {
                builder.add(c);
            }
        }
        Ok(())
    }
    /// After the last record: the builder goes back.
    fn tail(&mut self, _out: &mut dyn Write) -> io::Result<()> {
        if let Ok(mut back) = self.back.lock() {
            *back = self.builder.take();
        }
        Ok(())
    }
}

impl<B: AddRecord + Send + 'static> Watcher for AddEach<B> {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        match self {
            AddEach::Here(builder) => {
                if engine.has_ended() {
                    for c in engine.take_ended() {
                        builder.add(&c);
                    }
                }
                ControlFlow::Continue(())
            }
            AddEach::Behind { records, .. } => records.after_packet(engine, None),
        }
    }
    fn at_end(&mut self, engine: &mut Engine) {
        // What ended with the last packet, if reading stopped before `after_packet` ran
        // (and what waits in the engine for a batch).
        let _ = self.after_packet(engine);
        if let AddEach::Behind { records, .. } = self {
            records.at_end(engine, None);
        }
    }
    fn at_finish(&mut self, conn: Connection) -> Option<Connection> {
        match self {
            AddEach::Here(builder) => builder.add(&conn),
            AddEach::Behind { records, .. } => records.finished(conn, Ts::default(), None),
        }
        None
    }
    fn keeps_every_record(&self) -> bool {
        false
    }
}

impl<B: AddRecord + Send + 'static> MergedSink for AddEach<B> {
    fn ended(&mut self, conns: &mut Vec<Connection>, now: Ts, _: Option<Ts>) -> ControlFlow<()> {
        match self {
            AddEach::Here(builder) => {
                for c in conns.drain(..) {
                    builder.add(&c);
                }
                ControlFlow::Continue(())
            }
            AddEach::Behind { records, .. } => records.taken(conns, now, None),
        }
    }
    fn at_end(&mut self, _end: Option<Ts>, _first: Option<Ts>) {}
    fn finished(&mut self, conn: Connection) -> Option<Connection> {
        Watcher::at_finish(self, conn)
    }
}

fn wall_clock() -> Ts {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ts::from_parts(d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

/// The engine settings from the command line.
fn engine_config(input: &InputArgs) -> Result<EngineConfig, Failure> {
    if !(input.time_wait.is_finite() && input.time_wait >= 0.0) {
        return Err(usage(format!(
            "--time-wait {}: expected seconds >= 0",
            input.time_wait
        )));
    }
    let mut idle = IdleTimeouts::default();
    for spec in &input.idle_timeout {
        let bad = || {
            usage(format!(
                "--idle-timeout '{spec}': expected CLASS=SECS, CLASS one of handshake, established, closing"
            ))
        };
        let (class, secs) = spec.split_once('=').ok_or_else(bad)?;
        let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
        let secs = seconds_arg("idle-timeout", secs)?;
        match class.trim() {
            "handshake" => idle.handshake = secs,
            "established" => idle.established = secs,
            "closing" => idle.closing = secs,
            _ => return Err(bad()),
        }
    }
    Ok(EngineConfig {
        time_wait: Dur::from_secs_f64(input.time_wait),
        // 0 turns the limit off.
        max_conns: Some(input.max_conns).filter(|n| *n > 0),
        idle,
    })
}

/// `--at`: an absolute time, known before reading, or one relative to the first packet
/// (checked now, resolved when that packet comes).
fn parse_stop_at(stop_at: Option<&str>) -> Result<(Option<Ts>, Option<String>), Failure> {
    let Some(at) = stop_at else {
        return Ok((None, None));
    };
    if at.trim_start().starts_with('+') {
        parse_time_arg(at, Some(Ts(0))).map_err(usage)?;
        Ok((None, Some(at.to_string())))
    } else {
        Ok((Some(parse_time_arg(at, None).map_err(usage)?), None))
    }
}

/// `run_engine` over `--threads` workers, for the reports that take only connection records
/// (no transitions, no watched packets): the merged records go to `sink`.
fn run_sharded(
    input: &InputArgs,
    stop_at: Option<&str>,
    sink: &mut (dyn MergedSink + Send),
) -> Result<(Outcome, SourceEnd), Failure> {
    if input.streams_in() {
        return Err(usage(
            "--threads reads files: not a live capture or a pipe on standard input".into(),
        ));
    }
    let filter = compile_filter(input)?;
    let cfg = engine_config(input)?;
    let (stop, mut relative) = parse_stop_at(stop_at)?;
    let front = Front::new(filter, stop);
    let threads = usize::from(input.threads);
    let mut container = ContainerCounters::default();
    let (result, outcome) = sharded::run(cfg, front, threads, sink, |reader| {
        file::read_files(&input.files, &mut container, &mut |pkt| {
            if let Some(rel) = relative.take()
                && let Ok(at) = parse_time_arg(&rel, Some(pkt.ts))
            {
                reader.front.set_stop_after(at);
            }
            reader.process(pkt)
        })
    })
    .map_err(input_error)?;
    let end = SourceEnd {
        container,
        live: None,
        fault: result.err().map(|e| e.to_string()),
    };
    Ok((outcome, end))
}

/// `run_engine` on one thread, or `run_sharded` over `--threads`, for a watcher that works
/// both ways (same output).
fn run_threaded<W: Watcher + MergedSink + Send>(
    input: &InputArgs,
    stop_at: Option<&str>,
    watcher: &mut W,
) -> Result<(Outcome, SourceEnd), Failure> {
    if input.threads > 1 {
        run_sharded(input, stop_at, watcher)
    } else {
        let keep = Keep {
            stop_at,
            ..Keep::default()
        };
        run_engine(input, keep, watcher)
    }
}

/// Runs the engine over the input, on `--threads` threads for the reports that allow it
/// (those that keep every record to the end, here).
fn run_records(input: &InputArgs, stop_at: Option<&str>) -> Result<(Outcome, SourceEnd), Failure> {
    if input.threads <= 1 {
        let keep = Keep {
            stop_at,
            ..Keep::default()
        };
        return run_engine(input, keep, &mut AtTheEnd);
    }
    let mut all = KeepAll::default();
    let (mut outcome, end) = run_sharded(input, stop_at, &mut all)?;
    // As one thread hands them over: every record, in id order.
    all.conns.append(&mut outcome.connections);
    crate::flow::sort_large_by_key(&mut all.conns, |c| c.id);
    outcome.connections = all.conns;
    Ok((outcome, end))
}

/// `states` without `--all`: every record's listener is noted as it ends, and only the
/// records that still have a socket are kept (memory follows the sockets reported, not the
/// connections seen).
struct StatesKeep {
    sel: states::Selection,
    listeners: states::Listeners,
    kept: Vec<Connection>,
}

impl StatesKeep {
    fn take(&mut self, conn: Connection) -> Option<Connection> {
        self.listeners.add(&conn);
        states::has_rows(&conn, &self.sel).then_some(conn)
    }
}

impl Watcher for StatesKeep {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if engine.has_ended() {
            for conn in engine.take_ended() {
                if let Some(conn) = self.take(conn) {
                    self.kept.push(conn);
                }
            }
        }
        ControlFlow::Continue(())
    }
    fn at_end(&mut self, engine: &mut Engine) {
        let _ = self.after_packet(engine);
    }
    fn at_finish(&mut self, conn: Connection) -> Option<Connection> {
        self.take(conn)
    }
    fn keeps_every_record(&self) -> bool {
        false
    }
}

impl MergedSink for StatesKeep {
    fn ended(&mut self, conns: &mut Vec<Connection>, _: Ts, _: Option<Ts>) -> ControlFlow<()> {
        for conn in conns.drain(..) {
            if let Some(conn) = self.take(conn) {
                self.kept.push(conn);
            }
        }
        ControlFlow::Continue(())
    }
    fn at_end(&mut self, _end: Option<Ts>, _first: Option<Ts>) {}
    fn finished(&mut self, conn: Connection) -> Option<Connection> {
        self.take(conn)
    }
}

/// Keeps every merged record.
#[derive(Default)]
struct KeepAll {
    conns: Vec<Connection>,
}

impl MergedSink for KeepAll {
    fn ended(&mut self, conns: &mut Vec<Connection>, _: Ts, _: Option<Ts>) -> ControlFlow<()> {
        self.conns.append(conns);
        ControlFlow::Continue(())
    }
    fn at_end(&mut self, _end: Option<Ts>, _first: Option<Ts>) {}
    fn finished(&mut self, conn: Connection) -> Option<Connection> {
        Some(conn)
    }
}

/// Runs the engine over the input. Returns the outcome and what reading left (counters, and
/// if it stopped early, why).
fn run_engine(
    input: &InputArgs,
    keep: Keep<'_>,
    watcher: &mut dyn Watcher,
) -> Result<(Outcome, SourceEnd), Failure> {
    let filter = compile_filter(input)?;
    let cfg = engine_config(input)?;
    let (stop, mut relative) = parse_stop_at(keep.stop_at)?;
    // Shared by the packet callback and the live tick, which run one after the other.
    let engine = RefCell::new(
        Engine::new(cfg)
            .with_filter(filter)
            .stop_after(stop)
            .record_transitions(keep.transitions)
            .watch(keep.watch),
    );
    let watcher = RefCell::new(watcher);
    let end = read_source(
        input,
        &mut |pkt| {
            let mut engine = engine.borrow_mut();
            let mut watcher = watcher.borrow_mut();
            if let Some(rel) = relative.take()
                && let Ok(at) = parse_time_arg(&rel, Some(pkt.ts))
            {
                engine.set_stop_after(at);
            }
            watcher.before_packet(&mut engine, pkt.ts)?;
            engine.process(pkt);
            watcher.after_packet(&mut engine)
        },
        &mut |stats| {
            let mut engine = engine.borrow_mut();
            let flow = watcher
                .borrow_mut()
                .on_tick(&mut engine, wall_clock(), stats);
            let numbers = Some((
                engine.flow_counters().connections,
                engine.live_connections(),
            ));
            (flow, numbers)
        },
    )?;
    let mut engine = engine.into_inner();
    let watcher = watcher.into_inner();
    watcher.at_end(&mut engine);
    if watcher.keeps_every_record() {
        return Ok((engine.finish(), end));
    }
    // Sized once, when the first record is kept: growing by doubling would hold the records
    // up to three times over.
    let held = engine.held_connections();
    let mut kept = Vec::new();
    let mut outcome = engine.finish_each(|conn| {
        if let Some(conn) = watcher.at_finish(conn) {
            kept.reserve_exact(held.saturating_sub(kept.len()));
            kept.push(conn);
        }
    });
    outcome.connections = kept;
    Ok((outcome, end))
}

/// Standard output for records written while reading: buffered, and flushed after every
/// record when live, so `| jq` or a log shipper sees each at once. Otherwise (a file read)
/// written on a thread of its own, so that the copies into the kernel overlap the work.
struct Stream {
    out: Out,
    flush_each: bool,
    /// Writing failed: the reader went away (broken pipe), or another error to report.
    failed: Option<io::Error>,
}

enum Out {
    Direct(BufWriter<io::Stdout>),
    Behind(WriteBehind),
}

impl Out {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Out::Direct(w) => w,
            Out::Behind(w) => w,
        }
    }
}

impl Stream {
    fn new(flush_each: bool) -> Stream {
        let direct = || Out::Direct(BufWriter::with_capacity(1 << 16, io::stdout()));
        let out = if flush_each {
            direct()
        } else {
            // Written directly if no thread can be started.
            WriteBehind::new(io::stdout()).map_or_else(|_| direct(), Out::Behind)
        };
        Stream {
            out,
            flush_each,
            failed: None,
        }
    }

    /// Runs a write; a failure stops reading.
    fn write(&mut self, f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> ControlFlow<()> {
        if self.failed.is_some() {
            return ControlFlow::Break(());
        }
        let out = self.out.writer();
        let mut res = f(out);
        if res.is_ok() && self.flush_each {
            res = out.flush();
        }
        match res {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.failed = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    /// Flushes and says how writing went.
    fn finish(mut self) -> Result<(), Failure> {
        let res = match (self.failed.take(), &mut self.out) {
            (Some(e), _) => Err(e),
            (None, Out::Direct(w)) => w.flush(),
            (None, Out::Behind(w)) => w.finish(),
        };
        output_status(res)
    }
}

/// How writing the output went: a broken pipe (the reader went away, `| head`) ends
/// quietly, as in ripgrep.
fn output_status(res: io::Result<()>) -> Result<(), Failure> {
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure {
            status: exit::INPUT_ERROR,
            message: format!("writing output: {e}"),
        }),
    }
}

/// `conns`: each record is written when it ends (superseded, over for 2MSL, expired,
/// evicted), in the order they end; those still open at the end follow, in id order. Memory
/// then holds only the connections alive at once. The text table holds its first rows to
/// size its columns (all of them, in id order, when there are few: `TableStream`).
struct ConnsStream {
    out: ConnsOut,
    /// The capture's first packet time (the text table's START is relative to it).
    start: Option<Ts>,
    /// The end of the capture (or `--at`), once the input is over.
    end: Ts,
}

/// Where `conns`' records go.
enum ConnsOut {
    /// Formatted and written here, each record as it ends (live, or a pipe in: each written
    /// at once).
    Here {
        stream: Stream,
        rows: ConnsRows,
        /// Records handed over at the finish, written a batch at a time.
        batch: Vec<Connection>,
    },
    /// Formatted and written on a thread of their own, a batch at a time (a file read).
    Behind(RecordsBehind<ConnsRows, io::Stdout>),
}

/// Formats `conns`' records.
struct ConnsRows {
    format: ConnsFormat,
    table: conns::TableStream,
    header_written: bool,
    /// JSON lines being made, in one buffer for the run.
    json: report::json::RowWriter,
    /// Keep JSON lines across calls until a write's worth has built up (rows written on a
    /// thread of their own, where nothing waits for them); else each call writes its own.
    hold: bool,
}

impl ConnsRows {
    /// JSON written at once when held: as large as the rows thread's `BufWriter`, which
    /// passes such writes straight through rather than copying them in.
    const JSON_WRITE: usize = report::records_behind::OUT_BUFFER;

    fn new(format: ConnsFormat, hold: bool) -> ConnsRows {
        ConnsRows {
            format,
            table: conns::TableStream::new(),
            header_written: false,
            json: report::json::RowWriter::default(),
            hold,
        }
    }
}

impl Rows for ConnsRows {
    fn write(
        &mut self,
        out: &mut dyn Write,
        conns: &[Connection],
        end: Ts,
        start: Option<Ts>,
    ) -> io::Result<()> {
        if conns.is_empty() {
            return Ok(());
        }
        let header = !self.header_written;
        self.header_written = true;
        match self.format {
            ConnsFormat::Csv => {
                let rows: Vec<_> = conns.iter().map(|c| summarize(c, end)).collect();
                report::write_csv_rows(out, &rows, header)
            }
            ConnsFormat::Text => {
                for c in conns {
                    self.table.row(out, c, end, start)?;
                }
                Ok(())
            }
            _ => {
                self.json.record_rows(out, conns, end, Self::JSON_WRITE)?;
                if self.hold {
                    return Ok(());
                }
                self.json.flush(out)
            }
        }
    }

    /// After the last record: what the table still holds, or a CSV header with no rows.
    fn tail(&mut self, out: &mut dyn Write) -> io::Result<()> {
        match self.format {
            ConnsFormat::Text => self.table.finish(out),
            ConnsFormat::Csv if !self.header_written => {
                let none: [crate::analysis::ConnSummary; 0] = [];
                report::write_csv_rows(out, &none, true)
            }
            ConnsFormat::Csv => Ok(()),
            _ => self.json.flush(out),
        }
    }

    fn release(&mut self, out: &mut dyn Write) -> io::Result<()> {
        self.json.flush(out)
    }
}

impl ConnsStream {
    /// Records written together at the finish: enough for large writes, few enough to hold.
    const BATCH: usize = 256;

    fn new(format: ConnsFormat, streams_in: bool) -> ConnsStream {
        let here = || ConnsOut::Here {
            stream: Stream::new(streams_in),
            rows: ConnsRows::new(format, false),
            batch: Vec::new(),
        };
        let out = if streams_in {
            here()
        } else {
            // Written here if no thread can be started.
            RecordsBehind::new(ConnsRows::new(format, true), io::stdout())
                .map_or_else(|_| here(), ConnsOut::Behind)
        };
        ConnsStream {
            out,
            start: None,
            end: Ts::default(),
        }
    }

    /// Writes the records that have ended. Out of line: after most packets none have, and
    /// the per-packet check stays a few instructions with no stack frame to set up.
    #[inline(never)]
    fn write_ended(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        let now = engine.now().unwrap_or_default();
        let start = self.start;
        let ConnsOut::Here {
            stream,
            rows,
            batch,
        } = &mut self.out
        else {
            return ControlFlow::Continue(());
        };
        // The batch's allocation serves as the spare (it is empty until the finish).
        let mut ended = std::mem::take(batch);
        engine.take_ended_into(&mut ended);
        let flow = stream.write(|out| rows.write(out, &ended, now, start));
        ended.clear();
        *batch = ended;
        flow
    }

    /// Writes what is left, waits until it is written, and says how writing went.
    fn finish(self) -> Result<(), Failure> {
        let (start, end) = (self.start, self.end);
        match self.out {
            ConnsOut::Here {
                mut stream,
                mut rows,
                batch,
            } => {
                let _ = stream.write(|out| rows.write(out, &batch, end, start));
                let _ = stream.write(|out| rows.tail(out));
                stream.finish()
            }
            ConnsOut::Behind(behind) => output_status(behind.finish(end, start)),
        }
    }
}

impl MergedSink for ConnsStream {
    fn ended(
        &mut self,
        conns: &mut Vec<Connection>,
        now: Ts,
        first: Option<Ts>,
    ) -> ControlFlow<()> {
        if self.start.is_none() {
            self.start = first;
        }
        let start = self.start;
        match &mut self.out {
            ConnsOut::Here { stream, rows, .. } => {
                let flow = stream.write(|out| rows.write(out, conns, now, start));
                conns.clear();
                flow
            }
            ConnsOut::Behind(behind) => behind.taken(conns, now, start),
        }
    }
    fn at_end(&mut self, end: Option<Ts>, first: Option<Ts>) {
        if self.start.is_none() {
            self.start = first;
        }
        self.end = end.unwrap_or_default();
    }
    fn finished(&mut self, conn: Connection) -> Option<Connection> {
        self.at_finish(conn)
    }
}

impl Watcher for ConnsStream {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if self.start.is_none() {
            self.start = engine.first_time();
        }
        match &mut self.out {
            ConnsOut::Behind(behind) => behind.after_packet(engine, self.start),
            ConnsOut::Here { .. } if engine.has_ended() => self.write_ended(engine),
            ConnsOut::Here { .. } => ControlFlow::Continue(()),
        }
    }
    fn on_tick(&mut self, engine: &mut Engine, _wall: Ts, _stats: &LiveStats) -> ControlFlow<()> {
        self.after_packet(engine)
    }
    fn at_end(&mut self, engine: &mut Engine) {
        // What ended with the last packet (and what waits in the engine for a batch), then
        // the rest in id order from `at_finish`.
        let _ = self.after_packet(engine);
        if let ConnsOut::Behind(behind) = &mut self.out {
            behind.at_end(engine, self.start);
        }
        self.end = engine.end_time().unwrap_or_default();
    }
    fn at_finish(&mut self, conn: Connection) -> Option<Connection> {
        let (start, end) = (self.start, self.end);
        match &mut self.out {
            ConnsOut::Here {
                stream,
                rows,
                batch,
            } => {
                batch.push(conn);
                if batch.len() >= Self::BATCH {
                    let _ = stream.write(|out| rows.write(out, batch, end, start));
                    batch.clear();
                }
            }
            ConnsOut::Behind(behind) => behind.finished(conn, end, start),
        }
        None
    }
    fn keeps_every_record(&self) -> bool {
        false
    }
}

/// `events` while packets arrive over time (live, or a pipe): each transition is written
/// as soon as the engine finds it (a timer's when it notices the timer ran out, with the time
/// it ran out), so lines can be slightly out of time order; the rest come at the end.
struct EventsStream {
    stream: Stream,
    format: Format,
    first_ts: Option<Ts>,
    csv_header_written: bool,
    /// Records taken from the engine to look up the transitions of ended connections.
    ended: Vec<Connection>,
}

impl EventsStream {
    fn write(&mut self, rows: &[events::EventRow]) -> ControlFlow<()> {
        if rows.is_empty() {
            return ControlFlow::Continue(());
        }
        let (format, header, start) = (self.format, !self.csv_header_written, self.first_ts);
        self.csv_header_written = true;
        self.stream.write(|out| match format {
            Format::Text => events::write_lines(out, rows, start, header),
            Format::Json => report::write_json_lines(out, rows),
            Format::Csv => report::write_csv_rows(out, rows, header),
        })
    }
}

impl Watcher for EventsStream {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if self.first_ts.is_none() {
            self.first_ts = engine.now();
        }
        let transitions = engine.take_transitions();
        if transitions.is_empty() {
            return ControlFlow::Continue(());
        }
        self.ended = ended_by_id(engine);
        let rows: Vec<_> = transitions
            .iter()
            .filter_map(|t| {
                let conn = engine
                    .find(t.key)
                    .filter(|c| c.id == t.conn_id)
                    .or_else(|| find_by_id(&self.ended, t.conn_id))?;
                Some(events::event_row(t, conn))
            })
            .collect();
        self.write(&rows)
    }
    fn on_tick(&mut self, engine: &mut Engine, _wall: Ts, _stats: &LiveStats) -> ControlFlow<()> {
        self.after_packet(engine)
    }
}

/// The records that ended since the last look, in id order: an eviction or a sweep ends
/// thousands at once, and each of their transitions looks its record up.
fn ended_by_id(engine: &mut Engine) -> Vec<Connection> {
    if !engine.has_ended() {
        return Vec::new();
    }
    let mut ended = engine.take_ended();
    crate::flow::sort_large_by_key(&mut ended, |c| c.id);
    ended
}

/// The record numbered `id` in `conns` (in id order).
fn find_by_id(conns: &[Connection], id: u64) -> Option<&Connection> {
    let i = conns.binary_search_by_key(&id, |c| c.id).ok()?;
    conns.get(i)
}

/// `events` from files, first of two reads: what the streamed second read needs to write
/// the same rows as if every transition were held to the end. Per connection (by id, from
/// 1 as one thread numbers them), its addresses and the numbers its sequence numbers count
/// from once it has ended (`None`: dropped without a record, so its transitions are not
/// reported), and the widths of its rows in the text table, which count once it has ended.
#[derive(Default)]
struct EventsFirstRead {
    /// The first packet's time (rows count from it).
    first: Option<f64>,
    conns: Vec<EventsConn>,
    widths: events::TextWidths,
    /// Where a row is made to measure its cells.
    scratch: Vec<u8>,
}

/// 28 bytes a connection of the capture: the addresses are in each transition's key.
#[derive(Clone, Copy, Default)]
struct EventsConn {
    /// Set when the connection ended with a record (an evicted attempt is not reported).
    ended: Option<EndFacts>,
    widths: events::TextWidths,
}

#[derive(Clone, Copy)]
struct EndFacts {
    rel: Relative,
    /// The client is the lower address:port of the key.
    client_first: bool,
}

impl EventsFirstRead {
    fn entry(&mut self, id: u64) -> Option<&mut EventsConn> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        if self.conns.len() <= i {
            self.conns.resize(i + 1, EventsConn::default());
        }
        self.conns.get_mut(i)
    }

    fn ended(&mut self, conn: &Connection) {
        let Some(entry) = self.entry(conn.id) else {
            return;
        };
        entry.ended = Some(EndFacts {
            rel: Relative::of(conn),
            client_first: conn.key().ends().0 == conn.end(Side::Client).addr,
        });
        let widths = entry.widths;
        self.widths.merge(&widths);
    }

    /// Where row times count from: the first packet (0 with none, as the one-read path).
    fn t0(&self) -> f64 {
        self.first.unwrap_or(0.0)
    }

    /// What the row of `t` needs of its connection, as of the connection's end.
    fn facts(&self, t: &Transition) -> Option<events::ConnFacts> {
        let i = usize::try_from(t.conn_id).ok()?.checked_sub(1)?;
        let end = self.conns.get(i)?.ended?;
        let (low, high) = t.key.ends();
        let (client, server) = if end.client_first {
            (low, high)
        } else {
            (high, low)
        };
        Some(events::ConnFacts {
            client,
            server,
            rel: end.rel,
        })
    }
}

impl Watcher for EventsFirstRead {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if self.first.is_none() {
            self.first = engine.first_time().map(report::secs);
        }
        let transitions = engine.take_transitions();
        let ended = ended_by_id(engine);
        // A transition's record is live, or ended with this packet.
        for t in &transitions {
            let facts = engine
                .find(t.key)
                .filter(|c| c.id == t.conn_id)
                .or_else(|| find_by_id(&ended, t.conn_id))
                .map(events::ConnFacts::of);
            let t0 = self.t0();
            let mut scratch = std::mem::take(&mut self.scratch);
            if let Some(facts) = facts
                && let Some(entry) = self.entry(t.conn_id)
            {
                entry.widths.add(t, &facts, t0, &mut scratch);
            }
            self.scratch = scratch;
        }
        for c in &ended {
            self.ended(c);
        }
        ControlFlow::Continue(())
    }
    fn at_end(&mut self, engine: &mut Engine) {
        let _ = self.after_packet(engine);
    }
    fn at_finish(&mut self, conn: Connection) -> Option<Connection> {
        self.ended(&conn);
        None
    }
    fn keeps_every_record(&self) -> bool {
        false
    }
}

/// `events` from files, second read: transitions written in time order as reading goes
/// on. Those found are held until no transition still to be found can come before them
/// (`Engine::transition_watermark_ahead`), then sorted and written.
struct EventsFileStream<'a> {
    stream: Stream,
    format: Format,
    first: &'a EventsFirstRead,
    held: Vec<Transition>,
    /// Timer transitions taken ahead of the engine (a bit per side, by connection id): the
    /// engine's own, when the timers run, are dropped.
    ahead: HashMap<u64, u8>,
    /// Held transitions that make the next look for what can be written worth it.
    write_at: usize,
    write_at_least: usize,
    csv_header_written: bool,
    line: Vec<u8>,
    json: report::json::RowWriter,
}

impl EventsFileStream<'_> {
    fn new(format: Format, first: &EventsFirstRead, write_every: usize) -> EventsFileStream<'_> {
        EventsFileStream {
            stream: Stream::new(false),
            format,
            first,
            held: Vec::new(),
            ahead: HashMap::new(),
            write_at: write_every,
            write_at_least: write_every,
            csv_header_written: false,
            line: Vec::with_capacity(1 << 16),
            json: report::json::RowWriter::default(),
        }
    }

    /// Holds transitions the engine found, without the timers' taken ahead.
    fn hold(&mut self, found: Vec<Transition>) {
        for t in found {
            let timer =
                t.packet == 0 && matches!(t.event, Event::TimeWaitExpired | Event::HandshakeGaveUp);
            if timer && let Some(sides) = self.ahead.get_mut(&t.conn_id) {
                let bit = 1 << t.side.index();
                if *sides & bit != 0 {
                    *sides &= !bit;
                    if *sides == 0 {
                        self.ahead.remove(&t.conn_id);
                    }
                    continue;
                }
            }
            self.held.push(t);
        }
    }

    /// Writes the held transitions earlier than `until` (all, with `None`), in time order.
    fn write_before(&mut self, until: Option<Ts>) -> ControlFlow<()> {
        // Stable: transitions of one time, packet and connection stay in the order found.
        self.held.sort_by_key(|t| (t.ts, t.packet, t.conn_id));
        let cut = until.map_or(self.held.len(), |w| self.held.partition_point(|t| t.ts < w));
        let mut flow = ControlFlow::Continue(());
        let mut rows = Vec::new();
        let mut held = std::mem::take(&mut self.held);
        for t in &held[..cut] {
            // Not reported: an attempt evicted under --max-conns, which has no record.
            let Some(facts) = self.first.facts(t) else {
                continue;
            };
            match self.format {
                Format::Text => {
                    self.first
                        .widths
                        .push_line(&mut self.line, t, &facts, self.first.t0())
                }
                Format::Json => self.json.event_row(t, &facts),
                Format::Csv => rows.push(events::event_row_of(t, &facts)),
            }
            if self.line.len() + self.json.bytes().len() >= 1 << 16 || rows.len() >= 4096 {
                flow = self.write_out(&mut rows);
                if flow.is_break() {
                    break;
                }
            }
        }
        // What is left: the CSV rows are this call's own (a CSV file used to lose them when
        // the last transitions held were of an evicted attempt).
        if flow.is_continue() {
            flow = self.write_out(&mut rows);
        }
        held.drain(..cut);
        self.held = held;
        // The next look when the held ones have doubled: each costs a pass over the live
        // records, and a watermark held back (by an idle deadline a sweep has not reached
        // yet) must not make it constant.
        self.write_at = self.write_at_least.max(2 * self.held.len());
        flow
    }

    fn write_out(&mut self, rows: &mut Vec<events::EventRow>) -> ControlFlow<()> {
        let (line, json, header) = (&mut self.line, &mut self.json, !self.csv_header_written);
        self.csv_header_written |= !rows.is_empty();
        let flow = self.stream.write(|out| {
            out.write_all(line)?;
            json.flush(out)?;
            if !rows.is_empty() {
                report::write_csv_rows(out, rows, header)?;
            }
            Ok(())
        });
        line.clear();
        rows.clear();
        flow
    }
}

impl Watcher for EventsFileStream<'_> {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if engine.has_transitions() {
            let found = engine.take_transitions();
            self.hold(found);
        }
        if engine.has_ended() {
            // Their facts came from the first read.
            drop(engine.take_ended());
        }
        // A look costs a pass over the live records: not more often than once per quarter of
        // them in transitions (except when tests ask for a look after every packet).
        let spread = if self.write_at_least > 1 {
            engine.live_connections() / 4
        } else {
            0
        };
        if self.held.len() < self.write_at.max(spread) {
            return ControlFlow::Continue(());
        }
        let mut early = Vec::new();
        let ahead = &self.ahead;
        let until = engine.transition_watermark_ahead(
            |id| ahead.get(&id).copied().unwrap_or(0),
            |t| early.push(t),
        );
        for t in early {
            *self.ahead.entry(t.conn_id).or_default() |= 1 << t.side.index();
            self.held.push(t);
        }
        self.write_before(until)
    }
    fn at_end(&mut self, engine: &mut Engine) {
        let _ = self.after_packet(engine);
    }
    fn at_finish(&mut self, _conn: Connection) -> Option<Connection> {
        None
    }
    fn keeps_every_record(&self) -> bool {
        false
    }
}

/// `states --interval`: the socket counts per state at every interval boundary of packet
/// time (live: of the wall clock too, so quiet links still get a line).
struct IntervalCounts {
    stream: Stream,
    every: Dur,
    next: Option<Ts>,
    format: Format,
    csv_header_written: bool,
    host: Option<states::HostFilter>,
    /// Lines not written in long stretches without packets, their counts unchanged.
    skipped: u64,
}

/// Boundaries between two packets past which only the lines whose counts can change are
/// written: a capture whose clock steps by years would otherwise write a line a second for
/// all of them (tens of gigabytes). 11.5 days of one-second lines, about 40 MB.
const QUIET_LINES: i64 = 1_000_000;

impl IntervalCounts {
    fn write_line(&mut self, counts: &states::IntervalCounts) -> ControlFlow<()> {
        let (format, header) = (self.format, !self.csv_header_written);
        self.csv_header_written = true;
        self.stream.write(|out| match format {
            Format::Text => states::write_interval_text(out, counts),
            Format::Json => report::write_json_lines(out, std::slice::from_ref(counts)),
            Format::Csv => states::write_interval_csv(out, counts, header),
        })
    }

    fn emit_until(&mut self, engine: &Engine, now: Ts) -> ControlFlow<()> {
        let Some(mut at) = self.next else {
            self.next = Some(now.plus(self.every));
            return ControlFlow::Continue(());
        };
        let every = self.every.0.max(1);
        let boundaries = now.0.saturating_sub(at.0) / every + 1;
        if at <= now && boundaries > QUIET_LINES {
            // The counts change only when a live record's timer runs out: the first line,
            // the first after each such time and the last before `now` are written.
            let first = at;
            let last = Ts(first.0 + (boundaries - 1) * every);
            let host = self.host;
            let mut lines: Vec<Ts> = engine
                .connections()
                .filter(|c| host.is_none_or(|h| c.ends.iter().any(|e| h.keeps(e.addr))))
                .flat_map(|c| c.timers(&engine.cfg).map(|(_, at)| at))
                .filter(|d| *d > first && *d <= last)
                // d > first: the next boundary at or after d.
                .map(|d| Ts(first.0 + (d.0 - first.0 - 1) / every * every + every))
                .chain([first, last])
                .collect();
            lines.sort_unstable();
            lines.dedup();
            self.skipped += (boundaries - lines.len() as i64).max(0) as u64;
            for line in lines {
                let counts = self.counts_at(engine, line);
                self.write_line(&counts)?;
            }
            at = last.plus(self.every);
        }
        while at <= now {
            let counts = self.counts_at(engine, at);
            self.write_line(&counts)?;
            let next = at.plus(self.every);
            if next <= at {
                // The end of representable time (year 2262): no boundary comes after it.
                break;
            }
            at = next;
        }
        self.next = Some(at);
        ControlFlow::Continue(())
    }

    /// The counts over the connections tracked now (of `--host`), with timers run to `at`.
    fn counts_at(&self, engine: &Engine, at: Ts) -> states::IntervalCounts {
        let host = self.host;
        let conns = engine
            .connections()
            .filter(|c| host.is_none_or(|h| c.ends.iter().any(|e| h.keeps(e.addr))));
        states::interval_counts(conns, at, &engine.cfg)
    }
}

impl Watcher for IntervalCounts {
    /// The counts are of the live records: those that ended are dropped as they end.
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if engine.has_ended() {
            drop(engine.take_ended());
        }
        ControlFlow::Continue(())
    }
    fn at_finish(&mut self, _conn: Connection) -> Option<Connection> {
        None
    }
    fn keeps_every_record(&self) -> bool {
        false
    }

    /// The last line: the end of the input, unless a line already covered it.
    fn at_end(&mut self, engine: &mut Engine) {
        if let (Some(end), Some(next)) = (engine.now(), self.next)
            && end > Ts(next.0.saturating_sub(self.every.0))
        {
            let counts = self.counts_at(engine, end);
            let _ = self.write_line(&counts);
        }
    }

    fn before_packet(&mut self, engine: &mut Engine, ts: Ts) -> ControlFlow<()> {
        // Boundaries before this packet are counted without it; one at its very time waits
        // for every packet of that time, as `states --at` counts them.
        let now = engine.now().map_or(ts, |c| c.max(ts));
        match self.next {
            Some(next) if now > next => self.emit_until(engine, Ts(now.0 - 1)),
            Some(_) => ControlFlow::Continue(()),
            None => {
                self.next = Some(now.plus(self.every));
                ControlFlow::Continue(())
            }
        }
    }
    fn on_tick(&mut self, engine: &mut Engine, wall: Ts, _stats: &LiveStats) -> ControlFlow<()> {
        let now = engine.now().map_or(wall, |c| c.max(wall));
        self.emit_until(engine, now)
    }
}

fn write_out(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    output_status(f(&mut out).and_then(|_| out.flush()))
}

fn report_counters(quiet: bool, outcome: &Outcome, end: &SourceEnd) {
    if !quiet {
        let _ = report::write_counters(&mut io::stderr().lock(), outcome, &end.container);
    }
    report_live_counts(quiet, end.live.as_ref());
}

/// libpcap's counts after a live capture; a warning about drops even with `-q`, since they
/// make the report doubtful.
fn report_live_counts(quiet: bool, live: Option<&LiveStats>) {
    let Some(stats) = live else {
        return;
    };
    let mut err = io::stderr().lock();
    if !quiet {
        let _ = report::write_live_counters(&mut err, stats);
    }
    if stats.dropped() > 0 {
        let _ = writeln!(
            err,
            "tcpstate: warning: {} packets were dropped before tcpstate saw them (kernel {}, interface {}): states may be wrong for the connections they belonged to",
            stats.dropped(),
            stats.dropped_by_kernel,
            stats.dropped_by_interface
        );
    }
}

fn finish_status(fault: Option<String>) -> Result<(), Failure> {
    match fault {
        Some(message) => Err(Failure {
            status: exit::INPUT_ERROR,
            message,
        }),
        None => Ok(()),
    }
}

/// `conns --format zeek`: Zeek's own connection model (`crate::zeek`) over the same input,
/// written as a conn.log: each row as Zeek removes its connection (held rows would make the
/// memory grow with the capture), then those still open at the end. The counters on stderr
/// are the container's and the filter's.
fn run_zeek(input: &InputArgs, ignore_checksums: bool) -> Result<(), Failure> {
    let mut filter = compile_filter(input)?;
    let mut tracker = ZeekTracker::new(ZeekConfig {
        ignore_checksums,
        max_conns: Some(input.max_conns).filter(|n| *n > 0),
        ..ZeekConfig::default()
    });
    let epoch_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let mut stream = Stream::new(input.interface.is_some());
    let _ = stream.write(|out| zeek::write_header(out, epoch_now()));
    let write_rows = |stream: &mut Stream, rows: &[zeek::ZeekConn]| {
        stream.write(|out| rows.iter().try_for_each(|r| zeek::write_row(out, r)))
    };
    let (mut packets, mut filtered, mut logged) = (0u64, 0u64, 0usize);
    let source_end = read_source(
        input,
        &mut |pkt| {
            packets += 1;
            if let Some(f) = filter.as_mut()
                && !f.matches(pkt.linktype, pkt.data)
            {
                filtered += 1;
                return ControlFlow::Continue(());
            }
            tracker.process(pkt);
            if !tracker.has_finished() {
                return ControlFlow::Continue(());
            }
            let rows = tracker.take_finished();
            logged += rows.len();
            write_rows(&mut stream, &rows)
        },
        &mut |_| (ControlFlow::Continue(()), None),
    )?;
    let evicted = tracker.evicted();
    let rows = tracker.finish();
    logged += rows.len();
    let _ = write_rows(&mut stream, &rows);
    let _ = stream.write(|out| zeek::write_close(out, epoch_now()));
    stream.finish()?;
    if !input.quiet {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "tcpstate: {packets:>10}  packets read");
        if filtered > 0 {
            let _ = writeln!(
                err,
                "tcpstate: {filtered:>10}  filtered out by the expression"
            );
        }
        let _ = writeln!(err, "tcpstate: {logged:>10}  connections (Zeek's rules)");
    }
    if evicted > 0 {
        eprintln!(
            "tcpstate: warning: {evicted} connections logged early, as they stood: more than --max-conns {} were open at once (Zeek would keep them until they time out)",
            input.max_conns
        );
    }
    report_live_counts(input.quiet, source_end.live.as_ref());
    finish_status(source_end.fault)
}

/// `10s`, `1m`, `500ms`, `2h`, or plain seconds.
fn parse_interval(text: &str) -> Result<Dur, Failure> {
    let t = text.trim();
    let bad = || {
        usage(format!(
            "--interval '{text}': expected a duration like 10s, 1m, 500ms"
        ))
    };
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let v: f64 = number.trim().parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && secs >= 0.001) {
        return Err(bad());
    }
    Ok(Dur::from_secs_f64(secs))
}

/// `states --interval`: counts per state at every boundary, then once more at the end.
fn run_interval(
    args: &StatesArgs,
    every: &str,
    host: Option<states::HostFilter>,
) -> Result<(), Failure> {
    let every = parse_interval(every)?;
    let mut counts = IntervalCounts {
        stream: Stream::new(args.input.streams_in()),
        every,
        next: None,
        format: args.format,
        csv_header_written: false,
        host,
        skipped: 0,
    };
    let (outcome, source_end) = run_engine(&args.input, Keep::default(), &mut counts)?;
    counts.stream.finish()?;
    if counts.skipped > 0 {
        eprintln!(
            "tcpstate: warning: {} interval lines not written: where more than {QUIET_LINES} intervals pass without a packet (a jump in the capture's timestamps?), only the lines where the counts change are written",
            counts.skipped
        );
    }
    report_counters(args.input.quiet, &outcome, &source_end);
    finish_status(source_end.fault)
}

/// Feeds the top view from the capture loop: a frame about every second of wall time, and
/// stops reading when the view was closed.
struct TopWatcher {
    feed: TopFeed,
    stop: Arc<AtomicBool>,
    /// A file gets no ticks: records are taken in as they end.
    from_file: bool,
}

impl Watcher for TopWatcher {
    fn after_packet(&mut self, engine: &mut Engine) -> ControlFlow<()> {
        if self.from_file {
            self.feed.take_in_ended(engine);
        }
        if self.stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn at_finish(&mut self, _conn: Connection) -> Option<Connection> {
        None
    }
    fn keeps_every_record(&self) -> bool {
        false
    }
    fn on_tick(&mut self, engine: &mut Engine, wall: Ts, stats: &LiveStats) -> ControlFlow<()> {
        let drops = CaptureDrops {
            kernel: stats.dropped_by_kernel,
            interface: stats.dropped_by_interface,
        };
        if !self.feed.tick_at(engine, wall, drops) || self.stop.load(Ordering::Relaxed) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
    fn at_end(&mut self, engine: &mut Engine) {
        // A file gets no ticks: its one frame is the end of the file.
        self.feed.tick(engine, CaptureDrops::default());
    }
}

/// `tcpstate top -i IFACE`: the capture runs on a second thread; this one draws the view
/// until `q` (or Ctrl-C, a key in the view's raw mode) or SIGTERM. From a file (`-r`), the
/// view shows the end of the file until quit.
fn run_top(input: &InputArgs) -> Result<(), Failure> {
    if !io::stdout().is_terminal() {
        return Err(usage(
            "top draws on a terminal; for a stream of records use `conns --format json`".into(),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let title = input
        .interface
        .clone()
        .unwrap_or_else(|| input.files.join(" "));
    let cfg = engine_config(input)?;
    let model = TopModel::new(TopConfig {
        title,
        engine: cfg,
        ..TopConfig::default()
    });
    let mut quiet_input = input.clone();
    quiet_input.quiet = true;
    let result = std::thread::scope(|scope| {
        let capture_stop = Arc::clone(&stop);
        let capture = scope.spawn(move || {
            let mut watcher = TopWatcher {
                feed: TopFeed::new(model, tx),
                stop: capture_stop,
                from_file: quiet_input.interface.is_none(),
            };
            let result = run_engine(&quiet_input, Keep::default(), &mut watcher);
            // A file is read in a moment: keep its last frame up until the view is closed.
            if quiet_input.interface.is_none() {
                while !watcher.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            result.map(|(outcome, end)| (outcome, end, watcher))
        });
        let drawn = report::top::run_terminal(rx, Arc::clone(&stop));
        stop.store(true, Ordering::Relaxed);
        let captured = capture.join();
        (drawn, captured)
    });
    let (drawn, captured) = result;
    drawn.map_err(|e| input_error(format!("terminal: {e}")))?;
    let (outcome, source_end, _) = match captured {
        Ok(r) => r?,
        Err(_) => return Err(input_error("the capture thread failed".into())),
    };
    report_counters(input.quiet, &outcome, &source_end);
    finish_status(source_end.fault)
}

/// `tcpstate -i IFACE [FILTER]` with no command: the top view on a terminal, otherwise a
/// stream of connection records as JSON lines; `tcpstate -r FILE`: `conns`. Returns the
/// arguments with the command put in.
pub fn with_default_command(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    let live = first == "-i"
        || first.starts_with("--interface")
        || (first.starts_with("-i") && first.len() > 2);
    let file = first == "-r" || first.starts_with("--read");
    if !live && !file {
        return args;
    }
    let mut with = vec![args[0].clone()];
    if file {
        with.push("conns".into());
    } else if io::stdout().is_terminal() {
        with.push("top".into());
    } else {
        with.extend(["conns".into(), "--format".into(), "json".into()]);
    }
    with.extend(args.into_iter().skip(1));
    with
}

/// `tcpstate -D`.
fn list_interfaces() -> Result<(), Failure> {
    let list = live::list_interfaces().map_err(|e| input_error(e.to_string()))?;
    write_out(|out| live::write_interface_list(out, &list))
}

/// The command, if it asks for `--threads` but runs on one thread only: it needs every
/// transition or packet in order (`events`, `explain`, `states --interval`, `top`), or its
/// own tracker (`conns --format zeek`).
fn single_threaded(command: &Command) -> Option<&'static str> {
    let (input, name) = match command {
        Command::Conns(a) if a.format == ConnsFormat::Zeek => (&a.input, "conns --format zeek"),
        Command::States(a) if a.interval.is_some() => (&a.input, "states --interval"),
        Command::Events(a) => (&a.input, "events"),
        Command::Explain(a) => (&a.input, "explain"),
        Command::Top(a) => (&a.input, "top"),
        _ => return None,
    };
    (input.threads > 1).then_some(name)
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    if cli.list_interfaces {
        return list_interfaces();
    }
    let Some(command) = cli.command else {
        return Err(usage(
            "a command is needed: conns, states, events, explain, diagnose or summary (see --help)"
                .into(),
        ));
    };
    if let Some(what) = single_threaded(&command) {
        return Err(usage(format!(
            "--threads works with conns, states, diagnose and summary, not {what}"
        )));
    }
    match command {
        Command::Conns(args) if args.format == ConnsFormat::Zeek => {
            run_zeek(&args.input, args.ignore_checksums)
        }
        Command::Conns(args) => {
            let mut streaming = ConnsStream::new(args.format, args.input.streams_in());
            let (outcome, source_end) = run_threaded(&args.input, None, &mut streaming)?;
            streaming.finish()?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        Command::States(args) => {
            let host = args
                .host
                .as_deref()
                .map(states::HostFilter::parse)
                .transpose()
                .map_err(usage)?;
            if let Some(every) = &args.interval {
                return run_interval(&args, every, host);
            }
            let sel = states::Selection {
                all: args.all,
                host,
            };
            // The rows are made as they are written, from the records and the listeners.
            let (outcome, source_end, listeners, conns) = if args.all {
                let (mut outcome, source_end) = run_records(&args.input, args.at.as_deref())?;
                let conns = std::mem::take(&mut outcome.connections);
                (outcome, source_end, states::Listeners::of(&conns), conns)
            } else {
                // Only the records with a socket left are kept as they end.
                let mut keeping = StatesKeep {
                    sel,
                    listeners: states::Listeners::default(),
                    kept: Vec::new(),
                };
                let (mut outcome, source_end) =
                    run_threaded(&args.input, args.at.as_deref(), &mut keeping)?;
                // The shorter list joins the longer, which grows where it is (a realloc)
                // rather than being copied into a second.
                let mut kept = std::mem::take(&mut outcome.connections);
                let mut ended = std::mem::take(&mut keeping.kept);
                if ended.len() > kept.len() {
                    std::mem::swap(&mut kept, &mut ended);
                }
                kept.append(&mut ended);
                drop(ended);
                crate::flow::sort_large_by_key(&mut kept, |c| c.id);
                (outcome, source_end, keeping.listeners, kept)
            };
            write_out(|out| match args.format {
                Format::Text => states::write_text_of(out, &listeners, &conns, &sel),
                Format::Json => states::for_each_row(&listeners, &conns, &sel, |row| {
                    report::write_json_lines(out, &[row])
                }),
                Format::Csv => {
                    let mut csv = report::CsvRows::new(out);
                    states::for_each_row(&listeners, &conns, &sel, |row| csv.row(&row))?;
                    csv.finish()
                }
            })?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        Command::Explain(args) => {
            let watch = parse_conn_selector(&args.conn).map_err(usage)?;
            let keep = Keep {
                transitions: true,
                watch: Some(watch),
                ..Keep::default()
            };
            let mut keeping = KeepWatched {
                watch,
                ended: Vec::new(),
            };
            let (mut outcome, source_end) = run_engine(&args.input, keep, &mut keeping)?;
            outcome.connections.append(&mut keeping.ended);
            let end = outcome.end_ts.unwrap_or_default();
            let mut ids: Vec<u64> = outcome.watched.iter().map(|p| p.conn_id).collect();
            ids.dedup();
            if ids.is_empty() {
                report_counters(args.input.quiet, &outcome, &source_end);
                finish_status(source_end.fault.clone())?;
                return Err(Failure {
                    status: exit::NOT_FOUND,
                    message: format!("no connection {} in the input", args.conn),
                });
            }
            let opts = explain::Options { full: args.full };
            write_out(|out| {
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        writeln!(out)?;
                    }
                    let Some(conn) = outcome.connections.iter().find(|c| c.id == *id) else {
                        continue;
                    };
                    let packets: Vec<_> = outcome
                        .watched
                        .iter()
                        .filter(|p| p.conn_id == *id)
                        .copied()
                        .collect();
                    let transitions: Vec<_> = outcome
                        .transitions
                        .iter()
                        .filter(|t| t.conn_id == *id)
                        .copied()
                        .collect();
                    let summary = summarize(conn, end);
                    explain::write_ladder(out, conn, &summary, &packets, &transitions, &opts)?;
                }
                Ok(())
            })?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        Command::Diagnose(args) => {
            let cfg = DiagnoseConfig {
                stuck_after: seconds_arg("stuck-after", args.stuck_after)?,
                port_range: parse_port_range(&args.port_range)?,
                many_time_wait: args.many_time_wait,
                slow_handshake: seconds_arg("slow-handshake", args.slow_handshake)?,
                syn_flood: args.syn_flood,
            };
            // Each record is added to the findings as it ends, and dropped.
            let mut adding = AddEach::new(|| findings::DiagnoseBuilder::new(cfg), &args.input);
            let (outcome, source_end) = run_threaded(&args.input, None, &mut adding)?;
            let found = adding.into_builder()?.finish(&outcome);
            let start = outcome.first_ts.map(report::secs);
            write_out(|out| match args.format {
                Format::Text => diagnose::write_findings_text(out, &found, start),
                Format::Json => report::write_json_lines(out, &found),
                Format::Csv => diagnose::write_findings_csv(out, &found),
            })?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        Command::Summary(args) => {
            if args.format == Format::Csv {
                return Err(usage("summary has no CSV form: use --format json".into()));
            }
            // Each record is added up as it ends: only its durations are kept, not the record.
            let mut adding = AddEach::new(summary::SummaryBuilder::default, &args.input);
            let (outcome, source_end) = run_threaded(&args.input, None, &mut adding)?;
            let sum = adding.into_builder()?.finish();
            write_out(|out| match args.format {
                Format::Text => diagnose::write_summary_text(out, &sum),
                Format::Json => report::write_json_lines(out, std::slice::from_ref(&sum)),
                Format::Csv => Ok(()),
            })?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        Command::Top(args) => run_top(&args.input),
        // Standard input is read once, even from a file: its events are written as they come.
        Command::Events(args) if args.input.streams_in() || args.input.reads_stdin() => {
            let keep = Keep {
                transitions: true,
                ..Keep::default()
            };
            let mut streaming = EventsStream {
                stream: Stream::new(true),
                format: args.format,
                first_ts: None,
                csv_header_written: false,
                ended: Vec::new(),
            };
            let (outcome, source_end) = run_engine(&args.input, keep, &mut streaming)?;
            let rows = events::event_rows(&outcome.transitions, &outcome.connections);
            let _ = streaming.write(&rows);
            streaming.stream.finish()?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        // A pipe or FIFO (`-r <(zcat x.pcap.gz)`) can be read once: every transition is held.
        Command::Events(args) if !args.input.files_can_be_read_twice() => {
            let keep = Keep {
                transitions: true,
                ..Keep::default()
            };
            let (outcome, source_end) = run_engine(&args.input, keep, &mut AtTheEnd)?;
            // Rows are made as they are written, never all at once.
            let rows = || events::event_rows_iter(&outcome.transitions, &outcome.connections);
            write_out(|out| match args.format {
                Format::Text => events::write_text_transitions(
                    out,
                    &outcome.transitions,
                    &outcome.connections,
                    outcome.first_ts,
                ),
                Format::Json => report::json::write_transitions_json_lines(
                    out,
                    &outcome.transitions,
                    &outcome.connections,
                ),
                Format::Csv => {
                    let mut header = true;
                    let mut batch = Vec::with_capacity(4096);
                    for r in rows() {
                        batch.push(r);
                        if batch.len() == batch.capacity() {
                            report::write_csv_rows(out, &batch, header)?;
                            header = false;
                            batch.clear();
                        }
                    }
                    if !batch.is_empty() {
                        report::write_csv_rows(out, &batch, header)?;
                    }
                    Ok(())
                }
            })?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        Command::Events(args) => {
            // Files can be read twice: once for what the rows need from each connection's
            // end, then again writing the rows as the transitions are found.
            let keep = || Keep {
                transitions: true,
                ..Keep::default()
            };
            let mut first = EventsFirstRead::default();
            let (last, _) = run_engine(&args.input, keep(), &mut first)?;
            // The rows of the timers run at the end.
            for t in &last.transitions {
                if let Some(facts) = first.facts(t) {
                    let t0 = first.t0();
                    first.widths.add(t, &facts, t0, &mut first.scratch);
                }
            }
            let mut streaming = EventsFileStream::new(args.format, &first, args.write_every);
            if args.format == Format::Text {
                let header = &first.widths;
                let _ = streaming.stream.write(|out| header.write_header(out));
            }
            let (mut outcome, source_end) = run_engine(&args.input, keep(), &mut streaming)?;
            streaming.hold(std::mem::take(&mut outcome.transitions));
            let _ = streaming.write_before(None);
            streaming.stream.finish()?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Segment;

    /// `conns`' JSON rows on the rows thread are held back until a large write's worth has
    /// built up, and put out whole by a release (a run that stops before its end) or the
    /// tail; for live capture and standard input each call writes its own rows.
    #[test]
    fn held_json_rows_come_out_whole() {
        let records: Vec<Connection> = (1..=100)
            .map(|id| Connection::new(id, &Segment::NONE, Ts(id as i64)))
            .collect();
        let mut direct = Vec::new();
        report::json::write_records_json_lines(&mut direct, &records, Ts(500)).unwrap();
        for end in ["release", "tail"] {
            let mut rows = ConnsRows::new(ConnsFormat::Json, true);
            let mut out = Vec::new();
            rows.write(&mut out, &records[..40], Ts(500), None).unwrap();
            rows.write(&mut out, &records[40..], Ts(500), None).unwrap();
            assert!(out.is_empty(), "{} bytes written before the end", out.len());
            match end {
                "release" => rows.release(&mut out).unwrap(),
                _ => rows.tail(&mut out).unwrap(),
            }
            assert_eq!(out, direct, "after the {end}");
        }
        let mut rows = ConnsRows::new(ConnsFormat::Json, false);
        let mut out = Vec::new();
        rows.write(&mut out, &records[..40], Ts(500), None).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 40);
        rows.write(&mut out, &records[40..], Ts(500), None).unwrap();
        assert_eq!(out, direct);
    }
}
