"""The kernels of the general layers and optimizers against their NumPy reference: batch norm,
dropout, average pooling (windowed and global), tanh, sigmoid, SGD with weight decay and Adam,
over shapes with batch 1, odd and non-square images, several channels, overlapping windows.

Tolerances (float32, relative to max(1, max|ref|), as in test_kernels.py): 1e-5 for forward
passes and updates, 5e-5 for gradients; dropout's masks are the reference's exactly, and so its
outputs (one float32 multiply each).
"""

import inspect

import numpy as np
import pytest

from fastcnn import ShapeError
from fastcnn import kernels as K
from fastcnn.kernels import reference as R

FWD, BWD = 1e-5, 5e-5


def rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def test_every_kernel_has_a_reference_twin_with_its_signature():
    for name in K.CHECKED + K.CORES + K.HELPERS:
        assert inspect.signature(getattr(K, name)) == inspect.signature(getattr(R, name)), name
    # and every reference function has its kernel, but the one that spells out dropout's masks
    assert set(K._TWINS) - set(K.CHECKED + K.CORES) == {"dropout_mask"}


# --- batch norm ----------------------------------------------------------------------------------

# x shapes, channels last: images (N, H, W, C) and features (N, F), batch 1 included.
# Under batchnorm.FEW_ROWS rows NumPy runs the sums, from there on the kernels: shapes of both.
BN_SHAPES = [(1, 5, 5, 1), (2, 7, 5, 3), (3, 4, 9, 16), (1, 1, 1, 4), (64, 28, 28, 32), (1, 7), (64, 128), (5, 3),
             (127, 9), (128, 9), (3, 7, 9, 5), (130, 33)]


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_batchnorm_matches_reference(shape, relu, assert_close):
    rng = np.random.default_rng(sum(shape) + relu)
    c = shape[-1]
    x = rand(rng, *shape) * np.float32(3) + np.float32(2)
    weight, bias = rand(rng, c), rand(rng, c)
    y, mean, var = K.batchnorm_forward(x, weight, bias, 1e-5, relu)
    y_ref, mean_ref, var_ref = R.batchnorm_forward(x, weight, bias, 1e-5, relu)
    assert_close("batchnorm_forward.y", y, y_ref, FWD)
    assert_close("batchnorm_forward.mean", mean, mean_ref, FWD)
    assert_close("batchnorm_forward.var", var, var_ref, FWD)
    if relu and x.size > 50:
        assert (y == 0).any() and (y > 0).any()  # the ReLU really gates something
    running_mean, running_var = rand(rng, c), np.abs(rand(rng, c)) + np.float32(0.5)
    stats = (running_mean, running_var, 1e-3, relu)
    assert_close("batchnorm_eval_forward", K.batchnorm_eval_forward(x, weight, bias, *stats),
                 R.batchnorm_eval_forward(x, weight, bias, *stats), FWD)
    dy = rand(rng, *shape)
    want = R.batchnorm_backward(dy, x, weight, bias, mean_ref, var_ref, 1e-5, relu)
    got = K.batchnorm_backward(dy, x, weight, bias, mean, var, 1e-5, relu)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(f"batchnorm_backward.{name}", g, r, BWD)
    dx, dweight, dbias = K.batchnorm_backward(dy, x, weight, bias, mean, var, 1e-5, relu, need_dx=False)
    assert dx is None and np.array_equal(dweight, got[1]) and np.array_equal(dbias, got[2])


def test_batchnorm_statistics_keep_their_digits_far_from_zero():
    """A channel whose mean is 1e4 times its spread, over the MNIST layer's 50,176 rows: the
    variance is still right to float32's precision (a one-pass float32 E[x^2] - E[x]^2 would
    give noise or a negative number here)."""
    rng = np.random.default_rng(3)
    x = (np.float32(1000) + rng.standard_normal((64, 28, 28, 2), dtype=np.float32) * np.float32(0.1))
    _, mean, var = K.batchnorm_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32))
    x64 = x.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-5)


def test_batchnorm_cores_write_the_callers_buffers():
    """The plan calls the cores with its own (N, H, W, C) buffers: they are written in place,
    and dx=None skips the input gradient."""
    rng = np.random.default_rng(4)
    x, weight, bias = rand(rng, 2, 3, 5, 4), rand(rng, 4), rand(rng, 4)
    y, mean, var = np.empty_like(x), np.empty(4, np.float32), np.empty(4, np.float32)
    K.batchnorm_forward_into(y, mean, var, x, weight, bias, 1e-5, True)
    want = K.batchnorm_forward(x, weight, bias, 1e-5, True)
    for got, w in zip((y, mean, var), want):
        np.testing.assert_array_equal(got, w)
    dy, dweight, dbias = rand(rng, *x.shape), np.empty(4, np.float32), np.empty(4, np.float32)
    K.batchnorm_backward_into(None, dweight, dbias, dy, x, weight, bias, mean, var, 1e-5, True)
    _, dweight_ref, dbias_ref = K.batchnorm_backward(dy, x, weight, bias, mean, var, 1e-5, True)
    np.testing.assert_array_equal(dweight, dweight_ref)
    np.testing.assert_array_equal(dbias, dbias_ref)


# --- dropout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (7,), (2, 5, 3, 4), (64, 128), (1000, 37)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_masks_are_the_references_exactly(shape, p):
    rng = np.random.default_rng(len(shape))
    x = rand(rng, *shape)
    key = K.dropout_key(7, 123, len(shape))
    y = K.dropout_forward(x, p, key)
    np.testing.assert_array_equal(y, R.dropout_forward(x, p, key))
    dy = rand(rng, *shape)
    dx = K.dropout_backward(dy, p, key)
    np.testing.assert_array_equal(dx, R.dropout_backward(dy, p, key))
    np.testing.assert_array_equal(dx != 0, y != 0)  # backward redraws the forward's mask
    if p == 0:
        np.testing.assert_array_equal(y, x)


def test_dropout_hash_is_splitmix64():
    """The first numbers of Vigna's splitmix64 from seed 1234567 (its published test values), as
    the reference draws them: element i is kept iff its top 53 bits, as a fraction, reach p."""
    h = np.array([6457827717110365317, 3203168211198807973, 9817491932198370423], np.uint64)
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    for p in (0.2, 0.4, 0.6, 0.8):
        np.testing.assert_array_equal(R.dropout_mask((3,), p, 1234567), u >= p)
        np.testing.assert_array_equal(K.dropout_forward(np.ones(3, np.float32), p, 1234567) != 0, u >= p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(p):
    """Over 10^6 elements the kept fraction is 1 - p within 4 standard errors, the mean of
    dropout(ones) is 1 within 4 standard errors, and other keys give other masks."""
    n = 1_000_000
    ones = np.ones(n, np.float32)
    y = K.dropout_forward(ones, p, K.dropout_key(0, 1, 0))
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) <= 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-7)
    assert abs(y.mean(dtype=np.float64) - 1) <= 4 * np.sqrt(p / (1 - p) / n)
    for other in (K.dropout_key(0, 2, 0), K.dropout_key(0, 1, 1), K.dropout_key(1, 1, 0)):
        other_kept = K.dropout_forward(ones, p, other) != 0
        # Independent masks agree on a fraction p^2 + (1 - p)^2 of the elements.
        agree = (other_kept == kept).mean()
        assert abs(agree - (p * p + (1 - p) ** 2)) <= 4 * np.sqrt(0.25 / n)
    # Neighbouring elements are independent: the kept fraction among the successors of kept ones.
    assert abs(kept[1:][kept[:-1]].mean() - (1 - p)) <= 4 * np.sqrt(p * (1 - p) / kept.sum())


def test_dropout_key_is_a_pure_function_of_seed_step_and_salt():
    assert K.dropout_key(5, 10, 2) == K.dropout_key(5, 10, 2) == R.dropout_key(5, 10, 2)
    keys = {int(K.dropout_key(seed, step, salt)) for seed in range(3) for step in range(3) for salt in range(3)}
    assert len(keys) == 27
    assert isinstance(K.dropout_key(0, 0, 0), np.uint64)


# --- average pooling -----------------------------------------------------------------------------

# (N, H, W, C, size, stride): tiling, floored, overlapping (stride < size), skipping (stride > size).
AVGPOOL_SHAPES = [(1, 4, 4, 1, 2, 2), (2, 7, 5, 3, 2, 2), (3, 9, 8, 2, 3, 2), (2, 6, 11, 4, 3, 3),
                  (1, 5, 5, 2, 2, 1), (2, 9, 7, 3, 2, 3), (1, 3, 3, 5, 3, 1), (64, 28, 28, 32, 2, 2)]


@pytest.mark.parametrize("shape", AVGPOOL_SHAPES, ids=str)
def test_avgpool_matches_reference(shape, assert_close):
    n, h, w, c, size, stride = shape
    rng = np.random.default_rng(sum(shape))
    x = rand(rng, n, h, w, c)
    y = K.avgpool_forward(x, size, stride)
    assert y.shape == (n, (h - size) // stride + 1, (w - size) // stride + 1, c)
    assert_close("avgpool_forward", y, R.avgpool_forward(x, size, stride), FWD)
    dy = rand(rng, *y.shape)
    dx = K.avgpool_backward(dy, x.shape, size, stride)
    assert_close("avgpool_backward", dx, R.avgpool_backward(dy, x.shape, size, stride), FWD)
    # Every element is written, the ones no window reads with 0 (the core is given garbage).
    out = np.full(x.shape, np.nan, np.float32)
    K.avgpool_backward_into(out, dy, size, stride)
    np.testing.assert_array_equal(out, dx)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 5, 3), (1, 28, 28, 32), (64, 7, 7, 64), (3, 2, 9, 5)], ids=str)
def test_global_avgpool_matches_reference(shape, assert_close):
    rng = np.random.default_rng(sum(shape))
    x = rand(rng, *shape) + np.float32(5)
    y = K.global_avgpool_forward(x)
    assert_close("global_avgpool_forward", y, R.global_avgpool_forward(x), FWD)
    dy = rand(rng, *y.shape)
    assert_close("global_avgpool_backward", K.global_avgpool_backward(dy, shape),
                 R.global_avgpool_backward(dy, shape), FWD)


# --- tanh, sigmoid and the leaky ReLU --------------------------------------------------------------

ACTIVATIONS = {"tanh": (), "sigmoid": (), "leaky_relu": (0.1,)}  # name: the scalars after the arrays


@pytest.mark.parametrize("shape", [(1,), (3, 5, 7, 2), (64, 128)], ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations_match_reference(shape, act, assert_close):
    rng = np.random.default_rng(len(shape))
    x, scalars = rand(rng, *shape) * np.float32(4), ACTIVATIONS[act]
    y = getattr(K, f"{act}_forward")(x, *scalars)
    assert_close(f"{act}_forward", y, getattr(R, f"{act}_forward")(x, *scalars), FWD)
    dy = rand(rng, *shape)
    assert_close(f"{act}_backward", getattr(K, f"{act}_backward")(dy, y, *scalars),
                 getattr(R, f"{act}_backward")(dy, y, *scalars), FWD)


def test_sigmoid_and_tanh_are_stable_for_huge_inputs():
    x = np.array([-1e30, -1e4, -100, -20, 0, 20, 100, 1e4, 1e30, np.inf, -np.inf], np.float32)
    for k in (K, R):
        s = k.sigmoid_forward(x)
        assert np.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
        assert s[0] == s[1] == 0 and s[4] == 0.5 and s[-3] == s[-2] == 1
        np.testing.assert_allclose(s[3], np.exp(-20.0), rtol=1e-6)
        t = k.tanh_forward(x)
        assert t[0] == -1 and t[-2] == 1 and t[4] == 0
    for k in (K, R):
        assert np.isnan(k.sigmoid_forward(np.array([np.nan], np.float32))).all()  # NaN stays seen


# --- add and concatenate (where a graph's branches meet) -------------------------------------------

@pytest.mark.parametrize("shape", [(1, 5), (3, 5, 7, 2), (2, 9, 4, 33)], ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_add_matches_reference(shape, relu, assert_close):
    rng = np.random.default_rng(len(shape) + relu)
    a, b = rand(rng, *shape), rand(rng, *shape)
    assert_close("add_forward", K.add_forward(a, b, relu), R.add_forward(a, b, relu), FWD)


@pytest.mark.parametrize("channels", [(1, 3), (4, 5, 2), (32, 7)], ids=str)
@pytest.mark.parametrize("lead", [(1,), (2, 5, 3), (3, 4, 7)], ids=str)
def test_concat_matches_reference(lead, channels, assert_close):
    rng = np.random.default_rng(sum(channels))
    xs = [rand(rng, *lead, c) for c in channels]
    y = K.concat_forward(xs)
    assert_close("concat_forward", y, R.concat_forward(xs), 0)
    offset = 0
    for x in xs:
        assert_close("concat_backward", K.concat_backward(y, offset, x.shape[-1]),
                     R.concat_backward(y, offset, x.shape[-1]), 0)
        np.testing.assert_array_equal(K.concat_backward(y, offset, x.shape[-1]), x)
        offset += x.shape[-1]


@pytest.mark.parametrize("k", [K, R], ids=["numba", "numpy"])
def test_add_and_concat_say_what_was_expected(k):
    a = np.zeros((2, 3, 3, 4), np.float32)
    with pytest.raises(ShapeError, match=r"b: expected shape \(2, 3, 3, 4\) \(a's shape\), got \(1, 3, 3, 4\)"):
        k.add_forward(a, a[:1])
    with pytest.raises(ShapeError, match=r"xs\[1\]: expected shape \(\.\.\., C\) with \(2, 3, 3\) before the channels"):
        k.concat_forward([a, a[:, :2]])
    with pytest.raises(ShapeError, match="xs: expected a non-empty list of arrays"):
        k.concat_forward(a)
    with pytest.raises(ShapeError, match=r"expected channels within dy's last axis \(4\), got \[3, 5\)"):
        k.concat_backward(a, 3, 2)


# --- optimizers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_decay", [0.0, 5e-4, 0.1])
def test_sgd_momentum_with_weight_decay_matches_reference(weight_decay, assert_close):
    rng = np.random.default_rng(5)
    p, v, g = rand(rng, 1001), rand(rng, 1001), rand(rng, 1001)
    p2, v2 = p.copy(), v.copy()
    for _ in range(3):
        K.sgd_momentum(p, v, g, 0.05, 0.9, weight_decay)
        R.sgd_momentum(p2, v2, g, np.float32(0.05), np.float32(0.9), np.float32(weight_decay))
    assert_close("sgd_momentum.params", p, p2, FWD)
    assert_close("sgd_momentum.velocity", v, v2, FWD)


@pytest.mark.parametrize("size", [1, 1001, 805_802])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_matches_reference(size, weight_decay, assert_close):
    rng = np.random.default_rng(size)
    p = rand(rng, size)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    for step in range(1, 6):
        g = rand(rng, size)
        K.adam(p, m, v, g, 1e-3, 0.9, 0.999, 1e-8, weight_decay, step)
        R.adam(p2, m2, v2, g, 1e-3, 0.9, 0.999, 1e-8, weight_decay, step)
    assert_close("adam.params", p, p2, FWD)
    assert_close("adam.m", m, m2, FWD)
    assert_close("adam.v", v, v2, FWD)


def test_adam_flushes_moments_that_decay_to_subnormals():
    """As SGD's velocity: m and v below float32's smallest normal become 0."""
    tiny = np.finfo(np.float32).tiny
    p, g = np.ones(4, np.float32), np.zeros(4, np.float32)
    m = np.array([1.05 * tiny, 20 * tiny, 0.5, -1.05 * tiny], np.float32)
    v = np.array([1.0001 * tiny, 2000 * tiny, 0.25, 0], np.float32)
    K.adam(p, m, v, g, 1e-3, step=10)
    assert m[0] == 0 and m[3] == 0 and m[1] == np.float32(0.9) * np.float32(20 * tiny)
    assert v[0] == 0 and v[1] > 0 and v[3] == 0
    assert not ((m != 0) & (np.abs(m) < tiny)).any() and not ((v != 0) & (v < tiny)).any()
    assert np.isfinite(p).all()


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 28, 28, 32), (9, 16)], ids=str)  # the parallel kernel, the few-rows one
def test_batchnorm_backward_masks_where_the_forwards_relu_did(shape):
    """The backward makes the ReLU's mask again from x, weight and bias, y not read: it is the
    forward's y > 0 exactly, pre-activations of exactly 0 and a rounding error from it included.
    Against the plain backward of dy masked by the forward's y: the two compile to different
    arithmetic (a few ulps apart), but one element masked otherwise would move its dx by
    |weight * dy| / sigma, about 0.1 here, and the sums by |dy|."""
    rng = np.random.default_rng(5)
    c = shape[-1]
    x, weight, bias = rand(rng, *shape), rand(rng, c), rand(rng, c) * np.float32(0.01)
    bias[:c // 2] = 0.0
    mean, var = x.reshape(-1, c)[0].copy(), np.abs(rand(rng, c)) + np.float32(0.5)  # row 0: exactly the bias
    y = K.batchnorm_eval_forward(x, weight, bias, mean, var, 1e-5, True)  # as ConvBatchNorm normalises
    assert (y.reshape(-1, c)[0, :c // 2] == 0).all() and (y > 0).any()
    dy = rand(rng, *shape)
    got = K.batchnorm_backward(dy, x, weight, bias, mean, var, 1e-5, True)
    want = K.batchnorm_backward(np.where(y > 0, dy, np.float32(0)), x, weight, bias, mean, var, 1e-5, False)
    for name, g, w in zip(("dx", "dweight", "dbias"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4, err_msg=name)
    y_train, mean, var = K.batchnorm_forward(x, weight, bias, 1e-5, True)  # and as the BatchNorm layer does
    got = K.batchnorm_backward(dy, x, weight, bias, mean, var, 1e-5, True)
    want = K.batchnorm_backward(np.where(y_train > 0, dy, np.float32(0)), x, weight, bias, mean, var, 1e-5, False)
    for name, g, w in zip(("dx", "dweight", "dbias"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4, err_msg=name)

@pytest.mark.parametrize("k", [K, R], ids=["numba", "numpy"])
def test_bad_arguments_say_what_was_expected(k):
    x = np.zeros((2, 5, 5, 3), np.float32)
    c3 = np.ones(3, np.float32)
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        k.batchnorm_forward(np.zeros(3, np.float32), c3, c3)
    with pytest.raises(ShapeError, match=r"one per channel of x \(2, 5, 5, 3\)"):
        k.batchnorm_forward(x, np.ones(4, np.float32), c3)
    with pytest.raises(ShapeError, match="eps: expected a finite number > 0"):
        k.batchnorm_forward(x, c3, c3, eps=0)
    with pytest.raises(ShapeError, match="at least one row"):
        k.batchnorm_forward(np.zeros((0, 3), np.float32), c3, c3)
    with pytest.raises(ShapeError, match="running_var"):
        k.batchnorm_eval_forward(x, c3, c3, c3, np.ones(2, np.float32))
    with pytest.raises(ShapeError, match="x's shape"):
        k.batchnorm_backward(x[:1], x, c3, c3, c3, c3)
    with pytest.raises(ShapeError, match=r"p: expected a value in \[0, 1\)"):
        k.dropout_forward(x, 1.0, 0)
    with pytest.raises(ShapeError, match=r"p: expected a value in \[0, 1\)"):
        k.dropout_backward(x, -0.1, 0)
    with pytest.raises(ShapeError, match="key: expected an integer"):
        k.dropout_forward(x, 0.5, -1)
    with pytest.raises(ShapeError, match="key: expected an integer"):
        k.dropout_forward(x, 0.5, 0.5)
    with pytest.raises(ShapeError, match="step: expected a non-negative integer"):
        k.dropout_key(0, -1, 0)
    with pytest.raises(ShapeError, match="smaller than the 6x6 pooling window"):
        k.avgpool_forward(x, 6)
    with pytest.raises(ShapeError, match="stride: expected a positive integer"):
        k.avgpool_forward(x, 2, 0)
    with pytest.raises(ShapeError, match="forward output's shape for x"):
        k.avgpool_backward(np.zeros((2, 3, 3, 3), np.float32), x.shape, 2)
    with pytest.raises(ShapeError, match="x_shape: expected a shape of 4 sizes"):
        k.avgpool_backward(np.zeros((2, 2, 2, 3), np.float32), (5, 5, 3), 2)
    with pytest.raises(ShapeError, match=r"\(N, C\) of x"):
        k.global_avgpool_backward(np.zeros((2, 4), np.float32), x.shape)
    with pytest.raises(ShapeError, match="expected 4 dimensions"):
        k.global_avgpool_forward(x[0])
    with pytest.raises(ShapeError, match="forward output's shape"):
        k.tanh_backward(x, x[0])
    with pytest.raises(ShapeError, match="forward output's shape"):
        k.sigmoid_backward(x, x[0])
    p = np.zeros(5, np.float32)
    with pytest.raises(ShapeError, match="step: expected a positive integer"):
        k.adam(p, p.copy(), p.copy(), p.copy(), 1e-3, step=0)
    with pytest.raises(ShapeError, match=r"beta2: expected a value in \[0, 1\)"):
        k.adam(p, p.copy(), p.copy(), p.copy(), 1e-3, beta2=1.0)


def test_bad_buffers_say_what_was_expected():
    p = np.zeros(5, np.float32)
    with pytest.raises(ShapeError, match="m: expected a contiguous float32 buffer"):
        K.adam(p, np.zeros(5), p.copy(), p.copy(), 1e-3)
    with pytest.raises(ShapeError, match=r"grads: expected shape \(5,\)"):
        K.adam(p, p.copy(), p.copy(), np.zeros(4, np.float32), 1e-3)
    with pytest.raises(ShapeError, match="velocity: expected a contiguous float32 buffer"):
        K.sgd_momentum(p, np.zeros(10, np.float32)[::2], p.copy(), 0.1, 0.9, 0.0)
