"""Property-based tests: every kernel against its reference over random shapes and values, and
every loader fed random or mutated bytes.

Kernels: the tolerances of test_kernels.py (relative to max(1, max|ref|)): 1e-5 forward, 5e-5
gradients, exact for max-pool's forward and ReLU. Values are either normal or small integers (the
latter make ties, which max-pool must break like the reference: the first maximum wins).

Loaders (``read_idx``, ``load_checkpoint``, ``load_digit``): whatever the bytes, the result is
valid data or the loader's own ``FastCNNError`` subclass, never another exception. Inputs are
valid files with 1 to 4 mutations (bit flips, truncation, inserted or overwritten bytes) and
random bytes behind each format's magic. How many were tried is printed at the end of the run.
"""

import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from fastcnn import SGD, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, checkpoint, data, image, loading
from fastcnn import kernels as K
from fastcnn.errors import DataError, ImageError, ModelFileError
from fastcnn.kernels import reference as R

FWD, BWD = 1e-5, 5e-5
# Few examples per kernel keep the run in seconds; no database: nothing written to the checkout.
KERNELS = settings(max_examples=25, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])
LOADERS = settings(max_examples=150, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])

seeds = st.integers(0, 2**32 - 1)


def count(tried, what):
    tried[what] = tried.get(what, 0) + 1


def values(seed, shape, ties):
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(-3, 4, shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32)


# --- kernels -------------------------------------------------------------------------------------

@KERNELS
# c and k from 1 to 12: below 8 input channels the forward pass runs the direct kernel, from 8 a
# GEMM over gathered taps; the input gradient is a forward pass with k channels in.
@given(n=st.integers(1, 3), dh=st.integers(0, 7), dw=st.integers(0, 7), c=st.integers(1, 12),
       k=st.integers(1, 12), kh=st.integers(1, 5), kw=st.integers(1, 5), stride=st.integers(1, 3),
       pad=st.integers(0, 3), seed=seeds, ties=st.booleans())
def test_conv2d(n, dh, dw, c, k, kh, kw, stride, pad, seed, ties, assert_close, tried):
    # Image sides from the smallest that fits the kernel (with padding) up to 7 more.
    h, w = max(1, kh - 2 * pad + dh), max(1, kw - 2 * pad + dw)
    x, wt, b = values(seed, (n, h, w, c), ties), values(seed + 1, (kh, kw, c, k), ties), values(seed + 2, (k,), ties)
    y = K.conv2d_forward(x, wt, b, stride, pad)
    assert_close("conv2d_forward", y, R.conv2d_forward(x, wt, b, stride, pad), FWD)
    dy = values(seed + 3, y.shape, ties)
    for name, got, want in zip(("dx", "dw", "db"), K.conv2d_backward(dy, x, wt, stride, pad),
                               R.conv2d_backward(dy, x, wt, stride, pad)):
        assert_close(f"conv2d_backward.{name}", got, want, BWD)
    count(tried, "kernel examples: conv2d forward + backward")


@KERNELS
@given(n=st.integers(1, 3), dh=st.integers(0, 7), dw=st.integers(0, 7), c=st.integers(1, 4),
       k=st.integers(1, 5), ks=st.integers(1, 4), pad=st.integers(0, 2), size=st.integers(1, 3),
       pool_stride=st.integers(1, 3), need_dx=st.booleans(), seed=seeds, ties=st.booleans())
def test_conv_relu_pool(n, dh, dw, c, k, ks, pad, size, pool_stride, need_dx, seed, ties, assert_close, tried):
    # Conv output sides from the pooling window up to 7 more.
    h, w = max(1, ks - 2 * pad + size - 1 + dh), max(1, ks - 2 * pad + size - 1 + dw)
    x, wt, b = values(seed, (n, h, w, c), ties), values(seed + 1, (ks, ks, c, k), ties), values(seed + 2, (k,), ties)
    args = (1, pad, size, pool_stride)
    y, argmax = K.conv_relu_pool_forward(x, wt, b, *args)
    y_ref, argmax_ref = R.conv_relu_pool_forward(x, wt, b, *args)
    assert_close("conv_relu_pool_forward", y, y_ref, FWD)
    if not ties:  # with ties, rounding may pick another of two equal maxima
        assert np.array_equal(argmax, argmax_ref)
    dy = values(seed + 3, y.shape, ties)
    got = K.conv_relu_pool_backward(dy, x, wt, y, argmax, *args, need_dx=need_dx)
    want = R.conv_relu_pool_backward(dy, x, wt, y, argmax, *args, need_dx=need_dx)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        if r is not None:
            assert_close(f"conv_relu_pool_backward.{name}", g, r, BWD)
    count(tried, "kernel examples: conv -> relu -> maxpool forward + backward")


@KERNELS
@given(n=st.integers(1, 3), dh=st.integers(0, 6), dw=st.integers(0, 6), c=st.integers(1, 5),
       size=st.integers(1, 4), stride=st.integers(1, 4), seed=seeds, ties=st.booleans())
def test_maxpool(n, dh, dw, c, size, stride, seed, ties, assert_close, tried):
    x = values(seed, (n, size + dh, size + dw, c), ties)
    y, argmax = K.maxpool_forward(x, size, stride)
    y_ref, argmax_ref = R.maxpool_forward(x, size, stride)
    assert_close("maxpool_forward", y, y_ref, 0.0)
    assert np.array_equal(argmax, argmax_ref)
    dy = values(seed + 1, y.shape, ties)
    # Overlapping windows (stride < size) add two gradients into one input: rounding may differ.
    assert_close("maxpool_backward", K.maxpool_backward(dy, argmax, x.shape),
                 R.maxpool_backward(dy, argmax_ref, x.shape), 1e-6)
    count(tried, "kernel examples: maxpool forward + backward")


@KERNELS
@given(n=st.integers(1, 9), i=st.integers(1, 40), o=st.integers(1, 20), fused=st.booleans(),
       need_dx=st.booleans(), seed=seeds, ties=st.booleans())
def test_dense(n, i, o, fused, need_dx, seed, ties, assert_close, tried):
    x, w, b = values(seed, (n, i), ties), values(seed + 1, (i, o), ties), values(seed + 2, (o,), ties)
    fwd = "dense_relu_forward" if fused else "dense_forward"
    y, y_ref = getattr(K, fwd)(x, w, b), getattr(R, fwd)(x, w, b)
    assert_close(fwd, y, y_ref, FWD)
    dy = values(seed + 3, (n, o), ties)
    if fused:
        got, want = K.dense_relu_backward(dy, x, w, y, need_dx), R.dense_relu_backward(dy, x, w, y_ref, need_dx)
    else:
        got, want = K.dense_backward(dy, x, w, need_dx), R.dense_backward(dy, x, w, need_dx)
    assert (got[0] is None) == (want[0] is None) == (not need_dx)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        if r is not None:
            assert_close(f"{fwd.replace('forward', 'backward')}.{name}", g, r, BWD)
    count(tried, "kernel examples: dense (+relu) forward + backward")


@KERNELS
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), seed=seeds, ties=st.booleans())
def test_relu(shape, seed, ties, assert_close, tried):
    x = values(seed, tuple(shape), ties)
    y = K.relu_forward(x)
    assert_close("relu_forward", y, R.relu_forward(x), 0.0)
    dy = values(seed + 1, x.shape, ties)
    assert_close("relu_backward", K.relu_backward(dy, y), R.relu_backward(dy, y), 0.0)
    count(tried, "kernel examples: relu forward + backward")


@KERNELS
@given(n=st.integers(1, 20), k=st.integers(2, 20), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
       seed=seeds, ties=st.booleans())
def test_softmax_cross_entropy(n, k, scale, seed, ties, assert_close, tried):
    logits = values(seed, (n, k), ties) * np.float32(scale)
    labels = np.random.default_rng(seed).integers(0, k, n)
    loss, d = K.softmax_cross_entropy(logits, labels)
    loss_ref, d_ref = R.softmax_cross_entropy(logits, labels)
    assert_close("softmax_cross_entropy.loss", loss, loss_ref, FWD)
    assert_close("softmax_cross_entropy.dlogits", d, d_ref, FWD)
    count(tried, "kernel examples: softmax_cross_entropy")


@KERNELS
@given(size=st.integers(1, 5000), lr=st.floats(1e-4, 1.0), momentum=st.floats(0.0, 0.99), seed=seeds)
def test_sgd_momentum(size, lr, momentum, seed, assert_close, tried):
    p, v, g = (values(seed + i, (size,), False) for i in range(3))
    p2, v2 = p.copy(), v.copy()
    K.sgd_momentum(p, v, g, lr, momentum)
    R.sgd_momentum(p2, v2, g, np.float32(lr), np.float32(momentum))
    assert_close("sgd_momentum.params", p, p2, FWD)
    assert_close("sgd_momentum.velocity", v, v2, FWD)
    count(tried, "kernel examples: sgd_momentum")


# --- loaders -------------------------------------------------------------------------------------

# A mutation: (kind, position, payload); positions are taken modulo the length of the bytes.
mutation = st.tuples(st.sampled_from(["flip", "truncate", "insert", "overwrite"]), st.integers(0, 2**31),
                     st.binary(min_size=1, max_size=8))


def mutate(content, mutations):
    b = bytearray(content)
    for kind, pos, payload in mutations:
        at = pos % (len(b) + 1)
        if kind == "truncate":
            del b[at:]
        elif kind == "insert":
            b[at:at] = payload
        elif b and at < len(b):
            b[at] = b[at] ^ (1 << (payload[0] % 8)) if kind == "flip" else payload[0]
    return bytes(b)


def idx_file(compress):
    arr = np.random.default_rng(0).integers(0, 256, (3, 5, 4), dtype=np.uint8)
    content = bytes([0, 0, 8, 3]) + struct.pack(">3I", *arr.shape) + arr.tobytes()
    return gzip.compress(content) if compress else content


def model_file(folder):
    """A small but complete checkpoint: architecture, weights, optimizer and training state."""
    model = Sequential([Conv2D(1, 2, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(2 * 13 * 13, 10)], seed=0)
    path = folder / "small.npz"
    checkpoint.save(path, model, SGD(model, 0.1), {"epoch": 1, "batch": 2, "totals": [1.5, 3, 4, 0.2],
                                                   "history": [{"epoch": 1, "loss": 2.0, "train_acc": 0.25, "val_loss": None, "val_acc": None,
                                                                "seconds": 0.5}], "settings": {"lr": 0.1}})
    return path.read_bytes()


def picture(fmt):
    im = Image.new("L", (24, 20), 255)
    ImageDraw.Draw(im).line([(8, 3), (14, 16)], fill=0, width=3)
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def check_idx(path):
    try:
        a = data.read_idx(path)
    except DataError:
        return "refused"
    assert a.dtype == np.uint8 and 1 <= a.ndim <= 4 and a.size == np.prod(a.shape) > 0
    return "loaded"


def check_checkpoint(path):
    try:
        saved = loading.load_checkpoint(path)
    except ModelFileError:
        return "refused"
    assert isinstance(saved.model, Sequential) and np.isfinite(saved.model.parameters).all()
    if saved.training is not None:
        loading.check_training(saved.training)
    return "loaded"


def check_picture(content):
    try:
        out = image.load_digit(io.BytesIO(content))
    except ImageError:
        return "refused"
    assert out.shape == (28, 28, 1) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1
    return "loaded"


def fuzz(tried, what, outcome):
    # Any other exception has already propagated out of the check_* call and failed the test.
    assert outcome in ("loaded", "refused")
    count(tried, what)


@LOADERS
@given(compress=st.booleans(), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_read_idx_mutated(compress, mutations, scratch, tried):
    path = scratch / "x-idx"
    path.write_bytes(mutate(idx_file(compress), mutations))
    fuzz(tried, "loader inputs: mutated IDX files (raw and gzip)", check_idx(path))


@LOADERS
@given(magic=st.sampled_from([b"", b"\x00\x00\x08\x03", b"\x1f\x8b"]), tail=st.binary(max_size=300))
def test_read_idx_random(magic, tail, scratch, tried):
    path = scratch / "r-idx"
    path.write_bytes(magic + tail)
    fuzz(tried, "loader inputs: random IDX bytes", check_idx(path))


@pytest.fixture(scope="module")
def good_model(scratch):
    return model_file(scratch)


@LOADERS
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_load_checkpoint_mutated(mutations, good_model, scratch, tried):
    path = scratch / "m.npz"
    path.write_bytes(mutate(good_model, mutations))
    fuzz(tried, "loader inputs: mutated model files", check_checkpoint(path))


@LOADERS
@given(magic=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06"]), tail=st.binary(max_size=400))
def test_load_checkpoint_random(magic, tail, scratch, tried):
    path = scratch / "r.npz"
    path.write_bytes(magic + tail)
    fuzz(tried, "loader inputs: random model-file bytes", check_checkpoint(path))


PICTURES = {fmt: picture(fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF")}


@LOADERS
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow notes the damaged TIFF tags it skips
@given(fmt=st.sampled_from(sorted(PICTURES)), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_load_digit_mutated(fmt, mutations, tried):
    fuzz(tried, "loader inputs: mutated pictures (PNG, JPEG, BMP, GIF, TIFF)",
         check_picture(mutate(PICTURES[fmt], mutations)))


@LOADERS
@pytest.mark.filterwarnings("ignore::UserWarning")
@given(magic=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF89a", b"II*\x00"]),
       tail=st.binary(max_size=400))
def test_load_digit_random(magic, tail, tried):
    fuzz(tried, "loader inputs: random picture bytes", check_picture(magic + tail))


def test_the_valid_files_load(scratch):
    """The fuzzed files start out valid: a mutation-free run loads every one of them."""
    for compress in (False, True):
        (scratch / "v-idx").write_bytes(idx_file(compress))
        assert check_idx(scratch / "v-idx") == "loaded"
    (scratch / "v.npz").write_bytes(model_file(scratch))
    assert check_checkpoint(scratch / "v.npz") == "loaded"
    for content in PICTURES.values():
        assert check_picture(content) == "loaded"


def test_a_huge_array_claim_is_refused_without_allocating(scratch):
    """A model file whose weight header claims 10^12 rows: refused from the header alone, where
    ``np.load`` would first try to allocate the 40 TB it claims. (The weight is larger than
    zipfile's 4 kB read-ahead, so its CRC is not checked before the header is read.)"""
    model_file(scratch)
    raw = (scratch / "small.npz").read_bytes()
    small, huge = b"'shape': (338, 10), ", b"'shape': (1000000000000, 10), "
    at = raw.index(small)  # param/4.weight, the Dense layer's
    end = raw.index(b"\n", at)  # the header is padded with spaces up to this newline
    header = raw[at:end].replace(small, huge)
    assert header.endswith(b" " * (len(huge) - len(small)))
    path = scratch / "huge.npz"
    path.write_bytes(raw[:at] + header[:end - at] + raw[end:])  # same length: the zip stays readable
    with pytest.raises(ModelFileError, match=r"'param/4.weight.npy' claims \d{13,} bytes"):
        loading.load_checkpoint(path)
