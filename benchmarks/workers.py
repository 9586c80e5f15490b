"""Long-lived worker processes, one per engine, and the line-based protocol between them and
``compare.py`` (standard library only: the workers run in the peers' interpreters).

Each request is one line of JSON, ``{"op": NAME, ...arguments}``, and each answer one line:
``{"ok": result}`` or ``{"error": message}``. A worker first says ``{"ready": version}``, or
``{"missing": why}`` if its engine does not import, and then serves until its stdin closes. The
answers go to a copy of the worker's original stdout; its own stdout is pointed at stderr, so
whatever an engine prints (Keras's progress, a compiler's warnings) cannot break the protocol.
"""

import json
import os
import select
import subprocess
import sys
import traceback


def serve(make_engine):
    """The worker's side: make the engine, then answer requests with its ``op_NAME`` methods."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def say(**message):
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    try:
        engine = make_engine()
    except ImportError as e:
        say(missing=f"{type(e).__name__}: {e}")
        return
    say(ready=engine.version)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            say(ok=getattr(engine, "op_" + request.pop("op"))(**request))
        except Exception as e:  # the engine failed on this request: say what, and go on serving
            traceback.print_exc()
            say(error=f"{type(e).__name__}: {e}")


class WorkerError(Exception):
    """A worker failed a request (``missing`` when its engine did not import; ``died`` when the
    process is gone, which ends it for the rest of the run)."""

    def __init__(self, message, missing=False, died=False):
        super().__init__(message)
        self.missing, self.died = missing, died


class Worker:
    """The coordinator's side: one worker process running ``command``, its stderr in ``log``."""

    def __init__(self, command, env, log):
        self.log, self.version = log, None
        with open(log, "w") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                            env=env, text=True, bufsize=1)

    def ready(self, timeout=600):
        """Wait for the worker's engine to import (workers started together import side by side)."""
        hello = self._answer(timeout)
        if "missing" in hello:
            self.close()
            raise WorkerError(hello["missing"], missing=True)
        self.version = hello["ready"]

    def ask(self, op, timeout, **arguments):
        """The result of one request; ``WorkerError`` if the worker failed it or died."""
        try:
            self.process.stdin.write(json.dumps(dict(op=op, **arguments)) + "\n")
            self.process.stdin.flush()
        except OSError:  # a broken pipe: it has exited
            raise self._died(f"it exited with status {self.process.wait()}") from None
        answer = self._answer(timeout)
        if "error" in answer:
            raise WorkerError(answer["error"])
        return answer["ok"]

    def _answer(self, timeout):
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.process.kill()
            raise self._died(f"no answer in {timeout:.0f} s: killed")
        line = self.process.stdout.readline()
        if not line:
            raise self._died(f"it exited with status {self.process.wait()}")
        return json.loads(line)

    def _died(self, what):
        return WorkerError(f"the worker died ({what}); {self.last_words()}", died=True)

    def last_words(self, lines=3):
        """The last lines of the worker's stderr (where a traceback ends)."""
        try:
            with open(self.log, errors="replace") as f:
                tail = [line.rstrip() for line in f if line.strip()][-lines:]
        except OSError:
            tail = []
        return " | ".join(tail) or "it said nothing on stderr"

    def cpu_seconds(self):
        """CPU time the worker's threads have used (user and system), from /proc; None elsewhere."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def close(self):
        """Close its stdin (it then exits), and kill it if it has not in 30 s."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
