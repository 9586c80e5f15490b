"""All of fastcnn's Numba policy in one place; the kernels just use these decorators.

- The cache: a kernel compiles once per CPU and is loaded from ``cache_dir()`` by every later
  process, whatever the install (a reinstall, a second virtual environment, a read-only
  install): see ``cache_dir``. Numba's own cache sits beside the sources and is keyed by their
  path, so each of those would compile again.
- ``fastmath`` without ``nnan``/``ninf``: LLVM may reassociate sums (vectorised reductions) but
  NaN and Inf keep their meaning, so a diverging run is still seen as one.
- ``error_model="numpy"``: no zero-division checks on the index arithmetic (the sizes are
  checked where data enters; a float division by zero gives Inf, as in NumPy). Less code:
  the first training step compiles in 9.7 s instead of 10.1, and runs a little faster.
- One thread pool: Numba's. The matrix products run inside Numba's threads, each on its own
  block, with BLAS held to one thread (``blas.hold_to_one_thread``, done here, at import).
  With no second pool to steal the cores from, Numba's OpenMP threads keep libgomp's default
  wait (spin a little after a kernel, then sleep): against OMP_WAIT_POLICY=PASSIVE, measured
  3.65 against 4.1 ms per training step and 111 against 370 us for one image.
- ``nogil=True``: several Python threads may call the kernels at once (e.g. ``predict``).
- A ``prange`` loop's body is optimised and made machine code once, in the kernel that runs it
  (``_optimize_unless_linked_only``, ``_finalize_unless_linked_only``),
  and the garbage collector runs less often while a kernel compiles (``_compiling``).

``KERNELS`` lists every kernel by name (``module.function``), so that other processes can
compile one by name into the same cache (``fastcnn.compiling``).
"""

import functools
import gc
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path

import llvmlite
import llvmlite.binding
import numba
import numpy as np
from numba.core import caching, codegen
from numba.core.compiler_lock import global_compiler_lock
from numba.core.runtime import rtsys
from numba.np.ufunc import parallel as numba_parallel

try:
    from llvmlite.binding import newpassmanagers
except ImportError:  # an older llvmlite: loop bodies get machine code of their own, as Numba makes it
    newpassmanagers = None

from . import blas
from .errors import ConfigError

FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

# Where the compiled kernels go: this variable's folder, else NUMBA_CACHE_DIR/fastcnn if the user set
# that, else $XDG_CACHE_HOME/fastcnn/kernels (~/.cache/fastcnn/kernels).
CACHE_ENV = "FASTCNN_CACHE_DIR"
# Builds (kernel sources, Numba, Python) kept per fastcnn version and CPU: edited kernels make a new one.
KEEP_BUILDS = 4

KERNELS = {}  # "module.function" -> the dispatcher of every kernel made below

blas.hold_to_one_thread()


def parallel_kernel(fn):
    """A kernel whose outer ``prange`` loop is spread over Numba's threads."""
    return _kernel(fn, parallel=True)


def serial_kernel(fn):
    """A kernel that runs on the calling thread."""
    return _kernel(fn, parallel=False)


@numba.njit(inline="always")
def zeros(shape):
    """float64 zeros of ``shape`` (an int or a tuple), set by a plain loop, for a parallel kernel's
    top level: there ``np.zeros`` becomes a parallel loop of its own, one more for Numba to compile
    (a gufunc and its wrappers: 0.3-0.5 s of CPU), for the few hundred values of tasks' sums."""
    out = np.empty(shape)
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = 0.0
    return out


def helper(fn):
    """A function the kernels call, compiled once per signature as a function of its own (LLVM
    still inlines it where that pays) rather than copied into each kernel by Numba: the direct
    convolution's register tiles (conv.conv_row, conv.weight_rows, conv_pool.pooled_row), the
    second shared by the plain and the fused kernels; copied into a ``prange`` loop, they cost Numba's parfor passes a second
    or more per kernel (measured). Its loops see the arrays as arguments that may overlap, so it
    suits code whose hot loops keep their sums in registers (simd.py), not loops that rely on
    LLVM to vectorise them.

    Cached as the kernels are: a kernel compiled in another process (a compiling helper, a later
    run) loads the helpers it shares with kernels compiled before instead of compiling them again
    (Winograd's transforms and products: 1.2-1.6 s of CPU each). Numba caches a function's code
    with its LLVM bitcode, which a kernel links in and inlines as it would the fresh one."""
    dispatcher = numba.njit(fastmath=FASTMATH, nogil=True, error_model="numpy")(fn)
    if not numba.config.DISABLE_JIT:
        dispatcher._cache = _cache_for(fn)
    return dispatcher


def _kernel(fn, parallel):
    dispatcher = numba.njit(parallel=parallel, fastmath=FASTMATH, nogil=True, error_model="numpy")(fn)
    if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: the plain Python function, for debugging
        return dispatcher
    dispatcher._cache = _cache_for(fn)  # the one place Numba lets a cache be chosen per function
    dispatcher.compile = _compiling(dispatcher.compile)
    KERNELS[kernel_name(dispatcher)] = dispatcher
    return dispatcher


# Numba's compiler makes objects by the million, most of them short-lived; with the cyclic garbage
# collector's default young generation (700 objects) `deep`'s first step in one process ran
# 2,600-3,200 collections, 2.8-4.5 s of its 27-37 s, most of it in full collections; with 20,000,
# 280-310 collections, 1.3-2.0 s, for 20-30 MB more at its peak (measured 2026-12-06, AVX2 code;
# docs/compiling.md). Loading a kernel from the cache goes through here too.
_YOUNG_OBJECTS = 20_000

# Numba compiles the body of a prange loop as a code library of its own, wraps it in two more (the
# gufunc wrapper, then the call onto the thread pool), and finalises each of the three before the
# kernel links it in: LLVM's whole module pipeline, then machine code, ran over the same loop body
# four times, once per library. Those three are only ever linked into the kernel, so while one of
# fastcnn's kernels compiles they keep their function passes and skip the module pipeline;
# the kernel's module, where everything is linked, gets it once. The kernel's copies of their
# functions are made internal to it: a call to a function of another linkage may go to the first
# definition of that name the JIT engine has, the unoptimised one (in the compiling process the
# kernels then ran at half speed; loaded from the cache they had only their own copies). Measured
# 2026-12-06 (AVX2 code, CPU seconds of one kernel's first call, fresh processes in turn): the
# Winograd forward kernel 9.4-10.8 -> 6.8-7.1 s, LLVM's part of it 7.6-8.5 -> 4.2-4.3 s.
_LOOP_BODY_LIBRARIES = ("__numba_parfor_gufunc", "parallelgufuncwrapper", "<numba.np.ufunc.wrappers._GufuncWrapper")
_optimize_final_module = getattr(codegen.CPUCodeLibrary, "_optimize_final_module", None)

# fastcnn's kernel compiles under way (Numba compiles inside a compile: they nest) and the
# collector's thresholds from before the outermost; under Numba's compiler lock, one at a time.
_COMPILING = {"depth": 0, "thresholds": None}


def _compiling(compile):
    """The dispatcher's ``compile``, counted in _COMPILING: meanwhile the collector's young
    generation is _YOUNG_OBJECTS large, and loop bodies' libraries are optimised only in their
    kernel's (``_optimize_unless_linked_only``)."""
    @functools.wraps(compile)
    def compile_kernel(signature):
        with global_compiler_lock:
            if _COMPILING["depth"] == 0:
                young, *older = _COMPILING["thresholds"] = gc.get_threshold()
                if 0 < young < _YOUNG_OBJECTS:  # (0: the collector is off; left so)
                    gc.set_threshold(_YOUNG_OBJECTS, *older)
            _COMPILING["depth"] += 1
            try:
                return compile(signature)
            finally:
                _COMPILING["depth"] -= 1
                if _COMPILING["depth"] == 0:
                    gc.set_threshold(*_COMPILING["thresholds"])
    return compile_kernel


def _linked_only(library):
    return _COMPILING["depth"] and library.name.startswith(_LOOP_BODY_LIBRARIES)


def _optimize_unless_linked_only(library):
    if _linked_only(library):
        return  # optimised in the kernel that links it
    if _COMPILING["depth"]:
        loop_bodies = set(_loop_body_functions(library))
        for fn in library._final_module.functions:
            if fn.name in loop_bodies and not fn.is_declaration:
                fn.linkage = "internal"
    _optimize_final_module(library)


def _loop_body_functions(library):
    """The names of the functions that ``library``'s loop-body libraries define."""
    for linked in library._linking_libraries:
        if linked.name.startswith(_LOOP_BODY_LIBRARIES):
            yield from (fn.name for fn in linked._final_module.functions if not fn.is_declaration)
        yield from _loop_body_functions(linked)


# Nor does a loop body's library need machine code of its own: Numba makes it callable from Python
# (never called) before the kernel links it in, and machine code for a library is LLVM's code
# generator over all of it. While a kernel compiles, those libraries are finished without being
# handed to the JIT engine (a pointer asked of one is 0, and their environment is not set: it is
# not in a kernel loaded from the cache either); the kernel's module, with their functions in it,
# is compiled to machine code as before. The code generator had rewritten the loops of the module
# the kernel then linked (its loop strength reduction: pointers stepped instead of indices
# multiplied), and some kernels ran 1-4% faster for it (BatchNorm's, measured): that pass alone
# runs on them instead. Measured 2026-12-07 (AVX2-only Zen 3; docs/compiling.md): the original
# network's first training step 10.09-11.13 -> 9.27-10.16 s of CPU (one process, in turn).
_finalize_final_module = getattr(codegen.CPUCodeLibrary, "_finalize_final_module", None)
_set_env = getattr(codegen.JITCPUCodegen, "set_env", None)


def _finalize_unless_linked_only(library):
    if not _linked_only(library):
        return _finalize_final_module(library)
    passes = newpassmanagers.FunctionPassManager()
    passes.add_loop_strength_reduce_pass()
    builder = library._codegen._pass_builder()
    for fn in library._final_module.functions:
        if not fn.is_declaration:
            passes.run(fn, builder)
    library._finalize_dynamic_globals()
    library._verify_declare_only_symbols()
    library._finalized = True


def _set_env_if_handed_over(self, env_name, env):
    if _COMPILING["depth"] and not self._engine.get_global_value_address(env_name):
        return  # a loop body's library, not handed to the engine
    _set_env(self, env_name, env)


if _optimize_final_module is not None:
    codegen.CPUCodeLibrary._optimize_final_module = _optimize_unless_linked_only
if None not in (_finalize_final_module, _set_env, newpassmanagers, getattr(codegen.CPUCodegen, "_pass_builder", None)):
    codegen.CPUCodeLibrary._finalize_final_module = _finalize_unless_linked_only
    codegen.JITCPUCodegen.set_env = _set_env_if_handed_over


def kernel_name(dispatcher):
    """``conv_pool._conv_relu_pool_forward``: how records, messages and other processes name a kernel."""
    return _name_of(dispatcher.py_func)


def _name_of(fn):
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__}"


def cpu_key():
    """The CPU the kernels are compiled for, as Numba's code generator targets it: its name and a
    hash of its features and target triple, e.g. ``znver4-1f0c9a52``. ``NUMBA_CPU_NAME`` and
    ``NUMBA_CPU_FEATURES`` (code for another CPU than this one) give another key."""
    name = numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    if features is None:
        features = codegen.get_host_cpu_features()
    described = f"{llvmlite.binding.get_process_triple()} {name} {features}"
    return f"{name}-{hashlib.sha256(described.encode()).hexdigest()[:8]}"


@functools.lru_cache(maxsize=None)
def _build_key():
    """What else the compiled code depends on: Numba, llvmlite, Python, and every kernel source
    file (a kernel inlines helpers from other files, which Numba's own freshness check misses)."""
    digest = hashlib.sha256(__name__.encode())  # the package's name too: kernels.jit, imported from a
    # checkout's root, pickles other module names than fastcnn.kernels.jit: its own folder
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    python = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"
    return f"numba{numba.__version__}-llvmlite{llvmlite.__version__}-{python}-{digest.hexdigest()[:10]}"


def cache_root():
    """The folder that holds every version's compiled kernels (see ``CACHE_ENV``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]).expanduser() / "fastcnn"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "fastcnn" / "kernels"


def cache_dir():
    """This process's compiled kernels: ``cache_root()/<fastcnn version>/<cpu_key()>/<build>``.

    Nothing in it depends on where fastcnn is installed, so every install of the same version
    shares it; code for one CPU is never loaded on another (Numba also refuses it, per kernel)."""
    return cache_root() / _version() / cpu_key() / _build_key()


def _version():
    """fastcnn's version, from its installed metadata (the kernels import nothing of the package)."""
    try:
        return importlib.metadata.version("fastcnn")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that isn't installed
        return "unknown"


class KernelCacheLocator(caching._CacheLocator):
    """Numba's cache locator (``numba.core.caching``) for fastcnn's kernels: ``cache_dir()``."""

    def __init__(self, py_func, py_file):
        self._path = str(_prepared_cache_dir())
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return _build_key()  # the folder is already that build's

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func, py_file)


class _KernelCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [KernelCacheLocator]


class KernelCache(caching.FunctionCache):
    """Numba's function cache, in ``cache_dir()``. An entry that can't be read (a file cut short
    by a full disk or a killed process, or made by another copy of these sources) is compiled
    again and replaced, said once: Numba would stop the program with its traceback."""

    _impl_class = _KernelCacheImpl

    def holds(self, signature, dispatcher):
        """Whether the compiled code for ``signature`` is in the cache (read, not loaded)."""
        key = self._index_key(signature, dispatcher.targetctx.codegen())
        try:
            return key in self._cache_file._load_index()
        except Exception:  # an unreadable index: nothing in it can be loaded
            return False

    def load_overload(self, sig, target_context):
        # Numba refreshes the whole target context first, loading its registries of library
        # functions for the compiler (0.1-0.15 s of a 0.9-1.1 s warm start, measured 2026-12-07 on
        # the AVX2-only Zen 3), which code read from the cache never uses; what that code calls
        # into is Numba's runtime (NRT: the arrays a kernel allocates), set up here. A compile
        # later in the process refreshes the context itself, as every compile does.
        rtsys.initialize(target_context)
        try:
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
        except Exception as e:
            if not _UNREADABLE:  # said once, as the compiling messages are (fastcnn/compiling.py)
                _UNREADABLE.append(e)
                print(f"fastcnn: a compiled kernel in the cache could not be read ({_name_of(self._py_func)}: "
                      f"{type(e).__name__}: {e}); compiling it again to replace it", file=sys.stderr, flush=True)
            return None  # a miss: the dispatcher compiles, then saves over the entry

    def save_overload(self, sig, data):
        try:
            self._cache_file._load_index()
        except Exception:  # an unreadable index: start it again (written whole, then renamed)
            self._cache_file._save_index({})
        super().save_overload(sig, data)


_UNREADABLE = []  # the first unreadable entry's error, once said


@functools.lru_cache(maxsize=None)
def _prepared_cache_dir():
    """``cache_dir()``, made if it is new (then the least recently used builds beyond
    ``KEEP_BUILDS`` of this version and CPU are removed); raises OSError if it can't be written."""
    path = cache_dir()
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        builds = sorted((p for p in path.parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in builds[:-KEEP_BUILDS]:
            shutil.rmtree(old, ignore_errors=True)
    tempfile.TemporaryFile(dir=path).close()
    os.utime(path)  # last used now: the pruning above keeps the builds in use
    return path


def cache_writable():
    """Whether ``cache_dir()`` can be written; if not, said once, on a line of stderr of its own (a
    warning would name the kernel module that asked, and show its source line)."""
    try:
        _prepared_cache_dir()
        return True
    except OSError as e:
        if not _UNCACHED:
            _UNCACHED.append(e)
            print(f"fastcnn: warning: the compiled kernels can't be cached in {cache_dir()} ({e.strerror or e}); "
                  f"they will be compiled again in every process. Set {CACHE_ENV} to a folder that can be written.",
                  file=sys.stderr, flush=True)
        return False


def _cache_for(fn):
    """The kernel cache, or, where ``cache_dir()`` can't be written, none (said once)."""
    return KernelCache(fn) if cache_writable() else caching.NullCache()


_UNCACHED = []  # why the cache can't be written, once known


def threads():
    """``numba.get_num_threads()``: the threads the calling thread's kernels use (Numba keeps the
    count per thread). Once Numba's pool is up, read without the two locks with which Numba checks
    that it is, each time (1.2 of its 1.5 us, and every kernel call asks: one image makes four)."""
    if getattr(numba_parallel, "_is_initialized", False):
        read = getattr(numba_parallel, "_get_num_threads", None)  # (Numba's private names: else the slow way)
        if read is not None:
            return read()
    return numba.get_num_threads()


def set_threads(threads=None):
    """Use ``threads`` cores for the kernels (None: all of them); returns the number. That is all
    the threads a step uses: the matrix products run inside the kernels' threads (``blas.py``)."""
    n = numba.config.NUMBA_NUM_THREADS if threads is None else threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        capped = " (NUMBA_NUM_THREADS caps it)" if "NUMBA_NUM_THREADS" in os.environ else ""
        raise ConfigError(f"threads: expected 1..{numba.config.NUMBA_NUM_THREADS} on this machine{capped}, got "
                          f"{threads!r}")
    numba.set_num_threads(int(n))
    return int(n)


def runs_here():
    """False in a copy of this process made by ``fork()`` after the kernels' threads started
    (a ``multiprocessing`` pool's default on Linux, a pre-forking web server): GNU OpenMP's
    threads don't survive a fork, and Numba ends such a copy (SIGTERM, "Terminating: fork()
    called from a process already using GNU OpenMP") at its first parallel kernel."""
    return not _Forked.from_openmp


class _Forked:
    from_openmp = False  # set in a forked copy whose parent's kernel threads had started


def _gnu_openmp_started():
    """Whether this process's kernel threads have started, on GNU OpenMP (Intel's and TBB survive a fork)."""
    if not getattr(numba_parallel, "_is_initialized", False) or numba.threading_layer() != "omp":
        return False
    from numba.np.ufunc import omppool
    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


def _after_fork_in_child():
    _Forked.from_openmp = _Forked.from_openmp or _gnu_openmp_started()


if hasattr(os, "register_at_fork"):  # (not on Windows, which has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
