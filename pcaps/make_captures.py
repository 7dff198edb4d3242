#!/usr/bin/env python3
"""Produce small real captures of Linux TCP connections plus "truth" files.

Run as root:

    python3 pcaps/make_captures.py [--out DIR] [--jobs N] [scenario ...]

For every scenario the script creates a private network namespace
``tcpstate-<scenario>``, brings up ``lo`` there, and re-executes itself inside
it (``ip netns exec NS python3 make_captures.py --run-scenario X``).  The child
sets per-namespace sysctls, starts ``tcpdump`` on ``lo``, drives real sockets
over 127.0.0.1 / ::1, takes an ``ss -tan -o`` snapshot while the sockets are
still open, stops tcpdump, checks that no packet was dropped by the kernel and
writes ``<scenario>.pcap`` and ``<scenario>.truth.json``.  The namespace is
deleted afterwards (also on failure).  A capture with dropped packets is
retried.

Python 3.11 standard library only.  All traffic stays on loopback inside the
namespaces created here.
"""

import argparse
import errno
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NS_PREFIX = "tcpstate-"
H4 = "127.0.0.1"
H6 = "::1"
RETRY = 3  # child exit code: capture unusable, try again

STATE_MAP = {
    "ESTAB": "ESTABLISHED",
    "SYN-SENT": "SYN_SENT",
    "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1",
    "FIN-WAIT-2": "FIN_WAIT2",
    "CLOSE-WAIT": "CLOSE_WAIT",
    "LAST-ACK": "LAST_ACK",
    "TIME-WAIT": "TIME_WAIT",
    "CLOSING": "CLOSING",
    "CLOSE": "CLOSED",
    "LISTEN": "LISTEN",
}

REQ = b"GET / HTTP/1.0\r\nHost: tcpstate\r\n\r\n"
RESP = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# ----------------------------------------------------------------------------
# small helpers (run inside the namespace)
# ----------------------------------------------------------------------------

def fmt(sa):
    """Format a socket address the way `ss -n` prints it."""
    host, port = sa[0], sa[1]
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def fam_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def set_sysctl(name, value):
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path, "w") as f:
        f.write(str(value))


def nft_add(name, hook, rules):
    """Create table inet <name> with one filter chain on <hook>."""
    body = "\n".join("    " + r for r in rules)
    script = (
        "table inet %s {\n  chain c {\n    type filter hook %s priority 0; policy accept;\n%s\n  }\n}\n"
        % (name, hook, body)
    )
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def nft_del(name):
    subprocess.run(["nft", "delete", "table", "inet", name], check=False)


def listener(host, port, backlog=128, rcvbuf=None):
    s = socket.socket(fam_of(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, port))
    s.listen(backlog)
    return s


def connect(host, port, bind=None):
    c = socket.socket(fam_of(host), socket.SOCK_STREAM)
    if bind is not None:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(bind)
    c.connect((host, port))
    return c


def accept_for(lsock, client):
    """Accept the server end of `client` (sequential scenarios)."""
    want = client.getsockname()[:2]
    s, peer = lsock.accept()
    if peer[:2] != want:
        raise RuntimeError("accepted %r, expected %r" % (peer, want))
    return s


def recv_exact(s, n):
    buf = b""
    for _ in range(10000):
        if len(buf) >= n:
            return buf
        d = s.recv(n - len(buf))
        if not d:
            raise RuntimeError("EOF after %d of %d bytes" % (len(buf), n))
        buf += d
    raise RuntimeError("recv_exact: too many iterations")


def read_to_eof(s):
    buf = b""
    for _ in range(10000):
        d = s.recv(65536)
        if not d:
            return buf
        buf += d
    raise RuntimeError("read_to_eof: too many iterations")


def exchange(c, s, req=REQ, resp=RESP):
    c.sendall(req)
    recv_exact(s, len(req))
    s.sendall(resp)
    recv_exact(c, len(resp))


def expect_reset(s, timeout=3.0):
    s.settimeout(timeout)
    try:
        d = s.recv(100)
    except ConnectionResetError:
        return True
    return "no reset (recv returned %r)" % (d,)


def set_linger0(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def ss_raw():
    return subprocess.run(["ss", "-tan", "-o"], capture_output=True, text=True, check=True).stdout


def parse_ss(raw):
    out = []
    for line in raw.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        state = parts[0]
        if state == "LISTEN":
            continue
        m = re.search(r"timer:\(([^)]*)\)", line)
        out.append({
            "local": parts[3],
            "remote": parts[4],
            "state": STATE_MAP.get(state, state.replace("-", "_")),
            "timer": m.group(1) if m else None,
        })
    return out


def ss_has(local, remote):
    for so in parse_ss(ss_raw()):
        if so["local"] == local and so["remote"] == remote:
            return so["state"]
    return None


def wait_until(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ----------------------------------------------------------------------------
# pcap reading (for verification and packet counts)
# ----------------------------------------------------------------------------

def read_pcap(path):
    """Return a list of dicts: ts, src, dst, flags (str), seq, ack, len."""
    pkts = []
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return pkts
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    else:
        e = ">"
    nsec = struct.unpack(e + "I", data[:4])[0] == 0xA1B23C4D
    linktype = struct.unpack(e + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        ts_s, ts_u, incl, orig = struct.unpack(e + "IIII", data[off:off + 16])
        frame = data[off + 16: off + 16 + incl]
        off += 16 + incl
        ts = ts_s + ts_u / (1e9 if nsec else 1e6)
        if linktype != 1 or len(frame) < 14:
            continue
        etype = struct.unpack(">H", frame[12:14])[0]
        ip = frame[14:]
        if etype == 0x0800:
            ihl = (ip[0] & 15) * 4
            tot = struct.unpack(">H", ip[2:4])[0]
            if ip[9] != 6:
                continue
            src = socket.inet_ntop(socket.AF_INET, ip[12:16])
            dst = socket.inet_ntop(socket.AF_INET, ip[16:20])
            tcp = ip[ihl:]
            tcplen = tot - ihl
        elif etype == 0x86DD:
            if ip[6] != 6:
                continue
            plen = struct.unpack(">H", ip[4:6])[0]
            src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, ip[24:40])
            tcp = ip[40:]
            tcplen = plen
        else:
            continue
        sp, dp, seq, ack, offf, fl = struct.unpack(">HHIIBB", tcp[:14])
        doff = (offf >> 4) * 4
        flags = "".join(ch for bit, ch in ((2, "S"), (1, "F"), (4, "R"), (8, "P"), (16, "."))
                        if fl & bit)
        pkts.append({"ts": ts, "src": fmt((src, sp)), "dst": fmt((dst, dp)), "flags": flags,
                     "syn": bool(fl & 2), "fin": bool(fl & 1), "rst": bool(fl & 4),
                     "ackf": bool(fl & 16), "seq": seq, "ack": ack, "len": tcplen - doff})
    return pkts


# ----------------------------------------------------------------------------
# capture + context
# ----------------------------------------------------------------------------

class Capture:
    def __init__(self, path):
        self.path = path
        self.proc = None
        self.stats = {}

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "128", "-B", "16384",
             "-n", "-Z", "root", "-w", self.path],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        buf = b""
        deadline = time.monotonic() + 10
        fd = self.proc.stderr.fileno()
        while b"listening on" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("tcpdump did not start: %r" % buf)
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("tcpdump exited: %r" % buf)
            buf += chunk
        self.head = buf
        time.sleep(0.2)

    def stop(self):
        if self.proc is None:
            return self.stats
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        text = (self.head + err).decode(errors="replace")
        self.proc = None
        st = {}
        for key, pat in (("captured", r"(\d+) packets? captured"),
                         ("received", r"(\d+) packets? received by filter"),
                         ("dropped", r"(\d+) packets? dropped by kernel")):
            m = re.search(pat, text)
            st[key] = int(m.group(1)) if m else None
        st["stderr"] = text
        self.stats = st
        return st


class Ctx:
    def __init__(self, name, port, cap):
        self.name = name
        self.port = port
        self.cap = cap
        self.conns = []
        self.unknowable = []
        self.snap_raw = None
        self.sockets = None
        self.keep = []          # sockets closed only after the snapshot
        self.problems = []      # expectation mismatches (reported, truth kept)
        self.fatal = []         # mismatches that make the run worth retrying
        self.notes = []
        self.extra_desc = ""
        self.t0 = time.monotonic()

    def conn(self, client, server, handshake, first_closer=None, reset_by=None):
        c = {"client": client if isinstance(client, str) else fmt(client),
             "server": server if isinstance(server, str) else fmt(server),
             "handshake": handshake, "first_closer": first_closer, "reset_by": reset_by}
        self.conns.append(c)
        return c

    def snapshot(self):
        """ss snapshot, then stop the capture at once."""
        self.snap_raw = ss_raw()
        self.sockets = parse_ss(self.snap_raw)
        self.cap.stop()

    def state(self, local, remote):
        local = local if isinstance(local, str) else fmt(local)
        remote = remote if isinstance(remote, str) else fmt(remote)
        for so in self.sockets:
            if so["local"] == local and so["remote"] == remote:
                return so["state"]
        return "CLOSED"

    def expect(self, local, remote, state, fatal=False):
        got = self.state(local, remote)
        if got != state:
            local = local if isinstance(local, str) else fmt(local)
            remote = remote if isinstance(remote, str) else fmt(remote)
            msg = "%s -> %s: expected %s, ss says %s" % (local, remote, state, got)
            (self.fatal if fatal else self.problems).append(msg)

    def unknown(self, local, remote, passive_state, why):
        local = local if isinstance(local, str) else fmt(local)
        remote = remote if isinstance(remote, str) else fmt(remote)
        self.unknowable.append({"local": local, "remote": remote,
                                "kernel_state": self.state(local, remote),
                                "passive_state": passive_state, "why": why})

    def note(self, msg):
        self.notes.append("%.3f %s" % (time.monotonic() - self.t0, msg))


# ----------------------------------------------------------------------------
# scenarios
# ----------------------------------------------------------------------------

SCENARIOS = {}


def scenario(port, desc, sysctls=None, timeout=60, attempts=3):
    def deco(fn):
        SCENARIOS[fn.__name__] = {"fn": fn, "port": port, "desc": desc,
                                  "sysctls": sysctls or {}, "timeout": timeout,
                                  "attempts": attempts}
        return fn
    return deco


@scenario(5001, "One connection: request/response, the client closes first, then the server closes; "
                "client ends in TIME_WAIT, server CLOSED.")
def close_client_first(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", "client")
    exchange(c, s)
    time.sleep(0.05)
    c.close()
    read_to_eof(s)
    time.sleep(0.1)
    s.close()
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "TIME_WAIT")
    ctx.expect(sv, cl, "CLOSED")
    ctx.keep += [L]


@scenario(5002, "One connection: request/response, the server closes first (HTTP/1.0 style), the client "
                "reads EOF and closes; server ends in TIME_WAIT, client CLOSED.")
def close_server_first(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", "server")
    exchange(c, s)
    time.sleep(0.05)
    s.close()
    read_to_eof(c)
    time.sleep(0.1)
    c.close()
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(sv, cl, "TIME_WAIT")
    ctx.expect(cl, sv, "CLOSED")
    ctx.keep += [L]


@scenario(5003, "Half close: the client sends a request and shutdown(SHUT_WR)s, the server keeps sending "
                "5 chunks over about 1 s after the client's FIN, then closes; the client reads to EOF and "
                "closes; client ends in TIME_WAIT, server CLOSED.")
def half_close(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", "client")
    c.sendall(REQ)
    c.shutdown(socket.SHUT_WR)
    got = read_to_eof(s)
    assert got == REQ
    for i in range(5):
        time.sleep(0.2)
        s.sendall(b"chunk %d of the response after the client's FIN\n" % i)
    time.sleep(0.1)
    s.close()
    data = read_to_eof(c)
    assert data.count(b"chunk") == 5
    time.sleep(0.05)
    c.close()
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "TIME_WAIT")
    ctx.expect(sv, cl, "CLOSED")
    ctx.keep += [L]


@scenario(5004, "Three connections: request/response, the client close()s, the server application never "
                "closes; servers stay in CLOSE_WAIT, clients in orphaned FIN_WAIT2 with a timer. 1.5 s "
                "later a fourth connection closes normally (client TIME_WAIT).")
def close_wait_leak(ctx):
    L = listener(H4, ctx.port)
    pairs = []
    for i in range(3):
        c = connect(H4, ctx.port)
        s = accept_for(L, c)
        cl, sv = c.getsockname(), s.getsockname()
        ctx.conn(cl, sv, "completed", "client")
        exchange(c, s)
        time.sleep(0.05)
        c.close()
        pairs.append((cl, sv))
        ctx.keep.append(s)
        time.sleep(0.15)
    # Life goes on: 1.5 s later a well-behaved connection (closed by both sides) shows that
    # the CLOSE_WAITs are over a second old by the end of the capture.
    time.sleep(1.5)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl4, sv4 = c.getsockname(), s.getsockname()
    ctx.conn(cl4, sv4, "completed", "client")
    exchange(c, s)
    c.close()
    read_to_eof(s)
    s.close()
    time.sleep(0.5)
    ctx.snapshot()
    for cl, sv in pairs:
        ctx.expect(cl, sv, "FIN_WAIT2")
        ctx.expect(sv, cl, "CLOSE_WAIT")
    ctx.expect(cl4, sv4, "TIME_WAIT")
    ctx.expect(sv4, cl4, "CLOSED")
    ctx.keep += [L]


@scenario(5005, "One connection: request/response, then the client sets SO_LINGER {1,0} and close()s, "
                "which sends a RST instead of a FIN; both ends CLOSED.")
def linger_abort(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", None, "client")
    exchange(c, s)
    time.sleep(0.1)
    set_linger0(c)
    c.close()
    r = expect_reset(s)
    if r is not True:
        ctx.problems.append("server: " + r)
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "CLOSED")
    ctx.expect(sv, cl, "CLOSED")
    ctx.keep += [s, L]


@scenario(5006, "One connection: the client sends 100 bytes the server never reads, the server close()s "
                "with unread data, which sends a RST; both ends CLOSED.")
def close_unread_data(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", None, "server")
    c.sendall(b"x" * 100)
    time.sleep(0.1)
    s.close()
    r = expect_reset(c)
    if r is not True:
        ctx.problems.append("client: " + r)
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "CLOSED")
    ctx.expect(sv, cl, "CLOSED")
    ctx.keep += [c, L]


@scenario(5007, "Three connection attempts to a port with no listener, each SYN answered by RST,ACK "
                "(connection refused); nothing remains.")
def refused(ctx):
    for i in range(3):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind((H4, 0))   # explicit bind so the port is known after the failure
        cl = c.getsockname()
        ctx.conn(cl, (H4, ctx.port), "refused", None, "server")
        try:
            c.connect((H4, ctx.port))
            ctx.problems.append("connect succeeded?")
        except ConnectionRefusedError:
            pass
        c.close()
        time.sleep(0.2)
    time.sleep(0.3)
    ctx.snapshot()


@scenario(5008, "nftables drops SYNs to the listening port at the input hook (still captured); client 1 "
                "(tcp_syn_retries=2) gives up with ETIMEDOUT, client 2 starts 5 s later and is still in "
                "SYN_SENT at the snapshot; client 1 CLOSED, client 2 SYN_SENT.",
          sysctls={"net.ipv4.tcp_syn_retries": 2}, timeout=60)
def syn_blackhole(ctx):
    L = listener(H4, ctx.port)
    nft_add("tcpstate_in", "input",
            ["tcp dport %d tcp flags & (syn | ack) == syn drop" % ctx.port])
    sv = (H4, ctx.port)
    c1 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c1.setblocking(False)
    t1 = time.monotonic()
    rc = c1.connect_ex(sv)
    assert rc == errno.EINPROGRESS, rc
    cl1 = c1.getsockname()
    ctx.conn(cl1, sv, "unanswered")
    time.sleep(max(0.0, t1 + 5.0 - time.monotonic()))
    c2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c2.setblocking(False)
    t2 = time.monotonic()
    rc = c2.connect_ex(sv)
    assert rc == errno.EINPROGRESS, rc
    cl2 = c2.getsockname()
    ctx.conn(cl2, sv, "unanswered")
    r, w, x = select.select([], [c1], [], 20)
    tfail = time.monotonic()
    err = c1.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    ctx.note("client 1 connect result %s after %.2f s" % (errno.errorcode.get(err, err), tfail - t1))
    if err != errno.ETIMEDOUT:
        ctx.problems.append("client 1: expected ETIMEDOUT, got %s" % errno.errorcode.get(err, err))
    time.sleep(max(tfail + 0.5, t2 + 2.5) - time.monotonic())
    ctx.note("snapshot %.2f s after client 2's first SYN" % (time.monotonic() - t2))
    ctx.snapshot()
    ctx.expect(cl1, sv, "CLOSED")
    ctx.expect(cl2, sv, "SYN_SENT")
    ctx.unknown(cl1, sv, "SYN_SENT",
                "the client gave up after tcp_syn_retries=2 (ETIMEDOUT) silently; no packet shows it, "
                "the capture just stops showing SYN retransmissions")
    ctx.extra_desc = " Client 1 got ETIMEDOUT after %.1f s." % (tfail - t1)
    ctx.keep += [c1, c2, L]


@scenario(5009, "The client's final handshake ACK is dropped by an nftables output rule (so it is not "
                "captured); the client's first data segment 0.3 s later completes the handshake at the "
                "server; then request/response and a client-first close; client TIME_WAIT, server CLOSED.")
def lost_final_ack(ctx):
    L = listener(H4, ctx.port)
    nft_add("tcpstate_out", "output",
            ["tcp dport %d tcp flags & (fin | syn | rst | psh | ack) == ack drop" % ctx.port])
    try:
        c = connect(H4, ctx.port)
    finally:
        nft_del("tcpstate_out")
    cl, sv = c.getsockname(), (H4, ctx.port)
    ctx.conn(cl, sv, "completed", "client")
    st = ss_has(fmt(sv), fmt(cl))
    ctx.note("server end after connect() returned: %s" % st)
    if st != "SYN_RECV":
        ctx.fatal.append("server end is %s right after connect, expected SYN_RECV" % st)
    time.sleep(0.3)
    c.sendall(REQ)
    s = accept_for(L, c)
    recv_exact(s, len(REQ))
    s.sendall(RESP)
    recv_exact(c, len(RESP))
    time.sleep(0.05)
    c.close()
    read_to_eof(s)
    time.sleep(0.1)
    s.close()
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "TIME_WAIT")
    ctx.expect(sv, cl, "CLOSED")
    ctx.keep += [L]


@scenario(5010, "tcp_synack_retries=1 and every pure ACK from the clients is dropped at the server's input "
                "hook (captured), so two handshakes never complete at the server, which drops both "
                "half-open connections silently after about 3 s while both clients think they are "
                "ESTABLISHED; then client A sends data and draws a RST without ACK from the server, client "
                "B stays idle; A CLOSED, B client ESTABLISHED with the server end silently CLOSED.",
          sysctls={"net.ipv4.tcp_synack_retries": 1}, timeout=60)
def synack_exhausted(ctx):
    L = listener(H4, ctx.port)
    nft_add("tcpstate_in", "input",
            ["tcp dport %d tcp flags & (fin | syn | rst | psh | ack) == ack drop" % ctx.port])
    sv = (H4, ctx.port)
    a = connect(H4, ctx.port)
    cla = a.getsockname()
    ctx.conn(cla, sv, "not_completed", None, "server")
    time.sleep(0.1)
    b = connect(H4, ctx.port)
    clb = b.getsockname()
    ctx.conn(clb, sv, "not_completed", None, None)
    t0 = time.monotonic()
    ok = wait_until(lambda: "SYN-RECV" not in ss_raw(), 15, 0.05)
    ctx.note("server dropped the half-open connections %.2f s after connect (ok=%s)"
             % (time.monotonic() - t0, ok))
    time.sleep(0.7)
    a.sendall(b"data after the server forgot us\n")
    r = expect_reset(a)
    if r is not True:
        ctx.problems.append("client A: " + r)
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cla, sv, "CLOSED")
    ctx.expect(clb, sv, "ESTABLISHED")
    ctx.expect(sv, cla, "CLOSED")
    ctx.expect(sv, clb, "CLOSED")
    ctx.unknown(sv, clb, "SYN_RECV",
                "the client's ACKs are in the capture but were dropped at the server's input hook (the "
                "retransmitted SYN-ACK shows the server stayed in SYN_RECV); the server then dropped the "
                "half-open connection silently after tcp_synack_retries=1, no packet shows it")
    ctx.keep += [a, b, L]


@scenario(5011, "The server closes first (server TIME_WAIT), then the client reconnects from the same port; "
                "the server's TIME_WAIT accepts the new SYN on the same 4-tuple, the second connection "
                "exchanges data and stays ESTABLISHED on both ends.")
def tw_reuse(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", "server")
    exchange(c, s)
    time.sleep(0.05)
    s.close()
    read_to_eof(c)
    time.sleep(0.1)
    c.close()
    time.sleep(0.3)
    st = ss_has(fmt(sv), fmt(cl))
    ctx.note("server end before reconnect: %s" % st)
    if st != "TIME_WAIT":
        ctx.fatal.append("server end is %s before the reconnect, expected TIME_WAIT" % st)
    c2 = connect(H4, ctx.port, bind=cl)
    s2 = accept_for(L, c2)
    assert c2.getsockname() == cl
    ctx.conn(cl, sv, "completed", None, None)
    exchange(c2, s2)
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "ESTABLISHED")
    ctx.expect(sv, cl, "ESTABLISHED")
    ctx.keep += [c2, s2, L]


@scenario(5012, "Simultaneous close: an nftables input rule drops the first FINs (captured), both ends "
                "shutdown(SHUT_WR) at the same moment, the rule is removed 50 ms later and the "
                "retransmitted FINs cross: FIN_WAIT1 -> CLOSING -> TIME_WAIT on both ends.")
def simultaneous_close(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", "simultaneous")
    exchange(c, s)
    time.sleep(0.1)
    nft_add("tcpstate_in", "input",
            ["tcp dport %d tcp flags & fin == fin drop" % ctx.port,
             "tcp sport %d tcp flags & fin == fin drop" % ctx.port])
    try:
        c.shutdown(socket.SHUT_WR)
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
    finally:
        nft_del("tcpstate_in")
    ok = wait_until(lambda: ss_has(fmt(cl), fmt(sv)) == "TIME_WAIT"
                    and ss_has(fmt(sv), fmt(cl)) == "TIME_WAIT", 5, 0.02)
    ctx.note("both TIME_WAIT: %s" % ok)
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "TIME_WAIT", fatal=True)
    ctx.expect(sv, cl, "TIME_WAIT", fatal=True)
    ctx.keep += [c, s, L]


@scenario(5013, "Simultaneous open without a listener: 127.0.0.1:6013 and 127.0.0.1:5013 connect to each "
                "other (6013 sends the first SYN, so it is the client); both first SYNs are dropped at input "
                "(captured), the retransmitted SYNs cross 1 s later (SYN, SYN, SYN-ACK, SYN-ACK, ACK, ACK); "
                "both ends ESTABLISHED.", attempts=6)
def simultaneous_open(ctx):
    pa, pb = 6013, ctx.port   # a (6013) sends the first SYN: the "client"; b is 5013
    nft_add("tcpstate_in", "input",
            ["tcp dport { %d, %d } tcp flags & (syn | ack) == syn drop" % (pa, pb)])
    socks = []
    for p in (pa, pb):
        k = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        k.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        k.bind((H4, p))
        k.setblocking(False)
        socks.append(k)
    a, b = socks
    ra = a.connect_ex((H4, pb))
    rb = b.connect_ex((H4, pa))
    time.sleep(0.3)
    nft_del("tcpstate_in")
    ctx.conn((H4, pa), (H4, pb), "completed", None, None)
    if ra != errno.EINPROGRESS or rb != errno.EINPROGRESS:
        ctx.fatal.append("connect_ex returned %s %s" % (ra, rb))
    _, w, _ = select.select([], [a, b], [], 5)
    time.sleep(0.1)
    _, w, _ = select.select([], [a, b], [], 5)
    ea = a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    eb = b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    ctx.note("SO_ERROR a=%s b=%s" % (ea, eb))
    if ea or eb:
        ctx.fatal.append("connect failed: %s %s" % (ea, eb))
    a.setblocking(True)
    b.setblocking(True)
    a.settimeout(3)
    b.settimeout(3)
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect((H4, pa), (H4, pb), "ESTABLISHED", fatal=True)
    ctx.expect((H4, pb), (H4, pa), "ESTABLISHED", fatal=True)
    pk = read_pcap(ctx.cap.path)
    seq = [(p["src"], p["flags"]) for p in pk]
    synacks = {p["src"] for p in pk if p["syn"] and p["ackf"]}
    if len(synacks) != 2:
        ctx.fatal.append("SYNs did not cross: %r" % (seq,))
    ctx.keep += [a, b]


@scenario(5014, "IPv6 over ::1: one request/response closed by the client first (client TIME_WAIT, server "
                "CLOSED), one where the server never closes (server CLOSE_WAIT, client FIN_WAIT2), and one "
                "connection refused by RST,ACK on port 5114.")
def ipv6(ctx):
    L = listener(H6, ctx.port)
    c = connect(H6, ctx.port)
    s = accept_for(L, c)
    cl1, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl1, sv, "completed", "client")
    exchange(c, s)
    time.sleep(0.05)
    c.close()
    read_to_eof(s)
    time.sleep(0.1)
    s.close()
    time.sleep(0.2)

    c = connect(H6, ctx.port)
    s = accept_for(L, c)
    cl2 = c.getsockname()
    ctx.conn(cl2, sv, "completed", "client")
    exchange(c, s)
    time.sleep(0.05)
    c.close()
    ctx.keep.append(s)
    time.sleep(0.2)

    r = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    r.bind((H6, 0))
    cl3 = r.getsockname()
    ctx.conn(cl3, (H6, ctx.port + 100), "refused", None, "server")
    try:
        r.connect((H6, ctx.port + 100))
        ctx.problems.append("connect succeeded?")
    except ConnectionRefusedError:
        pass
    r.close()
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl1, sv, "TIME_WAIT")
    ctx.expect(sv, cl1, "CLOSED")
    ctx.expect(cl2, sv, "FIN_WAIT2")
    ctx.expect(sv, cl2, "CLOSE_WAIT")
    ctx.keep += [L]


@scenario(5015, "Keepalive: the client sets SO_KEEPALIVE with TCP_KEEPIDLE=1 and TCP_KEEPINTVL=1, exchanges "
                "a request/response and idles 3.5 s, so keepalive probes and their ACKs are captured; both "
                "ends ESTABLISHED.")
def keepalive(ctx):
    L = listener(H4, ctx.port)
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
    c.connect((H4, ctx.port))
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", None, None)
    exchange(c, s)
    time.sleep(3.5)
    ctx.snapshot()
    ctx.expect(cl, sv, "ESTABLISHED")
    ctx.expect(sv, cl, "ESTABLISHED")
    ctx.keep += [c, s, L]


@scenario(5016, "Connection 1 is closed by the client first (client TIME_WAIT); the capture keeps running "
                "until that TIME_WAIT has expired (about 60 s), then connection 2 is made and closed by the "
                "client; at the snapshot connection 1 is CLOSED on both ends and connection 2's client is in "
                "TIME_WAIT.", timeout=150, attempts=2)
def time_wait_expiry(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl1, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl1, sv, "completed", "client")
    exchange(c, s)
    time.sleep(0.05)
    c.close()
    read_to_eof(s)
    time.sleep(0.1)
    s.close()
    t_close = time.monotonic()
    gone = wait_until(lambda: ss_has(fmt(cl1), fmt(sv)) is None, 75, 0.25)
    t_gone = time.monotonic() - t_close
    ctx.note("connection 1 TIME_WAIT gone after %.2f s (ok=%s)" % (t_gone, gone))
    if not gone:
        ctx.fatal.append("TIME_WAIT did not expire within 75 s")
    time.sleep(0.5)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl2 = c.getsockname()
    ctx.conn(cl2, sv, "completed", "client")
    exchange(c, s)
    time.sleep(0.05)
    c.close()
    read_to_eof(s)
    time.sleep(0.1)
    s.close()
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cl1, sv, "CLOSED")
    ctx.expect(sv, cl1, "CLOSED")
    ctx.expect(cl2, sv, "TIME_WAIT")
    ctx.expect(sv, cl2, "CLOSED")
    ctx.extra_desc = " (The first TIME_WAIT disappeared from ss %.1f s after the client's close.)" % t_gone
    ctx.keep += [L]


@scenario(5017, "tcp_fin_timeout=2: two connections, the client close()s, the server never closes; both "
                "orphaned client FIN_WAIT2s expire silently after about 2 s; then server A sends data and "
                "the client's kernel answers with a RST (A CLOSED on both ends), while server B stays in "
                "CLOSE_WAIT with its peer silently gone.",
          sysctls={"net.ipv4.tcp_fin_timeout": 2}, timeout=60)
def fin_wait2_orphan_timeout(ctx):
    L = listener(H4, ctx.port)
    pairs = []
    for i in range(2):
        c = connect(H4, ctx.port)
        s = accept_for(L, c)
        cl, sv = c.getsockname(), s.getsockname()
        ctx.conn(cl, sv, "completed", "client", "client" if i == 0 else None)
        exchange(c, s)
        time.sleep(0.05)
        c.close()
        pairs.append((cl, sv, s))
        time.sleep(0.1)
    st = ss_has(fmt(pairs[1][0]), fmt(pairs[1][1]))
    ctx.note("client B after close: %s" % st)
    t0 = time.monotonic()
    gone = wait_until(lambda: all(ss_has(fmt(cl), fmt(sv)) is None for cl, sv, _ in pairs), 10, 0.05)
    ctx.note("orphaned FIN_WAIT2s gone after %.2f s (ok=%s)" % (time.monotonic() - t0, gone))
    time.sleep(0.7)
    (cla, sva, sa), (clb, svb, sb) = pairs
    sa.sendall(b"late data from the server\n")
    # the client's FIN is still queued as EOF at server A, so recv() may return
    # b"" before the reset is reported; the ss check below is what counts
    time.sleep(0.1)
    try:
        sa.settimeout(1)
        read_to_eof(sa)
        sa.recv(10)
    except ConnectionResetError:
        pass
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(cla, sva, "CLOSED")
    ctx.expect(sva, cla, "CLOSED")
    ctx.expect(clb, svb, "CLOSED")
    ctx.expect(svb, clb, "CLOSE_WAIT")
    ctx.unknown(clb, svb, "FIN_WAIT2",
                "orphaned FIN_WAIT2 expired silently after tcp_fin_timeout=2; no packet shows it")
    ctx.keep += [sa, sb, L]


@scenario(5021, "A socket connected to itself (bind to a port, connect to that same address:port: a "
                "simultaneous open with itself), sends 5 bytes it reads back, closes, and is in TIME_WAIT; "
                "a second one stays ESTABLISHED. Every packet has the same source and destination.")
def self_connect(ctx):
    def self_connected(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((H4, port))
        s.connect((H4, port))
        return s
    a = self_connected(ctx.port)
    aa = a.getsockname()
    ctx.conn(aa, aa, "completed", "client")
    a.sendall(b"hello")
    recv_exact(a, 5)
    time.sleep(0.05)
    a.close()
    time.sleep(0.1)
    b = self_connected(ctx.port + 100)
    bb = b.getsockname()
    ctx.conn(bb, bb, "completed")
    time.sleep(0.3)
    ctx.snapshot()
    ctx.expect(aa, aa, "TIME_WAIT")
    ctx.expect(bb, bb, "ESTABLISHED")
    ctx.keep += [b]


MIXED_KINDS = [("client_first", 25), ("server_first", 20), ("close_wait", 15),
               ("linger_abort", 10), ("refused", 10), ("half_close", 20)]


@scenario(5018, "About 300 connections over about 5 s with 8 concurrent workers, a seeded random mix of "
                "client-first close, server-first close, CLOSE_WAIT leak, SO_LINGER abort, refused "
                "(port 5118) and half close.", timeout=90)
def mixed(ctx):
    N, WORKERS, SPAN = 300, 8, 5.0
    rng = random.Random(20240601)
    kinds = [k for k, _ in MIXED_KINDS]
    weights = [w for _, w in MIXED_KINDS]
    plan = [rng.choices(kinds, weights)[0] for _ in range(N)]
    L = listener(H4, ctx.port, backlog=512)
    L.settimeout(0.2)
    sv = (H4, ctx.port)
    closed_port = ctx.port + 100
    accepted = {}
    cond = threading.Condition()
    stop = threading.Event()
    order_lock = threading.Lock()
    started = []   # (kind, client, server, facts dict)
    leak = []
    errors = []

    def acceptor():
        for _ in range(100000):
            if stop.is_set():
                return
            try:
                s, peer = L.accept()
            except socket.timeout:
                continue
            with cond:
                accepted[peer[1]] = s
                cond.notify_all()

    def take(port):
        with cond:
            ok = cond.wait_for(lambda: port in accepted, timeout=5)
            if not ok:
                raise RuntimeError("no accept for port %d" % port)
            return accepted.pop(port)

    def run(kind):
        if kind == "refused":
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.bind((H4, 0))
            with order_lock:
                cl = c.getsockname()
                started.append((kind, cl, (H4, closed_port)))
                try:
                    c.connect((H4, closed_port))
                    errors.append("refused connect succeeded")
                except ConnectionRefusedError:
                    pass
            c.close()
            return
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with order_lock:
            c.connect(sv)
            cl = c.getsockname()
            started.append((kind, cl, sv))
        s = take(cl[1])
        if kind == "client_first":
            exchange(c, s)
            c.close()
            read_to_eof(s)
            s.close()
        elif kind == "server_first":
            exchange(c, s)
            s.close()
            read_to_eof(c)
            c.close()
        elif kind == "close_wait":
            exchange(c, s)
            c.close()
            with cond:
                leak.append(s)
        elif kind == "linger_abort":
            exchange(c, s)
            set_linger0(c)
            c.close()
            r = expect_reset(s)
            if r is not True:
                errors.append("linger: " + r)
            s.close()
        elif kind == "half_close":
            c.sendall(REQ)
            c.shutdown(socket.SHUT_WR)
            read_to_eof(s)
            for i in range(2):
                s.sendall(b"part %d\n" % i)
                time.sleep(0.02)
            s.close()
            read_to_eof(c)
            c.close()

    nxt = [0]
    nlock = threading.Lock()
    t0 = time.monotonic()

    def worker():
        for _ in range(N):
            with nlock:
                i = nxt[0]
                if i >= N:
                    return
                nxt[0] += 1
            delay = t0 + i * SPAN / N - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                run(plan[i])
            except Exception as e:  # keep going, report
                errors.append("%s #%d: %r" % (plan[i], i, e))

    acc = threading.Thread(target=acceptor, daemon=True)
    acc.start()
    ws = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for w in ws:
        w.start()
    for w in ws:
        w.join(60)
    ctx.note("workers done after %.2f s" % (time.monotonic() - t0))
    time.sleep(0.6)
    ctx.snapshot()
    stop.set()
    acc.join(2)
    if errors:
        ctx.problems += errors[:20]
    expect_end = {
        "client_first": ("TIME_WAIT", "CLOSED", "client", None, "completed"),
        "server_first": ("CLOSED", "TIME_WAIT", "server", None, "completed"),
        "close_wait": ("FIN_WAIT2", "CLOSE_WAIT", "client", None, "completed"),
        "linger_abort": ("CLOSED", "CLOSED", None, "client", "completed"),
        "refused": ("CLOSED", "CLOSED", None, "server", "refused"),
        "half_close": ("TIME_WAIT", "CLOSED", "client", None, "completed"),
    }
    seen = {}
    for kind, cl, srv in started:
        ce, se, fc, rb, hs = expect_end[kind]
        ctx.conn(cl, srv, hs, fc, rb)
        key = (fmt(cl), fmt(srv))
        seen[key] = seen.get(key, 0) + 1
    dups = [k for k, v in seen.items() if v > 1]
    if dups:
        ctx.note("reused 4-tuples: %r" % dups)
    else:
        # only check end states when no tuple was reused
        for kind, cl, srv in started:
            ce, se, fc, rb, hs = expect_end[kind]
            ctx.expect(cl, srv, ce)
            ctx.expect(srv, cl, se)
    counts = {}
    for kind, _, _ in started:
        counts[kind] = counts.get(kind, 0) + 1
    ctx.note("kinds: %r" % counts)
    ctx.extra_desc = " Mix: %s." % ", ".join("%d %s" % (counts.get(k, 0), k) for k in kinds)
    ctx.keep += leak + [L]


@scenario(5019, "Zero window: the server (SO_RCVBUF 4096) never reads, the non-blocking client sends until "
                "EAGAIN, zero-window probes follow for 1 s, then the client close()s with unsent data "
                "(FIN_WAIT1 at once, its FIN queued behind the data); snapshot 1 s later: client FIN_WAIT1, "
                "server ESTABLISHED with a full receive queue.")
def zero_window_close(ctx):
    L = listener(H4, ctx.port, rcvbuf=4096)
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    c.connect((H4, ctx.port))
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    # first_closer is null: the client did close(), but its FIN never reaches the wire
    ctx.conn(cl, sv, "completed", None, None)
    c.setblocking(False)
    total = 0
    for i in range(100000):
        try:
            total += c.send(b"z" * 4096)
        except BlockingIOError:
            break
    ctx.note("client queued %d bytes before EAGAIN" % total)
    time.sleep(1.0)
    c.close()
    st = ss_has(fmt(cl), fmt(sv))
    ctx.note("client state right after close(): %s" % st)
    time.sleep(1.0)
    ctx.snapshot()
    ctx.expect(cl, sv, "FIN_WAIT1")
    ctx.expect(sv, cl, "ESTABLISHED")
    ctx.unknown(cl, sv, "ESTABLISHED",
                "the client close()d against a zero window: FIN_WAIT1 at once, but its FIN is queued "
                "behind unsent data and never appears on the wire")
    ctx.extra_desc = " The client queued %d bytes before EAGAIN." % total
    ctx.keep += [s, L]


@scenario(5020, "Bulk download: the client sends a request, the server (TCP_NODELAY) writes 100,000 "
                "bytes as 200 writes of 500 bytes 1 ms apart, then closes first; the client reads to EOF "
                "and closes; server ends in TIME_WAIT, client CLOSED.")
def bulk_download(ctx):
    L = listener(H4, ctx.port)
    c = connect(H4, ctx.port)
    s = accept_for(L, c)
    cl, sv = c.getsockname(), s.getsockname()
    ctx.conn(cl, sv, "completed", "server")
    c.sendall(REQ)
    recv_exact(s, len(REQ))
    # Loopback segments with GSO: small paced writes make one segment each.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(200):
        s.sendall(b"d" * 500)
        time.sleep(0.001)
    time.sleep(0.05)
    s.close()
    got = read_to_eof(c)
    assert len(got) == 100000, len(got)
    time.sleep(0.1)
    c.close()
    time.sleep(0.5)
    ctx.snapshot()
    ctx.expect(sv, cl, "TIME_WAIT")
    ctx.expect(cl, sv, "CLOSED")
    ctx.keep += [L]


# ----------------------------------------------------------------------------
# child: runs inside the namespace
# ----------------------------------------------------------------------------

def child_main(name, tmpdir):
    sc = SCENARIOS[name]
    socket.setdefaulttimeout(20)
    for k, v in sc["sysctls"].items():
        set_sysctl(k, v)
    pcap = os.path.join(tmpdir, name + ".pcap")
    truth = os.path.join(tmpdir, name + ".truth.json")
    cap = Capture(pcap)
    ctx = Ctx(name, sc["port"], cap)
    status = {"scenario": name}
    rc = 0
    try:
        cap.start()
        sc["fn"](ctx)
        if ctx.snap_raw is None:
            raise RuntimeError("scenario took no snapshot")
    except Exception as e:
        import traceback
        traceback.print_exc()
        status["error"] = repr(e)
        rc = RETRY
    finally:
        cap.stop()
        for k in ctx.keep:
            try:
                k.close()
            except OSError:
                pass
    st = cap.stats
    status["tcpdump"] = {k: v for k, v in st.items() if k != "stderr"}
    if rc == 0 and (st.get("dropped") is None or st.get("dropped") > 0):
        status["error"] = "tcpdump dropped packets or printed no stats: %s" % st.get("stderr")
        rc = RETRY
    if rc == 0 and ctx.fatal:
        status["error"] = "scenario did not behave: %s" % ctx.fatal
        rc = RETRY
    pk = read_pcap(pcap) if os.path.exists(pcap) else []
    status["packets"] = len(pk)
    if rc == 0 and st.get("captured") is not None and st["captured"] != len(pk):
        status["error"] = "tcpdump said %s captured, file has %d" % (st["captured"], len(pk))
        rc = RETRY
    # every connection's client should appear in the capture
    srcs = {p["src"] for p in pk} | {p["dst"] for p in pk}
    for c in ctx.conns:
        if c["client"] not in srcs:
            ctx.problems.append("client %s not in capture" % c["client"])
    status["problems"] = ctx.problems
    status["notes"] = ctx.notes
    status["states"] = ctx.sockets
    doc = {
        "capture": name + ".pcap",
        "description": sc["desc"] + ctx.extra_desc,
        "snapshot": {"ss_raw": ctx.snap_raw or "", "sockets": ctx.sockets or []},
        "connections": ctx.conns,
        "unknowable": ctx.unknowable,
    }
    with open(truth, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print("STATUS " + json.dumps(status), flush=True)
    return rc


# ----------------------------------------------------------------------------
# parent: namespaces, retries
# ----------------------------------------------------------------------------

def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def ns_exists(ns):
    out = sh("ip", "netns", "list", check=False).stdout
    return any(line.split()[0] == ns for line in out.splitlines() if line.strip())


def run_scenario(name, out, log):
    sc = SCENARIOS[name]
    ns = NS_PREFIX + name
    tmpdir = os.path.join(out, ".tmp-" + name)
    os.makedirs(tmpdir, exist_ok=True)
    last = None
    for attempt in range(1, sc["attempts"] + 1):
        if ns_exists(ns):
            sh("ip", "netns", "del", ns, check=False)
        proc = None
        text = ""
        rc = None
        try:
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__),
                 "--run-scenario", name, "--tmp", tmpdir],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
            try:
                text, _ = proc.communicate(timeout=sc["timeout"])
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                text, _ = proc.communicate()
                rc = "timeout"
        finally:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            sh("ip", "netns", "del", ns, check=False)
        status = None
        for line in text.splitlines():
            if line.startswith("STATUS "):
                status = json.loads(line[7:])
        other = "\n".join(l for l in text.splitlines() if not l.startswith("STATUS "))
        last = (rc, status, other)
        if rc == 0:
            for ext in (".pcap", ".truth.json"):
                os.replace(os.path.join(tmpdir, name + ext), os.path.join(out, name + ext))
            try:
                os.rmdir(tmpdir)
            except OSError:
                pass
            log(name, attempt, status, other)
            return True
        log(name, attempt, status, other, failed=rc)
        if rc != RETRY:
            break
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output folder (default: the script's folder)")
    ap.add_argument("--jobs", type=int, default=2, help="scenarios run in parallel (default 2)")
    ap.add_argument("--run-scenario", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    ap.add_argument("scenarios", nargs="*")
    args = ap.parse_args()

    if args.run_scenario:
        sys.exit(child_main(args.run_scenario, args.tmp))
    if args.list:
        for n, sc in SCENARIOS.items():
            print("%-26s %s" % (n, sc["desc"]))
        return
    if os.geteuid() != 0:
        sys.exit("must run as root (network namespaces, tcpdump, nft)")
    names = args.scenarios or list(SCENARIOS)
    for n in names:
        if n not in SCENARIOS:
            sys.exit("unknown scenario %r (try --list)" % n)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    # the long one first so it overlaps with the others
    names.sort(key=lambda n: -SCENARIOS[n]["timeout"])
    plock = threading.Lock()

    def log(name, attempt, status, other, failed=None):
        with plock:
            tag = "FAILED(%s)" % failed if failed is not None else "ok"
            print("== %s attempt %d: %s" % (name, attempt, tag))
            if status:
                print("   packets=%s tcpdump=%s" % (status.get("packets"), status.get("tcpdump")))
                for s in status.get("states") or []:
                    print("   %-11s %s -> %s %s" % (s["state"], s["local"], s["remote"],
                                                   s["timer"] or ""))
                for n in status.get("notes", []):
                    print("   note: " + n)
                for p in status.get("problems", []):
                    print("   PROBLEM: " + p)
                if status.get("error"):
                    print("   error: " + status["error"][:2000])
            if other.strip() and (failed is not None):
                print("   output:\n" + "\n".join("     " + l for l in other.splitlines()[-30:]))
            sys.stdout.flush()

    results = {}
    queue = list(names)
    qlock = threading.Lock()

    def worker():
        for _ in range(len(names)):
            with qlock:
                if not queue:
                    return
                n = queue.pop(0)
            results[n] = run_scenario(n, out, log)

    ts = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    bad = [n for n in names if not results.get(n)]
    if bad:
        print("FAILED scenarios: " + " ".join(bad))
        sys.exit(1)
    print("all %d scenarios ok" % len(names))


if __name__ == "__main__":
    main()
