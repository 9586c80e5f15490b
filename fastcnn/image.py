"""Turn a user's picture into what a model's training images look like: a digit (a scan, a drawing, a
phone photo) into an MNIST digit (:func:`load_digit`), a colour photo into a CIFAR-10 image
(:func:`load_photo`), a picture of a garment into a Fashion-MNIST image (:func:`load_garment`).

MNIST digits are white on black, scaled so the longer side of the ink is 20 pixels, and placed in a
28x28 field so that their centre of mass is at the centre. A photo of a digit is dark (or coloured)
ink on paper that is rarely white or evenly lit, any size, anywhere in the frame, perhaps on a
table, on ruled paper, in a thin pen. :func:`preprocess_digit` first finds the ink, then applies
MNIST's recipe to it:

1. Shrink large pictures (to ``WORK_SIDE``) and smooth sensor noise a little.
2. Estimate the paper in each colour channel with a morphological closing (or opening, for light
   ink), which removes features narrower than a third of the picture: strokes go, the lighting
   gradient and a darker table around the sheet stay. Ink is the distance from that paper colour,
   so red ink on green paper of the same brightness is ink too.
3. Threshold the ink (Otsu), rub out long horizontal lines (rules), label connected components and
   keep the digit: the largest one not touching the picture's edge and its neighbours, not specks,
   not the table, not page edges. Faint pixels next to it are kept (its anti-aliased edge).
4. Thicken a thin pen's strokes to MNIST's width, crop to the ink, fit 20x20, centre by centre of mass.

A clean drawing (one exact paper value filling the picture's border, as a screen's pad makes it)
skips to the answers steps 1-2 are known to give it, and steps 3-4 run on the strokes'
surroundings only (:func:`_clean_drawing`): the same digit, several times faster.

A CIFAR-10 image is a whole small photo of one object, roughly centred and filling the frame, so
a photo needs no search: its centre square is shrunk to 32x32.

A picture's size and the memory it takes decoded are known from its header and checked before it
is decoded (``MAX_PIXELS``, ``MAX_DECODED_BYTES``); a large JPEG is decoded shrunk.
"""

import contextlib
import os
import struct
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from .errors import FastCNNError, ImageError, ShapeError
from .fileio import atomic_write
from .kernels import checks

__all__ = ["MAX_PIXELS", "PHOTO_SIDE", "ImageWarning", "load_digit", "load_garment", "load_photo", "preprocess_digit",
           "save_preprocessed"]

MAX_PIXELS = 40_000_000  # a 40-megapixel photo is plenty for one digit; more is likely a bomb
# The memory a picture may take decoded (and converted for shrinking), known from its header before
# decoding: a 12-megapixel RGB PNG needs 48 MiB (Pillow stores RGB in 4 bytes a pixel), a 12-megapixel
# JPEG 3 MiB (it is decoded at a quarter of its size); a 190 KB PNG of 40 million RGBA pixels, 150 MiB.
MAX_DECODED_BYTES = 64 * 2**20
SIZE = 28  # the MNIST field
PHOTO_SIDE = 32  # CIFAR-10's images
BOX = 20  # the longer side of the ink in MNIST
WORK_SIDE = 640  # larger pictures are shrunk to this first: plenty for a 20-pixel digit, and fast
INK_THRESHOLD = 0.1  # fainter than this (relative to the digit's strongest ink) is paper, not ink
MIN_CONTRAST = 0.1  # ink must differ from the paper by this much, or the image is blank
GARMENT_EDGE = 0.03  # a garment's faintest part, above its background (stretched to 0-1): a photo's noise is less
STROKE = 2.5  # MNIST's stroke width in the 20-pixel box (median of its test set: 2.7)
THIN = 1.5  # strokes thinner than this in the 20-pixel box are thickened to STROKE
UPSCALED = 1.5  # a digit enlarged more than this many times is said to be small
DRAWN_SIDE = 80  # a clean drawing's digit larger than this is averaged down towards it first

# Errors Pillow raises on files it can't decode; which one depends on the format plug-in, and
# fuzzing found more than these (a TypeError from a damaged TIFF tag), so load_digit treats any
# exception from decoding as a bad file.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageWarning(UserWarning):
    """The picture was read, but the answer is less sure than usual (say, a tiny digit)."""


def _describe(source):
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    return getattr(source, "name", None) or "<file object>"


def _to_pixels(im):
    """Float32 (H, W, 1) grey or (H, W, 3) RGB in [0, 1], transparent parts shown as white paper."""
    if im.mode in ("RGB", "RGBA"):
        # A canvas's PNG: opaque grey pixels saved as RGBA. Seen as one 32-bit word per pixel
        # (R, G, B and A or 255), such a picture is told and taken apart in three quick passes.
        packed = np.frombuffer(im.tobytes("raw", "RGBX" if im.mode == "RGB" else "RGBA"), "<u4")
        red = packed & 0xFF
        if (packed == red * 0x010101 + 0xFF000000).all():
            return (red.astype(np.float32) / 255).reshape(im.height, im.width, 1)
    if im.mode in ("RGBA", "LA") and im.getchannel("A").getextrema() == (255, 255):
        im = im.convert(im.mode[:-1])  # opaque: nothing to show on white
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Transparent pixels often hold black RGB; on their own they would read as ink.
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    if im.mode.startswith("I;16"):
        return (np.asarray(im, dtype=np.float32) / 65535)[..., None]
    if im.mode in ("I", "F"):
        # No fixed range for 32-bit images: stretch what is there to [0, 1].
        a = np.asarray(im, dtype=np.float64)
        lo, hi = a.min(), a.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN and infinity reach the minimum or maximum
            raise ImageError("pixels that are not numbers (NaN or infinity): expected finite values")
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)[..., None]
    if im.mode in ("1", "L"):
        return (np.asarray(im.convert("L"), dtype=np.float32) / 255)[..., None]
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255


def decoded_bytes(im, copies=0):
    """The memory ``im`` (opened, not decoded) may take decoded and shrunk, as Pillow stores pixels
    (one byte for "1", "L" and "P", two for 16-bit grey, four for the rest, RGB included): the
    picture, a converted copy if shrinking needs one first (a palette, CMYK, 16-bit grey), another
    for transparency (Pillow resizes premultiplied, and it is shown on white), a pointer per row
    (a 1 x 39,000,000 picture has 312 MB of those) and the decoder's row buffer; and ``copies``
    more of the picture as stored (a photo's centre square, cropped)."""
    stored = 1 if im.mode in ("1", "L", "P") else 2 if im.mode.startswith("I;16") else 4
    transparent = "A" in im.getbands() or "transparency" in im.info
    converted = im.mode not in ("1", "L", "RGB", "RGBA", "LA", "F") or "transparency" in im.info
    extra = 4 * converted + 4 * transparent + stored * copies
    return im.width * im.height * (stored + extra) + 8 * im.height * (1 + converted + transparent + copies) + 8 * im.width


@contextlib.contextmanager
def bombs_refused():
    """Pillow only warns of a picture over its own limit (``Image.MAX_IMAGE_PIXELS``, 89 megapixels)
    below twice that: here the warning is the refusal it should be (``too_large``). The warnings'
    filters are the process's, so only the main thread changes them: in a server's threads the
    warning may show, and ``MAX_PIXELS`` refuses such pictures anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def too_large():
    """Why a picture Pillow refused as a decompression bomb is refused."""
    return f"image of over {Image.MAX_IMAGE_PIXELS:,} pixels, expected at most {MAX_PIXELS:,}"


def _read(path_or_file, convert, shrink_to=None, budget=None, copies=0, draft=None):
    """``convert(im)`` of the picture at ``path_or_file``, upright, every failure an ``ImageError``.

    Everything is checked from the header, before decoding: at most ``MAX_PIXELS`` pixels and
    ``MAX_DECODED_BYTES`` decoded. A JPEG is decoded straight at a smaller scale (1/2, 1/4 or 1/8)
    if that still leaves its longer side ``shrink_to`` pixels or more. ``copies``: full copies
    ``convert`` makes (see ``decoded_bytes``). ``draft`` (W, H): a JPEG may instead be decoded at a
    reduced scale that still leaves it at least that large, for a caller that shrinks it to that
    size anyway (an image folder's pictures). ``budget`` (a server's,
    see ``fastcnn.serve``) is entered with the decoded size around decoding and converting, so
    that pictures decoded at once never take more memory together than it holds.
    """
    if not isinstance(path_or_file, (str, bytes, os.PathLike)) and not hasattr(path_or_file, "read"):
        raise ImageError(f"path_or_file: expected a path or a binary file object, got {type(path_or_file).__name__}")
    label = _describe(path_or_file)
    try:
        with bombs_refused():
            with Image.open(path_or_file) as im:
                # Image.open reads only the header, so these checks come before any decoding.
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"{label}: image of {w}x{h} = {w * h} pixels, expected at most {MAX_PIXELS}"
                    )
                if draft is not None:
                    im.draft(None, draft)
                elif shrink_to and max(w, h) > 2 * shrink_to and im.format == "JPEG":
                    scale = shrink_to / max(w, h)  # draft keeps both sides at least what is asked
                    im.draft(im.mode, (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
                need = decoded_bytes(im, copies)
                if need > MAX_DECODED_BYTES:
                    raise ImageError(
                        f"{label}: image of {w}x{h} pixels in mode {im.mode} would take {need / 2**20:.1f} MiB "
                        f"decoded, expected at most {MAX_DECODED_BYTES / 2**20:.0f} MiB (send fewer pixels, or "
                        f"a JPEG: it is decoded shrunk)"
                    )
                with budget(need) if budget is not None else contextlib.nullcontext():
                    ImageOps.exif_transpose(im, in_place=True)  # phones store portrait photos sideways
                    try:
                        return convert(im)
                    except ImageError as e:  # what convert found wrong with the pixels
                        raise ImageError(f"{label}: {e}") from None
    except FastCNNError:  # ours (a budget may raise its own): passed on as they are
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: {too_large()}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file Pillow can read") from None
    except _PILLOW_ERRORS as e:
        raise ImageError(f"{label}: cannot read the image: {e}") from None
    except Exception as e:  # noqa: BLE001 - see _PILLOW_ERRORS
        raise ImageError(f"{label}: cannot read the image ({type(e).__name__}: {e})") from None


def load_digit(path_or_file, *, budget=None, notes=None):
    """Read a picture of one digit (any format Pillow reads) and preprocess it like MNIST.

    Returns float32 of shape (28, 28, 1) in [0, 1]. Raises ``ImageError`` if the file is missing,
    is not an image, is corrupt, is larger than ``MAX_PIXELS`` or ``MAX_DECODED_BYTES`` decoded,
    or shows no digit; warns (``ImageWarning``) if the digit was so small it had to be enlarged,
    or with ``notes`` (a list) appends what it would say there instead (warnings are the
    process's, not a thread's: a server's threads use this). ``budget``: see ``_read``.
    """
    pixels = _read(path_or_file, lambda im: _to_pixels(_shrink(im)), WORK_SIDE, budget)
    label = _describe(path_or_file)
    said = []
    try:
        digit = _preprocess_digit(pixels, said)
    except (ImageError, ShapeError) as e:  # e.g. NaN pixels in a float TIFF: a bad file, named
        raise ImageError(f"{label}: {e}") from None
    for note in said:
        if notes is None:
            warnings.warn(ImageWarning(f"{label}: {note}"), stacklevel=2)
        else:
            notes.append(f"{label}: {note}")
    return digit


def load_photo(path_or_file, side=PHOTO_SIDE, *, budget=None, notes=None):
    """Read a colour photo (any format Pillow reads) as a CIFAR-10 image: float32 (side, side, 3) in [0, 1].

    The photo is turned upright (EXIF), transparency is shown on white, palette and greyscale
    pictures become RGB; then its centre square (CIFAR-10 shows the whole object, filling the
    frame) is shrunk to ``side`` x ``side``. Raises ``ImageError`` if the file is missing, is not an
    image, is corrupt or is larger than ``MAX_PIXELS`` or ``MAX_DECODED_BYTES`` decoded. ``budget``:
    see ``_read``; ``notes``: as ``load_digit``'s (a photo has none).
    """
    side = checks.positive_int("side", side)
    # A JPEG is decoded at 1/2 to 1/8 scale if its centre square stays 8 times the side or more.
    return _read(path_or_file, lambda im: _square_photo(im, side), 8 * side, budget, copies=1)


def load_garment(path_or_file, *, budget=None, notes=None):
    """Read a picture of one piece of clothing (a product photo, a Fashion-MNIST image) as a
    Fashion-MNIST image: float32 (28, 28, 1) in [0, 1], a light garment on black.

    Fashion-MNIST was made from product photos (a garment on white): trimmed to the garment, its
    longer side resized to 28, centred in 28x28, the intensities negated, made grey. Here the same:
    the picture is made grey; its background is the median of its border, which, light, is negated
    to black; the rest is stretched so the background is 0 and the brightest pixel 1, trimmed to
    what stands out from the background, resized (longer side 28) and centred. A Fashion-MNIST
    image mostly comes back as it was (278 of the first 300 test images within 0.02 of each pixel;
    the others lose a faint edge to the trim). Raises ``ImageError`` as :func:`load_digit` does,
    and for a picture whose whole area is one shade. ``budget``: see ``_read``; ``notes``: as
    ``load_digit``'s (there are none).
    """
    pixels = _read(path_or_file, lambda im: _to_pixels(_shrink(im)), WORK_SIDE, budget)
    try:
        return _garment(pixels)
    except ImageError as e:
        raise ImageError(f"{_describe(path_or_file)}: {e}") from None


def _garment(pixels):
    grey = pixels.mean(axis=2)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if background > 0.5:  # a product photo's white: negated, as Fashion-MNIST's were
        grey, background = 1 - grey, 1 - background
    top = float(grey.max())
    if top - background < MIN_CONTRAST:
        raise ImageError("no garment found: the picture is one shade")
    grey = np.clip((grey - background) / (top - background), 0, 1)
    rows, cols = np.nonzero(grey > GARMENT_EDGE)
    grey = grey[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = grey.shape
    scale = SIZE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(grey.astype(np.float32), "F").resize(size, Image.Resampling.LANCZOS))
    field = np.zeros((SIZE, SIZE), np.float32)
    top_row, left = (SIZE - size[1] + 1) // 2, (SIZE - size[0] + 1) // 2  # an odd pixel before, as Fashion-MNIST's
    field[top_row:top_row + size[1], left:left + size[0]] = np.clip(small, 0, 1)
    return field[:, :, None]


def _square_photo(im, side):
    """The centre square of ``im`` shrunk to ``side`` x ``side``, as float32 RGB in [0, 1]."""
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.crop((left, top, left + s, top + s))  # (not resize's box: its filter would reach outside)
    if im.mode.startswith(("I", "F")):
        # 16- and 32-bit grey: scaled to [0, 1] as for a digit, shrunk as floats, then made RGB.
        grey = Image.fromarray(_to_pixels(im)[:, :, 0]).resize((side, side), Image.Resampling.LANCZOS)
        return np.repeat(np.clip(np.asarray(grey), 0, 1)[:, :, None], 3, axis=2)
    transparent = "A" in im.getbands() or "transparency" in im.info
    if im.mode not in ("L", "RGB", "RGBA", "LA") or "transparency" in im.info:
        im = im.convert("RGBA" if transparent else "RGB")
    # Lanczos widens with the reduction, so it averages a large photo without aliasing and keeps
    # edges sharp; reducing_gap first box-averages big ones, for speed, with the same result to the eye.
    # Shrunk first and then shown on white: the same as the other way round (Pillow resizes
    # transparent pixels premultiplied), with no full-size copies beyond the crop.
    small = im.resize((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if transparent:
        small = Image.alpha_composite(Image.new("RGBA", small.size, (255, 255, 255, 255)), small.convert("RGBA"))
    return np.asarray(small.convert("RGB"), dtype=np.float32) / 255


def _shrink(im):
    """A large picture shrunk (by area averaging) so its longer side is ``WORK_SIDE``."""
    if max(im.size) <= WORK_SIDE:
        return im
    if im.mode.startswith(("I", "F")):
        im = im.convert("F")  # 16- and 32-bit pixels keep their range (_to_pixels stretches it)
    elif im.mode not in ("1", "L", "RGB", "RGBA", "LA"):
        im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
    scale = WORK_SIDE / max(im.size)
    # reducing_gap: first an integer box reduction (its memory is the result's), then the rest;
    # resizing a 1 x 39,000,000 picture in one step would take Pillow 300 MB of filter weights.
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BOX,
                     reducing_gap=2.0)


def _as_pixels(picture):
    """Validate and convert to (H, W, C) float32 in [0, 1], C = 1 (grey) or 3 (RGB)."""
    a = np.asarray(picture)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3) or a.size == 0:
        raise ShapeError(f"expected a greyscale (H, W) or (H, W, 1) or an RGB (H, W, 3) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype.kind != "f":
        raise ShapeError(f"expected uint8 or floats in [0, 1], got dtype {a.dtype}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ShapeError(f"expected float values in [0, 1], got range [{a.min()}, {a.max()}]")
    return a.astype(np.float32)


def _otsu(values, zeros=0):
    """Otsu's threshold of ``values``, as if ``zeros`` more values of 0 were among them (a clean
    drawing's paper cropped away, see ``_clean_drawing``; then ``values`` hold a 0 too)."""
    from skimage.filters import threshold_otsu  # imported here: skimage is slow to import
    if not zeros:
        return float(threshold_otsu(values))
    from skimage.exposure import histogram
    counts, centres = histogram(values.reshape(-1), 256, source_range="image")  # as threshold_otsu makes it
    counts[0] += zeros
    return float(threshold_otsu(hist=(counts, centres)))


def _sheet(pixels):
    """The sheet of paper, if the picture shows one on a darker table: (rows, cols) slices, else None.

    A sheet is a bright region that fills its bounding box (holes, such as the digit, filled),
    a fifth to 95% of the picture, with a sharp edge: few pixels are halfway between it and the
    darker rest (a lighting gradient has many).
    """
    lum = pixels.mean(axis=2)
    if lum.max() - lum.min() < MIN_CONTRAST:
        return None
    bright = ndimage.binary_fill_holes(lum > _otsu(lum))
    labels, n = ndimage.label(bright)
    if n == 0:
        return None
    area = ndimage.sum_labels(bright, labels, np.arange(1, n + 1))
    k = int(np.argmax(area))
    rows, cols = ndimage.find_objects(labels)[k]
    inside = labels == k + 1
    fills = area[k] / ((rows.stop - rows.start) * (cols.stop - cols.start))
    paper, table = np.median(lum[inside]), np.median(lum[~inside]) if (~inside).any() else 1.0
    halfway = np.abs(lum - (paper + table) / 2) < (paper - table) / 4
    if not (0.2 <= area[k] / lum.size <= 0.95 and fills >= 0.9 and table < 0.7 * paper and halfway.mean() < 0.1):
        return None
    # Inset a little: the sheet's own edge (blurred, compressed) is not ink.
    dy, dx = 2 + (rows.stop - rows.start) // 50, 2 + (cols.stop - cols.start) // 50
    return slice(rows.start + dy, rows.stop - dy), slice(cols.start + dx, cols.stop - dx)


def _ink(pixels):
    """How far each pixel is from the paper's colour there, (H, W) >= 0.

    Per channel, the paper is a closing (dark ink) or an opening (light ink) with a window a third
    of the picture: it removes strokes and keeps what is larger (uneven light, a table). Which one
    is decided per channel, so red ink on green paper counts in both its red and green channels.
    """
    h, w, _ = pixels.shape
    window = max(3, min(h, w) // 3)
    photo = min(h, w) >= 200  # a photo's sensor noise is smoothed a little; small scans are left sharp
    residue = []
    for c in range(pixels.shape[2]):
        p = ndimage.gaussian_filter(pixels[:, :, c], 1.0) if photo else pixels[:, :, c]
        closed = ndimage.grey_closing(p, size=window)
        # Light ink: the bright pixels are thin strokes, which an opening removes, and the dark
        # ones are paper, which a closing keeps. Otherwise (paper ruled or not) the ink is dark.
        # (The opening is only computed where the closing leaves the question open.)
        t = _otsu(p) if p.max() > p.min() else None
        opened = (ndimage.grey_opening(p, size=window)
                  if t is not None and (closed[p <= t] <= t).mean() >= 0.5 else None)
        if opened is not None and (opened[p > t] > t).mean() < 0.5:
            residue.append(p - opened)
        else:
            residue.append(closed - p)
    ink = np.sqrt(np.mean(np.square(residue), axis=0))
    return np.clip(ink - np.median(ink), 0, None)  # what is left on plain paper is noise


def _clean_drawing(pixels):
    """A clean drawing's ink, found without searching for the paper: ``(ink, zeros, width)``, or None.

    A drawing made on a screen (the page's pad, a paint program) is dark strokes on paper of one
    exact value that fills the picture's border. There the search's answers are known in advance:
    no sheet on a table (the paper reaches every side), and the paper estimate (the closing) is
    the paper's value everywhere, provided every window of the closing holds a pixel of pure
    paper (checked). So the ink is the paper's value minus the (smoothed) picture, and only the
    strokes' surroundings need computing: ``ink`` is that crop, ``zeros`` the paper cropped away
    (ink 0, which Otsu's threshold still counts), ``width`` the picture's (for the rules). The
    digit found is the search's, in a tenth of the time for the page's 420x420 drawings. Anything
    else (colour, ink near the border, light ink, a solid blob as large as the window) gives None.
    """
    if pixels.shape[2] != 1:
        return None
    p = pixels[:, :, 0]
    h, w = p.shape
    paper = p.max()
    if min(p[0].min(), p[-1].min(), p[:, 0].min(), p[:, -1].min()) != paper:
        return None
    dark = p < paper
    rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    if rows.size == 0:
        return None
    photo = min(h, w) >= 200  # as _ink decides
    # The margin holds the smoothing's reach (4 pixels) and a thin pen's thickening (at most a
    # sixteenth of the strokes' extent), with pure paper beyond both.
    m = 4 * photo + 2 + int(np.ceil(max(rows[-1] - rows[0], cols[-1] - cols[0]) / 16))
    y0, y1, x0, x1 = rows[0] - m, rows[-1] + 1 + m, cols[0] - m, cols[-1] + 1 + m
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        return None
    crop = p[y0:y1, x0:x1]
    # A large digit is averaged down by whole blocks (which smooth it as well), to no less than
    # DRAWN_SIDE pixels: still 4 times the 20-pixel box, and a quarter or less of the pixels for
    # all that follows. What the blocks leave over at the crop's far edges is paper (the margin).
    f = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) // DRAWN_SIDE
    if f >= 2:
        smooth = _block_mean(crop, f)
        h, w = h // f, w // f
    else:
        smooth = ndimage.gaussian_filter(crop, 1.0) if photo else crop
    window = max(3, min(h, w) // 3)
    if ndimage.minimum_filter(smooth < paper, size=window, mode="constant", cval=0).any():
        return None  # a window with no pure paper: the closing there is not the paper's value
    ink = paper - smooth
    zeros = h * w - ink.size
    if zeros + np.count_nonzero(ink == 0) <= h * w / 2:
        return None  # the search subtracts the median ink, 0 only if most of the picture is paper
    return ink, zeros, w


def _block_mean(a, f):
    """The means of ``a``'s whole ``f`` x ``f`` blocks (what is left at the far edges dropped), as
    sums of strided views: a tenth of the time of ``mean`` over a 4-d reshape's axes 1 and 3."""
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    cols = a[:h, 0:w:f].copy()
    for k in range(1, f):
        cols += a[:h, k:w:f]
    blocks = cols[0::f].copy()
    for k in range(1, f):
        blocks += cols[k::f]
    return blocks * np.float32(1 / (f * f))


def _rules(strong, width):
    """Pixels of long horizontal lines (ruled paper, a page edge): runs of ink across 9/10 of the
    picture's ``width``. A digit's own bars are shorter: MNIST's span at most 20 of its 28 pixels."""
    length = max(3, round(0.9 * width)) | 1
    if length > strong.shape[1]:
        return np.zeros_like(strong)
    run = ndimage.uniform_filter1d(strong.astype(np.float32), length, axis=1, mode="constant") > 1 - 1e-3
    return ndimage.maximum_filter1d(run, length, axis=1) & strong


def _digit_mask(ink, zeros=0, width=None):
    """The pixels of the digit: thresholded, long lines rubbed out, components that aren't the digit
    dropped. For a clean drawing's cropped ink, ``zeros`` is the paper cropped away and ``width``
    the picture's width (see ``_clean_drawing``)."""
    strong = ink > _otsu(ink, zeros)
    strong &= ~_rules(strong, ink.shape[1] if width is None else width)
    labels, n = ndimage.label(strong, structure=np.ones((3, 3)))
    if n == 0:
        raise ImageError("no digit found: the image is blank")
    index = np.arange(1, n + 1)
    area = ndimage.sum_labels(strong, labels, index)
    boxes = ndimage.find_objects(labels)
    # A page edge, a strip of table, a shadow: along a quarter of a side of the picture or more.
    # (A stroke that runs off the picture touches it only over its own width.)
    edge = np.zeros(n + 1, bool)
    for side in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        edge |= np.bincount(side, minlength=n + 1) >= 0.25 * len(side)
    edge = edge[1:]
    # The digit is the largest of the others, unless there are none (a digit drawn edge to edge).
    inner = np.flatnonzero(~edge)
    main = inner[np.argmax(area[inner])] if inner.size else int(np.argmax(area))
    (y0, y1), (x0, x1) = [(s.start, s.stop) for s in boxes[main]]
    # Keep pieces of it (a 5's separate bar, a broken thin stroke) that lie within its own size of it.
    my = mx = max(y1 - y0, x1 - x0)
    keep = np.zeros(n + 1, bool)
    for k, box in enumerate(boxes):
        near = (box[0].start < y1 + my and box[0].stop > y0 - my and box[1].start < x1 + mx and box[1].stop > x0 - mx)
        keep[k + 1] = k == main or (near and not edge[k] and area[k] >= 0.05 * area[main])
    return keep[labels]


def _stroke_width(mask):
    """Mean stroke width in pixels: the ink's area over the length of its centre line."""
    from skimage.morphology import skeletonize
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:  # the centre line of the ink's bounding box only (the same line, found faster)
        mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return mask.sum() / max(1, skeletonize(mask).sum())


def preprocess_digit(picture):
    """Find the digit in a picture and apply the MNIST recipe to it.

    ``picture`` is uint8 (0-255) or float in [0, 1], greyscale (H, W) or (H, W, 1) or RGB (H, W, 3).
    The result is float32 of shape (28, 28, 1) in [0, 1]: a white digit on black, the longer side
    of the ink 20 pixels, its centre of mass at (14, 14) (shifted less if needed to keep all the
    ink in the field). Raises ``ImageError`` if there is no ink, ``ShapeError`` if ``picture`` is
    not an image; warns (``ImageWarning``) if the digit had to be enlarged much.
    """
    notes = []
    out = _preprocess_digit(_as_pixels(picture), notes)
    for note in notes:
        warnings.warn(ImageWarning(note), stacklevel=2)
    return out


def _preprocess_digit(pixels, notes):
    """``preprocess_digit`` of ``pixels`` already checked (float32 (H, W, C) in [0, 1], as
    ``_as_pixels`` and ``_to_pixels`` give them), its notes appended to ``notes`` rather than warned."""
    thumbnail = max(pixels.shape[:2]) < SIZE
    zoom = 4 if thumbnail else 1  # a thumbnail is enlarged smoothly first, so its strokes have a width
    if pixels.shape[2] == 3 and (pixels[:, :, 1:] == pixels[:, :, :1]).all():
        pixels = pixels[:, :, :1]  # grey saved as RGB (a canvas's PNG): one channel does
    if thumbnail:
        pixels = np.clip(ndimage.zoom(pixels, (zoom, zoom, 1), order=3, grid_mode=True, mode="nearest"), 0, 1)
    clean = None if thumbnail else _clean_drawing(pixels)
    if clean is None:
        sheet = _sheet(pixels)
        ink, zeros, width = _ink(pixels if sheet is None else pixels[sheet]), 0, None
    else:
        ink, zeros, width = clean
    if ink.max() < MIN_CONTRAST:
        faint = f" (or too faint: nothing in it differs from the paper by {MIN_CONTRAST:.0%} of the full range)"
        raise ImageError("no digit found: the image is blank" + (faint if ink.max() > 0 else ""))
    digit = _digit_mask(ink, zeros, width)
    # Its faint anti-aliased edge too: pixels above INK_THRESHOLD within a pixel or two of it.
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    scale = BOX / side
    near = ndimage.binary_dilation(digit, iterations=max(1, round(1.5 / scale)))
    ink = np.where(near & (ink > INK_THRESHOLD * ink[digit].max()), ink, 0)
    width = _stroke_width(digit) * scale
    if width < THIN:  # a fine pen: MNIST's strokes are two to three pixels wide
        radius = (STROKE - width) / 2 / scale
        r = int(np.ceil(radius))
        disk = np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= radius
        ink = ndimage.grey_dilation(ink, footprint=disk)
    if scale * zoom > UPSCALED:
        notes.append(f"the digit is only {round(side / zoom)} pixels tall or wide: enlarged {scale * zoom:.1f} "
                     f"times to MNIST's {BOX}; a larger picture reads better")
    out = _mnist_field(ink)
    if thumbnail:
        # An enlarged blur has no solid core; MNIST strokes do (levels tried on other seeds' thumbnails).
        out = np.clip((out - 0.25) / 0.35, 0, 1)
    return out


def _mnist_field(ink):
    """Crop to the ink, scale its longer side to 20 pixels, centre it by centre of mass in 28x28."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    crop /= crop.max()
    h, w = crop.shape
    scale = BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    patch = np.asarray(resized)
    patch = np.clip(patch, 0, None)  # Lanczos rings slightly below zero beside strokes
    if patch.max() <= 0:
        raise ImageError("no digit found: the image is blank")
    # Shrinking averages thin strokes into grey; MNIST strokes reach full white.
    patch = patch / patch.max()

    total = patch.sum()
    cy = (patch.sum(axis=1) @ np.arange(new_h)) / total
    cx = (patch.sum(axis=0) @ np.arange(new_w)) / total
    # Whole-pixel shift, clamped so the patch (at most 20x20) always fits in the 28x28 field.
    top = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - new_h))
    left = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - new_w))
    out = np.zeros((SIZE, SIZE, 1), dtype=np.float32)
    out[top:top + new_h, left:left + new_w, 0] = patch
    return out


def save_preprocessed(arr, path, shape=None):
    """Write a preprocessed image in [0, 1] as an 8-bit PNG, atomically: a digit (28, 28) or
    (28, 28, 1) as greyscale, a photo (32, 32, 3) as RGB; or, given ``shape`` (H, W, C), an
    image of that shape (a picture read for a model trained on an image folder)."""
    a = np.asarray(arr)
    if shape is not None and a.shape != tuple(shape):
        raise ShapeError(f"expected an image of shape {tuple(shape)}, got {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if (shape is None and a.shape not in ((SIZE, SIZE), (PHOTO_SIDE, PHOTO_SIDE, 3))) or a.dtype.kind not in "fiub":
        raise ShapeError(
            f"expected a (28, 28) or (28, 28, 1) digit or a (32, 32, 3) photo, got shape {np.shape(arr)}, "
            f"dtype {a.dtype}"
        )
    pixels = np.round(np.clip(np.nan_to_num(a.astype(np.float64)), 0, 1) * 255).astype(np.uint8)
    try:
        with atomic_write(path, "wb") as f:
            Image.fromarray(pixels).save(f, format="PNG")
    except OSError as e:
        raise ImageError(f"{path}: cannot write the image: {e.strerror or e}") from None
    return path
