#!/usr/bin/env python3
"""End-to-end benchmark of issue 5: tcpstate beside its floors and peers on the big captures.

    python3 benches/compare.py [--captures DIR] [--only short,bulk] [--runs 5]
                               [--peer-timeout 900] [--no-peers] [--markdown]

Make the captures first (`sudo python3 benches/make_captures.py`, into target/bench-captures/).
The script builds the release binary and the two floor programs (examples/plain_read.rs,
examples/pcap_read.rs; `--no-build` skips that; CARGO_TARGET_DIR is honoured), reads each
capture once so it is in the page cache, then per capture runs, in rounds, `--runs` times each:

    cat FILE > /dev/null
    plain_read FILE                                  the plain-read floor, no libpcap
    pcap_read FILE                                   the same through pcap_next_ex
    tcpstate conns -q --format json -r FILE > out    (and text `conns`, `diagnose`, `summary`, `states`, `events`)
    tcpstate conns ... --threads 2                   (json and text; `--threads N`, 0: skip)

and the slow peers once each, with a time limit (`--peer-timeout`, `--no-peers` to skip):
`tshark -q -z conv,tcp -r FILE` and `tcptrace -n FILE`, where installed, each with an
address-space limit (`--peer-mem-limit`, 12 GiB: tcptrace needs ~17 KB per connection and
would push a 24 GB machine out of memory on the 2-million-SYN capture). Wall time is the
median, CPU time (user + system) too, as it suffers less when other work shares the cores
(the load average is printed); peak memory is the child's maximum resident set size (GNU
time's %M), the largest over runs.
"B/conn" is tcpstate's peak memory above its base (its peak on a one-connection capture)
divided by the connections it tracked (`tcpstate summary`); "B/alive conn" divides it by
the most connections tracked at once (the counters' `connections tracked at once, at most`),
what memory follows once records are written as they end. On the SYN-flood capture it also
prints the memory per connection tracked at once as a slope (peak RSS with all its 2 million
half-open connections tracked at once minus the peak with a quarter of them, over the
difference), which no fixed buffer inflates. Not a test: nothing is asserted.
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
RELEASE = os.path.join(TARGET, "release")
TINY = os.path.join(ROOT, "pcaps", "close_client_first.pcap")
TIME = "/usr/bin/time"  # GNU time (Debian package `time`), for the peak memory


def die(msg):
    sys.exit("compare: " + msg)


def measure(argv, stdout_path=None, timeout=None, mem_limit=None):
    """Runs argv under GNU time; returns (wall seconds, CPU seconds (user + system), peak RSS
    bytes, exit status, timed out, stderr). GNU time, not wait4 from here: a child forked from this Python process
    would count the interpreter's pages in its own peak. `mem_limit` caps the address space
    (RLIMIT_AS) so a peer cannot push the machine out of memory."""
    out = open(stdout_path or os.devnull, "wb")
    err = tempfile.TemporaryFile()
    rss_file = tempfile.NamedTemporaryFile(prefix="compare-rss-", delete=False)
    rss_file.close()
    t0 = time.monotonic()
    limit = None
    if mem_limit:
        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    proc = subprocess.Popen([TIME, "-f", "%U %S %M", "-o", rss_file.name, "--"] + argv,
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=limit)
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        timed_out = True
    wall = time.monotonic() - t0
    out.close()
    err.seek(0)
    text = err.read().decode(errors="replace")
    err.close()
    with open(rss_file.name) as f:
        lines = f.read().split()
    os.unlink(rss_file.name)
    try:
        cpu, rss = float(lines[-3]) + float(lines[-2]), int(lines[-1]) * 1024
    except (IndexError, ValueError):
        cpu, rss = 0.0, 0
    return wall, cpu, rss, proc.returncode, timed_out, text


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%d cores (nproc), %s, Linux %s" % (os.cpu_count() or 0, model, platform.release())


def build():
    cmd = ["cargo", "build", "--release", "--bin", "tcpstate", "--example", "plain_read",
           "--example", "pcap_read"]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    if p.returncode != 0:
        die("cargo build failed: %s" % p.stderr.strip().splitlines()[-1:])


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def fmt_rate(packets, wall):
    if not packets or not wall:
        return ""
    r = packets / wall
    return "%.2f M" % (r / 1e6) if r >= 1e6 else "%.0f k" % (r / 1e3)


def run_capture(name, path, args, binary, tmp):
    warm(path)
    size = os.path.getsize(path)
    # Packets: the floor program counts records.
    plain = os.path.join(RELEASE, "examples", "plain_read")
    p = subprocess.run([plain, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        die("plain_read failed on %s: %s" % (path, p.stderr.strip()))
    packets = int(p.stdout.split()[0])
    s = subprocess.run([binary, "summary", "--format", "json", "-q", "-r", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if s.returncode != 0:
        die("tcpstate summary failed on %s: %s" % (path, s.stderr.strip()))
    conns = json.loads(s.stdout)["connections"]
    # The most connections alive at once, from the counters on standard error.
    c = subprocess.run([binary, "states", "-r", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    m = re.search(r"(\d+)\s+connections tracked at once, at most", c.stderr)
    alive = int(m.group(1)) if m else 0
    _, _, base, rc, _, err = measure([binary, "conns", "-q", "--format", "json", "-r", TINY])
    if rc != 0:
        die("tcpstate failed on %s: %s" % (TINY, err.strip()))

    out = os.path.join(tmp, "out")
    fast = [
        ("`cat` of the file", ["cat", path], None, False),
        ("plain read + locate TCP header (examples/plain_read)", [plain, path], None, False),
        ("libpcap `pcap_next_ex` + locate TCP header (examples/pcap_read)",
         [os.path.join(RELEASE, "examples", "pcap_read"), path], None, False),
        ("`tcpstate conns --format json` > file",
         [binary, "conns", "-q", "--format", "json", "-r", path], out, True),
        ("`tcpstate conns` (text) > file", [binary, "conns", "-q", "-r", path], out, True),
        ("`tcpstate diagnose` > file", [binary, "diagnose", "-q", "-r", path], out, True),
        ("`tcpstate summary` > file", [binary, "summary", "-q", "-r", path], out, True),
        ("`tcpstate states` > file", [binary, "states", "-q", "-r", path], out, True),
        ("`tcpstate events` (text) > file", [binary, "events", "-q", "-r", path], out, True),
    ]
    if args.threads > 1:
        t = str(args.threads)
        fast += [
            ("`tcpstate conns --format json --threads %s` > file" % t,
             [binary, "conns", "-q", "--format", "json", "--threads", t, "-r", path], out, True),
            ("`tcpstate conns --threads %s` (text) > file" % t,
             [binary, "conns", "-q", "--threads", t, "-r", path], out, True),
        ]
    results = {label: [] for label, *_ in fast}
    for _ in range(args.runs):
        for label, argv, stdout, _ in fast:
            wall, cpu, rss, rc, _, err = measure(argv, stdout)
            if rc != 0:
                die("%s exited %d on %s: %s" % (argv[0], rc, path, err.strip()[-300:]))
            results[label].append((wall, cpu, rss))
    rows = []
    for label, argv, _, ours in fast:
        runs = results[label]
        rows.append((label, statistics.median(w for w, _, _ in runs),
                     statistics.median(c for _, c, _ in runs), max(r for _, _, r in runs), ours,
                     len(runs), ""))
    if not args.no_peers:
        peers = [("tshark -q -z conv,tcp", ["tshark", "-q", "-z", "conv,tcp", "-r", path]),
                 ("tcptrace -n", ["tcptrace", "-n", path])]
        for label, argv in peers:
            if shutil.which(argv[0]) is None:
                rows.append((label, None, None, None, False, 0, "not installed"))
                continue
            wall, cpu, rss, rc, timed_out, err = measure(argv, out, args.peer_timeout,
                                                         int(args.peer_mem_limit * 2**30))
            note = ""
            if timed_out:
                note = "killed after %g s" % args.peer_timeout
            elif rc != 0:
                last = (err.strip().splitlines() or [""])[-1][:80]
                note = "exit %d under the %g GiB address-space limit: %s" % (
                    rc, args.peer_mem_limit, last)
            rows.append((label, wall, cpu, rss, False, 1, note))
    floor, floor_cpu = rows[1][1], rows[1][2]
    return {"name": name, "path": path, "size": size, "packets": packets, "conns": conns,
            "alive": alive,
            "base": base, "rows": rows, "floor": floor, "floor_cpu": floor_cpu,
            "load": os.getloadavg()[0]}


def marginal_memory(binary, path, threads):
    """Bytes per connection tracked at once, as a slope: peak memory with every connection of
    the SYN-flood capture tracked (`--max-conns 0`, nothing evicted) minus the peak with a
    quarter of them (a filter keeping client ports divisible by 4), over the difference in
    connections tracked at once. The fixed base (buffers, code) cancels out."""
    quarter = ["(tcp[0:2] != 80 and tcp[0:2] & 3 = 0) or (tcp[2:2] != 80 and tcp[2:2] & 3 = 0)"]
    points = []
    for extra in ([], quarter):
        argv = [binary, "conns", "-q", "--format", "json", "--max-conns", "0"]
        if threads > 1:
            argv += ["--threads", str(threads)]
        _, _, rss, rc, _, err = measure(argv + ["-r", path] + extra)
        if rc != 0:
            die("tcpstate failed on %s: %s" % (path, err.strip()[-300:]))
        c = subprocess.run([binary, "states", "--max-conns", "0", "-r", path] + extra,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        m = re.search(r"(\d+)\s+connections tracked at once, at most", c.stderr)
        points.append((int(m.group(1)) if m else 0, rss))
    (all_alive, all_rss), (q_alive, q_rss) = points
    if all_alive <= q_alive:
        return None
    return (all_rss - q_rss) / (all_alive - q_alive), q_alive, all_alive


def table(res, markdown):
    head = ["what", "runs", "median wall s", "median CPU s", "packets/s", "peak MB", "x floor",
            "x floor (CPU)", "B/conn", "B/alive conn"]
    lines = []
    for label, wall, cpu, rss, ours, runs, note in res["rows"]:
        if wall is None:
            cells = [label, "0", "", "", "", "", "", "", "", note]
        else:
            per_conn = per_alive = ""
            if ours and res["conns"]:
                per_conn = "%.0f" % (max(rss - res["base"], 0) / res["conns"])
            if ours and res["alive"]:
                per_alive = "%.0f" % (max(rss - res["base"], 0) / res["alive"])
            rate = "" if label.startswith("`cat`") else fmt_rate(res["packets"], wall)
            wall_s = "%.3f" % wall if wall < 10 else "%.1f" % wall
            peak = "%.1f" % (rss / 1e6)
            if note:  # killed or failed: no rate, no peak worth showing
                wall_s, rate, peak = ">" + wall_s, "", ""
            cpu_s = "%.2f" % cpu if cpu < 10 else "%.1f" % cpu
            cpu_x = "%.1f" % (cpu / res["floor_cpu"]) if res["floor_cpu"] else ""
            cells = [label, str(runs), wall_s, cpu_s, rate, peak, "%.1f" % (wall / res["floor"]),
                     cpu_x, per_conn, " ".join(x for x in (per_alive, note) if x)]
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in lines]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    fmt_row = lambda c: "  ".join(  # noqa: E731
        c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(c)))
    return "\n".join([fmt_row(head)] + [fmt_row(c) for c in lines])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captures", default=os.path.join(ROOT, "target", "bench-captures"))
    ap.add_argument("--only", default="short,bulk,synflood",
                    help="comma-separated capture names (FILE.pcap in --captures)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peer-timeout", type=float, default=900)
    ap.add_argument("--peer-mem-limit", type=float, default=12,
                    help="GiB of address space for tshark and tcptrace (RLIMIT_AS)")
    ap.add_argument("--no-peers", action="store_true", help="skip tshark and tcptrace")
    ap.add_argument("--threads", type=int, default=2,
                    help="also run conns with --threads N (0 or 1: don't)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--binary", default=os.path.join(RELEASE, "tcpstate"))
    args = ap.parse_args()
    if not os.access(TIME, os.X_OK):
        die("%s is missing (GNU time: apt-get install -y time)" % TIME)
    if args.runs < 1:
        die("--runs must be at least 1")
    if not args.no_build:
        build()
    for exe in (args.binary, os.path.join(RELEASE, "examples", "plain_read"),
                os.path.join(RELEASE, "examples", "pcap_read")):
        if not os.path.exists(exe):
            die("%s is missing: build it (cargo build --release --examples)" % exe)
    names = [n for n in args.only.split(",") if n]
    paths = [(n, os.path.join(args.captures, n + ".pcap")) for n in names]
    missing = [p for _, p in paths if not os.path.exists(p)]
    if missing:
        die("no capture %s: make it with sudo python3 benches/make_captures.py"
            % ", ".join(missing))
    cmd = "python3 benches/compare.py " + " ".join(sys.argv[1:])
    print("date: %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    print("machine: %s" % machine())
    print("command: %s" % cmd.strip())
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in paths:
            load_before = os.getloadavg()[0]
            res = run_capture(name, path, args, args.binary, tmp)
            print()
            line = ("%s.pcap: %d packets, %.0f MB, %d connections (at most %d at once); "
                    "tcpstate base %.1f MB; load average %.2f before, %.2f after"
                    % (name, res["packets"], res["size"] / 1e6, res["conns"], res["alive"],
                       res["base"] / 1e6, load_before, res["load"]))
            print(("**%s**" % line) if args.markdown else line)
            if args.markdown:
                print()
            print(table(res, args.markdown), flush=True)
            if name == "synflood":
                print()
                for threads in sorted({1, max(args.threads, 1)}):
                    got = marginal_memory(args.binary, path, threads)
                    if got is None:
                        continue
                    per, lo, hi = got
                    print("memory per connection tracked at once (%s): %.0f bytes (slope of "
                          "peak RSS between %d and %d connections alive at once, "
                          "`conns --format json --max-conns 0`, a quarter of the tuples "
                          "filtered in vs all)%s"
                          % ("one thread" if threads == 1 else "--threads %d" % threads,
                             per, lo, hi, "  " if args.markdown else ""), flush=True)


if __name__ == "__main__":
    main()
