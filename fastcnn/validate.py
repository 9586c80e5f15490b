"""The rules data must keep where it enters fastcnn, one function each: images, labels, a batch.

``fit``, ``predict``, ``forward``, ``evaluate`` and the commands check what they are given with
these, once, where it comes in; past that point the arrays are trusted (the plan and the kernels'
unchecked cores run them as they are). Each rule raises ``ShapeError`` naming the argument, what
was expected and what came (for NaN, Inf and unscaled pixels: the index of the first bad image).
Scalar arguments (a positive integer, a number in a range) are ``kernels.checks``' rules, but
for those checked in more than one place: the learning rate (the optimizer, the settings, and
``fit``, which sees what was set after the optimizer was made) and the divergence factor (the
settings and ``fit``).
"""

import numpy as np

from .errors import ShapeError
from .kernels import checks


FLOAT32_MAX = float(np.finfo(np.float32).max)  # the kernels compute in float32: larger would be Inf there


def learning_rate(name, lr):
    """A learning rate: a finite number > 0 that float32 holds, as a float."""
    return checks.number(name, lr, lambda v: 0 < v <= FLOAT32_MAX, "a learning rate > 0 (that float32 holds)")


def divergence_factor(name, factor):
    """The divergence check's factor (``fit``'s ``divergence``): > 1, or 0 to turn the check off."""
    return checks.number(name, factor, lambda v: v == 0 or v > 1, "a factor > 1, or 0 to turn the check off")


def as_float_pixels(raw, out=None):
    """uint8 pixels as float32 in [0, 1] (into ``out`` if given): the same numbers as
    :func:`fastcnn.data.load_dataset`'s, ``pixel / 255`` in float32."""
    return np.divide(raw, np.float32(255), out=out, dtype=np.float32)


MAX_ABS_PIXEL = 10.0  # beyond this, images are almost surely unscaled 0-255 pixels
_CHUNK = 1000  # images checked at a time, so a check of 60,000 images needs no full-size temporary


def images(name, x):
    """``x`` as float32 images (N, H, W, C) (or examples of another shape, (N, ...), for a model
    that takes them: a Dense one, say): finite, |value| <= ``MAX_ABS_PIXEL``, at least one;
    or as uint8 pixels 0-255, which are returned as they are (each batch is scaled to [0, 1] as it
    is read: :func:`as_float_pixels`), so a data set stays a quarter of the size, or on disk.

    Other float dtypes (float64) are converted here, once: one float32 copy of the whole set
    (188 MB for MNIST's training images), not one per batch. Other integer images are refused, as
    ``model.forward`` does: scale them to [0, 1] first (``x / 255``).
    Raises ``ShapeError`` naming ``name``, what was expected and what came (for NaN, Inf and values
    out of range: the index of the first such image).
    """
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{name}: expected a NumPy array of images (N, H, W, C), got {type(x).__name__}")
    if x.ndim < 2:  # (the model says whether the examples fit it: model.classes_scored)
        raise ShapeError(f"{name}: expected a batch of images (N, H, W, C), or of a model's examples (N, ...), "
                         f"got shape {x.shape}")
    if x.size == 0:
        raise ShapeError(f"{name}: expected at least one non-empty image, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "biu":
        raise ShapeError(f"{name}: expected floating-point images in [0, 1] or uint8 pixels, got dtype {x.dtype}; "
                         f"scale 0-255 pixels first: x / 255")
    if x.dtype.kind != "f":
        raise ShapeError(f"{name}: expected floating-point images in [0, 1], got dtype {x.dtype}")
    for start in range(0, len(x), _CHUNK):
        rows = x[start:start + _CHUNK].reshape(min(_CHUNK, len(x) - start), -1)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            raise ShapeError(f"{name}: image {start + int(np.argmin(finite))} holds NaN or Inf; "
                             f"expected finite pixel values")
        big = np.abs(rows).max(axis=1) > MAX_ABS_PIXEL
        if big.any():
            i = start + int(np.argmax(big))
            raise ShapeError(f"{name}: image {i} has values in [{x[i].min():g}, {x[i].max():g}]; expected "
                             f"pixels scaled to about [0, 1] (|value| <= {MAX_ABS_PIXEL:g}): divide 0-255 by 255")
    return x if x.dtype == np.float32 else x.astype(np.float32)


def labels(name, y, n, classes):
    """``y`` as int64 class labels of shape (n,), each in 0..classes-1; else ``ShapeError``."""
    if not isinstance(y, np.ndarray):
        raise ShapeError(f"{name}: expected a NumPy array of integer labels, got {type(y).__name__}")
    if y.shape != (n,):
        raise ShapeError(f"{name}: expected shape ({n},), one label per image, got {y.shape}"
                         f"{checks.label_shape_hint(y, n)}")
    if y.dtype.kind not in "iu":
        hint = "; convert them: y.astype(int)" if y.dtype.kind == "f" else ""
        raise ShapeError(f"{name}: expected integer class labels, got dtype {y.dtype}{hint}")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        counted_from_1 = "; counted from 1? pass y - 1" if y.min() == 1 and y.max() == classes else ""
        raise ShapeError(f"{name}: label {y[i]} at index {i} is outside 0..{classes - 1}, the model's classes"
                         f"{counted_from_1}")
    return np.ascontiguousarray(y, dtype=np.int64)  # (a strided view would compile the loss kernel again)


def batch_layout(x, pixels=False):
    """Check that ``x`` is a batch (N, ...) of floating-point images, or of uint8 pixels where
    ``pixels``, N >= 1, without reading its values (``input_batch`` does, once the plan for its
    shape is ready)."""
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"x: expected a NumPy array, got {type(x).__name__}")
    if x.dtype.kind != "f" and not (pixels and x.dtype == np.uint8):  # (not np.issubdtype: 0.5 us)
        raise ShapeError(f"x: expected floating-point images (e.g. uint8 / 255), got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"x: expected a non-empty batch (N, ...), got shape {x.shape}")


def batches(x, batch_size, kernels):
    """``(start, batch)`` for each ``batch_size`` images of ``x`` (which ``batch_layout(x,
    pixels=True)`` passed), as ``input_batch`` gives them. A bad image is named by its index in all
    of ``x``: the batches before it passed, so the first bad one that ``images`` finds up to this
    batch's end is in this batch."""
    if x.dtype == np.uint8:  # pixels 0-255: always in range, scaled batch by batch
        for start in range(0, len(x), batch_size):
            yield start, as_float_pixels(x[start:start + batch_size])
        return
    for start in range(0, len(x), batch_size):
        try:
            yield start, input_batch(x[start:start + batch_size], kernels)
        except ShapeError:
            if start:
                upto = x[:start + batch_size]
                images("x", upto.reshape(len(upto), -1, 1, 1))
            raise


def input_batch(x, kernels):
    """``x``, a batch that ``batch_layout`` passed, as a float32 C-contiguous writable array whose
    values are finite and within ``MAX_ABS_PIXEL`` (NaN, Inf and unscaled 0-255 pixels are
    refused, by ``images``, which names the first bad image). The values are checked in one pass
    by ``kernels.values_within``, which the plan's preparation compiles (``Plan.ready``): ready the
    plan for x's shape first."""
    if x.dtype == np.float32:
        batch = np.ascontiguousarray(x)
    else:
        with np.errstate(over="ignore"):  # what float32 can't hold becomes Inf, refused just below
            batch = np.ascontiguousarray(x, dtype=np.float32)
    if not kernels.values_within(batch, MAX_ABS_PIXEL):
        images("x", x.reshape(len(x), -1, 1, 1))
    # A read-only batch (load_dataset's arrays, a memory map) is copied: Numba types it apart from a
    # writable one, and the first kernel would compile again for it (3-4 s, once).
    return batch if batch.flags.writeable else batch.copy()
