"""Colour pictures end to end, for a CIFAR-10 model: reading a photo (load_photo), choosing the
loader from the model's input, and predict, evaluate, the plots and serve with a colour model."""

import io

import numpy as np
import pytest
from PIL import Image

import fastcnn
from fastcnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, data, image, inference
from fastcnn.cli import main
from fastcnn.errors import ImageError, ShapeError
from fastcnn.architectures import mnist_network

from test_cifar import fake_batches, official_archive, put_archive
from test_image import bilevel_png

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def banded(size, bands):
    """An RGB picture of ``size`` (w, h) split into equal horizontal bands of the given colours."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    for k, colour in enumerate(bands):
        a[k * h // len(bands):(k + 1) * h // len(bands)] = colour
    return Image.fromarray(a)


def save(im, path, **kwargs):
    im.save(path, **kwargs)
    return path


# ---------------------------------------------------------------- load_photo


def test_a_photo_becomes_32x32_rgb_in_0_1(tmp_path):
    out = image.load_photo(save(banded((64, 64), [RED, GREEN]), tmp_path / "p.png"))
    assert out.shape == (32, 32, 3) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    # Red stays red, on top; Lanczos blends only the three rows either side of the edge.
    np.testing.assert_array_equal(out[:13], np.broadcast_to([1, 0, 0], (13, 32, 3)))
    np.testing.assert_array_equal(out[-13:], np.broadcast_to([0, 1, 0], (13, 32, 3)))


@pytest.mark.parametrize("size", [(300, 100), (100, 300)])
def test_the_centre_square_is_kept(tmp_path, size):
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = BLUE
    s = min(w, h)
    top, left = (h - s) // 2, (w - s) // 2
    a[top:top + s, left:left + s] = RED  # the centre square is red, what the crop drops is blue
    out = image.load_photo(save(Image.fromarray(a), tmp_path / "wide.png"))
    np.testing.assert_allclose(out, np.broadcast_to([1, 0, 0], (32, 32, 3)), atol=1 / 255)


def test_a_large_photo_is_averaged_not_aliased(tmp_path):
    # A fine black and white checkerboard, 1-pixel squares: shrunk 50 times it is an even grey.
    a = ((np.arange(1600)[:, None] + np.arange(1600)) % 2 * 255).astype(np.uint8)
    out = image.load_photo(save(Image.fromarray(a).convert("RGB"), tmp_path / "big.png"))
    assert np.abs(out - 0.5).max() < 0.02


def test_exif_orientation_is_applied(tmp_path):
    upright = banded((60, 60), [RED, GREEN, BLUE])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": stored lying on its side
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    out = image.load_photo(save(stored, tmp_path / "r.jpg", exif=exif, quality=95))
    assert out[2, 16].argmax() == 0 and out[16, 16].argmax() == 1 and out[-3, 16].argmax() == 2  # red on top


def test_transparency_is_white_and_greyscale_and_palettes_are_rgb(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent black ...
    rgba.paste((255, 0, 0, 255), (0, 0, 40, 20))  # ... under an opaque red top half
    out = image.load_photo(save(rgba, tmp_path / "a.png"))
    np.testing.assert_allclose(out[:13], np.broadcast_to([1, 0, 0], (13, 32, 3)))
    np.testing.assert_allclose(out[-13:], 1.0)  # white, not black
    grey = image.load_photo(save(Image.new("L", (40, 40), 51), tmp_path / "g.png"))
    np.testing.assert_allclose(grey, 0.2, atol=1e-6)
    palette = banded((40, 40), [RED, BLUE]).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    np.testing.assert_allclose(image.load_photo(save(palette, tmp_path / "p.gif")),
                               image.load_photo(save(banded((40, 40), [RED, BLUE]), tmp_path / "rgb.png")), atol=1e-6)
    wide = Image.fromarray(np.full((40, 40), 13107, np.uint16))  # 16-bit grey 0.2
    np.testing.assert_allclose(image.load_photo(save(wide, tmp_path / "16.png")), 0.2, atol=1e-3)


def test_a_tiny_picture_is_enlarged_and_a_file_object_works(tmp_path):
    path = save(banded((8, 8), [GREEN, BLUE]), tmp_path / "tiny.png")
    out = image.load_photo(path)
    assert out.shape == (32, 32, 3) and out[0, 0].argmax() == 1 and out[-1, 0].argmax() == 2
    np.testing.assert_array_equal(image.load_photo(io.BytesIO(path.read_bytes())), out)


def test_bad_files_are_image_errors(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a picture" * 10)
    cut = save(banded((200, 200), [RED, GREEN]), tmp_path / "cut.png")
    cut.write_bytes(cut.read_bytes()[:100])
    huge = tmp_path / "huge.png"
    huge.write_bytes(bilevel_png(7000, 7000))
    for path, match in [(junk, "junk.jpg: not an image file"), (cut, "cut.png: cannot read"),
                        (tmp_path / "nope.png", "nope.png: no such file"), (huge, "huge.png: image of 7000x7000")]:
        with pytest.raises(ImageError, match=match):
            image.load_photo(path)
    with pytest.raises(ImageError, match="expected a path or a binary file"):
        image.load_photo(3)


def test_save_preprocessed_writes_an_rgb_png(tmp_path):
    out = image.load_photo(save(banded((64, 64), [RED, GREEN]), tmp_path / "p.png"))
    image.save_preprocessed(out, tmp_path / "seen.png")
    with Image.open(tmp_path / "seen.png") as im:
        assert im.mode == "RGB" and im.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(im), np.round(out * 255).astype(np.uint8))
    for bad in (np.zeros((32, 32, 4)), np.zeros((28, 28, 3)), np.zeros((32, 32))):
        with pytest.raises(ShapeError, match=r"\(32, 32, 3\) photo"):
            image.save_preprocessed(bad, tmp_path / "bad.png")


# ---------------------------------------------------------------- the loader follows the model


def colour_model(seed=0):
    return Sequential([Conv2D(3, 8, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(16 * 16 * 8, 10)], seed=seed)


def test_the_loader_follows_the_models_input():
    assert inference.picture_loader(colour_model()) is image.load_photo
    assert inference.picture_loader(mnist_network(seed=0)) is image.load_digit
    assert inference.picture_loader(Sequential([Flatten(), Dense(784, 10)])) is image.load_digit  # says nothing
    stated = Sequential([Flatten(), Dense(32 * 32 * 3, 10)], input_shape=(32, 32, 3))  # its input says it
    assert inference.input_channels(stated) == 3 and inference.picture_loader(stated) is image.load_photo
    with pytest.raises(ShapeError, match="takes 2-channel images"):
        inference.picture_loader(Sequential([Conv2D(2, 4, 3), Flatten(), Dense(26 * 26 * 4, 10)]))


def test_predict_pictures_with_a_colour_model(tmp_path):
    paths = [save(banded((50, 40), [RED, GREEN]), tmp_path / "a.png"), save(banded((40, 50), [BLUE]), tmp_path / "b.png")]
    probs, images = inference.predict_pictures(colour_model(), paths)
    assert probs.shape == (2, 10) and images.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(images[1], image.load_photo(paths[1]))


# ---------------------------------------------------------------- the command line


@pytest.fixture
def colour_model_file(tmp_path):
    def make(dataset="cifar10"):
        path = tmp_path / f"colour-{dataset}.npz"
        training = None if dataset is None else {"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0],
                                                  "history": [], "settings": {"dataset": dataset}}
        fastcnn.save(path, colour_model(), None, training)
        return str(path)
    return make


@pytest.mark.parametrize("recorded", ["cifar10", None])  # no record: a colour model is CIFAR-10's
def test_predict_names_the_class(tmp_path, colour_model_file, capsys, recorded):
    model = colour_model_file(recorded)
    photos = [str(save(banded((80, 60), [RED, GREEN]), tmp_path / "car.jpg")),
              str(save(banded((60, 80), [BLUE, GREEN]), tmp_path / "cat.png"))]
    assert main(["predict", model, *photos, "--save-preprocessed"]) == 0
    out = capsys.readouterr().out
    probs, _ = inference.predict_pictures(fastcnn.load(model), photos)
    names = data.CLASS_NAMES["cifar10"]
    for path, p in zip(photos, probs):
        k = int(p.argmax())
        assert f"{path}: {names[k]} ({p[k]:.1%})\n" in out and "digit" not in out
        assert f"the 32x32 it saw: {path}.32x32.png" in out
        with Image.open(f"{path}.32x32.png") as im:
            assert im.mode == "RGB" and im.size == (32, 32)
    assert "airplane: " in out and "truck: " in out and out.count("%") == 11 * len(photos)


def test_dataset_choices_include_cifar10(tmp_path, colour_model_file, capsys):
    photo = str(save(banded((40, 40), [RED]), tmp_path / "x.png"))
    assert main(["predict", colour_model_file("cifar10"), photo, "--dataset", "fashion-mnist"]) == 0
    captured = capsys.readouterr()
    assert "trained on cifar10" in captured.err and "Trouser: " in captured.out


@pytest.fixture
def cifar_dir(tmp_path, fake_checksums):
    files, splits = fake_batches()
    put_archive(tmp_path / "data", fake_checksums, official_archive(files))
    return tmp_path / "data", splits["test"]


def test_evaluate_a_colour_model_with_plots(tmp_path, colour_model_file, cifar_dir, capsys):
    root, (x, y) = cifar_dir
    errors, confusion = tmp_path / "errors.png", tmp_path / "confusion.png"
    assert main(["evaluate", colour_model_file(), "--data-dir", str(root),
                 "--plot", str(errors), "--confusion", str(confusion)]) == 0
    out = capsys.readouterr().out
    result = inference.evaluate(colour_model(), x / np.float32(255), y)
    assert f"test accuracy {result['accuracy']:.4f} on {len(y)} cifar10 images" in out
    assert "  automobile  " in out and "       truck  " in out
    with Image.open(errors) as im:
        a = np.asarray(im.convert("RGB")).astype(int)
        assert im.size[0] > 600
        assert (np.abs(a[..., 0] - a[..., 1]) > 60).mean() > 0.05  # the wrong guesses are drawn in colour
    with Image.open(confusion) as im:
        assert im.size[0] > 500 and im.size[1] > 500


def test_plot_errors_keeps_greyscale_grey(tmp_path):
    from fastcnn.plots import plot_errors
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    y, pred = np.zeros(8, int), np.ones(8, int)
    plot_errors(tmp_path / "grey.png", x, y, pred, np.full((8, 10), 0.1), data.CLASS_NAMES["mnist"])
    a = np.asarray(Image.open(tmp_path / "grey.png").convert("RGB")).astype(int)
    pixels = a[(a.max(axis=2) - a.min(axis=2)) > 0]  # all but the grey: the red titles only
    assert len(pixels) < 0.05 * a[..., 0].size


def test_plot_errors_titles_a_model_with_no_mistakes_and_a_single_row(tmp_path, monkeypatch):
    """No wrong guesses: said so (not "the first 0"); one row of them: the title above the images'."""
    import matplotlib.figure

    from fastcnn.plots import plot_errors
    titles = []
    suptitle = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda fig, t, **kw: titles.append(t) or suptitle(fig, t, **kw))
    x = np.random.default_rng(0).uniform(0, 1, (15, 8, 8, 3)).astype(np.float32)
    y = np.arange(15) % 3
    plot_errors(tmp_path / "none.png", x, y, y, np.full((15, 3), 1 / 3), ["a", "b", "c"])
    wrong = y.copy()
    wrong[:4] = (wrong[:4] + 1) % 3
    plot_errors(tmp_path / "four.png", x, y, wrong, np.full((15, 3), 1 / 3), ["a", "b", "c"], most=36)
    plot_errors(tmp_path / "two.png", x, y, wrong, np.full((15, 3), 1 / 3), ["a", "b", "c"], most=2)
    assert titles == ["no wrong guesses among 15", "4 wrong of 15", "4 wrong of 15; the first 2"]
    for name in ("none", "four", "two"):
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.format == "PNG"


# ---------------------------------------------------------------- serve


def test_serve_reads_photos_for_a_colour_model(tmp_path):
    pytest.importorskip("flask")
    from fastcnn import serve
    model = colour_model()
    client = serve.create_app(model, data.CLASS_NAMES["cifar10"]).test_client()
    page = client.get("/").data
    assert b'<body data-input="photo">' in page
    buf = io.BytesIO()
    banded((90, 60), [RED, GREEN]).save(buf, format="JPEG")
    answer = client.post("/predict", data=buf.getvalue()).json
    seen = np.array(answer["image"])
    assert seen.shape == (32, 32, 3) and answer["classes"] == list(data.CLASS_NAMES["cifar10"])
    assert seen[2, 16].argmax() == 0 and seen[-3, 16].argmax() == 1
    p = model.predict(image.load_photo(io.BytesIO(buf.getvalue()))[None])[0]
    assert answer["prediction"] == int(p.argmax()) and np.allclose(answer["probabilities"], p, atol=1e-6)
    bad = client.post("/predict", data=b"GIF89a not really")
    assert bad.status_code == 400 and "not an image file" in bad.json["error"]
    digits = serve.create_app(mnist_network(seed=0)).test_client()
    assert b'<body data-input="digit">' in digits.get("/").data
