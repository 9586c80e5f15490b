"""The augmentation kernel (kernels/augment.py) against its NumPy twin, on several shapes, with
float32 tolerance 1e-5 of max(1, max |ref|) (the kernel sums four float32 products in float64, the
reference in float64 throughout); its exact cases (whole-pixel crops and flips are copies); its
draws (the same key, the same maps); and in fit (``augment=``): training images only, each epoch
its own maps, and a resumed run bit-identical to an uninterrupted one.
"""

import numpy as np
import pytest

import fastcnn

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


def tiny_resnet(seed=0):
    from fastcnn.architectures import resnet
    return fastcnn.Model(*resnet((12, 12, 1), 4, width=4), seed=seed)


def bars(n, seed):
    """Images whose class is where a bright bar lies: moved a pixel or two, still learnable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.uniform(0, 0.2, (n, 12, 12, 1)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 1 + 3 * label:3 + 3 * label, 2:10, 0] = 1
    return x, y


def test_fit_augments_the_training_images_only_each_epoch_anew(monkeypatch):
    from fastcnn.kernels import compiled
    seen = []
    real = compiled.augment_into

    def spy(out, x, params):
        if x.shape[1:] == (12, 12, 1):  # not compiling's rehearsal, on a 2x2 picture
            seen.append(params.copy())
        real(out, x, params)
    monkeypatch.setattr(compiled, "augment_into", spy)
    model = tiny_resnet()
    x, y = bars(70, 0)
    fastcnn.fit(model, fastcnn.SGD(model, 0.05), (x, y), bars(20, 1), epochs=2, batch_size=32, seed=3,
                augment="crop", progress=False)
    epochs = [np.concatenate(seen[:3]), np.concatenate(seen[3:])]  # 70 images: batches of 32, 32, 6
    assert len(seen) == 6 and all(len(e) == 70 for e in epochs)  # validation (20 images) is not augmented
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(epochs[1], fastcnn.Augment(pad=1).params(3, 1, 0, 70))  # 12 // 8 = 1 pixel


def test_a_resumed_run_augments_as_the_uninterrupted_one_did(tmp_path):
    def run(epochs, out, saved=None):
        model = saved.model if saved else tiny_resnet(seed=1)
        opt = saved.optimizer if saved else fastcnn.SGD(model, 0.05, momentum=0.9)
        fastcnn.fit(model, opt, bars(80, 0), epochs=epochs, batch_size=32, seed=4, out=out,
                    training=saved.training if saved else None, progress=False, checkpoint_every=2,
                    augment=fastcnn.Augment(pad=1, flip=True, shift=0.5, degrees=5.0))
        return model
    straight = run(2, tmp_path / "a.npz")
    run(1, tmp_path / "b.npz")
    resumed = run(2, tmp_path / "b.npz", fastcnn.load_checkpoint(tmp_path / "b.npz"))
    assert np.array_equal(straight.parameters, resumed.parameters)
    unaugmented = tiny_resnet(seed=1)
    fastcnn.fit(unaugmented, fastcnn.SGD(unaugmented, 0.05, momentum=0.9), bars(80, 0), epochs=2, batch_size=32,
                seed=4, progress=False)
    assert not np.array_equal(straight.parameters, unaugmented.parameters)


def test_presets_recipes_and_bad_settings():
    from fastcnn.augmentation import augmentation
    from fastcnn.errors import ConfigError
    from fastcnn.settings import Settings
    assert augmentation("crop", (28, 28, 1)) == fastcnn.Augment(pad=3)
    assert augmentation("crop-flip", (32, 32, 3)) == fastcnn.Augment(pad=4, flip=True)
    assert augmentation("none", (28, 28, 1)) is None and augmentation(None, (5,)) is None
    resolved = {d: Settings(model="resnet", dataset=d).resolved().augment
                for d in ("mnist", "fashion-mnist", "cifar10")}
    assert resolved == {"mnist": "shift-rotate", "fashion-mnist": "crop-flip", "cifar10": "crop-flip"}
    assert Settings(model="deep").resolved().augment == "none"
    assert Settings(model="deep", augment="crop").resolved().augment == "crop"
    with pytest.raises(ConfigError, match="augment: expected None, a fastcnn.Augment or one of none, crop"):
        augmentation("rotate", (28, 28, 1))
    with pytest.raises(ConfigError, match=r"moves images \(H, W, C\); the examples have shape \(10,\)"):
        augmentation("crop", (10,))
    with pytest.raises(ConfigError, match="pad: expected a non-negative integer, got -1"):
        fastcnn.Augment(pad=-1)
    with pytest.raises(ConfigError, match=r"degrees: expected degrees in \[0, 180\]"):
        fastcnn.Augment(degrees=400)
    # a crop or shift as large as the image was accepted: some images then trained as all zeros
    with pytest.raises(ConfigError, match=r"augment: Augment\(pad=30.* moves a 28x28 image by up to 30 pixels, so "
                                          r"some would show nothing of it; expected pad and shift under 28"):
        augmentation(fastcnn.Augment(pad=30), (28, 28, 1))
    with pytest.raises(ConfigError, match=r"by up to 12 pixels.* under 12"):
        augmentation(fastcnn.Augment(shift=12.0), (12, 20, 3))
    assert augmentation(fastcnn.Augment(pad=27, shift=27.5), (28, 28, 1)).pad == 27
