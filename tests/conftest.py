"""Shared test helpers: a kernel-vs-reference comparison that records the largest error it saw,
and prints them all at the end of the run (so every test run also reports the kernels' accuracy)."""

import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest

LARGEST_ERROR = {}  # kernel output name -> (largest relative error seen, tolerance)


@pytest.fixture
def assert_close():
    def check(name, got, want, rtol):
        """|got - want| <= rtol * max(1, max|want|), elementwise; records the largest error."""
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert got.shape == want.shape, f"{name}: shape {got.shape} != reference {want.shape}"
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        err = float(np.abs(got - want).max(initial=0.0)) / scale
        worst = LARGEST_ERROR.get(name, (0.0, rtol))[0]
        LARGEST_ERROR[name] = (max(worst, err), rtol)
        assert err <= rtol, f"{name}: largest error {err:.3g} (relative to {scale:.3g}) exceeds {rtol:g}"
    return check


TRIED = {}  # reliability tests: what was tried -> how many times (bad inputs, mutated files, kills)


@pytest.fixture(scope="session")
def tried():
    """Count what the reliability tests try; the counts are printed at the end of the run."""
    return TRIED


def pytest_terminal_summary(terminalreporter):
    if TRIED:
        terminalreporter.section("tried by the reliability tests")
        for what, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{count:7,d}  {what}")
    if not LARGEST_ERROR:
        return
    terminalreporter.section("largest kernel error vs the NumPy reference (relative to max |ref|)")
    for name, (err, rtol) in sorted(LARGEST_ERROR.items()):
        terminalreporter.write_line(f"{name:32s} {err:9.2e}   (tolerance {rtol:.0e})")


@pytest.fixture(scope="session")
def data_dir():
    """The shared data folder (FASTCNN_DATA), or skip with the reason."""
    path = os.environ.get("FASTCNN_DATA")
    if not path or not (Path(path) / "mnist").is_dir():
        pytest.skip("FASTCNN_DATA is not set to a folder with mnist/ in it (CI sets it to ../shared/data)")
    return Path(path)


@pytest.fixture(scope="session")
def mnist(data_dir):
    """Real MNIST: ((x_train, y_train), (x_test, y_test))."""
    from fastcnn.data import load_dataset
    return load_dataset("mnist", "train", data_dir), load_dataset("mnist", "test", data_dir)


@pytest.fixture(scope="session")
def trained_model(mnist, tmp_path_factory):
    """The seed network after one epoch on 12,000 real MNIST images, and its saved file."""
    from fastcnn.training import fit
    from fastcnn.architectures import mnist_network
    from fastcnn import SGD
    (x, y), test = mnist
    model = mnist_network(seed=0)
    opt = SGD(model, lr=0.05)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    fit(model, opt, (x[:12000], y[:12000]), (test[0][:1000], test[1][:1000]), epochs=1, batch_size=64,
        seed=0, out=path, progress=False)
    return model, path


# --- fake data sets and a loopback server to download them from (test_data, test_cifar) ----------


@pytest.fixture
def fake_checksums(monkeypatch):
    """Replace the published checksums with those of the fake files a test registers."""
    from fastcnn import data
    table = {name: {} for name in data.CHECKSUMS}
    monkeypatch.setattr(data, "CHECKSUMS", table)
    return table


class Server:
    """A loopback HTTP server serving ``files`` (URL path -> bytes); anything else is a 404.
    With ``send_length`` False it sends no Content-Length: the body ends when the connection closes."""

    def __init__(self):
        self.files = {}
        self.requests = []
        self.send_length = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if server.send_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    from fastcnn import data
    monkeypatch.setattr(data, "TIMEOUT", 5)
    for var in ("no_proxy", "NO_PROXY"):  # a proxy in the environment must not see loopback requests
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    s = Server()
    yield s
    s.close()
