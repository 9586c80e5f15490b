"""Hostile clients of ``fastcnn serve``, for the abuse tests (tests/test_serve_abuse.py) and the
load benchmark (benchmarks/serve_load.py): pictures whose header promises too many pixels or too
much memory, a chunked body that never ends, connections that idle, half-sent requests that
drip. Each returns what a test needs to judge the server: the answer it got, and when.
"""

import io
import json
import socket
import time
import zlib

import numpy as np
from PIL import Image

PNG = b"\x89PNG\r\n\x1a\n"


def _chunk(kind, data):
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_bomb(width, height, colour_type=0):
    """A valid PNG of ``width`` x ``height`` blank pixels, made without holding them: a few KB
    for 39 million pixels. ``colour_type`` 0 is 8-bit grey, 6 is RGBA."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    row = b"\x00" + bytes(width * channels)  # filter byte 0, then the row
    rows = max(1, 2**20 // len(row))  # compressed a megabyte at a time
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row * min(rows, height - start)) for start in range(0, height, rows)) + z.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, colour_type, 0, 0, 0])
    return PNG + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def small_png(side=64, value=0):
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def connect(port, timeout=30):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(sock):
    """``(status, JSON body or None, whether the server then closed the connection)``; status
    None if the connection closed before any answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return None, None, True
        data += part
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    closed = headers.get("connection", "").lower() == "close"
    try:
        answer = json.loads(body[:length]) if headers.get("content-type", "").startswith("application/json") else None
    except ValueError:
        answer = None
    return status, answer, closed


def post(port, body, timeout=60):
    """One ``POST /predict`` of ``body`` on a connection of its own: ``(status, JSON answer)``."""
    with connect(port, timeout) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, answer, _ = read_response(s)
        return status, answer


def endless_chunked(port, first, total, chunk=2**20, timeout=60):
    """A chunked upload: ``first`` (a real picture), then zeros in ``chunk``-byte chunks up to
    ``total`` bytes, stopping when the server answers or closes. Returns ``(status, answer,
    bytes sent, seconds until the connection was closed)``."""
    s = connect(port, timeout)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    s.sendall(b"%x\r\n" % len(first) + first + b"\r\n")
    sent, zeros = len(first), b"%x\r\n" % chunk + bytes(chunk) + b"\r\n"
    start = time.monotonic()
    try:
        while sent < total:
            s.sendall(zeros)
            sent += chunk
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server stopped reading and closed: its answer may still be waiting
    try:
        status, answer, _ = read_response(s)
        while s.recv(65536):  # the server must close it now
            pass
    except OSError:
        status, answer = None, None
    finally:
        s.close()
    return status, answer, sent, time.monotonic() - start


def idle_connections(port, n, half_sent=False):
    """``n`` connections that send nothing (or half a request's headers)."""
    sockets = []
    for _ in range(n):
        s = connect(port)
        if half_sent:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Len")
        sockets.append(s)
    return sockets


def seconds_until_closed(sockets, limit):
    """For each socket, the seconds until the server closed it (None: still open after ``limit``)."""
    import selectors
    start = time.monotonic()
    closed = [None] * len(sockets)
    with selectors.DefaultSelector() as sel:
        for i, s in enumerate(sockets):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        left = len(sockets)
        while left and time.monotonic() - start < limit:
            for key, _ in sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    closed[key.data] = time.monotonic() - start
                    sel.unregister(key.fileobj)
                    left -= 1
    for s in sockets:
        s.close()
    return closed


def drip(port, n, every, limit):
    """``n`` connections that send a request's headers one byte every ``every`` seconds (never
    finishing them): the seconds until the server closed each (None: open after ``limit``)."""
    sockets = [connect(port) for _ in range(n)]
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
    start, closed, i = time.monotonic(), [None] * n, 0
    while time.monotonic() - start < limit and any(c is None for c in closed):
        for k, s in enumerate(sockets):
            if closed[k] is None:
                try:
                    s.sendall(request[i:i + 1])
                except OSError:
                    closed[k] = time.monotonic() - start
        i += 1
        time.sleep(every)
        for k, s in enumerate(sockets):  # closed by the server: a read says so at once
            if closed[k] is None:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed[k] = time.monotonic() - start
                except BlockingIOError:
                    pass
                except OSError:
                    closed[k] = time.monotonic() - start
                s.setblocking(True)
    for s in sockets:
        s.close()
    return closed


def peak_memory(pid):
    """The peak resident memory of process ``pid`` in bytes (Linux's VmHWM), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
