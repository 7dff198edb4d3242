#!/usr/bin/env python3
"""SYN-flood benchmark: packets per second and peak memory of `tcpstate diagnose` on a capture
of N SYNs from distinct sources (127.0.0.0/8) to one server, with and without --max-conns.

    cargo build --release && python3 benches/syn_flood.py [--syns 2000000] [--limits 100000,10000]

The capture is written (not captured: no traffic is sent) to a temporary file and removed
afterwards. Peak memory is the child's maximum resident set size (getrusage).
"""
import argparse
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_flood(path, n, answer_every=0):
    """N SYNs from distinct sources in 127.0.0.0/8 to 10.0.0.2:80, 10 us apart; with
    answer_every K > 0, every Kth SYN gets a SYN-ACK from the server 5 us later."""
    dst = bytes([10, 0, 0, 2])
    ip_hdr = struct.Struct("!BBHHHBBH4s4s")
    tcp_hdr = struct.Struct("!HHIIBBHHH")
    rec_hdr = struct.Struct("<IIII")
    eth = b"\0" * 12 + b"\x08\x00"

    def frame(src, dst_, sport, dport, seq, ack, flags):
        ip = ip_hdr.pack(0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst_)
        tcp = tcp_hdr.pack(sport, dport, seq, ack, 0x50, flags, 65000, 0, 0)
        return eth + ip + tcp

    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i in range(n):
            src = bytes([127, (i >> 16) & 255, (i >> 8) & 255, i & 255])
            sport = 1024 + i % 60000
            isn = (i * 7919) & 0xFFFFFFFF
            f = frame(src, dst, sport, 80, isn, 0, 0x02)
            t = 1767225600_000000 + i * 10  # 100,000 SYNs per second
            out.write(rec_hdr.pack(t // 1000000, t % 1000000, len(f), len(f)))
            out.write(f)
            if answer_every and i % answer_every == 0:
                f = frame(dst, src, 80, sport, (i * 104729) & 0xFFFFFFFF,
                          (isn + 1) & 0xFFFFFFFF, 0x12)
                t += 5
                out.write(rec_hdr.pack(t // 1000000, t % 1000000, len(f), len(f)))
                out.write(f)


def run(binary, path, extra):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    proc = subprocess.run([binary, "diagnose", "-q", "--format", "json", "-r", path] + extra,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit("tcpstate failed: %s" % proc.stderr)
    flood = [l for l in proc.stdout.splitlines() if '"kind":"syn_flood"' in l]
    # ru_maxrss of children is the largest so far: run the smallest configuration first.
    return wall, max(peak_kb, before), bool(flood)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--syns", type=int, default=2_000_000)
    ap.add_argument("--limits", default="10000,100000")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    ap.add_argument("--binary", default=os.path.join(target, "release", "tcpstate"))
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit("build first: cargo build --release")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "flood.pcap")
        write_flood(path, args.syns)
        size = os.path.getsize(path)
        print("capture: %d SYNs, %.0f MB; %s" % (args.syns, size / 1e6, time.strftime("%Y-%m-%d")))
        print("%-24s %10s %14s %12s %10s" % ("run", "wall s", "packets/s", "peak MB", "finding"))
        # The default (no flag) is --max-conns 1000000; 0 turns the limit off.
        configs = [["--max-conns", l] for l in args.limits.split(",") if l]
        configs.sort(key=lambda c: int(c[1]))
        configs += [[], ["--max-conns", "0"]]
        for extra in configs:
            # Each configuration in a fresh child so its peak is its own.
            code = ("import sys; sys.path.insert(0, %r); import syn_flood as b; "
                    "w, p, f = b.run(%r, %r, %r); print(w, p, f)") % (
                os.path.dirname(os.path.abspath(__file__)), args.binary, path, extra)
            out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 text=True, check=True).stdout.split()
            wall, peak, found = float(out[0]), int(out[1]), out[2] == "True"
            label = {(): "default (1000000)", ("--max-conns", "0"): "no limit (0)"}.get(
                tuple(extra), " ".join(extra))
            print("%-24s %10.2f %14.0f %12.1f %10s" % (label, wall, args.syns / wall, peak / 1024,
                                                        "syn_flood" if found else "MISSING"))


if __name__ == "__main__":
    main()
