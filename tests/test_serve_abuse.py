"""fastcnn serve against abuse (issue 21's battery, with bounded requests to 127.0.0.1): bodies over
the limit (chunked too), idle, half-sent and dripping connections, more connections than allowed,
malformed requests, pictures whose header promises too much, many clients at once; then the real
command in a process of its own, its memory through it all, its plain log and its exit on SIGTERM.

The server runs in this process (a thread) with small limits and short timeouts, so each test
takes a few seconds; the model is untrained (what it predicts doesn't matter here, only that the
answers are the in-process ones).
"""

import concurrent.futures
import contextlib
import io
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("waitress", reason="fastcnn serve needs the [web] extra: pip install -e '.[web]'")

import abuse  # noqa: E402
import fastcnn  # noqa: E402
from fastcnn import FastCNNError, ShapeError, image, serve  # noqa: E402
from fastcnn.cli import main  # noqa: E402
from fastcnn.settings import ServerLimits  # noqa: E402
from fastcnn.architectures import mnist_network  # noqa: E402

LIMITS = ServerLimits(max_upload=2_000_000, max_connections=12, threads=4, request_timeout=2.5, idle_timeout=1.5,
                      batch_window=0.05)  # (a long window: requests that arrive together surely go together)


@pytest.fixture(scope="module")
def model():
    return mnist_network(seed=3)


@contextlib.contextmanager
def running(app, limits=LIMITS):
    server = serve.make_server(app, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.stop()
        thread.join(10)


@pytest.fixture(scope="module")
def app(model):
    return serve.create_app(model, limits=LIMITS)


@pytest.fixture(scope="module")
def port(app):
    with running(app) as p:
        yield p


def drawing(k):
    """A drawing as the page sends it (an opaque RGBA PNG, 420x420), different for each ``k``."""
    im = Image.new("RGBA", (420, 420), "white")
    d = ImageDraw.Draw(im)
    x = 120 + 7 * (k % 20)
    d.line([(x, 90), (300, 100 + 5 * (k % 9)), (160 + 3 * (k % 30), 330)], fill="black", width=22)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_a_chunked_upload_is_cut_at_the_limit_and_the_connection_closed(port, tried):
    status, answer, sent, seconds = abuse.endless_chunked(port, abuse.small_png(), LIMITS.max_upload + 2**20)
    assert status == 413 and answer == {"error": "upload too large: expected at most 2,000,000 bytes"}
    assert seconds < 5  # closed by the server, not left hanging
    tried["uploads over the limit refused (chunked or not)"] = tried.get("uploads over the limit refused "
                                                                        "(chunked or not)", 0) + 1


def test_a_declared_length_over_the_limit_is_refused_before_the_body(port):
    with abuse.connect(port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        status, answer, closed = abuse.read_response(s)
    assert status == 413 and "at most 2,000,000 bytes" in answer["error"] and closed


@pytest.mark.parametrize("request_, status, message", [
    (b"GARBAGE\r\n\r\n", 400, "bad request"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not implemented"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "bad request"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431, "header"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400, "not an image file"),
    (b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n", 405, "not allowed"),
])
def test_malformed_requests_get_a_json_error(port, request_, status, message):
    with abuse.connect(port) as s:
        s.sendall(request_)
        got, answer, _ = abuse.read_response(s)
    assert got == status and message in answer["error"].lower(), answer


def test_idle_connections_are_closed_after_the_idle_timeout(port):
    closed = abuse.seconds_until_closed(abuse.idle_connections(port, 5), limit=10)
    # maintenance runs every second, so up to 2 s late
    assert all(c is not None and LIMITS.idle_timeout - 0.1 <= c <= LIMITS.idle_timeout + 2.5 for c in closed), closed


def test_half_sent_and_dripping_requests_are_cut_at_the_request_timeout(port):
    closed = abuse.drip(port, 3, every=0.2, limit=12)  # a byte every 0.2 s: never idle, never done
    assert all(c is not None and LIMITS.request_timeout - 0.1 <= c <= LIMITS.request_timeout + 2.5
               for c in closed), closed


def test_connections_beyond_the_limit_wait_and_a_request_still_gets_through(port, tried):
    n = 4 * LIMITS.max_connections
    crowd = abuse.idle_connections(port, n // 2) + abuse.idle_connections(port, n // 2, half_sent=True)
    start = time.monotonic()
    status, _ = abuse.post(port, drawing(0))
    waited = time.monotonic() - start
    closed = abuse.seconds_until_closed(crowd, limit=30)
    assert status == 200 and waited < 10, waited
    # Every connection of the crowd was closed, the last ones after a few rounds of the shortened timeouts.
    assert all(c is not None for c in closed) and max(closed) < 25, closed
    tried["idle, half-sent and dripping connections closed on time"] = (
        tried.get("idle, half-sent and dripping connections closed on time", 0) + n)


def test_many_clients_at_once_are_answered_right_in_batches(app, port, model, tried):
    bodies = [drawing(k) for k in range(24)]
    expected = model.predict(np.stack([image.load_digit(io.BytesIO(b)) for b in bodies])).argmax(axis=1)
    batcher = app.extensions["fastcnn"]
    batcher.batches = []

    def client(c):
        got = []
        for k in range(c, c + 12):
            status, answer = abuse.post(port, bodies[k % len(bodies)])
            got.append((status, answer["prediction"] == expected[k % len(bodies)]))
        return got

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(client, range(8)) for r in rs]
    assert results == [(200, True)] * 96
    assert sum(batcher.batches) == 96 and max(batcher.batches) > 1  # some arrived together and went together
    tried["concurrent requests answered as in-process"] = tried.get("concurrent requests answered as in-process",
                                                                    0) + 96


def test_pictures_decoded_at_once_stay_within_the_decode_memory(model, monkeypatch):
    most = []
    original = serve.DecodeBudget.__call__

    @contextlib.contextmanager
    def watched(self, nbytes):
        with original(self, nbytes):
            most.append(self.used)
            yield

    monkeypatch.setattr(serve.DecodeBudget, "__call__", watched)
    limits = ServerLimits(decode_memory=image.MAX_DECODED_BYTES, max_upload=LIMITS.max_upload)
    tall = abuse.png_bomb(100, 300_000)  # 30 MB decoded each: two at once would pass the 64 MiB budget
    with running(serve.create_app(model, limits=limits), limits) as p:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = [s for s, _ in pool.map(lambda _: abuse.post(p, tall), range(4))]
    assert statuses == [400] * 4  # no digit in them, but read
    assert len(most) == 4 and max(most) <= image.MAX_DECODED_BYTES


def test_a_bad_port_or_a_busy_one_is_a_clear_error(app, port, capsys):
    for bad in (70000, 65536, -1, 8000.5, True):
        with pytest.raises(ShapeError, match=r"port: expected a port number 1-65535 \(0: any free one\)"):
            serve.make_server(app, "127.0.0.1", bad)
    with pytest.raises(FastCNNError, match=rf"cannot listen on 127.0.0.1:{port}: Address already in use"):
        serve.make_server(app, "127.0.0.1", port)
    for bad in ("70000", "65536", "-1", "http"):
        with pytest.raises(SystemExit) as e:
            main(["serve", "model.npz", "--port", bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --port: expected a port number 1-65535" in err and "Traceback" not in err
    assert main(["serve", "model.npz", "--threads", "0"]) == 2
    assert "threads: expected a positive integer, got 0" in capsys.readouterr().err


# --- the real command, in a process of its own ---------------------------------------------------

def test_the_serve_command_through_the_battery(model, tmp_path, tried):
    """The pixel bombs of the issue (alone and four at once), a chunked flood, a crowd of idle
    connections: the server answers each as it should, stays under 500 MB, logs plain lines, and
    leaves on SIGTERM."""
    path = tmp_path / "model.npz"
    model.save(path)
    proc = subprocess.Popen([sys.executable, "-m", "fastcnn.cli", "serve", str(path), "--port", "0",
                             "--idle-timeout", "2", "--max-connections", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert " on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        p = int(line.split("127.0.0.1:")[1].split("/")[0])
        assert abuse.post(p, drawing(1))[0] == 200
        bombs = [abuse.png_bomb(1, 39_000_000), abuse.png_bomb(6300, 6300, 6), abuse.png_bomb(100, 390_000)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for bomb in bombs:
                answers = list(pool.map(lambda b: abuse.post(p, b), [bomb] * 4))
                assert all(s == 400 for s, _ in answers), answers
        status, _, sent, seconds = abuse.endless_chunked(p, abuse.small_png(), 40 * 2**20)
        assert status == 413 and seconds < 10
        crowd = abuse.idle_connections(p, 60)
        assert all(c is not None for c in abuse.seconds_until_closed(crowd, limit=30))
        assert abuse.post(p, drawing(2))[0] == 200
        peak = abuse.peak_memory(proc.pid)
        assert peak is None or peak < 500 * 2**20, f"{peak / 2**20:.0f} MB"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "\x1b[" not in err  # plain lines, no colour codes in a file
    assert re.search(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 127\.0\.0\.1 "POST /predict" 200 \d+$', err, re.M), err
    tried["pixel bombs refused or read within the memory bound"] = (
        tried.get("pixel bombs refused or read within the memory bound", 0) + 12)


def test_a_host_that_is_no_address_and_too_many_threads_are_one_line_errors(tmp_path, capsys):
    # Each was a traceback: waitress's ValueError, then 21,000 threads started before "can't start new thread".
    model, net = tmp_path / "m.npz", mnist_network(seed=0)
    fastcnn.save(model, net, fastcnn.SGD(net, 0.1), {"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": [],
                                                    "settings": {"dataset": "mnist"}})
    for host in ("999.1.1.1", "nosuch.invalid"):
        assert main(["serve", str(model), "--host", host, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cannot listen on {host}:0: not an address or a host name" in err
    assert main(["serve", str(model), "--threads", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threads: expected 1..256 requests worked on at once, got 100,000" in err
