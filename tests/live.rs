//! Live capture against the kernel: each test makes a private network namespace, runs
//! `tcpstate -i lo` inside it while real sockets (tests/live_driver.py) go through their
//! lifecycles, stops it with a signal and requires (1) its final states to equal what `ss`
//! shows in that namespace just before the stop and (2) the same command run offline on the
//! `-w` file it wrote to print exactly the same.
//!
//! Needs root (network namespaces, packet sockets), `ip` and `ss` (iproute2) and python3, as
//! CI has; without root the tests fail and say so rather than pass without checking.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{json_lines, tcpstate};
use rustix::process::{Pid, Signal, kill_process};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
/// Longest wait for tcpstate to start capturing, and to end after a signal.
const START_LIMIT: Duration = Duration::from_secs(20);
const STOP_LIMIT: Duration = Duration::from_secs(5);

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "tests/live.rs needs root: it creates network namespaces and captures packets in them"
    );
}

/// A network namespace of this test process, with loopback up; deleted on drop, whatever
/// happened in between.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        require_root();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tcpstate-live-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip (iproute2)");
        assert!(status.success(), "ip netns add {name} failed");
        let ns = Netns { name };
        let status = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip -n {} link set lo up failed", ns.name);
        ns
    }

    /// `program args...` inside the namespace.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .stdin(Stdio::null())
            .output()
            .expect("run a command in the namespace")
    }

    /// The kernel's TCP sockets other than listeners, as (local, remote, state) with
    /// tcpstate's state names.
    fn kernel_sockets(&self) -> BTreeSet<(String, String, String)> {
        let out = self.output("ss", &["-tan"]);
        assert!(out.status.success(), "ss -tan failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if parts.len() < 5 || parts[0] == "LISTEN" {
                    return None;
                }
                Some((
                    parts[3].to_string(),
                    parts[4].to_string(),
                    ss_state_name(parts[0]),
                ))
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// ss's spelling of a state in netstat's (tcpstate's), as pcaps/make_captures.py maps them.
fn ss_state_name(ss: &str) -> String {
    match ss {
        "ESTAB" => "ESTABLISHED".into(),
        "FIN-WAIT-1" => "FIN_WAIT1".into(),
        "FIN-WAIT-2" => "FIN_WAIT2".into(),
        "CLOSE" => "CLOSED".into(),
        other => other.replace('-', "_"),
    }
}

/// A child process killed on drop, so a failing test leaves nothing running in the namespace.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpstate capturing in the namespace.
struct LiveTcpstate {
    child: Reaped,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr_lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

struct Stopped {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// From the signal to the exit.
    took: Duration,
}

impl LiveTcpstate {
    /// Starts `tcpstate args` and waits until it says it is capturing (the `listening on`
    /// line comes after the capture is open and its filter set).
    fn start(ns: &Netns, args: &[&str]) -> LiveTcpstate {
        let mut child = ns
            .command(BIN, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpstate");
        let mut out = child.stdout.take().expect("stdout pipe");
        let err = child.stderr.take().expect("stderr pipe");
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, stderr_lines) = mpsc::channel();
        let all = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut all) = all.lock() {
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = lines_tx.send(line);
            }
        });
        let run = LiveTcpstate {
            child: Reaped(child),
            stdout: Some(stdout),
            stderr_lines,
            stderr,
        };
        run.wait_until_capturing(args);
        run
    }

    fn wait_until_capturing(&self, args: &[&str]) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.starts_with("tcpstate: listening on ") => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "tcpstate {args:?} did not start capturing: {}",
                        self.stderr()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "tcpstate {args:?} ended before capturing: {}",
                        self.stderr()
                    )
                }
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit.
    fn stop(mut self, signal: Signal) -> Stopped {
        let pid = Pid::from_raw(self.child.0.id() as i32).expect("a child's pid is positive");
        let sent = Instant::now();
        kill_process(pid, signal).expect("signal tcpstate");
        let status = loop {
            if let Some(status) = self.child.0.try_wait().expect("poll tcpstate") {
                break status;
            }
            assert!(
                sent.elapsed() < STOP_LIMIT,
                "tcpstate did not end within {STOP_LIMIT:?} of {signal:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = sent.elapsed();
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        // The stderr reader ends with the pipe, which closed with the process.
        let deadline = Instant::now() + STOP_LIMIT;
        while self
            .stderr_lines
            .recv_timeout(Duration::from_millis(50))
            .is_ok()
        {
            assert!(Instant::now() < deadline, "stderr never closed");
        }
        Stopped {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: self.stderr(),
            took,
        }
    }
}

/// The socket driver in the namespace; `ready` once the kernel states are settled.
struct Driver {
    child: Reaped,
    stdin: Option<ChildStdin>,
    /// (local, remote, state) the driver made sure of with ss.
    expected: Vec<(String, String, String)>,
}

impl Driver {
    fn run(ns: &Netns, args: &[&str]) -> Driver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/live_driver.py");
        let script = script.to_str().expect("a UTF-8 path");
        let mut all = vec![script];
        all.extend_from_slice(args);
        let mut child = ns
            .command("python3", &all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take();
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("driver stdout"))
            .read_line(&mut first)
            .expect("read the driver");
        let Some(json) = first.trim().strip_prefix("ready ") else {
            let status = child.wait();
            panic!("the socket driver failed ({status:?}): {first:?}");
        };
        let expected: Vec<Vec<String>> = serde_json::from_str(json).expect("driver JSON");
        Driver {
            child: Reaped(child),
            stdin,
            expected: expected
                .into_iter()
                .map(|e| (e[0].clone(), e[1].clone(), e[2].clone()))
                .collect(),
        }
    }

    /// Lets the driver close its sockets and end.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_LIMIT;
        while self.child.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn temp_pcap(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// tcpstate's sockets other than listeners (inferred), from `states --format json`.
fn tcpstate_sockets(stdout: &str) -> BTreeSet<(String, String, String)> {
    json_lines(stdout)
        .iter()
        .filter(|row| row["state"] != "LISTEN")
        .map(|row| {
            let field = |k: &str| row[k].as_str().expect("a string field").to_string();
            (field("local"), field("remote"), field("state"))
        })
        .collect()
}

#[test]
fn live_states_equal_the_kernel_and_the_offline_run() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let pcap = temp_pcap(&dir, "live.pcap");
    let pcap = pcap.to_str().expect("a UTF-8 path");
    let args = ["states", "--format", "json", "-i", "lo", "-w", pcap];
    let live = LiveTcpstate::start(&ns, &args);
    let driver = Driver::run(&ns, &["lifecycles"]);
    let kernel = ns.kernel_sockets();
    let stopped = live.stop(Signal::INT);
    let planned = driver.expected.clone();
    driver.finish();

    assert_eq!(
        stopped.status.code(),
        Some(0),
        "exit status after SIGINT; stderr:\n{}",
        stopped.stderr
    );
    // The scenario happened as planned: the kernel holds every state the driver set up.
    for e in &planned {
        assert!(
            kernel.contains(e),
            "the kernel does not show {e:?}; ss: {kernel:?}"
        );
    }
    assert_eq!(planned.len(), 12, "driver states: {planned:?}");
    for state in ["TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT2", "ESTABLISHED"] {
        assert!(
            kernel.iter().any(|(_, _, s)| s == state),
            "no {state} in the kernel: {kernel:?}"
        );
    }
    assert!(kernel.iter().any(|(l, _, _)| l.starts_with("[::1]")));

    // (1) tcpstate's final states are the kernel's.
    let seen = tcpstate_sockets(&stopped.stdout);
    assert_eq!(
        seen, kernel,
        "tcpstate (left) and ss (right) differ\nstderr:\n{}",
        stopped.stderr
    );
    // The listeners it inferred are the servers that accepted (ports 5001-5004, 5101-5104).
    let listeners: BTreeSet<String> = json_lines(&stopped.stdout)
        .iter()
        .filter(|r| r["state"] == "LISTEN")
        .filter_map(|r| r["local"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listeners.len(), 8, "listeners: {listeners:?}");
    assert!(stopped.stderr.contains("packets dropped by the kernel"));
    assert!(!stopped.stderr.contains("warning"), "{}", stopped.stderr);

    // (2) The same command on the -w file prints exactly the same.
    let offline = tcpstate(&["states", "--format", "json", "-r", pcap]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    assert_eq!(offline.stdout, stopped.stdout, "offline and live differ");
    // The packet counts agree too: the file holds every packet the engine saw.
    let packets_read = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.ends_with("packets read"))
            .map(str::to_string)
    };
    assert!(packets_read(&stopped.stderr).is_some());
    assert_eq!(packets_read(&offline.stderr), packets_read(&stopped.stderr));

    // The refused attempts were seen (their endpoints are CLOSED, so `states` omits them).
    let conns = tcpstate(&["conns", "--format", "json", "-q", "-r", pcap]);
    let refused = json_lines(&conns.stdout)
        .iter()
        .filter(|r| r["handshake"] == "refused")
        .count();
    assert_eq!(refused, 2, "refused connections in {}", conns.stdout);
}

#[test]
fn the_filter_runs_in_the_kernel_and_the_file_holds_only_what_passed() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let pcap = temp_pcap(&dir, "filtered.pcap");
    let pcap = pcap.to_str().expect("a UTF-8 path");
    let args = [
        "conns", "--format", "json", "-i", "lo", "-w", pcap, "tcp", "port", "6001",
    ];
    let live = LiveTcpstate::start(&ns, &args);
    let driver = Driver::run(&ns, &["filtered", "6001", "6002"]);
    let stopped = live.stop(Signal::TERM);
    driver.finish();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    let rows = json_lines(&stopped.stdout);
    assert_eq!(rows.len(), 1, "one connection passes the filter: {rows:?}");
    assert_eq!(rows[0]["server"], "127.0.0.1:6001");
    assert_eq!(rows[0]["client_state"], "TIME_WAIT");
    assert_eq!(rows[0]["server_state"], "CLOSED");
    // Filtered in the kernel: the engine filtered nothing out itself.
    assert!(
        !stopped.stderr.contains("filtered out"),
        "{}",
        stopped.stderr
    );
    // The file holds the 6001 connection only, so reading it without a filter gives the same.
    let offline = tcpstate(&["conns", "--format", "json", "-r", pcap]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    assert_eq!(offline.stdout, stopped.stdout);
}

#[test]
fn any_interface_reads_linux_cooked_v2_and_sees_what_lo_sees() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let pcap = temp_pcap(&dir, "any.pcap");
    let pcap = pcap.to_str().expect("a UTF-8 path");
    let on_any = LiveTcpstate::start(
        &ns,
        &["states", "--format", "json", "-i", "any", "-w", pcap],
    );
    let on_lo = LiveTcpstate::start(&ns, &["states", "--format", "json", "-i", "lo"]);
    let driver = Driver::run(&ns, &["filtered", "6001", "6002"]);
    let any = on_any.stop(Signal::INT);
    let lo = on_lo.stop(Signal::INT);
    driver.finish();
    assert_eq!(any.status.code(), Some(0), "{}", any.stderr);
    assert_eq!(lo.status.code(), Some(0), "{}", lo.stderr);
    assert!(
        any.stderr.starts_with(
            "tcpstate: listening on any, link-type LINUX_SLL2 (276), snapshot length 256 bytes"
        ),
        "{}",
        any.stderr
    );
    // Two client TIME_WAITs, and each packet once: `any` gets no second copy of loopback
    // traffic, so it tracks as many packets as the capture on lo.
    let sockets = tcpstate_sockets(&any.stdout);
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    assert!(sockets.iter().all(|(_, _, s)| s == "TIME_WAIT"));
    assert_eq!(sockets, tcpstate_sockets(&lo.stdout));
    let tracked = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.ends_with("tcp packets tracked"))
            .map(str::to_string)
    };
    assert!(tracked(&any.stderr).is_some(), "{}", any.stderr);
    assert_eq!(tracked(&any.stderr), tracked(&lo.stderr));
    let offline = tcpstate(&["states", "--format", "json", "-r", pcap]);
    assert_eq!(offline.stdout, any.stdout);
}

#[test]
fn a_signal_ends_an_idle_capture_at_once_with_the_report_and_status_0() {
    let ns = Netns::new();
    for signal in [Signal::INT, Signal::TERM] {
        let live = LiveTcpstate::start(&ns, &["states", "-i", "lo"]);
        let stopped = live.stop(signal);
        assert_eq!(
            stopped.status.code(),
            Some(0),
            "{signal:?}: {}",
            stopped.stderr
        );
        // No traffic at all: the stop is noticed by the poll timeout (100 ms), not a packet.
        assert!(
            stopped.took < Duration::from_millis(1500),
            "{signal:?} took {:?}",
            stopped.took
        );
        // The command's report (an empty table) and the libpcap counts.
        assert!(stopped.stdout.starts_with("State "), "{}", stopped.stdout);
        assert!(
            stopped.stderr.contains("0  packets read"),
            "{}",
            stopped.stderr
        );
        assert!(
            stopped.stderr.contains("0  packets dropped by the kernel"),
            "{}",
            stopped.stderr
        );
    }
}

#[test]
fn drops_are_counted_and_warned_about_and_the_report_still_comes() {
    let ns = Netns::new();
    // A small kernel buffer, and tcpstate stopped while 3000 refused connections (a SYN and
    // a RST each) go by: the buffer overflows, whatever the machine's speed.
    let live = LiveTcpstate::start(&ns, &["summary", "-i", "lo", "-B", "64"]);
    let pid = Pid::from_raw(live.child.0.id() as i32).expect("a child's pid is positive");
    kill_process(pid, Signal::STOP).expect("SIGSTOP");
    let stat = format!("/proc/{}/stat", live.child.0.id());
    let deadline = Instant::now() + STOP_LIMIT;
    // Field 3 of /proc/PID/stat is the state: T once stopped.
    while !std::fs::read_to_string(&stat).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    }) {
        assert!(Instant::now() < deadline, "tcpstate did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    let driver = Driver::run(&ns, &["refused", "3000", "7009"]);
    kill_process(pid, Signal::CONT).expect("SIGCONT");
    let stopped = live.stop(Signal::INT);
    driver.finish();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    assert!(
        stopped.stdout.starts_with("connections: "),
        "{}",
        stopped.stdout
    );
    let dropped: u64 = stopped
        .stderr
        .lines()
        .find(|l| l.ends_with("packets dropped by the kernel (buffer full)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("the kernel drop count");
    assert!(dropped > 0, "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains(&format!(
            "tcpstate: warning: {dropped} packets were dropped before tcpstate saw them (kernel {dropped}, interface 0): states may be wrong for the connections they belonged to"
        )),
        "{}",
        stopped.stderr
    );
}

#[test]
fn unknown_interface_is_one_line_listing_the_interfaces_and_status_1() {
    let ns = Netns::new();
    let out = ns.output(BIN, &["states", "-i", "nosuch0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("tcpstate: nosuch0: no such interface; the interfaces are: "),
        "{stderr}"
    );
    assert!(stderr.contains("lo"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn list_interfaces_names_loopback() {
    let ns = Netns::new();
    let out = ns.output(BIN, &["-D"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // tcpdump -D's form: number, name, then flags.
    assert!(
        stdout.lines().any(|l| l
            .split_once('.')
            .is_some_and(|(n, rest)| n.parse::<u32>().is_ok()
                && rest.starts_with("lo [")
                && rest.contains("Loopback"))),
        "{stdout}"
    );
    // The number from -D is accepted by -i, as by tcpdump.
    let number = stdout
        .lines()
        .find_map(|l| l.split_once(".lo ").map(|(n, _)| n.to_string()))
        .expect("lo's number");
    let live = LiveTcpstate::start(&ns, &["states", "-i", &number]);
    assert_eq!(live.stop(Signal::INT).status.code(), Some(0));
}

#[test]
fn without_the_capabilities_one_line_says_how_to_grant_them() {
    let ns = Netns::new();
    // Root without CAP_NET_RAW and CAP_NET_ADMIN: what an unprivileged user gets.
    let out = ns.output(
        "setpriv",
        &[
            "--bounding-set=-net_raw,-net_admin",
            "--inh-caps=-net_raw,-net_admin",
            "--",
            BIN,
            "states",
            "-i",
            "lo",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CAP_NET_RAW and CAP_NET_ADMIN"), "{stderr}");
    assert!(
        stderr.contains("sudo setcap cap_net_raw,cap_net_admin=eip $(command -v tcpstate)"),
        "{stderr}"
    );
}

#[test]
fn read_and_interface_together_is_a_usage_error() {
    let out = tcpstate(&["states", "-i", "lo", "-r", "x.pcap"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    // Live-only options need -i.
    for args in [
        &["states", "-r", "x.pcap", "-w", "y.pcap"][..],
        &["states", "-r", "x.pcap", "-p"],
        &["states", "-r", "x.pcap", "-s", "96"],
    ] {
        let out = tcpstate(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    // Neither.
    let out = tcpstate(&["states", "-q"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--read <FILE>|--interface <IFACE>"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_invalid_filter_is_a_usage_error_before_any_capture() {
    // Checked before the interface is opened: status 2 for the filter, not 1 for the
    // interface that does not exist.
    let out = tcpstate(&["states", "-i", "nosuch0", "port", "99", "and"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("invalid filter"), "{}", out.stderr);
}
