"""Compiling ahead: the kernels a plan's passes need, compiled before they run (in several
processes where that pays), with a progress bar and an estimate measured on this machine.

A kernel compiles (a few tenths of a second to a few seconds) the first time it runs on a CPU,
and every later process loads it from the cache (``kernels/jit.py``). ``prepare(plan, modes)``,
which a plan runs before its first pass of each mode, *rehearses* those passes
(``Plan.rehearse``): the plan runs on two zero images while every kernel call that would
compile is noted with its argument types instead, and returns True (the kernels that return
something return whether they succeeded; a wrong guess only means that a kernel compiles later,
in the pass itself). The kernels not in the cache are then compiled, the costliest first, by
this process and helpers, each kernel's signatures in one process so that no two write one cache
file, and the kernels that share a helper function (``jit.helper``) by one process where that
can be (``_Queue``); the passes then load them from the cache. A helper is a copy of this
process (``os.fork``, ready at once, on Linux when no other Python thread runs), one per thread
of the kernels; else a fresh interpreter (``python -c``, so no user script runs again: 0.6 s to
start) per idle core.
A model's first training pass compiles the step of the optimizer last made for it too.

What each compile cost (CPU seconds) is recorded beside the cache, in ``compile-times.json``:
estimates come from this build's records, else from another build's on this CPU (an earlier
version, edited kernels), else from what each kernel took on one machine (``REFERENCE_SECONDS``;
for a kernel not among them, a rough cost model of its source, ``_model_seconds``) scaled to this
machine by the first kernel compiled. A compile that nobody prepared (a kernel called on its own,
an optimizer's first step) says so when it takes more than a second.
"""

import atexit
import contextlib
import dis
import functools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numba
from numba.core import event
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import CPUDispatcher
from tqdm import tqdm

from . import fileio
from .kernels import compiled as compiled_kernels
from .errors import FastCNNError
from .kernels import jit

# A helper process pays once its share of the work exceeds what starting it costs (importing
# fastcnn: about 0.6 s of CPU here); until a start has been timed, this is the guess.
_START_GUESS = 1.0
# Said ahead of a compile that nobody prepared once it has run this long (seconds).
_SILENT_AT_MOST = 1.0
# The first kernel compiled on a CPU with nothing recorded times it for the estimate: one that
# took this long (CPU seconds) on the reference machine, or more. The smallest kernels, timed
# first before, carried the process's first-compile costs and the machine's noise, 0.26-0.43 s
# for the same 0.26 s one: their ratio, put on every kernel, made `fastcnn train` say "about 10 s"
# for 6.8 (measured 2026-12-07, AVX2-only Zen 3).
_PROBE_SECONDS = 1.0
# The first kernel a process compiles also compiles what later ones share (Numba's np.empty and
# the like), and took 1.30-1.61x its reference time (REFERENCE_SECONDS: compiled among others):
# dense._dense_backward, which each named network's first compile times first, four runs of
# `fastcnn train` with an empty cache, median 1.37 (2026-12-07, the reference machine).
_FIRST_COMPILE = 1.37
# Processes compiling at once, this one included (default: the kernels' thread count).
PROCESSES_ENV = "FASTCNN_COMPILE_PROCESSES"
# How long a process waits for another that is compiling the same kernel into the same cache
# (seconds; the costliest kernel takes about 6 s of CPU here), before compiling it too.
_WAIT_FOR_OTHERS = 60.0


# The batch sizes passes are rehearsed at: training's usual one, and prediction's one picture and
# its chunks (a dense layer's forward pass takes another kernel for up to 8 rows).
REHEARSED_BATCHES = {True: (64,), False: (1, 256)}


class Job(NamedTuple):
    kernel: str  # a name in jit.KERNELS
    signature: tuple  # Numba's types of its arguments


_PREPARING = threading.RLock()  # one preparation at a time: threads may predict at once
_ANNOUNCED = threading.local()  # .on: this thread's compiles were announced (compile_jobs, a helper)


def prepare(plan, modes=(True, False), optimizer=None, processes=None, say=True, augment=None, batches=None):
    """Make sure the kernels of ``plan``'s passes in ``modes`` (True: a training step, forward,
    loss and backward; False: evaluation), of ``optimizer``'s step and of ``augment`` (an
    ``Augment``) are compiled, compiling
    those that are not, with ``processes`` processes (default: ``$FASTCNN_COMPILE_PROCESSES``,
    else the kernels' thread count, as far as cores are idle). ``batches``: {mode: the batch
    sizes its passes will run at}, for those modes instead of ``REHEARSED_BATCHES`` (``fit``:
    its evaluation's; a pass at another size that needs more says so when it compiles).
    Returns the number of kernels compiled. ``say``: the message and the progress bar on stderr."""
    if plan.kernels is not compiled_kernels or not jit.KERNELS:  # the NumPy reference (or no JIT) compiles nothing
        return 0
    with _PREPARING:
        modes, jobs = _unprepared(plan, modes, [o for o in (optimizer, augment) if o is not None], batches)
        try:
            return compile_jobs(jobs, processes, say) if jobs else 0
        finally:
            plan.prepared.update(modes)


def compiled(plan, modes=(False,)):
    """Whether every kernel that ``plan``'s passes in ``modes`` call is compiled, in this process
    or in the cache (a NumPy plan has nothing to compile)."""
    if plan.kernels is not compiled_kernels or not jit.KERNELS:
        return True
    with _PREPARING:
        return not _unprepared(plan, modes)[1]


def _unprepared(plan, modes, others=(), batches=None):
    """Of ``modes``, those ``plan`` has not prepared yet, and the kernel calls (``Job``) that their
    passes (at ``batches``, as in ``prepare``) and ``others`` make that would compile."""
    modes = [m for m in modes if m not in plan.prepared]
    return modes, missing(rehearsed([(plan, m) for m in modes], others, batches))


def rehearsed(passes, optimizers=(), batches=None):
    """The kernel calls (``Job``) that ``passes`` [(plan, training), ...] and ``optimizers``'
    steps (or anything else with a ``rehearse()``) make that would compile, found by rehearsing
    them at the batch sizes of ``REHEARSED_BATCHES``, or of ``batches`` ({mode: sizes}) for its modes."""
    sizes = {**REHEARSED_BATCHES, **(batches or {})}
    calls = []
    with _intercepted(calls):
        for plan, training in passes:
            for n in sizes[training]:
                plan.rehearse(training, n)
        for optimizer in optimizers:
            optimizer.rehearse()
    return calls


def compile_ahead(passes, optimizers, processes=None):
    """Compile every kernel the ``passes`` ((plan, training) pairs) and the ``optimizers``' steps
    call, in ``processes`` (``fastcnn compile``). Returns (the kernels they call, how many of them
    were compiled now)."""
    with _PREPARING:
        calls = set(rehearsed(passes, optimizers))
        jobs = missing(calls)
        return len(calls), compile_jobs(jobs, processes) if jobs else 0


@contextlib.contextmanager
def _intercepted(calls):
    """Inside, on this thread, a kernel call that would compile appends its Job to ``calls`` and
    returns True instead. (Numba's dispatcher calls ``_compile_for_args`` for a call whose
    types it has no code for; other threads' calls compile as ever.)"""
    me = threading.get_ident()

    def interceptor(name, dispatcher):
        def compile_for_args(*args, **kws):
            if threading.get_ident() != me:
                return type(dispatcher)._compile_for_args(dispatcher, *args, **kws)
            calls.append(Job(name, tuple(dispatcher.typeof_pyval(a) for a in args)))
            return _stand_in
        return compile_for_args

    for name, dispatcher in jit.KERNELS.items():
        dispatcher._compile_for_args = interceptor(name, dispatcher)
    try:
        yield
    finally:
        for dispatcher in jit.KERNELS.values():
            del dispatcher._compile_for_args


def _stand_in(*args):
    return True


def missing(calls):
    """The distinct ``calls`` that are neither compiled in this process nor in the cache."""
    out = []
    for job in dict.fromkeys(calls):
        dispatcher = jit.KERNELS[job.kernel]
        if job.signature in dispatcher.overloads:
            continue
        try:
            if isinstance(dispatcher._cache, jit.KernelCache) and dispatcher._cache.holds(job.signature, dispatcher):
                continue
        except Exception:  # noqa: BLE001 - a damaged cache index counts as missing: compiling rewrites it
            pass
        out.append(job)
    return out


def compile_jobs(jobs, processes=None, say=True):
    """Compile ``jobs`` into the cache, the costliest kernels first, in this process and up to
    ``processes - 1`` helpers (default: ``$FASTCNN_COMPILE_PROCESSES``, else the kernels' thread
    count; fresh interpreters only as far as cores are idle), saying so (``say``) with an estimate and a progress bar when it
    takes a second or more. Returns how many kernels were compiled. A kernel that fails to compile
    is left to its first call, which raises Numba's error where it belongs. Ctrl-C stops it."""
    with _interrupts_kept():
        try:
            return _compile_jobs(jobs, processes, say)
        except BaseException:
            if _Progress.line_open:  # (Ctrl-C before the estimate ended the line: the error's line after it)
                print(file=sys.stderr, flush=True)
                _Progress.line_open = False
            raise


@contextlib.contextmanager
def _interrupts_kept():
    """Ctrl-C while compiling: the KeyboardInterrupt lands, now and then, in one of llvmlite's
    callbacks, which prints it ("Exception ignored in ...") and goes on, and the run went on to
    train (2 times in 12, seen 2026-12-08). Noted here, it is raised again when the compile ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, caught = signal.getsignal(signal.SIGINT), []
    if previous is signal.SIG_IGN or previous is None:  # (a background job's, or set outside Python: not ours)
        yield
        return

    def interrupted(signum, frame):
        caught.append(signum)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _compile_jobs(jobs, processes, say):
    times = Records.load()
    groups = {}
    for job in jobs:
        groups.setdefault(job.kernel, []).append(job.signature)
    forking = _can_fork()  # then a helper is a copy of this process, ready at once: always worth it
    if processes is None:  # else asked for: as many as asked
        processes = _processes_setting() or numba.get_num_threads()
        if len(groups) > 1 and processes > 1 and not _processes_setting() and not forking:
            processes = min(processes, _idle_cores())
    estimate = times.estimates(groups)
    ordered = sorted(groups, key=estimate.get, reverse=True)  # costliest first: a short tail
    start = 0.0 if forking else times.start
    # Helpers hand their kernels over through the cache: where it can't be written, their work
    # would be lost and done here again.
    helpers = _helpers_worth([estimate[k] for k in ordered], processes, start) if jit.cache_writable() else 0
    started = time.perf_counter()
    _numba_ready()
    pool = [helper for helper in (_Helper.start(forking) for _ in range(helpers)) if helper is not None]
    progress = _Progress(groups, say)
    queue = _Queue(ordered)
    threads = [threading.Thread(target=helper.serve, args=(queue, groups, progress), daemon=True) for helper in pool]
    for thread in threads:  # the helpers take the costliest kernels at once
        thread.start()
    if not times.measured():  # nothing measured on this CPU yet: a kernel compiled here first does
        progress.announce()  # (at once: that takes a moment too)
        probe = queue.take_probe(estimate)
        if probe is not None:
            ordered.remove(probe)
            progress.finished.append(probe)
            before = _LISTENER.seconds_of(probe)
            _compile_here(probe, groups[probe])
            seconds = _LISTENER.seconds_of(probe) - before
            if seconds > 0:  # compiled here: not loaded, another process having compiled it
                estimate = times.estimates(groups, measured=(probe, seconds / _FIRST_COMPILE))
    wall = _makespan([estimate[k] for k in ordered], len(pool) + 1, start) + (time.perf_counter() - started)
    progress.begin(estimate, wall, len(pool) + 1, started)
    for _ in range(2):  # the second time: what a helper that failed left
        while (kernel := queue.take(_HERE)) is not None:
            progress.start(kernel)
            _compile_here(kernel, groups[kernel], announced=progress.shown or not say)
            progress.done(kernel)
        for thread in threads:
            thread.join()
    times.add(_LISTENER.take_records(), [r for helper in pool for r in helper.records])
    times.start_seconds([h.start_seconds for h in pool if h.start_seconds is not None and not h.forked])
    times.save()
    progress.close(time.perf_counter() - started)
    return len(jobs)


def _numba_ready():
    """Numba's typing and target contexts filled with its registries of library functions, which
    the first compile in a process otherwise does (0.15-0.2 s of CPU, measured 2026-12-07 on the
    AVX2-only Zen 3): done here, before the helpers are forked, so that the first kernel, which
    times this machine for the estimate, times only itself (and no copy does it again; the wait is
    the same, the helpers starting that much later)."""
    from numba.core.registry import cpu_target
    with global_compiler_lock:
        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()


_HERE = "this process"  # who takes from a _Queue: this process, or a _Helper


class _Queue:
    """The kernels left to compile, costliest first, which the processes take one at a time. A
    process that takes a kernel claims those that call a helper of it (``jit.helper``: compiled
    once in a process, then cached): it takes them before any other kernel, and the others take
    them last. Started at once in two processes, two kernels that share a helper each compiled it
    (Winograd's forward passes and weight gradient: 1.2-1.6 s of CPU for each helper shared)."""

    def __init__(self, kernels):
        self.kernels, self.claims, self.lock = list(kernels), {}, threading.Lock()

    def take(self, who):
        """The next kernel for ``who``, or None when none are left."""
        with self.lock:
            mine = [k for k in self.kernels if self.claims.get(k) == who]
            unclaimed = [k for k in self.kernels if k not in self.claims]
            kernel = next(iter(mine or unclaimed or self.kernels), None)
            if kernel is not None:
                self._took(kernel, who)
            return kernel

    def take_probe(self, estimate):
        """For this process's first compile, which times this machine (``compile_jobs``): the
        cheapest kernel left that takes _PROBE_SECONDS or more by ``estimate``, else the costliest
        left; or None."""
        with self.lock:
            long_enough = [k for k in self.kernels if estimate[k] >= _PROBE_SECONDS]
            kernel = long_enough[-1] if long_enough else next(iter(self.kernels), None)
            if kernel is not None:
                self._took(kernel, _HERE)
            return kernel

    def put_back(self, kernel):
        """A kernel a helper failed to compile, for another process to take first."""
        with self.lock:
            self.kernels.insert(0, kernel)
            self.claims.pop(kernel, None)

    def _took(self, kernel, who):
        self.kernels.remove(kernel)
        shared = _helpers(kernel)
        for other in self.kernels:
            if other not in self.claims and shared & _helpers(other):
                self.claims[other] = who


@functools.lru_cache(maxsize=None)
def _helpers(kernel):
    """The names of the ``jit.helper`` functions that ``kernel`` calls, itself or through the
    functions Numba inlines into it."""
    return frozenset(_helpers_called(jit.KERNELS[kernel].py_func))


def _helpers_called(fn):
    for called in _called(fn):
        if called.targetoptions.get("inline") != "always":
            yield jit.kernel_name(called)
        yield from _helpers_called(called.py_func)


def _called(fn):
    """The jitted functions that ``fn`` calls (inlined or helpers), once per place it names one."""
    for ins in dis.get_instructions(fn.__code__):
        if ins.opname == "LOAD_GLOBAL" and isinstance(called := fn.__globals__.get(ins.argval), CPUDispatcher):
            yield called


def _idle_cores(interval=0.1):
    """How many of this process's cores sat idle over the next ``interval`` seconds (from Linux's
    /proc/stat; elsewhere, all of them), at least one. On a busy machine a helper gets no core of
    its own and only adds its start: measured with 9-10 processes running on 2 cores, 12.8 s of
    CPU in one process against 15.0 with a helper, and a longer wait. (Not the load average: it
    lags a minute behind, and counts the command that just ended.)"""
    try:
        cores = set(os.sched_getaffinity(0))
        before = _cpu_ticks(cores)
        time.sleep(interval)
        after = _cpu_ticks(cores)
    except (AttributeError, OSError, ValueError):
        return os.cpu_count() or 1
    idle = sum((after[c][0] - before[c][0]) / max(after[c][1] - before[c][1], 1) for c in after if c in before)
    return max(1, round(idle))


def _cpu_ticks(cores):
    """{cpu: (idle ticks, all ticks)} of ``cores``, from /proc/stat."""
    ticks = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *counts = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                counts = [int(c) for c in counts[:8]]  # user nice system idle iowait irq softirq steal
                ticks[int(name[3:])] = (counts[3] + counts[4], sum(counts))
    return ticks


def _processes_setting():
    text = os.environ.get(PROCESSES_ENV, "")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise FastCNNError(f"{PROCESSES_ENV}: expected a number of processes, 1 or more, got {text!r}")
    return int(text)


def _compile_here(kernel, signatures, announced=True):
    """Compile ``kernel`` for ``signatures`` in this process (or load it, if another process
    compiled it meanwhile: ``_claimed``); ``announced``: said already, so the listener doesn't."""
    dispatcher = jit.KERNELS[kernel]
    _ANNOUNCED.on = announced
    try:
        with _claimed(kernel):
            for signature in signatures:
                try:
                    dispatcher.compile(signature)  # (from the cache, where it is there now)
                except Exception:  # noqa: BLE001 - see compile_jobs: the real call reports it
                    pass
    finally:
        _ANNOUNCED.on = False


@contextlib.contextmanager
def _claimed(kernel):
    """``kernel`` claimed in the cache's folder for as long as the block runs (a lock file): where
    processes compile into one cache at once (two first runs, MPI's ranks, test workers), the
    others wait for the one compiling it, then load it instead of compiling it too. After
    ``_WAIT_FOR_OTHERS`` seconds they compile it anyway (the one holding it may be stopped). A
    kernel compiled on its first call, that nobody prepared, is not claimed."""
    try:
        import fcntl
        claim = open(jit.cache_dir() / f"{kernel}.lock", "a")
    except (ImportError, OSError):  # no fcntl (Windows), or a cache that can't be written: nothing shared
        yield
        return
    with claim:  # (closing it lets go)
        deadline = time.monotonic() + _WAIT_FOR_OTHERS
        while True:
            try:
                fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # another process holds it
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            except OSError:  # a file system without locks (some network ones): nothing shared
                break
        yield


def _helpers_worth(costs, processes, start):
    """How many helper processes pay for ``costs`` (seconds, costliest first): each must take
    more work than its start costs, and there are no more than kernels to share."""
    helpers = min(processes, len(costs)) - 1
    while helpers > 0 and _makespan(costs, helpers + 1, start) >= _makespan(costs, helpers, start):
        helpers -= 1
    return helpers


def _makespan(costs, processes, start):
    """When the last of ``costs`` (costliest first) is done, on this process (free now) and
    ``processes - 1`` helpers (free after ``start`` s), each taking the next when free."""
    free = [0.0] + [start] * (processes - 1)
    for cost in costs:
        free[free.index(min(free))] += cost
    return max(free)


# CPU seconds that compiling each kernel took on one machine: the relative costs behind the
# estimates on a CPU where nothing is recorded yet, scaled to it by the first kernel compiled there.
# AVX2 code on the 2-core AMD EPYC (Zen 3), two processes compiling side by side, the mean of two
# runs of `benchmarks/compile_times.py --fit` (which prints this table), 2026-12-07 at 14:43 and
# 14:45, after Winograd's products and three backward passes came to compile in less; the first
# run, on a slower machine, brought to the second's pace by their median ratio (0.83) first: they
# then agreed within 0.73-1.89x per kernel, the small ones the least (the table before, of two
# quieter runs, within 0.71-1.17x). The cost model of the source (_model_seconds), which
# estimated every kernel before, was within 0.51-2.6x of such a table, and the first kernel (a
# small one) carried its own error to all the others: on that machine `fastcnn train` said "about
# 4 s" and compiled in 5.8 s, `--model deep` "about 43 s" for 18.1 s. BatchNorm -> ReLU -> global
# average pool's two kernels (2026-12-07, 23:30): their time in one `compile_times.py --networks
# cifar` run, brought to the table's pace by the median ratio of the others in that run (1.07).
REFERENCE_SECONDS = {
    "avgpool._global_avgpool_backward": 0.51, "avgpool._global_avgpool_forward": 0.65,
    "batchnorm._batchnorm_backward": 2.76, "batchnorm._few_rows_backward": 1.5, "batchnorm._few_rows_moments": 0.81,
    "batchnorm._few_rows_normalize": 0.27, "batchnorm._normalize": 0.55, "batchnorm_pool._backward": 3.51,
    "batchnorm_pool._avgpool_backward": 1.96, "batchnorm_pool._avgpool_forward": 1.32, "batchnorm_pool._forward": 1.46,
    "conv._conv2d_backward_input_gemm": 1.34, "conv._conv2d_backward_weight": 3.64,
    "conv._conv2d_backward_weight_gemm": 2.12, "conv._conv2d_forward": 4.17, "conv._conv2d_forward_gemm": 3.01,
    "conv_pool._conv_relu_pool_backward_weight": 4.8, "conv_pool._conv_relu_pool_forward": 3.27,
    "dense._dense_backward": 1.52, "dense._dense_forward": 0.98, "dense._dense_forward_few": 2.51,
    "dense._dense_forward_small": 0.58, "dense._relu_backward": 0.35, "dense._relu_forward": 0.35,
    "dropout._dropout": 0.41, "inputs._within": 0.15, "loss._softmax": 0.26, "loss._softmax_cross_entropy": 0.35,
    "merge._add": 0.43, "optim._sgd_momentum": 0.37, "winograd._finish_weight_gradient": 0.96,
    "winograd._forward": 5.39, "winograd._forward_relu_pool": 3.66, "winograd._transform_weights": 1.47,
    "winograd._weight_gradient": 3.62,
}


def _reference_seconds(kernel):
    """CPU seconds of compiling ``kernel`` once on the reference machine: REFERENCE_SECONDS, else
    the cost model brought to the table's scale."""
    if kernel in REFERENCE_SECONDS:
        return REFERENCE_SECONDS[kernel]
    return _model_seconds(kernel) * _model_scale()


@functools.lru_cache(maxsize=None)
def _model_scale():
    """The median of REFERENCE_SECONDS over the cost model, for the kernels that exist."""
    ratios = sorted(seconds / _model_seconds(k) for k, seconds in REFERENCE_SECONDS.items() if k in jit.KERNELS)
    return ratios[len(ratios) // 2] if ratios else 1.0


def _model_seconds(kernel):
    """A rough CPU cost of compiling ``kernel`` once (for one that REFERENCE_SECONDS does not
    list), in seconds on the machine it was fitted on (AMD EPYC), from the size of its source (the
    inlined helpers counted at every call site): LLVM's work grows faster than the code, and each
    prange loop is compiled as a function of its own. Refitted 2026-12-06 to the compile times of
    the 29 kernels the named networks run (``benchmarks/compile_times.py --fit``, AVX-512 code,
    after the Winograd kernels lost 2-3 s each that the old fit had learnt): within 45% for each
    but Winograd's pooled forward (55% over), where the fit before was 104% over it. On the
    AVX2-only Zen 3 (2026-12-07) within 0.51-2.6x of each."""
    instructions, loops, pranges = _source_size(jit.KERNELS[kernel].py_func)
    return 4.9e-5 * (instructions + 117 * loops) ** 1.39 + 0.34 * pranges


def _source_size(fn):
    """(bytecode instructions, loops, prange loops) of ``fn``, the functions it calls included
    (inlined ones, and the helpers compiled apart, ``jit.helper``, which a kernel links in)."""
    instructions = loops = pranges = 0
    for ins in dis.get_instructions(fn.__code__):
        instructions += 1
        loops += ins.opname == "FOR_ITER"
        pranges += ins.argval == "prange" and ins.opname in ("LOAD_GLOBAL", "LOAD_ATTR", "LOAD_METHOD")
    for called in _called(fn):
        more = _source_size(called.py_func)
        instructions, loops, pranges = instructions + more[0], loops + more[1], pranges + more[2]
    return instructions, loops, pranges


class _Helper:
    """Another process that compiles kernels into the cache, one kernel at a time: a copy of this
    one (``os.fork``) where that is safe, ready at once; else a fresh interpreter (``python -c``:
    no user script runs again), which first imports fastcnn (about 0.6 s here)."""

    def __init__(self, send, receive, wait, launched, forked=False):
        self.send, self.receive, self.wait, self.launched, self.forked = send, receive, wait, launched, forked
        self.records, self.start_seconds = [], None

    @classmethod
    def start(cls, fork):
        """A new helper, a copy of this process if ``fork`` (``_can_fork()``, asked once by the
        caller, whose estimate counts on it), or None if no process can be started (this one then
        compiles it all)."""
        launched = time.perf_counter()
        try:
            if fork:
                return cls._forked(launched)
            process = subprocess.Popen([sys.executable, "-c", "from fastcnn.compiling import _helper; _helper()"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError:
            return None
        return cls(process.stdin, process.stdout, process.wait, launched)

    @classmethod
    def _forked(cls, launched):
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        # Under Numba's compiler lock, so that no thread of ours is halfway through a compile when
        # the process is copied. (Python 3.12+ warns of fork in a process with threads: this one's
        # other threads are BLAS's idle workers, which the child, compiling only, never calls.)
        with global_compiler_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: serve the parent, then leave at once (no atexit, no stdio flush)
            try:
                os.close(parent_writes)
                os.close(parent_reads)
                _LISTENER.take_records()  # the parent's, not this helper's
                _helper(os.fdopen(child_reads, "rb"), os.fdopen(child_writes, "wb"))
            finally:
                os._exit(0)
        os.close(child_reads)
        os.close(child_writes)
        return cls(os.fdopen(parent_writes, "wb"), os.fdopen(parent_reads, "rb"), lambda: os.waitpid(pid, 0), launched,
                   True)

    def serve(self, queue, groups, progress):
        """Feed this helper kernels from ``queue`` (a ``_Queue``) until none are left (a failed
        one's goes back in it)."""
        kernel = None
        try:
            pickle.dump(str(jit.cache_dir()), self.send)
            self.send.flush()
            if pickle.load(self.receive) != "ready":
                return
            self.start_seconds = time.perf_counter() - self.launched
            while (kernel := queue.take(self)) is not None:
                progress.start(kernel)
                pickle.dump((kernel, groups[kernel]), self.send)
                self.send.flush()
                records = pickle.load(self.receive)
                self.records += records
                progress.done(kernel)
                kernel = None
            pickle.dump(None, self.send)
            self.send.flush()
        except (OSError, EOFError, pickle.UnpicklingError):
            if kernel is not None:
                queue.put_back(kernel)
        finally:
            for end in (self.send, self.receive):
                with contextlib.suppress(OSError):
                    end.close()
            # Its kernels are in the cache once it has answered: its exit (a fresh interpreter with
            # Numba and LLVM shutting down, 0.4-0.5 s) is waited for on a thread of its own.
            threading.Thread(target=self.wait, daemon=True).start()


def _can_fork():
    """Whether a helper can be a copy of this process: on Linux, with no other Python thread
    (one might hold a lock, stderr's say, that the copy would then wait for forever), and not
    in an MPI job (MPI libraries warn of, or break on, a fork: ``fastcnn.distributed``)."""
    return sys.platform == "linux" and threading.active_count() == 1 and "mpi4py.MPI" not in sys.modules


def _helper(ask=None, answer=None):
    """A helper process (``python -c``, or a copy of the parent with its pipes): compiles the
    kernels it is sent, into the cache the parent uses, and answers with what each took:
    ``Records`` rows."""
    if answer is None:
        answer = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)  # anything printed goes to stderr; stdout carries the answers
        ask = sys.stdin.buffer
    with contextlib.suppress(EOFError, BrokenPipeError):  # the parent left: so does the helper
        if str(jit.cache_dir()) != pickle.load(ask):  # another cache (other settings): the parent compiles
            return
        pickle.dump("ready", answer)
        answer.flush()
        while (task := pickle.load(ask)) is not None:
            kernel, signatures = task
            _compile_here(kernel, signatures)
            pickle.dump(_LISTENER.take_records(), answer)
            answer.flush()


class _Progress:
    """The message before, the bar during (advanced as kernels finish and, smoothly, by the time
    running ones have taken against their estimates) and the line after a compile."""

    def __init__(self, groups, say):
        self.groups, self.say, self.shown = groups, say, False
        self.count = sum(len(sigs) for sigs in groups.values())
        self.estimate, self.finished, self.running = {}, [], {}
        self.bar = None
        self.lock = threading.Lock()

    line_open = False  # announce's line waits for begin's estimate

    def announce(self):
        """What is compiled and where it goes; the estimate follows on the same line (``begin``)."""
        if self.say and not self.shown:
            self.shown = _Progress.line_open = True
            if jit.cache_writable():  # (if not, said on its own line first)
                where = f"once for every later run (cache: {str(jit.cache_root()).replace(str(Path.home()), '~', 1)})"
            else:
                where = "for this process only: the cache can't be written"
            print(f"fastcnn: compiling {self.count} kernel{'s' * (self.count != 1)} for this CPU "
                  f"({jit.cpu_key().split('-')[0]}), {where}", end="", file=sys.stderr, flush=True)

    def begin(self, estimate, wall, processes, started):
        """The estimate, and the bar (on a terminal; ``started``: when the compile began, on
        ``time.perf_counter``); compiles under a second are not said."""
        self.estimate = estimate
        if wall >= _SILENT_AT_MOST:
            self.announce()
        if not self.shown:
            return
        print(f": about {_seconds(wall)}" + (f" with {processes} processes" if processes > 1 else ""),
              file=sys.stderr, flush=True)
        _Progress.line_open = False
        self.started = started
        # The times are ours, shown as the bar's unit: since the compile began (the first kernel may
        # be done before the bar), and what is left by the share done so far; tqdm's own rate never
        # sees a count that is set, not added to (it showed <00:00 halfway).
        self.bar = tqdm(total=sum(self.estimate.values()), file=sys.stderr, leave=False, disable=None,
                        desc=f"compiling kernels 0/{self.count}", unit="00:00<?",
                        bar_format="{desc} {percentage:3.0f}%|{bar}| [{unit}]")
        if self.bar.disable:  # not a terminal: the two lines only
            self.bar = None
            return
        self._show()
        threading.Thread(target=self._tick, daemon=True).start()

    def start(self, kernel):
        with self.lock:
            self.running[kernel] = time.perf_counter()

    def done(self, kernel):
        with self.lock:
            self.running.pop(kernel, None)
            self.finished.append(kernel)
            self._show()

    def _tick(self):
        while True:
            time.sleep(0.25)
            with self.lock:
                if self.bar is None:
                    return
                self._show()

    def _show(self):
        if self.bar is None:
            return
        now = time.perf_counter()
        finished = sum(self.estimate[k] for k in self.finished)
        running = sum(min(now - t, 0.9 * self.estimate[k]) for k, t in self.running.items())
        self.bar.n = min(finished + running, self.bar.total)
        compiled = sum(len(self.groups[k]) for k in self.finished)
        self.bar.set_description_str(f"compiling kernels {compiled}/{self.count}", refresh=False)
        elapsed, share = now - self.started, self.bar.n / self.bar.total if self.bar.total else 0
        left = "?" if share < 0.02 else tqdm.format_interval(elapsed * (1 - share) / share)
        self.bar.unit = f"{tqdm.format_interval(elapsed)}<{left}"
        self.bar.refresh()

    def close(self, seconds):
        with self.lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        if self.shown:
            print(f"fastcnn: compiled in {seconds:.1f} s", file=sys.stderr, flush=True)


def _seconds(s):
    return f"{s:.0f} s" if s >= 3 else f"{s:.1f} s"


class Records:
    """What compiling each kernel cost here (CPU seconds per signature), and what starting a
    helper process took: ``compile-times.json`` beside the cache, read and merged on save."""

    NAME = "compile-times.json"

    def __init__(self, path, kernels, start, others):
        self.path, self.kernels, self.start, self.others = path, kernels, start, others

    @classmethod
    def load(cls):
        here = jit.cache_dir() / cls.NAME
        mine = _read(here)
        others = {}  # other builds on this CPU, the most recently written first
        paths = sorted(jit.cache_root().glob(f"*/{jit.cpu_key()}/*/{cls.NAME}"), key=_mtime, reverse=True)
        for path in paths:
            if path != here:
                for kernel, sigs in _read(path)["kernels"].items():
                    others.setdefault(kernel, sigs)
        return cls(here, mine["kernels"], mine["start"], others)

    def estimates(self, groups, measured=None):
        """CPU seconds of compiling each kernel of ``groups`` {kernel: [signature, ...]}: as
        recorded (a signature never recorded counts as the kernel's costliest other one), else
        ``_reference_seconds`` scaled to this machine: by the kernels recorded on this CPU, or by
        ``measured`` = (kernel, seconds) just now."""
        recorded = {**self.others, **self.kernels}
        ratios = sorted(max(sigs.values()) / _reference_seconds(k) for k, sigs in recorded.items()
                        if k in jit.KERNELS and sigs)
        if measured is not None:
            ratios = [measured[1] / _reference_seconds(measured[0]) / len(groups[measured[0]])]
        factor = ratios[len(ratios) // 2] if ratios else 1.0
        out = {}
        for kernel, signatures in groups.items():
            seen = self.kernels.get(kernel) or self.others.get(kernel)
            out[kernel] = (sum(seen.get(str(s), max(seen.values())) for s in signatures) if seen
                           else factor * _reference_seconds(kernel) * len(signatures))
        return out

    def measured(self):
        """Whether a kernel that exists has been recorded on this CPU."""
        return any(k in jit.KERNELS and sigs for k, sigs in {**self.others, **self.kernels}.items())

    def add(self, *rows):
        for kernel, signature, cpu in (r for some in rows for r in some):
            self.kernels.setdefault(kernel, {})[signature] = round(cpu, 3)

    def start_seconds(self, measured):
        if measured:
            self.start = round(max(measured), 3)

    def save(self):
        merged = _read(self.path)["kernels"]
        for kernel, sigs in self.kernels.items():
            merged.setdefault(kernel, {}).update(sigs)
        with contextlib.suppress(OSError):  # a cache that can't be written: only estimates are lost
            with fileio.atomic_write(self.path, "w") as f:
                json.dump({"kernels": merged, "start": self.start}, f, indent=1, sort_keys=True)


def _read(path):
    """The records in ``path``: ``{"kernels": {kernel: {signature: seconds}}, "start": seconds}``,
    keeping only entries of that form (a file of another version, or damaged, is no reason to stop
    a compile: its estimate is all it costs); nothing where it can't be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}

    def seconds(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    kernels = data.get("kernels") if isinstance(data.get("kernels"), dict) else {}
    kernels = {k: {str(sig): v for sig, v in sigs.items() if seconds(v)} for k, sigs in kernels.items()
               if isinstance(k, str) and isinstance(sigs, dict)}
    return {"kernels": {k: sigs for k, sigs in kernels.items() if sigs},
            "start": data["start"] if seconds(data.get("start")) else _START_GUESS}


def _mtime(path):
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class _Listener(event.Listener):
    """Sees every compile of a fastcnn kernel in this process: records its CPU seconds (the
    compiling thread's: not the kernels' threads, not the progress bar's), and
    says so when one that nobody prepared runs longer than ``_SILENT_AT_MOST``."""

    def __init__(self):
        self.names = {}
        self.records, self.lock = [], threading.Lock()
        self.current = threading.local()

    def on_start(self, ev):
        name = self._name(ev.data["dispatcher"])
        if name is None:
            return
        timer = None
        if not getattr(_ANNOUNCED, "on", False):
            timer = threading.Timer(_SILENT_AT_MOST, _say_unprepared, (name,))
            timer.daemon = True
            timer.start()
        self.current.started = (name, ev.data["args"], time.thread_time(), timer)

    def on_end(self, ev):
        name = self._name(ev.data["dispatcher"])
        started = getattr(self.current, "started", None)
        if name is None or started is None or started[0] != name:
            return
        self.current.started = None
        _, args, cpu, timer = started
        if timer is not None:
            timer.cancel()
        with self.lock:
            self.records.append((name, str(tuple(args)), time.thread_time() - cpu))

    def _name(self, dispatcher):
        if len(self.names) != len(jit.KERNELS):
            self.names = {id(d): name for name, d in jit.KERNELS.items()}
        return self.names.get(id(dispatcher))

    def seconds_of(self, kernel):
        with self.lock:
            return sum(cpu for name, _, cpu in self.records if name == kernel)

    def take_records(self):
        with self.lock:
            records, self.records = self.records, []
        return records


def _say_unprepared(name):
    kept = "once: later runs load it from the cache" if not jit._UNCACHED else "for this process only"
    print(f"fastcnn: compiling the kernel {name} for this CPU ({kept})...", file=sys.stderr, flush=True)


_LISTENER = _Listener()
event.register("numba:compile", _LISTENER)


@atexit.register
def _save_records():
    """Compiles outside ``compile_jobs`` (a kernel called on its own) are recorded at exit."""
    if _LISTENER.records:
        times = Records.load()
        times.add(_LISTENER.take_records())
        times.save()
