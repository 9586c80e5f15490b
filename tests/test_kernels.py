"""Every compiled kernel against its NumPy reference, over shapes chosen to break assumptions:
batch 1, odd and non-square images and kernels, several input channels, stride 2 and 3, padding
0 up to more than the kernel's size - 1.

Tolerances (float32, relative to the largest magnitude of the reference result): 1e-5 for
forward passes, 5e-5 for gradients (they sum up to tens of thousands of terms), exact for
max-pool (it only moves values) and argmax indices.
"""

import numpy as np
import pytest

from fastcnn import ShapeError
from fastcnn import kernels as K
from fastcnn.kernels import reference as R

FWD, BWD = 1e-5, 5e-5

# (N, H, W, C_in, C_out, kernel, stride, padding)
CONV_SHAPES = [
    (1, 5, 5, 1, 1, 3, 1, 0),
    (2, 7, 5, 3, 4, 3, 1, 1),
    (3, 9, 8, 2, 5, 3, 2, 0),
    (1, 6, 11, 4, 3, 5, 2, 2),
    (2, 8, 8, 3, 6, 2, 2, 1),
    (2, 10, 9, 2, 3, 4, 3, 2),
    (4, 13, 10, 16, 20, 1, 1, 0),
    (64, 28, 28, 1, 32, 3, 1, 1),   # the MNIST network's convolution
    # Channels in tiles of 2 vectors, an odd vector, and single channels (8 lanes with AVX2 code,
    # 16 with AVX-512's); widths with pixels past the last 4; kernel rows of 2, 6 and 15 taps:
    (2, 9, 11, 2, 24, 3, 1, 1),
    (3, 7, 10, 3, 40, 5, 2, 2),
    (1, 6, 7, 1, 16, 2, 1, 0),
    (2, 5, 6, 3, 2, 1, 1, 2),       # padding > kernel - 1: dx's border reads only padding
    (1, 4, 7, 2, 3, 2, 2, 3),
    (2, 7, 9, 3, 4, (3, 1), 1, 1),  # kernels that are not square
    (3, 8, 7, 2, 5, (2, 4), 2, 1),
    (2, 6, 6, 5, 3, (1, 3), 1, 0),
    (1, 9, 10, 8, 6, (5, 3), 1, 2),
    # From 8 input channels the forward pass and the weight gradient are GEMMs over gathered taps:
    (3, 11, 9, 9, 7, 3, 2, 1),
    (1, 7, 12, 12, 5, (2, 3), 3, 4),
    (2, 14, 14, 32, 64, 3, 1, 1),   # the deep network's second convolution
    (12, 14, 13, 8, 16, 3, 2, 1),   # strided: each thread's GEMMs over blocks of rows that span images
    # A few images (products of fewer pixels than algorithms.GEMM_REGISTER_PIXELS): with AVX2 code
    # multiplied in registers, output channels a whole number of vectors at both widths:
    (1, 14, 13, 64, 32, 3, 2, 1),
    (1, 9, 8, 16, 48, 1, 2, 0),
    (2, 7, 7, 24, 16, 5, 1, 2),
]


def rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv2d_matches_reference(shape, assert_close):
    n, h, w, c, k, ks, stride, pad = shape
    kh, kw = ks if isinstance(ks, tuple) else (ks, ks)
    rng = np.random.default_rng(sum(shape[:5]) + kh + 7 * kw + stride + pad)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, kh, kw, c, k), rand(rng, k)
    y = K.conv2d_forward(x, wt, b, stride, pad)
    assert_close("conv2d_forward", y, R.conv2d_forward(x, wt, b, stride, pad), FWD)
    dy = rand(rng, *y.shape)
    got = K.conv2d_backward(dy, x, wt, stride, pad)
    want = R.conv2d_backward(dy, x, wt, stride, pad)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert_close(f"conv2d_backward.{name}", g, r, BWD)
    dx, dw, db = K.conv2d_backward(dy, x, wt, stride, pad, need_dx=False)
    assert dx is None and np.array_equal(dw, got[1]) and np.array_equal(db, got[2])
    # The core's add=True: the input gradient added onto dx (col2im's scatter, or each other path's
    # own result then added), what a value read by two convolutions gets.
    base = rand(rng, *x.shape)
    for k in (K, R):
        dx, dw, db = base.copy(), np.empty_like(wt), np.empty_like(b)
        k.conv2d_backward_into(dx, dw, db, dy, x, wt, stride, pad, True)
        assert_close(f"conv2d_backward_into(add=True).dx ({k.__name__})", dx, base + want[0], BWD)
        assert_close(f"conv2d_backward_into(add=True).dw ({k.__name__})", dw, want[1], BWD)


# (N, H, W, C_in, C_out, kernel, stride, padding, pool size, pool stride): the pool over the conv's
# output, with windows that tile it, overlap (stride 1) or skip rows (stride 3 > size 2).
CONV_POOL_SHAPES = [
    (1, 4, 4, 1, 1, 3, 1, 1, 2, 2),
    (2, 9, 7, 3, 5, 3, 1, 1, 2, 2),
    (3, 11, 10, 2, 4, 3, 2, 0, 3, 2),
    (1, 8, 9, 3, 6, 2, 1, 0, 2, 1),
    (2, 7, 7, 2, 3, 3, 1, 1, 3, 3),
    (2, 9, 9, 2, 3, 3, 1, 0, 2, 3),
    (2, 8, 12, 16, 20, 1, 1, 0, 2, 2),
    (64, 28, 28, 1, 32, 3, 1, 1, 2, 2),   # the MNIST network's block
    (2, 9, 11, 3, 24, 3, 1, 1, 2, 2),     # vectors of channels and their remainders, as above
    (1, 10, 9, 1, 40, 5, 1, 2, 2, 2),
    (2, 7, 8, 2, 16, 2, 1, 0, 2, 3),
]


@pytest.mark.parametrize("shape", CONV_POOL_SHAPES, ids=str)
def test_conv_relu_pool_matches_reference(shape, assert_close):
    n, h, w, c, k, ks, stride, pad, size, pool_stride = shape
    rng = np.random.default_rng(sum(shape))
    x, wt, b = rand(rng, n, h, w, c), rand(rng, ks, ks, c, k), rand(rng, k)
    args = (stride, pad, size, pool_stride)
    y, argmax = K.conv_relu_pool_forward(x, wt, b, *args)
    y_ref, argmax_ref = R.conv_relu_pool_forward(x, wt, b, *args)
    assert_close("conv_relu_pool_forward", y, y_ref, FWD)
    assert np.array_equal(argmax, argmax_ref)
    if y.size > 50:  # the ReLU really gates something
        assert (y == 0).any() and (y > 0).any()
    dy = rand(rng, *y.shape)
    want = R.conv_relu_pool_backward(dy, x, wt, y_ref, argmax_ref, *args)
    for need_dx in (True, False):  # two paths: dx through the whole conv gradient, or the fused one
        got = K.conv_relu_pool_backward(dy, x, wt, y, argmax, *args, need_dx=need_dx)
        assert (got[0] is None) == (not need_dx)
        for name, g, r in zip(("dx", "dw", "db"), got, want):
            if g is not None:
                assert_close(f"conv_relu_pool_backward.{name}", g, r, BWD)


def test_conv_relu_pool_ties_take_the_first_and_nan_wins():
    # Zero weights: every output of the convolution is its channel's bias, so every window ties and
    # its first pixel wins; a NaN pixel makes NaN the outputs whose taps read it (rows 2-4, columns
    # 3-5), and in a window the first NaN wins. 20 channels: whole vectors and a part of one.
    x = np.zeros((2, 6, 7, 1), np.float32)
    x[1, 3, 4, 0] = np.nan
    w, b = np.zeros((3, 3, 1, 20), np.float32), np.linspace(-1, 1, 20).astype(np.float32)
    (y, argmax), (y_ref, argmax_ref) = (k.conv_relu_pool_forward(x, w, b, 1, 1, 2) for k in (K, R))
    assert np.array_equal(y, y_ref, equal_nan=True) and np.array_equal(argmax, argmax_ref)
    assert (argmax[0] == np.array([[0, 2, 4], [14, 16, 18], [28, 30, 32]])[..., None]).all()
    assert np.isnan(y[1, 1:, 1:]).all() and (argmax[1, 1, 1] == 2 * 7 + 3).all() and (argmax[1, 2, 2] == 4 * 7 + 4).all()


def test_conv_relu_pool_refuses_a_foreign_argmax():
    rng = np.random.default_rng(0)
    x, wt, b = rand(rng, 2, 6, 6, 1), rand(rng, 3, 3, 1, 2), rand(rng, 2)
    y, argmax = K.conv_relu_pool_forward(x, wt, b, 1, 1, 2)
    bad = argmax.copy()
    bad[0, 0, 0, 0] = 35  # a real index of the conv output, but outside window (0, 0)
    with pytest.raises(ShapeError, match="outside its pooling window"):
        K.conv_relu_pool_backward(y, x, wt, y, bad, 1, 1, 2)
    with pytest.raises(ShapeError, match="int32 array"):
        K.conv_relu_pool_backward(y, x, wt, y, argmax.astype(np.int64), 1, 1, 2)


# (N, H, W, C, size, stride)
POOL_SHAPES = [(1, 4, 4, 1, 2, 2), (2, 7, 5, 3, 2, 2), (3, 9, 8, 2, 3, 2), (2, 6, 11, 4, 3, 3),
               (1, 5, 5, 2, 2, 1), (64, 28, 28, 32, 2, 2)]


@pytest.mark.parametrize("shape", POOL_SHAPES, ids=str)
def test_maxpool_matches_reference(shape, assert_close):
    n, h, w, c, size, stride = shape
    rng = np.random.default_rng(sum(shape))
    x = rand(rng, n, h, w, c)
    y, argmax = K.maxpool_forward(x, size, stride)
    y_ref, argmax_ref = R.maxpool_forward(x, size, stride)
    assert y.shape == ((n, (h - size) // stride + 1, (w - size) // stride + 1, c))
    assert_close("maxpool_forward", y, y_ref, 0.0)
    assert np.array_equal(argmax, argmax_ref)
    dy = rand(rng, *y.shape)
    # stride < size: windows overlap and two gradients can land on one input element
    assert_close("maxpool_backward", K.maxpool_backward(dy, argmax, x.shape),
                 R.maxpool_backward(dy, argmax_ref, x.shape), 1e-6)


def test_maxpool_ties_take_the_first_and_nan_wins():
    x = np.zeros((1, 2, 4, 1), np.float32)
    x[0, 1, 2, 0] = np.nan
    for k in (K, R):
        y, argmax = k.maxpool_forward(x, 2)
        assert argmax.ravel().tolist() == [0, 4 + 2]  # the first zero; the NaN
        assert y[0, 0, 0, 0] == 0 and np.isnan(y[0, 0, 1, 0])


@pytest.mark.parametrize("n,i,o", [(1, 1, 1), (5, 7, 3), (64, 6272, 128), (64, 128, 10), (3, 33, 17), (1, 6272, 128),
                                   (4, 3136, 128), (8, 1031, 19), (9, 600, 7)])  # up to 8 rows: w streamed, no GEMM
                                   # (dx too: a matrix-vector product a row)
def test_dense_matches_reference(n, i, o, assert_close):
    rng = np.random.default_rng(n * i + o)
    x, w, b = rand(rng, n, i), rand(rng, i, o), rand(rng, o)
    for fused in (False, True):
        fwd = "dense_relu_forward" if fused else "dense_forward"
        y = getattr(K, fwd)(x, w, b)
        y_ref = getattr(R, fwd)(x, w, b)
        assert_close(fwd, y, y_ref, FWD)
        dy = rand(rng, n, o)
        if fused:
            got, want = K.dense_relu_backward(dy, x, w, y), R.dense_relu_backward(dy, x, w, y_ref)
        else:
            got, want = K.dense_backward(dy, x, w), R.dense_backward(dy, x, w)
        for name, g, r in zip(("dx", "dw", "db"), got, want):
            assert_close(f"{fwd.replace('forward', 'backward')}.{name}", g, r, BWD)


@pytest.mark.parametrize("n,i,o", [(1, 3136, 128), (3, 33, 17), (9, 600, 7), (64, 6272, 128)])
def test_dense_with_a_scale_matches_reference(n, i, o, assert_close):
    """y = (x @ w) * scale + b (a BatchNorm1D after the layer, in evaluation), through the few-rows
    loop and the GEMM; a scale of ones gives the plain layer's bits."""
    rng = np.random.default_rng(n + i + o)
    x, w, b, scale = rand(rng, n, i), rand(rng, i, o), rand(rng, o), rand(rng, o)  # scales of both signs
    for relu in (False, True):
        got, want = np.empty((n, o), np.float32), np.empty((n, o), np.float32)
        K.dense_forward_into(got, x, w, b, relu, scale)
        R.dense_forward_into(want, x, w, b, relu, scale)
        assert_close(f"dense_forward_into(relu={relu}, scale)", got, want, FWD)
        assert (got >= 0).all() if relu else (got < 0).any()
        plain, ones = np.empty_like(got), np.empty_like(got)
        K.dense_forward_into(plain, x, w, b, relu)
        K.dense_forward_into(ones, x, w, b, relu, np.ones(o, np.float32))
        assert np.array_equal(plain, ones)



@pytest.mark.parametrize("n,i,o,needed,skips", [
    (1, 6272, 128, 0.33, True), (1, 2000, 17, 0.2, True), (3, 1200, 17, 0.3, True), (8, 1031, 19, 0.1, True),
    (1, 600, 7, 0.55, False),  # mostly needed: every row (BLAS's GEMV)
    (1, 64, 5, 0.0, False), (2, 9, 3, 1.0, False)])  # blocks small enough to read whole (where a zero
    # meets an Inf, BLAS's GEMV may or may not make a NaN); all needed
def test_dense_of_a_few_rows_skips_the_rows_of_w_that_only_zeros_meet(n, i, o, needed, skips, assert_close):
    """Inputs after a ReLU are mostly zeros: up to 8 rows, a large block of w whose inputs are
    mostly zero reads only the rows some input needs. The sums match the reference either way;
    that the rows are skipped shows where w holds an Inf that only zeros meet: no NaN comes of it."""
    rng = np.random.default_rng(i + o + n)
    needs = rng.random(i) < needed  # the input features that some row of x has nonzero
    meets = rng.random((n, i)) < 0.7
    meets[0] = True
    x = rand(rng, n, i) * (needs & meets)
    w, b = rand(rng, i, o), rand(rng, o)
    want = {}
    for relu in (False, True):
        got, want[relu] = np.empty((n, o), np.float32), np.empty((n, o), np.float32)
        K.dense_forward_into(got, x, w, b, relu)
        R.dense_forward_into(want[relu], x, w, b, relu)
        assert_close(f"dense_forward_into(relu={relu}, zeros)", got, want[relu], FWD)
    if skips:
        inf = w.copy()
        inf[np.argmin(needs)] = np.inf
        K.dense_forward_into(got, x, inf, b, False)
        assert np.isfinite(got).all()
        assert_close("dense_forward_into(zeros meet an Inf)", got, want[False], FWD)
    x[0, 0] = np.nan  # a NaN is not a zero: it is read, and spreads to its row's outputs
    K.dense_forward_into(got, x, w, b, False)
    assert np.isnan(got[0]).all() and not np.isnan(got[1:]).any()


def test_dense_of_a_few_rows_sees_its_inputs_channel_by_channel():
    # A pooled map flattened is position by position, 32 channels each: a quarter of them alive
    # (channels 0, 4, 8, ...), every position. A sample every 12th or 24th feature would see only
    # those channels, take the block for full and read all of it (the Inf below would be a NaN).
    x = np.zeros((1, 196, 32), np.float32)
    x[..., ::4] = 1.0
    x = x.reshape(1, -1)
    w, b = np.ones((6272, 128), np.float32), np.zeros(128, np.float32)
    w[1] = np.inf  # channel 1 of the first position: never alive
    got = np.empty((1, 128), np.float32)
    K.dense_forward_into(got, x, w, b, False)
    assert np.array_equal(got, np.full((1, 128), 1568, np.float32))


@pytest.mark.parametrize("n,i,o", [(1, 128, 10), (8, 128, 10), (3, 33, 17), (2, 1, 1), (8, 64, 128), (1, 8192, 1)])
def test_dense_of_a_few_rows_and_a_small_weight_runs_on_the_calling_thread(n, i, o, assert_close, monkeypatch):
    """Up to 8 rows and 8192 elements of w (a last layer's 128 x 10), the product runs serially
    (dense._dense_forward_small): with the reference's sums, a scale and the ReLU; a NaN spreads to
    its row. One row more, or one element of w more, takes the threaded kernels."""
    from fastcnn.kernels import dense
    rng = np.random.default_rng(n + i + o)
    x, w, b, scale = rand(rng, n, i), rand(rng, i, o), rand(rng, o), rand(rng, o)
    for relu, s in ((False, None), (True, None), (False, scale), (True, scale)):
        got, want = np.empty((n, o), np.float32), np.empty((n, o), np.float32)
        K.dense_forward_into(got, x, w, b, relu, s)
        R.dense_forward_into(want, x, w, b, relu, s)
        assert_close(f"dense_forward_into(small, relu={relu}, scale={s is not None})", got, want, FWD)
    x[-1, -1] = np.nan
    K.dense_forward_into(got, x, w, b, False)
    assert np.isnan(got[-1]).all() and not np.isnan(got[:-1]).any()

    ran = []
    serial = dense._dense_forward_small
    monkeypatch.setattr(dense, "_dense_forward_small", lambda *args: ran.append(len(args[1])) or serial(*args))
    for rows, inputs in ((n, i), (9, i), (n, i + 8192 // o)):
        x, w = rand(rng, rows, inputs), rand(rng, inputs, o)
        K.dense_forward_into(np.empty((rows, o), np.float32), x, w, b, False)
    assert ran == [n]


@pytest.mark.parametrize("shape", [(1, 28, 28, 1), (3, 5, 7, 2), (2, 1025), (1,), (0,)])
def test_values_within_matches_reference(shape):
    """A batch's values as the model takes it in: finite and |value| <= limit, in one pass (blocks
    of 1024 values: a bad value first, last, and alone in a block of its own)."""
    rng = np.random.default_rng(len(shape))
    x = rand(rng, *shape)
    for limit in (10.0, 1.0, 0.5):
        assert K.values_within(x, limit) == R.values_within(x, limit)
    assert K.values_within(x, 10.0)
    if x.size == 0:
        return
    for bad in (np.nan, np.inf, -np.inf, 10.5, -10.5):
        for at in {0, x.size - 1, x.size // 2}:
            y = x.copy().reshape(-1)
            y[at] = bad
            y = y.reshape(shape)
            assert not K.values_within(y, 10.0) and not R.values_within(y, 10.0), (bad, at)
    edge = np.full(shape, -10.0, np.float32)
    assert K.values_within(edge, 10.0) and R.values_within(edge, 10.0)


def test_values_within_refuses_what_it_cannot_read():
    for x in (np.zeros((2, 3)), np.zeros((4, 3), np.float32)[::2], [0.5]):
        with pytest.raises(ShapeError, match="expected a C-contiguous float32 array"):
            K.values_within(x, 10.0)


def test_relu_matches_reference(assert_close):
    rng = np.random.default_rng(1)
    x = rand(rng, 3, 5, 7, 2)
    y = K.relu_forward(x)
    assert_close("relu_forward", y, R.relu_forward(x), 0.0)
    dy = rand(rng, *x.shape)
    assert_close("relu_backward", K.relu_backward(dy, y), R.relu_backward(dy, y), 0.0)


@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (7, 10, 3.0), (64, 10, 1.0), (5, 13, 1e4)])
def test_softmax_cross_entropy_matches_reference(n, k, scale, assert_close):
    rng = np.random.default_rng(n + k)
    logits, labels = rand(rng, n, k) * np.float32(scale), rng.integers(0, k, n)
    loss, d = K.softmax_cross_entropy(logits, labels)
    loss_ref, d_ref = R.softmax_cross_entropy(logits, labels)
    assert_close("softmax_cross_entropy.loss", loss, loss_ref, FWD)
    assert_close("softmax_cross_entropy.dlogits", d, d_ref, FWD)


@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (7, 10, 3.0), (5, 13, 1e4)])
def test_softmax_matches_reference(n, k, scale, assert_close):
    logits = rand(np.random.default_rng(n), n, k) * np.float32(scale)
    assert_close("softmax", K.softmax(logits), R.softmax(logits), FWD)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    labels = np.array([1, 2])
    loss, d = K.softmax_cross_entropy(logits, labels)
    # Row 0 puts all mass on class 0 but the label is 1: loss 2e4. Row 1 is right: loss 0.
    assert loss == pytest.approx(1e4, rel=1e-6)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)


def test_sgd_momentum_matches_reference(assert_close):
    rng = np.random.default_rng(2)
    p, v, g = rand(rng, 1001), rand(rng, 1001), rand(rng, 1001)
    p2, v2 = p.copy(), v.copy()
    K.sgd_momentum(p, v, g, 0.05, 0.9)
    R.sgd_momentum(p2, v2, g, np.float32(0.05), np.float32(0.9))
    assert_close("sgd_momentum.params", p, p2, FWD)
    assert_close("sgd_momentum.velocity", v, v2, FWD)


@pytest.mark.parametrize("k", [K, R], ids=["numba", "numpy"])
def test_bad_arguments_say_what_was_expected(k):
    x = np.zeros((2, 5, 5, 3), np.float32)
    w = np.zeros((3, 3, 3, 4), np.float32)
    b = np.zeros(4, np.float32)
    with pytest.raises(ShapeError, match="expected 3 input channels"):
        k.conv2d_forward(np.zeros((2, 5, 5, 2), np.float32), w, b)
    with pytest.raises(ShapeError, match="expected 4 dimensions"):
        k.conv2d_forward(x[0], w, b)
    with pytest.raises(ShapeError, match="smaller than the 3x3 kernel"):
        k.conv2d_forward(x[:, :2, :2], w, b)
    with pytest.raises(ShapeError, match="floating-point"):
        k.conv2d_forward(x.astype(np.int32), w, b)
    with pytest.raises(ShapeError, match="stride: expected a positive integer"):
        k.conv2d_forward(x, w, b, stride=0)
    with pytest.raises(ShapeError, match="one bias per output channel"):
        k.conv2d_forward(x, w, np.zeros(3, np.float32))
    with pytest.raises(ShapeError, match="forward output's shape"):
        k.conv2d_backward(np.zeros((2, 5, 5, 4), np.float32), x, w)
    with pytest.raises(ShapeError, match="smaller than the 6x6 pooling window"):
        k.maxpool_forward(x, 6)
    with pytest.raises(ShapeError, match="expected 7 features per row"):
        k.dense_forward(np.zeros((2, 5), np.float32), np.zeros((7, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ShapeError, match=r"labels must lie in 0\.\.9"):
        k.softmax_cross_entropy(np.zeros((2, 10), np.float32), np.array([3, 10]))
    with pytest.raises(ShapeError, match=r"expected shape \(2,\)"):
        k.softmax_cross_entropy(np.zeros((2, 10), np.float32), np.array([3]))


def test_sgd_flushes_a_velocity_that_decays_to_a_subnormal():
    """A velocity below float32's smallest normal becomes 0: subnormals cost x86 ~100 cycles
    each, and weights whose gradient stays 0 decay there within an epoch."""
    tiny = np.finfo(np.float32).tiny
    p, g = np.ones(9, np.float32), np.zeros(9, np.float32)
    v = np.array([2 * tiny, 1.5 * tiny, 4 * tiny, -2 * tiny, 1e-30, 0, 1, -1, 3 * tiny], np.float32)
    K.sgd_momentum(p, v, g, 0.1, 0.5)
    np.testing.assert_array_equal(v, np.array([tiny, 0, 2 * tiny, -tiny, 5e-31, 0, 0.5, -0.5, 1.5 * tiny], np.float32))
    assert not ((v != 0) & (np.abs(v) < tiny)).any()


@pytest.mark.parametrize("step", ["sgd", "adam"])
def test_a_nan_gradient_stays_nan_as_in_the_reference(step):
    # The subnormal flush read "keep v if abs(v) >= tiny, else 0": false for NaN, so a NaN gradient
    # became 0 and wiped the momentum, where the reference (and fit's NaN check) saw NaN.
    for k in (K, R):
        p, v, m = np.ones(4, np.float32), np.full(4, 0.5, np.float32), np.zeros(4, np.float32)
        g = np.array([0.1, np.nan, np.inf, 0], np.float32)
        if step == "sgd":
            k.sgd_momentum(p, v, g, 0.1, 0.9)
            assert np.isnan(v[1]) and np.isnan(p[1]) and not np.isfinite(p[2]) and np.isfinite(p[[0, 3]]).all(), k
        else:
            with np.errstate(invalid="ignore"):  # (the reference's Inf / Inf, for the Inf gradient)
                k.adam(p, m, v, g, 1e-3, step=3)
            assert np.isnan(m[1]) and np.isnan(p[1]) and np.isfinite(p[[0, 3]]).all(), k
