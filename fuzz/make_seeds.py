#!/usr/bin/env python3
"""Seeds for the fuzz targets, from the captures in pcaps/ (standard library only).

    python3 fuzz/make_seeds.py     # writes fuzz/corpus/decode/ and fuzz/corpus/pipeline/

pipeline: the small captures as they are, the first 16 KiB of mixed.pcap, and some of them
rewritten as pcapng (both byte orders), big-endian / nanosecond pcap, and other link types
(raw IP, Linux cooked v1/v2, BSD NULL/LOOP, VLAN-tagged Ethernet).
decode: single frames, each behind the byte that makes the target pick its link type.
Then `cargo fuzz cmin` keeps what adds coverage.
"""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PCAPS = os.path.join(ROOT, "pcaps")
OUT = os.path.join(ROOT, "fuzz", "corpus")
# Index of each link type in the decode target's LINKTYPES table.
DECODE_INDEX = {0: 0, 1: 1, 10: 2, 12: 3, 14: 4, 101: 5, 108: 6, 113: 7, 228: 8, 229: 9, 276: 10}


def read_pcap(path):
    d = open(path, "rb").read()
    assert struct.unpack("<I", d[:4])[0] == 0xA1B2C3D4
    recs, at = [], 24
    while at + 16 <= len(d):
        sec, usec, caplen, orig = struct.unpack("<IIII", d[at:at + 16])
        recs.append((sec, usec, orig, d[at + 16:at + 16 + caplen]))
        at += 16 + caplen
    return recs


def pcap(linktype, recs, big=False, nanos=False):
    e = ">" if big else "<"
    out = struct.pack(e + "IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)
    for sec, usec, orig, data in recs:
        out += struct.pack(e + "IIII", sec, usec * 1000 if nanos else usec, len(data), orig) + data
    return out


def pcapng(linktype, recs, big=False):
    e = ">" if big else "<"

    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)

    out = block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack(e + "HHI", linktype, 0, 0))
    for sec, usec, orig, data in recs:
        t = sec * 1_000_000 + usec
        out += block(6, struct.pack(e + "IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data), orig) + data)
    return out


def relink(linktype, frame):
    """An Ethernet frame carried on another link type."""
    ethertype, ip = frame[12:14], frame[14:]
    v6 = ethertype == b"\x86\xdd"
    if linktype == 101:
        return ip
    if linktype == 113:
        return struct.pack(">HHH", 0, 1, 6) + frame[6:12] + b"\0\0" + ethertype + ip
    if linktype == 276:
        return ethertype + b"\0\0" + struct.pack(">IHBB", 1, 1, 0, 6) + frame[6:12] + b"\0\0" + ip
    if linktype == 0:
        return struct.pack("<I", 30 if v6 else 2) + ip
    if linktype == 108:
        return struct.pack(">I", 30 if v6 else 2) + ip
    if linktype == 1:  # 802.1Q tag
        return frame[:12] + b"\x81\x00\x00\x05" + frame[12:]
    raise ValueError(linktype)


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    names = sorted(n[:-5] for n in os.listdir(PCAPS) if n.endswith(".pcap"))
    for name in names:
        data = open(os.path.join(PCAPS, name + ".pcap"), "rb").read()
        if len(data) > 32 << 10:
            data = data[:16 << 10]
        write("pipeline", name + ".pcap", data)
    for name in ["close_client_first", "ipv6", "refused"]:
        recs = read_pcap(os.path.join(PCAPS, name + ".pcap"))
        write("pipeline", name + ".pcapng", pcapng(1, recs))
        write("pipeline", name + ".be.pcapng", pcapng(1, recs, big=True))
        write("pipeline", name + ".be-ns.pcap", pcap(1, recs, big=True, nanos=True))
        for lt in [101, 113, 276, 0, 108]:
            write("pipeline", f"{name}.lt{lt}.pcap", pcap(lt, [(s, u, len(relink(lt, f)), relink(lt, f)) for s, u, _, f in recs]))
        write("pipeline", name + ".vlan.pcap", pcap(1, [(s, u, o + 4, relink(1, f)) for s, u, o, f in recs]))
        for i, (_, _, _, frame) in enumerate(recs[:4]):
            write("decode", f"{name}.{i}.eth", bytes([DECODE_INDEX[1]]) + frame)
            for lt in [101, 113, 276, 0, 108]:
                write("decode", f"{name}.{i}.lt{lt}", bytes([DECODE_INDEX[lt]]) + relink(lt, frame))
            write("decode", f"{name}.{i}.vlan", bytes([DECODE_INDEX[1]]) + relink(1, frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
