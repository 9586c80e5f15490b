"""The augmentation kernel (kernels/augment.py; not yet wired into fit: issue "Modern CNNs") against
its NumPy twin, on several shapes, with float32 tolerance 1e-5 of max(1, max |ref|) (the kernel
sums four float32 products in float64, the reference in float64 throughout); its exact cases
(whole-pixel crops and flips are copies); and its draws (the same key, the same maps).
"""

import numpy as np
import pytest

from fastcnn.kernels.augment import augment, augment_params
from fastcnn.kernels import reference as R
from fastcnn.kernels.checks import ShapeError

SHAPES = [(1, 5, 5, 1), (3, 7, 9, 2), (4, 28, 28, 1), (2, 32, 32, 3)]  # batch 1, odd, non-square, channels


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["crops and flips", "shifts and rotations"])
def test_the_kernel_matches_the_reference(shape, kind):
    rng = np.random.default_rng(len(shape) + shape[1])
    x = rng.random(shape, dtype=np.float32)
    if kind == "crops and flips":
        params = augment_params(7, 0, shape[0], pad=2, flip=True, shift=0.0, degrees=0.0)
    else:
        params = augment_params(7, 0, shape[0], pad=0, flip=False, shift=1.5, degrees=15.0)
    got, want = augment(x, params), R.augment(x, params)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_whole_pixel_crops_and_flips_are_exact_copies():
    x = np.random.default_rng(0).random((2, 6, 8, 3), dtype=np.float32)
    params = np.zeros((2, 6))
    params[:, 0] = 1.0  # cos 0: no rotation
    params[0, 2:4] = (1, -2)  # down 1, left 2: out[i, j] = x[i + 1, j - 2]
    params[1, 4] = 1  # flipped
    out = augment(x, params)
    assert np.array_equal(out[0, :5, 2:], x[0, 1:, :6]) and not out[0, 5:].any() and not out[0, :, :2].any()
    assert np.array_equal(out[1], x[1, :, ::-1])


def test_the_maps_are_drawn_from_the_key_and_stay_in_bounds():
    a = augment_params(3, 100, 50, pad=4, flip=True, shift=2.0, degrees=10.0)
    assert np.array_equal(a, augment_params(3, 100, 50, pad=4, flip=True, shift=2.0, degrees=10.0))
    assert np.array_equal(a[10:], augment_params(3, 110, 40, pad=4, flip=True, shift=2.0, degrees=10.0))
    assert not np.array_equal(a, augment_params(4, 100, 50, pad=4, flip=True, shift=2.0, degrees=10.0))
    angles = np.degrees(np.arctan2(a[:, 1], a[:, 0]))
    assert np.abs(angles).max() <= 10 and np.abs(a[:, 2:4]).max() <= 4 + 2
    assert set(np.unique(a[:, 4])) == {0.0, 1.0}


def test_bad_arguments_are_refused():
    x = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(ShapeError, match=r"params: expected shape \(2, 6\)"):
        augment(x, np.zeros((3, 6)))
    with pytest.raises(ShapeError, match="x: expected 4 dimensions"):
        augment(x[0], np.zeros((2, 6)))
