"""Data-parallel training over MPI: the group of processes ``fit`` trains in.

``mpiexec -n K fastcnn train ...`` starts K copies of one command. Each draws the same shuffle
from the seed and takes its own contiguous part of every global batch (``--batch-size`` stays
the global batch, so the command trains the same model whatever K is, up to float rounding);
it computes the gradient of its part, and one Allreduce of the flat gradient buffer gives every
process the gradient of the whole batch. The loss kernel averages over a process's own rows, so
each part is first weighted by its share of the batch (n_local / n_global). Then every process
takes the same optimizer step from the same weights (rank 0's, broadcast at the start; checked
equal after every epoch), so the weights stay identical everywhere without being sent again.

Only rank 0 prints (the others' standard output goes to /dev/null; their errors still reach
stderr), shows the progress bar, evaluates and writes checkpoints. A checkpoint holds nothing of
K, so ``--resume`` works with any number of processes (on several machines, --out must be on a
folder they all see). A SIGINT or SIGTERM caught by any process is agreed on by all of them at
the next step (one small Allreduce per step), so they stop at the same step with one checkpoint.

When a process dies, the launcher ends the others: mpich's mpiexec (Hydra) kills them within
milliseconds of a SIGKILL and prints "BAD TERMINATION ... PID n ... Killed (signal 9)"; Open
MPI's within a second ("process rank 1 with PID n ... exited on signal 9 (Killed)"). What no
launcher sees is a process that leaves on its own (an error) while the others wait for it in a
collective: its MPI_Finalize, and they, would wait forever (seen with MPICH 5.0 and Open MPI
5.0). So a process that stops on an error ends them all with MPI_Abort (``abort_if_parallel``;
an uncaught exception does the same), and a watchdog bounds every collective: no answer for
``FASTCNN_MPI_TIMEOUT`` seconds (default 300: rank 0 evaluates and writes checkpoints while the
others wait for it; ``inf`` waits forever) ends the job, saying so. Ctrl-C reaches only mpiexec
(each process has its own process group): mpich's passes SIGINT on to every process, Open MPI's
sends them SIGTERM; either way they stop at one step with one checkpoint.

Layers with state across the batch (BatchNorm): each process computes the batch statistics of
its own part of the batch, as PyTorch's DistributedDataParallel does by default (not
synchronised, as its SyncBatchNorm would); its running averages are then those of rank 0's
parts, which is what rank 0 saves. So with a BatchNorm layer, K processes train a slightly
different model than one process does (statistics over n_global / K rows instead of n_global).

Without MPI (no mpiexec, or one process), ``world()`` is ``Single``: the same methods, doing
nothing, and mpi4py is never imported.
"""

import contextlib
import os
import sys
import threading
import time
import zlib

import numpy as np

from .errors import FastCNNError, ShapeError

# What the launchers set in each process they start: mpich's Hydra (and Intel MPI, Slurm's PMI)
# PMI_SIZE, Open MPI's mpirun OMPI_COMM_WORLD_SIZE.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
DEFAULT_TIMEOUT = 300.0  # seconds without an answer in a collective before the job is ended
# mpiexec passes on each process's output through pipes, and on MPI_Abort it kills them all: what
# a process said just before its abort could be lost with the pipes (seen once, on a busy 2-core
# CI machine: an empty stderr). A pause before aborting lets mpiexec pass the last lines on.
ABORT_GRACE = 1.0  # seconds

_world = None


def world():
    """The process group this process trains in, made on first use: ``MPIWorld`` when a launcher
    started several processes, else ``Single``."""
    global _world
    if _world is None:
        launched = next((int(os.environ[v]) for v in _SIZE_VARIABLES if os.environ.get(v, "").isdigit()), 1)
        _world = MPIWorld(launched) if launched > 1 else Single()
    return _world


def abort_if_parallel(status):
    """Leave with ``status`` after an error: with several processes, end all of them now
    (MPI_Abort), since the others may be waiting for this one in a collective; else return it."""
    if _world is not None and _world.size > 1:
        _world.abort(status)
    return status


def this_process():
    """`` (process r of K)`` to name this process in a message when there are several, else ``""``."""
    return _world.describe() if _world is not None else ""


def _seconds(text):
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise FastCNNError(f"FASTCNN_MPI_TIMEOUT: expected a number of seconds > 0, got {text!r}")
    return seconds


def _part(n, rank, size):
    """Rows [start, stop) of ``n`` that ``rank`` of ``size`` takes: contiguous, sizes within one."""
    return n * rank // size, n * (rank + 1) // size


class Single:
    """One process: every method is the identity or does nothing."""

    rank, size, local_size, is_root = 0, 1, 1, True

    def default_threads(self):
        return None  # all cores

    def slice(self, rows):
        return 0, rows

    def check_batches(self, n, batch_size):
        pass

    def broadcast(self, array):
        pass

    def allreduce_gradients(self, gradients, n_local, n_global):
        pass

    def sum(self, values):
        return np.asarray(values, np.float64)

    def stop_requested(self, caught):
        return caught[0] if caught else 0

    def check_same(self, name, array):
        pass

    def barrier(self):
        pass

    def describe(self):
        return ""


class MPIWorld:
    """``size`` processes started by mpiexec; ``rank`` 0 is the root, ``local_size`` the number
    on this machine."""

    def __init__(self, launched):
        try:
            from mpi4py import MPI
        except (ImportError, RuntimeError) as e:  # RuntimeError: mpi4py found no MPI library
            raise FastCNNError(f"started by mpiexec as one of {launched} processes, but mpi4py cannot be "
                               f"used ({e}); install it with: pip install 'fastcnn[mpi]'") from None
        self._MPI, self._comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        if self.size != launched:
            # Each process is alone in its own world: mpiexec and mpi4py's library are two MPIs.
            library = " ".join(MPI.Get_library_version().split()[:3])
            raise FastCNNError(f"mpiexec started {launched} processes but MPI sees {self.size}: the mpiexec "
                               f"that ran this belongs to another MPI than mpi4py's ({library}); "
                               f"use the mpiexec installed beside it (e.g. .venv/bin/mpiexec)")
        self.is_root = self.rank == 0
        self.local_size = self._comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self._flag = np.zeros(1, np.int64)
        self.timeout = _seconds(os.environ.get("FASTCNN_MPI_TIMEOUT", DEFAULT_TIMEOUT))
        self._waiting = None  # (what, since) while in a collective, for the watchdog
        threading.Thread(target=self._watch, name="fastcnn-mpi-watchdog", daemon=True).start()
        previous = sys.excepthook

        def abort_on_uncaught(kind, value, traceback):
            """An exception no one caught: print it, then end them all (the others may be waiting for
            this process). A KeyboardInterrupt was agreed on by all (fit's stop) or reached them all."""
            previous(kind, value, traceback)
            if not issubclass(kind, KeyboardInterrupt):
                self.abort(1)
        sys.excepthook = abort_on_uncaught
        if not self.is_root:
            sys.stdout = open(os.devnull, "w")  # only rank 0 prints

    def default_threads(self):
        """This machine's cores shared among the processes on it."""
        import numba
        return max(1, numba.config.NUMBA_NUM_THREADS // self.local_size)

    def slice(self, rows):
        """This process's contiguous part of a global batch's ``rows``: (where it starts, the part)."""
        start, stop = _part(len(rows), self.rank, self.size)
        return start, rows[start:stop]

    def check_batches(self, n, batch_size):
        """Every process gets at least one image of every batch of ``n`` images, else ShapeError."""
        smallest = min(batch_size, n % batch_size or batch_size)
        if smallest < self.size:
            raise ShapeError(f"batch_size: {n} images in batches of {batch_size} leave a batch of {smallest}, "
                             f"fewer than the {self.size} processes; choose a batch size with no batch smaller")

    def broadcast(self, array):
        """Overwrite ``array`` with rank 0's, in every process."""
        with self._bounded("a broadcast"):
            self._comm.Bcast(array, root=0)

    def allreduce_gradients(self, gradients, n_local, n_global):
        """Turn each process's mean gradient over its ``n_local`` rows into the mean over all
        ``n_global`` rows of the batch, in place, in every process."""
        gradients *= np.float32(n_local / n_global)
        with self._bounded("the all-reduce of the gradients"):
            self._comm.Allreduce(self._MPI.IN_PLACE, gradients, op=self._MPI.SUM)

    def sum(self, values):
        """The sums over all processes of a few numbers (a step's loss and correct count)."""
        totals = np.array(values, np.float64)
        with self._bounded("the sum of the step's loss"):
            self._comm.Allreduce(self._MPI.IN_PLACE, totals, op=self._MPI.SUM)
        return totals

    def stop_requested(self, caught):
        """The signal number some process caught (the largest, if several), or 0: the same answer
        in every process, so all stop at the same step."""
        self._flag[0] = caught[0] if caught else 0
        with self._bounded("the agreement on stopping"):
            self._comm.Allreduce(self._MPI.IN_PLACE, self._flag, op=self._MPI.MAX)
        return int(self._flag[0])

    def check_same(self, name, array):
        """Every process holds the same bytes in ``array``, else FastCNNError (a bug, or an MPI
        whose sums differ between processes)."""
        with self._bounded("the check that every process has the same weights"):
            sums = self._comm.allgather(zlib.crc32(array))
        if len(set(sums)) > 1:
            differ = [r for r, s in enumerate(sums) if s != sums[0]]
            raise FastCNNError(f"{name} of processes {differ} differ from rank 0's; "
                               f"the processes no longer train one model")

    def barrier(self):
        with self._bounded("a barrier"):
            self._comm.Barrier()

    def describe(self):
        return f" (process {self.rank} of {self.size})"

    def abort(self, status):
        """End every process of the job with ``status`` (MPI_Abort); does not return."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE)
        self._comm.Abort(status)

    @contextlib.contextmanager
    def _bounded(self, what):
        self._waiting = (what, time.monotonic())
        try:
            yield
        finally:
            self._waiting = None

    def _watch(self):
        """Ends the job when a collective has waited ``timeout`` seconds (mpi4py releases the GIL
        while it waits, so this thread runs)."""
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                print(f"fastcnn: process {self.rank} of {self.size}: no answer from the other processes for "
                      f"{self.timeout:g} s in {waiting[0]}: one of them hangs or lost its connection; ending "
                      f"all of them (FASTCNN_MPI_TIMEOUT sets how long to wait)", file=sys.stderr, flush=True)
                self.abort(3)
