#!/usr/bin/env python3
"""Soak benchmark of live capture (issue 4): many short connections for several minutes.

Run as root from the repository:

    cargo build --release
    sudo python3 benches/soak.py [--minutes 5] [--concurrency 16] [--command conns]

In a private network namespace (deleted afterwards) a private nginx on 127.0.0.1 serves a small
file to ApacheBench (HTTP/1.0, no keep-alive: one connection per request) for the whole run,
while `tcpstate <command> -i lo` captures live (`conns` streams a JSON record per connection to
/dev/null; `states` prints the counts every 10 s). Every 10 s the script samples tcpstate's
resident memory (VmRSS) and the connections ab has finished. At the end tcpstate is stopped with
SIGINT, and the script prints packets per second (from tcpstate's own counters), libpcap's
drops, and the memory samples: memory must stay flat once the table has reached its steady
size (connections end 2MSL after their last packet, so after the first minute as many leave the
table as enter it). It exits 1 if the last minutes' peak is more than 10% above the peak of
minute 2, or if any packet was dropped.

Needs nginx, apache2-utils (ab), iproute2. Traffic stays on loopback inside the namespace.
Not a test: it takes minutes; its result goes in the README.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_captures import Namespace, Nginx, PORT, die  # noqa: E402


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--command", choices=["conns", "states"], default="conns")
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "tcpstate"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        die("needs root (network namespace, live capture)")
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        die("%s missing: run cargo build --release first" % binary)
    seconds = int(args.minutes * 60)
    with Namespace() as ns:
        nginx = Nginx(ns, {"index.html": 100})
        try:
            cmd = [binary, args.command, "-i", "lo"]
            cmd += ["--format", "json"] if args.command == "conns" else ["--interval", "10s"]
            tool = ns.spawn(*cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            # Wait until it captures ("listening on" on stderr).
            buf = b""
            deadline = time.monotonic() + 10
            os.set_blocking(tool.stderr.fileno(), False)
            while b"listening on" not in buf:
                if tool.poll() is not None or time.monotonic() > deadline:
                    die("tcpstate did not start: %s" % buf.decode(errors="replace"))
                chunk = tool.stderr.read()
                if chunk:
                    buf += chunk
                time.sleep(0.05)
            ab = ns.spawn("ab", "-q", "-r", "-t", str(seconds), "-n", str(max(seconds, 1) * 40000),
                          "-c", str(args.concurrency),
                          "http://127.0.0.1:%d/index.html" % PORT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            start = time.monotonic()
            samples = []
            print("%8s  %10s" % ("time s", "RSS MB"), flush=True)
            while ab.poll() is None:
                time.sleep(10)
                # `ip netns exec` execs the program: its pid is tcpstate's.
                rss = rss_kib(tool.pid)
                t = time.monotonic() - start
                samples.append((t, rss))
                print("%8.0f  %10.1f" % (t, (rss or 0) / 1024), flush=True)
            ab_out = ab.stdout.read().decode(errors="replace")
            elapsed = time.monotonic() - start
            tool.send_signal(signal.SIGINT)
            try:
                tool.wait(timeout=30)
            except subprocess.TimeoutExpired:
                tool.kill()
                die("tcpstate did not stop within 30 s of SIGINT")
            os.set_blocking(tool.stderr.fileno(), True)
            err = (buf + tool.stderr.read()).decode(errors="replace")
        finally:
            nginx.stop()

    def counter(what):
        m = re.search(r"tcpstate:\s+(\d+)\s+%s" % re.escape(what), err)
        return int(m.group(1)) if m else 0

    packets = counter("packets read")
    conns = counter("connections")
    dropped = counter("packets dropped by the kernel (buffer full)") + counter(
        "packets dropped by the interface")
    done = re.search(r"Complete requests:\s+(\d+)", ab_out)
    print()
    print("tcpstate %s -i lo, %.0f s of ab -c %d (HTTP/1.0, a connection per request)"
          % (args.command, elapsed, args.concurrency))
    print("requests completed by ab: %s" % (done.group(1) if done else "?"))
    print("packets read: %d (%.0f packets/s), connections: %d (%.0f/s)"
          % (packets, packets / elapsed, conns, conns / elapsed))
    print("dropped (libpcap): %d" % dropped)
    rss = [(t, r) for t, r in samples if r]
    ok = dropped == 0
    if len(rss) >= 4:
        settled = [r for t, r in rss if 60 < t <= 120] or [rss[len(rss) // 2][1]]
        last = [r for t, r in rss if t > elapsed - 120] or [rss[-1][1]]
        base, end = max(settled), max(last)
        growth = (end - base) / base
        print("peak RSS: minute 2 %.1f MB, last 2 minutes %.1f MB (%+.1f%%), overall %.1f MB"
              % (base / 1024, end / 1024, 100 * growth, max(r for _, r in rss) / 1024))
        ok = ok and growth <= 0.10
    if not done:
        print("ab said: " + ab_out.strip()[-400:])
    print("flat: %s" % ("yes" if ok else "NO"))
    if not err.strip():
        print("(tcpstate printed nothing on stderr)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
