"""``fastcnn serve`` under load: the web page's own uploads from many clients at once.

Starts ``fastcnn serve MODEL`` in a process of its own, and sends it what the page sends (MNIST
test digits drawn as on its pad: a 420x420 PNG each, ``tests/photos.page_drawing``) from
``--clients`` connections at once for ``--seconds``; prints requests/s, latency (p50, p99, max),
errors, digits read otherwise than ``fastcnn.image.load_digit`` reads them in this process, and
the server's peak memory (VmHWM). ``--abuse`` then runs the abuse battery against the same
server (``tests/abuse.py``: pixel bombs alone and four at once, an endless chunked upload, idle
and half-sent connections beyond the connection limit, requests that drip) and prints its peak
memory through it all, and whether it still answers.

    FASTCNN_DATA=... python benchmarks/serve_load.py model.npz --clients 32 --seconds 20 --abuse

Run it alone on the machine: the clients take a share of the CPU too (about a tenth of a core).
"""

import argparse
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import abuse  # noqa: E402
from photos import page_drawing  # noqa: E402


def uploads(count):
    """The page's uploads of the first ``count`` MNIST test digits, and their labels."""
    from fastcnn.data import load_dataset
    x, y = load_dataset("mnist", "test")
    return [page_drawing(d) for d in x[:count]], y[:count]


def expected_answers(model_path, bodies):
    """What this process reads in each upload: the digit the server must answer."""
    import fastcnn
    from fastcnn.image import load_digit
    model = fastcnn.load(model_path)
    seen = np.stack([load_digit(io.BytesIO(b)) for b in bodies])
    return model.predict(seen).argmax(axis=1)


def start_server(model_path, server_args, pythonpath=None):
    """``fastcnn serve MODEL --port 0 SERVER_ARGS`` in a process of its own (its stderr in a
    temporary file, ``proc.log``); ``pythonpath``: where to import fastcnn from instead."""
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    log = tempfile.TemporaryFile("w+")
    # (-m puts the working folder first on the path: started in pythonpath, its fastcnn is found first)
    proc = subprocess.Popen([sys.executable, "-m", "fastcnn.cli", "serve", str(Path(model_path).resolve()), "--port",
                             "0", *server_args], stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=pythonpath)
    proc.log = log
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        log.seek(0)
        raise SystemExit(f"the server did not start: {line}{log.read()}")
    port = int(line.split(" on http://")[1].split("/")[0].rsplit(":", 1)[1])
    return proc, port


def client(port, bodies, expected, offset, stop_at, out):
    """One client: a kept-alive connection, one request after the other until ``stop_at``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = offset
    while time.perf_counter() < stop_at:
        k = i % len(bodies)
        start = time.perf_counter()
        try:
            conn.request("POST", "/predict", bodies[k], {"Content-Type": "image/png"})
            response = conn.getresponse()
            data = response.read()
            ok = response.status == 200
            right = ok and json.loads(data)["prediction"] == expected[k]
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ok = right = False
        out.append((time.perf_counter() - start, ok, right))
        i += 1
    conn.close()


def cpu_seconds(pid):
    """User and system CPU time process ``pid`` has used (Linux's /proc), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def load(port, bodies, expected, clients, seconds, server_pid=None):
    results = []
    server_cpu, own_cpu = cpu_seconds(server_pid) if server_pid else None, time.process_time()
    stop_at = time.perf_counter() + seconds
    threads = [threading.Thread(target=client, args=(port, bodies, expected, c * 7, stop_at, results))
               for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    own_cpu = time.process_time() - own_cpu
    server_cpu = cpu_seconds(server_pid) - server_cpu if server_cpu is not None else None
    latency = np.array([r[0] for r in results]) * 1000
    errors = sum(not ok for _, ok, _ in results)
    wrong = sum(ok and not right for _, ok, right in results)
    print(f"{clients} clients, {elapsed:.1f} s: {len(results):,} requests, {len(results) / elapsed:.1f} requests/s; "
          f"latency p50 {np.percentile(latency, 50):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms, "
          f"max {latency.max():.0f} ms; {errors} errors, {wrong} digits read otherwise", flush=True)
    if server_cpu is not None:
        print(f"CPU per request: server {1000 * server_cpu / len(results):.2f} ms, clients "
              f"{1000 * own_cpu / len(results):.2f} ms", flush=True)
    return len(results) / elapsed, errors, wrong


def battery(port, proc, connections, idle_timeout, request_timeout):
    """The abuse battery of issue 21, against a running server; prints what each part got."""
    def say(what, result):
        print(f"  {what}: {result}; server peak memory {abuse.peak_memory(proc.pid) / 2**20:.0f} MB", flush=True)

    print("abuse battery:", flush=True)
    line = page_drawing(np.eye(28, dtype=np.float32)[..., None])  # a drawing: a stroke from corner to corner
    bombs = {"1 x 39,000,000 grey PNG": abuse.png_bomb(1, 39_000_000),
             "6,300 x 6,300 RGBA PNG (39.7 MP)": abuse.png_bomb(6300, 6300, 6),
             "100 x 390,000 grey PNG (39 MP, 40 MiB decoded)": abuse.png_bomb(100, 390_000),
             "4,000 x 4,000 RGBA PNG (122 MiB decoded and shrunk)": abuse.png_bomb(4000, 4000, 6),
             "4,000 x 4,000 RGB PNG (61 MiB decoded)": abuse.png_bomb(4000, 4000, 2)}
    for name, body in bombs.items():
        start = time.monotonic()
        status, answer = abuse.post(port, body)
        say(f"{name}, {len(body) / 1000:.0f} KB", f"{status} in {time.monotonic() - start:.2f} s, "
            f"{(answer or {}).get('error', '')[:90]!r}")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            start = time.monotonic()
            statuses = [s for s, _ in pool.map(lambda b: abuse.post(port, b), [body] * 4)]
        say("  four at once", f"{statuses} in {time.monotonic() - start:.2f} s")
    status, answer, sent, seconds = abuse.endless_chunked(port, abuse.small_png(), 200 * 2**20)
    say("chunked upload of 200 MB", f"{status} {(answer or {}).get('error')!r} after {sent / 2**20:.0f} MB sent, "
        f"closed after {seconds:.1f} s")
    for half in (False, True):
        n = 15 * connections
        sockets = abuse.idle_connections(port, n, half_sent=half)
        start = time.monotonic()
        status, _ = abuse.post(port, line, timeout=120)
        served = time.monotonic() - start
        closed = abuse.seconds_until_closed(sockets, 3 * idle_timeout + 60)
        hung = sum(c is None for c in closed)
        say(f"{n:,} {'half-sent' if half else 'idle'} connections (limit {connections})",
            f"a request among them answered {status} in {served:.1f} s; all closed within "
            f"{max(c for c in closed if c is not None):.1f} s, {hung} still open")
    closed = abuse.drip(port, 50, 0.5, request_timeout + 20)
    say("50 requests dripping a byte every 0.5 s", f"closed after {min(closed):.1f}-{max(closed):.1f} s"
        if all(closed) else f"{sum(c is None for c in closed)} still open")
    status, answer = abuse.post(port, line)
    say("and then a drawing", f"{status}, read as {(answer or {}).get('prediction')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model file (fastcnn train)")
    p.add_argument("--clients", default="32", help="clients at once; several, comma-separated, are run in turn")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--digits", type=int, default=500, help="MNIST test digits drawn and sent in turn")
    p.add_argument("--abuse", action="store_true", help="then run the abuse battery")
    p.add_argument("--pythonpath", help="import the server's fastcnn from this folder (an older version, "
                                        "to compare; give it --server with the options it knows)")
    p.add_argument("--server", nargs=argparse.REMAINDER, default=None,
                   help="options for fastcnn serve, everything after --server (default: --quiet)")
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError, ValueError, OSError):  # the crowds of connections need the file descriptors
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    cpu = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()
                  if f.startswith("avx512f") or f == "avx2"}) if os.path.exists("/proc/cpuinfo") else []
    print(f"{os.cpu_count()} cores ({', '.join(cpu)}), load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    bodies, _ = uploads(args.digits)
    expected = expected_answers(args.model, bodies)
    server_args = ["--quiet"] if args.server is None else args.server
    proc, port = start_server(args.model, server_args, args.pythonpath)
    try:
        load(port, bodies[:8], expected[:8], 2, 1.0)  # warm: the kernels load, the first batches run
        errors = wrong = 0
        for clients in map(int, args.clients.split(",")):
            _, e, w = load(port, bodies, expected, clients, args.seconds, proc.pid)
            errors, wrong = errors + e, wrong + w
        print(f"server peak memory {abuse.peak_memory(proc.pid) / 2**20:.0f} MB; load average after: "
              f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        if args.abuse:
            from fastcnn.settings import ServerLimits
            limits = ServerLimits()
            connections = (int(server_args[server_args.index("--max-connections") + 1])
                           if "--max-connections" in server_args else limits.max_connections)
            battery(port, proc, connections, limits.idle_timeout, limits.request_timeout)
            if proc.poll() is not None:
                print("the server died")
                return 1
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        proc.log.seek(0)
        err = proc.log.read()
    print(err.strip().splitlines()[-1] if err.strip() else "", flush=True)  # the server's summary: batches
    if "Traceback" in err:
        print(f"the server's log holds a traceback:\n{err}")
        return 1
    return 1 if errors or wrong else 0


if __name__ == "__main__":
    from common import script
    sys.exit(script(main))
