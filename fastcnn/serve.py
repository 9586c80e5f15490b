"""``fastcnn serve``: a page to draw a digit or drop a photo, and ``POST /predict`` behind it.

``POST /predict`` takes a picture's bytes as the request body (PNG, JPEG, anything Pillow reads)
and answers ``{"prediction": 7, "probabilities": [10 floats], "classes": [10 names],
"image": 28 rows of 28 pixels 0-255 (what the model saw), "notes": [...]}``. For a model of colour
images (CIFAR-10) the picture is read as a photo and ``"image"`` is 32 rows of 32 ``[r, g, b]``;
the page then takes photos only (drawing one makes no sense). For a model trained on an image
folder, the picture is read as the folder's were (resized to the model's H x W), ``"image"`` is
H rows of W, and the page takes pictures only; so it does for a model trained on Fashion-MNIST,
which reads a picture as a garment (``image.load_garment``). Every error is a 4xx or 5xx with
``{"error": "what was wrong"}``. The page (``web/index.html``) is plain HTML and JavaScript:
nothing to build. Flask and waitress come with the ``[web]`` extra.

The server is waitress (a production WSGI server in pure Python) held to ``ServerLimits``
(``fastcnn/settings.py``): bodies, chunked or not, are cut at ``max_upload`` bytes and kept out of
memory (waitress spools large ones to a temporary file); a request must arrive within
``request_timeout`` and a connection may idle ``idle_timeout`` between requests; at most
``max_connections`` are open and ``threads`` requests are worked on at once; decoded pictures
take at most ``decode_memory`` bytes together (each picture's size is known from its header, see
``image.MAX_DECODED_BYTES``), and requests that arrive together are predicted in one batch.
"""

import collections
import contextlib
import ctypes
import ctypes.util
import html
import importlib.resources
import io
import json
import logging
import signal
import socket
import sys
import threading
import time

import numba
import numpy as np
import waitress  # noqa: F401 - here, so that a missing [web] extra is said at once
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import compiling
from .data import CLASS_NAMES, IMAGE_SHAPES
from .errors import FastCNNError, ImageError, ShapeError
from .image import load_garment, load_photo
from .inference import picture_loader
from .model import checked
from .settings import ServerLimits

__all__ = ["MAX_UPLOAD", "Batcher", "DecodeBudget", "ServerBusy", "create_app", "make_server", "serve"]

MAX_UPLOAD = ServerLimits.max_upload  # bytes: a phone photo is 3-12 MB; more is not a photo of one digit

log = logging.getLogger("fastcnn.serve")
LINGER = 2.0  # seconds a refused connection is read from (and what comes thrown away) before it closes


class ServerBusy(FastCNNError):
    """The server could not take a request in time (its pictures' memory was all in use): a 503."""


def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere (see ``DecodeBudget``)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


class DecodeBudget:
    """At most ``total`` bytes of decoded pictures at once. ``with budget(n):`` takes ``n`` bytes
    (waiting up to ``timeout`` seconds for others to give theirs back, else ``ServerBusy``) and gives
    them back at the end. ``image._read`` enters it with a picture's size from its header.

    A large picture's memory is also handed back to the system afterwards: glibc keeps what each
    thread freed for that thread's next allocations, so without this, four threads that once each
    decoded a large picture would hold four pictures' worth of memory for good."""

    LARGE = 16 * 2**20
    _trim = _malloc_trim()

    def __init__(self, total, timeout):
        self.total, self.timeout, self.used = total, timeout, 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def __call__(self, nbytes):
        with self._free:
            if not self._free.wait_for(lambda: self.used + nbytes <= self.total, self.timeout):
                raise ServerBusy(f"the server is busy decoding other pictures ({self.used:,} of {self.total:,} "
                                 f"bytes in use); try again")
            self.used += nbytes
        try:
            yield
        finally:
            with self._free:
                self.used -= nbytes
                self._free.notify_all()
            if nbytes >= self.LARGE and self._trim is not None:
                self._trim(0)


class Batcher:
    """Predicts the pictures of requests that arrive together in one call of the model.

    A request reads its picture inside ``with batcher.reading():``, then hands it to ``predict``
    and waits. One thread runs the model (so Numba's thread pool is entered from one thread only,
    with a core fewer than the machine has):
    it takes every picture waiting, and while other requests are still being read it waits for
    them up to ``window`` seconds, so that under load one call serves many requests, while a
    request alone is not delayed at all.
    """

    def __init__(self, model, window=ServerLimits.batch_window, largest=ServerLimits.max_batch):
        self.model, self.window, self.largest = checked(model), window, largest
        self._changed = threading.Condition()
        self._waiting = []  # (picture, answer) pairs
        self._reading = 0  # requests that will hand in a picture soon
        self._thread = None
        self.batches = collections.deque(maxlen=1000)  # the sizes of the last 1,000 batches predicted
        self.pictures = self.calls = self.most = 0  # since the start

    @contextlib.contextmanager
    def reading(self):
        with self._changed:
            self._reading += 1
        try:
            yield
        finally:
            with self._changed:
                self._reading -= 1
                if not self._reading:  # what the predicting thread may be waiting for
                    self._changed.notify_all()

    def summary(self):
        if not self.calls:
            return "no pictures predicted"
        return (f"{self.pictures:,} picture{'s' * (self.pictures > 1)} predicted in {self.calls:,} "
                f"batch{'es' * (self.calls > 1)} ({self.pictures / self.calls:.1f} on average, at most {self.most})")

    def predict(self, picture):
        """The model's probabilities for ``picture`` (one image), predicted with those waiting."""
        answer = _Answer()
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastcnn-predict", daemon=True)
                self._thread.start()
            self._waiting.append((picture, answer))
            self._changed.notify_all()
        return answer.get(self.TIMEOUT)

    TIMEOUT = 60  # seconds a request waits for its prediction (the model takes milliseconds) before a 503

    def _run(self):
        # The other cores read pictures: on 2 cores a second thread for the model only takes one
        # from them (OpenMP's threads wait spinning after each call).
        numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS - 1))  # for this thread only
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting)
                deadline = time.monotonic() + self.window
                self._changed.wait_for(lambda: not self._reading or len(self._waiting) >= self.largest,
                                       max(0.0, deadline - time.monotonic()))
                batch, self._waiting = self._waiting[:self.largest], self._waiting[self.largest:]
            try:
                probabilities = self.model.predict(np.stack([picture for picture, _ in batch]))
            except Exception as e:  # noqa: BLE001 - each request answers with it; the thread lives on
                for _, answer in batch:
                    answer.fail(e)
                continue
            self.batches.append(len(batch))
            self.pictures, self.calls = self.pictures + len(batch), self.calls + 1
            self.most = max(self.most, len(batch))
            for (_, answer), p in zip(batch, probabilities):
                answer.set(p)


class _Answer:
    """One request's result, handed from the predicting thread to the request's."""

    def __init__(self):
        self._done = threading.Event()
        self._value = self._error = None

    def set(self, value):
        self._value = value
        self._done.set()

    def fail(self, error):
        self._error = error
        self._done.set()

    def get(self, timeout):
        if not self._done.wait(timeout):
            raise ServerBusy(f"no prediction within {timeout} s: the server is overloaded")
        if self._error is not None:
            raise self._error
        return self._value


class _Upload(io.RawIOBase):
    """The request body as a read-only file Pillow can seek in, named "the upload" in messages."""

    name = "the upload"

    def __init__(self, stream):
        super().__init__()
        self._stream = stream

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._stream.seek(offset, whence)

    def tell(self):
        return self._stream.tell()


def _body(environ):
    """The request body as a seekable file: waitress's own (in memory up to 512 KB, else a
    temporary file), or for other servers the bytes read (at most ``MAX_CONTENT_LENGTH``)."""
    stream = environ["wsgi.input"]
    if hasattr(stream, "seekable") and stream.seekable():
        stream.seek(0)
        return stream
    return io.BytesIO(request.get_data(cache=False))


def create_app(model, classes=CLASS_NAMES["mnist"], limits=ServerLimits(), folder=False, dataset=None):
    """The Flask app that serves the page and ``POST /predict`` for ``model``; ``folder``: it was
    trained on an image folder, and reads a picture as the folder's were read; ``dataset``: the
    data set it was trained on ("fashion-mnist": a picture is read as a garment, and the page
    takes pictures, not drawings)."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_upload
    load = picture_loader(model, folder, dataset)
    _compile_ahead(model, load)
    page = (importlib.resources.files(__package__) / "web" / "index.html").read_text(encoding="utf-8")
    if folder:
        h, w, c = model.input_shape
        hint = html.escape(f"This model reads a picture as it was trained: resized to {h}x{w}, in "
                           f"{'grey' if c == 1 else 'colour'}; its classes: {', '.join(classes)}.")
        page = page.replace('<body data-input="digit">', f'<body data-input="picture" data-hint="{hint}">', 1)
    elif load is load_photo:
        page = page.replace('<body data-input="digit">', '<body data-input="photo">', 1)
    elif load is load_garment:
        hint = html.escape(f"This model reads a picture of one piece of clothing, as Fashion-MNIST's: made grey, a "
                           f"light background turned black, trimmed to the garment and fitted into 28x28; its "
                           f"classes: {', '.join(classes)}.")
        page = page.replace('<body data-input="digit">', f'<body data-input="picture" data-hint="{hint}">', 1)
    batcher = Batcher(model, limits.batch_window, limits.max_batch)
    budget = DecodeBudget(limits.decode_memory, limits.request_timeout)
    app.extensions["fastcnn"] = batcher  # for the tests and the benchmark

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.post("/predict")
    def predict():
        if request.content_length is not None and request.content_length > limits.max_upload:
            return _too_large(limits)
        if not request.content_length:
            return _error(400, "empty request: send the picture's bytes (PNG, JPEG, ...) as the body")
        if request.mimetype == "multipart/form-data":  # a form (curl -F, requests' files=, an HTML form):
            # its one file, which werkzeug has spooled (in memory up to 500 KB, then a temporary file)
            pictures = [f for _, f in request.files.items(multi=True)]
            if len(pictures) != 1:
                return _error(400, f"a form with {len(pictures)} files: send one picture in it (curl -F "
                                   f"image=@digit.png), or its bytes as the body (curl --data-binary @digit.png)")
            body = pictures[0].stream
        else:  # (curl --data-binary says urlencoded: those are the bytes)
            body = _body(request.environ)
        notes = []  # not warnings: those are the process's, and requests come in many threads
        with batcher.reading():
            try:
                seen = load(_Upload(body), budget=budget, notes=notes)
            except ImageError as e:
                return _error(400, str(e))
            except ServerBusy as e:
                return _error(503, str(e))
        try:
            p = batcher.predict(seen)
        except ServerBusy as e:
            return _error(503, str(e))
        pixels = np.round(seen * 255).astype(int)
        return jsonify(prediction=int(np.argmax(p)), probabilities=[float(q) for q in p], classes=list(classes),
                       image=(pixels if pixels.shape[2] == 3 else pixels[:, :, 0]).tolist(),
                       notes=notes)

    @app.errorhandler(HTTPException)
    def http_error(e):  # 404, 405, 413 ... as JSON with the reason, like the rest of the API
        if e.code == 413 and request.mimetype == "multipart/form-data" and \
                (request.content_length or 0) <= limits.max_upload:  # werkzeug's limits on a form's parts
            return _error(413, "a form of too many parts, or a field too large: send one picture in it "
                               "(curl -F image=@digit.png)")
        if e.code == 413:
            return _too_large(limits)
        return _error(e.code, e.description)

    @app.errorhandler(Exception)
    def unexpected(e):  # a bug: logged with its traceback, answered without one
        log.exception("error while serving %s %s", request.method, request.path)
        return _error(500, "internal error: the server's log has the details")

    @app.after_request
    def log_request(response):
        log.info('%s "%s %s" %s %s', request.remote_addr, request.method, request.path, response.status_code,
                 response.content_length if response.content_length is not None else "-")
        return response

    return app


def _compile_ahead(model, load):
    """Compile (or load) the kernels a prediction runs now, not in the first request."""
    try:
        plan = model.plan(IMAGE_SHAPES["cifar10" if load is load_photo else "mnist"]
                          if getattr(model, "input_shape", None) is None else model.input_shape)
    except ShapeError:
        return  # pictures don't fit this model: each request says so
    compiling.prepare(plan, (False,))


def _error(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response


def _too_large(limits):
    return _error(413, f"upload too large: expected at most {limits.max_upload:,} bytes")


# --- waitress, held to the limits -----------------------------------------------------------------

def _waitress():
    """The waitress classes, made to answer errors in JSON and to time out slow requests."""
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.server import TcpWSGIServer
    from waitress import wasyncore
    from waitress.task import ErrorTask

    class JSONErrorTask(ErrorTask):
        """waitress's own refusals (a body over the limit, a malformed request) in the API's JSON."""

        def execute(self):
            e = self.request.error
            if e.code == 413:
                message = f"upload too large: expected at most {self.channel.adj.max_request_body_size - 1:,} bytes"
            else:
                message = f"{e.reason.lower()}: {e.body}"
            self.channel.refused = True
            body = json.dumps({"error": message}).encode()
            self.status = f"{e.code} {e.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Parser(HTTPRequestParser):
        """A request being received, and since when (for the request timeout)."""

        def __init__(self, adj):
            super().__init__(adj)
            self.started = time.monotonic()

    class Channel(HTTPChannel):
        """A connection; after a refusal it lingers: a client still sending (the rest of a body
        over the limit) would otherwise have its connection reset, and the answer with it. So
        the answer is sent, writing is shut, and what still comes is read and thrown away for
        ``LINGER`` seconds at most; then the connection closes. (Lingering replaces four of the
        channel's methods on that channel alone: the server's loop asks every channel whether it
        is readable and writable at each turn, so those stay waitress's own, with no added call.)"""

        error_task_class = JSONErrorTask
        parser_class = Parser
        refused = False
        lingering = None  # since when

        def handle_close(self):
            if self.refused and self.lingering is None and self.connected:
                try:
                    self.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    return super().handle_close()
                self.lingering, self.will_close = time.monotonic(), False
                self.readable = lambda: True
                self.handle_read = lambda: self.recv(self.adj.recv_bytes)  # thrown away; b"" closes it
                self.writable = lambda: time.monotonic() - self.lingering > LINGER  # time's up: close
                self.handle_write = lambda: HTTPChannel.handle_close(self)
                return
            super().handle_close()

    class Server(TcpWSGIServer):
        channel_class = Channel
        request_timeout = idle_timeout = None

        def maintenance(self, now):
            """Close connections silent for ``idle_timeout`` between requests, and those whose
            request has not fully arrived within ``request_timeout`` (however slowly it drips).
            While every connection is taken, both are a tenth as long: the slowest make room."""
            clock = time.monotonic()
            squeeze = 10 if self.in_connection_overflow else 1
            for channel in list(self.active_channels.values()):
                if channel.requests:
                    continue  # being answered: the request is in
                receiving = channel.request
                if ((receiving is not None and clock - receiving.started > self.request_timeout / squeeze)
                        or now - channel.last_activity > self.idle_timeout / squeeze):
                    channel.will_close = True

        @property
        def port(self):
            return int(self.effective_port)

        def stop(self):
            """End ``run`` from another thread: the loop ends once every socket is closed."""
            self.task_dispatcher.shutdown(timeout=5)
            wasyncore.close_all(self._map)

    return Server


def make_server(app, host="127.0.0.1", port=8000, limits=ServerLimits()):
    """A waitress server for ``app`` on ``host``:``port`` held to ``limits``, not yet running:
    ``server.run()`` serves until Ctrl-C or ``server.stop()`` (from another thread);
    ``server.port`` is the port (``port`` 0 takes a free one)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ShapeError(f"port: expected a port number 1-65535 (0: any free one), got {port!r}")
    from waitress.adjustments import Adjustments
    from waitress.task import ThreadedTaskDispatcher
    timeout = max(1, int(min(limits.request_timeout, limits.idle_timeout)))
    try:
        adj = Adjustments(host=host, port=port, threads=limits.threads, connection_limit=limits.max_connections,
                          max_request_body_size=limits.max_upload + 1, channel_timeout=timeout,
                          cleanup_interval=1, asyncore_use_poll=True, ident="fastcnn", expose_tracebacks=False)
    except ValueError:  # waitress resolves the host here: a name that does not resolve, or no address
        raise FastCNNError(f"cannot listen on {host}:{port}: not an address or a host name that resolves "
                           f"(e.g. 127.0.0.1, 0.0.0.0 for every interface, ::1)") from None
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(limits.threads)
    Server = _waitress()
    try:
        # One address (a host name with several, such as localhost, takes its first).
        server = Server(app, map={}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])
    except OSError as e:
        dispatcher.shutdown()
        raise FastCNNError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.request_timeout, server.idle_timeout = limits.request_timeout, limits.idle_timeout
    return server


def _plain_log(quiet):
    """Requests (unless ``quiet``) and warnings on stderr, one plain line each: no colour codes,
    whatever stderr is."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name, level in (("fastcnn.serve", logging.WARNING if quiet else logging.INFO), ("waitress", logging.WARNING),
                        ("waitress.queue", logging.ERROR)):  # the queue's depth is said at every request under load
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = [handler]
        logger.propagate = False


def serve(model, host="127.0.0.1", port=8000, classes=CLASS_NAMES["mnist"], model_name="the model",
          limits=ServerLimits(), quiet=False, folder=False, dataset=None):
    """Serve the page until Ctrl-C or SIGTERM. ``port`` 0 takes a free one. ``quiet``: no request log.
    ``folder``, ``dataset``: how the model reads a picture (see ``create_app``)."""
    app = create_app(model, classes, limits, folder, dataset)
    server = make_server(app, host, port, limits)
    _plain_log(quiet)
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as URLs write it
    print(f"Serving {model_name} on http://{shown}:{server.port}/ (Ctrl-C to stop)", flush=True)
    with _stop_on_sigterm():
        try:
            server.run()  # returns on KeyboardInterrupt, having stopped the worker threads
        finally:
            server.close()
    print(f"Stopped: {app.extensions['fastcnn'].summary()}", file=sys.stderr, flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM stops the server as Ctrl-C does (only the main thread may set a handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
