"""Photos of real MNIST test digits (tests/photos.py) are read right, and clean digits as before."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fastcnn import image
from fastcnn.errors import ImageError

from photos import CONDITIONS, accuracy_table, photo_set

PER_CONDITION = 24  # 264 photos, about 11 s


@pytest.fixture(scope="module")
def photo_table(trained_model, mnist):
    model, _ = trained_model
    _, (x_test, y_test) = mnist
    table = accuracy_table(model, photo_set(x_test, y_test, PER_CONDITION, seed=1), image.load_digit)
    for condition, (right, n) in table.items():
        print(f"{condition:20s} {right}/{n}")
    return table


def test_photos_are_read_right(photo_table):
    # Measured with the test session's model (1 epoch on 12,000 images, 96.0% on MNIST's test set):
    # 92.0% of these photos (seeds 2 and 3: 95.5%, 94.7%); the old preprocessing read 51.9%.
    # The README's 5-epoch model reads 97.1% of 1,100 such photos (tests/photos.py).
    right = sum(r for r, _ in photo_table.values())
    total = sum(n for _, n in photo_table.values())
    assert right / total >= 0.88, photo_table


@pytest.mark.parametrize("condition", [c for c in CONDITIONS if c != "tiny 10x10"])
def test_every_condition_is_read(photo_table, condition):
    right, n = photo_table[condition]
    # Seen: 83% or more of each, on seeds 1-3; the old preprocessing read none of some (red on green).
    assert right / n >= 0.75, (condition, right, n)


def test_tiny_pictures_are_read_and_say_so(photo_table, mnist):
    right, n = photo_table["tiny 10x10"]
    assert right / n >= 0.6  # 71-92% on seeds 1-3 (old: 67-83%, quietly): a 10x10 keeps little of a digit
    _, (x_test, _) = mnist
    im = Image.fromarray((255 - x_test[0, :, :, 0] * 255).astype(np.uint8)).resize((10, 10), Image.Resampling.BOX)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    with pytest.warns(image.ImageWarning, match="enlarged"):
        image.load_digit(io.BytesIO(buf.getvalue()))


def test_clean_mnist_digits_are_read_as_before(trained_model, mnist):
    model, _ = trained_model
    _, (x_test, _) = mnist
    x = x_test[:1000]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no digit of MNIST's size is called small
        through = np.stack([image.preprocess_digit(d) for d in x])
    agree = (model.predict(through).argmax(axis=1) == model.predict(x).argmax(axis=1)).mean()
    assert agree >= 0.995


def test_red_ink_on_green_paper_of_the_same_brightness():
    im = Image.new("RGB", (200, 200), (90, 170, 90))
    lum = 0.299 * 90 + 0.587 * 170 + 0.114 * 90
    ink = (240, round((lum - 0.299 * 240 - 0.114 * 40) / 0.587), 40)  # red, as bright as the paper
    ImageDraw.Draw(im).line([(100, 30), (100, 170)], fill=ink, width=14)
    grey = im.convert("L")
    assert np.ptp(np.asarray(grey)) <= 2  # blank in grey
    with pytest.raises(ImageError, match="blank"):
        image.preprocess_digit(np.asarray(grey))
    out = image.preprocess_digit(np.asarray(im))[..., 0]
    cols = np.flatnonzero(out.max(axis=0) > 0.5)
    rows = np.flatnonzero(out.max(axis=1) > 0.5)
    assert len(rows) == 20 and 1 <= len(cols) <= 5  # a "1": 20 tall, a few pixels wide


def test_a_digit_drawn_to_the_edge_is_kept():
    im = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(im).line([(50, 0), (50, 99)], fill=0, width=10)  # a 1 from edge to edge
    out = image.preprocess_digit(np.asarray(im))[..., 0]
    assert (out.max(axis=1) > 0.5).sum() == 20
