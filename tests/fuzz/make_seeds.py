#!/usr/bin/env python3
"""Writes the seed corpus under tests/fuzz/seeds/<target>/ (committed).

Run again after changing it: python3 tests/fuzz/make_seeds.py
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def frame(opcode, payload=b"", fin=True, mask=b"\x12\x34\x56\x78", rsv=0, length=None):
    """A client frame; `length` overrides the declared payload length."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    masked = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, masked | n])
    elif n <= 0xFFFF:
        head = bytes([first, masked | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, masked | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def event(kind, **payload):
    return json.dumps({"type": kind, "payload": payload}).encode()


def upgrade(path="/ws?otp=VALID", extra=""):
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    ).encode()


def close(code=1000, reason=b""):
    return frame(0x8, struct.pack(">H", code) + reason)


login = b'{"username":"percy","password":"123"}'
requests = {
    "get_index": b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "head_file": b"HEAD /app.js HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"1-2\"\r\n\r\n",
    "http10": b"GET /index.html HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "login": b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(login), login),
    "upgrade": upgrade(extra="Origin: http://localhost:8080\r\n"),
    "echo_upgrade": upgrade("/echo"),
    "chunked": b"POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "traversal": b"GET /a/%2e%2e/%2E%2e/etc/passwd?x=1&otp= HTTP/1.1\r\n\r\n",
    "pipelined": b"GET / HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    "bad_length": b"POST /login HTTP/1.1\r\nContent-Length: -1\r\nContent-Length: 5\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
}

chat = [
    frame(0x1, event("send_message", message="hello", **{"from": "mallory"})),
    frame(0x1, event("change_room", name="rust")),
    frame(0x1, b'{"type":"send_message","payload":{"message":"\\u0000\\ud83d\\ude00"}}'),
    frame(0x1, b"not json"),
]
frames = {
    "chat_events": b"".join(chat) + close(),
    "ping_pong": frame(0x9, b"ping?") + frame(0xA, b"unsolicited") + frame(0x9) + close(1001, b"bye"),
    "fragmented": frame(0x1, b'{"type":"send_', fin=False) + frame(0x9, b"mid")
    + frame(0x0, b'message","payload":', fin=False) + frame(0x0, b'{"message":"x"}}') + close(),
    "binary": frame(0x2, bytes(range(256))) + close(),
    "oversized": frame(0x1, b"a" * 600),
    "fragments_over_limit": frame(0x1, b"a" * 300, fin=False) + frame(0x0, b"b" * 300),
    "huge_header": frame(0x1, b"", length=1 << 62)[:14],
    "bad_utf8": frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
    "unmasked": frame(0x1, b"hi", mask=None),
    "rsv": frame(0x1, b"hi", rsv=3),
    "big_ping": frame(0x9, b"p" * 126),
    "close_codes": close(5000) + close(1005) + frame(0x8, b"\x03"),
    "continuation_first": frame(0x0, b"orphan"),
    "reserved_opcode": frame(0xB, b"x"),
    "long_16bit": frame(0x1, b"x" * 300),
}
events = {
    "send": event("send_message", message="hi", **{"from": "percy"}),
    "room": event("change_room", name="general"),
    "room_long": event("change_room", name="r" * 65),
    "blank": event("send_message", message=" \t"),
    "unknown": event("dance"),
    "no_payload": b'{"type":"send_message"}',
    "nested": b'{"type":"change_room","payload":{"name":["a"],"extra":{"x":[1,2,{"y":null}]}}}',
    "escapes": b'{"type":"send_message","payload":{"message":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00"}}',
    "numbers": b'{"type":"send_message","payload":{"message":1e999}}',
    "dup_keys": b'{"type":"send_message","type":"change_room","payload":{"name":"x","message":"y"}}',
}



def bulk(data):
    return b"$%d\r\n%s\r\n" % (len(data), data)


def array(*parts):
    return b"*%d\r\n" % len(parts) + b"".join(parts)


# Replies from Redis, as the links read them (resp_reply).
replay_entry = array(bulk(b"7-1"), array(bulk(b"e"), bulk(b'{"type":"new_message","payload":{"message":"hi"')))
replies = {
    "ok": b"+OK\r\n",
    "error": b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
    "integer": b":1\r\n",
    "sha": bulk(b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db"),
    "nulls": b"$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n",
    "subscribed": array(bulk(b"subscribe"), bulk(b"chat:room:general"), b":1\r\n"),
    "message": array(bulk(b"message"), bulk(b"chat:room:general"), bulk(b'3 {"type":"new_message"}')),
    "pong": array(bulk(b"pong"), bulk(b"")) + b"+PONG\r\n",
    "replay": array(bulk(b"17"), bulk(b"9"), array(replay_entry, replay_entry)),
    "nested_8": b"*1\r\n" * 8 + b":1\r\n",
    "nested_9": b"*1\r\n" * 9 + b":1\r\n",
    "huge_bulk": b"$629145600\r\nxxxxxxxx",
    "huge_array": b"*9223372036854775807\r\n:1\r\n",
    "partial": b"+OK\r\n$10\r\nhello",
    "bulk_without_crlf": b"$5\r\nhelloXY+OK\r\n",
    "bad_utf8_error": b"-ERR \xff\xfe\r\n+OK\r\n",
    "long_number": b":" + b"9" * 30 + b"\r\n",
}


def write(target, name, data):
    path = os.path.join(SEEDS, target, name)
    with open(path, "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    for target in ("http_request", "connection", "ws_frames", "chat_event", "resp_reply"):
        os.makedirs(os.path.join(SEEDS, target))
    for name, data in requests.items():
        write("http_request", name, data)
    for name, data in events.items():
        write("chat_event", name, data)
    # ws_frames: flags byte (read size, route, early bytes) + frames.
    for i, (name, data) in enumerate(frames.items()):
        write("ws_frames", name, bytes([i % 32]) + data)
    # connection: flags byte + HTTP in front of the frames.
    keep_alive = requests["get_index"] + requests["login"]
    write("connection", "chat", bytes([0x05]) + keep_alive + upgrade() + frames["chat_events"])
    write("connection", "chat_bytewise", bytes([0x00]) + upgrade() + frames["fragmented"])
    write("connection", "echo", bytes([0x0E]) + upgrade("/echo") + frames["binary"])
    write("connection", "echo_fragments", bytes([0x0B]) + upgrade("/echo") + frames["fragmented"] + frames["ping_pong"])
    write("connection", "pipelined_then_garbage", bytes([0x06]) + requests["pipelined"] + b"\x00\xff garbage")
    write("connection", "upgrade_then_bad_utf8", bytes([0x03]) + upgrade() + frames["bad_utf8"])
    write("connection", "upgrade_then_huge", bytes([0x07]) + upgrade() + frames["huge_header"])
    write("connection", "body_then_garbage", bytes([0x04]) + requests["login"] + b"\r\n\r\nGARBAGE / HTTP/9.9\r\n\r\n")
    # resp_reply: flags byte (read size) + what Redis sends; then all of them in one go.
    for i, (name, data) in enumerate(replies.items()):
        write("resp_reply", name, bytes([i % 8]) + data)
    write("resp_reply", "pipelined", bytes([0x01]) + b"".join(v for k, v in replies.items() if k in (
        "ok", "error", "integer", "sha", "nulls", "subscribed", "message", "pong", "replay", "nested_8")))
    total = sum(len(files) for _, _, files in os.walk(SEEDS))
    print(f"wrote {total} seeds under {SEEDS}")


if __name__ == "__main__":
    main()
