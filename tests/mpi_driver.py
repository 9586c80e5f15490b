"""``fastcnn train`` on a fake MNIST folder, for tests/test_mpi.py to launch under mpiexec.

    python mpi_driver.py DATA_DIR [fastcnn train options...]

DATA_DIR holds mnist/ (``fakes.fake_mnist``) and sums.json, the checksums to accept for it.
``MPI_TEST_FAULT=RANK:STEP:WHAT`` makes process RANK, right after optimizer step STEP, send
itself a signal (WHAT = SIGINT, SIGKILL, SIGSTOP) or raise an error (WHAT = error), so each
fault comes at a known step. With ``MPI_TEST_STOPS=FOLDER``, a process that stops on a signal
writes the step it stopped after to FOLDER/RANK (a file each: their stderr lines interleave).
"""

import json
import os
import signal
import sys
from pathlib import Path

from fastcnn import FastCNNError, data, distributed, optim, training
from fastcnn.cli import main


def inject(rank, step, what):
    take_step = optim.SGD.step

    def step_then_fault(self):
        take_step(self)
        if self.steps == step and distributed.world().rank == rank:
            if what == "error":
                raise FastCNNError("the fault the test injected")
            os.kill(os.getpid(), getattr(signal, what))

    optim.SGD.step = step_then_fault


def report_stops(folder):
    interrupted = training._interrupted

    def say(signum, steps, *rest):
        (folder / str(distributed.world().rank)).write_text(str(steps))
        return interrupted(signum, steps, *rest)

    training._interrupted = say


if __name__ == "__main__":
    root = Path(sys.argv[1])
    data.CHECKSUMS["mnist"] = json.loads((root / "sums.json").read_text())
    if os.environ.get("MPI_TEST_FAULT"):
        rank, step, what = os.environ["MPI_TEST_FAULT"].split(":")
        inject(int(rank), int(step), what)
    if os.environ.get("MPI_TEST_STOPS"):
        report_stops(Path(os.environ["MPI_TEST_STOPS"]))
    sys.exit(main(["train", "--data-dir", str(root), "--no-progress", *sys.argv[2:]]))
