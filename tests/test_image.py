"""Tests of fastcnn.image: reading a user's picture and reshaping it like an MNIST digit."""

import contextlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps
from scipy import ndimage

from fastcnn import data, image
from fastcnn.errors import ImageError, ShapeError


def draw_digit(size=(300, 200), ink=0, paper=255, mode="L"):
    """A thick "7"-like stroke and a ring, off-centre, dark on light by default."""
    im = Image.new(mode, size, paper)
    d = ImageDraw.Draw(im)
    d.line([(40, 30), (110, 30), (70, 150)], fill=ink, width=12)
    d.ellipse([(90, 80), (140, 160)], outline=ink, width=10)
    return im


def bbox(a, threshold=0.05):
    rows = np.flatnonzero((a > threshold).any(axis=1))
    cols = np.flatnonzero((a > threshold).any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def centre_of_mass(a):
    ys, xs = np.indices(a.shape)
    return (ys * a).sum() / a.sum(), (xs * a).sum() / a.sum()


def check_mnist_like(out):
    assert out.shape == (28, 28, 1) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() == pytest.approx(1.0)
    a = out[..., 0]
    assert a[0, 0] == a[0, -1] == a[-1, 0] == a[-1, -1] == 0
    assert a[:3].max() == 0 and a[-3:].max() == 0  # MNIST keeps a 4-pixel black margin
    r0, r1, c0, c1 = bbox(a)
    assert max(r1 - r0 + 1, c1 - c0 + 1) in (19, 20, 21)
    cy, cx = centre_of_mass(a)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def save(im, path, **kwargs):
    im.save(path, **kwargs)
    return path


def test_dark_ink_on_white(tmp_path):
    out = image.load_digit(save(draw_digit(), tmp_path / "seven.png"))
    check_mnist_like(out)
    # The drawing is taller (130 px) than wide (100 px), so height is the side scaled to 20.
    r0, r1, c0, c1 = bbox(out[..., 0])
    assert r1 - r0 + 1 in (19, 20, 21) and c1 - c0 + 1 < 18


def test_white_ink_on_black_matches_inverted(tmp_path):
    dark = image.load_digit(save(draw_digit(), tmp_path / "dark.png"))
    light = image.load_digit(save(draw_digit(ink=255, paper=0), tmp_path / "light.png"))
    check_mnist_like(light)
    np.testing.assert_allclose(light, dark, atol=1e-3)


def test_preprocess_array_uint8_and_float_agree():
    grey = np.asarray(draw_digit())
    from_uint8 = image.preprocess_digit(grey)
    from_float = image.preprocess_digit(grey.astype(np.float64)[..., None] / 255)
    check_mnist_like(from_uint8)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-5)


def test_grey_background_and_grey_ink():
    # A dim photo: grey paper (170) and grey ink (90); the background must still come out black.
    out = image.preprocess_digit(np.asarray(draw_digit(ink=90, paper=170)))
    check_mnist_like(out)
    np.testing.assert_allclose(out, image.preprocess_digit(np.asarray(draw_digit())), atol=1e-3)


def test_small_digit_is_scaled_up():
    im = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(im).rectangle([(5, 10), (9, 19)], fill=0)  # 5 wide, 10 tall
    with pytest.warns(image.ImageWarning, match="only 10 pixels tall or wide: enlarged 2.0 times"):
        out = image.preprocess_digit(np.asarray(im))
    r0, r1, c0, c1 = bbox(out[..., 0], 0.5)
    assert r1 - r0 + 1 == 20 and c1 - c0 + 1 == 10
    cy, cx = centre_of_mass(out[..., 0])
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_lopsided_digit_keeps_all_ink():
    # All the mass at the top of a tall shape: centring it exactly would push the tail out.
    im = Image.new("L", (100, 100), 0)
    d = ImageDraw.Draw(im)
    d.rectangle([(10, 10), (90, 30)], fill=255)
    d.rectangle([(48, 30), (52, 90)], fill=255)
    a = image.preprocess_digit(np.asarray(im))[..., 0]
    r0, r1, c0, c1 = bbox(a)
    assert r1 - r0 + 1 == 20 and c1 - c0 + 1 == 20  # nothing cut off at the bottom edge
    assert a[r1, 13:16].max() > 0.5  # the end of the tail is there
    cy, cx = centre_of_mass(a)
    assert abs(cx - 14) <= 0.5 and 11 < cy < 14  # as central as the field allows


def test_rgba_transparent_background(tmp_path):
    # Transparent pixels hold black RGB: read naively they would be all ink.
    grey = draw_digit()
    alpha = ImageOps.invert(grey)  # opaque where the ink is
    im = Image.merge("RGBA", [Image.new("L", grey.size, 0)] * 3 + [alpha])
    out = image.load_digit(save(im, tmp_path / "rgba.png"))
    check_mnist_like(out)
    np.testing.assert_allclose(out, image.load_digit(save(grey, tmp_path / "grey.png")), atol=2e-2)


def test_palette_with_transparency(tmp_path):
    im = draw_digit(mode="P", ink=1, paper=0)
    im.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # both entries black ...
    im.info["transparency"] = 0  # ... but entry 0, the paper, is transparent
    out = image.load_digit(save(im, tmp_path / "p.png", transparency=0))
    check_mnist_like(out)


def test_rgb_jpeg_and_file_object(tmp_path):
    im = draw_digit().convert("RGB")
    path = save(im, tmp_path / "d.jpg", quality=90)
    out = image.load_digit(path)
    check_mnist_like(out)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(image.load_digit(f), out)
    buf = io.BytesIO(path.read_bytes())
    np.testing.assert_array_equal(image.load_digit(buf), out)


def test_exif_orientation(tmp_path):
    upright = draw_digit()
    # Stored rotated, with the EXIF tag (6: rotate 90 clockwise to view) that undoes it.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = image.load_digit(save(stored, tmp_path / "rotated.png", exif=exif))
    reference = image.load_digit(save(upright, tmp_path / "upright.png"))
    np.testing.assert_allclose(out, reference, atol=1e-5)
    # Without honouring the tag the digit would lie on its side: wider than tall.
    r0, r1, c0, c1 = bbox(out[..., 0])
    assert r1 - r0 > c1 - c0


def test_blank_image(tmp_path):
    with pytest.raises(ImageError, match="no digit found: the image is blank") as e:
        image.load_digit(save(Image.new("L", (50, 50), 255), tmp_path / "blank.png"))
    assert "blank.png" in str(e.value)
    # Faint noise is not a digit either.
    noise = np.random.default_rng(0).integers(250, 256, size=(50, 50)).astype(np.uint8)
    with pytest.raises(ImageError, match="blank"):
        image.preprocess_digit(noise)
    # A digit too faint to tell from the paper (values 2 to 15 of 255) was called blank, which it is not.
    faint = np.full((60, 60), 2, np.uint8)
    faint[15:45, 28:32] = 15
    with pytest.raises(ImageError, match=r"the image is blank \(or too faint: nothing in it differs from the paper by "
                                         r"10% of the full range\)"):
        image.preprocess_digit(faint)


def test_non_image_file(tmp_path):
    path = tmp_path / "random.png"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ImageError, match="random.png"):
        image.load_digit(path)


def test_truncated_image(tmp_path):
    path = save(draw_digit(), tmp_path / "cut.png")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError, match="cut.png"):
        image.load_digit(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_picture_with_pixels_that_are_not_numbers_is_refused_by_name(tmp_path, bad):
    a = np.asarray(draw_digit(), np.float32) / 255
    a[5, 7] = bad
    path = tmp_path / "scan.tiff"
    Image.fromarray(a, "F").save(path)
    with pytest.raises(ImageError, match=r"scan\.tiff: pixels that are not numbers"):
        image.load_digit(path)
    a[5, 7] = 1
    Image.fromarray(a, "F").save(path)
    check_mnist_like(image.load_digit(path))


@pytest.mark.parametrize("shape, f", [((9, 9), 3), ((10, 14), 3), ((7, 5), 2), ((40, 33), 4)])
def test_block_means_are_the_means_of_whole_blocks(shape, f):
    a = np.random.default_rng(0).random(shape, dtype=np.float32)
    h, w = shape[0] // f * f, shape[1] // f * f
    expected = a[:h, :w].astype(np.float64).reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    got = image._block_mean(a, f)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file") as e:
        image.load_digit(tmp_path / "nope.png")
    assert "nope.png" in str(e.value)


def bilevel_png(width, height):
    """A valid all-black 1-bit PNG, tiny on disk, built without allocating the pixels."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + bytes((width + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [7000, 10000])  # over our limit; 10000^2 is also over Pillow's
def test_huge_image_refused(tmp_path, side):
    path = tmp_path / "huge.png"
    path.write_bytes(bilevel_png(side, side))
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageError, match="huge.png.*pixels"):
        image.load_digit(path)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = save(draw_digit(), tmp_path / "d.png")
    monkeypatch.setattr(image, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(ImageError, match="300x200 = 60000 pixels, expected at most 59999"):
        image.load_digit(path)


@pytest.mark.parametrize(
    "bad", [np.zeros((3, 3, 4), np.uint8), np.zeros((0, 5)), np.full((5, 5), 2.0), np.zeros((5, 5), np.int32)]
)
def test_preprocess_rejects_what_is_not_a_grey_or_rgb_image(bad):
    with pytest.raises(ShapeError):
        image.preprocess_digit(bad)


def test_save_preprocessed(tmp_path):
    out = image.preprocess_digit(np.asarray(draw_digit()))
    path = tmp_path / "digit.png"
    image.save_preprocessed(out, path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (28, 28)
        back = np.asarray(im)
    np.testing.assert_array_equal(back, np.round(out[..., 0] * 255).astype(np.uint8))
    assert back.max() == 255 and back[0, 0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["digit.png"]  # no temporary file left
    # And it reads back as the same digit, but for the faint edge pixels the ink threshold drops.
    np.testing.assert_allclose(image.load_digit(path), out, atol=image.INK_THRESHOLD + 0.01)


def test_save_preprocessed_rejects_wrong_shape(tmp_path):
    with pytest.raises(ShapeError):
        image.save_preprocessed(np.zeros((27, 28)), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_real_mnist_digits_come_back_unchanged():
    # The recipe is MNIST's own, so an MNIST digit should pass through it all but untouched.
    root = os.environ.get("FASTCNN_DATA")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("set FASTCNN_DATA to a folder with mnist/ in it to test on real digits")
    x, _ = data.load_dataset("mnist", "test", data_dir=root, download=False)
    worst = np.array([np.abs(image.preprocess_digit(d) - d).max() for d in x[:100]])
    mean = np.array([np.abs(image.preprocess_digit(d) - d).mean() for d in x[:100]])
    assert (worst <= image.INK_THRESHOLD + 1e-6).mean() >= 0.95  # only faint edge pixels differ
    assert np.median(mean) < 0.003


# --- clean drawings: a short way to the same digit ---------------------------------------------

def framed(im, frame=420, value=255):
    """``im`` (a drawing) in the middle of a ``frame`` x ``frame`` page of ``value``, as the web page frames its pad."""
    page = Image.new(im.mode, (frame, frame), value)
    page.paste(im, ((frame - im.width) // 2, (frame - im.height) // 2))
    return page


def thin_seven():
    im = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(im).line([(30, 20), (250, 20), (120, 270)], fill=0, width=3)
    return im


def with_a_speck():
    im = draw_digit((280, 280))
    ImageDraw.Draw(im).ellipse([(230, 240), (236, 246)], fill=0)
    return im


def canvas_png(im):
    """``im`` as the page's canvas sends it: an opaque RGBA PNG, read back."""
    buf = io.BytesIO()
    im.convert("RGBA").save(buf, format="PNG")
    return buf.getvalue()


CLEAN = {
    "the page's pad": lambda: framed(draw_digit((280, 280))),
    "a thin pen": lambda: framed(thin_seven()),
    "a speck beside it": lambda: framed(with_a_speck()),
    "a small page": lambda: framed(draw_digit((150, 150)), frame=190),
    "grey paper": lambda: framed(draw_digit((280, 280), ink=40, paper=200), value=200),
}


def full_search(monkeypatch, picture):
    with monkeypatch.context() as m:
        m.setattr(image, "_clean_drawing", lambda pixels: None)
        return image.preprocess_digit(picture)


@pytest.mark.parametrize("case", CLEAN)
def test_a_clean_drawing_is_read_as_the_full_search_reads_it(case, monkeypatch):
    data_ = canvas_png(CLEAN[case]())
    picture = image._read(io.BytesIO(data_), image._to_pixels)
    assert picture.shape[2] == 1  # an opaque grey RGBA canvas is read as one grey channel
    assert image._clean_drawing(picture) is not None  # the short way is taken
    short = image.load_digit(io.BytesIO(data_))
    full = full_search(monkeypatch, picture)
    dark = picture[:, :, 0] < picture.max()
    extent = max(np.ptp(np.flatnonzero(dark.any(axis=1))), np.ptp(np.flatnonzero(dark.any(axis=0)))) + 1
    if extent < 2 * image.DRAWN_SIDE:
        np.testing.assert_allclose(short, full, atol=1e-6)  # the same pixels: the same digit
    else:
        assert same_digit(short, full)  # averaged down first (DRAWN_SIDE)
    assert short.shape == (28, 28, 1) and short.max() == pytest.approx(1.0)


def same_digit(a, b):
    """The same strokes, up to a shift of one pixel: a large drawing's digit, averaged down first
    by the short way, may land a pixel off the full search's (the centre of mass rounded the
    other way) and its thin strokes' edges differ a little. Blurred (sigma 1), the two correlate
    0.97 or more at the best shift: 0.967 at the least, 0.9998 in the median, over 1,000 MNIST
    test digits drawn as on the page (measured), which the original network reads as often."""
    blurred = ndimage.gaussian_filter(a[:, :, 0], 1.0).ravel()
    return max(np.corrcoef(blurred, ndimage.gaussian_filter(np.roll(b[:, :, 0], (i, j), (0, 1)), 1.0).ravel())[0, 1]
               for i in (-1, 0, 1) for j in (-1, 0, 1)) >= 0.96


NOT_CLEAN = {
    "sensor noise": lambda a: np.clip(a + np.random.default_rng(0).normal(0, 4, a.shape), 0, 255).astype(np.uint8),
    "ink at the border": lambda a: np.where(np.arange(420) < 3, 0, a).astype(np.uint8),
    "ink near the border": lambda a: np.where((np.arange(420)[:, None] == 8) & (np.arange(420) > 200), 0, a),
    "colour": lambda a: np.dstack([a, a, np.full_like(a, 255)]),
    "light ink on dark paper": lambda a: 255 - a,
    "a solid blob wider than the window": lambda a: np.where(np.outer(*[abs(np.arange(420) - 210) < 75] * 2), 0, a),
}


@pytest.mark.parametrize("case", NOT_CLEAN)
def test_what_is_not_a_clean_drawing_takes_the_full_search(case):
    a = NOT_CLEAN[case](np.asarray(framed(draw_digit((280, 280)))))
    pixels = image._as_pixels(a)
    assert image._clean_drawing(pixels[:, :, :1] if pixels.shape[2] == 1 else pixels) is None


def test_page_drawings_of_real_digits_are_read_as_before(monkeypatch):
    root = os.environ.get("FASTCNN_DATA")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("set FASTCNN_DATA to a folder with mnist/ in it to test on real digits")
    from photos import page_drawing
    x, _ = data.load_dataset("mnist", "test", data_dir=root, download=False)
    for d in x[:60]:
        content = page_drawing(d)
        short = image.load_digit(io.BytesIO(content))
        assert same_digit(short, full_search(monkeypatch, image._read(io.BytesIO(content), image._to_pixels)))


# --- memory: known from the header, bounded before decoding ------------------------------------

def test_pictures_too_large_decoded_are_refused_from_their_header():
    from abuse import png_bomb
    for bomb, mode in ((png_bomb(1, 39_000_000), "L"), (png_bomb(6300, 6300, 6), "RGBA"),
                       (png_bomb(4200, 4200, 2), "RGB")):
        assert len(bomb) < 200_000
        with pytest.raises(ImageError, match=rf"in mode {mode} would take [\d.]+ MiB decoded, expected at most 64 MiB"):
            image.load_digit(io.BytesIO(bomb))


def test_a_budget_is_entered_with_the_decoded_size_and_a_large_jpeg_is_decoded_shrunk():
    taken = []

    def budget(nbytes):
        taken.append(nbytes)
        return contextlib.nullcontext()

    png = canvas_png(framed(draw_digit((280, 280))))
    image.load_digit(io.BytesIO(png), budget=budget)
    assert taken[-1] == image.decoded_bytes(Image.open(io.BytesIO(png))) >= 420 * 420 * 4
    big = io.BytesIO()
    draw_digit((280, 280)).resize((2800, 2100)).convert("RGB").save(big, format="JPEG")
    out = image.load_digit(io.BytesIO(big.getvalue()), budget=budget)
    assert taken[-1] < 2800 * 2100  # decoded at a quarter of its size: 700 x 525, 4 bytes a pixel
    check_mnist_like(out)
    image.load_photo(io.BytesIO(big.getvalue()), budget=budget)
    assert taken[-1] < 2800 * 2100 * 4 / 16


def test_a_very_wide_picture_is_shrunk_in_steps():
    from abuse import png_bomb
    wide = png_bomb(3_000_000, 3)  # 9 MB decoded: allowed; shrunk to 640 x 1 without a 3-million-wide filter
    with pytest.raises(ImageError, match="no digit found"):
        image.load_digit(io.BytesIO(wide))


def test_a_picture_over_pillows_limit_is_refused_in_one_line_with_one_limit(tmp_path, recwarn):
    # Pillow's own refusal came through with its limit beside ours ("exceeds limit of 178956970 pixels
    # ...; expected at most 40000000"), and its warning (between one and two times its limit) was
    # printed raw by an image folder's survey.
    from abuse import png_bomb
    from fastcnn.folders import _survey
    for w, h in ((10_000, 10_000), (20_000, 20_000)):  # Pillow's warning, then its error
        bomb = png_bomb(w, h)
        with pytest.raises(ImageError, match=r": image of over 89,478,485 pixels, expected at most 40,000,000$"):
            image.load_digit(io.BytesIO(bomb))
        path = tmp_path / f"{w}.png"
        path.write_bytes(bomb)
        assert _survey(path) == "image of over 89,478,485 pixels, expected at most 40,000,000"
    assert not [w for w in recwarn if issubclass(w.category, Warning) and "DecompressionBomb" in str(w.category)]


def test_a_garment_is_read_as_fashion_mnist_made_its_images(tmp_path):
    # A Fashion-MNIST model's pictures went through the digit clean-up (cropped to "ink", fitted
    # into 20x20, strokes thickened): 15 of 40 of its own test images, saved as PNG, read right.
    from fastcnn.inference import picture_loader
    from fastcnn.architectures import mnist_network
    rng = np.random.default_rng(0)
    shirt = np.zeros((28, 28), np.float32)
    shirt[0:28, 5:23] = rng.uniform(0.4, 1.0, (28, 18))  # tall: touches top and bottom, 5 columns before, 5 after
    shirt[3:12, 1:5] = shirt[3:12, 23:27] = 0.7  # sleeves
    Image.fromarray(np.uint8(np.round(shirt * 255))).save(tmp_path / "from_the_data_set.png")
    back = image.load_garment(tmp_path / "from_the_data_set.png")
    assert back.shape == (28, 28, 1) and np.abs(back[:, :, 0] - np.round(shirt * 255) / 255).max() < 0.02
    # The same shirt as a product photo: dark on white, larger, off-centre, a little noise.
    photo = np.full((300, 360), 250.0)
    photo[30:30 + 252, 70:70 + 252] = 250 - 230 * np.kron(shirt, np.ones((9, 9)))
    photo += rng.normal(0, 2, photo.shape)
    Image.fromarray(np.uint8(np.clip(photo, 0, 255))).save(tmp_path / "photo.jpg", quality=90)
    read = image.load_garment(tmp_path / "photo.jpg")[:, :, 0]
    # 0.90 measured (JPEG's edges)
    assert np.corrcoef(read.ravel(), shirt.ravel())[0, 1] > 0.85 and read[:, :1].max() < 0.1
    Image.new("L", (50, 40), 200).save(tmp_path / "plain.png")
    with pytest.raises(ImageError, match=r"plain.png: no garment found: the picture is one shade"):
        image.load_garment(tmp_path / "plain.png")
    model = mnist_network(seed=0)
    assert picture_loader(model, dataset="fashion-mnist") is image.load_garment
    assert picture_loader(model) is image.load_digit and picture_loader(model, dataset="mnist") is image.load_digit
