//! Command-line interface: argument parsing, running a command, exit codes.

use std::cell::RefCell;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::analysis::findings::{self, DiagnoseConfig};
use crate::analysis::{summarize, summary};
use crate::capture::filter::PacketFilter;
use crate::capture::live::{self, LiveCapture, LiveControl, LiveOptions, LiveStats};
use crate::capture::{ContainerCounters, PacketFn, file};
use crate::decode::SockAddr;
use crate::flow::{EngineConfig, FlowKey};
use crate::pipeline::{Engine, Outcome, Watch};
use crate::report::{self, conns, diagnose, events, explain, states};
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
}

#[derive(Args, Debug)]
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
    /// Track at most N connections at once: when full, the least recently active are evicted
    /// (counted; half-open attempts are only counted, per server, to bound memory under a SYN flood).
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,
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
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
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

/// Numbers for the live status line that only the consumer of the packets knows:
/// connections seen and connections open now.
type StatusNumbers<'a> = dyn Fn() -> Option<(u64, usize)> + 'a;

/// Reads every packet of the input (files in order, or a live capture until Ctrl-C or
/// SIGTERM) and hands each to `on_packet`.
fn read_source(
    input: &InputArgs,
    on_packet: &mut PacketFn<'_>,
    status_numbers: &StatusNumbers<'_>,
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
            let (stats, fault) = capture_live(&opts, input.quiet, on_packet, status_numbers)?;
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
    status_numbers: &StatusNumbers<'_>,
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
    let result = capture.run(&control, on_packet, &mut |stats| {
        status.update(stats, status_numbers())
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

/// Runs the engine over the input. Returns the outcome and what reading left (counters, and
/// if it stopped early, why).
fn run_engine(input: &InputArgs, keep: Keep<'_>) -> Result<(Outcome, SourceEnd), Failure> {
    let stop_at = keep.stop_at;
    if !(input.time_wait.is_finite() && input.time_wait >= 0.0) {
        return Err(usage(format!(
            "--time-wait {}: expected seconds >= 0",
            input.time_wait
        )));
    }
    let filter = compile_filter(input)?;
    let cfg = EngineConfig {
        time_wait: Dur::from_secs_f64(input.time_wait),
        max_conns: input.max_conns,
        ..EngineConfig::default()
    };
    // Absolute times are known before reading; relative ones need the first packet.
    let mut stop = None;
    let mut relative = None;
    if let Some(at) = stop_at {
        if at.trim_start().starts_with('+') {
            relative = Some(at.to_string());
        } else {
            stop = Some(parse_time_arg(at, None).map_err(usage)?);
        }
    }
    if let Some(rel) = &relative {
        // Validate the number now; resolve against the first packet below.
        parse_time_arg(rel, Some(Ts(0))).map_err(usage)?;
    }
    // Shared by the packet callback and the live status line, which run one after the other.
    let engine = RefCell::new(
        Engine::new(cfg)
            .with_filter(filter)
            .stop_after(stop)
            .record_transitions(keep.transitions)
            .watch(keep.watch),
    );
    let end = read_source(
        input,
        &mut |pkt| {
            let mut engine = engine.borrow_mut();
            if let Some(rel) = relative.take()
                && let Ok(at) = parse_time_arg(&rel, Some(pkt.ts))
            {
                engine.set_stop_after(at);
            }
            engine.process(pkt);
            ControlFlow::Continue(())
        },
        &|| {
            let engine = engine.borrow();
            Some((
                engine.flow_counters().connections,
                engine.live_connections(),
            ))
        },
    )?;
    Ok((engine.into_inner().finish(), end))
}

fn write_out(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let res = f(&mut out).and_then(|_| out.flush());
    match res {
        Ok(()) => Ok(()),
        // The reader went away (`| head`): stop quietly, as ripgrep does.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure {
            status: exit::INPUT_ERROR,
            message: format!("writing output: {e}"),
        }),
    }
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
/// written as a conn.log. The counters on stderr are the container's and the filter's.
fn run_zeek(input: &InputArgs, ignore_checksums: bool) -> Result<(), Failure> {
    let mut filter = compile_filter(input)?;
    let mut tracker = ZeekTracker::new(ZeekConfig {
        ignore_checksums,
        ..ZeekConfig::default()
    });
    let (mut packets, mut filtered) = (0u64, 0u64);
    let source_end = read_source(
        input,
        &mut |pkt| {
            packets += 1;
            if let Some(f) = filter.as_mut()
                && !f.matches(pkt.linktype, pkt.data)
            {
                filtered += 1;
            } else {
                tracker.process(pkt);
            }
            ControlFlow::Continue(())
        },
        &|| None,
    )?;
    let rows = tracker.finish();
    let opened = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    write_out(|out| zeek::write_conn_log(out, &rows, opened))?;
    if !input.quiet {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "tcpstate: {packets:>10}  packets read");
        if filtered > 0 {
            let _ = writeln!(
                err,
                "tcpstate: {filtered:>10}  filtered out by the expression"
            );
        }
        let _ = writeln!(
            err,
            "tcpstate: {:>10}  connections (Zeek's rules)",
            rows.len()
        );
    }
    report_live_counts(input.quiet, source_end.live.as_ref());
    finish_status(source_end.fault)
}

/// `tcpstate -D`.
fn list_interfaces() -> Result<(), Failure> {
    let list = live::list_interfaces().map_err(|e| input_error(e.to_string()))?;
    write_out(|out| live::write_interface_list(out, &list))
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
    match command {
        Command::Conns(args) if args.format == ConnsFormat::Zeek => {
            run_zeek(&args.input, args.ignore_checksums)
        }
        Command::Conns(args) => {
            let (outcome, source_end) = run_engine(&args.input, Keep::default())?;
            let end = outcome.end_ts.unwrap_or_default();
            let rows: Vec<_> = outcome
                .connections
                .iter()
                .map(|c| summarize(c, end))
                .collect();
            let start = outcome.first_ts.map(|t| t.as_secs_f64());
            write_out(|out| match args.format {
                ConnsFormat::Text => conns::write_table(out, &rows, start),
                ConnsFormat::Json => report::write_json_lines(out, &rows),
                ConnsFormat::Csv | ConnsFormat::Zeek => report::write_csv(out, &rows),
            })?;
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
            let keep = Keep {
                stop_at: args.at.as_deref(),
                ..Keep::default()
            };
            let (outcome, source_end) = run_engine(&args.input, keep)?;
            let sel = states::Selection {
                all: args.all,
                host,
            };
            let rows = states::socket_rows(&outcome.connections, &sel);
            write_out(|out| match args.format {
                Format::Text => states::write_text(out, &rows),
                Format::Json => report::write_json_lines(out, &rows),
                Format::Csv => report::write_csv(out, &rows),
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
            let (outcome, source_end) = run_engine(&args.input, keep)?;
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
            let (outcome, source_end) = run_engine(&args.input, Keep::default())?;
            let found = findings::diagnose(&outcome, &cfg);
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
            let (outcome, source_end) = run_engine(&args.input, Keep::default())?;
            let sum = summary::summarize_all(&outcome.connections);
            write_out(|out| match args.format {
                Format::Text => diagnose::write_summary_text(out, &sum),
                Format::Json => report::write_json_lines(out, std::slice::from_ref(&sum)),
                Format::Csv => Ok(()),
            })?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
        Command::Events(args) => {
            let keep = Keep {
                transitions: true,
                ..Keep::default()
            };
            let (outcome, source_end) = run_engine(&args.input, keep)?;
            let rows = events::event_rows(&outcome.transitions, &outcome.connections);
            write_out(|out| match args.format {
                Format::Text => events::write_text(out, &rows, outcome.first_ts),
                Format::Json => report::write_json_lines(out, &rows),
                Format::Csv => report::write_csv(out, &rows),
            })?;
            report_counters(args.input.quiet, &outcome, &source_end);
            finish_status(source_end.fault)
        }
    }
}
