#!/usr/bin/env python3
"""Make the big benchmark captures of issue 5 on demand (they are never committed).

    sudo python3 benches/make_captures.py [--out DIR] [short] [bulk] [synflood]

With no names, all three are made into DIR (default: target/bench-captures/ in the repo):

- short.pcap: nginx serving a small file to ApacheBench, SHORT_REQUESTS requests (default
  400000), SHORT_CONCURRENCY at once (default 32), HTTP/1.0 without keep-alive: one TCP
  connection per request. Real kernel traffic on loopback in a private network namespace,
  recorded by tcpdump (snap length 128). About 12 packets per connection.
- bulk.pcap: BULK_CONNS (default 50) concurrent downloads of a BULK_MB (default 100) MB file
  from the same nginx with ab. The namespace's loopback gets an Ethernet-sized MTU (BULK_MTU,
  default 1500) and TSO/GSO off, so segments are as on a real network rather than 64 KB
  loopback super-packets.
- synflood.pcap: SYN_FLOOD (default 2000000) SYNs from distinct sources in 127.0.0.0/8 to
  one server, every SYN_ANSWERED-th (default 8) answered by a SYN-ACK; written directly by
  benches/syn_flood.py's writer, no traffic.

Needs root (network namespaces, tcpdump) and the Debian packages nginx, apache2-utils (ab),
tcpdump, iproute2 (ip), procps (sysctl) and ethtool; it installs nothing and says what is
missing. All traffic stays on 127.0.0.1 inside namespaces this script creates and deletes.
A capture whose tcpdump reports dropped packets is retried once with a larger buffer, then
the script fails. Python 3 standard library only.
"""
import argparse
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import syn_flood  # noqa: E402  (the synthetic writer)

TOOLS = {"nginx": "nginx", "ab": "apache2-utils", "tcpdump": "tcpdump", "ip": "iproute2",
         "sysctl": "procps", "ethtool": "ethtool"}
PORT = 80


def die(msg):
    sys.exit("make_captures: " + msg)


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        die("%s must be an integer" % name)


def sh(*args, check=True, **kw):
    p = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       **kw)
    if check and p.returncode != 0:
        die("%s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr.strip()[-300:]))
    return p


def count_records(path):
    """Records and bytes of a classic pcap written by tcpdump (its own check of the file)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24 or data[:4] not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        die("%s: not a little-endian pcap" % path)
    off, n, unpack = 24, 0, struct.Struct("<8xI4x").unpack_from
    while off + 16 <= len(data):
        (caplen,) = unpack(data, off)
        off += 16 + caplen
        n += 1
    if off != len(data):
        die("%s: ends inside a record" % path)
    return n


class Namespace:
    """A private network namespace with lo up; deleted on exit (also on failure)."""

    def __init__(self, mtu=None):
        self.name = "tcpstate-bench-%d" % os.getpid()
        self.mtu = mtu
        self.procs = []

    def __enter__(self):
        sh("ip", "netns", "del", self.name, check=False)
        sh("ip", "netns", "add", self.name)
        try:
            if self.mtu:
                sh("ip", "-n", self.name, "link", "set", "lo", "mtu", str(self.mtu))
                self.run("ethtool", "-K", "lo", "tso", "off", "gso", "off")
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
            # Enough ephemeral ports, and the loopback TIME_WAIT reuse Linux allows, so 400,000
            # connections in a minute do not run out of 4-tuples.
            self.run("sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535",
                     "net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=4096",
                     "net.ipv4.tcp_max_syn_backlog=4096")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, *args, check=True):
        return sh("ip", "netns", "exec", self.name, *args, check=check)

    def spawn(self, *args, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", self.name] + list(args), **kw)
        self.procs.append(p)
        return p

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sh("ip", "netns", "del", self.name, check=False)


class Nginx:
    """A private nginx (config, pid, logs, document root under a temp dir), 127.0.0.1:80."""

    def __init__(self, ns, files):
        self.ns = ns
        self.dir = tempfile.mkdtemp(prefix="tcpstate-nginx-")
        os.chmod(self.dir, 0o755)
        www = os.path.join(self.dir, "www")
        os.mkdir(www)
        os.chmod(www, 0o755)
        for name, size in files.items():
            path = os.path.join(www, name)
            with open(path, "wb") as f:
                chunk = b"tcpstate benchmark\n" * 4096
                left = size
                while left > 0:
                    f.write(chunk[:left])
                    left -= min(left, len(chunk))
            os.chmod(path, 0o644)
        d = self.dir
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""worker_processes 1;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    sendfile on;
    keepalive_timeout 0;
    server {
        listen 127.0.0.1:%(port)d backlog=4096;
        root %(d)s/www;
    }
}
""" % {"d": d, "port": PORT})
        self.proc = ns.spawn("nginx", "-p", d, "-c", conf, "-e", os.path.join(d, "error.log"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                die("nginx exited: %s" % self.proc.stderr.read().decode(errors="replace")[-300:])
            if ns.run("ab", "-q", "-n", "1", "http://127.0.0.1:%d/" % PORT,
                      check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                die("nginx did not answer on 127.0.0.1:%d within 10 s" % PORT)
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def tcpdump_start(ns, path, buffer_kib):
    p = ns.spawn("tcpdump", "-i", "lo", "--immediate-mode", "-B", str(buffer_kib), "-s", "128",
                 "-n", "-Z", "root", "-w", path, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)
    buf = b""
    deadline = time.monotonic() + 10
    while b"listening on" not in buf:
        if time.monotonic() > deadline:
            p.kill()
            die("tcpdump did not start: %r" % buf)
        line = p.stderr.readline()
        if not line:
            die("tcpdump exited: %r" % buf)
        buf += line
    time.sleep(0.3)
    return p, buf


def tcpdump_stop(p, head):
    time.sleep(0.5)  # let the last packets reach the ring
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        die("tcpdump did not stop within 120 s of SIGINT")
    text = (head + err).decode(errors="replace")
    st = {}
    for key, pat in (("captured", r"(\d+) packets? captured"),
                     ("received", r"(\d+) packets? received by filter"),
                     ("dropped", r"(\d+) packets? dropped by kernel"),
                     ("if_dropped", r"(\d+) packets? dropped by interface")):
        m = re.search(pat, text)
        st[key] = int(m.group(1)) if m else None
    if st["captured"] is None or st["dropped"] is None:
        die("tcpdump printed no statistics: %s" % text.strip()[-300:])
    return st


def ab_check(out, want):
    done = re.search(r"Complete requests:\s+(\d+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    if not done or int(done.group(1)) != want or not failed or int(failed.group(1)) != 0:
        die("ab completed %s of %d requests, %s failed (ephemeral ports or file descriptors "
            "short?)" % (done.group(1) if done else "?", want,
                         failed.group(1) if failed else "?"))
    rate = re.search(r"Requests per second:\s+([\d.]+)", out)
    return float(rate.group(1)) if rate else 0.0


def capture_traffic(name, path, files, ab_args, mtu=None):
    """Runs nginx + ab in a fresh namespace under tcpdump; retries once if tcpdump drops."""
    for buffer_kib in (512 << 10, 2 << 20):
        tmp = path + ".part"
        with Namespace(mtu) as ns:
            nginx = Nginx(ns, files)
            try:
                dump, head = tcpdump_start(ns, tmp, buffer_kib)
                t0 = time.monotonic()
                ab = ns.run("ab", *ab_args, check=False)
                secs = time.monotonic() - t0
                st = tcpdump_stop(dump, head)
            finally:
                nginx.stop()
        if ab.returncode != 0:
            die("ab failed (%d): %s" % (ab.returncode, (ab.stderr or ab.stdout).strip()[-500:]))
        want = int(ab_args[ab_args.index("-n") + 1])
        rate = ab_check(ab.stdout, want)
        dropped = st["dropped"] + (st["if_dropped"] or 0)
        if dropped == 0:
            n = count_records(tmp)
            if n != st["captured"]:
                die("%s: tcpdump said %d captured, the file has %d records"
                    % (name, st["captured"], n))
            os.replace(tmp, path)
            size = os.path.getsize(path)
            print("%s: %s  %d packets, %.0f MB, %d requests by ab in %.1f s (%.0f/s), "
                  "tcpdump dropped 0 (buffer %d MiB)"
                  % (name, path, n, size / 1e6, want, secs, rate, buffer_kib >> 10), flush=True)
            return
        os.unlink(tmp)
        print("%s: tcpdump dropped %d packets with a %d MiB buffer; retrying"
              % (name, dropped, buffer_kib >> 10), flush=True)
    die("%s: tcpdump kept dropping packets (%d with the largest buffer)" % (name, dropped))


def make_short(out):
    n = env_int("SHORT_REQUESTS", 400_000)
    c = env_int("SHORT_CONCURRENCY", 32)
    capture_traffic("short", os.path.join(out, "short.pcap"), {"small.html": 512},
                    ["-q", "-r", "-s", "30", "-n", str(n), "-c", str(c),
                     "http://127.0.0.1:%d/small.html" % PORT])


def make_bulk(out):
    n = env_int("BULK_CONNS", 50)
    mb = env_int("BULK_MB", 100)
    capture_traffic("bulk", os.path.join(out, "bulk.pcap"), {"big.bin": mb << 20},
                    ["-q", "-s", "120", "-n", str(n), "-c", str(n),
                     "http://127.0.0.1:%d/big.bin" % PORT], mtu=env_int("BULK_MTU", 1500))


def make_synflood(out):
    n = env_int("SYN_FLOOD", 2_000_000)
    every = env_int("SYN_ANSWERED", 8)
    path = os.path.join(out, "synflood.pcap")
    syn_flood.write_flood(path + ".part", n, answer_every=every)
    os.replace(path + ".part", path)
    print("synflood: %s  %d SYNs, every %dth answered, %.0f MB (written, no traffic)"
          % (path, n, every, os.path.getsize(path) / 1e6), flush=True)


MAKERS = {"short": make_short, "bulk": make_bulk, "synflood": make_synflood}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-captures"))
    ap.add_argument("captures", nargs="*", metavar="|".join(MAKERS))
    args = ap.parse_args()
    names = args.captures or list(MAKERS)
    for n in names:
        if n not in MAKERS:
            die("unknown capture %r (known: %s)" % (n, ", ".join(MAKERS)))
    if any(n != "synflood" for n in names):
        if os.geteuid() != 0:
            die("must run as root (network namespaces, tcpdump)")
        missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
        if missing:
            die("missing tools; install with: apt-get install -y " + " ".join(missing))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    os.makedirs(args.out, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("make_captures: terminated"))
    for name in names:
        MAKERS[name](args.out)


if __name__ == "__main__":
    main()
