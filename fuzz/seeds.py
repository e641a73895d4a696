#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: a handful of small valid inputs
per fuzz target, so libFuzzer starts past the format checks instead of rediscovering them.

The encoders below are written from the wire formats (light-common/src/header.rs, the
Ethernet/IP/UDP headers, the manifest JSON and the control framing), independently of
the Rust code. Run from anywhere: `python3 fuzz/seeds.py`. Output is deterministic.
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# DataHeader: magic, version, kind, flags, session, seq, message, block, shard,
# source_shards, parity_shards, payload_len, mac[16]; little-endian, 48 bytes.
HEADER = struct.Struct("<4sBBHIIIIHHHH16s")
SOURCE, PARITY, END, PROBE = 1, 2, 3, 4


def packet(kind, payload=b"", session=9, seq=0, message=0, block=0, shard=0, k=0, r=0,
           mac=bytes(16)):
    head = HEADER.pack(b"LGHT", 1, kind, 0, session, seq, message, block, shard, k, r,
                       len(payload), mac)
    return head + payload


def pattern(n, salt=0):
    return bytes((i * 31 + salt * 7 + 1) & 0xFF for i in range(n))


def ipv4_checksum(h):
    s = sum(struct.unpack(f">{len(h) // 2}H", h))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def udp_frame(payload, v6=False, vlan=False, ip_options=b"", pad_to=0, dport=7400):
    eth = bytes([0x01, 0x00, 0x5E, 0, 0, 1, 0x02, 0, 0, 0, 0, 2])
    if vlan:
        eth += struct.pack(">HH", 0x8100, 5)
    udp = struct.pack(">HHHH", 40000, dport, 8 + len(payload), 0) + payload
    if v6:
        ip = struct.pack(">IHBB", 0x60000000, len(udp), 17, 1)
        ip += bytes.fromhex("fd000000000000000000000000000001")
        ip += bytes.fromhex("ff150000000000000000000000001234")
        frame = eth + struct.pack(">H", 0x86DD) + ip + udp
    else:
        ihl = (20 + len(ip_options)) // 4
        total = ihl * 4 + len(udp)
        ip = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0, 0x4000, 1, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([239, 1, 2, 3])) + ip_options
        ip = ip[:10] + struct.pack(">H", ipv4_checksum(ip)) + ip[12:]
        frame = eth + struct.pack(">H", 0x0800) + ip + udp
    return frame + bytes(max(0, pad_to - len(frame)))


def digest_hex(salt):
    # Any 64 hex digits parse; only Manifest::verify_root checks the root.
    return pattern(32, salt).hex()


def manifest(path, size, chunk_size, salt=0):
    n = -(-size // chunk_size)
    return {
        "content_id": 3 + salt,
        "version": 1,
        "path": path,
        "size": size,
        "chunk_size": chunk_size,
        "chunks": [digest_hex(salt + i) for i in range(n)],
        "root": digest_hex(100 + salt),
    }


def json_frame(msg):
    body = json.dumps(dict({"v": 1}, **msg), separators=(",", ":")).encode()
    return struct.pack("<I", len(body) + 1) + b"\x01" + body


def data_frame(offset, chunk):
    return struct.pack("<I", 1 + 8 + len(chunk)) + b"\x02" + struct.pack("<Q", offset) + chunk


# The assembler target's fixed session: symbol 16 bytes, k = 4, r = 2, 4 parity at most,
# session 9, messages 0 (100 bytes: 7 symbols in blocks of 4 and 3), 1 (16 bytes) and
# 7 (64 bytes). The input of `assembler` is packets, each preceded by its length as one
# byte; that of `assembler_honest` is indices into the target's own list of the 28 honest
# packets of those messages.
SYMBOL, K, R = 16, 4, 2
MESSAGES = {0: 100, 1: 16, 7: 64}


def message_sources(message):
    length = MESSAGES[message]
    data = pattern(length, message)
    symbols = -(-length // SYMBOL)
    out = []
    for sym in range(symbols):
        block, shard = divmod(sym, K)
        k = min(K, symbols - block * K)
        chunk = data[sym * SYMBOL:(sym + 1) * SYMBOL].ljust(SYMBOL, b"\0")
        out.append(packet(SOURCE, chunk, message=message, block=block, shard=shard, k=k,
                          r=R, seq=sym))
    return out


def records(packets):
    return b"".join(bytes([len(p)]) + p for p in packets)


def seeds():
    src = packet(SOURCE, pattern(16), session=7, seq=1, message=2, block=3, shard=1, k=4, r=2)
    yield "header_parse", "source", src
    yield "header_parse", "parity", packet(PARITY, pattern(16, 1), shard=5, k=4, r=2)
    yield "header_parse", "end", packet(END, session=0xDEADBEEF, seq=99)
    yield "header_parse", "probe", packet(PROBE, pattern(200, 2), mac=pattern(16, 3))
    yield "header_parse", "truncated", src[:47]

    light = packet(SOURCE, pattern(16), k=4, r=2)
    yield "frame_parse", "ipv4", udp_frame(light)
    yield "frame_parse", "ipv6", udp_frame(light, v6=True)
    yield "frame_parse", "vlan", udp_frame(b"tagged", vlan=True)
    yield "frame_parse", "ipv4-options", udp_frame(b"opt", ip_options=bytes([1, 1, 1, 0]))
    yield "frame_parse", "padded", udp_frame(b"ab", pad_to=60)

    yield "manifest_json", "three-chunks", json.dumps(manifest("a/b.bin", 10, 4)).encode()
    yield "manifest_json", "empty", json.dumps(manifest("empty", 0, 1 << 20, 1)).encode()
    yield "manifest_json", "one-chunk-pretty", json.dumps(
        manifest("dir/sub/\u00e9t\u00e9 file.iso", 1 << 20, 1 << 20, 2), indent=2).encode()

    stream = json_frame({
        "type": "hello", "receiver": 7, "content": "disk.img", "token": "s3cret",
        "have_cache": {"library": "2026-11", "placement": "ff00"},
    }) + json_frame({"type": "cache_resume", "offset": 4096}) + json_frame(
        {"type": "ready"}) + json_frame({"type": "nack", "blocks": [[0, 1, 2], [7, 0, 4]]}) + json_frame(
        {"type": "progress", "bytes": 12345}) + json_frame(
        {"type": "done", "ok": True, "detail": "verified", "bytes_received": 1 << 40})
    yield "control_frame", "to-server", bytes([7]) + stream
    stream = json_frame({"type": "accepted", "session": 42}) + json_frame({
        "type": "cache_begin", "len": 11, "blake3": digest_hex(5),
        "tag": {"library": "v1", "placement": "0123"},
    }) + data_frame(0, b"hello") + data_frame(5, b" world") + json_frame(
        {"type": "cache_end"}) + json_frame({
            "type": "announce", "session": 42, "group": "ff15::1234", "port": 7400,
            "plan": {"scheme": "yma", "k": 4, "t": 2, "demands": [0, 1, 1, 3]},
            "manifest": manifest("a/b.bin", 10, 4), "fec": {"k": 32, "m": 8, "ratio": 0.25},
        }) + json_frame({"type": "report", "summary": {"planned": 1.5, "measured": 1.52}})
    yield "control_frame", "to-receiver", bytes([13]) + stream
    yield "control_frame", "heartbeats", bytes([1]) + json_frame(
        {"type": "heartbeat"}) * 2

    all_sources = [p for m in sorted(MESSAGES) for p in message_sources(m)]
    yield "assembler", "all-sources", records(all_sources)
    reordered = list(reversed(all_sources))
    reordered.insert(3, reordered[1])  # a duplicate
    reordered.insert(5, packet(END, session=9))
    yield "assembler", "reordered-dups", records(reordered)
    # Block 0 of message 0 with one source replaced by parity: the decode path runs (the
    # parity bytes are not the real Reed-Solomon symbol, so the result is wrong but sized).
    m0 = message_sources(0)
    parity = packet(PARITY, pattern(16, 9), message=0, block=0, shard=K, k=K, r=R, seq=50)
    yield "assembler", "with-parity", records(m0[:1] + [parity] + m0[2:])
    yield "assembler_honest", "all", bytes(range(28))
    # Every fifth packet lost (sources among them), reverse order: parity has to fill in.
    yield "assembler_honest", "lossy", bytes(i for i in reversed(range(28)) if i % 5)


def main():
    for target, name, data in seeds():
        assert len(data) < 4096, (target, name)
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
