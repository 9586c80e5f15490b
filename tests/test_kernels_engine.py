"""Engine v3's kernels against the NumPy reference: every convolution path (direct, GEMM, Winograd
F(4x4, 3x3)) on the same shapes whichever the CPU's rules pick, the convolution that adds up its
batch statistics, and BatchNorm -> ReLU -> max-pool fused both ways; then the plan's fused steps
against the layers run one by one.

Tolerances (float32, relative to the largest magnitude of the reference result), as in
test_kernels.py: 1e-5 for forward passes, 5e-5 for gradients; Winograd's forward 2e-5 (its
transforms' coefficients, up to 8 and down to 1/24, cost a few bits: 7e-6 measured at 256 input
channels against a float64 reference); max-pool's argmax exact.
"""

import numpy as np
import pytest

from fakes import check_plan_runs_the_layers
from fastcnn import BatchNorm2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU
from fastcnn import kernels as K
from fastcnn.kernels import algorithms, conv, winograd
from fastcnn.kernels import reference as R

FWD, BWD, WINOGRAD = 1e-5, 5e-5, 2e-5


def rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


# (N, H, W, C_in, C_out, padding): 3x3 stride-1 convolutions, Winograd's domain. Batch 1, odd and
# non-square images, sizes that are not a multiple of the 4x4 tile, images smaller than a tile,
# padding 0 to 2, and from 1 to 256 input channels.
WINOGRAD_SHAPES = [
    (1, 5, 5, 1, 1, 1),
    (2, 7, 9, 3, 4, 0),
    (2, 8, 8, 5, 7, 2),
    (3, 13, 6, 16, 9, 1),
    (1, 1, 1, 8, 4, 1),
    (1, 2, 3, 8, 4, 1),
    (2, 14, 14, 32, 64, 1),   # the deep network's second convolution
    (2, 16, 16, 32, 64, 1),   # the cifar network's second
    (2, 8, 8, 64, 128, 1),    # and third
    (1, 9, 7, 128, 32, 1),
    (2, 4, 5, 256, 16, 1),
]


def _each_forward_path(x, w, b, pad):
    y = np.empty((x.shape[0], x.shape[1] + 2 * pad - 2, x.shape[2] + 2 * pad - 2, w.shape[3]), np.float32)
    for name, run in (("direct", lambda: conv.forward_direct_into(y, None, x, w, b, 1, pad)),
                      ("gemm", lambda: conv.forward_gemm_into(y, None, x, w, b, 1, pad)),
                      ("winograd", lambda: winograd.forward_into(y, x, w, b, pad))):
        run()
        yield name, y.copy()


def _each_weight_path(dy, x, pad):
    dw, db = np.empty((3, 3, x.shape[3], dy.shape[3]), np.float32), np.empty(dy.shape[3], np.float32)
    for name, run in (("direct", lambda: conv.weight_gradient_direct_into(dw, db, dy, x, 1, pad)),
                      ("gemm", lambda: conv.weight_gradient_gemm_into(dw, db, dy, x, 1, pad)),
                      ("winograd", lambda: winograd.weight_gradient_into(dw, db, dy, x, pad))):
        run()
        yield name, dw.copy(), db.copy()


@pytest.mark.parametrize("shape", WINOGRAD_SHAPES, ids=str)
def test_every_convolution_path_matches_the_reference(shape, assert_close):
    """Whichever path this CPU's rules pick, every path is right on every shape."""
    n, h, w, c, k, pad = shape
    rng = np.random.default_rng(sum(shape))
    x, wt, b = rand(rng, n, h, w, c), rand(rng, 3, 3, c, k) / np.float32(np.sqrt(9 * c)), rand(rng, k)
    want = R.conv2d_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), 1, pad)
    for name, y in _each_forward_path(x, wt, b, pad):
        assert_close(f"conv2d_forward ({name})", y, want, WINOGRAD if name == "winograd" else FWD)
    dy = rand(rng, *want.shape)
    _, dw_want, db_want = R.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), wt.astype(np.float64), 1,
                                            pad, need_dx=False)
    for name, dw, db in _each_weight_path(dy, x, pad):
        assert_close(f"conv2d_backward.dw ({name})", dw, dw_want, BWD)
        assert_close(f"conv2d_backward.db ({name})", db, db_want, BWD)
    # And the public kernels, on the path chosen here, with the input gradient (a Winograd
    # forward pass of dy with the weights turned around, where it fits).
    y = K.conv2d_forward(x, wt, b, 1, pad)
    assert_close("conv2d_forward", y, want, WINOGRAD)
    got = K.conv2d_backward(dy, x, wt, 1, pad)
    for name, g, r in zip(("dx", "dw", "db"), got, R.conv2d_backward(dy, x, wt, 1, pad)):
        assert_close(f"conv2d_backward.{name}", g, r, BWD)


def test_the_winograd_matrices_compute_both_correlations():
    """AT [(G g) * (BT d)] is the 4 outputs of a 3-tap correlation (forward), and with the roles
    exchanged, G^T [(AT^T h) * (BT d)] the 3 taps' gradient from 4 outputs (weight gradient)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g, h = rng.standard_normal(6), rng.standard_normal(3), rng.standard_normal(4)
        direct = np.array([d[i:i + 3] @ g for i in range(4)])
        np.testing.assert_allclose(winograd.AT @ ((winograd.G @ g) * (winograd.BT @ d)), direct, rtol=1e-12,
                                   atol=1e-12)
        taps = np.array([d[j:j + 4] @ h for j in range(3)])
        np.testing.assert_allclose(winograd.G.T @ ((winograd.AT.T @ h) * (winograd.BT @ d)), taps, rtol=1e-12,
                                   atol=1e-12)


def test_the_paths_taken_are_reported():
    rng = np.random.default_rng(1)
    K.conv2d_forward(rand(rng, 32, 6, 6, 32), rand(rng, 3, 3, 32, 8), rand(rng, 8), 1, 1)  # 128 tiles
    K.conv2d_forward(rand(rng, 1, 6, 6, 1), rand(rng, 3, 3, 1, 8), rand(rng, 8), 2, 1)
    taken = K.paths()
    assert taken["isa"] in ("avx512", "avx2", "other")
    assert taken["forward 6x6x32->8 3x3 stride 1 pad 1"] == "winograd"
    assert taken["forward 6x6x1->8 3x3 stride 2 pad 1"] == "direct"


@pytest.mark.parametrize("shape", WINOGRAD_SHAPES, ids=str)
def test_relu_and_pooling_fused_into_the_convolution(shape, assert_close):
    """conv -> ReLU (and -> 2x2 max-pool) with the epilogue applied as each tile is made. Where
    two values of a window are equal up to rounding the argmax may differ from the reference's:
    the values and the gradients routed through it are compared, not the indices."""
    n, h, w, c, k, pad = shape
    rng = np.random.default_rng(sum(shape) + 1)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, 3, 3, c, k) / np.float32(np.sqrt(9 * c)), rand(rng, k)
    assert_close("conv2d_relu_forward", K.conv2d_relu_forward(x, wt, b, 1, pad),
                 R.conv2d_relu_forward(x, wt, b, 1, pad), WINOGRAD)
    if min(h, w) + 2 * pad - 2 < 2:
        return
    y, argmax = K.conv_relu_pool_forward(x, wt, b, 1, pad, 2)
    y_ref, argmax_ref = R.conv_relu_pool_forward(x, wt, b, 1, pad, 2)
    assert_close("conv_relu_pool_forward", y, y_ref, WINOGRAD)
    assert (argmax == argmax_ref).mean() > 0.999
    dy = rand(rng, *y.shape)
    got = K.conv_relu_pool_backward(dy, x, wt, y, argmax, 1, pad, 2)
    want = R.conv_relu_pool_backward(dy, x, wt, y, argmax, 1, pad, 2)  # the same argmax
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert_close(f"conv_relu_pool_backward.{name}", g, r, BWD)


# (N, H, W, C_in, C_out, kernel, stride, padding): every path's forward with its batch statistics.
MOMENT_SHAPES = [(2, 7, 5, 3, 4, 3, 1, 1), (3, 9, 8, 2, 5, 3, 2, 0), (2, 8, 8, 9, 6, 3, 2, 1),
                 (2, 10, 9, 12, 7, 3, 1, 1), (1, 6, 6, 16, 8, 1, 1, 0), (64, 16, 16, 32, 64, 3, 1, 1),
                 (8, 10, 9, 20, 12, 3, 1, 1)]  # (Winograd with AVX2's rules too, 12 channels: part of a vector)


@pytest.mark.parametrize("shape", MOMENT_SHAPES, ids=str)
@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["centred", "offset"])
def test_conv2d_moments_forward_matches_reference(shape, offset, assert_close):
    """The statistics come from sums of y - bias in float64: a mean far from 0 loses nothing."""
    n, h, w, c, k, ks, stride, pad = shape
    rng = np.random.default_rng(sum(shape))
    x, wt, b = rand(rng, n, h, w, c), rand(rng, ks, ks, c, k), rand(rng, k) + np.float32(offset)
    y, mean, var = K.conv2d_moments_forward(x, wt, b, stride, pad)
    y_ref, mean_ref, var_ref = R.conv2d_moments_forward(x, wt, b, stride, pad)
    assert_close("conv2d_moments_forward.y", y, y_ref, WINOGRAD)
    assert_close("conv2d_moments_forward.mean", mean, mean_ref, FWD)
    assert_close("conv2d_moments_forward.var", var, var_ref, FWD)


# (N, H, W, C, pool size, pool stride): windows that tile, overlap, skip rows, leave a remainder.
BN_POOL_SHAPES = [(1, 4, 4, 1, 2, 2), (2, 9, 7, 5, 2, 2), (3, 9, 8, 4, 3, 2), (2, 8, 9, 3, 2, 1),
                  (2, 9, 9, 6, 2, 3), (2, 7, 7, 3, 3, 3), (64, 32, 32, 32, 2, 2)]


@pytest.mark.parametrize("shape", BN_POOL_SHAPES, ids=str)
def test_batchnorm_relu_pool_matches_reference(shape, assert_close):
    n, h, w, c, size, stride = shape
    rng = np.random.default_rng(sum(shape))
    x = rand(rng, n, h, w, c) * np.float32(3) + np.float32(1)
    mean, var = x.reshape(-1, c).mean(0), x.reshape(-1, c).var(0)
    weight, bias = rand(rng, c), rand(rng, c)
    weight[0] = -1.0  # a negative scale: the maximum of BatchNorm's output is then x's minimum
    bias[-1] = -2.0  # a channel the ReLU mostly closes
    y, argmax = K.batchnorm_relu_pool_forward(x, mean, var, weight, bias, 1e-5, size, stride)
    y_ref, argmax_ref = R.batchnorm_relu_pool_forward(x, mean, var, weight, bias, 1e-5, size, stride)
    assert_close("batchnorm_relu_pool_forward", y, y_ref, FWD)
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert y.size < 16 or ((y == 0).any() and (y > 0).any())  # the ReLU really gates something
    dy = rand(rng, *y.shape)
    got = K.batchnorm_relu_pool_backward(dy, x, y, argmax, weight, mean, var, 1e-5, size, stride)
    want = R.batchnorm_relu_pool_backward(dy, x, y_ref, argmax_ref, weight, mean, var, 1e-5, size, stride)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(f"batchnorm_relu_pool_backward.{name}", g, r, BWD)


# (N, H, W, C): one pixel, odd and non-square images, channels that end within a vector, cifar's end.
BN_AVGPOOL_SHAPES = [(1, 1, 1, 3), (2, 5, 7, 3), (3, 9, 4, 17), (1, 6, 6, 20), (64, 8, 8, 128)]


@pytest.mark.parametrize("shape", BN_AVGPOOL_SHAPES, ids=str)
def test_batchnorm_relu_avgpool_matches_reference(shape, assert_close):
    """BatchNorm -> ReLU -> global average pool in one pass each way, against the composition of
    the reference's three; x offset far from 0 (the statistics given, as the convolution makes them)."""
    n, h, w, c = shape
    rng = np.random.default_rng(sum(shape))
    x = rand(rng, n, h, w, c) * np.float32(3) + np.float32(100)
    mean, var = x.reshape(-1, c).mean(0), x.reshape(-1, c).var(0)
    weight, bias = rand(rng, c), rand(rng, c)
    weight[0] = -1.0  # a negative scale
    bias[-1] = -2.0  # a channel the ReLU mostly closes
    y = K.batchnorm_relu_avgpool_forward(x, mean, var, weight, bias, 1e-5)
    assert_close("batchnorm_relu_avgpool_forward", y, R.batchnorm_relu_avgpool_forward(x, mean, var, weight, bias,
                                                                                        1e-5), FWD)
    z = R.batchnorm_eval_forward(x, weight, bias, mean, var, 1e-5)
    assert n * h * w < 8 or ((z < 0).any() and (z > 0).any())  # the ReLU really gates something
    dy = rand(rng, n, c)
    got = K.batchnorm_relu_avgpool_backward(dy, x, weight, bias, mean, var, 1e-5)
    want = R.batchnorm_relu_avgpool_backward(dy, x, weight, bias, mean, var, 1e-5)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(f"batchnorm_relu_avgpool_backward.{name}", g, r, BWD)


def test_batchnorm_relu_avgpool_refuses_what_does_not_fit():
    x, ones, zeros = np.ones((2, 3, 3, 4), np.float32), np.ones(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(K.checks.ShapeError, match="mean: expected shape \\(4,\\)"):
        K.batchnorm_relu_avgpool_forward(x, np.zeros(3, np.float32), ones, ones, zeros)
    with pytest.raises(K.checks.ShapeError, match="dy: expected shape \\(2, 4\\)"):
        K.batchnorm_relu_avgpool_backward(np.ones((2, 3), np.float32), x, ones, zeros, zeros, ones)
    with pytest.raises(K.checks.ShapeError, match="x: expected 4 dimensions"):
        K.batchnorm_relu_avgpool_forward(x[0], zeros, ones, ones, zeros)


def test_batchnorm_relu_pool_keeps_a_nan_and_refuses_a_foreign_argmax():
    rng = np.random.default_rng(3)
    x = rand(rng, 1, 4, 4, 2)
    x[0, 1, 1, 0] = np.nan
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    y, argmax = K.batchnorm_relu_pool_forward(x, zeros, ones, ones, zeros)
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1 * 4 + 1
    with pytest.raises(K.checks.ShapeError, match="argmax: an index lies outside its pooling window"):
        K.batchnorm_relu_pool_backward(y, x, y, np.zeros_like(argmax) + 15, ones, zeros, ones)
    with pytest.raises(K.checks.ShapeError, match="mean: expected shape \\(2,\\)"):
        K.batchnorm_relu_pool_forward(x, np.zeros(3, np.float32), ones, ones, zeros)


# --- the plan's fused steps against the layers run one by one ---------------------------------------

@pytest.mark.parametrize("layers,steps", [
    (lambda: [Conv2D(3, 16, 3, padding=1), BatchNorm2D(16), ReLU(), MaxPool2D(2),
              Conv2D(16, 8, 3, padding=1), BatchNorm2D(8), ReLU(), Conv2D(8, 4, 3), BatchNorm2D(4),
              GlobalAvgPool2D(), Dense(4, 3)],
     ["ConvBatchNormReluPool", "ConvBatchNormRelu", "ConvBatchNorm", "GlobalAvgPool", "DenseStep"]),
    (lambda: [Conv2D(3, 8, 3, padding=1), BatchNorm2D(8), ReLU(), MaxPool2D(3, 2), Flatten(), Dense(128, 3)],
     ["ConvBatchNormReluPool", "FlattenStep", "DenseStep"]),
    (lambda: [Conv2D(3, 16, 3, padding=1), BatchNorm2D(16), ReLU(), GlobalAvgPool2D(), Dense(16, 3)],
     ["ConvBatchNormReluAvgPool", "DenseStep"]),
], ids=["conv-bn-blocks", "overlapping-pool", "conv-bn-relu-global-pool"])
def test_the_fused_batchnorm_steps_run_the_layers_as_written(layers, steps):
    x = np.random.default_rng(0).standard_normal((5, 9, 10, 3)).astype(np.float32)
    fast, ref = check_plan_runs_the_layers(layers, x, steps, forward_tol=1e-5)
    for (_, a), (_, b) in zip(fast.named_buffers(), ref.named_buffers()):  # the running statistics
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_network_ending_in_batchnorm_relu_global_pool_evaluates_with_the_same_kernels():
    """In evaluation the fused end runs the convolution, then BatchNorm -> ReLU -> global pool with
    the running statistics: as the layers one by one, on both backends."""
    from fastcnn import Sequential

    def layers():
        return [Conv2D(3, 16, 3, padding=1), BatchNorm2D(16), ReLU(), GlobalAvgPool2D(), Dense(16, 3)]

    x = np.random.default_rng(4).standard_normal((5, 9, 10, 3)).astype(np.float32)
    fast, ref = Sequential(layers(), seed=1), Sequential(layers(), seed=1, backend="numpy")
    for model in (fast, ref):
        model.train_step(x, np.arange(5) % 3)  # running statistics away from their start
        model.eval()
    assert [type(s).__name__ for s in fast.plan(x.shape[1:]).inference_steps] == ["ConvBatchNormReluAvgPool",
                                                                                  "DenseStep"]
    one_by_one = x
    for layer in ref.layers:
        layer.eval()
        one_by_one = layer.forward(one_by_one, backend="numpy")
    np.testing.assert_allclose(ref.forward(x), one_by_one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.forward(x), one_by_one, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast.predict(x), ref.predict(x), rtol=1e-5, atol=1e-6)


def test_winograd_waits_for_enough_tiles_with_haswell_blas_kernels():
    # One image of 8x8 is 4 tiles, of 14x14 16: too few for OpenBLAS's Haswell kernels on 2 threads;
    # the products in registers (AVX2 code) and OpenBLAS's AVX-512 kernels take Winograd at once.
    for shape, avx2_2, avx2_1 in [((1, 8, 8, 64), False, False), ((1, 14, 14, 32), False, True),
                                  ((8, 8, 8, 64), True, True), ((64, 14, 14, 32), True, True)]:
        assert algorithms.enough_tiles(shape, 1, "avx2", 2) == avx2_2
        assert algorithms.enough_tiles(shape, 1, "avx2", 1) == avx2_1
        assert algorithms.enough_tiles(shape, 1, "avx512", 2)
        assert algorithms.enough_tiles(shape, 1, "registers", 2)
    rng = np.random.default_rng(2)
    x, w, b = rand(rng, 1, 8, 8, 64), rand(rng, 3, 3, 64, 16), rand(rng, 16)
    want = "gemm" if algorithms.winograd_kind() == "avx2" else "winograd"
    assert algorithms.conv_forward(x.shape, w.shape, 1, 1) == want
    y, y_ref = K.conv2d_forward(x, w, b, 1, 1), R.conv2d_forward(x, w, b, 1, 1)
    np.testing.assert_allclose(y, y_ref, rtol=FWD, atol=WINOGRAD * np.abs(y_ref).max())


def test_paths_are_chosen_for_every_kind_of_product():
    assert algorithms.isa() in ("avx512", "avx2", "other") and algorithms.blas_kind() in ("avx512", "avx2")
    assert algorithms.winograd_kind() == ("registers" if algorithms.isa() == "avx2" else algorithms.blas_kind())
    kinds = {"avx512", "avx2", "registers"}
    assert {kind for kind, _ in algorithms.WINOGRAD_CHANNELS} == set(algorithms.WINOGRAD_BLOCK) == kinds
    assert set(algorithms.WINOGRAD_TILES_PER_THREAD) == kinds
    assert algorithms.paths()["winograd products"] == algorithms.winograd_kind()


@pytest.mark.parametrize("width,channels,kernel,outputs,stride", [
    (7, 1, 3, 5, 1), (8, 3, 3, 32, 1), (9, 2, 3, 17, 2), (1, 1, 3, 3, 1), (10, 1, 5, 40, 1), (6, 3, 2, 24, 2),
    (13, 2, 1, 48, 1)])
def test_the_direct_row_matches_numpy(width, channels, kernel, outputs, stride):
    # conv.conv_row on its own: tiles of 4 pixels by 2 vectors of channels, an odd vector, the
    # last pixels and channels (widths and channel counts around this CPU's vector width),
    # kernel rows of 1 to 15 taps, stride 2; only the row asked for is written.
    rng = np.random.default_rng(width * 10 + channels)
    ow = (width - 1) // stride + 1
    strip = rand(rng, kernel, (width + kernel - 1) * channels)  # padded input rows
    w, b = rand(rng, kernel, kernel, channels, outputs), rand(rng, outputs)
    out = np.full((2, ow, outputs), np.nan, np.float32)
    conv.conv_row(out, 1, strip, w.reshape(kernel, kernel * channels, outputs), b, 0, kernel, stride * channels)
    pixels = strip.reshape(kernel, width + kernel - 1, channels).astype(np.float64)
    want = np.stack([b + np.einsum("ijc,ijck->k", pixels[:, o * stride:o * stride + kernel], w) for o in range(ow)])
    np.testing.assert_allclose(out[1], want, rtol=FWD, atol=FWD * np.abs(want).max())
    assert np.isnan(out[0]).all()


def test_vectors_load_and_store_only_the_lanes_asked_for():
    # simd.py's masked loads and stores, which the direct convolution's last tiles use: lanes
    # past n are neither read (zeros) nor written; WIDTH is this CPU's (16 with AVX-512 code).
    import numba
    from fastcnn.kernels import simd

    @numba.njit
    def copy_first(src, dst, at, n):
        simd.store_first(dst, at, simd.fma(simd.load_first(src, at, n), simd.splat(2.0), simd.splat(1.0)), n)

    @numba.njit
    def lanes(src, at, n):
        v = simd.load_first(src, at, n)
        return np.array([simd.lane(v, i) for i in range(simd.WIDTH)])

    assert simd.WIDTH == (16 if algorithms.isa() == "avx512" else 8)
    src = np.arange(1, 3 * simd.WIDTH + 1, dtype=np.float32)
    for n in (0, 1, simd.WIDTH - 1, simd.WIDTH):
        dst = np.full_like(src, -7.0)
        copy_first(src, dst, 3, n)
        want = np.full_like(src, -7.0)
        want[3:3 + n] = 2 * src[3:3 + n] + 1
        np.testing.assert_array_equal(dst, want)
        np.testing.assert_array_equal(lanes(src, 3, n), np.r_[src[3:3 + n], np.zeros(simd.WIDTH - n, np.float32)])


def test_vectors_add_subtract_and_multiply_lane_by_lane():
    # simd.py's arithmetic, which Winograd's transforms use: +, - and * of two vectors and a
    # number times a vector, as NumPy's float32 gives them; the ReLU keeps a NaN a NaN.
    import numba
    from fastcnn.kernels import simd

    @numba.njit
    def arithmetic(a, b, out):
        u, v = simd.load(a, 0), simd.load(b, 0)
        for i, r in enumerate((u + v, u - v, u * v, np.float32(2.5) * u, simd.relu(u))):
            simd.store(out, i * simd.WIDTH, r)

    rng = np.random.default_rng(5)
    a, b = rand(rng, simd.WIDTH), rand(rng, simd.WIDTH)
    a[1] = np.nan
    out = np.empty(5 * simd.WIDTH, np.float32)
    arithmetic(a, b, out)
    want = np.r_[a + b, a - b, a * b, np.float32(2.5) * a, np.where(a < 0, np.float32(0), a)]
    np.testing.assert_array_equal(out, want)


# (E, block, count, C, K): Winograd's 36 products a block and fewer; rows and channels that end
# within a tile of 6 rows and within a vector, one row, one channel.
PRODUCT_SHAPES = [(36, 256, 255, 32, 64), (36, 32, 31, 64, 128), (36, 32, 32, 128, 64), (5, 7, 7, 3, 10),
                  (2, 9, 1, 1, 1), (3, 13, 11, 17, 40), (1, 6, 6, 6, 16)]


@pytest.mark.parametrize("shape", PRODUCT_SHAPES, ids=str)
def test_the_products_in_registers_match_numpy(shape):
    """products.multiply and .accumulate (Winograd's products with AVX2 code) on padded operands:
    the rows beyond count and the columns beyond the channels are left as they were (multiply)
    or stay zero (accumulate); float32 against float64, relative to the sums' magnitude."""
    from fastcnn.kernels import products
    from fastcnn.kernels.winograd import whole_vectors

    E, block, count, C, K = shape
    CL, KL = whole_vectors(C), whole_vectors(K)
    rng = np.random.default_rng(sum(shape))
    V = np.zeros((E, block, CL), np.float32)
    V[:, :count, :C] = rand(rng, E, count, C)
    U = np.zeros((E, C, KL), np.float32)
    U[..., :K] = rand(rng, E, C, K)
    M = np.full((E, block, KL), 7.0, np.float32)
    products.multiply(M, V, U, count)
    want = np.einsum("etc,eck->etk", V[:, :count, :C].astype(np.float64), U[..., :K])
    np.testing.assert_allclose(M[:, :count, :K], want, rtol=0, atol=2e-6 * np.sqrt(C) * np.abs(want).max())
    assert (M[:, count:] == 7.0).all()
    D = np.zeros((E, block, KL), np.float32)
    D[:, :count, :K] = rand(rng, E, count, K)
    P = np.zeros((E, C, KL), np.float32)
    P[..., :K] = start = rand(rng, E, C, K)
    products.accumulate(P, V, D, count)
    want = start + np.einsum("etc,etk->eck", V[:, :count, :C].astype(np.float64), D[:, :count, :K])
    np.testing.assert_allclose(P[..., :K], want, rtol=0, atol=2e-6 * np.sqrt(count) * np.abs(want).max())
    assert (P[..., K:] == 0).all()


# (rows, depth, vectors of K): rows that end within a tile of 6, one row, odd depths, one to 16 vectors.
ROWS_TIMES_SHAPES = [(1, 1, 1), (5, 9, 1), (6, 288, 2), (7, 31, 3), (13, 576, 16), (98, 32, 8), (28, 800, 4)]


@pytest.mark.parametrize("shape", ROWS_TIMES_SHAPES, ids=str)
def test_rows_times_in_registers_matches_numpy(shape):
    """products.rows_times (im2col's product of a few images, AVX2 code), and its BLAS stand-in
    where the tiles don't run, at an offset into a flat output: its rows written, the rest left as
    they were; float32 against float64."""
    from fastcnn.kernels import products, simd

    rows, depth, vectors = shape
    K = vectors * simd.WIDTH
    rng = np.random.default_rng(sum(shape))
    a, b = rand(rng, rows, depth), rand(rng, depth, K)
    want = a.astype(np.float64) @ b
    for times in (products.rows_times, conv._blas_rows_times):
        out = np.full(3 * K + rows * K + 2 * K, 7.0, np.float32)
        times(out, 3 * K, a.reshape(-1), rows, depth, b.reshape(-1), K)
        got = out[3 * K:3 * K + rows * K].reshape(rows, K)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.sqrt(depth) * np.abs(want).max())
        assert (out[:3 * K] == 7.0).all() and (out[3 * K + rows * K:] == 7.0).all()


def test_im2col_multiplies_a_few_images_in_registers_with_avx2_code_only():
    """The forward GEMM's product of a few pixels by products.py's tiles where Winograd's products
    run there (AVX2 code), else BLAS; a product of a full block always by BLAS."""
    from fastcnn.kernels import products

    registers = algorithms.winograd_products() == "registers"
    assert (conv._few_pixels_times is products.rows_times) == registers
    assert algorithms.gemm_in_registers(98) == registers  # one image of 28x28 -> 14x14, 2 threads
    assert not algorithms.gemm_in_registers(252)  # a block of 18 rows of 14 pixels


def test_winograd_tasks_take_at_least_four_tiles():
    """Each task transforms the whole weight for itself: one image of 8x8 (4 tiles) is one task."""
    import numba
    from fastcnn.kernels.jit import set_threads, threads

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    before = threads()
    set_threads(2)
    try:
        for tiles, want in [(1, (1, 1)), (4, (1, 4)), (7, (1, 7)), (8, (2, 4)), (16, (2, 8)), (1000, (2, 48))]:
            assert winograd.split(tiles, 48) == want, tiles
    finally:
        set_threads(before)


def test_winograd_multiplies_in_registers_with_avx2_code_only():
    """products.py's tiles with AVX2 code, BLAS with AVX-512's (which wins there) and without AVX2 (no FMA)."""
    from fastcnn.kernels import products

    assert algorithms.WINOGRAD_PRODUCTS == {"avx512": "blas", "avx2": "registers", "other": "blas"}
    registers = algorithms.winograd_products() == "registers"
    assert registers == (algorithms.isa() == "avx2")
    assert (winograd.multiply is products.multiply) == registers
    assert (winograd.accumulate is products.accumulate) == registers


@pytest.mark.parametrize("shape", WINOGRAD_SHAPES, ids=str)
def test_every_winograd_epilogue_on_every_shape(shape, assert_close):
    """Winograd's kernels themselves, whichever path this CPU's rules pick: the ReLU, the batch
    statistics and the ReLU and 2x2 pool done as the tiles are made, with channel counts that end
    in part of a vector (masked lanes) at both vector widths."""
    n, h, w, c, k, pad = shape
    rng = np.random.default_rng(sum(shape) + 2)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, 3, 3, c, k) / np.float32(np.sqrt(9 * c)), rand(rng, k)
    want = R.conv2d_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), 1, pad)
    y = np.empty(want.shape, np.float32)
    winograd.forward_into(y, x, wt, b, pad, relu=True)
    assert_close("winograd forward, ReLU", y, np.maximum(want, 0), WINOGRAD)
    sums = np.zeros((2, k))
    winograd.forward_into(y, x, wt, b, pad, moments=sums)
    centred, count = (want - b).reshape(-1, k), want.size // k
    assert_close("winograd forward", y, want, WINOGRAD)
    assert_close("winograd forward, mean less the bias", sums[0] / count, centred.mean(axis=0), WINOGRAD)
    assert_close("winograd forward, mean square less the bias", sums[1] / count, (centred ** 2).mean(axis=0),
                 WINOGRAD)
    oh, ow = want.shape[1:3]
    if min(oh, ow) < 2:
        return
    pooled, argmax = np.empty((n, oh // 2, ow // 2, k), np.float32), np.empty((n, oh // 2, ow // 2, k), np.int32)
    winograd.forward_relu_pool_into(pooled, argmax, x, wt, b, pad, oh, ow)
    pooled_want, argmax_want = R.conv_relu_pool_forward(x, wt, b, 1, pad, 2)
    assert_close("winograd forward, ReLU and pool", pooled, pooled_want, WINOGRAD)
    assert (argmax == argmax_want).mean() > 0.99
    winograd.forward_relu_pool_into(pooled, None, x, wt, b, pad, oh, ow)
    assert_close("winograd forward, ReLU and pool (no argmax)", pooled, pooled_want, WINOGRAD)


def test_the_kernels_thread_count_is_numbas_for_each_thread():
    # jit.threads() reads Numba's per-thread count without its locks: the same answer, in the
    # thread that set it and in one that did not (Numba's default there: every thread).
    import threading

    import numba
    from fastcnn.kernels import jit
    K.relu_forward(np.zeros(4, np.float32))  # Numba's pool is up
    seen = {}
    try:
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            jit.set_threads(n)
            assert jit.threads() == numba.get_num_threads() == n
            other = threading.Thread(target=lambda: seen.update(other=(jit.threads(), numba.get_num_threads())))
            other.start()
            other.join()
            assert seen["other"] == (numba.config.NUMBA_NUM_THREADS,) * 2
    finally:
        jit.set_threads()
