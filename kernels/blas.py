"""Matrix products for the kernels: BLAS's single-precision GEMM (and GEMV), called from inside Numba's threads.

A kernel splits a product into blocks, one per Numba thread, and each thread multiplies its block
with ``gemm`` while BLAS itself stays on one thread. So one thread pool (Numba's) runs a whole
training step: BLAS's own threads never take turns with Numba's on the cores (measured in 0.1:
a second core bought 1.05-1.3x). ``gemm`` writes into the caller's buffers, at any offset and
leading dimension, so the products need no copies and no allocation.

The routines are SciPy's ``sgemm`` and ``sgemv`` (the addresses that ``scipy.linalg.cython_blas`` exports, as Numba
itself uses for ``np.dot``; the module loaded from its file: ``_cython_blas``), with Fortran's calling convention. It is declared to LLVM under a
name of ours, at every import, and the kernels call it by that name: so they can be cached
(a ctypes function pointer would be baked into the code, and Numba refuses to cache that). The
call itself is a Numba intrinsic (``_by_reference``) that hands Fortran its arguments by reference.
"""

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading

import llvmlite.binding
import numba
import numpy as np
import threadpoolctl
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic

_CYTHON_BLAS = "scipy.linalg.cython_blas"


def _cython_blas():
    """SciPy's ``scipy.linalg.cython_blas`` (which loads SciPy's BLAS), without ``scipy.linalg``.

    Imported by name it runs ``scipy.linalg``'s ``__init__`` first, and so does Numba's check for
    a BLAS (``numba.np.arraymath``, imported when the first kernel loads): 0.18 s of a 1 s warm
    start (measured 2026-12-07, AMD EPYC). Loaded from its file it takes 5 ms, and Cython puts it
    in ``sys.modules``, where the addresses are read and Numba's check, imported meanwhile, finds
    it. Then it is taken out again: there, ahead of its package, a later ``import scipy.linalg``
    would not make it that package's attribute; out, that import loads it again and gets this same
    module (Cython hands back the one it made), as its attribute."""
    if _CYTHON_BLAS in sys.modules:
        return sys.modules[_CYTHON_BLAS]
    scipy = importlib.util.find_spec("scipy")  # finds it without running its __init__
    folder = os.path.join(os.path.dirname(scipy.origin), "linalg") if scipy and scipy.origin else ""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "cython_blas" + suffix)
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location(_CYTHON_BLAS, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules.setdefault(_CYTHON_BLAS, module)
            return module
    return importlib.import_module(_CYTHON_BLAS)  # SciPy laid out otherwise: the slow way


_BLAS = _cython_blas()
llvmlite.binding.add_symbol("fastcnn_sgemm", get_cython_function_address(_CYTHON_BLAS, "sgemm"))
llvmlite.binding.add_symbol("fastcnn_sgemv", get_cython_function_address(_CYTHON_BLAS, "sgemv"))
import numba.np.arraymath  # noqa: E402, F401 - Numba's check for a BLAS, which finds _BLAS in sys.modules
if "scipy.linalg" in sys.modules:  # imported by now after all: it gets its attribute
    sys.modules["scipy.linalg"].cython_blas = _BLAS
else:
    sys.modules.pop(_CYTHON_BLAS, None)

NO_TRANS, TRANS = ord("N"), ord("T")

# How Fortran takes each argument: by reference. A scalar goes in a stack slot of its Fortran type,
# an array as the address of its first element.
_SCALARS = {"char": types.uint8, "int": types.int32, "float": types.float32}
_GEMM = ("char", "char", "int", "int", "int", "float", "array", "int", "array", "int", "float", "array", "int")
_GEMV = ("char", "int", "int", "float", "array", "int", "array", "int", "float", "array", "int")
_ADDRESS = ir.IntType(8).as_pointer()


def _by_reference(symbol, kinds):
    """Code for a call of the Fortran routine ``symbol`` with arguments of ``kinds``. The scalars'
    slots are made once, at the kernel's entry, with no allocation: a call costs what the routine
    does (three small arrays made per call instead took 0.4 s of compiling per call site)."""
    def codegen(context, builder, signature, args):
        addresses = []
        for kind, ty, value in zip(kinds, signature.args, args):
            if kind == "array":
                address = context.make_array(ty)(context, builder, value).data
            else:
                address = cgutils.alloca_once_value(builder, context.cast(builder, value, ty, _SCALARS[kind]))
            addresses.append(builder.bitcast(address, _ADDRESS))
        fortran = ir.FunctionType(ir.VoidType(), [_ADDRESS] * len(kinds))
        routine = cgutils.get_or_insert_function(builder.module, fortran, symbol)
        builder.call(routine, addresses)
        return context.get_dummy_value()
    return codegen


@intrinsic
def _sgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    signature = types.void(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return signature, _by_reference("fastcnn_sgemm", _GEMM)


@intrinsic
def _sgemv(typingctx, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
    return types.void(trans, m, n, alpha, a, lda, x, incx, beta, y, incy), _by_reference("fastcnn_sgemv", _GEMV)


@numba.njit(inline="always")
def gemm(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major C (M, N) = alpha * op(A) @ op(B) + beta * C, as CBLAS's RowMajor form.

    ``a``, ``b``, ``c`` are 1-D float32 arrays that start at the block's first element; ``lda``
    etc. are row strides in elements; ``op(A)`` is A (M, K), or with ``TRANS`` A stored as (K, M).
    A row-major matrix is its transpose in column-major order, so Fortran's sgemm computes
    C^T = op(B)^T @ op(A)^T: the operands swap places, the transpose flags stay.
    """
    _sgemm(trans_b, trans_a, N, M, K, alpha, b, ldb, a, lda, beta, c, ldc)


@numba.njit(inline="always")
def vector_times(K, N, alpha, x, a, lda, beta, y):
    """Row-major y (N,) = alpha * x (K,) @ A (K, N) + beta * y: one row through a matrix, which
    streams A once (GEMM would first pack all of it: 1.1 ms for the MNIST layer's 3.2 MB on
    OpenBLAS's Haswell kernels). Row-major A is A^T in column-major order, so Fortran's sgemv
    computes y = A^T x with no transpose flag; ``x``, ``a``, ``y`` as for ``gemm``."""
    _sgemv(NO_TRANS, N, K, alpha, a, lda, x, 1, beta, y, 1)


@numba.njit(inline="always")
def matrix_times(M, K, alpha, a, lda, x, beta, y):
    """Row-major y (M,) = alpha * A (M, K) @ x (K,) + beta * y: a matrix through one column, A
    streamed once (as ``vector_times``; Fortran's sgemv on A^T, transposed back)."""
    _sgemv(TRANS, K, M, alpha, a, lda, x, 1, beta, y, 1)


def _blas_libraries():
    """threadpoolctl's controllers of every BLAS loaded in this process (a scan of them all)."""
    return threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers


def _scipy_blas(controllers=None):
    """Of ``controllers`` (default: every BLAS loaded), the BLAS that ``gemm`` calls: SciPy's, loaded
    with _BLAS at import (NumPy's wheel brings its own copy, in numpy's folders), or the one BLAS
    both share."""
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    numpy_libs = (os.path.join(numpy_dir, "numpy"), os.path.join(numpy_dir, "numpy.libs"))
    controllers = _blas_libraries() if controllers is None else controllers
    return [lib for lib in controllers if not lib.filepath.startswith(numpy_libs) or len(controllers) == 1]


def core():
    """The CPU core whose kernels SciPy's OpenBLAS runs ("SkylakeX", "Haswell", ...; "unknown"
    for another BLAS): OPENBLAS_CORETYPE sets it."""
    for lib in _scipy_blas():
        return str(getattr(lib, "architecture", None) or "unknown")
    return "unknown"


def hold_to_one_thread():
    """Keep the BLAS that ``gemm`` calls on one thread (each Numba thread calls it for its block).

    That is the BLAS SciPy loaded; NumPy's own copy, where it has one (NumPy's and SciPy's wheels
    each bring an OpenBLAS), keeps its threads, so a user's ``a @ b`` is not slowed down. Where
    both use one shared BLAS, that one is held to one thread.
    """
    for lib in _scipy_blas():
        lib.set_num_threads(1)


@functools.lru_cache(maxsize=None)
def _numpy_blas():
    """threadpoolctl's controllers of NumPy's own BLAS, where its wheel brings one apart from
    SciPy's (the one ``hold_to_one_thread`` holds); none where they share one."""
    controllers = _blas_libraries()
    held = {lib.filepath for lib in _scipy_blas(controllers)}
    return tuple(lib for lib in controllers if lib.filepath not in held)


class _NumpyHold:
    """The main thread's holds open (nested: a layer of the user's may run a model too), and the
    thread counts the outermost one found."""
    depth = 0
    saved = ()


@contextlib.contextmanager
def numpy_blas_on_one_thread():
    """NumPy's own BLAS on one thread while the block runs: for NumPy code that runs between the
    kernels, such as a layer of the user's own in a model.

    After each call, OpenBLAS's threads wait for the next one spinning, about 0.1 s, on the cores
    the kernels' threads need: with a user's layer doing ``x @ w`` (64 x 6272 by 6272 x 128) between
    the compiled steps, a training step took 16.1 ms, and 5.7-5.8 with this hold (AVX2-only AMD
    EPYC, 2 cores, 2026-12-07: ``benchmarks/numpy_beside.py``). The count set before is restored
    afterwards. Only the main thread holds it: OpenBLAS ignores a count set from another thread
    than the one that loaded it (the OpenBLAS 0.3.30 and 0.3.31 of SciPy's and NumPy's wheels,
    measured), and NumPy is loaded by the main thread; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hold = _NumpyHold
    if hold.depth == 0:
        hold.saved = tuple((lib, lib.num_threads) for lib in _numpy_blas())
        for lib, _ in hold.saved:
            lib.set_num_threads(1)
    hold.depth += 1
    try:
        yield
    finally:
        hold.depth -= 1
        if hold.depth == 0:
            for lib, threads in hold.saved:
                lib.set_num_threads(threads)
