"""float32 vectors as values in the kernels: sums that stay in registers.

LLVM vectorises a loop over the channels by itself, but each pass of that loop reads its partial
sums from memory and writes them back. The microkernel of a fast convolution keeps a small tile
of sums (a few output pixels by a few vectors of channels) in registers through the whole
reduction over the taps, and writes it once; LLVM does not write that from plain loops (tried:
with the channel loop inside, it keeps the sums in memory; with it outside, it does not
vectorise). So the few kernels that need it say it: a ``Vector`` is WIDTH float32 lanes as one
Numba value, each function below is one LLVM instruction (or a few: ``where_beats``,
``store_indices``, for a max-pool's maximum and argmax), and ``+``, ``-`` and ``*`` work on
vectors (``*`` also of a number and a vector) as on numbers, lane by lane: Winograd's transforms
(winograd.py) are the same code for numbers and for vectors.

WIDTH is the machine's: 16 lanes with AVX-512, 8 otherwise (two 128-bit halves without AVX: LLVM
splits what it cannot do whole). ``load``/``store`` take an array and the flat (C-order) index of
the first element; they are unchecked, like Numba's indexing: the caller keeps i + WIDTH <= size.
"""

import operator

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.errors import TypingError
from numba.core.imputils import lower_builtin
from numba.core.typing.templates import AbstractTemplate, infer_global, signature
from numba.extending import intrinsic, models, register_model

from . import algorithms
from .jit import FASTMATH

WIDTH = 16 if algorithms.isa() == "avx512" else 8


class Vector(types.Type):
    def __init__(self, width):
        self.width = width
        super().__init__(name=f"float32x{width}")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.width))


VECTOR = Vector(WIDTH)
_LANES = ir.VectorType(ir.FloatType(), WIDTH)
_INDICES = ir.VectorType(ir.IntType(32), WIDTH)  # a lane index (or count) in each lane


def _broadcast(builder, value, vector_type):
    """A vector of ``vector_type`` with ``value`` in every lane."""
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), ir.Constant(_INDICES, [0] * WIDTH))


def _check_array(a, what):
    if not (isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"):
        raise TypingError(f"simd.{what}: expected a C-contiguous float32 array, got {a}")


def _address(context, builder, array_type, array, index_type, index, lanes=_LANES):
    data = context.make_array(array_type)(context, builder, array).data
    at = builder.gep(data, [context.cast(builder, index, index_type, types.intp)], inbounds=True)
    return builder.bitcast(at, lanes.as_pointer())


@intrinsic
def load(typingctx, a, i):
    """The WIDTH floats of ``a`` from flat index ``i``."""
    _check_array(a, "load")

    def codegen(context, builder, sig, args):
        return builder.load(_address(context, builder, sig.args[0], args[0], sig.args[1], args[1]), align=4)
    return VECTOR(a, i), codegen


@intrinsic
def store(typingctx, a, i, v):
    """Write vector ``v`` into ``a`` from flat index ``i``."""
    _check_array(a, "store")

    def codegen(context, builder, sig, args):
        builder.store(args[2], _address(context, builder, sig.args[0], args[0], sig.args[1], args[1]), align=4)
        return context.get_dummy_value()
    return types.none(a, i, VECTOR), codegen


@intrinsic
def splat(typingctx, x):
    """A vector of WIDTH copies of the number x."""
    if not isinstance(x, (types.Float, types.Integer)):
        raise TypingError(f"simd.splat: expected a number, got {x}")

    def codegen(context, builder, sig, args):
        return _broadcast(builder, context.cast(builder, args[0], sig.args[0], types.float32), _LANES)
    return VECTOR(x), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, lane by lane, rounded once."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_LANES, [_LANES] * 3),
                                            f"llvm.fma.v{WIDTH}f32")
        return builder.call(fn, list(args))
    return VECTOR(VECTOR, VECTOR, VECTOR), codegen


@intrinsic
def add(typingctx, a, b):
    """a + b, lane by lane."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return VECTOR(VECTOR, VECTOR), codegen


@intrinsic
def lane(typingctx, v, i):
    """Lane i of vector v, a float32."""
    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1], types.int32))
    return types.float32(VECTOR, i), codegen


def _first_lanes(builder, context, n, n_type):
    """A mask of the lanes below n (0 to WIDTH)."""
    count = _broadcast(builder, context.cast(builder, n, n_type, types.int32), _INDICES)
    return builder.icmp_signed("<", ir.Constant(_INDICES, list(range(WIDTH))), count)


@intrinsic
def load_first(typingctx, a, i, n):
    """The first n lanes (0 to WIDTH) of ``load(a, i)``, zeros in the others, which are not read."""
    _check_array(a, "load_first")

    def codegen(context, builder, sig, args):
        mask = _first_lanes(builder, context, args[2], sig.args[2])
        ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_LANES, [ptr.type, ir.IntType(32), mask.type, _LANES]),
            f"llvm.masked.load.v{WIDTH}f32.p0")
        return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), 4), mask, ir.Constant(_LANES, [0.0] * WIDTH)])
    return VECTOR(a, i, n), codegen


@intrinsic
def store_first(typingctx, a, i, v, n):
    """``store(a, i, v)`` of the first n lanes (0 to WIDTH) only."""
    _check_array(a, "store_first")

    def codegen(context, builder, sig, args):
        mask = _first_lanes(builder, context, args[3], sig.args[3])
        ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_LANES, ptr.type, ir.IntType(32), mask.type]),
            f"llvm.masked.store.v{WIDTH}f32.p0")
        builder.call(fn, [args[2], ptr, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()
    return types.none(a, i, VECTOR, n), codegen


@intrinsic
def relu(typingctx, v):
    """max(v, 0) lane by lane; a NaN stays a NaN."""
    def codegen(context, builder, sig, args):
        zero = ir.Constant(_LANES, [0.0] * WIDTH)
        return builder.select(builder.fcmp_ordered("<", args[0], zero), zero, args[0])
    return VECTOR(VECTOR), codegen


@intrinsic
def where_beats(typingctx, v, best, a, b):
    """Lane by lane, ``a`` where v replaces the running maximum ``best`` of a max-pool window,
    else ``b``: where v > best, or v is a NaN and best is not (so the first maximum wins, and
    the first NaN), as ``pool.beats`` for numbers."""
    def codegen(context, builder, sig, args):
        v, best, a, b = args
        greater = builder.fcmp_ordered(">", v, best)
        nan_over = builder.and_(builder.fcmp_unordered("uno", v, v), builder.fcmp_ordered("ord", best, best))
        return builder.select(builder.or_(greater, nan_over), a, b)
    return VECTOR(VECTOR, VECTOR, VECTOR, VECTOR), codegen


@intrinsic
def store_indices(typingctx, a, i, v, base, n):
    """a[i + q] = base + lane q of v (whole numbers, as float32: exact below 2**24) for the first
    min(n, WIDTH) lanes, into a C-contiguous int32 array: a max-pool's argmax, whose offsets
    within the window are made by selects on vectors of floats. Whole vectors by a plain store
    (masked stores are slow on AMD's cores)."""
    if not (isinstance(a, types.Array) and a.dtype == types.int32 and a.layout == "C"):
        raise TypingError(f"simd.store_indices: expected a C-contiguous int32 array, got {a}")

    def codegen(context, builder, sig, args):
        ints = builder.add(builder.fptosi(args[2], _INDICES),
                           _broadcast(builder, context.cast(builder, args[3], sig.args[3], types.int32), _INDICES))
        ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1], _INDICES)
        count = context.cast(builder, args[4], sig.args[4], types.int32)
        with builder.if_else(builder.icmp_signed(">=", count, ir.Constant(ir.IntType(32), WIDTH))) as (whole, part):
            with whole:
                builder.store(ints, ptr, align=4)
            with part:
                mask = _first_lanes(builder, context, args[4], sig.args[4])
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [_INDICES, ptr.type, ir.IntType(32), mask.type]),
                    f"llvm.masked.store.v{WIDTH}i32.p0")
                builder.call(fn, [ints, ptr, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()
    return types.none(a, i, VECTOR, base, n), codegen


@numba.njit(inline="always")
def load_up_to(a, i, n):
    """The first min(n, WIDTH) lanes of ``load(a, i)``, zeros in the others: a whole load where n
    allows it (n >= 1)."""
    return load(a, i) if n >= WIDTH else load_first(a, i, n)


@numba.njit(inline="always")
def store_up_to(a, i, v, n):
    """``store(a, i, v)`` of the first min(n, WIDTH) lanes (n >= 1)."""
    if n >= WIDTH:
        store(a, i, v)
    else:
        store_first(a, i, v, n)


@numba.njit(inline="always")
def add_lanes(a, i, v, n):
    """a[i + q] += lane q of v for the first min(n, WIDTH) lanes (none for n <= 0): a vector's sums
    added into a one-dimensional array of any float type (a float64 total, say)."""
    for q in range(min(n, WIDTH)):
        a[i + q] += lane(v, q)


_FLAGS = tuple(sorted(FASTMATH))  # the kernels' own: LLVM may fuse a product and a sum into one fma


def _arithmetic(op, instruction):
    """``op`` (operator.add, ...) on two vectors as the LLVM ``instruction``; with operator.mul,
    also a number times a vector (the number, as float32, in every lane)."""
    @infer_global(op)
    class _Typing(AbstractTemplate):
        key = op

        def generic(self, args, kws):
            if len(args) == 2 and isinstance(args[1], Vector):
                if isinstance(args[0], Vector):
                    return signature(VECTOR, VECTOR, VECTOR)
                if op is operator.mul and isinstance(args[0], (types.Float, types.Integer)):
                    return signature(VECTOR, types.float32, VECTOR)
            return None

    @lower_builtin(op, Vector, Vector)
    def _vectors(context, builder, sig, args):
        return getattr(builder, instruction)(args[0], args[1], flags=_FLAGS)

    if op is operator.mul:
        @lower_builtin(op, types.float32, Vector)
        def _scaled(context, builder, sig, args):
            return builder.fmul(_broadcast(builder, args[0], _LANES), args[1], flags=_FLAGS)


_arithmetic(operator.add, "fadd")
_arithmetic(operator.sub, "fsub")
_arithmetic(operator.mul, "fmul")
