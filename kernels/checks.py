"""Argument checks shared by the compiled kernels and the NumPy reference.

Each check raises ``ShapeError`` with a message naming the argument, what was expected and what
came, so a bad call never reaches Numba (whose errors say nothing useful) or returns garbage.
"""

import numpy as np

from .errors import ShapeError


def array(name, a, ndim, dtype=None):
    """Check that ``a`` is a floating array of rank ``ndim``; with ``dtype``, return it as a
    C-contiguous array of that dtype (a copy only when it is not one already)."""
    if not isinstance(a, np.ndarray):
        raise ShapeError(f"{name}: expected a NumPy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ShapeError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ShapeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if dtype is not None:
        a = np.ascontiguousarray(a, dtype=dtype)
    return a


def label_shape_hint(y, n):
    """What to do with labels of the wrong shape that a user meant as (n,): one-hot rows, a column."""
    if y.ndim == 2 and len(y) == n and y.shape[1] == 1:
        return "; a column of labels? pass y.ravel()"
    if y.ndim == 2 and len(y) == n:
        return "; one-hot rows? pass the class numbers: y.argmax(axis=1)"
    return ""


def labels(name, y, n, classes):
    """Integer class labels of shape (n,), each in 0..classes-1, returned as int64."""
    if not isinstance(y, np.ndarray):
        raise ShapeError(f"{name}: expected a NumPy array of integer labels, got {type(y).__name__}")
    if y.shape != (n,):
        raise ShapeError(f"{name}: expected shape ({n},) to match the batch, got {y.shape}{label_shape_hint(y, n)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(f"{name}: expected integer labels, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= classes):
        raise ShapeError(f"{name}: labels must lie in 0..{classes - 1}, got values {y.min()}..{y.max()}")
    return np.ascontiguousarray(y, dtype=np.int64)


def positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ShapeError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def flag(name, v):
    if not isinstance(v, (bool, np.bool_)):  # "no" would be true
        raise ShapeError(f"{name}: expected True or False, got {v!r}")
    return bool(v)


def non_negative_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ShapeError(f"{name}: expected a non-negative integer, got {v!r}")
    return int(v)


def number(name, v, ok, expected):
    """A finite real number (Python's or NumPy's, not a bool) for which ``ok`` holds, as a float;
    else ``ShapeError`` naming ``name`` and what was ``expected``."""
    if (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
            or not np.isfinite(v) or not ok(v)):
        raise ShapeError(f"{name}: expected {expected}, got {v!r}")
    return float(v)


def same_shape(name, a, shape, what):
    if tuple(a.shape) != tuple(shape):
        raise ShapeError(f"{name}: expected shape {tuple(shape)} ({what}), got {a.shape}")


def conv_output_size(x_shape, w_shape, stride, padding):
    """Check a convolution's input, weight, stride and padding; return (OH, OW)."""
    stride = positive_int("stride", stride)
    padding = non_negative_int("padding", padding)
    n, h, w, c = x_shape
    kh, kw, c_in, _ = w_shape
    if c != c_in:
        raise ShapeError(f"x: expected {c_in} input channels (weight is {tuple(w_shape)}), got shape {tuple(x_shape)}")
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ShapeError(f"x: a {h}x{w} image with padding {padding} is smaller than the {kh}x{kw} kernel")
    if n < 1:
        raise ShapeError(f"x: expected at least one image, got shape {tuple(x_shape)}")
    return oh, ow


def pool_output_size(x_shape, size, stride):
    """Check a max-pool's input and window; return (OH, OW). Sizes that do not divide are floored."""
    size = positive_int("size", size)
    stride = positive_int("stride", stride)
    n, h, w, _ = x_shape
    if h < size or w < size:
        raise ShapeError(f"x: a {h}x{w} image is smaller than the {size}x{size} pooling window")
    if n < 1:
        raise ShapeError(f"x: expected at least one image, got shape {tuple(x_shape)}")
    return (h - size) // stride + 1, (w - size) // stride + 1


def channels_last(name, a, dtype=None):
    """Check that ``a`` is a floating array of rank >= 2 with channels on its last axis, and at
    least one row and one channel; with ``dtype``, return it as a C-contiguous array of that dtype."""
    if isinstance(a, np.ndarray) and a.ndim < 2:
        raise ShapeError(f"{name}: expected at least 2 dimensions (rows..., channels), got shape {a.shape}")
    a = array(name, a, np.ndim(a), dtype)
    if a.size == 0:
        raise ShapeError(f"{name}: expected at least one row and one channel, got shape {a.shape}")
    return a


def flat_buffer(name, a, size):
    """Check that ``a`` is a contiguous float32 buffer of shape (size,), to be updated in place."""
    array(name, a, 1)
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ShapeError(f"{name}: expected a contiguous float32 buffer, got {a.dtype}")
    same_shape(name, a, (size,), "one entry per parameter")


def shape(name, s, ndim):
    """Check that ``s`` is a shape of ``ndim`` positive integers; return it as a tuple of ints."""
    if not isinstance(s, (tuple, list)) or len(s) != ndim:
        raise ShapeError(f"{name}: expected a shape of {ndim} sizes, got {s!r}")
    return tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(s))


def fraction(name, v):
    """Check that ``v`` is a number in [0, 1) (a probability, a decay rate); return it as a float."""
    v = _number(name, v)
    if not 0.0 <= v < 1.0:
        raise ShapeError(f"{name}: expected a value in [0, 1), got {v!r}")
    return v


def positive_real(name, v):
    """Check that ``v`` is a finite number > 0 (an epsilon, a learning rate); return it as a float."""
    v = _number(name, v)
    if not (0.0 < v < np.inf):
        raise ShapeError(f"{name}: expected a finite number > 0, got {v!r}")
    return v


def _number(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ShapeError(f"{name}: expected a number, got {v!r}")
    return float(v)


class Checked:
    """An attribute checked whenever it is set, in the constructor or later (``opt.lr = 0.01`` between
    steps, as ``ReduceLROnPlateau`` does; ``dropout.p = 0.2``): ``check(name, value)`` gives the
    value kept, or raises and the old value stays."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:  # not set yet: as for any attribute (hasattr, getattr with a default)
            raise AttributeError(f"{type(obj).__name__} has no {self.name} yet") from None

    def __set__(self, obj, value):
        obj.__dict__[self.name] = self.check(self.name, value)


def in_range(test, expected):
    """A ``Checked`` check: a number that passes ``test``, else ShapeError saying ``expected``."""
    return lambda name, v: number(name, v, test, expected)

