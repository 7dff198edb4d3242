#!/usr/bin/env python3
"""Real sockets for tests/live.rs, run inside the test's private network namespace.

`lifecycles`: on 127.0.0.1 and on ::1, a connection the client closes first (client
TIME_WAIT), one the server closes first (server TIME_WAIT), one whose server never closes
after the client did (CLOSE_WAIT / FIN_WAIT2), one left open (ESTABLISHED both ends), and a
connection refused by a closed port. Each step waits until `ss` shows the kernel in the
expected state, so nothing is still in flight when it prints `ready` and the states it
expects (JSON). The sockets left open stay open until standard input closes: the test takes
its own `ss` snapshot and stops tcpstate first.

`filtered PORT_IN PORT_OUT`: one connection closed by the client on each port, then `ready`.

`refused COUNT PORT`: COUNT connections refused by the closed PORT (a SYN and a RST each),
then `ready`.
"""

import json
import socket
import subprocess
import sys
import time

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
    "LISTEN": "LISTEN",
}


def ss_states():
    raw = subprocess.run(["ss", "-tan"], capture_output=True, text=True, check=True).stdout
    states = {}
    for line in raw.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            states[(parts[3], parts[4])] = STATE_MAP.get(parts[0], parts[0])
    return states


def wait_state(local, remote, state, timeout=10.0):
    """Waits until ss shows local->remote in `state` (None: gone)."""
    deadline = time.monotonic() + timeout
    while True:
        now = ss_states().get((local, remote))
        if now == state:
            return
        if time.monotonic() > deadline:
            sys.exit("%s -> %s: kernel state %s, expected %s" % (local, remote, now, state))
        time.sleep(0.02)


def name(sockaddr):
    host, port = sockaddr[0], sockaddr[1]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def listener(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(8)
    return s


def recv_exact(s, n):
    got = b""
    while len(got) < n:
        more = s.recv(n - len(got))
        if not more:
            sys.exit("peer closed early")
        got += more
    return got


def connect(host, port):
    """A connected pair (client, server end) with a request and a reply exchanged."""
    lst = listener(host, port)
    client = socket.create_connection((host, port))
    server, _ = lst.accept()
    client.sendall(b"ping")
    recv_exact(server, 4)
    server.sendall(b"pong!")
    recv_exact(client, 5)
    return lst, client, server


def lifecycles():
    keep = []  # sockets that must stay open until the test is done
    expect = []
    for host, base in (("127.0.0.1", 5001), ("::1", 5101)):
        # Client closes first: TIME_WAIT on the client, the server end CLOSED.
        lst, c, s = connect(host, base)
        cl, sv = name(c.getsockname()), name(s.getsockname())
        c.close()
        if s.recv(10) != b"":
            sys.exit("expected EOF")
        s.close()
        lst.close()
        wait_state(cl, sv, "TIME_WAIT")
        wait_state(sv, cl, None)
        expect.append([cl, sv, "TIME_WAIT"])

        # Server closes first: TIME_WAIT on the server.
        lst, c, s = connect(host, base + 1)
        cl, sv = name(c.getsockname()), name(s.getsockname())
        s.close()
        if c.recv(10) != b"":
            sys.exit("expected EOF")
        c.close()
        lst.close()
        wait_state(sv, cl, "TIME_WAIT")
        wait_state(cl, sv, None)
        expect.append([sv, cl, "TIME_WAIT"])

        # The application never closes after the peer did: CLOSE_WAIT, and FIN_WAIT2 across.
        lst, c, s = connect(host, base + 2)
        cl, sv = name(c.getsockname()), name(s.getsockname())
        c.shutdown(socket.SHUT_WR)
        wait_state(sv, cl, "CLOSE_WAIT")
        wait_state(cl, sv, "FIN_WAIT2")
        keep += [lst, c, s]
        expect += [[sv, cl, "CLOSE_WAIT"], [cl, sv, "FIN_WAIT2"]]

        # Left open.
        lst, c, s = connect(host, base + 3)
        cl, sv = name(c.getsockname()), name(s.getsockname())
        keep += [lst, c, s]
        expect += [[cl, sv, "ESTABLISHED"], [sv, cl, "ESTABLISHED"]]

        # Refused: nothing listens on base + 9.
        r = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            r.connect((host, base + 9))
            sys.exit("connection to a closed port was accepted")
        except ConnectionRefusedError:
            pass
        r.close()
    return keep, expect


def filtered(port_in, port_out):
    for port in (port_in, port_out):
        lst, c, s = connect("127.0.0.1", port)
        cl, sv = name(c.getsockname()), name(s.getsockname())
        c.close()
        if s.recv(10) != b"":
            sys.exit("expected EOF")
        s.close()
        lst.close()
        wait_state(cl, sv, "TIME_WAIT")
    return [], []


def refused(count, port):
    for _ in range(count):
        r = socket.socket()
        try:
            r.connect(("127.0.0.1", port))
            sys.exit("connection to a closed port was accepted")
        except ConnectionRefusedError:
            pass
        r.close()
    return [], []


def main():
    if sys.argv[1] == "lifecycles":
        keep, expect = lifecycles()
    elif sys.argv[1] == "refused":
        keep, expect = refused(int(sys.argv[2]), int(sys.argv[3]))
    else:
        keep, expect = filtered(int(sys.argv[2]), int(sys.argv[3]))
    print("ready " + json.dumps(expect), flush=True)
    sys.stdin.read()
    for s in keep:
        s.close()


if __name__ == "__main__":
    main()
